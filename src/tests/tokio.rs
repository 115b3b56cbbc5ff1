//! The tokio runtime of the `tokio` feature: one per process, started on
//! first use, polled-in context for the executor's tasks, abandoned by a
//! child of fork().

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::executor::{Executor, Panicked, Spawned};
use crate::socket::Notifier;

#[test]
fn spawn_runs_on_the_runtime() {
    let h = crate::tokio::spawn(async { std::thread::current().name().map(str::to_owned) });
    assert_eq!(futures::executor::block_on(h).as_deref(), Some("resty-tokio"));
    assert!(crate::tokio::stats().0 >= 1, "the runtime counts its threads");
}

#[test]
fn dropping_the_handle_aborts_the_task() {
    struct Guard(Arc<AtomicBool>);
    impl Drop for Guard {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }
    let dropped = Arc::new(AtomicBool::new(false));
    let guard = Guard(Arc::clone(&dropped));
    let h = crate::tokio::spawn(async move {
        let _guard = guard;
        ::tokio::time::sleep(Duration::from_secs(60)).await;
    });
    drop(h);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !dropped.load(Ordering::SeqCst) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(dropped.load(Ordering::SeqCst), "the task's future was dropped");
}

#[test]
fn awaiting_an_aborted_task_says_it_was_aborted() {
    let h = crate::tokio::spawn(async { ::tokio::time::sleep(Duration::from_secs(60)).await });
    h.abort();
    let payload = std::panic::catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(h)))
        .expect_err("no output to give");
    assert_eq!(
        Panicked::from_payload(payload).0,
        "the tokio task was aborted (JoinHandle::abort) before it finished"
    );
}

#[test]
fn a_panic_is_resumed_where_the_handle_is_awaited() {
    let h = crate::tokio::spawn(async { panic!("boom") });
    let payload = std::panic::catch_unwind(AssertUnwindSafe(|| futures::executor::block_on(h)))
        .expect_err("the panic comes through");
    assert_eq!(Panicked::from_payload(payload).0, "boom");
}

#[test]
fn executor_tasks_may_await_tokio_timers() {
    let ex: Executor<u32> = Executor::new(Arc::new(Notifier::default()));
    let id = match ex.spawn(async {
        ::tokio::time::sleep(Duration::from_millis(20)).await;
        7
    }) {
        Spawned::Pending(id) => id,
        other => panic!("{other:?}"),
    };
    // The timer fires on a runtime thread; its waker queues the task.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ex.has_ready() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(ex.run_ready(16), 1);
    assert_eq!(ex.take(id), Some(Ok(7)));
}

#[test]
fn child_after_fork_starts_a_runtime_of_its_own() {
    assert_eq!(futures::executor::block_on(crate::tokio::spawn(async { 1 })), 1);
    // The child starts threads of its own for a tokio runtime: what an
    // nginx worker does after the master forked it, which is what this
    // tests.
    assert!(
        super::in_child(|| {
            let abandoned = crate::tokio::stats() == (0, 0);
            abandoned && futures::executor::block_on(crate::tokio::spawn(async { 2 })) == 2
        }),
        "the child used the parent's runtime, or could not start its own"
    );
    assert_eq!(futures::executor::block_on(crate::tokio::spawn(async { 3 })), 3);
}
