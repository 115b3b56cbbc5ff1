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

return _M
