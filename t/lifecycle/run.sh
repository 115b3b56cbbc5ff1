#!/usr/bin/env bash
# Process lifecycle under load: 20 reloads, SIGKILL of a worker, a graceful
# quit while requests wait, with the tokio module (resty_async_tokio), the
# fixtures module (its functions, pool jobs and a userdata's async method)
# and resty_async_http in use, by requests, by timers they start and by task
# handles kept in a module's table.
# Fails on a worker crash, an [alert]/[emerg] line, a failed request, a hang,
# a quit slower than 5 s, leaked fds, threads or socket directories.
#
# LIFECYCLE_CODE_CACHE=off runs it all with `lua_code_cache off`: a Lua VM,
# hence a runtime, per request and the timers it starts (on by default).
# LIFECYCLE_KEEP=1 keeps the work directory (config, logs).
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
nginx=${TEST_NGINX_BINARY:-nginx}
port=${LIFECYCLE_PORT:-1986}
# The upstream server of /fetch, in the same nginx.
upstream=$((port + 1))
work=$(mktemp -d /tmp/resty-async-lifecycle.XXXXXX)
base=$work/base
mkdir -p "$work/logs" "$base"
fail=0
code_cache=${LIFECYCLE_CODE_CACHE:-on}
case $code_cache in
    on | off) ;;
    *) echo "LIFECYCLE_CODE_CACHE must be on or off, not $code_cache" >&2; exit 2 ;;
esac
# The requests of the load, the warm-up and the checks.
mix="/sleep,/sha,/mixed,/fetch,/keep,/timer,/method,/http"
keep=/keep
[ "$code_cache" = off ] && keep="/keep?block=1" && mix="$mix,$keep"

say() { printf '%s\n' "$*"; }
bad() { say "FAIL: $*"; fail=1; }

master_pid() { cat "$work/logs/nginx.pid" 2>/dev/null; }
# Live (not zombie) worker pids of the master.
workers() {
    local m; m=$(master_pid) || return
    ps --ppid "$m" -o pid=,stat=,cmd= 2>/dev/null | awk '$2 !~ /Z/ && /worker process/ {print $1}'
}
# The master (if alive and not a zombie) and its workers.
all_nginx() {
    local m; m=$(master_pid) || return
    [ -n "$m" ] || return
    ps -p "$m" -o stat= 2>/dev/null | grep -qv Z && { echo "$m"; workers; }
}

cleanup() {
    local m; m=$(master_pid)
    [ -n "$m" ] && kill -9 "$m" 2>/dev/null
    for p in $(all_nginx); do kill -9 "$p" 2>/dev/null; done
    if [ "${LIFECYCLE_KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT

loads=""
for m in ${TEST_NGINX_LOAD_MODULES:-}; do loads="$loads load_module $m;"; done
sed -e "s|@REPO@|$repo|g" -e "s|@PORT@|$port|g" -e "s|@BASE@|$base|g" -e "s|@UPSTREAM@|$upstream|g" \
    -e "s|@LOAD_MODULES@|$loads|" -e "s|@CODE_CACHE@|$code_cache|" "$repo/t/lifecycle/nginx.conf.in" > "$work/nginx.conf"

"$nginx" -p "$work" -c "$work/nginx.conf" || { bad "nginx did not start"; exit 1; }
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/sleep?s=0" >/dev/null && break; sleep 0.1; done

fds_of() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }
threads_of() { ls "/proc/$1/task" 2>/dev/null | wc -l; }
# Threads of process $1 named $2.
named_threads() { cat /proc/"$1"/task/*/comm 2>/dev/null | grep -cx "$2"; }

# Warm up every worker (until each has started its tokio runtime, whose
# epoll and eventfd count), then remember their fd counts.
for _ in $(seq 10); do
    python3 "$repo/t/lifecycle/load.py" "$port" 1 8 "$mix" >/dev/null || bad "warm-up load failed"
    cold=0
    for w in $(workers); do [ "$(named_threads "$w" resty-tokio)" -ge 1 ] || cold=1; done
    [ "$cold" = 0 ] && break
done
declare -A fds_before
sleep 0.5
for w in $(workers); do fds_before[$w]=$(fds_of "$w"); done

# 1. Load with many requests, fds must not grow.
out=$(python3 "$repo/t/lifecycle/load.py" "$port" 3 16 "$mix") || bad "steady load: $out"
say "steady load: $out"
# Threads: the worker's own, at most one pool of nproc threads for each of
# the three runtimes that run blocking calls (built-ins, fixtures module,
# the tokio module, which makes its HTTP clients there), and the tokio
# runtime's one worker thread (its URLs need no DNS look-up).
max_threads=$((1 + 3 * $(nproc) + 1))
# (A connection of a fetch that just ended may still be closing; with
# lua_code_cache off, the VMs of the last requests close once their
# drivers see them idle, their pool threads once their jobs end: their GC,
# which the drivers' idle turns advance step by step, must first collect
# the requests' task handles: seconds after this load, more on a busy
# machine. A VM left open stays for the 30 s of /keep's tasks, longer
# than this wait.)
settle=50
[ "$code_cache" = off ] && settle=150
for w in "${!fds_before[@]}"; do
    for _ in $(seq $settle); do
        [ "$(fds_of "$w")" -le "${fds_before[$w]}" ] && [ "$(threads_of "$w")" -le "$max_threads" ] && break
        sleep 0.1
    done
    now=$(fds_of "$w")
    threads=$(threads_of "$w")
    tokio=$(named_threads "$w" resty-tokio)
    [ "$tokio" -eq 1 ] || bad "worker $w has $tokio tokio threads (want 1)"
    [ "$now" -le "${fds_before[$w]}" ] || bad "worker $w fds grew: ${fds_before[$w]} -> $now"
    [ "$threads" -le "$max_threads" ] || bad "worker $w has $threads threads (max $max_threads)"
    say "worker $w fds: ${fds_before[$w]} -> $now, threads: $threads (max $max_threads)"
done

# 2. 20 reloads under load. (The fetches use new connections: a keepalive
# connection that an old worker closes as a request goes out on it fails,
# as with any HTTP client.)
python3 "$repo/t/lifecycle/load.py" "$port" 6 16 "$mix,/sleep?s=0.2,/fetch?s=0.1,/method?ms=200,/http?s=0.1" > "$work/reload-load.out" &
load_pid=$!
for i in $(seq 20); do
    "$nginx" -p "$work" -c "$work/nginx.conf" -s reload 2>"$work/reload.err" \
        || bad "reload $i failed: $(cat "$work/reload.err")"
    sleep 0.25
done
wait "$load_pid" || bad "requests failed during reloads: $(cat "$work/reload-load.out")"
say "20 reloads under load: $(head -1 "$work/reload-load.out")"
# Old workers must be gone soon: none may hang on the driver.
for _ in $(seq 100); do [ "$(workers | wc -l)" -le 2 ] && break; sleep 0.1; done
n=$(workers | wc -l)
[ "$n" -eq 2 ] || bad "$n workers alive 10 s after the last reload (want 2)"
say "workers after reloads: $n"
# No thread survives its worker: the master has its one thread, and the
# new workers start their tokio runtime afresh.
m=$(master_pid)
[ "$(threads_of "$m")" -eq 1 ] || bad "the master has $(threads_of "$m") threads after reloads (want 1)"
python3 "$repo/t/lifecycle/load.py" "$port" 1 8 "/fetch?ka=1" >/dev/null || bad "fetch after reloads failed"
for w in $(workers); do
    t=$(threads_of "$w"); tokio=$(named_threads "$w" resty-tokio)
    [ "$t" -le "$max_threads" ] && [ "$tokio" -le 1 ] \
        || bad "worker $w after reloads: $t threads, $tokio tokio threads"
    say "worker $w after reloads: $t threads, $tokio tokio"
done

# 3. SIGKILL a worker: the master respawns it and the new one works.
victim=$(workers | head -1)
kill -9 "$victim"
for _ in $(seq 50); do [ "$(workers | wc -l)" -eq 2 ] && ! workers | grep -qx "$victim" && break; sleep 0.1; done
out=$(python3 "$repo/t/lifecycle/load.py" "$port" 1 8 "$mix") || bad "after SIGKILL: $out"
say "after SIGKILL of worker $victim: $out"
[ "$(threads_of "$(master_pid)")" -eq 1 ] || bad "the master has more than one thread after SIGKILL"

# 4. Graceful quit while requests wait in Rust (timers, fetches on the
# tokio runtime, an async method, resty_async_http) and timers they started
# call it, with task handles kept: they finish, then nginx exits, within 5 s.
python3 "$repo/t/lifecycle/load.py" "$port" 0.3 10 "/sleep?s=1.5,/fetch?s=1.5&ka=1,/method?ms=1500,/http?s=1.5&ka=1,/timer,$keep" > "$work/quit-load.out" &
load_pid=$!
sleep 0.5
start=$(date +%s%N)
"$nginx" -p "$work" -c "$work/nginx.conf" -s quit 2>/dev/null
for _ in $(seq 100); do [ -z "$(all_nginx)" ] && break; sleep 0.1; done
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ -z "$(all_nginx)" ] || bad "nginx still running 10 s after quit"
[ "$took" -lt 5000 ] || bad "quit took ${took} ms (want under 5 s)"
wait "$load_pid" || bad "waiting requests failed on quit: $(cat "$work/quit-load.out")"
say "quit while 10 requests waited: exited in ${took} ms; $(head -1 "$work/quit-load.out")"

# 5. The logs and the base directory.
# (nginx's own alert that lua_code_cache is off excepted)
grep -E "exited on signal [^9]|\[alert\]|\[emerg\]" "$work/logs/error.log" | grep -v "signal 9" \
    | grep -v "lua_code_cache is off; this will hurt performance" \
    && bad "crash or alert lines in the error log"
# (not `grep | head`: under pipefail it fails when head stops reading)
errors=$(grep -n "\[error\]" "$work/logs/error.log")
[ -n "$errors" ] && { printf '%s\n' "$errors" | sed 5q; bad "[error] lines in the error log"; }
left=$(ls -A "$base")
[ -z "$left" ] || bad "socket directories left in $base: $left"

if [ "$fail" = 0 ]; then say "lifecycle (lua_code_cache $code_cache): all checks passed"; else say "lifecycle (lua_code_cache $code_cache): FAILED"; fi
exit "$fail"
