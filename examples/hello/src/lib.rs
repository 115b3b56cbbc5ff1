//! An OpenResty module written with resty-async: `require "resty_async_example"`.
//!
//! It shows every kind of function a module can have: async closures (a
//! timer, a result produced on a `std::thread`, a table, several results,
//! an error, a panic), blocking closures run on the pool, plain sync
//! functions, and a function made with mlua's own `create_async_function`.

use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::channel::oneshot;
use mlua::prelude::*;
use resty_async::Module;

/// Futures of `guarded_sleep` dropped so far (finished or cancelled).
static DROPPED: AtomicUsize = AtomicUsize::new(0);

/// A result whose conversion to Lua panics.
struct PanicsIntoLua;

impl IntoLua for PanicsIntoLua {
    fn into_lua(self, _lua: &Lua) -> LuaResult<LuaValue> {
        panic!("conversion exploded")
    }
}

struct DropGuard;

impl Drop for DropGuard {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

/// The calling thread's nice value (Linux: field 19 of
/// /proc/thread-self/stat).
fn thread_nice() -> Result<i64, String> {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").map_err(|e| e.to_string())?;
    let after_comm = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    after_comm
        .split_whitespace()
        .nth(16)
        .and_then(|v| v.parse::<i64>().ok())
        .ok_or_else(|| format!("unexpected /proc/thread-self/stat: {stat}"))
}

/// The CPUs the calling thread may run on, as Linux lists them ("0-3,6":
/// `Cpus_allowed_list` of /proc/thread-self/status).
fn thread_cpus() -> Result<String, String> {
    let status = std::fs::read_to_string("/proc/thread-self/status").map_err(|e| e.to_string())?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|v| v.trim().to_string())
        .ok_or_else(|| "no Cpus_allowed_list in /proc/thread-self/status".to_string())
}

/// The bytes 0, 1, ..., n - 1 (mod 256), as a Lua string.
fn bytes_upto(n: usize) -> mlua::BString {
    (0..n).map(|i| i as u8).collect::<Vec<u8>>().into()
}

/// The lowercase hex of `bytes_upto(n)`.
fn hex_upto(n: usize) -> String {
    bytes_upto(n).iter().map(|b| format!("{b:02x}")).collect()
}

/// Runs `f` on a new `std::thread` after `ms` milliseconds and hands its
/// result to the returned future: a stand-in for any foreign completion
/// (another runtime, a callback-based C library...).
fn on_thread<T: Send + 'static>(ms: u64, f: impl FnOnce() -> T + Send + 'static) -> oneshot::Receiver<T> {
    let (tx, rx) = oneshot::channel();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(ms));
        let _ = tx.send(f());
    });
    rx
}

/// Counters whose state was dropped so far (see `Counter`).
static COUNTERS_DROPPED: AtomicUsize = AtomicUsize::new(0);

/// The state of a `Counter`, shared by the Lua object and the futures of
/// its pending calls.
struct CounterState {
    value: AtomicI64,
}

impl Drop for CounterState {
    fn drop(&mut self) {
        COUNTERS_DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

/// A userdata type with async methods, registered with `add_class`. Its
/// methods hand their futures a clone of the `Arc`, not the Lua object:
/// the object may be collected while calls are pending, and the state is
/// dropped when the last of them ends.
struct Counter(Arc<CounterState>);

impl LuaUserData for Counter {
    fn add_fields<F: LuaUserDataFields<Self>>(fields: &mut F) {
        fields.add_field_method_get("value", |_, this| Ok(this.0.value.load(Ordering::SeqCst)));
    }

    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_method("get", |_, this, ()| Ok(this.0.value.load(Ordering::SeqCst)));
        methods.add_async_method("slow_incr", |_, this, ms: u64| {
            let state = Arc::clone(&this.0);
            async move {
                resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
                Ok(state.value.fetch_add(1, Ordering::SeqCst) + 1)
            }
        });
        // Holds its UserDataRef (the mlua way): the object stays alive
        // until it ends.
        methods.add_async_method("borrowing_incr", |_, this, ms: u64| async move {
            resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
            Ok(this.0.value.fetch_add(1, Ordering::SeqCst) + 1)
        });
        methods.add_async_method_mut("exclusive_incr", |_, this, ms: u64| async move {
            resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
            Ok(this.0.value.fetch_add(1, Ordering::SeqCst) + 1)
        });
        methods.add_async_method("guarded_wait", |_, this, ms: u64| {
            let state = Arc::clone(&this.0);
            async move {
                let _guard = DropGuard;
                resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
                Ok(state.value.load(Ordering::SeqCst))
            }
        });
        methods.add_async_method("fail_after", |_, _this, ms: u64| async move {
            resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
            Err::<(), _>(LuaError::RuntimeError("counter says no".into()))
        });
        methods.add_async_method("panic_after", |_, _this, ms: u64| async move {
            resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
            panic!("counter panic after {ms} ms");
            #[allow(unreachable_code)]
            Ok(())
        });
        methods.add_async_function("make_after", |_, (start, ms): (i64, u64)| async move {
            resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
            Ok(Counter(Arc::new(CounterState {
                value: AtomicI64::new(start),
            })))
        });
    }
}

/// A userdata type with an async method that is NOT registered: calling
/// it raises at once instead of spinning the worker.
struct Unregistered;

impl LuaUserData for Unregistered {
    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("wait", |_, _this, ms: u64| async move {
            resty_async::sleep(Duration::from_millis(ms.min(60_000))).await;
            Ok(true)
        });
    }
}

#[mlua::lua_module]
fn resty_async_example(lua: &Lua) -> LuaResult<LuaTable> {
    let mut m = Module::new(lua, "resty_async_example")?;

    // --- async functions -------------------------------------------------
    m.add_async("echo_after", |_lua, (value, ms): (LuaValue, u64)| async move {
        resty_async::sleep(Duration::from_millis(ms)).await;
        Ok(value)
    })?;
    m.add_async("double_on_thread", |_lua, (n, ms): (i64, u64)| async move {
        let doubled = on_thread(ms, move || n * 2).await.map_err(LuaError::external)?;
        Ok(doubled)
    })?;
    m.add_async("user", |lua, id: i64| async move {
        resty_async::sleep(Duration::from_millis(1)).await;
        let t = lua.create_table()?;
        t.set("id", id)?;
        t.set("name", format!("user{id}"))?;
        t.set("tags", lua.create_sequence_from(["a", "b"])?)?;
        Ok(t)
    })?;
    m.add_async("divmod", |_lua, (a, b): (i64, i64)| async move {
        if b == 0 {
            return Err(LuaError::RuntimeError("division by zero".into()));
        }
        resty_async::sleep(Duration::from_millis(1)).await;
        Ok((a.div_euclid(b), a.rem_euclid(b)))
    })?;
    m.add_async("fail_after", |_lua, (msg, ms): (String, u64)| async move {
        resty_async::sleep(Duration::from_millis(ms)).await;
        Err::<(), _>(LuaError::RuntimeError(msg))
    })?;
    m.add_async("panic_after", |_lua, ms: u64| async move {
        resty_async::sleep(Duration::from_millis(ms)).await;
        panic!("example panic after {ms} ms");
        #[allow(unreachable_code)]
        Ok(())
    })?;
    m.add_async("guarded_sleep", |_lua, ms: u64| async move {
        let _guard = DropGuard;
        resty_async::sleep(Duration::from_millis(ms)).await;
        Ok(true)
    })?;
    m.add_async("guarded_thread_wait", |_lua, ms: u64| async move {
        let _guard = DropGuard;
        on_thread(ms, || ()).await.map_err(LuaError::external)?;
        Ok(true)
    })?;

    // --- blocking functions (run on the pool) ----------------------------
    m.add_blocking("block_ms", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        Ok::<_, String>(ms)
    })?;
    m.add_blocking("count_words", |text: String| {
        Ok::<_, String>(text.split_whitespace().count())
    })?;
    // The nice value of the pool thread that runs it, to check
    // `configure{ pool_nice = ... }` against `thread_nice` (the worker's).
    m.add_blocking("pool_thread_nice", |()| thread_nice())?;
    // Likewise for `configure{ pool_cpus = ... }`.
    m.add_blocking("pool_thread_cpus", |()| thread_cpus())?;
    // One string of each kind a function may return (they take a faster
    // path than other results): bytes 0..n as a byte string, its hex as a
    // String, or a &'static str.
    m.add_blocking("string_kinds", |n: usize| {
        Ok::<_, String>((bytes_upto(n), hex_upto(n), "static"))
    })?;
    m.add_blocking("bytes_upto", |n: usize| Ok::<_, String>(bytes_upto(n)))?;
    m.add_blocking("hex_upto", |n: usize| Ok::<_, String>(hex_upto(n)))?;
    m.add_function("static_str", |_, ()| Ok("static"))?;
    m.add_blocking("blocking_fail", |msg: String| {
        Err::<(), _>(format!("blocking failure: {msg}"))
    })?;
    m.add_blocking("blocking_panic", |msg: String| -> Result<(), String> {
        panic!("{msg}")
    })?;
    // Its result panics when it is made into a Lua value, on the worker.
    m.add_blocking("conversion_panic", |()| Ok::<_, String>(PanicsIntoLua))?;

    // --- plain sync functions --------------------------------------------
    m.add_function("add", |_, (a, b): (f64, f64)| Ok(a + b))?;
    // The nice value of the calling thread (the worker).
    m.add_function("thread_nice", |_, ()| {
        thread_nice().map_err(LuaError::RuntimeError)
    })?;
    m.add_function("thread_cpus", |_, ()| {
        thread_cpus().map_err(LuaError::RuntimeError)
    })?;
    m.add_function("sync_fail", |_, msg: String| {
        Err::<(), _>(LuaError::RuntimeError(msg))
    })?;
    m.add_function("sync_panic", |_, ()| -> LuaResult<()> { panic!("sync panic") })?;
    m.add_function("dropped", |_, ()| Ok(DROPPED.load(Ordering::SeqCst)))?;

    // --- objects with async methods --------------------------------------
    m.add_class::<Counter>()?;
    m.add_function("counter", |_, start: Option<i64>| {
        Ok(Counter(Arc::new(CounterState {
            value: AtomicI64::new(start.unwrap_or(0)),
        })))
    })?;
    m.add_function("counters_dropped", |_, ()| {
        Ok(COUNTERS_DROPPED.load(Ordering::SeqCst))
    })?;
    m.add_function("unregistered", |_, ()| Ok(Unregistered))?;

    // --- mlua's own create_async_function, the tutorials' pattern --------
    // No tokio: the future is completed by a std::thread and driven by
    // resty-async's executor.
    let mlua_sleep = lua.create_async_function(|_lua, ms: u64| async move {
        on_thread(ms, || ()).await.map_err(LuaError::external)?;
        Ok(format!("mlua slept {ms} ms"))
    })?;
    m.add_lua_async("mlua_sleep", mlua_sleep.clone())?;
    // The same function object, exported raw: calling it directly is the
    // hazard resty-async guards against (it raises instead of spinning).
    m.add_value("mlua_sleep_raw", mlua_sleep)?;

    m.build()
}
