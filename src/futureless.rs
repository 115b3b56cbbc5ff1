//! Plain tasks: pool jobs and sleeps, tasks of their own without a future.
//!
//! A blocking call (`Module::add_blocking`, the built-ins `sha256`,
//! `read_file` and `write_file`) needs no future: its job runs on the pool,
//! and its result becomes Lua values on the worker. Nor does `async.sleep`:
//! it is a deadline. Run as a future (awaiting a [`crate::pool::BlockingTask`] or
//! a [`crate::Sleep`]), each would cost a task allocation (larger than what
//! glibc keeps per thread under load), two polls, a waker and a
//! run-queue entry. Here a job travels as an errand (see
//! [`Pool::spawn_errand`]) that comes back to [`Back`] and asks for a
//! driver poll; a sleep's deadline stands for its task id in the runtime's
//! [`Timers`]; the driver's poll hands the ids on with the executor's
//! finished tasks.
//!
//! A plain task's id names its slot (see [`Slots`]): the calls of its
//! caller (start, wait, take) and the poll find it without a hash map.
//! The ids are marked apart from the executor's (see [`is_plain`]), so that
//! the kinds of task share one id space.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::HashSet;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mlua::Lua;

use crate::blocks::Blocks;
use crate::executor::{Outcome, Panicked, TaskId};
use crate::ffi::{raw_value, KIND_BOOLEAN};
use crate::mailbox::{Mailbox, Posted};
use crate::pool::{Errand, Pool, PoolError, WakeUp};
use crate::runtime::LuaOutput;
use crate::sendable::Sendable;
use crate::socket::Notifier;
use crate::timer::{Key, Ms, Timers};
use crate::waiters::{Caller, Waited, Waiter, Waiters};

enum Kind {
    /// A pool job: its errand once it came back.
    Job(Option<Box<dyn Returned>>),
    /// A sleep: its deadline's key in the runtime's timers. Its result is
    /// `true`.
    Sleep(Key),
}

struct Slot {
    kind: Kind,
    /// The pool reported the job as done, or the deadline fired.
    done: bool,
    /// A result taken out of its job that only mlua can make into Lua
    /// values ([`Sendable::Other`]), kept for [`PlainTasks::take_lua`].
    /// (Boxed: slots move in and out of their table on every take, and
    /// few results need mlua.)
    held: Option<Box<Result<Sendable, PoolError>>>,
    /// The caller waiting for it (kept here rather than in [`Waiters`]:
    /// the slot is at hand when the task is done and when it is taken).
    waiter: Option<Waiter>,
    /// Its result is in the mailbox (see [`PlainTasks::reap`]).
    posted: bool,
}

/// Marks a plain task's id. The executor counts its ids up from 1 and never
/// gets here; both kinds stay below 2^53, which a Lua number holds exactly.
const PLAIN: TaskId = 1 << 52;
/// The low bits of a plain task's id: its slot's index. The bits between
/// count the slot's uses, so that a stale id does not find the slot's next
/// task; a slot used [`USES_MASK`] times is not used again, so that no id
/// is ever given twice (a cancelled job's id stays in [`Back`] until the
/// job comes back, and the Lua side keys tables by ids).
const INDEX_BITS: u32 = 24;
const INDEX_MASK: TaskId = (1 << INDEX_BITS) - 1;
const USES_MASK: u32 = (1 << (52 - INDEX_BITS)) - 1;

/// The index of the slot of plain task `id`, which is also the index of
/// its entry in the mailbox (see `mailbox.rs`).
fn index_of(id: TaskId) -> usize {
    (id & INDEX_MASK) as usize
}

/// Whether `id` is a plain task's (it may be gone).
pub(crate) fn is_plain(id: TaskId) -> bool {
    id & PLAIN != 0
}

/// The slots of the plain tasks, found by their ids (see [`PLAIN`]).
#[derive(Default)]
struct Slots {
    /// Each slot's uses so far and its task, if it has one.
    entries: Vec<(u32, Option<Slot>)>,
    /// The indexes of the empty slots that may be used again.
    free: Vec<u32>,
    len: usize,
    /// At most this many slots: a full table in tests, without 2^24 slots.
    #[cfg(test)]
    limit: Option<usize>,
}

impl Slot {
    fn new(kind: Kind) -> Slot {
        Slot {
            kind,
            done: false,
            held: None,
            waiter: None,
            posted: false,
        }
    }
}

impl Slots {
    fn id(index: usize, uses: u32) -> TaskId {
        PLAIN | TaskId::from(uses) << INDEX_BITS | index as TaskId
    }

    /// Puts the slot that `make` makes for its id in an empty slot; the id
    /// and the slot, or `None` if all 2^[`INDEX_BITS`] are taken.
    fn insert_with(&mut self, make: impl FnOnce(TaskId) -> Slot) -> Option<(TaskId, &mut Slot)> {
        let index = match self.free.pop() {
            Some(i) => i as usize,
            None if (self.entries.len() as TaskId) <= INDEX_MASK && !self.at_limit() => {
                self.entries.push((0, None));
                self.entries.len() - 1
            }
            None => return None,
        };
        let entry = &mut self.entries[index];
        // (below USES_MASK: see `remove`)
        entry.0 += 1;
        let id = Slots::id(index, entry.0);
        let slot = entry.1.insert(make(id));
        self.len += 1;
        Some((id, slot))
    }

    /// The place of `id`'s slot, if `id` is a plain task's and its slot
    /// has not been used again since.
    fn place(&mut self, id: TaskId) -> Option<&mut Option<Slot>> {
        if !is_plain(id) {
            return None;
        }
        match self.entries.get_mut(index_of(id)) {
            Some((uses, slot)) if TaskId::from(*uses) == (id & !PLAIN) >> INDEX_BITS => Some(slot),
            _ => None,
        }
    }

    fn get_mut(&mut self, id: TaskId) -> Option<&mut Slot> {
        self.place(id)?.as_mut()
    }

    /// Whether a test's limit is reached (see `limit`).
    fn at_limit(&self) -> bool {
        #[cfg(test)]
        return self.limit.is_some_and(|l| self.entries.len() >= l);
        #[cfg(not(test))]
        return false;
    }

    fn remove(&mut self, id: TaskId) -> Option<Slot> {
        let slot = self.place(id)?.take()?;
        let index = index_of(id);
        // (a slot at its last use is retired: its ids are all given)
        if self.entries[index].0 < USES_MASK {
            self.free.push(index as u32);
        }
        self.len -= 1;
        Some(slot)
    }

    fn iter_mut(&mut self) -> impl Iterator<Item = (TaskId, &mut Slot)> {
        let entries = self.entries.iter_mut().enumerate();
        entries.filter_map(|(i, (uses, slot))| slot.as_mut().map(|s| (Slots::id(i, *uses), s)))
    }
}

/// What [`PlainTasks::take_raw`] found.
pub(crate) enum Taken {
    /// No such task (cancelled, or taken already).
    Unknown,
    /// Not finished.
    Pending,
    /// The result, as the job made it; the task is gone.
    Raw(Result<Sendable, PoolError>),
    /// A result that needs mlua: see [`PlainTasks::take_lua`].
    NeedsLua,
}

/// What the pool threads and the worker share: the errands that came
/// back, and the ids of those cancelled before they came back.
struct Back {
    /// Errands the pool ran since the last poll. (A vector that the poll
    /// swaps with [`PlainTasks::taking`] under one lock, not a channel: a
    /// poll takes them all.)
    done: Mutex<Vec<Box<dyn Returned>>>,
    notifier: Arc<Notifier>,
    /// Jobs cancelled while queued or running: not run, or dropped when
    /// they come back. (Rare: a lock-free count keeps the set out of every
    /// job's way.)
    cancelled: Mutex<HashSet<TaskId>>,
    ncancelled: AtomicUsize,
}

impl Back {
    fn cancelled(&self) -> std::sync::MutexGuard<'_, HashSet<TaskId>> {
        self.cancelled.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Takes `id` off the cancelled jobs: whether it was there.
    fn uncancel(&self, id: TaskId) -> bool {
        if self.ncancelled.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut set = self.cancelled();
        let found = set.remove(&id);
        self.ncancelled.store(set.len(), Ordering::Release);
        found
    }

    fn cancel(&self, id: TaskId) {
        let mut set = self.cancelled();
        set.insert(id);
        self.ncancelled.store(set.len(), Ordering::Release);
    }
}

/// A job on its way: queued, running, or back with its result.
struct JobErrand<F> {
    id: TaskId,
    stage: Stage<F>,
    back: Arc<Back>,
}

enum Stage<F> {
    Queued(F),
    Done(Result<Sendable, PoolError>),
    Taken,
}

/// An errand that came back: its result, taken on the worker.
trait Returned: Send {
    fn id(&self) -> TaskId;
    fn take(&mut self) -> Result<Sendable, PoolError>;
    /// The result, if it was not taken.
    fn peek(&self) -> Option<&Result<Sendable, PoolError>>;
}

impl<F: FnOnce() -> Sendable + Send + 'static> Errand for JobErrand<F> {
    fn wanted(&self) -> bool {
        !self.back.uncancel(self.id)
    }

    fn run(&mut self) {
        let Stage::Queued(f) = std::mem::replace(&mut self.stage, Stage::Taken) else {
            return;
        };
        let res = crate::panic::catch(AssertUnwindSafe(f))
            .map_err(|p| PoolError::Panicked(Panicked::from_payload(p).0));
        self.stage = Stage::Done(res);
    }

    fn hand_back(self: Box<Self>) {
        let back = Arc::clone(&self.back);
        back.done
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(self);
        back.notifier.notify();
    }
}

impl<F: FnOnce() -> Sendable + Send + 'static> Returned for JobErrand<F> {
    fn id(&self) -> TaskId {
        self.id
    }

    fn take(&mut self) -> Result<Sendable, PoolError> {
        match std::mem::replace(&mut self.stage, Stage::Taken) {
            Stage::Done(res) => res,
            _ => Err(PoolError::Lost("the result of a pool job taken twice".into())),
        }
    }

    fn peek(&self) -> Option<&Result<Sendable, PoolError>> {
        match &self.stage {
            Stage::Done(res) => Some(res),
            _ => None,
        }
    }
}

/// The plain tasks of a runtime. See the module docs.
pub(crate) struct PlainTasks {
    back: Arc<Back>,
    /// The errands a poll took, with the capacity of earlier polls.
    taking: RefCell<Vec<Box<dyn Returned>>>,
    timers: Timers,
    slots: RefCell<Slots>,
    /// The memory of errands whose results were taken, for the next ones
    /// (see [`PlainTasks::retire`]).
    blocks: Blocks,
    completed: Cell<u64>,
    cancelled: Cell<u64>,
    /// Slots with a waiter.
    waiting: Cell<usize>,
    /// Where the poll leaves the results of the tasks whose waiters it
    /// posts (see `mailbox.rs`), once the runtime's VM handle set it.
    mailbox: OnceCell<Rc<Mailbox>>,
    /// The tasks whose results are in the mailbox, until their slots are
    /// freed (see [`PlainTasks::reap`]).
    posted: RefCell<Vec<TaskId>>,
}

impl PlainTasks {
    /// Plain tasks whose jobs tell `notifier` when they come back, and on
    /// `timers`.
    pub(crate) fn new(timers: &Timers, notifier: Arc<Notifier>) -> PlainTasks {
        PlainTasks {
            back: Arc::new(Back {
                done: Mutex::new(Vec::new()),
                notifier,
                cancelled: Mutex::new(HashSet::new()),
                ncancelled: AtomicUsize::new(0),
            }),
            taking: RefCell::new(Vec::new()),
            timers: timers.clone(),
            slots: RefCell::new(Slots::default()),
            blocks: Blocks::default(),
            completed: Cell::new(0),
            cancelled: Cell::new(0),
            waiting: Cell::new(0),
            mailbox: OnceCell::new(),
            posted: RefCell::new(Vec::new()),
        }
    }

    /// Leaves the results of the tasks whose waiters the poll posts in
    /// `mailbox` from now on.
    pub(crate) fn set_mailbox(&self, mailbox: Rc<Mailbox>) {
        let _ = self.mailbox.set(mailbox);
    }

    /// Queues `job` on `pool` as a task; its id.
    #[cfg(test)]
    pub(crate) fn spawn_job(
        &self,
        pool: &Pool,
        job: impl FnOnce() -> Sendable + Send + 'static,
        wake: WakeUp,
    ) -> Result<TaskId, PoolError> {
        self.spawn_job_for(pool, job, wake, None).map(|(id, _)| id)
    }

    /// [`PlainTasks::spawn_job`], queuing `caller` (if any) for the task
    /// once the job is queued: its id and whether the caller was queued.
    pub(crate) fn spawn_job_for(
        &self,
        pool: &Pool,
        job: impl FnOnce() -> Sendable + Send + 'static,
        wake: WakeUp,
        caller: Option<(&Waiters, Caller)>,
    ) -> Result<(TaskId, bool), PoolError> {
        let id = self
            .slots
            .borrow_mut()
            .insert_with(|_| Slot::new(Kind::Job(None)))
            .ok_or_else(|| PoolError::Lost(too_many_tasks()))?
            .0;
        let errand = self.blocks.boxed(JobErrand {
            id,
            stage: Stage::Queued(job),
            back: Arc::clone(&self.back),
        });
        // (not borrowed: a refused job is dropped, which may run any code)
        if let Err(e) = pool.spawn_errand(errand, wake) {
            self.slots.borrow_mut().remove(id);
            return Err(e);
        }
        let queued = match caller {
            Some((waiters, caller)) => match self.slots.borrow_mut().get_mut(id) {
                Some(slot) => self.queue_in(slot, waiters, caller),
                None => false,
            },
            None => false,
        };
        Ok((id, queued))
    }

    /// A task that finishes at `deadline`, with the result `true`; its id,
    /// or the message of its refusal.
    #[cfg(test)]
    pub(crate) fn spawn_sleep(&self, deadline: Ms) -> Result<TaskId, String> {
        self.spawn_sleep_for(deadline, None).map(|(id, _)| id)
    }

    /// [`PlainTasks::spawn_sleep`], queuing `caller` (if any) for the new
    /// task: its id and whether the caller was queued.
    #[inline(always)]
    pub(crate) fn spawn_sleep_for(
        &self,
        deadline: Ms,
        caller: Option<(&Waiters, Caller)>,
    ) -> Result<(TaskId, bool), String> {
        let mut slots = self.slots.borrow_mut();
        let (id, slot) = slots
            .insert_with(|id| Slot::new(Kind::Sleep(self.timers.add_task(deadline, id))))
            .ok_or_else(too_many_tasks)?;
        let queued = match caller {
            Some((waiters, caller)) => self.queue_in(slot, waiters, caller),
            None => false,
        };
        Ok((id, queued))
    }

    /// Queues `caller` for the task of `slot`, new and pending (see
    /// [`Waiters::queue`]): whether it did. (A caller that could not be
    /// queued here waits through the Lua C function, which reports why.)
    #[inline(always)]
    fn queue_in(&self, slot: &mut Slot, waiters: &Waiters, caller: Caller) -> bool {
        match caller.queue(waiters) {
            Ok(waiter) => {
                slot.waiter = Some(waiter);
                self.waiting.set(self.waiting.get() + 1);
                true
            }
            Err(_) => false,
        }
    }

    /// Queues the caller running on `state` for task `id` (see
    /// [`Waiters::wait`]), its waiter kept in the task's slot; `None` if
    /// there is no such task.
    ///
    /// # Safety
    ///
    /// As [`Waiters::wait`].
    pub(crate) unsafe fn wait(
        &self,
        waiters: &Waiters,
        state: *mut mlua::ffi::lua_State,
        id: TaskId,
        timeout_ms: std::ffi::c_int,
    ) -> Option<Waited> {
        let mut slots = self.slots.borrow_mut();
        let slot = slots.get_mut(id)?;
        if slot.waiter.is_some() {
            return Some(Waited::Failed(
                "resty.async: this task is waited for already".to_owned(),
            ));
        }
        if slot.done {
            return Some(Waited::Done);
        }
        // SAFETY: the caller's contract.
        Some(match unsafe { waiters.queue(state, timeout_ms) } {
            Ok(waiter) => {
                slot.waiter = Some(waiter);
                self.waiting.set(self.waiting.get() + 1);
                Waited::Yield
            }
            Err(waited) => waited,
        })
    }

    /// Hands the ids of the tasks done since the last call to `f`, or posts
    /// their waiters: jobs the pool reported, sleeps whose deadline fired
    /// (a task cancelled meanwhile is skipped).
    #[cfg(test)]
    pub(crate) fn take_completed(&self, waiters: &Waiters, f: impl FnMut(TaskId)) {
        self.reap(waiters);
        self.take_done(waiters, f);
    }

    /// [`PlainTasks::take_completed`] without the [`PlainTasks::reap`]
    /// before it.
    pub(crate) fn take_done(&self, waiters: &Waiters, mut f: impl FnMut(TaskId)) {
        // Marks the slot done; whether to tell `f`.
        let finish = |id: TaskId, slot: &mut Slot| {
            slot.done = true;
            self.completed.set(self.completed.get() + 1);
            match slot.waiter.as_mut() {
                Some(w) => {
                    // (ngx_lua's post queues an event: the caller resumes
                    // after this poll, and finds its result)
                    waiters.post_waiter(w);
                    slot.posted = self.post_result(id, slot);
                    false
                }
                None => true,
            }
        };
        {
            // (`f` and `finish` leave the slots alone)
            let mut slots = self.slots.borrow_mut();
            self.timers.take_fired(|id| {
                if slots.get_mut(id).is_some_and(|slot| finish(id, slot)) {
                    f(id);
                }
            });
        }
        let mut taking = self.taking.borrow_mut();
        std::mem::swap(
            &mut *self.back.done.lock().unwrap_or_else(PoisonError::into_inner),
            &mut *taking,
        );
        for errand in taking.drain(..) {
            let id = errand.id();
            let mut slots = self.slots.borrow_mut();
            match slots.get_mut(id) {
                Some(slot) => {
                    slot.kind = Kind::Job(Some(errand));
                    let tell = finish(id, slot);
                    drop(slots);
                    if tell {
                        f(id);
                    }
                }
                None => {
                    // cancelled while it ran
                    drop(slots);
                    self.back.uncancel(id);
                    // (after the borrow)
                    drop_result(errand);
                }
            }
        }
    }

    /// Leaves the result of `slot` (task `id`, done, its waiter posted) in
    /// the mailbox, where its caller reads it after it resumes, if the
    /// result needs no mlua and the slot's index has an entry: whether it
    /// did.
    fn post_result(&self, id: TaskId, slot: &Slot) -> bool {
        let Some(mailbox) = self.mailbox.get() else {
            return false;
        };
        let found = match &slot.kind {
            Kind::Sleep(_) => Some((KIND_BOOLEAN, 1.0, &[][..])),
            // (the pool's errors and Lua values: taken with a call)
            Kind::Job(Some(errand)) => match errand.peek() {
                Some(Ok(value)) => raw_value(value),
                _ => None,
            },
            Kind::Job(None) => None,
        };
        let Some((kind, num, bytes)) = found else {
            return false;
        };
        let posted = Posted {
            id: id as f64,
            num,
            ptr: bytes.as_ptr() as *const std::ffi::c_char,
            len: bytes.len(),
            kind,
        };
        let done = mailbox.post(index_of(id), posted);
        if done {
            self.posted.borrow_mut().push(id);
        }
        done
    }

    /// Frees the slots of the tasks whose results their callers read from
    /// the mailbox (see `mailbox.rs`). Called by the poll, before it posts
    /// more, and before the tasks are counted.
    pub(crate) fn reap(&self, waiters: &Waiters) {
        let Some(mailbox) = self.mailbox.get() else {
            return;
        };
        // (release and retire below touch neither; and a posted result is
        // a value of this crate's, see `post_result`: dropping it runs no
        // code of the module's)
        let mut posted = self.posted.borrow_mut();
        let mut slots = self.slots.borrow_mut();
        let mut i = 0;
        while i < posted.len() {
            let id = posted[i];
            if mailbox.id(index_of(id)) != 0.0 {
                // not read yet: its caller has not resumed
                i += 1;
                continue;
            }
            posted.swap_remove(i);
            if let Some(mut slot) = slots.remove(id) {
                self.release(waiters, slot.waiter.take());
                self.retire(slot.kind);
            }
        }
    }

    /// Forgets that the result of task `id`, whose slot `slot` was just
    /// removed, is in the mailbox: its caller, if it still resumes, takes
    /// nothing from there.
    fn unpost(&self, id: TaskId, slot: &Slot) {
        if !slot.posted {
            return;
        }
        if let Some(mailbox) = self.mailbox.get() {
            mailbox.clear(index_of(id), id as f64);
        }
        let mut posted = self.posted.borrow_mut();
        if let Some(i) = posted.iter().position(|&p| p == id) {
            posted.swap_remove(i);
        }
    }

    /// Gives back the semaphore of a slot's waiter (its caller resumed, or
    /// is gone).
    fn release(&self, waiters: &Waiters, waiter: Option<Waiter>) {
        if let Some(w) = waiter {
            self.waiting.set(self.waiting.get() - 1);
            waiters.give_back(w);
        }
    }

    /// The waiters ngx_lua killed (see [`Waiters::sweep`]) are given back,
    /// and their tasks handed to `dead`.
    pub(crate) fn sweep(&self, waiters: &Waiters, mut dead: impl FnMut(TaskId)) {
        if self.waiting.get() == 0 {
            return;
        }
        for (id, slot) in self.slots.borrow_mut().iter_mut() {
            if slot.waiter.as_mut().is_some_and(Waiters::is_dead) {
                // (given back here: the task's cancel keeps a live one)
                self.release(waiters, slot.waiter.take());
                dead(id);
            }
        }
    }

    /// Whether a caller that ngx_lua has not killed waits for task `id`.
    pub(crate) fn is_waited(&self, id: TaskId) -> bool {
        let mut slots = self.slots.borrow_mut();
        slots
            .get_mut(id)
            .and_then(|s| s.waiter.as_ref())
            .is_some_and(Waiters::is_live)
    }

    /// Callers waiting for plain tasks (a posted one until its task is
    /// taken, or freed after its caller read the result).
    pub(crate) fn waiting(&self) -> usize {
        self.waiting.get()
    }

    /// Tasks pending, or finished and not handed to a caller (as
    /// [`PlainTasks::len`], less those whose posted callers have their
    /// results).
    pub(crate) fn unposted(&self) -> usize {
        self.slots.borrow().len.saturating_sub(self.posted.borrow().len())
    }

    /// The result of a finished task, as its job made it, which frees its
    /// slot; one that only mlua can convert stays for
    /// [`PlainTasks::take_lua`].
    pub(crate) fn take_raw(&self, waiters: &Waiters, id: TaskId) -> Taken {
        let mut slots = self.slots.borrow_mut();
        let Some(slot) = slots.get_mut(id) else {
            return Taken::Unknown;
        };
        // (its caller runs now: a waiter it had is over)
        let waiter = slot.waiter.take();
        // (a held result is one that needs mlua)
        let taken = if slot.held.is_some() {
            Taken::NeedsLua
        } else {
            match &mut slot.kind {
                Kind::Job(None) => Taken::Pending,
                Kind::Job(Some(errand)) => match errand.take() {
                    res @ Ok(Sendable::Other(_)) => {
                        slot.held = Some(Box::new(res));
                        Taken::NeedsLua
                    }
                    res => Taken::Raw(res),
                },
                Kind::Sleep(_) if slot.done => Taken::Raw(Ok(Sendable::Boolean(true))),
                Kind::Sleep(_) => Taken::Pending,
            }
        };
        // (the slot stays while a result is pending or needs mlua)
        let spent = match taken {
            Taken::Raw(_) => slots.remove(id),
            _ => None,
        };
        drop(slots);
        if let Some(slot) = &spent {
            self.unpost(id, slot);
        }
        self.release(waiters, waiter);
        if let Some(slot) = spent {
            self.retire(slot.kind);
        }
        taken
    }

    /// The outcome of a finished task as Lua values, which frees its
    /// slot. `None` if the task is unknown or not finished.
    pub(crate) fn take_lua(&self, lua: &Lua, waiters: &Waiters, id: TaskId) -> Option<Outcome<LuaOutput>> {
        let res = match self.take_raw(waiters, id) {
            Taken::Raw(res) => res,
            Taken::NeedsLua => {
                let slot = self.slots.borrow_mut().remove(id)?;
                let res = *slot.held?;
                self.retire(slot.kind);
                res
            }
            Taken::Unknown | Taken::Pending => return None,
        };
        // (Converted without a borrow of the slots: making Lua values may
        // run a garbage collection step, whose finalizers may call back
        // into this runtime.)
        Some(outcome(lua, res))
    }

    /// Frees a task whose result was taken; its errand's memory is kept
    /// for the next job (see `blocks.rs`).
    fn retire(&self, kind: Kind) {
        if let Kind::Job(Some(job)) = kind {
            self.blocks.keep(job);
        }
    }

    /// Throws a task away: a job that has not started will not run, a
    /// sleep's deadline is removed, a result is dropped. Returns whether
    /// the task existed.
    pub(crate) fn cancel(&self, waiters: &Waiters, id: TaskId) -> bool {
        let slot = self.slots.borrow_mut().remove(id);
        let Some(mut slot) = slot else { return false };
        self.unpost(id, &slot);
        if let Some(w) = slot.waiter.take() {
            self.waiting.set(self.waiting.get() - 1);
            waiters.keep_cancelled(id, w);
        }
        if !slot.done {
            self.cancelled.set(self.cancelled.get() + 1);
        }
        match slot.kind {
            Kind::Sleep(key) => {
                self.timers.remove(key);
            }
            // queued or running: not run, or dropped when it comes back
            Kind::Job(None) => self.back.cancel(id),
            Kind::Job(Some(_)) => {}
        }
        // (after the borrow)
        drop_result(slot);
        true
    }

    /// Throws every task away (see [`PlainTasks::cancel`]).
    pub(crate) fn shutdown(&self, waiters: &Waiters) {
        let ids: Vec<TaskId> = self.slots.borrow_mut().iter_mut().map(|(id, _)| id).collect();
        for id in ids {
            self.cancel(waiters, id);
        }
    }

    /// Tasks pending, or finished and not taken.
    pub(crate) fn len(&self) -> usize {
        self.slots.borrow().len
    }

    /// Counts a task that was done at once (a zero sleep; a job the pool
    /// refused) and so never had a slot.
    pub(crate) fn count_ready(&self) {
        self.completed.set(self.completed.get() + 1);
    }

    /// Tasks done.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.get()
    }

    /// Tasks cancelled before they were done.
    pub(crate) fn cancelled(&self) -> u64 {
        self.cancelled.get()
    }

    /// Makes the table of slots full at `n` slots.
    #[cfg(test)]
    pub(crate) fn limit_slots_for_test(&self, n: usize) {
        self.slots.borrow_mut().limit = Some(n);
    }

    /// Sets how many times the slot of `id` (empty) was used, to test its
    /// last use.
    #[cfg(test)]
    pub(crate) fn set_uses(&self, id: TaskId, uses: u32) {
        self.slots.borrow_mut().entries[index_of(id)].0 = uses;
    }

    /// Gives task `id` a waiter (see [`Waiter::for_test`]), as a wait
    /// would.
    #[cfg(test)]
    pub(crate) fn wait_for_test(&self, id: TaskId) {
        self.slots.borrow_mut().get_mut(id).expect("a task").waiter = Some(Waiter::for_test());
        self.waiting.set(self.waiting.get() + 1);
    }

    /// The most uses of a slot (see [`INDEX_BITS`]).
    #[cfg(test)]
    pub(crate) const MAX_USES: u32 = USES_MASK;

    /// Jobs cancelled that have not come back or been skipped yet.
    #[cfg(test)]
    pub(crate) fn cancelled_on_their_way(&self) -> usize {
        self.back.cancelled().len()
    }
}

/// Drops `v`, which may hold a job's result nobody takes: its drop is the
/// module's code, and a panic in it must not unwind through the poll (the
/// other jobs it collects would be lost, and the driver restarted) or
/// through a cancel. Such a panic is printed by the panic hook, as others
/// caught here are, and otherwise ignored: nobody waits for that result.
fn drop_result<T>(v: T) {
    let _ = crate::panic::catch(AssertUnwindSafe(move || drop(v)));
}

/// Why a task is refused when every slot is taken.
fn too_many_tasks() -> String {
    format!("resty.async: more than {} tasks at once", INDEX_MASK + 1)
}

/// A job's result as a task outcome: a panic as the executor reports a
/// task's, the pool's other errors as `nil, message`.
///
/// The conversion runs the result type's `IntoLuaMulti`, user code: a
/// panic in it is the task's panic, as it is in a future's poll.
pub(crate) fn outcome(lua: &Lua, res: Result<Sendable, PoolError>) -> Outcome<LuaOutput> {
    match res {
        Ok(values) => {
            crate::panic::catch(AssertUnwindSafe(|| values.into_lua(lua))).map_err(Panicked::from_payload)
        }
        Err(PoolError::Panicked(msg)) => Err(Panicked(msg)),
        Err(e) => Ok(Err(mlua::Error::RuntimeError(e.to_string()))),
    }
}
