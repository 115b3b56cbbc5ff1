//! Lua strings made for less than mlua's generic way.
//!
//! On LuaJIT, mlua makes every string under its own protection against a
//! memory error: a `lua_cpcall` that creates two C closures, then a
//! `lua_pcall` of one of them. That costs more than the rest of a pool
//! call's result handling, on every string result. Here one C function,
//! made once per Lua state and kept in the registry, pushes the string
//! under a plain `lua_pcall`: the same protection (a memory error becomes
//! an `Err`, it never unwinds through Rust frames), for much less.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void};

use mlua::{ffi, Lua, LuaString};

// Its address is the registry key of the pushing function. Each library
// that embeds this crate has its own copy, hence its own key.
static PUSHER_KEY: u8 = 0;

fn pusher_key() -> *const c_void {
    &PUSHER_KEY as *const u8 as *const c_void
}

thread_local! {
    // The bytes `create` is making a string of, for `push_bytes`; empty
    // otherwise. Not an argument: Lua code can reach the function through
    // debug.getregistry(), and must not make it read arbitrary memory.
    static PENDING: Cell<Option<(*const u8, usize)>> = const { Cell::new(None) };
}

/// Pushes the bytes `create` left in PENDING (nothing if none).
unsafe extern "C-unwind" fn push_bytes(state: *mut ffi::lua_State) -> c_int {
    let Some((ptr, len)) = PENDING.with(|p| p.take()) else {
        return 0;
    };
    // SAFETY: `create` stored a slice that stays borrowed until its
    // lua_pcall of this function returns, and this is that call (taking it
    // leaves nothing for another). A memory error in lua_pushlstring
    // unwinds to that lua_pcall through this frame only, which owns nothing
    // to drop.
    unsafe { ffi::lua_pushlstring(state, ptr as *const c_char, len) };
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
///
/// `Lua::exec_raw_lua` is public but hidden from mlua's docs (Cargo.toml
/// asks for mlua 0.12.2 or a later 0.12, which have it).
pub(crate) fn create(lua: &Lua, bytes: &[u8]) -> mlua::Result<LuaString> {
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
            if ffi::lua_rawgetp(state, ffi::LUA_REGISTRYINDEX, pusher_key()) != ffi::LUA_TFUNCTION {
                ffi::lua_settop(state, top);
                return Err(mlua::Error::RuntimeError(
                    "resty-async: the string pusher is not installed in this Lua state".to_owned(),
                ));
            }
            PENDING.with(|p| p.set(Some((bytes.as_ptr(), bytes.len()))));
            let code = ffi::lua_pcall(state, 0, 1, 0);
            PENDING.with(|p| p.set(None));
            match code {
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
