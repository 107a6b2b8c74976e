#!/usr/bin/env bash
# What a shared limit adds to a proxied request (issue 13, SPEC §8: ≤ 1 ms p99 added at
# 1,000 req/s with Redis on the same host): two Switchboards from one release binary, the
# same limit on every request (high enough never to reject) — local on one, `shared: true`
# through a redis-server of this script's own on the other — in alternating rounds of wrk
# at a fixed ~1,000 req/s (10 connections, 10 ms apart), one API key.
#
#   benches/load/shared_latency.sh                  # ROUNDS=3 DURATION=10s
#   ROUNDS=5 DURATION=20s benches/load/shared_latency.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}

. benches/load/setup.sh
need_tools wrk nginx redis-server
cargo build --release --quiet
write_configs 1
rport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no >/dev/null & pids+=($!)
for _ in $(seq 100); do redis-cli -p "$rport" ping >/dev/null 2>&1 && break; sleep 0.05; done

# sb_config NAME PORT ADMIN SHARED [TOP]: one Switchboard config in $work/NAME.yaml.
sb_config() {
cat > "$work/$1.yaml" <<YAML
admin: { listen: 127.0.0.1:$3 }
log: { level: warn }
server: { threads: 1 }
profiles_dir: $PWD/config/profiles
$5
vendors:
  - name: tryvox
    listen: 127.0.0.1:$2
    upstream: http://127.0.0.1:18090
    profile: tryvox
    limits: [ { rate: 1000000000, per: 1s, shared: $4 } ]
    retry: { max_attempts: 3 }
YAML
}
sb_config local 18081 19901 false ""
sb_config shared 18082 19902 true "quota_store: { redis: 'redis://127.0.0.1:$rport', expected_replicas: 1 }"
nginx -c "$work/origin.conf" & pids+=($!)
"$BIN" --config "$work/local.yaml" 2>"$work/local.log" & pids+=($!)
"$BIN" --config "$work/shared.yaml" 2>"$work/shared.log" & pids+=($!)
for a in 19901 19902; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$a/readyz" >/dev/null && break; sleep 0.1; done
done
# The shared one must decide in Redis, not on its local share.
for _ in $(seq 100); do
  curl -s http://127.0.0.1:19902/metrics | grep -q '^switchboard_quota_store_fallback 0' && break; sleep 0.1
done
curl -s http://127.0.0.1:19902/metrics | grep -q '^switchboard_quota_store_fallback 0' || { echo "shared pod never left fallback" >&2; exit 1; }

{ cat "$work/paced.lua"; echo 'wrk.headers["Authorization"] = "Bearer sk_bench_shared_latency"'; } > "$work/paced_key.lua"
run() { # port -> "reqps p50 p99 p999 errors n"
  wrk -t1 -c10 -d"$DURATION" -s "$work/paced_key.lua" "http://127.0.0.1:$1/v1/calls" 2>/dev/null \
    | awk '/^RESULT/ {print $2, $3, $4, $5, $6, $7}'
}
decisions() { curl -s http://127.0.0.1:19902/metrics | awk '/^switchboard_quota_store_duration_seconds_count/ {print $2}'; }

echo "## Shared vs local limit, ~1,000 req/s, $ROUNDS alternating rounds of $DURATION"
echo
echo "| round | limit | req/s | p50 µs | p99 µs | p99.9 µs | errors |"
echo "|---|---|---|---|---|---|---|"
declare -A P99
before=$(decisions)
for r in $(seq "$ROUNDS"); do
  for t in local shared; do
    port=18081; [ $t = shared ] && port=18082
    read -r rps p50 p99 p999 errs _ <<<"$(run $port)"
    P99[$t]+="$p99 "
    echo "| $r | $t | $rps | $p50 | $p99 | $p999 | $errs |"
  done
done
after=$(decisions)
median() { tr ' ' '\n' | awk 'NF' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
l=$(echo "${P99[local]}" | median); s=$(echo "${P99[shared]}" | median)
echo
echo "median p99: local $l µs, shared $s µs, added $(( s - l )) µs; shared decisions made in Redis: $(awk -v a="$after" -v b="$before" 'BEGIN {printf "%d", a-b}')"
fallbacks=$(curl -s http://127.0.0.1:19902/metrics | awk '/^switchboard_quota_store_errors_total/ {s+=$2} END {print s+0}')
echo "store errors during the run: $fallbacks"
