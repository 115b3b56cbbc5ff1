-- luacheck configuration (`make lint` runs `luacheck lualib t/lib`; Debian's
-- package is lua-check).

-- ngx_lua's globals (ngx, ndk, coroutine._yield ...) on top of LuaJIT's.
std = "ngx_lua"
-- ngx_lua keeps LuaJIT's own coroutine functions under these names (its
-- own ones replace coroutine.create/resume/yield/wrap/status).
read_globals = {
    coroutine = { fields = { "_yield" } },
}
-- STYLE.md: lines within 80 columns.
max_line_length = 80
codes = true

exclude_files = {
    "target/**",
    "build/**",
    "t/servroot/**",
}
