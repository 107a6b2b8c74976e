#!/usr/bin/env bash
# A shared quota decision's latency with Redis on the same host (SPEC §8: ≤ 1 ms p99 added),
# paced at RATE decisions per second for DURATION seconds: starts its own redis-server on a free port.
#
#   benches/load/quota_latency.sh            # RATE=1000 DURATION=10 (seconds)
set -euo pipefail
cd "$(dirname "$0")/../.."
RATE=${RATE:-1000}
DURATION=${DURATION:-10}
command -v redis-server >/dev/null || ./dev setup
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no >/dev/null &
pid=$!
trap 'kill $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.05; done
cargo build --release --quiet --example quota_latency
"${CARGO_TARGET_DIR:-target}"/release/examples/quota_latency "redis://127.0.0.1:$port" "$RATE" "$DURATION"
