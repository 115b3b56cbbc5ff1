# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * 126;

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
            local proc = require "t_proc"
            local h = require "t_http"
            -- warm up: the first VM to close waits out an idle period
            for _ = 1, 3 do assert(h.get("/work")) end
            ngx.sleep(1.5)
            local fds, nthreads = proc.fds(), proc.threads()
            for _ = 1, 20 do
                local status, body = h.get("/work")
                assert(status == 200 and body == "ok\n", body)
            end
            ngx.sleep(1)
            ngx.say("fds: ", proc.fds() - fds <= 2)
            ngx.say("threads: ", proc.threads() - nthreads <= 1)
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
            local proc = require "t_proc"
            local h = require "t_http"
            local fds = proc.fds()
            -- a task that ends soon, and one that would run for a minute
            for i = 1, 10 do
                local status, body = h.get("/drop?s=" .. (i % 2 == 0 and 0.01 or 60))
                assert(status == 200 and body == "dropped table\n", body)
            end
            ngx.sleep(3)
            -- each VM left open would keep its completion socket's two fds
            ngx.say("fds: ", proc.fds() - fds <= 2)
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



=== TEST 7: lua_code_cache off: task handles kept in a module's table do not keep their VMs open
--- config
    location = /keep {
        lua_code_cache off;
        content_by_lua_block {
            local async = require "resty.async"
            -- (a module's table: reachable from the VM's package.loaded)
            local kept = package.loaded.t_kept or {}
            package.loaded.t_kept = kept
            if ngx.var.arg_m == "fixtures" then
                -- a module loaded in the handler, not in init_by_lua
                local fixtures = require "resty_async_fixtures"
                kept[#kept + 1] = async.spawn(fixtures.echo_after, "x", 60000)
                kept[#kept + 1] = async.spawn(fixtures.echo_after, "x", 1)
                ngx.say(fixtures.echo_after("waited", 1))
            else
                kept[#kept + 1] = async.spawn(async.sleep, 60)
                kept[#kept + 1] = async.spawn(async.sha256, "x")
                ngx.say(async.sleep(0.001) and "waited")
            end
        }
    }
    location = /t {
        content_by_lua_block {
            local proc = require "t_proc"
            local h = require "t_http"
            local fds = proc.fds()
            for i = 1, 10 do
                local m = i % 2 == 0 and "fixtures" or "core"
                local status, body = h.get("/keep?m=" .. m)
                assert(status == 200 and body == "waited\n", body)
            end
            ngx.sleep(3)
            -- each VM left open would keep its completion sockets' fds
            ngx.say("fds: ", proc.fds() - fds <= 2)
        }
    }
--- response_body
fds: true
--- timeout: 10
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 8: lua_code_cache off: a spawned task runs on while the request that holds its handle runs
--- config
    location = /t {
        lua_code_cache off;
        content_by_lua_block {
            local async = require "resty.async"
            local fixtures = require "resty_async_fixtures"
            -- 100 ms on the pool, then 100 ms on a timer: done before the
            -- wait only if the task ran meanwhile
            local task = async.spawn(fixtures.unblock_ms, 100)
            ngx.sleep(1)
            ngx.say(task:wait(0.05))
        }
    }
--- request eval
["GET /t", "GET /t", "GET /t", "GET /t"]
--- response_body eval
[("100\n") x 4]
--- timeout: 10
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 9: lua_code_cache off: a timer's call outlives worker_shutdown_timeout, which closed the completion socket
--- main_config
    worker_shutdown_timeout 300ms;
--- config
    location = /t {
        lua_code_cache off;
        content_by_lua_block {
            local async = require "resty.async"
            local fixtures = require "resty_async_fixtures"
            -- nginx lets timers run past worker_shutdown_timeout; it
            -- closes every connection then, the drivers' sockets too
            assert(ngx.timer.at(0, function()
                local ok, err = async.sleep(1)
                ngx.log(ngx.WARN, "timer's sleep: ", ok, " ", err)
                ok, err = fixtures.echo_after("echo", 500)
                ngx.log(ngx.WARN, "timer's echo: ", ok, " ", err)
            end))
            ngx.say("started")
        }
    }
--- response_body
started
--- shutdown_error_log
timer's sleep: true nil
timer's echo: echo nil
--- timeout: 10
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
