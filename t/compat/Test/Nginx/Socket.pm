package Test::Nginx::Socket;

# Compatible subset of openresty/test-nginx's Test::Nginx::Socket: builds
# the HTTP request of a block, sends it over a plain TCP socket and checks
# the response and the logs, counting tests the way the real module does.

use strict;
use warnings;

use Test::Base -base;    # like the real module: subclass of Test::Base
use Test::Nginx::Util;

use IO::Select ();
use IO::Socket::INET ();
use List::Util qw( min );
use POSIX qw( EAGAIN EINTR );
use Time::HiRes qw( sleep );

our $VERSION = '0.29-compat';

our @EXPORT = qw( env_to_nginx is_str plan run_tests run_test
  repeat_each config_preamble worker_connections
  master_process_enabled
  no_long_string workers master_on master_off
  log_level no_shuffle no_root_location use_hup
  server_name
  server_addr server_root html_dir server_port server_port_for_client
  timeout no_nginx_manager check_accum_error_log
  add_block_preprocessor bail_out add_cleanup_handler
  add_response_body_check
);

our @ResponseBodyChecks;

$RunTestHelper         = \&run_test_helper;
$CheckErrorLog         = \&check_error_log;
$CheckShutdownErrorLog = \&check_shutdown_error_log;

sub set_http_config_filter ($) { $FilterHttpConfig = shift }
sub add_response_body_check ($) { push @ResponseBodyChecks, shift }

# ----------------------------------------------------------------- request

sub parse_more_headers ($) {
    my $in = shift;
    my ($out, $is_chunked) = ('', 0);
    for my $header (split /\n+/, $in) {
        next if $header =~ /^\s*\#/;
        my ($key, $val) = split /:\s*/, $header, 2;
        $val //= '';
        $is_chunked = 1 if lc($key) eq 'transfer-encoding' && $val eq 'chunked';
        $out .= "$key: $val\r\n";
    }
    return ($out, $is_chunked);
}

# "METH [URL [HTTP/x.y]]\nbody" -> raw HTTP request
sub build_request ($$$) {
    my ($name, $more_headers, $request) = @_;
    my ($hdr, $is_chunked) = parse_more_headers($more_headers);
    1 while $request =~ s/^\s*\#[^\n]+\s+|^\s+//s;
    my ($first, $content) = split /\n/, $request, 2;
    bail_out("$name - Request line should be non-empty") unless defined $first && $first ne '';
    $first =~ /^\s*(\S+)(?: +(\S+)(?: +(\S+))?)? *\s*$/
        or bail_out("$name - Request line is not valid. Should be 'meth [url [version]]' but got \"$first\".");
    my ($meth, $url, $ver) = ($1, $2 // '/', $3 // 'HTTP/1.1');
    $content //= '';

    my $len_header = '';
    if (!$is_chunked && $content ne '' && $hdr !~ /(?:^|\n)Content-Length:/) {
        $content =~ s/^\s+|\s+$//gs;
        $len_header = "Content-Length: " . length($content) . "\r\n";
    }
    my $headers = '';
    $headers .= "Host: $ServerName\r\n" if $hdr !~ /(?:^|\n)Host:/msi;
    $headers .= "Connection: close\r\n" if $hdr !~ /(?:^|\n)Connection/msi;
    return "$meth $url $ver\r\n$headers$hdr$len_header\r\n$content";
}

sub get_req_list ($) {
    my $block = shift;
    my $name = $block->name;
    if (defined(my $raw = $block->raw_request)) {
        return [ ref $raw eq 'ARRAY' ? join('', @$raw) : $raw ];
    }
    bail_out("$name - --- pipelined_requests is not supported by the compat runner")
        if defined $block->pipelined_requests;
    my $request = $block->request;
    bail_out("$name - request empty") unless defined $request;
    my $more = $block->more_headers // '';
    my @reqs = ref $request eq 'ARRAY' ? @$request : ($request);
    my @out;
    for my $i (0 .. $#reqs) {
        my $hdr = $more;
        if (ref $more eq 'ARRAY') {
            $hdr = $more->[$i];
            bail_out("--- more_headers lacks data for the ${i}th request") unless defined $hdr;
        }
        my $r = ref $reqs[$i] eq 'ARRAY'    # a list of packets
              ? join('', map { ref $_ ? $_->{value} : $_ } @{ $reqs[$i] })
              : $reqs[$i];
        push @out, build_request($name, $hdr, $r);
    }
    return \@out;
}

sub send_request ($$$) {
    my ($req, $timeout, $block) = @_;
    my $name = $block->name;
    my $head_req = $req =~ /^\s*HEAD\s+/ ? 1 : 0;
    local $SIG{PIPE} = 'IGNORE';

    my $sock;
    for my $tries (1 .. 20) {
        $sock = IO::Socket::INET->new(PeerAddr => $ServerAddr, PeerPort => $ServerPortForClient,
                                      Proto => 'tcp', Timeout => $timeout);
        last if $sock;
        # no point in waiting for an nginx that is gone (crashed)
        last if $tries >= 3 && -f $PidFile && !is_running(get_pid_from_pidfile($name));
        my $wait = min(1, (sleep_time() + sleep_time() * $tries) * $tries / 2);
        warn "$name - Can't connect to $ServerAddr:$ServerPortForClient: $!\n"
             . "\tRetry connecting after $wait sec\n" if $wait >= 0.6;
        sleep $wait;
    }
    if (!$sock) {
        fail("$name - Can't connect to $ServerAddr:$ServerPortForClient: $! (aborted)\n");
        return (undef, $head_req);
    }
    $sock->blocking(0);

    my ($resp, $off) = ('', 0);
    my $sel = IO::Select->new($sock);
    while (1) {
        my $writing = $off < length $req;
        $! = 0;
        my ($r, $w) = IO::Select->select($sel, $writing ? $sel : undef, undef, $timeout);
        if (!$r && !$w) {
            next if $! == EINTR;
            # timed out: a failure unless the block expects it (--- abort)
            fail("ERROR: client socket timed out - $name\n") unless defined $block->abort;
            last;
        }
        if ($w && @$w) {
            my $n = syswrite($sock, $req, length($req) - $off, $off);
            if (defined $n) {
                $off += $n;
                shutdown($sock, 1) if $off >= length $req && defined $block->shutdown;
            } elsif ($! != EAGAIN) {
                warn "write failed: $!\n";
                $off = length $req;    # stop writing, read what we got
            }
        }
        if ($r && @$r) {
            my $n = sysread($sock, my $buf, 16384);
            if ($n) { $resp .= $buf; next }
            next if !defined $n && $! == EAGAIN;
            warn "WARNING: $name - HTTP response read failure: $!" unless defined $n;
            last;    # EOF or error
        }
    }
    close $sock;
    return ($resp, $head_req);
}

# ---------------------------------------------------------------- response

package Test::Nginx::Socket::Response;    # the bits of HTTP::Response used

sub new     { my ($c, %a) = @_; bless { code => undef, hdrs => [], content => '', %a }, $c }
sub code    { $_[0]{code} }
sub content { $_[0]{content} = $_[1] if @_ > 1; $_[0]{content} }
sub header {
    my ($self, $key) = @_;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $key } @{ $self->{hdrs} };
    return @v ? join(', ', @v) : undef;
}

package Test::Nginx::Socket;

sub parse_response ($$$) {
    my ($name, $raw, $head_req) = @_;
    my ($raw_headers, $left) = ('');
    $raw_headers = $1 if $raw =~ /(.*?\r\n)\r\n/s;

    my ($head, $body) = $raw =~ /\A(.*?)\r?\n\r?\n(.*)\z/s ? ($1, $2) : ($raw, '');
    my $res = Test::Nginx::Socket::Response->new(content => $body);
    my ($status, @lines) = split /\r?\n/, $head;
    $res->{code} = $1 if defined $status && $status =~ m{^HTTP/\d+(?:\.\d+)?\s+(\d+)};
    for (@lines) {
        push @{ $res->{hdrs} }, [$1, $2] if /^([^:\s]+)\s*:\s*(.*?)\s*$/;
    }
    my $code = $res->code;
    return ($res, $raw_headers) if $code && ($code == 304 || $code == 101);

    my $enc = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    if (defined $enc && $enc eq 'chunked') {
        my ($decoded, $ok) = ('', 0);
        while (1) {
            if ($body =~ /\G 0 [\ \t]* \r\n \r\n /gcsx) {
                $left = $1 if $body =~ /\G (.+) /gcsx;
                $ok = 1;
                last;
            }
            last unless $body =~ /\G [\ \t]* ([A-Fa-f0-9]+) [^\r\n]* \r\n /gcsx;
            my ($size, $p) = (hex $1, pos $body);
            last if substr($body, $p + $size, 2) ne "\r\n";    # also when too short
            $decoded .= substr $body, $p, $size;
            pos($body) = $p + $size + 2;
        }
        if (!$ok) {
            Test::More::fail("$name - invalid chunked body received or no last chunk found: "
                             . substr($body, pos($body) // 0, 200));
            return;
        }
        $res->content($decoded);
    } elsif (defined $len && $len =~ /^\d+$/) {
        if (length $body < $len) {
            warn "WARNING: $name - response body truncated: $len expected, but got ",
                 length $body, "\n" unless $head_req;
        } elsif (length $body > $len) {
            $left = substr $body, $len;
            $res->content(substr $body, 0, $len);
        }
    }
    return ($res, $raw_headers, $left);
}

# ------------------------------------------------------------------ checks

sub get_indexed_value ($$$$) {
    my ($name, $value, $req_idx, $need_array) = @_;
    if ($need_array) {
        return $value->[$req_idx] if ref $value && ref $value eq 'ARRAY';
        bail_out("$name - You asked for many requests, the expected results should be arrays as well.");
    }
    return ref $value && ref $value eq 'ARRAY' ? $value->[0] : $value;
}

sub run_test_helper ($$$) {
    my ($block, $dry_run, $repeated_req_idx) = @_;
    my $name = $block->name;
    my $reqs = get_req_list($block);
    my $timeout = parse_time(scalar $block->timeout) // timeout();
    my $need_array = @$reqs > 1;
    my $res;

    for my $req_idx (0 .. $#$reqs) {
        my ($raw, $head_req) = send_request($reqs->[$req_idx], $timeout, $block);
        if (!defined $block->ignore_response) {
            my ($raw_headers, $left);
            ($res, $raw_headers, $left) = parse_response($name, $raw // '', $head_req);
            if ($left) {
                $left =~ s/([\0-\037\200-\377])/sprintf('\x{%02x}',ord $1)/eg;
                warn "WARNING: $name - unexpected extra bytes after last chunk in response: \"$left\"\n";
            }
            check_error_code($block, $res, $req_idx, $need_array);
            check_raw_response_headers($block, $raw_headers // '', $req_idx, $need_array);
            check_response_headers($block, $res, $raw_headers // '', $req_idx, $need_array);
            check_response_body($block, $res, $req_idx, $repeated_req_idx, $need_array);
        }
        if ($req_idx < $#$reqs) {
            sleep $block->wait if $block->wait;
            check_error_log($block, $res, $dry_run, $repeated_req_idx, $need_array);
            check_access_log($block, $repeated_req_idx) unless defined $block->ignore_response;
        }
    }
    sleep $block->wait if $block->wait;
    check_error_log($block, $res, $dry_run, $repeated_req_idx, $need_array);
    check_access_log($block, $repeated_req_idx) unless defined $block->ignore_response;
}

sub check_error_code ($$$$) {
    my ($block, $res, $req_idx, $need_array) = @_;
    my $name = $block->name;
    my $code = ($res && $res->code) || '';
    if (defined $block->error_code_like) {
        my $val = get_indexed_value($name, $block->error_code_like, $req_idx, $need_array);
        like($code, qr/$val/sm, "$name - status code ok");
    } elsif (defined $block->error_code) {
        is($code, get_indexed_value($name, $block->error_code, $req_idx, $need_array),
           "$name - status code ok");
    } else {
        is($code, 200, "$name - status code ok");
    }
}

sub check_raw_response_headers ($$$$) {
    my ($block, $raw_headers, $req_idx, $need_array) = @_;
    my $name = $block->name;
    if (defined $block->raw_response_headers_like) {
        my $v = get_indexed_value($name, $block->raw_response_headers_like, $req_idx, $need_array);
        like($raw_headers, qr/$v/s, "$name - raw resp headers like");
    }
    if (defined $block->raw_response_headers_unlike) {
        my $v = get_indexed_value($name, $block->raw_response_headers_unlike, $req_idx, $need_array);
        unlike($raw_headers, qr/$v/s, "$name - raw resp headers unlike");
    }
}

sub check_response_headers ($$$$$) {
    my ($block, $res, $raw_headers, $req_idx, $need_array) = @_;
    my $name = $block->name;
    if (defined $block->response_headers) {
        my $headers = parse_headers(get_indexed_value($name, $block->response_headers,
                                                      $req_idx, $need_array));
        for my $key (sort keys %$headers) {
            my $val = $headers->{$key};
            if (!defined $val) {
                unlike($raw_headers, qr/^\s*\Q$key\E\s*:/ms,
                       "$name - header $key not present in the raw headers");
                next;
            }
            $val =~ s/\$ServerPort\b/$ServerPort/g;
            $val =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            is(($res ? $res->header($key) : undef) // '', $val, "$name - header $key ok");
        }
    } elsif (defined $block->response_headers_like) {
        my $headers = parse_headers(get_indexed_value($name, $block->response_headers_like,
                                                      $req_idx, $need_array));
        for my $key (sort keys %$headers) {
            my $val = $headers->{$key};
            like(($res ? $res->header($key) : undef) // '', qr/^$val$/,
                 "$name - header $key like ok");
        }
    }
}

sub check_response_body ($$$$$) {
    my ($block, $res, $req_idx, $repeated_req_idx, $need_array) = @_;
    my $name = $block->name;
    my $content = $res ? $res->content : undef;
    if (defined $block->response_body) {
        my $expected = get_indexed_value($name, $block->response_body, $req_idx, $need_array);
        if (defined $expected && !ref $expected) {
            $expected =~ s/\$ServerPort\b/$ServerPort/g;
            $expected =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        }
        if (ref $expected) {
            like($content, $expected,
                 "$name - response_body - like (repeated req $repeated_req_idx, req $req_idx)");
        } else {
            is($content, $expected,    # Test::Base::is: shows a diff for multi-line text
               "$name - response_body - response is expected (repeated req $repeated_req_idx, req $req_idx)");
        }
    } elsif (defined $block->response_body_like || defined $block->response_body_unlike) {
        my $type = defined $block->response_body_like ? 'like' : 'unlike';
        my $method = "response_body_$type";
        my $pat = get_indexed_value($name, scalar $block->$method, $req_idx, $need_array);
        $pat =~ s/\$ServerPort\b/$ServerPort/g;
        $pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        my $summary = trim($content) // '';
        my $cmp = $type eq 'like' ? \&like : \&unlike;
        $cmp->($content, qr/$pat/s, "$name - response_body_$type - response is expected ($summary)");
    }
    $_->($block, $content, $req_idx, $repeated_req_idx, 0) for @ResponseBodyChecks;
}

sub fmt_str ($) {
    my $str = shift;
    chomp $str;
    $str =~ s/"/\\"/g;
    $str =~ s/\r/\\r/g;
    $str =~ s/\n/\\n/g;
    $str;
}

sub to_pats ($) {
    my $pats = shift;
    return [ split /\n+/, do { chomp(my $p = $pats); $p } ] if !ref $pats;
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub matches ($$) {
    my ($line, $pat) = @_;
    return ref $pat ? $line =~ /$pat/ : $line =~ /\Q$pat\E/;
}

# "--- error_log" style: each pattern must match some line (one test each)
sub check_log_has ($$$$) {
    my ($name, $pats, $lines, $what) = @_;
    $pats = to_pats($pats);
    for my $line (@{ $lines || [] }) {
        for my $pat (@$pats) {
            next unless defined $pat && matches($line, $pat);
            pass("$name - pattern \"$pat\" matches a line in $what");
            undef $pat;
        }
    }
    defined $_ and fail("$name - pattern \"$_\" should match a line in $what") for @$pats;
}

# "--- no_error_log" style: one failure per matching line, else one pass
sub check_log_lacks ($$$$$) {
    my ($name, $pats, $lines, $file, $suffix) = @_;
    $pats = to_pats($pats);
    $lines ||= [];
    my %found;
    for my $i (0 .. $#$lines) {
        for my $pat (@$pats) {
            next unless defined $pat && matches($lines->[$i], $pat);
            $found{$pat}++;
            my @more = @$lines[$i + 1 .. min($i + 9, $#$lines)];
            fail("$name - pattern \"" . fmt_str($pat) . "\" should not match any line in $file"
                 . " but matches line \"" . fmt_str($lines->[$i]) . "\"$suffix\n" . join '', @more);
        }
    }
    for my $pat (@$pats) {
        next if !defined $pat || $found{$pat};
        pass("$name - pattern \"" . fmt_str($pat) . "\" does not match a line in $file$suffix");
    }
}

sub check_error_log ($$$$$) {
    my ($block, $res, $dry_run, $repeated_req_idx, $need_array) = @_;
    my $name = $block->name;
    my $lines;

    my $grep_pat = $block->grep_error_log;
    if (defined $grep_pat) {
        $grep_pat = $grep_pat->[$repeated_req_idx] if ref $grep_pat eq 'ARRAY';
        my $expected = $block->grep_error_log_out;
        bail_out("$name - No --- grep_error_log_out defined but --- grep_error_log is defined")
            unless defined $expected;
        $expected = $expected->[$repeated_req_idx] if ref $expected eq 'ARRAY';
        $lines ||= error_log_data();
        my $matched = '';
        for my $line (@{ $lines || [] }) {
            if (ref $grep_pat ? $line =~ /$grep_pat/ : $line =~ /\Q$grep_pat\E/) {
                $matched .= "$&\n" if $& !~ /\n/;
            }
        }
        if (ref $expected eq 'Regexp') {
            like($matched, $expected, "$name - grep_error_log_out (req $repeated_req_idx)");
        } else {
            is($matched, $expected, "$name - grep_error_log_out (req $repeated_req_idx)");
        }
    } elsif (defined $block->grep_error_log_out) {
        bail_out("$name - No --- grep_error_log defined but --- grep_error_log_out is defined");
    }

    if (defined $block->error_log) {
        $lines ||= error_log_data();
        check_log_has($name, $block->error_log, $lines,
                      "error.log (req $repeated_req_idx)");
    }
    if (defined $block->no_error_log) {
        $lines ||= error_log_data();
        check_log_lacks($name, $block->no_error_log, $lines, "error.log",
                        " (req $repeated_req_idx)");
    }
    return if $dry_run;

    $lines ||= error_log_data();
    my $expected = [ grep { defined } $block->error_log, $block->no_error_log ];
    for my $line (@{ $lines || [] }) {
        warn "WARNING: $name - " . fmt_str($line) . "\n"
            if ($line =~ /writing a global lua variable/
                && !value_contains($expected, "writing a global lua variable"))
            || ($line =~ /\[crit\]/ && !value_contains($expected, "[crit"));
        if ($line =~ /\bAssertion .*?failed\b/) {
            chomp(my $l = $line);
            fail("$name - $l\n");
        }
    }
    check_fatal_log($block, "(req $repeated_req_idx)");    # compat extra
}

sub check_access_log ($$) {
    my ($block, $repeated_req_idx) = @_;
    my $name = $block->name;
    my $lines;
    if (defined $block->access_log) {
        $lines ||= access_log_data();
        check_log_has($name, $block->access_log, $lines,
                      "access.log (req $repeated_req_idx)");
    }
    if (defined $block->no_access_log) {
        $lines ||= access_log_data();
        check_log_lacks($name, $block->no_access_log, $lines, "access.log",
                        " (req $repeated_req_idx)");
    }
}

sub check_shutdown_error_log ($$) {
    my ($block, $dry_run) = @_;
    my $name = $block->name;
    my $pats = $block->shutdown_error_log;
    my $n = @{ to_pats($pats) };
    if (defined $block->no_shutdown_error_log) {
        $n += @{ to_pats(scalar $block->no_shutdown_error_log) };
    }
    if ($dry_run) {
        SKIP: { skip("$name - shutdown_error_log - tests skipped due to dry_run", $n) }
        return;
    }
    my $lines = error_log_data();
    if (defined $block->no_shutdown_error_log) {
        check_log_lacks($name, $block->no_shutdown_error_log, $lines, "error.log", "");
    }
    check_log_has($name, $pats, $lines, "error.log");
}

1;
__END__

=head1 NAME

Test::Nginx::Socket - compat subset of openresty/test-nginx (see
Test::Nginx::Socket::Lua in this directory for the supported features).

=cut
