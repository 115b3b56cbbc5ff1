//! Network streams whose socket operations nginx carries out.
//!
//! A [`TcpStream`] connects, sends, receives, does its TLS handshake and
//! goes back to nginx's keepalive pool through ngx_lua cosockets: nginx's
//! event loop (epoll) waits for the socket, and the worker gets no thread,
//! no epoll instance and no second reactor. It implements the I/O traits
//! of `futures` (and, with the `tokio-io` and `hyper` features, tokio's and
//! hyper's), so runtime-agnostic clients run on it unchanged: hyper's
//! HTTP/1.1 and HTTP/2 clients (HTTP/1.1's connection driven by
//! [`without_shutdown`], HTTP/2 with [`HyperExecutor`] and
//! [`HyperTimer`]), `h2`, tokio-postgres's `Config::connect_raw`.
//!
//! # Who owns the sockets
//!
//! A cosocket belongs to the Lua handler that made it, and to no other. So
//! a stream's socket belongs to the Lua light thread that *waits* for the
//! task that uses it: the handler that called the module's function, or
//! the one in `task:wait()`. The stream itself only queues operations;
//! when a poll of the task leaves some queued, that light thread carries
//! them out with cosockets, and hands the results back in one call that
//! also polls the task again (no completion-socket round trip). Reads run
//! in a reader light thread per socket, so that a read may wait while a
//! write goes out, unless the stream is [half-duplex](Options::half_duplex).
//! When the wait ends (done, timeout, error, killed thread), every socket
//! of the task that did not go to the keepalive pool is closed.
//!
//! Reuse across requests comes from nginx's keepalive pool
//! ([`TcpStream::keepalive`]), which every handler of the worker shares,
//! Lua code included. A connection shared by all requests of the worker
//! (one HTTP/2 connection for all) cannot be offered: its socket would
//! belong to one handler, and die with it.
//!
//! Children started with [`crate::spawn_local`] (a client's connection
//! task) belong to the same task: their socket ops go to the same waiter.
//!
//! # Addresses
//!
//! `host:port`, `[IPv6]:port` or `unix:/path`. An IP address needs no
//! lookup. A host name goes to nginx's `resolver` when the location has
//! one; otherwise to getaddrinfo on the blocking pool.

mod stream;
mod task;

pub(crate) mod lua;

#[cfg(feature = "hyper")]
mod hyper;

#[cfg(feature = "hyper")]
pub use self::hyper::{without_shutdown, HyperExecutor, HyperTimer, WithoutShutdown};
pub use self::stream::{Options, Ready, TcpStream};

pub(crate) use self::task::Net;

#[cfg(test)]
pub(crate) use self::stream::parse_addr_for_test;
#[cfg(test)]
pub(crate) use self::task::{NetTask, Op, OpResult, SockId, SEND_WINDOW};
