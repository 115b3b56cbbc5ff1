-- resty.async.task: the task handles async.spawn returns.

local driver = require "resty.async.driver"
local runtime = require "resty.async.runtime"
local wait_mod = require "resty.async.wait"

local error = error
local pcall = pcall
local select = select
local unpack = unpack
local setmetatable = setmetatable
local getmetatable = getmetatable
local newproxy = newproxy
local need_driver = driver.need
local forget = runtime.forget
local note_user = runtime.note_user
local config = runtime.config
local pending_id = wait_mod.pending_id
local wait = wait_mod.wait
local take_done = wait_mod.take_done
local check_timeout = wait_mod.check_timeout
local check_phase = wait_mod.check_phase


local _M = {}


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
    if ... then
        st.netops[id] = pack(...)  -- [net] socket ops wait for task:wait()
    end
    local started, err = need_driver(st, id)
    if not started then
        task.results = pack(nil, err)
        return task
    end
    task.id = id
    st.owned[id] = "pending"
    note_user(st)
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


local function check_task(self, method)
    if getmetatable(self) ~= Task then
        error("bad argument #1 to '" .. method .. "' (a task expected: use "
              .. "task:" .. method .. "())", 3)
    end
end


-- What a wait returns while another caller waits for the task.
local BUSY = "resty.async: this task is waited for already (by another "
             .. "light thread or request)"
local CANCELLED = { n = 2, nil, "cancelled" }


-- Whether a caller that ngx_lua has not killed waits for task `id` of
-- `st`: in the runtime, or carrying out its socket ops (resty.async.net).
local function waited(st, id)
    local ctx = st.nets[id]
    if ctx then
        return not ctx:dead()
    end
    return st.rt.waited(id)
end


-- The handle's wait ended with `ok, ...` (pcall's): its results from now
-- on. A wait that raised cancelled the task (see resty.async.wait); one
-- that task:cancel() ended meanwhile returns what cancel() left.
local function settle(self, ok, ...)
    local id = self.id
    self.waiting = nil
    if id then
        self.id = nil
        self.st.owned[id] = nil
    end
    local results = self.results
    if not ok then
        self.results = results or CANCELLED
        error((...), 0)
    end
    if not results then
        results = pack(...)
        self.results = results
    end
    return unpack(results, 1, results.n)
end


function Task.wait(self, timeout)
    check_task(self, "wait")
    -- (checked first, as sema:wait does: a bad timeout raises whether or
    -- not the task has finished)
    if timeout == nil then
        timeout = config.timeout
    else
        timeout = check_timeout(timeout, 1, "wait")
    end
    local results = self.results
    if results then
        return unpack(results, 1, results.n)
    end
    check_phase("wait")
    local st, id = self.st, self.id
    if self.waiting then
        if waited(st, id) then
            return nil, BUSY
        end
        -- ngx_lua killed the caller that waited (ngx.thread.kill, a client
        -- abort): its task is cancelled, as any killed caller's is
        forget(st, id)
        return settle(self, true, nil, "cancelled")
    end
    local state = st.owned[id]
    if state ~= "done" and state ~= "pending" then
        return settle(self, true, nil, "cancelled")
    end
    note_user(st)
    -- (until it ends, a wait of another caller learns that this one waits;
    -- level 4 for error(): the caller of this function, past pcall)
    self.waiting = true
    if state == "done" then
        return settle(self, pcall(take_done, st, id, timeout, 4))
    end
    return settle(self, pcall(wait, st, id, timeout, 4))
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
    self.results = CANCELLED
    local state = st.owned[id]
    st.owned[id] = nil
    forget(st, id)
    -- a caller that waits for it now resumes (the runtime posts it, and
    -- one carrying out socket ops is woken here), and finds it cancelled
    local ctx = st.nets[id]
    if ctx then
        ctx:event(false)
    end
    return state == "pending"
end



_M.start = start_task
_M.Task = Task


return _M
