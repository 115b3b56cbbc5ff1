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
use std::ffi::{c_char, c_int};

use mlua::{ffi, Lua, LuaString};

use crate::protected;

// Its address is the registry key of the pushing function (see
// protected.rs).
static PUSHER_KEY: u8 = 0;

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
    unsafe { protected::install(lua, &PUSHER_KEY, push_bytes) }
}

/// A Lua string holding `bytes`. Needs [`install`] first.
pub(crate) fn create(lua: &Lua, bytes: &[u8]) -> mlua::Result<LuaString> {
    PENDING.with(|p| p.set(Some((bytes.as_ptr(), bytes.len()))));
    let s = protected::call(lua, &PUSHER_KEY, "string pusher");
    PENDING.with(|p| p.set(None));
    s
}
