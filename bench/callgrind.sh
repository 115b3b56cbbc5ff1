#!/usr/bin/env bash
# `make bench-callgrind`: instructions per request of the scenarios of
# `make bench`, counted by valgrind's callgrind. Unlike requests/s on a
# shared VM, these counts repeat closely from run to run, so they show what
# a change to the code costs or saves.
#
# For each scenario: nginx/bench.conf in one process (master_process off,
# one worker's work) under callgrind with instrumentation off; wrk warms
# it up; then callgrind counts while wrk runs BENCH_CG_SECONDS at 50
# connections. Requests are wrk's count. "worker" is the nginx thread (the
# event loop, Lua, the Rust calls), "other threads" are the pool threads
# (resty-async's, or nginx's thread_pool for the peer). Kernel time is not
# counted: callgrind sees user space only.
#
# Prints a Markdown table and writes it to bench/CALLGRIND.md. Settings
# (environment): BENCH_CG_SECONDS (5), BENCH_CG_PORT (18081), BENCH_CG_OUT
# (bench/CALLGRIND.md), BENCH_CG_CONNS (50), BENCH_THREADS (nproc: resty-async's pool and the
# peer's thread_pool, as in `make bench`), BENCH_ONLY (a regex of scenario
# names), BENCH_NGINX (or NGINX), LUA_MODULES, WRK.
set -euo pipefail
cd "$(dirname "$0")/.."
. bench/nginx.sh

SECONDS_MEASURED=${BENCH_CG_SECONDS:-5}
PORT=${BENCH_CG_PORT:-18081}
ONLY=${BENCH_ONLY:-}
OUT=${BENCH_CG_OUT:-$PWD/bench/CALLGRIND.md}
WRK=${WRK:-wrk}
CONNS=${BENCH_CG_CONNS:-50}
THREADS=${BENCH_THREADS:-$(nproc)}
PREFIX=$PWD/build/callgrind
# name:path, in the order of bench/run.sh
SCENARIOS="baseline:/baseline fast:/fast wake:/wake handoff:/handoff peer:/peer
           ngx_sleep:/ngx_sleep async_sleep:/async_sleep
           lua_fetch:/lua_fetch fetch:/fetch tokio_fetch:/tokio_fetch capture:/capture"

for tool in valgrind callgrind_control "$WRK"; do
    command -v "$tool" >/dev/null || { echo "bench: $tool not found (apt-get install valgrind wrk)" >&2; exit 1; }
done

VG_PID=""
# Stops nginx under valgrind: TERM (valgrind writes its files), KILL if it
# is still there after 10 s.
stop_valgrind() {
    [ -n "$VG_PID" ] || return 0
    signal_and_wait "$VG_PID" TERM 10 || kill -KILL "$VG_PID" 2>/dev/null || true
    wait "$VG_PID" 2>/dev/null || true
    VG_PID=""
}
cleanup() { stop_valgrind; }
trap cleanup EXIT
trap 'exit 130' INT TERM

bench_prefix "$PREFIX"

# Every scenario is requested at the same path, /_, its location renamed in
# that run's nginx.conf: nginx finds a location in a tree of their names,
# and the deeper a name sits there, the more compares it costs (bench/
# README.md has the figures), as a longer path costs more to parse. "/_"
# sorts before every other name, so it sits at the same depth in every run.
SAME_PATH=/_

# Sets RESULT to "requests worker_Ir other_Ir" for the scenario of
# location `path`.
measure() { # path
    rm -f "$PREFIX"/callgrind.out.*
    render_conf "$PREFIX" "$PORT" 1 "$THREADS"
    grep -q "location = $1 {" "$PREFIX/nginx.conf" || { echo "bench: no location = $1 in nginx/bench.conf" >&2; exit 1; }
    sed -i "s|location = $1 {|location = $SAME_PATH {|" "$PREFIX/nginx.conf"
    valgrind --tool=callgrind --instr-atstart=no --separate-threads=yes \
        --callgrind-out-file="$PREFIX/callgrind.out.%p" \
        "$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf" -g 'daemon off; master_process off;' \
        >"$PREFIX/logs/valgrind.log" 2>&1 &
    VG_PID=$!
    local i up=""
    for i in $(seq 300); do
        [ "$(http_status "$PORT" "$SAME_PATH")" = 200 ] && { up=1; break; }
        kill -0 "$VG_PID" 2>/dev/null || { echo "bench: nginx under valgrind exited; see $PREFIX/logs" >&2; exit 1; }
        sleep 0.1
    done
    [ -n "$up" ] || { echo "bench: GET $1 under valgrind did not answer 200 in 30 s; see $PREFIX/logs" >&2; exit 1; }
    "$WRK" -t1 -c"$CONNS" -d3s "http://127.0.0.1:$PORT$SAME_PATH" >/dev/null
    callgrind_control -i on "$VG_PID" >/dev/null 2>&1
    local out
    out=$("$WRK" -t1 -c"$CONNS" -d"${SECONDS_MEASURED}s" "http://127.0.0.1:$PORT$SAME_PATH")
    callgrind_control -i off "$VG_PID" >/dev/null 2>&1
    callgrind_control -d "$VG_PID" >/dev/null 2>&1
    stop_valgrind
    local requests non2xx
    requests=$(awk '/requests in/ { print $1 }' <<<"$out")
    non2xx=$(awk '/Non-2xx/ { print $NF }' <<<"$out")
    if [ -z "$requests" ] || [ "$requests" = 0 ] || [ -n "$non2xx" ]; then
        echo "bench: wrk on $1 under valgrind: $out" >&2
        exit 1
    fi
    # One file per thread and dump: <pid>.<dump>-<thread>; thread 01 is
    # nginx's own.
    # callgrind_control exits 0 even when it reached no process: no dump
    # file, or no instructions counted, means the counts are not there.
    local dumps=("$PREFIX"/callgrind.out.*.*-*)
    [ -e "${dumps[0]}" ] || { echo "bench: callgrind wrote no dump for $1; see $PREFIX/logs" >&2; exit 1; }
    RESULT=$(awk -v req="$requests" '
        /^totals:/ { if (FILENAME ~ /-01$/) w += $2; else o += $2 }
        END { printf "%d %d %d\n", req, w, o }' "${dumps[@]}")
    case $RESULT in
        *" 0 "*) echo "bench: callgrind counted no instructions of the worker for $1" >&2; exit 1 ;;
    esac
}

declare -A TOTAL WORKER OTHER REQS
NAMES=()
for spec in $SCENARIOS; do
    name=${spec%%:*}
    path=${spec#*:}
    [ -z "$ONLY" ] || [[ $name =~ $ONLY ]] || continue
    measure "$path"
    read -r req w o <<<"$RESULT"
    REQS[$name]=$req
    WORKER[$name]=$((w / req))
    OTHER[$name]=$((o / req))
    TOTAL[$name]=$(((w + o) / req))
    NAMES+=("$name")
    printf '  %-12s %8d requests  %7d instructions/request (worker %d, other threads %d)\n' \
        "$name" "$req" "${TOTAL[$name]}" "${WORKER[$name]}" "${OTHER[$name]}" >&2
done

report() {
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), \`make bench-callgrind\`, $(valgrind --version)," \
         "$CONNS connections, ${SECONDS_MEASURED} s per scenario; instructions in user space (the kernel's" \
         "are not counted), per request:"
    echo
    echo "| Scenario | All threads | Worker thread | Other threads | Worker − baseline's | Target |"
    echo "|---|---|---|---|---|---|"
    local name extra target
    for name in "${NAMES[@]}"; do
        extra="—"
        [ -n "${WORKER[baseline]:-}" ] && extra=$(printf '%+d' $((WORKER[$name] - WORKER[baseline])))
        target=$(target_of "$name")
        printf '| %s | %d | %d | %d | %s | %s |\n' "$name" "${TOTAL[$name]}" "${WORKER[$name]}" \
            "${OTHER[$name]}" "$extra" "$target"
    done
}

# The worker's instructions above the baseline a scenario should stay
# within, and whether it does ("—": no target).
target_of() { # name
    local limit
    case $1 in
        fast) limit=600 ;;
        wake | async_sleep) limit=3000 ;;
        *) echo "—"; return ;;
    esac
    if [ -z "${WORKER[baseline]:-}" ]; then
        echo "≤ +$limit"
        return
    fi
    local extra=$((WORKER[$1] - WORKER[baseline])) verdict=met
    ((extra <= limit)) || verdict="not met"
    if [ "$1" = wake ] && [ -n "${WORKER[peer]:-}" ] \
        && ((WORKER[wake] >= WORKER[peer])); then
        verdict="not met (peer's worker: $(printf '%+d' $((WORKER[peer] - WORKER[baseline]))))"
    fi
    echo "≤ +$limit: $verdict"
}

report | tee "$OUT"
