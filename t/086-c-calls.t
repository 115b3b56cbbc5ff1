# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * 52;

run_tests();

__DATA__

=== TEST 1: a wait inside a string.gsub callback or a table.sort comparator raises; the worker lives
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            for _ = 1, 2 do
                local ok, err = pcall(string.gsub, "a", "%w", function()
                    return async.sleep(0.01)
                end)
                ngx.say(ok, " ", err)
                ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b)
                    return #async.sha256("x") > 0 and a < b
                end)
                ngx.say(ok, " ", err)
            end
            -- waiting works again right after
            ngx.say(async.sleep(0.01), " ", async.sha256("x"):sub(1, 8))
            ngx.sleep(0.2)
            ngx.say("in_flight=", async.stats().in_flight)
        }
    }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- response_body_like eval
[(qr/^(false (content_by_lua\(nginx.conf:\d+\):\d+: )?resty.async: cannot wait inside a C function such as a table.sort comparator or a string.gsub callback \(call it outside, or start it with async.spawn and wait for the task outside\)\n){4}true 2d711642\nin_flight=0\n$/) x 3]



=== TEST 2: a call that finishes at once does not wait, so it works inside a callback
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local s = string.gsub("ab", "%w", function(c)
                return tostring(async.sleep(0)) .. c
            end)
            ngx.say(s)
        }
    }
--- response_body
trueatrueb



=== TEST 3: start the work in the callback with async.spawn, wait outside
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local tasks = {}
            string.gsub("abc", "%w", function(c)
                tasks[#tasks + 1] = async.spawn(async.sha256, c)
            end)
            for _, t in ipairs(tasks) do
                ngx.say(t:wait():sub(1, 8))
            end
        }
    }
--- response_body
ca978112
3e23e816
2e7d2c03



=== TEST 4: pcall, xpcall and coroutines do not stop a wait
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(pcall(async.sleep, 0.01))
            ngx.say(xpcall(async.sha256, debug.traceback, "x"))
            local co = coroutine.wrap(function()
                return async.sleep(0.01)
            end)
            ngx.say(co())
        }
    }
--- response_body
truetrue
true2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881
true



=== TEST 5: a wait in a module's top-level code, run by require, raises
--- user_files
>>> waits_at_load.lua
local async = require "resty.async"
return { slept = async.sleep(0.01) }
--- config
    location = /t {
        content_by_lua_block {
            package.path = ngx.config.prefix() .. "html/?.lua;" .. package.path
            local ok, err = pcall(require, "waits_at_load")
            ngx.say(ok, " ", err:match("cannot wait inside a C function"))
            ngx.say(require("resty.async").sleep(0.01))
        }
    }
--- response_body
false cannot wait inside a C function
true



=== TEST 6: once the runtime knows the running coroutine, waits are queued from the FFI, which refuses C functions as the C function does
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local rt = require("resty_async_core").__rt
            -- waits in light threads (coroutines of their own) let the
            -- runtime find where LuaJIT keeps the running one
            for _ = 1, 2 do
                local threads = {}
                for i = 1, 3 do
                    threads[i] = ngx.thread.spawn(async.sleep, 0.001)
                end
                for i = 1, 3 do
                    ngx.thread.wait(threads[i])
                end
            end
            local ffi0, c0 = rt.wait_counts()
            ngx.say("through the C function before: ", c0 > 0)
            ngx.say(async.sleep(0.001), " ", async.sha256("x"):sub(1, 8))
            local ffi1, c1 = rt.wait_counts()
            ngx.say("through the FFI: ", ffi1 - ffi0, ", the C function: ",
                    c1 - c0)
            local ok, err = pcall(table.sort, { 3, 1, 2 }, function(a, b)
                return async.sleep(0.001) and a < b
            end)
            ngx.say(ok, " ", (tostring(err):gsub("^.-:%d+: ", "")))
            ok, err = pcall(string.gsub, "ab", "%w", function(c)
                return async.sha256(c)
            end)
            ngx.say(ok, " ", (tostring(err):gsub("^.-:%d+: ", "")))
            local co = coroutine.wrap(function()
                return async.sha256("x"):sub(1, 8)
            end)
            ngx.say("in a coroutine: ", co())
            ngx.say("timed out: ", async.with_timeout(0.01, async.sleep, 1))
            ngx.say("still works: ", async.sleep(0.001))
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " waiting=", st.waiting)
        }
    }
--- response_body
through the C function before: true
true 2d711642
through the FFI: 2, the C function: 0
false resty.async: cannot wait inside a C function such as a table.sort comparator or a string.gsub callback (call it outside, or start it with async.spawn and wait for the task outside)
false resty.async: cannot wait inside a C function such as a table.sort comparator or a string.gsub callback (call it outside, or start it with async.spawn and wait for the task outside)
in a coroutine: 2d711642
timed out: niltimeout
still works: true
in_flight=0 waiting=0
