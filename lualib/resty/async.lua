-- resty.async: Rust futures and blocking work for OpenResty, driven by
-- nginx's own event loop.
--
-- Each Rust module built on the resty-async crate (this library's own
-- built-ins live in `resty_async_core`) has a runtime per worker process.
-- This file gives every runtime a *driver*: one `ngx.timer.at` callback per
-- worker that connects a cosocket to the runtime's completion socket, runs
-- the ready Rust tasks when a byte arrives or a Rust timer is due, and posts
-- the `ngx.semaphore` of each waiting caller whose task finished.

local semaphore = require "ngx.semaphore"
local core = require "resty_async_core"

local ngx = ngx
local type = type
local error = error
local pairs = pairs
local pcall = pcall
local tostring = tostring
local setmetatable = setmetatable
local getmetatable = getmetatable
local newproxy = newproxy
local select = select
local unpack = unpack
local math_ceil = math.ceil
local math_huge = math.huge
local get_phase = ngx.get_phase
local timer_at = ngx.timer.at
local thread_spawn = ngx.thread.spawn
local thread_kill = ngx.thread.kill
local ngx_log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local exiting = ngx.worker.exiting
local ngx_now = ngx.now
local worker_pid = ngx.worker.pid
local tcp = ngx.socket.tcp
local sema_new = semaphore.new
local debug_getinfo = debug.getinfo
local debug_getupvalue = debug.getupvalue
local debug_getmetatable = debug.getmetatable
local ipairs = ipairs
local rawget = rawget
local rawset = rawset
local next = next
local rt_can_wait = core.__rt.can_wait
-- C functions a yield passes through (LuaJIT runs them as fast functions).
local YIELD_THROUGH = { [pcall] = true, [xpcall] = true }


local _M = {
    version = core.version,
}


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

-- The driver checks ngx.worker.exiting() at least this often (seconds): a
-- graceful stop (`nginx -s quit`, reload) waits at most this long for it.
-- ngx_lua gives a running timer no other sign that the worker exits.
local IDLE_WAIT = 0.1
-- Read timeout of the completion socket's reader (ms; ngx_lua's maximum).
-- The reader never needs a timeout; timers use a semaphore wait instead, as
-- a read timeout would be logged at the error level.
local READ_TIMEOUT = 2 ^ 31 - 1
-- Most semaphores kept for reuse.
local MAX_SPARE_SEMAS = 1024
-- How often (seconds) the driver looks for waiters that ngx_lua killed
-- (client abort, ngx.thread.kill, ngx.exit from another thread) and for
-- task handles the GC collected, and cancels their tasks.
local SWEEP_INTERVAL = 0.1
-- Marks a userdata metatable whose async methods _M.adopt() took over.
local CLASS_MARK = "__resty_async_class"
-- waiters[id] once the driver has posted the waiter's semaphore.
local POSTED = true
-- A driver with nothing to do exits after this long (seconds), so that a
-- Lua VM that ngx_lua closes when its handlers end (`lua_code_cache off`)
-- is not kept open by it. Drivers of the VM that lives as long as the
-- worker stay; so do all drivers while no VM of the worker has closed.
local IDLE_EXIT = 1
-- A driver that dies is restarted after RESTART_MIN seconds, doubled after
-- each failure in a row up to RESTART_MAX; a driver that ran for HEALTHY
-- seconds starts the count anew.
local RESTART_MIN = 0.01
local RESTART_MAX = 5
local HEALTHY = 10
-- A driver's failures in a row are logged at most once per LOG_EVERY
-- seconds (the first one at once).
local LOG_EVERY = 10
-- The version of the calling convention between a module's raw functions
-- and this file (resty_async::module::ABI).
local ABI = 4

local config = {
    timeout = 60,
}


-- The options given to configure() so far, for the runtimes of modules
-- loaded later.
local options = {}


-- Hands `opts` to the runtime of `st`, which checks them (Rust owns the
-- settings, their defaults and limits). Returns the new timeout, or nil,
-- message, misuse.
local function configure_runtime(st, opts)
    return st.rt.configure(opts)
end

-- One state per runtime (Rust library), keyed by the runtime's id.
local states = {}
local nstates = 0

-- wrapper function -> { st = state, raw = raw function, name = name }
local wrapped = setmetatable({}, { __mode = "k" })

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


-- Wakes the driver's main loop, at the end of this cycle of nginx's event
-- loop (semaphore posts are posted events): to re-arm for an earlier Rust
-- timer, to wake the blocking pool for the jobs queued in this cycle, or to
-- see that the reader stopped. One post per turn of the loop.
local function kick(st)
    local tick = st.tick
    if tick and not st.kicked then
        st.kicked = true
        tick:post(1)
    end
end


-- Hands a finished task to whoever waits for it. id > 0: `v` is its one
-- result, already out of Rust; id < 0: task -id keeps its results for
-- rt.take().
local function finished(st, id, v)
    local taken = id > 0
    if not taken then
        id = -id
    end
    local sema = st.waiters[id]
    if sema and sema ~= POSTED then
        sema:post(1)
        st.waiters[id] = POSTED
    elseif st.owned[id] then
        st.owned[id] = "done"  -- a task handle collects it later
    else
        -- nobody waits for it any more: free its results (a taken one is
        -- dropped with `v`)
        if not taken then
            st.rt.cancel(id)
        end
        return
    end
    if taken then
        st.results[id] = v
        st.nheld = st.nheld + 1
    end
end


-- Removes and returns the one result the driver got for task `id` (nil if
-- it got none): the counterpart of finished() storing it.
local function unhold(st, id)
    local results = st.results
    local v = results[id]
    if v ~= nil then
        results[id] = nil
        st.nheld = st.nheld - 1
    end
    return v
end


-- The results of finished task `id`: the one value the driver got for it,
-- or what rt.take() returns.
local function take(st, id)
    local v = unhold(st, id)
    if v ~= nil then
        return v
    end
    return st.rt.take(id)
end


-- Forgets task `id`: drops its Rust future, or its results.
local function forget(st, id)
    unhold(st, id)
    st.rt.cancel(id)
end


-- Hands over the `n` values of `t`, `id, value` pairs.
local function dispatch_table(st, t, n)
    for i = 1, n, 2 do
        finished(st, t[i], t[i + 1])
    end
end


-- Hands over the `id, value` pairs in `...`; returns how many values.
local function dispatch_pairs(st, ...)
    local n = select("#", ...)
    if n == 2 then
        finished(st, ...)
    elseif n > 0 then
        -- one copy of the values (select(i, ...) in a loop would copy the
        -- rest of them for each pair)
        dispatch_table(st, { ... }, n)
    end
    return n
end


local function dispatch(st, next_ms, rearm, nstr, n, ...)
    if n >= 0 then
        dispatch_pairs(st, ...)
    else
        dispatch_table(st, (...), -n)
    end
    -- the results that are one string, made into Lua strings by
    -- rt.strings() (a C function: no protected call per string)
    if nstr > 0 then
        local strings = st.rt.strings
        repeat
            local got = dispatch_pairs(st, strings())
            nstr = nstr - got / 2
        until got == 0 or nstr <= 0
    end
    st.polls = st.polls + 1
    return next_ms, rearm
end


-- Runs ready tasks and due timers; posts the waiters of finished tasks.
-- Returns the time to the next Rust timer (ms, -1: none) and whether the
-- driver must re-arm for an earlier one.
local function run_poll(st, arm)
    return dispatch(st, st.rt.poll(arm))
end


-- Light thread of the driver: each byte on the completion socket means
-- "tasks were woken"; run them right here.
local function reader(st, sock)
    while true do
        local data, err = sock:receiveany(4096)
        if not data then
            if err ~= "timeout" then
                st.reader_err = "completion socket: " .. tostring(err)
                kick(st)
                return
            end
        else
            -- protected: an error must reach the driver (which restarts),
            -- not end this light thread quietly
            local ok, res, rearm = pcall(run_poll, st, false)
            if not ok then
                st.reader_err = "poll failed: " .. tostring(res)
                kick(st)
                return
            end
            if rearm then
                kick(st)
            end
        end
    end
end


-- Cancels the tasks nobody can collect any more.
local function sweep(st)
    local waiters = st.waiters
    local stale = st.stale
    for id, sema in pairs(waiters) do
        local dead
        if sema == POSTED then
            -- a posted waiter resumes in the same event loop cycle: posted
            -- a sweep ago and still here means it was killed meanwhile
            dead = stale[id]
            stale[id] = true
        else
            -- ngx_lua's cleanup of a killed waiter leaves the semaphore
            -- with nobody waiting (count -1 while someone waits)
            dead = sema:count() >= 0
        end
        if dead then
            waiters[id] = nil
            stale[id] = nil
            st.nwaiting = st.nwaiting - 1
            forget(st, id)
        end
    end

    local collected = st.collected
    local owned = st.owned
    for i = #collected, 1, -1 do
        local id = collected[i]
        collected[i] = nil
        if owned[id] then
            owned[id] = nil
            forget(st, id)
        end
    end
end


-- Whether the driver of `st` has nothing to do: nobody waits, no task
-- handle is kept, no result is held and no Rust task is in flight.
local function idle(st)
    return st.nwaiting == 0 and st.nheld == 0 and next(st.owned) == nil
           and st.rt.idle()
end


-- Whether an idle driver of `st` (idle for `secs`) should exit. The VM
-- resty.async was loaded into before nginx forked, or in which
-- init_worker_by_lua ran, lives as long as the worker: its driver stays.
-- Other VMs may be closed when their handlers end: once one VM of the
-- worker closed, their drivers exit as soon as they are idle; until then,
-- after IDLE_EXIT seconds.
local function may_exit_idle(st, secs)
    if st.pid ~= worker_pid() or st.phase == "init_worker" then
        return false
    end
    return st.rt.vms_closed() or secs >= IDLE_EXIT
end


local function drive(st)
    local rt = st.rt
    local path, err = rt.path()
    if not path then
        return nil, err
    end

    local sock = tcp()
    st.sock = sock
    local ok
    ok, err = sock:connect("unix:" .. path)
    if not ok then
        return nil, "cannot connect to the completion socket " .. path
                    .. ": " .. tostring(err)
    end

    ok, err = rt.accept()
    if not ok then
        return nil, err
    end

    sock:settimeout(READ_TIMEOUT)
    st.reader_err = nil
    local th
    th, err = thread_spawn(reader, st, sock)
    if not th then
        return nil, "cannot spawn the reader thread: " .. tostring(err)
    end
    st.reader = th
    st.started = ngx_now()

    local tick = st.tick
    local idle_since
    while true do
        local next_ms = run_poll(st, true)

        if st.reader_err then
            return nil, st.reader_err
        end

        if st.nwaiting == 0 and exiting() then
            return true
        end

        if st.failures > 0 and ngx_now() - st.started >= HEALTHY then
            st.failures = 0
        end

        if next_ms < 0 and idle(st) then
            local now = ngx_now()
            idle_since = idle_since or now
            if may_exit_idle(st, now - idle_since) then
                return true
            end
        else
            idle_since = nil
        end

        local wait = IDLE_WAIT
        if next_ms >= 0 then
            -- nginx timers have millisecond resolution: round up, so that
            -- the deadline has passed when we wake
            local s = math_ceil(next_ms) / 1000
            if s < 0.001 then
                s = 0.001
            end
            if s < wait then
                wait = s
            end
        end
        tick:wait(wait)
        st.kicked = false

        local now = ngx_now()
        if now - st.swept >= SWEEP_INTERVAL then
            st.swept = now
            sweep(st)
        end
    end
end


local start_driver, log_failure


-- Logs a driver's death: the first of a series at once, then at most one
-- line per LOG_EVERY seconds, which counts the ones it did not log.
log_failure = function(st, why, delay)
    local now = ngx_now()
    if st.failures > 1 and now - (st.logged_at or 0) < LOG_EVERY then
        st.unlogged = (st.unlogged or 0) + 1
        return
    end
    local more = ""
    if st.unlogged and st.unlogged > 0 then
        more = " (" .. st.unlogged .. " more failures since the last line)"
    end
    st.logged_at = now
    st.unlogged = 0
    ngx_log(ERR, "resty.async: driver of ", st.name, " died: ", why,
            "; restarting in ", delay, " s (failure ", st.failures,
            " in a row)", more, ". Calls wait until it runs again; if ",
            "this repeats, the lines above say why (base_dir must be ",
            "writable by the worker's user)")
end


local function driver(premature, st)
    if premature then
        st.running = false
        return
    end

    local ok, res, err = pcall(drive, st)

    if st.reader then
        thread_kill(st.reader)
        st.reader = nil
    end
    if st.sock then
        st.sock:close()
        st.sock = nil
    end
    st.rt.disconnect()
    st.running = false

    if ok and res then
        return  -- the worker is exiting and nobody waits
    end

    local why = ok and err or res
    st.failures = st.failures + 1
    if exiting() then
        ngx_log(WARN, "resty.async: driver of ", st.name, " stopped while ",
                "the worker exits: ", why)
        return
    end

    local delay = RESTART_MIN * 2 ^ (st.failures - 1)
    if delay > RESTART_MAX then
        delay = RESTART_MAX
    end
    log_failure(st, why, delay)
    local started, terr = start_driver(st, delay)
    if not started then
        ngx_log(ERR, "resty.async: cannot restart the driver of ", st.name,
                ": ", terr)
    end
end


start_driver = function(st, delay)
    if not st.tick then
        st.tick = sema_new(0)
    end
    -- Create the socket now, so that a failure reaches the caller.
    local path, err = st.rt.path()
    if not path then
        return nil, err
    end
    local ok
    ok, err = timer_at(delay or 0, driver, st)
    if not ok then
        return nil, "cannot start the resty.async driver: " .. tostring(err)
    end
    st.running = true
    return true
end


-- Makes sure the driver of `st` runs before task `id` is waited for; if it
-- cannot start, the task is cancelled.
local function need_driver(st, id)
    if st.running then
        return true
    end
    local ok, err = start_driver(st)
    if not ok then
        st.rt.cancel(id)
    end
    return ok, err
end


-- The task id of a pending raw call's result `id`, whose sign says whether
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


-- (`level`: the caller's level for error(), as seen from here.)
local function wait(st, id, timeout, level)
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

    local sema = get_sema()
    local waiters = st.waiters
    waiters[id] = sema
    st.nwaiting = st.nwaiting + 1

    ok, err = sema:wait(timeout)

    waiters[id] = nil
    st.stale[id] = nil
    st.nwaiting = st.nwaiting - 1
    put_sema(sema)

    if ok then
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
    return wait(st, ok, timeout, 2)  -- tail calls: level 2 is the caller
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
-- the "pending" marker of their library's mlua through the
-- `coroutine.yield` they captured when they were made. ngx_lua's
-- coroutine.yield would resume them at once, in a busy loop: the worker
-- spins. Functions a resty-async module registers (Module::add_lua_async,
-- Module::add_class) are driven by its executor, through LuaJIT's own
-- yield; this `coroutine.yield` lets the others fail at once instead.
-- Module::new loads this library and calls guard_mlua() before it makes
-- any function, so that they capture it.
local mlua_markers = {}  -- pending marker -> its library's in_poll()
local co = coroutine
local ngx_yield = co.yield
local raw_yield = co._yield or ngx_yield  -- luacheck: ignore 143

-- The chunk name of function `f` (nil if not a function).
local function mlua_source(f)
    if type(f) == "function" then
        return debug_getinfo(f, "S").source
    end
end


local function guarded_yield(...)
    local in_poll = mlua_markers[(...)]
    if in_poll ~= nil then
        if in_poll() then
            return raw_yield(...)
        end
        error("this async Rust function or method must be registered "
              .. "through resty-async (Module::add_class::<T>() for the "
              .. "methods of a userdata type, Module::add_lua_async for a "
              .. "function): called directly in OpenResty it would spin "
              .. "the worker", 2)
    end
    return ngx_yield(...)
end


-- Makes the mlua async functions of a library whose pending marker is
-- `marker` fail instead of spinning when they are not driven by a
-- resty-async executor (`in_poll()` says when one is).
function _M.guard_mlua(marker, in_poll)
    if type(in_poll) ~= "function" then
        error("bad argument #2 to 'guard_mlua' (function expected)", 2)
    end
    if marker ~= nil then
        mlua_markers[marker] = in_poll
    end
    if co.yield ~= guarded_yield then
        ngx_yield = co.yield
        co.yield = guarded_yield  -- luacheck: ignore 122
    end
end


-- Wraps the functions of a resty-async Rust module (the table its luaopen
-- function made with `Module`). `Module::build` calls this.
function _M.register(raw)
    if type(raw) ~= "table" or type(raw.__rt) ~= "table"
       or type(raw.__kinds) ~= "table"
    then
        error("bad argument #1 to 'register' (the raw table of a "
              .. "resty-async module expected)", 2)
    end
    if raw.__abi ~= ABI then
        error("resty.async: module " .. tostring(raw.__name) .. " was built "
              .. "against another version of resty-async (calling "
              .. "convention " .. tostring(raw.__abi) .. ", this "
              .. "resty/async.lua speaks " .. ABI .. "): rebuild it against "
              .. "the resty-async whose lualib/ is on lua_package_path", 2)
    end

    local id = raw.__id
    local st = states[id]
    if not st then
        st = {
            name = raw.__name or "?",
            rt = raw.__rt,
            waiters = {},     -- task id -> semaphore (or POSTED)
            nwaiting = 0,
            stale = {},       -- posted ids seen by the last sweep
            owned = {},       -- task id -> "pending"|"done", for handles
            results = {},     -- task id -> its one result, until taken
            nheld = 0,        -- entries in results
            collected = {},   -- ids of handles the GC collected
            swept = 0,
            running = false,
            failures = 0,
            polls = 0,
            pid = worker_pid(),     -- see may_exit_idle()
            phase = get_phase(),
        }
        states[id] = st
        nstates = nstates + 1
        local ok, err = configure_runtime(st, options)
        if not ok then
            ngx_log(WARN, "resty.async: ", st.name, ": ", err)
        end
    end

    local out = {}
    for name, kind in pairs(raw.__kinds) do
        local f = raw[name]
        if kind == "async" then
            out[name] = make_async(st, name, f)
        elseif kind == "sync" then
            out[name] = make_sync(f)
        else
            out[name] = f
            if type(f) == "userdata" then
                st.rt.adopt(f)  -- an object of a registered type
            end
        end
    end
    return out
end


-- The async functions (mlua's) in userdata metatable `mt`, as `{ table,
-- key, function }`: its async metamethods, and the async methods in its
-- __index table, or in the tables mlua's own __index function looks in.
local function async_methods(mt)
    local out, seen = {}, {}
    local function scan(t)
        if type(t) ~= "table" or seen[t] then
            return
        end
        seen[t] = true
        for k, v in pairs(t) do
            if type(k) == "string" and mlua_source(v) == "=__mlua_async_poll"
            then
                out[#out + 1] = { t, k, v }
            end
        end
    end
    scan(mt)
    local index = rawget(mt, "__index")
    if type(index) == "table" then
        scan(index)
    elseif mlua_source(index) == "=__mlua_index" then
        for i = 1, 255 do
            local name, v = debug_getupvalue(index, i)
            if name == nil then
                break
            end
            if name == "__index" or name == "methods" then
                scan(v)
            end
        end
    end
    return out
end


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
    if rawget(mt, CLASS_MARK) then
        return true
    end
    for _, m in ipairs(async_methods(mt)) do
        local name = type_name .. ":" .. m[2]
        m[1][m[2]] = make_async(st, name, st.rt.lua_async(name, m[3]))
    end
    rawset(mt, CLASS_MARK, true)
    return true
end


function _M.configure(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'configure' (table expected, got "
              .. type(opts) .. ")", 2)
    end
    local timeout
    local first = true
    for _, st in pairs(states) do
        local ok, res, misuse = configure_runtime(st, opts)
        if not ok then
            if misuse then
                error(res, 2)
            end
            if first then
                return nil, res
            end
            ngx_log(WARN, "resty.async: ", st.name, ": ", res)
        else
            timeout = res or timeout
        end
        first = false
    end
    for k, v in pairs(opts) do
        if type(v) == "table" then
            local copy = {}
            for i = 1, #v do
                copy[i] = v[i]
            end
            v = copy
        end
        options[k] = v
    end
    if timeout then
        config.timeout = timeout
    end

    -- In a worker (not in init_by_lua, before fork), start the drivers now.
    local phase = get_phase()
    if phase ~= "init" then
        for _, st in pairs(states) do
            if not st.running then
                local ok, err = start_driver(st)
                if not ok then
                    return nil, err
                end
            end
        end
    end
    return true
end


-- What register() knows of resty.async function `f`, argument `pos` of
-- `fname` (raises in the caller of `fname` if `f` is something else).
local function check_async_fn(f, pos, fname)
    local w = wrapped[f]
    if not w then
        error("bad argument #" .. pos .. " to '" .. fname
              .. "' (a resty.async function expected)", 3)
    end
    return w
end


-- Calls resty.async function `f` with a timeout of its own (seconds).
function _M.with_timeout(timeout, f, ...)
    check_timeout(timeout, 1, "with_timeout")
    local w = check_async_fn(f, 2, "with_timeout")
    check_phase(w.name)
    return finish(w.st, timeout, w.raw(...))
end


local function pack(...)
    return { n = select("#", ...), ... }
end


-- A task started with async.spawn.
local Task = {}
Task.__index = Task


local function start_task(st, ok, ...)
    if ok == nil then
        error((...), 2)  -- tail-called: level 2 is the caller of spawn
    end
    local task = setmetatable({ st = st }, Task)
    if ok == true then
        task.results = pack(...)
        return task
    end

    local id = pending_id(st, ok)
    local started, err = need_driver(st, id)
    if not started then
        task.results = pack(nil, err)
        return task
    end
    task.id = id
    st.owned[id] = "pending"
    -- When the GC collects the task unawaited, its Rust task is cancelled
    -- by the driver's next sweep (not here: a finalizer may run in the
    -- middle of a call into Rust).
    local guard = newproxy(true)
    local collected = st.collected
    getmetatable(guard).__gc = function()
        collected[#collected + 1] = id
    end
    task.guard = guard
    return task
end


-- Starts resty.async function `f` without waiting; returns a task with
-- task:wait(timeout?) and task:cancel().
function _M.spawn(f, ...)
    local w = check_async_fn(f, 1, "spawn")
    check_phase(w.name)
    return start_task(w.st, w.raw(...))
end


local function check_task(self, method)
    if getmetatable(self) ~= Task then
        error("bad argument #1 to '" .. method .. "' (a task expected: use "
              .. "task:" .. method .. "())", 3)
    end
end


function Task.wait(self, timeout)
    check_task(self, "wait")
    local results = self.results
    if not results then
        if timeout == nil then
            timeout = config.timeout
        else
            check_timeout(timeout, 1, "wait")
        end
        local st, id = self.st, self.id
        local state = st.owned[id]
        st.owned[id] = nil
        self.id = nil
        if state == "done" then
            results = pack(take(st, id))
        elseif state == "pending" then
            results = pack(wait(st, id, timeout, 3))
        else
            results = pack(nil, "cancelled")
        end
        self.results = results
    end
    return unpack(results, 1, results.n)
end


-- Cancels the task (its Rust future is dropped now); a later wait()
-- returns nil, "cancelled". Returns whether it was still running.
function Task.cancel(self)
    check_task(self, "cancel")
    local st, id = self.st, self.id
    if not id then
        return false
    end
    self.id = nil
    self.results = pack(nil, "cancelled")
    local state = st.owned[id]
    st.owned[id] = nil
    forget(st, id)
    return state == "pending"
end


-- Counters of every runtime of this worker, added up, and their settings.
function _M.stats()
    local out = {
        runtimes = nstates,
        drivers = 0,
        waiting = 0,
        timeout = config.timeout,
    }
    for _, st in pairs(states) do
        local counters, settings = st.rt.stats()
        for k, v in pairs(counters) do
            out[k] = (out[k] or 0) + v
        end
        for k, v in pairs(settings) do
            out[k] = v
        end
        if st.running then
            out.drivers = out.drivers + 1
        end
        out.waiting = out.waiting + st.nwaiting
        -- results handed to Lua and not yet taken are in flight too
        out.in_flight = out.in_flight + st.nheld
    end
    return out
end


local builtins = _M.register(core)
for name, f in pairs(builtins) do
    _M[name] = f
end


return _M
