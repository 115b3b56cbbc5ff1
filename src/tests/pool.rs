use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Duration;

use crate::pool::BlockingTask;
use crate::pool::{Errand, Pool, PoolError, PoolStats, WakeUp, NICE_AFTER};
use futures::executor::block_on;

/// Returns once the counters of `pool` satisfy `cond`.
fn wait_until(pool: &Pool, cond: impl Fn(&PoolStats) -> bool) {
    while !cond(&pool.stats()) {
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Keeps a thread of `pool` busy until a message is sent on the returned
/// sender; returns once the thread runs that job.
fn occupy(pool: &Pool) -> (mpsc::Sender<()>, BlockingTask<()>) {
    let (tx, rx) = mpsc::channel::<()>();
    let blocker = pool.spawn(move || rx.recv().unwrap()).unwrap();
    // A thread has taken it: the queue is empty.
    wait_until(pool, |s| s.running > 0);
    (tx, blocker)
}

#[test]
fn jobs_run_on_threads_and_return() {
    let pool = Pool::new(2, 16);
    let tasks: Vec<_> = (0..8u64).map(|i| pool.spawn(move || i * i).unwrap()).collect();
    let got: Vec<u64> = tasks.into_iter().map(|t| block_on(t).unwrap()).collect();
    assert_eq!(got, vec![0, 1, 4, 9, 16, 25, 36, 49]);
    assert!(pool.stats().threads <= 2);
    assert_eq!(pool.stats().done, 8);
}

#[test]
fn full_queue_is_busy_at_once() {
    let pool = Pool::new(1, 1);
    // The thread has taken the blocker: the queue is empty.
    let (tx, blocker) = occupy(&pool);
    let queued = pool.spawn(|| 1).unwrap();
    match pool.spawn(|| 2) {
        Err(PoolError::Busy { max_queue: 1 }) => {}
        other => panic!("expected busy, got {other:?}"),
    }
    assert_eq!(pool.stats().rejected, 1);
    tx.send(()).unwrap();
    block_on(blocker).unwrap();
    assert_eq!(block_on(queued).unwrap(), 1);
}

#[test]
fn panicking_job_reports_and_thread_survives() {
    let pool = Pool::new(1, 4);
    let prev = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let r = block_on(pool.spawn(|| -> u32 { panic!("job failed") }).unwrap());
    std::panic::set_hook(prev);
    match r {
        Err(PoolError::Panicked(msg)) => assert_eq!(msg, "job failed"),
        other => panic!("{other:?}"),
    }
    assert_eq!(block_on(pool.spawn(|| 5).unwrap()).unwrap(), 5);
    assert_eq!(pool.stats().threads, 1);
}

#[test]
fn job_whose_caller_left_is_skipped() {
    let pool = Pool::new(1, 4);
    let (tx, blocker) = occupy(&pool);
    let ran = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let r2 = ran.clone();
    let abandoned = pool
        .spawn(move || r2.store(true, std::sync::atomic::Ordering::SeqCst))
        .unwrap();
    drop(abandoned); // e.g. the caller timed out
    tx.send(()).unwrap();
    block_on(blocker).unwrap();
    // A later job runs after the skipped one.
    block_on(pool.spawn(|| ()).unwrap()).unwrap();
    assert!(!ran.load(std::sync::atomic::Ordering::SeqCst));
    assert_eq!(pool.stats().skipped, 1);
}

#[test]
fn abandoned_job_is_dropped_by_its_caller() {
    // What the closure holds is released when the caller leaves, on the
    // caller's thread, not when a pool thread gets to the job.
    struct Guard(mpsc::Sender<std::thread::ThreadId>);
    impl Drop for Guard {
        fn drop(&mut self) {
            let _ = self.0.send(std::thread::current().id());
        }
    }
    let pool = Pool::new(1, 4);
    let (tx, blocker) = occupy(&pool);
    let (dropped_tx, dropped_rx) = mpsc::channel();
    let guard = Guard(dropped_tx);
    let abandoned = pool.spawn(move || drop(guard)).unwrap();
    drop(abandoned);
    assert_eq!(
        dropped_rx.recv_timeout(Duration::from_secs(1)),
        Ok(std::thread::current().id())
    );
    tx.send(()).unwrap();
    block_on(blocker).unwrap();
    block_on(pool.spawn(|| ()).unwrap()).unwrap();
    assert_eq!(pool.stats().skipped, 1);
}

#[test]
fn a_panicking_drop_of_an_unwanted_result_leaves_the_pool_working() {
    struct Bomb;
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("bomb dropped");
        }
    }
    let pool = Pool::new(1, 4);
    let (tx, rx) = mpsc::channel::<()>();
    let left = pool
        .spawn(move || {
            rx.recv().unwrap();
            Bomb
        })
        .unwrap();
    wait_until(&pool, |s| s.running > 0);
    drop(left); // the caller leaves while the job runs: the pool drops Bomb
    tx.send(()).unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    let next = pool.spawn(|| 7).unwrap();
    std::thread::spawn(move || {
        let _ = done_tx.send(block_on(next));
    });
    assert_eq!(done_rx.recv_timeout(Duration::from_secs(5)), Ok(Ok(7)));
    assert_eq!(pool.stats().threads, 1);
}

/// An errand that runs `f` unless `wanted` was cleared, and comes back
/// with its number and result on a channel.
struct TestErrand {
    n: u64,
    f: Option<Box<dyn FnOnce() -> u64 + Send>>,
    res: Option<u64>,
    wanted: Arc<AtomicBool>,
    back: mpsc::Sender<(u64, u64)>,
}

impl Errand for TestErrand {
    fn wanted(&self) -> bool {
        self.wanted.load(Ordering::SeqCst)
    }

    fn run(&mut self) {
        let f = self.f.take().expect("run once");
        self.res = Some(f());
    }

    fn hand_back(self: Box<Self>) {
        let _ = self.back.send((self.n, self.res.expect("ran")));
    }
}

fn errand(
    n: u64,
    back: &mpsc::Sender<(u64, u64)>,
    f: impl FnOnce() -> u64 + Send + 'static,
) -> (Box<dyn Errand>, Arc<AtomicBool>) {
    let wanted = Arc::new(AtomicBool::new(true));
    let e = TestErrand {
        n,
        f: Some(Box::new(f)),
        res: None,
        wanted: Arc::clone(&wanted),
        back: back.clone(),
    };
    (Box::new(e), wanted)
}

#[test]
fn errands_run_and_come_back() {
    let pool = Pool::new(2, 16);
    let (tx, rx) = mpsc::channel();
    for i in 1..=6u64 {
        let wake = if i % 2 == 0 { WakeUp::Deferred } else { WakeUp::Now };
        pool.spawn_errand(errand(i, &tx, move || i * 10).0, wake).unwrap();
    }
    pool.wake().unwrap(); // owed for the deferred ones
    let mut got: Vec<(u64, u64)> = (0..6)
        .map(|_| rx.recv_timeout(Duration::from_secs(5)).unwrap())
        .collect();
    got.sort();
    assert_eq!(got, (1..=6).map(|i| (i, i * 10)).collect::<Vec<_>>());
    wait_until(&pool, |s| s.done == 6 && s.running == 0);
}

#[test]
fn an_errand_no_longer_wanted_is_not_run() {
    let pool = Pool::new(1, 4);
    let (blocker_tx, blocker) = occupy(&pool);
    let (tx, rx) = mpsc::channel();
    let ran = Arc::new(AtomicBool::new(false));
    let r2 = Arc::clone(&ran);
    let (e, wanted) = errand(9, &tx, move || {
        r2.store(true, Ordering::SeqCst);
        9
    });
    pool.spawn_errand(e, WakeUp::Now).unwrap();
    wanted.store(false, Ordering::SeqCst); // cancelled, e.g. on timeout
    pool.spawn_errand(errand(10, &tx, || 10).0, WakeUp::Now).unwrap();
    blocker_tx.send(()).unwrap();
    block_on(blocker).unwrap();
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(5)).unwrap(),
        (10, 10),
        "9 skipped"
    );
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(pool.stats().skipped, 1);
}

#[test]
fn a_full_queue_refuses_an_errand_at_once() {
    let pool = Pool::new(1, 1);
    let (blocker_tx, blocker) = occupy(&pool);
    let (tx, rx) = mpsc::channel();
    pool.spawn_errand(errand(1, &tx, || 1).0, WakeUp::Now).unwrap();
    match pool.spawn_errand(errand(2, &tx, || 2).0, WakeUp::Now) {
        Err(PoolError::Busy { max_queue: 1 }) => {}
        other => panic!("expected busy, got {other:?}"),
    }
    blocker_tx.send(()).unwrap();
    block_on(blocker).unwrap();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), (1, 1));
    assert!(
        rx.recv_timeout(Duration::from_millis(100)).is_err(),
        "the refused one never runs"
    );
    assert_eq!(pool.stats().rejected, 1);
}

#[test]
fn deferred_jobs_wait_for_one_wake_up() {
    let pool = Pool::new(2, 64);
    // The first job starts a thread at once (a failure to start one must
    // be reported to its caller).
    assert_eq!(block_on(pool.spawn_deferred(|| 1).unwrap()).unwrap(), 1);
    while pool.stats().idle < 1 {
        std::thread::sleep(Duration::from_millis(1));
    }
    // Listed idle, it looks at the queue once more before it parks.
    std::thread::sleep(Duration::from_millis(20));
    let tasks: Vec<_> = (0..10u64)
        .map(|i| pool.spawn_deferred(move || i + 1).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(pool.stats().done, 1, "deferred jobs ran without a wake-up");
    assert_eq!(pool.stats().queued, 10);
    let before = pool.stats().wakeups;
    pool.wake().unwrap();
    let got: Vec<u64> = tasks.into_iter().map(|t| block_on(t).unwrap()).collect();
    assert_eq!(got, (1..=10).collect::<Vec<_>>());
    // One wake-up for the batch (the woken thread may start the second
    // thread for the backlog: that is no wake-up).
    assert_eq!(pool.stats().wakeups - before, 1, "{:?}", pool.stats());
    assert_eq!(pool.stats().done, 11);
}

/// Jobs that each wait (at most 2 s) until `n` of them run at once; true
/// if they all did.
fn rendezvous_jobs(pool: &Pool, n: usize, deferred: bool) -> Vec<bool> {
    let running = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let tasks: Vec<_> = (0..n)
        .map(|_| {
            let running = running.clone();
            let job = move || {
                running.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let t0 = std::time::Instant::now();
                while running.load(std::sync::atomic::Ordering::SeqCst) < n {
                    if t0.elapsed() > Duration::from_secs(2) {
                        return false;
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                true
            };
            if deferred {
                pool.spawn_deferred(job).unwrap()
            } else {
                pool.spawn(job).unwrap()
            }
        })
        .collect();
    if deferred {
        pool.wake().unwrap();
    }
    tasks.into_iter().map(|t| block_on(t).unwrap()).collect()
}

#[test]
fn long_jobs_queued_together_run_in_parallel() {
    // Threads not started yet: the first job starts one, which starts the
    // next for the backlog, and so on up to the limit.
    let pool = Pool::new(4, 64);
    assert_eq!(rendezvous_jobs(&pool, 4, false), vec![true; 4]);
    let pool = Pool::new(4, 64);
    assert_eq!(rendezvous_jobs(&pool, 4, true), vec![true; 4]);
    // Threads parked: one wake-up for the batch, passed on.
    while pool.stats().idle < 4 {
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(rendezvous_jobs(&pool, 4, true), vec![true; 4]);
    assert_eq!(pool.stats().threads, 4);
}

/// Field `n` (numbered from 1, as in proc(5)) of /proc/thread-self/stat,
/// the calling thread's.
#[cfg(target_os = "linux")]
fn thread_stat_field(n: usize) -> i64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
    // Fields 1 and 2 end at the last ')': the command may hold spaces.
    let rest = stat.rsplit_once(')').unwrap().1;
    rest.split_whitespace().nth(n - 3).unwrap().parse().unwrap()
}

/// The calling thread's nice value.
#[cfg(target_os = "linux")]
fn thread_nice() -> i64 {
    thread_stat_field(19)
}

#[cfg(target_os = "linux")]
#[test]
fn threads_that_run_long_jobs_lower_their_priority() {
    let mine = thread_nice();
    let pool = Pool::with_nice(1, 4, 5);
    // Short jobs only: the thread keeps the creator's priority.
    assert_eq!(block_on(pool.spawn(thread_nice).unwrap()).unwrap(), mine);
    // After a long one, it runs below it.
    block_on(pool.spawn(|| std::thread::sleep(NICE_AFTER)).unwrap()).unwrap();
    assert_eq!(
        block_on(pool.spawn(thread_nice).unwrap()).unwrap(),
        (mine + 5).min(19)
    );
    // The creating thread keeps its own.
    assert_eq!(thread_nice(), mine);
    let plain = Pool::new(1, 4);
    block_on(plain.spawn(|| std::thread::sleep(NICE_AFTER)).unwrap()).unwrap();
    assert_eq!(block_on(plain.spawn(thread_nice).unwrap()).unwrap(), mine);
}

/// The calling thread's scheduling policy (0: SCHED_OTHER, 3: SCHED_BATCH).
#[cfg(target_os = "linux")]
fn thread_policy() -> i64 {
    thread_stat_field(41)
}

#[cfg(target_os = "linux")]
#[test]
fn threads_park_as_batch_while_the_caller_is_busy() {
    if thread_policy() != 0 {
        // Started under another policy (e.g. `chrt -b`): the pool's
        // threads inherit it and keep it, by design.
        eprintln!("skipped: the test does not run under SCHED_OTHER");
        return;
    }
    let mine = thread_nice();
    let pool = Pool::with_nice(1, 4, 5);
    // `wait_until(.. idle ..)`: the one thread reads the caller's hint
    // between going idle and parking, so once it is idle, its next job
    // runs under the policy that hint asked for.
    // A long job lowers the thread's priority; the policy keeps it.
    block_on(pool.spawn(|| std::thread::sleep(NICE_AFTER)).unwrap()).unwrap();
    wait_until(&pool, |s| s.idle > 0);
    assert_eq!(block_on(pool.spawn(thread_policy).unwrap()).unwrap(), 0);

    pool.set_caller_busy(true);
    block_on(pool.spawn(|| ()).unwrap()).unwrap();
    wait_until(&pool, |s| s.idle > 0);
    let (policy, nice) = block_on(pool.spawn(|| (thread_policy(), thread_nice())).unwrap()).unwrap();
    assert_eq!((policy, nice), (3, (mine + 5).min(19)));

    pool.set_caller_busy(false);
    block_on(pool.spawn(|| ()).unwrap()).unwrap();
    wait_until(&pool, |s| s.idle > 0);
    let (policy, nice) = block_on(pool.spawn(|| (thread_policy(), thread_nice())).unwrap()).unwrap();
    assert_eq!((policy, nice), (0, (mine + 5).min(19)));
    // The caller's own policy is untouched.
    assert_eq!(thread_policy(), 0);
}

/// The CPUs the calling thread may run on, as /proc lists them ("0-3,6").
#[cfg(target_os = "linux")]
fn cpus_allowed() -> String {
    let status = std::fs::read_to_string("/proc/thread-self/status").unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("Cpus_allowed_list:"))
        .unwrap();
    line.split_whitespace().nth(1).unwrap().to_string()
}

#[cfg(target_os = "linux")]
#[test]
fn threads_run_on_the_cpus_they_are_given() {
    let mine = cpus_allowed();
    // The highest CPU this test may use (its list ends with it).
    let last: usize = mine.rsplit([',', '-']).next().unwrap().parse().unwrap();
    let pool = Pool::new(2, 4).with_cpus(&[last]);
    // Two jobs that wait for each other: two threads, the second started
    // by the first (it leaves a backlog behind), both on that CPU.
    let both = std::sync::Arc::new(std::sync::Barrier::new(2));
    let jobs: Vec<_> = (0..2)
        .map(|_| {
            let both = std::sync::Arc::clone(&both);
            pool.spawn(move || {
                both.wait();
                cpus_allowed()
            })
            .unwrap()
        })
        .collect();
    for job in jobs {
        assert_eq!(block_on(job).unwrap(), last.to_string());
    }
    assert_eq!(pool.stats().threads, 2);
    // The caller's own CPUs are untouched.
    assert_eq!(cpus_allowed(), mine);
    // No list: the threads inherit the caller's.
    let plain = Pool::new(1, 4).with_cpus(&[]);
    assert_eq!(block_on(plain.spawn(cpus_allowed).unwrap()).unwrap(), mine);
}

#[cfg(target_os = "linux")]
#[test]
fn cpus_a_thread_cannot_run_on_lose_the_job_with_the_reason() {
    for (cpu, why) in [(5000, "out of range"), (1023, "Invalid argument")] {
        if cpu == 1023 && std::path::Path::new("/sys/devices/system/cpu/cpu1023").exists() {
            continue;
        }
        let pool = Pool::new(1, 4).with_cpus(&[cpu]);
        match pool.spawn(|| 1) {
            Err(PoolError::Lost(e)) => {
                assert!(e.contains(&format!("cannot run on CPUs {cpu}: ")), "{e}");
                assert!(e.contains(why), "{e}");
            }
            other => panic!("expected a lost job, got {other:?}"),
        }
        assert_eq!(pool.stats().threads, 0);
    }
}
