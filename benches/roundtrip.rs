//! `cargo bench --bench roundtrip`: spawn -> wake -> poll -> complete inside
//! Rust, without nginx (scenario 8 of bench/README.md). A plain
//! `harness = false` bench: each case runs for a fixed time after a warm-up
//! and prints ns per round trip (the median of several rounds).
//!
//! The cases, from cheapest to closest to a real call:
//!
//! * `ready`: a future ready at once (the fast path: no task id, no wake-up);
//! * `local_wake`: a task awaiting a oneshot completed on this thread: spawn,
//!   first poll (pending), wake (schedule + notify), `run_ready`,
//!   `take_completed`, `take`;
//! * `thread_wake`: the same, the oneshot completed by another (parked)
//!   thread, the wake-up delivered the real way: one byte on a unix socket
//!   that this thread blocks on (the completion socket, minus nginx);
//! * `pool_job`: a trivial job (sha256 of "x") on `Pool`, awaited by a task,
//!   woken through the same socket: what `async.sha256("x")` costs in Rust;
//! * `thread_wake_1cpu`, `pool_job_1cpu`: the same with every thread pinned
//!   to CPU 0. Unpinned, the two cross-thread cases are dominated by how
//!   long the OS takes to wake a thread on an idle CPU (slow in a VM
//!   without halt polling); pinned, by a local context switch.
//!
//! Lines look like `roundtrip <case> <ns> ns/op (<n> ops)`; `make bench`
//! copies them into bench/RESULTS.md.

use std::hint::black_box;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use resty_async::internals::{Executor, Notifier, Pool, Spawned};
use sha2::{Digest, Sha256};

const ROUNDS: usize = 5;

fn round_time() -> Duration {
    let ms = std::env::var("ROUNDTRIP_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_millis(ms)
}

/// Runs `op` in batches for `round_time()`, ROUNDS times after a warm-up;
/// returns the median ns per op and the ops run.
fn measure(mut op: impl FnMut()) -> (f64, u64) {
    let per_round = round_time();
    let mut batch = 1u64;
    // warm-up, and size a batch to ~1 ms
    let t = Instant::now();
    while t.elapsed() < per_round / 3 {
        let b = Instant::now();
        for _ in 0..batch {
            op();
        }
        if b.elapsed() < Duration::from_millis(1) {
            batch *= 2;
        }
    }
    let mut samples = Vec::with_capacity(ROUNDS);
    let mut total = 0;
    for _ in 0..ROUNDS {
        let start = Instant::now();
        let mut n = 0u64;
        while start.elapsed() < per_round {
            for _ in 0..batch {
                op();
            }
            n += batch;
        }
        samples.push(start.elapsed().as_nanos() as f64 / n as f64);
        total += n;
    }
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (samples[ROUNDS / 2], total)
}

fn report(case: &str, (ns, n): (f64, u64)) {
    println!("roundtrip {case:<16} {ns:>9.0} ns/op ({n} ops)");
}

/// An executor whose wake-ups write a byte to a socket this thread reads.
fn socket_executor() -> (Arc<Notifier>, Executor<u64>, UnixStream) {
    let (writer, reader) = UnixStream::pair().expect("socketpair");
    let notifier = Arc::new(Notifier::default());
    notifier.set_writer(Some(writer));
    let ex = Executor::new(Arc::clone(&notifier));
    (notifier, ex, reader)
}

/// What the driver does per completion-socket byte: read it, run the
/// ready tasks between hold/release, collect the finished ids.
fn drive(notifier: &Notifier, ex: &Executor<u64>, reader: &mut UnixStream, ids: &mut Vec<u64>) {
    let mut buf = [0u8; 64];
    let n = reader.read(&mut buf).expect("completion byte");
    assert!(n > 0);
    notifier.hold();
    ex.run_ready(256);
    notifier.release(|| ex.has_ready());
    ex.take_completed(|id| ids.push(id));
}

fn main() {
    // `cargo bench` passes --bench; a filter (first other arg) picks cases.
    let filter = std::env::args().skip(1).find(|a| !a.starts_with('-'));
    let wanted = |case: &str| filter.as_deref().is_none_or(|f| case.contains(f));

    if wanted("ready") {
        let ex: Executor<u64> = Executor::new(Arc::new(Notifier::default()));
        report(
            "ready",
            measure(|| match ex.spawn(async { black_box(1u64) }) {
                Spawned::Ready(Ok(v)) => {
                    black_box(v);
                }
                other => panic!("{other:?}"),
            }),
        );
    }

    if wanted("local_wake") {
        let notifier = Arc::new(Notifier::default());
        let ex: Executor<u64> = Executor::new(Arc::clone(&notifier));
        let mut ids = Vec::with_capacity(16);
        report(
            "local_wake",
            measure(|| {
                let (tx, rx) = oneshot::channel::<u64>();
                let Spawned::Pending(id) = ex.spawn(async move { rx.await.unwrap_or(0) + 1 }) else {
                    panic!("pending expected");
                };
                tx.send(41).expect("send");
                notifier.hold();
                ex.run_ready(256);
                notifier.release(|| ex.has_ready());
                ex.take_completed(|id| ids.push(id));
                assert_eq!(ids.pop(), Some(id));
                assert_eq!(ex.take(id), Some(Ok(42)));
            }),
        );
    }

    for pinned in [false, true] {
        // Pinned: this thread, the helper and the pool's threads (which
        // inherit the mask when they start) share CPU 0, so every wake-up
        // is a local context switch instead of an inter-processor wake-up
        // of an idle CPU (costly in a VM).
        let suffix = if pinned { "_1cpu" } else { "" };
        let saved = pinned.then(pin_to_cpu0);
        if wanted(&format!("thread_wake{suffix}")) {
            report(&format!("thread_wake{suffix}"), thread_wake());
        }
        if wanted(&format!("pool_job{suffix}")) {
            report(&format!("pool_job{suffix}"), pool_job());
        }
        if let Some(Some(mask)) = saved {
            restore_affinity(&mask);
        }
    }
}

fn thread_wake() -> (f64, u64) {
    let (notifier, ex, mut reader) = socket_executor();
    let (to_thread, from_main) = mpsc::channel::<oneshot::Sender<u64>>();
    let helper = std::thread::spawn(move || {
        for tx in from_main {
            let _ = tx.send(41);
        }
    });
    let mut ids = Vec::with_capacity(16);
    let res = measure(|| {
        let (tx, rx) = oneshot::channel::<u64>();
        let Spawned::Pending(id) = ex.spawn(async move { rx.await.unwrap_or(0) + 1 }) else {
            panic!("pending expected");
        };
        to_thread.send(tx).expect("helper alive");
        while ids.is_empty() {
            drive(&notifier, &ex, &mut reader, &mut ids);
        }
        assert_eq!(ids.pop(), Some(id));
        assert_eq!(ex.take(id), Some(Ok(42)));
    });
    drop(to_thread);
    helper.join().expect("helper");
    res
}

fn pool_job() -> (f64, u64) {
    let (notifier, ex, mut reader) = socket_executor();
    let pool = Pool::with_nice(1, 1024, 0);
    let mut ids = Vec::with_capacity(16);
    measure(|| {
        let job = pool.spawn(|| Sha256::digest(b"x")).expect("queued");
        let id = match ex.spawn(async move { job.await.map(|h| h.len() as u64).unwrap_or(0) }) {
            Spawned::Pending(id) => id,
            // the pool thread may win the race before the first poll
            Spawned::Ready(out) => {
                assert_eq!(out, Ok(32)); // a SHA-256 digest's bytes
                return;
            }
        };
        while ids.is_empty() {
            drive(&notifier, &ex, &mut reader, &mut ids);
        }
        assert_eq!(ids.pop(), Some(id));
        assert_eq!(ex.take(id), Some(Ok(32)));
    })
}

/// Pins this thread to CPU 0; returns the previous mask (None: not
/// changed).
fn pin_to_cpu0() -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is plain data; the calls get valid pointers and
    // the size of the set.
    unsafe {
        let mut old: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut old) != 0 {
            return None;
        }
        let mut one: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut one);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &one) != 0 {
            return None;
        }
        Some(old)
    }
}

fn restore_affinity(mask: &libc::cpu_set_t) {
    // SAFETY: as above.
    unsafe {
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), mask);
    }
}
