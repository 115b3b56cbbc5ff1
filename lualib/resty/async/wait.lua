-- resty.async.wait: how a caller of a resty.async function waits for its
-- task, on an `ngx.semaphore` that the driver posts (only the caller's own
-- light thread yields), and how raw functions are wrapped to do so.

local driver = require "resty.async.driver"
local runtime = require "resty.async.runtime"
local net = require "resty.async.net"
local semaphore = require "ngx.semaphore"

local ngx = ngx
local type = type
local unpack = unpack
local error = error
local pcall = pcall
local setmetatable = setmetatable
local math_huge = math.huge
local get_phase = ngx.get_phase
local ngx_now = ngx.now
local net_wait = net.wait
local sema_new = semaphore.new
local debug_getinfo = debug.getinfo
local kick = driver.kick
local need_driver = driver.need
local take = runtime.take
local forget = runtime.forget
local config = runtime.config
-- C functions a yield passes through (LuaJIT runs them as fast functions).
local YIELD_THROUGH = { [pcall] = true, [xpcall] = true }
local rt_can_wait = require("resty_async_core").__rt.can_wait


local _M = {
    -- wrapper function -> { st = state, raw = raw function, name = name }
    wrapped = setmetatable({}, { __mode = "k" }),
}

local wrapped = _M.wrapped


-- Phases whose handlers run in a coroutine ngx_lua can suspend.
local YIELDABLE = {
    rewrite = true,
    access = true,
    content = true,
    timer = true,
    ssl_cert = true,
    ssl_session_fetch = true,
    preread = true,
}

-- Most semaphores kept for reuse.
local MAX_SPARE_SEMAS = 1024

local spare_semas = {}
local nspare = 0


local function get_sema()
    if nspare > 0 then
        local s = spare_semas[nspare]
        spare_semas[nspare] = nil
        nspare = nspare - 1
        return s
    end
    return sema_new(0)
end


local function put_sema(s)
    if nspare < MAX_SPARE_SEMAS and s:count() == 0 then
        nspare = nspare + 1
        spare_semas[nspare] = s
    end
end



-- the driver must run in this cycle (then it is kicked).
local function pending_id(st, id)
    if id < 0 then
        kick(st)
        return -id
    end
    return id
end


-- Waits for the task of a pending raw call's result `id` (see pending_id)
-- to finish; returns its results. (pending_id is called here, not by the
-- caller: a trace that LuaJIT starts in it must not return to the vararg
-- frame of finish(), which it cannot compile.)
-- Whether the caller of a resty.async function may yield: not inside a C
-- function that calls Lua (a table.sort comparator, a string.gsub
-- callback), where ngx.semaphore would queue a waiter that never waits.
-- Rust reads it off LuaJIT's state (see yieldable.rs); where it cannot,
-- the stack is searched for such a C function.
local function can_wait()
    local yes = rt_can_wait()
    if yes ~= nil then
        return yes
    end
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


-- (`level`: the caller's level for error(), as seen from here. `k, ...`:
-- the socket ops a raw call returned for the caller, see
-- resty.async.net.)
local function wait(st, id, timeout, level, k, ...)
    id = pending_id(st, id)
    if not can_wait() then
        forget(st, id)
        error("resty.async: cannot wait inside a C function such as a "
              .. "table.sort comparator or a string.gsub callback (call "
              .. "it outside, or start it with async.spawn and wait for "
              .. "the task outside)", level)
    end
    local ok, err = need_driver(st, id)
    if not ok then
        return nil, err
    end

    local netops = st.netops
    if k or netops[id] then  -- [net] the caller carries out socket ops
        local ops = netops[id]
        netops[id] = nil
        if type(ops) == "table" then  -- kept by async.spawn
            return net_wait(st, id, timeout, unpack(ops, 1, ops.n))
        end
        return net_wait(st, id, timeout, k, ...)
    end

    local sema = get_sema()
    local waiters = st.waiters
    waiters[id] = sema
    st.nwaiting = st.nwaiting + 1
    local t0 = ngx_now()

    ok, err = sema:wait(timeout)

    waiters[id] = nil
    st.stale[id] = nil
    st.nwaiting = st.nwaiting - 1
    put_sema(sema)

    if ok then
        if netops[id] then  -- [net] socket ops queued meanwhile
            netops[id] = nil
            return net_wait(st, id, timeout - (ngx_now() - t0))
        end
        return take(st, id)
    end

    -- timeout: drop the Rust future now (its destructors run)
    forget(st, id)
    return nil, err
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
    -- tail calls: level 2 is the caller ([net] `...`: socket ops queued)
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


local function check_timeout(v, pos, fname)
    if type(v) ~= "number" then
        error("bad argument #" .. pos .. " to '" .. fname
              .. "' (number expected, got " .. type(v) .. ")", 3)
    end
    if v ~= v or v <= 0 or v == math_huge then
        error("bad argument #" .. pos .. " to '" .. fname
              .. "' (timeout must be a finite number > 0)", 3)
    end
end


-- mlua's async functions (and the async methods of userdata types) yield


-- [net] getaddrinfo on the pool, for a host name where nginx has no
-- resolver: rt.net_resolve is a raw function of the task's runtime.
net.resolve = function(st, host, timeout)
    if timeout <= 0 then
        return nil, "timeout"
    end
    return finish(st, timeout, st.rt.net_resolve(host))
end


_M.pending_id = pending_id
_M.wait = wait
_M.finish = finish
_M.check_phase = check_phase
_M.make_async = make_async
_M.make_sync = make_sync
_M.check_timeout = check_timeout


return _M
