# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 3);

run_tests();

__DATA__

=== TEST 1: 50 concurrent requests sleeping 0.2 s in Rust finish together
--- config
    location = /sleep {
        content_by_lua_block {
            local async = require "resty.async"
            local ok, err = async.sleep(0.2)
            ngx.say("slept ", ngx.var.arg_i, " ", ok, " ", err)
        }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local res, elapsed = h.parallel(50, function(i)
                return h.get("/sleep?i=" .. i)
            end)
            local good = 0
            for i = 1, 50 do
                local r = res[i]
                if r.ok and r[1] == 200
                   and r[2] == "slept " .. i .. " true nil\n"
                then
                    good = good + 1
                else
                    ngx.say("bad ", i, ": ", tostring(r[1]), " ", tostring(r[2]))
                end
            end
            ngx.say(good, " correct, non-blocking: ", elapsed < 0.8)
            ngx.log(ngx.WARN, "50 x sleep(0.2) took ", elapsed)
        }
    }
--- response_body
50 correct, non-blocking: true
--- timeout: 10



=== TEST 2: /ping answers at once while 20 requests sleep in Rust
--- config
    location = /sleep {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(async.sleep(1))
        }
    }
    location = /ping {
        content_by_lua_block { ngx.say("pong") }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local threads = {}
            for i = 1, 20 do
                threads[i] = ngx.thread.spawn(h.get, "/sleep")
            end
            ngx.sleep(0.1)  -- let them all start waiting
            ngx.update_time()
            local t0 = ngx.now()
            local status, body = h.get("/ping")
            ngx.update_time()
            local dt = ngx.now() - t0
            ngx.say(status, " ", body, "fast: ", dt < 0.2)
            local n = 0
            for i = 1, 20 do
                local ok, st, b = ngx.thread.wait(threads[i])
                if ok and st == 200 and b == "true\n" then n = n + 1 end
            end
            ngx.say(n, " sleepers done")
        }
    }
--- response_body
200 pong
fast: true
20 sleepers done
--- timeout: 10



=== TEST 3: sleep in an ngx.timer.at callback
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local done = require("ngx.semaphore").new()
            local result
            local ok, err = ngx.timer.at(0, function(premature)
                ngx.update_time()
                local t0 = ngx.now()
                local ok, err = async.sleep(0.05)
                ngx.update_time()
                result = tostring(ok) .. " " .. tostring(err) .. " "
                         .. tostring(ngx.now() - t0 >= 0.045)
                done:post()
            end)
            assert(ok, err)
            assert(done:wait(2))
            ngx.say("timer: ", result)
        }
    }
--- response_body
timer: true nil true



=== TEST 4: sleep in ngx.thread light threads: each yields only itself
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local order = {}
            local function worker(name, secs)
                local ok, err = async.sleep(secs)
                order[#order + 1] = name .. "=" .. tostring(ok)
            end
            local a = ngx.thread.spawn(worker, "slow", 0.15)
            local b = ngx.thread.spawn(worker, "fast", 0.05)
            order[#order + 1] = "main"
            ngx.thread.wait(a)
            ngx.thread.wait(b)
            ngx.say(table.concat(order, " "))
        }
    }
--- response_body
main fast=true slow=true



=== TEST 5: many timers of different lengths fire in order
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local order = {}
            local threads = {}
            for _, ms in ipairs{ 120, 30, 90, 10, 60 } do
                threads[#threads + 1] = ngx.thread.spawn(function()
                    assert(async.sleep(ms / 1000))
                    order[#order + 1] = ms
                end)
            end
            for _, t in ipairs(threads) do ngx.thread.wait(t) end
            ngx.say(table.concat(order, " "))
            ngx.say("timers left: ", async.stats().timers)
        }
    }
--- response_body
10 30 60 90 120
timers left: 0



=== TEST 6: bad arguments raise clear string errors; the worker lives on
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            for _, v in ipairs{ "x", -1, 0/0, 1/0, 1e300, {}, true } do
                local ok, err = pcall(async.sleep, v)
                ngx.say(type(v), ": ", ok, " ", err)
            end
            local ok, err = pcall(async.sleep)
            ngx.say("none: ", ok, " ", err)
            ngx.say("still works: ", async.sleep(0.001))
        }
    }
--- response_body_like
^string: false .*bad argument #1 to 'sleep' \(number expected, got string\)
number: false .*bad argument #1 to 'sleep' \(seconds must be a finite number >= 0, got -1\)
number: false .*bad argument #1 to 'sleep' \(seconds must be a finite number >= 0, got NaN\)
number: false .*bad argument #1 to 'sleep' \(seconds must be a finite number >= 0, got inf\)
number: false .*bad argument #1 to 'sleep' \(seconds must be at most 31536000, got 1e300\)
table: false .*bad argument #1 to 'sleep' \(number expected, got table\)
boolean: false .*bad argument #1 to 'sleep' \(number expected, got boolean\)
none: false .*bad argument #1 to 'sleep' \(number expected, got nil\)
still works: true



=== TEST 7: an uncaught argument error is logged as a string, with the caller's line
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            async.sleep("soon")
        }
    }
--- error_code: 500
--- error_log eval
qr/content_by_lua\(nginx.conf:\d+\):3: bad argument #1 to 'sleep' \(number expected, got string\)/
--- no_error_log
unknown reason



=== TEST 8: calls from phases that cannot yield raise a clear error
--- http_config
    init_worker_by_lua_block {
        local async = require "resty.async"
        local ok, err = pcall(async.sleep, 0.01)
        ngx.log(ngx.WARN, "init_worker: ", ok, " ", err)
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.ctx.task = async.spawn(async.sleep, 0.3)
            ngx.say("ok")
        }
        header_filter_by_lua_block {
            local async = require "resty.async"
            local ok, err = pcall(async.sha256, "x")
            ngx.log(ngx.WARN, "header_filter: ", ok, " ", err)
        }
        log_by_lua_block {
            local async = require "resty.async"
            local ok, err = pcall(async.sleep, 0.01)
            ngx.log(ngx.WARN, "log: ", ok, " ", err)
            local task = ngx.ctx.task
            ok, err = pcall(task.wait, task)
            ngx.log(ngx.WARN, "log, task: ", ok, " ", err)
        }
    }
--- response_body
ok
--- wait: 0.1
--- error_log
init_worker: false resty.async: sleep() cannot wait in the init_worker phase
header_filter: false resty.async: sha256() cannot wait in the header_filter phase
log: false resty.async: sleep() cannot wait in the log phase
log, task: false resty.async: wait() cannot wait in the log phase



=== TEST 9: a per-call timeout drops the Rust timer at once
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err = async.with_timeout(0.05, async.sleep, 5)
            ngx.update_time()
            ngx.say(ok, " ", err, " ", ngx.now() - t0 < 0.5)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " timers=", st.timers,
                    " cancelled=", st.cancelled)
        }
    }
--- response_body
nil timeout true
in_flight=0 timers=0 cancelled=1



=== TEST 10: the configured default timeout applies to every call
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.configure{ timeout = 0.05 })
            local ok, err = async.sleep(1)
            ngx.say(ok, " ", err)
            assert(async.configure{ timeout = 60 })
            ngx.say(async.sleep(0.01))
            local ok2, err2 = pcall(async.configure, { timeout = -1 })
            ngx.say(ok2, " ", err2)
            ok2, err2 = pcall(async.configure, { bogus = 1 })
            ngx.say(ok2, " ", err2)
        }
    }
--- response_body_like
^nil timeout
true
false .*bad argument #1 to 'configure' \(timeout must be a finite number > 0\)
false .*bad argument #1 to 'configure' \(unknown option 'bogus'\)



=== TEST 11: the longest sleep, 31536000 s (one year), is taken; a longer one raises
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ok, err = async.with_timeout(0.01, async.sleep, 31536000)
            ngx.say("one year: ", ok, " ", err)
            ok, err = pcall(async.sleep, 31536000.5)
            ngx.say("longer: ", ok, " ", (err:gsub("^.-:%d+: ", "")))
        }
    }
--- response_body
one year: nil timeout
longer: false bad argument #1 to 'sleep' (seconds must be at most 31536000, got 31536000.5)



=== TEST 12: a numeric string is a number, as ngx.sleep takes it: sleep, the timeouts, configure
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say("sleep: ", async.sleep("0.001"), " ", async.sleep(" 0 "))
            ngx.say("with_timeout: ",
                    async.with_timeout("0.01", async.sleep, "5"))
            local task = async.spawn(async.sleep, "0.001")
            ngx.say("task:wait: ", task:wait("1"))
            assert(async.configure{ timeout = "0.5", read_timeout = "2",
                                    max_queue = "1024" })
            ngx.say("configured: ", async.stats().timeout)
            assert(async.configure{ timeout = 60 })
            local function try(f, ...)
                local ok, err = pcall(f, ...)
                ngx.say(ok, " ", (tostring(err):gsub("^.-:%d+: ", "")))
            end
            try(async.sleep, "0.01s")
            try(async.with_timeout, "soon", async.sleep, 0)
            local pending = async.spawn(async.sleep, 1)
            try(pending.wait, pending, "soon")
            try(async.configure, { timeout = "soon" })
        }
    }
--- response_body
sleep: true true
with_timeout: niltimeout
task:wait: true
configured: 0.5
false bad argument #1 to 'sleep' (number expected, got string)
false bad argument #1 to 'with_timeout' (number expected, got string)
false bad argument #1 to 'wait' (number expected, got string)
false bad argument #1 to 'configure' (option 'timeout': number expected, got string)
