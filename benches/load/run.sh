#!/usr/bin/env bash
# Load harness (issue 7, SPEC §8): Switchboard against nginx and against no proxy at all.
#
#   benches/load/run.sh                 # 3 alternating rounds of 10 s, 1 worker thread each
#   ROUNDS=5 DURATION=20s THREADS=2 benches/load/run.sh
#
# One origin (nginx, 127.0.0.1:18090) serves a small JSON, and TryVox's documented 422 body
# on /v1/verify/check. In alternating rounds, wrk measures:
#   direct       wrk -> origin
#   nginx        wrk -> nginx keep-alive reverse proxy (worker_processes = THREADS) -> origin
#   switchboard  wrk -> Switchboard (server.threads = THREADS; a limit on every request set
#                high enough never to reject, retries on, the TryVox profile) -> origin
# then: the same three at a fixed 1,000 req/s (added latency), an error-heavy round (every
# response is a vendor error Switchboard normalises), and a 100k-distinct-keys round.
# Access logs are off on both proxies (Switchboard `log.level: warn`, nginx `access_log off`).
# Prints markdown tables; results go to benches/RESULTS.md by hand, with the machine and date.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
CONNS=${CONNS:-32}

need() { command -v "$1" >/dev/null 2>&1; }
if ! need wrk || ! need nginx; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk nginx >/dev/null
  else
    echo "needs wrk and nginx: sudo apt-get install -y wrk nginx" >&2; exit 1
  fi
fi
cargo build --release --quiet
BIN=$PWD/target/release/switchboard
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

ERROR_BODY='{"error":{"code":"VERIFICATION_FAILED","message":"Invalid verification code"}}'
cat > "$work/origin.conf" <<EOF
worker_processes 1;
daemon off;
pid $work/origin.pid;
error_log $work/origin.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:18090 reuseport;
    location / { default_type application/json; return 200 '{"ok":true,"id":"call_0123456789"}'; }
    location /v1/verify/check { default_type application/json; return 422 '$ERROR_BODY'; }
  }
}
EOF
cat > "$work/proxy.conf" <<EOF
worker_processes $THREADS;
daemon off;
pid $work/proxy.pid;
error_log $work/proxy.err warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  upstream origin { server 127.0.0.1:18090; keepalive 128; }
  server {
    listen 127.0.0.1:18091 reuseport;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF
cat > "$work/sb.yaml" <<EOF
admin: { listen: 127.0.0.1:19901 }
log: { level: warn }
server: { threads: $THREADS }
profiles_dir: $PWD/config/profiles
vendors:
  - name: tryvox
    listen: 127.0.0.1:18081
    upstream: http://127.0.0.1:18090
    profile: tryvox
    limits: [ { rate: 1000000000, per: 1s } ]
    retry: { max_attempts: 3 }
EOF
# p50/p99/p99.9 in µs and req/s on one line.
cat > "$work/report.lua" <<'EOF'
done = function(summary, latency, requests)
  io.write(string.format("RESULT %.0f %d %d %d %d\n",
    summary.requests / (summary.duration / 1e6),
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    summary.errors.status + summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.timeout))
end
EOF
# Fixed rate: each of 10 connections waits 10 ms between requests (about 1,000 req/s).
cat "$work/report.lua" > "$work/paced.lua"
echo 'delay = function() return 10 end' >> "$work/paced.lua"
# Every request with its own key (2 wrk threads x 50k keys), reporting like the others.
cat "$work/report.lua" benches/load/keys.lua > "$work/keys.lua"

nginx -c "$work/origin.conf" & pids+=($!)
nginx -c "$work/proxy.conf" & pids+=($!)
"$BIN" --config "$work/sb.yaml" 2>"$work/sb.log" & SB=$!; pids+=($SB)
for _ in $(seq 100); do curl -sf http://127.0.0.1:19901/readyz >/dev/null && break; sleep 0.1; done
sleep 0.5

rss_kib() { # total RSS of a process and its children
  local total=0
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '/VmRSS/ {print $2}' /proc/"$p"/status 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
proxy_pid() { cat "$work/proxy.pid"; }
url() { case $1 in direct) echo http://127.0.0.1:18090;; nginx) echo http://127.0.0.1:18091;; switchboard) echo http://127.0.0.1:18081;; esac; }
run() { # target script conns duration path -> "reqps p50 p99 p999 errors"
  wrk -t1 -c"$3" -d"$4" -s "$work/$2" "$(url "$1")$5" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5, $6}'
}
echo "idle RSS: switchboard $(( $(rss_kib $SB) / 1024 )) MiB, nginx proxy $(( $(rss_kib "$(proxy_pid)") / 1024 )) MiB"

declare -A R
echo
echo "## Throughput ($ROUNDS alternating rounds, $DURATION each, $CONNS connections, $THREADS worker thread(s))"
echo
echo "| round | target | req/s | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---|---|---|---|---|---|"
for r in $(seq "$ROUNDS"); do
  for t in direct nginx switchboard; do
    out=$(run $t report.lua "$CONNS" "$DURATION" /v1/calls)
    R[$t]+="$out;"
    read -r rps p50 p99 p999 errs <<<"$out"
    echo "| $r | $t | $rps | $p50 | $p99 | $p999 | $errs |"
  done
done
median() { tr ';' '\n' | awk -v f="$1" 'NF {print $f}' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "| target | median req/s | median p99 µs | RSS after (MiB) |"
echo "|---|---|---|---|"
for t in direct nginx switchboard; do
  case $t in switchboard) rss=$(( $(rss_kib $SB) / 1024 ));; nginx) rss=$(( $(rss_kib "$(proxy_pid)") / 1024 ));; *) rss=-;; esac
  echo "| $t | $(echo "${R[$t]}" | median 1) | $(echo "${R[$t]}" | median 3) | $rss |"
done
sw=$(echo "${R[switchboard]}" | median 1); ng=$(echo "${R[nginx]}" | median 1); di=$(echo "${R[direct]}" | median 1)
echo
echo "switchboard/nginx = $(awk -v a="$sw" -v b="$ng" 'BEGIN {printf "%.2f", a/b}'), switchboard/direct = $(awk -v a="$sw" -v b="$di" 'BEGIN {printf "%.2f", a/b}')"

echo
echo "## Fixed rate, about 1,000 req/s (10 connections, 10 ms apart), $DURATION"
echo
echo "| target | req/s | p50 µs | p99 µs | p99.9 µs | added p99 vs direct µs |"
echo "|---|---|---|---|---|---|"
base=""
for t in direct nginx switchboard; do
  read -r rps p50 p99 p999 errs <<<"$(run $t paced.lua 10 "$DURATION" /v1/calls)"
  [ -z "$base" ] && base=$p99
  echo "| $t | $rps | $p50 | $p99 | $p999 | $(( p99 - base )) |"
done

echo
echo "## Error-heavy: every response is TryVox's 422 (Switchboard normalises each one)"
echo
echo "| target | req/s | p50 µs | p99 µs | p99.9 µs |"
echo "|---|---|---|---|---|"
for t in nginx switchboard; do
  read -r rps p50 p99 p999 errs <<<"$(run $t report.lua "$CONNS" "$DURATION" /v1/verify/check)"
  echo "| $t | $rps | $p50 | $p99 | $p999 |"
done

echo
echo "## 100k distinct API keys (Switchboard)"
echo
read -r rps p50 p99 p999 errs <<<"$(wrk -t2 -c"$CONNS" -d"$DURATION" -s "$work/keys.lua" "$(url switchboard)" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5, $6}')"
keys=$(curl -s http://127.0.0.1:19901/metrics | awk '/^switchboard_ratelimit_keys/ {print $2}')
echo "| req/s | p50 µs | p99 µs | live keys | RSS (MiB) |"
echo "|---|---|---|---|---|"
echo "| $rps | $p50 | $p99 | $keys | $(( $(rss_kib $SB) / 1024 )) |"
