# vim:set ft= ts=4 sw=4 et fdm=marker:
# The module in nginx: `make test` builds build/ and runs this file with
# prove (Test::Nginx::Socket::Lua, or resty-async's compatible runner).
use Test::Nginx::Socket::Lua;
use Cwd qw(cwd);

my $pwd = cwd();

master_on();
workers(1);

add_block_preprocessor(sub {
    my $block = shift;

    # build/ holds the module and resty-async's Lua side.
    $block->set_value("http_config", qq{
        lua_package_path "$pwd/build/?.lua;;";
        lua_package_cpath "$pwd/build/?.so;;";
    } . ($block->http_config // ''));
    $block->set_value("request", "GET /t") unless defined $block->request;
    $block->set_value("no_error_log", "[error]\n[alert]")
        unless defined $block->no_error_log;
});

plan tests => repeat_each() * (blocks() * 4);

run_tests();

__DATA__

=== TEST 1: an async function waits on a Rust timer
--- config
    location = /t {
        content_by_lua_block {
            local hello = require "hello"
            ngx.say(hello.slow_add(1, 2))
        }
    }
--- response_body
3



=== TEST 2: a blocking function runs on the pool
--- config
    location = /t {
        content_by_lua_block {
            local hello = require "hello"
            ngx.say(hello.count_primes(100))
        }
    }
--- response_body
25



=== TEST 3: an error comes back as nil and a string
--- config
    location = /t {
        content_by_lua_block {
            local hello = require "hello"
            local n, err = hello.count_primes(2000000)
            ngx.say(n, " ", err)
        }
    }
--- response_body
nil n must be at most 1000000, got 2000000



=== TEST 4: a call from an ngx.timer callback
--- config
    location = /t {
        content_by_lua_block {
            local hello = require "hello"
            local done = require("ngx.semaphore").new()
            local sum
            assert(ngx.timer.at(0, function()
                sum = hello.slow_add(20, 22)
                done:post()
            end))
            assert(done:wait(5))
            ngx.say(sum)
        }
    }
--- response_body
42



=== TEST 5: an object's async method
--- config
    location = /t {
        content_by_lua_block {
            local hello = require "hello"
            local c = hello.counter(41)
            ngx.say(c:incr_after(10))
            ngx.say(c:incr_after(0))
        }
    }
--- response_body
42
43
