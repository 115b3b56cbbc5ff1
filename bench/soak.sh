#!/usr/bin/env bash
# `make soak`: minutes of mixed calls, timeouts, unawaited tasks, network
# fetches and client aborts under wrk load on one worker. Prints the
# worker's RSS, fd and thread counts after warm-up and at the end. Fails
# when RSS grew 5% or more, the fd or thread count changed, stats() shows
# work in flight, or the error log has a crash, [alert] or [error] line.
set -uo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
nginx=${NGINX_BIN:-nginx}  # not $NGINX: nginx reads that variable itself (inherited sockets)
port=${SOAK_PORT:-1987}
seconds=${SOAK_SECONDS:-180}
warmup=${SOAK_WARMUP:-20}
work=$(mktemp -d /tmp/resty-async-soak.XXXXXX)
base=$work/base
mkdir -p "$work/logs" "$base"

cleanup() {
    local m; m=$(cat "$work/logs/nginx.pid" 2>/dev/null)
    [ -n "$m" ] && kill -QUIT "$m" 2>/dev/null && sleep 1
    [ -n "$m" ] && kill -9 "$m" 2>/dev/null
    pkill -f "wrk .*127.0.0.1:$port" 2>/dev/null
    pkill -f "aborts.py $port" 2>/dev/null
    rm -rf "$work"
}
trap cleanup EXIT

loads=""
for m in ${LUA_MODULES:-}; do loads="$loads load_module $m;"; done
sed -e "s|@REPO@|$repo|g" -e "s|@PORT@|$port|g" -e "s|@BASE@|$base|g" \
    -e "s|@LOAD_MODULES@|$loads|" "$repo/nginx/soak.conf" > "$work/nginx.conf"
"$nginx" -p "$work" -c "$work/nginx.conf" || exit 1
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/stats" >/dev/null && break; sleep 0.1; done
master=$(cat "$work/logs/nginx.pid")
worker=$(ps --ppid "$master" -o pid= | head -1 | tr -d ' ')

rss() { awk '/^VmRSS/ {print $2}' "/proc/$worker/status"; }
fds() { ls "/proc/$worker/fd" | wc -l; }
threads() { ls "/proc/$worker/task" | wc -l; }
load() {  # seconds
    # Mixed calls, the network clients, and clients that give up on /slow
    # and /net_slow (aborts).
    wrk -t1 -c40 -d"$1"s "http://127.0.0.1:$port/mixed" > "$work/wrk-mixed.out" &
    wrk -t1 -c10 -d"$1"s "http://127.0.0.1:$port/net" > "$work/wrk-net.out" &
    python3 "$repo/bench/aborts.py" "$port" "$1" 10 /slow > "$work/aborts.out" &
    python3 "$repo/bench/aborts.py" "$port" "$1" 4 /net_slow > "$work/aborts-net.out" &
    wait
}

echo "soak: ${warmup}s warm-up, then ${seconds}s of load on worker $worker"
# (after each load, the aborted calls end and idle connections close: see
# soak.conf)
load "$warmup"
sleep 4
rss0=$(rss); fds0=$(fds); threads0=$(threads)
echo "after warm-up: RSS ${rss0} kB, fds ${fds0}, threads ${threads0}"
load "$seconds"
sleep 4
rss1=$(rss); fds1=$(fds); threads1=$(threads)
stats=$(curl -s "http://127.0.0.1:$port/stats")
echo "at the end:    RSS ${rss1} kB, fds ${fds1}, threads ${threads1}"
echo "wrk /mixed: $(grep -E 'requests in|Non-2xx|Socket errors' "$work/wrk-mixed.out" | tr -s ' ' | tr '\n' ';')"
echo "wrk /net: $(grep -E 'requests in|Non-2xx|Socket errors' "$work/wrk-net.out" | tr -s ' ' | tr '\n' ';')"
echo "client aborts on /slow: $(cat "$work/aborts.out"), on /net_slow: $(cat "$work/aborts-net.out")"
echo "stats: $stats"

fail=0
growth=$(awk -v a="$rss0" -v b="$rss1" 'BEGIN { printf "%.2f", (b - a) * 100 / a }')
echo "RSS growth after warm-up: ${growth}%"
awk -v g="$growth" 'BEGIN { exit !(g < 5) }' || { echo "FAIL: RSS grew ${growth}% (limit 5%)"; fail=1; }
[ "$fds0" = "$fds1" ] || { echo "FAIL: fd count changed: $fds0 -> $fds1"; fail=1; }
[ "$threads0" = "$threads1" ] || { echo "FAIL: thread count changed: $threads0 -> $threads1"; fail=1; }
case "$stats" in
    "in_flight=0 waiting=0 timers=0 pool_queued=0 "*) ;;
    *) echo "FAIL: work left in flight: $stats"; fail=1 ;;
esac
# (into a file: `grep | head` fails under pipefail when head stops reading)
grep -E "exited on signal|\[alert\]|\[emerg\]|\[error\]" "$work/logs/error.log" > "$work/bad.log"
if [ -s "$work/bad.log" ]; then
    head -5 "$work/bad.log"
    echo "FAIL: $(wc -l < "$work/bad.log") crash, alert or error lines in the error log"; fail=1
fi
[ -z "$(ls -A "$base")" ] || { echo "FAIL: socket files left in $base"; fail=1; }
[ "$fail" = 0 ] && echo "soak: passed"
exit "$fail"
