package Test::Nginx::Socket::Lua;

# A compatible subset of openresty/test-nginx's Test::Nginx::Socket::Lua,
# for running t/*.t suites where the real Test::Nginx is not installed:
#
#     prove -I t/compat -r t
#
# Use it exactly like the real one, e.g. in t/TestFoo.pm:
#
#     package t::TestFoo;
#     use Test::Nginx::Socket::Lua -Base;
#
# Implemented in Test::Nginx::Util (settings, nginx.conf, nginx life cycle)
# and Test::Nginx::Socket (HTTP client and checks). See README.md here.

use strict;
use warnings;

use Test::Nginx::Socket -base;

our $VERSION = '0.33-compat';

# As the real module: TEST_NGINX_INIT_BY_LUA is put into init_by_lua.
my $code = $ENV{TEST_NGINX_INIT_BY_LUA};

if ($code) {
    (my $escaped_code = $code) =~ s/\\/\\\\/g;
    $escaped_code =~ s/['"]/\\$&/g;

    Test::Nginx::Socket::set_http_config_filter(sub {
        my $config = shift;
        if ($config =~ /init_by_lua_file/) {
            return $config;
        }
        unless ($config =~ s{(?<!\#  )(?<!\# )(?<!\#)init_by_lua\s*(['"])((?:\\.|.)*)\1\s*;}{init_by_lua $1$escaped_code$2$1;}s) {
            unless ($config =~ s{(?<!\#  )(?<!\# )(?<!\#)init_by_lua_block\s*\{}{init_by_lua_block \{ $code }s) {
                $config .= "init_by_lua '$escaped_code';";
            }
        }
        return $config;
    });
}

1;
