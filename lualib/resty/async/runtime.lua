-- resty.async.runtime: the Lua side of each Rust runtime (one per
-- resty-async library and Lua VM): its control functions, the callers that
-- wait for its tasks, and the results it handed over and nobody took yet.

local pairs = pairs
local setmetatable = setmetatable


local _M = {
    -- One state per runtime (Rust library), keyed by the library's id.
    states = {},
    nstates = 0,
    -- Settings of the Lua side (configure() updates them).
    config = {
        timeout = 60,
    },
    -- waiters[id] once the driver has posted the waiter's semaphore.
    POSTED = true,
    -- waiters[id] of a waiter that carries out its task's socket ops
    -- (resty.async.net); its state is nets[id].
    NET = {},
}

local POSTED = _M.POSTED
local NET = _M.NET


-- The state of the runtime of raw module table `raw` (made on first use).
function _M.get(raw, name)
    local id = raw.__id
    local st = _M.states[id]
    if st then
        return st, false
    end
    st = {
        name = name,
        rt = raw.__rt,
        waiters = {},     -- task id -> semaphore (or POSTED)
        nwaiting = 0,
        stale = {},       -- posted ids seen by the last sweep
        owned = {},       -- task id -> "pending"|"done", for handles
        results = {},     -- task id -> its one result, until taken
        nheld = 0,        -- entries in results
        collected = {},   -- ids of handles the GC collected
        -- resty.async.net: the states of waiters that carry out socket ops
        -- (weak: a killed waiter's goes with it), and tasks with socket
        -- ops queued before their caller became such a waiter
        nets = setmetatable({}, { __mode = "v" }),
        netops = {},
        swept = 0,
        running = false,
        failures = 0,
        polls = 0,
        pid = ngx.worker.pid(),  -- see driver.lua: may_exit_idle()
        phase = ngx.get_phase(),
    }
    _M.states[id] = st
    _M.nstates = _M.nstates + 1
    return st, true
end


-- resty.async.net: news of task `id` whose caller carries out its socket
-- ops (or will): `-id, false` from the driver means ops were queued.
local function net_event(st, id, sema, taken, v)
    if sema == NET then
        local ctx = st.nets[id]
        if ctx then
            ctx:event(taken, v)
        end
        return
    end
    if v == false and not taken then
        -- the waiter (or task:wait) switches to carrying out ops
        st.netops[id] = true
        if sema and sema ~= POSTED then
            sema:post(1)
            st.waiters[id] = POSTED
        end
    elseif st.owned[id] then
        st.owned[id] = "done"
    end
    -- else: a posted waiter takes the results when it carries out the ops
end


-- Hands a finished task to whoever waits for it. id > 0: `v` is its one
-- result, already out of Rust; id < 0: task -id keeps its results for
-- rt.take(). (id < 0 with `v == false`: see net_event.)
local function finished(st, id, v)
    local taken = id > 0
    if not taken then
        id = -id
    end
    local sema = st.waiters[id]
    if sema == NET or v == false and not taken or st.netops[id] then
        return net_event(st, id, sema, taken, v)
    end
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
    st.netops[id] = nil
    return st.rt.take(id)
end


-- Forgets task `id`: drops its Rust future, or its results.
local function forget(st, id)
    unhold(st, id)
    st.netops[id] = nil
    st.rt.cancel(id)
end



_M.finished = finished
_M.unhold = unhold
_M.take = take
_M.forget = forget


-- Calls f(st) for every runtime.
function _M.each(f)
    for _, st in pairs(_M.states) do
        f(st)
    end
end


return _M
