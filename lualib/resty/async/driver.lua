-- resty.async.driver: one `ngx.timer.at` callback per runtime and worker
-- that connects a cosocket to the runtime's completion socket, runs the
-- ready Rust tasks when a byte arrives or a Rust timer is due, and posts the
-- `ngx.semaphore` of each waiting caller whose task finished.

local semaphore = require "ngx.semaphore"
local runtime = require "resty.async.runtime"
local ffi = require "ffi"
local bit = require "bit"

local ngx = ngx
local pcall = pcall
local pairs = pairs
local tostring = tostring
local next = next
local collectgarbage = collectgarbage
local math_ceil = math.ceil
local timer_at = ngx.timer.at
local thread_spawn = ngx.thread.spawn
local thread_kill = ngx.thread.kill
local ngx_log = ngx.log
local ERR = ngx.ERR
local WARN = ngx.WARN
local exiting = ngx.worker.exiting
local ngx_now = ngx.now
local ngx_sleep = ngx.sleep
local tcp = ngx.socket.tcp
local sema_new = semaphore.new
local ffi_new = ffi.new
local band = bit.band
local error = error
local finished = runtime.finished
local forget = runtime.forget
local may_close = runtime.may_close


local _M = {}


-- The driver checks ngx.worker.exiting() at least this often (seconds): a
-- graceful stop (`nginx -s quit`, reload) waits at most this long for it.
-- ngx_lua gives a running timer no other sign that the worker exits.
local IDLE_WAIT = 0.1
-- Read timeout of the completion socket's reader (ms; ngx_lua's maximum).
-- The reader never needs a timeout; timers use a semaphore wait instead, as
-- a read timeout would be logged at the error level.
local READ_TIMEOUT = 2 ^ 31 - 1
-- How often (seconds) the driver looks for waiters that ngx_lua killed
-- (client abort, ngx.thread.kill, ngx.exit from another thread) and for
-- task handles the GC collected, and cancels their tasks.
local SWEEP_INTERVAL = 0.1
-- A driver with nothing to do exits after this long (seconds), so that a
-- Lua VM that ngx_lua closes when its handlers end (`lua_code_cache off`)
-- is not kept open by it. Drivers of the VM that lives as long as the
-- worker stay; so do all drivers while no VM of the worker has closed.
local IDLE_EXIT = 1
-- While only task handles keep a driver that may exit from exiting (see
-- may_close), each sweep runs this much (KB) of the Lua GC's work.
local GC_STEP_KB = 64
-- A driver that dies is restarted after RESTART_MIN seconds, doubled after
-- each failure in a row up to RESTART_MAX; a driver that ran for HEALTHY
-- seconds starts the count anew.
local RESTART_MIN = 0.01
local RESTART_MAX = 5
local HEALTHY = 10
-- A driver's failures in a row are logged at most once per LOG_EVERY
-- seconds (the first one at once).
local LOG_EVERY = 10
-- A driver's timer that has not run this long (seconds) after it was due
-- never will: ngx_lua drops a timer that expires while
-- lua_max_running_timers timers run, and tells only its error log.
local START_GRACE = 1


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



-- Finished task ids of a poll, written by the FFI poll; and its other
-- results.
local MAX_IDS = 256
local ids = ffi_new("double[?]", MAX_IDS)
local poll_out = ffi_new("resty_async_poll_out[1]")
local POLL_REARM = 1
local POLL_TASKS = 2
local POLL_MORE = 4
-- Runs of the ready tasks per poll (each within the runtime's budget of
-- polls): tasks that keep waking each other run on after nginx's other
-- events (timers, other requests), for which the last run left a byte on
-- the completion socket.
local MAX_RUNS = 4


-- One poll of the runtime: hands over the finished tasks nobody waits for
-- (the runtime posts the waiters itself). Returns the poll's flags.
local function poll_once(st, armed)
    local out = poll_out[0]
    local n = st.api.poll(st.vm, armed, ids, MAX_IDS, out)
    if n < 0 then
        -- (gone, or a panic: the FFI call left its message)
        error("the poll of " .. st.name .. " failed: "
              .. runtime.error_message(st))
    end
    for i = 0, n - 1 do
        finished(st, ids[i])
    end
    return out.flags
end


-- Runs ready tasks and due timers; posts the waiters of finished tasks.
-- Returns the time to the next Rust timer (ms, -1: none) and whether the
-- driver must re-arm for an earlier one. (The loop below seldom runs: a
-- loop that LuaJIT sees leave after one turn cannot be compiled.)
local function run_poll(st, arm)
    local armed = arm and 1 or 0
    local flags = poll_once(st, armed)
    local rearm = band(flags, POLL_REARM) ~= 0
    local runs = 0
    while band(flags, POLL_TASKS + POLL_MORE) ~= 0 do
        if band(flags, POLL_TASKS) ~= 0 then
            -- tasks with futures: polled from a Lua C function
            local more = st.rt.run()
            runs = runs + 1
            if more and runs >= MAX_RUNS then
                break
            end
        end
        flags = poll_once(st, armed)
        rearm = rearm or band(flags, POLL_REARM) ~= 0
    end
    local out = poll_out[0]
    st.polls = st.polls + 1
    st.waiting = out.waiting
    return out.next_ms, rearm
end


-- Shows the runtime the coroutine running now, so that it learns sooner
-- how to find the running one from an FFI call (see yieldable.rs): the
-- driver's two coroutines do, before any caller waits.
local function note_running(st)
    local note = st.rt.note_running
    if note then
        note(st.vm_handle)
    end
end


-- Light thread of the driver: each byte on the completion socket means
-- "tasks were woken"; run them right here.
local function reader(st, sock)
    note_running(st)
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


-- Cancels the tasks nobody can collect any more: those of callers ngx_lua
-- killed while they waited (client abort, ngx.thread.kill, ngx.exit from
-- another thread; the runtime finds them), and those of task handles the
-- GC collected.
local function sweep(st)
    st.rt.sweep()

    -- callers that carry out socket ops (resty.async.net): killed while
    -- waiting on their semaphore or in a socket op, or collected
    if st.nnet > 0 then
        local nets = st.nets
        for id in pairs(st.netids) do
            local ctx = nets[id]
            if not ctx or ctx:dead() then
                st.netids[id] = nil
                nets[id] = nil
                st.nnet = st.nnet - 1
                if ctx then
                    ctx:abandon()
                end
                forget(st, id)
            end
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
    return st.waiting == 0 and st.nnet == 0 and next(st.owned) == nil
           and st.rt.idle()
end


-- Whether VMs like that of `st` come and go: `lua_code_cache off`.
local function vms_come_and_go(st)
    return st.cache_off or st.rt.vms_come_and_go()
end


-- Whether an idle driver of `st` (idle for `secs`) should exit: its driver
-- stays in a VM that lives as long as the worker. Where VMs come and go,
-- the drivers exit as soon as they are idle; until that is known, after
-- IDLE_EXIT seconds.
local function may_exit_idle(st, secs)
    if not may_close(st) then
        return false
    end
    return vms_come_and_go(st) or secs >= IDLE_EXIT
end


-- Whether only task handles that no running handler holds keep the driver
-- of `st`, in a VM of a request (`lua_code_cache off`): nobody waits, every
-- task in flight has a handle, and the requests and timers that made or
-- waited on the handles have ended (the GC collected their ngx.ctx). Such
-- a handle is reachable only from the VM itself (a module's table, say),
-- and were the driver to stay for it, so would the VM, its runtime, its
-- pool threads and its completion socket: one of each per request, for
-- good. The driver exits instead; the handles' tasks are cancelled when
-- ngx_lua closes the VM, and a handler of the VM that waits on one later
-- (a timer that had not run yet) starts the driver again.
local function abandoned(st)
    if not (st.waiting == 0 and st.nnet == 0 and next(st.users) == nil
            and may_close(st) and vms_come_and_go(st))
    then
        return false
    end
    local handles = 0
    for _ in pairs(st.owned) do
        handles = handles + 1
    end
    return st.rt.in_flight() <= handles
end


-- Advances the GC of a VM that may close while nobody waits and only task
-- handles keep its driver: the driver's own loop allocates too little for
-- the GC to ever collect a handle that its request, now gone, dropped, or
-- the ngx.ctx of that request (see abandoned()), and the driver (hence
-- the VM, its runtime and its completion socket) would stay for good.
local function collect_handles(st)
    if st.waiting == 0 and st.nnet == 0
       and (next(st.owned) ~= nil or next(st.users) ~= nil)
       and may_close(st)
    then
        collectgarbage("step", GC_STEP_KB)
    end
end


local function drive(st)
    note_running(st)
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

        if st.waiting == 0 and st.nnet == 0 and exiting() then
            return true
        end

        if st.failures > 0 and ngx_now() - st.started >= HEALTHY then
            st.failures = 0
        end

        if (next_ms < 0 and idle(st)) or abandoned(st) then
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
            collect_handles(st)
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


local function driver(premature, st, gen, wait_first)
    if gen ~= st.gen then
        return  -- taken for dropped and started again (see running())
    end
    st.alive = true
    if premature then
        -- ngx_lua runs every pending timer early, once, as the worker
        -- starts to exit: a driver that was about to start or restart
        -- for calls that wait starts now (it exits once nobody waits)
        st.running = false
        if st.nnet > 0 or not st.rt.idle() then
            local ok, err = start_driver(st)
            if not ok then
                ngx_log(ERR, "resty.async: cannot start the driver of ",
                        st.name, " while the worker exits: ", err)
            end
        end
        return
    end
    if wait_first > 0 then
        ngx_sleep(wait_first)  -- (a restart while the worker exits)
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
    local waited = st.waiting > 0 or st.nnet > 0
    if exiting() and not waited then
        ngx_log(WARN, "resty.async: driver of ", st.name, " stopped while ",
                "the worker exits: ", why)
        return
    end

    local delay = RESTART_MIN * 2 ^ (st.failures - 1)
    if delay > RESTART_MAX then
        delay = RESTART_MAX
    end
    if exiting() then
        -- (worker_shutdown_timeout closes the completion socket: no error)
        ngx_log(WARN, "resty.async: driver of ", st.name, " stopped while ",
                "the worker exits: ", why, "; restarting in ", delay,
                " s for the calls that wait")
    else
        log_failure(st, why, delay)
    end
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
    local gen = (st.gen or 0) + 1
    -- While the worker exits, ngx_lua refuses a timer with a delay, and
    -- worker_shutdown_timeout closes every connection, the completion
    -- socket's too, but lets timers run on: the driver restarts at once
    -- for their calls and waits out its delay itself.
    local wait_first = 0
    if delay and delay > 0 and exiting() then
        wait_first = delay
    end
    local ok
    ok, err = timer_at(wait_first > 0 and 0 or delay or 0, driver, st, gen,
                       wait_first)
    if not ok then
        return nil, "cannot start the resty.async driver: " .. tostring(err)
    end
    st.gen = gen
    st.alive = false
    st.due = ngx_now() + (delay or 0)
    st.running = true
    return true
end


-- Whether the driver of `st` runs, or is about to. One whose timer ngx_lua
-- dropped (see START_GRACE) is logged and taken for stopped, so that the
-- next call starts it again, rather than every call waiting out its
-- timeout for good.
local function running(st)
    if not st.running then
        return false
    end
    if st.alive or ngx_now() < st.due + START_GRACE then
        return true
    end
    st.running = false
    ngx_log(ERR, "resty.async: the driver of ", st.name, " did not start: ",
            "ngx_lua did not run its timer (each runtime's driver keeps ",
            "one of lua_max_running_timers while it runs); starting it ",
            "again")
    return false
end


-- Makes sure the driver of `st` runs before task `id` is waited for; if it
-- cannot start, the task is cancelled.
local function need_driver(st, id)
    if running(st) then
        return true
    end
    local ok, err = start_driver(st)
    if not ok then
        st.rt.cancel(id)
    end
    return ok, err
end




_M.kick = kick
_M.start = start_driver
_M.need = need_driver
_M.running = running


return _M
