//! The blocking pool: threads for CPU work and blocking system calls.
//!
//! Jobs go through a bounded crossbeam channel; a full queue is reported at
//! once ([`PoolError::Busy`]) instead of growing without bound. Threads are
//! started on demand, up to the configured number, and live as long as the
//! process. Each job runs under `catch_unwind`: a panic becomes the job's
//! result and the thread goes on. A job whose caller has gone (its
//! [`BlockingTask`] was dropped, or its [`Errand`] is no longer wanted,
//! e.g. on timeout) before it started is not run; one that is running
//! finishes and its result is dropped. A job and its result share one
//! allocation.
//!
//! A job's caller learns that it finished in one of two ways: a
//! [`BlockingTask`] is a future, woken through its waker; an [`Errand`]
//! (see [`Pool::spawn_errand`]) owns its closure and its result and hands
//! itself back when it has run, with no waker, no task and no shared state
//! around it.

use std::fmt;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};

use crate::executor::Panicked;

/// Why a blocking job produced no value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PoolError {
    /// The queue was full; the job was not queued.
    Busy {
        /// The configured queue size.
        max_queue: usize,
    },
    /// The job panicked; the message of the panic.
    Panicked(String),
    /// The pool dropped the job without running it (it cannot start threads).
    Lost(String),
}

impl fmt::Display for PoolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PoolError::Busy { max_queue } => {
                write!(f, "busy (blocking pool queue full: max_queue = {max_queue})")
            }
            PoolError::Panicked(msg) => Panicked(msg.clone()).fmt(f),
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
    /// Threads parked idle now.
    pub idle: usize,
    /// Times an idle thread was woken for new jobs.
    pub wakeups: u64,
}

#[derive(Default)]
struct Counters {
    threads: AtomicUsize,
    running: AtomicUsize,
    done: AtomicU64,
    rejected: AtomicU64,
    skipped: AtomicU64,
    wakeups: AtomicU64,
}

/// A thread that found the queue empty and parks until a job is handed to it.
struct Idle {
    thread: std::thread::Thread,
    woken: AtomicBool,
}

struct Shared {
    rx: Receiver<Job>,
    /// Idle threads, the most recently parked last: a job wakes the thread
    /// whose cache (and CPU) is warmest. Touched only when a thread goes
    /// idle or is woken, never per job while threads are busy.
    idle: Mutex<Vec<Arc<Idle>>>,
    nidle: AtomicUsize,
    /// Threads awake and about to look at the queue (woken, started, or
    /// between two jobs): a job queued while one exists needs no wake-up.
    searching: AtomicUsize,
    shutdown: AtomicBool,
    /// The caller has other work in flight (see [`Pool::set_caller_busy`]).
    caller_busy: AtomicBool,
    counters: Counters,
    max_threads: usize,
    /// The nice value a thread takes after its first long job (None: keep
    /// the priority of the thread that made the pool).
    long_job_nice: Option<i32>,
    /// The CPUs threads may run on (None: those of the thread that starts
    /// them, as usual).
    cpus: Option<Box<[usize]>>,
    spawn_lock: Mutex<()>,
}

impl Shared {
    fn idle(&self) -> std::sync::MutexGuard<'_, Vec<Arc<Idle>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a thread if the limit allows (none was idle).
    fn grow(self: &Arc<Shared>) -> std::io::Result<()> {
        let _guard = self.spawn_lock.lock().unwrap_or_else(|e| e.into_inner());
        let n = self.counters.threads.load(Ordering::Acquire);
        if n >= self.max_threads || self.shutdown.load(Ordering::Acquire) {
            return Ok(());
        }
        self.searching.fetch_add(1, Ordering::SeqCst);
        if let Err(e) = self.start_thread(n) {
            self.searching.fetch_sub(1, Ordering::SeqCst);
            return Err(e);
        }
        self.counters.threads.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }

    /// Starts thread `n`. With [`Shared::cpus`] set, it first moves there
    /// and runs no job if it cannot: its error is ours. The caller then
    /// waits for the thread to say (once per thread started, like the
    /// thread's creation).
    fn start_thread(self: &Arc<Shared>, n: usize) -> std::io::Result<()> {
        let shared = Arc::clone(self);
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        std::thread::Builder::new()
            .name(format!("resty-async-{n}"))
            .spawn(move || {
                if let Some(cpus) = &shared.cpus {
                    let pinned = crate::sys::pin_thread(cpus);
                    let ok = pinned.is_ok();
                    let _ = tx.send(pinned);
                    if !ok {
                        return;
                    }
                }
                worker(&shared)
            })?;
        let Some(cpus) = &self.cpus else {
            return Ok(());
        };
        let cpu_list = |e: std::io::Error| {
            let list: Vec<String> = cpus.iter().map(|c| c.to_string()).collect();
            std::io::Error::new(e.kind(), format!("cannot run on CPUs {}: {e}", list.join(",")))
        };
        match rx.recv() {
            Ok(pinned) => pinned.map_err(cpu_list),
            // It ended (a panic) before it said.
            Err(_) => Err(cpu_list(std::io::Error::other("the thread ended"))),
        }
    }

    /// Wakes the most recently parked idle thread, if any.
    fn wake_one(&self) -> bool {
        if self.nidle.load(Ordering::SeqCst) == 0 {
            return false;
        }
        let popped = {
            let mut idle = self.idle();
            let p = idle.pop();
            if p.is_some() {
                self.nidle.fetch_sub(1, Ordering::SeqCst);
                self.searching.fetch_add(1, Ordering::SeqCst);
            }
            p
        };
        match popped {
            Some(i) => {
                self.counters.wakeups.fetch_add(1, Ordering::Relaxed);
                i.woken.store(true, Ordering::Release);
                i.thread.unpark();
                true
            }
            None => false,
        }
    }
}

/// Where a job and its result live: one allocation per job, shared by the
/// queue (until a thread has run the job) and the [`BlockingTask`]. The
/// thread drops its reference before it wakes the task, so the cell is
/// normally freed by the thread that made it, as the closure is when the
/// caller leaves before the job starts: cross-thread frees are the slow
/// path of glibc's malloc. (An async-task task, as smol's `blocking` uses,
/// would drop a cancelled job on whichever thread next runs it.)
struct Cell<F, T> {
    state: Mutex<CellState<F, T>>,
}

struct CellState<F, T> {
    stage: Stage<F, T>,
    waker: Option<Waker>,
}

enum Stage<F, T> {
    Queued(F),
    Running,
    Done(Result<T, Panicked>),
    /// The result was taken, or the caller left.
    Closed,
    /// The pool dropped the job without running it.
    Lost,
}

impl<F, T> Cell<F, T> {
    fn lock(&self) -> MutexGuard<'_, CellState<F, T>> {
        // Never poisoned in practice: the only user code that runs under
        // the lock is a `Waker::clone`. The state stays consistent if it
        // were.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What became of a job a thread took from the queue.
enum Ran {
    /// It ran; tell its caller so this way.
    Done(Tell),
    /// Its caller had left before it started: not run.
    Skipped,
}

/// How a job's caller learns that its result is there.
enum Tell {
    /// Its caller left while it ran, or has not polled yet: nobody.
    Nobody,
    /// A [`BlockingTask`] that waits.
    Wake(Waker),
}

/// The pool's side of a [`Cell`], type-erased.
trait Run: Send + Sync {
    /// Runs the job unless its caller has left.
    fn run(&self, counters: &Counters) -> Ran;
    /// The pool drops the job unrun: tell the caller.
    fn lose(&self);
}

impl<F, T> Run for Cell<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn run(&self, counters: &Counters) -> Ran {
        let f = {
            let mut st = self.lock();
            match std::mem::replace(&mut st.stage, Stage::Running) {
                Stage::Queued(f) => f,
                other => {
                    st.stage = other;
                    return Ran::Skipped;
                }
            }
        };
        counters.running.fetch_add(1, Ordering::Relaxed);
        let res = crate::panic::catch(AssertUnwindSafe(f)).map_err(Panicked::from_payload);
        counters.running.fetch_sub(1, Ordering::Relaxed);
        counters.done.fetch_add(1, Ordering::Relaxed);
        let (tell, unwanted) = {
            let mut st = self.lock();
            if matches!(st.stage, Stage::Running) {
                st.stage = Stage::Done(res);
                let tell = match st.waker.take() {
                    Some(waker) => Tell::Wake(waker),
                    None => Tell::Nobody,
                };
                (tell, None)
            } else {
                // The caller left while the job ran.
                (Tell::Nobody, Some(res))
            }
        };
        drop(unwanted); // outside the lock: T's destructor is user code
        Ran::Done(tell)
    }

    fn lose(&self) {
        let (f, waker) = {
            let mut st = self.lock();
            match std::mem::replace(&mut st.stage, Stage::Lost) {
                Stage::Queued(f) => (Some(f), st.waker.take()),
                other => {
                    st.stage = other;
                    (None, None)
                }
            }
        };
        drop(f);
        if let Some(w) = waker {
            w.wake();
        }
    }
}

/// A job that owns its closure and, once it has run, its result: queued by
/// [`Pool::spawn_errand`], it moves to a pool thread and back to its
/// caller by itself, so that the caller allocates and frees it, and nothing
/// is shared or locked on its way.
pub(crate) trait Errand: Send {
    /// Whether it is still wanted, asked just before it would run: one that
    /// is not is dropped unrun (on the pool thread).
    fn wanted(&self) -> bool;
    /// Runs the closure, catching its panic as its result.
    fn run(&mut self);
    /// Hands the errand back to its caller, once it has run.
    fn hand_back(self: Box<Self>);
}

/// What a queued job is.
enum Work {
    /// A [`BlockingTask`]'s: the queue's reference to its [`Cell`].
    Cell(Arc<dyn Run>),
    Errand(Box<dyn Errand>),
}

/// A queued job. Dropped unrun (the pool shuts down, or the queue was
/// full), a [`BlockingTask`]'s wakes its task; an [`Errand`] is dropped and
/// not handed back (see [`Pool::spawn_errand`]).
struct Job(Option<Work>);

impl Job {
    /// Runs the job. A [`Cell`]'s: then drops the queue's reference to the
    /// cell before it tells the caller, whose reference is then normally
    /// the last.
    fn run(mut self, shared: &Shared) {
        let counters = &shared.counters;
        match self.0.take() {
            Some(Work::Cell(cell)) => {
                let ran = cell.run(counters);
                drop(cell);
                match ran {
                    Ran::Done(Tell::Wake(waker)) => waker.wake(),
                    Ran::Done(Tell::Nobody) => {}
                    Ran::Skipped => {
                        counters.skipped.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            Some(Work::Errand(mut errand)) => {
                if !errand.wanted() {
                    counters.skipped.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                counters.running.fetch_add(1, Ordering::Relaxed);
                errand.run();
                counters.running.fetch_sub(1, Ordering::Relaxed);
                counters.done.fetch_add(1, Ordering::Relaxed);
                // (counted first: its caller may look at the stats at once)
                errand.hand_back();
            }
            None => {}
        }
    }
}

impl Drop for Job {
    fn drop(&mut self) {
        if let Some(Work::Cell(cell)) = self.0.take() {
            cell.lose();
        }
    }
}

/// The caller's side of a [`Cell`], type-erased over the closure.
trait Collect<T>: Send + Sync {
    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<T, PoolError>>;
    fn leave(&self);
}

impl<F, T> CellState<F, T> {
    /// The result, taken, if the job is over; `None` while it is queued or
    /// running.
    fn take_result(&mut self) -> Option<Result<T, PoolError>> {
        match std::mem::replace(&mut self.stage, Stage::Closed) {
            Stage::Done(Ok(v)) => Some(Ok(v)),
            Stage::Done(Err(p)) => Some(Err(PoolError::Panicked(p.0))),
            Stage::Lost => Some(Err(PoolError::Lost("the pool dropped the job".into()))),
            Stage::Closed => panic!("the result of a pool job taken twice"),
            pending => {
                self.stage = pending;
                None
            }
        }
    }
}

impl<F, T> Collect<T> for Cell<F, T>
where
    F: FnOnce() -> T + Send,
    T: Send,
{
    fn poll_result(&self, cx: &mut Context<'_>) -> Poll<Result<T, PoolError>> {
        let mut st = self.lock();
        if let Some(res) = st.take_result() {
            return Poll::Ready(res);
        }
        let old = match &st.waker {
            Some(w) if w.will_wake(cx.waker()) => None,
            _ => st.waker.replace(cx.waker().clone()),
        };
        drop(st);
        drop(old); // outside the lock, as every drop of ours
        Poll::Pending
    }

    fn leave(&self) {
        let (stage, waker) = {
            let mut st = self.lock();
            (std::mem::replace(&mut st.stage, Stage::Closed), st.waker.take())
        };
        // A job that has not started is not run: its closure (and a result
        // nobody took) is dropped here, outside the lock.
        drop(stage);
        drop(waker);
    }
}

/// A pool of blocking threads.
///
/// Jobs go through a lock-free bounded queue. A thread that finds it empty
/// parks at once (no spinning, no `sched_yield`: on a small machine a
/// spinning thread takes the CPU the nginx worker needs) and is unparked by
/// the next job. While the caller is busy ([`Pool::set_caller_busy`]),
/// threads park under `SCHED_BATCH`: the wake-up of one does not preempt
/// the caller (see there).
pub struct Pool {
    tx: Sender<Job>,
    shared: Arc<Shared>,
    max_queue: usize,
}

impl fmt::Debug for Pool {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool").field("stats", &self.stats()).finish()
    }
}

impl Pool {
    /// A pool of at most `threads` threads (at least 1) and `max_queue`
    /// queued jobs (at least 1). No thread starts before the first job.
    #[cfg(test)]
    pub fn new(threads: usize, max_queue: usize) -> Pool {
        Pool::with_nice(threads, max_queue, 0)
    }

    /// Like [`Pool::new`], with threads that run long jobs at a nice value
    /// `nice` above the creating thread's (0 to 19; Linux): when the CPU is
    /// contended, the scheduler runs the nginx worker before such a job, so
    /// it does not hold up the event loop for a time slice. A thread lowers
    /// its priority after its first job of [`NICE_AFTER`] or more.
    pub fn with_nice(threads: usize, max_queue: usize, nice: i32) -> Pool {
        let max_queue = max_queue.max(1);
        let (tx, rx) = crossbeam_channel::bounded(max_queue);
        // Relative to the creating thread (the nginx worker, which may run
        // with a `worker_priority`): threads started later by pool threads
        // inherit theirs, possibly lowered already.
        let long_job_nice = match nice.clamp(0, 19) {
            0 => None,
            n => Some(crate::sys::thread_nice().unwrap_or(0).saturating_add(n).min(19)),
        };
        Pool {
            tx,
            shared: Arc::new(Shared {
                rx,
                idle: Mutex::new(Vec::new()),
                nidle: AtomicUsize::new(0),
                searching: AtomicUsize::new(0),
                shutdown: AtomicBool::new(false),
                caller_busy: AtomicBool::new(false),
                counters: Counters::default(),
                max_threads: threads.max(1),
                long_job_nice,
                cpus: None,
                spawn_lock: Mutex::new(()),
            }),
            max_queue,
        }
    }

    /// Makes the pool's threads run only on `cpus` (CPU numbers, as in
    /// `taskset -c`; Linux, elsewhere ignored), instead of the CPUs of the
    /// thread that starts them, e.g. to keep CPU jobs off a core an nginx
    /// worker is pinned to (`worker_cpu_affinity`). A thread that cannot
    /// move there (a CPU number of 1024 or more, or no CPU of the set is
    /// online and in the process's cpuset) does not start: the error comes
    /// back as a thread start failure ([`PoolError::Lost`] when the pool
    /// has no thread at all). An empty list changes nothing.
    ///
    /// # Panics
    ///
    /// If the pool has started a thread: call it before the first job.
    pub fn with_cpus(mut self, cpus: &[usize]) -> Pool {
        let shared = Arc::get_mut(&mut self.shared).expect("Pool::with_cpus: called before the first job");
        shared.cpus = (!cpus.is_empty()).then(|| cpus.into());
        self
    }

    /// Queues `f`; the returned future resolves to its result.
    ///
    /// Fails at once with [`PoolError::Busy`] when the queue is full.
    pub fn spawn<T, F>(&self, f: F) -> Result<BlockingTask<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let cell = self.queue(f, WakeUp::Now)?;
        Ok(BlockingTask { cell })
    }

    /// Queues `f` without waking a thread for it: the caller owes a
    /// [`Pool::wake`], which may cover several jobs (one `futex` wake-up
    /// instead of one per job). Until then the job waits, unless a thread
    /// already awake picks it up. With no thread started yet, this wakes
    /// (starts) one at once, so that a failure to start is reported here.
    pub fn spawn_deferred<T, F>(&self, f: F) -> Result<BlockingTask<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let cell = self.queue(f, WakeUp::Deferred)?;
        Ok(BlockingTask { cell })
    }

    /// Queues `errand` as a job: a pool thread runs it, unless it is no
    /// longer wanted by then, and it hands itself back to its caller
    /// ([`Errand::run`]). No cell, no waker and no task: the cheapest way
    /// for a caller that tracks its jobs itself. With [`WakeUp::Deferred`],
    /// as [`Pool::spawn_deferred`]. An errand the pool drops unrun (it is
    /// being dropped itself) is not handed back.
    ///
    /// Fails at once with [`PoolError::Busy`] when the queue is full, and
    /// with [`PoolError::Lost`] when the pool has no thread and cannot start
    /// one; the errand is then dropped here, not queued.
    pub(crate) fn spawn_errand(&self, errand: Box<dyn Errand>, wake: WakeUp) -> Result<(), PoolError> {
        self.enqueue(Work::Errand(errand), wake)
    }

    /// Queues `f` as a [`BlockingTask`]'s job (see [`Pool::enqueue`]).
    fn queue<T, F>(&self, f: F, wake: WakeUp) -> Result<Arc<dyn Collect<T>>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        let cell = Arc::new(Cell {
            state: Mutex::new(CellState {
                stage: Stage::Queued(f),
                waker: None,
            }),
        });
        let collect: Arc<dyn Collect<T>> = cell.clone();
        self.enqueue(Work::Cell(cell), wake)?;
        Ok(collect)
    }

    /// Queues `work` and wakes a thread as `wake` says. With
    /// [`WakeUp::Deferred`], a thread is still started at once when none
    /// was yet: the job is then not left waiting for a wake-up, and a
    /// failure to start one is reported with the first job. That first
    /// thread is started before the job is queued: a job that cannot run
    /// is never queued, and never runs, even once a later call starts a
    /// thread.
    fn enqueue(&self, work: Work, wake: WakeUp) -> Result<(), PoolError> {
        let no_thread = self.shared.counters.threads.load(Ordering::Acquire) == 0;
        if no_thread {
            self.wake()?;
        }
        self.send(work)?;
        if wake == WakeUp::Now || no_thread {
            // (cannot fail: a thread exists, and threads stay)
            let _ = self.wake();
        }
        Ok(())
    }

    /// Puts `work` on the queue, unless it is full.
    fn send(&self, work: Work) -> Result<(), PoolError> {
        match self.tx.try_send(Job(Some(work))) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(job)) => {
                self.shared.counters.rejected.fetch_add(1, Ordering::Relaxed);
                drop(job); // (a BlockingTask's cell closes: it was never queued)
                Err(PoolError::Busy {
                    max_queue: self.max_queue,
                })
            }
            Err(TrySendError::Disconnected(_)) => unreachable!("the pool holds a receiver"),
        }
    }

    /// Makes sure a thread will look at the queue: nothing when one is
    /// awake already (it drains the queue), else an idle thread is woken or
    /// a new one started.
    pub fn wake(&self) -> Result<(), PoolError> {
        if self.shared.searching.load(Ordering::SeqCst) == 0 && !self.shared.wake_one() {
            if let Err(e) = self.shared.grow() {
                if self.shared.counters.threads.load(Ordering::Acquire) == 0 {
                    // No thread at all: the jobs would wait forever.
                    return Err(PoolError::Lost(format!("cannot start a pool thread: {e}")));
                }
            }
        }
        Ok(())
    }

    /// Tells the pool whether its caller (the nginx worker) is busy: has
    /// other requests in flight. Threads then park under `SCHED_BATCH`
    /// (Linux), which keeps a woken thread from preempting the thread that
    /// woke it. Under load, a thread woken on the caller's CPU would
    /// otherwise interrupt the event loop that feeds it, a pair of context
    /// switches per job; instead it runs when that CPU is free or moves to
    /// another, and finds several jobs queued. An idle caller waits for
    /// its one job, and a thread that preempts it at once answers sooner:
    /// threads park under `SCHED_OTHER` again. A thread takes the hint
    /// when it next parks, and only if it started under `SCHED_OTHER` (a
    /// policy set by an administrator is kept). Its nice value is kept.
    pub fn set_caller_busy(&self, busy: bool) {
        let flag = &self.shared.caller_busy;
        if flag.load(Ordering::Relaxed) != busy {
            flag.store(busy, Ordering::Relaxed);
        }
    }

    /// Current counters.
    pub fn stats(&self) -> PoolStats {
        let c = &self.shared.counters;
        PoolStats {
            threads: c.threads.load(Ordering::Relaxed),
            queued: self.tx.len(),
            running: c.running.load(Ordering::Relaxed),
            done: c.done.load(Ordering::Relaxed),
            rejected: c.rejected.load(Ordering::Relaxed),
            skipped: c.skipped.load(Ordering::Relaxed),
            idle: self.shared.nidle.load(Ordering::Relaxed),
            wakeups: c.wakeups.load(Ordering::Relaxed),
        }
    }
}

/// A job that runs this long marks its thread as one that runs long jobs:
/// the thread lowers its priority (see [`Pool::with_nice`]). Shorter jobs
/// end before a time slice does, so they cannot hold up the worker for
/// long, and a thread that runs only those keeps the worker's priority: a
/// lower one would delay its wake-up on an idle machine (bench/README.md
/// has the figures).
pub const NICE_AFTER: Duration = Duration::from_millis(1);

fn worker(shared: &Arc<Shared>) {
    let me = Arc::new(Idle {
        thread: std::thread::current(),
        woken: AtomicBool::new(false),
    });
    // Lowered once, for good: an unprivileged thread cannot raise it back.
    let mut lower_to = shared.long_job_nice;
    // Whether we follow Pool::set_caller_busy (only from SCHED_OTHER), and
    // whether we are under SCHED_BATCH now.
    let adaptive = crate::sys::thread_policy_is_other();
    let mut batch = false;
    // Counted as searching by whoever started or woke us.
    loop {
        while let Ok(job) = shared.rx.try_recv() {
            // Running now: the last searcher that leaves a backlog behind
            // wakes (or starts) another thread, so long jobs queued
            // together run in parallel.
            if shared.searching.fetch_sub(1, Ordering::SeqCst) == 1
                && !shared.rx.is_empty()
                && !shared.wake_one()
            {
                // Best effort: the jobs still run on the threads there are.
                let _ = shared.grow();
            }
            let started = Instant::now();
            // The job's own panics are its result; this catches those of
            // what runs after it (the drop of a result nobody waits for,
            // the caller's waker), which would otherwise end the thread
            // while the pool still counts it.
            let _ = crate::panic::catch(AssertUnwindSafe(|| job.run(shared)));
            if let Some(nice) = lower_to {
                if started.elapsed() >= NICE_AFTER {
                    lower_to = None;
                    // Best effort: a thread that keeps its priority works.
                    let _ = crate::sys::lower_thread_priority_to(nice);
                }
            }
            shared.searching.fetch_add(1, Ordering::SeqCst);
        }
        if shared.shutdown.load(Ordering::Acquire) {
            return;
        }
        // Go idle, then look once more: a job sent before we were listed
        // may have seen us searching and woken nobody.
        me.woken.store(false, Ordering::Relaxed);
        {
            let mut idle = shared.idle();
            idle.push(Arc::clone(&me));
            shared.nidle.fetch_add(1, Ordering::SeqCst);
        }
        shared.searching.fetch_sub(1, Ordering::SeqCst);
        if !shared.rx.is_empty() {
            let mut idle = shared.idle();
            if let Some(pos) = idle.iter().rposition(|i| Arc::ptr_eq(i, &me)) {
                idle.remove(pos);
                shared.nidle.fetch_sub(1, Ordering::SeqCst);
                shared.searching.fetch_add(1, Ordering::SeqCst);
                continue;
            }
            // Already popped by a waker: it counted us as searching.
        }
        let busy = shared.caller_busy.load(Ordering::Relaxed);
        if adaptive && busy != batch {
            // Best effort (a failure is not retried at every park): the
            // policy changes how fast we start, not what we run.
            batch = busy;
            let _ = crate::sys::set_thread_batch(busy);
        }
        while !me.woken.load(Ordering::Acquire) {
            if shared.shutdown.load(Ordering::Acquire) {
                return;
            }
            std::thread::park();
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        self.shared.shutdown.store(true, Ordering::Release);
        let idle = std::mem::take(&mut *self.shared.idle());
        for i in idle {
            i.woken.store(true, Ordering::Release);
            i.thread.unpark();
        }
    }
}

/// The result of a job on the [`Pool`]. Dropping it before the job starts
/// means the job is not run. Like other futures, it panics if polled again
/// after it returned `Ready`.
pub struct BlockingTask<T> {
    cell: Arc<dyn Collect<T>>,
}

impl<T> fmt::Debug for BlockingTask<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BlockingTask").finish_non_exhaustive()
    }
}

impl<T> Future for BlockingTask<T> {
    type Output = Result<T, PoolError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.cell.poll_result(cx)
    }
}

impl<T> Drop for BlockingTask<T> {
    fn drop(&mut self) {
        self.cell.leave();
    }
}

/// When a job queued by [`Pool::spawn_errand`] wakes a thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WakeUp {
    /// At once, as [`Pool::spawn`].
    Now,
    /// At the caller's next [`Pool::wake`], as [`Pool::spawn_deferred`].
    Deferred,
}
