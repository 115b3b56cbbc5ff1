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
//!
//! A Lua C function is given its `lua_State`; an FFI call is not. LuaJIT
//! keeps the running one in its `global_State` (`cur_L`, which its
//! compiled code reads too), at an offset this module finds by calibration:
//! while the C function runs for three different coroutines, the one word
//! of the `global_State` that held each of them is `cur_L` ([`calibrate`]).
//! Until then, or if no single word qualifies (another LuaJIT), waits take
//! the C function.

use std::ffi::c_int;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

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
/// `lua_State.glref`: the thread's `global_State`.
const GLREF: usize = 16;
/// The size of a `lua_State` in OpenResty's LuaJIT (GC64, with `exdata`
/// and `exdata2`): LuaJIT allocates the main thread right before the
/// `global_State` (`GG_State`), which is how a `global_State` is told
/// from something else.
const STATE_SIZE: usize = 112;
/// How many words of the `global_State` the calibration looks at, one bit
/// of a `u64` each. In OpenResty's LuaJIT 2.1 it is 736 bytes, `cur_L` at
/// 368; the `jit_State` follows it in the same allocation, whose own `L`
/// field must stay out of the scan.
const SCAN_WORDS: usize = 64;
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
    // SAFETY: a GC64 lua_State is 96 bytes or more and `state` is a live
    // one (the caller's contract). The layout is checked against what the
    // C API says before the C frame pointer is trusted: `top - base` must
    // be the number of values on this function's stack, both must lie
    // inside the thread's stack, and the C frame must be on this thread's
    // C stack, just above this function's own frame. Under another layout
    // the reads stay within the 64 bytes every LuaJIT lua_State has until
    // those checks fail.
    unsafe {
        let at = |off: usize| word(state as usize, off);
        let (base, top) = (at(BASE), at(TOP));
        let (maxstack, stack) = (at(MAXSTACK), at(STACK));
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
        judge(at(CFRAME), here)
    }
}

/// The `global_State` of `state`, if it is one (see [`STATE_SIZE`]).
///
/// # Safety
///
/// As [`can_yield`], which must have found the layout as expected (not
/// [`Yieldable::Unknown`]).
pub(crate) unsafe fn global_of(state: *mut ffi::lua_State) -> Option<usize> {
    // SAFETY: the caller's contract: `state` is a live lua_State of the
    // GC64 layout, so `glref` is its global_State, which LuaJIT allocates
    // in one block right after the main thread's lua_State.
    unsafe {
        let g = word(state as usize, GLREF);
        if g == 0 || !g.is_multiple_of(8) || g < STATE_SIZE || word(g - STATE_SIZE, GLREF) != g {
            return None;
        }
        Some(g)
    }
}

/// `cur_L`'s offset in the `global_State` plus one; 0 while unknown,
/// `usize::MAX` when no word qualified.
static CUR_L: AtomicUsize = AtomicUsize::new(0);

/// The calibration so far: the words that held every coroutine seen (bit
/// `i`: word `i`), and which coroutines.
struct Calibration {
    candidates: u64,
    seen: Vec<usize>,
}

static CALIBRATION: Mutex<Option<Calibration>> = Mutex::new(None);

/// Most coroutines the calibration looks at before it gives up.
const MAX_SEEN: usize = 16;

/// A step of the calibration (see the module docs), while `state` runs a
/// C function and `g` is its `global_State` (from [`global_of`]).
///
/// # Safety
///
/// As [`global_of`]; `g` is what it returned for `state`.
pub(crate) unsafe fn calibrate(state: *mut ffi::lua_State, g: usize) {
    if CUR_L.load(Ordering::Relaxed) != 0 {
        return;
    }
    let mut hits = 0u64;
    for i in 0..SCAN_WORDS {
        // SAFETY: a global_State spans more than SCAN_WORDS words.
        if unsafe { word(g, i * 8) } == state as usize {
            hits |= 1 << i;
        }
    }
    let mut guard = CALIBRATION.lock().unwrap_or_else(|e| e.into_inner());
    let cal = guard.get_or_insert_with(|| Calibration {
        candidates: u64::MAX,
        seen: Vec::new(),
    });
    cal.candidates &= hits;
    if !cal.seen.contains(&(state as usize)) {
        cal.seen.push(state as usize);
    }
    let found = cal.candidates.count_ones();
    if found == 1 && cal.seen.len() >= 3 {
        CUR_L.store(
            cal.candidates.trailing_zeros() as usize * 8 + 1,
            Ordering::Relaxed,
        );
    } else if found == 0 || cal.seen.len() >= MAX_SEEN {
        // (nothing qualifies, or more than one word still does after many
        // coroutines: not the layout expected)
        CUR_L.store(usize::MAX, Ordering::Relaxed);
    } else {
        return;
    }
    // (decided: the coroutines seen are of no further use)
    cal.seen = Vec::new();
}

/// The `lua_State` running now in the VM whose `global_State` is `g`
/// (from [`global_of`]; 0: not known yet), from inside an FFI call:
/// `None` until the calibration found `cur_L`.
///
/// # Safety
///
/// `g` is 0 or a live `global_State`, and Lua code of its VM is running
/// (the caller is an FFI call).
pub(crate) unsafe fn running(g: usize) -> Option<*mut ffi::lua_State> {
    let cur = CUR_L.load(Ordering::Relaxed);
    if g == 0 || cur == 0 || cur == usize::MAX {
        return None;
    }
    // SAFETY: `cur - 1` is the offset of cur_L in a global_State, and `g`
    // one (the caller's contract); cur_L is the running lua_State, whose
    // `glref` must lead back to `g`.
    unsafe {
        let l = word(g, cur - 1);
        if l == 0 || word(l, GLREF) != g {
            return None;
        }
        Some(l as *mut ffi::lua_State)
    }
}

/// Whether the Lua code running on `state` (from [`running`]) may yield,
/// asked from inside an FFI call it made.
///
/// # Safety
///
/// As [`running`]: `state` is what it returned, during the same FFI call.
pub(crate) unsafe fn can_yield_running(state: *mut ffi::lua_State) -> Yieldable {
    let here = &state as *const _ as usize;
    // SAFETY: a live lua_State of the GC64 layout (the caller's contract).
    judge(unsafe { word(state as usize, CFRAME) }, here)
}

/// What a thread's C frame pointer `cframe` says, read in a function whose
/// frame is at `here`: the C frame of the `lua_resume` or `lua_call` that
/// runs the Lua code lies just above it on this thread's stack, or the
/// pointer is not what it seems.
fn judge(cframe: usize, here: usize) -> Yieldable {
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

/// The word at `base + off`.
///
/// # Safety
///
/// `base + off` is readable memory of 8 bytes.
unsafe fn word(base: usize, off: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { std::ptr::read_unaligned((base + off) as *const usize) }
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
