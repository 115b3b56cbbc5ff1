# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

# (TESTs 12, 17 and 24 have both an error_log and a no_error_log: one
# more each.)
plan tests => repeat_each() * (blocks() * 7 + 3);

run_tests();

__DATA__

=== TEST 1: a registered type's async method waits without blocking the worker
--- config
    location = /ping {
        content_by_lua_block { ngx.say("pong") }
    }
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local h = require "t_http"
            local c = ex.counter(41)
            local th = ngx.thread.spawn(c.slow_incr, c, 1000)
            ngx.update_time()
            local t0 = ngx.now()
            local status, body = h.get("/ping")
            ngx.update_time()
            ngx.say("ping: ", status, " ", body:sub(1, -2), " at once: ",
                    ngx.now() - t0 < 0.3)
            ngx.say("slow_incr: ", select(2, ngx.thread.wait(th)))
            ngx.say("get: ", c:get(), " value: ", c.value)
        }
    }
--- response_body
ping: 200 pong at once: true
slow_incr: 42
get: 42 value: 42



=== TEST 2: the async method of a type that was not registered raises at once; nothing spins
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local u = ex.unregistered()
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err = pcall(u.wait, u, 1000)
            ngx.update_time()
            ngx.say(ok, " ", err:match("must be registered through resty%-async"))
            ngx.say("names what to call: ",
                    err:find("Module::add_class", 1, true) ~= nil)
            ngx.say("at once: ", ngx.now() - t0 < 0.1)
            local _, e2 = pcall(function() local r = u:wait(1000) return r end)
            ngx.say("at the caller's line: ",
                    e2:match("^content_by_lua%b():(%d+): ") or e2)
            ngx.say("later calls work: ", ex.counter(1):slow_incr(5))
        }
    }
--- response_body
false must be registered through resty-async
names what to call: true
at once: true
at the caller's line: 12
later calls work: 2



=== TEST 3: 100 requests at once call one object made in init_worker_by_lua
--- http_config
    init_worker_by_lua_block {
        package.loaded.shared_counter =
            require("resty_async_fixtures").counter(0)
    }
--- config
    location = /incr {
        content_by_lua_block {
            local c = package.loaded.shared_counter
            ngx.say(assert(c:slow_incr(200)))
        }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local c = package.loaded.shared_counter
            local before = c.value
            local res, elapsed = h.parallel(100, function()
                return h.get("/incr")
            end)
            local good = 0
            for i = 1, 100 do
                if res[i].ok and res[i][1] == 200 then good = good + 1 end
            end
            ngx.say(good, " answered; side by side: ", elapsed < 1.5)
            ngx.say("value grew by ", c.value - before)
        }
    }
--- response_body
100 answered; side by side: true
value grew by 100
--- timeout: 10



=== TEST 4: a timeout drops the method's future
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local c = ex.counter(7)
            local dropped = ex.dropped()
            ngx.say(async.with_timeout(0.05, c.guarded_wait, c, 5000))
            ngx.say("future dropped: ", ex.dropped() - dropped)
            ngx.say("in_flight=", async.stats().in_flight)
        }
    }
--- response_body
niltimeout
future dropped: 1
in_flight=0



=== TEST 5: the object is collected while a call is pending; its state is dropped once, after the call
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local before = ex.counters_dropped()
            local c = ex.counter(1)
            local task = async.spawn(c.slow_incr, c, 200)
            c = nil
            collectgarbage()
            collectgarbage()
            ngx.say("while pending: ", ex.counters_dropped() - before)
            ngx.say("result: ", task:wait())
            collectgarbage()
            ngx.say("after: ", ex.counters_dropped() - before)
            -- a method that keeps its UserDataRef keeps the object
            local c2 = ex.counter(5)
            task = async.spawn(c2.borrowing_incr, c2, 100)
            c2 = nil
            collectgarbage()
            ngx.say("borrowing, while pending: ",
                    ex.counters_dropped() - before)
            ngx.say("result: ", task:wait())
            collectgarbage()
            collectgarbage()
            ngx.say("after: ", ex.counters_dropped() - before)
        }
    }
--- response_body
while pending: 0
result: 2
after: 1
borrowing, while pending: 1
result: 6
after: 2



=== TEST 6: errors and panics of methods come back as nil, message
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local c = ex.counter()
            ngx.say(c:fail_after(5))
            ngx.say(c:panic_after(5))
            ngx.say(c:panic_after(0))
            ngx.say("still works: ", c:slow_incr(1))
            ngx.say("in_flight=", async.stats().in_flight)
        }
    }
--- response_body
nilcounter says no
nilrust function panicked: counter panic after 5 ms
nilrust function panicked: counter panic after 0 ms
still works: 1
in_flight=0



=== TEST 7: add_async_method_mut: while one call is pending, other async calls return nil and a message, sync ones raise it
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.counter()
            local th = ngx.thread.spawn(c.exclusive_incr, c, 100)
            ngx.say(c:exclusive_incr(1))
            ngx.say(c:slow_incr(1))
            ngx.say(pcall(c.get, c))
            ngx.say(select(2, ngx.thread.wait(th)))
            ngx.say(c:exclusive_incr(1))
        }
    }
--- response_body
nilbad argument `self` to `Counter.exclusive_incr`: error mutably borrowing userdata
nilbad argument `self` to `Counter.slow_incr`: error borrowing userdata
falsebad argument `self` to `Counter.get`: error borrowing userdata
1
2



=== TEST 8: async functions of the type, methods from ngx.timer, async.spawn and with_timeout
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local c = ex.counter(10)
            local made = c.make_after(100, 5)
            ngx.say("make_after: ", made:get(), " ", made.value)
            local sema = require("ngx.semaphore").new()
            local got
            assert(ngx.timer.at(0, function()
                got = c:slow_incr(5)
                sema:post()
            end))
            assert(sema:wait(5))
            ngx.say("timer: ", got)
            ngx.say("spawn: ", async.spawn(c.slow_incr, c, 5):wait())
            ngx.say("with_timeout: ", async.with_timeout(1, c.slow_incr, c, 5))
        }
    }
--- response_body
make_after: 100 100
timer: 11
spawn: 12
with_timeout: 13



=== TEST 9: misuse of a method raises a string: a wrong argument of an async method, a sync method on another value
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.counter(1)
            local ok, err = pcall(c.slow_incr, c, "abc")
            ngx.say("async: ", ok, " ", err)
            ok, err = pcall(c.slow_incr, nil, 10)
            ngx.say("async, self: ", ok, " ", err)
            ok, err = pcall(c.get, nil)
            ngx.say("sync, self: ", ok, " ", type(err), " ", err)
            ngx.say("still works: ", c:slow_incr(10), " ", c:get())
        }
    }
--- response_body
async: false bad argument #2 to `Counter.slow_incr`: error converting Lua string to u64 (expected number or string coercible to number)
async, self: false bad argument `self` to `Counter.slow_incr`: error converting Lua nil to userdata
sync, self: false string bad argument `self` to `Counter.get`: error converting Lua nil to userdata (expected userdata of type 'Counter')
still works: 2 2



=== TEST 10: an uncaught error of a sync method is logged as its message
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.counter(1)
            c.get(nil)
        }
    }
--- error_code: 500
--- error_log
bad argument `self` to `Counter.get`: error converting Lua nil to userdata
--- no_error_log
unknown reason



=== TEST 11: the worker exits cleanly while async methods and mlua async functions are in flight
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local c = ex.counter(1)
            -- kept for good: the worker closes its Lua VM as it exits,
            -- with these tasks still in flight
            KEPT_TASKS = {
                async.spawn(c.slow_incr, c, 60000),
                async.spawn(ex.mlua_sleep, 60000),
            }
            ngx.say("running: ", async.stats().in_flight)
        }
    }
--- response_body
running: 2



=== TEST 12: the errors of field getters and sync metamethods are raised as strings, and an uncaught one is logged as its message
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.counter(1)
            ngx.say("len: ", #c, " value: ", c.value)
            -- the method borrows the object mutably while it waits
            local th = ngx.thread.spawn(c.exclusive_incr, c, 100)
            local ok, err = pcall(function() return #c end)
            ngx.say("len: ", ok, " ", type(err), " ", err)
            ok, err = pcall(function() return c.value end)
            ngx.say("value: ", ok, " ", type(err), " ", err)
            local uncaught = ngx.thread.spawn(function() return c.value end)
            ngx.thread.wait(uncaught)
            ngx.thread.wait(th)
            ngx.say("len: ", #c, " value: ", c.value)
        }
    }
--- response_body
len: 1 value: 1
len: false string bad argument `self` to `Counter.__len`: error borrowing userdata
value: false string bad argument `self` to `Counter.value`: error borrowing userdata
len: 2 value: 2
--- error_log
lua user thread aborted: runtime error: bad argument `self` to `Counter.value`: error borrowing userdata
--- no_error_log
unknown reason



=== TEST 13: objects that first reach Lua inside a table (a Vec, a record) have async methods that wait
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local list = ex.counters(3)
            ngx.say("list: ", #list, " ", list[3]:slow_incr(1))
            local rec = ex.counter_record(41)
            ngx.say("record: ", rec.name, " ", rec.counter:slow_incr(1))
        }
    }
--- response_body
list: 3 3
record: a counter 42



=== TEST 14: the type's async functions wait when called through the proxy the module exports (Lua::create_proxy)
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.Counter.make_after(41, 1)
            ngx.say("made: ", c:slow_incr(1))
        }
    }
--- response_body
made: 42



=== TEST 15: beyond the calls mlua can keep in flight at once (about 8,000 async methods), a call fails with a message that says so; the others go on
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local c = ex.counter(0)
            local tasks = {}
            for i = 1, 8200 do
                tasks[i] = async.spawn(c.slow_incr, c, 10000)
            end
            ngx.say("last: ", select(2, tasks[8200]:wait(1)))
            ngx.say("first running: ", tasks[1]:cancel())
            for i = 2, 8200 do
                tasks[i]:cancel()
            end
            ngx.say("after: ", c:slow_incr(1))
        }
    }
--- response_body_like
^last: out of Lua stack: too many Lua values at once \(mlua keeps at most about 8,000 per module crate and Lua VM, and each call in flight of an async method or of a Module::add_lua_async function keeps one\)
first running: true
after: 1



=== TEST 16: async metamethods wait: __call, __tostring, __eq, __lt, __concat, __len, __unm, __index and __newindex
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local m1, m2 = ex.meta(1), ex.meta(2)
            ngx.say("call: ", m1(5), " tostring: ", tostring(m1))
            ngx.say("eq: ", m1 == m2, " ", m1 == ex.meta(1), " lt: ", m1 < m2)
            ngx.say("concat: ", "x" .. m1, " len: ", #m2, " unm: ", -m2)
            -- with methods (mlua's lookup calls __index), and without
            for _, r in ipairs{ ex.remote(), ex.bare_remote() } do
                r.key = 1  -- its failure is dropped, as an assignment's
                ngx.say("index: ", r.key)
            end
            ngx.say("method: ", ex.remote():name())
            ngx.say("in_flight=", async.stats().in_flight)
        }
    }
--- response_body
call: 1 tostring: Meta(1)
eq: false true lt: true
concat: xMeta(1) len: 2 unm: -2
index: value of key
index: value of key
method: remote
in_flight=0



=== TEST 17: the errors of a type's sync __index and __newindex are raised as their messages
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local s = ex.strict()
            ngx.say(pcall(function() return s.foo end))
            ngx.say(pcall(function() s.foo = 1 end))
            local p = ex.pool()
            ngx.say(pcall(function() return p.foo end))
            ngx.thread.wait(ngx.thread.spawn(function() return s.bar end))
        }
    }
--- response_body
falseno field foo
falsecannot set foo
falseno field foo
--- error_log
lua user thread aborted: runtime error: no field bar
--- no_error_log
unknown reason



=== TEST 18: an object that first reaches Lua from a sync method has async methods that wait
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local conn = ex.pool():conn()
            ngx.say(conn:query(5))
        }
    }
--- response_body
queried



=== TEST 19: an object the module exports (Module::add_value) has async methods that wait
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ngx.say(ex.constant:get_after(1))
        }
    }
--- response_body
42



=== TEST 20: a registered type is looked for among the first 1,024 keys and values of a result
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            -- the counter is value 513: keys and values 1,025 and 1,026
            local t = ex.padded_counter(512)
            local ok, err = pcall(t[513].slow_incr, t[513], 1)
            ngx.say(ok, " ", err:match("must be registered") ~= nil)
            -- value 512: keys and values 1,023 and 1,024
            t = ex.padded_counter(511)
            ngx.say(t[512]:slow_incr(1))
        }
    }
--- response_body
false true
2



=== TEST 21: a type whose Drop panics aborts the worker when the object is collected
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            ex.drop_panics()
            ngx.timer.at(0.05, function()
                collectgarbage()
                collectgarbage()
            end)
            ngx.say("made")
        }
    }
--- response_body
made
--- wait: 0.5
--- error_log
fixture userdata drop panic
[alert]
exited on signal 6



=== TEST 22: an add_async_method_mut call whose light thread is killed keeps its borrow until the driver's sweep cancels it
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.counter(0)
            local th = ngx.thread.spawn(c.exclusive_incr, c, 5000)
            ngx.sleep(0.01)
            ngx.thread.kill(th)
            ngx.say("at once: ", select(2, c:exclusive_incr(0)))
            ngx.update_time()
            local t0 = ngx.now()
            while not c:exclusive_incr(0) and ngx.now() - t0 < 1 do
                ngx.sleep(0.01)
                ngx.update_time()
            end
            ngx.say("free within 0.3 s: ", ngx.now() - t0 < 0.3)
        }
    }
--- response_body
at once: bad argument `self` to `Counter.exclusive_incr`: error mutably borrowing userdata
free within 0.3 s: true



=== TEST 23: a registered type is looked for in the tables of a result down to 8 levels below it
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local function bottom(t)
                while type(t) == "table" do t = t[1] end
                return t
            end
            -- (the result, and 9 levels of tables below it)
            local c = bottom(ex.nested_counter(10))
            local ok, err = pcall(c.slow_incr, c, 1)
            ngx.say(ok, " ", err:match("must be registered") ~= nil)
            c = bottom(ex.nested_counter(9))
            ngx.say(c:slow_incr(1))
        }
    }
--- response_body
false true
2



=== TEST 24: a sync method's error is raised as its text, as a module function's is returned
--- config
    location = /t {
        content_by_lua_block {
            local ex = require "resty_async_fixtures"
            local c = ex.counter(1)
            ngx.say("method: ", select(2, pcall(c.sync_fail, c, "counter says no")))
            ngx.say("function: ", select(2, ex.sync_fail("function says no")))
            ngx.thread.wait(ngx.thread.spawn(c.sync_fail, c, "uncaught"))
        }
    }
--- response_body
method: counter says no
function: function says no
--- error_log
lua user thread aborted: runtime error: uncaught
--- no_error_log
runtime error: runtime error
