//! hyper on resty-async (the `hyper` feature): its runtime traits,
//! [`HyperExecutor`] and [`HyperTimer`], and [`without_shutdown`], which
//! drives its HTTP/1 client connection.

use std::cell::RefCell;
use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use hyper::body::Body;
use hyper::client::conn::http1;
use hyper::rt::{Read, Write};

use crate::executor::IdMap;
use crate::runtime::Runtime;
use crate::timer::Sleep;

/// `hyper::rt::Executor` on resty-async's executor: each future hyper
/// hands it (an HTTP/2 connection's tasks) becomes a child of the task
/// running now ([`crate::spawn_local`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperExecutor;

impl<F> hyper::rt::Executor<F> for HyperExecutor
where
    F: Future + 'static,
    F::Output: 'static,
{
    fn execute(&self, fut: F) {
        drop(crate::spawn_local(fut));
    }
}

/// `hyper::rt::Timer` on resty-async's timers ([`crate::sleep`]), which
/// nginx's event loop fires.
#[derive(Debug, Clone, Copy, Default)]
pub struct HyperTimer;

impl hyper::rt::Timer for HyperTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(HyperSleep::new(crate::sleep(duration)))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        let dur = deadline.saturating_duration_since(Instant::now());
        Box::pin(HyperSleep::new(Runtime::current().sleep(dur)))
    }
}

thread_local! {
    /// The timers behind the `HyperSleep`s of this thread.
    static SLEEPS: RefCell<(u64, IdMap<Sleep>)> = RefCell::new((0, IdMap::default()));
}

/// A [`Sleep`] hyper can hold: hyper asks for `Send + Sync`, which a
/// timer of the worker thread's runtime is not. The timer stays in a
/// thread-local table; this handle names it, and may only be polled on its
/// thread (the worker's, where hyper's futures run).
struct HyperSleep {
    id: u64,
    thread: ThreadId,
}

impl HyperSleep {
    fn new(sleep: Sleep) -> HyperSleep {
        let id = SLEEPS.with(|s| {
            let mut s = s.borrow_mut();
            s.0 += 1;
            let id = s.0;
            s.1.insert(id, sleep);
            id
        });
        HyperSleep {
            id,
            thread: thread::current().id(),
        }
    }
}

impl Future for HyperSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        assert_eq!(
            self.thread,
            thread::current().id(),
            "a resty-async timer polled on another thread"
        );
        SLEEPS.with(|s| match s.borrow_mut().1.get_mut(&self.id) {
            Some(sleep) => Pin::new(sleep).poll(cx),
            None => Poll::Ready(()),
        })
    }
}

impl Drop for HyperSleep {
    fn drop(&mut self) {
        // Elsewhere, the timer stays until it fires: a leak, never memory
        // of another thread.
        if self.thread == thread::current().id() {
            let sleep = SLEEPS.with(|s| s.borrow_mut().1.remove(&self.id));
            drop(sleep);
        }
    }
}

impl hyper::rt::Sleep for HyperSleep {}

/// Drives hyper's HTTP/1 client connection to its end without shutting
/// its stream down, and returns its parts: the stream (to hand to
/// [`TcpStream::keepalive`](crate::net::TcpStream::keepalive)) and the
/// bytes read past the last response. Spawn it where hyper's
/// `conn.without_shutdown()` would go:
///
/// ```no_run
/// # async fn fetch() -> Result<(), Box<dyn std::error::Error>> {
/// use hyper::client::conn::http1;
/// use resty_async::net::{self, TcpStream};
///
/// let stream = TcpStream::connect("127.0.0.1:8080").await?;
/// let (mut sender, conn) = http1::handshake::<_, String>(stream).await?;
/// let conn = resty_async::spawn_local(net::without_shutdown(conn));
/// let req = hyper::Request::post("/upload")
///     .header("host", "127.0.0.1")
///     .body("...".to_string())?;
/// let res = sender.send_request(req).await?;
/// // ... read the body ...
/// drop(sender); // no more requests: the connection ends once idle
/// let parts = conn.await??;
/// if parts.read_buf.is_empty() {
///     parts.io.keepalive();
/// }
/// # Ok(()) }
/// ```
///
/// Unlike `conn.without_shutdown()`, it ends when a response came in
/// full while the request body was still being sent (a server that
/// answered early). There hyper's connection, once it has sent the rest,
/// returns `Pending` without waiting on its `SendRequest`: it never
/// learns that the sender was dropped, and whoever awaits it waits until
/// the call times out. This future polls the connection once more
/// whenever a poll returns `Pending`; the second poll waits on the
/// `SendRequest`, or ends the connection if the sender is gone.
///
/// # Panics
///
/// Polled again after it returned `Ready`, as hyper's does.
pub fn without_shutdown<T, B>(conn: http1::Connection<T, B>) -> WithoutShutdown<T, B>
where
    T: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    WithoutShutdown { conn: Some(conn) }
}

/// The future of [`without_shutdown`].
#[must_use = "futures do nothing unless polled"]
pub struct WithoutShutdown<T, B>
where
    T: Read + Write,
    B: Body + 'static,
{
    conn: Option<http1::Connection<T, B>>,
}

// The connection is never pinned: it is polled through `&mut`.
impl<T, B> Unpin for WithoutShutdown<T, B>
where
    T: Read + Write,
    B: Body + 'static,
{
}

impl<T, B> Future for WithoutShutdown<T, B>
where
    T: Read + Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    type Output = hyper::Result<http1::Parts<T>>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let conn = this
            .conn
            .as_mut()
            .expect("WithoutShutdown polled after completion");
        // hyper asks its request channel for the next request (and so
        // learns of a dropped sender, or registers to learn of it) only
        // while its write buffer is empty. A poll that flushes the last of
        // a request body returns Pending without asking; the second poll
        // starts with the buffer empty, and asks.
        let polled = match conn.poll_without_shutdown(cx) {
            Poll::Pending => conn.poll_without_shutdown(cx),
            ready => ready,
        };
        ready!(polled)?;
        let conn = this.conn.take().expect("the connection, until it ends");
        Poll::Ready(Ok(conn.into_parts()))
    }
}

impl<T, B> fmt::Debug for WithoutShutdown<T, B>
where
    T: Read + Write,
    B: Body + 'static,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WithoutShutdown")
            .field("done", &self.conn.is_none())
            .finish()
    }
}
