use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::timer::{now_ms, Ms, Timers};

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
    let (now, t0) = (now_ms(), Instant::now());
    let (c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut sleeps: Vec<_> = [300u64, 100, 200]
        .iter()
        .map(|ms| Box::pin(timers.sleep_until(t0 + Duration::from_millis(*ms))))
        .collect();
    for s in &mut sleeps {
        assert_eq!(s.as_mut().poll(&mut cx), Poll::Pending);
    }
    assert_eq!(timers.len(), 3);
    // (registered on the millisecond clock: the millisecond may turn
    // between the two readings above)
    let first = timers.next_deadline().unwrap();
    assert!((now + 100..=now + 101).contains(&first), "{first} {now}");
    assert_eq!(timers.fire(now + 50), 0);
    assert_eq!(timers.fire(now + 150), 1);
    assert_eq!(c.0.load(Ordering::SeqCst), 1);
    let second = timers.next_deadline().unwrap();
    assert!((now + 200..=now + 201).contains(&second), "{second} {now}");
    assert_eq!(timers.fire(now + 1000), 2);
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
    // Fired on nginx's clock, which may run behind the monotonic one: the
    // sleep is done, even if its deadline may be a little ahead.
    assert_eq!(timers.fire(now_ms() + 250), 1);
    assert_eq!(s.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(timers.is_empty());
}

#[test]
fn task_deadlines_fire_with_sleeps_and_hand_over_their_ids() {
    let timers = Timers::new();
    let now = now_ms();
    let (c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut s = Box::pin(timers.sleep(Duration::from_millis(200)));
    assert!(s.as_mut().poll(&mut cx).is_pending());
    assert!(timers.take_rearm());
    timers.arm();
    timers.add_task(now + 300, 7);
    assert!(!timers.take_rearm(), "later than the armed deadline");
    let early = timers.add_task(now + 100, 8);
    assert!(timers.take_rearm(), "earlier than the armed deadline");
    let gone = timers.add_task(now + 150, 9);
    assert_eq!(timers.len(), 4);
    assert!(timers.remove(gone), "cancelled before it fired");
    assert!(!timers.remove(gone));
    assert_eq!(timers.next_deadline(), Some(early.0));

    let mut ids = Vec::new();
    assert_eq!(timers.fire(now + 250), 2);
    assert_eq!(c.0.load(Ordering::SeqCst), 1, "the sleep's task was woken");
    timers.take_fired(|id| ids.push(id));
    assert_eq!(ids, vec![8]);
    timers.take_fired(|id| ids.push(id));
    assert_eq!(ids, vec![8], "handed over once");
    assert!(!timers.remove(early), "fired: nothing to remove");

    assert_eq!(timers.fire(now + 400), 1);
    timers.take_fired(|id| ids.push(id));
    assert_eq!(ids, vec![8, 7]);
    assert!(timers.is_empty());
}

/// Deadlines added in order and out of order, cancelled (some after they
/// fired) and fired through the public API fire in deadline order, each
/// once, like a sorted set (src/timer.rs tests the queue and the tree
/// behind it more closely).
#[test]
fn task_deadlines_in_any_order_fire_like_a_sorted_set() {
    use std::collections::BTreeMap;

    let timers = Timers::new();
    let start: Ms = 1_000;
    let mut model: BTreeMap<(Ms, u64), u64> = BTreeMap::new();
    let mut keys = Vec::new();
    // A small deterministic generator (xorshift).
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    let mut now = start;
    let mut fired = Vec::new();
    for id in 0..20_000u64 {
        // Mostly the same length (in order), sometimes shorter or longer.
        let ms = match next(10) {
            0 => next(5),
            1 => 10 + next(40),
            _ => 10,
        };
        let deadline = now + ms;
        let key = timers.add_task(deadline, id);
        model.insert(key, id);
        keys.push(key);
        match next(8) {
            // cancel one at random (maybe fired already)
            0 | 1 => {
                let k = keys.swap_remove(next(keys.len() as u64) as usize);
                assert_eq!(timers.remove(k), model.remove(&k).is_some());
            }
            // let time pass and fire what is due
            2 => {
                now += next(4);
                let n = timers.fire(now);
                let due: Vec<_> = model.range(..=(now, u64::MAX)).map(|(k, v)| (*k, *v)).collect();
                assert_eq!(n, due.len());
                let mut got = Vec::new();
                timers.take_fired(|id| got.push(id));
                assert_eq!(got, due.iter().map(|(_, v)| *v).collect::<Vec<_>>());
                for (k, _) in due {
                    model.remove(&k);
                }
                fired.extend(got);
            }
            _ => {}
        }
        assert_eq!(timers.len(), model.len());
        assert_eq!(timers.next_deadline(), model.keys().next().map(|k| k.0));
    }
    now += 1000;
    timers.fire(now);
    timers.take_fired(|id| fired.push(id));
    assert!(timers.is_empty());
    // Every id fired at most once.
    let n = fired.len();
    fired.sort_unstable();
    fired.dedup();
    assert_eq!(fired.len(), n);
}

#[test]
fn durations_round_up_to_whole_milliseconds() {
    use crate::timer::ceil_ms;
    assert_eq!(ceil_ms(Duration::ZERO), 0);
    assert_eq!(ceil_ms(Duration::from_nanos(1)), 1);
    assert_eq!(ceil_ms(Duration::from_millis(1)), 1);
    assert_eq!(ceil_ms(Duration::from_micros(1500)), 2);
    assert_eq!(ceil_ms(Duration::from_secs(86400 * 365)), 86_400_000 * 365);
    let most = ceil_ms(Duration::MAX);
    assert_eq!(most, 86_400_000 * 365 * 30, "far deadlines are capped");
    assert!(now_ms().checked_add(most).is_some());
}

/// A sleep's deadline is at least its length away on the clock it fires
/// on: firing just before it does not complete it.
#[test]
fn a_sleep_is_not_fired_before_its_length_on_the_clock() {
    let timers = Timers::new();
    let (_c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let now = now_ms();
    let mut s = Box::pin(timers.sleep(Duration::from_micros(2500)));
    assert!(s.as_mut().poll(&mut cx).is_pending());
    assert!(timers.next_deadline().unwrap() >= now + 3);
    assert_eq!(timers.fire(now + 2), 0);
    assert!(s.as_mut().poll(&mut cx).is_pending() || Instant::now() >= s.deadline());
}
