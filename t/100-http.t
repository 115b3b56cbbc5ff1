# vim:set ft= ts=4 sw=4 et fdm=marker:
#
# resty_async_http (examples/http): hyper over resty_async::net streams,
# whose sockets are the waiting light thread's cosockets. The upstreams are
# server blocks of the same nginx: plain HTTP on the main port, TLS on
# TEST_NGINX_TLS_PORT (certificates made by openssl when this file loads),
# HTTP/2 on a unix socket.
use lib '.';
use t::TestAsync;
use File::Temp qw(tempdir);

# TLS port: one above the main port unless set.
$ENV{TEST_NGINX_TLS_PORT} ||= (server_port() + 1);
# A TLS port whose server has only the trusted certificate for "localhost".
$ENV{TEST_NGINX_TLS_ONE_PORT} ||= (server_port() + 3);

# A CA, a certificate it signed for "localhost", and a self-signed one.
our $Certs = tempdir("resty-async-certs-XXXXXX", TMPDIR => 1, CLEANUP => 1);
$ENV{TEST_NGINX_CERTS} = $Certs;
{
    my @ec = ('-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1',
              '-nodes');
    open my $ext, '>', "$Certs/san.ext" or die $!;
    print $ext "subjectAltName=DNS:localhost\n";
    close $ext;
    for my $cmd (
        [qw(req -x509 -days 2), @ec, '-keyout', "$Certs/ca.key",
         '-out', "$Certs/ca.crt", '-subj', '/CN=resty-async test CA'],
        [qw(req), @ec, '-keyout', "$Certs/server.key",
         '-out', "$Certs/server.csr", '-subj', '/CN=localhost'],
        [qw(x509 -req -days 2), '-in', "$Certs/server.csr",
         '-CA', "$Certs/ca.crt", '-CAkey', "$Certs/ca.key", '-CAcreateserial',
         '-out', "$Certs/server.crt", '-extfile', "$Certs/san.ext"],
        [qw(req -x509 -days 2), @ec, '-keyout', "$Certs/other.key",
         '-out', "$Certs/other.crt", '-subj', '/CN=untrusted'],
    ) {
        my $line = join ' ', map { "'$_'" } 'openssl', @$cmd;
        system("$line >/dev/null 2>&1") == 0 or die "failed: $line\n";
    }
}

# A DNS server of this file's, for nginx's `resolver`: every A query gets
# 127.0.0.1, any other type an empty answer; a name that begins with
# "slow" gets it after 0.8 s. It runs in a child process from here until
# the file's tests end.
$ENV{TEST_NGINX_DNS_PORT} ||= (server_port() + 2);
our $DnsPid;
{
    use IO::Socket::INET;
    use POSIX ();
    my $dns = IO::Socket::INET->new(LocalAddr => '127.0.0.1',
                                    LocalPort => $ENV{TEST_NGINX_DNS_PORT},
                                    Proto => 'udp', ReuseAddr => 1)
        or die "cannot listen on udp port $ENV{TEST_NGINX_DNS_PORT}: $!\n";
    my $parent = $$;
    $DnsPid = fork() // die "fork: $!\n";
    if ($DnsPid == 0) {
        $SIG{CHLD} = 'IGNORE';
        while (1) {
            my $q = '';
            my $peer = $dns->recv($q, 512);
            next unless defined $peer && length($q) > 12;
            my $o = 12;  # past the header: the question's name, then type
            while ($o < length($q)) {
                my $n = ord(substr($q, $o, 1));
                $o += $n + 1;
                last if $n == 0;
            }
            next if $o + 4 > length($q);
            my $qtype = unpack('n', substr($q, $o, 2));
            my $answer = $qtype == 1
                ? pack('nnnNnC4', 0xc00c, 1, 1, 60, 4, 127, 0, 0, 1) : '';
            my $reply = pack('nnnnnn', unpack('n', $q), 0x8180, 1,
                             $answer ne '' ? 1 : 0, 0, 0)
                        . substr($q, 12, $o + 4 - 12) . $answer;
            if (substr($q, 13, 4) eq 'slow') {
                next if fork() // 1;  # the answer comes from a child
                select(undef, undef, undef, 0.8);
                $dns->send($reply, 0, $peer);
                POSIX::_exit(0);
            }
            $dns->send($reply, 0, $peer);
        }
        POSIX::_exit(0);
    }
    close $dns;
    # (in the test process only: not in nginx or other forked children;
    # `local $?` keeps the test's exit status)
    eval "END { if (\$\$ == $parent) { local \$?; kill 'KILL', \$DnsPid; "
         . "waitpid(\$DnsPid, 0) } }";
}

worker_connections(1024);

our $Servers = <<'_EOC_';
    lua_ssl_trusted_certificate $TEST_NGINX_CERTS/ca.crt;
    lua_ssl_verify_depth 2;
    lua_check_client_abort on;
    lua_shared_dict seen 1m;

    # TLS: "localhost" gets the certificate the CA signed; no name (an IP
    # address) or another one gets the self-signed one.
    server {
        listen 127.0.0.1:$TEST_NGINX_TLS_PORT ssl default_server;
        ssl_certificate $TEST_NGINX_CERTS/other.crt;
        ssl_certificate_key $TEST_NGINX_CERTS/other.key;
        location / { return 200 "untrusted $connection_requests\n"; }
    }
    server {
        listen 127.0.0.1:$TEST_NGINX_TLS_PORT ssl;
        server_name localhost;
        ssl_certificate $TEST_NGINX_CERTS/server.crt;
        ssl_certificate_key $TEST_NGINX_CERTS/server.key;
        location / { return 200 "tls $connection_requests\n"; }
    }
    # the trusted certificate for "localhost", whatever name is asked for
    server {
        listen 127.0.0.1:$TEST_NGINX_TLS_ONE_PORT ssl;
        ssl_certificate $TEST_NGINX_CERTS/server.crt;
        ssl_certificate_key $TEST_NGINX_CERTS/server.key;
        location / { return 200 "localhost's certificate\n"; }
    }
    # HTTP/2 with prior knowledge
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/h2.sock http2;
        location / { return 200 "h2 $server_protocol\n"; }
        location = /slow {
            content_by_lua_block { ngx.sleep(1) ngx.say("late") }
        }
    }
_EOC_

our $Upstream = <<'_EOC_';
    location = /up {
        add_header X-Test yes;
        return 200 "hello $connection_requests\n";
    }
    location = /echo {
        content_by_lua_block {
            ngx.req.read_body()
            local two = ngx.req.get_headers()["x-two"]
            if type(two) == "table" then
                two = table.concat(two, ", ")
            end
            ngx.say(ngx.req.get_method(), " ", ngx.var.http_x_one, " ",
                    two, " ", ngx.req.get_body_data())
        }
    }
    location = /twice {
        add_header X-Twice 1;
        add_header X-Twice 2;
        return 200 "twice\n";
    }
    location = /delay {
        content_by_lua_block {
            ngx.sleep(tonumber(ngx.var.arg_s))
            ngx.say("late")
        }
    }
    # tells, through the shared dict, when its client went away
    location = /hold {
        content_by_lua_block {
            local key = ngx.var.arg_key
            ngx.on_abort(function()
                ngx.shared.seen:set(key, "closed")
                ngx.log(ngx.WARN, "upstream saw ", key, " closed")
                ngx.exit(499)
            end)
            ngx.shared.seen:set(key, "open")
            ngx.sleep(5)
            ngx.say("held")
        }
    }
    location = /big {
        content_by_lua_block {
            local chunk = string.rep("0123456789abcdef", 4096)  -- 64 KB
            for i = 1, 64 do
                ngx.print(chunk)
                ngx.flush(true)
            end
        }
    }
    # 4 MB with a Content-Length
    location = /big-length {
        content_by_lua_block {
            ngx.header["Content-Length"] = 4194304
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
_EOC_

add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value("http_config", $Servers . ($block->http_config // ''));
    $block->set_value("config", ($block->config // '') . $Upstream);
});

plan tests => repeat_each() * (blocks() * 7 + 14);

run_tests();

__DATA__

=== TEST 1: GET: status, headers with lowercase names, body
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/up")
            if not res then
                return ngx.say("failed: ", err)
            end
            ngx.print(res.status, " ", res.headers["x-test"], " ",
                      res.headers["content-type"], " ", res.body)
        }
    }
--- response_body
200 yes text/plain hello 1



=== TEST 2: POST with a body and request headers
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/echo", {
                method = "POST",
                body = "a body",
                headers = { ["X-One"] = "1", ["x-two"] = { "2a", "2b" } },
            })
            ngx.print(res and res.body or err)
        }
    }
--- response_body
POST 1 2a, 2b a body



=== TEST 3: keepalive: later calls reuse the connection; keepalive = false closes it
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/up"
            for _, ka in ipairs{ true, true, false, true } do
                local res, err = http.fetch(url, { keepalive = ka })
                ngx.print(res and res.body or err)
            end
            -- Lua code with the same pool name takes it too
            local sock = ngx.socket.tcp()
            assert(sock:connect("127.0.0.1", ngx.var.server_port))
            ngx.say("reused by a cosocket: ", sock:getreusedtimes())
            sock:close()
        }
    }
--- response_body
hello 1
hello 2
hello 3
hello 1
reused by a cosocket: 1



=== TEST 4: https, verified against lua_ssl_trusted_certificate (a host name: getaddrinfo on the pool)
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "https://localhost:" .. $TEST_NGINX_TLS_PORT .. "/"
            for i = 1, 2 do
                local res, err = http.fetch(url)
                ngx.print(res and res.body or err)
            end
        }
    }
--- response_body
tls 1
tls 2



=== TEST 5: a certificate that does not verify: an error naming the cause; ssl_verify = false takes it
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "https://127.0.0.1:" .. $TEST_NGINX_TLS_PORT .. "/"
            local res, err = http.fetch(url, { server_name = "untrusted.test" })
            ngx.say(res and res.body or err)
            res, err = http.fetch(url, { ssl_verify = false })
            ngx.print(res and res.body or err)
        }
    }
--- response_body_like chop
^.*connect to 127\.0\.0\.1:\d+ failed: TLS handshake failed: 18: self[- ]signed certificate
untrusted 1$
--- error_log
certificate verify error
--- no_error_log
[alert]



=== TEST 6: a connection made with ssl_verify = false never serves a verified request
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "https://localhost:" .. $TEST_NGINX_TLS_PORT .. "/"
            local res, err = http.fetch(url, { ssl_verify = false })
            ngx.print(res and res.body or err)
            res, err = http.fetch(url, { ssl_verify = false })
            ngx.print(res and res.body or err)
            -- verified: a connection of its own
            res, err = http.fetch(url)
            ngx.print(res and res.body or err)
            -- and the untrusted server's unverified connection is not reused
            -- for a verified call either: that one fails its handshake
            url = "https://127.0.0.1:" .. $TEST_NGINX_TLS_PORT .. "/"
            local name = "untrusted.test"
            res, err = http.fetch(url, { ssl_verify = false, server_name = name })
            ngx.print(res and res.body or err)
            res, err = http.fetch(url, { server_name = name })
            ngx.say(res and res.body or err:match("self.signed certificate"))
        }
    }
--- response_body
tls 1
tls 2
tls 1
untrusted 1
self-signed certificate
--- error_log
certificate verify error
--- no_error_log
[alert]



=== TEST 7: a refused connection and malformed URLs are error strings
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            for _, url in ipairs{ "http://127.0.0.1:1/", "ftp://x/", "http://",
                                  "not a url", "http://[zz]:80/", "//x/y" } do
                local res, err = http.fetch(url)
                ngx.say(url, ": ", res and res.status or err)
            end
            local ok, err = pcall(http.fetch, {})
            ngx.say("table: ", ok, " ", type(err))
            local res
            res, err = http.fetch("http://127.0.0.1:1/", { method = 3 })
            ngx.say(res, " ", err)
        }
    }
--- response_body_like
http://127.0.0.1:1/: .*connect to 127\.0\.0\.1:1 failed: connection refused
ftp://x/: unsupported scheme "ftp" in "ftp://x/" \(http or https\)
http://: bad url "http://": .+
not a url: bad url "not a url": .+
http://\[zz\]:80/: bad .+
//x/y: bad url "//x/y": http:// or https:// expected
table: false string
nil opts.method must be a string, not number
--- error_log
Connection refused
--- no_error_log
[alert]



=== TEST 8: 200 concurrent fetches in one worker overlap
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/delay?s=0.1"
            ngx.update_time()
            local t0 = ngx.now()
            local threads = {}
            for i = 1, 200 do
                threads[i] = ngx.thread.spawn(http.fetch, url)
            end
            local ok = 0
            for i = 1, 200 do
                local _, res = ngx.thread.wait(threads[i])
                if res and res.body == "late\n" then
                    ok = ok + 1
                end
            end
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.say(ok, " ok; overlapped: ", took < 2, " (", took, " s)")
        }
    }
--- response_body_like chomp
^200 ok; overlapped: true
--- timeout: 10



=== TEST 9: with_timeout against a slow upstream: nil, "timeout" at once, nothing left
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/delay?s=1"
            ngx.update_time()
            local t0 = ngx.now()
            local res, err = async.with_timeout(0.1, http.fetch, url)
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.say(res, " ", err, " ", took >= 0.09 and took < 0.3)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams,
                    " waiting=", st.waiting)
        }
    }
--- response_body
nil timeout true
in_flight=0 streams=0 waiting=0
--- error_log
lua tcp socket read timed out
--- no_error_log
[alert]



=== TEST 10: a read cut to the call's deadline times out as the call: "timeout"
nginx's timers and ngx.now() read two clocks, each in whole milliseconds.
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/delay?s=1"
            local threads = {}
            for i = 1, 60 do
                threads[i] = ngx.thread.spawn(async.with_timeout,
                                              0.05 + i * 0.0037, http.fetch,
                                              url)
            end
            local other = {}
            for i = 1, 60 do
                local _, res, err = ngx.thread.wait(threads[i])
                if err ~= "timeout" then
                    other[#other + 1] = tostring(res) .. " " .. tostring(err)
                end
            end
            ngx.say(#other, " ", table.concat(other, "; "))
        }
    }
--- response_body
0 
--- timeout: 5
--- error_log
lua tcp socket read timed out
--- no_error_log
[alert]



=== TEST 11: a 4 MB chunked body arrives intact
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/big")
            if not res then
                return ngx.say(err)
            end
            local want = string.rep(string.rep("0123456789abcdef", 4096), 64)
            ngx.say(res.headers["transfer-encoding"], " ", #res.body, " ",
                    res.body == want)
        }
    }
--- response_body
chunked 4194304 true
--- timeout: 10



=== TEST 12: in an ngx.timer.at callback
--- config
    location = /t {
        content_by_lua_block {
            local function fetch(premature, url)
                local http = require "resty_async_http"
                local res, err = http.fetch(url)
                ngx.shared.seen:set("timer", res and res.body or err)
            end
            assert(ngx.timer.at(0, fetch, "http://127.0.0.1:"
                                .. ngx.var.server_port .. "/up"))
            for _ = 1, 100 do
                local v = ngx.shared.seen:get("timer")
                if v then
                    return ngx.print("timer: ", v)
                end
                ngx.sleep(0.01)
            end
            ngx.say("no result")
        }
    }
--- response_body_like
^timer: hello \d+



=== TEST 13: in rewrite_by_lua and access_by_lua
--- config
    location = /t {
        rewrite_by_lua_block {
            local http = require "resty_async_http"
            local res = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/up")
            ngx.ctx.rewrite = res.status
        }
        access_by_lua_block {
            local http = require "resty_async_http"
            local res = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/echo",
                                   { method = "PUT", body = "b" })
            ngx.ctx.access = res.body
        }
        content_by_lua_block {
            ngx.print(ngx.ctx.rewrite, " ", ngx.ctx.access)
        }
    }
--- response_body
200 PUT nil nil b



=== TEST 14: a client abort mid-fetch closes the upstream connection
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/hold?key=abort")
            ngx.log(ngx.ERR, "must not get here")
        }
    }
--- abort
--- timeout: 0.3
--- ignore_response
--- wait: 0.5
--- error_log
upstream saw abort closed
--- no_error_log
must not get here
[alert]



=== TEST 15: killing the waiting light thread closes its socket at once
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/hold?key=kill"
            local th = ngx.thread.spawn(http.fetch, url)
            repeat
                ngx.sleep(0.01)
            until ngx.shared.seen:get("kill") == "open"
            ngx.say("waiting=", require("resty.async").stats().waiting)
            ngx.thread.kill(th)
            for _ = 1, 50 do
                if ngx.shared.seen:get("kill") == "closed" then
                    break
                end
                ngx.sleep(0.01)
            end
            ngx.say("upstream: ", ngx.shared.seen:get("kill"))
            -- two sweeps of the driver see it blocked in the same socket op,
            -- and cancel the task
            ngx.sleep(0.4)
            local st = require("resty.async").stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams)
        }
    }
--- response_body
waiting=1
upstream: closed
in_flight=0 streams=0
--- error_log
upstream saw kill closed



=== TEST 16: an IP address starts no thread and no epoll instance in the worker
--- config
    location = /t {
        content_by_lua_block {
            -- (the worker's own /proc entry: `ls` runs in a child process)
            local pid = ngx.worker.pid()
            local function counts()
                local threads
                for line in io.lines("/proc/" .. pid .. "/status") do
                    threads = threads or line:match("^Threads:%s*(%d+)")
                end
                local epolls = 0
                local p = io.popen("ls -l /proc/" .. pid .. "/fd/ 2>/dev/null")
                for line in p:lines() do
                    if line:find("eventpoll", 1, true) then
                        epolls = epolls + 1
                    end
                end
                p:close()
                return tonumber(threads), epolls
            end
            local t0, e0 = counts()
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/up")
            local t1, e1 = counts()
            ngx.say(res and res.status or err, ": threads ", t0, " -> ", t1,
                    ", epoll instances ", e0, " -> ", e1)
        }
    }
--- response_body_like
^200: threads (\d+) -> \1, epoll instances (\d+) -> \2$



=== TEST 17: HTTP/2 with prior knowledge (hyper's http2 with resty-async as its executor and timer), over a unix socket
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local opts = { version = 2, unix_socket = "$TEST_NGINX_SERVER_ROOT/html/h2.sock" }
            for i = 1, 2 do
                local res, err = http.fetch("http://localhost/", opts)
                ngx.print(res and res.status .. " " .. res.body or err)
            end
            local st = require("resty.async").stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams)
        }
    }
--- response_body
200 h2 HTTP/2.0
200 h2 HTTP/2.0
in_flight=0 streams=0



=== TEST 18: async.spawn: the socket ops wait for task:wait(), in the light thread that waits
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local base = "http://127.0.0.1:" .. ngx.var.server_port
            local a = async.spawn(http.fetch, base .. "/up")
            local b = async.spawn(http.fetch, base .. "/echo", { method = "PATCH" })
            local th = ngx.thread.spawn(function() return b:wait() end)
            local ra = a:wait()
            local _, rb = ngx.thread.wait(th)
            ngx.print(ra.status, " ", rb.body)
            -- a task handle dropped unawaited leaves nothing
            async.spawn(http.fetch, base .. "/up")
            collectgarbage()
            collectgarbage()
            ngx.sleep(0.2)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams)
        }
    }
--- response_body
200 PATCH nil nil nil
in_flight=0 streams=0



=== TEST 19: with_timeout on an HTTP/2 stream (reads in a reader light thread): nil, "timeout", silently
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local opts = { version = 2, unix_socket = "$TEST_NGINX_SERVER_ROOT/html/h2.sock" }
            ngx.update_time()
            local t0 = ngx.now()
            local res, err = async.with_timeout(0.1, http.fetch, "http://localhost/slow", opts)
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.say(res, " ", err, " ", took >= 0.09 and took < 0.3)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams,
                    " waiting=", st.waiting)
        }
    }
--- response_body
nil timeout true
in_flight=0 streams=0 waiting=0



=== TEST 20: the keepalive pool serves later requests of the worker
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/up")
            ngx.print(res and res.body or err)
        }
    }
--- request eval
["GET /t", "GET /t", "GET /t"]
--- response_body eval
["hello 1\n", "hello 2\n", "hello 3\n"]



=== TEST 21: lua_code_cache off: each request's Lua VM has its own runtime and sockets
--- config
    location = /t {
        lua_code_cache off;
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/up")
            ngx.print(res and res.status .. " " .. res.body or err)
        }
    }
--- request eval
["GET /t", "GET /t"]
--- response_body_like eval
[qr/^200 hello \d+\n$/, qr/^200 hello \d+\n$/]
--- no_error_log eval
["[error]", qr/\[alert\](?!.* lua_code_cache is off)/]



=== TEST 22: a stream opened after a wait in the runtime: the waiting caller carries out its ops
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local fx = require "resty_async_fixtures"
            local addr = "127.0.0.1:" .. ngx.var.server_port
            local function status(r, err)
                return r and r:match("^HTTP/1%.%d (%d+)") or err
            end
            -- the caller waits in the runtime, then is woken for the ops
            ngx.say("call: ", status(fx.get_after(addr, "/up", 20)))
            -- a handle waited for at once, and one waited for after its
            -- ops were queued
            local a = async.spawn(fx.get_after, addr, "/up", 50)
            local b = async.spawn(fx.get_after, addr, "/up", 10)
            ngx.say("a: ", status(a:wait()))
            ngx.sleep(0.1)
            ngx.say("b: ", status(b:wait()))
            -- a timeout longer than one semaphore wait of ngx_lua's
            ngx.say("30 days: ", status(async.with_timeout(30 * 86400,
                                                           fx.get_after, addr,
                                                           "/up", 10)))
            -- a timeout while the caller carries out the ops
            ngx.say("timeout: ", select(2, async.with_timeout(0.1, fx.get_after,
                                                             addr, "/delay?s=1", 10)))
            ngx.sleep(0.05)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams,
                    " waiting=", st.waiting)
        }
    }
--- response_body
call: 200
a: 200
b: 200
30 days: 200
timeout: timeout
in_flight=0 streams=0 waiting=0



=== TEST 23: woken for socket ops inside a table.sort comparator: a clear error, nothing left
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local fx = require "resty_async_fixtures"
            local addr = "127.0.0.1:" .. ngx.var.server_port
            local t = async.spawn(fx.get_after, addr, "/up", 1)
            ngx.sleep(0.05)  -- its ops are queued: waiting means carrying them out
            local ok, err = pcall(table.sort, { 2, 1 }, function(x, y)
                t:wait()
                return x < y
            end)
            ngx.say(ok, " ", err)
            ngx.sleep(0.05)
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams)
        }
    }
--- response_body_like
^false .*cannot wait inside a C function such as a table.sort comparator.*
in_flight=0 streams=0



=== TEST 24: a repeated response header is joined with ", "
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/twice")
            if not res then
                return ngx.say("failed: ", err)
            end
            ngx.print(res.status, " [", res.headers["x-twice"], "] ", res.body)
        }
    }
--- response_body
200 [1, 2] twice



=== TEST 25: version = 2 takes http:// only: https is refused with a message
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "https://localhost:$TEST_NGINX_TLS_PORT/"
            ngx.say(http.fetch(url, { version = 2 }))
            ngx.say(http.fetch(url, { version = 3 }))
            local res = http.fetch(url, { version = 1.1 })
            ngx.print("1.1: ", res and res.body)
        }
    }
--- response_body
nilopts.version 2 needs http:// (cosockets do not negotiate ALPN)
nilopts.version must be 1.1 or 2
1.1: tls 1



=== TEST 26: configure{ read_timeout } bounds each read: a slow upstream fails the fetch
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            assert(async.configure{ read_timeout = 0.1 })
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/delay?s=1"
            ngx.update_time()
            local t0 = ngx.now()
            local res, err = http.fetch(url)
            ngx.update_time()
            local took = ngx.now() - t0
            ngx.say(res, " ", err, " ", took >= 0.09 and took < 0.5)
            ngx.say("streams=", async.stats().streams)
        }
    }
--- response_body_like
^nil connection error: read from 127\.0\.0\.1:\d+ failed: timed out true
streams=0$
--- error_log
lua tcp socket read timed out
--- no_error_log
[alert]



=== TEST 27: a host name goes to the location's resolver when it has one
--- config
    location = /t {
        resolver 127.0.0.1:$TEST_NGINX_DNS_PORT ipv6=off;
        resolver_timeout 2s;
        content_by_lua_block {
            local http = require "resty_async_http"
            -- a name only this file's DNS server knows
            local url = "http://resolved.test:" .. ngx.var.server_port .. "/up"
            local res, err = http.fetch(url)
            ngx.print(res and res.status, " ", res and res.body or err)
        }
    }
--- response_body
200 hello 1



=== TEST 28: a slow answer of the resolver: the caller waits for it
The driver looks for killed callers every 0.1 s; a caller whose host
nginx resolves must not look like one.
--- config
    location = /t {
        resolver 127.0.0.1:$TEST_NGINX_DNS_PORT ipv6=off;
        resolver_timeout 2s;
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "http://slow.test:" .. ngx.var.server_port .. "/up"
            local t0 = ngx.now()
            local res, err = http.fetch(url)
            ngx.say(res and res.status, " ", res and res.body or err)
            ngx.say(ngx.now() - t0 >= 0.7)
        }
    }
--- response_body
200 hello 1

true
--- timeout: 5



=== TEST 29: without a resolver, a host name goes to getaddrinfo on the pool (its error)
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "http://resolved.test:" .. ngx.var.server_port .. "/up"
            local res, err = http.fetch(url)
            ngx.say(res, " ", err)
        }
    }
--- response_body_like chomp
^nil .*cannot resolve "resolved\.test"



=== TEST 30: https to an IP address: refused while verifying (nginx checks names only), taken with a server name or ssl_verify = false
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "https://127.0.0.1:$TEST_NGINX_TLS_ONE_PORT/"
            ngx.say(http.fetch(url))
            local res, err = http.fetch(url, { ssl_verify = false })
            ngx.print("not verified: ", res and res.body or err)
            res, err = http.fetch(url, { server_name = "localhost" })
            ngx.print("localhost: ", res and res.body or err)
            res, err = http.fetch(url, { server_name = "other.test" })
            ngx.say("other.test: ", res and res.body or err)
            res, err = http.fetch("https://[::1]:$TEST_NGINX_TLS_ONE_PORT/")
            ngx.say(res and res.body or err)
        }
    }
--- response_body_like
^nilcannot verify the TLS certificate of 127\.0\.0\.1: nginx checks host names, not IP addresses \(connect by name, give a server name, or turn verification off\)
not verified: localhost's certificate
localhost: localhost's certificate
other.test: .*certificate host mismatch.*
cannot verify the TLS certificate of \[::1\]: nginx checks host names, not IP addresses .*
--- error_log
lua ssl certificate does not match host "other.test"
--- no_error_log
[alert]



=== TEST 31: a port out of range, zero or not a number is a bad url, not the default port
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            for _, url in ipairs{ "http://127.0.0.1:99999/x", "http://127.0.0.1:abc/x",
                                  "http://127.0.0.1:0/x", "https://localhost:65536/" } do
                local res, err = http.fetch(url)
                ngx.say(res and res.status or err)
            end
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/up")
            ngx.print(res and res.body or err)
        }
    }
--- response_body
bad url "http://127.0.0.1:99999/x": bad port
bad url "http://127.0.0.1:abc/x": bad port
bad url "http://127.0.0.1:0/x": bad port
bad url "https://localhost:65536/": bad port
hello 1



=== TEST 32: max_body: a larger body, announced or chunked, fails at once and its connection closes
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local base = "http://127.0.0.1:" .. ngx.var.server_port
            for _, path in ipairs{ "/big-length", "/big", "/endless" } do
                ngx.say(path, ": ", select(2, http.fetch(base .. path, { max_body = 1000000 })))
            end
            -- the failed ones left no connection in the pool
            local res, err = http.fetch(base .. "/up")
            ngx.print(res and res.body or err)
            res, err = http.fetch(base .. "/big", { max_body = 4194304 })
            ngx.say("exactly: ", res and #res.body or err)
            ngx.say(http.fetch(base .. "/up", { max_body = -1 }))
        }
    }
--- response_body
/big-length: response body larger than 1000000 bytes
/big: response body larger than 1000000 bytes
/endless: response body larger than 1000000 bytes
hello 1
exactly: 4194304
nilopts.max_body must be a whole number of bytes, 0 or more
--- timeout: 10



=== TEST 33: an endless body stops at the default max_body, 64 MiB
--- config
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://127.0.0.1:" .. ngx.var.server_port .. "/endless")
            ngx.say(res and #res.body or err)
        }
    }
--- response_body
response body larger than 67108864 bytes
--- timeout: 20



=== TEST 34: a request body larger than the stream's send window (256 KiB) goes out in full
--- config
    location = /len {
        client_max_body_size 8m;
        client_body_buffer_size 8m;
        content_by_lua_block {
            ngx.req.read_body()
            ngx.say(ngx.req.get_method(), " ", #(ngx.req.get_body_data() or ""))
        }
    }
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/len"
            for _, n in ipairs{ 300 * 1024, 4 * 1024 * 1024 } do
                local res, err = async.with_timeout(5, http.fetch, url, {
                    method = "POST", body = string.rep("x", n),
                })
                ngx.print(res and res.body or err .. "\n")
            end
        }
    }
--- response_body
POST 307200
POST 4194304
--- timeout: 15



=== TEST 35: userinfo in the URL is not sent as part of Host or :authority
--- config
    location = /host {
        content_by_lua_block { ngx.say(ngx.var.http_host) }
    }
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local res, err = http.fetch("http://user:secret@127.0.0.1:" .. ngx.var.server_port .. "/host")
            ngx.print(res and res.body or err .. "\n")
            res, err = http.fetch("http://user:secret@localhost/", {
                version = 2, unix_socket = "$TEST_NGINX_SERVER_ROOT/html/h2host.sock",
            })
            ngx.print(res and res.body or err .. "\n")
        }
    }
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/h2host.sock http2;
        location / { return 200 "h2 $http_host\n"; }
    }
--- response_body_like chomp
^127\.0\.0\.1:\d+\nh2 localhost\n$



=== TEST 36: a request body over client_max_body_size: nginx's 413, which closes the connection once it has read the body
--- config
    location = /limited {
        client_max_body_size 1k;
        return 200 "not reached\n";
    }
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/limited"
            for _, n in ipairs{ 300 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024 } do
                local res, err = async.with_timeout(5, http.fetch, url, {
                    method = "POST", body = string.rep("x", n),
                })
                ngx.say(res and res.status .. " " .. res.headers.connection
                        or err)
            end
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams,
                    " waiting=", st.waiting)
        }
    }
--- response_body
413 close
413 close
413 close
in_flight=0 streams=0 waiting=0
--- error_log
client intended to send too large body: 16777216 bytes
--- no_error_log
[alert]
--- timeout: 15



=== TEST 37: a server that answers 413 and closes the connection at once, the body unread: the response, or the error of the send
--- config
    location = /slam {
        lingering_close off;
        content_by_lua_block {
            local sock = assert(ngx.req.socket(true))
            sock:send("HTTP/1.1 413 Payload Too Large\r\n"
                      .. "Content-Length: 10\r\nConnection: close\r\n\r\n"
                      .. "too large\n")
        }
    }
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/slam"
            local res, err = async.with_timeout(5, http.fetch, url, {
                method = "POST", body = string.rep("x", 16 * 1024 * 1024),
            })
            ngx.print(res and res.status .. " " .. res.body or err .. "\n")
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams,
                    " waiting=", st.waiting)
        }
    }
--- response_body_like chomp
^(413 too large|[^\n]*send to 127\.0\.0\.1:\d+ failed: (connection reset by peer|broken pipe)[^\n]*)\nin_flight=0 streams=0 waiting=0\n$
--- error_log eval
qr/send\(\) failed \((104: Connection reset by peer|32: Broken pipe)\)/
--- no_error_log
[alert]
--- timeout: 15



=== TEST 38: a server that answers at once, without reading the request body, and keeps the connection: the response
nginx reads and discards the body after the answer.
--- config
    location = /early {
        content_by_lua_block { ngx.say("early") }
    }
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/early"
            for _, n in ipairs{ 300 * 1024, 4 * 1024 * 1024, 16 * 1024 * 1024 } do
                local res, err = async.with_timeout(5, http.fetch, url, {
                    method = "POST", body = string.rep("x", n),
                })
                ngx.print(res and res.status .. " " .. res.body or err .. "\n")
            end
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " streams=", st.streams,
                    " waiting=", st.waiting)
        }
    }
--- response_body
200 early
200 early
200 early
in_flight=0 streams=0 waiting=0
--- timeout: 15



=== TEST 39: nginx's keepalive pool keeps 30 idle connections per pool name by default (keepalive_pool)
--- config
    location = /held {
        content_by_lua_block {
            ngx.sleep(0.2)
            ngx.say(ngx.var.connection_requests)
        }
    }
    location = /t {
        content_by_lua_block {
            local http = require "resty_async_http"
            local url = "http://127.0.0.1:" .. ngx.var.server_port .. "/held"
            -- 40 fetches at once: each needs a connection of its own
            local function reused()
                local th, n = {}, 0
                for i = 1, 40 do
                    th[i] = ngx.thread.spawn(http.fetch, url)
                end
                for i = 1, 40 do
                    local _, res, err = ngx.thread.wait(th[i])
                    assert(res, err)
                    if tonumber(res.body) > 1 then
                        n = n + 1
                    end
                end
                return n
            end
            ngx.say("first 40, reused: ", reused())
            ngx.say("next 40, reused: ", reused())
        }
    }
--- response_body
first 40, reused: 0
next 40, reused: 30
