-- Test helper: calls every built-in of resty.async once (sleep, sha256,
-- write_file, read_file, with_timeout, spawn, task:wait, task:cancel) and
-- returns one line of what they returned, so that a block can show them
-- all working in a phase or an ngx.timer callback.
local async = require "resty.async"

local _M = {}

-- `path`: a file it may write.
function _M.try(path)
    local out = {
        tostring(async.sleep(0.01)),
        async.sha256("abc"):sub(1, 8),
        async.write_file(path, "12345"),
        async.read_file(path),
    }
    local _, err = async.with_timeout(0.01, async.sleep, 1)
    out[#out + 1] = err
    local task = async.spawn(async.sha256, "abc")
    out[#out + 1] = task:wait():sub(1, 8)
    local long = async.spawn(async.sleep, 1)
    out[#out + 1] = tostring(long:cancel())
    _, err = long:wait()
    out[#out + 1] = err
    return table.concat(out, " ")
end

return _M
