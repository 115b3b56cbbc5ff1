//! The raw calling convention, between this crate and `resty/async.lua`.
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

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::rc::Rc;

use mlua::{FromLuaMulti, Function, IntoLua, IntoLuaMulti, Lua, MultiValue, Value};

use crate::executor::{Outcome, Panicked, Spawned, TaskId};
use crate::mlua_async::guard_lua_async;
use crate::runtime::{LuaOutput, Runtime, Settled};
use crate::values;
use crate::vm::{self, VmRuntime};

/// The lowest level of a waiting function: `f` validates the arguments
/// (`Err(message)` is raised in the caller) and spawns a task on the
/// runtime of `vm` (the raw calling convention of the module docs). A
/// panic in `f` (the module's code that makes the task: an argument's
/// `FromLua`, a closure before its future) is the call's result, as one in
/// the task is.
pub(crate) fn raw<A, F>(lua: &Lua, vm: &Rc<VmRuntime>, f: F) -> mlua::Result<Function>
where
    A: FromLuaMulti,
    F: Fn(&Lua, &Runtime, A) -> Result<Spawned<LuaOutput>, String> + 'static,
{
    let vm = Rc::clone(vm);
    lua.create_function(move |lua, args: A| {
        let rt = vm.get();
        let _enter = vm::enter(&rt);
        let made = || match crate::panic::catch(AssertUnwindSafe(|| f(lua, &rt, args))) {
            Ok(res) => res,
            Err(payload) => Ok(Spawned::Ready(Err(Panicked::from_payload(payload)))),
        };
        match rt.batch(made) {
            Ok(spawned) => spawned_results(lua, &rt, spawned),
            Err(msg) => misuse(lua, &msg),
        }
    })
}

/// A raw function whose task is the future `f` makes.
pub(crate) fn raw_async<F, Fut, R>(lua: &Lua, vm: &Rc<VmRuntime>, f: F) -> mlua::Result<Function>
where
    F: Fn(&Lua, MultiValue) -> Result<Fut, String> + 'static,
    Fut: Future<Output = mlua::Result<R>> + 'static,
    R: IntoLuaMulti + 'static,
{
    raw(lua, vm, move |lua, rt, args: MultiValue| {
        // (A closure may make tokio types before its future runs.)
        #[cfg(feature = "tokio")]
        let fut = crate::tokio::in_context(|| f(lua, args))?;
        #[cfg(not(feature = "tokio"))]
        let fut = f(lua, args)?;
        Ok(spawn_sized(lua, rt, fut))
    })
}

/// Spawns `fut`, whose output becomes Lua values. A large future goes to
/// the heap first: the wrappers around it and the task's allocation each
/// move what they are given, and a pointer moves for less than kilobytes
/// of state (a client's connection, say).
fn spawn_sized<Fut, R>(lua: &Lua, rt: &Runtime, fut: Fut) -> Spawned<LuaOutput>
where
    Fut: Future<Output = mlua::Result<R>> + 'static,
    R: IntoLuaMulti + 'static,
{
    if std::mem::size_of::<Fut>() > BOX_FUTURES_ABOVE {
        spawn_converted(lua, rt, Box::pin(fut))
    } else {
        spawn_converted(lua, rt, fut)
    }
}

/// Futures of more bytes than this are boxed before they are spawned.
const BOX_FUTURES_ABOVE: usize = 512;

/// Spawns `fut`, whose output becomes Lua values.
fn spawn_converted<Fut, R>(lua: &Lua, rt: &Runtime, fut: Fut) -> Spawned<LuaOutput>
where
    Fut: Future<Output = mlua::Result<R>> + 'static,
    R: IntoLuaMulti + 'static,
{
    let lua = lua.clone();
    rt.spawn(async move { fut.await.and_then(|r| values::convert(&lua, r)) })
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
    let name = name.to_owned();
    raw(lua, vm, move |lua, rt, args: MultiValue| {
        let f = f.clone();
        let spawned = spawn_sized(lua, rt, async move { f.call_async::<MultiValue>(args).await });
        // mlua converts the arguments in the function's first poll, which
        // spawning made: a failed conversion is misuse, raised in the
        // caller as a module function's is
        if let Spawned::Ready(Ok(Err(e))) = &spawned {
            if let Some(msg) = argument_error(e, &name) {
                return Err(msg);
            }
        }
        Ok(spawned)
    })
}

/// The message of `e` if mlua failed to convert an argument (a wrong
/// type, or a method called on another value than its object; not an
/// object borrowed by a call in flight, which is the call's failure, nor a
/// conversion in the function's own body). `func` names the function
/// where mlua does not: a function made by `create_async_function` does
/// not know the name it is registered under.
fn argument_error(e: &mlua::Error, func: &str) -> Option<String> {
    use mlua::Error::*;
    match e {
        CallbackError { cause, .. } => argument_error(cause, func),
        BadArgument { to, pos, name, cause } => match **cause {
            UserDataBorrowError | UserDataBorrowMutError | UserDataDestructed => None,
            _ if to.is_none() => Some(error_message(&BadArgument {
                to: Some(func.to_owned()),
                pos: *pos,
                name: name.clone(),
                cause: cause.clone(),
            })),
            _ => Some(error_message(e)),
        },
        _ => None,
    }
}

/// Tells the runtimes of different module libraries apart: each cdylib
/// that embeds this crate has its own copy of this static.
pub(crate) fn library_id() -> String {
    static MARK: u8 = 0;
    format!("{:p}", &MARK as *const u8)
}

pub(crate) fn id_value(id: TaskId) -> f64 {
    // Ids start at 1 and stay below 2^53 (see futureless.rs): exact as a
    // Lua number, and never 0, so that the sign can carry a flag.
    id as f64
}

/// The version of the raw calling convention (module docs), which
/// `resty/async.lua` checks: a module crate built against another
/// resty-async than the `resty/async.lua` it runs with fails to register
/// instead of misreading results.
pub const ABI: u32 = 7;

/// What a raw function returns: its first value (`true`, a task id or
/// `nil`) and the rest. A tuple, so that mlua pushes the results of a finished
/// task as they are, without copying them behind the first value.
type RawResults = (Value, MultiValue);

/// What a raw function returns for a task it spawned.
pub(crate) fn spawned_results(
    lua: &Lua,
    rt: &Runtime,
    spawned: Spawned<LuaOutput>,
) -> mlua::Result<RawResults> {
    match spawned {
        Spawned::Ready(out) => {
            rt.flush();
            finished(lua, out)
        }
        // Negative: the driver must run soon, for an earlier timer or for
        // the pool's deferred wake-up. (No second value: an empty
        // MultiValue allocates nothing.)
        Spawned::Pending(id) => {
            // resty_async::net: the children the first poll started run
            // now; after the id, `k` and the k values of the socket ops
            // queued for the caller (see net/lua.rs).
            let (rearm, ops) = match rt.settle(id) {
                None => (rt.take_rearm() | rt.wake_owed(), false),
                Some(Settled::Finished(out)) => {
                    rt.flush();
                    return finished(lua, out);
                }
                Some(Settled::Pending { ops }) => (rt.driver_owed(id), ops),
            };
            let more = if ops {
                crate::net::lua::ops_values(lua, rt, id)?
            } else {
                MultiValue::new()
            };
            let id = id_value(id);
            Ok((Value::Number(if rearm { -id } else { id }), more))
        }
    }
}

/// `true, ...results` or `true, nil, message`.
pub(crate) fn finished(lua: &Lua, out: Outcome<LuaOutput>) -> mlua::Result<RawResults> {
    Ok((Value::Boolean(true), results(lua, out)?))
}

/// `nil, message`: misuse, which the wrapper raises in the caller.
pub(crate) fn misuse(lua: &Lua, msg: &str) -> mlua::Result<RawResults> {
    Ok((Value::Nil, MultiValue::from_vec(vec![msg.into_lua(lua)?])))
}

/// The results of a finished task as Lua sees them: the values, or
/// `nil, message`.
pub(crate) fn results(lua: &Lua, out: Outcome<LuaOutput>) -> mlua::Result<MultiValue> {
    match out {
        Ok(Ok(values)) => Ok(values.into_multi()),
        Ok(Err(e)) => failure(lua, &error_message(&e)),
        Err(p) => failure(lua, &p.to_string()),
    }
}

/// `nil, message`: a task's failure, or a control function's error (a
/// raw function's misuse is [`misuse`]).
pub(crate) fn failure(lua: &Lua, msg: &str) -> mlua::Result<MultiValue> {
    Ok(MultiValue::from_vec(vec![Value::Nil, msg.into_lua(lua)?]))
}

/// `m` without the traceback mlua appends to the error of Lua code that
/// Rust called (a module's function that runs Lua code): a `nil, message`
/// is one message, and in a task the traceback would be the driver's.
fn without_traceback(m: &str) -> &str {
    m.split("\nstack traceback:").next().unwrap_or(m)
}

/// The message of mlua's `StackError`.
pub(crate) const STACK_ERROR: &str = "out of Lua stack: too many Lua values at once (mlua keeps \
     at most about 8,000 per module crate and Lua VM, and each call in flight of an async method \
     or of a Module::add_lua_async function keeps one)";

/// A readable message for an mlua error: the innermost cause, without
/// mlua's wrapping and tracebacks.
pub(crate) fn error_message(e: &mlua::Error) -> String {
    match e {
        mlua::Error::RuntimeError(m) | mlua::Error::MemoryError(m) => without_traceback(m).to_owned(),
        mlua::Error::CallbackError { cause, .. } => error_message(cause),
        mlua::Error::ExternalError(err) => err.to_string(),
        mlua::Error::WithContext { context, cause } => format!("{context}: {}", error_message(cause)),
        // mlua's own text blames arguments and return values; at scale the
        // cause is the values it keeps for Rust (LuaJIT lets one thread hold
        // LUAI_MAXCSTACK of them), of which every call of an async method or
        // of a Module::add_lua_async function keeps one (its coroutine)
        // while in flight.
        mlua::Error::StackError => STACK_ERROR.to_owned(),
        other => other.to_string(),
    }
}
