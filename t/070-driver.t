# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 4);

run_tests();

__DATA__

=== TEST 1: a driver that dies restarts itself with an error log line; waiters are served
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sleep(0.01))            -- the driver runs
            local th = ngx.thread.spawn(async.sleep, 0.3)
            ngx.sleep(0.05)
            -- cut the completion socket from the Rust side: the reader
            -- sees "closed" and the driver dies
            require("resty_async_core").__rt.disconnect()
            local ok, res = ngx.thread.wait(th)
            ngx.say("waiter across the restart: ", res)
            ngx.say("after: ", async.sleep(0.01), " ", #async.sha256("x"))
            local st = async.stats()
            ngx.say("drivers=", st.drivers, " in_flight=", st.in_flight)
        }
    }
--- response_body
waiter across the restart: true
after: true 64
drivers=1 in_flight=0
--- error_log eval
qr/\[error\] .*resty.async: driver of resty.async died: completion socket: closed; restarting/
--- no_error_log
unknown reason



=== TEST 2: configure in init_worker starts the driver; idle, it costs next to nothing
--- http_config
    init_worker_by_lua_block {
        assert(require("resty.async").configure{ timeout = 5 })
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local st = async.stats()
            ngx.say("drivers=", st.drivers, " connected before any call")
            local polls = st.driver_polls
            ngx.sleep(0.5)
            st = async.stats()
            -- woken about every 0.1 s to check ngx.worker.exiting()
            local n = st.driver_polls - polls
            ngx.say("idle polls in 0.5 s: ", n >= 2 and n <= 10)
        }
    }
--- response_body
drivers=1 connected before any call
idle polls in 0.5 s: true



=== TEST 3: one poll that hands out more finished tasks than fit on the Lua stack
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local tasks = {}
            for i = 1, 600 do
                tasks[i] = async.spawn(ex.double_on_thread, i, 20)
            end
            local extra = async.spawn(ex.guarded_sleep, 5000)
            -- keep the worker busy while the 600 threads complete
            local t0 = os.clock()
            while os.clock() - t0 < 0.3 do end
            -- cancelling runs the queue: 600 completions for the next poll
            extra:cancel()
            local sum = 0
            for i = 1, 600 do sum = sum + tasks[i]:wait() end
            ngx.say(sum == 600 * 601, " in_flight=", async.stats().in_flight)
        }
    }
--- response_body
true in_flight=0
--- timeout: 10



=== TEST 4: a driver that keeps dying backs off and logs one line, not thousands
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local rt = require("resty_async_core").__rt
            assert(async.sleep(0.01))
            local waiter = ngx.thread.spawn(async.sleep, 0.2)
            -- cut the completion socket every 2 ms for half a second
            for _ = 1, 250 do
                rt.disconnect()
                ngx.sleep(0.002)
            end
            local ok, res = ngx.thread.wait(waiter)
            ngx.say("waiter across the failures: ", res)
            ngx.say("after: ", async.sleep(0.01), " ", #async.sha256("x"))
            ngx.say("in_flight=", async.stats().in_flight)
        }
    }
--- response_body
waiter across the failures: true
after: true 64
in_flight=0
--- grep_error_log eval: qr/driver of resty.async died/
--- grep_error_log_out
driver of resty.async died
--- timeout: 10
--- no_error_log
unknown reason



=== TEST 5: a driver whose timer ngx_lua dropped (lua_max_running_timers) is started again by the next call
--- http_config
    lua_max_running_timers 1;
--- init_by_lua_block
    assert(async.configure{ timeout = 2 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- a timer of ours takes the one running timer, so ngx_lua
            -- drops the driver's timer when it expires: this call waits
            -- out its timeout
            assert(ngx.timer.at(0, function() ngx.sleep(0.5) end))
            ngx.sleep(0.01)
            ngx.say("first: ", async.sleep(0.01))
            ngx.sleep(1.2)
            ngx.say("later: ", async.sleep(0.01), " ", #async.sha256("x"))
        }
    }
--- response_body
first: niltimeout
later: true 64
--- error_log eval
[qr/\[alert\] .*lua_max_running_timers are not enough/,
 qr/\[error\] .*the driver of resty.async did not start/]
--- timeout: 10



=== TEST 6: a timer's call outlives worker_shutdown_timeout, which closed the completion socket
--- main_config
    worker_shutdown_timeout 300ms;
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- nginx lets timers run past worker_shutdown_timeout; it
            -- closes every connection then, the driver's socket too
            assert(ngx.timer.at(0, function()
                local ok, err = async.sleep(1)
                ngx.log(ngx.WARN, "timer's sleep: ", ok, " ", err)
            end))
            ngx.say("started")
        }
    }
--- response_body
started
--- shutdown_error_log
timer's sleep: true nil
--- timeout: 10



=== TEST 7: a driver restart pending when the worker starts to exit still serves the calls that wait
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local core = require "resty_async_core"
            assert(async.sleep(0.01))            -- the driver runs
            assert(ngx.timer.at(0, function()
                local ok, err = async.sleep(1)
                ngx.log(ngx.WARN, "timer's sleep: ", ok, " ", err)
            end))
            ngx.sleep(0.05)                      -- the timer waits
            -- a driver that died many times in a row restarts late
            -- (1.28 s); nginx stops meanwhile, and ngx_lua runs the
            -- pending restart's timer early
            require("resty.async.runtime").states[core.__id].failures = 7
            core.__rt.disconnect()
            ngx.sleep(0.05)
            ngx.say("started")
        }
    }
--- response_body
started
--- error_log
restarting in 1.28 s
--- no_error_log eval
["exited on signal", "[alert]"]
--- shutdown_error_log
timer's sleep: true nil
--- timeout: 10
