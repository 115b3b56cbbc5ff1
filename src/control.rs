//! The control functions `resty/async.lua` drives a runtime with.

use std::rc::Rc;

use mlua::{Function, IntoLuaMulti, Lua, Table, Value};

use crate::config::{Config, ConfigError};
use crate::executor::TaskId;
use crate::raw::{failure, lua_async_raw, results};
use crate::runtime::Runtime;
use crate::vm::{self, VmRuntime};

/// The control functions `resty/async.lua` uses to drive this crate's
/// runtime (each module cdylib has its own).
pub(crate) fn control_table(lua: &Lua, vm: &Rc<VmRuntime>) -> mlua::Result<Table> {
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
    // can_wait() -> whether the caller may yield (nil: cannot tell).
    // SAFETY: lua_can_wait follows the lua_CFunction protocol and reads only
    // the calling thread's own state.
    t.raw_set("can_wait", unsafe {
        lua.create_c_function(crate::yieldable::lua_can_wait)?
    })?;
    // wait(vm, id, timeout [, checked]): see waiters.rs (nil: callers wait
    // on ngx.semaphore in Lua).
    t.raw_set("wait", crate::waiters::push_wait(lua)?)?;
    // note_running(vm): see waiters.rs (nil where wait is).
    t.raw_set("note_running", crate::waiters::push_note_running(lua)?)?;
    // wait_counts() -> callers queued from an FFI call, from the Lua C
    // function (tests).
    let h = Rc::clone(vm);
    t.raw_set(
        "wait_counts",
        lua.create_function(move |_, ()| Ok(h.existing().map_or((0, 0), |rt| rt.waiters.queued())))?,
    )?;
    // sweep(): cancels the tasks of waiters ngx_lua killed.
    let h = Rc::clone(vm);
    t.raw_set(
        "sweep",
        lua.create_function(move |_, ()| {
            if let Some(rt) = h.existing() {
                let _enter = vm::enter(&rt);
                rt.sweep_waiters();
            }
            Ok(())
        })?,
    )?;
    // run() -> whether tasks are still ready: runs the tasks that are
    // ready, when the FFI poll said so (their polls may use Lua), within a
    // budget; if some are left, a byte on the completion socket asks for
    // another poll. The poll that follows reports the finished ones.
    let h = Rc::clone(vm);
    t.raw_set(
        "run",
        lua.create_function(move |_, ()| {
            let rt = h.get();
            let _enter = vm::enter(&rt);
            rt.run_tasks();
            Ok(rt.has_ready())
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
    // waited(id) -> whether a caller that ngx_lua has not killed waits for
    // task `id` in the runtime (a task handle's wait asks: see task.lua).
    let h = Rc::clone(vm);
    t.raw_set(
        "waited",
        lua.create_function(move |_, id: f64| Ok(h.existing().is_some_and(|rt| rt.is_waited(id as TaskId))))?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "idle",
        lua.create_function(move |_, ()| Ok(h.existing().is_none_or(|rt| rt.is_idle())))?,
    )?;
    t.raw_set(
        "vms_come_and_go",
        lua.create_function(|_, ()| Ok(vm::vms_come_and_go()))?,
    )?;
    // in_flight() -> tasks pending, or finished and not taken
    let h = Rc::clone(vm);
    t.raw_set(
        "in_flight",
        lua.create_function(move |_, ()| Ok(h.existing().map_or(0, |rt| rt.in_flight())))?,
    )?;
    // adopt(v) -> whether a registered type is still to be taken over:
    // takes over the type of `v`, a userdata, or of those in `v`, a table
    // (see crate::class).
    t.raw_set(
        "adopt",
        lua.create_function(|lua, v: Value| {
            crate::class::adopt_value(lua, &v)?;
            Ok(crate::class::pending(lua))
        })?,
    )?;
    // lua_async(name, f) -> the raw function of an mlua async function or
    // method (see crate::class).
    let h = Rc::clone(vm);
    t.raw_set(
        "lua_async",
        lua.create_function(move |lua, (name, f): (String, Function)| lua_async_raw(lua, &h, &name, f))?,
    )?;
    let h = Rc::clone(vm);
    t.raw_set(
        "stats",
        lua.create_function(move |lua, ()| stats_tables(lua, &h))?,
    )?;
    // net_step, net_resolve: see crate::net.
    crate::net::lua::install(lua, vm, &t)?;
    // configure(opts) -> true, timeout | nil, message [, true: misuse]
    let h = Rc::clone(vm);
    t.raw_set(
        "configure",
        lua.create_function(move |lua, opts: Value| {
            let Value::Table(opts) = opts else {
                let msg = format!(
                    "bad argument #1 to 'configure' (table expected, got {})",
                    opts.type_name()
                );
                return (Value::Nil, msg, true).into_lua_multi(lua);
            };
            // (from the defaults: the Lua side passes every option given
            // so far in this Lua VM)
            let running = h.existing();
            // (the tokio runtime is the process's: with lua_code_cache
            // off, a request's VM takes init_by_lua's options, and those
            // that leave tokio_threads out ask for no change of a runtime
            // that another VM's options started)
            let names_tokio = !opts.raw_get::<Value>("tokio_threads")?.is_nil();
            match Config::default().with_options(lua, &opts) {
                Ok((config, timeout)) => {
                    let tokio = if names_tokio { check_tokio(&config) } else { Ok(()) };
                    match tokio.and_then(|()| Runtime::configure(config, running.as_deref())) {
                        Ok(()) => (true, timeout).into_lua_multi(lua),
                        Err(e) => failure(lua, &e),
                    }
                }
                Err(ConfigError::Refused(e)) => failure(lua, &e),
                Err(ConfigError::Misuse(e)) => (Value::Nil, e, true).into_lua_multi(lua),
            }
        })?,
    )?;
    Ok(t)
}

/// Refuses a change of the tokio runtime's settings once it runs (the
/// `tokio` feature; it outlives the runtimes of Lua VMs).
fn check_tokio(config: &Config) -> Result<(), String> {
    #[cfg(feature = "tokio")]
    return crate::tokio::check_config(config);
    #[cfg(not(feature = "tokio"))]
    {
        let _ = config;
        Ok(())
    }
}

/// `stats()` -> counters (added up over the runtimes of a worker),
/// settings (the same in each).
fn stats_tables(lua: &Lua, vm: &VmRuntime) -> mlua::Result<(Table, Table)> {
    let t = lua.create_table()?;
    let rt = vm.existing();
    let s = rt.as_ref().map(|rt| rt.stats()).unwrap_or_default();
    let cfg = rt.map_or_else(Runtime::config, |rt| rt.config_in_use().clone());
    let settings = lua.create_table()?;
    settings.raw_set("pool_max_threads", cfg.threads)?;
    settings.raw_set("pool_nice", cfg.pool_nice)?;
    settings.raw_set("max_queue", cfg.max_queue)?;
    t.raw_set("in_flight", s.executor.in_flight)?;
    t.raw_set("waiting", s.waiting)?;
    t.raw_set("completed", s.executor.completed)?;
    t.raw_set("cancelled", s.executor.cancelled)?;
    t.raw_set("task_polls", s.executor.polls)?;
    t.raw_set("pool_threads", s.pool.threads)?;
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
    t.raw_set("connected", u8::from(s.connected))?;
    // The process's tokio runtime (the `tokio` feature): its threads and
    // its tasks alive; zero without it.
    #[cfg(feature = "tokio")]
    let (tokio_threads, tokio_tasks) = crate::tokio::stats();
    #[cfg(not(feature = "tokio"))]
    let (tokio_threads, tokio_tasks) = (0, 0);
    t.raw_set("tokio_threads", tokio_threads)?;
    t.raw_set("tokio_tasks", tokio_tasks)?;
    t.raw_set("streams", s.streams)?;
    Ok((t, settings))
}
