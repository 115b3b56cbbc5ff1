package Test::Nginx::Util;

# Compatible subset of openresty/test-nginx's Test::Nginx::Util: global
# settings, nginx.conf generation and the nginx life cycle.  Used through
# Test::Nginx::Socket / Test::Nginx::Socket::Lua (t/compat is only put on
# @INC when the real Test::Nginx is not installed).

use strict;
use warnings;

use base 'Exporter';

use POSIX qw( SIGQUIT SIGKILL WNOHANG );
use File::Spec ();
use File::Path qw( make_path remove_tree );
use List::Util qw( shuffle min );
use Time::HiRes qw( sleep );
use Carp qw( croak );
use Test::More ();

our $VERSION = '0.29-compat';

sub value_contains ($$);
sub check_fatal_log ($$);
sub bail_out (@);

our $RepeatEach           = 1;
our $NoShuffle            = $ENV{TEST_NGINX_NO_SHUFFLE} || 0;
our $NoLongString;
our $NginxBinary          = $ENV{TEST_NGINX_BINARY} || 'nginx';
our $LoadModules          = $ENV{TEST_NGINX_LOAD_MODULES};
our $Workers              = 1;
our $WorkerConnections    = 1024;    # the real module uses 64
our $LogLevel             = $ENV{TEST_NGINX_LOG_LEVEL} || 'debug';
our $MasterProcessEnabled = $ENV{TEST_NGINX_MASTER_PROCESS} || 'off';
our $DaemonEnabled        = 'on';
our $ServerAddr           = '127.0.0.1';
our $ServerName           = 'localhost';
our $ServerPort           = $ENV{TEST_NGINX_SERVER_PORT} || $ENV{TEST_NGINX_PORT} || 1984;
our $ServerPortForClient  = $ENV{TEST_NGINX_CLIENT_PORT} || $ServerPort;
our $NoRootLocation       = 0;
our $TestNginxSleep       = $ENV{TEST_NGINX_SLEEP} || 0.015;
our $Timeout              = $ENV{TEST_NGINX_TIMEOUT} || 3;
our $CheckAccumErrLog     = $ENV{TEST_NGINX_CHECK_ACCUM_ERR_LOG};
our $NoNginxManager       = $ENV{TEST_NGINX_NO_NGINX_MANAGER} || 0;
our $WorkerUser           = $ENV{TEST_NGINX_WORKER_USER};
our $ConfigPreamble       = '';

our (@EnvToNginx, @BlockPreprocessors, @CleanupHandlers);
our ($FilterHttpConfig, $RunTestHelper, $CheckErrorLog, $CheckShutdownErrorLog);
our ($PrevBlock, $PrevConfig, $NginxVersion, $RunTestsCalled);
our $ErrLogFilePos = 0;
our $FatalScanPos  = 0;    # compat extra: position of the crash/alert scan

# [alert] lines that do not fail a block (harmless when not running as
# root); suites may push more patterns.
our @IgnoredAlerts = (
    qr/the "user" directive/,
    qr/could not open error log file/,
    qr/\b(?:setuid|setgid|setgroups|initgroups)\(/,
);

our $ServRoot = $ENV{TEST_NGINX_SERVROOT} || File::Spec->rel2abs('t/servroot');
$ENV{TEST_NGINX_SERVER_ROOT} = $ServRoot;
our $LogDir     = File::Spec->catfile($ServRoot, 'logs');
our $ErrLogFile = File::Spec->catfile($LogDir, 'error.log');
our $AccLogFile = File::Spec->catfile($LogDir, 'access.log');
our $HtmlDir    = File::Spec->catfile($ServRoot, 'html');
our $ConfDir    = File::Spec->catfile($ServRoot, 'conf');
our $ConfFile   = File::Spec->catfile($ConfDir, 'nginx.conf');
our $PidFile    = File::Spec->catfile($LogDir, 'nginx.pid');

our @EXPORT = qw(
    env_to_nginx is_str check_accum_error_log is_running $NoLongString
    no_long_string $ServerAddr server_addr $ServerName server_name
    parse_time sleep_time bail_out add_cleanup_handler access_log_data
    error_log_data setup_server_root write_config_file get_canon_version
    get_nginx_version trim show_all_chars parse_headers run_tests run_test
    get_pid_from_pidfile $ServerPortForClient $ServerPort $NginxVersion
    $PidFile $ServRoot $ConfFile $RunTestHelper $CheckErrorLog
    $CheckShutdownErrorLog $FilterHttpConfig $NoNginxManager $RepeatEach
    add_block_preprocessor timeout worker_connections workers master_on
    master_off config_preamble repeat_each master_process_enabled log_level
    no_shuffle no_root_location html_dir server_root server_port
    server_port_for_client no_nginx_manager use_hup value_contains
    check_fatal_log
);

# ---------------------------------------------------------------- settings

sub no_long_string ()        { $NoLongString = 1 }
sub no_shuffle ()            { $NoShuffle = 1 }
sub no_root_location ()      { $NoRootLocation = 1 }
sub no_nginx_manager ()      { $NoNginxManager = 1 }
sub check_accum_error_log () { $CheckAccumErrLog = 1 }
sub use_hup ()               { }    # HUP-reload mode is not supported; ignored
sub master_on ()             { $MasterProcessEnabled = 'on' }
sub master_off ()            { $MasterProcessEnabled = 'off' }
sub html_dir ()              { $HtmlDir }
sub server_root ()           { $ServRoot }
sub sleep_time               { $TestNginxSleep }
sub config_preamble ($)      { $ConfigPreamble = shift }
sub add_cleanup_handler ($)  { unshift @CleanupHandlers, shift }
sub add_block_preprocessor (&) { unshift @BlockPreprocessors, shift }

sub repeat_each (@)            { $RepeatEach = shift if @_; $RepeatEach }
sub workers (@)                { @_ ? ($Workers = shift) : $Workers }
sub worker_connections (@)     { @_ ? ($WorkerConnections = shift) : $WorkerConnections }
sub log_level (@)              { @_ ? ($LogLevel = shift) : $LogLevel }
sub timeout (@)                { @_ ? ($Timeout = shift) : $Timeout }
sub server_addr (@)            { @_ ? ($ServerAddr = shift) : $ServerAddr }
sub server_name (@)            { @_ ? ($ServerName = shift) : $ServerName }
sub server_port (@)            { @_ ? ($ServerPort = shift) : $ServerPort }
sub server_port_for_client (@) { @_ ? ($ServerPortForClient = shift) : $ServerPortForClient }

sub master_process_enabled (@) {
    return $MasterProcessEnabled unless @_;
    $MasterProcessEnabled = shift() ? 'on' : 'off';
}

sub env_to_nginx (@) {
    croak "env_to_nginx: no arguments specified" unless @_;
    for my $v (@_) {
        croak "env_to_nginx: bad argument value: $v\n"
            if $v !~ /^[A-Za-z_]/ || $v =~ /\n/;
        push @EnvToNginx, $v;
    }
}

# ----------------------------------------------------------------- helpers

sub is_str (@) {
    my ($got, $expected, $desc) = @_;
    return Test::More::like($got, $expected, $desc)
        if ref $expected && ref $expected eq 'Regexp';
    return Test::More::is($got, $expected, $desc);
}

sub bail_out (@) {
    cleanup();
    Test::More::BAIL_OUT(@_);
}

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
    for (split /\n/, $s) {
        s/^\s+|\s+$//g;
        next if $_ eq '';
        if (s/^!\s*//) {
            $headers{$_} = undef;
        } else {
            my ($key, $val) = split /\s*:\s*/, $_, 2;
            $headers{$key} = $val;
        }
    }
    return \%headers;
}

sub value_contains ($$) {
    my ($val, $pat) = @_;
    return $val =~ /\Q$pat\E/ if !ref $val || ref $val eq 'Regexp';
    if (ref $val eq 'ARRAY') {
        for my $v (@$val) {
            return 1 if defined $v && value_contains($v, $pat);
        }
    }
    return undef;
}

sub get_canon_version (@) { sprintf "%d.%03d%03d", $_[0], $_[1], $_[2] }

sub get_nginx_version () {
    my $out = `$NginxBinary -V 2>&1`;
    if (!defined $out || $? != 0) {
        bail_out("Failed to get the version of the Nginx in PATH: "
                 . ($out // '') . " (TEST_NGINX_BINARY=$NginxBinary)");
    }
    return get_canon_version($1, $2, $3)
        if $out =~ m{(?:nginx|openresty)[^/]*/(\d+)\.(\d+)\.(\d+)}s;
    bail_out("Failed to parse the output of \"nginx -V\": $out\n");
}

sub read_log ($$) {
    my ($file, $pos) = @_;
    open my $in, '<', $file or return (undef, $pos);
    seek $in, $pos, 0 if $pos > 0;
    my @lines = <$in>;
    my $end = tell $in;
    close $in;
    return (\@lines, $end);
}

sub error_log_data () {
    # give the log phase (after the connection is closed) a chance to run
    sleep $TestNginxSleep * 3;
    my ($lines, $end) = read_log($ErrLogFile, $CheckAccumErrLog ? 0 : $ErrLogFilePos);
    $ErrLogFilePos = $end unless $CheckAccumErrLog;
    return $lines;
}

sub access_log_data () {
    sleep $TestNginxSleep * 3;
    my ($lines) = read_log($AccLogFile, 0);
    return $lines;
}

sub expand_env_in_text ($$) {
    my ($text, $name) = @_;
    return undef unless defined $text;
    $text =~ s{\$(TEST_NGINX_[_A-Z0-9]+)}{
        defined $ENV{$1} ? $ENV{$1}
                         : bail_out("$name - No environment $1 defined.\n")
    }eg;
    return $text;
}

# --------------------------------------------------------- nginx processes

sub is_running ($) {
    my $pid = shift;
    return 0 unless $pid && kill 0, $pid;
    # an unreaped zombie (possible when init does not reap) is not running
    if (open my $in, '<', "/proc/$pid/stat") {
        my $stat = <$in> // '';
        return 0 if $stat =~ /^\d+ \(.*\) Z/s;
    }
    return 1;
}

sub get_pid_from_pidfile ($) {
    my ($name) = @_;
    open my $in, '<', $PidFile
        or bail_out("$name - Failed to open the pid file $PidFile for reading: $!");
    my $pid = do { local $/; <$in> } // '';
    close $in;
    chomp $pid;
    return $pid;
}

# graceful stop (SIGQUIT), bounded by timeout(), then SIGKILL
sub kill_process ($$) {
    my ($pid, $name) = @_;
    kill SIGQUIT, $pid;
    my $left = $Timeout;
    while ($left > 0 && is_running($pid)) {
        waitpid($pid, WNOHANG);
        sleep 0.02;
        $left -= 0.02;
    }
    return unless is_running($pid);
    warn "$name - timeout when waiting for the process $pid to exit; sending SIGKILL\n";
    kill SIGKILL, (getpgrp($pid) == $pid ? -$pid : $pid);
    for (1 .. 50) {
        waitpid($pid, WNOHANG);
        last unless is_running($pid);
        sleep 0.02;
    }
}

sub stop_nginx ($) {
    my $name = shift;
    return 0 unless -f $PidFile;
    my $pid = get_pid_from_pidfile($name);
    if ($pid && is_running($pid)) {
        kill_process($pid, $name);
        return 1;
    }
    unlink $PidFile;
    return 0;
}

sub cleanup () {
    $_->() for @CleanupHandlers;
}

sub check_prev_block_shutdown_error_log ($) {
    my $stopped = shift;
    my $block = $PrevBlock or return;
    if (defined $block->shutdown_error_log) {
        $CheckShutdownErrorLog->($block, $ENV{TEST_NGINX_NO_CLEAN} ? 1 : 0);
    }
    check_fatal_log($block, "during shutdown") if $stopped;
}

# Compat extra (not in the real Test::Nginx): fail the block on worker
# crashes and on [alert]/[emerg] lines, unless the block mentions them in
# one of its (no_)(shutdown_)error_log sections.
sub check_fatal_log ($$) {
    my ($block, $when) = @_;
    return if $NoNginxManager;
    my ($lines, $end) = read_log($ErrLogFile, $FatalScanPos);
    return unless $lines;
    $FatalScanPos = $end;
    my %skip;
    for my $sec (qw(error_log no_error_log shutdown_error_log no_shutdown_error_log)) {
        my $v = $block->$sec;
        next unless defined $v;
        $skip{alert} = 1 if value_contains($v, '[alert');
        $skip{emerg} = 1 if value_contains($v, '[emerg');
        $skip{crash} = 1 if value_contains($v, 'exited on signal');
    }
    my @bad = grep {
        my $l = $_;
        (!$skip{crash} && $l =~ /exited on signal/)
          || (!$skip{emerg} && $l =~ /\[emerg\]/)
          || (!$skip{alert} && $l =~ /\[alert\]/ && !grep { $l =~ $_ } @IgnoredAlerts)
    } @$lines;
    return unless @bad;
    Test::More::fail($block->name . " - error.log has crash/[alert]/[emerg] lines $when");
    Test::More::diag(join '', map { "    $_" } @bad[0 .. min(9, $#bad)]);
}

sub setup_server_root () {
    remove_tree($ConfDir, $HtmlDir, $LogDir, glob("$ServRoot/*_temp"),
                glob("$ServRoot/*_cache"));
    make_path($ServRoot, $LogDir, $HtmlDir, $ConfDir);
    -d $ConfDir or bail_out("Failed to create $ConfDir\n");
    open my $out, '>', "$HtmlDir/index.html"
        or bail_out("Can't open $HtmlDir/index.html for writing: $!\n");
    print $out '<html><head><title>It works!</title></head><body>It works!</body></html>';
    close $out;
    $FatalScanPos = 0;
}

sub write_user_files ($) {
    my $block = shift;
    my $files = $block->user_files or return;
    if (!ref $files) {
        my @list;
        for (split /^/, $files) {
            if (/^>>> (\S+)/) { push @list, [$1, ''] }
            elsif (@list)     { $list[-1][1] .= $_ }
        }
        $files = \@list;
    }
    for my $file (@$files) {
        my ($fname, $body) = @$file;
        my $path = $fname =~ m{^/} ? $fname : "$HtmlDir/$fname";
        make_path($1) if $path =~ m{(.*)/} && !-d $1;
        open my $out, '>', $path
            or bail_out($block->name . " - Cannot open $path for writing: $!\n");
        binmode $out;
        print $out expand_env_in_text($body // '', $block->name);
        close $out;
    }
}

sub write_config_file ($$) {
    my ($block, $config) = @_;
    my $name = $block->name;

    my $http_config = expand_env_in_text(scalar $block->http_config, $name) // '';
    $http_config = $FilterHttpConfig->($http_config) if $FilterHttpConfig;
    my $main_config = expand_env_in_text(scalar $block->main_config, $name) // '';
    my $post_main_config = expand_env_in_text(scalar $block->post_main_config, $name) // '';
    my $err_log_file = $block->error_log_file || $ErrLogFile;
    my $server_name = scalar($block->server_name) // $ServerName;
    $config //= '';

    # the real module appends these to main_config; dynamic modules must be
    # loaded before their directives are used, so put them first
    my $modules = join '', map { "load_module $_;\n" } grep { $_ } split /\s+/,
        ($LoadModules // '');

    my $env = join '', map { my $v = /\s/ ? "'$_'" : $_; "env $v;\n" } @EnvToNginx;
    my $root_location = $NoRootLocation ? '' : <<_EOC_;
        location / {
            root $HtmlDir;
            index index.html index.htm;
        }
_EOC_
    my $user = defined $WorkerUser ? "user $WorkerUser;\n"
             : $> == 0             ? "user root;\n"    # being root
             : '';

    open my $out, '>', $ConfFile or bail_out("Can't open $ConfFile for writing: $!\n");
    print $out <<_EOC_;
${modules}worker_processes  $Workers;
daemon $DaemonEnabled;
master_process $MasterProcessEnabled;
error_log $err_log_file $LogLevel;
pid       $PidFile;
env MOCKEAGAIN_VERBOSE;
env MOCKEAGAIN;
env MOCKEAGAIN_WRITE_TIMEOUT_PATTERN;
env LD_PRELOAD;
env LD_LIBRARY_PATH;
$env
$main_config

http {
    access_log $AccLogFile;

    default_type text/plain;
    keepalive_timeout  68;

$http_config

    server {
        listen          $ServerAddr:$ServerPort;
        server_name     '$server_name';

        client_max_body_size 30M;

        # Begin preamble config...
$ConfigPreamble
        # End preamble config...

        # Begin test case config...
$config
        # End test case config.

$root_location    }
}

$post_main_config

events {
    accept_mutex off;

    worker_connections  $WorkerConnections;
}
env ASAN_OPTIONS;
$user
_EOC_
    close $out;
}

sub start_nginx ($) {
    my $name = shift;
    my $cmd = "$NginxBinary -p $ServRoot/ -c $ConfFile 2>&1 >/dev/null";
    my $waited = 0;
    while (1) {
        my $out = `$cmd`;
        return if $? == 0;
        # the port may still be held by a previous instance: retry a while
        if ($out =~ /Address already in use/ && $waited < 10) {
            sleep 0.2;
            $waited += 0.2;
            next;
        }
        bail_out("$name - Cannot start nginx using command \"$cmd\" (status code $?): $out");
    }
}

# ------------------------------------------------------------- test driver

sub run_tests () {
    $RunTestsCalled = 1;
    $NginxVersion = get_nginx_version();
    $ENV{TEST_NGINX_SERVER_PORT} //= $ServerPort;
    $ENV{TEST_NGINX_HTML_DIR} //= $HtmlDir;    # compat extra
    $ENV{TEST_NGINX_SERVROOT} //= $ServRoot;   # compat extra

    for my $block ($NoShuffle ? Test::Base::blocks() : shuffle Test::Base::blocks()) {
        $_->($block) for @BlockPreprocessors;
        $block->set_value("name", $0 . " " . $block->name);
        run_test($block);
        $PrevBlock = $block;
    }
    cleanup();
}

sub skip_spec ($) {
    my $block = shift;
    my $name = $block->name;
    if (defined(my $spec = $block->skip_nginx)) {
        $spec =~ m{^\s*(\d+)\s*:\s*([<>]=?)\s*(\d+)\.(\d+)\.(\d+)(?:\s*:\s*(.*))?\s*$}
            or bail_out("$name - Invalid --- skip_nginx spec: $spec");
        my ($n, $op, $reason) = ($1, $2, $6 || "nginx version $2 $3.$4.$5");
        my $ver = get_canon_version($3, $4, $5);
        return ($n, $reason) if eval "$NginxVersion $op $ver";
    }
    if (defined(my $spec = $block->skip_eval)) {
        if ($spec =~ /^\s*(\d+)\s*:\s*(.*)/s) {
            my ($n, $code) = ($1, $2);
            my $skip = eval $code;
            bail_out("$name - skip_eval - failed to eval the Perl code \"$code\": $@") if $@;
            return ($n, "skip_eval") if $skip;
        }
    }
    return;
}

sub run_test ($) {
    my $block = shift;
    return if defined $block->SKIP;

    my $name = $block->name;
    my $config = expand_env_in_text(scalar $block->config, $name);
    local $LogLevel = $block->log_level || $LogLevel;
    my ($tests_to_skip, $skip_reason) = skip_spec($block);
    my $manage = !$NoNginxManager && !defined $tests_to_skip;

    if ($manage) {
        if (defined $config) {
            my $stopped = stop_nginx($name);
            check_prev_block_shutdown_error_log($stopped);
            setup_server_root();
            write_user_files($block);
            write_config_file($block, $config);
            start_nginx($name);
            sleep $TestNginxSleep;
            $PrevConfig = $config;
        } elsif (!defined $PrevConfig) {
            bail_out("$name - No '--- config' section specified and could not get previous one.");
        }
    }

    $ErrLogFilePos = 0;
    for my $i (1 .. $RepeatEach) {
        write_user_files($block) if $i > 1 && $manage;
        if (defined $tests_to_skip) {
            SKIP: {
                Test::More::skip("$name - $skip_reason", $tests_to_skip);
            }
            next;
        }
        $RunTestHelper->($block, 0, $i - 1);
    }

    # compat extra: a single-process nginx that died means a crash
    if ($manage && -f $PidFile) {
        my $pid = get_pid_from_pidfile($name);
        if ($pid && !is_running($pid)) {
            my ($lines) = read_log($ErrLogFile, 0);
            my @tail = grep { !/\[debug\]/ } @{ $lines || [] };
            @tail = @tail[-min(10, scalar @tail) .. -1];
            Test::More::fail("$name - nginx process $pid is gone (crashed?)");
            Test::More::diag(join '', "error.log tail:\n", map { "    $_" } @tail);
            unlink $PidFile;
        }
    }
}

END {
    local $?;    # keep Test::Builder's exit code
    if ($RunTestsCalled) {
        cleanup();
        my $stopped = 0;
        $stopped = stop_nginx("END") if !$NoNginxManager && !$ENV{TEST_NGINX_NO_CLEAN};
        check_prev_block_shutdown_error_log($stopped);

        my $tb = Test::More->builder;
        # tolerate suites without a plan (the real module would croak)
        Test::More::plan('no_plan') unless $tb->has_plan;
        my @summary = $tb->summary;
        my $passed = grep { $_ } @summary;
        printf STDERR "%d passed, %d failed\n", $passed, @summary - $passed;
    }
}

1;
