# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 2);

run_tests();

__DATA__

=== TEST 1: async, blocking and sync functions and constants of a module crate
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ngx.say(ex.LIMIT, " ", ex.NAME)
            ngx.say(ex.echo_after("hi", 10))
            ngx.say(ex.double_on_thread(21, 20))
            ngx.say(ex.block_ms(5))
            ngx.say(ex.count_words("one two  three"))
            ngx.say(ex.add(1, 2.5))
            ngx.say(ex.divmod(17, 5))
            local u = ex.user(7)
            ngx.say(u.id, " ", u.name, " ", table.concat(u.tags, ","))
            ngx.say(ex.echo_after(nil, 1) == nil, " ", ex.echo_after(true, 1))
        }
    }
--- response_body
42 fixtures
hi
42
5
3
3.5
32
7 user7 a,b
true true



=== TEST 2: the same from ngx.timer.at and from ngx.thread light threads
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local done = require("ngx.semaphore").new()
            local out = {}
            assert(ngx.timer.at(0, function()
                out[#out + 1] = "timer " .. ex.echo_after("a", 5) .. " "
                    .. ex.double_on_thread(2, 5) .. " " .. ex.block_ms(3)
                    .. " " .. ex.add(1, 1)
                done:post()
            end))
            local t = ngx.thread.spawn(function()
                return "thread " .. ex.echo_after("b", 5) .. " "
                    .. ex.double_on_thread(3, 5) .. " " .. ex.block_ms(3)
                    .. " " .. ex.mlua_sleep(5)
            end)
            assert(done:wait(5))
            local ok, s = ngx.thread.wait(t)
            ngx.say(out[1])
            ngx.say(s)
        }
    }
--- response_body
timer a 4 3 2
thread b 6 3 mlua slept 5 ms



=== TEST 3: 100 concurrent requests awaiting a std::thread for 100 ms
--- config
    location = /double {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ngx.say(ex.double_on_thread(tonumber(ngx.var.arg_n), 100))
        }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local res, elapsed = h.parallel(100, function(i)
                return h.get("/double?n=" .. i)
            end)
            local good = 0
            for i = 1, 100 do
                local r = res[i]
                if r.ok and r[1] == 200 and r[2] == (2 * i) .. "\n" then
                    good = good + 1
                end
            end
            ngx.say(good, " correct, well under a second: ", elapsed < 0.7)
            ngx.log(ngx.WARN, "100 x 100 ms thread waits took ", elapsed)
        }
    }
--- response_body
100 correct, well under a second: true
--- timeout: 10



=== TEST 4: errors of author functions arrive as nil, "message"
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ngx.say(ex.fail_after("no such user", 5))
            ngx.say(ex.fail_after("at once", 0))
            ngx.say(ex.divmod(1, 0))
            ngx.say(ex.blocking_fail("disk on fire"))
            ngx.say(ex.sync_fail("sync says no"))
        }
    }
--- response_body
nilno such user
nilat once
nildivision by zero
nilblocking failure: disk on fire
nilsync says no



=== TEST 5: panics in author functions return nil, err; the worker lives on
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ngx.say(ex.panic_after(5))
            ngx.say(ex.panic_after(0))
            ngx.say(ex.blocking_panic("pool job exploded"))
            -- a result that panics as it becomes a Lua value, finished in
            -- the same poll as another call's: each caller gets its own
            local a = ngx.thread.spawn(ex.conversion_panic)
            local b = ngx.thread.spawn(ex.count_words, "one two three")
            ngx.say(select(2, ngx.thread.wait(a)))
            ngx.say(select(2, ngx.thread.wait(b)))
            ngx.say(ex.sync_panic())
            -- everything still works
            ngx.say(ex.block_ms(1), " ", ex.echo_after("alive", 1), " ", ex.add(2, 2))
            local st = require("resty.async").stats()
            ngx.say("in_flight=", st.in_flight, " pool_threads>0: ", st.pool_threads > 0)
        }
    }
--- response_body
nilrust function panicked: fixture panic after 5 ms
nilrust function panicked: fixture panic after 0 ms
nilrust function panicked: pool job exploded
nilrust function panicked: conversion exploded
3
nilrust function panicked: sync panic
1 alive 4
in_flight=0 pool_threads>0: true



=== TEST 6: wrong argument types for author functions raise string errors
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local ok, err = pcall(ex.add, "x", 1)
            ngx.say(ok, " ", err)
            ok, err = pcall(ex.double_on_thread, {}, 1)
            ngx.say(ok, " ", err)
            ok, err = pcall(ex.block_ms, -5)
            ngx.say(ok, " ", err)
            ok, err = pcall(ex.mlua_sleep, "x")
            ngx.say(ok, " ", err)
        }
    }
--- response_body_like
^false bad argument #1 to `add`: error converting Lua string to f64.*
false bad argument #1 to `double_on_thread`: error converting Lua table to i64.*
false bad argument #1 to `block_ms`: error converting Lua .* to u64.*
false bad argument #1 to `mlua_sleep`: error converting Lua string to u64.*



=== TEST 7: create_async_function closures wait without spinning the worker
--- config
    location = /mlua {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ngx.say(ex.mlua_sleep(500))
        }
    }
    location = /ping {
        content_by_lua_block { ngx.say("pong") }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local function cpu_ticks()
                local f = assert(io.open("/proc/self/stat"))
                local stat = f:read("*a")
                f:close()
                -- fields after the command: state is 3rd; utime 14th, stime 15th
                local rest = stat:match("%) (.*)$")
                local fields = {}
                for x in rest:gmatch("%S+") do fields[#fields + 1] = x end
                return tonumber(fields[12]) + tonumber(fields[13])
            end
            local threads = {}
            for i = 1, 20 do
                threads[i] = ngx.thread.spawn(h.get, "/mlua")
            end
            ngx.sleep(0.05)
            local before = cpu_ticks()
            ngx.update_time()
            local t0 = ngx.now()
            local st, body = h.get("/ping")
            ngx.update_time()
            local ping = ngx.now() - t0
            ngx.sleep(0.3)  -- the 20 calls are still waiting
            local used = cpu_ticks() - before
            local n = 0
            for i = 1, 20 do
                local ok, s, b = ngx.thread.wait(threads[i])
                if ok and s == 200 and b == "mlua slept 500 ms\n" then n = n + 1 end
            end
            ngx.say(body, "ping fast: ", ping < 0.1)
            -- clock ticks are 10 ms: a spinning worker would use ~30
            ngx.say("cpu ticks while 20 calls waited 0.3 s: ", used <= 3)
            ngx.say(n, " calls done")
            ngx.log(ngx.WARN, "worker cpu ticks during the wait: ", used)
        }
    }
--- response_body
pong
ping fast: true
cpu ticks while 20 calls waited 0.3 s: true
20 calls done
--- timeout: 10



=== TEST 8: a raw create_async_function called directly raises, never spins
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local ok, err = pcall(ex.mlua_sleep_raw, 10)
            ngx.say(ok, " ", err)
            ngx.say("still fine: ", ex.mlua_sleep(1))
        }
    }
--- response_body_like
^false .*this async Rust function must be called through resty.async \(register it with Module::add_lua_async\); called directly in OpenResty it would spin the worker
still fine: mlua slept 1 ms



=== TEST 9: string results, made the fast way (one string) or mlua's (several)
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            for _, n in ipairs({ 0, 1, 256, 100000 }) do
                local bytes, hex, static = ex.string_kinds(n)
                local b, h = ex.bytes_upto(n), ex.hex_upto(n)
                ngx.say(n, ": ", #b, " ", b == bytes, " ", #h, " ", h == hex,
                        " ", static, " ", select("#", ex.bytes_upto(n)))
            end
            local b = ex.bytes_upto(256)
            ngx.say(b:byte(1), " ", b:byte(2), " ", b:byte(256))
            ngx.say(ex.static_str(), " ", select("#", ex.static_str()))
            local t = require("resty.async").spawn(ex.hex_upto, 3)
            ngx.say(t:wait())
            -- one value each, false and nil included
            ngx.say(ex.echo_after(false, 1), " ", ex.count_words("a b"), " ",
                    ex.double_on_thread(-4, 1), " ",
                    select("#", ex.echo_after(nil, 1)))
        }
    }
--- response_body
0: 0 true 0 true static 1
1: 1 true 2 true static 1
256: 256 true 512 true static 1
100000: 100000 true 200000 true static 1
0 1 255
static 1
000102
false 2 -8 1



=== TEST 10: a module built against another resty-async fails to register, clearly
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local raw = { __name = "old_module", __rt = {}, __kinds = {} }
            local ok, err = pcall(async.register, raw)
            ngx.say(ok, " ", err)
            raw.__abi = 1
            ok, err = pcall(async.register, raw)
            ngx.say(ok, " ", err)
        }
    }
--- response_body
false resty.async: module old_module was built against another version of resty-async (calling convention nil, this resty/async.lua speaks 7): rebuild it against the resty-async whose lualib/ is on lua_package_path
false resty.async: module old_module was built against another version of resty-async (calling convention 1, this resty/async.lua speaks 7): rebuild it against the resty-async whose lualib/ is on lua_package_path



=== TEST 11: caught panics do not flood the error log
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local n = 0
            for i = 1, 100 do
                local a = select(2, ex.blocking_panic("boom " .. i))
                local b = select(2, ex.panic_after(0))
                local c = select(2, ex.sync_panic())
                if a and b and c then n = n + 1 end
            end
            ngx.say(n, " calls returned their panic as a string")
        }
    }
--- response_body
100 calls returned their panic as a string
--- grep_error_log eval: qr/panicked at/
--- grep_error_log_out
panicked at



=== TEST 12: resty_async::unblock: an async function awaits a closure run on the pool
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            ngx.update_time()
            local t0 = ngx.now()
            -- 50 ms on the pool, then 50 ms on a timer
            ngx.say(ex.unblock_ms(50))
            ngx.update_time()
            ngx.say("after both: ", ngx.now() - t0 >= 0.095)
            local st = async.stats()
            ngx.say("pool_done=", st.pool_done, " in_flight=", st.in_flight)
        }
    }
--- response_body
50
after both: true
pool_done=1 in_flight=0



=== TEST 13: resty_async::unblock with the pool's queue full: "busy" at once
--- init_by_lua_block
        assert(async.configure{ threads = 1, max_queue = 1 })
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            -- one job runs and one waits, or one waits and one is refused:
            -- either way the queue of one place is full
            local a = ngx.thread.spawn(ex.block_ms, 300)
            local b = ngx.thread.spawn(ex.block_ms, 300)
            ngx.update_time()
            local t0 = ngx.now()
            local v, err = ex.unblock_ms(1)
            ngx.update_time()
            ngx.say(v, " ", err, " at once: ", ngx.now() - t0 < 0.05)
            ngx.thread.wait(a)
            ngx.thread.wait(b)
            ngx.say("after: ", ex.unblock_ms(1))
        }
    }
--- response_body
nil busy (blocking pool queue full: max_queue = 1) at once: true
after: 1



=== TEST 14: resty_async::sleep lasts its whole length when it starts late in a turn of nginx's event loop, whose cached clock then lags
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            -- the task blocks the worker 60 ms, then sleeps 30 ms
            local ms = ex.sleep_after_block(60, 30)
            ngx.say("at least 30 ms: ", ms >= 30, ", under 500 ms: ", ms < 500)
        }
    }
--- response_body
at least 30 ms: true, under 500 ms: true



=== TEST 15: a module whose FFI entry points are of another version does not load, and the error log says why
--- config
    location = /t {
        content_by_lua_block {
            require "resty.async"
            local runtime = require "resty.async.runtime"
            -- as if this lualib/ were of a later resty-async than the module
            runtime.FFI_ABI = runtime.FFI_ABI + 1
            local ok, err = pcall(require, "resty_async_fixtures")
            runtime.FFI_ABI = runtime.FFI_ABI - 1
            -- (mlua raises it as userdata: without pcall, ngx_lua would say
            -- "unknown reason", and the log line below is the message)
            ngx.say(ok, " ", type(err), " ", tostring(err):find(
                "has FFI entry points of another version", 1, true) ~= nil)
            -- Lua does not run a loader that failed again: one log line
            ok, err = pcall(require, "resty_async_fixtures")
            ngx.say(ok, " ", err:match("previous error") ~= nil)
        }
    }
--- response_body
false userdata true
false true
--- grep_error_log eval: qr/did not load/
--- grep_error_log_out
did not load
--- error_log eval
qr/\[error\] .*resty\.async: the module resty_async_fixtures did not load: .*resty\.async: module resty_async_fixtures has FFI entry points of another version \(\d+, this resty\/async\.lua declares \d+\): rebuild it/



=== TEST 16: a future that wakes itself and never finishes: the worker's other requests and timers go on, and the call times out
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local fx = require "resty_async_fixtures"
            ngx.update_time()
            local t0 = ngx.now()
            local th = ngx.thread.spawn(async.sleep, 0.05)
            ngx.say(async.with_timeout(0.3, fx.spin_forever))
            ngx.update_time()
            ngx.say("took < 1 s: ", ngx.now() - t0 < 1)
            ngx.say("the sleep beside it: ", select(2, ngx.thread.wait(th)))
            ngx.say("in_flight=", async.stats().in_flight)
        }
    }
--- response_body
niltimeout
took < 1 s: true
the sleep beside it: true
in_flight=0
--- timeout: 5



=== TEST 17: a Drop that panics, in a cancelled future or child task, and a panic before the future: the worker goes on
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local fx = require "resty_async_fixtures"
            ngx.say("cancelled: ", async.with_timeout(0.05, fx.drop_panics_after, 1000))
            ngx.say("finished: ", fx.drop_panics_after(1))
            ngx.say("child: ", fx.drop_panics_in_child(1))
            ngx.say("child, cancelled: ",
                    async.with_timeout(0.05, fx.drop_panics_in_child, 1000))
            ngx.say("before the future: ", fx.panic_before_future(1))
            ngx.say("no panic: ", fx.panic_before_future(0))
            ngx.say("goes on: ", async.sleep(0.01), " in_flight=",
                    async.stats().in_flight)
        }
    }
--- response_body
cancelled: niltimeout
finished: nilrust function panicked: fixture drop panic
child: true
child, cancelled: niltimeout
before the future: nilrust function panicked: panic before the future (1)
no panic: 0
goes on: true in_flight=0



=== TEST 18: a pool job's result that nobody takes, whose drop panics: the jobs that came back with it reach their callers
--- init_by_lua_block
    assert(async.configure{ threads = 8 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local fx = require "resty_async_fixtures"
            local th = {
                ngx.thread.spawn(async.with_timeout, 0.02,
                                 fx.drop_panics_result, 100),
            }
            for i = 2, 5 do
                th[i] = ngx.thread.spawn(async.with_timeout, 1, fx.block_ms,
                                         150)
            end
            ngx.sleep(0.05)  -- the first call times out; its job runs on
            -- The worker is busy while every job comes back: one poll
            -- collects them, the abandoned result first.
            local t0 = os.clock()
            while os.clock() - t0 < 0.3 do end
            for i = 1, #th do
                local _, v, err = ngx.thread.wait(th[i])
                ngx.say(i, ": ", tostring(v), " ", tostring(err))
            end
            ngx.say("goes on: ", fx.block_ms(1))
        }
    }
--- response_body
1: nil timeout
2: 150 nil
3: 150 nil
4: 150 nil
5: 150 nil
goes on: 1



=== TEST 19: a panic converting the arguments is the call's result, for blocking and sync functions as for async ones
--- config
    location = /t {
        content_by_lua_block {
            local fx = require "resty_async_fixtures"
            ngx.say("blocking: ", fx.blocking_arg_panic(1))
            ngx.say("sync: ", fx.sync_arg_panic(1))
            ngx.say("goes on: ", fx.block_ms(1), " ", fx.add(1, 2))
        }
    }
--- response_body
blocking: nilrust function panicked: fixture argument conversion panic
sync: nilrust function panicked: fixture argument conversion panic
goes on: 1 3



=== TEST 20: a module whose calling convention differs: require fails with "unknown reason", and the error log says why
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- as if the module were built against another resty-async:
            -- the raw table Module::build hands to register says so
            local register = async.register
            async.register = function(raw)
                raw.__abi = raw.__abi + 1
                return register(raw)
            end
            require "resty_async_fixtures"
        }
    }
--- error_code: 500
--- error_log eval
[
    qr/\[error\] .*resty\.async: the module resty_async_fixtures did not load: resty\.async: module resty_async_fixtures was built against another version of resty-async \(calling convention \d+, this resty\/async\.lua speaks \d+\): rebuild it against the resty-async whose lualib\/ is on lua_package_path/,
    qr/\[error\] .*runtime error: unknown reason/,
]



=== TEST 21: resty_async::sleep blocked on outside a task (block_on in a plain function or on the pool) panics with a message, never hangs
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local fx = require "resty_async_fixtures"
            ngx.say("sync: ", fx.sync_block_on_sleep(10))
            ngx.say("blocking: ", async.with_timeout(1, fx.blocking_block_on_sleep, 10))
            ngx.say("goes on: ", fx.echo_after("alive", 1), " ", fx.block_ms(1))
        }
    }
--- response_body
sync: nilrust function panicked: resty_async::sleep must be awaited in a task of resty-async on the nginx worker (an add_async function, an async method, spawn_local): polled elsewhere (block_on in a plain or blocking function) nothing would ever fire it
blocking: nilrust function panicked: resty_async::sleep must be awaited in a task of resty-async on the nginx worker (an add_async function, an async method, spawn_local): polled elsewhere (block_on in a plain or blocking function) nothing would ever fire it
goes on: alive 1



=== TEST 22: a RefCell borrow held across an await: a call made while another waits gets the panic as its error; the first goes on
--- config
    location = /t {
        content_by_lua_block {
            local fx = require "resty_async_fixtures"
            local a = ngx.thread.spawn(fx.borrow_across_await, 50)
            local b = ngx.thread.spawn(fx.borrow_across_await, 1)
            ngx.say("second: ", select(2, ngx.thread.wait(b)))
            ngx.say("first: ", type(select(2, ngx.thread.wait(a))))
            ngx.say("later: ", type(fx.borrow_across_await(1)))
        }
    }
--- response_body_like
^second: nilrust function panicked: .*already borrowed.*
first: number
later: number$



=== TEST 23: the error of Lua code a module's function runs comes back as its message, without mlua's traceback
--- config
    location = /t {
        content_by_lua_block {
            local fx = require "resty_async_fixtures"
            ngx.say(fx.lua_error_after("error('boom', 0)", 1))
            ngx.say(fx.sync_lua_error("error('bang', 0)"))
            ngx.say(fx.lua_error_after("local t; return t.x", 0))
        }
    }
--- response_body_like
^nilboom
nilbang
nil[^\n]*:1: attempt to index local 't' \(a nil value\)$



=== TEST 24: a module required again (package.loaded cleared), and a copy of it under another name: every table works; only the copy, another library, adds a runtime
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local a = require "resty_async_fixtures"
            local n = async.stats().runtimes
            package.loaded.resty_async_fixtures = nil
            local b = require "resty_async_fixtures"
            ngx.say("again: ", a ~= b, " ", a.echo_after("a", 1), " ",
                    b.echo_after("b", 1), " ", b.counter(1):slow_incr(1),
                    " runtimes +", async.stats().runtimes - n)
            local so = package.searchpath("resty_async_fixtures", package.cpath)
            local dir = "$TEST_NGINX_SERVER_ROOT/html"
            -- luaopen_resty_async_fixtures: the name up to the "-" is left out
            assert(os.execute("cp " .. so .. " " .. dir
                              .. "/v2-resty_async_fixtures.so") == 0)
            package.cpath = dir .. "/?.so;" .. package.cpath
            local c = require "v2-resty_async_fixtures"
            ngx.say("copy: ", c.echo_after("c", 1), " ",
                    c.counter(1):slow_incr(1), " runtimes +",
                    async.stats().runtimes - n)
            ngx.say("first: ", a.echo_after("a", 1), " ", a.block_ms(1))
        }
    }
--- response_body
again: true a b 2 runtimes +0
copy: c 2 runtimes +1
first: a 1
