-- LuaRocks package of the module. `luarocks make [--tree DIR]` builds it
-- with cargo through the Makefile and installs hello.so, resty-async's
-- resty_async_core.so (the tree's lib/lua/5.1) and resty/async.lua with
-- resty/async/*.lua (its share/lua/5.1). The file name follows `package`
-- and `version`.
rockspec_format = "3.0"
package = "hello"
version = "0.1.0-1"

source = {
    -- Not fetched by `luarocks make`; set it before uploading the rock.
    url = "git+https://example.invalid/hello.git",
}

description = {
    summary = "An OpenResty module written in Rust with resty-async",
    license = "MIT",
}

-- LuaJIT (the 5.1 ABI): the module is built for it.
dependencies = {
    "lua ~> 5.1",
}

build = {
    type = "make",
    -- for any C code a crate's build script compiles
    build_variables = {
        CFLAGS = "$(CFLAGS)",
    },
    install_variables = {
        LUA_LIB_DIR = "$(LUADIR)",
        LUA_CLIB_DIR = "$(LIBDIR)",
    },
}
