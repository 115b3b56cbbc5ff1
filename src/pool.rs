//! The blocking pool: threads for CPU work and blocking system calls.
//!
//! Jobs go through a bounded crossbeam channel; a full queue is reported at
//! once ([`PoolError::Busy`]) instead of growing without bound. Threads are
//! started on demand, up to the configured number, and live as long as the
//! process. Each job runs under `catch_unwind`: a panic becomes the job's
//! result and the thread goes on. A job whose caller has gone (its
//! [`BlockingTask`] was dropped, e.g. on timeout) before it started is not
//! run; one that is running finishes and its result is dropped.

use std::fmt;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use futures::channel::oneshot;

use crate::executor::Panicked;

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Why a blocking job produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The queue was full; the job was not queued.
    Busy {
        /// The configured queue size.
        max_queue: usize,
    },
    /// The job panicked.
    Panicked(Panicked),
    /// The pool dropped the job without running it (it cannot start threads).
    Lost(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Busy { max_queue } => {
                write!(f, "busy (blocking pool queue full: max_queue = {max_queue})")
            }
            PoolError::Panicked(p) => p.fmt(f),
            PoolError::Lost(why) => write!(f, "blocking job lost: {why}"),
        }
    }
}

impl std::error::Error for PoolError {}

/// Counters of a pool.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct PoolStats {
    /// Threads started.
    pub threads: usize,
    /// Jobs waiting in the queue.
    pub queued: usize,
    /// Jobs running now.
    pub running: usize,
    /// Jobs that ran to the end (or panicked).
    pub done: u64,
    /// Jobs refused because the queue was full.
    pub rejected: u64,
    /// Jobs skipped because their caller had gone before they started.
    pub skipped: u64,
}

#[derive(Default)]
struct Counters {
    threads: AtomicUsize,
    idle: AtomicUsize,
    running: AtomicUsize,
    done: AtomicU64,
    rejected: AtomicU64,
    skipped: AtomicU64,
}

/// A pool of blocking threads.
pub struct Pool {
    tx: Sender<Job>,
    rx: Receiver<Job>,
    max_threads: usize,
    max_queue: usize,
    counters: Arc<Counters>,
    spawn_lock: Mutex<()>,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats()).finish()
    }
}

impl Pool {
    /// A pool of at most `threads` threads (at least 1) and `max_queue`
    /// queued jobs (at least 1). No thread starts before the first job.
    pub fn new(threads: usize, max_queue: usize) -> Pool {
        let max_queue = max_queue.max(1);
        let (tx, rx) = crossbeam_channel::bounded(max_queue);
        Pool {
            tx,
            rx,
            max_threads: threads.max(1),
            max_queue,
            counters: Arc::default(),
            spawn_lock: Mutex::new(()),
        }
    }

    /// Queues `f`; the returned future resolves to its result.
    ///
    /// Fails at once with [`PoolError::Busy`] when the queue is full.
    pub fn spawn<T, F>(&self, f: F) -> Result<BlockingTask<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let counters = Arc::clone(&self.counters);
        let job: Job = Box::new(move || {
            if tx.is_canceled() {
                counters.skipped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            counters.running.fetch_add(1, Ordering::Relaxed);
            let res = catch_unwind(AssertUnwindSafe(f)).map_err(Panicked::from_payload);
            counters.running.fetch_sub(1, Ordering::Relaxed);
            counters.done.fetch_add(1, Ordering::Relaxed);
            // The caller may have gone: the result is dropped here.
            let _ = tx.send(res);
        });
        match self.tx.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.counters.rejected.fetch_add(1, Ordering::Relaxed);
                return Err(PoolError::Busy {
                    max_queue: self.max_queue,
                });
            }
            Err(TrySendError::Disconnected(_)) => unreachable!("the pool holds a receiver"),
        }
        if let Err(e) = self.grow() {
            // No thread at all: the job would wait forever.
            if self.counters.threads.load(Ordering::Acquire) == 0 {
                return Err(PoolError::Lost(format!("cannot start a pool thread: {e}")));
            }
        }
        Ok(BlockingTask { rx })
    }

    /// Starts a thread when none is idle and the limit allows.
    fn grow(&self) -> std::io::Result<()> {
        if self.counters.idle.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let _guard = self.spawn_lock.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.counters.threads.load(Ordering::Acquire);
        if n >= self.max_threads || self.counters.idle.load(Ordering::Acquire) > 0 {
            return Ok(());
        }
        let rx = self.rx.clone();
        let counters = Arc::clone(&self.counters);
        // Counted idle before it runs, so a burst does not start a thread per job.
        counters.idle.fetch_add(1, Ordering::AcqRel);
        let spawned = std::thread::Builder::new()
            .name(format!("resty-async-{n}"))
            .spawn(move || {
                loop {
                    let job = rx.recv();
                    counters.idle.fetch_sub(1, Ordering::AcqRel);
                    match job {
                        Ok(job) => job(),
                        Err(_) => return, // pool dropped
                    }
                    counters.idle.fetch_add(1, Ordering::AcqRel);
                }
            });
        match spawned {
            Ok(_) => {
                self.counters.threads.fetch_add(1, Ordering::AcqRel);
                Ok(())
            }
            Err(e) => {
                self.counters.idle.fetch_sub(1, Ordering::AcqRel);
                Err(e)
            }
        }
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let c = &self.counters;
        PoolStats {
            threads: c.threads.load(Ordering::Relaxed),
            queued: self.tx.len(),
            running: c.running.load(Ordering::Relaxed),
            done: c.done.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
        }
    }
}

/// The result of a job on the [`Pool`]. Dropping it before the job starts
/// means the job is not run.
#[derive(Debug)]
pub struct BlockingTask<T> {
    rx: oneshot::Receiver<Result<T, Panicked>>,
}

impl<T> Future for BlockingTask<T> {
    type Output = Result<T, PoolError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx).poll(cx).map(|r| match r {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(p)) => Err(PoolError::Panicked(p)),
            Err(oneshot::Canceled) => Err(PoolError::Lost("the pool dropped the job".into())),
        })
    }
}
