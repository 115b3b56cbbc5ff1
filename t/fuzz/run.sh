#!/usr/bin/env bash
# `make fuzz`: random calls of every function of resty.async and of the
# fixtures module (t/fixtures), in every way a handler can make them, under
# wrk load on one nginx worker (t/fuzz/fuzz.lua makes the calls). At the end it reports
# the requests made, worker crashes (with a backtrace of each core dump when
# gdb is installed), [alert] and [crit] lines, the most error-log lines in
# one second, and stats().in_flight once the load has stopped. Fails on a
# crash, an [alert] line, or work left in flight.
#
# With FUZZ_CODE_CACHE=off every request runs in a Lua VM of its own, which
# ngx_lua closes once the request and its timers end, tasks in flight or
# not. stats() then sees one VM; what shows work left behind is the
# worker's fds and threads: each VM left open keeps its runtimes'
# completion sockets and pool threads. Both must come back to their counts
# after the warm-up.
#
# Environment:
#   FUZZ_SECONDS      length of the load (60)
#   FUZZ_CONNECTIONS  wrk connections (10)
#   FUZZ_SEED         seed of the run: request i gets seed FUZZ_SEED + i
#                     (random when unset)
#   FUZZ_CCALL        1: calls inside string.gsub callbacks and table.sort
#                     comparators too (C-call boundaries); 0: not (1)
#   FUZZ_CALLS        calls per request (20)
#   FUZZ_SKIP         functions not to call, comma-separated (e.g. the one
#                     of a known crash, to look for others)
#   FUZZ_REPLAY       "seed ...": replays these requests one after the
#                     other with curl instead of running wrk
#   FUZZ_TRACE        1: log each call (way, function, arguments) at warn
#                     level, to see what a replayed request did
#   FUZZ_CODE_CACHE   lua_code_cache: on, or off (a VM per request) (on)
#   FUZZ_PORT         port (2184)
#   FUZZ_KEEP         1: keep the work directory (logs, core dumps)
#   NGINX_BIN, LUA_MODULES  the nginx binary and the modules it loads
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
nginx=${NGINX_BIN:-nginx}  # not $NGINX: nginx reads that variable itself
port=${FUZZ_PORT:-2184}
seconds=${FUZZ_SECONDS:-60}
conns=${FUZZ_CONNECTIONS:-10}
seed=${FUZZ_SEED:-}
[ -n "$seed" ] || seed=$(( $(od -An -N3 -tu4 /dev/urandom) * 1000 ))
ccall=${FUZZ_CCALL:-1}
calls=${FUZZ_CALLS:-20}
skip=${FUZZ_SKIP:-}
tracing=${FUZZ_TRACE:-0}
replay=${FUZZ_REPLAY:-}
keep=${FUZZ_KEEP:-0}
code_cache=${FUZZ_CODE_CACHE:-on}
case $code_cache in
    on | off) ;;
    *) echo "FUZZ_CODE_CACHE must be on or off, not $code_cache" >&2; exit 2 ;;
esac
query="&ccall=$ccall&calls=$calls${skip:+&skip=$skip}"
[ "$tracing" = 1 ] && query="$query&trace=1"
url="http://127.0.0.1:$port"

work=$(mktemp -d /tmp/resty-async-fuzz.XXXXXX)
base=$work/base
log=$work/logs/error.log
mkdir -p "$work/logs" "$base"
master=""
monitor=""
load_pid=""

say() { printf '%s\n' "$*"; }

# Workers of our master (live ones).
workers() {
    [ -n "$master" ] || return 0
    ps --ppid "$master" -o pid=,stat= 2>/dev/null | awk '$2 !~ /Z/ {print $1}'
}

stop_nginx() {
    [ -n "$master" ] || return 0
    local ws; ws=$(workers)
    kill -QUIT "$master" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$master" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$master" 2>/dev/null; then
        say "odd: nginx did not exit within 10 s of QUIT; killing it"
        kill -9 "$master" $ws 2>/dev/null
    fi
    master=""
}

cleanup() {
    [ -n "$load_pid" ] && kill "$load_pid" 2>/dev/null
    [ -n "$monitor" ] && kill "$monitor" 2>/dev/null
    stop_nginx
    if [ "$keep" = 1 ]; then
        say "work directory kept: $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

# The worker pid (first line) and the top five frames (one function a
# line) of core dump $1.
core_summary() {
    gdb -batch -ex "info inferiors" -ex "bt 10" "$nginx" "$1" 2>/dev/null \
        | awk '/^\* *1 +process/ {pid = $4} /^#/ && !seen[$1]++ && n++ < 5 {f = f "\n" $0}
               END {print pid f}' \
        | sed -E 's/^#[0-9]+ +(0x[0-9a-f]+ in )?//; s/ \(.*//; s/ at .*//'
}

# Names core dump $1 after its worker; keeps it if it is the first of its
# kind (same top frames), else removes it. crashes/<k>.sig holds the
# frames of kind k, crashes/<k>.pids the workers that died of it.
file_core() {
    local summary pid sig k f
    summary=$(core_summary "$1")
    pid=$(printf '%s\n' "$summary" | head -1)
    sig=$(printf '%s\n' "$summary" | tail -n +2)
    if [ -z "$pid" ]; then
        # gdb could not read it (cut short: the kernel stops writing a
        # dump when the dumping process gets a signal)
        pid=unreadable-$(stat -c %s "$1")-bytes-$2
        sig="(unreadable core dump)"
    fi
    k=""
    for f in "$work"/crashes/*.sig; do
        [ -f "$f" ] && [ "$(cat "$f")" = "$sig" ] && k=$(basename "$f" .sig)
    done
    if [ -n "$k" ]; then
        rm -f "$1"
    else
        k=$(( $(ls "$work"/crashes/*.sig 2>/dev/null | wc -l) + 1 ))
        printf '%s\n' "$sig" > "$work/crashes/$k.sig"
        echo "$pid" > "$work/crashes/$k.core"
        mv "$1" "$work/core.$pid"
    fi
    echo "$pid" >> "$work/crashes/$k.pids"
}

# The kernel names every core dump "core" here (core_pattern "core",
# core_uses_pid 0 on Debian): move each one aside at once, let the kernel
# finish writing it (its size settles), then file it.
watch_cores() {
    local n=0 f size last
    mkdir -p "$work/crashes"
    while :; do
        if [ -f "$work/core" ]; then
            n=$((n + 1))
            f=$work/core.new.$n
            # (it can be gone already: the next crash replaced it)
            mv "$work/core" "$f" 2>/dev/null || continue
            last=-1
            while size=$(stat -c %s "$f" 2>/dev/null) && [ "$size" != "$last" ]; do
                last=$size
                sleep 0.3
            done
            if [ -f "$f" ] && command -v gdb >/dev/null; then
                file_core "$f" "$n"
            fi
        fi
        sleep 0.1
    done
}

loads=""
for m in ${LUA_MODULES:-}; do loads="$loads load_module $m;"; done
sed -e "s|@REPO@|$repo|g" -e "s|@WORK@|$work|g" -e "s|@PORT@|$port|g" \
    -e "s|@BASE@|$base|g" -e "s|@LOAD_MODULES@|$loads|" -e "s|@CODE_CACHE@|$code_cache|" \
    "$repo/t/fuzz/nginx.conf.in" > "$work/nginx.conf"

"$nginx" -p "$work" -c "$work/nginx.conf" || { say "FAIL: nginx did not start"; exit 1; }
master=$(cat "$work/logs/nginx.pid")
for _ in $(seq 50); do curl -sf "$url/ping" >/dev/null && break; sleep 0.1; done
watch_cores &
monitor=$!

# One request that makes no calls: the worker loads the modules and starts
# its runtimes; then its fds, threads and memory.
curl -sf --max-time 10 "$url/fuzz?seed=0&calls=0" >/dev/null \
    || say "odd: the warm-up request failed"
worker0=$(workers | head -1)
# (with the code cache off, once the warm-up's VM has closed)
[ "$code_cache" = off ] && sleep 2
proc_info() {  # pid
    [ -d "/proc/$1" ] || { echo "(gone)"; return; }
    echo "fds $(ls "/proc/$1/fd" | wc -l), threads $(ls "/proc/$1/task" | wc -l)," \
         "RSS $(awk '/^VmRSS/ {print $2}' "/proc/$1/status") kB"
}
info0=$(proc_info "$worker0")
fds0=$(ls "/proc/$worker0/fd" 2>/dev/null | wc -l)
threads0=$(ls "/proc/$worker0/task" 2>/dev/null | wc -l)

if [ -n "$replay" ]; then
    say "fuzz: replaying seeds $replay (ccall=$ccall, calls=$calls) on worker $worker0"
    n=0
    for s in $replay; do
        n=$((n + 1))
        out=$(curl -s --max-time 60 -o /dev/null -w '%{http_code} %{time_total}s' \
              "$url/fuzz?seed=$s$query")
        say "  seed $s: $out"
    done
    requests="$n replayed"
    run="replay of $replay"
else
    say "fuzz: ${seconds}s, $conns connections, seeds $seed+1... (ccall=$ccall," \
        "calls=$calls) on worker $worker0"
    FUZZ_SEED=$seed FUZZ_QUERY=$query wrk -t1 -c"$conns" -d"$seconds"s --timeout 30s \
        -s "$repo/t/fuzz/wrk.lua" "$url/" > "$work/wrk.out" 2>&1 &
    load_pid=$!
    wait "$load_pid"
    run="seed $seed, ${seconds}s, $conns connections"
    load_pid=""
    requests=$(grep -E "requests in" "$work/wrk.out" | awk '{print $1}')
    wrk_errors=$(grep -E "Socket errors|Non-2xx" "$work/wrk.out" | tr -s ' ' | tr '\n' ';')
fi

# stats().in_flight 1 s after the load stopped (the handler waits for
# running requests and timers, drops the kept handles and collects them).
sleep 1
worker1=$(workers | head -1)
info1=$(proc_info "$worker1")
if ! curl -s --max-time 60 "$url/stats" > "$work/stats.out"; then
    say "odd: /stats did not answer within 60 s (worker hung?)"
fi
in_flight=$(sed -n 's/^in_flight=//p' "$work/stats.out")
started=$(sed -n 's/^started=//p' "$work/stats.out")
unfinished=$(sed -n 's/^unfinished=//p' "$work/stats.out")

# With the code cache off: the VMs close once their requests and timers
# end; a pool thread of a closed VM exits once its job has run out its
# sleep (the fuzzer caps those at 0.5 s).
fds_left=""
threads_left=""
if [ "$code_cache" = off ] && [ -d "/proc/$worker1" ]; then
    for _ in $(seq 150); do
        fds_left=$(( $(ls "/proc/$worker1/fd" | wc -l) - fds0 ))
        threads_left=$(( $(ls "/proc/$worker1/task" | wc -l) - threads0 ))
        [ "$fds_left" -le 0 ] && [ "$threads_left" -le 0 ] && break
        sleep 0.1
    done
    info2=$(proc_info "$worker1")
fi

stop_nginx
# (the last core dumps are filed before the monitor stops)
sleep 1
kill "$monitor" 2>/dev/null; wait "$monitor" 2>/dev/null; monitor=""

crashes=$(grep -c "exited on signal" "$log")
# (with the code cache off, nginx alerts at start that it is)
alerts=$(grep "\[alert\]" "$log" | grep -vc "lua_code_cache is off")
crits=$(grep -c "\[crit\]" "$log")
emergs=$(grep -c "\[emerg\]" "$log")
errors=$(grep -c "\[error\]" "$log")
# (lines without a time stamp, such as Rust's panic messages on stderr,
# are left out)
flood=$(awk '/^[0-9]+\/[0-9]+\/[0-9]+ / {print $1, $2}' "$log" | uniq -c | sort -rn | head -1 \
        | awk '{print $1 " at " $2 " " $3}')
untimed=$(grep -cvE '^[0-9]+/[0-9]+/[0-9]+ ' "$log")
statuses=$(awk '$4 ~ /^\/fuzz/ {print $2}' "$work/logs/access.log" | sort | uniq -c \
           | awk '{printf "%s:%s ", $2, $1}')
slowest=$(awk '$4 ~ /^\/fuzz/' "$work/logs/access.log" | sort -k3 -rn | head -1 \
          | awk '{print $3 "s " $4}')
left=$(ls -A "$base")

say ""
say "== results ($run, ccall=$ccall, lua_code_cache $code_cache${skip:+, skip $skip})"
say "requests: ${requests:-?} completed, ${started:-?} started in nginx${wrk_errors:+; wrk: $wrk_errors}"
say "statuses: $statuses slowest: ${slowest:-none}"
cores=$(cat "$work"/crashes/*.pids 2>/dev/null | wc -l)
say "worker crashes: $crashes ($cores core dumps read, $(ls "$work"/crashes/*.sig 2>/dev/null | wc -l) distinct top frames)"
say "[alert] lines: $alerts ($((alerts - crashes)) other than crashes), [crit]: $crits, [emerg]: $emergs, [error]: $errors"
say "most error-log lines in one second: ${flood:-0}; lines without a time stamp (stderr): $untimed"
say "in_flight after the load: ${in_flight:-?}"
say "worker $worker0 after warm-up: $info0"
say "worker $worker1 at the end:    $info1"
if [ "$code_cache" = off ]; then
    say "worker $worker1 once its VMs closed: ${info2:-(gone)}; above the warm-up's: fds ${fds_left:-?}, threads ${threads_left:-?}"
fi
[ -n "$left" ] && say "left in the base directory after nginx stopped: $left"

if [ "$crashes" -gt 0 ] || [ "$alerts" -gt 0 ] || [ "$crits" -gt 0 ]; then
    say ""
    say "== [alert]/[crit] lines (first 10)"
    grep -E "\[alert\]|\[crit\]" "$log" | grep -v "lua_code_cache is off" | head -10
fi
if grep -qE "\[(warn|error|crit)\]" "$log"; then
    say ""
    say "== [warn], [error] and [crit] messages by count (digits folded)"
    grep -E "\[(warn|error|crit)\]" "$log" \
        | sed -E 's/^[0-9/]+ [0-9:]+ //; s/ [0-9]+#[0-9]+: (\*[0-9]+ )?/ /; s/, client: .*//; s/[0-9]+/N/g' \
        | cut -c1-200 | sort | uniq -c | sort -rn | head -15
fi
if [ "$untimed" -gt 0 ]; then
    say ""
    say "== lines without a time stamp (written to stderr) by count, cut to 120 columns"
    grep -vE '^[0-9]+/[0-9]+/[0-9]+ ' "$log" | sed -E 's/[0-9]+/N/g' | cut -c1-120 \
        | sort | uniq -c | sort -rn | head -8
fi
# Seeds of the requests (r) and timer callbacks (t) that were running in
# worker $1 when it died.
seeds_of() {
    printf '%s\n' $unfinished | awk -F@ -v p="$1" '$2 == p {print $1}' | tr '\n' ' '
}
say ""
say "== /stats"
grep -v '^unfinished=' "$work/stats.out"

if [ "$crashes" -gt 0 ] && ! command -v gdb >/dev/null; then
    say ""
    say "(no backtraces: gdb is not installed; apt-get install gdb)"
fi
for k in $(ls "$work"/crashes/ 2>/dev/null | sed -n 's/\.sig$//p' | sort -n); do
    pid=$(cat "$work/crashes/$k.core")
    say ""
    say "== crash $k: $(wc -l < "$work/crashes/$k.pids") core dump(s) with these top frames; core.$pid:"
    gdb -batch -ex bt "$nginx" "$work/core.$pid" 2>/dev/null | grep -E '^#' \
        | awk '!seen[$1]++' | head -30 | cut -c1-300
    say "running in worker $pid when it died: $(seeds_of "$pid")"
    rs=$(seeds_of "$pid" | tr ' ' '\n' | sed -n 's/^r//p' | tr '\n' ' ')
    if [ -n "$rs" ]; then
        say "replay: make fuzz FUZZ_CCALL=$ccall FUZZ_CALLS=$calls${skip:+ FUZZ_SKIP=$skip} FUZZ_REPLAY=\"${rs% }\""
    fi
done

fail=0
[ "$crashes" -gt 0 ] && fail=1
[ "$alerts" -gt 0 ] && fail=1
[ "${in_flight:-x}" = 0 ] || fail=1
if [ "$code_cache" = off ] && ! { [ "${fds_left:-1}" -le 0 ] && [ "${threads_left:-1}" -le 0 ]; }; then
    fail=1
fi
say ""
if [ "$fail" = 0 ]; then say "fuzz: passed"; else say "fuzz: FAILED"; fi
exit "$fail"
