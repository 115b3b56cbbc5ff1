#!/usr/bin/env bash
# `make test-install`: installs resty-async the ways a user would, then starts
# nginx with ONLY the installed directories on lua_package_path/cpath (plus
# the defaults, `;;`, for lua-resty-core), calls async.sleep and async.sha256,
# and checks that the code came from the installed files. Then uninstalls.
#
#   1. make install DESTDIR=tmp             (PREFIX=/usr/local: lib/lua/5.1)
#   2. make install DESTDIR=tmp OPENRESTY_PREFIX=/usr/local/openresty
#   3. make install DESTDIR=tmp PREFIX=... LUA_LIB_DIR=... LUA_CLIB_DIR=...
#   4. luarocks make --tree tmp ROCKSPEC, then luarocks remove
#
# Environment (set by the Makefile): TEST_NGINX_BINARY, LUA_MODULES (the
# load_module paths), LUAROCKS, ROCKSPEC. Exits non-zero, with the reason and
# nginx's logs, on any failure; removes its temporary directory and stops its
# nginx in any case.
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd -P)

NGINX=${TEST_NGINX_BINARY:-$(command -v nginx || echo /usr/sbin/nginx)}
LUA_MODULES=${LUA_MODULES-/usr/lib/nginx/modules/ndk_http_module.so \
/usr/lib/nginx/modules/ngx_http_lua_module.so}
LUAROCKS=${LUAROCKS:-luarocks}
ROCKSPEC=${ROCKSPEC:-$(ls resty-async-*.rockspec 2>/dev/null | tail -n 1)}

# The layout under test must come from this script's command lines only.
unset PREFIX DESTDIR LUA_LIB_DIR LUA_CLIB_DIR OPENRESTY_PREFIX \
      MAKEFLAGS MFLAGS MAKELEVEL
# nginx reads $NGINX as a list of inherited listening sockets.
export -n NGINX

# fail, stop_nginx, serve_installed, check_logs; T and NGINX_DIR, cleaned
# up on exit
. t/lib/installed-nginx.sh

[ -x "$NGINX" ] || fail "nginx not found ($NGINX); run 'make deps'"
command -v curl >/dev/null || fail "curl not found; run 'make deps'"
[ -f build/resty_async_core.so ] \
    || fail "build/resty_async_core.so missing; run 'make'"

VERSION=$(sed -n 's/^version *= *"\(.*\)"/\1/p' Cargo.toml | head -n 1)
[ -n "$VERSION" ] || fail "no version in Cargo.toml"

T=$(mktemp -d /tmp/resty-async-install.XXXXXX)
T=$(cd "$T" && pwd -P)
# nginx workers run as nobody: they must reach the installed files.
chmod 0755 "$T"

# run_nginx NAME LUA_DIR CLIB_DIR: nginx with LUA_DIR/?.lua and CLIB_DIR/?.so
# first on the paths; checks the answer of a handler that waits on Rust.
run_nginx() {
    local name=$1 ldir=$2 cdir=$3 body expected
    NGINX_DIR=$T/nginx-$name
    serve_installed "$NGINX_DIR" "$ldir" "$cdir" '
            content_by_lua_block {
                local async = require "resty.async"
                local ok, err = async.sleep(0.01)
                ngx.say("sleep: ", tostring(ok), " ", tostring(err))
                ngx.say("sha256: ", async.sha256("abc"))
                ngx.say("version: ", async.version)
                -- where the code was loaded from
                ngx.say("lua: ", debug.getinfo(async.configure, "S").source)
                local so = "not mapped"
                for line in io.lines("/proc/self/maps") do
                    local path = line:match("%s(/%S+/resty_async_core%.so)$")
                    if path then
                        so = path
                        break
                    end
                end
                ngx.say("so: @", so)
            }'

    body=$(curl -sS --max-time 10 "http://127.0.0.1:$PORT/t") \
        || fail "$name: GET /t failed"
    stop_nginx

    expected="sleep: true nil
sha256: ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad
version: $VERSION
lua: @$ldir/resty/async.lua
so: @$cdir/resty_async_core.so"
    if [ "$body" != "$expected" ]; then
        echo "--- expected" >&2
        echo "$expected" >&2
        echo "--- got" >&2
        echo "$body" >&2
        fail "$name: unexpected response"
    fi
    check_logs "$NGINX_DIR"
    echo "ok - $name: nginx loaded resty.async from $ldir" \
         "and resty_async_core.so from $cdir"
}

# check_installed DIR_LUA DIR_C: both files present, with their modes.
check_installed() {
    local lua=$1/resty/async.lua so=$2/resty_async_core.so
    [ -f "$lua" ] || fail "not installed: $lua"
    [ -f "$so" ] || fail "not installed: $so"
    [ "$(stat -c %a "$lua")" = 644 ] || fail "$lua: mode $(stat -c %a "$lua")"
    [ "$(stat -c %a "$so")" = 755 ] || fail "$so: mode $(stat -c %a "$so")"
    cmp -s "$lua" lualib/resty/async.lua || fail "$lua differs from lualib/"
    local f
    for f in lualib/resty/async/*.lua; do
        cmp -s "$1/resty/async/${f##*/}" "$f" \
            || fail "$1/resty/async/${f##*/} differs from $f"
    done
    cmp -s "$so" build/resty_async_core.so || fail "$so differs from build/"
}

# check_gone DIR...: no file left under the given directories.
check_gone() {
    local left
    left=$(find "$@" -type f 2>/dev/null || true)
    [ -z "$left" ] || fail "left after uninstall: $left"
}

mk() {
    make --no-print-directory -C "$REPO" "$@" >"$T/make.log" 2>&1 || {
        cat "$T/make.log" >&2
        fail "make $*"
    }
}

# 1. the default layout: $(PREFIX)/lib/lua/5.1 (lua-resty-core's)
d=$T/default
mk install DESTDIR="$d"
l=$d/usr/local/lib/lua/5.1
check_installed "$l" "$l"
run_nginx default "$l" "$l"
mk uninstall DESTDIR="$d"
check_gone "$d"
echo "ok - make uninstall removed the files"

# 2. OpenResty: both in $(OPENRESTY_PREFIX)/site/lualib
d=$T/openresty
mk install DESTDIR="$d" OPENRESTY_PREFIX=/usr/local/openresty
l=$d/usr/local/openresty/site/lualib
check_installed "$l" "$l"
n=$(find "$d" -type f | wc -l)
want=$(($(ls lualib/resty/async/*.lua | wc -l) + 2))
((n == want)) || fail "OPENRESTY_PREFIX: $n files installed, expected $want"
run_nginx openresty "$l" "$l"
mk uninstall DESTDIR="$d" OPENRESTY_PREFIX=/usr/local/openresty
check_gone "$d"
echo "ok - OPENRESTY_PREFIX install and uninstall"

# 3. explicit directories win over PREFIX
d=$T/explicit
mk install DESTDIR="$d" PREFIX=/opt/x LUA_LIB_DIR=/opt/x/share/lua/5.1 \
    LUA_CLIB_DIR=/opt/x/lib/lua/5.1
check_installed "$d/opt/x/share/lua/5.1" "$d/opt/x/lib/lua/5.1"
mk uninstall DESTDIR="$d" PREFIX=/opt/x LUA_LIB_DIR=/opt/x/share/lua/5.1 \
    LUA_CLIB_DIR=/opt/x/lib/lua/5.1
check_gone "$d"
echo "ok - LUA_LIB_DIR and LUA_CLIB_DIR"

# 4. LuaRocks: `luarocks make` drives the Makefile (make build type)
[ -n "$ROCKSPEC" ] && [ -f "$ROCKSPEC" ] || fail "no rockspec found"
command -v "$LUAROCKS" >/dev/null || fail "$LUAROCKS not found; run 'make deps'"
rs_version=$(sed -n 's/^version *= *"\(.*\)"/\1/p' "$ROCKSPEC")
[ "${rs_version%-*}" = "$VERSION" ] \
    || fail "$ROCKSPEC: version $rs_version, Cargo.toml: $VERSION"
[ "$(basename "$ROCKSPEC")" = "resty-async-$rs_version.rockspec" ] \
    || fail "$ROCKSPEC: the file name does not match its version $rs_version"
"$LUAROCKS" lint "$ROCKSPEC" || fail "luarocks lint $ROCKSPEC"
tree=$T/rocks
"$LUAROCKS" make --tree "$tree" "$ROCKSPEC" >"$T/luarocks.log" 2>&1 || {
    cat "$T/luarocks.log" >&2
    fail "luarocks make"
}
check_installed "$tree/share/lua/5.1" "$tree/lib/lua/5.1"
run_nginx luarocks "$tree/share/lua/5.1" "$tree/lib/lua/5.1"
"$LUAROCKS" remove --tree "$tree" resty-async >"$T/luarocks.log" 2>&1 || {
    cat "$T/luarocks.log" >&2
    fail "luarocks remove"
}
check_gone "$tree/share/lua" "$tree/lib/lua"
echo "ok - luarocks make and luarocks remove"

echo "install tests passed"
