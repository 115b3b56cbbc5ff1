# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7);

run_tests();

__DATA__

=== TEST 1: the calls and the driver's poll compile to traces, without aborts in resty.async
--- config
    location = /t {
        content_by_lua_block {
            -- LuaJIT's jit.v (Debian puts it beside the library)
            local p = io.popen("ls -d /usr/share/luajit*/jit/v.lua "
                               .. "/usr/local/openresty/luajit/share/luajit*/jit/v.lua "
                               .. "2>/dev/null")
            local vpath = p:read("*l")
            p:close()
            package.path = vpath:gsub("jit/v%.lua$", "?.lua") .. ";" .. package.path
            local v = require "jit.v"
            local log = ngx.config.prefix() .. "logs/jit.log"
            v.on(log)

            local async = require "resty.async"
            local function fast() for _ = 1, 2000 do assert(async.sleep(0)) end end
            fast()
            -- the handler's own calls: once the runtime can find the
            -- running coroutine from an FFI call (the first call teaches
            -- it, after the driver's), a built-in's start queues its
            -- caller, which yields in async.lua; made before the threads
            -- below, LuaJIT records this path first
            for _ = 1, 300 do
                assert(async.sha256("x"))
            end
            -- (100 rounds: a driver turn or more each, enough for LuaJIT
            -- to find the driver's code hot)
            for _ = 1, 100 do
                local threads = {}
                for i = 1, 20 do
                    threads[i] = ngx.thread.spawn(async.sha256, "x")
                end
                for i = 1, 20 do
                    assert(ngx.thread.wait(threads[i]))
                end
            end
            v.off()

            local f = assert(io.open(log))
            local text = f:read("*a")
            f:close()
            local ours = { ["async.lua"] = true, ["driver.lua"] = true,
                           ["wait.lua"] = true, ["runtime.lua"] = true }
            local callers = { ["async.lua"] = true, ["wait.lua"] = true }
            -- the line of the loop of fast()
            local fastloop = debug.getinfo(fast, "S").linedefined
            local fast_traced, driver_traced, wait_traced = false, false, false
            local aborted = {}
            for line in text:gmatch("[^\n]+") do
                -- "[TRACE  12 (11/stitch) file.lua:20 ...]" -> no "(11/stitch) "
                line = line:gsub("^(%[TRACE +[%d-]+ )%([^)]*%) ", "%1")
                if line:match("^%[TRACE +%d+ content_by_lua%(nginx%.conf:%d+%):"
                              .. fastloop .. " loop%]$")
                then
                    fast_traced = true
                end
                if line:match("^%[TRACE +%d+ driver%.lua:%d+ ") then
                    driver_traced = true
                end
                -- a trace up to the caller's yield (the wait of a built-in
                -- is in async.lua, of other functions in wait.lua)
                if line:match("^%[TRACE +%d+ [%w_]+%.lua:%d+ stitch "
                              .. "coroutine%.yield%]$")
                   and callers[line:match("^%[TRACE +%d+ ([%w_]+%.lua)")]
                then
                    wait_traced = true
                end
                local afile, why =
                    line:match("^%[TRACE %-%-%- ([%w_]+%.lua):%d+ %-%- (.*)%]$")
                -- (allowed: returning through pcall(), which the driver's
                -- reader needs and LuaJIT does not compile; LuaJIT
                -- declining a trace that would only call a C function; an
                -- outer trace stopped at an inner loop not compiled yet,
                -- which it links to once it is)
                if afile and ours[afile]
                   and not why:find("return to lower frame", 1, true)
                   and not why:find("trace too short", 1, true)
                   and not why:find("inner loop in root trace", 1, true)
                then
                    aborted[#aborted + 1] = line
                end
            end
            ngx.say("the loop of fast calls is a trace: ", fast_traced)
            ngx.say("the driver is traced: ", driver_traced)
            ngx.say("the wait is traced: ", wait_traced)
            ngx.say("aborts in resty.async: ", #aborted)
            for _, l in ipairs(aborted) do ngx.say(l) end
        }
    }
--- response_body
the loop of fast calls is a trace: true
the driver is traced: true
the wait is traced: true
aborts in resty.async: 0
--- timeout: 20
