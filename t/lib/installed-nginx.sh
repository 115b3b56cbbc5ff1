# Sourced by t/install-test.sh and t/template-test.sh: an nginx that sees
# only installed directories on lua_package_path/cpath (plus the defaults,
# `;;`, for lua-resty-core), and the helpers around it.
#
# The sourcing script sets NGINX (the binary) and LUA_MODULES (the
# load_module paths), and runs under `set -euo pipefail`. It keeps its
# files in the directory T and its nginx's prefix in NGINX_DIR: on exit,
# the nginx is stopped, its logs are shown if the script failed, and T is
# removed.

NGINX_PID=
NGINX_DIR=
T=

fail() {
    echo "FAIL: $*" >&2
    exit 1
}

# alive PID: the process exists and is not a zombie (no procps needed).
alive() {
    local st
    st=$(sed -n 's/^.*) \(.\).*/\1/p' "/proc/$1/stat" 2>/dev/null) || return 1
    [ -n "$st" ] && [ "$st" != Z ]
}

# Stops the nginx started by serve_installed (gracefully; by force after
# 10 s) and reaps it.
stop_nginx() {
    local pid=$NGINX_PID i kids
    [ -n "$pid" ] || return 0
    NGINX_PID=
    kill -QUIT "$pid" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
        alive "$pid" || break
        sleep 0.1
    done
    if ((i == 100)); then
        echo "nginx $pid did not stop within 10 s: killing it" >&2
        kids=$(cat "/proc/$pid/task/$pid/children" 2>/dev/null || true)
        kill -KILL "$pid" $kids 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

free_port() {
    perl -MIO::Socket::INET -e '
        my $s = IO::Socket::INET->new(Listen => 1, LocalAddr => "127.0.0.1",
                                      LocalPort => 0, ReuseAddr => 1)
            or die "no free port: $!\n";
        print $s->sockport, "\n";'
}

# serve_installed DIR LUA_DIR CLIB_DIR HANDLER: starts nginx with its prefix
# in DIR, LUA_DIR/?.lua and CLIB_DIR/?.so first on its paths, and HANDLER
# (nginx directives) in `location = /t`; sets PORT. A port taken between
# free_port and nginx's bind is retried with another.
serve_installed() {
    local dir=$1 ldir=$2 cdir=$3 handler=$4 load="" m i try
    for m in $LUA_MODULES; do
        load="${load}load_module $m;"$'\n'
    done
    mkdir -p "$dir/conf" "$dir/logs"
    for ((try = 1; ; try++)); do
        PORT=$(free_port)
        cat > "$dir/conf/nginx.conf" <<EOF
$load
worker_processes 1;
error_log logs/error.log warn;
pid logs/nginx.pid;

events {
    worker_connections 64;
}

http {
    access_log off;
    # Only the installed directories, then the defaults (lua-resty-core).
    lua_package_path "$ldir/?.lua;;";
    lua_package_cpath "$cdir/?.so;;";

    server {
        listen 127.0.0.1:$PORT;

        location = /ready {
            return 200 "ready\n";
        }

        location = /t {
$handler
        }
    }
}
EOF
        # From the nginx prefix: the default paths' ./?.lua and ./?.so
        # must not find the checkout.
        (cd "$dir" && exec "$NGINX" -p "$dir/" -c conf/nginx.conf \
            -e logs/error.log -g 'daemon off;' >logs/stderr.log 2>&1) &
        NGINX_PID=$!
        for ((i = 0; i < 100; i++)); do
            curl -fsS -o /dev/null --max-time 2 \
                "http://127.0.0.1:$PORT/ready" 2>/dev/null && break
            alive "$NGINX_PID" || break
            sleep 0.1
        done
        if ! alive "$NGINX_PID"; then
            wait "$NGINX_PID" 2>/dev/null || true
            NGINX_PID=
            if ((try < 3)) && grep -q "Address already in use" \
                "$dir"/logs/*.log 2>/dev/null
            then
                continue
            fi
            fail "nginx in $dir did not start"
        fi
        ((i < 100)) || fail "nginx in $dir does not answer on port $PORT"
        return 0
    done
}

# check_logs DIR: fails on an error, an alert or a crash in the logs of the
# nginx whose prefix is DIR.
check_logs() {
    if grep -E '\[(alert|emerg|crit|error)\]|exited on signal' \
        "$1/logs/error.log" "$1/logs/stderr.log"
    then
        fail "errors in the log of the nginx in $1"
    fi
}

# print_logs DIR: the last lines of each log of the nginx whose prefix is
# DIR (after a failure).
print_logs() {
    local f
    for f in "$1"/logs/*.log; do
        [ -s "$f" ] || continue
        echo "--- $f" >&2
        tail -n 30 "$f" >&2
    done
}

cleanup() {
    local rc=$?
    stop_nginx
    if ((rc != 0)) && [ -n "$NGINX_DIR" ]; then
        print_logs "$NGINX_DIR"
    fi
    [ -n "$T" ] && rm -rf "$T"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
