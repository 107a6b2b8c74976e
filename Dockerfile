# Switchboard container image. It mirrors .ci/run's build exactly: Debian, cmake (Pingora's
# libz-ng-sys needs it), `cargo build --release --locked`. Not built in this repository's CI
# (no Docker engine there); `deploy/check` keeps the Rust version in step with Cargo.toml.
#
#   docker build -t switchboard:0.1.0 .

FROM rust:1.88-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src src
COPY benches benches
RUN cargo build --release --locked --bin switchboard

# distroless "cc": glibc, libgcc and the CA certificates rustls reads; no shell. Runs as
# the non-root user 65532, as the Kubernetes manifests expect.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/switchboard /usr/local/bin/switchboard
COPY config/profiles /etc/switchboard/profiles
# The default config finds its profiles next to it; the Kubernetes component mounts its own
# config at /etc/switchboard/config/ and names the profiles folder absolutely.
COPY config/switchboard.yaml /etc/switchboard/switchboard.yaml
USER 65532:65532
EXPOSE 9901
ENTRYPOINT ["/usr/local/bin/switchboard"]
CMD ["--config", "/etc/switchboard/switchboard.yaml"]
