package Test::Nginx::Socket;

# A compatible subset of openresty/test-nginx's Test::Nginx::Socket (0.33):
# builds the HTTP requests of a block, sends them over a plain TCP socket
# and checks the response and the logs, with the same checks, the same
# test counts and the same messages as the real module. Unlike the real
# one it needs no CPAN module beyond Test::Base (Debian's
# libtest-base-perl): responses are parsed here, not by HTTP::Response.

use strict;
use warnings;

use Test::Base -base;    # like the real module: a subclass of Test::Base
use Test::Nginx::Util;

use Encode ();
use IO::Select ();
use IO::Socket::INET ();
use JSON::PP ();
use Digest::MD5 ();
use Digest::SHA ();
use List::Util qw( min );
use POSIX qw( EAGAIN );
use Time::HiRes qw( sleep );

our $VERSION = '0.33-compat';

our @EXPORT = qw( env_to_nginx is_str plan run_tests run_test
  repeat_each config_preamble worker_connections
  master_process_enabled
  no_long_string workers master_on master_off
  log_level no_shuffle no_root_location use_hup
  server_name
  server_addr server_root html_dir server_port server_port_for_client
  timeout no_nginx_manager check_accum_error_log
  add_block_preprocessor bail_out add_test_cleanup_handler add_cleanup_handler
  add_response_body_check
);

our $TotalConnectingTimeouts = 0;

sub send_request ($$$$@);
sub value_contains ($$);
sub fmt_str ($);

$RunTestHelper         = \&run_test_helper;
$CheckErrorLog         = \&check_error_log;
$CheckShutdownErrorLog = \&check_shutdown_error_log;

sub set_http_config_filter ($) { $FilterHttpConfig = shift }

our @ResponseBodyChecks;

sub add_response_body_check ($) { push @ResponseBodyChecks, shift }

# ----------------------------------------------------------------- request

# "METH [URL [VERSION]]\nbody": the parts, with the sizes of what was
# skipped, so that get_moves can rewrite a request split into packets.
sub parse_request ($$) {
    my ($name, $rrequest) = @_;
    open my $in, '<', $rrequest;
    my $first = <$in>;
    if (!$first) {
        bail_out("$name - Request line should be non-empty");
    }
    my ($before_meth, $meth, $after_meth, $rel_url, $rel_url_size,
        $after_rel_url, $http_ver, $http_ver_size, $after_http_ver,
        $end_line_size);
    if ($first =~ /^(\s*)(\S+)( *)((\S+)( *))?((\S+)( *))?(\s*)$/) {
        $before_meth = defined $1 ? length($1) : undef;
        $meth = $2;
        $after_meth = defined $3 ? length($3) : undef;
        $rel_url = $5;
        $rel_url_size = defined $5 ? length($5) : undef;
        $after_rel_url = defined $6 ? length($6) : undef;
        $http_ver = $8;
        $http_ver_size = defined $8 ? length($8) : undef;
        $after_http_ver = defined $9 ? length($9) : undef;
        $end_line_size = defined $10 ? length($10) : undef;
    } else {
        bail_out("$name - Request line is not valid. Should be 'meth [url [version]]' but got \"$first\".");
    }
    if (!defined $rel_url) {
        $rel_url = '/';
        $rel_url_size = 0;
        $after_rel_url = 0;
    }
    if (!defined $http_ver) {
        $http_ver = 'HTTP/1.1';
        $http_ver_size = 0;
        $after_http_ver = 0;
    }

    my $content = do { local $/; <$in> };
    my $content_size;
    if (!defined $content) {
        $content = "";
        $content_size = 0;
    } else {
        $content_size = length($content);
    }
    close $in;

    return {
        method                 => $meth,
        url                    => $rel_url,
        content                => $content,
        http_ver               => $http_ver,
        skipped_before_method  => $before_meth,
        method_size            => length($meth),
        skipped_after_method   => $after_meth,
        url_size               => $rel_url_size,
        skipped_after_url      => $after_rel_url,
        http_ver_size          => $http_ver_size,
        skipped_after_http_ver => $after_http_ver + $end_line_size,
        content_size           => $content_size,
    };
}

sub get_moves ($) {
    my ($parsed_req) = @_;
    return ({ d => $parsed_req->{skipped_before_method} },
            { s_s => $parsed_req->{method_size}, s_v => $parsed_req->{method} },
            { d => $parsed_req->{skipped_after_method} },
            { s_s => $parsed_req->{url_size}, s_v => $parsed_req->{url} },
            { d => $parsed_req->{skipped_after_url} },
            { s_s => $parsed_req->{http_ver_size}, s_v => $parsed_req->{http_ver} },
            { d => $parsed_req->{skipped_after_http_ver} },
            { s_s => 0, s_v => $parsed_req->{headers} },
            { s_s => $parsed_req->{content_size}, s_v => $parsed_req->{content} });
}

sub apply_moves ($$) {
    my ($r_packet, $r_move) = @_;
    my $current_packet = shift @$r_packet;
    my $current_move = shift @$r_move;
    my $in_packet_cursor = 0;
    my @result = ();
    while (defined $current_packet) {
        if (!defined $current_move) {
            push @result, $current_packet;
            $current_packet = shift @$r_packet;
            $in_packet_cursor = 0;
        } elsif (defined $current_move->{d}) {
            if ($current_move->{d} > length($current_packet) - $in_packet_cursor) {
                $current_move->{d} -= length($current_packet) - $in_packet_cursor;
                if ($in_packet_cursor > 0) {
                    push @result, $current_packet;
                }
                $current_packet = shift @$r_packet;
                $in_packet_cursor = 0;
            } else {
                substr($current_packet, $in_packet_cursor, $current_move->{d}) = '';
                $current_move = shift @$r_move;
            }
        } else {
            if ($current_move->{s_s} > length($current_packet) - $in_packet_cursor) {
                $current_move->{s_s} -= length($current_packet) - $in_packet_cursor;
                substr($current_packet, $in_packet_cursor)
                    = substr($current_move->{s_v}, 0, length($current_packet) - $in_packet_cursor);
                push @result, $current_packet;
                $current_move->{s_v}
                    = substr($current_move->{s_v}, length($current_packet) - $in_packet_cursor);
                $current_packet = shift @$r_packet;
                $in_packet_cursor = 0;
            } else {
                substr($current_packet, $in_packet_cursor, $current_move->{s_s})
                    = $current_move->{s_v};
                $in_packet_cursor += length($current_move->{s_v});
                $current_move = shift @$r_move;
            }
        }
    }
    return \@result;
}

sub build_request_from_packets ($$$$$) {
    my ($name, $more_headers, $is_chunked, $conn_header, $request_packets) = @_;
    my $parsable_request = join '', @$request_packets;
    my $parsed_req = parse_request($name, \$parsable_request);

    my $len_header = '';
    if (!$is_chunked
        && defined $parsed_req->{content}
        && $parsed_req->{content} ne ''
        && $more_headers !~ /(?:^|\n)Content-Length:/)
    {
        $parsed_req->{content} =~ s/^\s+|\s+$//gs;
        $len_header .= "Content-Length: " . length($parsed_req->{content}) . "\r\n";
    }

    $more_headers =~ s/(?<!\r)\n/\r\n/gs;

    my $headers = '';
    if ($more_headers !~ /(?:^|\n)Host:/msi) {
        $headers .= "Host: $ServerName\r\n";
    }
    if ($more_headers !~ /(?:^|\n)Connection/msi) {
        $headers .= "Connection: $conn_header\r\n";
    }
    $headers .= "$more_headers$len_header\r\n";

    $parsed_req->{method} .= ' ';
    $parsed_req->{url} .= ' ';
    $parsed_req->{http_ver} .= "\r\n";
    $parsed_req->{headers} = $headers;

    my @elements_moves = get_moves($parsed_req);
    return apply_moves($request_packets, \@elements_moves);
}

sub parse_more_headers ($) {
    my ($in) = @_;
    my $is_chunked;
    my $out = '';
    for my $header (split /\n+/, $in) {
        next if $header =~ /^\s*\#/;
        my ($key, $val) = split /:\s*/, $header, 2;
        $val = '' if !defined $val;
        if (lc($key) eq 'transfer-encoding' and $val eq 'chunked') {
            $is_chunked = 1;
        }
        $out .= "$key: $val\r\n";
    }
    return $out, $is_chunked;
}

# The requests of a block: a list of requests, each a list of packets
# ({ value => ..., delay_before => ... }).
sub get_req_from_block ($) {
    my ($block) = @_;
    my $name = $block->name;

    my @req_list = ();

    if (defined $block->raw_request) {
        if (ref $block->raw_request && ref $block->raw_request eq 'ARRAY') {
            push @req_list, [ map { { value => $_ } } @{ $block->raw_request } ];
        } else {
            push @req_list, [{ value => $block->raw_request }];
        }
        return \@req_list;
    }

    my $request;
    if (defined $block->request_eval) {
        diag "$name - request_eval DEPRECATED. Use request eval instead.";
        $request = eval $block->request_eval;
        warn $@ if $@;
    } else {
        $request = $block->request;
        if (defined $request) {
            while ($request =~ s/^\s*\#[^\n]+\s+|^\s+//gs) {
                # comment lines and leading blanks
            }
        }
    }

    my $more_headers = $block->more_headers || '';

    my $headers_for = sub {
        my ($i, $what) = @_;
        if (ref $more_headers eq 'ARRAY') {
            my $hdr = $more_headers->[$i];
            bail_out("--- more_headers lacks data for the $what") if !defined $hdr;
            return parse_more_headers($hdr);
        }
        return parse_more_headers($more_headers);
    };

    if ($block->pipelined_requests) {
        my $reqs = $block->pipelined_requests;
        if (!ref $reqs || ref $reqs ne 'ARRAY') {
            bail_out("$name - invalid entries in --- pipelined_requests");
        }
        my $prq = "";
        my $i = 0;
        for my $request (@$reqs) {
            $request = expand_env_in_text $request, $name, $Test::Nginx::Util::RandPorts;
            my $conn_type = $i == @$reqs - 1 ? 'close' : 'keep-alive';
            my ($hdr, $is_chunked) = $headers_for->($i, "$i pipelined request");
            my $r_br = build_request_from_packets($name, $hdr, $is_chunked,
                                                  $conn_type, [$request]);
            $prq .= $$r_br[0];
            $i++;
        }
        push @req_list, [{ value => $prq }];

    } elsif (!ref $request) {
        my ($hdr, $is_chunked) = $headers_for->(0, "request");
        my $r_br = build_request_from_packets($name, $hdr, $is_chunked, 'close',
                                              [$request]);
        push @req_list, [{ value => $$r_br[0] }];

    } elsif (ref $request eq 'ARRAY') {
        my $i = 0;
        for my $one_req (@$request) {
            my ($hdr, $is_chunked) = $headers_for->($i, "${i}th request");

            if (!ref $one_req) {
                my $r_br = build_request_from_packets($name, $hdr, $is_chunked,
                                                      'close', [$one_req]);
                push @req_list, [{ value => $$r_br[0] }];

            } elsif (ref $one_req eq 'ARRAY') {
                my @packet_array = ();
                for my $one_packet (@$one_req) {
                    if (!ref $one_packet) {
                        push @packet_array, $one_packet;
                    } elsif (ref $one_packet eq 'HASH') {
                        push @packet_array, $one_packet->{value};
                    } else {
                        bail_out "$name - Invalid syntax. $one_packet should be a string or hash with value.";
                    }
                }

                my $transformed = build_request_from_packets($name, $hdr,
                                      $is_chunked, 'close', \@packet_array);
                my @transformed_req = ();
                my $idx = 0;
                for my $packet (@$transformed) {
                    if (!ref $$one_req[$idx]) {
                        push @transformed_req, { value => $packet };
                    } else {
                        $$one_req[$idx]->{value} = $packet;
                        push @transformed_req, $$one_req[$idx];
                    }
                    $idx++;
                }
                push @req_list, \@transformed_req;

            } else {
                bail_out "$name - Invalid syntax. $one_req should be a string or an array of packets.";
            }

            $i++;
        }

    } else {
        bail_out("$name - invalid ---request : MUST be string or array of requests");
    }

    return \@req_list;
}

sub run_filter_helper ($$$) {
    my ($block, $filter, $content) = @_;
    my $name = $block->name;

    if (ref $filter && ref $filter eq 'CODE') {
        return $filter->($content);
    }

    if (ref $filter) {
        bail_out("$name - the --- response_body_filters section "
                 . "only supports subroutine reference values and string values");
    }

    my %filters = (
        md5_hex  => \&Digest::MD5::md5_hex,
        sha1_hex => \&Digest::SHA::sha1_hex,
        uc       => sub { uc $_[0] },
        lc       => sub { lc $_[0] },
        ucfirst  => sub { ucfirst $_[0] },
        lcfirst  => sub { lcfirst $_[0] },
        length   => sub { length $_[0] },
    );
    my $f = $filters{$filter}
        or bail_out("$name - unknown filter, \"$filter\", "
                    . "specified in the --- response_body_filters section");
    return $f->($content);
}

sub run_test_helper ($$$) {
    my ($block, $dry_run, $repeated_req_idx) = @_;

    my $name = $block->name;

    my $r_req_list = get_req_from_block($block);

    if ($#$r_req_list < 0) {
        bail_out("$name - request empty");
    }

    my $timeout = parse_time($block->timeout);
    $timeout = timeout() if !defined $timeout;

    my $res;
    my $req_idx = 0;
    my ($n, $need_array);

    for my $one_req (@$r_req_list) {
        my ($raw_resp, $head_req);

        if ($dry_run) {
            $raw_resp = "200 OK HTTP/1.0\r\nContent-Length: 0\r\n\r\n";
        } else {
            ($raw_resp, $head_req) = send_request($one_req,
                $block->raw_request_middle_delay, $timeout, $block);
        }

        if ($block->pipelined_requests) {
            $n = @{ $block->pipelined_requests };
            $need_array = 1;
        } else {
            $need_array = $#$r_req_list > 0;
        }

        while (1) {    # once per response of the pipelined requests
            $raw_resp = '' if !defined $raw_resp;

            my ($raw_headers, $left);

            if (!defined $block->ignore_response) {
                if (defined $block->http09) {
                    $res = Test::Nginx::Socket::Response->new(code => 200,
                                                              content => $raw_resp);
                    $raw_headers = '';
                } else {
                    ($res, $raw_headers, $left) = parse_response($name, $raw_resp, $head_req);
                }
            }

            if (!$n) {
                if ($left) {
                    $left =~ s/([\0-\037\200-\377])/sprintf('\x{%02x}',ord $1)/eg;
                    warn "WARNING: $name - unexpected extra bytes after last chunk in ",
                        "response: \"$left\"\n";
                }
            } else {
                $raw_resp = $left;
                $n--;
            }

            if (!defined $block->ignore_response) {
                check_error_code($block, $res, $dry_run, $req_idx, $need_array);
                check_raw_response_headers($block, $raw_headers, $dry_run, $req_idx, $need_array);
                check_response_headers($block, $res, $raw_headers, $dry_run, $req_idx, $need_array);
                transform_response_body($block, $res, $req_idx);
                check_response_body($block, $res, $dry_run, $req_idx, $repeated_req_idx, $need_array);
            }

            if ($n || $req_idx < @$r_req_list - 1) {
                sleep($block->wait) if $block->wait;
                check_error_log($block, $res, $dry_run, $repeated_req_idx, $need_array);
                if (!defined $block->ignore_response) {
                    check_access_log($block, $dry_run, $repeated_req_idx);
                }
            }

            $req_idx++;

            last if !$n;
        }
    }

    sleep($block->wait) if $block->wait;

    check_error_log($block, $res, $dry_run, $repeated_req_idx, $need_array);

    if (!defined $block->ignore_response) {
        check_access_log($block, $dry_run, $repeated_req_idx);
    }
}

# ------------------------------------------------------------------ checks

sub get_indexed_value ($$$$) {
    my ($name, $value, $req_idx, $need_array) = @_;
    if ($need_array) {
        if (ref $value && ref $value eq 'ARRAY') {
            return $$value[$req_idx];
        }
        bail_out("$name - You asked for many requests, the expected results should be arrays as well.");
    }
    if (ref $value && ref $value eq 'ARRAY') {
        if ($req_idx != 0) {
            bail_out("$name - SHOULD NOT HAPPEN: idx != 0 and don't need array.");
        }
        return $$value[0];
    }
    return $value;
}

sub check_error_code ($$$$$) {
    my ($block, $res, $dry_run, $req_idx, $need_array) = @_;
    my $name = $block->name;
    SKIP: {
        skip "$name - tests skipped due to $dry_run", 1 if $dry_run;

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
}

sub check_raw_response_headers ($$$$$) {
    my ($block, $raw_headers, $dry_run, $req_idx, $need_array) = @_;
    my $name = $block->name;
    if (defined $block->raw_response_headers_like) {
        SKIP: {
            skip "$name - raw_response_headers_like - tests skipped due to $dry_run", 1 if $dry_run;
            my $expected = get_indexed_value($name, $block->raw_response_headers_like,
                                             $req_idx, $need_array);
            like $raw_headers, qr/$expected/s, "$name - raw resp headers like";
        }
    }
    if (defined $block->raw_response_headers_unlike) {
        SKIP: {
            skip "$name - raw_response_headers_unlike - tests skipped due to $dry_run", 1 if $dry_run;
            my $expected = get_indexed_value($name, $block->raw_response_headers_unlike,
                                             $req_idx, $need_array);
            unlike $raw_headers, qr/$expected/s, "$name - raw resp headers unlike";
        }
    }
}

sub check_response_headers ($$$$$$) {
    my ($block, $res, $raw_headers, $dry_run, $req_idx, $need_array) = @_;
    my $name = $block->name;
    if (defined $block->response_headers) {
        my $headers = parse_headers(get_indexed_value($name, $block->response_headers,
                                                      $req_idx, $need_array));
        while (my ($key, $val) = each %$headers) {
            if (!defined $val) {
                SKIP: {
                    skip "$name - response_headers - tests skipped due to $dry_run", 1 if $dry_run;
                    unlike $raw_headers, qr/^\s*\Q$key\E\s*:/ms,
                        "$name - header $key not present in the raw headers";
                }
                next;
            }

            $val =~ s/\$ServerPort\b/$ServerPort/g;
            $val =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;

            my $actual_val = $res ? $res->header($key) : undef;
            $actual_val = '' if !defined $actual_val;

            SKIP: {
                skip "$name - response_headers - tests skipped due to $dry_run", 1 if $dry_run;
                is $actual_val, $val, "$name - header $key ok";
            }
        }
    } elsif (defined $block->response_headers_like) {
        my $headers = parse_headers(get_indexed_value($name, $block->response_headers_like,
                                                      $req_idx, $need_array));
        while (my ($key, $val) = each %$headers) {
            my $expected_val = $res ? $res->header($key) : undef;
            $expected_val = '' if !defined $expected_val;
            SKIP: {
                skip "$name - response_headers_like - tests skipped due to $dry_run", 1 if $dry_run;
                like $expected_val, qr/^$val$/, "$name - header $key like ok";
            }
        }
    }
}

sub value_contains ($$) {
    my ($val, $pat) = @_;
    if (!ref $val || ref $val eq 'Regexp') {
        return $val =~ /\Q$pat\E/;
    }
    if (ref $val eq 'ARRAY') {
        for my $v (@$val) {
            return 1 if value_contains($v, $pat);
        }
    }
    return undef;
}

sub pattern_list ($) {
    my $pats = shift;
    if (!ref $pats) {
        chomp $pats;
        return [ split /\n+/, $pats ];
    }
    return [$pats] if ref $pats eq 'Regexp';
    return [@$pats];
}

sub line_matches ($$) {
    my ($line, $pat) = @_;
    return (ref $pat && $line =~ /$pat/) || $line =~ /\Q$pat\E/;
}

# "--- error_log": each pattern must match a line (one test each).
sub check_log_has ($$$$$) {
    my ($name, $pats, $lines, $what, $dry_run) = @_;
    $pats = pattern_list($pats);
    my ($section, $file, $suffix) = @$what;
    for my $line (@{ $lines || [] }) {
        for my $pat (@$pats) {
            next if !defined $pat;
            if (line_matches($line, $pat)) {
                SKIP: {
                    skip "$name - $section - tests skipped due to $dry_run", 1 if $dry_run;
                    pass("$name - pattern \"$pat\" matches a line in $file$suffix");
                }
                undef $pat;
            }
        }
    }
    for my $pat (@$pats) {
        if (defined $pat) {
            SKIP: {
                skip "$name - $section - tests skipped due to $dry_run", 1 if $dry_run;
                fail("$name - pattern \"$pat\" should match a line in $file$suffix");
            }
        }
    }
}

# "--- no_error_log": one failure per matching line, else one pass.
sub check_log_lacks ($$$$$$) {
    my ($name, $pats, $lines, $what, $dry_run, $more_context) = @_;
    $pats = pattern_list($pats);
    my ($section, $file, $suffix) = @$what;
    my %found;
    my $i = 0;
    $lines ||= [];
    for my $line (@$lines) {
        for my $pat (@$pats) {
            next if !defined $pat;
            if (line_matches($line, $pat)) {
                if ($found{$pat}) {
                    my $tb = Test::More->builder;
                    $tb->no_ending(1);
                } else {
                    $found{$pat} = 1;
                }
                SKIP: {
                    skip "$name - $section - tests skipped due to $dry_run ($line)", 1 if $dry_run;
                    my $ln = fmt_str($line);
                    my $p = fmt_str($pat);
                    my @more_lines;
                    if ($more_context) {
                        for (my $j = $i + 1; $j < min($i + 10, @$lines - 1); $j++) {
                            push @more_lines, $lines->[$j];
                        }
                    }
                    fail("$name - pattern \"$p\" should not match any line in $file but matches line \"$ln\"$suffix"
                         . ($more_context ? "\n" . join("", @more_lines) : ""));
                }
            }
        }
    } continue {
        $i++;
    }
    for my $pat (@$pats) {
        next if $found{$pat};
        if (defined $pat) {
            SKIP: {
                skip "$name - $section - tests skipped due to $dry_run", 1 if $dry_run;
                my $p = fmt_str($pat);
                pass("$name - pattern \"$p\" does not match a line in $file$suffix");
            }
        }
    }
}

sub check_access_log ($$$) {
    my ($block, $dry_run, $repeated_req_idx) = @_;
    my $name = $block->name;
    my $lines;

    if (defined $block->access_log) {
        $lines ||= access_log_data();
        check_log_has($name, $block->access_log, $lines,
                      ["access_log", "access.log", " (req $repeated_req_idx)"], $dry_run);
    }

    if (defined $block->no_access_log) {
        $lines ||= access_log_data();
        check_log_lacks($name, $block->no_access_log, $lines,
                        ["no_access_log", "access.log", " (req $repeated_req_idx)"],
                        $dry_run, 1);
    }
}

sub check_error_log ($$$$$) {
    my ($block, $res, $dry_run, $repeated_req_idx, $need_array) = @_;
    my $name = $block->name;
    my $lines;

    my $check_write_guard_message = 1;
    my $check_alert_message = 1;
    my $check_crit_message = 1;
    my $check_emerg_message = 1;

    my $grep_pat;
    my $grep_pats = $block->grep_error_log;
    if (defined $grep_pats) {
        if (ref $grep_pats && ref $grep_pats eq 'ARRAY') {
            $grep_pat = $grep_pats->[$repeated_req_idx];
        } else {
            $grep_pat = $grep_pats;
        }
    } elsif (defined $block->grep_error_log_out) {
        bail_out("$name - No --- grep_error_log defined but --- grep_error_log_out is defined");
    }

    if (defined $grep_pat) {
        my $expected = $block->grep_error_log_out;
        if (!defined $expected) {
            bail_out("$name - No --- grep_error_log_out defined but --- grep_error_log is defined");
        }

        $expected = expand_env_in_text $expected, $name, $Test::Nginx::Util::RandPorts;

        if (ref $expected && ref $expected eq 'ARRAY') {
            $expected = $expected->[$repeated_req_idx];
        }

        SKIP: {
            skip "$name - error_log - tests skipped due to $dry_run", 1 if $dry_run;

            $lines ||= error_log_data();

            my $matched_lines = '';
            for my $line (@$lines) {
                if (ref $grep_pat && $line =~ /$grep_pat/ || $line =~ /\Q$grep_pat\E/) {
                    my $matched = $&;
                    if ($matched !~ /\n/) {
                        $matched_lines .= $matched . "\n";
                    }
                }
            }

            if (ref $expected eq 'Regexp') {
                like($matched_lines, $expected, "$name - grep_error_log_out (req $repeated_req_idx)");
            } else {
                is($matched_lines, $expected, "$name - grep_error_log_out (req $repeated_req_idx)");
            }
        }
    }

    for my $section (qw(error_log no_error_log)) {
        my $pats = $block->$section;
        next if !defined $pats;
        undef $check_write_guard_message
            if value_contains($pats, "writing a global lua variable");
        undef $check_alert_message if value_contains($pats, "[alert");
        undef $check_crit_message if value_contains($pats, "[crit");
        undef $check_emerg_message if value_contains($pats, "[emerg");
    }

    if (defined $block->error_log) {
        $lines ||= error_log_data();
        check_log_has($name, $block->error_log, $lines,
                      ["error_log", "error.log", " (req $repeated_req_idx)"], $dry_run);
    }

    if (defined $block->no_error_log) {
        $lines ||= error_log_data();
        check_log_lacks($name, $block->no_error_log, $lines,
                        ["no_error_log", "error.log", " (req $repeated_req_idx)"],
                        $dry_run, 1);
    }

    # as the real module: these lines are warnings, not failures
    my @warn_on = (
        [ $check_write_guard_message, qr/writing a global lua variable/, "\n" ],
        [ $check_alert_message, qr/\[alert\]/, "\n" ],
        [ $check_crit_message, qr/\[crit\]/, "\n" ],
        [ $check_emerg_message, qr/\[emerg\]/, "" ],
    );
    for my $w (@warn_on) {
        my ($enabled, $re, $nl) = @$w;
        next if !$enabled || $dry_run;
        $lines ||= error_log_data();
        for my $line (@$lines) {
            if ($line =~ $re) {
                my $ln = fmt_str($line);
                warn("WARNING: $name - $ln$nl");
            }
        }
    }

    for my $line (@{ $lines || [] }) {
        if ($line =~ /\bAssertion .*?failed\b/) {
            my $tb = Test::More->builder;
            $tb->no_ending(1);
            chomp $line;
            fail("$name - $line\n");
        }
    }
}

sub check_shutdown_error_log ($$) {
    my ($block, $dry_run) = @_;
    my $name = $block->name;
    my $lines;

    my $pats = $block->shutdown_error_log;
    if (defined $pats) {
        $lines ||= error_log_data();
        check_log_has($name, $pats, $lines, ["shutdown_error_log", "error.log", ""],
                      $dry_run ? "dry_run" : 0);

        for my $line (@$lines) {
            if ($line =~ /\bAssertion .*? failed\.$/) {
                my $tb = Test::More->builder;
                $tb->no_ending(1);
                chomp $line;
                fail("$name - $line");
            }
        }
    }

    if (defined $block->no_shutdown_error_log) {
        $lines ||= error_log_data();
        check_log_lacks($name, $block->no_shutdown_error_log, $lines,
                        ["no_shutdown_error_log", "error.log", ""], $dry_run, 0);
    }
}

sub fmt_str ($) {
    my $str = shift;
    chomp $str;
    $str =~ s/"/\\"/g;
    $str =~ s/\r/\\r/g;
    $str =~ s/\n/\\n/g;
    $str;
}

sub transform_response_body ($$$) {
    my ($block, $res, $req_idx) = @_;

    return unless defined $res;

    my $content = $res->content;
    return unless defined $content;

    my $name = $block->name;
    my $filters = $block->response_body_filters;
    return if !defined $filters;

    my $is_2d_array = 0;
    if (!ref $filters) {
        $filters =~ s/^\s+|\s+$//gs;
        $filters = [split /\s+/, $filters];
    } elsif (ref $filters ne 'ARRAY') {
        $filters = [$filters];
    }

    if (ref $filters->[0] eq 'ARRAY') {
        $is_2d_array = 1;
        for my $elem (@$filters) {
            if (ref $elem ne "ARRAY") {
                bail_out("$name - the --- response_body_filters two-dimensional array "
                         . "only be like [[uc], [lc]] not [[uc], lc]");
            }
        }
    }

    my $new = $content;
    my $filter = $filters;

    if ($is_2d_array) {
        $filter = $filters->[$req_idx];
        bail_out("$name - the ---response_body_filters two-dimensional array "
                 . "unmatch the specified request($req_idx)") unless defined $filter;
    }

    if (ref $filter && ref $filter eq 'ARRAY') {
        $new = run_filter_helper($block, $_, $new) for @$filter;
    } else {
        $new = run_filter_helper($block, $filter, $new);
    }

    $res->content($new);
}

sub check_response_body ($$$$$$) {
    my ($block, $res, $dry_run, $req_idx, $repeated_req_idx, $need_array) = @_;
    my $name = $block->name;

    my $write_resp_body_file = $block->write_resp_body_file;
    if (defined $write_resp_body_file && defined $res) {
        my $got_body = $res->content // '';
        open my $out, ">$write_resp_body_file"
            or bail_out "$name - failed to write to file '$write_resp_body_file': $!";
        print $out $got_body;
        close $out;
    }

    if (defined $block->response_body || defined $block->response_body_eval) {
        my $content = $res ? $res->content : undef;
        if (defined $content) {
            $content =~ s/^TE: deflate,gzip;q=0\.3\r\n//gms;
            $content =~ s/^Connection: TE, close\r\n//gms;
        }

        if (defined $block->response_body_json_sort) {
            my $js = JSON::PP->new;
            $js->canonical(1);
            my $obj;
            my $rc = eval { $obj = $js->loose(1)->decode($content); 1; };
            if ($rc) {
                $content = $js->encode($obj) . "\n";
            }
        }

        my $expected;
        if ($block->response_body_eval) {
            diag "$name - response_body_eval is DEPRECATED. Use response_body eval instead.";
            $expected = eval get_indexed_value($name, $block->response_body_eval,
                                               $req_idx, $need_array);
            warn $@ if $@;
        } else {
            $expected = get_indexed_value($name, $block->response_body, $req_idx, $need_array);
        }

        if ($block->charset) {
            Encode::from_to($expected, 'UTF-8', $block->charset);
        }

        unless (!defined $expected || ref $expected) {
            $expected =~ s/\$ServerPort\b/$ServerPort/g;
            $expected =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
            $expected = expand_env_in_text $expected, $name, $Test::Nginx::Util::RandPorts;
        }

        SKIP: {
            skip "$name - response_body - tests skipped due to $dry_run", 1 if $dry_run;
            if (ref $expected) {
                like $content, $expected,
                    "$name - response_body - like (repeated req $repeated_req_idx, req $req_idx)";
            } else {
                # Test::Base::is: a diff for multi-line text (the real
                # module uses Test::LongString unless no_long_string())
                is($content, $expected,
                   "$name - response_body - response is expected (repeated req $repeated_req_idx, req $req_idx)");
            }
        }

    } elsif (defined $block->response_body_like || defined $block->response_body_unlike) {
        my ($patterns, $type, $cmp);
        if (defined $block->response_body_like) {
            $patterns = $block->response_body_like;
            ($type, $cmp) = ("like", \&like);
        } else {
            $patterns = $block->response_body_unlike;
            ($type, $cmp) = ("unlike", \&unlike);
        }

        my $content = $res ? $res->content : undef;
        if (defined $content) {
            $content =~ s/^TE: deflate,gzip;q=0\.3\r\n//gms;
            $content =~ s/^Connection: TE, close\r\n//gms;
        }
        my $expected_pat = get_indexed_value($name, $patterns, $req_idx, $need_array);
        $expected_pat =~ s/\$ServerPort\b/$ServerPort/g;
        $expected_pat =~ s/\$ServerPortForClient\b/$ServerPortForClient/g;
        my $summary = trim($content);
        $summary = "" if !defined $summary;

        SKIP: {
            skip "$name - response_body_$type - tests skipped due to $dry_run", 1 if $dry_run;
            $cmp->($content, qr/$expected_pat/s,
                   "$name - response_body_$type - response is expected ($summary)");
        }
    }

    for my $check (@ResponseBodyChecks) {
        $check->($block, $res ? $res->content : undef, $req_idx, $repeated_req_idx, $dry_run);
    }
}

# ---------------------------------------------------------------- response

package Test::Nginx::Socket::Response;    # the bits of HTTP::Response used

sub new { my ($c, %a) = @_; bless { code => undef, hdrs => [], content => '', %a }, $c }

sub code    { $_[0]{code} = $_[1] if @_ > 1; $_[0]{code} }
sub content { $_[0]{content} = $_[1] if @_ > 1; $_[0]{content} }

sub header {
    my ($self, $key) = @_;
    my @v = map { $_->[1] } grep { lc $_->[0] eq lc $key } @{ $self->{hdrs} };
    return @v if wantarray;
    return @v ? join(', ', @v) : undef;
}

# As HTTP::Response->parse (and HTTP::Message->parse): a status line,
# header lines up to the first line that is not one, the content.
sub parse {
    my ($class, $str) = @_;
    my $res = $class->new;
    my $status_line;
    if (defined $str && $str =~ s/^(.*)\n//) {
        $status_line = $1;
    } else {
        $status_line = $str;
        $str = "";
    }
    if (defined $status_line) {
        $status_line =~ s/\r\z//;
        my $code;
        if ($status_line =~ /^\d{3} /) {
            ($code) = split ' ', $status_line, 2;
        } else {
            (undef, $code) = split ' ', $status_line, 3;
        }
        $res->{code} = $code;
    }

    my @hdrs;
    while (1) {
        if ($str =~ s/^([^\s:]+)[ \t]*: ?(.*)\n?//) {
            push @hdrs, [$1, $2];
            $hdrs[-1][1] =~ s/\r\z//;
        } elsif (@hdrs && $str =~ s/^([ \t].*)\n?//) {
            $hdrs[-1][1] .= "\n$1";
            $hdrs[-1][1] =~ s/\r\z//;
        } else {
            $str =~ s/^\r?\n//;
            last;
        }
    }
    $res->{hdrs} = \@hdrs;
    $res->{content} = $str;
    return $res;
}

package Test::Nginx::Socket;

sub parse_response ($$$) {
    my ($name, $raw_resp, $head_req) = @_;

    my $left;

    my $raw_headers = '';
    if ($raw_resp =~ /(.*?\r\n)\r\n/s) {
        $raw_headers = $1;
    }

    my $res = Test::Nginx::Socket::Response->parse($raw_resp);

    my $code = $res->code;

    my $enc = $res->header('Transfer-Encoding');
    my $len = $res->header('Content-Length');
    my @trailers = $res->header('Trailer');

    if ($code && $code !~ /^\d+$/) {
        undef $code;
        $res->code(undef);
    }

    if ($code && ($code == 304 || $code == 101)) {
        return $res, $raw_headers;
    }

    if (defined $enc && $enc eq 'chunked') {
        my $raw = $res->content;
        $raw = '' if !defined $raw;

        my $decoded = '';
        my $fail = sub {
            my $tb = Test::More->builder;
            $tb->no_ending(1);
            fail(shift);
            return;
        };
        while (1) {
            if (@trailers == 0 && $raw =~ /\G 0 [\ \t]* \r\n \r\n /gcsx) {
                if ($raw =~ /\G (.+) /gcsx) {
                    $left = $1;
                }
                last;

            } elsif (@trailers > 0 && $raw =~ /\G 0 [\ \t]* \r\n /gcsx) {
                for my $trailer (@trailers) {
                    if ($raw !~ /\G($trailer:\ [^\n]*\r\n)/gcs) {
                        return $fail->("$name - invalid trailer data received (expected $trailer).");
                    }
                }
                if ($raw !~ /\G\r\n/gcs) {
                    return $fail->("$name - invalid chunked data received (expected CRLF).");
                }
                if ($raw =~ /\G (.+) /gcsx) {
                    $left = $1;
                }
                last;
            }

            if ($raw =~ m{ \G [\ \t]* ( [A-Fa-f0-9]+ ) [\ \t]* \r\n }gcsx) {
                my $rest = hex($1);
                my $bit_sz = 32765;
                while ($rest > 0) {
                    my $bit = $rest < $bit_sz ? $rest : $bit_sz;
                    if ($raw =~ /\G(.{$bit})/gcs) {
                        $decoded .= $1;
                    } else {
                        return $fail->("$name - invalid chunked data received "
                                       . "(not enought octets for the data section)");
                    }
                    $rest -= $bit;
                }
                if ($raw !~ /\G\r\n/gcs) {
                    return $fail->("$name - invalid chunked data received (expected CRLF).");
                }

            } elsif ($raw =~ /\G.+/gcs) {
                return $fail->("$name - invalid chunked body received: $&");

            } else {
                return $fail->("$name - no last chunk found - $raw");
            }
        }

        $res->content($decoded);

    } elsif (defined $len && $len ne '' && $len >= 0) {
        my $raw = $res->content;
        if (length $raw < $len) {
            if (!$head_req) {
                warn "WARNING: $name - response body truncated: ",
                    "$len expected, but got ", length $raw, "\n";
            }
        } elsif (length $raw > $len) {
            my $content = substr $raw, 0, $len;
            $left = substr $raw, $len;
            $res->content($content);
        }
    }

    return ($res, $raw_headers, $left);
}

# ------------------------------------------------------------------ client

sub send_request ($$$$@) {
    my ($req, $middle_delay, $timeout, $block, $tries) = @_;

    my $name = $block->name;

    my @req_bits = ref $req ? @$req : ($req);

    my $head_req = 0;
    {
        my $req = join '', map { $_->{value} } @req_bits;
        $head_req = 1 if $req =~ /^\s*HEAD\s+/;
    }

    my $server_addr = $block->server_addr_for_client;
    $server_addr = $ServerAddr if !defined $server_addr;

    my $sock = IO::Socket::INET->new(
        PeerAddr => $server_addr,
        PeerPort => $ServerPortForClient,
        Proto    => 'tcp',
        Blocking => 0,
        Timeout  => $timeout,
    );

    if (!defined $sock) {
        $tries ||= 1;
        my $total_tries = $TotalConnectingTimeouts ? 20 : 50;
        if ($tries <= $total_tries) {
            my $wait = (sleep_time() + sleep_time() * $tries) * $tries / 2;
            $wait = 1 if $wait >= 1;

            if ($wait >= 0.6) {
                warn "$name - Can't connect to $server_addr:$ServerPortForClient: $!\n";
                if ($tries + 1 <= $total_tries) {
                    warn "\tRetry connecting after $wait sec\n";
                }
            }

            sleep $wait;

            return send_request($req, $middle_delay, $timeout, $block, $tries + 1);
        }

        my $msg = "$name - Can't connect to $server_addr:$ServerPortForClient: $! (aborted)\n";
        if (++$TotalConnectingTimeouts < 3) {
            my $tb = Test::More->builder;
            $tb->no_ending(1);
            fail($msg);
        } else {
            bail_out($msg);
        }

        return;
    }

    local $SIG{PIPE} = 'IGNORE';

    my $resp = '';
    my $write_buf = (shift @req_bits)->{value};
    my $write_offset = 0;
    my $writing = 1;

    my $sel = IO::Select->new($sock);

    while (1) {
        my ($readable, $writable) = IO::Select->select($sel, $writing ? $sel : undef,
                                                       undef, $timeout);
        if (!$readable && !$writable) {
            # timed out
            close $sock;
            if (!defined $block->abort) {
                my $tb = Test::More->builder;
                $tb->no_ending(1);
                fail("ERROR: client socket timed out - $name\n");
            } else {
                sleep 0.005;
            }
            last;
        }

        if ($readable && @$readable) {
            my $done;
            while (1) {
                my $bytes = sysread($sock, my $read_buf, 1024);
                if (!defined $bytes) {
                    last if $! == EAGAIN;
                    warn "WARNING: $name - HTTP response read failure: $!";
                    $done = 1;
                    last;
                }
                if ($bytes == 0) {    # connection closed
                    $done = 1;
                    last;
                }
                $resp .= $read_buf;
            }
            if ($done) {
                close $sock;
                last;
            }
        }

        next if !$writing || !$writable || !@$writable;

        # write what we can; between packets, wait their delay
        my $failed;
        while (1) {
            my $rest = length($write_buf) - $write_offset;
            if ($rest > 0) {
                my $bytes = syswrite($sock, $write_buf, $rest, $write_offset);
                if (!defined $bytes) {
                    last if $! == EAGAIN;
                    my $errmsg = "write failed: $!";
                    warn "$errmsg\n";
                    $resp = $errmsg if !$resp;
                    $failed = 1;
                    last;
                }
                $write_offset += $bytes;
                next;
            }

            my $next_send = shift @req_bits;
            if (!defined $next_send) {
                # all data has been written
                my $shutdown = $block->shutdown;
                if (defined $shutdown) {
                    $shutdown = 1 if $shutdown =~ /^$/s;
                    shutdown($sock, $shutdown);
                }
                $writing = 0;
                last;
            }

            $write_buf = $next_send->{value};
            $write_offset = 0;

            my $wait_time = defined $next_send->{delay_before}
                          ? $next_send->{delay_before} : $middle_delay;
            sleep $wait_time if $wait_time;
        }

        if ($failed) {
            close $sock;
            last;
        }
    }

    return ($resp, $head_req);
}

1;
__END__

=head1 NAME

Test::Nginx::Socket - compat subset of openresty/test-nginx (see README.md
in t/compat for what is supported).

=cut
