#!/usr/bin/env bash
# Load harness (issue 7, SPEC §8): Switchboard against nginx and against no proxy at all.
#
#   benches/load/run.sh                 # 3 alternating rounds of 10 s, 1 worker thread each
#   ROUNDS=5 DURATION=20s THREADS=2 benches/load/run.sh
#   PARTS=latency DURATION=60s benches/load/run.sh   # only the 1,000 req/s round
#   PIN=1 benches/load/run.sh           # wrk + origin on CPU 0, the proxy under test on
#                                       # CPUs 1..THREADS (needs more CPUs than THREADS)
#
# One origin (nginx, 127.0.0.1:18090) serves a small JSON, and TryVox's documented 422 body
# on /v1/verify/check. In alternating rounds, wrk measures:
#   direct       wrk -> origin
#   nginx        wrk -> nginx keep-alive reverse proxy (worker_processes = THREADS) -> origin
#   switchboard  wrk -> Switchboard (server.threads = THREADS; a limit on every request set
#                high enough never to reject, retries on, the TryVox profile) -> origin
# each round reporting switchboard's req/s over nginx's of the same round, and the median of
# those ratios; then: the same three at a fixed 1,000 req/s (added latency), error-heavy
# alternating rounds of nginx and Switchboard (every response is a vendor error Switchboard
# normalises; ratio per round and median likewise), and a 100k-distinct-keys round.
# Access logs are off on both proxies (Switchboard `log.level: warn`, nginx `access_log off`).
# Prints markdown tables; results go to benches/RESULTS.md by hand, with the machine and date.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
DURATION=${DURATION:-10s}
THREADS=${THREADS:-1}
CONNS=${CONNS:-32}
PIN=${PIN:-0}
PARTS=${PARTS:-throughput latency errors keys}

. benches/load/setup.sh
need_tools wrk nginx
cargo build --release --quiet
write_configs "$THREADS"

# With PIN=1 the proxy under test has CPUs of its own: what is measured is its cost, not
# how the scheduler shares two vCPUs between it, the origin and wrk.
LOAD=(); PROXY=()
if [ "$PIN" = 1 ]; then
  if [ "$(nproc)" -le "$THREADS" ]; then echo "PIN=1 needs more than $THREADS CPUs" >&2; exit 1; fi
  LOAD=(taskset -c 0); PROXY=(taskset -c "1-$THREADS")
fi
"${LOAD[@]}" nginx -c "$work/origin.conf" & pids+=($!)
"${PROXY[@]}" nginx -c "$work/proxy.conf" & pids+=($!)
"${PROXY[@]}" "$BIN" --config "$work/sb.yaml" 2>"$work/sb.log" & SB=$!; pids+=("$SB")
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
cpu_ticks() { # user+system CPU ticks of a process and its children
  local total=0
  for p in "$1" $(pgrep -P "$1" || true); do
    total=$(( total + $(awk '{print $14 + $15}' /proc/"$p"/stat 2>/dev/null || echo 0) ))
  done
  echo "$total"
}
proxy_of() { case $1 in switchboard) echo "$SB";; nginx) proxy_pid;; *) echo "";; esac; }
run() { # target script conns duration path -> "reqps p50 p99 p999 errors cpu_us_per_request"
  local pid before out
  pid=$(proxy_of "$1"); before=$([ -n "$pid" ] && cpu_ticks "$pid" || echo 0)
  out=$("${LOAD[@]}" wrk -t1 -c"$3" -d"$4" -s "$work/$2" "$(url "$1")$5" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5, $6, $7}')
  read -r rps p50 p99 p999 errs n <<<"$out"
  local cpu=-
  if [ -n "$pid" ] && [ "${n:-0}" -gt 0 ]; then
    cpu=$(awk -v t=$(( $(cpu_ticks "$pid") - before )) -v hz="$(getconf CLK_TCK)" -v n="$n" 'BEGIN {printf "%.1f", t * 1e6 / hz / n}')
  fi
  echo "$rps $p50 $p99 $p999 $errs $cpu"
}
echo "idle RSS: switchboard $(( $(rss_kib $SB) / 1024 )) MiB, nginx proxy $(( $(rss_kib "$(proxy_pid)") / 1024 )) MiB"

part() { [[ " $PARTS " == *" $1 "* ]]; }
# median FIELD: the median of FIELD over ';'-separated rows (the mean of the middle two
# for an even count; '-' when the field is not measured).
median() {
  tr ';' '\n' | awk -v f="$1" 'NF {print $f}' | sort -g | awk '{a[NR]=$1} END {
    if (NR == 0 || a[1] == "-") {print "-"; exit}
    if (NR % 2) {print a[(NR+1)/2]; exit}
    m = (a[NR/2] + a[NR/2+1]) / 2; print (m == int(m)) ? m : sprintf("%.2f", m)}'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0) ? a/b : 0}'; }
# rounds PATH TARGET...: ROUNDS alternating rounds of the targets on PATH, switchboard's
# req/s over nginx's in each round (the two ran seconds apart, under the same neighbours),
# then the medians.
rounds() {
  local path=$1; shift
  local -A R=()
  local ratios="" r t out rps p50 p99 p999 errs cpu rss
  echo "CPU µs/req: the proxy's own user+system CPU time per request (\`/proc/PID/stat\`)."
  echo
  echo "| round | target | req/s | p50 µs | p99 µs | p99.9 µs | errors | CPU µs/req | switchboard/nginx |"
  echo "|---|---|---|---|---|---|---|---|---|"
  for r in $(seq "$ROUNDS"); do
    for t in "$@"; do
      out=$(run "$t" report.lua "$CONNS" "$DURATION" "$path")
      R[$t]+="$out;"
      read -r rps p50 p99 p999 errs cpu <<<"$out"
      local per=""
      if [ "$t" = switchboard ]; then
        per=$(ratio "$rps" "$(echo "${R[nginx]}" | tr ';' '\n' | awk 'NF {v=$1} END {print v}')")
        ratios+="$per;"
      fi
      echo "| $r | $t | $rps | $p50 | $p99 | $p999 | $errs | $cpu | $per |"
    done
  done
  echo
  echo "| target | median req/s | median p99 µs | median CPU µs/req | RSS after (MiB) |"
  echo "|---|---|---|---|---|"
  for t in "$@"; do
    case $t in switchboard) rss=$(( $(rss_kib "$SB") / 1024 ));; nginx) rss=$(( $(rss_kib "$(proxy_pid)") / 1024 ));; *) rss=-;; esac
    echo "| $t | $(echo "${R[$t]}" | median 1) | $(echo "${R[$t]}" | median 3) | $(echo "${R[$t]}" | median 6) | $rss |"
  done
  echo
  echo -n "switchboard/nginx: median of the rounds $(echo "$ratios" | median 1) (rounds: $(echo "$ratios" | tr ';' ' ' | xargs))"
  if [ -n "${R[direct]:-}" ]; then
    echo -n ", switchboard/direct of the medians $(ratio "$(echo "${R[switchboard]}" | median 1)" "$(echo "${R[direct]}" | median 1)")"
  fi
  echo
}

if part throughput; then
echo
echo "## Throughput ($ROUNDS alternating rounds, $DURATION each, $CONNS connections, $THREADS worker thread(s), PIN=$PIN)"
echo
rounds /v1/calls direct nginx switchboard

fi
if part latency; then
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

fi
if part errors; then
echo
echo "## Error-heavy: every response is TryVox's 422 (Switchboard normalises each one); $ROUNDS alternating rounds, $DURATION each"
echo
echo "errors: wrk counts every 4xx answer, so here all of them."
echo
rounds /v1/verify/check nginx switchboard

fi
if part keys; then
echo
echo "## 100k distinct API keys (Switchboard)"
echo
read -r rps p50 p99 p999 errs n <<<"$("${LOAD[@]}" wrk -t2 -c"$CONNS" -d"$DURATION" -s "$work/keys.lua" "$(url switchboard)" 2>/dev/null | awk '/^RESULT/ {print $2, $3, $4, $5, $6}')"
keys=$(curl -s http://127.0.0.1:19901/metrics | awk '/^switchboard_ratelimit_keys/ {print $2}')
echo "| req/s | p50 µs | p99 µs | live keys | RSS (MiB) |"
echo "|---|---|---|---|---|"
echo "| $rps | $p50 | $p99 | $keys | $(( $(rss_kib $SB) / 1024 )) |"
fi
