//! A tokio runtime per worker process, for crates tied to tokio (the
//! `tokio` feature).
//!
//! Much of Rust's network ecosystem needs a tokio runtime: its I/O and
//! timer drivers, and `tokio::spawn`. Here each process that uses one gets
//! its own multi-thread runtime, started on first use on the nginx worker,
//! never before nginx forks: a runtime inherited through `fork()` (its
//! threads do not exist in the child) is abandoned, as the resty-async
//! runtime is (see `vm.rs`), and the child starts its own. The runtime is
//! per process, not per Lua VM: with `lua_code_cache off` VMs come and go
//! while it stays. It is shut down when the process exits.
//!
//! With the feature on, resty-async's executor polls every task inside
//! this runtime's context (`Handle::enter`), so a future of an
//! [`crate::Module::add_async`] or [`crate::Module::add_lua_async`]
//! function may use tokio types directly (`tokio::time::sleep`,
//! `tokio::net::TcpStream`): their wakers, fired by the runtime's threads,
//! wake the resty-async task the usual way. [`spawn`] moves a whole future
//! to the runtime's threads (CPU-heavy protocol work such as a TLS
//! handshake then stays off the nginx worker); dropping its handle aborts
//! the task.

use std::cell::RefCell;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, Once, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use ::tokio::runtime::{Builder, Handle};

use crate::config::Config;
use crate::sys;

/// The runtime of this process, with [`sys::forks`] at its start: it
/// belongs to this process while that is unchanged.
struct Started {
    forks: u64,
    threads: usize,
    runtime: ::tokio::runtime::Runtime,
}

static RUNTIME: Mutex<Option<Started>> = Mutex::new(None);
/// `tokio_threads` as last configured in this process (0: never), for a
/// start on any thread: the configuration of `Runtime::config` is the
/// worker thread's, and a pool thread (an `add_blocking` closure that
/// calls [`handle`] or [`spawn`]) has only the defaults.
static CONFIGURED_THREADS: AtomicUsize = AtomicUsize::new(0);
/// Threads of the runtime alive now (workers and blocking threads).
static THREADS: AtomicUsize = AtomicUsize::new(0);
static AT_EXIT: Once = Once::new();

thread_local! {
    /// The handle of this process's runtime, for this thread's polls (no
    /// lock per poll).
    static HANDLE: RefCell<Option<(u64, Handle)>> = const { RefCell::new(None) };
}

/// How long the exiting process lets the runtime's threads finish: its
/// tasks are dropped at once, blocking jobs (a DNS look-up) get this long.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);
/// Longest the start of the runtime waits for its worker threads to run.
const THREAD_START_WAIT: Duration = Duration::from_secs(1);

fn lock() -> MutexGuard<'static, Option<Started>> {
    RUNTIME.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The handle of this process's tokio runtime, started now if it does not
/// run yet (with `tokio_threads` worker threads; see `async.configure`).
/// Use it from the nginx worker (an async or sync function of a module),
/// not from `init_by_lua`: a runtime started in nginx's master is of no
/// use to the workers, which start their own.
///
/// # Panics
///
/// If the runtime cannot start (the system refuses a thread).
pub fn handle() -> Handle {
    try_handle().unwrap_or_else(|e| panic!("resty-async: cannot start the tokio runtime: {e}"))
}

fn try_handle() -> io::Result<Handle> {
    let forks = sys::watch_forks();
    let cached = HANDLE.with(|c| match &*c.borrow() {
        Some((f, h)) if *f == forks => Some(h.clone()),
        _ => None,
    });
    if let Some(h) = cached {
        return Ok(h);
    }
    let h = start(forks)?;
    let old = HANDLE.with(|c| c.replace(Some((forks, h.clone()))));
    // A handle of the parent's runtime: see `start`.
    std::mem::forget(old);
    Ok(h)
}

/// Starts this process's runtime unless it runs already.
fn start(forks: u64) -> io::Result<Handle> {
    let mut slot = lock();
    if let Some(s) = slot.as_ref().filter(|s| s.forks == forks) {
        return Ok(s.runtime.handle().clone());
    }
    if let Some(inherited) = slot.take() {
        // Started before fork(): its threads are not ours, and dropping it
        // would wait for them forever. Leave it be.
        std::mem::forget(inherited);
        THREADS.store(0, Ordering::Relaxed);
    }
    let threads = match CONFIGURED_THREADS.load(Ordering::Relaxed) {
        0 => Config::default().tokio_threads,
        n => n,
    };
    let runtime = Builder::new_multi_thread()
        .worker_threads(threads)
        .thread_name("resty-tokio")
        .enable_all()
        .on_thread_start(|| {
            // Signals to the process are nginx's: its own thread must get
            // them.
            sys::block_async_signals();
            THREADS.fetch_add(1, Ordering::Relaxed);
        })
        .on_thread_stop(|| {
            THREADS.fetch_sub(1, Ordering::Relaxed);
        })
        .build()?;
    // Its worker threads start on their own time: wait (briefly, once per
    // process) until they run, so that the first call returns with them
    // named, their signals blocked and counted by `stats`.
    let deadline = Instant::now() + THREAD_START_WAIT;
    while THREADS.load(Ordering::Relaxed) < threads && Instant::now() < deadline {
        std::thread::sleep(Duration::from_micros(50));
    }
    let handle = runtime.handle().clone();
    *slot = Some(Started {
        forks,
        threads,
        runtime,
    });
    AT_EXIT.call_once(|| {
        // (Without it the runtime's threads end with the process all the
        // same, but their tasks' destructors do not run.)
        let _ = sys::at_exit(shutdown_at_exit);
    });
    Ok(handle)
}

/// The process exits (nginx's worker or master calls `exit()` once it has
/// closed its Lua VMs, which dropped the resty-async tasks): shut the
/// runtime down, dropping its tasks, without blocking for long.
extern "C" fn shutdown_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        // A lock held now would be held by a thread that exit() is about
        // to end: skip rather than wait.
        let Ok(mut slot) = RUNTIME.try_lock() else { return };
        let Some(started) = slot.take() else { return };
        drop(slot);
        if started.forks == sys::forks() {
            started.runtime.shutdown_timeout(SHUTDOWN_GRACE);
        } else {
            std::mem::forget(started);
        }
    });
}

/// Runs `f` (a poll of a resty-async task) in the context of this
/// process's runtime, which starts now if needed. If it cannot start, `f`
/// runs without it (a tokio type then panics with tokio's own message,
/// which the task's caller gets as its error).
pub(crate) fn in_context<R>(f: impl FnOnce() -> R) -> R {
    match try_handle() {
        Ok(h) => {
            let _entered = h.enter();
            f()
        }
        Err(_) => f(),
    }
}

/// Counters for `async.stats()`: the runtime's threads and its tasks
/// alive (zero before it starts).
pub(crate) fn stats() -> (usize, usize) {
    let slot = lock();
    match slot.as_ref().filter(|s| s.forks == sys::forks()) {
        Some(s) => (
            THREADS.load(Ordering::Relaxed),
            s.runtime.metrics().num_alive_tasks(),
        ),
        None => (0, 0),
    }
}

/// Notes the `tokio_threads` of a configuration taken (see
/// `CONFIGURED_THREADS`).
pub(crate) fn note_config(config: &Config) {
    CONFIGURED_THREADS.store(config.tokio_threads, Ordering::Relaxed);
}

/// Refuses a `tokio_threads` other than that of the runtime running in
/// this process.
pub(crate) fn check_config(config: &Config) -> Result<(), String> {
    let slot = lock();
    match slot.as_ref().filter(|s| s.forks == sys::forks()) {
        Some(s) if s.threads != config.tokio_threads => Err(format!(
            "the tokio runtime of this worker is already running with {} threads; \
             configure tokio_threads before its first use",
            s.threads
        )),
        _ => Ok(()),
    }
}

/// Runs `fut` on this process's tokio runtime (started now if needed).
/// The returned handle is a future of the task's output, for a
/// resty-async task to await. Dropping it aborts the tokio task, so a
/// timeout, a client abort or a cancelled call stops the work: the
/// future is dropped on a runtime thread, where its destructors run.
///
/// A panic in the task is resumed in the task that awaits the handle:
/// the Lua caller gets `nil, "rust function panicked: ..."`.
///
/// # Panics
///
/// If the runtime cannot start (see [`handle`]).
pub fn spawn<F>(fut: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    let mut fut = Box::pin(fut);
    // Its panics are caught (by tokio, for the handle): they print like
    // the others resty-async catches (see panic.rs), not one each.
    let caught = std::future::poll_fn(move |cx| {
        let _catching = crate::panic::Catching::enter();
        fut.as_mut().poll(cx)
    });
    JoinHandle {
        inner: handle().spawn(caught),
        aborted: AtomicBool::new(false),
    }
}

/// A task of [`spawn`]: awaiting it gives its output; dropping it aborts
/// the task.
#[derive(Debug)]
pub struct JoinHandle<T> {
    inner: ::tokio::task::JoinHandle<T>,
    /// [`JoinHandle::abort`] was called.
    aborted: AtomicBool,
}

impl<T> JoinHandle<T> {
    /// Aborts the task now (as dropping the handle does). Awaiting the
    /// handle afterwards panics, unless the task had finished: there is no
    /// output to give.
    pub fn abort(&self) {
        self.aborted.store(true, Ordering::Relaxed);
        self.inner.abort();
    }

    /// Whether the task has finished.
    pub fn is_finished(&self) -> bool {
        self.inner.is_finished()
    }
}

impl<T> Future for JoinHandle<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        match Pin::new(&mut self.inner).poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(out)) => Poll::Ready(out),
            Poll::Ready(Err(e)) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Poll::Ready(Err(_)) if self.aborted.load(Ordering::Relaxed) => {
                panic!("the tokio task was aborted (JoinHandle::abort) before it finished")
            }
            // Otherwise only the runtime's shutdown cancels a task whose
            // handle is still held: the process is exiting.
            Poll::Ready(Err(_)) => {
                panic!("the tokio task was cancelled: the worker's tokio runtime shut down")
            }
        }
    }
}

impl<T> Drop for JoinHandle<T> {
    fn drop(&mut self) {
        self.inner.abort();
    }
}
