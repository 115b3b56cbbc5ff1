#!/usr/bin/env bash
# Process lifecycle under load: 20 reloads, SIGKILL of a worker, a graceful
# quit while requests wait. Fails on a worker crash, an [alert]/[emerg] line,
# a failed request, a hang, leaked fds or socket directories.
set -uo pipefail

repo=$(cd "$(dirname "$0")/../.." && pwd)
nginx=${TEST_NGINX_BINARY:-nginx}
port=${LIFECYCLE_PORT:-1986}
work=$(mktemp -d /tmp/resty-async-lifecycle.XXXXXX)
base=$work/base
mkdir -p "$work/logs" "$base"
fail=0

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
    rm -rf "$work"
}
trap cleanup EXIT

loads=""
for m in ${TEST_NGINX_LOAD_MODULES:-}; do loads="$loads load_module $m;"; done
sed -e "s|@REPO@|$repo|g" -e "s|@PORT@|$port|g" -e "s|@BASE@|$base|g" \
    -e "s|@LOAD_MODULES@|$loads|" "$repo/t/lifecycle/nginx.conf.in" > "$work/nginx.conf"

"$nginx" -p "$work" -c "$work/nginx.conf" || { bad "nginx did not start"; exit 1; }
for _ in $(seq 50); do curl -sf "http://127.0.0.1:$port/sleep?s=0" >/dev/null && break; sleep 0.1; done

fds_of() { ls "/proc/$1/fd" 2>/dev/null | wc -l; }

# Warm up every worker, then remember their fd counts.
python3 "$repo/t/lifecycle/load.py" "$port" 1 8 "/sleep,/sha,/mixed" >/dev/null || bad "warm-up load failed"
declare -A fds_before
for w in $(workers); do fds_before[$w]=$(fds_of "$w"); done

# 1. Load with many requests, fds must not grow.
out=$(python3 "$repo/t/lifecycle/load.py" "$port" 3 16 "/sleep,/sha,/mixed") || bad "steady load: $out"
say "steady load: $out"
# Threads: the worker's own plus at most one pool of nproc threads for each
# of the two runtimes (built-ins, fixtures module).
max_threads=$((1 + 2 * $(nproc)))
for w in "${!fds_before[@]}"; do
    now=$(fds_of "$w")
    threads=$(ls "/proc/$w/task" | wc -l)
    [ "$now" -le "${fds_before[$w]}" ] || bad "worker $w fds grew: ${fds_before[$w]} -> $now"
    [ "$threads" -le "$max_threads" ] || bad "worker $w has $threads threads (max $max_threads)"
    say "worker $w fds: ${fds_before[$w]} -> $now, threads: $threads (max $max_threads)"
done

# 2. 20 reloads under load.
python3 "$repo/t/lifecycle/load.py" "$port" 6 16 "/sleep?s=0.2,/sha,/mixed" > "$work/reload-load.out" &
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

# 3. SIGKILL a worker: the master respawns it and the new one works.
victim=$(workers | head -1)
kill -9 "$victim"
for _ in $(seq 50); do [ "$(workers | wc -l)" -eq 2 ] && ! workers | grep -qx "$victim" && break; sleep 0.1; done
out=$(python3 "$repo/t/lifecycle/load.py" "$port" 1 8 "/sleep,/sha,/mixed") || bad "after SIGKILL: $out"
say "after SIGKILL of worker $victim: $out"

# 4. Graceful quit while requests wait in Rust: they finish, then nginx exits.
python3 "$repo/t/lifecycle/load.py" "$port" 0.3 10 "/sleep?s=1.5" > "$work/quit-load.out" &
load_pid=$!
sleep 0.5
start=$(date +%s%N)
"$nginx" -p "$work" -c "$work/nginx.conf" -s quit 2>/dev/null
for _ in $(seq 100); do [ -z "$(all_nginx)" ] && break; sleep 0.1; done
took=$(( ($(date +%s%N) - start) / 1000000 ))
[ -z "$(all_nginx)" ] || bad "nginx still running 10 s after quit"
wait "$load_pid" || bad "waiting requests failed on quit: $(cat "$work/quit-load.out")"
say "quit while 10 requests waited: exited in ${took} ms; $(head -1 "$work/quit-load.out")"

# 5. The logs and the base directory.
grep -E "exited on signal [^9]|\[alert\]|\[emerg\]" "$work/logs/error.log" | grep -v "signal 9" \
    && bad "crash or alert lines in the error log"
grep -n "\[error\]" "$work/logs/error.log" | head -5 | grep . && bad "[error] lines in the error log"
left=$(ls -A "$base")
[ -z "$left" ] || bad "socket directories left in $base: $left"

if [ "$fail" = 0 ]; then say "lifecycle: all checks passed"; else say "lifecycle: FAILED"; fi
exit "$fail"
