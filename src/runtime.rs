//! The per-process runtime: executor, timers, blocking pool and completion
//! socket of one nginx worker.
//!
//! It is created lazily, on the worker thread, the first time a task is
//! spawned, and is remembered together with the process's fork count: a
//! runtime inherited through `fork()` (its threads do not exist in the child)
//! is abandoned and a fresh one is made.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::{Config, NetConfig};
use crate::executor::{Executor, ExecutorStats, Outcome, Spawned, TaskId};
use crate::futureless::{PlainTasks, Single};
use crate::net::Net;
use crate::pool::{BlockingTask, Pool, PoolError, PoolStats, WakeUp};
use crate::sendable::Sendable;
use crate::socket::{Notifier, Rendezvous};
use crate::sys;
use crate::timer::{Sleep, Timers, TIMER_SLACK};
use crate::values::LuaValues;

/// What [`Runtime::settle`] found.
pub(crate) enum Settled {
    Finished(Outcome<LuaOutput>),
    /// `ops`: socket ops wait for the caller.
    Pending {
        ops: bool,
    },
}

/// The task output the Lua layer uses: values for Lua, or an error message.
pub(crate) type LuaOutput = mlua::Result<LuaValues>;

/// Counters of the runtime, as `async.stats()` reports them.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Stats {
    /// Task counters: the executor's, with its plain tasks (the pool jobs
    /// of blocking calls and `async.sleep`s, which have no future: no
    /// `polls`).
    pub executor: ExecutorStats,
    /// Blocking pool counters.
    pub pool: PoolStats,
    /// Pending timers.
    pub timers: usize,
    /// Bytes written to the completion socket (one per batch of wake-ups).
    pub wakeups: u64,
    /// Driver polls.
    pub polls: u64,
    /// Connections to the completion socket refused (not this process).
    pub rejected_peers: u64,
    /// Whether a driver is connected.
    pub connected: bool,
    /// Open network streams ([`crate::net`]).
    pub streams: usize,
}

/// The runtime of one worker process. See the module docs.
pub struct Runtime {
    // sys::forks() when it was made: it belongs to this process while equal
    forked: u64,
    config: Config,
    notifier: Arc<Notifier>,
    executor: Executor<LuaOutput>,
    timers: Timers,
    pool: Pool,
    /// Blocking calls and `async.sleep`: tasks without a future.
    plain: PlainTasks,
    /// The sockets of tasks and the ops their waiters carry out.
    net: Net,
    rendezvous: RefCell<Option<Rendezvous>>,
    polls: Cell<u64>,
    rejected: Cell<u64>,
    /// Pool jobs queued now wake a thread later, in one go (see
    /// [`Runtime::batch`]).
    defer_wakes: Cell<bool>,
    /// Pool jobs were queued without a wake-up: [`Runtime::flush`] owes one.
    wake_owed: Cell<bool>,
    /// A driver is connected (and will poll, which flushes).
    driven: Cell<bool>,
    /// A pool job queued since the last driver poll woke a thread itself.
    cycle_woken: Cell<bool>,
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// Most tasks run by one driver poll before nginx gets the thread back.
const POLL_BUDGET: usize = 256;

impl Runtime {
    pub(crate) fn new(config: Config) -> Runtime {
        let notifier = Arc::new(Notifier::default());
        let pool =
            Pool::with_nice(config.threads, config.max_queue, config.pool_nice).with_cpus(&config.pool_cpus);
        let timers = Timers::new();
        Runtime {
            forked: sys::watch_forks(),
            plain: PlainTasks::new(&pool, &timers, Arc::clone(&notifier)),
            pool,
            config,
            executor: Executor::new(Arc::clone(&notifier)),
            net: Net::default(),
            notifier,
            timers,
            rendezvous: RefCell::new(None),
            polls: Cell::new(0),
            rejected: Cell::new(0),
            defer_wakes: Cell::new(false),
            wake_owed: Cell::new(false),
            driven: Cell::new(false),
            cycle_woken: Cell::new(false),
        }
    }

    /// sys::forks() when this runtime was made.
    pub(crate) fn forked(&self) -> u64 {
        self.forked
    }

    /// Cancels every task (their futures are dropped here) and forgets the
    /// driver; called when the runtime's Lua VM closes.
    pub(crate) fn shutdown(&self) {
        self.executor.shutdown();
        self.net.clear();
        self.plain.shutdown();
        self.disconnect_driver();
    }

    /// Sets the configuration (checked: see [`Config::with_options`]) used
    /// when a runtime is created. Once `running` exists, only an identical
    /// configuration is accepted.
    pub fn configure(config: Config, running: Option<&Runtime>) -> Result<(), String> {
        if let Some(rt) = running {
            // The network defaults may change at any time.
            let unchanged = Config {
                net: rt.config.net,
                ..config.clone()
            };
            if rt.config != unchanged {
                return Err(format!(
                    "the runtime of this worker is already running with {:?}; \
                     configure threads, max_queue, base_dir, pool_nice and pool_cpus before the first call",
                    rt.config
                ));
            }
        }
        CONFIG.with(|c| *c.borrow_mut() = config);
        Ok(())
    }

    /// The configuration a new runtime gets.
    pub fn config() -> Config {
        CONFIG.with(|c| c.borrow().clone())
    }

    /// The network defaults in force (see [`crate::config::NetConfig`]).
    pub(crate) fn net_config() -> NetConfig {
        CONFIG.with(|c| c.borrow().net)
    }

    /// The configuration this runtime was made with.
    pub fn config_in_use(&self) -> &Config {
        &self.config
    }

    /// Spawns a task and polls it once.
    pub(crate) fn spawn<F>(&self, fut: F) -> Spawned<LuaOutput>
    where
        F: Future<Output = LuaOutput> + 'static,
    {
        self.executor.spawn(fut)
    }

    /// Starts a child of root task `root` (see `spawn.rs`).
    pub(crate) fn spawn_child(&self, root: TaskId, fut: impl Future<Output = ()> + 'static) {
        self.executor.spawn_child(root, fut);
    }

    /// The sockets of tasks (see [`crate::net`]).
    pub(crate) fn net(&self) -> &Net {
        &self.net
    }

    /// Calls `wake` (which hands results to tasks, waking them), then runs
    /// the tasks that are ready, here, between driver polls: the children a
    /// first poll started, the tasks a socket result woke. Their wake-ups
    /// write nothing to the completion socket meanwhile. (Nested in a poll,
    /// it leaves them to that poll.)
    pub(crate) fn run_inline(&self, wake: impl FnOnce()) {
        if crate::executor::in_poll() {
            wake();
            return;
        }
        self.notifier.hold();
        wake();
        let mut ran = 0;
        loop {
            let n = self.executor.run_ready(POLL_BUDGET - ran);
            ran += n;
            if n == 0 || ran >= POLL_BUDGET {
                break;
            }
        }
        self.notifier.release(|| self.executor.has_ready());
    }

    /// After the first poll of task `id` (a raw call): runs the children
    /// it started, so that the socket ops of the whole task reach its
    /// caller at once. `None` for a task without sockets or children.
    pub(crate) fn settle(&self, id: TaskId) -> Option<Settled> {
        if !self.net.contains(id) && !self.executor.has_children(id) {
            return None;
        }
        self.run_inline(|| {});
        Some(match self.executor.take_now(id) {
            Some(out) => {
                // Its sockets never reached Lua: nothing to close.
                self.net.remove(id);
                Settled::Finished(out)
            }
            None => Settled::Pending {
                ops: self.net.claim(id),
            },
        })
    }

    /// Whether the driver must run in this cycle of the event loop after
    /// a call from Lua for task `id` ran tasks inline: an earlier timer to
    /// arm, pool jobs to wake, other tasks that finished or queued socket
    /// ops.
    pub(crate) fn driver_owed(&self, id: TaskId) -> bool {
        self.take_rearm()
            | self.wake_owed()
            | self.executor.has_completed_except(id)
            | self.net.others_ready(id)
    }

    /// The outcome of task `id` if it finished, taken now by its waiter
    /// (it gave up its socket ops already).
    pub(crate) fn take_finished(&self, id: TaskId) -> Option<Outcome<LuaOutput>> {
        let out = self.executor.take_now(id)?;
        self.net.remove(id);
        Some(out)
    }

    /// Whether task `id` exists (pending, or finished and not taken).
    pub(crate) fn has_task(&self, id: TaskId) -> bool {
        self.executor.contains(id)
    }

    /// Queues a job on the blocking pool.
    pub fn spawn_blocking<T, F>(&self, f: F) -> Result<BlockingTask<T>, PoolError>
    where
        F: FnOnce() -> T + Send + 'static,
        T: Send + 'static,
    {
        match self.wake_up() {
            WakeUp::Deferred => {
                let task = self.pool.spawn_deferred(f)?;
                self.wake_owed.set(true);
                Ok(task)
            }
            WakeUp::Now => self.pool.spawn(f),
        }
    }

    /// Queues a blocking call's job on the pool as a task of its own,
    /// without a future (see `plain.rs`); its result becomes Lua values when
    /// taken. A full queue is a failure at once.
    pub(crate) fn spawn_job(&self, job: impl FnOnce() -> Sendable + Send + 'static) -> Spawned<LuaOutput> {
        let id = self.executor.next_id();
        let wake = self.wake_up();
        match self.plain.spawn_job(&self.pool, id, job, wake) {
            Ok(()) => {
                if wake == WakeUp::Deferred {
                    self.wake_owed.set(true);
                }
                Spawned::Pending(id)
            }
            Err(e) => {
                self.plain.count_ready();
                Spawned::Ready(Ok(Err(mlua::Error::RuntimeError(e.to_string()))))
            }
        }
    }

    /// `async.sleep(dur)`: a task without a future (see `plain.rs`) whose
    /// result is `true` once `dur` has passed; ready at once for zero.
    pub(crate) fn spawn_sleep(&self, dur: Duration) -> Spawned<LuaOutput> {
        if dur.is_zero() {
            self.plain.count_ready();
            return Spawned::Ready(Ok(Ok(LuaValues::One(mlua::Value::Boolean(true)))));
        }
        let id = self.executor.next_id();
        self.plain.spawn_sleep(id, self.timers.deadline(dur));
        Spawned::Pending(id)
    }

    /// When a pool job queued now should wake a thread (see
    /// [`Runtime::batch`]).
    fn wake_up(&self) -> WakeUp {
        if self.defer_wakes.get() && self.cycle_woken.get() {
            WakeUp::Deferred
        } else {
            self.cycle_woken.set(true);
            WakeUp::Now
        }
    }

    /// Runs `f` (a call from Lua that may queue pool jobs) with wake-ups of
    /// the pool deferred when other tasks are in flight: under load, many
    /// requests queue jobs in one cycle of nginx's event loop. The first job
    /// after a driver poll wakes a thread at once (it starts working while
    /// nginx goes on); the others are taken by a thread already awake, or
    /// share one wake-up at [`Runtime::flush`], when the driver runs at the
    /// end of the cycle. This saves a `futex` call per job. A call made
    /// while no other task is in flight (pending, or finished and not yet
    /// collected) wakes a thread at once: deferring would only add latency.
    /// So does a call made while no driver is connected (it may be waiting
    /// out a restart delay).
    ///
    /// The caller must make the driver run soon when [`Runtime::wake_owed`]
    /// says so (the raw calling convention's `rearm`); the driver's idle
    /// poll (every 0.1 s) is the safety net.
    pub(crate) fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        let busy = self.driven.get() && self.in_flight() > 0;
        self.pool.set_caller_busy(busy);
        self.deferring(busy, f)
    }

    /// Runs `f` with deferred pool wake-ups on or off; restored after, even
    /// if `f` unwinds.
    fn deferring<R>(&self, on: bool, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a Cell<bool>, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _restore = Restore(&self.defer_wakes, self.defer_wakes.replace(on));
        f()
    }

    /// Whether a pool wake-up is owed: the driver must run (and call
    /// [`Runtime::poll`], which flushes) before nginx sleeps.
    pub(crate) fn wake_owed(&self) -> bool {
        self.wake_owed.get()
    }

    /// Wakes the pool for the jobs queued by [`Runtime::batch`] calls.
    pub(crate) fn flush(&self) {
        if self.wake_owed.replace(false) {
            // A failure to start a thread was reported when the first job
            // was queued (spawn_deferred starts the first thread at once).
            let _ = self.pool.wake();
        }
    }

    /// A timer of this runtime.
    pub fn sleep(&self, dur: Duration) -> Sleep {
        self.timers.sleep(dur)
    }

    /// One driver poll: fires due timers and runs ready tasks (within a
    /// budget), hands the finished task ids to `done`, and returns the time
    /// until the next deadline. `arm`: the caller will sleep until then (see
    /// [`Runtime::take_rearm`]).
    pub fn poll(&self, arm: bool, mut done: impl FnMut(TaskId)) -> Option<Duration> {
        self.polls.set(self.polls.get() + 1);
        self.flush();
        // A new batch: its first job wakes a thread at once again.
        self.cycle_woken.set(false);
        self.notifier.hold();
        // Jobs that tasks queue while they run here share one wake-up.
        self.deferring(true, || {
            let mut ran = 0;
            loop {
                let fired = self.timers.fire(Instant::now() + TIMER_SLACK);
                let n = self.executor.run_ready(POLL_BUDGET - ran);
                ran += n;
                if (n == 0 && fired == 0) || ran >= POLL_BUDGET {
                    break;
                }
            }
        });
        self.flush();
        self.notifier.release(|| self.executor.has_ready());
        // Jobs the pool finishes from now on ask for another poll.
        self.executor.take_completed(&mut done);
        self.plain.take_completed(&mut done);
        let next = if arm {
            self.timers.arm()
        } else {
            self.timers.next_deadline()
        };
        next.map(|d| d.saturating_duration_since(Instant::now()))
    }

    /// Whether a timer earlier than the one the driver sleeps towards was
    /// added since it armed; the driver must be woken to re-arm.
    pub fn take_rearm(&self) -> bool {
        self.timers.take_rearm()
    }

    /// The path of the completion socket the driver must connect to,
    /// creating it if needed.
    pub fn socket_path(&self) -> io::Result<PathBuf> {
        let mut rv = self.rendezvous.borrow_mut();
        if rv.is_none() {
            *rv = Some(Rendezvous::create(&self.config.base_dir)?);
        }
        Ok(rv.as_ref().expect("just created").path().to_path_buf())
    }

    /// Accepts the driver's connection. `Ok(false)`: it has not arrived.
    /// On success the socket file and its directory are removed.
    pub fn accept_driver(&self) -> io::Result<bool> {
        let mut slot = self.rendezvous.borrow_mut();
        let Some(rv) = slot.as_mut() else {
            return Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "no completion socket to accept on",
            ));
        };
        let got = rv.accept_own();
        self.rejected
            .set(self.rejected.get() + std::mem::take(rv.rejected_mut()));
        match got? {
            Some(stream) => {
                *slot = None; // removes the file and the directory
                self.notifier.set_writer(Some(stream));
                self.driven.set(true);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Forgets the driver's connection (the driver exited or died); the
    /// next driver makes a new socket.
    pub fn disconnect_driver(&self) {
        self.driven.set(false);
        self.flush();
        self.notifier.set_writer(None);
        self.rendezvous.borrow_mut().take();
    }

    /// The outcome of a finished task (frees its slot).
    pub(crate) fn take(&self, lua: &mlua::Lua, id: TaskId) -> Option<Outcome<LuaOutput>> {
        let out = self.take_if(lua, id, |_| true);
        self.net.remove(id);
        out
    }

    /// The result of a finished task if it is one value other than nil
    /// (frees its slot); otherwise the task keeps its outcome for
    /// [`Runtime::take`]. One string of a plain task comes as its bytes.
    pub(crate) fn take_single(&self, lua: &mlua::Lua, id: TaskId) -> Option<Single> {
        if self.net.contains(id) {
            // Its waiter takes the results with the task's last socket ops.
            return None;
        }
        if self.executor.contains(id) {
            Single::of(self.executor.take_if(id, Single::fits)?)
        } else {
            self.plain.take_single(lua, id)
        }
    }

    fn take_if(
        &self,
        lua: &mlua::Lua,
        id: TaskId,
        pred: impl Fn(&Outcome<LuaOutput>) -> bool,
    ) -> Option<Outcome<LuaOutput>> {
        if self.executor.contains(id) {
            self.executor.take_if(id, pred)
        } else {
            self.plain.take_if(lua, id, pred)
        }
    }

    /// Cancels a task: its future is dropped before this returns (a pool
    /// job that has not started will not run).
    pub fn cancel(&self, id: TaskId) -> bool {
        let found = self.executor.cancel(id) || self.plain.cancel(id);
        self.net.remove(id);
        found
    }

    /// Whether no task is in flight and no timer is pending.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.timers.is_empty()
    }

    /// Tasks and pool jobs pending, or finished and not taken.
    fn in_flight(&self) -> usize {
        self.executor.in_flight() + self.plain.len()
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let mut executor = self.executor.stats();
        executor.in_flight = self.in_flight();
        executor.completed += self.plain.completed();
        executor.cancelled += self.plain.cancelled();
        Stats {
            executor,
            pool: self.pool.stats(),
            timers: self.timers.len(),
            wakeups: self.notifier.written(),
            polls: self.polls.get(),
            rejected_peers: self.rejected.get(),
            connected: self.notifier.connected(),
            streams: self.net.streams(),
        }
    }
}

/// A future that completes after `dur`, fired by the driver through nginx's
/// timers. Use it in async functions registered with [`crate::Module`].
pub fn sleep(dur: Duration) -> Sleep {
    Runtime::current().sleep(dur)
}

/// Runs `f` on the blocking pool; the future resolves to its result, or
/// [`PoolError::Busy`] at once when the queue is full.
pub async fn unblock<T, F>(f: F) -> Result<T, PoolError>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    let task = Runtime::current().spawn_blocking(f)?;
    task.await
}
