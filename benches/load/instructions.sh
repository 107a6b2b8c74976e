#!/usr/bin/env bash
# Instructions per proxied request, Switchboard against nginx, counted by callgrind.
#
#   benches/load/instructions.sh        # installs valgrind, wrk, nginx when missing (as root)
#
# Why: on a shared 2-vCPU VM, req/s and CPU time swing by 2x with the neighbours' load
# (steal time, cache pressure), which hides a 10 % change. The number of instructions a
# proxy executes per request does not: two runs of the same binary agree to within 0.1 %.
# It counts user space only (the kernel's TCP work is the same for both proxies: two
# recv and two send calls per request) and weighs every instruction alike (a `rep movsb`
# copy counts once per byte), so it ranks changes rather than predicting req/s.
#
# Three proxies: nginx (the reference), bare_pingora (examples/bare_pingora.rs: Pingora's
# own proxy loop and nothing else, the floor Switchboard builds on) and Switchboard (limits,
# retries, normalisation, metrics on, as in run.sh).
# Each proxy runs under callgrind in front of the same nginx origin (configs from
# setup.sh); wrk warms it up (pools, caches), the counters are zeroed, wrk runs again, and
# the counters are dumped: instructions / requests of the second run.
set -euo pipefail
cd "$(dirname "$0")/../.."
WARM=${WARM:-2s}
MEASURE=${MEASURE:-4s}

. benches/load/setup.sh
need_tools wrk nginx valgrind
cargo build --release --quiet --bin switchboard --example bare_pingora
write_configs 1
# Set, so Switchboard runs without re-executing itself (callgrind would lose it at exec).
export MIMALLOC_ARENA_EAGER_COMMIT=0
sed -i '1i master_process off;' "$work/proxy.conf"

nginx -c "$work/origin.conf" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18090/ && break; sleep 0.1; done

# measure NAME URL PATH CMD... -> "NAME requests instructions instructions/request"
measure() {
  local name=$1 url=$2 path=$3; shift 3
  local out="$work/cg.$name"
  rm -f "$out".*
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" "$@" >/dev/null 2>"$work/$name.vg" &
  local vg=$!
  for _ in $(seq 300); do curl -s -o /dev/null "$url/" && break; sleep 0.2; done
  wrk -t1 -c8 -d"$WARM" "$url$path" >/dev/null
  callgrind_control -z "$vg" >/dev/null 2>&1
  local n
  n=$(wrk -t1 -c8 -d"$MEASURE" "$url$path" | awk '/requests in/ {print $1}')
  callgrind_control -d "$vg" >/dev/null 2>&1
  sleep 1
  # The dump is written; no need for a graceful exit (Pingora's default grace is 300 s).
  kill -KILL "$vg" 2>/dev/null; wait "$vg" 2>/dev/null || true
  local ir
  ir=$(grep -h '^summary:' "$out".*.1 | awk '{print $2}')
  echo "$name $n $ir $(( ir / n ))"
}

echo "| target | path | requests | instructions | per request |"
echo "|---|---|---|---|---|"
for path in /v1/calls /v1/verify/check; do
  nginx_row=$(measure nginx http://127.0.0.1:18091 "$path" nginx -c "$work/proxy.conf")
  bare_row=$(measure bare_pingora http://127.0.0.1:18092 "$path" \
    target/release/examples/bare_pingora 127.0.0.1:18092 127.0.0.1:18090)
  sb_row=$(measure switchboard http://127.0.0.1:18081 "$path" \
    "$BIN" --config "$work/sb.yaml")
  for row in "$nginx_row" "$bare_row" "$sb_row"; do
    read -r name n ir per <<<"$row"
    echo "| $name | $path | $n | $ir | $per |"
  done
done
