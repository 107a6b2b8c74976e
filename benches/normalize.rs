//! Normalising one vendor error body: parse, detect, map, build and serialise the envelope
//! (SPEC target: ≤ 5 µs per body).
//!
//! Inputs are the project's own golden fixtures, so the bench measures the shapes the tests
//! pin: a profiled seed error, the generic detector on nested JSON, RFC 7807, an HTML gateway
//! page, and a gzip-encoded body.
//!
//! Run: `cargo bench --bench normalize`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::HeaderMap;
use switchboard::normalize::{self, capture, Profile, VendorResponse};

struct Case {
    name: &'static str,
    profile: Profile,
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn load(dir: &str, case: &str) -> capture::Capture {
    let file = root()
        .join("tests/fixtures/normalize")
        .join(dir)
        .join(format!("{case}.http"));
    capture::parse(&std::fs::read(file).expect("fixture")).expect("capture")
}

fn case(name: &'static str, profile: Option<&str>, dir: &str, file: &str) -> Case {
    let profile = match profile {
        Some(p) => Profile::load(&root().join("config/profiles"), p).expect("profile"),
        None => Profile::generic(),
    };
    let f = load(dir, file);
    Case {
        name,
        profile,
        status: f.status,
        headers: f.headers,
        body: f.body,
    }
}

fn bench(c: &mut Criterion) {
    let cases = [
        case(
            "tryvox_validation",
            Some("tryvox"),
            "tryvox",
            "validation_failed",
        ),
        case(
            "telephony_io_402",
            Some("telephony_io"),
            "telephony_io",
            "insufficient_balance",
        ),
        case("generic_nested_stripe", None, "generic", "nested_stripe"),
        case(
            "generic_problem_json",
            None,
            "generic",
            "problem_invalid_params",
        ),
        case("generic_html_502", None, "generic", "html_nginx_502"),
        case("generic_gzip_json", None, "generic", "gzip_json"),
    ];
    let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_706_140_740);
    let mut g = c.benchmark_group("normalize");
    for k in &cases {
        let resp = VendorResponse {
            status: k.status,
            headers: &k.headers,
            body: &k.body,
            truncated: false,
            path: "/v1/calls",
        };
        g.bench_function(k.name, |b| {
            b.iter(|| {
                normalize::normalize(&k.profile, "bench", "req-1", black_box(&resp), now)
                    .envelope
                    .to_json()
            })
        });
    }
    g.finish();
}

criterion_group! { name = benches; config = common::config(); targets = bench }
criterion_main!(benches);
