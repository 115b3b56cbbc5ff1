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
//!
//! The functions reach Lua as *raw* functions (see `raw.rs`) that
//! `resty/async.lua` wraps.

use std::fmt::Display;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::Arc;

use std::ffi::c_void;

use mlua::{FromLuaMulti, Function, IntoLua, IntoLuaMulti, LightUserData, Lua, MultiValue, Table, UserData};

use crate::control::control_table;
use crate::executor::{Panicked, Spawned};
use crate::mlua_async::{guard_mlua_yield, pin_mlua_state};
use crate::raw::error_message;
use crate::raw::{self, finished, lua_async_raw, misuse, ABI};
use crate::runtime::{LuaOutput, Runtime};
use crate::sendable::Sendable;
use crate::strings;
use crate::values;
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
        logged(lua, name, guard_mlua_yield(lua))?;
        Module::with_name(lua, name)
    }

    /// The built-in module's: `resty/async.lua` is loading it.
    pub(crate) fn new_core(lua: &Lua, name: &str) -> mlua::Result<Module> {
        Module::with_name(lua, name)
    }

    fn with_name(lua: &Lua, name: &str) -> mlua::Result<Module> {
        strings::install(lua)?;
        crate::record::install(lua)?;
        crate::sys::pin_library();
        pin_mlua_state(lua)?;
        let vm = VmRuntime::of(lua)?;
        let raw = lua.create_table()?;
        let kinds = lua.create_table()?;
        raw.raw_set("__name", name)?;
        raw.raw_set("__kinds", kinds.clone())?;
        raw.raw_set("__rt", control_table(lua, &vm)?)?;
        raw.raw_set("__id", raw::library_id())?;
        raw.raw_set("__abi", ABI)?;
        // The FFI entry points and this VM's runtime handle (see ffi.rs).
        raw.raw_set(
            "__api",
            LightUserData(&crate::ffi::API as *const _ as *mut c_void),
        )?;
        raw.raw_set("__vm", LightUserData(vm.as_ptr() as *mut c_void))?;
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
            // (the conversion of the arguments is the module's code too: a
            // FromLua that panics)
            let out = crate::panic::catch(AssertUnwindSafe(|| {
                A::from_lua_args(args, 1, Some(&fname), lua)
                    .map(|args| f(lua, args).and_then(|r| values::convert(lua, r)))
            }));
            let out = match out {
                Ok(Ok(out)) => Ok(out),
                Ok(Err(e)) => return misuse(lua, &error_message(&e)),
                Err(payload) => Err(Panicked::from_payload(payload)),
            };
            finished(lua, out)
        })?;
        self.insert(name, "sync", func)
    }

    /// Registers a function made by mlua's `Lua::create_async_function`
    /// (or [`crate::create_async_function`]). It is run by the executor through
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
    /// stay as mlua makes them, but raise their errors as strings.
    ///
    /// mlua makes a type's metatable when the first value of the type
    /// reaches Lua; resty-async takes over its async methods when a value
    /// of the type comes out of one of this module's functions, or of a
    /// method, field or metamethod of a registered type, alone or in a
    /// table (a `Vec` of objects, a record holding one), or is one of its
    /// exports (and its async functions when a proxy of it, made by
    /// `Lua::create_proxy`, is one of the exports). (A value that reaches
    /// Lua only another way, such as an argument Rust passes to a Lua
    /// callback, has async methods that raise an error until then.)
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
        raw::raw_async(&self.lua, &self.vm, f)
    }

    /// Like [`Module::add_raw_async`] for a blocking call: `f` validates
    /// the arguments and returns the job, which runs on the pool as a task
    /// of its own, without a future (see `futureless.rs`). A panic in `f`
    /// (an argument's `FromLua`, the module's code) is the call's result,
    /// as one in the job is.
    pub(crate) fn add_raw_blocking<A, F, J>(&mut self, name: &str, f: F) -> mlua::Result<&mut Module>
    where
        A: FromLuaMulti,
        F: Fn(&Lua, A) -> Result<J, String> + 'static,
        J: FnOnce() -> Sendable + Send + 'static,
    {
        // (a panic in `f`: see raw::raw)
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
        raw::raw(&self.lua, &self.vm, f)
    }

    fn insert(&mut self, name: &str, kind: &str, func: Function) -> mlua::Result<&mut Module> {
        self.raw.raw_set(name, func)?;
        self.kinds.raw_set(name, kind)?;
        Ok(self)
    }

    /// The raw table (for `resty/async.lua` itself).
    pub(crate) fn into_raw(self) -> Table {
        self.raw
    }

    /// The exports table: `require("resty.async").register(raw)`, i.e. every
    /// function wrapped to wait on a semaphore when its task is pending.
    ///
    /// A failure (`lualib/` missing, or of another resty-async version) is
    /// also written to nginx's error log, as one of [`Module::new`] is:
    /// `require` raises it, but ngx_lua reports mlua's errors (userdata) as
    /// "unknown reason".
    pub fn build(self) -> mlua::Result<Table> {
        let lua = self.lua.clone();
        let name: String = self.raw.raw_get("__name").unwrap_or_default();
        let built = (|| {
            let require: Function = lua.globals().get("require")?;
            let async_lib: Table = require.call("resty.async")?;
            let register: Function = async_lib.get("register")?;
            register.call(self.raw)
        })();
        logged(&lua, &name, built)
    }
}

/// `res`; an error also goes to nginx's error log, as why module `name`
/// did not load. `require` raises it too, but mlua raises its errors as
/// userdata, which ngx_lua reports as "unknown reason" ("unknown error" in
/// init_by_lua): the log line is where the user reads the message.
/// (Outside nginx there is no `ngx.log`, and the error is all. A VM logs
/// it once: Lua's `require` does not load a module again after its loader
/// failed.)
fn logged<T>(lua: &Lua, name: &str, res: mlua::Result<T>) -> mlua::Result<T> {
    if let Err(e) = &res {
        log_load_failure(lua, name, e);
    }
    res
}

fn log_load_failure(lua: &Lua, name: &str, e: &mlua::Error) {
    let msg = match e {
        mlua::Error::RuntimeError(m) => m.clone(),
        e => e.to_string(),
    };
    let msg = msg.split("\nstack traceback:").next().unwrap_or_default();
    let log = || -> mlua::Result<()> {
        let ngx: Table = lua.globals().get("ngx")?;
        let log: Function = ngx.get("log")?;
        let level: mlua::Value = ngx.get("ERR")?;
        log.call((
            level,
            format!("resty.async: the module {name} did not load: {msg}"),
        ))
    };
    let _ = log();
}
