-- luacheck configuration (`make lint`): Debian's lua-check, `luacheck .`
-- or `luacheck lualib t/lib resty-async-*.rockspec`.

-- ngx_lua's globals (ngx, ndk, coroutine._yield ...) on top of LuaJIT's.
std = "ngx_lua"
-- STYLE.md: lines within 80 columns.
max_line_length = 80
codes = true

exclude_files = {
    "target/",
    "build/",
    "t/servroot/",
}

-- A rockspec is a plain Lua 5.1 file of top-level assignments.
files["**/*.rockspec"] = {
    std = "lua51",
    allow_defined_top = true,
    max_line_length = false,
}
