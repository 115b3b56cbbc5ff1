//! C functions called under one plain `lua_pcall`, for values that mlua
//! would make under a protected call of its own per write (`strings.rs`
//! makes strings this way, `record.rs` tables).
//!
//! Such a function is made once per Lua state and kept in the registry,
//! keyed by the address of a static of its module (each library that
//! embeds this crate has its own copy, hence its own key). What it works on
//! is not an argument but a thread-local its caller sets around
//! [`call`]: Lua code can reach the function through
//! `debug.getregistry()`, and must not make it read arbitrary memory.

use std::ffi::c_void;

use mlua::{ffi, FromLua, Lua};

fn key_ptr(key: &'static u8) -> *const c_void {
    key as *const u8 as *const c_void
}

/// Keeps `f` in `lua`'s registry under `key` (once per Lua state and
/// library; again is harmless).
///
/// # Safety
///
/// `f` follows the lua_CFunction protocol: it owns nothing when Lua raises
/// through it, and it pushes at most as many values as it returns.
pub(crate) unsafe fn install(lua: &Lua, key: &'static u8, f: ffi::lua_CFunction) -> mlua::Result<()> {
    // SAFETY: the caller's contract for `f`.
    let f = unsafe { lua.create_c_function(f)? };
    // SAFETY: exec_raw runs the closure under mlua's protection, with the
    // function as the only value on the stack: lua_rawsetp pops it into the
    // registry (a table resize may raise a memory error: protected).
    unsafe {
        lua.exec_raw::<()>(f, |state| {
            ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, key_ptr(key));
        })
    }
}

/// Calls the function installed under `key` with no arguments, under one
/// `lua_pcall`, and returns its one result. A memory error becomes
/// `Error::MemoryError`, any other error `Error::RuntimeError`; neither
/// unwinds through Rust frames. `what` names the function where it is not
/// installed.
///
/// `Lua::exec_raw_lua` is public but hidden from mlua's docs (Cargo.toml
/// asks for mlua 0.12.2 or a later 0.12, which have it).
pub(crate) fn call<T: FromLua>(lua: &Lua, key: &'static u8, what: &str) -> mlua::Result<T> {
    lua.exec_raw_lua(|raw| {
        let state = raw.state();
        // SAFETY: the stack gets 3 free slots first (the function, then the
        // result or an error message, and one for `pop`), as mlua itself
        // does before its protected calls. Reading the registry with a light
        // userdata key never allocates, so nothing between that and
        // lua_pcall can raise; inside it, a memory error is caught and
        // reported as LUA_ERRMEM with the message on the stack. The stack is
        // left as it was found in every outcome.
        unsafe {
            if ffi::lua_checkstack(state, 3) == 0 {
                return Err(mlua::Error::StackError);
            }
            let top = ffi::lua_gettop(state);
            if ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, key_ptr(key)) != ffi::LUA_TFUNCTION {
                ffi::lua_settop(state, top);
                return Err(mlua::Error::RuntimeError(format!(
                    "resty-async: the {what} is not installed in this Lua state"
                )));
            }
            let code = ffi::lua_pcall(state, 0, 1, 0);
            if code == ffi::LUA_OK {
                let v = raw.pop::<T>();
                ffi::lua_settop(state, top);
                return v;
            }
            let mut len = 0;
            let p = ffi::lua_tolstring(state, -1, &mut len);
            let msg = if p.is_null() {
                format!("resty-async: the {what} failed with a non-string error")
            } else {
                String::from_utf8_lossy(std::slice::from_raw_parts(p as *const u8, len)).into_owned()
            };
            ffi::lua_settop(state, top);
            Err(if code == ffi::LUA_ERRMEM {
                mlua::Error::MemoryError(msg)
            } else {
                mlua::Error::RuntimeError(msg)
            })
        }
    })
}
