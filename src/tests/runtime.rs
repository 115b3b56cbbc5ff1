//! The whole wake path without nginx: a task awaits a future completed on a
//! `std::thread`; the waker writes to the completion socket; the "driver"
//! (this test) sees the socket readable, runs the task and collects it.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::Duration;

use crate::executor::{Executor, Spawned};
use crate::socket::{Notifier, Rendezvous};
use futures::channel::oneshot;

#[test]
fn foreign_thread_completion_wakes_through_the_socket() {
    let base = std::env::temp_dir().join(format!("ra-test-{}-rt", std::process::id()));
    std::fs::create_dir_all(&base).unwrap();
    let mut rv = Rendezvous::create(&base).unwrap();
    let mut driver = UnixStream::connect(rv.path()).unwrap();
    let notifier = Arc::new(Notifier::default());
    notifier.set_writer(Some(rv.accept_own().unwrap().unwrap()));
    drop(rv);

    let ex: Executor<u64> = Executor::new(notifier.clone());
    let mut ids = Vec::new();
    for i in 0..10u64 {
        let (tx, rx) = oneshot::channel();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20 + i));
            tx.send(i * 10).unwrap();
        });
        match ex.spawn(async move { rx.await.unwrap() + 1 }) {
            Spawned::Pending(id) => ids.push(id),
            Spawned::Ready(_) => panic!("cannot be ready yet"),
        }
    }

    let mut results = Vec::new();
    driver.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    while results.len() < 10 {
        let mut buf = [0u8; 64];
        let n = driver.read(&mut buf).expect("a wake-up byte");
        assert!(n >= 1);
        notifier.hold();
        ex.run_ready(usize::MAX);
        notifier.release(|| ex.has_ready());
        ex.take_completed(|id| results.push(ex.take(id).unwrap().unwrap()));
    }
    results.sort();
    assert_eq!(results, (0..10).map(|i| i * 10 + 1).collect::<Vec<_>>());
    assert!(notifier.written() <= 10, "at most one byte per batch");
    assert_eq!(ex.stats().in_flight, 0);
    std::fs::remove_dir(&base).unwrap();
}
