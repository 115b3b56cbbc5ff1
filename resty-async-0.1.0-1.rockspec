-- LuaRocks package of resty-async. In a checkout:
--
--     luarocks make [--tree DIR] resty-async-0.1.0-1.rockspec
--
-- builds the built-in Rust module with cargo through the Makefile (no other
-- download) and installs resty/async.lua in the tree's share/lua/5.1 and
-- resty_async_core.so in its lib/lua/5.1. Keep `version` in step with
-- Cargo.toml (`make test-install` checks it).
rockspec_format = "3.0"
package = "resty-async"
version = "0.1.0-1"

source = {
    -- Not fetched by `luarocks make`. Placeholder: set the project's public
    -- repository (and tag) before uploading to luarocks.org.
    url = "git+https://example.invalid/resty-async.git",
    tag = "v0.1.0",
}

description = {
    summary = "Rust futures and blocking work for OpenResty, driven by "
              .. "nginx's own event loop",
    detailed = [[
OpenResty handlers, ngx.timer callbacks and ngx.thread light threads call
Rust functions (timers, CPU work, blocking I/O, futures completed by other
threads) and wait without blocking the nginx worker. Needs OpenResty (or
nginx with the lua module and lua-resty-core), LuaJIT, and a Rust toolchain
(cargo) to build.
]],
    license = "MIT",
    labels = { "openresty", "nginx", "async", "rust" },
}

-- LuaJIT (the 5.1 ABI): the Rust module is built for it.
dependencies = {
    "lua ~> 5.1",
}

build = {
    type = "make",
    -- only the built-in module, not the example crate
    build_target = "build/resty_async_core.so",
    -- for any C code a crate's build script compiles
    build_variables = {
        CFLAGS = "$(CFLAGS)",
    },
    install_variables = {
        LUA_LIB_DIR = "$(LUADIR)",
        LUA_CLIB_DIR = "$(LIBDIR)",
    },
}
