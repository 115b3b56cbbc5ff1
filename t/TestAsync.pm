package t::TestAsync;

use Test::Nginx::Socket::Lua -Base;
use Cwd qw(cwd);

my $pwd = cwd();

# Where the runtime makes its private socket directories during the tests;
# `make test` checks that it is empty afterwards.
our $Base = $ENV{TEST_NGINX_ASYNC_BASE} || "/tmp/resty-async-test";
mkdir $Base unless -d $Base;

our $HttpConfig = qq{
    lua_package_path "$pwd/lualib/?.lua;$pwd/t/lib/?.lua;;";
    lua_package_cpath "$pwd/build/?.so;;";

    init_by_lua_block {
        local async = require "resty.async"
        assert(async.configure{ base_dir = "$Base" })
        -- INIT_BY_LUA
    }
};

master_on();
workers(1);
# Blocks send up to 200 requests to their own server at once: two
# connections each (Test::Nginx's default is 64 in all).
worker_connections(1024);
no_long_string();

add_block_preprocessor(sub {
    my $block = shift;

    # A block's own init_by_lua code (there can be one init_by_lua_block),
    # as lua-resty-core's t/TestCore.pm does.
    my $init = $block->init_by_lua_block // '';
    my $http_config = $HttpConfig;
    $http_config =~ s/-- INIT_BY_LUA/$init/;
    $block->set_value("http_config", $http_config . ($block->http_config // ''));

    if (!defined $block->request) {
        $block->set_value("request", "GET /t");
    }

    if (!defined $block->no_error_log && !defined $block->error_log) {
        $block->set_value("no_error_log", "[error]\n[alert]\nexited on signal");
    }
});

1;
