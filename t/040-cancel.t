# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 1);

run_tests();

__DATA__

=== TEST 1: a timeout drops the future at once: its destructor runs, its timer goes
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            local ok, err = async.with_timeout(0.05, ex.guarded_sleep, 5000)
            ngx.say(ok, " ", err, " dropped: ", ex.dropped() - before)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " timers=", st.timers,
                    " waiting=", st.waiting)
            -- the same for a future waiting on a std::thread
            before = ex.dropped()
            ok, err = async.with_timeout(0.05, ex.guarded_thread_wait, 300)
            ngx.say(ok, " ", err, " dropped: ", ex.dropped() - before)
        }
    }
--- response_body
nil timeout dropped: 1
in_flight=0 timers=0 waiting=0
nil timeout dropped: 1



=== TEST 2: a timed-out pool job that has not started is never run; a running one is discarded
--- http_config
    init_worker_by_lua_block {
        assert(require("resty.async").configure{ threads = 1 })
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local busy = ngx.thread.spawn(ex.block_ms, 300)
            ngx.sleep(0.02)  -- the only thread is busy now
            local v, err = async.with_timeout(0.05, ex.block_ms, 10)
            ngx.say("queued job: ", v, " ", err)
            v, err = async.with_timeout(0.4, ex.block_ms, 1)
            ngx.say("next job: ", v, " ", err)
            local st = async.stats()
            ngx.say("skipped=", st.pool_skipped)
            -- a job that times out while running finishes, its result freed
            local done = st.pool_done
            v, err = async.with_timeout(0.05, ex.block_ms, 150)
            ngx.say("running job: ", v, " ", err)
            ngx.sleep(0.2)
            st = async.stats()
            ngx.say("finished anyway: ", st.pool_done - done, " in_flight=",
                    st.in_flight, " running=", st.pool_running)
            ngx.thread.wait(busy)
        }
    }
--- response_body
queued job: nil timeout
next job: 1 nil
skipped=1
running job: nil timeout
finished anyway: 1 in_flight=0 running=0



=== TEST 3: a client abort cancels the waiting task
--- http_config
    lua_check_client_abort on;
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            -- upvalues of a killed coroutine are not safe: pass arguments
            ngx.timer.at(0.8, function(_, before)
                local async = require "resty.async"
                local ex = require "resty_async_fixtures"
                local st = async.stats()
                ngx.log(ngx.WARN, "after abort: dropped=", ex.dropped() - before,
                        " in_flight=", st.in_flight, " waiting=", st.waiting,
                        " timers=", st.timers)
            end, ex.dropped())
            ex.guarded_sleep(5000)
            ngx.log(ngx.ERR, "must not get here")
        }
    }
--- abort
--- timeout: 0.2
--- ignore_response
--- wait: 1
--- error_log
after abort: dropped=1 in_flight=0 waiting=0 timers=0
--- no_error_log
must not get here



=== TEST 4: ngx.thread.kill of a waiting light thread cancels its task
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            local th = ngx.thread.spawn(ex.guarded_sleep, 5000)
            local th2 = ngx.thread.spawn(ex.block_ms, 100)
            ngx.sleep(0.01)
            ngx.say("killed: ", ngx.thread.kill(th), " ", ngx.thread.kill(th2))
            ngx.sleep(0.3)
            local st = async.stats()
            ngx.say("dropped=", ex.dropped() - before, " in_flight=",
                    st.in_flight, " waiting=", st.waiting, " timers=", st.timers)
        }
    }
--- response_body
killed: 1 1
dropped=1 in_flight=0 waiting=0 timers=0



=== TEST 5: ngx.exit from another light thread cancels the waiting task
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            ngx.timer.at(0.4, function(_, before)
                local async = require "resty.async"
                local ex = require "resty_async_fixtures"
                local st = async.stats()
                ngx.log(ngx.WARN, "after exit: dropped=", ex.dropped() - before,
                        " in_flight=", st.in_flight, " waiting=", st.waiting)
            end, ex.dropped())
            ngx.thread.spawn(ex.guarded_sleep, 5000)
            ngx.thread.spawn(function()
                ngx.sleep(0.01)
                ngx.say("bye")
                ngx.exit(200)
            end)
        }
    }
--- response_body
bye
--- wait: 0.6
--- error_log
after exit: dropped=1 in_flight=0 waiting=0



=== TEST 6: a task handle collected without being awaited is cancelled
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            do
                local task = async.spawn(ex.guarded_sleep, 5000)
                task = nil
            end
            collectgarbage()
            collectgarbage()
            ngx.sleep(0.3)
            local st = async.stats()
            ngx.say("dropped=", ex.dropped() - before, " in_flight=", st.in_flight,
                    " timers=", st.timers)
        }
    }
--- response_body
dropped=1 in_flight=0 timers=0



=== TEST 7: spawn runs calls side by side; wait, cancel, ready-at-once tasks
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            ngx.update_time()
            local t0 = ngx.now()
            local a = async.spawn(ex.echo_after, "a", 100)
            local b = async.spawn(async.sleep, 0.1)
            local c = async.spawn(async.sha256, "abc")
            local d = async.spawn(async.sleep, 0)       -- ready at once
            ngx.say(a:wait(), " ", b:wait(), " ", #c:wait(), " ", d:wait())
            ngx.update_time()
            ngx.say("side by side: ", ngx.now() - t0 < 0.19)
            ngx.say("again: ", a:wait())
            local before = ex.dropped()
            local e = async.spawn(ex.guarded_sleep, 5000)
            ngx.say("cancel: ", e:cancel(), " ", e:cancel(), " dropped=",
                    ex.dropped() - before)
            ngx.say("wait after cancel: ", e:wait())
            -- a task finished before anyone waits keeps its result
            local f = async.spawn(ex.echo_after, "kept", 10)
            ngx.sleep(0.1)
            ngx.say(f:wait(), " in_flight=", async.stats().in_flight)
            local g = async.spawn(ex.fail_after, "oops", 1)
            ngx.say(g:wait())
            local ok, err = pcall(async.spawn, ngx.say, 1)
            ngx.say(ok, " ", err)
            ok, err = pcall(async.spawn, async.sleep, "x")
            ngx.say(ok, " ", err)
        }
    }
--- response_body_like
^a true 64 true
side by side: true
again: a
cancel: true false dropped=1
wait after cancel: nilcancelled
kept in_flight=0
niloops
false .*bad argument #1 to 'spawn' \(a resty.async function expected\)
false .*bad argument #1 to 'sleep' \(number expected, got string\)



=== TEST 8: task:wait(timeout) returns nil, "timeout" and cancels the task
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            local task = async.spawn(ex.guarded_sleep, 5000)
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err = task:wait(0.05)
            ngx.update_time()
            ngx.say(ok, " ", err, " ", ngx.now() - t0 < 0.5)
            local st = async.stats()
            ngx.say("dropped=", ex.dropped() - before, " in_flight=",
                    st.in_flight, " cancelled=", st.cancelled)
            ok, err = task:wait()
            ngx.say("again: ", ok, " ", err)
        }
    }
--- response_body
nil timeout true
dropped=1 in_flight=0 cancelled=1
again: nil timeout



=== TEST 9: task:wait() without a timeout waits the configured one
--- init_by_lua_block
        assert(async.configure{ timeout = 0.1 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            local task = async.spawn(ex.guarded_sleep, 5000)
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err = task:wait()
            ngx.update_time()
            local dt = ngx.now() - t0
            ngx.say(ok, " ", err, " ", dt >= 0.09 and dt < 0.6,
                    " dropped=", ex.dropped() - before)
        }
    }
--- response_body
nil timeout true dropped=1



=== TEST 10: a light thread killed after the poll posted it (its result left for it to read) is swept: its task freed, nothing logged
--- init_by_lua_block
        -- one pool thread: the jobs finish in the order they were queued
        assert(async.configure{ threads = 1 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            for _ = 1, 5 do
                -- the handler's job first, the thread's right behind it (a
                -- long string: its bytes stay in the task's slot); both
                -- come back to one poll, the handler posted first, which
                -- kills the thread before it resumes
                local mine = async.spawn(ex.block_ms, 20)
                local th = ngx.thread.spawn(ex.hex_upto, 1000)
                assert(mine:wait())
                assert(ngx.thread.kill(th))
            end
            ngx.sleep(0.35)  -- the driver's sweeps find the killed waiters
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " waiting=", st.waiting)
            ngx.say(#ex.hex_upto(1000), " ", async.sha256("x"))
        }
    }
--- response_body
in_flight=0 waiting=0
2000 2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881



=== TEST 11: a task waited for by another light thread: a clear message, and its waiter gets the result
Plain (the pool's, a timer's) and future tasks alike.
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            for _, start in ipairs{ function() return async.spawn(async.sleep, 0.1) end,
                                    function() return async.spawn(ex.echo_after, "a", 100) end } do
                local t = start()
                local th = ngx.thread.spawn(function() return t:wait() end)
                ngx.sleep(0.01)
                ngx.say("second: ", t:wait())
                ngx.say("first: ", select(2, ngx.thread.wait(th)))
                ngx.say("later: ", t:wait())
            end
            ngx.say("waiting=", async.stats().waiting)
        }
    }
--- response_body
second: nilresty.async: this task is waited for already (by another light thread or request)
first: true
later: true
second: nilresty.async: this task is waited for already (by another light thread or request)
first: a
later: a
waiting=0
--- no_error_log
[error]



=== TEST 12: the light thread that waited for a task was killed: the task is cancelled, a later wait says so
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            for _, start in ipairs{ function() return async.spawn(async.sleep, 0.2) end,
                                    function() return async.spawn(ex.guarded_sleep, 200) end } do
                local t = start()
                local th = ngx.thread.spawn(function() return t:wait() end)
                ngx.sleep(0.01)
                ngx.thread.kill(th)
                ngx.say("after the kill: ", t:wait())
                ngx.say("again: ", t:wait())
            end
            ngx.sleep(0.05)
            local st = async.stats()
            ngx.say("dropped=", ex.dropped() - before, " in_flight=",
                    st.in_flight, " waiting=", st.waiting)
        }
    }
--- response_body
after the kill: nilcancelled
again: nilcancelled
after the kill: nilcancelled
again: nilcancelled
dropped=1 in_flight=0 waiting=0
--- no_error_log
[error]



=== TEST 13: cancel while another light thread waits: the waiter resumes at once with nil, "cancelled"
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.dropped()
            for _, start in ipairs{ function() return async.spawn(async.sleep, 0.3) end,
                                    function() return async.spawn(ex.guarded_sleep, 300) end,
                                    function() return async.spawn(ex.block_ms, 300) end } do
                local t = start()
                local th = ngx.thread.spawn(function() return t:wait() end)
                ngx.update_time()
                local t0 = ngx.now()
                ngx.say("cancel: ", t:cancel())
                local _, a, b = ngx.thread.wait(th)
                ngx.update_time()
                ngx.say("waiter: ", a, " ", b, " ", ngx.now() - t0 < 0.2)
                ngx.say("later: ", t:wait())
            end
            ngx.sleep(0.25)
            local st = async.stats()
            ngx.say("dropped=", ex.dropped() - before, " in_flight=",
                    st.in_flight, " waiting=", st.waiting)
        }
    }
--- response_body
cancel: true
waiter: nil cancelled true
later: nilcancelled
cancel: true
waiter: nil cancelled true
later: nilcancelled
cancel: true
waiter: nil cancelled true
later: nilcancelled
dropped=1 in_flight=0 waiting=0
--- no_error_log
[error]
[crit]



=== TEST 14: a wait that raised (inside a table.sort comparator) cancelled its task: a later wait says so
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local t = async.spawn(async.sleep, 0.05)
            local ok, err = pcall(table.sort, { 2, 1 }, function(a, b)
                t:wait()
                return a < b
            end)
            ngx.say(ok, " ", err:match("cannot wait inside a C function") ~= nil)
            ngx.say("outside: ", t:wait())
        }
    }
--- response_body
false true
outside: nilcancelled
--- no_error_log
[error]



=== TEST 15: a cancel after the poll posted the waiter, then a kill before it resumed: the post goes to nobody else
The semaphore of a posted waiter is not reused while the post is pending.
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local wrong, killed = 0, 0
            for _ = 1, 10 do
                local mine = async.spawn(async.sleep, 0.03)
                local t = async.spawn(async.sleep, 0.03)
                local th = ngx.thread.spawn(function() return t:wait() end)
                -- one poll finishes both: th is posted, not resumed yet
                assert(mine:wait())
                t:cancel()
                local other = ngx.thread.spawn(function()
                    ngx.update_time()
                    local t0 = ngx.now()
                    local ok = async.sleep(0.1)
                    ngx.update_time()
                    return ok, ngx.now() - t0
                end)
                if ngx.thread.kill(th) then
                    killed = killed + 1
                end
                local _, ok, took = ngx.thread.wait(other)
                if ok ~= true or took < 0.09 then
                    wrong = wrong + 1
                end
            end
            ngx.sleep(0.3)
            local st = async.stats()
            ngx.say("killed: ", killed > 0, ", woken wrongly: ", wrong,
                    ", in_flight=", st.in_flight, " waiting=", st.waiting)
        }
    }
--- response_body
killed: true, woken wrongly: 0, in_flight=0 waiting=0
--- no_error_log
[error]
[crit]



=== TEST 16: task:wait checks its timeout as with_timeout does, also once the task has finished
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local function try(f, ...)
                local ok, err, err2 = pcall(f, ...)
                ngx.say(ok, " ", (tostring(err):gsub("^.-:%d+: ", "")),
                        err2 and " " .. err2 or "")
            end
            local done = async.spawn(async.sleep, 0)
            local late = async.spawn(async.sleep, 5)
            ngx.say("late: ", late:wait(0.01))
            for _, task in ipairs{ done, late } do
                for _, v in ipairs{ -1, 0 / 0, 1 / 0, "soon" } do
                    try(task.wait, task, v)
                end
            end
            try(async.with_timeout, -1, async.sleep, 0)
            ngx.say("done: ", done:wait(), " late: ", late:wait())
        }
    }
--- response_body
late: niltimeout
false bad argument #1 to 'wait' (timeout must be a finite number > 0)
false bad argument #1 to 'wait' (timeout must be a finite number > 0)
false bad argument #1 to 'wait' (timeout must be a finite number > 0)
false bad argument #1 to 'wait' (number expected, got string)
false bad argument #1 to 'wait' (timeout must be a finite number > 0)
false bad argument #1 to 'wait' (timeout must be a finite number > 0)
false bad argument #1 to 'wait' (timeout must be a finite number > 0)
false bad argument #1 to 'wait' (number expected, got string)
false bad argument #1 to 'with_timeout' (timeout must be a finite number > 0)
done: true late: niltimeout
