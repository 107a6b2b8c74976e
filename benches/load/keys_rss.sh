#!/usr/bin/env bash
# RSS of Switchboard idle and after 100k distinct API keys went through its limiter
# (SPEC §8: ≤ 16 MiB idle, ≤ 48 MiB with 100k keys). The upstream is the bundled simulator;
# the limit is set high enough never to reject and its window (1 h) long enough that no key
# is evicted during the run, so all 100k keys are live when RSS is read.
#
# Usage: benches/load/keys_rss.sh        (installs wrk with apt-get when missing and root)
set -euo pipefail
cd "$(dirname "$0")/../.."

. benches/load/setup.sh
need_tools wrk
cargo build --release --quiet

cat > "$work/scenario.yaml" <<'YAML'
default: { status: 200, json: { ok: true } }
YAML
sb_yaml 2 1h

"$BIN" simulate --vendor tryvox --listen 127.0.0.1:18090 --scenario "$work/scenario.yaml" >/dev/null & pids+=($!)
"$BIN" --config "$work/sb.yaml" 2>"$work/sb.log" & SB=$!; pids+=("$SB")
for _ in $(seq 100); do curl -sf http://127.0.0.1:19901/readyz >/dev/null && break; sleep 0.1; done
rss() { awk '/VmRSS/ {printf "%.1f MiB", $2/1024}' /proc/$SB/status; }
keys() { curl -s http://127.0.0.1:19901/metrics | awk '/^switchboard_ratelimit_keys/ {print $2}'; }

echo "idle: $(rss)"
wrk -t2 -c16 -d"${DURATION:-30s}" -s benches/load/keys.lua http://127.0.0.1:18081 | grep -E "Requests/sec|requests in"
echo "after: $(rss), live keys: $(keys)"
