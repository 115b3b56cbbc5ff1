//! The per-process runtime: executor, timers, blocking pool and completion
//! socket of one nginx worker.
//!
//! It is created lazily, on the worker thread, the first time a task is
//! spawned, and is remembered together with the process's fork count: a
//! runtime inherited through `fork()` (its threads do not exist in the child)
//! is abandoned and a fresh one is made.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::ffi::c_int;
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::batch::WakeBatch;
use crate::config::{Config, NetConfig};
use crate::executor::{Executor, ExecutorStats, Outcome, Spawned, TaskId};
use crate::futureless::{is_plain, PlainTasks, Taken};
use crate::net::Net;
use crate::pool::{BlockingTask, Pool, PoolError, PoolStats, WakeUp};
use crate::sendable::Sendable;
use crate::socket::{Notifier, Rendezvous};
use crate::sys;
use crate::timer::{Sleep, Timers};
use crate::values::LuaValues;
use crate::waiters::{Caller, Waited, Waiters};

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
    /// Callers waiting for tasks (see `waiters.rs`).
    pub waiting: usize,
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
    batch: WakeBatch,
    /// The callers waiting for tasks (see `waiters.rs`).
    pub(crate) waiters: Waiters,
    /// Tasks found finished by a poll, or with socket ops for their
    /// callers, not yet handed to Lua.
    done: RefCell<VecDeque<Done>>,
}

/// What a poll found of a task nobody waits for in this runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Done {
    /// It finished.
    Finished(TaskId),
    /// It queued socket ops (see [`crate::net`]).
    Ops(TaskId),
}

thread_local! {
    static CONFIG: RefCell<Config> = RefCell::new(Config::default());
}

/// What [`Runtime::poll`] found.
pub(crate) struct Polled {
    /// Time until the next deadline.
    pub next: Option<Duration>,
    /// Tasks are ready to run: see [`Runtime::run_tasks`].
    pub tasks_ready: bool,
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
            plain: PlainTasks::new(&timers, Arc::clone(&notifier)),
            pool,
            config,
            executor: Executor::new(Arc::clone(&notifier)),
            net: Net::default(),
            notifier,
            timers,
            rendezvous: RefCell::new(None),
            polls: Cell::new(0),
            rejected: Cell::new(0),
            batch: WakeBatch::default(),
            waiters: Waiters::default(),
            done: RefCell::new(VecDeque::new()),
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
        self.plain.shutdown(&self.waiters);
        self.disconnect_driver();
    }

    /// Sets the configuration (checked: see [`Config::with_options`]) used
    /// when a runtime is created. Once `running` exists, only an identical
    /// configuration is accepted.
    pub fn configure(config: Config, running: Option<&Runtime>) -> Result<(), String> {
        if let Some(rt) = running {
            // (the network defaults may change at any time)
            let changes = rt.config.fixed_changes(&config);
            if !changes.is_empty() {
                return Err(format!(
                    "the runtime of this worker is already running with {}; \
                     configure threads, max_queue, base_dir, pool_nice, pool_cpus and tokio_threads before the first call",
                    changes.join(", ")
                ));
            }
        }
        #[cfg(feature = "tokio")]
        crate::tokio::note_config(&config);
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
        match self.batch.wake_up() {
            WakeUp::Deferred => self.pool.spawn_deferred(f),
            WakeUp::Now => self.pool.spawn(f),
        }
    }

    /// Queues a blocking call's job on the pool as a task of its own,
    /// without a future (see `futureless.rs`); its result becomes Lua values when
    /// taken. A full queue is a failure at once.
    pub(crate) fn spawn_job(&self, job: impl FnOnce() -> Sendable + Send + 'static) -> Spawned<LuaOutput> {
        match self.spawn_job_raw(job) {
            Ok(id) => Spawned::Pending(id),
            Err(e) => Spawned::Ready(Ok(Err(mlua::Error::RuntimeError(e.to_string())))),
        }
    }

    /// [`Runtime::spawn_job`], its id or the pool's refusal.
    pub(crate) fn spawn_job_raw(
        &self,
        job: impl FnOnce() -> Sendable + Send + 'static,
    ) -> Result<TaskId, PoolError> {
        self.spawn_job_for(job, None).map(|(id, _)| id)
    }

    /// [`Runtime::spawn_job_raw`], queuing `caller` (if any) for the task:
    /// its id and whether the caller was queued.
    pub(crate) fn spawn_job_for(
        &self,
        job: impl FnOnce() -> Sendable + Send + 'static,
        caller: Option<Caller>,
    ) -> Result<(TaskId, bool), PoolError> {
        let caller = caller.map(|c| (&self.waiters, c));
        let spawned = self
            .plain
            .spawn_job_for(&self.pool, job, self.batch.wake_up(), caller);
        spawned.inspect_err(|_| self.plain.count_ready())
    }

    /// `async.sleep(dur)`: a task without a future (see `futureless.rs`)
    /// whose result is `true` once `dur` has passed: its id, `None` when it
    /// is done at once (for zero), or the message of a refusal (a full
    /// table of tasks).
    ///
    /// `caller`, if any, is queued for the task: the id comes with whether
    /// it was.
    #[inline(always)]
    pub(crate) fn spawn_sleep(
        &self,
        dur: Duration,
        caller: Option<Caller>,
    ) -> Result<Option<(TaskId, bool)>, String> {
        if dur.is_zero() {
            self.plain.count_ready();
            return Ok(None);
        }
        let caller = caller.map(|c| (&self.waiters, c));
        let spawned = self.plain.spawn_sleep_for(self.timers.deadline_ms(dur), caller);
        spawned.map(Some).inspect_err(|_| self.plain.count_ready())
    }

    /// The plain tasks of this runtime, for tests.
    #[cfg(test)]
    pub(crate) fn plain_for_test(&self) -> &PlainTasks {
        &self.plain
    }

    /// Runs `f`, a call from Lua that may queue pool jobs, with their
    /// wake-ups batched (see `batch.rs`).
    pub(crate) fn batch<R>(&self, f: impl FnOnce() -> R) -> R {
        // (posted tasks are the callers' already: see PlainTasks::unposted)
        let busy = self.executor.in_flight() + self.plain.unposted() > 0;
        self.batch.call(&self.pool, busy, f)
    }

    /// Whether a pool wake-up is owed: the driver must run (and poll,
    /// which flushes) before nginx sleeps.
    pub(crate) fn wake_owed(&self) -> bool {
        self.batch.owed()
    }

    /// Wakes the pool for the jobs queued by [`Runtime::batch`] calls.
    pub(crate) fn flush(&self) {
        self.batch.flush(&self.pool);
    }

    /// A timer of this runtime, for tasks of its executor only (see
    /// [`Sleep`]).
    pub fn sleep(&self, dur: Duration) -> Sleep {
        self.timers.sleep(dur).tasks_only()
    }

    /// The part of a driver poll that runs no Lua code: fires due timers
    /// (waking the tasks that wait for them), collects the finished tasks
    /// (for [`Runtime::next_done`]), and returns the time until the next
    /// deadline. `arm`: the caller will sleep until then (see
    /// [`Runtime::take_rearm`]). `Polled::tasks_ready`: tasks are ready to
    /// run, which needs Lua: call [`Runtime::run_tasks`], then poll again.
    pub(crate) fn poll(&self, arm: bool) -> Polled {
        self.polls.set(self.polls.get() + 1);
        self.batch.new_cycle(&self.pool);
        self.notifier.hold();
        let now = self.timers.now();
        self.timers.fire(now);
        self.collect_done(true);
        let tasks_ready = self.executor.has_ready();
        if !tasks_ready {
            // Jobs the pool finishes from now on ask for another poll.
            self.notifier.release(|| self.executor.has_ready());
            // (the results read since the first are freed by the next poll)
            self.collect_done(false);
        }
        let next = if arm {
            self.timers.arm()
        } else {
            self.timers.next_deadline()
        };
        Polled {
            next: next.map(|d| Duration::from_millis(d.saturating_sub(now))),
            tasks_ready,
        }
    }

    /// Whether tasks with futures are ready to run.
    pub(crate) fn has_ready(&self) -> bool {
        self.executor.has_ready()
    }

    /// Runs the ready tasks (within a budget), firing between batches the
    /// timers due by then (seldom any on nginx's clock, which moves
    /// between turns of its event loop). Their polls may use Lua: call it
    /// from a Lua C function.
    pub(crate) fn run_tasks(&self) {
        // Jobs that tasks queue while they run here share one wake-up.
        self.batch.deferring(true, || {
            let mut ran = 0;
            loop {
                let n = self.executor.run_ready(POLL_BUDGET - ran);
                ran += n;
                let fired = self.timers.fire(self.timers.now());
                if (n == 0 && fired == 0) || ran >= POLL_BUDGET {
                    break;
                }
            }
        });
        self.flush();
        // Work left over asks for another poll, after nginx's other events.
        self.notifier.release(|| self.executor.has_ready());
        self.collect_done(true);
    }

    /// Collects the finished tasks, and those that queued socket ops for
    /// their callers: posts the callers that wait for them, keeps the
    /// others for Lua ([`Runtime::next_done`]). `reap`: frees first the
    /// plain tasks whose results their callers read (see
    /// [`PlainTasks::reap`]).
    fn collect_done(&self, reap: bool) {
        if reap {
            self.plain.reap(&self.waiters);
        }
        let mut done = self.done.borrow_mut();
        let mut found = |id| {
            if !self.waiters.post(id) {
                done.push_back(Done::Finished(id));
            }
        };
        self.executor.take_completed(&mut found);
        self.plain.take_done(&self.waiters, &mut found);
        self.net.take_ready(|id| {
            if !self.waiters.post(id) {
                done.push_back(Done::Ops(id));
            }
        });
    }

    /// A task a poll found finished (or with socket ops), not yet handed
    /// to Lua.
    pub(crate) fn next_done(&self) -> Option<Done> {
        self.done.borrow_mut().pop_front()
    }

    /// Whether finished tasks wait to be handed to Lua.
    pub(crate) fn has_done(&self) -> bool {
        !self.done.borrow().is_empty()
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
                self.batch.set_driven(true);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Forgets the driver's connection (the driver exited or died); the
    /// next driver makes a new socket.
    pub fn disconnect_driver(&self) {
        self.batch.set_driven(false);
        self.flush();
        self.notifier.set_writer(None);
        self.rendezvous.borrow_mut().take();
    }

    /// The outcome of a finished task as Lua values (frees its slot).
    pub(crate) fn take(&self, lua: &mlua::Lua, id: TaskId) -> Option<Outcome<LuaOutput>> {
        self.waiters.release(id);
        if is_plain(id) {
            return self.plain.take_lua(lua, &self.waiters, id);
        }
        let out = self.executor.take(id);
        self.net.remove(id);
        out
    }

    /// The result of a finished task without Lua: a plain task's as its
    /// job made it (frees its slot); a task with a future has Lua values
    /// ([`Taken::NeedsLua`]: see [`Runtime::take`]). A task with a future
    /// that has not finished, or has socket ops queued, woke its caller
    /// for them (see [`crate::net`]): [`Taken::Pending`], and the caller
    /// carries them out, then takes the results with the last ones.
    pub(crate) fn take_raw(&self, id: TaskId) -> Taken {
        if is_plain(id) {
            // (a plain task's waiter is in its slot, see Runtime::wait;
            // that of a cancelled one in `waiters`)
            let taken = self.plain.take_raw(&self.waiters, id);
            if let Taken::Unknown = taken {
                self.waiters.release(id);
            }
            return taken;
        }
        if !self.executor.contains(id) {
            self.waiters.release(id);
            return Taken::Unknown;
        }
        if self.executor.is_finished(id) && !self.net.has_ops(id) {
            return Taken::NeedsLua;
        }
        self.waiters.release(id);
        Taken::Pending
    }

    /// Queues the caller running on `state` for task `id` (see
    /// [`Waiters::wait`]): a plain task keeps its waiter, other tasks'
    /// are kept by [`Waiters`]. A task whose socket ops wait for their
    /// caller is not waited for: [`Waited::Done`], and the caller takes it
    /// as pending (see [`Runtime::take_raw`]) and carries them out.
    ///
    /// # Safety
    ///
    /// As [`Waiters::wait`].
    pub(crate) unsafe fn wait(
        &self,
        state: *mut mlua::ffi::lua_State,
        id: TaskId,
        timeout_ms: c_int,
    ) -> Waited {
        // SAFETY: the caller's contract, for either.
        unsafe {
            if is_plain(id) {
                // (a plain task that is gone was taken or cancelled: the
                // take says so, at once)
                return self
                    .plain
                    .wait(&self.waiters, state, id, timeout_ms)
                    .unwrap_or(Waited::Done);
            }
            if self.net.contains(id) && self.net.claim(id) {
                return Waited::Done;
            }
            self.waiters.wait(state, id, timeout_ms)
        }
    }

    /// Whether a caller that ngx_lua has not killed waits for task `id`
    /// in the runtime.
    pub(crate) fn is_waited(&self, id: TaskId) -> bool {
        if is_plain(id) {
            self.plain.is_waited(id)
        } else {
            self.waiters.is_waited(id)
        }
    }

    /// Callers waiting for tasks.
    pub(crate) fn waiting(&self) -> usize {
        self.waiters.len() + self.plain.waiting()
    }

    /// Whether cancelling task `id` drops a future (which may use Lua).
    pub(crate) fn has_future(&self, id: TaskId) -> bool {
        self.executor.contains(id)
    }

    /// Cancels a task: its future is dropped before this returns (a pool
    /// job that has not started will not run).
    pub fn cancel(&self, id: TaskId) -> bool {
        // (a caller that waits for it resumes, and finds it gone)
        self.waiters.cancelled(id);
        let found = if is_plain(id) {
            self.plain.cancel(&self.waiters, id)
        } else {
            self.executor.cancel(id)
        };
        self.net.remove(id);
        found
    }

    /// Cancels the tasks whose callers ngx_lua killed while they waited
    /// (see [`Waiters::sweep`]).
    pub(crate) fn sweep_waiters(&self) {
        self.plain.reap(&self.waiters);
        let mut dead = Vec::new();
        self.waiters.sweep(|id| dead.push(id));
        self.plain.sweep(&self.waiters, |id| dead.push(id));
        for id in dead {
            self.cancel(id);
        }
    }

    /// Whether no task is in flight and no timer is pending.
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.timers.is_empty()
    }

    /// Tasks and pool jobs pending, or finished and not taken.
    pub(crate) fn in_flight(&self) -> usize {
        self.plain.reap(&self.waiters);
        self.executor.in_flight() + self.plain.len()
    }

    /// Leaves the results of the tasks whose callers the poll posts in
    /// `mailbox` (see `mailbox.rs`).
    pub(crate) fn set_mailbox(&self, mailbox: std::rc::Rc<crate::mailbox::Mailbox>) {
        self.plain.set_mailbox(mailbox);
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
            waiting: self.waiting(),
            streams: self.net.streams(),
        }
    }
}

/// A future that completes after `dur`, fired by the driver through nginx's
/// timers. Use it in async functions registered with [`crate::Module`].
///
/// # Panics
///
/// When a module's code polls it outside a task of resty-async's executor
/// (`block_on` in an `add_function` or `add_blocking` closure), where
/// nothing would ever fire it.
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
