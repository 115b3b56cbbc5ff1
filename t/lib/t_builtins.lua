-- Test helper: calls every built-in of resty.async once (sleep, sha256,
-- write_file, read_file, with_timeout, spawn, task:wait, task:cancel) and
-- returns one line of what they returned, so that a block can show them
-- all working in a phase or an ngx.timer callback; likewise (try_module) a
-- module crate's functions; or (refused) calls every kind of function that
-- may wait where none may, and says how each raised.
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

-- Calls a module crate's functions that wait (async, blocking, mlua async,
-- an async method) and returns one line of what they returned.
function _M.try_module()
    local fx = require "resty_async_fixtures"
    return table.concat({
        fx.echo_after("a", 5),
        fx.block_ms(3),
        fx.mlua_sleep(5),
        fx.counter(1):slow_incr(5),
    }, " ")
end


-- The message a call in a phase where Lua cannot yield raises.
local REFUSED = "^resty%.async: (%S+)%(%) cannot wait in the (%S+) phase "
                .. "%(use it in rewrite, access or content handlers, "
                .. "ngx%.timer callbacks or ngx%.thread light threads%)$"

-- Calls each function that may wait: the built-ins (sleep(0) too, which
-- elsewhere is ready at once), with_timeout, spawn, `task:wait()` if a
-- pending task is given, and a module crate's async, blocking and mlua
-- async functions and async method. Returns one line: for each call, the
-- function and phase its error names, or what went wrong.
function _M.refused(path, task)
    local fx = require "resty_async_fixtures"
    local counter = fx.counter(1)
    local calls = {
        { async.sleep, 0 },
        { async.sha256, "abc" },
        { async.read_file, path },
        { async.write_file, path, "x" },
        { async.with_timeout, 1, async.sleep, 0 },
        { async.spawn, async.sha256, "abc" },
        { fx.echo_after, "x", 0 },
        { fx.block_ms, 0 },
        { fx.mlua_sleep, 0 },
        { counter.slow_incr, counter, 0 },
    }
    if task then
        calls[#calls + 1] = { task.wait, task }
    end
    local out = {}
    for i, call in ipairs(calls) do
        local ok, err = pcall(unpack(call))
        local msg = not ok and type(err) == "string"
                    and err:match("resty%.async: .*$")
        local name, phase
        if msg then
            name, phase = msg:match(REFUSED)
        end
        out[i] = name and (name .. "/" .. phase)
                 or ("not refused: " .. tostring(ok) .. " " .. tostring(err))
    end
    return table.concat(out, " ")
end

return _M
