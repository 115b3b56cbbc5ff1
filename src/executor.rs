//! A single-threaded executor on async-task.
//!
//! Tasks are polled only on the thread that owns the [`Executor`] (the nginx
//! worker). Their wakers may fire on any thread: the schedule function puts
//! the `Runnable` on a channel and asks the [`Notifier`] for a wake-up, which
//! nginx delivers to the driver as a read event. The driver then calls
//! [`Executor::run_ready`] and collects the finished tasks with
//! [`Executor::take_completed`].
//!
//! A task's output stays in its slot until [`Executor::take`] fetches it or
//! [`Executor::cancel`] throws the task away.
//!
//! A task may start child tasks ([`Executor::spawn_child`], behind
//! `resty_async::spawn_local`). A child belongs to the task that started it
//! (its *root*, the task a Lua caller waits for): it is polled with the
//! root's id as the current root, and it is cancelled when the root ends.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::hash::{BuildHasherDefault, Hasher};
use std::mem::ManuallyDrop;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::Arc;
use std::task::{Context, Poll};

use async_task::{Runnable, Task};
use crossbeam_channel::{Receiver, Sender};
use futures::FutureExt;

use crate::socket::Notifier;

thread_local! {
    static POLLING: Cell<usize> = const { Cell::new(0) };
    /// The root task whose task (itself or a child) is being polled now;
    /// 0: none.
    static ROOT: Cell<TaskId> = const { Cell::new(0) };
}

/// Whether this thread is inside a task's poll right now (used to tell a
/// future driven by the executor from a direct call).
pub fn in_poll() -> bool {
    POLLING.with(|p| p.get() > 0)
}

/// The root task being polled now: the task a Lua caller waits for, whose
/// future or child task runs. `None` outside a poll.
pub fn current_root() -> Option<TaskId> {
    match ROOT.with(Cell::get) {
        0 => None,
        id => Some(id),
    }
}

/// A future whose drop does not unwind. async-task drops the future of a
/// cancelled task (a timeout, a task handle's cancel, a parent that ended)
/// where a panic aborts the process: the worker. A panic in the drop of
/// `F` (a `Drop` of the module's) is caught here, reported like one of a
/// poll (see crate::panic), and the rest of `F` is not dropped.
struct CatchDrop<F>(ManuallyDrop<F>);

impl<F> CatchDrop<F> {
    fn new(fut: F) -> CatchDrop<F> {
        CatchDrop(ManuallyDrop::new(fut))
    }
}

impl<F: Future> Future for CatchDrop<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        // SAFETY: the future is pinned where the wrapper is (structural
        // pinning): it is never moved, and Drop drops it in place.
        unsafe { self.map_unchecked_mut(|s| &mut *s.0) }.poll(cx)
    }
}

impl<F> Drop for CatchDrop<F> {
    fn drop(&mut self) {
        let inner = &mut self.0;
        let _ = crate::panic::catch(AssertUnwindSafe(|| {
            // SAFETY: dropped once, here, in place; never used after.
            unsafe { ManuallyDrop::drop(inner) }
        }));
    }
}

fn run(runnable: Runnable<TaskId>) {
    struct Depth(TaskId);
    impl Drop for Depth {
        fn drop(&mut self) {
            POLLING.with(|p| p.set(p.get() - 1));
            ROOT.with(|r| r.set(self.0));
        }
    }
    POLLING.with(|p| p.set(p.get() + 1));
    let _depth = Depth(ROOT.with(|r| r.replace(*runnable.metadata())));
    // (the task's future runs under catch_unwind: see spawn)
    let _catching = crate::panic::Catching::enter();
    // Tokio types (timers, sockets, `tokio::spawn`) need the runtime's
    // context while they are polled.
    #[cfg(feature = "tokio")]
    crate::tokio::in_context(|| runnable.run());
    #[cfg(not(feature = "tokio"))]
    runnable.run();
}

/// Identifies a task of one executor. Never reused within a process.
pub type TaskId = u64;

/// A task's future panicked; the message of the panic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked(pub String);

impl Panicked {
    pub(crate) fn from_payload(payload: Box<dyn Any + Send>) -> Panicked {
        let msg = if let Some(s) = payload.downcast_ref::<&str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "non-string panic payload".to_owned()
        };
        Panicked(msg)
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rust function panicked: {}", self.0)
    }
}

impl std::error::Error for Panicked {}

/// The result of a task: its output, or the panic that ended it.
pub type Outcome<T> = Result<T, Panicked>;

/// What [`Executor::spawn`] found after the first poll.
#[derive(Debug)]
pub enum Spawned<T> {
    /// The future finished at once; nothing was queued.
    Ready(Outcome<T>),
    /// The future is pending; wait for this id in `take_completed`.
    Pending(TaskId),
}

/// Counters of one executor.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ExecutorStats {
    /// Tasks spawned and not yet taken or cancelled.
    pub in_flight: usize,
    /// Tasks that ran to completion (including ready-at-once ones).
    pub completed: u64,
    /// Tasks cancelled before they finished.
    pub cancelled: u64,
    /// Runnables run.
    pub polls: u64,
}

/// What the schedule function needs, shared with every waker.
struct Shared {
    queue: Sender<Runnable<TaskId>>,
    notifier: Arc<Notifier>,
}

/// The schedule function of every task: queue the runnable, ask for a
/// driver poll.
fn scheduler(shared: Arc<Shared>) -> impl Fn(Runnable<TaskId>) + Send + Sync + 'static {
    move |runnable| {
        // The receiver lives as long as the executor; after teardown a
        // late wake-up has nothing to run.
        if shared.queue.send(runnable).is_ok() {
            shared.notifier.notify();
        }
    }
}

struct Slot<T> {
    // Kept until the slot goes: dropping a Task cancels it.
    _task: Task<(), TaskId>,
    done: Option<Outcome<T>>,
}

/// Task ids are sequential integers: a multiplicative hash spreads them
/// well and costs one multiplication (SipHash would be a large part of a
/// ready-at-once call).
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8 | u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

/// A map keyed by task id.
pub(crate) type IdMap<V> = HashMap<TaskId, V, BuildHasherDefault<IdHasher>>;

type SlotMap<T> = IdMap<Slot<T>>;

struct Inner<T> {
    shared: Arc<Shared>,
    queue: Receiver<Runnable<TaskId>>,
    slots: RefCell<SlotMap<T>>,
    /// The child tasks of each root task (dropping them cancels them).
    children: RefCell<IdMap<Vec<Task<(), TaskId>>>>,
    // The task being polled for the first time inside `spawn` (0: none) and
    // its output if it finished then: a ready-at-once task never gets a slot.
    spawning: Cell<TaskId>,
    first_out: RefCell<Option<Outcome<T>>>,
    completed: RefCell<Vec<TaskId>>,
    next_id: Cell<TaskId>,
    stats: Cell<ExecutorStats>,
}

impl<T> Inner<T> {
    fn finish(&self, id: TaskId, out: Outcome<T>) {
        if let Some(slot) = self.slots.borrow_mut().get_mut(&id) {
            slot.done = Some(out);
            self.completed.borrow_mut().push(id);
        } else if self.spawning.get() == id {
            *self.first_out.borrow_mut() = Some(out);
        }
        self.bump(|s| s.completed += 1);
        self.drop_children(id);
    }

    /// Cancels the children of root task `id`. An idle child is scheduled
    /// once more, to drop its future when it runs.
    fn drop_children(&self, id: TaskId) {
        let children = self.children.borrow_mut().remove(&id);
        drop(children);
    }

    fn bump(&self, f: impl FnOnce(&mut ExecutorStats)) {
        let mut s = self.stats.get();
        f(&mut s);
        self.stats.set(s);
    }
}

/// A single-threaded executor whose wake-ups go through a [`Notifier`].
pub struct Executor<T> {
    inner: Rc<Inner<T>>,
}

impl<T: 'static> Executor<T> {
    /// An executor that asks `notifier` for a wake-up when tasks are ready.
    pub fn new(notifier: Arc<Notifier>) -> Executor<T> {
        let (tx, rx) = crossbeam_channel::unbounded();
        Executor {
            inner: Rc::new(Inner {
                shared: Arc::new(Shared { queue: tx, notifier }),
                queue: rx,
                slots: RefCell::new(SlotMap::default()),
                children: RefCell::new(IdMap::default()),
                spawning: Cell::new(0),
                first_out: RefCell::new(None),
                completed: RefCell::new(Vec::new()),
                next_id: Cell::new(1),
                stats: Cell::new(ExecutorStats::default()),
            }),
        }
    }

    /// A new task id. (They count up from 1 and stay far below the ids
    /// of the plain tasks, see `futureless.rs`.)
    fn next_id(&self) -> TaskId {
        let id = self.inner.next_id.get();
        self.inner.next_id.set(id + 1);
        id
    }

    /// Spawns `fut` and polls it once, here and now.
    pub fn spawn<F>(&self, fut: F) -> Spawned<T>
    where
        F: Future<Output = T> + 'static,
    {
        let id = self.next_id();
        let weak: Weak<Inner<T>> = Rc::downgrade(&self.inner);
        let wrapped = CatchDrop::new(async move {
            let out = AssertUnwindSafe(fut)
                .catch_unwind()
                .await
                .map_err(Panicked::from_payload);
            if let Some(inner) = weak.upgrade() {
                inner.finish(id, out);
            }
        });
        let schedule = scheduler(Arc::clone(&self.inner.shared));
        let (runnable, task) = async_task::Builder::new()
            .metadata(id)
            .spawn_local(move |_| wrapped, schedule);
        self.inner.bump(|s| s.polls += 1);
        // First poll before the task has a slot. A wake-up during it only
        // queues the runnable after the poll returns, so nothing can run the
        // task again before the slot exists.
        let outer = self.inner.spawning.replace(id);
        run(runnable);
        self.inner.spawning.set(outer);

        if let Some(out) = self.inner.first_out.borrow_mut().take() {
            return Spawned::Ready(out);
        }
        self.inner.slots.borrow_mut().insert(
            id,
            Slot {
                _task: task,
                done: None,
            },
        );
        Spawned::Pending(id)
    }

    /// Starts `fut` as a child of root task `root` (see the module docs):
    /// it is queued, and first polled by the next run of the queue. It is
    /// started from inside a poll, and whatever runs polls (the driver, a
    /// call from Lua that runs its task's children: see
    /// `Runtime::settle`) runs the queue until it is empty: no wake-up is
    /// written for it.
    pub fn spawn_child<F>(&self, root: TaskId, fut: F)
    where
        F: Future<Output = ()> + 'static,
    {
        let schedule = scheduler(Arc::clone(&self.inner.shared));
        let fut = CatchDrop::new(fut);
        let (runnable, task) = async_task::Builder::new()
            .metadata(root)
            .spawn_local(move |_| fut, schedule);
        {
            let mut children = self.inner.children.borrow_mut();
            let list = children.entry(root).or_default();
            // Finished children are forgotten as new ones come.
            list.retain(|t| !t.is_finished());
            list.push(task);
        }
        // (The receiver lives as long as the executor.)
        let _ = self.inner.shared.queue.send(runnable);
    }

    /// Whether root task `id` has children that have not finished.
    pub fn has_children(&self, id: TaskId) -> bool {
        self.inner
            .children
            .borrow()
            .get(&id)
            .is_some_and(|list| list.iter().any(|t| !t.is_finished()))
    }

    /// Whether tasks finished since the last [`Executor::take_completed`],
    /// other than `except`.
    pub fn has_completed_except(&self, except: TaskId) -> bool {
        self.inner.completed.borrow().iter().any(|&id| id != except)
    }

    /// Runs up to `budget` ready tasks; returns how many ran.
    pub fn run_ready(&self, budget: usize) -> usize {
        let mut n = 0;
        while n < budget {
            match self.inner.queue.try_recv() {
                Ok(runnable) => {
                    run(runnable);
                    n += 1;
                }
                Err(_) => break,
            }
        }
        self.inner.bump(|s| s.polls += n as u64);
        n
    }

    /// Whether tasks are waiting to run.
    pub fn has_ready(&self) -> bool {
        !self.inner.queue.is_empty()
    }

    /// Hands the ids of tasks finished since the last call to `f`.
    pub fn take_completed(&self, mut f: impl FnMut(TaskId)) {
        let ids = std::mem::take(&mut *self.inner.completed.borrow_mut());
        for id in ids {
            f(id);
        }
    }

    /// The outcome of a finished task, which frees its slot. `None` if the
    /// task is unknown or not finished.
    pub fn take(&self, id: TaskId) -> Option<Outcome<T>> {
        self.take_if(id, |_| true)
    }

    /// Like [`Executor::take`], if `pred` accepts the outcome; otherwise
    /// the task keeps it.
    pub fn take_if(&self, id: TaskId, pred: impl FnOnce(&Outcome<T>) -> bool) -> Option<Outcome<T>> {
        let mut slots = self.inner.slots.borrow_mut();
        // Only a finished task gives up its slot.
        if !pred(slots.get(&id)?.done.as_ref()?) {
            return None;
        }
        let slot = slots.remove(&id)?;
        drop(slots);
        slot.done
    }

    /// The outcome of finished task `id`, taken by its waiter between
    /// driver polls: the next poll does not report it.
    pub fn take_now(&self, id: TaskId) -> Option<Outcome<T>> {
        let out = self.take_if(id, |_| true)?;
        self.inner.completed.borrow_mut().retain(|&c| c != id);
        Some(out)
    }

    /// Throws a task away: its future is dropped before this returns (its
    /// destructors run), or its unclaimed output is freed. Returns whether
    /// the task existed.
    pub fn cancel(&self, id: TaskId) -> bool {
        let slot = self.inner.slots.borrow_mut().remove(&id);
        let Some(slot) = slot else { return false };
        if slot.done.is_none() {
            self.inner.bump(|s| s.cancelled += 1);
        }
        self.inner.drop_children(id);
        // Dropping the Task of an idle task schedules it once more so that
        // running it drops the future: run the queue now so that happens
        // before we return. (The Task of a running task - cancel called from
        // inside a task - only marks it closed.)
        drop(slot);
        self.run_ready(usize::MAX);
        true
    }

    /// Whether a task is known (pending or finished but not taken).
    pub fn contains(&self, id: TaskId) -> bool {
        // (no hashing while no task with a future is in flight, as on the
        // path of a built-in or blocking call)
        let slots = self.inner.slots.borrow();
        !slots.is_empty() && slots.contains_key(&id)
    }

    /// Whether task `id` has finished (and its outcome waits to be taken).
    pub fn is_finished(&self, id: TaskId) -> bool {
        self.inner
            .slots
            .borrow()
            .get(&id)
            .is_some_and(|s| s.done.is_some())
    }

    /// Tasks pending, or finished but not taken.
    pub fn in_flight(&self) -> usize {
        self.inner.slots.borrow().len()
    }

    /// Current counters.
    pub fn stats(&self) -> ExecutorStats {
        let mut s = self.inner.stats.get();
        s.in_flight = self.in_flight();
        s
    }
}

impl<T> Executor<T> {
    /// Cancels every task and drops every future, on this thread.
    pub fn shutdown(&self) {
        let slots = std::mem::take(&mut *self.inner.slots.borrow_mut());
        drop(slots);
        let children = std::mem::take(&mut *self.inner.children.borrow_mut());
        drop(children);
        self.inner.completed.borrow_mut().clear();
        while let Ok(runnable) = self.inner.queue.try_recv() {
            // Cancelled tasks drop their future when run.
            runnable.run();
        }
    }
}

impl<T> Drop for Executor<T> {
    fn drop(&mut self) {
        self.shutdown();
    }
}
