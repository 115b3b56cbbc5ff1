//! The control functions `resty/async.lua` drives a runtime with.

use std::rc::Rc;

use mlua::{Function, IntoLuaMulti, Lua, MultiValue, Table, Value};

use crate::config::ConfigError;
use crate::executor::TaskId;
use crate::futureless::Single;
use crate::raw::{failure, id_value, lua_async_raw, results, MAX_POLL_VALUES};
use crate::runtime::Runtime;
use crate::strings;
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
    // strings() -> the `id, string` pairs poll() left (see values.rs).
    // SAFETY: push_outbox follows the lua_CFunction protocol and is safe
    // to call from any Lua code (see there).
    t.raw_set("strings", unsafe { lua.create_c_function(strings::push_outbox)? })?;
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
                Some(Single::Bytes(b)) => strings::outbox_put(id_value(id), b),
                None => out.extend([Value::Number(-id_value(id)), Value::Nil]),
            });
            // resty_async::net: `-id, false`, tasks that queued socket ops
            // for their waiters.
            rt.net()
                .take_ready(|id| out.extend([Value::Number(-id_value(id)), Value::Boolean(false)]));
            let nstr = strings::outbox_len();
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
            let running = h.existing();
            let mut current = running
                .as_ref()
                .map_or_else(Runtime::config, |rt| rt.config_in_use().clone());
            current.net = Runtime::net_config();
            match current.with_options(&opts) {
                Ok((config, timeout)) => match Runtime::configure(config, running.as_deref()) {
                    Ok(()) => (true, timeout).into_lua_multi(lua),
                    Err(e) => failure(lua, &e),
                },
                Err(ConfigError::Refused(e)) => failure(lua, &e),
                Err(ConfigError::Misuse(e)) => (Value::Nil, e, true).into_lua_multi(lua),
            }
        })?,
    )?;
    Ok(t)
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
    t.raw_set("streams", s.streams)?;
    Ok((t, settings))
}
