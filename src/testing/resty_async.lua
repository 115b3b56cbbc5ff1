-- resty.async for tests without nginx (resty_async::testing): a plain
-- LuaJIT state, no ngx.*. A call of a module's function that has to wait
-- drives its runtime right there, blocking the test's thread, until the
-- task finishes or the call times out; then it returns what the function
-- would have returned in nginx.
--
-- The Rust side passes `sys`: sys.drive(id, timeout) runs the runtime of
-- this Lua state until task `id` finishes (true) or `timeout` seconds
-- pass (false: the task is cancelled); sys.abi is the calling convention
-- of raw functions (src/raw.rs); sys.config.timeout is the call timeout;
-- sys.net_ops is the error of a call whose task uses network streams;
-- sys.ccall that of a call that would wait inside a C function.

local sys = ...

local methods = require "resty.async.methods"

local type = type
local error = error
local select = select
local pairs = pairs
local tostring = tostring
local debug_getmetatable = debug.getmetatable
local debug_getinfo = debug.getinfo
local pcall = pcall
local xpcall = xpcall
local drive = sys.drive
local config = sys.config


local _M = { version = "testing" }

-- One state per runtime (one per Rust library), keyed by the library id.
local states = {}


-- Whether the caller (at `level` of the caller of this function) runs
-- inside a C function that called Lua (a table.sort comparator, a
-- string.gsub callback, require), where LuaJIT cannot yield: in nginx a
-- call that would wait there raises. pcall and xpcall do not stop a
-- yield; the bottom of the stack is the harness's own call from Rust.
local function in_c_function(level)
    level = level + 1
    while true do
        local info = debug_getinfo(level, "Sf")
        if not info then
            return false
        end
        if info.what == "C" and info.func ~= pcall and info.func ~= xpcall
        then
            return true
        end
        level = level + 1
    end
end


-- What a raw function returned: `true, ...` (finished), `nil, message`
-- (misuse: raised) or a task id (pending; negative when the driver must
-- run soon, which it does here at once).
local function finish(st, ok, ...)
    if ok == true then
        return ...
    end
    if ok == nil then
        error((...), 2)
    end
    if ok < 0 then
        ok = -ok
    end
    if select("#", ...) > 0 then
        -- the first poll queued socket ops (resty_async::net) for the
        -- caller, which only nginx's cosockets carry out: without this the
        -- task would wait for them until the call's timeout
        st.rt.cancel(ok)
        error("resty_async::testing: " .. sys.net_ops, 2)
    end
    if in_c_function(2) then
        st.rt.cancel(ok)
        error(sys.ccall, 2)
    end
    if drive(ok, config.timeout) then
        return st.rt.take(ok)
    end
    return nil, "timeout"
end


local function make_async(st, raw)
    return function(...)
        return finish(st, raw(...))
    end
end


local function sync_finish(ok, ...)
    if ok then
        return ...
    end
    error((...), 2)
end


local function make_sync(raw)
    return function(...)
        return sync_finish(raw(...))
    end
end


-- The exports of a module (the raw table Module::build hands over).
function _M.register(raw)
    if type(raw) ~= "table" or type(raw.__rt) ~= "table"
       or type(raw.__kinds) ~= "table"
    then
        error("bad argument #1 to 'register' (the raw table of a "
              .. "resty-async module expected)", 2)
    end
    if raw.__abi ~= sys.abi then
        error("resty.async: module " .. tostring(raw.__name) .. " was built "
              .. "against another version of resty-async", 2)
    end
    local st = states[raw.__id]
    if not st then
        st = { name = raw.__name, rt = raw.__rt }
        states[raw.__id] = st
    end
    local out = {}
    for name, kind in pairs(raw.__kinds) do
        local f = raw[name]
        if kind == "async" then
            out[name] = make_async(st, f)
        elseif kind == "sync" then
            out[name] = make_sync(f)
        else
            out[name] = f
            if type(f) == "userdata" then
                st.rt.adopt(f)
            end
        end
    end
    return out
end


-- As in nginx, an mlua async function that a module did not register
-- (Module::add_lua_async, Module::add_class) raises when called directly.
_M.guard_mlua = methods.yield_guard(methods.UNREGISTERED)


-- Takes over the async methods of the type of `ud` (Module::add_class).
function _M.adopt(id, ud, type_name)
    local st = states[id]
    local mt = debug_getmetatable(ud)
    if not st or type(mt) ~= "table" then
        return false
    end
    methods.adopt(mt, type_name, st.rt, function(_, raw)
        return make_async(st, raw)
    end)
    return true
end


return _M
