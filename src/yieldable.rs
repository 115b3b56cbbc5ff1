//! Whether the Lua code calling into Rust may yield.
//!
//! A light thread that waits yields to nginx. Inside a C function that
//! calls back into Lua (a `table.sort` comparator, a `string.gsub`
//! callback, a module's top-level code run by `require`) LuaJIT cannot
//! yield, and ngx_lua finds out only after it queued the waiter: the
//! semaphore keeps a waiter that is not waiting, and posting it later
//! resumes a coroutine that is not suspended, which crashes the worker.
//! This LuaJIT has no `coroutine.isyieldable`, so the check reads what
//! LuaJIT's own `lua_yield` reads: the `CFRAME_RESUME` bit of the thread's
//! C frame pointer, which is set while the thread runs under `lua_resume`
//! and clear inside a C call.

use std::ffi::c_int;

use mlua::ffi;

/// Offsets in LuaJIT 2.1's `lua_State` with 64-bit GC references (GC64,
/// the default on x86-64 and arm64): `base`, `top`, `maxstack`, `stack`
/// and `cframe`.
const BASE: usize = 32;
const TOP: usize = 40;
const MAXSTACK: usize = 48;
const STACK: usize = 56;
const CFRAME: usize = 80;
/// `CFRAME_RESUME` (lj_frame.h).
const CFRAME_RESUME: usize = 1;
/// Most bytes between this function's frame and the C frame of the
/// `lua_resume` or `lua_call` that runs the caller.
const MAX_C_STACK_DISTANCE: usize = 16 << 20;

/// What [`can_yield`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Yieldable {
    Yes,
    No,
    /// The `lua_State` does not look as expected (another LuaJIT build).
    Unknown,
}

/// Whether the Lua code that called the C function running on `state` may
/// yield.
///
/// # Safety
///
/// `state` must be the `lua_State` a Lua C function was called with, while
/// that function runs.
pub(crate) unsafe fn can_yield(state: *mut ffi::lua_State) -> Yieldable {
    if !cfg!(all(target_pointer_width = "64", target_endian = "little")) {
        return Yieldable::Unknown;
    }
    let here = &state as *const _ as usize;
    let p = state as *const u8;
    // SAFETY: a GC64 lua_State is 96 bytes or more and `state` is a live
    // one (the caller's contract). The layout is checked against what the
    // C API says before the C frame pointer is trusted: `top - base` must
    // be the number of values on this function's stack, both must lie
    // inside the thread's stack, and the C frame must be on this thread's
    // C stack, just above this function's own frame. Under another layout
    // the reads stay within the 64 bytes every LuaJIT lua_State has until
    // those checks fail.
    unsafe {
        let word = |off: usize| std::ptr::read_unaligned(p.add(off) as *const usize);
        let (base, top) = (word(BASE), word(TOP));
        let (maxstack, stack) = (word(MAXSTACK), word(STACK));
        let nargs = ffi::lua_gettop(state);
        let layout_ok = nargs >= 0
            && stack <= base
            && base <= top
            && top <= maxstack
            && (top - base) == nargs as usize * 8
            && maxstack - stack < (1 << 30);
        if !layout_ok {
            return Yieldable::Unknown;
        }
        let cframe = word(CFRAME);
        let raw = cframe & !3;
        if raw <= here || raw - here > MAX_C_STACK_DISTANCE {
            return Yieldable::Unknown;
        }
        if cframe & CFRAME_RESUME != 0 {
            Yieldable::Yes
        } else {
            Yieldable::No
        }
    }
}

/// The Lua function `can_wait()`: true, false, or nil when it cannot
/// tell (the caller then walks the stack with the debug library).
pub(crate) unsafe extern "C-unwind" fn lua_can_wait(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with its own state; the stack
    // has room for one result (LUA_MINSTACK).
    unsafe {
        match can_yield(state) {
            Yieldable::Yes => ffi::lua_pushboolean(state, 1),
            Yieldable::No => ffi::lua_pushboolean(state, 0),
            Yieldable::Unknown => ffi::lua_pushnil(state),
        }
    }
    1
}
