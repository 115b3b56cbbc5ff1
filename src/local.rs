//! The state each thread keeps, in one thread-local.
//!
//! This crate is a library that nginx loads with `dlopen`, so each access
//! to a thread-local is a call (`__tls_get_addr`) and a check that it is
//! initialized. An FFI entry point needs the catching depth, the open VMs
//! and, to hand out a string, a place for it: it reads them through one
//! access ([`with`]).

use std::cell::{Cell, RefCell};

use crate::sendable::Sendable;
use crate::vm::VmRuntime;

/// See the module docs.
pub(crate) struct Local {
    /// Depth of the code running under [`crate::panic::catch`] on this
    /// thread.
    pub(crate) catching: Cell<u32>,
    /// The handles of the open VMs (see [`VmRuntime::with_ffi`]). (Not
    /// `Rc`s: the pool's threads use this state too, and a thread-local
    /// that can drop a runtime would link the pool to the Lua C API. Each
    /// VM's handle stays alive while it is listed: the VM holds it and
    /// takes it off the list before it lets go, see `vm.rs`.)
    pub(crate) live: RefCell<Vec<*const VmRuntime>>,
    /// The last result the FFI handed out, kept until the next one (the
    /// Lua side copies its bytes with `ffi.string` at once).
    pub(crate) handed: RefCell<Option<Sendable>>,
}

thread_local! {
    static LOCAL: Local = const {
        Local {
            catching: Cell::new(0),
            live: RefCell::new(Vec::new()),
            handed: RefCell::new(None),
        }
    };
}

/// Runs `f` with this thread's state.
pub(crate) fn with<R>(f: impl FnOnce(&Local) -> R) -> R {
    LOCAL.with(f)
}

/// As [`with`], or `None` while the thread exits and its state is gone.
pub(crate) fn try_with<R>(f: impl FnOnce(&Local) -> R) -> Option<R> {
    LOCAL.try_with(f).ok()
}
