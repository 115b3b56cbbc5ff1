package Test::Nginx::Util;

# A compatible subset of openresty/test-nginx's Test::Nginx::Util (0.33):
# global settings, nginx.conf, the server root and the nginx life cycle.
# Used through Test::Nginx::Socket / Test::Nginx::Socket::Lua when the real
# Test::Nginx is not installed (t/compat is then put on @INC).
#
# Its defaults, the nginx.conf it writes, the environment it exports and the
# order in which it starts, stops and checks nginx follow the real module
# line by line, so that a suite green under one is green under the other.
# What it does not support (HUP reload, valgrind, stap, check-leak and
# benchmark modes, HTTP/2 and HTTP/3, mock TCP/UDP servers, ...) stops the
# run with a bail-out instead of being skipped. See README.md here.

use strict;
use warnings;

use base 'Exporter';

use POSIX qw( SIGQUIT SIGKILL SIGTERM WNOHANG );
use File::Spec ();
use File::Path qw( make_path remove_tree );
use List::Util qw( shuffle );
use Scalar::Util qw( looks_like_number );
use Time::HiRes qw( sleep );
use IO::Socket::INET ();
use Carp qw( croak );
use Test::More ();

our $VERSION = '0.33-compat';

sub bail_out (@);
sub expand_env_in_text ($$$);

# The real module's test modes and features that this one lacks: a run that
# asks for one of them stops, rather than passing without what it asked for.
our %UnsupportedEnv = map { ("TEST_NGINX_$_" => 1) } qw(
    USE_HUP USE_VALGRIND USE_STAP CHECK_LEAK BENCHMARK USE_HTTP2 USE_HTTP3
    USE_RR RANDOMIZE
);

our @UnsupportedSections = qw(
    http2 http3 curl curl_protocol curl_options curl_error stap stap_out
    stap_out_like stap_out_unlike tcp_listen tcp_reply tcp_query
    tcp_query_len tcp_shutdown udp_listen udp_reply udp_query must_die
    reload_fails
);

our $ConfigVersion;
our $FilterHttpConfig;
our $RandPorts;

our $NoLongString = undef;
our $FirstTime = 1;

our $ReusePort = $ENV{TEST_NGINX_REUSE_PORT};
our $Verbose = $ENV{TEST_NGINX_VERBOSE};
our $ld_preload = $ENV{LD_PRELOAD};

our $NoNginxManager = $ENV{TEST_NGINX_NO_NGINX_MANAGER} || 0;

our $InSubprocess;
our $RepeatEach = 1;

our $LoadModules = $ENV{TEST_NGINX_LOAD_MODULES};
our $NoShuffle = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $EventType = $ENV{TEST_NGINX_EVENT_TYPE};
our $PostponeOutput = $ENV{TEST_NGINX_POSTPONE_OUTPUT};
our $Timeout = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $CheckAccumErrLog = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};

our $ServerAddr = '127.0.0.1';
our $ServerName = 'localhost';

our $WorkerUser = $ENV{TEST_NGINX_WORKER_USER};
if (defined $WorkerUser && $WorkerUser !~ /^\w[-\w]+(?:\s+\w[-\w]+)?$/) {
    die "Bad value in the env TEST_NGINX_WORKER_USER: $WorkerUser\n";
}

our $PrevBlock;
our $ErrLogFilePos;

# Not reaped zombies count as gone: where init does not reap (some
# containers), the real module waits out its timeouts for each of them.
sub is_running ($) {
    my $pid = shift;
    return 0 unless kill 0, $pid;
    if (open my $in, '<', "/proc/$pid/stat") {
        my $stat = <$in> // '';
        return 0 if $stat =~ /^\d+ \(.*\) Z/s;
    }
    return 1;
}

sub gen_rand_port (;$$) {
    my ($tries, $used_ports) = @_;
    $tries //= 1000;
    $used_ports //= {};
    for (my $i = 0; $i < $tries; $i++) {
        # the real module keeps 1984 .. 1987 for its own servers
        my $port = int(rand 63547) + 1988;
        next if $used_ports->{$port};
        my $sock = IO::Socket::INET->new(
            LocalAddr => $ServerAddr,
            LocalPort => $port,
            Proto => 'tcp',
            Listen => 5,
            Timeout => 0.1,
            Reuse => 1,
        );
        if (defined $sock) {
            $sock->close();
            return $port;
        }
    }
    return undef;
}

sub no_long_string () { $NoLongString = 1 }

sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    if (ref $expected && ref $expected eq 'Regexp') {
        return Test::More::like($got, $expected, $desc);
    }
    # no Test::LongString here: Test::More::is in both cases
    return Test::More::is($got, $expected, $desc);
}

sub server_addr (@) { @_ ? ($ServerAddr = shift) : $ServerAddr }
sub server_name (@) { @_ ? ($ServerName = shift) : $ServerName }
sub timeout (@)     { @_ ? ($Timeout = shift) : $Timeout }
sub no_shuffle ()   { $NoShuffle = 1 }
sub no_nginx_manager () { $NoNginxManager = 1 }

sub use_hup () {
    bail_out("use_hup(): the HUP reload mode is not supported by the compat "
             . "runner (t/compat); install Test::Nginx to run this suite");
}

our @CleanupHandlers;
our @TestCleanupHandlers;
our @BlockPreprocessors;

our $NginxBinary          = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $Workers              = 1;
our $WorkerConnections    = 64;
our $LogLevel             = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $DaemonEnabled        = 'on';
our $ServerPort           = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient  = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort || 1984;
our $NoRootLocation       = 0;
our $TestNginxSleep       = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $BuildSlaveName       = $ENV{TEST_NGINX_BUILDSLAVE};
our $ForceRestartOnTest   = (defined $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST})
                            ? $ENV{TEST_NGINX_FORCE_RESTART_ON_TEST} : 1;
srand $$;

our @EnvToNginx;

sub env_to_nginx (@) {
    croak "env_to_nginx: no arguments specified" unless @_;
    for my $v (@_) {
        croak "env_to_nginx: bad argument value: $v\n"
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

sub sleep_time { $TestNginxSleep }
sub verbose    { $Verbose }

sub server_port (@)            { @_ ? ($ServerPort = shift) : $ServerPort }
sub server_port_for_client (@) { @_ ? ($ServerPortForClient = shift) : $ServerPortForClient }
sub repeat_each (@)            { $RepeatEach = shift if @_; $RepeatEach }
sub worker_connections (@)     { @_ ? ($WorkerConnections = shift) : $WorkerConnections }
sub no_root_location ()        { $NoRootLocation = 1 }
sub workers (@)                { @_ ? ($Workers = shift) : $Workers }
sub log_level (@)              { @_ ? ($LogLevel = shift) : $LogLevel }
sub check_accum_error_log ()   { $CheckAccumErrLog = 1 }
sub master_on ()               { $MasterProcessEnabled = 'on' }
sub master_off ()              { $MasterProcessEnabled = 'off' }

sub master_process_enabled (@) {
    return $MasterProcessEnabled unless @_;
    $MasterProcessEnabled = shift() ? 'on' : 'off';
}

# HTTP/2 and HTTP/3 are not supported: never in use.
sub use_http2 ($) { undef }
sub use_http3 ($) { undef }

our @EXPORT = qw(
    expand_env_in_text
    use_http2
    use_http3
    env_to_nginx
    is_str
    check_accum_error_log
    is_running
    $NoLongString
    no_long_string
    $ServerAddr
    server_addr
    $ServerName
    server_name
    parse_time
    verbose
    sleep_time
    bail_out
    add_cleanup_handler
    add_test_cleanup_handler
    access_log_data
    error_log_data
    setup_server_root
    run_customer_init_script
    write_config_file
    get_canon_version
    get_nginx_version
    trim
    show_all_chars
    parse_headers
    run_tests
    get_pid_from_pidfile
    $ServerPortForClient
    $ServerPort
    $NginxVersion
    $PidFile
    $ServRoot
    $ConfFile
    $RunTestHelper
    $CheckErrorLog
    $CheckShutdownErrorLog
    $FilterHttpConfig
    $NoNginxManager
    $RepeatEach
    add_block_preprocessor
    timeout
    worker_connections
    workers
    master_on
    master_off
    config_preamble
    repeat_each
    master_process_enabled
    log_level
    no_shuffle
    no_root_location
    html_dir
    server_root
    server_port
    server_port_for_client
    no_nginx_manager
    use_hup
);

our $ConfigPreamble = '';

sub config_preamble ($) { $ConfigPreamble = shift }

our $RunTestHelper;
our $CheckErrorLog;
our $CheckShutdownErrorLog;

our $NginxVersion;
our $NginxRawVersion;
our $OpenSSLVersion;

sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }

our $PrevConfig;

our $ServRoot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;

our $LogDir     = File::Spec->catfile($ServRoot, 'logs');
our $ErrLogFile = File::Spec->catfile($LogDir, 'error.log');
our $AccLogFile = File::Spec->catfile($LogDir, 'access.log');
our $HtmlDir    = File::Spec->catfile($ServRoot, 'html');
our $ConfDir    = File::Spec->catfile($ServRoot, 'conf');
our $ConfFile   = File::Spec->catfile($ConfDir, 'nginx.conf');
our $PidFile    = File::Spec->catfile($LogDir, 'nginx.pid');
our $CacheDir   = File::Spec->catfile($ServRoot, 'cache');

sub parse_time ($) {
    my $tm = shift;
    if (defined $tm) {
        if ($tm =~ s/([^_a-zA-Z])ms$/$1/) {
            $tm = $tm / 1000;
        } else {
            $tm =~ s/([^_a-zA-Z])s$/$1/;
        }
    }
    return $tm;
}

sub html_dir ()    { $HtmlDir }
sub server_root () { $ServRoot }

sub add_cleanup_handler ($)      { unshift @CleanupHandlers, shift }
sub add_test_cleanup_handler ($) { unshift @TestCleanupHandlers, shift }

sub bail_out (@) {
    cleanup();
    Test::More::BAIL_OUT(@_);
}

for my $env (sort keys %UnsupportedEnv) {
    if ($ENV{$env}) {
        bail_out("$env is not supported by the compat runner (t/compat); "
                 . "install Test::Nginx to use it");
    }
}

sub kill_process ($$$) {
    my ($pid, $wait, $name) = @_;

    if ($wait) {
        if (defined $pid) {
            kill($ENV{TEST_NGINX_FAST_SHUTDOWN} ? SIGTERM : SIGQUIT, $pid);
        }

        my $timeout_val = timeout();
        while ($timeout_val > 0 && is_running($pid)) {
            waitpid($pid, WNOHANG);
            sleep 0.05;
            $timeout_val -= 0.05;
        }

        if (is_running($pid)) {
            warn "$name - timeout when waiting for the process $pid to exit";
            if (getpgrp($pid) == $pid) {
                kill(SIGKILL, -$pid);
                sleep 0.05;
            } else {
                kill(SIGKILL, $pid);
                waitpid($pid, 0);
            }
        }
    }

    my $step = $TestNginxSleep;
    for my $i (1 .. 20) {
        return if !is_running($pid);
        if (kill(SIGTERM, $pid) == 0) {
            warn "WARNING: failed to send term signal to the child process with PID $pid.\n";
        }
        $step *= 1.2;
        $step = 0.5 if $step > 0.5;
        sleep $step;
    }

    warn "$name - WARNING: killing the child process $pid with force...";

    if (getpgrp($pid) == $pid) {
        kill(SIGKILL, -$pid);
        sleep 0.05;
    } else {
        kill(SIGKILL, $pid);
        waitpid($pid, 0);
    }

    if (is_running($pid)) {
        local $SIG{ALRM} = sub { die "alarm\n" };
        alarm timeout();
        waitpid($pid, 0);
        alarm 0;
    }
}

sub cleanup_test ($) {
    my $block = shift;
    $_->($block) for @TestCleanupHandlers;
}

sub cleanup () {
    $_->() for @CleanupHandlers;
}

sub access_log_data () {
    sleep $TestNginxSleep * 3;
    open my $in, $AccLogFile or do {
        die "open $AccLogFile failed: $!" if $AccLogFile ne "off";
        return undef;
    };
    my @lines = <$in>;
    close $in;
    return \@lines;
}

sub error_log_data () {
    # for the log phase, which runs after the server closes the connection
    sleep $TestNginxSleep * 3;

    open my $in, $ErrLogFile or return undef;

    if (!$CheckAccumErrLog && $ErrLogFilePos > 0) {
        seek $in, $ErrLogFilePos, 0;
    }

    my @lines = <$in>;

    if (!$CheckAccumErrLog) {
        $ErrLogFilePos = tell($in);
    }

    close $in;
    return \@lines;
}

sub check_prev_block_shutdown_error_log () {
    my $block = $PrevBlock;
    return if !defined $block;

    if (defined($block->shutdown_error_log)
        || defined($block->no_shutdown_error_log))
    {
        my $dry_run = $ENV{TEST_NGINX_NO_CLEAN} ? 1 : undef;
        $CheckShutdownErrorLog->($block, $dry_run);
    }
}

sub run_tests () {
    srand($$ + Time::HiRes::time() * 1000000);
    $NginxVersion = get_nginx_version();

    if (!defined $ENV{TEST_NGINX_SERVER_PORT}) {
        $ENV{TEST_NGINX_SERVER_PORT} = $ServerPort;
    }

    for my $block ($NoShuffle ? Test::Base::blocks() : shuffle Test::Base::blocks()) {
        for my $hdl (@BlockPreprocessors) {
            $hdl->($block);
        }

        $block->set_value("name", $0 . " " . $block->name);
        run_test($block);
        cleanup_test($block);

        $PrevBlock = $block;
    }

    cleanup();
}

sub setup_server_root ($) {
    my $first_time = shift;

    if (-d $ServRoot) {
        # only what the runner makes, never a mis-set TEST_NGINX_SERVROOT's
        # other contents: rmdir fails on anything left
        remove_tree($ConfDir, glob("$ServRoot/*_cache"), glob("$ServRoot/*_temp"));
        remove_tree($CacheDir, $HtmlDir, $LogDir);
        rmdir $ServRoot
            or bail_out "Can't remove $ServRoot (not empty?): $!";
    }

    mkdir $ServRoot or bail_out "Failed to do mkdir $ServRoot\n";
    mkdir $LogDir or bail_out "Failed to do mkdir $LogDir\n";
    mkdir $HtmlDir or bail_out "Failed to do mkdir $HtmlDir\n";

    my $index_file = "$HtmlDir/index.html";
    open my $out, ">$index_file"
        or bail_out "Can't open $index_file for writing: $!\n";
    print $out '<html><head><title>It works!</title></head><body>It works!</body></html>';
    close $out;

    mkdir $ConfDir or bail_out "Failed to do mkdir $ConfDir\n";
}

sub run_customer_init_script ($) {
    my $block = shift;
    my $name = $block->name;

    if ($block->post_setup_server_root) {
        eval $block->post_setup_server_root;
        if ($@) {
            bail_out("$name - post_setup_server_root failed: $@");
        }
    }
}

sub write_user_files ($$) {
    my ($block, $rand_ports) = @_;
    my $name = $block->name;

    my $files = $block->user_files or return;

    if (!ref $files) {
        my $raw = $files;
        open my $in, '<', \$raw;
        $files = [];
        my ($fname, $body, $date);
        while (<$in>) {
            if (/>>> (\S+)(?:\s+(.+))?/) {
                push @$files, [$fname, $body, $date] if $fname;
                $fname = $1;
                $date = $2;
                undef $body;
            } else {
                $body .= $_;
            }
        }
        push @$files, [$fname, $body, $date] if $fname;

    } elsif (ref $files ne 'ARRAY') {
        bail_out "$name - wrong value type: ", ref $files,
                 ", only scalar or ARRAY are accepted";
    }

    for my $file (@$files) {
        my ($fname, $body, $date) = @$file;
        $body = '' if !defined $body;

        my $path = $fname !~ m{^/} ? "$HtmlDir/$fname" : $fname;

        if ($path =~ /(.*)\//) {
            my $dir = $1;
            if (! -d $dir) {
                make_path($dir) or bail_out "$name - Cannot create directory ", $dir;
            }
        }

        $body = expand_env_in_text $body, $name, $rand_ports;

        open my $out, ">$path"
            or bail_out "$name - Cannot open $path for writing: $!\n";
        binmode $out;
        print $out $body;
        close $out;

        if ($date) {
            my $cmd = "TZ=GMT touch -t '$date' $HtmlDir/$fname";
            system($cmd) == 0
                or bail_out "Failed to run shell command: $cmd\n";
        }
    }
}

sub write_config_file ($$$) {
    my ($block, $config, $rand_ports) = @_;

    my $name = $block->name;
    my $http_config = $block->http_config;
    my $main_config = $block->main_config;
    my $post_main_config = $block->post_main_config;
    my $err_log_file = $block->error_log_file;
    my $server_name = $block->server_name;

    $http_config = expand_env_in_text $http_config, $name, $rand_ports;

    $config = '' if !defined $config;
    $http_config = '' if !defined $http_config;

    if ($FilterHttpConfig) {
        $http_config = $FilterHttpConfig->($http_config);
    }

    # The real module writes TEST_NGINX_POSTPONE_OUTPUT's directive in its
    # HUP mode only; it checks the value in every mode.
    if (defined $PostponeOutput && $http_config !~ /\bpostpone_output\b/
        && $PostponeOutput !~ /^\d+$/)
    {
        bail_out "Bad TEST_NGINX_POSTPONE_OUTPUT value: $PostponeOutput\n";
    }

    $main_config = '' if !defined $main_config;

    if ($LoadModules) {
        my @modules = map { "load_module $_;" } grep { $_ } split /\s+/, $LoadModules;
        if (@modules) {
            $main_config = join " ", @modules, $main_config;
        }
    }

    $main_config = expand_env_in_text $main_config, $name, $rand_ports;

    $post_main_config = '' if !defined $post_main_config;
    $post_main_config = expand_env_in_text $post_main_config, $name, $rand_ports;

    $err_log_file = $ErrLogFile if !$err_log_file;
    $err_log_file = expand_env_in_text $err_log_file, $name, $rand_ports;

    $server_name = $ServerName if !defined $server_name;

    open my $out, ">$ConfFile"
        or bail_out "Can't open $ConfFile for writing: $!\n";
    print $out <<_EOC_;
worker_processes  $Workers;
daemon $DaemonEnabled;
master_process $MasterProcessEnabled;
error_log $err_log_file $LogLevel;
pid       $PidFile;
env MOCKEAGAIN_VERBOSE;
env MOCKEAGAIN;
env MOCKEAGAIN_WRITE_TIMEOUT_PATTERN;
env LD_PRELOAD;
env LD_LIBRARY_PATH;
env DYLD_INSERT_LIBRARIES;
env DYLD_FORCE_FLAT_NAMESPACE;
_EOC_

    for my $v (@EnvToNginx) {
        my $quoted = $v =~ /\s/ ? "'$v'" : $v;
        print $out "env $quoted;\n";
    }

    my $listen_opts = $ReusePort ? " reuseport" : '';

    my $nginx_V = `$NginxBinary -V 2>&1`;
    my $fastcgi_temp_path = "fastcgi_temp_path $ServRoot/fastcgi_temp;";
    my $scgi_temp_path = "scgi_temp_path $ServRoot/scgi_temp;";
    my $uwsgi_temp_path = "uwsgi_temp_path $ServRoot/uwsgi_temp;";
    my $proxy_temp_path = "proxy_temp_path $ServRoot/proxy_temp;";
    my $client_body_temp_path = "client_body_temp_path $ServRoot/client_body_temp;";

    $fastcgi_temp_path = '' if $nginx_V =~ /--without-http_fastcgi_module/;
    $scgi_temp_path = '' if $nginx_V =~ /--without-http_scgi_module/;
    $uwsgi_temp_path = '' if $nginx_V =~ /--without-http_uwsgi_module/;
    $proxy_temp_path = '' if $http_config =~ /\bproxy_temp_path\b/;
    $client_body_temp_path = '' if $http_config =~ /\bclient_body_temp_path\b/;

    print $out <<_EOC_;
#env LUA_PATH;
#env LUA_CPATH;

$main_config

http {
    access_log $AccLogFile; $client_body_temp_path $proxy_temp_path $fastcgi_temp_path $scgi_temp_path $uwsgi_temp_path
    #access_log off;

    default_type text/plain;
    keepalive_timeout  68000ms;

$http_config
    server {
        listen          $ServerPort$listen_opts;
        #placeholder
        server_name     '$server_name';
        
        client_max_body_size 30M;
        #client_body_buffer_size 4k;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

_EOC_

    if (!$NoRootLocation) {
        print $out <<_EOC_;
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_
    }

    print $out "    }\n";

    print $out <<_EOC_;
}

$post_main_config

#timer_resolution 100ms;

events {
    accept_mutex off;

    worker_connections  $WorkerConnections;
_EOC_

    if (defined $block->no_mockeagain) {
        if (defined $ld_preload) {
            (my $new_ld_preload = $ld_preload) =~ s/[^ ]+mockeagain.so//;
            $ENV{LD_PRELOAD} = $new_ld_preload;
        }
    } else {
        $ENV{LD_PRELOAD} = $ld_preload;
    }

    print $out "    use $EventType;\n" if $EventType;

    print $out "}\n";

    print $out <<_EOC_;
env ASAN_OPTIONS;
env MOCKNOEAGAIN_VERBOSE;
env MOCKNOEAGAIN;
_EOC_

    if (defined $WorkerUser) {
        print $out "user $WorkerUser;\n";
    } elsif ($> == 0) {    # being root
        print $out "user root;\n";
    }

    close $out;
}

sub get_canon_version (@) {
    sprintf "%d.%03d%03d", $_[0], $_[1], $_[2];
}

sub get_canon_version_for_OpenSSL (@) {
    if (defined $_[3]) {
        return sprintf "%d.%03d%03d%03d", $_[0], $_[1], $_[2], ord($_[3]) - ord('a');
    }
    get_canon_version @_;
}

sub get_nginx_version () {
    my $out = `$NginxBinary -V 2>&1`;
    if (!defined $out || $? != 0) {
        $out //= "";
        bail_out("Failed to get the version of the Nginx in PATH: $out");
    }

    if ($out =~ m{built with OpenSSL (\d+)\.(\d+)\.(\d+)([a-z])?}s) {
        $OpenSSLVersion = get_canon_version_for_OpenSSL($1, $2, $3, $4);
    }

    if ($out =~ m{(?:nginx|openresty+?)[^/]*/(\d+)\.(\d+)\.(\d+)}s
        || $out =~ m{\w+/(\d+)\.(\d+)\.(\d+)}s)
    {
        $NginxRawVersion = "$1.$2.$3";
        return get_canon_version($1, $2, $3);
    }

    bail_out("Failed to parse the output of \"nginx -V\": $out\n");
}

sub get_pid_from_pidfile ($) {
    my ($name) = @_;
    open my $in, $PidFile
        or bail_out("$name - Failed to open the pid file $PidFile for reading: $!");
    my $pid = do { local $/; <$in> };
    chomp $pid;
    close $in;
    return $pid;
}

sub trim ($) {
    my $s = shift;
    return undef if !defined $s;
    $s =~ s/^\s+|\s+$//g;
    $s =~ s/\n/ /gs;
    $s =~ s/\s{2,}/ /gs;
    $s;
}

sub show_all_chars ($) {
    my $s = shift;
    $s =~ s/\n/\\n/gs;
    $s =~ s/\r/\\r/gs;
    $s =~ s/\t/\\t/gs;
    $s;
}

sub parse_headers ($) {
    my $s = shift;
    my %headers;
    open my $in, '<', \$s;
    while (<$in>) {
        s/^\s+|\s+$//g;
        my $neg = ($_ =~ s/^!\s*//);
        if ($neg) {
            $headers{$_} = undef;
        } else {
            my ($key, $val) = split /\s*:\s*/, $_, 2;
            $headers{$key} = $val;
        }
    }
    close $in;
    return \%headers;
}

sub expand_env_in_text ($$$) {
    my ($text, $name, $rand_ports) = @_;

    return if !defined $text;

    my $used_ports = {
        $ServerPort => 1,
        map { $_ => 1 } values %$rand_ports
    };

    $text =~ s/\$(TEST_NGINX_[_A-Z0-9]+)/
        my $expanded_env;

        if ($1 =~ m{^(TEST_NGINX_RAND_PORT_[0-9]+)$}) {
            if (!defined $rand_ports->{$1}) {
                my $rand_port = gen_rand_port 1000, $used_ports;
                if (!defined $rand_port) {
                    bail_out "$name - Cannot find an available listening port number for $1.\n";
                }
                $rand_ports->{$1} = $rand_port;
                $used_ports->{$rand_port} = 1;
                $expanded_env = $rand_port;

            } else {
                $expanded_env = $rand_ports->{$1};
            }

        } else {
            if (!defined $ENV{$1}) {
                bail_out "$name - No environment $1 defined.\n";
            }
            $expanded_env = $ENV{$1};
        }
        $expanded_env;
    /eg;

    $text;
}

sub check_if_missing_directives () {
    open my $in, $ErrLogFile
        or bail_out "check_if_missing_directives: Cannot open $ErrLogFile for reading: $!\n";
    while (<$in>) {
        if (/\[emerg\] \S+?: unknown directive "([^"]+)"/) {
            return $1;
        }
    }
    close $in;
    return 0;
}

# The skip/todo specs of a block, as the real module reads them.
sub block_skip_and_todo ($) {
    my $block = shift;
    my $name = $block->name;
    my ($tests_to_skip, $should_skip, $skip_reason);

    if (defined(my $skip_eval = $block->skip_eval)) {
        if ($skip_eval =~ m{^ \s* (\d+) \s* : \s* (.*)}xs) {
            $tests_to_skip = $1;
            $skip_reason = "skip_eval";
            my $code = $2;
            $should_skip = eval $code;
            if ($@) {
                bail_out("$name - skip_eval - failed to eval the Perl code "
                         . "\"$code\": $@");
            }
        }
    }

    if (defined(my $skip_nginx = $block->skip_nginx)) {
        if ($skip_nginx =~ m{
                ^ \s* (\d+) \s* : \s*
                    ([<>]=?) \s* (\d+)\.(\d+)\.(\d+)
                    (?: \s* : \s* (.*) )?
                \s*$}x)
        {
            $tests_to_skip = $1;
            my ($op, $ver1, $ver2, $ver3) = ($2, $3, $4, $5);
            $skip_reason = $6 || "nginx version $op $ver1.$ver2.$ver3";
            my $ver = get_canon_version($ver1, $ver2, $ver3);
            if ((!defined $NginxVersion and $op =~ /^</)
                or eval "$NginxVersion $op $ver")
            {
                $should_skip = 1;
            }
        } else {
            bail_out("$name - Invalid --- skip_nginx spec: " . $skip_nginx);
        }

    } elsif (defined(my $skip_nginx2 = $block->skip_nginx2)) {
        if ($skip_nginx2 =~ m{
                ^ \s* (\d+) \s* : \s*
                    ([<>]=?) \s* (\d+)\.(\d+)\.(\d+)
                    \s* (or|and) \s*
                    ([<>]=?) \s* (\d+)\.(\d+)\.(\d+)
                    (?: \s* : \s* (.*) )?
                \s*$}x)
        {
            $tests_to_skip = $1;
            my ($opa, $vera) = ($2, get_canon_version($3, $4, $5));
            my $opx = $6;
            my ($opb, $verb) = ($7, get_canon_version($8, $9, $10));
            $skip_reason = $11;
            if ((!defined $NginxVersion)
                or (($opx eq "or") and (eval "$NginxVersion $opa $vera"
                                        or eval "$NginxVersion $opb $verb"))
                or (($opx eq "and") and (eval "$NginxVersion $opa $vera"
                                         and eval "$NginxVersion $opb $verb")))
            {
                $should_skip = 1;
            }
        } else {
            bail_out("$name - Invalid --- skip_nginx2 spec: " . $skip_nginx2);
        }

    } elsif (defined(my $skip_slave = $block->skip_slave) and defined $BuildSlaveName) {
        if ($skip_slave =~ m{
              ^ \s* (\d+) \s* : \s*
                (\w+) \s* (?: (\w+) \s* )?  (?: (\w+) \s* )?
                (?: \s* : \s* (.*) )? \s*$}x)
        {
            $tests_to_skip = $1;
            my @slaves = grep { defined } ($2, $3, $4);
            $skip_reason = $5;
            if ($slaves[0] eq "all" || grep { $_ eq $BuildSlaveName } @slaves) {
                $should_skip = 1;
            }
        } else {
            bail_out("$name - Invalid --- skip_slave spec: " . $skip_slave);
        }
    }

    if (defined(my $skip_openssl = $block->skip_openssl)) {
        if ($skip_openssl =~ m{
                ^ \s* (\d+) \s* : \s*
                    ([<>]=?) \s* (\d+)\.(\d+)\.(\d+)([a-z])?
                    (?: \s* : \s* (.*) )?
                \s*$}x)
        {
            $tests_to_skip = $1;
            my ($op, $ver1, $ver2, $ver3, $ver4) = ($2, $3, $4, $5, $6);
            $skip_reason = $7;
            if (!$skip_reason) {
                $skip_reason = !defined $OpenSSLVersion ? "Not built with OpenSSL"
                             : "OpenSSL version $op $ver1.$ver2.$ver3" . ($ver4 // '');
            }
            my $ver = get_canon_version_for_OpenSSL($ver1, $ver2, $ver3, $ver4);
            if (!defined $OpenSSLVersion or eval "$OpenSSLVersion $op $ver") {
                $should_skip = 1;
            }
        } else {
            bail_out("$name - Invalid --- skip_openssl spec: " . $skip_openssl);
        }
    }

    $skip_reason = "various reasons" if !defined $skip_reason;

    my ($should_todo, $todo_reason);
    if (defined(my $todo_nginx = $block->todo_nginx)) {
        if ($todo_nginx =~ m{
                ^ \s*
                    ([<>]=?) \s* (\d+)\.(\d+)\.(\d+)
                    (?: \s* : \s* (.*) )?
                \s*$}x)
        {
            my ($op, $ver1, $ver2, $ver3) = ($1, $2, $3, $4);
            $todo_reason = $5;
            my $ver = get_canon_version($ver1, $ver2, $ver3);
            if ((!defined $NginxVersion and $op =~ /^</)
                or eval "$NginxVersion $op $ver")
            {
                $should_todo = 1;
            }
        } else {
            bail_out("$name - Invalid --- todo_nginx spec: " . $todo_nginx);
        }
    }

    if (defined(my $todo = $block->todo)) {
        if ($todo =~ m{^ \s* (\d+) \s* : \s* (.*)}xs) {
            $should_todo = 1;
            $tests_to_skip = $1;
            $todo_reason = $2;
        } else {
            bail_out("$name - Invalid --- todo spec: " . $todo);
        }
    }

    $todo_reason = "various reasons" if !defined $todo_reason;

    return ($tests_to_skip, $should_skip, $skip_reason, $should_todo, $todo_reason);
}

sub start_nginx ($$) {
    my ($block, $name) = @_;

    if (!can_run($NginxBinary)) {
        bail_out("$name - Cannot find the nginx executable in the PATH environment");
    }

    my $cmd = "$NginxBinary -e $ServRoot/logs/error.log -p $ServRoot/ -c $ConfFile > /dev/null";

    my $LD_PRELOAD = $ENV{LD_PRELOAD};
    if (defined $ENV{TEST_NGINX_LD_PRELOAD}) {
        $LD_PRELOAD = defined $LD_PRELOAD ? "$ENV{TEST_NGINX_LD_PRELOAD} $LD_PRELOAD"
                                          : $ENV{TEST_NGINX_LD_PRELOAD};
        $cmd = qq!LD_PRELOAD="$LD_PRELOAD" $cmd!;
    }

    $cmd .= " 2> /dev/null" if defined $block->suppress_stderr;

    my $i = 0;
    my $waited = 0;
    $ErrLogFilePos = 0;

    while (1) {
        system($cmd);
        my $status = $?;
        return undef if $status == 0;

        if ($ENV{TEST_NGINX_IGNORE_MISSING_DIRECTIVES}
            and my $directive = check_if_missing_directives())
        {
            return "the lack of directive $directive";
        }

        # as the real module: retry (the port may still be in use) for 30 s
        $i++;
        my $delay = 0.1 * $i;
        $delay = 1 if $delay > 1;
        sleep $delay;
        $waited += $delay;
        next if $waited < 30;
        bail_out("$name - Cannot start nginx using command \"$cmd\" (status code $status).");
    }
}

sub run_test ($) {
    my $block = shift;

    return if defined $block->SKIP;

    my $name = $block->name;

    for my $sec (@UnsupportedSections) {
        if (defined $block->$sec) {
            bail_out("$name - --- $sec is not supported by the compat runner "
                     . "(t/compat); install Test::Nginx to run this block");
        }
    }

    my $first_time;
    if ($FirstTime) {
        $first_time = 1;
        undef $FirstTime;
    }

    my $rand_ports = {};
    $RandPorts = $rand_ports;

    my $config = $block->config;
    $config = expand_env_in_text $config, $name, $rand_ports;

    my $dry_run = 0;
    my $should_restart = 1;
    my $should_reconfig = 1;

    local $LogLevel = $LogLevel;
    if ($block->log_level) {
        $LogLevel = $block->log_level;
    }

    if (!defined $config) {
        if (!$NoNginxManager && !defined $PrevConfig) {
            bail_out("$name - No '--- config' section specified and could not get previous one. Use TEST_NGINX_NO_NGINX_MANAGER ?");
        }
        # the real module restarts nginx only for blocks with a config
        $should_restart = 0;
        $should_reconfig = 0;

    } elsif ($NoNginxManager) {
        Test::More::diag("NO_NGINX_MANAGER activated: config for $name ignored");
        $should_restart = 0;
        $should_reconfig = 0;

    } else {
        $should_reconfig = (!defined $PrevConfig || $config ne $PrevConfig) ? 1 : 0;
        $should_restart = ($should_reconfig || $ForceRestartOnTest) ? 1 : 0;
    }

    my ($tests_to_skip, $should_skip, $skip_reason, $should_todo, $todo_reason)
        = block_skip_and_todo($block);

    if (!$NoNginxManager && !$should_skip && $should_restart) {
        $PrevConfig = $config if $should_reconfig;

        if (-f $PidFile) {
            my $pid = get_pid_from_pidfile($name);
            if (defined $pid && $pid ne '') {
                if (is_running($pid)) {
                    kill_process($pid, 1, $name);
                } elsif (-f $PidFile) {
                    unlink $PidFile
                        or warn "WARNING: failed to remove pid file $PidFile\n";
                }
            }
        }

        check_prev_block_shutdown_error_log();

        setup_server_root($first_time);
        run_customer_init_script($block);
        write_user_files($block, $rand_ports);
        write_config_file($block, $config, $rand_ports);

        $NginxVersion = '0.008039' if !defined $NginxVersion;

        my $missing = start_nginx($block, $name);
        $dry_run = $missing if $missing;

        sleep $TestNginxSleep;
    }

    if ($block->init) {
        eval $block->init;
        if ($@) {
            bail_out("$name - init failed: $@");
        }
    }

    my $i = 0;
    $ErrLogFilePos = 0;
    while ($i++ < $RepeatEach) {
        if ($i > 1) {
            write_user_files($block, $rand_ports);
        }

        if ($should_skip && defined $tests_to_skip) {
            SKIP: {
                Test::More::skip("$name - $skip_reason", $tests_to_skip);
                $RunTestHelper->($block, $dry_run, $i - 1);
            }

        } elsif ($should_todo) {
            TODO: {
                Test::More::todo_skip("$name - $todo_reason", $tests_to_skip);
                $RunTestHelper->($block, $dry_run, $i - 1);
            }

        } else {
            $RunTestHelper->($block, $dry_run, $i - 1);
        }
    }

    if (my $total_errlog = $ENV{TEST_NGINX_ERROR_LOG}) {
        my $errlog = $ErrLogFile;
        if (-s $errlog) {
            open my $out, ">>$total_errlog"
                or bail_out "Failed to append test case title to $total_errlog: $!\n";
            print $out "\n=== $0 $name\n";
            close $out;
            system("cat $errlog >> $total_errlog") == 0
                or bail_out "Failed to append $errlog to $total_errlog. Abort.\n";
        }
    }
}

END {
    return if $InSubprocess;

    cleanup();

    if (!$ENV{TEST_NGINX_NO_CLEAN}) {
        local $?;    # to avoid confusing Test::Builder::_ending
        if (defined $PidFile && -f $PidFile) {
            my $pid = get_pid_from_pidfile('');
            if (!$pid) {
                bail_out "No pid found.";
            }
            if (is_running($pid)) {
                kill_process($pid, 1, "END");
            } else {
                unlink $PidFile;
            }
        }
    }

    check_prev_block_shutdown_error_log();
}

# check if we can run some command
sub can_run {
    my ($cmd) = @_;

    if ($cmd =~ m{[/\\]}) {
        return (-f $cmd && -x $cmd) ? $cmd : undef;
    }

    require Config;
    for my $dir ((split /$Config::Config{path_sep}/, $ENV{PATH}), '.') {
        next if $dir eq '';
        my $abs = File::Spec->catfile($dir, $cmd);
        return $abs if -f $abs && -x $abs;
    }

    return undef;
}

1;
