-- resty.async.wait: how a caller of a resty.async function waits for its
-- task, on an ngx_lua semaphore that the driver's poll posts (only the
-- caller's own light thread yields), and how raw functions are wrapped to
-- do so.

local driver = require "resty.async.driver"
local runtime = require "resty.async.runtime"
local net = require "resty.async.net"

local ngx = ngx
local type = type
local error = error
local tonumber = tonumber
local pcall = pcall
local setmetatable = setmetatable
local math_huge = math.huge
local get_phase = ngx.get_phase
local ngx_now = ngx.now
local unpack = unpack
local net_wait = net.wait
local debug_getinfo = debug.getinfo
local kick = driver.kick
local need_driver = driver.need
local take_ffi = runtime.take_ffi
local forget = runtime.forget
local error_message = runtime.error_message
local config = runtime.config
local WAIT_YIELD = runtime.WAIT_YIELD
local WAIT_DONE = runtime.WAIT_DONE
local WAIT_C_FUNCTION = runtime.WAIT_C_FUNCTION
local WAIT_CANNOT = runtime.WAIT_CANNOT
local WAIT_TIMEOUT = runtime.WAIT_TIMEOUT
-- The yield of LuaJIT itself (ngx_lua's coroutine.yield is its own): what
-- a caller that an FFI call queued on a semaphore yields with, as
-- lua-resty-core's sema:wait does.
local co_yield = coroutine._yield
-- C functions a yield passes through (LuaJIT runs them as fast functions).
local YIELD_THROUGH = { [pcall] = true, [xpcall] = true }


local _M = {
    -- wrapper function -> { st = state, raw = raw function, name = name }
    wrapped = setmetatable({}, { __mode = "k" }),
}

local wrapped = _M.wrapped


-- Phases whose handlers run in a coroutine ngx_lua can suspend. (Not
-- ssl_client_hello and ssl_session_fetch: nginx cannot yield there without
-- OpenResty's patches.)
local YIELDABLE = {
    rewrite = true,
    access = true,
    content = true,
    timer = true,
    ssl_cert = true,
    preread = true,
}

-- the driver must run in this cycle (then it is kicked).
local function pending_id(st, id)
    if id < 0 then
        kick(st)
        return -id
    end
    return id
end


-- Whether the caller of a resty.async function may yield, where the
-- runtime cannot tell (see yieldable.rs): not inside a C function that
-- calls Lua (a table.sort comparator, a string.gsub callback).
local function can_wait_walk()
    local level = 3
    while true do
        local info = debug_getinfo(level, "Sf")
        if not info then
            return true
        end
        if info.what == "C" and not YIELD_THROUGH[info.func] then
            return false
        end
        level = level + 1
    end
end


local CCALL = "resty.async: cannot wait inside a C function such as a "
              .. "table.sort comparator or a string.gsub callback (call it "
              .. "outside, or start it with async.spawn and wait for the "
              .. "task outside)"


-- Whether the caller may yield (see can_wait_walk).
local function can_wait(st)
    local can = st.rt.can_wait()
    if can == nil then
        return can_wait_walk()
    end
    return can
end


-- The caller carries out the socket ops `k, ...` of task `id` and those
-- that follow until the task finishes (resty.async.net). (Tail-called by
-- wait(): `level` is as seen from there.)
local function carry_out(st, id, timeout, level, k, ...)
    if not can_wait(st) then
        forget(st, id)
        error(CCALL, level)
    end
    return net_wait(st, id, timeout, k, ...)
end


-- Waits for the task of a pending raw call's result `id` (see pending_id)
-- to finish; returns its results. The runtime queues the caller (see
-- waiters.rs), which then yields: nothing is queued where it may not
-- yield. A task that queues socket ops has its caller carry them out
-- (resty.async.net): `k, ...`, the ops its raw call returned, or those the
-- runtime wakes the caller for.
-- (`level`: the caller's level for error(), as seen from here.)
local function wait(st, id, timeout, level, k, ...)
    id = pending_id(st, id)
    local ok, err = need_driver(st, id)
    if not ok then
        return nil, err
    end
    if k then
        return carry_out(st, id, timeout, level, k, ...)
    end
    local ops = st.netops[id]  -- kept by async.spawn
    if ops then
        st.netops[id] = nil
        return carry_out(st, id, timeout, level, unpack(ops, 1, ops.n))
    end
    local no_wait
    local t0 = ngx_now()
    -- Queued by an FFI call, the caller yields here; until the runtime
    -- knows the running coroutine (yieldable.rs), it waits in the Lua C
    -- function.
    local rc = co_yield and st.api.wait(st.vm, id, timeout) or WAIT_C_FUNCTION
    ok = nil
    if rc == WAIT_YIELD then
        ok, err = co_yield()
    elseif rc == WAIT_DONE then
        ok = true
    elseif rc == WAIT_C_FUNCTION then
        local rt_wait = st.wait
        ok, err, no_wait = rt_wait(st.vm_handle, id, timeout)
        if no_wait and err == nil then
            -- the runtime cannot tell whether this caller may yield
            if can_wait_walk() then
                ok, err, no_wait = rt_wait(st.vm_handle, id, timeout, true)
            else
                err = CCALL
            end
        end
    elseif rc == WAIT_TIMEOUT then
        err = "timeout"
    else
        err = error_message(st)
        no_wait = rc == WAIT_CANNOT
    end
    if ok then
        -- (no tail call on the common paths: see runtime.lua)
        local n, a, b = take_ffi(st, id)
        if n == 1 then
            return a
        elseif n == 2 then
            return a, b
        elseif n == -1 then
            -- the task queued socket ops: the caller carries them out
            return net_wait(st, id, timeout - (ngx_now() - t0))
        end
        return st.rt.take(id)
    end
    -- a timeout, or no wait at all: drop the Rust future now (its
    -- destructors run)
    forget(st, id)
    if no_wait then
        error(err, level)
    end
    return nil, err
end


-- The results of task `id`, which finished (a task handle's), after its
-- last socket ops if it has any (see wait()).
local function take_done(st, id, timeout, level)
    local ops = st.netops[id]
    if ops then
        st.netops[id] = nil
        return carry_out(st, id, timeout, level, unpack(ops, 1, ops.n))
    end
    local n, a, b = take_ffi(st, id)
    if n == 1 then
        return a
    elseif n == 2 then
        return a, b
    elseif n == -1 then
        return carry_out(st, id, timeout, level)
    end
    return st.rt.take(id)
end


-- Turns what a raw function returned into the caller's results: `true,
-- ...` (finished), `nil, message` (misuse) or a task id (pending; negative
-- when the driver must run in this cycle).
local function finish(st, timeout, ok, ...)
    if ok == true then
        return ...
    end
    if ok == nil then
        -- misuse (a wrong argument): raise in the caller (level 2: we are
        -- tail-called, so the wrapper's frame is gone)
        error((...), 2)
    end
    -- tail calls: level 2 is the caller (`...`: socket ops, see wait())
    return wait(st, ok, timeout, 2, ...)
end


local function check_phase(name)
    local phase = get_phase()
    if not YIELDABLE[phase] then
        error("resty.async: " .. name .. "() cannot wait in the " .. phase
              .. " phase (use it in rewrite, access or content handlers, "
              .. "ngx.timer callbacks or ngx.thread light threads)", 3)
    end
end


local function make_async(st, name, raw)
    local function f(...)
        check_phase(name)
        return finish(st, config.timeout, raw(...))
    end
    wrapped[f] = { st = st, raw = raw, name = name }
    return f
end


local function sync_finish(ok, ...)
    if ok then
        return ...
    end
    error((...), 2)  -- tail-called: level 2 is the caller of the wrapper
end


local function make_sync(raw)
    return function(...)
        return sync_finish(raw(...))
    end
end


-- A timeout argument: a number, or a string Lua converts to one, as
-- luaL_checknumber takes them (ngx.sleep, cosocket settimeout). Returns
-- the number; raises in the caller of `fname` for anything else, for NaN,
-- infinity and for 0 or less (lua-resty-core's sema:wait raises for a
-- negative one too; 0 would cancel every call that does not finish at
-- once).
local function check_timeout(v, pos, fname)
    local n = v
    if type(n) ~= "number" then
        n = type(n) == "string" and tonumber(n)
        if not n then
            error("bad argument #" .. pos .. " to '" .. fname
                  .. "' (number expected, got " .. type(v) .. ")", 3)
        end
    end
    if n ~= n or n <= 0 or n == math_huge then
        error("bad argument #" .. pos .. " to '" .. fname
              .. "' (timeout must be a finite number > 0)", 3)
    end
    return n
end


-- getaddrinfo on the pool, for a host name where nginx has no resolver:
-- rt.net_resolve is a raw function of the task's runtime.
net.resolve = function(st, host, timeout)
    if timeout <= 0 then
        return nil, "timeout"
    end
    return finish(st, timeout, st.rt.net_resolve(host))
end


_M.pending_id = pending_id
_M.wait = wait
_M.take_done = take_done
_M.finish = finish
_M.check_phase = check_phase
_M.make_async = make_async
_M.make_sync = make_sync
_M.check_timeout = check_timeout


return _M
