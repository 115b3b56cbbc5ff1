#!/usr/bin/env bash
# `make bench-fetch`: an HTTP GET from a handler, against a `return 200`
# location of the same nginx (one worker), by the tokio example module
# (resty_async_tokio.fetch: hyper on the worker's tokio runtime) and by a
# minimal Lua HTTP/1.1 client over ngx.socket.tcp with keepalive (in
# nginx/bench-fetch.conf), at 50 connections and at 1, with wrk on loopback.
# The scenarios of a round run in turn; each row reports the median round.
# Settings (environment): BENCH_ROUNDS (5), BENCH_DURATION (3 s),
# BENCH_PORT (18090; the upstream listens on the next port),
# BENCH_NGINX (or NGINX), LUA_MODULES, WRK.
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

. bench/nginx.sh
WRK=${WRK:-wrk}
PORT=${BENCH_PORT:-18090}
UPSTREAM=$((PORT + 1))
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-3}
PREFIX=$REPO/build/bench-fetch

command -v "$WRK" >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }
[ -e build/resty_async_tokio.so ] || { echo "bench: build/resty_async_tokio.so is missing (make)" >&2; exit 1; }
ulimit -n 65536 2>/dev/null || true

rm -rf "$PREFIX"
mkdir -p "$PREFIX/logs" "$PREFIX/sock" "$PREFIX/lib"
cp -R lualib "$PREFIX/lualib"
cp build/resty_async_core.so build/resty_async_tokio.so "$PREFIX/lib/"
load="" user=""
for m in $LUA_MODULES; do load="$load load_module $m;"; done
[ "$(id -u)" = 0 ] && user="user root;"
sed -e "s|@LUALIB@|$PREFIX/lualib|g" -e "s|@CLIB@|$PREFIX/lib|g" \
    -e "s|@LOAD_MODULES@|$load|" -e "s|@USER@|$user|" -e "s|@PORT@|$PORT|" \
    -e "s|@UPSTREAM@|$UPSTREAM|g" -e "s|@BASE@|$PREFIX/sock|" \
    nginx/bench-fetch.conf > "$PREFIX/nginx.conf"

NGINX_PID=""
cleanup() {
    [ -n "$NGINX_PID" ] && { signal_and_wait "$NGINX_PID" QUIT 5 || kill -KILL "$NGINX_PID" 2>/dev/null || true; }
}
trap cleanup EXIT

"$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf"
for _ in $(seq 50); do
    [ -s "$PREFIX/logs/nginx.pid" ] && [ "$(http_status "$PORT" /tokio)" = 200 ] && break
    sleep 0.1
done
NGINX_PID=$(cat "$PREFIX/logs/nginx.pid")
for p in /tokio /lua; do
    s=$(http_status "$PORT" "$p")
    [ "$s" = 200 ] || { echo "bench: GET $p answered $s; see $PREFIX/logs/error.log" >&2; exit 1; }
done

# requests/s of one wrk run
rps() { # path conns seconds
    "$WRK" -t1 -c"$2" -d"$3"s "http://127.0.0.1:$PORT$1" | awk '/^Requests\/sec:/ {print $2}'
}

declare -A runs
scenarios=("/tokio 50" "/lua 50" "/tokio 1" "/lua 1")
for s in "${scenarios[@]}"; do rps $s 1 >/dev/null; done   # warm-up
for r in $(seq "$ROUNDS"); do
    for s in "${scenarios[@]}"; do
        runs[$s]="${runs[$s]:-} $(rps $s "$DURATION")"
    done
done

median() { tr ' ' '\n' | grep . | sort -n | awk '{a[NR]=$1} END {print (NR % 2) ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2}'; }
errors=$(grep -c "\[error\]" "$PREFIX/logs/error.log" || true)
echo "| client | connections | requests/s (median of $ROUNDS × ${DURATION} s) |"
echo "|--------|-------------|---------------|"
for s in "${scenarios[@]}"; do
    set -- $s
    name=$([ "$1" = /tokio ] && echo "resty_async_tokio.fetch (hyper on tokio)" || echo "Lua client on ngx.socket.tcp")
    printf '| %s | %s | %.0f |\n' "$name" "$2" "$(echo "${runs[$s]}" | median)"
done
echo
echo "nginx 1 worker; $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')); [error] lines: $errors"
