use crate::executor::*;
use crate::socket::Notifier;
use futures::channel::oneshot;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn exec() -> Executor<u32> {
    Executor::new(Arc::new(Notifier::default()))
}

#[test]
fn ready_future_returns_at_once() {
    let ex = exec();
    match ex.spawn(async { 7 }) {
        Spawned::Ready(Ok(7)) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(ex.stats().in_flight, 0);
    let mut ids = vec![];
    ex.take_completed(|id| ids.push(id));
    assert!(ids.is_empty(), "fast path leaves nothing for the driver");
}

#[test]
fn wake_from_another_thread_completes_task() {
    let ex = exec();
    let (tx, rx) = oneshot::channel::<u32>();
    let id = match ex.spawn(async move { rx.await.unwrap() + 1 }) {
        Spawned::Pending(id) => id,
        other => panic!("{other:?}"),
    };
    std::thread::spawn(move || tx.send(41).unwrap()).join().unwrap();
    assert_eq!(ex.run_ready(16), 1);
    let mut ids = vec![];
    ex.take_completed(|id| ids.push(id));
    assert_eq!(ids, vec![id]);
    assert_eq!(ex.take(id), Some(Ok(42)));
    assert_eq!(ex.stats().in_flight, 0);
}

#[test]
fn take_if_leaves_an_outcome_it_refuses() {
    let ex = exec();
    let (tx, rx) = oneshot::channel::<u32>();
    let id = match ex.spawn(async move { rx.await.unwrap() }) {
        Spawned::Pending(id) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(ex.take_if(id, |_| true), None, "not finished yet");
    tx.send(5).unwrap();
    ex.run_ready(16);
    assert_eq!(ex.take_if(id, |out| out == &Ok(6)), None);
    assert!(ex.contains(id), "a refused outcome stays");
    assert_eq!(ex.take_if(id, |out| out == &Ok(5)), Some(Ok(5)));
    assert!(!ex.contains(id));
    assert_eq!(ex.take(id), None, "taken once");
}

#[test]
fn panic_becomes_outcome() {
    let ex = exec();
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = ex.spawn(async { panic!("boom") });
    std::panic::set_hook(prev);
    match r {
        Spawned::Ready(Err(Panicked(m))) => assert_eq!(m, "boom"),
        other => panic!("{other:?}"),
    }
}

struct DropCount(Arc<AtomicUsize>);
impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

#[test]
fn cancel_drops_future_at_once() {
    let ex = exec();
    let drops = Arc::new(AtomicUsize::new(0));
    let guard = DropCount(drops.clone());
    let (_tx, rx) = oneshot::channel::<u32>();
    let id = match ex.spawn(async move {
        let _g = guard;
        rx.await.unwrap_or(0)
    }) {
        Spawned::Pending(id) => id,
        other => panic!("{other:?}"),
    };
    assert_eq!(drops.load(Ordering::SeqCst), 0);
    assert!(ex.cancel(id));
    assert_eq!(drops.load(Ordering::SeqCst), 1, "destructor ran inside cancel");
    assert!(!ex.contains(id));
    assert_eq!(ex.stats().cancelled, 1);
    assert_eq!(ex.stats().in_flight, 0);
}

#[test]
fn budget_leaves_the_rest_queued() {
    let notifier = Arc::new(Notifier::default());
    let ex: Executor<u32> = Executor::new(notifier.clone());
    let mut txs = vec![];
    for _ in 0..10 {
        let (tx, rx) = oneshot::channel::<u32>();
        txs.push(tx);
        ex.spawn(async move { rx.await.unwrap() });
    }
    for tx in txs {
        tx.send(1).unwrap();
    }
    assert_eq!(ex.run_ready(4), 4);
    assert!(ex.has_ready());
    assert_eq!(ex.run_ready(100), 6);
    assert!(!ex.has_ready());
    let mut n = 0;
    ex.take_completed(|_| n += 1);
    assert_eq!(n, 10);
}

#[test]
fn shutdown_drops_everything() {
    let ex = exec();
    let drops = Arc::new(AtomicUsize::new(0));
    let mut keep = vec![];
    for _ in 0..5 {
        let guard = DropCount(drops.clone());
        let (tx, rx) = oneshot::channel::<u32>();
        keep.push(tx);
        ex.spawn(async move {
            let _g = guard;
            rx.await.unwrap_or(0)
        });
    }
    ex.shutdown();
    assert_eq!(drops.load(Ordering::SeqCst), 5);
    assert_eq!(ex.stats().in_flight, 0);
    // Late wake-ups after shutdown are harmless.
    for tx in keep {
        let _ = tx.send(1);
    }
    assert_eq!(ex.run_ready(10), 0);
}
