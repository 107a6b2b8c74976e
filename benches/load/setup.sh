# shellcheck shell=bash disable=SC2034 # sourced: its variables are the sourcing script's
# Shared by the load scripts (sourced, not run): tools, a work directory cleaned up on exit,
# and the configs every run compares. Ports: origin 18090, nginx proxy 18091, Switchboard
# 18081 (admin 19901); instructions.sh adds bare_pingora 18092, nginx return 200 18093,
# bare_serve 18094, nginx with its access log 18095.
need() { command -v "$1" >/dev/null 2>&1; }
# need_tools CMD... : installs the Debian packages of the same names when any is missing.
need_tools() {
  local missing=()
  for t in "$@"; do need "$t" || missing+=("$t"); done
  [ ${#missing[@]} = 0 ] && return 0
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "needs ${missing[*]}: sudo apt-get install -y ${missing[*]}" >&2; exit 1
  fi
}
# CARGO_TARGET_DIR is honoured, as cargo honours it (a second build tree for comparisons);
# a target-dir set in a cargo config file is not.
release=${CARGO_TARGET_DIR:-$PWD/target}/release
BIN=$release/switchboard
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

# nginx_conf NAME WORKERS: an nginx config in $work/NAME.conf, the server blocks on stdin.
nginx_conf() {
  { cat <<EOF
worker_processes $2;
daemon off;
pid $work/$1.pid;
error_log $work/$1.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
EOF
    cat
    echo "}"
  } > "$work/$1.conf"
}

# sb_yaml THREADS WINDOW: Switchboard in front of 127.0.0.1:18090 as TryVox, a limit on every
# request high enough never to reject (WINDOW: how long a key stays live), retries on.
sb_yaml() {
cat > "$work/sb.yaml" <<EOF
admin: { listen: 127.0.0.1:19901 }
log: { level: warn }
server: { threads: $1 }
profiles_dir: $PWD/config/profiles
vendors:
  - name: tryvox
    listen: 127.0.0.1:18081
    upstream: http://127.0.0.1:18090
    profile: tryvox
    limits: [ { rate: 1000000000, per: $2 } ]
    retry: { max_attempts: 3 }
EOF
}

# write_configs THREADS: origin, reference nginx proxy, Switchboard, and the wrk scripts.
write_configs() {
local THREADS=$1

ERROR_BODY='{"error":{"code":"VERIFICATION_FAILED","message":"Invalid verification code"}}'
nginx_conf origin 1 <<EOF
  server {
    listen 127.0.0.1:18090 reuseport;
    location / { default_type application/json; return 200 '{"ok":true,"id":"call_0123456789"}'; }
    location /v1/verify/check { default_type application/json; return 422 '$ERROR_BODY'; }
  }
EOF
nginx_conf proxy "$THREADS" <<EOF
  upstream origin { server 127.0.0.1:18090; keepalive 128; }
  server {
    listen 127.0.0.1:18091 reuseport;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
EOF
sb_yaml "$THREADS" 1s
# p50/p99/p99.9 in µs and req/s on one line.
cat > "$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %d %d %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout,
    summary.requests))
end
EOF
# Fixed rate: each of 10 connections waits 10 ms between requests (about 1,000 req/s).
cat "$work/report.lua" > "$work/paced.lua"
echo 'delay = function() return 10 end' >> "$work/paced.lua"
# Every request with its own key (2 wrk threads x 50k keys), reporting like the others.
cat "$work/report.lua" benches/load/keys.lua > "$work/keys.lua"
}
