package Test::Nginx::Socket::Lua;

# Compatible subset of openresty/test-nginx's Test::Nginx::Socket::Lua, for
# running t/*.t suites when the real Test::Nginx is not installed:
#
#     prove -I t/compat -r t
#
# Use it exactly like the real one, e.g. in t/TestFoo.pm:
#
#     package t::TestFoo;
#     use Test::Nginx::Socket::Lua -Base;
#
# Implemented in Test::Nginx::Util (settings, nginx.conf, nginx life cycle)
# and Test::Nginx::Socket (HTTP client and checks).  See README.md here.

use strict;
use warnings;

use Test::Nginx::Socket -base;

our $VERSION = '0.29-compat';

# like the real module: TEST_NGINX_INIT_BY_LUA is injected into init_by_lua
my $code = $ENV{TEST_NGINX_INIT_BY_LUA};

if ($code) {
    $code =~ s/\\/\\\\/g;
    $code =~ s/['"]/\\$&/g;

    Test::Nginx::Socket::set_http_config_filter(sub {
        my $config = shift;
        return $config if $config =~ /init_by_lua_file/;
        unless ($config =~ s{init_by_lua\s*(['"])((?:\\.|.)*)\1\s*;}{init_by_lua $1$code$2$1;}s) {
            $config .= "init_by_lua '$code';";
        }
        return $config;
    });
}

1;
