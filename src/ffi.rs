//! The hot path through LuaJIT's FFI.
//!
//! Calls into Rust through the Lua C API (mlua's functions) cannot be
//! compiled by LuaJIT's JIT, and each costs a protected call. The per-call
//! and per-driver-turn entry points that need no Lua values are plain C
//! functions instead, which `resty/async.lua` calls through `ffi.cdef`
//! declarations: the built-ins (`sleep`, `sha256`, `read_file`,
//! `write_file`), taking a finished task's result, cancelling a task, and
//! the driver's poll. Results come back through structs and buffers the Lua
//! side allocated once. What needs Lua values (the futures of module
//! functions, their results, the conversion of other results) stays with
//! the Lua C functions of `control.rs`.
//!
//! Each library that embeds this crate hands Lua its [`Api`] (a table of
//! function pointers, so that no symbol needs to be looked up by name) and
//! the handle of its runtime in the VM ([`VmRuntime`]) as light userdata.
//!
//! These functions are called by Lua code that any handler can reach, so
//! they trust nothing: the runtime handle must be one this library made
//! and is still alive, lengths and pointers are checked, a panic is caught
//! and reported (nothing unwinds into LuaJIT), and no Lua C API function is
//! called (none may run inside an FFI call).

use std::cell::RefCell;
use std::ffi::{c_char, c_double, c_int, c_void};
use std::panic::AssertUnwindSafe;

use crate::executor::TaskId;
use crate::futureless::Taken;
use crate::local::Local;
use crate::mailbox::Posted;
use crate::pool::PoolError;
use crate::runtime::{Done, Runtime};
use crate::sendable::Sendable;
use crate::vm::VmRuntime;
use crate::waiters::{Caller, Waited};

/// The version of [`Api`] and of the conventions below; `resty/async.lua`
/// declares the same.
pub(crate) const FFI_ABI: u32 = 4;

/// What [`Api::poll`] fills in.
#[repr(C)]
pub struct PollOut {
    /// Milliseconds to the next timer; -1: none.
    pub next_ms: c_double,
    /// Ids written to the buffer.
    pub n: c_int,
    /// [`POLL_REARM`], [`POLL_TASKS`], [`POLL_MORE`].
    pub flags: c_int,
    /// Callers waiting for tasks.
    pub waiting: c_int,
}

/// A timer earlier than the one the driver sleeps towards was added.
pub const POLL_REARM: c_int = 1;
/// Tasks are ready to run: call the Lua C function `run()`, then poll
/// again.
pub const POLL_TASKS: c_int = 2;
/// More finished tasks than fitted in the buffer: poll again.
pub const POLL_MORE: c_int = 4;

/// A result, as [`Api::take`] fills it in.
#[repr(C)]
pub struct ValueOut {
    /// One of the `KIND_*` constants.
    pub kind: c_int,
    /// A number or boolean (0/1).
    pub num: c_double,
    /// A string's or an error message's bytes, valid until the next call
    /// into this library's FFI.
    pub ptr: *const c_char,
    pub len: usize,
}

/// No result: the task is unknown (cancelled, taken already).
pub const KIND_NONE: c_int = 0;
/// The task has not finished.
pub const KIND_PENDING: c_int = 1;
/// A boolean (`num` is 0 or 1).
pub const KIND_BOOLEAN: c_int = 2;
/// A number (`num`).
pub const KIND_NUMBER: c_int = 3;
/// A string (`ptr`, `len`).
pub const KIND_STRING: c_int = 4;
/// `nil, message` (`ptr`, `len`).
pub const KIND_ERROR: c_int = 5;
/// Lua values: take them with the Lua C function `take(id)`.
pub const KIND_LUA: c_int = 6;

/// The entry points, as `resty/async.lua` declares them (`struct
/// resty_async_api`).
///
/// A spawning function returns the task id (> 0) when it is pending, `-id`
/// when it is pending and the driver must run in this cycle of nginx's
/// event loop (for an earlier timer, or for pool jobs whose wake-up was
/// deferred to it), 0 when it finished at once (its result is the one
/// `take(vm, 0, out)` gives), and NaN on misuse (a bad argument value:
/// `error()` gives the message to raise). Their last two arguments, `wait`
/// and `waited`: with `wait` above 0, a pending call also queues its
/// caller for at most `wait` seconds, as `wait(vm, id, wait)` would, and
/// `*waited` says what that did (a `WAIT_*` code, [`WAIT_C_FUNCTION`]
/// when it did not try): one crossing instead of two. (A sleep that
/// finished at once has no result to take, `true`, unless `*waited` says
/// [`WAIT_DONE`]: it was refused, and take gives the message.)
#[repr(C)]
pub struct Api {
    pub abi: u32,
    pub size: u32,
    pub sleep: unsafe extern "C" fn(*const c_void, c_double, c_double, *mut c_int) -> c_double,
    pub sha256: unsafe extern "C" fn(*const c_void, *const c_char, usize, c_double, *mut c_int) -> c_double,
    pub read_file:
        unsafe extern "C" fn(*const c_void, *const c_char, usize, c_double, *mut c_int) -> c_double,
    pub write_file: unsafe extern "C" fn(
        *const c_void,
        *const c_char,
        usize,
        *const c_char,
        usize,
        c_int,
        c_double,
        *mut c_int,
    ) -> c_double,
    pub take: unsafe extern "C" fn(*const c_void, c_double, *mut ValueOut) -> c_int,
    pub cancel: extern "C" fn(*const c_void, c_double) -> c_int,
    pub error: unsafe extern "C" fn(*mut c_char, usize) -> usize,
    pub poll: unsafe extern "C" fn(*const c_void, c_int, *mut c_double, c_int, *mut PollOut) -> c_int,
    pub wait: extern "C" fn(*const c_void, c_double, c_double) -> c_int,
    pub mailbox: extern "C" fn(*const c_void, *mut c_int) -> *mut Posted,
}

/// This library's entry points.
pub(crate) static API: Api = Api {
    abi: FFI_ABI,
    size: std::mem::size_of::<Api>() as u32,
    sleep: ra_sleep,
    sha256: ra_sha256,
    read_file: ra_read_file,
    write_file: ra_write_file,
    take: ra_take,
    cancel: ra_cancel,
    error: ra_error,
    poll: ra_poll,
    wait: ra_wait,
    mailbox: ra_mailbox,
};

thread_local! {
    /// The message of the last misuse (what `error()` copies out).
    static ERROR: RefCell<String> = const { RefCell::new(String::new()) };
    /// A result that was ready at once (what `take(vm, 0, out)` gives).
    static READY: RefCell<Option<Result<Sendable, PoolError>>> = const { RefCell::new(None) };
}

/// What a call with a handle that is not a live runtime's reports.
pub(crate) const GONE: &str = "resty.async: the runtime of this Lua VM is gone";

/// Misuse: the message for `error()`, and NaN.
fn misuse(msg: String) -> c_double {
    ERROR.with(|e| *e.borrow_mut() = msg);
    c_double::NAN
}

/// Runs `f` with the runtime of handle `vm` if this library made that
/// handle and its VM is open; catches a panic. `fallback` otherwise.
fn with_runtime<R>(vm: *const c_void, fallback: R, f: impl FnOnce(&Runtime) -> R) -> R {
    crate::local::with(|l| with_runtime_in(l, vm, fallback, f))
}

/// [`with_runtime`], with this thread's state at hand (see
/// [`crate::local`]).
fn with_runtime_in<R>(local: &Local, vm: *const c_void, fallback: R, f: impl FnOnce(&Runtime) -> R) -> R {
    match crate::panic::catch_in(local, AssertUnwindSafe(|| VmRuntime::with_ffi(local, vm, f))) {
        Ok(Some(r)) => r,
        Ok(None) => {
            ERROR.with(|e| *e.borrow_mut() = GONE.to_owned());
            fallback
        }
        Err(payload) => {
            ERROR.with(|e| *e.borrow_mut() = crate::executor::Panicked::from_payload(payload).to_string());
            fallback
        }
    }
}

/// How a spawning function's caller waits (see [`Api`]).
#[derive(Clone, Copy)]
struct Wait {
    timeout: c_double,
    waited: *mut c_int,
}

impl Wait {
    /// Reads the arguments and says "not tried" until a wait is made.
    ///
    /// # Safety
    ///
    /// `waited` is null or points to a writable `int`.
    unsafe fn new(timeout: c_double, waited: *mut c_int) -> Wait {
        let wait = Wait { timeout, waited };
        wait.says(WAIT_C_FUNCTION);
        wait
    }

    /// Writes `code` to `*waited`, if there is one.
    fn says(self, code: c_int) {
        if !self.waited.is_null() {
            // SAFETY: writable (Wait::new's contract).
            unsafe { *self.waited = code };
        }
    }

    /// The caller to queue for a task it starts now, if asked to and it
    /// may yield here (see [`Waiters::running_caller`]); `None` leaves it
    /// to wait through the Lua C function.
    fn caller(self, rt: &Runtime) -> Option<Caller> {
        if self.waited.is_null() || self.timeout.is_nan() || self.timeout <= 0.0 {
            return None;
        }
        let state = rt.waiters.running_caller().ok()?;
        // SAFETY: `state` is what running_caller returned, and the Caller
        // is used in this FFI call (by the start that asked for it).
        Some(unsafe { Caller::new(state, timeout_ms(self.timeout)) })
    }

    /// What a start that took [`Wait::caller`] reports of pending task
    /// `id` (see [`Api`]): whether it queued the caller.
    fn started(self, rt: &Runtime, id: TaskId, queued: bool) -> c_double {
        if queued {
            rt.waiters.count_queued(true);
            self.says(WAIT_YIELD);
        }
        pending_id(rt, id)
    }
}

/// What a spawning function returns for pending task `id` (see [`Api`]).
fn pending_id(rt: &Runtime, id: TaskId) -> c_double {
    let id = id as c_double;
    if rt.take_rearm() | rt.wake_owed() {
        -id
    } else {
        id
    }
}

/// A plain task's result that was ready at once, for `take(vm, 0, ...)`.
fn ready(res: Result<Sendable, PoolError>) -> c_double {
    READY.with(|r| *r.borrow_mut() = Some(res));
    0.0
}

/// A borrowed byte string from Lua (may be empty; null only when empty).
///
/// # Safety
///
/// `ptr` must point to `len` readable bytes, as a Lua string passed to an
/// FFI call does for the duration of the call.
unsafe fn bytes<'a>(ptr: *const c_char, len: usize) -> Option<&'a [u8]> {
    if len == 0 {
        return Some(&[]);
    }
    if ptr.is_null() {
        return None;
    }
    // SAFETY: the caller's contract.
    Some(unsafe { std::slice::from_raw_parts(ptr as *const u8, len) })
}

/// # Safety
///
/// `waited` is null or points to a writable `int`.
unsafe extern "C" fn ra_sleep(
    vm: *const c_void,
    secs: c_double,
    wait: c_double,
    waited: *mut c_int,
) -> c_double {
    // SAFETY: the caller's contract.
    let wait = unsafe { Wait::new(wait, waited) };
    with_runtime(vm, c_double::NAN, |rt| start_sleep(rt, secs, wait))
}

/// [`start_sleep`] for tests, with `*waited` to write to.
#[cfg(test)]
pub(crate) fn start_sleep_for_test(rt: &Runtime, secs: c_double, waited: &mut c_int) -> c_double {
    // SAFETY: `waited` is a writable int.
    start_sleep(rt, secs, unsafe { Wait::new(1.0, waited) })
}

/// `ra_sleep` with its runtime. A sleep of 0 finishes at once (its result
/// is `true`); a refused one (a full table of tasks) too, with its message
/// for `take(vm, 0, out)`, and `*waited` says [`WAIT_DONE`]: the Lua side
/// takes the result only then.
fn start_sleep(rt: &Runtime, secs: c_double, wait: Wait) -> c_double {
    match crate::builtins::sleep_duration(secs).map(|d| rt.spawn_sleep(d, wait.caller(rt))) {
        Ok(Ok(Some((id, queued)))) => wait.started(rt, id, queued),
        Ok(Ok(None)) => {
            rt.flush();
            0.0
        }
        Ok(Err(msg)) => {
            wait.says(WAIT_DONE);
            ready(Ok(Sendable::Failed(msg)))
        }
        Err(msg) => misuse(msg),
    }
}

/// # Safety
///
/// `ptr` points to `len` readable bytes (or `len` is 0), as a Lua string
/// passed by LuaJIT's FFI does for the duration of the call; `waited` is
/// null or points to a writable `int`.
unsafe extern "C" fn ra_sha256(
    vm: *const c_void,
    ptr: *const c_char,
    len: usize,
    wait: c_double,
    waited: *mut c_int,
) -> c_double {
    // SAFETY: the caller's contract.
    unsafe {
        start_job_of_string(vm, ptr, len, wait, waited, "sha256", |data| {
            Ok(crate::builtins::sha256_job(data))
        })
    }
}

/// # Safety
///
/// As [`ra_sha256`].
unsafe extern "C" fn ra_read_file(
    vm: *const c_void,
    ptr: *const c_char,
    len: usize,
    wait: c_double,
    waited: *mut c_int,
) -> c_double {
    // SAFETY: the caller's contract.
    unsafe {
        start_job_of_string(
            vm,
            ptr,
            len,
            wait,
            waited,
            "read_file",
            crate::builtins::read_file_job,
        )
    }
}

/// Starts the pool job that `job` makes of a built-in's one string
/// argument (or the misuse it reports).
///
/// # Safety
///
/// As [`ra_sha256`].
unsafe fn start_job_of_string<J: FnOnce() -> Sendable + Send + 'static>(
    vm: *const c_void,
    ptr: *const c_char,
    len: usize,
    wait: c_double,
    waited: *mut c_int,
    fname: &str,
    job: impl FnOnce(&[u8]) -> Result<J, String>,
) -> c_double {
    // SAFETY: the caller's contract.
    let wait = unsafe { Wait::new(wait, waited) };
    // SAFETY: a Lua string passed by LuaJIT's FFI: `len` bytes at `ptr`.
    let Some(arg) = (unsafe { bytes(ptr, len) }) else {
        return misuse(format!("bad argument #1 to '{fname}' (string expected)"));
    };
    with_runtime(vm, c_double::NAN, |rt| match job(arg) {
        Ok(job) => spawn_job(rt, job, wait),
        Err(msg) => misuse(msg),
    })
}

/// # Safety
///
/// As [`ra_sha256`], for both strings.
unsafe extern "C" fn ra_write_file(
    vm: *const c_void,
    path: *const c_char,
    path_len: usize,
    data: *const c_char,
    data_len: usize,
    append: c_int,
    wait: c_double,
    waited: *mut c_int,
) -> c_double {
    // SAFETY: as in ra_sha256.
    let wait = unsafe { Wait::new(wait, waited) };
    // SAFETY: as in ra_sha256, for both strings.
    let (Some(path), Some(data)) = (unsafe { bytes(path, path_len) }, unsafe { bytes(data, data_len) })
    else {
        return misuse("bad argument to 'write_file' (string expected)".to_owned());
    };
    with_runtime(vm, c_double::NAN, |rt| {
        match crate::builtins::write_file_job(path, data, append != 0) {
            Ok(job) => spawn_job(rt, job, wait),
            Err(msg) => misuse(msg),
        }
    })
}

/// Queues a blocking job; a full queue is a result at once.
fn spawn_job(rt: &Runtime, job: impl FnOnce() -> Sendable + Send + 'static, wait: Wait) -> c_double {
    rt.batch(|| match rt.spawn_job_for(job, wait.caller(rt)) {
        Ok((id, queued)) => wait.started(rt, id, queued),
        Err(e) => ready(Ok(Sendable::Failed(e.to_string()))),
    })
}

/// # Safety
///
/// `out` is null or points to a writable [`ValueOut`].
unsafe extern "C" fn ra_take(vm: *const c_void, id: c_double, out: *mut ValueOut) -> c_int {
    if out.is_null() {
        return KIND_NONE;
    }
    crate::local::with(|l| {
        let res = if id == 0.0 {
            match READY.with(|r| r.borrow_mut().take()) {
                Some(res) => Taken::Raw(res),
                None => Taken::Unknown,
            }
        } else if let Some(id) = task_id(id) {
            with_runtime_in(l, vm, Taken::Unknown, |rt| rt.take_raw(id))
        } else {
            Taken::Unknown
        };
        let kind_only = |kind| (kind, 0.0, std::ptr::null(), 0);
        let (kind, num, ptr, len) = match res {
            Taken::Unknown => kind_only(KIND_NONE),
            Taken::Pending => kind_only(KIND_PENDING),
            Taken::NeedsLua => kind_only(KIND_LUA),
            Taken::Raw(res) => {
                let mut handed = l.handed.borrow_mut();
                let value = handed.insert(res.unwrap_or_else(|e| Sendable::Failed(e.to_string())));
                match raw_value(value) {
                    Some((kind, num, bytes)) => (kind, num, bytes.as_ptr(), bytes.len()),
                    // (take_raw keeps those for the Lua C function)
                    None => kind_only(KIND_NONE),
                }
            }
        };
        // SAFETY: `out` is not null (checked) and points to the ValueOut
        // the Lua side allocated for these calls.
        unsafe {
            *out = ValueOut {
                kind,
                num,
                ptr: ptr as *const c_char,
                len,
            };
        }
        kind
    })
}

/// The table where the poll leaves the results of the callers it posts
/// (see `mailbox.rs`), for the VM of handle `vm`, and its capacity in
/// `*cap`; null (and 0) if `vm` is not a live handle of this library.
extern "C" fn ra_mailbox(vm: *const c_void, cap: *mut c_int) -> *mut Posted {
    let found = crate::local::with(|l| {
        crate::panic::catch_in(
            l,
            AssertUnwindSafe(|| VmRuntime::from_ffi(l, vm).map(VmRuntime::mailbox)),
        )
    });
    let (ptr, n) = match found {
        Ok(Some(found)) => found,
        _ => (std::ptr::null_mut(), 0),
    };
    if !cap.is_null() {
        // SAFETY: not null, and the Lua side's `int[1]`.
        unsafe { *cap = n as c_int };
    }
    ptr
}

/// The kind, number and bytes that a plain result is handed to Lua as,
/// by `take` or in the mailbox (`mailbox.rs`); `None` for one that only
/// mlua converts.
pub(crate) fn raw_value(value: &Sendable) -> Option<(c_int, c_double, &[u8])> {
    Some(match value {
        Sendable::Boolean(b) => (KIND_BOOLEAN, c_double::from(u8::from(*b)), &[]),
        Sendable::Number(n) => (KIND_NUMBER, *n, &[]),
        Sendable::Bytes(b) => (KIND_STRING, 0.0, &b[..]),
        Sendable::Failed(msg) => (KIND_ERROR, 0.0, msg.as_bytes()),
        Sendable::Other(_) => return None,
    })
}

/// What `wait(vm, id, timeout)` did (see [`ra_wait`]).
/// The caller is queued: it must yield at once (`coroutine._yield()`).
pub const WAIT_YIELD: c_int = 1;
/// No wait: the task can be taken (it finished, or it has socket ops for
/// its caller).
pub const WAIT_DONE: c_int = 2;
/// Wait through the Lua C function instead: the running coroutine is not
/// known here yet.
pub const WAIT_C_FUNCTION: c_int = 0;
/// The caller cannot yield here (nothing was queued): `error()` has the
/// message.
pub const WAIT_CANNOT: c_int = -1;
/// It timed out at once.
pub const WAIT_TIMEOUT: c_int = -2;
/// It failed: `error()` has the message.
pub const WAIT_FAILED: c_int = -3;

/// Queues the calling Lua code on a semaphore for task `id`, for at most
/// `timeout` seconds, when it may yield: the Lua side then yields (as
/// lua-resty-core's `sema:wait` does) and the driver's poll posts it when
/// the task finishes. The check that it may yield, which a Lua C function
/// makes on its own `lua_State`, is made here on the `lua_State` LuaJIT
/// runs now (`yieldable.rs`); until that is known, the caller is told to
/// wait through the Lua C function.
extern "C" fn ra_wait(vm: *const c_void, id: c_double, timeout: c_double) -> c_int {
    let ms = timeout_ms(timeout);
    with_runtime(vm, WAIT_FAILED, |rt| {
        let Some(id) = task_id(id) else {
            misuse("resty.async: bad task id".to_owned());
            return WAIT_FAILED;
        };
        // (first: socket ops carried out by a caller that cannot yield
        // would fail halfway)
        let waited = match rt.waiters.running_caller() {
            // SAFETY: `state` is what running_caller returned, in this call.
            Ok(state) => unsafe { wait_running(rt, state, id, ms) },
            Err(None) => return WAIT_C_FUNCTION,
            Err(Some(cannot)) => cannot,
        };
        match waited {
            Waited::Yield => WAIT_YIELD,
            Waited::Done => WAIT_DONE,
            Waited::Timeout => WAIT_TIMEOUT,
            Waited::Cannot => {
                misuse(crate::waiters::CCALL.to_owned());
                WAIT_CANNOT
            }
            Waited::Failed(msg) => {
                misuse(msg);
                WAIT_FAILED
            }
        }
    })
}

/// Cancel results: the task was not there, was cancelled, or has a future
/// (cancel it with the Lua C function `cancel(id)`: dropping the future
/// may use Lua).
pub const CANCEL_UNKNOWN: c_int = 0;
pub const CANCEL_DONE: c_int = 1;
pub const CANCEL_NEEDS_LUA: c_int = 2;

extern "C" fn ra_cancel(vm: *const c_void, id: c_double) -> c_int {
    let Some(id) = task_id(id) else {
        return CANCEL_UNKNOWN;
    };
    with_runtime(vm, CANCEL_UNKNOWN, |rt| {
        if rt.has_future(id) {
            CANCEL_NEEDS_LUA
        } else if rt.cancel(id) {
            CANCEL_DONE
        } else {
            CANCEL_UNKNOWN
        }
    })
}

/// # Safety
///
/// `buf` is null or points to `cap` writable bytes.
unsafe extern "C" fn ra_error(buf: *mut c_char, cap: usize) -> usize {
    if buf.is_null() || cap == 0 {
        return 0;
    }
    ERROR.with(|e| {
        let e = e.borrow();
        let n = e.len().min(cap);
        // SAFETY: `buf` has `cap` writable bytes (the Lua side's buffer)
        // and `n <= cap`; the message is a separate allocation.
        unsafe { std::ptr::copy_nonoverlapping(e.as_ptr(), buf as *mut u8, n) };
        n
    })
}

/// # Safety
///
/// `ids` is null or points to `cap` writable slots, and `out` is null or
/// points to a writable [`PollOut`].
unsafe extern "C" fn ra_poll(
    vm: *const c_void,
    arm: c_int,
    ids: *mut c_double,
    cap: c_int,
    out: *mut PollOut,
) -> c_int {
    if out.is_null() || ids.is_null() || cap <= 0 {
        return -1;
    }
    with_runtime(vm, -1, |rt| {
        let polled = rt.poll(arm != 0);
        let mut n = 0;
        while n < cap {
            // (negative: the task queued socket ops)
            let id = match rt.next_done() {
                Some(Done::Finished(id)) => id as c_double,
                Some(Done::Ops(id)) => -(id as c_double),
                None => break,
            };
            // SAFETY: `ids` has `cap` slots (the Lua side's buffer) and
            // `n < cap`.
            unsafe { *ids.add(n as usize) = id };
            n += 1;
        }
        let mut flags = 0;
        if arm == 0 && rt.take_rearm() {
            flags |= POLL_REARM;
        }
        if polled.tasks_ready {
            flags |= POLL_TASKS;
        }
        if rt.has_done() {
            flags |= POLL_MORE;
        }
        // SAFETY: `out` is not null (checked) and is the Lua side's struct.
        unsafe {
            *out = PollOut {
                next_ms: polled.next.map_or(-1.0, |d| d.as_secs_f64() * 1000.0),
                n,
                flags,
                waiting: rt.waiting().min(c_int::MAX as usize) as c_int,
            };
        }
        n
    })
}

/// [`Runtime::wait`] for `state` from [`crate::waiters::Waiters::running_caller`],
/// from inside the FFI call it made, which cannot yield itself: the caller
/// yields when told to.
///
/// # Safety
///
/// `state` is what `running_caller` returned during this FFI call.
unsafe fn wait_running(
    rt: &Runtime,
    state: *mut mlua::ffi::lua_State,
    id: TaskId,
    timeout_ms: c_int,
) -> Waited {
    // SAFETY: the caller's contract: `state` runs now and may yield.
    let waited = unsafe { rt.wait(state, id, timeout_ms) };
    if let Waited::Yield = waited {
        rt.waiters.count_queued(true);
    }
    waited
}

/// A wait's timeout in milliseconds, as ngx_lua's semaphores take it.
pub(crate) fn timeout_ms(timeout: c_double) -> c_int {
    if timeout.is_finite() {
        (timeout * 1000.0).clamp(1.0, c_int::MAX as c_double) as c_int
    } else {
        c_int::MAX
    }
}

/// A task id from Lua: a whole number from 1 to 2^53.
pub(crate) fn task_id(id: c_double) -> Option<TaskId> {
    // (a whole number in range converts to itself and back; through i64,
    // one instruction each way on x86-64, where `fract` would be a call
    // and u64 a longer sequence)
    ((1.0..=9_007_199_254_740_992.0).contains(&id) && (id as i64) as c_double == id).then_some(id as TaskId)
}
