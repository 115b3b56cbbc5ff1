//! mlua's async functions inside OpenResty.
//!
//! mlua (module mode, LuaJIT) makes an async function a Lua loop that polls
//! its future and, while it is pending, yields through the
//! `coroutine.yield` it captured when it was made. In OpenResty that is
//! ngx_lua's, which resumes the caller at once: called directly, the
//! function spins the worker. resty-async drives such functions with
//! `Function::call_async` on its executor, with their `yield` pointed at
//! LuaJIT's own (`coroutine._yield`).

use std::future::Future;

use mlua::{FromLuaMulti, Function, IntoLuaMulti, Lua, Table, Value};

use crate::raw::library_id;

/// `Lua::create_async_function`, made so that its futures can be driven by
/// resty-async inside OpenResty: its internal `yield` is LuaJIT's raw one
/// (ngx_lua keeps it as `coroutine._yield`), guarded so that a direct call
/// outside resty-async raises an error instead of spinning the worker.
/// Register the result with [`crate::Module::add_lua_async`].
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
pub(crate) fn guard_lua_async(lua: &Lua, f: &Function) -> mlua::Result<()> {
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
pub(crate) fn pin_mlua_state(lua: &Lua) -> mlua::Result<()> {
    let key = format!("resty_async.loader_thread.{}", library_id());
    if lua.named_registry_value::<Value>(&key)?.is_nil() {
        lua.set_named_registry_value(&key, lua.current_thread())?;
    }
    Ok(())
}

/// Points `coroutine.yield` at resty.async's guard (see `guard_mlua` in
/// `resty/async.lua`) before this library makes any async function, and
/// tells the guard this library's pending marker and how to know that its
/// executor is polling.
pub(crate) fn guard_mlua_yield(lua: &Lua) -> mlua::Result<()> {
    let require: Function = lua.globals().get("require")?;
    let async_lib: Table = require.call("resty.async")?;
    let guard: Function = async_lib.get("guard_mlua")?;
    let in_poll = lua.create_function(|_, ()| Ok(crate::executor::in_poll()))?;
    guard.call::<()>((Lua::poll_pending(), in_poll))
}
