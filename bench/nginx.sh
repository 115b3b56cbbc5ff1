# The nginx of the benchmarks (nginx/bench.conf), shared by bench/run.sh
# and bench/callgrind.sh, which source this file from the repository root.
# Settings (environment): BENCH_NGINX (or NGINX), LUA_MODULES.

NGINX_BIN=${BENCH_NGINX:-${NGINX:-$(command -v nginx || echo /usr/sbin/nginx)}}
# Not in nginx's environment: nginx reads $NGINX itself (sockets inherited
# across a binary upgrade) and, finding it set, does not daemonize.
unset NGINX
MODULE_DIR=/usr/lib/nginx/modules
if [ -z "${LUA_MODULES+x}" ]; then
    LUA_MODULES=""
    for m in "$MODULE_DIR/ndk_http_module.so" "$MODULE_DIR/ngx_http_lua_module.so"; do
        [ -e "$m" ] && LUA_MODULES="$LUA_MODULES $m"
    done
fi

# A fresh nginx prefix holding a snapshot of lualib/ and the built modules:
# a rebuild during a run must not change the code measured by the nginx
# instances that the run starts later.
bench_prefix() { # prefix
    local f
    for f in build/resty_async_core.so build/resty_async_bench.so build/resty_async_http.so build/resty_async_tokio.so; do
        [ -e "$f" ] || { echo "bench: $f is missing (run 'make bench')" >&2; return 1; }
    done
    rm -rf "$1"
    mkdir -p "$1/logs" "$1/sock" "$1/wrk" "$1/lib"
    cp -R lualib "$1/lualib"
    cp build/resty_async_core.so build/resty_async_bench.so build/resty_async_http.so build/resty_async_tokio.so "$1/lib/"
}

# nginx/bench.conf with its @...@ values filled in, as <prefix>/nginx.conf.
# With `pool_cpus` (a comma-separated list, e.g. "1"), the worker is pinned
# to CPU 0 (worker_cpu_affinity) and the pool threads to those CPUs.
render_conf() { # prefix port workers threads [pool_cpus]
    local load="" user="" affinity="" cpus="" m
    for m in $LUA_MODULES; do load="$load load_module $m;"; done
    [ "$(id -u)" = 0 ] && user="user root;"
    if [ -n "${5:-}" ]; then
        affinity="worker_cpu_affinity 1;"
        cpus=", pool_cpus = { $5 }"
    fi
    sed -e "s|@LUALIB@|$1/lualib|g" -e "s|@CLIB@|$1/lib|g" \
        -e "s|@LOAD_MODULES@|$load|" -e "s|@USER@|$user|" \
        -e "s|@WORKERS@|$3|" -e "s|@THREADS@|$4|g" -e "s|@PORT@|$2|g" \
        -e "s|@AFFINITY@|$affinity|" -e "s|@POOL_CPUS@|$cpus|" \
        -e "s|@BASE@|$1/sock|" nginx/bench.conf > "$1/nginx.conf"
}

# One HTTP/1.0 GET with bash's /dev/tcp; prints the status code.
http_status() { # port path
    local line
    line=$( (exec 3<>"/dev/tcp/127.0.0.1/$1" &&
             printf 'GET %s HTTP/1.0\r\nHost: bench\r\n\r\n' "$2" >&3 &&
             IFS=' ' read -r -t 5 _ code _ <&3 && echo "$code") 2>/dev/null || true)
    echo "${line:-none}"
}

# Sends `signal` to process `pid` and waits up to `seconds` for it to go;
# fails if it is still there.
signal_and_wait() { # pid signal seconds
    kill -"$2" "$1" 2>/dev/null || true
    local i
    for i in $(seq $(($3 * 10))); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.1
    done
    ! kill -0 "$1" 2>/dev/null
}
