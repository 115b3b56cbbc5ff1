//! Building a Lua module whose functions wait without blocking nginx.
//!
//! A [`Module`] collects functions of four kinds and turns them into the
//! exports table of a `luaopen_*` entry point:
//!
//! * [`Module::add_async`]: an async closure, run by this worker's executor;
//! * [`Module::add_blocking`]: a closure run on the blocking pool;
//! * [`Module::add_function`]: a plain synchronous function;
//! * [`Module::add_lua_async`]: a function made by mlua's
//!   `Lua::create_async_function`, driven by the executor (no tokio).
//!
//! [`Module::build`] hands the raw functions to `require("resty.async")`,
//! which wraps each one so that a call from a handler, an `ngx.timer`
//! callback or an `ngx.thread` waits on an `ngx.semaphore` (only its own light
//! thread yields) and returns the results, or `nil, "message"`.
//!
//! # The raw calling convention (between this crate and `resty/async.lua`)
//!
//! A raw function returns `true, ...` (finished: the results), a number
//! (pending: the task id; negative, `-id`, when the driver must run in this
//! cycle of the event loop, for an earlier timer or for pool jobs whose
//! thread wake-up was deferred to it), or `nil, message` (misuse, e.g. a
//! wrong argument type: the wrapper raises `message`). No error ever leaves
//! Rust as an mlua error value, since ngx_lua would log such a userdata as
//! "unknown reason".
//!
//! The driver's `rt.poll(arm)` returns `next_ms, rearm, nstr, n` and then
//! `n` values, a pair per finished task: `id, value` when the task's result
//! is that one value (not nil), taken out of Rust already; `-id, nil` when
//! the waiter must call `rt.take(id)` for its results (several values, nil,
//! or `nil, message`). Beyond 1024 values, `next_ms, rearm, nstr, -n,
//! {...}`: the pairs in a table. `nstr` more tasks (pool jobs) finished
//! with one string: `rt.strings()` returns them as `id, string` pairs, up
//! to 512 pairs a call.

use std::fmt::Display;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use mlua::{FromLuaMulti, Function, IntoLua, IntoLuaMulti, Lua, MultiValue, Table, UserData, Value};

use crate::executor::{Outcome, Panicked, Spawned, TaskId};
use crate::plain::Single;
use crate::runtime::{Config, LuaOutput, Runtime};
use crate::values::{self, Sendable};
use crate::vm::{self, VmRuntime};

/// The exports of a module crate, under construction. See the module docs.
pub struct Module {
    lua: Lua,
    vm: Rc<VmRuntime>,
    raw: Table,
    kinds: Table,
}

impl Module {
    /// Starts a module called `name` (used in messages and `async.stats()`).
    pub fn new(lua: &Lua, name: &str) -> mlua::Result<Module> {
        // First, so that the async functions and methods this library makes
        // from now on capture resty.async's guarded `coroutine.yield`.
        let require: Function = lua.globals().get("require")?;
        let async_lib: Table = require.call("resty.async")?;
        let guard: Function = async_lib.get("guard_mlua")?;
        let in_poll = lua.create_function(|_, ()| Ok(crate::executor::in_poll()))?;
        guard.call::<()>((Lua::poll_pending(), in_poll))?;
        Module::with_name(lua, name)
    }

    /// The built-in module's: `resty/async.lua` is loading it.
    pub(crate) fn new_core(lua: &Lua, name: &str) -> mlua::Result<Module> {
        Module::with_name(lua, name)
    }

    fn with_name(lua: &Lua, name: &str) -> mlua::Result<Module> {
        values::install(lua)?;
        crate::sys::pin_library();
        pin_mlua_state(lua)?;
        let vm = VmRuntime::of(lua)?;
        let raw = lua.create_table()?;
        let kinds = lua.create_table()?;
        raw.raw_set("__name", name)?;
        raw.raw_set("__kinds", kinds.clone())?;
        raw.raw_set("__rt", control_table(lua, &vm)?)?;
        raw.raw_set("__id", runtime_id())?;
        raw.raw_set("__abi", ABI)?;
        Ok(Module {
            lua: lua.clone(),
            vm,
            raw,
            kinds,
        })
    }

    /// Adds an async function. `f` gets the Lua state and the converted
    /// arguments (a wrong argument raises a Lua error in the caller) and
    /// returns a future, polled on the worker thread: it may await
    /// [`crate::sleep`], [`crate::unblock`], or any `Future` completed by
    /// another thread or runtime. `Err(e)` becomes `nil, tostring(e)`.
    pub fn add_async<A, R, F, Fut>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        A: FromLuaMulti,
        R: IntoLuaMulti + 'static,
        F: Fn(Lua, A) -> Fut + 'static,
        Fut: Future<Output = mlua::Result<R>> + 'static,
    {
        let fname = name.to_owned();
        self.add_raw_async(name, move |lua, args| {
            let args = A::from_lua_args(args, 1, Some(&fname), lua).map_err(|e| error_message(&e))?;
            Ok(f(lua.clone(), args))
        })
    }

    /// Adds a function whose body runs on the blocking pool (CPU work,
    /// blocking system calls). The arguments are converted on the worker
    /// thread, the results back on it. `Err(e)` becomes `nil, e.to_string()`;
    /// a full pool queue becomes `nil, "busy ..."` at once; a panic becomes
    /// `nil, "rust function panicked: ..."`.
    pub fn add_blocking<A, R, E, F>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        A: FromLuaMulti + Send + 'static,
        R: IntoLuaMulti + Send + 'static,
        E: Display + Send + 'static,
        F: Fn(A) -> Result<R, E> + Send + Sync + 'static,
    {
        let f = Arc::new(f);
        let fname = name.to_owned();
        self.add_raw_blocking(name, move |lua, args: MultiValue| {
            let args = A::from_lua_args(args, 1, Some(&fname), lua).map_err(|e| error_message(&e))?;
            let f = Arc::clone(&f);
            Ok(move || Sendable::from_result(f(args)))
        })
    }

    /// Adds a plain synchronous function (it must not block). `Err(e)`
    /// becomes `nil, message`; a panic becomes `nil, "... panicked ..."`.
    pub fn add_function<A, R, F>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        A: FromLuaMulti,
        R: IntoLuaMulti + 'static,
        F: Fn(&Lua, A) -> mlua::Result<R> + 'static,
    {
        let fname = name.to_owned();
        let vm = Rc::clone(&self.vm);
        let func = self.lua.create_function(move |lua, args: MultiValue| {
            // (A sync function makes no runtime: it may run in init_by_lua,
            // before nginx forks.)
            let _enter = vm.existing().map(|rt| vm::enter(&rt));
            let args = match A::from_lua_args(args, 1, Some(&fname), lua) {
                Ok(a) => a,
                Err(e) => return misuse(lua, &error_message(&e)),
            };
            let out = catch_unwind(AssertUnwindSafe(|| {
                f(lua, args).and_then(|r| values::convert(lua, r))
            }))
            .map_err(Panicked::from_payload);
            finished(lua, out)
        })?;
        self.insert(name, "sync", func)
    }

    /// Registers a function made by mlua's `Lua::create_async_function`
    /// (or [`create_async_function`]). It is run by the executor through
    /// `Function::call_async`, never by busy polling. Registering it also
    /// points its internal `yield` at a guard: called directly, outside
    /// resty-async, it raises a clear error instead of spinning the worker.
    pub fn add_lua_async(&mut self, name: &str, f: Function) -> mlua::Result<&mut Module> {
        let raw = lua_async_raw(&self.lua, &self.vm, name, f)?;
        self.insert(name, "async", raw)
    }

    /// Registers the userdata type `T` (mlua's [`UserData`]): its async
    /// methods, async functions and async metamethods (mlua's
    /// `add_async_method`, `add_async_method_mut`, `add_async_function`,
    /// ...) then wait like this module's async functions: only the calling
    /// light thread yields, a timeout drops the method's future, errors
    /// and panics come back as `nil, message`, and `async.with_timeout` and
    /// `async.spawn` take them. Sync methods, fields and other metamethods
    /// stay as mlua makes them.
    ///
    /// mlua makes a type's metatable when the first value of the type
    /// reaches Lua; resty-async takes over its async methods when a value
    /// of the type comes out of one of this module's functions or async
    /// methods, or is one of its exports. (A value that reaches Lua only
    /// another way, such as the result of a sync method of another type,
    /// has async methods that raise an error until then.)
    ///
    /// A method's future that holds the `UserDataRef` it was given keeps
    /// the Lua object alive (and borrowed) until it ends. To let the object
    /// be collected while calls are pending, keep the state behind an
    /// `Arc` and hand the future a clone of it: see the crate docs.
    ///
    /// The async methods of a type that is not registered raise an error
    /// when called, instead of spinning the worker.
    pub fn add_class<T: UserData + 'static>(&mut self) -> mlua::Result<&mut Module> {
        crate::class::register::<T>(&self.lua)?;
        Ok(self)
    }

    /// Adds a plain value (a constant, a version string...).
    pub fn add_value(&mut self, name: &str, v: impl IntoLua) -> mlua::Result<&mut Module> {
        self.raw.raw_set(name, v)?;
        self.kinds.raw_set(name, "value")?;
        Ok(self)
    }

    /// A future: `f` validates the arguments (`Err(message)` is raised in
    /// the caller) and returns the future to run.
    fn add_raw_async<F, Fut, R>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        F: Fn(&Lua, MultiValue) -> Result<Fut, String> + 'static,
        Fut: Future<Output = mlua::Result<R>> + 'static,
        R: IntoLuaMulti + 'static,
    {
        let raw = self.raw_async(f)?;
        self.insert(name, "async", raw)
    }

    /// The raw function of [`Module::add_raw_async`].
    fn raw_async<F, Fut, R>(&self, f: F) -> mlua::Result<Function>
    where
        F: Fn(&Lua, MultiValue) -> Result<Fut, String> + 'static,
        Fut: Future<Output = mlua::Result<R>> + 'static,
        R: IntoLuaMulti + 'static,
    {
        raw_async(&self.lua, &self.vm, f)
    }

    /// Like [`Module::add_raw_async`] for a blocking call: `f` validates
    /// the arguments and returns the job, which runs on the pool as a task
    /// of its own, without a future (see `plain.rs`).
    pub(crate) fn add_raw_blocking<A, F, J>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        A: FromLuaMulti,
        F: Fn(&Lua, A) -> Result<J, String> + 'static,
        J: FnOnce() -> Sendable + Send + 'static,
    {
        self.add_raw(name, move |lua, rt, args: A| Ok(rt.spawn_job(f(lua, args)?)))
    }

    /// The lowest level of the waiting kinds: `f` validates the arguments
    /// (`Err(message)` is raised in the caller) and spawns a task on the
    /// runtime (the raw calling convention of the module docs). `A` must be
    /// a conversion that cannot fail (`MultiValue`, a tuple of `Value`s, an
    /// `Either<_, Value>`), so that `f` reports every misuse.
    pub(crate) fn add_raw<A, F>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        A: FromLuaMulti,
        F: Fn(&Lua, &Runtime, A) -> Result<Spawned<LuaOutput>, String> + 'static,
    {
        let func = self.raw(f)?;
        self.insert(name, "async", func)
    }

    /// The raw function of [`Module::add_raw`].
    fn raw<A, F>(&self, f: F) -> mlua::Result<Function>
    where
        A: FromLuaMulti,
        F: Fn(&Lua, &Runtime, A) -> Result<Spawned<LuaOutput>, String> + 'static,
    {
        raw(&self.lua, &self.vm, f)
    }

    fn insert(&mut self, name: &str, kind: &str, func: Function) -> mlua::Result<&mut Module> {
        self.raw.raw_set(name, func)?;
        self.kinds.raw_set(name, kind)?;
        Ok(self)
    }

    /// The raw table (for `resty/async.lua` itself).
    pub fn into_raw(self) -> Table {
        self.raw
    }

    /// The exports table: `require("resty.async").register(raw)`, i.e. every
    /// function wrapped to wait on a semaphore when its task is pending.
    pub fn build(self) -> mlua::Result<Table> {
        let require: Function = self.lua.globals().get("require")?;
        let async_lib: Table = require.call("resty.async")?;
        let register: Function = async_lib.get("register")?;
        register.call(self.raw)
    }
}

/// The lowest level of a waiting function: `f` validates the arguments
/// (`Err(message)` is raised in the caller) and spawns a task on the
/// runtime of `vm` (the raw calling convention of the module docs).
fn raw<A, F>(lua: &Lua, vm: &Rc<VmRuntime>, f: F) -> mlua::Result<Function>
where
    A: FromLuaMulti,
    F: Fn(&Lua, &Runtime, A) -> Result<Spawned<LuaOutput>, String> + 'static,
{
    let vm = Rc::clone(vm);
    lua.create_function(move |lua, args: A| {
        let rt = vm.get();
        let _enter = vm::enter(&rt);
        match rt.batch(|| f(lua, &rt, args)) {
            Ok(spawned) => spawned_results(lua, &rt, spawned),
            Err(msg) => misuse(lua, &msg),
        }
    })
}

/// A raw function whose task is the future `f` makes.
fn raw_async<F, Fut, R>(lua: &Lua, vm: &Rc<VmRuntime>, f: F) -> mlua::Result<Function>
where
    F: Fn(&Lua, MultiValue) -> Result<Fut, String> + 'static,
    Fut: Future<Output = mlua::Result<R>> + 'static,
    R: IntoLuaMulti + 'static,
{
    raw(lua, vm, move |lua, rt, args: MultiValue| {
        let fut = f(lua, args)?;
        let lua = lua.clone();
        Ok(rt.spawn(async move { fut.await.and_then(|r| values::convert(&lua, r)) }))
    })
}

/// The raw function that runs `f`, made by `Lua::create_async_function`
/// (or by mlua for an async method), through `Function::call_async`, with
/// `f`'s `yield` guarded (see [`guard_lua_async`]).
pub(crate) fn lua_async_raw(
    lua: &Lua,
    vm: &Rc<VmRuntime>,
    name: &str,
    f: Function,
) -> mlua::Result<Function> {
    guard_lua_async(lua, &f).map_err(|e| {
        mlua::Error::RuntimeError(format!(
            "resty-async: registering \"{name}\": {}",
            error_message(&e)
        ))
    })?;
    raw_async(lua, vm, move |_lua, args| {
        let f = f.clone();
        Ok(async move { f.call_async::<MultiValue>(args).await })
    })
}

/// `Lua::create_async_function`, made so that its futures can be driven by
/// resty-async inside OpenResty: its internal `yield` is LuaJIT's raw one
/// (ngx_lua keeps it as `coroutine._yield`), guarded so that a direct call
/// outside resty-async raises an error instead of spinning the worker.
/// Register the result with [`Module::add_lua_async`].
pub fn create_async_function<F, A, FR, R>(lua: &Lua, f: F) -> mlua::Result<Function>
where
    F: Fn(Lua, A) -> FR + 'static,
    A: FromLuaMulti + 'static,
    FR: Future<Output = mlua::Result<R>> + 'static,
    R: IntoLuaMulti,
{
    let func = lua.create_async_function(f)?;
    guard_lua_async(lua, &func)?;
    Ok(func)
}

/// Replaces the `yield` captured by an mlua async function with a guard
/// that yields the raw LuaJIT way when the executor is polling, and raises
/// otherwise.
fn guard_lua_async(lua: &Lua, f: &Function) -> mlua::Result<()> {
    let in_poll = lua.create_function(|_, ()| Ok(crate::executor::in_poll()))?;
    let patch: Function = lua
        .load(
            r#"
            local f, in_poll = ...
            local co = coroutine
            local raw_yield = co._yield or co.yield
            local debug = require "debug"
            local info = debug.getinfo(f, "S")
            if not info or info.source ~= "=__mlua_async_poll" then
                return nil, "not a function made by Lua::create_async_function"
            end
            local function guard(...)
                if not in_poll() then
                    error("this async Rust function must be called through "
                          .. "resty.async (register it with "
                          .. "Module::add_lua_async); called directly in "
                          .. "OpenResty it would spin the worker", 2)
                end
                return raw_yield(...)
            end
            for i = 1, 255 do
                local name = debug.getupvalue(f, i)
                if name == nil then break end
                if name == "yield" then
                    debug.setupvalue(f, i, guard)
                    return true
                end
            end
            return nil, "its yield upvalue was not found (mlua changed?)"
            "#,
        )
        .set_name("=resty.async.guard")
        .into_function()?;
    let (ok, err): (Option<bool>, Option<String>) = patch.call((f.clone(), in_poll))?;
    match ok {
        Some(true) => Ok(()),
        _ => Err(mlua::Error::RuntimeError(err.unwrap_or_default())),
    }
}

/// Keeps alive the Lua thread that loaded this library into the VM of
/// `lua`. mlua, in module mode, falls back to that thread whenever it runs
/// outside one of its callbacks (among others in the error path of every
/// callback, which asks it for the VM's allocator). Under ngx_lua that is
/// often a request's or a timer's coroutine, which the GC frees once the
/// handler ends; mlua would then read freed memory.
fn pin_mlua_state(lua: &Lua) -> mlua::Result<()> {
    let key = format!("resty_async.loader_thread.{}", runtime_id());
    if lua.named_registry_value::<Value>(&key)?.is_nil() {
        lua.set_named_registry_value(&key, lua.current_thread())?;
    }
    Ok(())
}

/// Tells the runtimes of different module libraries apart: each cdylib
/// that embeds this crate has its own copy of this static.
pub(crate) fn runtime_id() -> String {
    static MARK: u8 = 0;
    format!("{:p}", &MARK as *const u8)
}

fn id_value(id: TaskId) -> f64 {
    // Ids start at 1 and stay far below 2^53: exact as a Lua number, and
    // never 0, so that the sign can carry a flag.
    id as f64
}

/// The version of the raw calling convention (module docs), which
/// `resty/async.lua` checks: a module crate built against another
/// resty-async than the `resty/async.lua` it runs with fails to register
/// instead of misreading results.
pub const ABI: u32 = 4;

/// Most values `rt.poll` returns on the Lua stack (pairs of finished
/// tasks), beyond which they come in a table.
pub(crate) const MAX_POLL_VALUES: usize = 1024;

/// What a raw function returns: its first value (`true`, a task id or
/// `nil`) and the rest. A tuple, so that mlua pushes the results of a finished
/// task as they are, without copying them behind the first value.
type RawResults = (Value, MultiValue);

/// What a raw function returns for a task it spawned.
fn spawned_results(lua: &Lua, rt: &Runtime, spawned: Spawned<LuaOutput>) -> mlua::Result<RawResults> {
    match spawned {
        Spawned::Ready(out) => {
            rt.flush();
            finished(lua, out)
        }
        // Negative: the driver must run soon, for an earlier timer or for
        // the pool's deferred wake-up. (No second value: an empty
        // MultiValue allocates nothing.)
        Spawned::Pending(id) => {
            let rearm = rt.take_rearm() | rt.wake_owed();
            let id = id_value(id);
            Ok((Value::Number(if rearm { -id } else { id }), MultiValue::new()))
        }
    }
}

/// `true, ...results` or `true, nil, message`.
fn finished(lua: &Lua, out: Outcome<LuaOutput>) -> mlua::Result<RawResults> {
    Ok((Value::Boolean(true), results(lua, out)?))
}

/// `nil, message`: misuse, which the wrapper raises in the caller.
fn misuse(lua: &Lua, msg: &str) -> mlua::Result<RawResults> {
    Ok((Value::Nil, MultiValue::from_vec(vec![msg.into_lua(lua)?])))
}

/// The results of a finished task as Lua sees them: the values, or
/// `nil, message`.
fn results(lua: &Lua, out: Outcome<LuaOutput>) -> mlua::Result<MultiValue> {
    match out {
        Ok(Ok(values)) => Ok(values.into_multi()),
        Ok(Err(e)) => failure(lua, &error_message(&e)),
        Err(p) => failure(lua, &p.to_string()),
    }
}

/// `nil, message`: a task's failure, or a control function's error (a
/// raw function's misuse is [`misuse`]).
fn failure(lua: &Lua, msg: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![Value::Nil, msg.into_lua(lua)?]))
}

/// A readable message for an mlua error: the innermost cause, without
/// mlua's wrapping and tracebacks.
pub(crate) fn error_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => error_message(cause),
        mlua::Error::ExternalError(err) => err.to_string(),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", error_message(cause)),
        other => other.to_string(),
    }
}

/// The control functions `resty/async.lua` uses to drive this crate's
/// runtime (each module cdylib has its own).
fn control_table(lua: &Lua, vm: &Rc<VmRuntime>) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let h = Rc::clone(vm);
    t.raw_set(
        "path",
        lua.create_function(move |lua, ()| match h.get().socket_path() {
            Ok(p) => p.to_string_lossy().into_owned().into_lua_multi(lua),
            Err(e) => failure(lua, &format!("cannot create the completion socket: {e}")),
        })?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "accept",
        lua.create_function(move |lua, ()| match h.get().accept_driver() {
            Ok(true) => true.into_lua_multi(lua),
            Ok(false) => failure(lua, "completion socket: the driver's connection was not found"),
            Err(e) => failure(lua, &format!("completion socket: {e}")),
        })?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "disconnect",
        lua.create_function(move |_, ()| {
            if let Some(rt) = h.existing() {
                rt.disconnect_driver();
            }
            Ok(())
        })?,
    )?;
    // strings() -> the `id, string` pairs poll() left (see values.rs).
    // SAFETY: push_outbox follows the lua_CFunction protocol and is safe
    // to call from any Lua code (see there).
    t.raw_set("strings", unsafe { lua.create_c_function(values::push_outbox)? })?;
    // can_wait() -> whether the caller may yield (nil: cannot tell).
    // SAFETY: lua_can_wait follows the lua_CFunction protocol and reads only
    // the calling thread's own state.
    t.raw_set("can_wait", unsafe {
        lua.create_c_function(crate::yieldable::lua_can_wait)?
    })?;
    // poll(arm) -> next_ms, rearm, nstr, n, then the pairs of the finished
    // tasks (see the module docs) as results: no table writes, each would
    // be a protected call into Lua. next_ms is the time to the next timer
    // (-1: none); rearm: an earlier timer appeared than the one the driver
    // sleeps towards; nstr: pairs waiting for strings().
    let h = Rc::clone(vm);
    t.raw_set(
        "poll",
        lua.create_function(move |lua, arm: bool| {
            let rt = h.get();
            let _enter = vm::enter(&rt);
            // next_ms, rearm, nstr and n are set once known; the pairs
            // follow.
            let mut out = MultiValue::with_capacity(16);
            out.extend([Value::Nil, Value::Nil, Value::Nil, Value::Nil]);
            let next = rt.poll(arm, |id| match rt.take_single(lua, id) {
                Some(Single::Value(v)) => out.extend([Value::Number(id_value(id)), v]),
                Some(Single::Bytes(b)) => values::outbox_put(id_value(id), b),
                None => out.extend([Value::Number(-id_value(id)), Value::Nil]),
            });
            let nstr = values::outbox_len();
            let n = out.len() - 4;
            out[0] = Value::Number(next.map_or(-1.0, |d| d.as_secs_f64() * 1000.0));
            out[1] = Value::Boolean(!arm && rt.take_rearm());
            out[2] = Value::Number(nstr as f64);
            if n <= MAX_POLL_VALUES {
                out[3] = Value::Number(n as f64);
            } else {
                // (An error here loses the results taken above: their
                // waiters wait out their timeouts. Only a memory error can.)
                let t = lua.create_table_with_capacity(n, 0)?;
                for (i, v) in out.drain(4..).enumerate() {
                    t.raw_set(i + 1, v)?;
                }
                out[3] = Value::Number(-(n as f64));
                out.push_back(Value::Table(t));
            }
            Ok(out)
        })?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "take",
        lua.create_function(move |lua, id: f64| {
            let rt = h.get();
            let _enter = vm::enter(&rt);
            match rt.take(lua, id as TaskId) {
                Some(out) => results(lua, out),
                None => failure(lua, "no result for this task (cancelled?)"),
            }
        })?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "cancel",
        lua.create_function(move |_, id: f64| {
            Ok(h.existing().is_some_and(|rt| {
                let _enter = vm::enter(&rt);
                rt.cancel(id as TaskId)
            }))
        })?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "idle",
        lua.create_function(move |_, ()| Ok(h.existing().is_none_or(|rt| rt.is_idle())))?,
    )?;
    t.raw_set("vms_closed", lua.create_function(|_, ()| Ok(vm::vms_closed()))?)?;
    // adopt(v): see crate::class.
    t.raw_set(
        "adopt",
        lua.create_function(|lua, v: Value| crate::class::adopt(lua, &v))?,
    )?;
    // lua_async(name, f) -> the raw function of an mlua async function or
    // method (see crate::class).
    let h = Rc::clone(vm);
    t.raw_set(
        "lua_async",
        lua.create_function(move |lua, (name, f): (String, Function)| lua_async_raw(lua, &h, &name, f))?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set("stats", lua.create_function(move |lua, ()| stats_table(lua, &h))?)?;
    let h = Rc::clone(vm);
    t.raw_set(
        "configure",
        lua.create_function(
            move |lua, (threads, max_queue, base_dir, pool_nice, pool_cpus): ConfigureArgs| {
                let mut c: Config = match h.existing() {
                    Some(rt) => rt.config_in_use().clone(),
                    None => Runtime::config(),
                };
                if let Some(n) = threads {
                    c.threads = n;
                }
                if let Some(n) = pool_nice {
                    c.pool_nice = n;
                }
                if let Some(n) = max_queue {
                    c.max_queue = n;
                }
                if let Some(d) = base_dir {
                    c.base_dir = d.into();
                }
                if let Some(cpus) = pool_cpus {
                    c.pool_cpus = cpus;
                }
                match Runtime::configure(c, h.existing().as_deref()) {
                    Ok(()) => true.into_lua_multi(lua),
                    Err(e) => failure(lua, &e),
                }
            },
        )?,
    )?;
    Ok(t)
}

/// The arguments of `rt.configure`, in the order the Lua library passes
/// them: threads, max_queue, base_dir, pool_nice, pool_cpus (nil: keep).
type ConfigureArgs = (
    Option<usize>,
    Option<usize>,
    Option<String>,
    Option<i32>,
    Option<Vec<usize>>,
);

fn stats_table(lua: &Lua, vm: &VmRuntime) -> mlua::Result<Table> {
    let t = lua.create_table()?;
    let rt = vm.existing();
    let s = rt.as_ref().map(|rt| rt.stats()).unwrap_or_default();
    let cfg = rt.map_or_else(Runtime::config, |rt| rt.config_in_use().clone());
    t.raw_set("in_flight", s.executor.in_flight)?;
    t.raw_set("completed", s.executor.completed)?;
    t.raw_set("cancelled", s.executor.cancelled)?;
    t.raw_set("task_polls", s.executor.polls)?;
    t.raw_set("pool_threads", s.pool.threads)?;
    t.raw_set("pool_max_threads", cfg.threads)?;
    t.raw_set("pool_nice", cfg.pool_nice)?;
    t.raw_set("pool_queued", s.pool.queued)?;
    t.raw_set("pool_running", s.pool.running)?;
    t.raw_set("pool_done", s.pool.done)?;
    t.raw_set("pool_rejected", s.pool.rejected)?;
    t.raw_set("pool_skipped", s.pool.skipped)?;
    t.raw_set("pool_idle", s.pool.idle)?;
    t.raw_set("pool_wakeups", s.pool.wakeups)?;
    t.raw_set("timers", s.timers)?;
    t.raw_set("wakeups", s.wakeups)?;
    t.raw_set("driver_polls", s.polls)?;
    t.raw_set("rejected_peers", s.rejected_peers)?;
    t.raw_set("connected", s.connected)?;
    Ok(t)
}

/// Checks a timeout-like number argument: finite, not negative, at most
/// `max` seconds.
pub(crate) fn seconds_arg(v: &Value, pos: usize, fname: &str, max: f64) -> Result<Duration, String> {
    let secs = match v {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        other => {
            return Err(format!(
                "bad argument #{pos} to '{fname}' (number expected, got {})",
                lua_type(other)
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "bad argument #{pos} to '{fname}' (seconds must be a finite number >= 0, got {})",
            fmt_number(secs)
        ));
    }
    if secs > max {
        return Err(format!(
            "bad argument #{pos} to '{fname}' (seconds must be at most {}, got {})",
            fmt_number(max),
            fmt_number(secs)
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A number the way a person reads it: `1e300`, not 301 digits.
fn fmt_number(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e15 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// The name Lua's `type()` gives a value (mlua says "integer" for whole
/// numbers, which LuaJIT does not have).
pub(crate) fn lua_type(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "number",
        other => other.type_name(),
    }
}
