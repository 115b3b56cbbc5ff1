//! When a queued pool job wakes a pool thread: the one policy for it.
//!
//! Under load, many requests queue jobs in one cycle of nginx's event loop.
//! The first job after a driver poll wakes a thread at once (it starts
//! working while nginx goes on); the others are taken by a thread already
//! awake, or share one wake-up when the driver polls at the end of the
//! cycle. This saves a `futex` call per job. A call made while no other
//! task is in flight (pending, or finished and not yet collected) wakes a
//! thread at once: deferring would only add latency. So does a call made
//! while no driver is connected (it may be waiting out a restart delay).
//!
//! Whoever queues a deferred job must make the driver run soon: a spawning
//! call reports it to Lua (the raw calling convention's negative task id),
//! which kicks the driver; the driver's idle poll (every 0.1 s) is the
//! safety net.

use std::cell::Cell;

use crate::pool::{Pool, WakeUp};

/// The batching state of one runtime.
#[derive(Default)]
pub(crate) struct WakeBatch {
    /// Jobs queued now may wait for a shared wake-up.
    defer: Cell<bool>,
    /// Jobs were queued without a wake-up: [`WakeBatch::flush`] owes one.
    owed: Cell<bool>,
    /// A driver is connected (and will poll, which flushes).
    driven: Cell<bool>,
    /// A job queued since the last driver poll woke a thread itself.
    woken: Cell<bool>,
}

impl WakeBatch {
    /// Runs `f`, a call from Lua that may queue jobs, deferring their
    /// wake-ups when `busy` (other tasks are in flight) and a driver is
    /// connected; tells the pool whether its caller is busy.
    pub(crate) fn call<R>(&self, pool: &Pool, busy: bool, f: impl FnOnce() -> R) -> R {
        let busy = busy && self.driven.get();
        pool.set_caller_busy(busy);
        self.deferring(busy, f)
    }

    /// Runs `f` with deferred wake-ups on or off; restored after, even if
    /// `f` unwinds.
    pub(crate) fn deferring<R>(&self, on: bool, f: impl FnOnce() -> R) -> R {
        struct Restore<'a>(&'a Cell<bool>, bool);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                self.0.set(self.1);
            }
        }
        let _restore = Restore(&self.defer, self.defer.replace(on));
        f()
    }

    /// How a job queued now should wake a thread. A deferred one leaves a
    /// wake-up owed.
    pub(crate) fn wake_up(&self) -> WakeUp {
        if self.defer.get() && self.woken.get() {
            self.owed.set(true);
            WakeUp::Deferred
        } else {
            self.woken.set(true);
            WakeUp::Now
        }
    }

    /// Whether a wake-up is owed: the driver must run before nginx sleeps.
    pub(crate) fn owed(&self) -> bool {
        self.owed.get()
    }

    /// Wakes the pool for the jobs queued without a wake-up.
    pub(crate) fn flush(&self, pool: &Pool) {
        if self.owed.replace(false) {
            // A failure to start a thread was reported when the first job
            // was queued (a deferred job starts the first thread at once).
            let _ = pool.wake();
        }
    }

    /// A driver poll begins: flushes, and the next job wakes a thread at
    /// once again.
    pub(crate) fn new_cycle(&self, pool: &Pool) {
        self.flush(pool);
        self.woken.set(false);
    }

    /// Whether a driver is connected.
    pub(crate) fn set_driven(&self, driven: bool) {
        self.driven.set(driven);
    }
}
