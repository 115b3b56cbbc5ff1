//! The sockets of one task and the operations queued for its waiter.
//!
//! Every root task (the task a Lua caller waits for, with its children)
//! that opens a stream gets a [`NetTask`]: its sockets' state and a queue
//! of [`Op`]s. A stream never touches a socket: it queues an op (connect,
//! send, receive, keepalive, close) and, when it needs the result, waits
//! for it like for any other event. The Lua light thread that waits for the
//! task takes the queued ops, carries them out with cosockets, and hands
//! the results back ([`NetTask::deliver`]) in the call that then polls the
//! task (`lua.rs`).
//!
//! Sends are accepted at once (the data is queued, as a kernel socket
//! buffer would take it) up to [`SEND_WINDOW`] bytes whose send Lua has not
//! confirmed; ops of one socket are carried out in order, so a stream can
//! queue its connect, its request and its first read in one go.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::rc::{Rc, Weak};
use std::task::{Context, Waker};

use crate::executor::{IdMap, TaskId};

/// A socket of a task: 1, 2, ... in the order they were opened. Never
/// reused within a task: a late result for a closed socket must not reach
/// a new one.
pub(crate) type SockId = u32;

/// Bytes a stream may have queued for sending before a send of them is
/// confirmed; beyond, writes wait.
pub(crate) const SEND_WINDOW: usize = 256 * 1024;

/// What a connect needs, fixed when the stream is opened.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct ConnectSpec {
    /// Host name, IP address (an IPv6 one in brackets) or `unix:/path`.
    pub host: String,
    /// `None` for a unix socket.
    pub port: Option<u16>,
    /// The keepalive pool's name.
    pub pool: String,
    pub pool_size: u32,
    pub connect_ms: u32,
    pub send_ms: u32,
    pub read_ms: u32,
    /// `Some(server name)` for TLS; the name is `None` when no SNI is sent.
    pub tls: Option<Option<String>>,
    pub verify: bool,
}

/// A [`ConnectSpec`] as the runtime keeps it: its strings go to Lua with
/// each connect until a connect's result shows that Lua keeps them
/// (`sent`); then only its id.
#[derive(Debug)]
pub(crate) struct Spec {
    pub conn: ConnectSpec,
    /// 0: not kept (sent with every connect).
    pub id: u32,
    pub sent: Cell<bool>,
}

/// Most connect specs a runtime keeps (a worker talks to a few peers).
const MAX_SPECS: usize = 1024;
/// Streams' specs remembered by address and options.
const RECENT_SPECS: usize = 8;
/// Most ended tasks' states kept for reuse.
const MAX_SPARE_TASKS: usize = 256;

/// What a stream's spec follows from: its address, its options and the
/// defaults in force.
pub(crate) type SpecKey = (String, crate::net::Options, crate::config::NetConfig);

/// An operation for the waiter to carry out, in queue order.
#[derive(Debug)]
pub(crate) enum Op {
    /// Connect (or take a connection from the keepalive pool), then the
    /// TLS handshake when asked for and the connection is new.
    Connect { sock: SockId, spec: Rc<Spec> },
    /// Send all of `data`; `ack`: report the send done (else only a
    /// failure is reported).
    Send { sock: SockId, data: Vec<u8>, ack: bool },
    /// Receive up to `max` bytes, whatever arrives first.
    Recv { sock: SockId, max: u32, inline: bool },
    /// Put the connection in nginx's keepalive pool.
    Keepalive {
        sock: SockId,
        idle_ms: u32,
        pool_size: u32,
    },
    /// Close the connection (a read in progress is aborted).
    Close { sock: SockId },
}

impl Op {
    fn sock(&self) -> SockId {
        match *self {
            Op::Connect { sock, .. }
            | Op::Send { sock, .. }
            | Op::Recv { sock, .. }
            | Op::Keepalive { sock, .. }
            | Op::Close { sock } => sock,
        }
    }
}

/// The result of an op, as the waiter reports it.
#[derive(Debug)]
pub(crate) enum OpResult<'a> {
    /// Connected (and the handshake done); how many times nginx's pool
    /// had handed this connection out before.
    Connected(u32),
    /// The sends up to the one that asked for it are done.
    Sent,
    /// Data arrived.
    Received(&'a [u8]),
    /// The op failed with ngx_lua's message.
    Failed(u8, String),
}

/// Op kinds as the waiter numbers them (`lua.rs`, `resty/async/net.lua`).
pub(crate) const CONNECT: u8 = 1;
pub(crate) const SEND: u8 = 2;
pub(crate) const RECV: u8 = 3;
pub(crate) const KEEPALIVE: u8 = 4;
pub(crate) const CLOSE: u8 = 5;
pub(crate) const SPEC: u8 = 6;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Its connect is queued or in progress.
    Connecting,
    Open,
    /// Its connect failed, or the socket broke: see `error`.
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Recv {
    Idle,
    /// A receive is queued, not yet taken by the waiter.
    Queued,
    /// The waiter is receiving.
    Taken,
}

/// The state of one socket.
#[derive(Debug)]
struct Sock {
    spec: Rc<Spec>,
    phase: Phase,
    /// The waiter took its connect op: its cosocket exists.
    known: bool,
    error: Option<(io::ErrorKind, String)>,
    /// A read failed or the peer closed: not fit for the keepalive pool.
    tainted: bool,
    rbuf: Vec<u8>,
    rpos: usize,
    eof: bool,
    /// A read error for the next read, which then may try again.
    read_error: Option<(io::ErrorKind, String)>,
    recv: Recv,
    read_size: u32,
    half_duplex: bool,
    /// Bytes queued for sending, and confirmed sent, since the start.
    queued: u64,
    confirmed: u64,
    /// `queued` at the end of each send that asks for a confirmation,
    /// oldest first.
    acks: VecDeque<u64>,
    write_shut: bool,
    reused: Option<u32>,
    read_waker: Option<Waker>,
    write_waker: Option<Waker>,
    ready_waker: Option<Waker>,
}

impl Sock {
    fn wake_all(&mut self) {
        for w in [
            self.read_waker.take(),
            self.write_waker.take(),
            self.ready_waker.take(),
        ]
        .into_iter()
        .flatten()
        {
            w.wake();
        }
    }

    fn unconfirmed(&self) -> usize {
        (self.queued - self.confirmed) as usize
    }
}

fn store_waker(slot: &mut Option<Waker>, cx: &Context<'_>) {
    match slot {
        Some(w) if w.will_wake(cx.waker()) => {}
        _ => *slot = Some(cx.waker().clone()),
    }
}

/// The streams of one runtime, by root task.
#[derive(Default)]
pub(crate) struct Net {
    inner: Rc<NetShared>,
}

#[derive(Default)]
struct NetShared {
    tasks: RefCell<IdMap<Rc<NetTask>>>,
    /// Ended tasks' states no stream holds, for reuse.
    spare: RefCell<Vec<Rc<NetTask>>>,
    /// Recently opened streams' specs, by address and options.
    recent: RefCell<VecDeque<(SpecKey, Rc<Spec>)>>,
    specs: RefCell<std::collections::HashMap<ConnectSpec, Rc<Spec>>>,
    /// Tasks with ops that their waiter has not been told of.
    ready: RefCell<Vec<TaskId>>,
    /// Open streams (for `async.stats()`).
    streams: Cell<usize>,
}

impl Net {
    /// `conn` as kept by the runtime: the same spec, and id, for the same
    /// values.
    pub(crate) fn spec(&self, conn: ConnectSpec) -> Rc<Spec> {
        let mut specs = self.inner.specs.borrow_mut();
        if let Some(s) = specs.get(&conn) {
            return Rc::clone(s);
        }
        if specs.len() >= MAX_SPECS {
            return Rc::new(Spec {
                conn,
                id: 0,
                sent: Cell::new(false),
            });
        }
        let spec = Rc::new(Spec {
            conn: conn.clone(),
            id: specs.len() as u32 + 1,
            sent: Cell::new(false),
        });
        specs.insert(conn, Rc::clone(&spec));
        spec
    }

    /// The spec of a stream opened with `key` lately (no allocation when
    /// a task opens the same stream again).
    pub(crate) fn recent_spec(
        &self,
        addr: &str,
        opts: &crate::net::Options,
        defaults: crate::config::NetConfig,
    ) -> Option<Rc<Spec>> {
        let recent = self.inner.recent.borrow();
        recent
            .iter()
            .find(|(k, _)| k.0 == addr && k.1 == *opts && k.2 == defaults)
            .map(|(_, s)| Rc::clone(s))
    }

    /// Remembers `spec` for [`Net::recent_spec`].
    pub(crate) fn remember_spec(&self, key: SpecKey, spec: &Rc<Spec>) {
        let mut recent = self.inner.recent.borrow_mut();
        if recent.len() >= RECENT_SPECS {
            recent.pop_back();
        }
        recent.push_front((key, Rc::clone(spec)));
    }

    /// The socket state of root task `id`, made on first use.
    pub(crate) fn task(&self, id: TaskId) -> Rc<NetTask> {
        let mut tasks = self.inner.tasks.borrow_mut();
        Rc::clone(
            tasks
                .entry(id)
                .or_insert_with(|| match self.inner.spare.borrow_mut().pop() {
                    Some(t) => {
                        t.id.set(id);
                        t.ended.set(false);
                        t.flagged.set(false);
                        t.next_sock.set(1);
                        t
                    }
                    None => Rc::new(NetTask {
                        id: Cell::new(id),
                        net: Rc::downgrade(&self.inner),
                        socks: RefCell::new(IdMap::default()),
                        next_sock: Cell::new(1),
                        ops: RefCell::new(Vec::new()),
                        flagged: Cell::new(false),
                        ended: Cell::new(false),
                    }),
                }),
        )
    }

    /// The socket state of task `id`, if it opened a stream.
    pub(crate) fn get(&self, id: TaskId) -> Option<Rc<NetTask>> {
        self.inner.tasks.borrow().get(&id).cloned()
    }

    /// Whether task `id` opened a stream (its waiter carries out its ops).
    pub(crate) fn contains(&self, id: TaskId) -> bool {
        !self.inner.tasks.borrow().is_empty() && self.inner.tasks.borrow().contains_key(&id)
    }

    /// Forgets task `id`: its waiter is gone, its streams' ops fail from
    /// now on.
    pub(crate) fn remove(&self, id: TaskId) {
        let task = self.inner.tasks.borrow_mut().remove(&id);
        if let Some(task) = task {
            task.end();
            self.unready(id);
            let mut spare = self.inner.spare.borrow_mut();
            if Rc::strong_count(&task) == 1 && spare.len() < MAX_SPARE_TASKS {
                spare.push(task);
            }
        }
    }

    /// Forgets every task (the runtime shuts down).
    pub(crate) fn clear(&self) {
        let tasks = std::mem::take(&mut *self.inner.tasks.borrow_mut());
        for task in tasks.into_values() {
            task.end();
        }
        self.inner.ready.borrow_mut().clear();
    }

    fn unready(&self, id: TaskId) {
        self.inner.ready.borrow_mut().retain(|&t| t != id);
    }

    /// Whether task `id` has ops queued for its waiter.
    pub(crate) fn has_ops(&self, id: TaskId) -> bool {
        let tasks = self.inner.tasks.borrow();
        !tasks.is_empty() && tasks.get(&id).is_some_and(|t| !t.ops.borrow().is_empty())
    }

    /// Whether task `id` has ops queued; they are its waiter's now (it
    /// learns of them from the call it made, not from the driver).
    pub(crate) fn claim(&self, id: TaskId) -> bool {
        let Some(task) = self.get(id) else { return false };
        self.unready(id);
        let queued = !task.ops.borrow().is_empty();
        queued
    }

    /// Whether tasks other than `except` have ops their waiters have not
    /// been told of.
    pub(crate) fn others_ready(&self, except: TaskId) -> bool {
        self.inner.ready.borrow().iter().any(|&id| id != except)
    }

    /// Hands the tasks whose waiters must be told of new ops to `f` (the
    /// driver tells them).
    pub(crate) fn take_ready(&self, mut f: impl FnMut(TaskId)) {
        if self.inner.ready.borrow().is_empty() {
            return;
        }
        let ready = std::mem::take(&mut *self.inner.ready.borrow_mut());
        for id in ready {
            f(id);
        }
    }

    /// Open streams.
    pub(crate) fn streams(&self) -> usize {
        self.inner.streams.get()
    }
}

/// The sockets of one root task and the ops queued for its waiter.
pub(crate) struct NetTask {
    id: Cell<TaskId>,
    net: Weak<NetShared>,
    socks: RefCell<IdMap<Sock>>,
    next_sock: Cell<SockId>,
    ops: RefCell<Vec<Op>>,
    /// Ops were queued since the waiter last took them (and the task is
    /// on the runtime's ready list, or its waiter was told).
    flagged: Cell<bool>,
    /// The waiter is gone (the task ended): nothing will carry out ops.
    ended: Cell<bool>,
}

/// The error of an op on a stream whose waiter is gone.
fn ended_error() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the light thread that carried out this stream's socket operations has stopped waiting for its task",
    )
}

fn error_of(e: &(io::ErrorKind, String)) -> io::Error {
    io::Error::new(e.0, e.1.clone())
}

impl NetTask {
    /// The root task.
    pub(crate) fn id(&self) -> TaskId {
        self.id.get()
    }

    fn end(&self) {
        self.ended.set(true);
        self.ops.borrow_mut().clear();
        // (Wakers only queue tasks: nothing runs under the borrow.)
        let mut socks = self.socks.borrow_mut();
        if let Some(net) = self.net.upgrade() {
            net.streams.set(net.streams.get().saturating_sub(socks.len()));
        }
        for s in socks.values_mut() {
            s.wake_all();
        }
        socks.clear();
    }

    fn push(&self, op: Op) {
        self.ops.borrow_mut().push(op);
        if !self.flagged.replace(true) {
            if let Some(net) = self.net.upgrade() {
                net.ready.borrow_mut().push(self.id());
            }
        }
    }

    /// Hands the queued ops to `f`, in order, for the waiter.
    pub(crate) fn drain_ops<E>(&self, mut f: impl FnMut(Op) -> Result<(), E>) -> Result<(), E> {
        self.flagged.set(false);
        if let Some(net) = self.net.upgrade() {
            let id = self.id();
            net.ready.borrow_mut().retain(|&t| t != id);
        }
        let mut ops = std::mem::take(&mut *self.ops.borrow_mut());
        {
            let mut socks = self.socks.borrow_mut();
            for op in &ops {
                let Some(s) = socks.get_mut(&u64::from(op.sock())) else {
                    continue;
                };
                match op {
                    Op::Connect { .. } => s.known = true,
                    Op::Recv { .. } => s.recv = Recv::Taken,
                    _ => {}
                }
            }
        }
        let mut res = Ok(());
        for op in ops.drain(..) {
            if res.is_ok() {
                res = f(op);
            }
        }
        // The emptied queue keeps its room.
        let mut cur = self.ops.borrow_mut();
        if cur.is_empty() {
            *cur = ops;
        }
        res
    }

    /// The queued ops, for the waiter.
    #[cfg(test)]
    pub(crate) fn take_ops(&self) -> Vec<Op> {
        let mut out = Vec::new();
        let _ = self.drain_ops(|op| {
            out.push(op);
            Ok::<(), ()>(())
        });
        out
    }

    /// Opens a socket: queues its connect. Fails once the waiter is gone.
    pub(crate) fn open(&self, spec: Rc<Spec>, read_size: u32, half_duplex: bool) -> io::Result<SockId> {
        if self.ended.get() {
            return Err(ended_error());
        }
        let sock = Sock {
            spec: Rc::clone(&spec),
            phase: Phase::Connecting,
            known: false,
            error: None,
            tainted: false,
            rbuf: Vec::new(),
            rpos: 0,
            eof: false,
            read_error: None,
            recv: Recv::Idle,
            read_size,
            half_duplex,
            queued: 0,
            confirmed: 0,
            acks: VecDeque::new(),
            write_shut: false,
            reused: None,
            read_waker: None,
            write_waker: None,
            ready_waker: None,
        };
        let id = self.next_sock.get();
        self.next_sock.set(id + 1);
        self.socks.borrow_mut().insert(u64::from(id), sock);
        if let Some(net) = self.net.upgrade() {
            net.streams.set(net.streams.get() + 1);
        }
        self.push(Op::Connect { sock: id, spec });
        Ok(id)
    }

    fn with_sock<R>(&self, sock: SockId, f: impl FnOnce(&mut Sock) -> R) -> Option<R> {
        self.socks.borrow_mut().get_mut(&u64::from(sock)).map(f)
    }

    /// The connection's spec (its pool name, ...).
    pub(crate) fn spec(&self, sock: SockId) -> Option<Rc<Spec>> {
        self.with_sock(sock, |s| Rc::clone(&s.spec))
    }

    /// How many times nginx's pool had handed out the connection before,
    /// once connected.
    pub(crate) fn reused(&self, sock: SockId) -> Option<u32> {
        self.with_sock(sock, |s| s.reused).flatten()
    }

    /// Whether the socket is connected (and its handshake done): `Ready`
    /// once known, with the connect error if it failed.
    pub(crate) fn poll_ready(&self, sock: SockId, cx: &Context<'_>) -> std::task::Poll<io::Result<()>> {
        use std::task::Poll;
        if self.ended.get() {
            return Poll::Ready(Err(ended_error()));
        }
        self.with_sock(sock, |s| match s.phase {
            Phase::Open => Poll::Ready(Ok(())),
            Phase::Failed => Poll::Ready(Err(s.error.as_ref().map_or_else(ended_error, error_of))),
            Phase::Connecting => {
                store_waker(&mut s.ready_waker, cx);
                Poll::Pending
            }
        })
        .unwrap_or_else(|| Poll::Ready(Err(ended_error())))
    }

    /// Reads into `out`: buffered data, else queues a receive and waits.
    /// Writes initialized bytes only, the first `n` of `Ready(Ok(n))`.
    pub(crate) fn poll_read(
        &self,
        sock: SockId,
        cx: &Context<'_>,
        out: &mut [MaybeUninit<u8>],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        if self.ended.get() {
            return Poll::Ready(Err(ended_error()));
        }
        let queue = self.with_sock(sock, |s| {
            if s.rpos < s.rbuf.len() {
                let n = out.len().min(s.rbuf.len() - s.rpos);
                for (o, &b) in out[..n].iter_mut().zip(&s.rbuf[s.rpos..s.rpos + n]) {
                    o.write(b);
                }
                s.rpos += n;
                if s.rpos == s.rbuf.len() {
                    s.rbuf.clear();
                    s.rpos = 0;
                }
                return Err(Poll::Ready(Ok(n)));
            }
            if out.is_empty() {
                return Err(Poll::Ready(Ok(0)));
            }
            if let Some(e) = &s.error {
                return Err(Poll::Ready(Err(error_of(e))));
            }
            if let Some(e) = s.read_error.take() {
                return Err(Poll::Ready(Err(error_of(&e))));
            }
            if s.eof {
                return Err(Poll::Ready(Ok(0)));
            }
            store_waker(&mut s.read_waker, cx);
            if s.recv == Recv::Idle {
                s.recv = Recv::Queued;
                Ok(Some(Op::Recv {
                    sock,
                    max: s.read_size,
                    inline: s.half_duplex,
                }))
            } else {
                Ok(None)
            }
        });
        match queue {
            None => Poll::Ready(Err(ended_error())),
            Some(Err(done)) => done,
            Some(Ok(op)) => {
                if let Some(op) = op {
                    self.push(op);
                }
                Poll::Pending
            }
        }
    }

    /// Queues `data` for sending (merged into a send still queued).
    pub(crate) fn poll_write(
        &self,
        sock: SockId,
        cx: &Context<'_>,
        data: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        use std::task::Poll;
        if self.ended.get() {
            return Poll::Ready(Err(ended_error()));
        }
        let mut socks = self.socks.borrow_mut();
        let Some(s) = socks.get_mut(&u64::from(sock)) else {
            return Poll::Ready(Err(ended_error()));
        };
        if let Some(e) = &s.error {
            return Poll::Ready(Err(error_of(e)));
        }
        if s.write_shut {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after shutdown",
            )));
        }
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let room = SEND_WINDOW.saturating_sub(s.unconfirmed());
        if room == 0 {
            store_waker(&mut s.write_waker, cx);
            return Poll::Pending;
        }
        let n = data.len().min(room);
        s.queued += n as u64;
        // Ask for a confirmation once half the window is in flight, so
        // that writes go on while the waiter sends. One at a time: the
        // send that asks for it is the last queued one, and takes what is
        // merged into it later.
        let ack = s.unconfirmed() >= SEND_WINDOW / 2 || !s.acks.is_empty();
        let mut ops = self.ops.borrow_mut();
        match ops.last_mut() {
            Some(Op::Send {
                sock: last,
                data: buf,
                ack: a,
            }) if *last == sock => {
                buf.extend_from_slice(&data[..n]);
                if *a {
                    if let Some(mark) = s.acks.back_mut() {
                        *mark = s.queued;
                    }
                } else if ack && s.acks.is_empty() {
                    *a = true;
                    s.acks.push_back(s.queued);
                }
            }
            _ => {
                let ask = ack && s.acks.is_empty();
                if ask {
                    s.acks.push_back(s.queued);
                }
                drop(ops);
                drop(socks);
                self.push(Op::Send {
                    sock,
                    data: data[..n].to_vec(),
                    ack: ask,
                });
            }
        }
        Poll::Ready(Ok(n))
    }

    /// Writes are over: nothing more may be written.
    pub(crate) fn shutdown(&self, sock: SockId) -> io::Result<()> {
        if self.ended.get() {
            return Err(ended_error());
        }
        self.with_sock(sock, |s| s.write_shut = true);
        Ok(())
    }

    /// Hands the connection back: to nginx's keepalive pool if it is fit
    /// for another request (connected, nothing unread, no read going on,
    /// no error), else closes it. Returns whether it goes to the pool.
    pub(crate) fn release(&self, sock: SockId, keepalive: Option<(u32, u32)>) -> bool {
        if self.ended.get() {
            self.forget(sock);
            return false;
        }
        let Some((known, fit)) = self.with_sock(sock, |s| {
            let fit = s.phase == Phase::Open
                && s.error.is_none()
                && !s.tainted
                && !s.eof
                && s.read_error.is_none()
                && s.rpos == s.rbuf.len()
                && s.recv != Recv::Taken;
            (s.known, fit)
        }) else {
            return false;
        };
        let mut ops = self.ops.borrow_mut();
        if !known {
            // The waiter never saw it: nothing to close.
            ops.retain(|op| op.sock() != sock);
            drop(ops);
            self.forget(sock);
            return false;
        }
        ops.retain(|op| !matches!(op, Op::Recv { sock: s, .. } if *s == sock));
        drop(ops);
        let pooled = match keepalive {
            Some((idle_ms, pool_size)) if fit => {
                self.push(Op::Keepalive {
                    sock,
                    idle_ms,
                    pool_size,
                });
                true
            }
            _ => {
                self.push(Op::Close { sock });
                false
            }
        };
        self.forget(sock);
        pooled
    }

    fn forget(&self, sock: SockId) {
        let gone = self.socks.borrow_mut().remove(&u64::from(sock));
        if gone.is_some() {
            if let Some(net) = self.net.upgrade() {
                net.streams.set(net.streams.get().saturating_sub(1));
            }
        }
    }

    /// A result from the waiter: updates the socket and wakes whoever
    /// waits for it. Results for a socket that was closed are dropped.
    pub(crate) fn deliver(&self, sock: SockId, result: OpResult<'_>) {
        let mut socks = self.socks.borrow_mut();
        let Some(s) = socks.get_mut(&u64::from(sock)) else {
            return;
        };
        let mut drop_ops = false;
        match result {
            OpResult::Connected(reused) => {
                s.spec.sent.set(s.spec.id != 0);
                if s.phase == Phase::Connecting {
                    s.phase = Phase::Open;
                }
                s.reused = Some(reused);
                if let Some(w) = s.ready_waker.take() {
                    w.wake();
                }
            }
            OpResult::Sent => {
                if let Some(upto) = s.acks.pop_front() {
                    s.confirmed = s.confirmed.max(upto);
                }
                if let Some(w) = s.write_waker.take() {
                    w.wake();
                }
            }
            OpResult::Received(data) => {
                if s.phase == Phase::Connecting {
                    s.phase = Phase::Open;
                }
                s.recv = Recv::Idle;
                if s.rpos == s.rbuf.len() {
                    s.rbuf.clear();
                    s.rpos = 0;
                }
                s.rbuf.extend_from_slice(data);
                if let Some(w) = s.read_waker.take() {
                    w.wake();
                }
            }
            OpResult::Failed(kind, msg) => {
                if kind == CONNECT {
                    s.spec.sent.set(s.spec.id != 0);
                }
                let (what, fatal) = match kind {
                    CONNECT => ("connect to", true),
                    SEND => ("send to", true),
                    _ => ("read from", false),
                };
                let target = match s.spec.conn.port {
                    Some(p) => format!("{}:{p}", s.spec.conn.host),
                    None => s.spec.conn.host.clone(),
                };
                let (ekind, text) = classify(&msg);
                let text = format!("{what} {target} failed: {text}");
                if kind == RECV {
                    s.recv = Recv::Idle;
                    s.tainted = true;
                    if msg == "closed" {
                        // The peer closed the connection: the end of the
                        // stream.
                        s.eof = true;
                    } else {
                        s.read_error = Some((ekind, text));
                    }
                } else if fatal {
                    s.phase = Phase::Failed;
                    s.tainted = true;
                    s.error = Some((ekind, text));
                    // The waiter skips the socket's later ops.
                    drop_ops = kind == CONNECT;
                }
                s.wake_all();
            }
        }
        drop(socks);
        if drop_ops {
            self.ops.borrow_mut().retain(|op| op.sock() != sock);
        }
    }
}

/// The `io::ErrorKind` of an ngx_lua socket error, and its text.
fn classify(msg: &str) -> (io::ErrorKind, &str) {
    let kind = if msg == "timeout" {
        io::ErrorKind::TimedOut
    } else if msg.contains("refused") {
        io::ErrorKind::ConnectionRefused
    } else if msg.contains("reset") {
        io::ErrorKind::ConnectionReset
    } else if msg == "closed" || msg.contains("broken pipe") {
        io::ErrorKind::BrokenPipe
    } else if msg.contains("no resolver") || msg.contains("could not be resolved") {
        io::ErrorKind::NotFound
    } else {
        io::ErrorKind::Other
    };
    let text = if msg == "timeout" { "timed out" } else { msg };
    (kind, text)
}
