//! Pool jobs without futures (`futureless.rs`): their errands come back to
//! the poll, and a cancelled one is not run, or is dropped when it comes
//! back, and forgotten.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::futureless::{PlainTasks, Taken};
use crate::pool::{Pool, WakeUp};
use crate::sendable::Sendable;
use crate::socket::Notifier;
use crate::timer::Timers;
use crate::waiters::Waiters;

/// Polls `plain` until `n` tasks came back; their ids.
fn collect(plain: &PlainTasks, waiters: &Waiters, n: usize) -> Vec<u64> {
    let mut ids = Vec::new();
    let until = Instant::now() + Duration::from_secs(5);
    while ids.len() < n {
        assert!(Instant::now() < until, "only {ids:?} came back");
        plain.take_completed(waiters, |id| ids.push(id));
        std::thread::sleep(Duration::from_millis(1));
    }
    ids
}

#[test]
fn a_job_comes_back_with_its_result() {
    let pool = Pool::new(1, 8);
    let plain = PlainTasks::new(&Timers::new(), Arc::new(Notifier::default()));
    let w = Waiters::default();
    plain
        .spawn_job(&pool, 1, || Sendable::Number(42.0), WakeUp::Now)
        .unwrap();
    assert!(matches!(plain.take_raw(&w, 1), Taken::Pending));
    assert_eq!(collect(&plain, &w, 1), vec![1]);
    match plain.take_raw(&w, 1) {
        Taken::Raw(Ok(Sendable::Number(n))) => assert_eq!(n, 42.0),
        _ => panic!("expected the number"),
    }
    assert!(matches!(plain.take_raw(&w, 1), Taken::Unknown), "taken once");
    assert_eq!(plain.len(), 0);
}

#[test]
fn a_cancelled_job_is_not_run_or_is_dropped_when_it_comes_back() {
    let pool = Pool::new(1, 8);
    let plain = PlainTasks::new(&Timers::new(), Arc::new(Notifier::default()));
    let w = Waiters::default();
    // Job 1 runs until told to finish; job 2 waits in the queue behind it.
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let (started_tx, started_rx) = mpsc::channel::<()>();
    plain
        .spawn_job(
            &pool,
            1,
            move || {
                started_tx.send(()).unwrap();
                go_rx.recv().unwrap();
                Sendable::Boolean(true)
            },
            WakeUp::Now,
        )
        .unwrap();
    started_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = Arc::clone(&ran);
    plain
        .spawn_job(
            &pool,
            2,
            move || {
                r2.store(true, Ordering::SeqCst);
                Sendable::Boolean(true)
            },
            WakeUp::Now,
        )
        .unwrap();
    assert!(plain.cancel(&w, 1), "running");
    assert!(plain.cancel(&w, 2), "queued");
    assert_eq!(plain.cancelled_on_their_way(), 2);
    go_tx.send(()).unwrap();
    // Job 3 runs after both: once it is back, so is job 1, and job 2 was
    // skipped.
    plain
        .spawn_job(&pool, 3, || Sendable::Boolean(true), WakeUp::Now)
        .unwrap();
    assert_eq!(
        collect(&plain, &w, 1),
        vec![3],
        "cancelled jobs are not handed on"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "a job cancelled in the queue does not run"
    );
    assert_eq!(plain.cancelled_on_their_way(), 0, "both forgotten");
    assert_eq!(pool.stats().skipped, 1);
    assert!(matches!(
        plain.take_raw(&w, 3),
        Taken::Raw(Ok(Sendable::Boolean(true)))
    ));
    assert_eq!(plain.len(), 0);
}
