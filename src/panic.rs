//! Panics that resty-async catches and reports to Lua.
//!
//! A panic in a module's function, its future or its pool job becomes a
//! `nil, "rust function panicked: ..."` result. Rust's default panic hook
//! would also print every one of them to stderr, which nginx sends to its
//! error log, with the whole payload: under a load of failing calls that
//! floods the log. So while resty-async runs code whose panics it catches,
//! the hook prints at most one panic per [`PRINT_EVERY`] (and says how
//! many it left out); other panics go to the hook that was there before.

use std::any::Any;
use std::panic::{catch_unwind, UnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::local::{self, Local};

/// At most one caught panic is printed per this many seconds.
const PRINT_EVERY: u64 = 10;

static LAST_PRINTED: AtomicU64 = AtomicU64::new(0);
static LEFT_OUT: AtomicU64 = AtomicU64::new(0);

/// Runs `f`, catching a panic (see the module docs). While the thread
/// exits and its state is gone (a destructor of another thread-local), the
/// panic is caught all the same, and printed by the hook as any panic.
pub(crate) fn catch<R>(f: impl FnOnce() -> R + UnwindSafe) -> Result<R, Box<dyn Any + Send>> {
    let mut f = Some(f);
    match local::try_with(|l| catch_in(l, f.take().expect("not run yet"))) {
        Some(res) => res,
        None => catch_unwind(f.take().expect("not run: no state")),
    }
}

/// [`catch`], with this thread's state at hand (see [`crate::local`]).
pub(crate) fn catch_in<R>(
    local: &Local,
    f: impl FnOnce() -> R + UnwindSafe,
) -> Result<R, Box<dyn Any + Send>> {
    install_hook();
    local.catching.set(local.catching.get() + 1);
    // (catch_unwind returns, also after a panic: the depth is restored)
    let res = catch_unwind(f);
    local.catching.set(local.catching.get() - 1);
    res
}

/// Whether this thread runs code whose panics resty-async catches: a
/// module's function, its future, its pool job, a tokio task of
/// `resty_async::tokio::spawn`.
pub(crate) fn catching() -> bool {
    local::try_with(|l| l.catching.get() > 0).unwrap_or(false)
}

/// Marks the code that runs while it lives as code whose panics are
/// caught (for futures, whose `catch_unwind` is a combinator).
pub(crate) struct Catching(());

impl Catching {
    pub(crate) fn enter() -> Catching {
        install_hook();
        local::with(|l| l.catching.set(l.catching.get() + 1));
        Catching(())
    }
}

impl Drop for Catching {
    fn drop(&mut self) {
        local::try_with(|l| l.catching.set(l.catching.get().saturating_sub(1)));
    }
}

fn install_hook() {
    static INSTALLED: Once = Once::new();
    INSTALLED.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let caught = local::try_with(|l| l.catching.get() > 0).unwrap_or(false);
            if !caught {
                return previous(info);
            }
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let last = LAST_PRINTED.load(Ordering::Relaxed);
            if now.saturating_sub(last) < PRINT_EVERY
                || LAST_PRINTED
                    .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                    .is_err()
            {
                LEFT_OUT.fetch_add(1, Ordering::Relaxed);
                return;
            }
            let left_out = LEFT_OUT.swap(0, Ordering::Relaxed);
            if left_out > 0 {
                eprintln!(
                    "resty-async: {left_out} more panics of Rust functions were caught and returned \
                     to Lua since the last one printed here"
                );
            }
            previous(info);
        }));
    });
}
