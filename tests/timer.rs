use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use resty_async::timer::Timers;

struct CountWake(AtomicUsize);
impl Wake for CountWake {
    fn wake(self: Arc<Self>) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

fn waker() -> (Arc<CountWake>, Waker) {
    let c = Arc::new(CountWake(AtomicUsize::new(0)));
    (c.clone(), Waker::from(c))
}

#[test]
fn deadlines_fire_in_order_and_only_when_due() {
    let timers = Timers::new();
    let now = Instant::now();
    let (c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut sleeps: Vec<_> = [300u64, 100, 200]
        .iter()
        .map(|ms| Box::pin(timers.sleep_until(now + Duration::from_millis(*ms))))
        .collect();
    for s in &mut sleeps {
        assert_eq!(s.as_mut().poll(&mut cx), Poll::Pending);
    }
    assert_eq!(timers.len(), 3);
    assert_eq!(timers.next_deadline(), Some(now + Duration::from_millis(100)));
    assert_eq!(timers.fire(now + Duration::from_millis(50)), 0);
    assert_eq!(timers.fire(now + Duration::from_millis(150)), 1);
    assert_eq!(c.0.load(Ordering::SeqCst), 1);
    assert_eq!(timers.next_deadline(), Some(now + Duration::from_millis(200)));
    assert_eq!(timers.fire(now + Duration::from_millis(1000)), 2);
    assert!(timers.is_empty());
}

#[test]
fn dropping_a_sleep_removes_its_timer() {
    let timers = Timers::new();
    let (_c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut s = Box::pin(timers.sleep(Duration::from_secs(60)));
    assert_eq!(s.as_mut().poll(&mut cx), Poll::Pending);
    assert_eq!(timers.len(), 1);
    drop(s);
    assert_eq!(timers.len(), 0);
    assert_eq!(timers.next_deadline(), None);
}

#[test]
fn elapsed_sleep_is_ready_without_registering() {
    let timers = Timers::new();
    let (_c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut s = Box::pin(timers.sleep(Duration::ZERO));
    assert_eq!(s.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(timers.is_empty());
}

#[test]
fn repolling_keeps_one_entry_and_earlier_deadline_asks_to_rearm() {
    let timers = Timers::new();
    let (_c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut a = Box::pin(timers.sleep(Duration::from_secs(10)));
    assert!(a.as_mut().poll(&mut cx).is_pending());
    assert!(a.as_mut().poll(&mut cx).is_pending());
    assert_eq!(timers.len(), 1);
    assert!(timers.take_rearm(), "first timer: the driver must arm");
    timers.arm();
    let mut later = Box::pin(timers.sleep(Duration::from_secs(20)));
    assert!(later.as_mut().poll(&mut cx).is_pending());
    assert!(!timers.take_rearm(), "a later deadline needs no re-arm");
    let mut sooner = Box::pin(timers.sleep(Duration::from_secs(1)));
    assert!(sooner.as_mut().poll(&mut cx).is_pending());
    assert!(timers.take_rearm(), "an earlier deadline does");
    assert!(!timers.take_rearm(), "the flag is cleared when taken");
}

#[test]
fn a_timer_fired_early_completes() {
    let timers = Timers::new();
    let (_c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut s = Box::pin(timers.sleep(Duration::from_millis(200)));
    assert!(s.as_mut().poll(&mut cx).is_pending());
    // The driver fires what is due within its slack: the sleep is done even
    // though its deadline is a little ahead.
    assert_eq!(timers.fire(Instant::now() + Duration::from_millis(250)), 1);
    assert_eq!(s.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(timers.is_empty());
}

#[test]
fn task_deadlines_fire_with_sleeps_and_hand_over_their_ids() {
    let timers = Timers::new();
    let now = Instant::now();
    let (c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut s = Box::pin(timers.sleep_until(now + Duration::from_millis(200)));
    assert!(s.as_mut().poll(&mut cx).is_pending());
    assert!(timers.take_rearm());
    timers.arm();
    timers.add_task(now + Duration::from_millis(300), 7);
    assert!(!timers.take_rearm(), "later than the armed deadline");
    let early = timers.add_task(now + Duration::from_millis(100), 8);
    assert!(timers.take_rearm(), "earlier than the armed deadline");
    let gone = timers.add_task(now + Duration::from_millis(150), 9);
    assert_eq!(timers.len(), 4);
    assert!(timers.remove(gone), "cancelled before it fired");
    assert!(!timers.remove(gone));
    assert_eq!(timers.next_deadline(), Some(early.0));

    let mut ids = Vec::new();
    assert_eq!(timers.fire(now + Duration::from_millis(250)), 2);
    assert_eq!(c.0.load(Ordering::SeqCst), 1, "the sleep's task was woken");
    timers.take_fired(|id| ids.push(id));
    assert_eq!(ids, vec![8]);
    timers.take_fired(|id| ids.push(id));
    assert_eq!(ids, vec![8], "handed over once");
    assert!(!timers.remove(early), "fired: nothing to remove");

    assert_eq!(timers.fire(now + Duration::from_millis(400)), 1);
    timers.take_fired(|id| ids.push(id));
    assert_eq!(ids, vec![8, 7]);
    assert!(timers.is_empty());
}
