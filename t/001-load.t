# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 2);

run_tests();

__DATA__

=== TEST 1: the library loads and reports its version
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(type(async.version), " ",
                    async.version:match("^%d+%.%d+%.%d+$") ~= nil)
            ngx.say(type(async.sleep), " ", type(async.sha256))
        }
    }
--- response_body
string true
function function



=== TEST 2: sleep(0) is ready at its first poll: no driver is started
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ok, err = async.sleep(0)
            local st = async.stats()
            ngx.say(ok, " ", err, " drivers=", st.drivers,
                    " in_flight=", st.in_flight, " wakeups=", st.wakeups)
        }
    }
--- response_body
true nil drivers=0 in_flight=0 wakeups=0



=== TEST 3: a Rust timer suspends only the request, for about its length
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err = async.sleep(0.1)
            ngx.update_time()
            local dt = ngx.now() - t0
            ngx.say(ok, " ", err, " ", dt >= 0.095 and dt < 0.5)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " drivers=", st.drivers,
                    " timers=", st.timers)
        }
    }
--- response_body
true nil true
in_flight=0 drivers=1 timers=0



=== TEST 4: sha256 on the pool equals sha256sum
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local h = require "t_http"
            for _, data in ipairs{ "", "abc", string.rep("x", 100000) } do
                local got, err = async.sha256(data)
                ngx.say(#data, " ", got == h.sha256sum(data), " ", err)
            end
            ngx.say(async.sha256("abc"))
        }
    }
--- response_body
0 true nil
3 true nil
100000 true nil
ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad



=== TEST 5: requiring in init_by_lua and using in the worker (after fork)
--- http_config
    init_worker_by_lua_block {
        -- nothing started in the master: the runtime is made here, lazily
        local async = require "resty.async"
        ngx.log(ngx.WARN, "in_flight at init_worker: ",
                async.stats().in_flight)
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(async.sleep(0.01))
            ngx.say(async.sha256("a"))
        }
    }
--- response_body
true
ca978112ca1bbdcafac231b39a23dc4da786eff8147c4e72b9807785afee48bb
--- error_log
in_flight at init_worker: 0
--- no_error_log
[error]



=== TEST 6: the defaults: timeout 60 s, as many pool threads as CPUs, max_queue 1024
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- the CPUs nginx may use (nproc: its affinity), fewer under a
            -- cgroup v2 CPU quota, as Rust's available_parallelism counts
            local f = assert(io.popen("nproc"))
            local cpus = f:read("*n")
            f:close()
            f = io.open("/sys/fs/cgroup/cpu.max")
            if f then
                local quota, period = f:read("*l"):match("^(%d+) (%d+)")
                f:close()
                if quota then
                    cpus = math.min(cpus, math.max(1, math.floor(quota / period)))
                end
            end
            local st = async.stats()
            ngx.say("timeout=", st.timeout, " max_queue=", st.max_queue,
                    " pool_nice=", st.pool_nice)
            ngx.say("pool_max_threads is the CPUs: ", st.pool_max_threads == cpus,
                    " (", st.pool_max_threads, ")")
        }
    }
--- response_body_like chomp
^timeout=60 max_queue=1024 pool_nice=10
pool_max_threads is the CPUs: true \(\d+\)$



=== TEST 7: stats() adds up the counters of every runtime of the worker
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local st = async.stats()
            ngx.say("runtimes=", st.runtimes, " connected=", st.connected)
            assert(async.sha256("x"))
            local before = async.stats()
            local ex = require "resty_async_fixtures"
            ngx.say("with a module: runtimes=", async.stats().runtimes)
            -- a job on the module's pool, a future on its executor
            assert(ex.block_ms(1))
            assert(ex.echo_after("x", 1))
            for _ = 1, 100 do  -- until both pools' threads have parked
                if async.stats().pool_idle == 2 then break end
                ngx.sleep(0.01)
            end
            st = async.stats()
            ngx.say("completed +", st.completed - before.completed,
                    " task_polls grew: ", st.task_polls > before.task_polls)
            ngx.say("pool_threads=", st.pool_threads, " pool_idle=",
                    st.pool_idle, " connected=", st.connected,
                    " drivers=", st.drivers)
        }
    }
--- response_body
runtimes=1 connected=0
with a module: runtimes=2
completed +2 task_polls grew: true
pool_threads=2 pool_idle=2 connected=2 drivers=2



=== TEST 8: the built-ins and a module's functions wait in rewrite_by_lua and access_by_lua
--- config
    location = /t {
        rewrite_by_lua_block {
            local b = require "t_builtins"
            ngx.ctx.rewrite = b.try("$TEST_NGINX_SERVER_ROOT/html/rewrite.txt")
                              .. " | " .. b.try_module()
        }
        access_by_lua_block {
            local b = require "t_builtins"
            ngx.ctx.access = b.try("$TEST_NGINX_SERVER_ROOT/html/access.txt")
                             .. " | " .. b.try_module()
        }
        content_by_lua_block {
            ngx.say("rewrite: ", ngx.ctx.rewrite)
            ngx.say("access: ", ngx.ctx.access)
        }
    }
--- response_body
rewrite: true ba7816bf 5 12345 timeout ba7816bf true cancelled | a 3 mlua slept 5 ms 2
access: true ba7816bf 5 12345 timeout ba7816bf true cancelled | a 3 mlua slept 5 ms 2



=== TEST 9: the built-ins and a module's functions wait in an ngx.timer callback
--- config
    location = /t {
        content_by_lua_block {
            local done = require("ngx.semaphore").new()
            local line
            local ok, err = ngx.timer.at(0, function()
                local b = require "t_builtins"
                line = b.try("$TEST_NGINX_SERVER_ROOT/html/timer.txt")
                       .. " | " .. b.try_module()
                done:post()
            end)
            assert(ok, err)
            assert(done:wait(5))
            ngx.say("timer: ", line)
        }
    }
--- response_body
timer: true ba7816bf 5 12345 timeout ba7816bf true cancelled | a 3 mlua slept 5 ms 2



=== TEST 10: the built-ins and a module's functions wait in ngx.thread light threads, while the entry thread goes on
--- config
    location = /t {
        content_by_lua_block {
            local b = require "t_builtins"
            local steps = {}
            local th = ngx.thread.spawn(function()
                local line = b.try("$TEST_NGINX_SERVER_ROOT/html/thread.txt")
                             .. " | " .. b.try_module()
                steps[#steps + 1] = "thread done"
                return line
            end)
            steps[#steps + 1] = "entry thread goes on"
            local ok, line = ngx.thread.wait(th)
            ngx.say(table.concat(steps, ", "))
            ngx.say("thread: ", ok, " ", line)
        }
    }
--- response_body
entry thread goes on, thread done
thread: true true ba7816bf 5 12345 timeout ba7816bf true cancelled | a 3 mlua slept 5 ms 2



=== TEST 11: stats() in init_worker_by_lua and in an ngx.timer callback; configure in a handler starts the drivers
--- http_config
    init_worker_by_lua_block {
        local st = require("resty.async").stats()
        ngx.log(ngx.WARN, "init_worker stats: timeout=", st.timeout,
                " max_queue=", st.max_queue, " runtimes=", st.runtimes,
                " drivers=", st.drivers, " in_flight=", st.in_flight)
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say("before: drivers=", async.stats().drivers)
            ngx.say("configure: ", async.configure{ timeout = 30 })
            local st = async.stats()
            ngx.say("after: drivers=", st.drivers, " timeout=", st.timeout)
            local done = require("ngx.semaphore").new()
            local line
            assert(ngx.timer.at(0, function()
                local completed = async.stats().completed
                assert(async.sleep(0.01))
                local t = async.stats()
                line = "completed +" .. t.completed - completed
                       .. " drivers=" .. t.drivers .. " waiting=" .. t.waiting
                done:post()
            end))
            assert(done:wait(5))
            ngx.say("timer: ", line)
        }
    }
--- response_body
before: drivers=0
configure: true
after: drivers=1 timeout=30
timer: completed +1 drivers=1 waiting=0
--- error_log
init_worker stats: timeout=60 max_queue=1024 runtimes=1 drivers=0 in_flight=0,
--- no_error_log
[error]



=== TEST 12: stats() has the README's fields, all numbers; version is the crate's
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sha256("x"))
            local keys = {}
            for k, v in pairs(async.stats()) do
                keys[#keys + 1] = k .. (type(v) == "number" and "" or "!")
            end
            table.sort(keys)
            ngx.say(table.concat(keys, " "))
            local f = assert(io.open(ngx.config.prefix() .. "../../Cargo.toml"))
            local crate = f:read("*a"):match('\nversion = "([^"]+)"')
            f:close()
            ngx.say("version: ", async.version == crate, " ", type(async.version))
        }
    }
--- response_body
cancelled completed connected driver_polls drivers in_flight max_queue pool_done pool_idle pool_max_threads pool_nice pool_queued pool_rejected pool_running pool_skipped pool_threads pool_wakeups rejected_peers runtimes streams task_polls timeout timers tokio_tasks tokio_threads waiting wakeups
version: true string
