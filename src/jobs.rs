//! Pool jobs as tasks of their own, without a future.
//!
//! A blocking call (`Module::add_blocking`, the built-ins `sha256`,
//! `read_file` and `write_file`) needs no future: its job runs on the pool,
//! and its result becomes Lua values on the worker. Run as a future that
//! awaits a [`crate::BlockingTask`], it would cost a task allocation (about
//! 400 bytes, past what glibc keeps per thread under load), two polls, a
//! waker and a run-queue entry. Here the pool reports the job's task id (its
//! tag, see [`Pool::spawn_tagged`]) on a channel and asks for a driver poll,
//! which hands the id on with the executor's finished tasks. Ids come from
//! the executor: the two kinds of task share one id space.

use std::cell::{Cell, RefCell};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use mlua::Lua;

use crate::executor::{IdMap, Outcome, TaskId};
use crate::pool::{Pool, PoolError, Tagged, WakeUp};
use crate::runtime::LuaOutput;
use crate::socket::Notifier;
use crate::values::Sendable;

struct Slot {
    job: Tagged<Sendable>,
    /// The pool reported the job as done.
    done: bool,
    /// Its result as Lua values, made when first asked for and kept until
    /// taken.
    out: Option<Outcome<LuaOutput>>,
}

/// The pool jobs of a runtime. See the module docs.
pub(crate) struct Jobs {
    done_rx: Receiver<TaskId>,
    slots: RefCell<IdMap<Slot>>,
    completed: Cell<u64>,
    cancelled: Cell<u64>,
}

impl Jobs {
    /// Jobs of `pool`, whose threads report each one to `notifier`.
    pub(crate) fn new(pool: &Pool, notifier: Arc<Notifier>) -> Jobs {
        let (done_tx, done_rx) = crossbeam_channel::unbounded();
        let set = pool.set_on_done(move |id| {
            // The receiver lives as long as the pool's runtime.
            if done_tx.send(id).is_ok() {
                notifier.notify();
            }
        });
        assert!(set, "a pool serves one Jobs");
        Jobs {
            done_rx,
            slots: RefCell::new(IdMap::default()),
            completed: Cell::new(0),
            cancelled: Cell::new(0),
        }
    }

    /// Queues `job` on `pool` as task `id`.
    pub(crate) fn spawn(
        &self,
        pool: &Pool,
        id: TaskId,
        job: impl FnOnce() -> Sendable + Send + 'static,
        wake: WakeUp,
    ) -> Result<(), PoolError> {
        let job = pool.spawn_tagged(job, id, wake)?;
        let slot = Slot {
            job,
            done: false,
            out: None,
        };
        self.slots.borrow_mut().insert(id, slot);
        Ok(())
    }

    /// Hands the ids of the jobs reported done since the last call to `f`
    /// (a job cancelled meanwhile is skipped).
    pub(crate) fn take_completed(&self, mut f: impl FnMut(TaskId)) {
        while let Ok(id) = self.done_rx.try_recv() {
            let known = match self.slots.borrow_mut().get_mut(&id) {
                Some(slot) => {
                    slot.done = true;
                    true
                }
                None => false,
            };
            if known {
                self.completed.set(self.completed.get() + 1);
                f(id);
            }
        }
    }

    /// The outcome of a finished job, which frees its slot, if `pred`
    /// accepts it (otherwise the job keeps it). `None` if the job is unknown
    /// or not finished.
    pub(crate) fn take_if(
        &self,
        lua: &Lua,
        id: TaskId,
        pred: impl FnOnce(&Outcome<LuaOutput>) -> bool,
    ) -> Option<Outcome<LuaOutput>> {
        let fresh = {
            let slots = self.slots.borrow();
            let slot = slots.get(&id)?;
            match slot.out {
                Some(_) => None,
                None => Some(slot.job.try_take()?),
            }
        };
        if let Some(res) = fresh {
            // Made without a borrow of the slots: making a Lua string may
            // run a garbage collection step, whose finalizers may call back
            // into this runtime.
            let out = outcome(lua, res);
            let mut slots = self.slots.borrow_mut();
            // (Gone if such a finalizer cancelled the job: so is its result.)
            slots.get_mut(&id)?.out = Some(out);
        }
        let mut slots = self.slots.borrow_mut();
        if !pred(slots.get(&id)?.out.as_ref()?) {
            return None;
        }
        let slot = slots.remove(&id)?;
        drop(slots);
        slot.out
    }

    /// Throws a job away: one that has not started will not run; a result
    /// is dropped. Returns whether the job existed.
    pub(crate) fn cancel(&self, id: TaskId) -> bool {
        let slot = self.slots.borrow_mut().remove(&id);
        let Some(slot) = slot else { return false };
        if !slot.done {
            self.cancelled.set(self.cancelled.get() + 1);
        }
        drop(slot); // after the borrow: the closure's drop is user code
        true
    }

    /// Jobs queued, running, or finished and not taken.
    pub(crate) fn len(&self) -> usize {
        self.slots.borrow().len()
    }

    /// Jobs reported done.
    pub(crate) fn completed(&self) -> u64 {
        self.completed.get()
    }

    /// Jobs cancelled before they were reported done.
    pub(crate) fn cancelled(&self) -> u64 {
        self.cancelled.get()
    }
}

/// A job's result as a task outcome: a panic as the executor reports a
/// task's, the pool's other errors as `nil, message`.
fn outcome(lua: &Lua, res: Result<Sendable, PoolError>) -> Outcome<LuaOutput> {
    match res {
        Ok(values) => Ok(values.into_lua(lua)),
        Err(PoolError::Panicked(p)) => Err(p),
        Err(e) => Ok(Err(mlua::Error::RuntimeError(e.to_string()))),
    }
}
