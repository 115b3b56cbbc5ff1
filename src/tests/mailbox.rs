//! Results the poll leaves in the mailbox for posted callers
//! (`mailbox.rs`): read without a call, their tasks freed by the next reap,
//! and emptied when their tasks go first.

use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::ffi::{KIND_BOOLEAN, KIND_ERROR, KIND_STRING};
use crate::futureless::{PlainTasks, Taken};
use crate::mailbox::{Mailbox, Posted, CAPACITY};
use crate::pool::{Pool, WakeUp};
use crate::sendable::{Bytes, Sendable};
use crate::socket::Notifier;
use crate::timer::Timers;
use crate::waiters::Waiters;

struct Fixture {
    pool: Pool,
    plain: PlainTasks,
    waiters: Waiters,
    mailbox: Rc<Mailbox>,
    entries: *mut Posted,
}

fn fixture(timers: &Timers) -> Fixture {
    let plain = PlainTasks::new(timers, Arc::new(Notifier::default()));
    let mailbox = Rc::new(Mailbox::default());
    let (entries, cap) = mailbox.get();
    assert_eq!(cap, CAPACITY);
    plain.set_mailbox(Rc::clone(&mailbox));
    Fixture {
        pool: Pool::new(1, 8),
        plain,
        waiters: Waiters::default(),
        mailbox,
        entries,
    }
}

impl Fixture {
    /// The entry of task `id`, as the Lua side reads it.
    fn entry(&self, id: u64) -> Posted {
        let index = (id % (1 << 24)) as usize;
        assert!(index < CAPACITY);
        // SAFETY: an entry of the table, which `self.mailbox` keeps.
        unsafe { self.entries.add(index).read() }
    }

    /// Marks the entry of task `id` read, as the Lua side does.
    fn mark_read(&self, id: u64) {
        let index = (id % (1 << 24)) as usize;
        assert!(index < CAPACITY && self.mailbox.id(index) == id as f64);
        // SAFETY: as in `entry`.
        unsafe { (*self.entries.add(index)).id = 0.0 };
    }

    /// The bytes of the entry of task `id`.
    fn bytes(&self, id: u64) -> Vec<u8> {
        let e = self.entry(id);
        assert_eq!(e.id, id as f64);
        // SAFETY: the poll's pointer to the result's bytes, which stay in
        // the task's slot while the entry holds its id.
        unsafe { std::slice::from_raw_parts(e.ptr as *const u8, e.len) }.to_vec()
    }

    /// A job of `result` whose caller waits; polls until the poll posted
    /// it (and left its result in the mailbox).
    fn posted_job(&self, result: impl FnOnce() -> Sendable + Send + 'static) -> u64 {
        let id = self.plain.spawn_job(&self.pool, result, WakeUp::Now).unwrap();
        self.plain.wait_for_test(id);
        let until = Instant::now() + Duration::from_secs(5);
        while self.entry(id).id != id as f64 {
            assert!(Instant::now() < until, "the result was not posted");
            self.plain
                .take_completed(&self.waiters, |other| panic!("task {other} was not posted"));
            std::thread::sleep(Duration::from_millis(1));
        }
        id
    }
}

#[test]
fn a_posted_result_is_read_there_and_its_task_freed_by_the_next_reap() {
    let f = fixture(&Timers::new());
    let id = f.posted_job(|| Sendable::Bytes(Bytes::copy(b"a result")));
    assert_eq!(f.entry(id).kind, KIND_STRING);
    assert_eq!(f.bytes(id), b"a result");
    assert_eq!(f.plain.waiting(), 1, "counted until its task is freed");
    assert_eq!(f.plain.unposted(), 0, "but not busy");
    assert_eq!(f.plain.len(), 1, "the slot stays until the result is read");
    f.plain.reap(&f.waiters);
    assert_eq!(f.plain.len(), 1, "not read yet");
    f.mark_read(id);
    f.plain.reap(&f.waiters);
    assert_eq!((f.plain.len(), f.plain.waiting()), (0, 0));
    assert!(matches!(f.plain.take_raw(&f.waiters, id), Taken::Unknown));
    assert_eq!(f.plain.unposted(), 0);
}

#[test]
fn a_message_and_a_sleep_are_posted_too() {
    let timers = Timers::new();
    let f = fixture(&timers);
    let id = f.posted_job(|| Sendable::Failed("it failed".into()));
    assert_eq!(f.entry(id).kind, KIND_ERROR);
    assert_eq!(f.bytes(id), b"it failed");

    let now = timers.now();
    let sleep = f.plain.spawn_sleep(now).unwrap();
    f.plain.wait_for_test(sleep);
    timers.fire(now);
    f.plain
        .take_completed(&f.waiters, |other| panic!("task {other} was not posted"));
    let e = f.entry(sleep);
    assert_eq!((e.id, e.kind, e.num), (sleep as f64, KIND_BOOLEAN, 1.0));
}

#[test]
fn a_task_cancelled_after_its_post_empties_its_entry() {
    let f = fixture(&Timers::new());
    let id = f.posted_job(|| Sendable::Bytes(Bytes::copy(b"gone")));
    assert!(f.plain.cancel(&f.waiters, id));
    assert_eq!(f.entry(id).id, 0.0, "nothing left to read");
    assert!(f.entry(id).ptr.is_null());
    assert_eq!((f.plain.len(), f.plain.waiting(), f.plain.unposted()), (0, 0, 0));
    f.plain.reap(&f.waiters);
    assert_eq!(f.plain.len(), 0);
}

#[test]
fn a_posted_result_taken_with_a_call_empties_its_entry() {
    let f = fixture(&Timers::new());
    let id = f.posted_job(|| Sendable::Number(7.0));
    match f.plain.take_raw(&f.waiters, id) {
        Taken::Raw(Ok(Sendable::Number(n))) => assert_eq!(n, 7.0),
        _ => panic!("expected the number"),
    }
    assert_eq!(f.entry(id).id, 0.0);
    assert_eq!((f.plain.len(), f.plain.waiting()), (0, 0));
    // a reap afterwards finds nothing to free twice
    f.plain.reap(&f.waiters);
    assert_eq!(f.plain.len(), 0);
}

#[test]
fn a_result_that_needs_mlua_or_a_task_nobody_waits_for_is_not_posted() {
    let f = fixture(&Timers::new());
    let id = f
        .plain
        .spawn_job(&f.pool, || Sendable::Number(1.0), WakeUp::Now)
        .unwrap();
    let until = Instant::now() + Duration::from_secs(5);
    let mut told = Vec::new();
    while told.is_empty() {
        assert!(Instant::now() < until);
        f.plain.take_completed(&f.waiters, |id| told.push(id));
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(told, vec![id], "handed to Lua, not posted");
    assert_eq!(f.entry(id).id, 0.0);

    let id = f
        .plain
        .spawn_job(&f.pool, || Sendable::Other(Box::new(())), WakeUp::Now)
        .unwrap();
    f.plain.wait_for_test(id);
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        assert!(Instant::now() < until);
        f.plain
            .take_completed(&f.waiters, |other| panic!("task {other} was not posted"));
        if f.plain.completed() == 2 {
            break;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(f.entry(id).id, 0.0, "Lua values are taken with a call");
    assert!(matches!(f.plain.take_raw(&f.waiters, id), Taken::NeedsLua));
}

#[test]
fn the_table_has_no_entry_past_its_capacity() {
    let mailbox = Mailbox::default();
    let posted = |id: f64| Posted {
        id,
        num: 0.0,
        ptr: std::ptr::null(),
        len: 0,
        kind: KIND_BOOLEAN,
    };
    assert!(!mailbox.post(0, posted(1.0)), "no table before get()");
    let (_, cap) = mailbox.get();
    assert!(mailbox.post(cap - 1, posted(2.0)));
    assert_eq!(mailbox.id(cap - 1), 2.0);
    assert!(!mailbox.post(cap, posted(3.0)));
    assert_eq!(mailbox.id(cap), 0.0);
    mailbox.clear(cap - 1, 9.0);
    assert_eq!(mailbox.id(cap - 1), 2.0, "another task's entry stays");
    mailbox.clear(cap - 1, 2.0);
    assert_eq!(mailbox.id(cap - 1), 0.0);
}
