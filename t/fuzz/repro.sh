#!/usr/bin/env bash
# The smallest reproductions of what `make fuzz` found, one fresh nginx
# (one worker) each: t/fuzz/repro.sh [case ...] (all cases by default).
# For each case: the requests made, the responses, whether the worker
# crashed, and the top of the backtrace when gdb is installed. Exits 1 when
# any case still shows its bug.
#
#   mlua-state          mlua reads a freed lua_State in its error path
#   ccall-two-waits     two waits that failed in a C-call boundary: SIGSEGV
#   ccall-sema-only     the same with ngx.semaphore alone
#   ccall-wrong-wakeup  one failed wait: a later call gets its wake-up
#
# Environment: REPRO_PORT (2185), NGINX_BIN, LUA_MODULES.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
nginx=${NGINX_BIN:-nginx}
port=${REPRO_PORT:-2185}
url="http://127.0.0.1:$port"
cases=${*:-mlua-state ccall-two-waits ccall-sema-only ccall-wrong-wakeup}
loads=""
for m in ${LUA_MODULES:-}; do loads="$loads load_module $m;"; done

work=""
master=""
stop() {
    [ -n "$master" ] && kill -QUIT "$master" 2>/dev/null
    for _ in $(seq 50); do
        [ -n "$master" ] && kill -0 "$master" 2>/dev/null || break
        sleep 0.1
    done
    [ -n "$master" ] && kill -9 "$master" 2>/dev/null
    master=""
    [ -n "$work" ] && rm -rf "$work"
    work=""
}
trap stop EXIT

start() {
    work=$(mktemp -d /tmp/resty-async-repro.XXXXXX)
    mkdir -p "$work/logs" "$work/base"
    sed -e "s|@REPO@|$repo|g" -e "s|@WORK@|$work|g" -e "s|@PORT@|$port|g" \
        -e "s|@BASE@|$work/base|g" -e "s|@LOAD_MODULES@|$loads|" \
        "$repo/t/fuzz/repro.conf.in" > "$work/nginx.conf"
    "$nginx" -p "$work" -c "$work/nginx.conf" || return 1
    master=$(cat "$work/logs/nginx.pid")
    sleep 0.3
}

get() {  # path
    local out
    out=$(curl -s --max-time 5 -w ' [%{http_code}]' "$url$1" | tr '\n' ' ')
    printf '  GET %s -> %s\n' "$1" "$out"
    last=$out
}

crashed() {
    sleep "${1:-0.5}"
    grep -q "exited on signal" "$work/logs/error.log"
}

backtrace() {
    [ -f "$work/core" ] && command -v gdb >/dev/null || return 0
    gdb -batch -ex "bt 6" "$nginx" "$work/core" 2>/dev/null | grep -E '^#' \
        | awk '!seen[$1]++' | cut -c1-160 | sed 's/^/    /'
}

fail=0
for c in $cases; do
    printf '%s:\n' "$c"
    start || { echo "  nginx did not start"; fail=1; continue; }
    last=""
    case $c in
        mlua-state)
            get /mlua-state/load
            get /mlua-state/call
            ;;
        ccall-two-waits|ccall-sema-only)
            get "/$c"
            ;;
        ccall-wrong-wakeup)
            get "/$c"
            ;;
        *)
            echo "  unknown case"; fail=1; stop; continue
            ;;
    esac
    if crashed 0.5; then
        echo "  REPRODUCED: $(grep -m1 "exited on signal" "$work/logs/error.log" | sed 's/.*\[alert\] //')"
        backtrace
        fail=1
    elif [ "$c" = ccall-wrong-wakeup ] && [ "${last#true}" = "$last" ]; then
        echo "  REPRODUCED: async.sleep(0.05) did not return true"
        fail=1
    else
        echo "  not reproduced"
    fi
    grep -E "\[error\]" "$work/logs/error.log" | sed -E 's/^[0-9/]+ [0-9:]+ //; s/, client.*//' \
        | cut -c1-160 | sort | uniq -c | sed 's/^/  log: /' | head -3
    stop
done
exit "$fail"
