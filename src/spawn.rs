//! Child tasks: [`spawn_local`] and its [`JoinHandle`].
//!
//! A future that a resty-async function runs may start other futures that
//! run beside it on the worker's executor: a protocol client's connection
//! task (hyper's `Connection`, tokio-postgres's), a second request. Each
//! child belongs to the task that a Lua caller waits for (its root): it
//! runs only while the root runs and is cancelled (its future dropped) when
//! the root finishes, times out or is cancelled. Its sockets are carried
//! out by the root's waiter, like the root's own (see [`crate::net`]).

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use futures::FutureExt;

use crate::executor::{current_root, Panicked};
use crate::runtime::Runtime;

/// Why a child task gave no output.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinError {
    /// Its future was dropped first: it was aborted, or its root task
    /// ended.
    Cancelled,
    /// Its future panicked, with this message.
    Panicked(String),
}

impl fmt::Display for JoinError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            JoinError::Cancelled => f.write_str("task cancelled"),
            JoinError::Panicked(m) => write!(f, "task panicked: {m}"),
        }
    }
}

impl std::error::Error for JoinError {}

struct JoinState<T> {
    out: Option<Result<T, JoinError>>,
    waker: Option<Waker>,
    /// The child is still running (its future exists).
    running: bool,
    abort: Option<Waker>,
    aborted: bool,
}

/// The handle of a child task started with [`spawn_local`]: awaiting it
/// gives the child's output. Dropping the handle does not stop the child
/// (use [`JoinHandle::abort`]); the child's root task ending does.
pub struct JoinHandle<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> JoinHandle<T> {
    /// Cancels the child: its future is dropped the next time the
    /// executor runs it (soon: it is woken now). Awaiting the handle then
    /// gives [`JoinError::Cancelled`], unless it had finished.
    pub fn abort(&self) {
        let waker = {
            let mut st = self.state.borrow_mut();
            st.aborted = true;
            st.abort.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }

    /// Whether the child has ended (finished, panicked or cancelled).
    pub fn is_finished(&self) -> bool {
        !self.state.borrow().running
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = Result<T, JoinError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut st = self.state.borrow_mut();
        if let Some(out) = st.out.take() {
            return Poll::Ready(out);
        }
        if !st.running {
            // Taken by an earlier poll.
            return Poll::Ready(Err(JoinError::Cancelled));
        }
        match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => {}
            _ => st.waker = Some(cx.waker().clone()),
        }
        Poll::Pending
    }
}

impl<T> fmt::Debug for JoinHandle<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JoinHandle")
            .field("finished", &self.is_finished())
            .finish()
    }
}

/// Ends a child: records its output (or that it was cancelled, when its
/// future is dropped unfinished) and wakes the handle's awaiter.
struct Completion<T> {
    state: Rc<RefCell<JoinState<T>>>,
}

impl<T> Completion<T> {
    fn complete(&self, out: Result<T, JoinError>) {
        let waker = {
            let mut st = self.state.borrow_mut();
            if st.running {
                st.running = false;
                st.out = Some(out);
            }
            st.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl<T> Drop for Completion<T> {
    fn drop(&mut self) {
        self.complete(Err(JoinError::Cancelled));
    }
}

/// A child's future, which ends early when its handle aborts it.
struct Abortable<F, T> {
    fut: Pin<Box<F>>,
    state: Rc<RefCell<JoinState<T>>>,
}

impl<F: Future, T> Future for Abortable<F, T> {
    type Output = Option<F::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        {
            let mut st = self.state.borrow_mut();
            if st.aborted {
                return Poll::Ready(None);
            }
            st.abort = Some(cx.waker().clone());
        }
        self.fut.as_mut().poll(cx).map(Some)
    }
}

/// Starts `fut` as a child of the task running now (see the module docs)
/// and returns its handle. The child is first polled right after the
/// current task yields, in the same call from Lua.
///
/// # Panics
///
/// Outside a task of resty-async's executor (a plain function, another
/// thread): there is no task to own the child.
pub fn spawn_local<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + 'static,
    F::Output: 'static,
{
    let root = current_root()
        .expect("resty_async::spawn_local must be called from a task of resty-async's executor");
    let state = Rc::new(RefCell::new(JoinState {
        out: None,
        waker: None,
        running: true,
        abort: None,
        aborted: false,
    }));
    let done = Completion {
        state: Rc::clone(&state),
    };
    let child = Abortable {
        fut: Box::pin(fut),
        state: Rc::clone(&state),
    };
    Runtime::current().spawn_child(root, async move {
        match AssertUnwindSafe(child).catch_unwind().await {
            Ok(Some(out)) => done.complete(Ok(out)),
            Ok(None) => done.complete(Err(JoinError::Cancelled)),
            Err(p) => done.complete(Err(JoinError::Panicked(Panicked::from_payload(p).0))),
        }
    });
    JoinHandle { state }
}
