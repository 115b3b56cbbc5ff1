//! Lua strings made from Rust bytes, for less than mlua's generic way.
//!
//! On LuaJIT, mlua makes every string under its own protection against a
//! memory error: a `lua_cpcall` that creates two C closures, then a
//! `lua_pcall` of one of them. That costs about 2,600 instructions per
//! string, more than the rest of a pool call's result handling, and every
//! `async.sha256` or `async.read_file` pays it. Here one C function, made
//! once per Lua state and kept in the registry, pushes the string under a
//! plain `lua_pcall`: the same protection (a memory error becomes an `Err`,
//! it never unwinds through Rust frames), about a fifth of the cost.

use std::any::Any;
use std::ffi::{c_char, c_int, c_void};

use mlua::{ffi, BString, Lua, LuaString, MultiValue, Value};

// Its address is the registry key of the pushing function. Each library
// that embeds this crate has its own copy, hence its own key.
static PUSHER_KEY: u8 = 0;

fn pusher_key() -> *const c_void {
    &PUSHER_KEY as *const u8 as *const c_void
}

/// Pushes the bytes a light userdata argument points to (a `&[u8]`).
unsafe extern "C-unwind" fn push_bytes(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: only `create` calls this (through lua_pcall), with one light
    // userdata argument: the address of a `&[u8]` on its stack frame, which
    // outlives the call. A memory error in lua_pushlstring unwinds to that
    // lua_pcall through this frame only, which owns nothing to drop.
    unsafe {
        let bytes = &*(ffi::lua_touserdata(state, 1) as *const &[u8]);
        ffi::lua_pushlstring(state, bytes.as_ptr() as *const c_char, bytes.len());
    }
    1
}

/// Makes [`create`] usable in `lua` (once per Lua state; again is harmless).
pub(crate) fn install(lua: &Lua) -> mlua::Result<()> {
    // SAFETY: push_bytes follows the lua_CFunction protocol (see above).
    let f = unsafe { lua.create_c_function(push_bytes)? };
    // SAFETY: exec_raw runs the closure under mlua's protection, with the
    // function as the only value on the stack: lua_rawsetp pops it into the
    // registry (a table resize may raise a memory error: protected).
    unsafe {
        lua.exec_raw::<()>(f, |state| {
            ffi::lua_rawsetp(state, ffi::LUA_REGISTRYINDEX, pusher_key());
        })
    }
}

/// A Lua string holding `bytes`. Needs [`install`] first.
pub(crate) fn create(lua: &Lua, bytes: &[u8]) -> mlua::Result<LuaString> {
    lua.exec_raw_lua(|raw| {
        let state = raw.state();
        // SAFETY: the stack gets 3 free slots first (the function, its
        // argument, then the result or an error message), as mlua itself
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
            if ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, pusher_key()) != ffi::LUA_TFUNCTION {
                ffi::lua_settop(state, top);
                return Err(mlua::Error::RuntimeError(
                    "resty-async: the string pusher is not installed in this Lua state".to_owned(),
                ));
            }
            let slice: &[u8] = bytes;
            ffi::lua_pushlightuserdata(state, &slice as *const &[u8] as *mut c_void);
            match ffi::lua_pcall(state, 1, 1, 0) {
                ffi::LUA_OK => {
                    let s = raw.pop::<LuaString>();
                    ffi::lua_settop(state, top);
                    s
                }
                code => {
                    let mut len = 0;
                    let p = ffi::lua_tolstring(state, -1, &mut len);
                    let msg = if p.is_null() {
                        "unknown error".to_owned()
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
            }
        }
    })
}

/// The bytes of `r` if it is one value that mlua turns into a Lua string:
/// `String`, `&'static str` or `BString` (not `Vec<u8>`: that is a table).
fn as_string<R: 'static>(r: &R) -> Option<&[u8]> {
    let r = r as &dyn Any;
    if let Some(s) = r.downcast_ref::<String>() {
        Some(s.as_bytes())
    } else if let Some(s) = r.downcast_ref::<&'static str>() {
        Some(s.as_bytes())
    } else {
        r.downcast_ref::<BString>().map(|s| s.as_slice())
    }
}

/// A function's results for Lua: `r.into_lua_multi(lua)`, but one string
/// is made by [`create`].
pub(crate) fn results<R: mlua::IntoLuaMulti + 'static>(lua: &Lua, r: R) -> mlua::Result<MultiValue> {
    match as_string(&r) {
        Some(bytes) => Ok(MultiValue::from_vec(vec![Value::String(create(lua, bytes)?)])),
        None => r.into_lua_multi(lua),
    }
}
