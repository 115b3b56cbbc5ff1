//! The callers that wait for tasks, on ngx_lua's semaphores, kept in Rust.
//!
//! A caller whose task is pending yields on an `ngx.semaphore` that the
//! driver posts when the task finishes. Done in Lua (lua-resty-core's
//! `ngx.semaphore`), that costs a semaphore object, a table entry per
//! waiter and a post per finished task in the driver's Lua code, and the
//! caller goes on in the interpreter after the yield. Here an FFI call
//! (`wait`, or a built-in's start, in `ffi.rs`) queues the caller on a
//! semaphore of the runtime's, and the caller yields with LuaJIT's own
//! yield, as lua-resty-core's `sema:wait` does; the driver's poll posts the
//! semaphores of finished tasks itself. Until the runtime can find the
//! running coroutine from an FFI call (`yieldable.rs`), the caller waits
//! in a Lua C function instead ([`lua_wait`]), which queues it and yields.
//!
//! The semaphores are ngx_lua's (`ngx_http_lua_ffi_sema_*`, the C functions
//! lua-resty-core calls), found with `dlsym` in the running nginx; the
//! request is the one ngx_lua keeps for the running coroutine
//! (`lua_getexdata`, OpenResty's LuaJIT). Where they are missing,
//! `resty/async.lua` waits on `ngx.semaphore` itself.
//!
//! ngx_lua queues a waiter on the semaphore before the yield; a yield that
//! fails (inside a C function that calls Lua) would leave it queued, so
//! either way the wait checks first that the caller may yield
//! (`yieldable.rs`).

use std::cell::{Cell, RefCell};
use std::ffi::{c_char, c_int, c_void, CStr};
use std::sync::OnceLock;

use mlua::ffi;

use crate::executor::{IdMap, TaskId};

/// `ngx_http_lua_sema_t`, opaque.
#[repr(C)]
pub(crate) struct Sema {
    _opaque: [u8; 0],
}

type SemaNew = unsafe extern "C" fn(*mut *mut Sema, c_int, *mut *const c_char) -> c_int;
type SemaPost = unsafe extern "C" fn(*mut Sema, c_int) -> c_int;
type SemaWait = unsafe extern "C" fn(*mut c_void, *mut Sema, c_int, *mut u8, *mut usize) -> c_int;
type SemaCount = unsafe extern "C" fn(*mut Sema) -> c_int;
type SemaGc = unsafe extern "C" fn(*mut Sema);
type GetExdata = unsafe extern "C" fn(*mut ffi::lua_State) -> *mut c_void;

/// ngx_lua's semaphore functions and LuaJIT's `lua_getexdata`.
struct Ngx {
    new: SemaNew,
    post: SemaPost,
    wait: SemaWait,
    count: SemaCount,
    gc: SemaGc,
    exdata: GetExdata,
}

// ngx_lua's return codes (NGX_OK, NGX_ERROR, NGX_AGAIN, NGX_DECLINED).
const NGX_OK: c_int = 0;
const NGX_ERROR: c_int = -1;
const NGX_AGAIN: c_int = -2;
const NGX_DECLINED: c_int = -5;

/// The functions, looked up once per process; `None` outside nginx or
/// with another LuaJIT.
fn ngx() -> Option<&'static Ngx> {
    static NGX: OnceLock<Option<Ngx>> = OnceLock::new();
    NGX.get_or_init(|| {
        // SAFETY: dlsym only reads the loader's tables. Each symbol, when
        // found, is the function of that name in ngx_lua or LuaJIT, whose
        // C signature the type it is cast to repeats (lua-resty-core's
        // ngx/semaphore.lua declares the same ones to the FFI).
        unsafe {
            let sym = |name: &CStr| {
                let p = libc::dlsym(libc::RTLD_DEFAULT, name.as_ptr());
                (!p.is_null()).then_some(p)
            };
            Some(Ngx {
                new: std::mem::transmute::<*mut c_void, SemaNew>(sym(c"ngx_http_lua_ffi_sema_new")?),
                post: std::mem::transmute::<*mut c_void, SemaPost>(sym(c"ngx_http_lua_ffi_sema_post")?),
                wait: std::mem::transmute::<*mut c_void, SemaWait>(sym(c"ngx_http_lua_ffi_sema_wait")?),
                count: std::mem::transmute::<*mut c_void, SemaCount>(sym(c"ngx_http_lua_ffi_sema_count")?),
                gc: std::mem::transmute::<*mut c_void, SemaGc>(sym(c"ngx_http_lua_ffi_sema_gc")?),
                exdata: std::mem::transmute::<*mut c_void, GetExdata>(sym(c"lua_getexdata")?),
            })
        }
    })
    .as_ref()
}

/// Whether callers can wait here (see the module docs).
pub(crate) fn available() -> bool {
    ngx().is_some()
}

/// A caller queued on a semaphore. Kept in [`Waiters`], or by the plain
/// task it waits for (`futureless.rs`), which saves a map.
pub(crate) struct Waiter {
    sema: *mut Sema,
    /// The driver posted it.
    posted: bool,
    /// Posted before the last sweep and still here (see [`Waiters::sweep`]).
    stale: bool,
}

impl Waiter {
    /// A waiter without a semaphore, for tests outside nginx (where
    /// posting and giving back do nothing).
    #[cfg(test)]
    pub(crate) fn for_test() -> Waiter {
        Waiter {
            sema: std::ptr::null_mut(),
            posted: false,
            stale: false,
        }
    }
}

/// A caller to queue on a semaphore as it starts a task: the coroutine
/// running now, which may yield, and its timeout (see [`Waiters::queue`]).
#[derive(Clone, Copy)]
pub(crate) struct Caller {
    state: *mut ffi::lua_State,
    timeout_ms: c_int,
}

impl Caller {
    /// # Safety
    ///
    /// As [`Waiters::queue`], for as long as the `Caller` is used: it is
    /// used during the FFI call that found `state` (see
    /// [`Waiters::running_caller`]).
    pub(crate) unsafe fn new(state: *mut ffi::lua_State, timeout_ms: c_int) -> Caller {
        Caller { state, timeout_ms }
    }

    /// Queues this caller (see [`Waiters::queue`]).
    pub(crate) fn queue(self, waiters: &Waiters) -> Result<Waiter, Waited> {
        // SAFETY: Caller::new's contract.
        unsafe { waiters.queue(self.state, self.timeout_ms) }
    }
}

/// Most semaphores kept for reuse.
const MAX_SPARE: usize = 1024;

/// The waiting callers of one runtime.
#[derive(Default)]
pub(crate) struct Waiters {
    waiting: RefCell<IdMap<Waiter>>,
    spare: RefCell<Vec<*mut Sema>>,
    posts: Cell<u64>,
    /// The `global_State` of the Lua VM, once a wait saw it (see
    /// [`Waiters::saw`], [`Waiters::running_caller`]).
    lua_global: Cell<usize>,
    /// Callers queued from an FFI call and from the Lua C function.
    by_ffi: Cell<u64>,
    by_c_function: Cell<u64>,
}

/// What [`Waiters::wait`] did.
pub(crate) enum Waited {
    /// The caller is queued: yield.
    Yield,
    /// Finished without a wait: the task is done (or ngx_lua said no, with
    /// a message, or timed out at once).
    Done,
    Timeout,
    Failed(String),
    /// The caller cannot yield where it is (see [`CCALL`]); nothing was
    /// queued.
    Cannot,
}

impl Waiters {
    /// Queues the caller running on `state` on a semaphore for task `id`,
    /// for at most `timeout_ms`. The caller must yield at once when told
    /// to.
    ///
    /// # Safety
    ///
    /// `state` is the state of a Lua C function that runs now (its
    /// coroutine is the caller), which checked that it may yield.
    pub(crate) unsafe fn wait(&self, state: *mut ffi::lua_State, id: TaskId, timeout_ms: c_int) -> Waited {
        let mut waiting = self.waiting.borrow_mut();
        let std::collections::hash_map::Entry::Vacant(entry) = waiting.entry(id) else {
            return Waited::Failed("resty.async: this task is waited for already".to_owned());
        };
        // SAFETY: the caller's contract.
        match unsafe { self.queue(state, timeout_ms) } {
            Ok(waiter) => {
                entry.insert(waiter);
                Waited::Yield
            }
            Err(waited) => waited,
        }
    }

    /// Queues the caller running on `state` on a spare semaphore for at
    /// most `timeout_ms`: the waiter to keep (the caller must yield at
    /// once), or what happened instead.
    ///
    /// # Safety
    ///
    /// As [`Waiters::wait`].
    pub(crate) unsafe fn queue(
        &self,
        state: *mut ffi::lua_State,
        timeout_ms: c_int,
    ) -> Result<Waiter, Waited> {
        let Some(ngx) = ngx() else {
            return Err(Waited::Failed(
                "resty.async: cannot wait here (no ngx_lua semaphores)".to_owned(),
            ));
        };
        // SAFETY: the caller's contract: `state` is the running coroutine,
        // whose exdata ngx_lua set to its request.
        let r = unsafe { (ngx.exdata)(state) };
        if r.is_null() {
            return Err(Waited::Failed("resty.async: no request found".to_owned()));
        }
        let sema = match self.take_spare() {
            Some(s) => s,
            None => {
                let mut sema = std::ptr::null_mut();
                let mut err: *const c_char = std::ptr::null();
                // SAFETY: ngx_lua's allocator, with out-pointers it fills.
                if unsafe { (ngx.new)(&mut sema, 0, &mut err) } != NGX_OK || sema.is_null() {
                    return Err(Waited::Failed(format!(
                        "resty.async: cannot make a semaphore: {}",
                        c_message(err)
                    )));
                }
                sema
            }
        };
        // (not zeroed: ngx_lua writes a message there only on failure,
        // and says how long)
        let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 128];
        let mut len = buf.len();
        // SAFETY: `r` is the caller's request, `sema` a live semaphore of
        // ngx_lua's, `buf` has `len` bytes for a message.
        let rc = unsafe { (ngx.wait)(r, sema, timeout_ms, buf.as_mut_ptr().cast(), &mut len) };
        if rc == NGX_AGAIN {
            return Ok(Waiter {
                sema,
                posted: false,
                stale: false,
            });
        }
        self.put_spare(sema);
        Err(match rc {
            NGX_OK => Waited::Done,
            NGX_DECLINED => Waited::Timeout,
            NGX_ERROR => {
                // SAFETY: ngx_lua wrote `len` bytes of its message there.
                let msg =
                    unsafe { std::slice::from_raw_parts(buf.as_ptr().cast::<u8>(), len.min(buf.len())) };
                Waited::Failed(String::from_utf8_lossy(msg).into_owned())
            }
            rc => Waited::Failed(format!("resty.async: the semaphore wait returned {rc}")),
        })
    }

    /// Posts `w` (once).
    pub(crate) fn post_waiter(&self, w: &mut Waiter) {
        if !w.posted {
            w.posted = true;
            if let Some(ngx) = ngx() {
                // SAFETY: a live semaphore of ngx_lua's with a waiter.
                unsafe { (ngx.post)(w.sema, 1) };
                self.posts.set(self.posts.get() + 1);
            }
        }
    }

    /// Takes back the semaphore of `w`, whose caller resumed or is gone.
    pub(crate) fn give_back(&self, w: Waiter) {
        self.put_spare(w.sema);
    }

    /// Whether the caller of `w` waits still: posted (it resumes, unless
    /// ngx_lua killed it after the post), or queued on its semaphore.
    pub(crate) fn is_live(w: &Waiter) -> bool {
        let Some(ngx) = ngx() else { return true };
        // SAFETY: a live semaphore of ngx_lua's.
        w.posted || (unsafe { (ngx.count)(w.sema) }) < 0
    }

    /// Whether a caller that ngx_lua has not killed waits for task `id`.
    pub(crate) fn is_waited(&self, id: TaskId) -> bool {
        self.waiting.borrow().get(&id).is_some_and(Waiters::is_live)
    }

    /// Whether ngx_lua killed the caller of `w` (see [`Waiters::sweep`]).
    pub(crate) fn is_dead(w: &mut Waiter) -> bool {
        let Some(ngx) = ngx() else { return false };
        if w.posted {
            std::mem::replace(&mut w.stale, true)
        } else {
            // SAFETY: a live semaphore of ngx_lua's.
            (unsafe { (ngx.count)(w.sema) }) >= 0
        }
    }

    /// Counts a caller queued, from an FFI call or from the Lua C function.
    pub(crate) fn count_queued(&self, from_ffi: bool) {
        let count = if from_ffi {
            &self.by_ffi
        } else {
            &self.by_c_function
        };
        count.set(count.get() + 1);
    }

    /// The coroutine running now, from inside an FFI call it made, if it
    /// may yield: `Err(None)` when it is not known yet, or not known for
    /// sure (see `yieldable.rs`; the caller waits through the Lua C
    /// function then), `Err(Some(Waited::Cannot))` when it may not yield.
    pub(crate) fn running_caller(&self) -> Result<*mut ffi::lua_State, Option<Waited>> {
        // SAFETY: this is an FFI call of Lua code of this runtime's VM,
        // whose global_State lua_global is (or 0, not known yet).
        let state = unsafe { crate::yieldable::running(self.lua_global.get()) }.ok_or(None)?;
        // SAFETY: `state` is the running lua_State, during this FFI call.
        match unsafe { crate::yieldable::can_yield_running(state) } {
            crate::yieldable::Yieldable::Yes => Ok(state),
            crate::yieldable::Yieldable::No => Err(Some(Waited::Cannot)),
            crate::yieldable::Yieldable::Unknown => Err(None),
        }
    }

    /// How many callers were queued from an FFI call and how many from
    /// the Lua C function.
    pub(crate) fn queued(&self) -> (u64, u64) {
        (self.by_ffi.get(), self.by_c_function.get())
    }

    /// Notes the `global_State` of the VM of `state`, a coroutine running
    /// a Lua C function of this runtime, and lets it take a step of the
    /// calibration of `yieldable.rs`.
    ///
    /// # Safety
    ///
    /// As [`crate::yieldable::global_of`].
    pub(crate) unsafe fn saw(&self, state: *mut ffi::lua_State) {
        // SAFETY: the caller's contract.
        if let Some(g) = unsafe { crate::yieldable::global_of(state) } {
            self.lua_global.set(g);
            // SAFETY: `g` is the global_State of `state`.
            unsafe { crate::yieldable::calibrate(state, g) };
        }
    }

    /// Posts the waiter of task `id`, if any: whether there was one.
    pub(crate) fn post(&self, id: TaskId) -> bool {
        let mut waiting = self.waiting.borrow_mut();
        let Some(w) = waiting.get_mut(&id) else {
            return false;
        };
        self.post_waiter(w);
        true
    }

    /// The task of `w` is cancelled: if its caller is still queued (posted
    /// or not), posts it and keeps it (as the waiter of task `id`) until
    /// the caller, resumed, finds the task gone and releases it, or the
    /// sweep finds it killed after the post. The semaphore of a queued
    /// caller cannot be freed (ngx_lua would resume the caller from freed
    /// memory), nor reused while the post is pending: if ngx_lua killed the
    /// caller before the post's event ran, the next caller queued there
    /// would take the post.
    pub(crate) fn keep_cancelled(&self, id: TaskId, mut w: Waiter) {
        if !Waiters::is_live(&w) {
            self.give_back(w);
            return;
        }
        self.post_waiter(&mut w);
        if let Some(old) = self.waiting.borrow_mut().insert(id, w) {
            self.give_back(old);
        }
    }

    /// Task `id` is cancelled: [`Waiters::keep_cancelled`] for its waiter.
    pub(crate) fn cancelled(&self, id: TaskId) {
        let w = self.waiting.borrow_mut().remove(&id);
        if let Some(w) = w {
            self.keep_cancelled(id, w);
        }
    }

    /// Forgets the waiter of task `id` (it resumed, or its task is gone).
    pub(crate) fn release(&self, id: TaskId) {
        let w = self.waiting.borrow_mut().remove(&id);
        if let Some(w) = w {
            self.put_spare(w.sema);
        }
    }

    /// The waiters ngx_lua killed (client abort, `ngx.thread.kill`, ...):
    /// their tasks are handed to `dead` (and their waiters forgotten). A
    /// killed waiter leaves its semaphore without anyone waiting; one
    /// posted a sweep ago and still here was killed after the post.
    pub(crate) fn sweep(&self, mut dead: impl FnMut(TaskId)) {
        let mut gone = Vec::new();
        for (&id, w) in self.waiting.borrow_mut().iter_mut() {
            if Waiters::is_dead(w) {
                gone.push(id);
            }
        }
        for id in gone {
            self.release(id);
            dead(id);
        }
    }

    /// Callers waiting now.
    pub(crate) fn len(&self) -> usize {
        self.waiting.borrow().len()
    }

    fn take_spare(&self) -> Option<*mut Sema> {
        self.spare.borrow_mut().pop()
    }

    /// Keeps `sema` for reuse if nothing is left in it, else frees it.
    fn put_spare(&self, sema: *mut Sema) {
        let Some(ngx) = ngx() else { return };
        let mut spare = self.spare.borrow_mut();
        // SAFETY: a live semaphore of ngx_lua's.
        if spare.len() < MAX_SPARE && unsafe { (ngx.count)(sema) } == 0 {
            spare.push(sema);
        } else {
            // SAFETY: nobody waits on it or holds it any more.
            unsafe { (ngx.gc)(sema) };
        }
    }
}

impl Drop for Waiters {
    /// Frees the semaphores (the Lua VM closes: its coroutines are gone).
    fn drop(&mut self) {
        let Some(ngx) = ngx() else { return };
        for (_, w) in self.waiting.get_mut().drain() {
            // SAFETY: its coroutine is gone with the VM, and ngx_lua took
            // it off the semaphore's queue when it cleaned the request up.
            unsafe { (ngx.gc)(w.sema) };
        }
        for sema in self.spare.get_mut().drain(..) {
            // SAFETY: unused.
            unsafe { (ngx.gc)(sema) };
        }
    }
}

/// Why a caller cannot wait where it is.
pub(crate) const CCALL: &str = "resty.async: cannot wait inside a C function such as a table.sort comparator or \
                                a string.gsub callback (call it outside, or start it with async.spawn and wait \
                                for the task outside)";

fn c_message(p: *const c_char) -> String {
    if p.is_null() {
        return "ngx_lua gave no message".to_owned();
    }
    // SAFETY: ngx_lua's messages are static C strings.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

/// The Lua C function `wait(vm, id, timeout [, checked])` (see
/// [`push_wait`]), `vm` the runtime's handle (light userdata, checked as
/// the FFI entry points check it). It returns, after a yield when the task
/// is pending:
///
/// * `true`: the task finished (take its results);
/// * `false, "timeout"` (as ngx_lua resumes a timed-out waiter), or
///   `nil, "timeout"`, or `nil, message`;
/// * `nil, message, true`: the caller cannot yield here (nothing was
///   queued);
/// * `nil, nil, true`: it cannot tell whether the caller may yield: check,
///   then call again with `checked`.
unsafe extern "C-unwind" fn lua_wait(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with its own state; the stack
    // has room for the three results (LUA_MINSTACK). A `vm` that is not a
    // live handle of this library is refused by with_ffi.
    unsafe {
        let vm = ffi::lua_touserdata(state, 1) as *const c_void;
        let id = ffi::lua_tonumber(state, 2);
        let timeout = ffi::lua_tonumber(state, 3);
        let yieldable = crate::yieldable::can_yield(state);
        if yieldable == crate::yieldable::Yieldable::Unknown && ffi::lua_toboolean(state, 4) == 0 {
            ffi::lua_settop(state, 0);
            ffi::lua_pushnil(state);
            ffi::lua_pushnil(state);
            ffi::lua_pushboolean(state, 1);
            return 3;
        }
        let waited = if yieldable == crate::yieldable::Yieldable::No {
            Waited::Cannot
        } else {
            let ms = crate::ffi::timeout_ms(timeout);
            let waited = crate::local::with(|l| {
                crate::panic::catch_in(
                    l,
                    std::panic::AssertUnwindSafe(|| {
                        crate::vm::VmRuntime::with_ffi(l, vm, |rt| {
                            if yieldable == crate::yieldable::Yieldable::Yes {
                                rt.waiters.saw(state);
                            }
                            let Some(id) = crate::ffi::task_id(id) else {
                                return Waited::Failed("resty.async: bad task id".to_owned());
                            };
                            let waited = rt.wait(state, id, ms);
                            if let Waited::Yield = waited {
                                rt.waiters.count_queued(false);
                            }
                            waited
                        })
                    }),
                )
            });
            match waited {
                Ok(Some(w)) => w,
                Ok(None) => Waited::Failed(crate::ffi::GONE.to_owned()),
                Err(p) => Waited::Failed(crate::executor::Panicked::from_payload(p).to_string()),
            }
        };
        ffi::lua_settop(state, 0);
        match waited {
            // (the values ngx_lua resumes the caller with are the results)
            Waited::Yield => ffi::lua_yield(state, 0),
            Waited::Done => {
                ffi::lua_pushboolean(state, 1);
                1
            }
            Waited::Timeout => {
                ffi::lua_pushnil(state);
                ffi::lua_pushstring(state, c"timeout".as_ptr());
                2
            }
            Waited::Failed(msg) => {
                ffi::lua_pushnil(state);
                ffi::lua_pushlstring(state, msg.as_ptr() as *const c_char, msg.len());
                2
            }
            Waited::Cannot => {
                ffi::lua_pushnil(state);
                ffi::lua_pushlstring(state, CCALL.as_ptr() as *const c_char, CCALL.len());
                ffi::lua_pushboolean(state, 1);
                3
            }
        }
    }
}

/// The Lua C function `note_running(vm)`: lets the runtime of handle
/// `vm` see the coroutine that calls it, as a wait in the Lua C function
/// does (see [`Waiters::saw`]), so that waits are made from FFI calls
/// sooner. The driver calls it from its coroutines.
unsafe extern "C-unwind" fn lua_note_running(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: called by Lua as a C function with its own state. A `vm` that
    // is not a live handle of this library is refused by with_ffi.
    unsafe {
        let vm = ffi::lua_touserdata(state, 1) as *const c_void;
        if crate::yieldable::can_yield(state) == crate::yieldable::Yieldable::Yes {
            crate::local::with(|l| {
                let _ = crate::panic::catch_in(
                    l,
                    std::panic::AssertUnwindSafe(|| {
                        crate::vm::VmRuntime::with_ffi(l, vm, |rt| rt.waiters.saw(state))
                    }),
                );
            });
        }
    }
    0
}

/// [`lua_note_running`], or `nil` where callers cannot wait this way.
pub(crate) fn push_note_running(lua: &mlua::Lua) -> mlua::Result<mlua::Value> {
    if !available() {
        return Ok(mlua::Value::Nil);
    }
    // SAFETY: lua_note_running follows the lua_CFunction protocol.
    unsafe { lua.create_c_function(lua_note_running) }.map(mlua::Value::Function)
}

/// The `wait` function of this library's runtimes (see [`lua_wait`]), or
/// `nil` where callers cannot wait this way.
pub(crate) fn push_wait(lua: &mlua::Lua) -> mlua::Result<mlua::Value> {
    if !available() {
        return Ok(mlua::Value::Nil);
    }
    // SAFETY: lua_wait follows the lua_CFunction protocol (see there).
    unsafe { lua.create_c_function(lua_wait) }.map(mlua::Value::Function)
}
