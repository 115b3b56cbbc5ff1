//! [`TcpStream`] and its [`Options`].

use std::fmt;
use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Duration;

use crate::config::{NetConfig, MAX_POOL_SIZE, MAX_SOCKET_MS};
use crate::executor::current_root;
use crate::net::task::{ConnectSpec, NetTask, SockId};
use crate::runtime::Runtime;

/// Most bytes asked for by one read, by default: ngx_lua hands over at
/// most `lua_socket_buffer_size` bytes per read anyway.
const READ_SIZE: u32 = 64 * 1024;

/// How to connect a [`TcpStream`]: TLS, keepalive pool, timeouts. The
/// defaults come from `async.configure` (`connect_timeout`,
/// `send_timeout`, `read_timeout`, `keepalive_timeout`,
/// `keepalive_pool`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Options {
    tls: bool,
    server_name: Option<String>,
    verify: Option<bool>,
    pool: Option<String>,
    pool_size: Option<u32>,
    keepalive: Option<Duration>,
    connect_timeout: Option<Duration>,
    send_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    half_duplex: bool,
}

impl Options {
    /// The defaults: plain TCP, nginx's default pool name (`host:port`).
    pub fn new() -> Options {
        Options::default()
    }

    /// TLS by nginx (`sslhandshake`), after connecting. The server name
    /// (SNI, and the name the certificate must carry) is the host of the
    /// address unless [`Options::server_name`] says otherwise; an IP
    /// address or a unix socket has none. The certificate is verified
    /// against `lua_ssl_trusted_certificate` unless [`Options::verify`]
    /// turns it off. nginx checks host names only: a verified stream with
    /// no server name (to an IP address or a unix socket) fails to open,
    /// with an error of kind `InvalidInput`.
    pub fn tls(mut self, on: bool) -> Options {
        self.tls = on;
        self
    }

    /// The TLS server name to send and verify (implies [`Options::tls`]).
    pub fn server_name(mut self, name: impl Into<String>) -> Options {
        self.tls = true;
        self.server_name = Some(name.into());
        self
    }

    /// Whether the server's certificate is verified (default: yes).
    pub fn verify(mut self, on: bool) -> Options {
        self.verify = Some(on);
        self
    }

    /// The keepalive pool's name (default: `host:port`, or `unix:/path`,
    /// nginx's own default). With TLS, `|tls|<server name>|<1 or 0>` is
    /// appended (the verify setting), so that a connection never serves a
    /// request whose TLS settings differ.
    pub fn pool(mut self, name: impl Into<String>) -> Options {
        self.pool = Some(name.into());
        self
    }

    /// Most idle connections the pool keeps (default: `keepalive_pool`).
    pub fn pool_size(mut self, n: u32) -> Options {
        self.pool_size = Some(n.clamp(1, MAX_POOL_SIZE));
        self
    }

    /// How long an idle connection stays in the pool (default:
    /// `keepalive_timeout`).
    pub fn keepalive_timeout(mut self, d: Duration) -> Options {
        self.keepalive = Some(d);
        self
    }

    /// Timeout of the connect and TLS handshake (default:
    /// `connect_timeout`).
    pub fn connect_timeout(mut self, d: Duration) -> Options {
        self.connect_timeout = Some(d);
        self
    }

    /// Timeout of each send (default: `send_timeout`).
    pub fn send_timeout(mut self, d: Duration) -> Options {
        self.send_timeout = Some(d);
        self
    }

    /// Timeout of each read (default: `read_timeout`).
    pub fn read_timeout(mut self, d: Duration) -> Options {
        self.read_timeout = Some(d);
        self
    }

    /// Declares the protocol half-duplex: it never needs to send while it
    /// waits to receive on this stream, except what its own reads lead
    /// to (request and response: HTTP/1.1 with a request body known in
    /// full, Redis, memcached). The waiting light thread then reads
    /// itself instead of starting a reader light thread, which is
    /// cheaper. A read it does is cut short by the call's own timeout,
    /// which ngx_lua logs as a read timeout. Off by default: with it, a
    /// send queued while a read waits (a WINDOW_UPDATE of HTTP/2, a query
    /// sent by a database client's other half) waits for that read.
    pub fn half_duplex(mut self, on: bool) -> Options {
        self.half_duplex = on;
        self
    }

    /// Opens a stream to `addr` (`host:port`, `[IPv6]:port` or
    /// `unix:/path`) without waiting: the connect is queued, and so are
    /// the writes and the first read that follow it, which the waiter
    /// then carries out in one go. A failed connect shows in the stream's
    /// first read or write (or in [`TcpStream::ready`]).
    ///
    /// Fails on a malformed address, on a verified TLS stream with no
    /// server name to check (see [`Options::tls`]), or outside a task of
    /// resty-async's executor.
    pub fn open(&self, addr: &str) -> io::Result<TcpStream> {
        let root = current_root().ok_or_else(|| {
            io::Error::other(
                "a resty_async::net stream can only be opened by a task of resty-async's executor",
            )
        })?;
        let rt = Runtime::current();
        let defaults = Runtime::net_config();
        // The same address and options as a stream opened lately: its spec,
        // without building one.
        let spec = match rt.net().recent_spec(addr, self, defaults) {
            Some(spec) => spec,
            None => {
                let spec = rt.net().spec(self.spec(addr, defaults)?);
                rt.net()
                    .remember_spec((addr.to_owned(), self.clone(), defaults), &spec);
                spec
            }
        };
        let keepalive = (ms(self.keepalive, defaults.keepalive_ms), spec.conn.pool_size);
        let task = rt.net().task(root);
        let sock = task.open(spec, READ_SIZE, self.half_duplex)?;
        Ok(TcpStream {
            task,
            sock,
            keepalive,
        })
    }

    /// The connect spec of a stream to `addr` with these options.
    fn spec(&self, addr: &str, defaults: NetConfig) -> io::Result<ConnectSpec> {
        let (host, port) = parse_addr(addr)?;
        let tls = self.tls.then(|| {
            self.server_name.clone().or_else(|| match &port {
                Some(_) if host.parse::<IpAddr>().is_err() && !host.starts_with('[') => Some(host.clone()),
                _ => None,
            })
        });
        let verify = self.verify.unwrap_or(true);
        if verify && tls == Some(None) {
            return Err(unverifiable(&host));
        }
        let mut pool = self.pool.clone().unwrap_or_else(|| match port {
            Some(p) => format!("{host}:{p}"),
            None => host.clone(),
        });
        if let Some(name) = &tls {
            pool.push_str("|tls|");
            pool.push_str(name.as_deref().unwrap_or(""));
            pool.push_str(if verify { "|1" } else { "|0" });
        }
        Ok(ConnectSpec {
            host,
            port,
            pool,
            pool_size: self.pool_size.unwrap_or(defaults.pool_size),
            connect_ms: ms(self.connect_timeout, defaults.connect_ms),
            send_ms: ms(self.send_timeout, defaults.send_ms),
            read_ms: ms(self.read_timeout, defaults.read_ms),
            tls,
            verify,
        })
    }

    /// Opens a stream to `addr` (see [`Options::open`]) and waits until it
    /// is connected (and its TLS handshake done).
    pub async fn connect(&self, addr: &str) -> io::Result<TcpStream> {
        let stream = self.open(addr)?;
        stream.ready().await?;
        Ok(stream)
    }
}

/// The error of a verified TLS stream with no name to check: ngx_lua's
/// `sslhandshake` checks the certificate's name against the server name
/// only (X509_check_host), so without one any certificate that chains to a
/// trusted CA would be taken, whoever it was issued to.
fn unverifiable(host: &str) -> io::Error {
    let why = if host.starts_with("unix:") {
        "a unix socket has no host name"
    } else {
        "nginx checks host names, not IP addresses"
    };
    io::Error::new(
        io::ErrorKind::InvalidInput,
        format!(
            "cannot verify the TLS certificate of {host}: {why} \
             (connect by name, give a server name, or turn verification off)"
        ),
    )
}

/// A duration as whole milliseconds of a socket timeout (`default` if
/// none).
fn ms(d: Option<Duration>, default: u32) -> u32 {
    d.map_or(default, |d| {
        d.as_millis().clamp(1, u128::from(MAX_SOCKET_MS)) as u32
    })
}

/// `host:port`, `[v6]:port` or `unix:/path`, split for a cosocket connect.
fn parse_addr(addr: &str) -> io::Result<(String, Option<u16>)> {
    let bad = |why: &str| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad address \"{addr}\": {why}"),
        )
    };
    if addr.bytes().any(|b| b <= b' ' || b == 0x7f) {
        return Err(bad("spaces or control characters"));
    }
    if let Some(path) = addr.strip_prefix("unix:") {
        if !path.starts_with('/') {
            return Err(bad("a unix socket path must be absolute"));
        }
        return Ok((addr.to_owned(), None));
    }
    let (host, port) = addr.rsplit_once(':').ok_or_else(|| bad("host:port expected"))?;
    let port: u16 = port
        .parse()
        .ok()
        .filter(|&p| p > 0)
        .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?;
    if let Some(v6) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        v6.parse::<std::net::Ipv6Addr>()
            .map_err(|_| bad("bad IPv6 address"))?;
        return Ok((host.to_owned(), Some(port)));
    }
    if host.is_empty() || host.contains(['[', ']', '/', ':', '@']) {
        return Err(bad("bad host"));
    }
    Ok((host.to_owned(), Some(port)))
}

/// A TCP (or unix) stream whose socket operations nginx carries out, with
/// the cosockets of the light thread that waits for the task: nginx's
/// event loop does the waiting, no thread or reactor of ours does. See
/// the [module docs](crate::net).
///
/// It implements `futures::io::AsyncRead` and `AsyncWrite`; with the
/// crate's `tokio-io` feature `tokio::io::AsyncRead` and `AsyncWrite`, with
/// its `hyper` feature `hyper::rt::Read` and `Write`. Writes are taken at
/// once (up to a window of unconfirmed bytes) and sent in order; flushing
/// has nothing to wait for.
///
/// Closing its write half (`AsyncWrite::poll_close`, tokio's
/// `shutdown`) only refuses later writes: ngx_lua's cosockets cannot
/// half-close a connection, so no FIN goes out and the peer sees no end
/// of the stream until the stream is dropped. A protocol that ends a
/// request that way (read to the end after a half-close) cannot run over
/// it.
///
/// Dropping the stream closes the connection; [`TcpStream::keepalive`]
/// hands it to nginx's keepalive pool instead. Either way the waiter
/// carries it out before the call returns. A stream is tied to the task
/// that opened it: moved elsewhere, its operations fail once that task has
/// ended.
pub struct TcpStream {
    task: Rc<NetTask>,
    sock: SockId,
    keepalive: (u32, u32),
}

impl TcpStream {
    /// Opens a plain TCP stream to `addr` (`host:port`, `[IPv6]:port` or
    /// `unix:/path`) with the default [`Options`], and waits until it is
    /// connected.
    pub async fn connect(addr: &str) -> io::Result<TcpStream> {
        Options::new().connect(addr).await
    }

    /// Waits until the stream is connected (and its TLS handshake done);
    /// the connect's error if it failed.
    pub fn ready(&self) -> Ready<'_> {
        Ready { stream: self }
    }

    /// How many times nginx's keepalive pool had handed out this
    /// connection before (0: a new connection); `None` until connected.
    pub fn reused(&self) -> Option<u32> {
        self.task.reused(self.sock)
    }

    /// The keepalive pool's name (see [`Options::pool`]).
    pub fn pool_name(&self) -> String {
        self.task
            .spec(self.sock)
            .map(|s| s.conn.pool.clone())
            .unwrap_or_default()
    }

    /// Hands the connection to nginx's keepalive pool, where a later call
    /// (or Lua code connecting with the same pool name) takes it, if it is
    /// fit for another request: connected, no error, no unread data and no
    /// read going on. Otherwise closes it. Returns whether it goes to the
    /// pool.
    pub fn keepalive(self) -> bool {
        // (Dropping `self` then finds the socket released already.)
        self.task.release(self.sock, Some(self.keepalive))
    }

    fn poll_read_buf(&self, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        // SAFETY: poll_read writes only initialized bytes into the slice,
        // so viewing the initialized `buf` as possibly uninitialized bytes
        // leaves it initialized.
        let buf = unsafe { &mut *(buf as *mut [u8] as *mut [MaybeUninit<u8>]) };
        self.task.poll_read(self.sock, cx, buf)
    }

    fn poll_write_buf(&self, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.task.poll_write(self.sock, cx, buf)
    }

    fn poll_write_all_bufs(&self, cx: &mut Context<'_>, bufs: &[io::IoSlice<'_>]) -> Poll<io::Result<usize>> {
        let mut total = 0;
        for b in bufs.iter().filter(|b| !b.is_empty()) {
            match self.poll_write_buf(cx, b) {
                Poll::Ready(Ok(n)) => {
                    total += n;
                    if n < b.len() {
                        break;
                    }
                }
                Poll::Ready(Err(e)) if total == 0 => return Poll::Ready(Err(e)),
                Poll::Pending if total == 0 => return Poll::Pending,
                _ => break,
            }
        }
        Poll::Ready(Ok(total))
    }

    fn poll_shutdown_write(&self) -> Poll<io::Result<()>> {
        Poll::Ready(self.task.shutdown(self.sock))
    }
}

impl Drop for TcpStream {
    fn drop(&mut self) {
        self.task.release(self.sock, None);
    }
}

impl fmt::Debug for TcpStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TcpStream")
            .field("task", &self.task.id())
            .field("sock", &self.sock)
            .finish()
    }
}

/// The future of [`TcpStream::ready`].
#[derive(Debug)]
pub struct Ready<'a> {
    stream: &'a TcpStream,
}

impl Future for Ready<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream.task.poll_ready(self.stream.sock, cx)
    }
}

impl futures::io::AsyncRead for TcpStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<io::Result<usize>> {
        self.poll_read_buf(cx, buf)
    }
}

impl futures::io::AsyncWrite for TcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_buf(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_all_bufs(cx, bufs)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_write()
    }
}

#[cfg(feature = "tokio-io")]
impl tokio::io::AsyncRead for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: poll_read writes only initialized bytes, the first `n`.
        let unfilled = unsafe { buf.unfilled_mut() };
        let n = std::task::ready!(self.task.poll_read(self.sock, cx, unfilled))?;
        // SAFETY: the first `n` unfilled bytes were written just now.
        unsafe { buf.assume_init(n) };
        buf.advance(n);
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "tokio-io")]
impl tokio::io::AsyncWrite for TcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_buf(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_all_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_write()
    }
}

#[cfg(feature = "hyper")]
impl hyper::rt::Read for TcpStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        // SAFETY: poll_read writes only initialized bytes, the first `n`.
        let unfilled = unsafe { buf.as_mut() };
        let n = std::task::ready!(self.task.poll_read(self.sock, cx, unfilled))?;
        // SAFETY: the first `n` bytes were written just now.
        unsafe { buf.advance(n) };
        Poll::Ready(Ok(()))
    }
}

#[cfg(feature = "hyper")]
impl hyper::rt::Write for TcpStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        self.poll_write_buf(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_all_bufs(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_shutdown_write()
    }
}

#[cfg(test)]
pub(crate) fn parse_addr_for_test(addr: &str) -> io::Result<(String, Option<u16>)> {
    parse_addr(addr)
}
