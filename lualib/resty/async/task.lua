-- resty.async.task: the task handles async.spawn returns.

local driver = require "resty.async.driver"
local runtime = require "resty.async.runtime"
local wait_mod = require "resty.async.wait"

local error = error
local select = select
local unpack = unpack
local setmetatable = setmetatable
local getmetatable = getmetatable
local newproxy = newproxy
local need_driver = driver.need
local forget = runtime.forget
local config = runtime.config
local pending_id = wait_mod.pending_id
local wait = wait_mod.wait
local take_done = wait_mod.take_done
local check_timeout = wait_mod.check_timeout


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
            results = pack(take_done(st, id, timeout, 3))
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



_M.start = start_task
_M.Task = Task


return _M
