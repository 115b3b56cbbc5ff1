-- resty.async.mlua: mlua's async functions and the async methods of
-- userdata types, made safe in OpenResty.

local runtime = require "resty.async.runtime"
local wait_mod = require "resty.async.wait"
local methods = require "resty.async.methods"

local type = type
local debug_getmetatable = debug.getmetatable
local states = runtime.states
local make_async = wait_mod.make_async
local UNREGISTERED = methods.UNREGISTERED
                     .. ": called directly in OpenResty it would spin the "
                     .. "worker"


local _M = {}


-- mlua's async functions (and the async methods of userdata types) yield
-- through the `coroutine.yield` they captured when they were made. ngx_lua's
-- coroutine.yield would resume them at once, in a busy loop: the worker
-- spins. Functions a resty-async module registers (Module::add_lua_async,
-- Module::add_class) are driven by its executor, through LuaJIT's own
-- yield; this `coroutine.yield` lets the others fail at once instead.
-- Module::new loads this library and calls guard_mlua() before it makes
-- any function, so that they capture it.
local co = coroutine

-- Makes the mlua async functions of a library whose pending marker is
-- `marker` fail instead of spinning when they are not driven by a
-- resty-async executor (`in_poll()` says when one is): those it drives
-- yield through LuaJIT's own yield.
_M.guard_mlua = methods.yield_guard(UNREGISTERED,
                                    co._yield)  -- luacheck: ignore 143


-- Takes over the async methods of the type of `ud`, a value of a type the
-- resty-async library `id` registered (Module::add_class): each becomes a
-- function that waits like the library's own. Returns whether it did (or
-- had done so before).
function _M.adopt(id, ud, type_name)
    local st = states[id]
    local mt = debug_getmetatable(ud)
    if not st or type(mt) ~= "table" then
        return false
    end
    methods.adopt(mt, type_name, st.rt, function(name, raw)
        return make_async(st, name, raw)
    end)
    return true
end


return _M
