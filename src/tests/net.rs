//! `net::TcpStream` against a fake transport: the test plays the Lua
//! waiter, taking the ops a task queues and handing results back, as
//! `resty/async/net.lua` does with cosockets.

use std::cell::RefCell;
use std::io;
use std::rc::Rc;

use futures::channel::oneshot;
use futures::{AsyncReadExt, AsyncWriteExt};
use mlua::Value;

use crate::executor::{Spawned, TaskId};
use crate::net::{parse_addr_for_test, NetTask, Op, OpResult, Options, SockId};
use crate::runtime::{Done, LuaOutput, Runtime, Settled};
use crate::values::LuaValues;
use crate::vm;

fn ok() -> LuaOutput {
    Ok(LuaValues::One(Value::Boolean(true)))
}

fn fail(e: io::Error) -> LuaOutput {
    Err(mlua::Error::RuntimeError(e.to_string()))
}

/// Spawns `fut` on this thread's runtime like a raw call does: first
/// poll, then its children; returns the task id and whether socket ops
/// wait for the caller.
fn spawn(rt: &Runtime, fut: impl std::future::Future<Output = LuaOutput> + 'static) -> (TaskId, bool) {
    let id = match rt.spawn(fut) {
        Spawned::Pending(id) => id,
        Spawned::Ready(_) => panic!("the task must wait for its socket"),
    };
    match rt.settle(id) {
        None => (id, false),
        Some(Settled::Pending { ops }) => (id, ops),
        Some(Settled::Finished(_)) => panic!("finished too early"),
    }
}

/// The ops queued for task `id`, as the waiter takes them.
fn take(rt: &Runtime, id: TaskId) -> (Rc<NetTask>, Vec<Op>) {
    let task = rt.net().get(id).expect("the task opened a stream");
    let ops = task.take_ops();
    (task, ops)
}

/// Hands results to the task and runs what they woke, as `net_step` does;
/// returns the ops queued, and whether the task finished (and its outcome
/// was fine).
fn step(rt: &Runtime, task: &NetTask, results: Vec<(SockId, OpResult<'_>)>) -> (Vec<Op>, Option<bool>) {
    rt.run_inline(|| {
        for (sock, r) in results {
            task.deliver(sock, r);
        }
    });
    let ops = task.take_ops();
    (
        ops,
        rt.take_finished(task.id()).map(|out| matches!(out, Ok(Ok(_)))),
    )
}

fn kinds(ops: &[Op]) -> Vec<&'static str> {
    ops.iter()
        .map(|op| match op {
            Op::Connect { .. } => "connect",
            Op::Send { .. } => "send",
            Op::Recv { .. } => "recv",
            Op::Keepalive { .. } => "keepalive",
            Op::Close { .. } => "close",
        })
        .collect()
}

#[test]
fn connect_send_and_first_read_go_out_in_one_batch_then_keepalive() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let (id, ops) = spawn(&rt, async {
        let mut s = match Options::new().half_duplex(true).open("127.0.0.1:8080") {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"pong");
        assert_eq!(s.reused(), Some(3));
        assert_eq!(s.pool_name(), "127.0.0.1:8080");
        assert!(s.keepalive());
        ok()
    });
    assert!(ops, "the caller learns of the ops from the call itself");
    let (task, ops) = take(&rt, id);
    assert_eq!(kinds(&ops), ["connect", "send", "recv"]);
    match &ops[..] {
        [Op::Connect { sock: 1, spec }, Op::Send {
            sock: 1,
            data,
            ack: false,
        }, Op::Recv {
            sock: 1,
            inline: true,
            ..
        }] => {
            assert_eq!(spec.conn.host, "127.0.0.1");
            assert_eq!(spec.conn.port, Some(8080));
            assert_eq!(data, b"ping");
        }
        other => panic!("unexpected ops {other:?}"),
    }
    // Data arrives in two pieces: the first wakes the reader, which asks
    // for more.
    let (ops, done) = step(
        &rt,
        &task,
        vec![(1, OpResult::Connected(3)), (1, OpResult::Received(b"po"))],
    );
    assert_eq!((kinds(&ops), done), (vec!["recv"], None));
    let (ops, done) = step(&rt, &task, vec![(1, OpResult::Received(b"ng"))]);
    assert_eq!(done, Some(true));
    assert!(
        matches!(ops[..], [Op::Keepalive { sock: 1, .. }]),
        "{:?}",
        kinds(&ops)
    );
    assert_eq!(rt.stats().streams, 0);
}

#[test]
fn a_failed_connect_fails_reads_and_writes_with_its_cause() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let err = Rc::new(RefCell::new(String::new()));
    let e2 = Rc::clone(&err);
    let (id, _) = spawn(&rt, async move {
        let mut s = Options::new().open("127.0.0.1:1").unwrap();
        s.write_all(b"x").await.unwrap();
        let mut buf = [0u8; 1];
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        *e2.borrow_mut() = e.to_string();
        // A later write fails the same way.
        assert!(s.write(b"y").await.is_err());
        ok()
    });
    let (task, ops) = take(&rt, id);
    assert_eq!(kinds(&ops), ["connect", "send", "recv"]);
    let (ops, done) = step(
        &rt,
        &task,
        vec![(1, OpResult::Failed(1, "connection refused".into()))],
    );
    assert_eq!(done, Some(true));
    assert_eq!(*err.borrow(), "connect to 127.0.0.1:1 failed: connection refused");
    // Nothing for the waiter to do but close the failed socket.
    assert_eq!(kinds(&ops), ["close"]);
}

#[test]
fn a_stream_dropped_before_the_waiter_saw_it_leaves_no_op() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let (tx, rx) = oneshot::channel::<()>();
    let (id, ops) = spawn(&rt, async move {
        let s = Options::new().open("unix:/tmp/x.sock").unwrap();
        drop(s);
        let _ = rx.await;
        ok()
    });
    assert!(!ops, "the ops of a dropped stream are withdrawn");
    drop(tx);
    rt.run_inline(|| {});
    assert!(rt.take_finished(id).is_some());
}

#[test]
fn dropping_a_known_stream_closes_it_and_aborts_its_read() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let (tx, rx) = oneshot::channel::<()>();
    let (id, _) = spawn(&rt, async move {
        let mut s = Options::new().open("localhost:80").unwrap();
        let mut buf = [0u8; 8];
        futures::select! {
            _ = s.read(&mut buf).fuse() => panic!("nothing arrives"),
            _ = rx.fuse() => {}
        }
        drop(s);
        ok()
    });
    let (task, ops) = take(&rt, id);
    assert_eq!(kinds(&ops), ["connect", "recv"]);
    assert_eq!(step(&rt, &task, vec![(1, OpResult::Connected(0))]).1, None);
    tx.send(()).unwrap();
    let (ops, done) = step(&rt, &task, vec![]);
    assert_eq!((kinds(&ops), done), (vec!["close"], Some(true)));
}

use futures::FutureExt;

#[test]
fn writes_wait_for_a_confirmed_send_beyond_the_window() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let big = vec![7u8; crate::net::SEND_WINDOW * 2 + 10];
    let n = big.len();
    let (id, _) = spawn(&rt, async move {
        let mut s = Options::new().open("127.0.0.1:9").unwrap();
        s.write_all(&big).await.unwrap();
        ok()
    });
    let (task, mut ops) = take(&rt, id);
    let mut sent = 0;
    let mut acks = 0;
    let mut results = vec![(1, OpResult::Connected(0))];
    for _ in 0..10 {
        for op in &ops {
            if let Op::Send { data, ack, .. } = op {
                sent += data.len();
                if *ack {
                    acks += 1;
                    results.push((1, OpResult::Sent));
                }
            }
        }
        if results.is_empty() {
            break;
        }
        ops = step(&rt, &task, std::mem::take(&mut results)).0;
    }
    assert_eq!(sent, n, "every byte goes out, in order");
    assert!(acks >= 2, "confirmations are asked for ({acks})");
}

#[test]
fn a_child_task_belongs_to_its_root_and_ends_with_it() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let child_done = Rc::new(RefCell::new(None));
    let cd = Rc::clone(&child_done);
    let (id, ops) = spawn(&rt, async move {
        let handle = crate::spawn_local(async {
            // The child's socket is the root's: its ops reach the same
            // waiter.
            let mut s = Options::new().open("127.0.0.1:7").unwrap();
            let mut buf = [0u8; 1];
            let _ = s.read(&mut buf).await;
            1
        });
        let r = handle.await;
        *cd.borrow_mut() = Some(r.clone());
        ok()
    });
    assert!(ops, "the child's first poll ran in the same call");
    let (_task, ops) = take(&rt, id);
    assert_eq!(kinds(&ops), ["connect", "recv"]);
    // Cancelling the root (a timeout) drops the child and its stream.
    assert!(rt.cancel(id));
    assert_eq!(*child_done.borrow(), None, "the root's future is gone too");
    assert_eq!(rt.stats().streams, 0);
    assert!(rt.net().get(id).is_none());
}

#[test]
fn ops_queued_by_a_wake_up_outside_a_step_are_announced() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let (tx, rx) = oneshot::channel::<()>();
    let (id, ops) = spawn(&rt, async move {
        let _ = rx.await;
        let mut s = Options::new().open("127.0.0.1:7").unwrap();
        s.write_all(b"late").await.unwrap();
        futures::future::pending::<()>().await;
        ok()
    });
    assert!(!ops);
    // A foreign completion: the driver's poll runs the task.
    tx.send(()).unwrap();
    if rt.poll(false).tasks_ready {
        rt.run_tasks();
    }
    let mut told = Vec::new();
    while let Some(done) = rt.next_done() {
        told.push(done);
    }
    assert_eq!(told, [Done::Ops(id)]);
    let (_task, ops) = take(&rt, id);
    assert_eq!(kinds(&ops), ["connect", "send"]);
    rt.cancel(id);
}

#[test]
fn addresses() {
    assert_eq!(
        parse_addr_for_test("a.b:80").unwrap(),
        ("a.b".to_owned(), Some(80))
    );
    assert_eq!(
        parse_addr_for_test("[::1]:443").unwrap(),
        ("[::1]".to_owned(), Some(443))
    );
    assert_eq!(
        parse_addr_for_test("unix:/run/x.sock").unwrap(),
        ("unix:/run/x.sock".to_owned(), None)
    );
    for bad in [
        "a.b",
        "a.b:0",
        "a.b:70000",
        ":80",
        "a b:80",
        "unix:rel",
        "[zz]:1",
        "::1:80",
    ] {
        let e = parse_addr_for_test(bad).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad}");
    }
}

#[test]
fn tls_keeps_its_settings_in_the_pool_name() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let names = Rc::new(RefCell::new(Vec::new()));
    let n2 = Rc::clone(&names);
    let (id, _) = spawn(&rt, async move {
        for opts in [
            Options::new(),
            Options::new().tls(true),
            Options::new().tls(true).verify(false),
            Options::new().server_name("other.example"),
        ] {
            let s = opts.open("example.com:443").unwrap();
            n2.borrow_mut().push(s.pool_name());
        }
        let ip = Options::new()
            .tls(true)
            .verify(false)
            .open("10.0.0.1:443")
            .unwrap();
        n2.borrow_mut().push(ip.pool_name());
        futures::future::pending::<()>().await;
        ok()
    });
    assert_eq!(
        *names.borrow(),
        [
            "example.com:443",
            "example.com:443|tls|example.com|1",
            "example.com:443|tls|example.com|0",
            "example.com:443|tls|other.example|1",
            "10.0.0.1:443|tls||0",
        ]
    );
    rt.cancel(id);
}

#[test]
fn verified_tls_without_a_name_to_check_is_refused() {
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let out = Rc::new(RefCell::new(Vec::new()));
    let o2 = Rc::clone(&out);
    let (id, _) = spawn(&rt, async move {
        for (opts, addr) in [
            (Options::new().tls(true), "10.0.0.1:443"),
            (Options::new().tls(true), "[::1]:443"),
            (Options::new().tls(true), "unix:/run/tls.sock"),
            (Options::new().tls(true).verify(true), "10.0.0.1:443"),
        ] {
            let e = opts.open(addr).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{addr}");
            o2.borrow_mut().push(e.to_string());
        }
        // a name to check, or no check: opened
        for (opts, addr) in [
            (Options::new().server_name("db.example"), "10.0.0.1:443"),
            (Options::new().server_name("db.example"), "unix:/run/tls.sock"),
            (Options::new().tls(true).verify(false), "10.0.0.1:443"),
            (Options::new().tls(true).verify(false), "[::1]:443"),
            (Options::new().tls(true), "db.example:443"),
            (Options::new(), "10.0.0.1:443"),
        ] {
            if let Err(e) = opts.open(addr) {
                panic!("{addr}: {e}");
            }
        }
        futures::future::pending::<()>().await;
        ok()
    });
    let msgs = out.borrow();
    assert_eq!(msgs.len(), 4);
    assert_eq!(
        msgs[0],
        "cannot verify the TLS certificate of 10.0.0.1: nginx checks host names, \
         not IP addresses (connect by name, give a server name, or turn verification off)"
    );
    assert_eq!(msgs[3], msgs[0]);
    assert!(
        msgs[1].starts_with("cannot verify the TLS certificate of [::1]: "),
        "{}",
        msgs[1]
    );
    assert!(
        msgs[2].contains("unix:/run/tls.sock: a unix socket has no host name"),
        "{}",
        msgs[2]
    );
    rt.cancel(id);
}

#[cfg(feature = "tokio-io")]
#[test]
fn tokio_traits_write_and_read_through_the_same_ops() {
    use std::future::poll_fn;
    use std::mem::MaybeUninit;
    use std::pin::Pin;
    use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let (id, ops) = spawn(&rt, async {
        let mut s = match Options::new().half_duplex(true).open("127.0.0.1:8080") {
            Ok(s) => s,
            Err(e) => return fail(e),
        };
        let n = poll_fn(|cx| Pin::new(&mut s).poll_write(cx, b"ping"))
            .await
            .unwrap();
        assert_eq!(n, 4);
        // into uninitialized memory, as tokio's readers may pass it
        let mut mem = [MaybeUninit::<u8>::uninit(); 8];
        let mut buf = ReadBuf::uninit(&mut mem);
        while buf.filled().len() < 4 {
            let before = buf.filled().len();
            poll_fn(|cx| Pin::new(&mut s).poll_read(cx, &mut buf))
                .await
                .unwrap();
            assert!(buf.filled().len() > before, "a read that returns has data");
        }
        assert_eq!(buf.filled(), b"pong");
        assert_eq!(buf.initialized().len(), 4, "only the bytes read are initialized");
        ok()
    });
    assert!(ops);
    let (task, ops) = take(&rt, id);
    assert_eq!(kinds(&ops), ["connect", "send", "recv"]);
    let (ops, done) = step(
        &rt,
        &task,
        vec![(1, OpResult::Connected(0)), (1, OpResult::Received(b"po"))],
    );
    assert_eq!((kinds(&ops), done), (vec!["recv"], None));
    let (_, done) = step(&rt, &task, vec![(1, OpResult::Received(b"ng"))]);
    assert_eq!(done, Some(true));
    assert_eq!(rt.stats().streams, 0);
}

/// hyper's HTTP/1 client over a stream, its connection driven by
/// `net::without_shutdown`: a POST of `len` bytes to a server that
/// answers at once, before it has read the body. `hold`: the client keeps
/// its `SendRequest` until the whole body is sent, else drops it once it
/// has the response. Returns whether the call finished (and was fine),
/// and the ops its end queued.
#[cfg(feature = "hyper")]
fn early_answer(len: usize, hold: bool) -> (Option<bool>, Vec<&'static str>) {
    use hyper::body::Body;
    use hyper::client::conn::http1;
    use std::future::poll_fn;
    use std::pin::Pin;

    const RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nearly";
    let rt = Runtime::current();
    let _enter = vm::enter(&rt);
    let (sent_tx, sent_rx) = oneshot::channel::<()>();
    let (id, _) = spawn(&rt, async move {
        let stream = Options::new().half_duplex(true).open("127.0.0.1:8080").unwrap();
        let (mut sender, conn) = http1::handshake::<_, String>(stream).await.unwrap();
        let conn = crate::spawn_local(crate::net::without_shutdown(conn));
        let req = hyper::Request::post("/")
            .header("host", "127.0.0.1")
            .body("x".repeat(len))
            .unwrap();
        let res = sender.send_request(req).await.unwrap();
        assert_eq!(res.status(), 200);
        let mut body = res.into_body();
        let mut got = Vec::new();
        while let Some(frame) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
            got.extend_from_slice(&frame.unwrap().into_data().unwrap());
        }
        assert_eq!(got, b"early");
        if hold {
            sent_rx.await.unwrap();
        }
        drop(sender);
        let parts = conn.await.unwrap().unwrap();
        assert!(parts.read_buf.is_empty());
        parts.io.keepalive();
        ok()
    });
    let (task, mut ops) = take(&rt, id);
    // (hyper reads before it writes: the read watches the idle connection.)
    assert_eq!(kinds(&ops), ["connect", "recv", "send"]);
    let mut results = vec![(1, OpResult::Connected(0)), (1, OpResult::Received(RESPONSE))];
    let mut done = None;
    // The waiter confirms each send that asks for it, until none does.
    loop {
        for op in &ops {
            if let Op::Send { ack: true, .. } = op {
                results.push((1, OpResult::Sent));
            }
        }
        if results.is_empty() || done.is_some() {
            break;
        }
        (ops, done) = step(&rt, &task, std::mem::take(&mut results));
    }
    if done.is_none() {
        let _ = sent_tx.send(());
        (ops, done) = step(&rt, &task, vec![]);
    }
    if done.is_none() {
        rt.cancel(id);
    }
    (done, kinds(&ops))
}

// In both, hyper's own `conn.without_shutdown()` never ends. The read
// that watches the idle connection went out and has not returned, so the
// connection is closed, not pooled.

#[cfg(feature = "hyper")]
#[test]
fn hyper_http1_ends_when_the_answer_comes_before_the_body_is_sent() {
    let big = 4 * crate::net::SEND_WINDOW;
    assert_eq!(early_answer(big, false), (Some(true), vec!["send", "close"]));
}

#[cfg(feature = "hyper")]
#[test]
fn hyper_http1_ends_when_the_sender_is_dropped_after_the_body_is_sent() {
    // The last of the body goes out while the sender lives: the
    // connection must still learn of its drop afterwards.
    let big = 4 * crate::net::SEND_WINDOW;
    assert_eq!(early_answer(big, true), (Some(true), vec!["close"]));
}
