#!/usr/bin/env bash
# `make bench`: every scenario in one run, against one nginx
# started from nginx/bench.conf (1 worker, then 2 for the scaling rows),
# driven by wrk on loopback. Prints a Markdown table and writes it, with the
# machine and the command, to bench/RESULTS.md.
#
# The Makefile builds first (build/resty_async_core.so, the bench module
# build/resty_async_bench.so, the roundtrip microbenchmark). Settings, all
# optional (environment):
#   BENCH_ROUNDS   (5)  rounds: the scenarios of a group run in turn, once
#                       per round, and each row reports the median round
#   BENCH_DURATION (2)  seconds per measured wrk run (a round), after
#   BENCH_WARMUP   (1)  seconds of warm-up per scenario (first round only)
#   BENCH_PORT     (18080)
#   BENCH_THREADS  (nproc) resty-async pool threads = nginx thread_pool threads
#   BENCH_ISO_THREADS (nproc - 1) pool threads for scenario 6
#   BENCH_OUT      (bench/RESULTS.md)
#   BENCH_ONLY     run only the scenarios whose key matches this regex
#   BENCH_NGINX (or NGINX), LUA_MODULES, CARGO, WRK
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD

. bench/nginx.sh
CARGO=${CARGO:-cargo}
WRK=${WRK:-wrk}
PORT=${BENCH_PORT:-18080}
ROUNDS=${BENCH_ROUNDS:-5}
DURATION=${BENCH_DURATION:-2}
WARMUP=${BENCH_WARMUP:-1}
NCPU=$(nproc)
THREADS=${BENCH_THREADS:-$NCPU}
ISO_THREADS=${BENCH_ISO_THREADS:-$((NCPU > 1 ? NCPU - 1 : 1))}
OUT=${BENCH_OUT:-$REPO/bench/RESULTS.md}
ONLY=${BENCH_ONLY:-}
COMMAND=${BENCH_COMMAND:-make bench}
PREFIX=$REPO/build/bench
URL=http://127.0.0.1:$PORT
# The job of scenario 6 (must match the 5 in nginx/bench.conf) and the
# connections that keep it busy.
JOB_MS=5
LOAD_CONNS=4

command -v "$WRK" >/dev/null || { echo "bench: wrk not found (apt-get install wrk)" >&2; exit 1; }

# wrk at 1000 connections, nginx with 1000 more.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

bench_prefix "$PREFIX"

NGINX_PID=""
LOAD_PID=""
cleanup() {
    if [ -n "$LOAD_PID" ] && kill -0 "$LOAD_PID" 2>/dev/null; then
        kill "$LOAD_PID" 2>/dev/null || true
        wait "$LOAD_PID" 2>/dev/null || true
    fi
    stop_nginx
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- nginx ----

start_nginx() { # workers threads [pool_cpus]
    render_conf "$PREFIX" "$PORT" "$1" "$2" "${3:-}"
    "$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf" -t -q
    "$NGINX_BIN" -p "$PREFIX" -c "$PREFIX/nginx.conf"
    local i
    for i in $(seq 50); do
        [ -s "$PREFIX/logs/nginx.pid" ] && [ "$(http_status "$PORT" /baseline)" = 200 ] && break
        sleep 0.1
    done
    NGINX_PID=$(cat "$PREFIX/logs/nginx.pid")
    for p in /baseline /fast /wake /handoff /peer /async_sleep /ngx_sleep /cpu_async /cpu_sync \
             /fetch /tokio_fetch /lua_fetch /capture; do
        local s
        s=$(http_status "$PORT" "$p")
        if [ "$s" != 200 ]; then
            echo "bench: GET $p answered $s; see $PREFIX/logs/error.log" >&2
            tail -5 "$PREFIX/logs/error.log" >&2 || true
            exit 1
        fi
    done
}

stop_nginx() {
    [ -n "$NGINX_PID" ] || return 0
    if ! signal_and_wait "$NGINX_PID" QUIT 5; then
        kill -TERM "$NGINX_PID" 2>/dev/null || true
        sleep 0.5
    fi
    NGINX_PID=""
}

# ----------------------------------------------------------------- wrk -----

declare -A RPS MEAN P99 P90 P50 ERRS SPREAD GROUP
KEYS=()
NGROUP=0

wanted() { [ -z "$ONLY" ] || [[ $1 =~ $ONLY ]]; }

# The RESULT line of bench/report.lua as "rps mean_us p99_us errors p90_us
# p50_us".
parse_result() { # file
    local line
    line=$(grep '^RESULT ' "$1" || true)
    if [ -z "$line" ]; then
        echo "bench: wrk printed no result ($1):" >&2
        cat "$1" >&2
        exit 1
    fi
    awk '{
        for (i = 2; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
        printf "%.1f %s %s %s %s %s\n", v["requests"] / (v["duration_us"] / 1e6), v["mean_us"], v["p99_us"], v["errors"], v["p90_us"], v["p50_us"]
    }' <<<"$line"
}

# Medians over the rounds of one scenario (lines "rps mean p99 errors p90 p50"):
# sets RPS, MEAN, P99 (each the median of its column), ERRS (the sum) and
# SPREAD (half the rps range, in % of the median).
store() { # key file-of-lines
    local r
    r=$(sort -n -k1,1 "$2" | awk '
        { rps[NR] = $1; mean[NR] = $2; p99[NR] = $3; err += $4; p90[NR] = $5; p50[NR] = $6 }
        function median(a, n,   i, j, t) {
            for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]; a[j + 1] = t }
            return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
        }
        END {
            lo = rps[1]; hi = rps[NR]; m = median(rps, NR)
            printf "%.1f %.1f %.1f %d %.1f %.1f %.1f\n", m, median(mean, NR), median(p99, NR), err, (m > 0 ? 50 * (hi - lo) / m : 0), median(p90, NR), median(p50, NR)
        }')
    read -r RPS[$1] MEAN[$1] P99[$1] ERRS[$1] SPREAD[$1] P90[$1] P50[$1] <<<"$r"
    KEYS+=("$1")
    printf '  %-14s c=%-5s %10.0f req/s (±%s%%)  mean %8.1f us  p99 %8.1f us  errors %s\n' \
        "$1" "${3:-}" "${RPS[$1]}" "${SPREAD[$1]}" "${MEAN[$1]}" "${P99[$1]}" "${ERRS[$1]}" >&2
}

# WRK_PREFIX (empty, or e.g. "taskset -c 0") prefixes its wrk runs.
WRK_PREFIX=""
# A group of scenarios "key:path:conns[:wrk_threads]" measured in turn,
# ROUNDS times (interleaved, so that a change of the machine's load during
# the run hits every scenario of the group alike).
group() {
    local spec key path conns threads r members=()
    for spec in "$@"; do
        IFS=: read -r key path conns threads <<<"$spec"
        wanted "$key" && members+=("$spec")
    done
    [ ${#members[@]} -gt 0 ] || return 0
    NGROUP=$((NGROUP + 1))
    for spec in "${members[@]}"; do
        IFS=: read -r key path conns threads <<<"$spec"
        GROUP[$key]=$NGROUP
        : >"$PREFIX/wrk/$key.rounds"
        $WRK_PREFIX "$WRK" -t"${threads:-1}" -c"$conns" -d"${WARMUP}s" "$URL$path" >/dev/null
    done
    for r in $(seq "$ROUNDS"); do
        for spec in "${members[@]}"; do
            IFS=: read -r key path conns threads <<<"$spec"
            $WRK_PREFIX "$WRK" -t"${threads:-1}" -c"$conns" -d"${DURATION}s" --latency -s bench/report.lua \
                "$URL$path" >"$PREFIX/wrk/$key.$r.txt"
            parse_result "$PREFIX/wrk/$key.$r.txt" >>"$PREFIX/wrk/$key.rounds"
        done
    done
    for spec in "${members[@]}"; do
        IFS=: read -r key path conns threads <<<"$spec"
        store "$key" "$PREFIX/wrk/$key.rounds" "$conns"
    done
}

# /ping at 1 connection while LOAD_CONNS other connections run $JOB_MS ms
# jobs on `load_path` (one run of ROUNDS x DURATION seconds).
# LOAD_PREFIX and further arguments prefix the load's and /ping's wrk
# (e.g. taskset -c 0).
LOAD_PREFIX=""
isolation_run() { # key load_path [command...]
    local key=$1 load=$2 secs=$((ROUNDS * DURATION))
    shift 2
    wanted "$key" || return 0
    $LOAD_PREFIX "$WRK" -t1 -c"$LOAD_CONNS" -d"$((WARMUP + secs + 2))s" --latency -s bench/report.lua \
        "$URL$load" >"$PREFIX/wrk/$key-load.txt" &
    LOAD_PID=$!
    sleep "$WARMUP"
    "$@" "$WRK" -t1 -c1 -d"${secs}s" --latency -s bench/report.lua \
        "$URL/ping" >"$PREFIX/wrk/$key.txt"
    wait "$LOAD_PID"
    LOAD_PID=""
    parse_result "$PREFIX/wrk/$key.txt" >"$PREFIX/wrk/$key.rounds"
    parse_result "$PREFIX/wrk/$key-load.txt" >"$PREFIX/wrk/$key-load.rounds"
    store "$key" "$PREFIX/wrk/$key.rounds" 1
    store "$key-load" "$PREFIX/wrk/$key-load.rounds" "$LOAD_CONNS"
}

# Scenario 6 as keys <k>idle, <k>async (pool jobs) and <k>sync (jobs in the
# handler); further arguments prefix /ping's wrk, LOAD_PREFIX the load's.
isolation_scenario() { # k [command...]
    local k=$1
    shift
    WRK_PREFIX="$*" group "${k}idle:/ping:1"
    isolation_run "${k}async" /cpu_async "$@"
    isolation_run "${k}sync" /cpu_sync "$@"
}

# ------------------------------------------------------------- the runs ----

LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
echo "== roundtrip microbenchmark (cargo bench --features internals --bench roundtrip)" >&2
ROUNDTRIP=""
if wanted roundtrip; then
    # (a case that fails must say so: its row would just be missing)
    mkdir -p "$PREFIX"
    if ! RT_OUT=$("$CARGO" bench -q --features internals --bench roundtrip 2>"$PREFIX/roundtrip.err"); then
        echo "bench: the roundtrip microbenchmark failed; see $PREFIX/roundtrip.err:" >&2
        grep -m3 -E 'panicked|assertion|left|right' "$PREFIX/roundtrip.err" >&2 || true
    fi
    ROUNDTRIP=$(grep "^roundtrip " <<<"$RT_OUT" || true)
    echo "$ROUNDTRIP" >&2
fi

echo "== 1 worker, pool threads $THREADS, wrk -t1, $ROUNDS rounds of ${DURATION}s (+${WARMUP}s warm-up)" >&2
start_nginx 1 "$THREADS"
group base1:/baseline:1 fast1:/fast:1 wake1:/wake:1 handoff1:/handoff:1 peer1:/peer:1
group base50:/baseline:50 fast50:/fast:50 wake50:/wake:50 handoff50:/handoff:50 peer50:/peer:50
group ngxsleep50:/ngx_sleep:50 asleep50:/async_sleep:50
group base1000:/baseline:1000 ngxsleep1000:/ngx_sleep:1000 asleep1000:/async_sleep:1000
# 9. HTTP: a GET to a `return 200` location of the same nginx
group luafetch50:/lua_fetch:50 fetch50:/fetch:50 tokiofetch50:/tokio_fetch:50 capture50:/capture:50
group luafetch1:/lua_fetch:1 fetch1:/fetch:1 tokiofetch1:/tokio_fetch:1 capture1:/capture:1
stop_nginx

# Isolation: CPU jobs on every core would leave none to nginx (and wrk);
# the pool gets one thread fewer than there are cores.
echo "== 1 worker, pool threads $ISO_THREADS (isolation)" >&2
start_nginx 1 "$ISO_THREADS"
isolation_scenario ping
stop_nginx

# The same with the worker pinned to CPU 0 and the pool threads to the
# other CPUs (worker_cpu_affinity, configure{ pool_cpus = ... }).
if [ "$NCPU" -gt 1 ]; then
    PIN_CPUS=$(seq -s, 1 $((NCPU - 1)))
    echo "== 1 worker on CPU 0, pool threads $ISO_THREADS on CPUs $PIN_CPUS (isolation, pinned)" >&2
    start_nginx 1 "$ISO_THREADS" "$PIN_CPUS"
    # the /ping client on the worker's CPU, the jobs' on the pool's
    LOAD_PREFIX="taskset -c $PIN_CPUS" isolation_scenario pin taskset -c 0
    stop_nginx
fi

echo "== 2 workers, wrk -t2" >&2
start_nginx 2 "$THREADS"
group base50w2:/baseline:50:2 wake50w2:/wake:50:2 wake1w2:/wake:1:1
stop_nginx

if grep -E '\[(alert|crit|emerg)\]' "$PREFIX/logs/error.log" >&2; then
    echo "bench: nginx logged alerts (above)" >&2
fi

# ------------------------------------------------------------ the table ----

have() { [ -n "${RPS[$1]:-}" ]; }
calc() { awk "BEGIN { printf \"$1\", $2 }"; }
# microseconds, the way people read them
us() { awk -v v="$1" 'BEGIN { if (v >= 10000) printf "%.1f ms", v / 1000; else if (v >= 1000) printf "%.2f ms", v / 1000; else printf "%.0f µs", v }'; }
# The median over the rounds of a comparison of two scenarios measured back
# to back in each round (same group), so that the machine's speed drifting
# during the run cancels out: "ratio" rps(key) / rps(base), or "added"
# 1/rps(key) - 1/rps(base) in µs per request (the mean latency added at one
# connection), or "p50" the median latency added (µs), which a few slow
# requests do not move. For scenarios of different groups, the same
# comparison of their medians.
compare() { # ratio|added|p50 key base
    local how=$1 a=$2 b=$3
    if [ -n "${GROUP[$a]:-}" ] && [ "${GROUP[$a]}" = "${GROUP[$b]:-}" ] && [ "$a" != "$b" ]; then
        paste -d' ' "$PREFIX/wrk/$a.rounds" "$PREFIX/wrk/$b.rounds" | awk -v how="$how" '
            # a round without requests (x or y = 0) has nothing to compare
            $1 > 0 && $7 > 0 { n++; v[n] = (how == "ratio") ? $1 / $7 : (how == "p50") ? $6 - $12 : 1e6 / $1 - 1e6 / $7 }
            END {
                if (n == 0) { print "0"; exit }
                for (i = 2; i <= n; i++) { t = v[i]; for (j = i - 1; j >= 1 && v[j] > t; j--) v[j + 1] = v[j]; v[j + 1] = t }
                printf "%.4f\n", (n % 2) ? v[(n + 1) / 2] : (v[n / 2] + v[n / 2 + 1]) / 2
            }'
    elif [ "$how" = ratio ]; then
        calc "%.4f" "${RPS[$a]} / ${RPS[$b]}"
    elif [ "$how" = p50 ]; then
        calc "%.4f" "${P50[$a]} - ${P50[$b]}"
    else
        calc "%.4f" "1e6 / ${RPS[$a]} - 1e6 / ${RPS[$b]}"
    fi
}
# A comparison printed with printf format `fmt`; "—" if either scenario was
# not measured.
shown() { # fmt ratio|added|p50 key base
    if have "$3" && have "$4"; then calc "$1" "$(compare "$2" "$3" "$4")"; else echo "—"; fi
}
ratio() { shown "%.2f ×" ratio "$@"; }
# In the targets table: three decimals, so that a ratio just under a
# threshold does not read as the threshold.
ratio3() { shown "%.3f ×" ratio "$@"; }
added() { shown "%+.1f" added "$@"; }
added_p50() { shown "%+.1f" p50 "$@"; }
# The Notes of a row at one connection: both ways of counting what it adds.
adds() { # key base
    have "$1" && have "$2" || return 0
    echo "$(added "$1" "$2") µs/req; p50 $(added_p50 "$1" "$2") µs"
}

row() { # scenario workers conns key base note
    have "$4" || return 0
    local errs=""
    [ "${ERRS[$4]}" != 0 ] && errs=" (**${ERRS[$4]} errors**)"
    printf '| %s | %s | %s | %s ±%s%%%s | %s | %s | %s | %s |\n' "$1" "$2" "$3" \
        "$(calc %.0f "${RPS[$4]}")" "$(calc %.0f "${SPREAD[$4]}")" "$errs" "$(us "${MEAN[$4]}")" "$(us "${P99[$4]}")" \
        "$(ratio "$4" "$5")" "$6"
}

verdict() { # condition-as-awk-expr
    if awk "BEGIN { exit !($1) }"; then echo "met"; else echo "**not met**"; fi
}

table() {
    echo "| Scenario | Workers | Conns | Requests/s | Mean | p99 | × baseline | Notes |"
    echo "|---|---|---|---|---|---|---|---|"
    row "1. baseline \`ngx.say\`" 1 1 base1 base1 ""
    row "1. baseline \`ngx.say\`" 1 50 base50 base50 ""
    row "1. baseline \`ngx.say\`" 1 1000 base1000 base1000 ""
    row "2. fast path \`async.sleep(0)\`" 1 1 fast1 base1 "$(adds fast1 base1)"
    row "2. fast path \`async.sleep(0)\`" 1 50 fast50 base50 ""
    row "3. wake path \`async.sha256(\"x\")\`" 1 1 wake1 base1 "$(adds wake1 base1)"
    row "3. wake path \`async.sha256(\"x\")\`" 1 50 wake50 base50 ""
    row "3. floor: \`ngx.semaphore\` hand-off, no Rust" 1 1 handoff1 base1 "$(adds handoff1 base1)"
    row "3. floor: \`ngx.semaphore\` hand-off, no Rust" 1 50 handoff50 base50 ""
    row "4. peer \`ngx.run_worker_thread\` sha256" 1 1 peer1 base1 "$(adds peer1 base1)"
    row "4. peer \`ngx.run_worker_thread\` sha256" 1 50 peer50 base50 ""
    row "5. \`ngx.sleep(0.001)\`" 1 50 ngxsleep50 base50 ""
    row "5. \`async.sleep(0.001)\`" 1 50 asleep50 base50 "$(have ngxsleep50 && have asleep50 && echo "$(ratio asleep50 ngxsleep50) ngx.sleep")"
    row "5. \`ngx.sleep(0.001)\`" 1 1000 ngxsleep1000 base1000 ""
    row "5. \`async.sleep(0.001)\`" 1 1000 asleep1000 base1000 "$(have ngxsleep1000 && have asleep1000 && echo "$(ratio asleep1000 ngxsleep1000) ngx.sleep")"
    isolation_rows "6. " ping
    isolation_rows "6. pinned: " pin
    row "7. baseline \`ngx.say\`" 2 50 base50w2 base50 ""
    row "7. wake path \`async.sha256(\"x\")\`" 2 50 wake50w2 base50 "$(have base50w2 && have wake50w2 && echo "$(ratio wake50w2 base50w2) 2-worker baseline; $(ratio wake50w2 wake50) 1 worker")"
    row "7. wake path \`async.sha256(\"x\")\`" 2 1 wake1w2 base1 "$(adds wake1w2 base1)"
    row "9. HTTP GET: Lua client over \`ngx.socket.tcp\`" 1 50 luafetch50 base50 ""
    row "9. HTTP GET: \`http.fetch\` (hyper over \`resty_async::net\`)" 1 50 fetch50 base50 "$(have luafetch50 && echo "$(ratio fetch50 luafetch50) Lua client")"
    row "9. HTTP GET: \`resty_async_tokio.fetch\` (hyper on a tokio runtime)" 1 50 tokiofetch50 base50 "$(have luafetch50 && echo "$(ratio tokiofetch50 luafetch50) Lua client")"
    row "9. HTTP GET: \`ngx.location.capture\` + \`proxy_pass\`, upstream keepalive" 1 50 capture50 base50 "$(have luafetch50 && echo "$(ratio capture50 luafetch50) Lua client")"
    row "9. HTTP GET: Lua client over \`ngx.socket.tcp\`" 1 1 luafetch1 base1 ""
    row "9. HTTP GET: \`http.fetch\`" 1 1 fetch1 base1 "$(have luafetch1 && echo "$(ratio fetch1 luafetch1) Lua client; $(added fetch1 luafetch1) µs/req")"
    row "9. HTTP GET: \`resty_async_tokio.fetch\`" 1 1 tokiofetch1 base1 "$(have luafetch1 && echo "$(ratio tokiofetch1 luafetch1) Lua client; $(added tokiofetch1 luafetch1) µs/req")"
    row "9. HTTP GET: \`ngx.location.capture\` + \`proxy_pass\`" 1 1 capture1 base1 "$(have luafetch1 && echo "$(ratio capture1 luafetch1) Lua client")"
}

targets() {
    echo "| Target | Measured | |"
    echo "|---|---|---|"
    if have fast50 && have base50; then
        echo "| fast path ≥ 0.98 × baseline req/s (50 conns) | $(ratio3 fast50 base50) | $(verdict "$(compare ratio fast50 base50) >= 0.98") |"
    fi
    if have wake50 && have base50; then
        echo "| wake path at 50 conns ≥ 0.9 × baseline req/s | $(ratio3 wake50 base50)$(have peer50 && echo " (peer: $(ratio3 peer50 base50))")$(have handoff50 && echo "; floor, the \`ngx.semaphore\` hand-off alone: $(ratio3 handoff50 base50)") | $(verdict "$(compare ratio wake50 base50) >= 0.9") |"
    fi
    if have wake1 && have base1; then
        echo "| wake path at 1 conn adds ≤ 10 µs/req | $(added wake1 base1) µs, p50 $(added_p50 wake1 base1) µs$(have peer1 && echo " (peer: $(added peer1 base1) µs, p50 $(added_p50 peer1 base1) µs)")$(have handoff1 && echo "; the \`ngx.semaphore\` hand-off alone: $(added handoff1 base1) µs") | $(verdict "$(compare added wake1 base1) <= 10") |"
    fi
    if have wake1 && have peer1 && have base1; then
        echo "| wake path at 1 conn adds no more µs/req than the peer \`ngx.run_worker_thread\` | $(added wake1 base1) µs vs $(added peer1 base1) µs | $(verdict "$(compare added wake1 base1) <= $(compare added peer1 base1)") |"
    fi
    if have asleep50 && have ngxsleep50; then
        echo "| \`async.sleep\` ≥ 0.9 × \`ngx.sleep\` req/s, 50 conns | $(ratio3 asleep50 ngxsleep50) | $(verdict "$(compare ratio asleep50 ngxsleep50) >= 0.9") |"
    fi
    if have asleep1000 && have ngxsleep1000; then
        echo "| \`async.sleep\` ≥ 0.9 × \`ngx.sleep\` req/s, 1000 conns | $(ratio3 asleep1000 ngxsleep1000) | $(verdict "$(compare ratio asleep1000 ngxsleep1000) >= 0.9") |"
    fi
    if have fetch50 && have luafetch50; then
        echo "| \`http.fetch\` ≥ 0.8 × the Lua cosocket client's req/s (50 conns) | $(ratio3 fetch50 luafetch50) | $(verdict "$(compare ratio fetch50 luafetch50) >= 0.8") |"
    fi
    isolation_targets ping "isolation: \`/ping\` p99 with pool jobs" "isolation: synchronous variant's p99"
    isolation_targets pin "… pinned (worker on CPU 0, \`pool_cpus\` the others): \`/ping\` p99 with pool jobs" \
        "… pinned: synchronous variant's p99"
}

# The rows of isolation_scenario k, each label starting with `label`.
isolation_rows() { # label k
    local idle=$2idle spec key what
    row "$1\`/ping\`, idle" 1 1 "$idle" - "p90 $(have "$idle" && us "${P90[$idle]}")"
    for spec in "$2async:on the resty-async pool" "$2sync:run in the handler"; do
        key=${spec%%:*} what=${spec#*:}
        have "$key" || continue
        row "$1\`/ping\` + ${JOB_MS} ms jobs $what" 1 "1+$LOAD_CONNS" "$key" - \
            "p99 $(calc %.2f "${P99[$key]} / ${P99[$idle]:-1}") × idle; p90 $(us "${P90[$key]}"); jobs $(calc %.0f "${RPS[$key-load]}")/s"
    done
}

# The two targets of isolation_scenario k.
isolation_targets() { # k pool_label sync_label
    local idle=$1idle pool=$1async sync=$1sync
    if have "$pool" && have "$idle"; then
        echo "| $2 ≤ 2 × idle p99 | $(us "${P99[$pool]}") vs $(us "${P99[$idle]}") idle ($(calc %.2f "${P99[$pool]} / ${P99[$idle]}") ×) | $(verdict "${P99[$pool]} <= 2 * ${P99[$idle]}") |"
    fi
    if have "$sync"; then
        echo "| $3 ≥ job length (${JOB_MS} ms) | $(us "${P99[$sync]}") | $(verdict "${P99[$sync]} >= $JOB_MS * 1000") |"
    fi
}

CPU=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
NGINX_V=$("$NGINX_BIN" -v 2>&1 | sed 's/^nginx version: //')
LUA_V=$(dpkg-query -W -f='${Version}' libnginx-mod-http-lua 2>/dev/null || echo "?")
WRK_V=$(dpkg-query -W -f='${Version}' wrk 2>/dev/null || echo "?")
DATE=$(date -u '+%Y-%m-%d %H:%M UTC')
# On a KVM guest, how long an idle vCPU polls before it halts: with 0, every
# wake-up of a thread on an idle vCPU waits for the host, which shapes every
# cross-thread figure (see bench/README.md).
HALTPOLL=$(cat /sys/module/haltpoll/parameters/guest_halt_poll_ns 2>/dev/null || true)
HALTPOLL_NOTE=${HALTPOLL:+; KVM guest, \`guest_halt_poll_ns\` = $HALTPOLL}

report() {
    echo "## Benchmarks"
    echo
    echo "$DATE, \`$COMMAND\` on $NCPU cores ($CPU), $NGINX_V," \
         "libnginx-mod-http-lua $LUA_V, wrk $WRK_V on loopback (sharing the cores)$HALTPOLL_NOTE."
    echo "Method: the scenarios of a group (same connections) run in turn, $ROUNDS rounds of" \
         "${DURATION} s each (after ${WARMUP} s of warm-up), with \`wrk -t1 --latency\` (\`-t2\` for" \
         "the 2-worker rows of 7); each row shows the median round (±: half the range of the" \
         "rounds' req/s); mean = wrk's Latency Avg, p99 = its 99% line. Ratios are to the" \
         "baseline at the same connections in this same run, each the median over the rounds of" \
         "the ratio within a round (scenarios of a round run back to back; across groups, as in" \
         "rows 7, the ratio of the medians); µs/req likewise," \
         "of 1/req_s − 1/baseline_req_s (the mean latency added), and p50 of the difference of" \
         "the median latencies." \
         "resty-async's pool and the \`thread_pool\` of \`ngx.run_worker_thread\` both have" \
         "$THREADS threads. Scenario 6 (pool: $ISO_THREADS thread(s), one core left to nginx and wrk):" \
         "\`/ping\` at 1 connection for $((ROUNDS * DURATION)) s while $LOAD_CONNS other connections run" \
         "${JOB_MS} ms CPU jobs; its pinned rows run the worker on CPU 0 (\`worker_cpu_affinity\`)" \
         "and the pool threads on the other CPUs (\`configure{ pool_cpus = ... }\`), /ping's wrk on CPU 0" \
         "and the jobs' wrk on the other CPUs." \
         "Load average before/after:" \
         "$LOAD_BEFORE / $(cut -d' ' -f1-3 /proc/loadavg)."
    echo
    table
    echo
    targets
    if [ -n "$ROUNDTRIP" ]; then
        echo
        echo "8. \`cargo bench --bench roundtrip\` (no nginx; spawn → wake → poll → complete):"
        echo
        echo "| Case | ns per round trip |"
        echo "|---|---|"
        awk '{ printf "| `%s` | %s |\n", $2, $3 }' <<<"$ROUNDTRIP"
        echo
        echo "\`ready\`: future ready at once; \`local_wake\`: woken on the same thread;" \
             "\`thread_wake\`: a oneshot completed by another thread, woken through a unix" \
             "socket; \`pool_job\`: sha256 on \`Pool\`, woken through the socket."
    fi
}

report | tee "$OUT"
echo >&2
echo "(written to ${OUT#$REPO/}; raw wrk output in ${PREFIX#$REPO/}/wrk)" >&2
