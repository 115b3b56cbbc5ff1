# vim:set ft= ts=4 sw=4 et fdm=marker:
use lib '.';
use t::TestAsync;

plan tests => repeat_each() * (blocks() * 7 + 1);

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
