//! Timers kept by the runtime and fired by the driver.
//!
//! There is no timer thread: the driver asks [`Timers::next_deadline`] and
//! waits on an `ngx.semaphore` with that timeout, so nginx's own timer tree
//! wakes the worker; then [`Timers::fire`] wakes every task whose deadline has passed.
//! A [`Sleep`] dropped before its deadline removes its entry at once.
//!
//! Deadlines are kept in whole milliseconds on nginx's own clock
//! ([`Clock`]), the cached clock of its timers and `ngx.sleep`: the
//! driver's wait ends on the very millisecond of the first deadline, and
//! reading the clock is a load, not a system call.
//!
//! A deadline may also stand for a task of its own, without a future
//! ([`Timers::add_task`]: the runtime's `async.sleep`): firing it records
//! the task's id, which [`Timers::take_fired`] hands over.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::c_void;
use std::future::Future;
use std::pin::Pin;
use std::rc::{Rc, Weak};
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

/// A point in time on a [`Clock`], in milliseconds.
pub type Ms = u64;

/// Identifies a pending deadline (see [`Timers::add_task`]).
pub type Key = (Ms, u64);

/// The clock a runtime's timers run on, in milliseconds.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Clock {
    /// nginx's `ngx_current_msec`, which nginx reads from the monotonic
    /// clock once per turn of its event loop and runs its timers (and
    /// `ngx.sleep`) on: the address of that word.
    Nginx(usize),
    /// This process's own monotonic clock: outside nginx (the crate's
    /// tests, the `testing` harness), on another thread than nginx's, or
    /// where nginx's clock is 32 bits wide and wraps.
    Own,
}

impl Clock {
    /// nginx's clock on nginx's own thread (the process's main thread),
    /// if nginx is there; the process's own clock elsewhere.
    pub(crate) fn for_this_thread() -> Clock {
        static CURRENT_MSEC: OnceLock<Option<usize>> = OnceLock::new();
        let found = CURRENT_MSEC.get_or_init(|| {
            if !cfg!(target_pointer_width = "64") {
                return None;
            }
            // SAFETY: dlsym only reads the loader's tables.
            let p: *mut c_void = unsafe { libc::dlsym(libc::RTLD_DEFAULT, c"ngx_current_msec".as_ptr()) };
            (!p.is_null()).then_some(p as usize)
        });
        match *found {
            Some(p) if crate::sys::is_main_thread() => Clock::Nginx(p),
            _ => Clock::Own,
        }
    }

    /// Now, in milliseconds.
    pub(crate) fn now(self) -> Ms {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        match self {
            // SAFETY: the address is nginx's `volatile ngx_msec_t
            // ngx_current_msec` (a 64-bit `uintptr_t`, aligned, alive as
            // long as the process). nginx writes it on the process's main
            // thread; this clock is used on that thread only (it belongs
            // to timers made there, which are not `Send`), so the read
            // never races the write.
            Clock::Nginx(p) => unsafe { std::ptr::read_volatile(p as *const usize) as Ms },
            Clock::Own => EPOCH.get_or_init(Instant::now).elapsed().as_millis() as Ms,
        }
    }
}

/// How far a deadline may be: longer waits are cut to this (never, in
/// practice), which keeps deadlines within what an `Instant` and the
/// millisecond keys hold.
const FAR: Duration = Duration::from_secs(86400 * 365 * 30);

/// `dur` in whole milliseconds, rounded up (a deadline is never early on
/// its clock), at most [`FAR`].
pub(crate) fn ceil_ms(dur: Duration) -> Ms {
    const MAX: Ms = FAR.as_millis() as Ms;
    let ms = dur.as_millis().min(MAX as u128) as Ms;
    ms + Ms::from(!dur.subsec_nanos().is_multiple_of(1_000_000) && ms < MAX)
}

/// What firing a deadline does.
#[derive(Debug)]
enum Entry {
    /// Wakes a [`Sleep`]'s task.
    Wake(Waker),
    /// Records this task id for [`Timers::take_fired`].
    Task(u64),
}

/// The pending entries, ordered by key. Most deadlines come in order (a
/// worker's sleeps mostly have the same few lengths, and keys grow with
/// the clock and a sequence number): those are appended to a queue, the
/// others go to a tree. Removing from the middle of the queue leaves a gap,
/// never at its ends, compacted when gaps are most of it.
#[derive(Default)]
struct Deadlines {
    /// Keys increasing; `None`: removed.
    ordered: VecDeque<(Key, Option<Entry>)>,
    gaps: usize,
    others: BTreeMap<Key, Entry>,
    #[cfg(test)]
    compactions: usize,
}

impl Deadlines {
    fn len(&self) -> usize {
        self.ordered.len() - self.gaps + self.others.len()
    }

    fn insert(&mut self, key: Key, entry: Entry) {
        if self.ordered.back().is_none_or(|(last, _)| *last < key) {
            self.ordered.push_back((key, Some(entry)));
        } else {
            self.others.insert(key, entry);
        }
    }

    fn position(&self, key: &Key) -> Option<usize> {
        self.ordered.binary_search_by(|(k, _)| k.cmp(key)).ok()
    }

    fn get_mut(&mut self, key: &Key) -> Option<&mut Entry> {
        match self.position(key) {
            Some(i) => self.ordered[i].1.as_mut(),
            None => self.others.get_mut(key),
        }
    }

    fn remove(&mut self, key: &Key) -> Option<Entry> {
        let Some(i) = self.position(key) else {
            return self.others.remove(key);
        };
        let entry = self.ordered[i].1.take()?;
        self.gaps += 1;
        if i == 0 || i + 1 == self.ordered.len() {
            self.trim_gaps();
        } else if self.gaps > 32 && self.gaps * 2 > self.ordered.len() {
            self.ordered.retain(|(_, e)| e.is_some());
            self.gaps = 0;
            #[cfg(test)]
            {
                self.compactions += 1;
            }
        }
        Some(entry)
    }

    /// Keeps both ends of the queue entries (or the queue empty): pop_due
    /// takes from the front, and a gap at the back (a cancelled long
    /// deadline) would send every shorter one after it to the tree.
    fn trim_gaps(&mut self) {
        self.trim_front();
        while let Some((_, None)) = self.ordered.back() {
            self.ordered.pop_back();
            self.gaps -= 1;
        }
    }

    /// The front half of [`Deadlines::trim_gaps`].
    fn trim_front(&mut self) {
        while let Some((_, None)) = self.ordered.front() {
            self.ordered.pop_front();
            self.gaps -= 1;
        }
    }

    fn first_key(&self) -> Option<Key> {
        let queued = self.ordered.front().map(|(k, _)| *k);
        let other = self.others.keys().next().copied();
        match (queued, other) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes and returns the first entry if its deadline is at or before
    /// `now`. (The queue's front is never a gap, see `trim_gaps`; the tree
    /// is empty most of the time, which costs one look.)
    fn pop_due(&mut self, now: Ms) -> Option<Entry> {
        let queued = self.ordered.front().map(|(k, _)| *k);
        if let Some((&first, _)) = self.others.first_key_value() {
            if first.0 <= now && queued.is_none_or(|q| first < q) {
                return self.others.remove(&first);
            }
        }
        if queued?.0 > now {
            return None;
        }
        let entry = self.ordered.pop_front().and_then(|(_, e)| e);
        // (only the front changed: the back keeps its entry, or the queue
        // is empty)
        self.trim_front();
        entry
    }
}

struct Queue {
    clock: Clock,
    entries: Deadlines,
    seq: u64,
    // Ids of the task entries fired and not yet taken.
    fired: Vec<u64>,
    // The deadline the driver is sleeping towards (None: an idle wait), and
    // whether an earlier one has been added since it armed.
    armed: Option<Ms>,
    rearm: bool,
}

impl Queue {
    #[inline(always)]
    fn add(&mut self, key: Key, entry: Entry) {
        if self.armed.is_none_or(|a| key.0 < a) {
            self.rearm = true;
        }
        self.entries.insert(key, entry);
    }
}

/// The ordered set of pending deadlines of one runtime (worker thread only).
#[derive(Clone)]
pub struct Timers {
    queue: Rc<RefCell<Queue>>,
}

impl Default for Timers {
    fn default() -> Timers {
        Timers::new()
    }
}

impl Timers {
    /// An empty set, on the clock of this thread ([`Clock::for_this_thread`]).
    pub fn new() -> Timers {
        Timers {
            queue: Rc::new(RefCell::new(Queue {
                clock: Clock::for_this_thread(),
                entries: Deadlines::default(),
                seq: 0,
                fired: Vec::new(),
                armed: None,
                rearm: false,
            })),
        }
    }

    /// Now, on the clock of these timers, in milliseconds.
    pub fn now(&self) -> Ms {
        self.queue.borrow().clock.now()
    }

    /// A future that completes once `deadline` has passed.
    pub fn sleep_until(&self, deadline: Instant) -> Sleep {
        Sleep {
            deadline,
            key: None,
            queue: Rc::downgrade(&self.queue),
            tasks_only: false,
        }
    }

    /// A future that completes after `dur`.
    pub fn sleep(&self, dur: Duration) -> Sleep {
        let now = Instant::now();
        // (FAR when past what an `Instant` holds)
        self.sleep_until(now.checked_add(dur).unwrap_or(now + FAR))
    }

    /// The deadline `dur` from now, on the clock of these timers.
    #[inline(always)]
    pub fn deadline_ms(&self, dur: Duration) -> Ms {
        self.now().saturating_add(ceil_ms(dur))
    }

    /// Fires (and forgets) every timer due at `now` (on the clock of these
    /// timers): wakes the tasks of [`Sleep`]s, records the ids of task
    /// entries. Returns how many.
    pub fn fire(&self, now: Ms) -> usize {
        // (Vec::new allocates nothing until a waker is pushed)
        let mut wakers = Vec::new();
        let n = {
            let mut q = self.queue.borrow_mut();
            let mut n = 0;
            // The entries are taken one by one from the front: nothing due
            // (the common case of a poll) costs one look.
            while let Some(entry) = q.entries.pop_due(now) {
                match entry {
                    Entry::Wake(w) => wakers.push(w),
                    Entry::Task(id) => q.fired.push(id),
                }
                n += 1;
            }
            n
        };
        // Woken outside the borrow: a waker may run arbitrary code.
        for w in wakers {
            w.wake();
        }
        n
    }

    /// A deadline that stands for task `id`: when it fires, `id` goes to
    /// [`Timers::take_fired`]. Remove it with [`Timers::remove`] to cancel.
    #[inline(always)]
    pub fn add_task(&self, deadline: Ms, id: u64) -> Key {
        let mut q = self.queue.borrow_mut();
        q.seq += 1;
        let key = (deadline, q.seq);
        q.add(key, Entry::Task(id));
        key
    }

    /// Removes the entry of `key` if it has not fired; returns whether it
    /// was there.
    pub fn remove(&self, key: Key) -> bool {
        let removed = self.queue.borrow_mut().entries.remove(&key);
        removed.is_some() // (a waker is dropped outside the borrow)
    }

    /// Hands the ids of the task entries fired since the last call to `f`.
    pub fn take_fired(&self, mut f: impl FnMut(u64)) {
        let mut fired = std::mem::take(&mut self.queue.borrow_mut().fired);
        for id in fired.drain(..) {
            f(id);
        }
        // (the buffer goes back, to keep its capacity)
        let mut q = self.queue.borrow_mut();
        if q.fired.is_empty() {
            q.fired = fired;
        }
    }

    /// The earliest pending deadline.
    pub fn next_deadline(&self) -> Option<Ms> {
        self.queue.borrow().entries.first_key().map(|k| k.0)
    }

    /// Records that the driver now sleeps until the next deadline.
    pub fn arm(&self) -> Option<Ms> {
        let mut q = self.queue.borrow_mut();
        q.armed = q.entries.first_key().map(|k| k.0);
        q.rearm = false;
        q.armed
    }

    /// Whether a deadline earlier than the armed one was added since the
    /// last `arm` (the driver must wake and re-arm); clears the flag.
    pub fn take_rearm(&self) -> bool {
        std::mem::take(&mut self.queue.borrow_mut().rearm)
    }

    /// Pending timers.
    pub fn len(&self) -> usize {
        self.queue.borrow().entries.len()
    }

    /// Whether no timer is pending.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A future that completes at its deadline: see [`crate::sleep`].
///
/// Not `Send`: it belongs to the worker thread's runtime.
#[derive(Debug)]
pub struct Sleep {
    deadline: Instant,
    key: Option<Key>,
    queue: Weak<RefCell<Queue>>,
    /// Whether a poll outside a task of the executor panics.
    tasks_only: bool,
}

/// Why a [`Sleep`] of a module's code was polled in vain.
const OUTSIDE_TASK: &str = "resty_async::sleep must be awaited in a task of resty-async on the nginx \
    worker (an add_async function, an async method, spawn_local): polled elsewhere (block_on in \
    a plain or blocking function) nothing would ever fire it";

impl Sleep {
    /// When it completes.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The same sleep, which panics when polled by a module's code outside
    /// a task of the executor. Only the driver fires timers, between the
    /// executor's polls: `block_on` of a sleep in a module's plain function
    /// would hang the worker for good, one on a pool thread that thread.
    pub(crate) fn tasks_only(mut self) -> Sleep {
        self.tasks_only = true;
        self
    }
}

impl Future for Sleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // (Outside any code of a module that resty-async runs, this is mlua
        // polling an async method or function called directly, which yields
        // next: resty.async's guard of that yield raises the error that
        // says what to register.)
        if self.tasks_only && !crate::executor::in_poll() && crate::panic::catching() {
            panic!("{OUTSIDE_TASK}");
        }
        if Instant::now() >= self.deadline {
            self.unregister();
            return Poll::Ready(());
        }
        let Some(queue) = self.queue.upgrade() else {
            // The runtime is gone: nobody would ever fire us. Complete
            // rather than hang forever.
            return Poll::Ready(());
        };
        let mut q = queue.borrow_mut();
        if let Some(key) = self.key {
            match q.entries.get_mut(&key) {
                Some(Entry::Wake(w)) => {
                    if !w.will_wake(cx.waker()) {
                        w.clone_from(cx.waker());
                    }
                    return Poll::Pending;
                }
                Some(Entry::Task(_)) => unreachable!("a Sleep's key is its own"),
                // `fire` took it before the deadline, which nginx's clock
                // allows, as it lags the monotonic clock by as much as the
                // current turn of its event loop took: registered again
                // below, a millisecond or more ahead.
                None => {}
            }
        }
        q.seq += 1;
        let left = self.deadline.saturating_duration_since(Instant::now());
        let key = (q.clock.now().saturating_add(ceil_ms(left)), q.seq);
        q.add(key, Entry::Wake(cx.waker().clone()));
        drop(q);
        self.key = Some(key);
        Poll::Pending
    }
}

impl Sleep {
    fn unregister(&mut self) {
        if let (Some(key), Some(queue)) = (self.key.take(), self.queue.upgrade()) {
            let removed = queue.borrow_mut().entries.remove(&key);
            drop(removed);
        }
    }
}

impl Drop for Sleep {
    fn drop(&mut self) {
        self.unregister();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random inserts, cancels of pending keys and firings, in several
    /// mixes of deadline lengths, against a sorted set; counts where the
    /// entries went, so that both halves and the compaction are exercised.
    #[test]
    fn deadlines_behave_like_a_sorted_set() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        let (mut queued, mut compactions) = (0, 0);
        let mut from_back = 0;
        // (percent of deadlines of another length, percent of cancels)
        for (odd, cancel) in [(0, 10), (0, 60), (2, 30), (10, 30), (50, 50)] {
            let start: Ms = 1_000;
            let mut d = Deadlines::default();
            let mut model = BTreeMap::new();
            let mut live: Vec<Key> = Vec::new();
            let (mut now, mut seq) = (start, 0u64);
            for _ in 0..20_000 {
                seq += 1;
                let ms = if next(100) < odd { next(50) } else { 10 };
                let key = (now + ms, seq);
                let before = d.ordered.len();
                d.insert(key, Entry::Task(seq));
                queued += usize::from(d.ordered.len() > before);
                model.insert(key, seq);
                live.push(key);
                if next(100) < cancel {
                    let k = live.swap_remove(next(live.len() as u64) as usize);
                    let at_back = d.ordered.back().is_some_and(|(b, _)| *b == k);
                    let got = d
                        .remove(&k)
                        .map(|e| matches!(e, Entry::Task(id) if Some(&id) == model.get(&k)));
                    assert_eq!(got, model.remove(&k).map(|_| true));
                    from_back += usize::from(at_back);
                    assert!(d.ordered.back().is_none_or(|(_, e)| e.is_some()));
                }
                if next(4) == 0 {
                    now += next(3);
                    while let Some(e) = d.pop_due(now) {
                        let (k, id) = model.pop_first().unwrap();
                        assert!(k.0 <= now);
                        assert!(matches!(e, Entry::Task(got) if got == id));
                        live.retain(|l| *l != k);
                    }
                    assert!(model.first_key_value().is_none_or(|(k, _)| k.0 > now));
                }
                assert_eq!(d.len(), model.len());
                assert_eq!(d.first_key(), model.keys().next().copied());
                assert!(d.ordered.front().is_none_or(|(_, e)| e.is_some()));
                assert!(d.gaps <= model.len() + 33);
            }
            compactions += d.compactions;
        }
        assert!(queued > 40_000, "the queue took its share: {queued}");
        assert!(compactions > 0 && from_back > 0, "{compactions} {from_back}");
    }
}
