# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 16);

run_tests();

__DATA__

=== TEST 1: every non-yieldable phase gets a clear error, never a hang
--- init_by_lua_block
        local ok, err = pcall(async.sleep, 0.01)
        package.loaded.init_err = err
--- http_config
    init_worker_by_lua_block {
        local async = require "resty.async"
        local ok, err = pcall(async.read_file, "/etc/hostname")
        ngx.log(ngx.WARN, "init_worker: ", err)
        ngx.log(ngx.WARN, "init: ", package.loaded.init_err)
    }
--- config
    location = /t {
        set_by_lua_block $x {
            local async = require "resty.async"
            local ok, err = pcall(async.sleep, 0.01)
            ngx.log(ngx.WARN, "set: ", err)
            return "x"
        }
        content_by_lua_block { ngx.say("ok ", ngx.var.x) }
        body_filter_by_lua_block {
            local async = require "resty.async"
            local ok, err = pcall(async.write_file, "/tmp/x", "y")
            if ngx.arg[2] then ngx.log(ngx.WARN, "body_filter: ", err) end
        }
        log_by_lua_block {
            local async = require "resty.async"
            local ok, err = pcall(async.spawn, async.sleep, 0.01)
            ngx.log(ngx.WARN, "log: ", err)
        }
    }
--- response_body
ok x
--- wait: 0.1
--- error_log
init: resty.async: sleep() cannot wait in the init phase
init_worker: resty.async: read_file() cannot wait in the init_worker phase
set: resty.async: sleep() cannot wait in the set phase
body_filter: resty.async: write_file() cannot wait in the body_filter phase
log: resty.async: sleep() cannot wait in the log phase



=== TEST 2: with_timeout, configure and register reject bad arguments
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local function try(f, ...)
                local ok, err = pcall(f, ...)
                ngx.say(ok, " ", (tostring(err):gsub("^.-:%d+: ", "")))
            end
            try(async.with_timeout, 0 / 0, async.sleep, 1)
            try(async.with_timeout, -1, async.sleep, 1)
            try(async.with_timeout, "soon", async.sleep, 1)
            try(async.with_timeout, 1, print, 1)
            try(async.configure, "threads")
            try(async.configure, { threads = 0 })
            try(async.configure, { threads = 1.5 })
            try(async.configure, { threads = 5000 })
            try(async.configure, { max_queue = 0 })
            try(async.configure, { colour = "blue" })
            try(async.configure, { max_queue = "many" })
            try(async.configure, { timeout = 1 / 0 })
            try(async.configure, { pool_nice = 20 })
            try(async.configure, { pool_nice = -1 })
            try(async.configure, { pool_nice = 0.5 })
            try(async.configure, { pool_cpus = 1 })
            try(async.configure, { pool_cpus = { -1 } })
            try(async.configure, { pool_cpus = { 1.5 } })
            try(async.configure, { pool_cpus = { "one" } })
            try(async.configure, { pool_cpus = { cpu = 1 } })
            try(async.configure, { pool_cpus = { 0, nil, 1 } })
            try(async.configure, { pool_cpus = { 0 / 0 } })
            try(async.configure, { pool_cpus = { 1024 } })
            try(async.register, {})
            ngx.say("still fine: ", async.sleep(0.001))
        }
    }
--- response_body
false bad argument #1 to 'with_timeout' (timeout must be a finite number > 0)
false bad argument #1 to 'with_timeout' (timeout must be a finite number > 0)
false bad argument #1 to 'with_timeout' (number expected, got string)
false bad argument #2 to 'with_timeout' (a resty.async function expected)
false bad argument #1 to 'configure' (table expected, got string)
false bad argument #1 to 'configure' (option 'threads' must be an integer from 1 to 1024)
false bad argument #1 to 'configure' (option 'threads' must be an integer from 1 to 1024)
false bad argument #1 to 'configure' (option 'threads' must be an integer from 1 to 1024)
false bad argument #1 to 'configure' (option 'max_queue' must be an integer from 1 to 1048576)
false bad argument #1 to 'configure' (unknown option 'colour')
false bad argument #1 to 'configure' (option 'max_queue': number expected, got string)
false bad argument #1 to 'configure' (timeout must be a finite number > 0)
false bad argument #1 to 'configure' (option 'pool_nice' must be an integer from 0 to 19)
false bad argument #1 to 'configure' (option 'pool_nice' must be an integer from 0 to 19)
false bad argument #1 to 'configure' (option 'pool_nice' must be an integer from 0 to 19)
false bad argument #1 to 'configure' (option 'pool_cpus': table expected, got number)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'configure' (option 'pool_cpus' must be a list of CPU numbers from 0 to 1023)
false bad argument #1 to 'register' (the raw table of a resty-async module expected)
still fine: true



=== TEST 3: configure after the runtime started cannot change the pool
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sha256("x"))
            local ok, err = async.configure{ threads = 7 }
            ngx.say(ok, " ", err and err:match("already running") ~= nil)
            ngx.say(async.configure{ timeout = 30 })
        }
    }
--- response_body
nil true
true



=== TEST 4: large data: a 100 MiB string hashes; nothing is truncated
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local data = string.rep("z", 100 * 1024 * 1024)
            local hex = async.sha256(data)
            ngx.say(hex == require("t_http").sha256sum(data))
            data = nil
            collectgarbage()
        }
    }
--- response_body
true
--- timeout: 30



=== TEST 5: a bad base_dir is reported to the caller, and a good one works after
--- http_config
    init_worker_by_lua_block {
        -- configure in init_worker starts the driver: it fails at once
        local ok, err = require("resty.async").configure{
            base_dir = "/nonexistent/dir"
        }
        ngx.log(ngx.WARN, "configure in init_worker: ", ok, " ", err)
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local ok, err = async.sleep(0.01)
            ngx.say(ok, " ", err)
            ngx.say("ready-at-once still works: ", async.sleep(0))
        }
    }
--- response_body
nil cannot create the completion socket: cannot create a directory in /nonexistent/dir: No such file or directory (os error 2)
ready-at-once still works: true
--- error_log
configure in init_worker: nil cannot create the completion socket: cannot create a directory in /nonexistent/dir: No such file or directory (os error 2)
--- no_error_log
[error]



=== TEST 6: configure after the runtime started refuses changes of max_queue, base_dir, pool_nice, pool_cpus
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sha256("x"))
            for _, opts in ipairs{ { max_queue = 7 }, { base_dir = "/" },
                                   { pool_nice = 3 }, { pool_cpus = { 0 } } } do
                local ok, err = async.configure(opts)
                ngx.say(next(opts), ": ", ok, " ",
                        err and err:match("already running") ~= nil)
            end
            ngx.say("the same values: ",
                    async.configure{ max_queue = 1024, pool_nice = 10 })
            local st = async.stats()
            ngx.say("in use: max_queue=", st.max_queue, " pool_nice=", st.pool_nice)
        }
    }
--- response_body
max_queue: nil true
base_dir: nil true
pool_nice: nil true
pool_cpus: nil true
the same values: true
in use: max_queue=1024 pool_nice=10



=== TEST 7: configure checks the network options; they may change while the runtime runs
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local function try(opts)
                local ok, err = pcall(async.configure, opts)
                ngx.say(ok, " ", (tostring(err):gsub("^.-:%d+: ", "")))
            end
            try{ connect_timeout = 0 }
            try{ send_timeout = -1 }
            try{ read_timeout = 0 / 0 }
            try{ read_timeout = 2147484 }
            try{ keepalive_timeout = "long" }
            try{ keepalive_pool = 0 }
            try{ keepalive_pool = 1.5 }
            assert(async.sha256("x"))
            ngx.say("running: ", async.configure{
                connect_timeout = 1, send_timeout = 2, read_timeout = 2147483,
                keepalive_timeout = 0.5, keepalive_pool = 1 })
        }
    }
--- response_body
false bad argument #1 to 'configure' (option 'connect_timeout' must be a number of seconds above 0 and at most 2147483.647)
false bad argument #1 to 'configure' (option 'send_timeout' must be a number of seconds above 0 and at most 2147483.647)
false bad argument #1 to 'configure' (option 'read_timeout' must be a number of seconds above 0 and at most 2147483.647)
false bad argument #1 to 'configure' (option 'read_timeout' must be a number of seconds above 0 and at most 2147483.647)
false bad argument #1 to 'configure' (option 'keepalive_timeout': number expected, got string)
false bad argument #1 to 'configure' (option 'keepalive_pool' must be an integer from 1 to 1048576)
false bad argument #1 to 'configure' (option 'keepalive_pool' must be an integer from 1 to 1048576)
running: true



=== TEST 8: the runtime's internal entry points refuse a handle that is not a live runtime's
--- config
    location = /t {
        content_by_lua_block {
            local ffi = require "ffi"
            require "resty.async"
            local core = require "resty_async_core"
            -- the Lua C function a waiting caller yields in
            local wait = core.__rt.wait
            ngx.say(wait(ngx.null, 1, 1))
            ngx.say(wait("a string", 1, 1))
            ngx.say(wait(io.stdout, 1, 1))
            -- an FFI entry point, as a caller could reach it through ffi
            local api = ffi.cast("const struct resty_async_api *", core.__api)
            local r = api.sleep(ffi.cast("const void *", 4096), 1, 0, nil)
            local buf = ffi.new("char[128]")
            ngx.say("sleep: ", r ~= r and "NaN" or r, " ",
                    ffi.string(buf, api.error(buf, 128)))
            -- the results' table: none for such a handle
            local cap = ffi.new("int[1]", 7)
            local p = api.mailbox(ffi.cast("const void *", 4096), cap)
            ngx.say("mailbox: ", p == nil, " ", cap[0])
            p = api.mailbox(ffi.cast("const void *", core.__vm), nil)
            ngx.say("the VM's mailbox, no capacity asked: ", p ~= nil)
            ngx.say("the real one works: ", require("resty.async").sleep(0.01))
            -- a wait for a task that is not there (a plain task's id) is
            -- over at once: nothing is queued (2: WAIT_DONE)
            local vm = ffi.cast("const void *", core.__vm)
            ngx.say("wait for no task: ", api.wait(vm, 2 ^ 52 + 5, 1))
        }
    }
--- response_body
nilresty.async: the runtime of this Lua VM is gone
nilresty.async: the runtime of this Lua VM is gone
nilresty.async: the runtime of this Lua VM is gone
sleep: NaN resty.async: the runtime of this Lua VM is gone
mailbox: true 0
the VM's mailbox, no capacity asked: true
the real one works: true
wait for no task: 2



=== TEST 9: base_dir must be an absolute path
--- init_by_lua_block
        local tried = {}
        for _, dir in ipairs{ "relative/dir", "./sockets", "" } do
            local ok, err = pcall(async.configure, { base_dir = dir })
            tried[#tried + 1] = tostring(ok) .. " "
                                .. (tostring(err):gsub("^.-:%d+: ", ""))
        end
        package.loaded.t_base_dir_tried = tried
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            for _, line in ipairs(package.loaded.t_base_dir_tried) do
                ngx.say("init: ", line)
            end
            local ok, err = pcall(async.configure, { base_dir = "" })
            ngx.say("worker: ", ok, " ", (tostring(err):gsub("^.-:%d+: ", "")))
            ngx.say("the first one in use: ", async.sleep(0.01))
        }
    }
--- response_body
init: false bad argument #1 to 'configure' (option 'base_dir' must be an absolute path, got "relative/dir")
init: false bad argument #1 to 'configure' (option 'base_dir' must be an absolute path, got "./sockets")
init: false bad argument #1 to 'configure' (option 'base_dir' must be an absolute path, got "")
worker: false bad argument #1 to 'configure' (option 'base_dir' must be an absolute path, got "")
the first one in use: true



=== TEST 10: configure after the runtime started names the settings that differ, as Lua values
--- init_by_lua_block
        assert(async.configure{ threads = 2, pool_cpus = { 0 } })
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sha256("x"))
            ngx.say(async.configure{ threads = 3, max_queue = 7 })
            ngx.say(async.configure{ base_dir = "/", pool_nice = 0,
                                     pool_cpus = {}, tokio_threads = 2 })
            ngx.say(async.configure{ pool_cpus = { 0, 0 }, threads = 2.0 })
        }
    }
--- response_body_like
^nilthe runtime of this worker is already running with threads = 2 \(not 3\), max_queue = 1024 \(not 7\); configure threads, max_queue, base_dir, pool_nice, pool_cpus and tokio_threads before the first call
nilthe runtime of this worker is already running with base_dir = "/[^"]+" \(not "/"\), pool_nice = 10 \(not 0\), pool_cpus = \{ 0 \} \(not \{\}\), tokio_threads = 1 \(not 2\); configure threads, max_queue, base_dir, pool_nice, pool_cpus and tokio_threads before the first call
true



=== TEST 11: every kind of function that may wait raises in every phase where Lua cannot yield, even when it would be ready at once
--- init_by_lua_block
        package.loaded.init_refused = require("t_builtins").refused(
            "$TEST_NGINX_SERVER_ROOT/html/init.txt")
--- http_config
    init_worker_by_lua_block {
        local b = require "t_builtins"
        ngx.log(ngx.WARN, "init: ", package.loaded.init_refused)
        ngx.log(ngx.WARN, "init_worker: ",
                b.refused("$TEST_NGINX_SERVER_ROOT/html/worker.txt"))
    }
--- config
    location = /t {
        set_by_lua_block $x {
            ngx.log(ngx.WARN, "set: ", require("t_builtins").refused(
                "$TEST_NGINX_SERVER_ROOT/html/set.txt"))
            return "x"
        }
        content_by_lua_block {
            local async = require "resty.async"
            ngx.ctx.task = async.spawn(async.sleep, 1)
            ngx.say("ok ", ngx.var.x)
        }
        header_filter_by_lua_block {
            ngx.log(ngx.WARN, "header_filter: ", require("t_builtins").refused(
                "$TEST_NGINX_SERVER_ROOT/html/header.txt", ngx.ctx.task))
        }
        body_filter_by_lua_block {
            if ngx.arg[2] then
                ngx.log(ngx.WARN, "body_filter: ",
                    require("t_builtins").refused(
                        "$TEST_NGINX_SERVER_ROOT/html/body.txt", ngx.ctx.task))
            end
        }
        log_by_lua_block {
            ngx.log(ngx.WARN, "log: ", require("t_builtins").refused(
                "$TEST_NGINX_SERVER_ROOT/html/log.txt", ngx.ctx.task))
            local f = io.open("$TEST_NGINX_SERVER_ROOT/html/log.txt")
            ngx.log(ngx.WARN, "files written: ", f ~= nil)
        }
    }
--- response_body
ok x
--- wait: 0.1
--- error_log
init: sleep/init sha256/init read_file/init write_file/init sleep/init sha256/init echo_after/init block_ms/init mlua_sleep/init Counter:slow_incr/init,
init_worker: sleep/init_worker sha256/init_worker read_file/init_worker write_file/init_worker sleep/init_worker sha256/init_worker echo_after/init_worker block_ms/init_worker mlua_sleep/init_worker Counter:slow_incr/init_worker,
set: sleep/set sha256/set read_file/set write_file/set sleep/set sha256/set echo_after/set block_ms/set mlua_sleep/set Counter:slow_incr/set,
header_filter: sleep/header_filter sha256/header_filter read_file/header_filter write_file/header_filter sleep/header_filter sha256/header_filter echo_after/header_filter block_ms/header_filter mlua_sleep/header_filter Counter:slow_incr/header_filter wait/header_filter,
body_filter: sleep/body_filter sha256/body_filter read_file/body_filter write_file/body_filter sleep/body_filter sha256/body_filter echo_after/body_filter block_ms/body_filter mlua_sleep/body_filter Counter:slow_incr/body_filter wait/body_filter,
log: sleep/log sha256/log read_file/log write_file/log sleep/log sha256/log echo_after/log block_ms/log mlua_sleep/log Counter:slow_incr/log wait/log while
files written: false while



=== TEST 12: configure in a worker, before any call, creates the runtime: its settings are fixed from then on, but timeout
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            ngx.say("first: ", async.configure{ threads = 3 }, " ",
                    async.stats().pool_max_threads)
            local ok, err = async.configure{ threads = 4 }
            ngx.say("later: ", ok, " ", err and err:match("already running") ~= nil,
                    " ", async.stats().pool_max_threads)
            ngx.say("timeout: ", async.configure{ timeout = 5 }, " ",
                    async.stats().timeout)
        }
    }
--- response_body
first: true 3
later: nil true 3
timeout: true 5



=== TEST 13: balancer_by_lua and exit_worker_by_lua cannot yield either: a call raises, and the request and the worker's exit go on
--- http_config
    exit_worker_by_lua_block {
        local async = require "resty.async"
        local fixtures = require "resty_async_fixtures"
        for _, call in ipairs{
            { async.sleep, 0.01 },
            { async.spawn, async.sha256, "x" },
            { fixtures.echo_after, "x", 1 },
        } do
            local ok, err = pcall(unpack(call))
            ngx.log(ngx.WARN, "exit_worker: ", ok, " ", err)
        end
    }
    upstream backend {
        server 127.0.0.1:$TEST_NGINX_SERVER_PORT;
        balancer_by_lua_block {
            local async = require "resty.async"
            local fixtures = require "resty_async_fixtures"
            for _, call in ipairs{
                { async.sha256, "x" },
                { fixtures.block_ms, 1 },
            } do
                local ok, err = pcall(unpack(call))
                ngx.log(ngx.WARN, "balancer: ", ok, " ", err)
            end
        }
    }
--- config
    location = /t {
        proxy_pass http://backend/back;
    }
    location = /back {
        return 200 "proxied\n";
    }
--- response_body
proxied
--- error_log
balancer: false resty.async: sha256() cannot wait in the balancer phase (use it in rewrite, access or content handlers, ngx.timer callbacks or ngx.thread light threads)
balancer: false resty.async: block_ms() cannot wait in the balancer phase
--- shutdown_error_log
exit_worker: false resty.async: sleep() cannot wait in the exit_worker phase
exit_worker: false resty.async: sha256() cannot wait in the exit_worker phase
exit_worker: false resty.async: echo_after() cannot wait in the exit_worker phase
--- no_error_log
[error]
