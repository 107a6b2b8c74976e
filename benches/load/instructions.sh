#!/usr/bin/env bash
# Instructions per request, Switchboard against nginx, counted by callgrind.
#
#   benches/load/instructions.sh        # installs valgrind, wrk, nginx when missing (as root)
#   PARTS="floor log" benches/load/instructions.sh      # a subset: groups and/or row names
#   PARTS=switchboard_log_json benches/load/instructions.sh
#
# Why: on a shared 2-vCPU VM, req/s and CPU time swing by 2x with the neighbours' load
# (steal time, cache pressure), which hides a 10 % change. The number of instructions a
# proxy executes per request does not: two runs of the same binary agree to within 0.1 %.
# It counts user space only (the kernel's TCP work is the same for both proxies: two
# recv and two send calls per request) and weighs every instruction alike (a `rep movsb`
# copy counts once per byte), so it ranks changes rather than predicting req/s.
#
# Rows, by group (PARTS, default all three; a row also runs when PARTS names it):
#   floor   static 200, no upstream: what one HTTP/1 request costs a server at all.
#     nginx_return_200      nginx `return 200` with the origin's body
#     bare_serve            examples/bare_serve.rs: Pingora's HTTP server and a static answer;
#                           above nginx_return_200 is the framework's floor
#   proxy   both paths, /v1/calls (200) and /v1/verify/check (TryVox's 422), access logs off:
#     nginx                 nginx keep-alive reverse proxy (the reference)
#     bare_pingora          examples/bare_pingora.rs: Pingora's own proxy loop and nothing
#                           else, the floor Switchboard builds on
#     switchboard           limits, retries, normalisation, metrics on, as in run.sh
#   log     happy path only, an access line per request, as an operator would run it:
#     nginx_log             the nginx proxy with `access_log ... combined buffer=64k` to a file
#     switchboard_log_text  Switchboard with `log: { level: info }` (stderr to a file)
#     switchboard_log_json  Switchboard with `log: { level: info, format: json }`
#   The log rows fail loudly when the file holds no access line (a log that is not written
#   costs nothing and would measure nothing).
#
# Each server runs under callgrind (origin: the same nginx, configs from setup.sh); wrk
# warms it up (pools, caches), the counters are zeroed, wrk runs again, and the counters
# are dumped: instructions / requests of the second run. About 3 minutes for all rows.
set -euo pipefail
cd "$(dirname "$0")/../.."
WARM=${WARM:-2s}
MEASURE=${MEASURE:-4s}
PARTS=${PARTS:-floor proxy log}

. benches/load/setup.sh
need_tools wrk nginx valgrind
cargo build --release --quiet --bin switchboard --example bare_pingora --example bare_serve
write_configs 1
BODY='{"ok":true,"id":"call_0123456789"}'
nginx_conf static 1 <<EOF
  server {
    listen 127.0.0.1:18093 reuseport;
    location / { default_type application/json; return 200 '$BODY'; }
  }
EOF
nginx_conf proxy_log 1 <<EOF
  upstream origin { server 127.0.0.1:18090; keepalive 128; }
  server {
    listen 127.0.0.1:18095 reuseport;
    access_log $work/access.log combined buffer=64k;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
EOF
sed 's/^log: .*/log: { level: info }/' "$work/sb.yaml" > "$work/sb_log_text.yaml"
sed 's/^log: .*/log: { level: info, format: json }/' "$work/sb.yaml" > "$work/sb_log_json.yaml"
# Set, so Switchboard runs without re-executing itself (callgrind would lose it at exec).
export MIMALLOC_ARENA_EAGER_COMMIT=0
# One process under callgrind: the one that serves.
for c in proxy static proxy_log; do sed -i '1i master_process off;' "$work/$c.conf"; done

nginx -c "$work/origin.conf" & pids+=($!)
for _ in $(seq 50); do curl -sf -o /dev/null http://127.0.0.1:18090/ && break; sleep 0.1; done

# measure NAME URL PATH CMD... -> "NAME requests instructions instructions/request";
# the server's stderr goes to $work/NAME.stderr, valgrind's own to $work/NAME.vg.
measure() {
  local name=$1 url=$2 path=$3; shift 3
  local out="$work/cg.$name"
  rm -f "$out".*
  valgrind --tool=callgrind --callgrind-out-file="$out.%p" --log-file="$work/$name.vg" \
    "$@" >/dev/null 2>"$work/$name.stderr" &
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

# access_lines NAME FILE PATTERN: how many access lines FILE holds; exits when none.
access_lines() {
  local count
  count=$(grep -c -- "$3" "$2" || true)
  if [ "${count:-0}" = 0 ]; then
    echo "$1: no access line matching '$3' in $2; its last lines:" >&2
    tail -n 5 "$2" >&2 || true
    exit 1
  fi
  echo "$count"
}

want() { [[ " $PARTS " == *" $1 "* || " $PARTS " == *" $2 "* ]]; }
# row PATH NAME URL CMD...: measures NAME on PATH and prints its table row.
row() {
  local path=$1 out name n ir per; shift
  out=$(measure "$1" "$2" "$path" "${@:3}")
  read -r name n ir per <<<"$out"
  echo "| $name | $path | $n | $ir | $per |"
}
notes=()

echo "| target | path | requests | instructions | per request |"
echo "|---|---|---|---|---|"
if want floor nginx_return_200; then
  row /v1/calls nginx_return_200 http://127.0.0.1:18093 nginx -c "$work/static.conf"
fi
if want floor bare_serve; then
  row /v1/calls bare_serve http://127.0.0.1:18094 "$release"/examples/bare_serve 127.0.0.1:18094
fi
for path in /v1/calls /v1/verify/check; do
  if want proxy nginx; then
    row "$path" nginx http://127.0.0.1:18091 nginx -c "$work/proxy.conf"
  fi
  if want proxy bare_pingora; then
    row "$path" bare_pingora http://127.0.0.1:18092 \
      "$release"/examples/bare_pingora 127.0.0.1:18092 127.0.0.1:18090
  fi
  if want proxy switchboard; then
    row "$path" switchboard http://127.0.0.1:18081 "$BIN" --config "$work/sb.yaml"
  fi
done
if want log nginx_log; then
  row /v1/calls nginx_log http://127.0.0.1:18095 nginx -c "$work/proxy_log.conf"
  # Killed, not stopped: the last buffer (under 64 KiB) is lost, the rest was written.
  lines=$(access_lines nginx_log "$work/access.log" '"GET /v1/calls HTTP/1.1" 200')
  notes+=("nginx_log: $lines access lines in access.log")
fi
for format in text json; do
  if want log "switchboard_log_$format"; then
    name=switchboard_log_$format
    row /v1/calls "$name" http://127.0.0.1:18081 "$BIN" --config "$work/sb_log_$format.yaml"
    lines=$(access_lines "$name" "$work/$name.stderr" 'switchboard::access')
    notes+=("$name: $lines access lines on stderr, $(wc -c <"$work/$name.stderr") bytes")
  fi
done
if [ ${#notes[@]} -gt 0 ]; then echo; printf '%s\n' "${notes[@]}"; fi
