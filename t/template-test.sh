#!/usr/bin/env bash
# `make test-template`: the module template (examples/hello) as an author
# uses it. It is copied out of the repository with its one resty-async
# dependency line pointed at this checkout; then its `make test` (cargo
# test, then its Test::Nginx suite), `luarocks make` of its rockspec into a
# temporary tree (and its `make install` under a DESTDIR, which must
# install the same files), and nginx with ONLY that tree on
# lua_package_path/cpath (plus the defaults, `;;`) calling the installed
# module; then `luarocks remove`. Everything is removed afterwards.
#
# Environment (set by the Makefile): CARGO, TEST_NGINX_BINARY, LUA_MODULES
# (the load_module paths), LUAROCKS, TEST_NGINX_SERVER_PORT (the template's
# suite). TEMPLATE_TARGET_DIR: cargo's target directory for the copy
# (default: target/template of the checkout, kept between runs).
set -euo pipefail

cd "$(dirname "$0")/.."
REPO=$(pwd -P)

NGINX=${TEST_NGINX_BINARY:-$(command -v nginx || echo /usr/sbin/nginx)}
LUA_MODULES=${LUA_MODULES-/usr/lib/nginx/modules/ndk_http_module.so \
/usr/lib/nginx/modules/ngx_http_lua_module.so}
LUAROCKS=${LUAROCKS:-luarocks}
export CARGO=${CARGO:-cargo}
export CARGO_TARGET_DIR=${TEMPLATE_TARGET_DIR:-$REPO/target/template}

# Only this script's command lines choose the layout.
unset PREFIX DESTDIR LUA_LIB_DIR LUA_CLIB_DIR MAKEFLAGS MFLAGS MAKELEVEL
# nginx reads $NGINX as a list of inherited listening sockets.
export -n NGINX

# fail, stop_nginx, serve_installed, check_logs; T and NGINX_DIR, cleaned
# up on exit
. t/lib/installed-nginx.sh

[ -x "$NGINX" ] || fail "nginx not found ($NGINX); run 'make deps'"
command -v curl >/dev/null || fail "curl not found; run 'make deps'"
command -v "$LUAROCKS" >/dev/null || fail "$LUAROCKS not found; run 'make deps'"

T=$(mktemp -d /tmp/resty-async-template.XXXXXX)
T=$(cd "$T" && pwd -P)
# nginx workers run as nobody: they must reach the installed files.
chmod 0755 "$T"

# 1. Copy the template out, as an author would (not its build products).
tar -C examples -cf - --exclude=hello/target --exclude=hello/build \
    --exclude=hello/Cargo.lock --exclude=hello/t/servroot hello \
    | tar -C "$T" -xf -
M=$T/hello
line='resty-async = { path = "../.." }'
[ "$(grep -cxF "$line" "$M/Cargo.toml")" = 1 ] \
    || fail "examples/hello/Cargo.toml: no line '$line'"
sed -i 's|^resty-async = { path = "\.\./\.\." }$|resty-async = { path = "'"$REPO"'" }|' \
    "$M/Cargo.toml"
[ "$(diff "$REPO/examples/hello/Cargo.toml" "$M/Cargo.toml" | grep -c '^[<>]')" = 2 ] \
    || fail "more than the dependency line changed"
grep -q '\.\./\.\.' "$M"/Makefile "$M"/*.rockspec "$M"/t/*.t "$M"/src/*.rs \
    && fail "the template names files of the repository (../..)"
# The crates and versions this checkout was tested with, without a registry
# update (cargo keeps what the copy needs).
cp Cargo.lock "$M/Cargo.lock"
echo "ok - examples/hello copied to $M, its dependency on $REPO"

# 2. Its make test: cargo test without nginx, then its Test::Nginx suite.
make --no-print-directory -C "$M" test NGINX="$NGINX" LUA_MODULES="$LUA_MODULES" \
    || fail "make test of the template"
readelf -d "$M/build/hello.so" | grep -q 'NEEDED.*luajit' \
    && fail "build/hello.so links LuaJIT (the testing feature leaked into it)"
echo "ok - make test of the template"

# A module built with panic = "abort" (whose panics would kill the worker)
# does not build, and the error says why.
if (cd "$M" && CARGO_PROFILE_RELEASE_PANIC=abort "$CARGO" check --release --lib) \
    >"$T/abort.log" 2>&1
then
    fail "a build with panic = \"abort\" succeeded"
fi
grep -q 'resty-async needs panic = "unwind"' "$T/abort.log" || {
    cat "$T/abort.log" >&2
    fail "a build with panic = \"abort\" failed without saying why"
}
echo "ok - a build with panic = \"abort\" fails and says why"

# The module as renamed after a first build: build/ still holds the old
# name's .so, which must not be installed.
cp "$M/build/hello.so" "$M/build/old_name.so"

# 3. luarocks make into a temporary tree.
rockspec=$(cd "$M" && ls ./*.rockspec)
tree=$T/rocks
(cd "$M" && "$LUAROCKS" lint "$rockspec") || fail "luarocks lint $rockspec"
(cd "$M" && "$LUAROCKS" make --tree "$tree" "$rockspec") >"$T/luarocks.log" 2>&1 || {
    cat "$T/luarocks.log" >&2
    fail "luarocks make"
}
ldir=$tree/share/lua/5.1
cdir=$tree/lib/lua/5.1
for f in "$cdir/hello.so" "$cdir/resty_async_core.so" "$ldir/resty/async.lua"; do
    [ -f "$f" ] || fail "not installed: $f"
done
cmp -s "$ldir/resty/async.lua" lualib/resty/async.lua \
    || fail "$ldir/resty/async.lua differs from lualib/"
for f in lualib/resty/async/*.lua; do
    cmp -s "$ldir/resty/async/${f##*/}" "$f" \
        || fail "$ldir/resty/async/${f##*/} differs from $f"
done
[ ! -e "$cdir/old_name.so" ] || fail "luarocks make installed build/old_name.so"
echo "ok - luarocks make installed hello.so, resty_async_core.so and resty.async"

# A second module's rock in the same tree (its copy of resty-async's files
# takes the plain names); removing it puts the first one's copy back.
sed 's/^package = "hello"/package = "second"/' "$M/$rockspec" >"$M/second-0.1.0-1.rockspec"
(cd "$M" && "$LUAROCKS" make --tree "$tree" second-0.1.0-1.rockspec \
    && "$LUAROCKS" remove --tree "$tree" second) >"$T/luarocks.log" 2>&1 || {
    cat "$T/luarocks.log" >&2
    fail "luarocks make and remove of a second rock"
}
rm "$M/second-0.1.0-1.rockspec"
for f in "$cdir/hello.so" "$cdir/resty_async_core.so" "$ldir/resty/async.lua"; do
    [ -f "$f" ] || fail "gone after the second rock's removal: $f"
done
echo "ok - a second rock in the tree, then removed, leaves the first one's files"

# ... and the same files by the template's own `make install` (the
# README's way without LuaRocks), under a DESTDIR.
inst=$T/inst
# (without cargo, as under sudo, whose PATH may not have it)
make --no-print-directory -C "$M" install DESTDIR="$inst" PREFIX=/usr/local CARGO=false \
    >"$T/install.log" 2>&1 || { cat "$T/install.log" >&2; fail "make install"; }
for f in hello.so resty_async_core.so; do
    cmp -s "$inst/usr/local/lib/lua/5.1/$f" "$cdir/$f" \
        || fail "make install: lib/lua/5.1/$f missing or not the rock's"
done
for f in lualib/resty/async.lua lualib/resty/async/*.lua; do
    f=${f#lualib/}
    cmp -s "$inst/usr/local/lib/lua/5.1/$f" "$ldir/$f" \
        || fail "make install: lib/lua/5.1/$f missing or not the rock's"
done
[ ! -e "$inst/usr/local/lib/lua/5.1/old_name.so" ] \
    || fail "make install installed build/old_name.so"
echo "ok - make install DESTDIR=... installed the same files"

# OPENRESTY_PREFIX: OpenResty's site/lualib; `make uninstall` takes the
# module's .so out again, and leaves resty-async's files to other modules.
make --no-print-directory -C "$M" install DESTDIR="$inst" \
    OPENRESTY_PREFIX=/usr/local/openresty >"$T/install.log" 2>&1 \
    || { cat "$T/install.log" >&2; fail "make install OPENRESTY_PREFIX=..."; }
site=$inst/usr/local/openresty/site/lualib
for f in hello.so resty_async_core.so resty/async.lua; do
    [ -f "$site/$f" ] || fail "make install OPENRESTY_PREFIX=...: $f not in site/lualib"
done
make --no-print-directory -C "$M" uninstall DESTDIR="$inst" \
    OPENRESTY_PREFIX=/usr/local/openresty >"$T/install.log" 2>&1 \
    || { cat "$T/install.log" >&2; fail "make uninstall"; }
[ ! -e "$site/hello.so" ] || fail "make uninstall left hello.so"
[ -f "$site/resty_async_core.so" ] || fail "make uninstall took resty_async_core.so"
echo "ok - OPENRESTY_PREFIX installs to site/lualib; make uninstall removes the module"

# 4. nginx with only the tree's directories (and the defaults, for
# lua-resty-core) calls the installed module.
NGINX_DIR=$T/nginx
serve_installed "$NGINX_DIR" "$ldir" "$cdir" '
            content_by_lua_block {
                local hello = require "hello"
                ngx.say("slow_add: ", hello.slow_add(1, 2))
                ngx.say("count_primes: ", hello.count_primes(100))
                ngx.say("error: ", select(2, hello.count_primes(2000000)))
                local done = require("ngx.semaphore").new()
                local sum
                assert(ngx.timer.at(0, function()
                    sum = hello.slow_add(20, 22)
                    done:post()
                end))
                assert(done:wait(5))
                ngx.say("timer: ", sum)
                ngx.say("incr_after: ", hello.counter(41):incr_after(10))
                ngx.say("lua: ", debug.getinfo(require("resty.async").configure,
                                               "S").source)
                -- where the .so files were loaded from (each is mapped
                -- once per segment)
                local seen = {}
                for line in io.lines("/proc/self/maps") do
                    local so = line:match("%s(/%S+/[%w_]+%.so)$")
                    if so and not seen[so]
                       and (so:find("/hello.so", 1, true)
                            or so:find("/resty_async_core.so", 1, true))
                    then
                        seen[so] = true
                        ngx.say("so: ", so)
                    end
                end
            }'
body=$(curl -sS --max-time 10 "http://127.0.0.1:$PORT/t") || fail "GET /t failed"
stop_nginx
expected="slow_add: 3
count_primes: 25
error: n must be at most 1000000, got 2000000
timer: 42
incr_after: 42
lua: @$ldir/resty/async.lua
so: $cdir/resty_async_core.so
so: $cdir/hello.so"
# (the order of the mappings is the loader's)
if [ "$(printf '%s\n' "$body" | sort)" != "$(printf '%s\n' "$expected" | sort)" ]
then
    printf -- '--- expected\n%s\n--- got\n%s\n' "$expected" "$body" >&2
    fail "unexpected response"
fi
check_logs "$NGINX_DIR"
echo "ok - nginx called the module installed in $tree"

# 5. luarocks remove leaves nothing.
"$LUAROCKS" remove --tree "$tree" hello >"$T/luarocks.log" 2>&1 || {
    cat "$T/luarocks.log" >&2
    fail "luarocks remove"
}
left=$(find "$tree/share/lua" "$tree/lib/lua" -type f 2>/dev/null || true)
[ -z "$left" ] || fail "left after luarocks remove: $left"
echo "ok - luarocks remove"

echo "template tests passed"
