//! Pool jobs without futures (`futureless.rs`): their errands come back to
//! the poll, and a cancelled one is not run, or is dropped when it comes
//! back, and forgotten.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::futureless::{is_plain, PlainTasks, Taken};
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
    let id = plain
        .spawn_job(&pool, || Sendable::Number(42.0), WakeUp::Now)
        .unwrap();
    assert!(is_plain(id));
    assert!(matches!(plain.take_raw(&w, id), Taken::Pending));
    assert_eq!(collect(&plain, &w, 1), vec![id]);
    match plain.take_raw(&w, id) {
        Taken::Raw(Ok(Sendable::Number(n))) => assert_eq!(n, 42.0),
        _ => panic!("expected the number"),
    }
    assert!(matches!(plain.take_raw(&w, id), Taken::Unknown), "taken once");
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
    let id1 = plain
        .spawn_job(
            &pool,
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
    let id2 = plain
        .spawn_job(
            &pool,
            move || {
                r2.store(true, Ordering::SeqCst);
                Sendable::Boolean(true)
            },
            WakeUp::Now,
        )
        .unwrap();
    assert!(plain.cancel(&w, id1), "running");
    assert!(plain.cancel(&w, id2), "queued");
    assert_eq!(plain.cancelled_on_their_way(), 2);
    go_tx.send(()).unwrap();
    // Job 3 runs after both: once it is back, so is job 1, and job 2 was
    // skipped.
    let id3 = plain
        .spawn_job(&pool, || Sendable::Boolean(true), WakeUp::Now)
        .unwrap();
    assert_eq!(
        collect(&plain, &w, 1),
        vec![id3],
        "cancelled jobs are not handed on"
    );
    assert!(
        !ran.load(Ordering::SeqCst),
        "a job cancelled in the queue does not run"
    );
    assert_eq!(plain.cancelled_on_their_way(), 0, "both forgotten");
    assert_eq!(pool.stats().skipped, 1);
    assert!(matches!(
        plain.take_raw(&w, id3),
        Taken::Raw(Ok(Sendable::Boolean(true)))
    ));
    assert_eq!(plain.len(), 0);
}

#[test]
fn a_reused_slot_does_not_answer_to_its_old_id() {
    let timers = Timers::new();
    let plain = PlainTasks::new(&timers, Arc::new(Notifier::default()));
    let w = Waiters::default();
    let far = timers.now() + 3_600_000;
    let first = plain.spawn_sleep(far).unwrap();
    assert!(plain.cancel(&w, first));
    let second = plain.spawn_sleep(far).unwrap();
    assert_ne!(first, second, "a new id for the same slot");
    assert!(!plain.cancel(&w, first), "the old id finds nothing");
    assert!(matches!(plain.take_raw(&w, first), Taken::Unknown));
    assert!(matches!(plain.take_raw(&w, second), Taken::Pending));
    assert_eq!(plain.len(), 1);
    assert!(plain.cancel(&w, second));
    assert_eq!(plain.len(), 0);
    assert!(timers.is_empty(), "the deadlines went with their tasks");
}

#[test]
fn ids_are_whole_lua_numbers_apart_from_the_executors() {
    let timers = Timers::new();
    let plain = PlainTasks::new(&timers, Arc::new(Notifier::default()));
    let w = Waiters::default();
    let far = timers.now() + 3_600_000;
    let ids: Vec<u64> = (0..1000).map(|_| plain.spawn_sleep(far).unwrap()).collect();
    let mut distinct = ids.clone();
    distinct.sort_unstable();
    distinct.dedup();
    assert_eq!(distinct.len(), ids.len());
    for id in [1, 2, 1000, 1 << 40] {
        assert!(!is_plain(id), "the executor's ids, counted from 1, are not plain");
    }
    for &id in &ids {
        assert!(is_plain(id));
        // (a Lua number holds it exactly: see ffi::task_id)
        assert_eq!(crate::ffi::task_id(id as f64), Some(id));
    }
    for id in ids {
        assert!(plain.cancel(&w, id));
    }
    assert_eq!(plain.len(), 0);
}

#[test]
fn a_slot_at_its_last_use_is_not_used_again_so_no_id_repeats() {
    let timers = Timers::new();
    let plain = PlainTasks::new(&timers, Arc::new(Notifier::default()));
    let w = Waiters::default();
    let far = timers.now() + 3_600_000;
    let first = plain.spawn_sleep(far).unwrap();
    assert!(plain.cancel(&w, first));
    plain.set_uses(first, PlainTasks::MAX_USES - 1);
    let last = plain.spawn_sleep(far).unwrap();
    assert_eq!(
        last & 0xff_ffff,
        first & 0xff_ffff,
        "the same slot, at its last use"
    );
    assert!(plain.cancel(&w, last));
    let next = plain.spawn_sleep(far).unwrap();
    assert_ne!(next & 0xff_ffff, first & 0xff_ffff, "the slot is retired");
    assert!(next != first && next != last);
    assert!(plain.cancel(&w, next));
    assert_eq!(plain.len(), 0);
}

/// A sleep of 0 finishes at once, and so does one refused for a full table
/// of tasks, whose start then says there is a result to take: the message,
/// not the sleep's `true`.
#[test]
fn a_sleep_refused_for_a_full_table_leaves_its_message() {
    use crate::ffi::{start_sleep_for_test, ValueOut, API, KIND_ERROR, WAIT_C_FUNCTION, WAIT_DONE};

    let rt = crate::runtime::Runtime::new(crate::config::Config::default());
    let mut waited = -99;
    assert_eq!(start_sleep_for_test(&rt, 0.0, &mut waited), 0.0);
    assert_eq!(waited, WAIT_C_FUNCTION, "done at once: true");
    let id = start_sleep_for_test(&rt, 60.0, &mut waited);
    assert!(id.abs() >= 1.0, "pending: {id}");
    assert_eq!(waited, WAIT_C_FUNCTION, "no caller to queue here");

    rt.plain_for_test().limit_slots_for_test(1);
    assert_eq!(start_sleep_for_test(&rt, 60.0, &mut waited), 0.0);
    assert_eq!(waited, WAIT_DONE, "done at once, with a result");
    let mut out = ValueOut {
        kind: 0,
        num: 0.0,
        ptr: std::ptr::null(),
        len: 0,
    };
    // SAFETY: `out` is writable; id 0 takes the result of a start.
    let kind = unsafe { (API.take)(std::ptr::null(), 0.0, &mut out) };
    assert_eq!(kind, KIND_ERROR);
    // SAFETY: the message's bytes, valid until the next call.
    let msg = unsafe { std::slice::from_raw_parts(out.ptr as *const u8, out.len) };
    assert_eq!(msg, b"resty.async: more than 16777216 tasks at once");
    assert!(rt.cancel(id.abs() as u64));
}

#[test]
fn a_string_longer_than_lua_takes_is_an_error() {
    // (zeroed pages: none is touched)
    let long = mlua::BString::from(vec![0u8; crate::sendable::MAX_LUA_STRING + 1]);
    match Sendable::new(long) {
        Sendable::Failed(msg) => assert!(msg.starts_with("string length overflow"), "{msg}"),
        _ => panic!("taken as a string"),
    }
    let longest = mlua::BString::from(vec![0u8; crate::sendable::MAX_LUA_STRING]);
    assert!(matches!(Sendable::new(longest), Sendable::Bytes(_)));
}
