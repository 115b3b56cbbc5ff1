package t::TestAsync;

use Test::Nginx::Socket::Lua -Base;
use Cwd qw(cwd);

my $pwd = cwd();

# Where the runtime makes its private socket directories during the tests;
# `make test` checks that it is empty afterwards, then removes it.
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

# Lines that fail every block, while it runs and while nginx stops after
# it: a worker that crashed, and nginx's alerts (a socket left open, a
# failed system call). Test::Nginx only warns about them by itself.
our @FatalLines = ("[alert]", "exited on signal");

# Whether patterns name a line; a regex by its text without the escapes
# (qr/\[alert\]/ names "[alert]"). (Lexical subs: Spiffy's -Base filter
# rewrites named ones.)
my $mentions;
$mentions = sub {
    my ($pats, $str) = @_;
    return 0 if !defined $pats;
    return index($pats, $str) >= 0 if !ref $pats;
    if (ref $pats eq 'Regexp') {
        (my $text = "$pats") =~ s/\\//g;
        return index($text, $str) >= 0;
    }
    return scalar grep { $mentions->($_, $str) } @$pats;
};

# The patterns of a no_*error_log section plus the fatal lines that it, or
# the block's matching *error_log section, does not name already.
my $with_fatal_lines = sub {
    my ($pats, $expected) = @_;
    my @add = grep { !$mentions->($pats, $_) && !$mentions->($expected, $_) }
              @FatalLines;
    return $pats if !@add;
    return join("\n", @add) . "\n" if !defined $pats;
    if (!ref $pats) {
        chomp $pats;
        return join("\n", $pats, @add) . "\n";
    }
    return [$pats, @add] if ref $pats eq 'Regexp';
    return [@$pats, @add];
};

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
        $block->set_value("no_error_log", "[error]");
    }

    $block->set_value("no_error_log",
        $with_fatal_lines->(scalar $block->no_error_log,
                            scalar $block->error_log));
    $block->set_value("no_shutdown_error_log",
        $with_fatal_lines->(scalar $block->no_shutdown_error_log,
                            scalar $block->shutdown_error_log));
});

1;
