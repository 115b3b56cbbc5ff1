use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use crate::timer::{Clock, Ms, Timers};

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
    let (now, t0) = (timers.now(), Instant::now());
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
    // (keys in whole milliseconds, from clock readings a little apart)
    let first = timers.next_deadline().unwrap();
    assert!(first >= now + 100, "{first} {now}");
    assert_eq!(timers.fire(first - 1), 0);
    assert_eq!(timers.fire(first), 1);
    assert_eq!(c.0.load(Ordering::SeqCst), 1);
    let second = timers.next_deadline().unwrap();
    assert!((99..=101).contains(&(second - first)), "{first} {second}");
    assert_eq!(timers.fire(second + 1000), 2);
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

/// nginx's clock may lag the monotonic one, so a sleep's entry may fire
/// before its deadline: the sleep then waits on, under a new entry, and
/// completes at its deadline.
#[test]
fn a_sleep_fired_early_waits_until_its_deadline() {
    let timers = Timers::new();
    let (c, w) = waker();
    let mut cx = Context::from_waker(&w);
    let mut s = Box::pin(timers.sleep(Duration::from_millis(30)));
    assert!(s.as_mut().poll(&mut cx).is_pending());
    assert_eq!(timers.fire(timers.now() + 1000), 1);
    assert_eq!(c.0.load(Ordering::SeqCst), 1, "woken by the early firing");
    assert!(timers.is_empty());
    if Instant::now() < s.deadline() {
        assert!(s.as_mut().poll(&mut cx).is_pending(), "early: not done");
        assert_eq!(timers.len(), 1, "registered again");
        assert!(timers.next_deadline().unwrap() > timers.now());
    }
    std::thread::sleep(Duration::from_millis(40));
    assert_eq!(s.as_mut().poll(&mut cx), Poll::Ready(()));
    assert!(timers.is_empty(), "its entry is gone with it");
}

#[test]
fn task_deadlines_fire_with_sleeps_and_hand_over_their_ids() {
    let timers = Timers::new();
    let now = timers.now();
    let (c, w) = waker();
    let mut cx = Context::from_waker(&w);
    // (fired at now + 250 below: a poll up to 100 ms late still fits)
    let mut s = Box::pin(timers.sleep(Duration::from_millis(150)));
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
    assert!(Timers::new().now().checked_add(most).is_some());
}

/// A deadline is at least its length away on the clock it fires on,
/// rounded up to whole milliseconds.
#[test]
fn a_task_deadline_is_its_length_rounded_up() {
    let timers = Timers::new();
    let now = timers.now();
    let d = timers.deadline_ms(Duration::from_micros(2500));
    let after = timers.now();
    assert!((now + 3..=after + 3).contains(&d), "{now} {d} {after}");
    timers.add_task(d, 1);
    assert_eq!(timers.fire(d - 1), 0);
    assert_eq!(timers.fire(d), 1);
}

/// Timers made on another thread than the process's main one (a pool
/// thread, a tokio thread: not nginx's) run on the process's own clock.
#[test]
fn timers_off_the_main_thread_run_on_the_process_clock() {
    let clock = std::thread::spawn(Clock::for_this_thread).join().unwrap();
    assert!(matches!(clock, Clock::Own), "{clock:?}");
}
