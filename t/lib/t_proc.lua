-- Test helper: what the worker running the handler holds, as /proc shows
-- it, so that a block can check that nothing was left behind.
local _M = {}

-- Open file descriptors (each runtime's completion socket is two).
function _M.fds()
    local n = 0
    local p = assert(io.popen("ls /proc/self/fd"))
    for _ in p:lines() do n = n + 1 end
    p:close()
    return n
end

-- Threads (the pool threads are the worker's).
function _M.threads()
    for l in io.lines("/proc/self/status") do
        local n = l:match("^Threads:%s+(%d+)")
        if n then return tonumber(n) end
    end
end

local function read(path)
    local f = assert(io.open(path))
    local s = f:read("*a")
    f:close()
    return s
end

-- The worker's threads: a list of { tid = "123", name = "nginx",
-- blocked = the low 32 bits of their blocked signals' mask (signal n is
-- bit n - 1) }.
function _M.tasks()
    local dir = "/proc/" .. ngx.worker.pid() .. "/task/"
    local out = {}
    local p = assert(io.popen("ls " .. dir))
    for tid in p:lines() do
        local blk = read(dir .. tid .. "/status"):match("SigBlk:%s*(%x+)")
        out[#out + 1] = {
            tid = tid,
            name = (read(dir .. tid .. "/comm"):gsub("\n", "")),
            blocked = tonumber(blk:sub(-8), 16),
        }
    end
    p:close()
    return out
end

return _M
