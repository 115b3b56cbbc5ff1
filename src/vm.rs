//! One runtime per Lua VM.
//!
//! ngx_lua gives a worker one Lua VM, unless `lua_code_cache` is off: then
//! every request (and the timers it starts) runs in a VM of its own, which
//! is closed when they are done, while this library and its Rust statics
//! stay loaded. A runtime holds Lua values of the VM its tasks came from,
//! so each VM gets its own ([`VmRuntime`], kept in the VM by
//! [`VmRuntime::of`]) and the runtime is dropped while its VM is being
//! closed, before the values it holds go away.
//!
//! Code that has no Lua state at hand ([`crate::sleep`], [`crate::unblock`])
//! finds the runtime of the call or task that runs it through
//! [`Runtime::current`]: every entry from Lua [`VmRuntime::enter`]s it.

use std::cell::{Cell, RefCell};
use std::panic::AssertUnwindSafe;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use mlua::{AnyUserData, Lua, UserData, Value};

use crate::local::{self, Local};
use crate::mailbox::Mailbox;
use crate::runtime::Runtime;
use crate::sys;

thread_local! {
    /// The runtime of the call or task running now on this thread.
    static CURRENT: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
    /// The runtime of code that runs outside any call from Lua (tests, the
    /// `testing` harness): made on first use.
    static STANDALONE: RefCell<Option<Rc<Runtime>>> = const { RefCell::new(None) };
}

/// Lua VMs of this process that closed (their library's copy of this
/// crate saw them go).
static VMS_CLOSED: AtomicU64 = AtomicU64::new(0);
/// Lua VMs of this process that made a handle of this library, those of
/// the master before `fork()` included.
static VMS_MADE: AtomicU64 = AtomicU64::new(0);
/// The most VMs a worker keeps for good: ngx_lua's http VM and its stream
/// module's.
const VMS_FOR_GOOD: u64 = 2;

/// Whether Lua VMs come and go in this process (`lua_code_cache off`): one
/// that loaded this library closed, or more were made than a worker keeps
/// for good.
pub(crate) fn vms_come_and_go() -> bool {
    VMS_CLOSED.load(Ordering::Relaxed) > 0 || VMS_MADE.load(Ordering::Relaxed) > VMS_FOR_GOOD
}

/// The runtime of one Lua VM, made on first use in each process (a runtime
/// made before `fork()` is not the child's), dropped when the VM closes.
#[derive(Default)]
pub(crate) struct VmRuntime {
    runtime: RefCell<Option<Rc<Runtime>>>,
    closed: Cell<bool>,
    /// Where the runtime leaves the results of posted callers' tasks (see
    /// `mailbox.rs`): the VM's, so that its address outlives a runtime
    /// made before `fork()`.
    mailbox: Rc<Mailbox>,
}

/// Kept in the VM's registry: the VM's garbage collector drops it when the
/// VM closes, and the runtime with it. It is made after mlua's own state
/// of this library in the VM, so it is finalized first (LuaJIT finalizes
/// the newest userdata first), while the values the runtime holds are
/// still valid. It is the fallback of [`CLOSE_FIRST`], which closes the
/// runtime before any userdata is finalized.
struct Closer(Rc<VmRuntime>);

/// Makes a cdata, kept in the registry, whose finalizer calls the function
/// it is given. `lua_close` runs every cdata finalizer before any
/// userdata's: the runtime is closed while the userdata its tasks reach
/// are intact. The futures of mlua's async functions and methods are such
/// userdata, newer than the [`Closer`], hence finalized before it: a task
/// dropped afterwards resumes its coroutine to cancel the future (mlua
/// does so), which would free that future a second time.
const CLOSE_FIRST: &str = r#"
local close = ...
local ffi = require "ffi"
local pcall = pcall
return ffi.gc(ffi.new("char[1]"), function() pcall(close) end)
"#;

impl UserData for Closer {}

impl Drop for Closer {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The registry key of this library's runtime in a VM. Each library that
/// embeds this crate has its own copy of the static, hence its own key.
fn registry_key() -> String {
    static MARK: u8 = 0;
    format!("resty_async.runtime.{:p}", &MARK as *const u8)
}

impl VmRuntime {
    /// The runtime handle of the VM of `lua`, made on first use.
    pub(crate) fn of(lua: &Lua) -> mlua::Result<Rc<VmRuntime>> {
        if let Some(h) = lua.app_data_ref::<Rc<VmRuntime>>() {
            return Ok(Rc::clone(&h));
        }
        let handle = Rc::new(VmRuntime::default());
        let closer: AnyUserData = lua.create_userdata(Closer(Rc::clone(&handle)))?;
        lua.set_named_registry_value(&registry_key(), closer)?;
        // (without LuaJIT's ffi the Closer alone closes the runtime)
        let h = Rc::clone(&handle);
        let close = lua.create_function(move |_, ()| {
            // (a panic there would be a Lua error in a finalizer, which
            // stops lua_close's round of finalizers)
            let _ = crate::panic::catch(AssertUnwindSafe(|| h.close()));
            Ok(())
        })?;
        if let Ok(guard) = lua
            .load(CLOSE_FIRST)
            .set_name("=resty.async.close_first")
            .call::<Value>(close)
        {
            lua.set_named_registry_value(&format!("{}.first", registry_key()), guard)?;
        }
        lua.set_app_data(Rc::clone(&handle));
        local::with(|l| l.live.borrow_mut().push(Rc::as_ptr(&handle)));
        VMS_MADE.fetch_add(1, Ordering::Relaxed);
        Ok(handle)
    }

    /// Runs `f` with the runtime behind a pointer the Lua side got from
    /// [`VmRuntime::as_ptr`], if it is one of this library's handles and
    /// its VM is open (Lua code can pass any pointer through the FFI);
    /// `None` otherwise. `local`: this thread's state (see
    /// [`crate::local`]).
    pub(crate) fn with_ffi<R>(
        local: &Local,
        ptr: *const std::ffi::c_void,
        f: impl FnOnce(&Runtime) -> R,
    ) -> Option<R> {
        let handle = VmRuntime::from_ffi(local, ptr)?;
        // The common case borrows; making the runtime needs `get`.
        if let Ok(slot) = handle.runtime.try_borrow() {
            if let Some(rt) = slot.as_ref().filter(|rt| rt.is_ours()) {
                return Some(f(rt));
            }
        }
        let rt = handle.get();
        Some(f(&rt))
    }

    /// The handle behind a pointer the Lua side got from
    /// [`VmRuntime::as_ptr`], if it is one of this library's handles and
    /// its VM is open (see [`VmRuntime::with_ffi`]).
    pub(crate) fn from_ffi(local: &Local, ptr: *const std::ffi::c_void) -> Option<&VmRuntime> {
        let live = local
            .live
            .borrow()
            .iter()
            .any(|&h| std::ptr::eq(h as *const std::ffi::c_void, ptr));
        if !live {
            return None;
        }
        // SAFETY: `ptr` is the address of a VmRuntime listed in `live`: its
        // VM's Closer holds an Rc of it and takes it off the list (in
        // `close`) before that Rc goes. No Lua code (hence no garbage
        // collection, which closes VMs) runs during an FFI call, for which
        // the reference lives.
        Some(unsafe { &*(ptr as *const VmRuntime) })
    }

    /// The VM's mailbox (see `mailbox.rs`), made now if it was not: its
    /// address and capacity.
    pub(crate) fn mailbox(&self) -> (*mut crate::mailbox::Posted, usize) {
        self.mailbox.get()
    }

    /// The VM's mailbox itself.
    #[cfg(test)]
    pub(crate) fn mailbox_for_test(&self) -> &crate::mailbox::Mailbox {
        &self.mailbox
    }

    /// The pointer the Lua side passes to the FFI functions.
    pub(crate) fn as_ptr(self: &Rc<VmRuntime>) -> *const std::ffi::c_void {
        Rc::as_ptr(self) as *const std::ffi::c_void
    }

    /// The runtime, made now if this process has none yet.
    pub(crate) fn get(&self) -> Rc<Runtime> {
        let mut slot = self.runtime.borrow_mut();
        match slot.as_ref() {
            Some(rt) if rt.is_ours() => Rc::clone(rt),
            _ => {
                assert!(
                    !self.closed.get(),
                    "resty-async: a runtime was asked for while its Lua VM closes"
                );
                if let Some(inherited) = slot.take() {
                    forget_inherited(inherited);
                }
                let rt = Rc::new(Runtime::new(Runtime::config()));
                self.mailbox.reset();
                rt.set_mailbox(Rc::clone(&self.mailbox));
                *slot = Some(Rc::clone(&rt));
                rt
            }
        }
    }

    /// The runtime if this process made it already.
    pub(crate) fn existing(&self) -> Option<Rc<Runtime>> {
        self.runtime.borrow().as_ref().filter(|rt| rt.is_ours()).cloned()
    }

    /// Drops the runtime: its tasks' futures, its timers, its completion
    /// socket; its pool threads finish their jobs and exit.
    fn close(&self) {
        // (closed first by CLOSE_FIRST's finalizer, then by the Closer)
        if self.closed.replace(true) {
            return;
        }
        VMS_CLOSED.fetch_add(1, Ordering::Relaxed);
        local::try_with(|l| l.live.borrow_mut().retain(|&h| !std::ptr::eq(h, self)));
        let rt = self.runtime.borrow_mut().take();
        if let Some(rt) = rt {
            if rt.is_ours() {
                let _enter = enter(&rt);
                rt.shutdown();
            } else {
                forget_inherited(rt);
            }
        }
    }
}

/// A runtime made by the parent before `fork()`: its threads do not exist
/// here and its socket is the parent's. Dropping it would join nothing and
/// unlink the parent's files: leave it be.
fn forget_inherited(rt: Rc<Runtime>) {
    std::mem::forget(rt);
}

/// Makes `rt` the current runtime until the guard is dropped.
pub(crate) fn enter(rt: &Rc<Runtime>) -> Entered {
    // (while the thread exits, its thread-locals may be gone already: a
    // runtime dropped then, say a testing Harness kept in one, is not made
    // current)
    let prev = CURRENT
        .try_with(|c| c.replace(Some(Rc::clone(rt))))
        .ok()
        .flatten();
    Entered(prev)
}

/// Restores the runtime that was current before [`enter`].
pub(crate) struct Entered(Option<Rc<Runtime>>);

impl Drop for Entered {
    fn drop(&mut self) {
        let prev = self.0.take();
        let _ = CURRENT.try_with(|c| c.replace(prev));
    }
}

impl Runtime {
    /// The runtime of the call or task running now. Outside any call from
    /// Lua (a test, the `testing` harness), a runtime of this thread of its
    /// own, made on first use.
    pub fn current() -> Rc<Runtime> {
        if let Some(rt) = CURRENT.with(|c| c.borrow().clone()) {
            return rt;
        }
        STANDALONE.with(|s| {
            let mut s = s.borrow_mut();
            match s.as_ref() {
                Some(rt) if rt.is_ours() => Rc::clone(rt),
                _ => {
                    if let Some(inherited) = s.take() {
                        forget_inherited(inherited);
                    }
                    let rt = Rc::new(Runtime::new(Runtime::config()));
                    *s = Some(Rc::clone(&rt));
                    rt
                }
            }
        })
    }

    /// The runtime [`Runtime::current`] would return, if it exists.
    #[cfg(test)]
    pub fn existing() -> Option<Rc<Runtime>> {
        if let Some(rt) = CURRENT.with(|c| c.borrow().clone()) {
            return Some(rt);
        }
        STANDALONE.with(|s| s.borrow().as_ref().filter(|rt| rt.is_ours()).cloned())
    }

    /// Whether this process made the runtime (not its parent, before
    /// `fork()`).
    pub(crate) fn is_ours(&self) -> bool {
        self.forked() == sys::forks()
    }
}
