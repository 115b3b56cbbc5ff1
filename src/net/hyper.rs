//! hyper's runtime traits on resty-async: [`HyperExecutor`] and
//! [`HyperTimer`] (the `hyper` feature).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

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
