use lib '.';
use t::TestAsync;
use File::Temp qw(tempdir);

# resty-async's `tokio` feature, through the example module
# build/resty_async_tokio.so: an HTTP client on hyper and rustls, tokio
# timers awaited by resty-async tasks, tokio tasks that panic or are
# aborted. The upstreams are servers of the same nginx, on two more ports.

my $base = $ENV{TEST_NGINX_TOKIO_PORT} || (($ENV{TEST_NGINX_SERVER_PORT} || 1984) + 10);
$ENV{TEST_NGINX_TOKIO_HTTP} = "127.0.0.1:$base";
$ENV{TEST_NGINX_TOKIO_HTTPS} = "127.0.0.1:" . ($base + 1);

# A CA made now, a server certificate it signs (for 127.0.0.1), and a
# second CA that signed nothing.
my $tls = tempdir("resty-async-tls.XXXXXX", TMPDIR => 1, CLEANUP => 1);
$ENV{TEST_NGINX_TLS} = $tls;
{
    my $q = "2>/dev/null";
    my $ec = "-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes";
    open my $ext, ">", "$tls/ext.cnf" or die;
    print $ext "subjectAltName=IP:127.0.0.1,DNS:localhost\n"
        . "basicConstraints=CA:FALSE\n";
    close $ext;
    for my $cmd (
        "openssl req -x509 $ec -keyout $tls/ca.key -out $tls/ca.crt -days 2 -subj '/CN=resty-async test CA'",
        "openssl req -x509 $ec -keyout $tls/other.key -out $tls/other.crt -days 2 -subj '/CN=another CA'",
        "openssl req $ec -keyout $tls/server.key -out $tls/server.csr -subj '/CN=127.0.0.1'",
        "openssl x509 -req -in $tls/server.csr -CA $tls/ca.crt -CAkey $tls/ca.key -CAcreateserial -out $tls/server.crt -days 2 -extfile $tls/ext.cnf",
    ) {
        system("$cmd $q") == 0 or die "failed: $cmd";
    }
}

# A second module crate on the tokio feature: a copy of the example's
# library, which the dynamic loader loads apart (another file).
{
    use File::Copy qw(copy);
    for my $name ("second", "third") {
        copy("build/resty_async_tokio.so", "$tls/${name}_tokio.so")
            or die "cannot copy the tokio module: $!";
    }
}

my $upstreams = <<'_EOC_';
    server {
        listen $TEST_NGINX_TOKIO_HTTP;
        location = /hello {
            add_header X-Test yes;
            add_header X-Twice 1;
            add_header X-Twice 2;
            return 200 "hello";
        }
        location = /echo {
            content_by_lua_block {
                ngx.req.read_body()
                ngx.say(ngx.req.get_method(), " ", ngx.var.http_x_a, " ",
                        ngx.var.http_connection, " ",
                        ngx.req.get_body_data())
            }
        }
        location / {
            return 404;
        }
        # 4 MB, with a Content-Length or chunked (?chunked)
        location = /big {
            content_by_lua_block {
                if not ngx.var.arg_chunked then
                    ngx.header["Content-Length"] = 4194304
                end
                local chunk = string.rep("0123456789abcdef", 4096)  -- 64 KB
                for i = 1, 64 do
                    ngx.print(chunk)
                    if not ngx.flush(true) then
                        return
                    end
                end
            }
        }
        # chunked, until the client goes away
        location = /endless {
            content_by_lua_block {
                local chunk = string.rep("0123456789abcdef", 4096)  -- 64 KB
                while true do
                    ngx.print(chunk)
                    if not ngx.flush(true) then
                        return
                    end
                end
            }
        }
        location = /slow {
            # a fetch that timed out closes its connection: stop at once
            lua_check_client_abort on;
            content_by_lua_block {
                ngx.sleep(tonumber(ngx.var.arg_s))
                ngx.print("slow")
            }
        }
    }
    server {
        listen $TEST_NGINX_TOKIO_HTTPS ssl;
        ssl_certificate $TEST_NGINX_TLS/server.crt;
        ssl_certificate_key $TEST_NGINX_TLS/server.key;
        location / {
            return 200 "secure";
        }
    }
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value("http_config", ($block->http_config // '') . $upstreams);
});

# 100 fetches at once: 200 connections, client and server side.
worker_connections(1024);

# (TESTs 12 and 24 check the log after shutdown: one more each; TEST 14
# checks no response: one less.)
plan tests => repeat_each() * (blocks() * 7 + 14);

run_tests();

__DATA__

=== TEST 1: fetch from a handler: status, lowercase headers, body, options
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local base = "http://$TEST_NGINX_TOKIO_HTTP"
            local res = assert(http.fetch(base .. "/hello"))
            ngx.say(res.status, " ", res.headers["x-test"], " ",
                    table.concat(res.headers["x-twice"], ","), " ",
                    res.headers["content-length"], " ", res.body)
            res = assert(http.fetch(base .. "/echo", {
                method = "POST", body = "data", headers = { ["X-A"] = "b" },
            }))
            ngx.print(res.status, " ", res.headers["transfer-encoding"], " ",
                      res.body)
            res = assert(http.fetch(base .. "/echo", { keepalive = false }))
            ngx.print(res.body)
            res = assert(http.fetch(base .. "/none"))
            ngx.say(res.status)
        }
    }
--- response_body
200 yes 1,2 5 hello
200 chunked POST b nil data
GET nil close nil
404



=== TEST 2: fetch from ngx.timer.at and from ngx.thread light threads
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local url = "http://$TEST_NGINX_TOKIO_HTTP/hello"
            local done = require("ngx.semaphore").new()
            local out
            assert(ngx.timer.at(0, function()
                local res, err = http.fetch(url)
                out = res and res.body or err
                done:post()
            end))
            local t = ngx.thread.spawn(function()
                local res, err = http.fetch(url)
                return res and res.body or err
            end)
            assert(done:wait(5))
            local _, s = ngx.thread.wait(t)
            ngx.say("timer ", out)
            ngx.say("thread ", s)
        }
    }
--- response_body
timer hello
thread hello



=== TEST 3: 100 concurrent fetches of a 0.2 s upstream run side by side
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local url = "http://$TEST_NGINX_TOKIO_HTTP/slow?s=0.2"
            ngx.update_time()
            local t0 = ngx.now()
            local threads = {}
            for i = 1, 100 do
                threads[i] = ngx.thread.spawn(http.fetch, url)
            end
            local good, err = 0
            for i = 1, 100 do
                local _, res, e = ngx.thread.wait(threads[i])
                if res and res.status == 200 and res.body == "slow" then
                    good = good + 1
                else
                    err = err or e
                end
            end
            if err then
                ngx.say(err)
            end
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.say(good, " ok, in under 1.5 s: ", took < 1.5)
        }
    }
--- response_body
100 ok, in under 1.5 s: true
--- timeout: 10



=== TEST 4: a timeout aborts the tokio task; its destructors run
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local t = require "resty_async_tokio"
            local before = t.dropped()
            ngx.say(async.with_timeout(0.05, t.guarded_sleep, 10000))
            for _ = 1, 100 do
                if t.dropped() > before then break end
                ngx.sleep(0.01)
            end
            ngx.say("dropped: ", t.dropped() - before)
            ngx.say(async.with_timeout(0.1, t.fetch,
                    "http://$TEST_NGINX_TOKIO_HTTP/slow?s=5"))
            for _ = 1, 100 do
                if async.stats().tokio_tasks == 0 then break end
                ngx.sleep(0.01)
            end
            ngx.say("tokio tasks left: ", async.stats().tokio_tasks)
        }
    }
--- response_body
niltimeout
dropped: 1
niltimeout
tokio tasks left: 0



=== TEST 5: a light thread killed while it waits aborts its tokio task
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            local before = t.dropped()
            local th = ngx.thread.spawn(t.guarded_sleep, 10000)
            ngx.sleep(0.05)
            ngx.thread.kill(th)
            for _ = 1, 100 do
                if t.dropped() > before then break end
                ngx.sleep(0.01)
            end
            ngx.say("dropped: ", t.dropped() - before)
            ngx.say(t.guarded_sleep(10), " ", t.dropped() - before)
        }
    }
--- response_body
dropped: 1
true 2



=== TEST 6: a panic in a tokio task is an error string
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            ngx.say(t.panic_after(10))
            ngx.say(t.sleep(1))
        }
    }
--- response_body
nilrust function panicked: tokio task panic after 10 ms
true



=== TEST 7: mlua's create_async_function awaiting tokio::time::sleep waits without spinning
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            -- the worker's CPU time (user + system, in clock ticks)
            local function cpu()
                local f = assert(io.open("/proc/self/stat"))
                local s = f:read("*a")
                f:close()
                local rest = s:match("%) (.*)")
                local fields = {}
                for v in rest:gmatch("%S+") do fields[#fields + 1] = v end
                return tonumber(fields[12]) + tonumber(fields[13])
            end
            local c0 = cpu()
            ngx.update_time()
            local t0 = ngx.now()
            ngx.say(t.mlua_sleep(300))
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.say("waited: ", took >= 0.29 and took < 1)
            -- a spinning worker would burn ~30 ticks of 10 ms
            ngx.say("cpu ticks under 10: ", cpu() - c0 < 10)
        }
    }
--- response_body
slept 300 ms
waited: true
cpu ticks under 10: true



=== TEST 8: the module required in init_by_lua: the master keeps one thread
--- init_by_lua_block
    require "resty_async_tokio"
    async.configure{ tokio_threads = 2 }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_tokio"
            local function status(pid, key)
                local f = assert(io.open("/proc/" .. pid .. "/status"))
                local s = f:read("*a")
                f:close()
                return tonumber(s:match(key .. ":%s*(%d+)"))
            end
            local master = status("self", "PPid")
            ngx.say("tokio threads before: ", async.stats().tokio_threads)
            ngx.say(http.fetch("http://$TEST_NGINX_TOKIO_HTTP/hello").body)
            ngx.say("tokio threads: ", async.stats().tokio_threads)
            ngx.say("master threads: ", status(master, "Threads"))
        }
    }
--- response_body
tokio threads before: 0
hello
tokio threads: 2
master threads: 1



=== TEST 9: https: a CA given as ca_file is trusted; others are not
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local url = "https://$TEST_NGINX_TOKIO_HTTPS/x"
            local res, err = http.fetch(url, {
                ca_file = "$TEST_NGINX_TLS/ca.crt" })
            ngx.say(res and res.body or err)
            res, err = http.fetch(url)
            ngx.say(res, " ", type(err), " ", err:match("certificate") ~= nil)
            res, err = http.fetch(url, { ca_file = "$TEST_NGINX_TLS/other.crt" })
            ngx.say(res, " ", err:match("UnknownIssuer") ~= nil)
            res, err = http.fetch(url, { ssl_verify = false })
            ngx.say(res and res.body or err)
            res, err = http.fetch(url, { ca_file = "$TEST_NGINX_TLS/none.crt" })
            ngx.say(res, " ", err:match("^cannot read ca_file") ~= nil)
        }
    }
--- response_body
secure
nil string true
nil true
secure
nil true



=== TEST 10: bad URLs and unreachable servers are error strings
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            for _, url in ipairs{ "not a url", "ftp://127.0.0.1/x",
                                  "http://", "/relative",
                                  "http://127.0.0.1:1/" } do
                local res, err = http.fetch(url)
                ngx.say(res, " ", type(err))
            end
            local res, err = http.fetch("ftp://127.0.0.1/x")
            ngx.say(err)
            res, err = http.fetch("http://$TEST_NGINX_TOKIO_HTTP/hello",
                                  { method = {} })
            ngx.say(err)
            ngx.say(pcall(http.fetch))
        }
    }
--- response_body
nil string
nil string
nil string
nil string
nil string
unsupported scheme "ftp" in "ftp://127.0.0.1/x" (http or https)
bad option 'method' (string expected)
falsebad argument #1 to `fetch`: error converting Lua nil to String (expected string or number)



=== TEST 11: lua_code_cache off: Lua VMs come and go, the tokio runtime stays
--- config
    location = /fetch {
        lua_code_cache off;
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local res, err = http.fetch("http://$TEST_NGINX_TOKIO_HTTP/hello")
            local n = 0
            local cmd = "cat /proc/" .. ngx.worker.pid() .. "/task/*/comm"
            for name in io.popen(cmd):lines() do
                if name == "resty-tokio" then n = n + 1 end
            end
            ngx.say(res and res.body or err, " ", n)
        }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            for _ = 1, 5 do
                local status, body = h.get("/fetch")
                ngx.print(status, " ", body)
            end
        }
    }
--- response_body
200 hello 1
200 hello 1
200 hello 1
200 hello 1
200 hello 1
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 12: the worker's exit shuts the tokio runtime down: its tasks are dropped
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            ngx.say(t.detached("detached tokio task dropped"))
        }
    }
--- response_body
true
--- shutdown_error_log
detached tokio task dropped



=== TEST 13: tokio_threads is checked, and cannot change once the runtime runs
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local t = require "resty_async_tokio"
            ngx.say(pcall(async.configure, { tokio_threads = 0 }))
            ngx.say(pcall(async.configure, { tokio_threads = true }))
            ngx.say(async.configure{ tokio_threads = 1 })
            ngx.say(t.sleep(1), " ", async.stats().tokio_threads)
            -- refused by the tokio module's runtime (returned, or logged
            -- when another module answers first)
            async.configure{ tokio_threads = 3 }
            ngx.say(async.stats().tokio_threads)
        }
    }
--- response_body
falsebad argument #1 to 'configure' (option 'tokio_threads' must be an integer from 1 to 256)
falsebad argument #1 to 'configure' (option 'tokio_threads': number expected, got boolean)
true
true 1
1



=== TEST 14: a client abort aborts the tokio task
--- http_config
    lua_check_client_abort on;
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            -- upvalues of a killed coroutine are not safe: pass arguments
            ngx.timer.at(0.8, function(_, before)
                local async = require "resty.async"
                local t = require "resty_async_tokio"
                local st = async.stats()
                ngx.log(ngx.WARN, "after abort: dropped=", t.dropped() - before,
                        " tokio_tasks=", st.tokio_tasks,
                        " in_flight=", st.in_flight)
            end, t.dropped())
            t.guarded_sleep(5000)
            ngx.log(ngx.ERR, "must not get here")
        }
    }
--- abort
--- timeout: 0.2
--- ignore_response
--- wait: 1
--- error_log
after abort: dropped=1 tokio_tasks=0 in_flight=0
--- no_error_log
must not get here
[alert]
exited on signal



=== TEST 15: tokio_threads changed after the tokio runtime started: not applied, nil and why
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local t = require "resty_async_tokio"
            ngx.say(t.sleep(1), " ", async.stats().tokio_threads)
            -- the built-ins' runtime, not running yet, takes it; the tokio
            -- module's refuses it
            ngx.say(async.configure{ tokio_threads = 3 })
            ngx.say(async.stats().tokio_threads)
        }
    }
--- response_body
true 1
nilresty.async: resty_async_tokio: the tokio runtime of this worker is already running with 1 threads; configure tokio_threads before its first use
1



=== TEST 16: tokio_threads is fixed at a worker's first call, like the pool options
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            assert(async.sha256("x"))
            local ok, err = async.configure{ tokio_threads = 3 }
            ngx.say(ok, " ", err and err:match("already running") ~= nil)
            local t = require "resty_async_tokio"
            ngx.say(t.sleep(1), " ", async.stats().tokio_threads)
        }
    }
--- response_body
nil true
true 1



=== TEST 17: a port out of range, zero or not a number is a bad url, not the default port
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            for _, url in ipairs{ "http://127.0.0.1:99999/x", "http://127.0.0.1:abc/x",
                                  "http://127.0.0.1:0/x", "https://localhost:65536/" } do
                local res, err = http.fetch(url)
                ngx.say(res and res.status or err)
            end
        }
    }
--- response_body
bad url "http://127.0.0.1:99999/x": bad port
bad url "http://127.0.0.1:abc/x": bad port
bad url "http://127.0.0.1:0/x": bad port
bad url "https://localhost:65536/": bad port



=== TEST 18: max_body: a larger body, announced, chunked or endless, fails at once
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local base = "http://$TEST_NGINX_TOKIO_HTTP"
            for _, path in ipairs{ "/big", "/big?chunked=1", "/endless" } do
                ngx.say(path, ": ", select(2, http.fetch(base .. path, { max_body = 1000000 })))
            end
            local res, err = http.fetch(base .. "/big?chunked=1", { max_body = 4194304 })
            ngx.say("exactly: ", res and #res.body or err)
            ngx.say(select(2, http.fetch(base .. "/hello", { max_body = 0.5 })))
        }
    }
--- response_body
/big: response body larger than 1000000 bytes
/big?chunked=1: response body larger than 1000000 bytes
/endless: response body larger than 1000000 bytes
exactly: 4194304
bad option 'max_body' (a whole number of bytes expected)
--- timeout: 10



=== TEST 19: an endless body stops at the default max_body, 64 MiB
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local res, err = http.fetch("http://$TEST_NGINX_TOKIO_HTTP/endless")
            ngx.say(res and #res.body or err)
        }
    }
--- response_body
response body larger than 67108864 bytes
--- timeout: 20



=== TEST 20: the CA certificates are read off the worker: a ca_file that does not answer (a FIFO) holds up no other request
--- config
    location = /ping {
        content_by_lua_block { ngx.say("pong") }
    }
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_tokio"
            local h = require "t_http"
            local fifo = "$TEST_NGINX_SERVER_ROOT/html/ca.fifo"
            os.remove(fifo)
            -- (not os.execute: nginx's SIGCHLD handler may reap the child
            -- first, and system() then reports a failure)
            local function sh(cmd)
                local p = io.popen(cmd .. " && echo done")
                local out = p:read("*l")
                p:close()
                return out == "done"
            end
            assert(sh("mkfifo " .. fifo))
            local th = ngx.thread.spawn(h.get, "/ping")
            ngx.say("fetch: ", async.with_timeout(0.3, http.fetch,
                    "https://$TEST_NGINX_TOKIO_HTTPS/x", { ca_file = fifo }))
            local _, status, body = ngx.thread.wait(th)
            ngx.print("meanwhile: ", status, " ", body)
            -- a writer lets the blocked read of the FIFO end
            ngx.say("released: ", sh("timeout 5 sh -c ': > " .. fifo .. "'"))
            os.remove(fifo)
        }
    }
--- response_body
fetch: niltimeout
meanwhile: 200 pong
released: true



=== TEST 21: a header given as a list of strings is sent once per value
--- config
    location = /headers {
        content_by_lua_block {
            local v = ngx.req.get_headers()["x-list"]
            ngx.say(ngx.req.get_method(), " ", type(v) == "table"
                    and table.concat(v, "|") or tostring(v))
        }
    }
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_tokio"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port
                .. "/headers", { headers = { ["X-List"] = { "a", "b", "c" } } })
            ngx.print(res and res.body or err)
        }
    }
--- response_body
GET a|b|c



=== TEST 22: fetch in rewrite_by_lua and access_by_lua
--- config
    location = /t {
        rewrite_by_lua_block {
            local res, err = require("resty_async_tokio").fetch(
                "http://$TEST_NGINX_TOKIO_HTTP/hello")
            ngx.ctx.rewrite = res and res.body or err
        }
        access_by_lua_block {
            local res, err = require("resty_async_tokio").fetch(
                "http://$TEST_NGINX_TOKIO_HTTP/hello")
            ngx.ctx.access = res and res.body or err
        }
        content_by_lua_block {
            ngx.say("rewrite: ", ngx.ctx.rewrite, ", access: ", ngx.ctx.access)
        }
    }
--- response_body
rewrite: hello, access: hello



=== TEST 23: lua_code_cache off: a VM whose configure does not name tokio_threads takes the running tokio runtime as it is
--- config
    lua_code_cache off;
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            -- (each request's VM runs init_by_lua, whose configure does
            -- not name tokio_threads; the first request's starts the
            -- worker's tokio runtime with 2 threads)
            if ngx.var.arg_threads then
                ngx.say(async.configure{ tokio_threads = 2 })
            end
            local t = require "resty_async_tokio"
            if ngx.var.arg_timeout then
                ngx.say(async.configure{ timeout = 5 })
            end
            ngx.say(t.sleep(1), " ", async.stats().tokio_threads)
        }
    }
--- request eval
["GET /t?threads=2", "GET /t", "GET /t?timeout=5"]
--- response_body eval
["true\ntrue 2\n", "true 2\n", "true\ntrue 2\n"]
--- no_error_log eval
["[error]", "already running", qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]
--- no_shutdown_error_log eval
[qr/\[alert\](?!.* lua_code_cache is off)/, "exited on signal"]



=== TEST 24: the worker's exit waits 0.5 s for a blocking tokio job, not until it ends
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            ngx.say(t.blocking_job(2500))
        }
    }
--- response_body
true
--- timeout: 6
--- no_shutdown_error_log
blocking tokio job done



=== TEST 25: the runtime's threads block the signals nginx handles; the worker's own thread does not
--- config
    location = /t {
        content_by_lua_block {
            local bit = require "bit"
            local t = require "resty_async_tokio"
            assert(t.sleep(1))
            -- SIGHUP, SIGINT, SIGQUIT, SIGUSR1, SIGALRM, SIGTERM, SIGCHLD,
            -- SIGWINCH, SIGIO: bits 0, 1, 2, 9, 13, 14, 16, 27, 28
            local mask = 0
            for _, sig in ipairs{ 1, 2, 3, 10, 14, 15, 17, 28, 29 } do
                mask = bit.bor(mask, bit.lshift(1, sig - 1))
            end
            local tokio, others = {}, {}
            for _, t in ipairs(require("t_proc").tasks()) do
                if t.name == "resty-tokio" then
                    tokio[#tokio + 1] = tostring(bit.band(t.blocked, mask) == mask)
                elseif t.tid == tostring(ngx.worker.pid()) then
                    others[#others + 1] = tostring(bit.band(t.blocked, mask) == 0)
                end
            end
            ngx.say("tokio threads block them: ", table.concat(tokio, " "))
            ngx.say("worker thread blocks none: ", table.concat(others, " "))
        }
    }
--- response_body
tokio threads block them: true
worker thread blocks none: true



=== TEST 26: each module crate on the tokio feature has a runtime of its own; its first call returns once its threads run: counted, named, their signals blocked
--- init_by_lua_block
    async.configure{ tokio_threads = 16 }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local bit = require "bit"
            -- SIGHUP, SIGQUIT, SIGTERM
            local mask = bit.bor(bit.lshift(1, 0), bit.lshift(1, 2),
                                 bit.lshift(1, 14))
            -- three module crates, three runtimes started one after another
            local mods = { require "resty_async_tokio" }
            for _, name in ipairs{ "second", "third" } do
                local open = assert(package.loadlib(
                    "$TEST_NGINX_TLS/" .. name .. "_tokio.so",
                    "luaopen_resty_async_tokio"))
                mods[#mods + 1] = open()
            end
            for i, m in ipairs(mods) do
                assert(m.sleep(0))
                local named, blocking = 0, 0
                for _, t in ipairs(require("t_proc").tasks()) do
                    if t.name == "resty-tokio" then
                        named = named + 1
                        if bit.band(t.blocked, mask) == mask then
                            blocking = blocking + 1
                        end
                    end
                end
                ngx.say(i, ": stats ", async.stats().tokio_threads,
                        ", named ", named, ", blocking signals ", blocking)
            end
        }
    }
--- response_body
1: stats 16, named 16, blocking signals 16
2: stats 32, named 32, blocking signals 32
3: stats 48, named 48, blocking signals 48



=== TEST 27: tokio's TcpStream works in an add_async function as it stands
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            ngx.say(t.tcp_get("$TEST_NGINX_TOKIO_HTTP", "/hello"))
            ngx.say(t.tcp_get("127.0.0.1:1", "/"))
        }
    }
--- response_body
HTTP/1.1 200 OK
nilConnection refused (os error 111)



=== TEST 28: a task started with plain tokio::spawn is detached: a timeout of the call does not abort it
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local t = require "resty_async_tokio"
            local before = t.dropped()
            ngx.say(async.with_timeout(0.05, t.plain_spawn_sleep, 400))
            ngx.sleep(0.15)
            ngx.say("at 0.2 s: ", t.dropped() - before)
            ngx.sleep(0.4)
            ngx.say("at 0.6 s: ", t.dropped() - before)
        }
    }
--- response_body
niltimeout
at 0.2 s: 0
at 0.6 s: 1



=== TEST 29: an add_blocking closure runs outside the tokio runtime's context
--- config
    location = /t {
        content_by_lua_block {
            local t = require "resty_async_tokio"
            assert(t.sleep(0))
            ngx.say(t.blocking_in_context())
        }
    }
--- response_body
false



=== TEST 30: tokio_threads holds when an add_blocking closure is what starts the runtime
--- init_by_lua_block
    async.configure{ tokio_threads = 3 }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local t = require "resty_async_tokio"
            ngx.say(t.workers_from_pool(), " ", async.stats().tokio_threads)
        }
    }
--- response_body
3 3
