# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * 88;

run_tests();

__DATA__

=== TEST 1: lua_code_cache off: every request runs in a VM of its own and gets its results
--- config
    lua_code_cache off;
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(async.sleep(0.01), " ", async.sha256("abc"))
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " drivers=", st.drivers)
        }
    }
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t", "GET /t"]
--- response_body eval
[("true ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad\nin_flight=0 drivers=1\n") x 5]
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 2: lua_code_cache off: ngx.timer.at jobs get their results too
--- config
    lua_code_cache off;
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local sema = require("ngx.semaphore").new()
            local got
            assert(ngx.timer.at(0, function()
                got = async.sha256("x"):sub(1, 8) .. " "
                      .. tostring(async.sleep(0.02))
                sema:post()
            end))
            assert(sema:wait(5))
            ngx.say("timer: ", got)
        }
    }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- response_body eval
[("timer: 2d711642 true\n") x 3]
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 3: lua_code_cache off: a closed request VM leaves no socket, driver or pool thread behind
--- config
    lua_code_cache off;
    location = /work {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sleep(0.01))
            assert(async.sha256("x"))
            ngx.say("ok")
        }
    }
    location = /t {
        content_by_lua_block {
            local function count(dir)
                local n = 0
                local p = assert(io.popen("ls " .. dir))
                for _ in p:lines() do n = n + 1 end
                p:close()
                return n
            end
            local function threads()
                for l in io.lines("/proc/self/status") do
                    local n = l:match("^Threads:%s+(%d+)")
                    if n then return tonumber(n) end
                end
            end
            local h = require "t_http"
            -- warm up: the first VM to close waits out an idle period
            for _ = 1, 3 do assert(h.get("/work")) end
            ngx.sleep(1.5)
            local fds, nthreads = count("/proc/self/fd"), threads()
            for _ = 1, 20 do
                local status, body = h.get("/work")
                assert(status == 200 and body == "ok\n", body)
            end
            ngx.sleep(1)
            ngx.say("fds: ", count("/proc/self/fd") - fds <= 2)
            ngx.say("threads: ", threads() - nthreads <= 1)
        }
    }
--- response_body
fds: true
threads: true
--- timeout: 10
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 4: lua_code_cache off in one location, on in another: both work
--- config
    location = /on {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say("on ", async.sleep(0.01), " ", #async.sha256("x"))
        }
    }
    location = /off {
        lua_code_cache off;
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say("off ", async.sleep(0.01), " ", #async.sha256("x"))
        }
    }
--- request eval
["GET /on", "GET /off", "GET /on", "GET /off"]
--- response_body eval
["on true 64\n", "off true 64\n", "on true 64\n", "off true 64\n"]
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 5: lua_code_cache off: a task handle a request drops does not keep its VM open
--- config
    location = /drop {
        lua_code_cache off;
        content_by_lua_block {
            local async = require "resty.async"
            local task = async.spawn(async.sleep, tonumber(ngx.var.arg_s))
            ngx.say("dropped ", type(task))
        }
    }
    location = /t {
        content_by_lua_block {
            local function count(dir)
                local n = 0
                local p = assert(io.popen("ls " .. dir))
                for _ in p:lines() do n = n + 1 end
                p:close()
                return n
            end
            local h = require "t_http"
            local fds = count("/proc/self/fd")
            -- a task that ends soon, and one that would run for a minute
            for i = 1, 10 do
                local status, body = h.get("/drop?s=" .. (i % 2 == 0 and 0.01 or 60))
                assert(status == 200 and body == "dropped table\n", body)
            end
            ngx.sleep(3)
            -- each VM left open would keep its completion socket's two fds
            ngx.say("fds: ", count("/proc/self/fd") - fds <= 2)
        }
    }
--- response_body
fds: true
--- timeout: 10
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 6: lua_code_cache off: a VM that closes with an mlua async method in flight (nginx stops) does not crash
--- config
    location = /t {
        lua_code_cache off;
        content_by_lua_block {
            local async = require "resty.async"
            local c = require("resty_async_fixtures").counter(41)
            local task = async.spawn(c.slow_incr, c, 60000)
            -- a pending timer keeps the handle until nginx stops: then the
            -- driver exits and the VM closes with the task in flight
            assert(ngx.timer.at(3600, function() end, task))
            ngx.say("started")
        }
    }
--- response_body
started
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal", "double free"]
