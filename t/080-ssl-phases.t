# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 13);

# A fresh self-signed certificate for test.com in the server root's conf/,
# made before each block's nginx starts.
add_block_preprocessor(sub {
    my $block = shift;
    $block->set_value("post_setup_server_root", <<'_EOC_');
my $conf = "$ENV{TEST_NGINX_SERVER_ROOT}/conf";
system("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1"
       . " -nodes -days 2 -subj /CN=test.com -keyout $conf/test.key"
       . " -out $conf/test.crt 2>/dev/null") == 0
    or die "openssl req failed (status $?): is openssl installed?\n";
_EOC_
});

run_tests();

__DATA__

=== TEST 1: sleep and sha256 in ssl_certificate_by_lua: the handshake waits for them
--- http_config
    lua_shared_dict tls 1m;
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_certificate_by_lua_block {
            local async = require "resty.async"
            ngx.update_time()
            local t0 = ngx.now()
            local ok, err = async.sleep(0.05)
            ngx.update_time()
            local waited = ngx.now() - t0 >= 0.045
            local hex, herr = async.sha256("abc")
            local res = "slept " .. tostring(ok) .. " " .. tostring(err)
                        .. ", waited: " .. tostring(waited) .. ", sha256 "
                        .. tostring(hex) .. " " .. tostring(herr)
            ngx.shared.tls:set("cert", res)
            ngx.log(ngx.WARN, "ssl_certificate_by_lua: ", res)
        }
        location / {
            content_by_lua_block { ngx.say(ngx.shared.tls:get("cert")) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local sess, status, body =
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")
            ngx.say("handshake: ", sess ~= nil, " ", status)
            ngx.print(body)
        }
    }
--- response_body
handshake: true 200
slept true nil, waited: true, sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad nil
--- error_log eval
qr/\[warn\] .*ssl_certificate_by_lua: slept true nil, waited: true, sha256 ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad nil, context: ssl_certificate_by_lua\*/
--- no_error_log
[error]



=== TEST 2: a handshake waiting in ssl_certificate_by_lua leaves the worker free
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_certificate_by_lua_block {
            assert(require("resty.async").sleep(1))
        }
        location / {
            content_by_lua_block { ngx.say("hello over TLS") }
        }
    }
--- config
    location = /ping {
        content_by_lua_block { ngx.say("pong") }
    }
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            ngx.update_time()
            local t0 = ngx.now()
            local tls = ngx.thread.spawn(h.tls_get,
                "$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")
            ngx.sleep(0.1)  -- the handshake waits in Rust now
            ngx.update_time()
            local t1 = ngx.now()
            local status, body = h.get("/ping")
            ngx.update_time()
            -- a blocked worker would answer after the 1 s sleep
            ngx.say(status, " ", body, "ping fast: ", ngx.now() - t1 < 0.5)
            local _, sess, st, b = ngx.thread.wait(tls)
            ngx.update_time()
            ngx.say("handshake: ", sess ~= nil, " ", st, " ", b,
                    "after the sleep: ", ngx.now() - t0 >= 0.95)
        }
    }
--- response_body
200 pong
ping fast: true
handshake: true 200 hello over TLS
after the sleep: true
--- timeout: 10



=== TEST 3: ssl_session_fetch_by_lua that does not wait resumes the session
--- http_config
    lua_shared_dict tls 1m;
    ssl_session_store_by_lua_block {
        local sess = require "ngx.ssl.session"
        ngx.shared.tls:set(assert(sess.get_session_id()),
                           assert(sess.get_serialized_session()))
    }
    ssl_session_fetch_by_lua_block {
        local sess = require "ngx.ssl.session"
        local data = ngx.shared.tls:get(assert(sess.get_session_id()))
        if data then
            assert(sess.set_serialized_session(data))
        end
    }
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        # sessions by id, as ssl_session_fetch_by_lua needs
        ssl_protocols TLSv1.2;
        ssl_session_tickets off;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        location / {
            content_by_lua_block { ngx.say("reused: ", ngx.var.ssl_session_reused) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local path = "$TEST_NGINX_SERVER_ROOT/html/tls.sock"
            local sess, _, body = h.tls_get(path, "/")
            ngx.print("first: ", body)
            local _, _, body2 = h.tls_get(path, "/", sess)
            ngx.print("second: ", body2)
        }
    }
--- response_body
first: reused: .
second: reused: r



=== TEST 4: a call in ssl_session_fetch_by_lua raises (nginx cannot yield there): the session is not resumed
--- http_config
    lua_shared_dict tls 1m;
    ssl_session_store_by_lua_block {
        local sess = require "ngx.ssl.session"
        ngx.shared.tls:set(assert(sess.get_session_id()),
                           assert(sess.get_serialized_session()))
    }
    ssl_session_fetch_by_lua_block {
        local async = require "resty.async"
        local sess = require "ngx.ssl.session"
        ngx.log(ngx.WARN, "session_fetch: calling async.sleep")
        local ok, err = async.sleep(5)
        ngx.log(ngx.WARN, "session_fetch: after async.sleep: ", ok, " ", err)
        local data = ngx.shared.tls:get(assert(sess.get_session_id()))
        if data then
            assert(sess.set_serialized_session(data))
        end
    }
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_protocols TLSv1.2;
        ssl_session_tickets off;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        location / {
            content_by_lua_block { ngx.say("reused: ", ngx.var.ssl_session_reused) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local h = require "t_http"
            local path = "$TEST_NGINX_SERVER_ROOT/html/tls.sock"
            local before = async.stats().cancelled
            local sess, _, body = h.tls_get(path, "/")
            ngx.print("first: ", body)
            local sess2, status, body2 = h.tls_get(path, "/", sess)
            ngx.print("second: ", sess2 ~= nil, " ", status, " ", body2)
            -- the driver's sweeps cancel the abandoned call (a 5 s timer)
            local st
            for _ = 1, 100 do
                st = async.stats()
                if st.in_flight == 0 and st.waiting == 0 then break end
                ngx.sleep(0.02)
            end
            ngx.say("in_flight=", st.in_flight, " waiting=", st.waiting,
                    " timers=", st.timers, " cancelled=", st.cancelled - before)
        }
    }
--- response_body
first: reused: .
second: true 200 reused: .
in_flight=0 waiting=0 timers=0 cancelled=0
--- error_log
session_fetch: calling async.sleep
resty.async: sleep() cannot wait in the ssl_session_fetch phase
--- no_error_log
session_fetch: after async.sleep
[crit]



=== TEST 5: ssl_client_hello_by_lua that does not wait lets the handshake through
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_client_hello_by_lua_block {
            ngx.log(ngx.WARN, "client_hello: ran")
        }
        location / {
            content_by_lua_block { ngx.say("hello over TLS") }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local sess, status, body =
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")
            ngx.print("handshake: ", sess ~= nil, " ", status, " ", body)
        }
    }
--- response_body
handshake: true 200 hello over TLS
--- error_log
client_hello: ran
--- no_error_log
[error]



=== TEST 6: ngx.sleep in ssl_client_hello_by_lua: nginx drops the handshake (this build cannot wait there)
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_client_hello_by_lua_block {
            ngx.log(ngx.WARN, "client_hello: calling ngx.sleep")
            ngx.sleep(0.01)
            ngx.log(ngx.WARN, "client_hello: after ngx.sleep")
        }
        location / {
            content_by_lua_block { ngx.say("hello over TLS") }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            ngx.say(select(2,
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")))
        }
    }
--- response_body
handshake: handshake failed
--- error_log eval
[
    "client_hello: calling ngx.sleep",
    qr/\[info\] .*peer closed connection in SSL handshake while loading SSL client hello by lua/,
    qr/\[error\] .*peer closed connection in SSL handshake, client: .*request: "GET \/t /,
]
--- no_error_log
client_hello: after ngx.sleep



=== TEST 7: a call in ssl_client_hello_by_lua raises at once; uncaught, it fails the handshake
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_client_hello_by_lua_block {
            local async = require "resty.async"
            local ok, err = async.sleep(5)
            ngx.log(ngx.WARN, "client_hello: after async.sleep: ", ok, " ", err)
        }
        location / {
            content_by_lua_block { ngx.say("hello over TLS") }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local async = require "resty.async"
            local h = require "t_http"
            ngx.say(select(2,
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")))
            local st = async.stats()
            ngx.say("in_flight=", st.in_flight, " timers=", st.timers)
        }
    }
--- response_body
handshake: handshake failed
in_flight=0 timers=0
--- error_log eval
[
    qr/\[error\] .*lua entry thread aborted: runtime error: ssl_client_hello_by_lua:\d+: resty.async: sleep\(\) cannot wait in the ssl_client_hello phase/,
    qr/\[info\] .*SSL_do_handshake\(\) failed .*callback failed/,
    qr/\[error\] .*SSL_do_handshake\(\) failed .*request: "GET \/t /,
]
--- no_error_log
client_hello: after async.sleep



=== TEST 8: a call in ssl_client_hello_by_lua caught with pcall: the handshake goes on
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_client_hello_by_lua_block {
            local async = require "resty.async"
            local ok, err = pcall(async.sleep, 5)
            ngx.log(ngx.WARN, "client_hello: ", ok, " ", err)
        }
        location / {
            content_by_lua_block { ngx.say("hello over TLS") }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local sess, status, body =
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")
            ngx.print("handshake: ", sess ~= nil, " ", status, " ", body)
        }
    }
--- response_body
handshake: true 200 hello over TLS
--- error_log eval
qr/\[warn\] .*client_hello: false .*resty.async: sleep\(\) cannot wait in the ssl_client_hello phase/
--- no_error_log
[error]



=== TEST 9: the other built-ins and a module's functions wait in ssl_certificate_by_lua too
--- http_config
    lua_shared_dict tls 1m;
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_certificate_by_lua_block {
            local b = require "t_builtins"
            ngx.shared.tls:set("cert",
                b.try("$TEST_NGINX_SERVER_ROOT/html/cert.txt")
                .. " | " .. b.try_module())
        }
        location / {
            content_by_lua_block { ngx.say(ngx.shared.tls:get("cert")) }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local sess, status, body =
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")
            ngx.say("handshake: ", sess ~= nil, " ", status)
            ngx.print(body)
        }
    }
--- response_body
handshake: true 200
true ba7816bf 5 12345 timeout ba7816bf true cancelled | a 3 mlua slept 5 ms 2



=== TEST 10: every kind of function that may wait raises in ssl_client_hello_by_lua, even when it would be ready at once
--- http_config
    server {
        listen unix:$TEST_NGINX_SERVER_ROOT/html/tls.sock ssl;
        server_name test.com;
        ssl_certificate $TEST_NGINX_SERVER_ROOT/conf/test.crt;
        ssl_certificate_key $TEST_NGINX_SERVER_ROOT/conf/test.key;
        ssl_client_hello_by_lua_block {
            ngx.log(ngx.WARN, "client_hello: ", require("t_builtins").refused(
                "$TEST_NGINX_SERVER_ROOT/html/hello.txt"))
        }
        location / {
            content_by_lua_block { ngx.say("hello over TLS") }
        }
    }
--- config
    location = /t {
        content_by_lua_block {
            local h = require "t_http"
            local sess, status, body =
                h.tls_get("$TEST_NGINX_SERVER_ROOT/html/tls.sock", "/")
            ngx.print("handshake: ", sess ~= nil, " ", status, " ", body)
        }
    }
--- response_body
handshake: true 200 hello over TLS
--- error_log
client_hello: sleep/ssl_client_hello sha256/ssl_client_hello read_file/ssl_client_hello write_file/ssl_client_hello sleep/ssl_client_hello sha256/ssl_client_hello echo_after/ssl_client_hello block_ms/ssl_client_hello mlua_sleep/ssl_client_hello Counter:slow_incr/ssl_client_hello,
--- no_error_log
[error]
