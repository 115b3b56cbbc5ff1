# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7);

run_tests();

__DATA__

=== TEST 1: 50 concurrent sha256 calls on 1 MiB bodies equal sha256sum
--- config
    location = /sha {
        client_max_body_size 2m;
        client_body_buffer_size 2m;
        content_by_lua_block {
            local async = require "resty.async"
            ngx.req.read_body()
            local hex, err = async.sha256(ngx.req.get_body_data())
            ngx.say(hex or err)
        }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local bodies = {}
            for i = 1, 50 do
                -- 1 MiB, different for every request
                bodies[i] = string.rep(string.format("%07d|", i * 7919), 131072)
            end
            local res = h.parallel(50, function(i)
                return h.request("POST", "/sha", bodies[i])
            end)
            local good = 0
            for i = 1, 50 do
                local r = res[i]
                if r.ok and r[1] == 200 and r[2] == h.sha256sum(bodies[i]) .. "\n" then
                    good = good + 1
                else
                    ngx.say("bad ", i, ": ", tostring(r[1]), " ", tostring(r[2]))
                end
            end
            ngx.say(#bodies[1], " bytes x ", good, " digests match sha256sum")
            ngx.say("in_flight=", require("resty.async").stats().in_flight)
        }
    }
--- response_body
1048576 bytes x 50 digests match sha256sum
in_flight=0
--- timeout: 20



=== TEST 2: 1000 sha256 results that finish together each reach their caller
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- Both pool threads hash 16 MiB first: the 1000 small jobs
            -- queue behind them and finish in a burst, which the driver
            -- collects in few polls (more than 512 strings in one: several
            -- rt.strings() calls).
            local big = string.rep("x", 16 * 1024 * 1024)
            local slow = { ngx.thread.spawn(async.sha256, big),
                           ngx.thread.spawn(async.sha256, big .. "y") }
            local threads = {}
            for i = 1, 1000 do
                threads[i] = ngx.thread.spawn(async.sha256, "input " .. i)
            end
            local got = {}
            for i = 1, 1000 do
                local ok, hex, err = ngx.thread.wait(threads[i])
                got[i] = hex or err
            end
            for _, th in ipairs(slow) do ngx.thread.wait(th) end
            -- the same inputs one at a time: every result is its own
            local bad, distinct = 0, {}
            for i = 1, 1000 do
                if got[i] ~= async.sha256("input " .. i) then bad = bad + 1 end
                distinct[got[i]] = true
            end
            local n = 0
            for _ in pairs(distinct) do n = n + 1 end
            ngx.say("wrong: ", bad, ", distinct: ", n, ", in_flight: ",
                    async.stats().in_flight)
        }
    }
--- response_body
wrong: 0, distinct: 1000, in_flight: 0
--- timeout: 20



=== TEST 3: a 64 MiB sha256 runs on the pool while /ping answers at once
--- config
    location = /big {
        content_by_lua_block {
            local async = require "resty.async"
            local data = string.rep("0123456789abcdef", 4 * 1024 * 1024)
            ngx.update_time()
            local t0 = ngx.now()
            local hex, err = async.sha256(data)
            ngx.update_time()
            ngx.say(#data, " ", hex == require("t_http").sha256sum(data), " ", err)
            ngx.log(ngx.WARN, "64 MiB sha256 took ", ngx.now() - t0)
        }
    }
    location = /ping {
        content_by_lua_block { ngx.say("pong") }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local big = ngx.thread.spawn(h.get, "/big")
            -- wait until the job runs on the pool
            local async = require "resty.async"
            for _ = 1, 200 do
                if async.stats().pool_running > 0 then break end
                ngx.sleep(0.001)
            end
            ngx.say("job running: ", async.stats().pool_running == 1)
            ngx.update_time()
            local t0 = ngx.now()
            local st, body = h.get("/ping")
            ngx.update_time()
            local dt = ngx.now() - t0
            ngx.say(st, " ", body, "ping fast: ", dt < 0.05, " still hashing: ",
                    async.stats().pool_running == 1)
            local ok, st2, body2 = ngx.thread.wait(big)
            ngx.print(st2, " ", body2)
        }
    }
--- response_body
job running: true
200 pong
ping fast: true still hashing: true
200 67108864 true nil
--- timeout: 20



=== TEST 4: a full queue says "busy" at once; the others succeed
--- http_config
    init_worker_by_lua_block {
        local async = require "resty.async"
        assert(async.configure{ threads = 1, max_queue = 2 })
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- 20 jobs of 500 ms each, on a pool of 1 thread and 2 places
            -- (jobs this long: a worker that the machine stalls during the
            -- burst still sends all 20 before the first one ends)
            local ex = require "resty_async_fixtures"
            local res = {}
            local threads = {}
            for i = 1, 20 do
                threads[i] = ngx.thread.spawn(function()
                    ngx.update_time()
                    local t0 = ngx.now()
                    local v, err = ex.block_ms(500)
                    ngx.update_time()
                    -- how long this call took
                    res[i] = { v, err, ngx.now() - t0 }
                end)
            end
            local ok, busy, fast_busy, other = 0, 0, 0, 0
            for i = 1, 20 do
                ngx.thread.wait(threads[i])
                local r = res[i]
                if r[1] == 500 then
                    ok = ok + 1
                elseif r[2] and r[2]:find("^busy") then
                    busy = busy + 1
                    if r[3] < 0.05 then fast_busy = fast_busy + 1 end
                else
                    other = other + 1
                    ngx.say("unexpected: ", tostring(r[1]), " ", tostring(r[2]))
                end
            end
            -- 2 queued + 1 running, or 2 queued if the new thread had not
            -- taken the first job yet when the burst came
            ngx.say("ok 2..3: ", ok == 2 or ok == 3, ", busy=", busy == 20 - ok,
                    ", all busy at once: ", fast_busy == busy,
                    ", other=", other)
            ngx.say(res[20][2])
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " queued=", st.pool_queued,
                    " running=", st.pool_running, " threads=", st.pool_threads,
                    " rejected=busy: ", st.pool_rejected == busy)
            -- the pool still works
            ngx.say("after: ", ex.block_ms(1), " ", async.sha256("a") ~= nil)
        }
    }
--- response_body
ok 2..3: true, busy=true, all busy at once: true, other=0
busy (blocking pool queue full: max_queue = 2)
in_flight=0 queued=0 running=0 threads=1 rejected=busy: true
after: 1 true
--- timeout: 20



=== TEST 5: 200 concurrent write_file/read_file requests: every byte right
--- config
    location = /rw {
        content_by_lua_block {
            local async = require "resty.async"
            local i = tonumber(ngx.var.arg_i)
            local path = "$TEST_NGINX_SERVER_ROOT/html/f" .. i
            local data = string.rep(string.format("[%d]", i), 1000 + i * 37)
            local n, err = async.write_file(path, data)
            if n ~= #data then return ngx.say("write ", i, ": ", n, " ", err) end
            n, err = async.write_file(path, "tail", "a")
            if n ~= 4 then return ngx.say("append ", i, ": ", n, " ", err) end
            local got
            got, err = async.read_file(path)
            if got ~= data .. "tail" then
                return ngx.say("read ", i, ": ", got and #got, " ", err)
            end
            os.remove(path)
            ngx.say("ok")
        }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local res = h.parallel(200, function(i) return h.get("/rw?i=" .. i) end)
            local good = 0
            for i = 1, 200 do
                local r = res[i]
                if r.ok and r[1] == 200 and r[2] == "ok\n" then
                    good = good + 1
                else
                    ngx.say(i, ": ", tostring(r[1]), " ", tostring(r[2]))
                end
            end
            ngx.say(good, " of 200 correct")
            local st = require("resty.async").stats()
            ngx.say("in_flight=", st.in_flight, " queued=", st.pool_queued)
        }
    }
--- response_body
200 of 200 correct
in_flight=0 queued=0
--- timeout: 30



=== TEST 6: file errors carry the OS error; wrong types raise; numbers pass as strings
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(async.read_file("/nonexistent/x"))
            ngx.say(async.read_file("/"))
            ngx.say(async.write_file("/nonexistent/x", "data"))
            -- as with Lua's own string functions, a number is a string
            ngx.say(async.sha256(12.5) == async.sha256("12.5"))
            for _, args in ipairs{ { true }, { "/tmp/x", {} }, { "/tmp/x", "d", "r" }, {} } do
                local ok, err = pcall(async.write_file, unpack(args))
                ngx.say(ok, " ", (err:gsub("^.-: bad", "bad")))
            end
            local ok, err = pcall(async.sha256, nil)
            ngx.say(ok, " ", (err:gsub("^.-: bad", "bad")))
            ok, err = pcall(async.read_file, "")
            ngx.say(ok, " ", (err:gsub("^.-: bad", "bad")))
        }
    }
--- response_body
nilcannot read /nonexistent/x: No such file or directory (os error 2)
nilcannot read /: Is a directory (os error 21)
nilcannot open /nonexistent/x: No such file or directory (os error 2)
true
false bad argument #1 to 'write_file' (string expected, got boolean)
false bad argument #2 to 'write_file' (string expected, got table)
false bad argument #3 to 'write_file' (mode must be "w" or "a")
false bad argument #1 to 'write_file' (string expected, got nil)
false bad argument #1 to 'sha256' (string expected, got nil)
false bad argument #1 to 'read_file' (empty path or NUL byte)



=== TEST 7: permission denied is reported, not raised
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- a directory nobody may enter
            local dir = "$TEST_NGINX_SERVER_ROOT/html/locked"
            os.execute("mkdir -p " .. dir .. " && echo hi > " .. dir .. "/f && chmod 000 " .. dir)
            local data, err = async.read_file(dir .. "/f")
            os.execute("chmod 755 " .. dir .. " && rm -rf " .. dir)
            -- root ignores permissions: accept either outcome but never a raise
            ngx.say(data == "hi\n" or err:find("Permission denied", 1, true) ~= nil)
        }
    }
--- response_body
true



=== TEST 8: read_file refuses devices and FIFOs, which may be endless or block the pool for good; write_file does not wait for a FIFO's reader
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say(async.read_file("/dev/zero"))
            ngx.say(async.read_file("/dev/null"))
            local fifo = os.tmpname()  -- (a file: a FIFO in its place)
            os.remove(fifo)
            -- (not os.execute: nginx's SIGCHLD handler may reap the child
            -- first, and system() then reports a failure)
            local p = io.popen("mkfifo " .. fifo .. " && echo made")
            assert(p:read("*l") == "made")
            p:close()
            -- (with_timeout: before, each of these held a pool thread in
            -- open() until the FIFO had a writer or a reader)
            for _ = 1, 3 do
                ngx.say(async.with_timeout(1, async.read_file, fifo))
                ngx.say(async.with_timeout(1, async.write_file, fifo, "x"))
            end
            os.remove(fifo)
            ngx.say(#async.with_timeout(1, async.sha256, "x"))
        }
    }
--- response_body_like
^nilcannot read /dev/zero: a device, not a regular file
nilcannot read /dev/null: a device, not a regular file
(nilcannot read \S+: a FIFO, not a regular file
nilcannot open \S+: No such device or address \(os error 6\)
){3}64$



=== TEST 9: jobs queued in one cycle of the event loop share a wake-up
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local want = async.sha256("x")
            -- a task in flight, as under load: from now on pool jobs queued
            -- in this cycle wait for the driver's one wake-up at its end
            local bg = async.spawn(async.sleep, 10)
            -- the driver has just run: without the wake-up at the end of
            -- this cycle, the jobs would wait for its idle poll (0.1 s)
            async.sleep(0.001)
            local before = async.stats()
            ngx.update_time()
            local t0 = ngx.now()
            local threads, res = {}, {}
            for i = 1, 200 do
                threads[i] = ngx.thread.spawn(function()
                    res[i] = async.sha256("x")
                end)
            end
            local right = 0
            for i = 1, 200 do
                ngx.thread.wait(threads[i])
                if res[i] == want then right = right + 1 end
            end
            ngx.update_time()
            local elapsed = ngx.now() - t0
            bg:cancel()
            local after = async.stats()
            local woken = after.pool_wakeups - before.pool_wakeups
            ngx.say("right: ", right, ", jobs: ", after.pool_done - before.pool_done)
            ngx.say("wake-ups for 200 jobs < 10: ", woken < 10 or woken)
            ngx.say("within 0.05 s: ", elapsed < 0.05 or elapsed)
            ngx.say("in_flight=", after.in_flight, " queued=", after.pool_queued)
        }
    }
--- response_body
right: 200, jobs: 200
wake-ups for 200 jobs < 10: true
within 0.05 s: true
in_flight=0 queued=0



=== TEST 10: a pool thread that runs a long job drops 10 nice levels below the worker
--- init_by_lua_block
        assert(async.configure{ threads = 1 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local worker = assert(ex.thread_nice())
            local before = assert(ex.pool_thread_nice())
            assert(ex.block_ms(2))  -- a job of 1 ms or more
            local after = assert(ex.pool_thread_nice())
            -- (a repeated request finds the thread lowered already)
            local first = not package.loaded.t9_ran
            package.loaded.t9_ran = true
            ngx.say("short jobs only: worker + ",
                    first and before - worker or 0)
            ngx.say("after a long one: worker + 10 (or 19): ",
                    after == math.min(worker + 10, 19))
            ngx.say("stats: pool_nice=", async.stats().pool_nice)
        }
    }
--- response_body
short jobs only: worker + 0
after a long one: worker + 10 (or 19): true
stats: pool_nice=10



=== TEST 11: configure{ pool_nice = 0 } keeps the worker's priority
--- init_by_lua_block
        assert(async.configure{ pool_nice = 0, threads = 1 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            assert(ex.block_ms(2))
            ngx.say("same as the worker: ",
                    assert(ex.pool_thread_nice()) == assert(ex.thread_nice()))
            ngx.say("stats: pool_nice=", async.stats().pool_nice)
        }
    }
--- response_body
same as the worker: true
stats: pool_nice=0



=== TEST 12: configure{ pool_cpus = ... } runs pool threads on those CPUs only
--- init_by_lua_block
        -- the last CPU nginx may use (of "0-3", "2,5-7", ...)
        local ex = require "resty_async_fixtures"
        POOL_CPU = tonumber(assert(ex.thread_cpus()):match("(%d+)$"))
        assert(async.configure{ threads = 2, pool_cpus = { POOL_CPU } })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            local worker = assert(ex.thread_cpus())
            local cpu = tostring(POOL_CPU)
            ngx.say("pool thread: ", assert(ex.pool_thread_cpus()) == cpu)
            -- two jobs at once: a second thread, started by the first
            local a = ngx.thread.spawn(ex.block_ms, 20)
            local b = ngx.thread.spawn(ex.pool_thread_cpus)
            local _, cpus = ngx.thread.wait(b)
            assert(ngx.thread.wait(a))
            ngx.say("pool threads: ", async.stats().pool_threads)
            ngx.say("the other pool thread: ", cpus == cpu)
            ngx.say("the worker keeps its CPUs: ", ex.thread_cpus() == worker)
        }
    }
--- response_body
pool thread: true
pool threads: 2
the other pool thread: true
the worker keeps its CPUs: true



=== TEST 13: pool_cpus naming a CPU the machine lacks is refused
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ok, err = async.configure{ pool_cpus = { 0, 1023 } }
            ngx.say(ok, ": ", err)
            ngx.say("still runs: ", async.sha256("x") ~= nil)
        }
    }
--- response_body_like
^nil: pool_cpus: no CPU 1023 on this machine \(its CPUs are numbered 0 to \d+\)
still runs: true$



=== TEST 14: write_file's mode "w" truncates a longer file
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local path = "$TEST_NGINX_SERVER_ROOT/html/truncated.txt"
            ngx.say(async.write_file(path, string.rep("long ", 100)))
            ngx.say(async.write_file(path, "short"))
            ngx.say(async.read_file(path))
            ngx.say(async.write_file(path, "!", "w"))
            ngx.say(async.read_file(path))
        }
    }
--- response_body
500
5
short
1
!



=== TEST 15: read_file and write_file take numbers as strings; other types raise
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local path = "$TEST_NGINX_SERVER_ROOT/html/number.txt"
            ngx.say(async.write_file(path, 12.5), " ", async.read_file(path))
            -- a relative path of that name, which does not exist
            ngx.say(async.read_file(1234567.5))
            for _, v in ipairs{ true, {}, ngx.null } do
                local ok, err = pcall(async.read_file, v)
                ngx.say(ok, " ", (err:gsub("^.-: bad", "bad")))
            end
            local ok, err = pcall(async.write_file, path, false)
            ngx.say(ok, " ", (err:gsub("^.-: bad", "bad")))
        }
    }
--- response_body
4 12.5
nilcannot read 1234567.5: No such file or directory (os error 2)
false bad argument #1 to 'read_file' (string expected, got boolean)
false bad argument #1 to 'read_file' (string expected, got table)
false bad argument #1 to 'read_file' (string expected, got userdata)
false bad argument #2 to 'write_file' (string expected, got boolean)



=== TEST 16: a file name that is not UTF-8 is read and written, as io.open does
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local path = "$TEST_NGINX_SERVER_ROOT/html/latin1-\233t\233.txt"
            ngx.say(async.write_file(path, "été"))
            ngx.say(async.read_file(path))
            local f = assert(io.open(path))
            ngx.say(f:read("*a"))
            f:close()
            os.remove(path)
            local _, err = async.read_file(path)
            ngx.say(err:find("latin1-", 1, true) ~= nil)
        }
    }
--- response_body
5
été
été
true



=== TEST 17: read_file refuses a file larger than 1 GiB at once, without reading it first
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- sparse: 2 GiB of length, no blocks
            local path = "$TEST_NGINX_SERVER_ROOT/html/sparse-2g"
            local f = assert(io.open(path, "w"))
            assert(f:seek("set", 2 ^ 31))
            assert(f:write("x"))
            f:close()
            ngx.update_time()
            local t0 = ngx.now()
            -- (refused from its length: reading it to the cap would take
            -- seconds of a pool thread and a GiB of the worker's memory)
            local data, err = async.read_file(path)
            ngx.update_time()
            os.remove(path)
            ngx.say(data, " ", (err:gsub("^.-: ", "")))
            ngx.say("at once: ", ngx.now() - t0 < 0.5)
        }
    }
--- response_body
nil larger than 1073741824 bytes
at once: true



=== TEST 18: write_file makes a new file 0644, though nginx's daemon cleared the umask
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local path = "$TEST_NGINX_SERVER_ROOT/html/mode.txt"
            os.remove(path)
            ngx.say(async.write_file(path, "x"))
            local p = io.popen("stat -c %a " .. path)
            ngx.say(p:read("*l"))
            p:close()
            os.remove(path)
        }
    }
--- response_body
1
644



=== TEST 19: a timeout cannot stop a module's blocking job that has started: it holds its pool thread to its end, and meanwhile, with every thread held, the module's next call waits in the queue
--- init_by_lua_block
        assert(async.configure{ threads = 1 })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ex = require "resty_async_fixtures"
            ngx.say("first: ", async.with_timeout(0.05, ex.block_ms, 500))
            ngx.say("running: ", async.stats().pool_running)
            ngx.say("next: ", async.with_timeout(0.05, ex.block_ms, 1))
            -- the built-ins have a pool of their own
            ngx.say("sha256: ", #async.sha256("x"))
            ngx.sleep(0.6)
            ngx.say("after: ", ex.block_ms(1), " running: ",
                    async.stats().pool_running)
        }
    }
--- response_body
first: niltimeout
running: 1
next: niltimeout
sha256: 64
after: 1 running: 0
