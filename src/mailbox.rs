//! Results left where a resumed caller reads them, without a call into
//! Rust.
//!
//! A caller queued on a semaphore (`waiters.rs`) for a plain task
//! (`futureless.rs`) resumes when the driver's poll posts it, and would
//! then cross into Rust once more to take the result. Instead, the poll
//! that posts it writes the result into this table, at the task's slot
//! index: its id, its kind, a number, or the address and length of its
//! bytes, which stay in the task's slot. The resumed caller (Lua,
//! `runtime.lua`'s `take_ffi`) reads the entry whose id is its task's,
//! copies the value out and sets the entry's id to 0. The next poll (or a
//! count of the tasks, or the sweep) frees the slots of the entries read
//! and takes back their semaphores ([`crate::futureless::PlainTasks`]'s
//! `reap`); until then they count as in flight and their callers as
//! waiting.
//!
//! The table belongs to a Lua VM's handle (`vm.rs`), not to a runtime:
//! the Lua side keeps its address for as long as the VM is open, while a
//! runtime made before `fork()` is replaced by the child's, which starts
//! with the table emptied ([`Mailbox::reset`]). It is made on the first
//! [`Mailbox::get`].

use std::cell::{OnceCell, UnsafeCell};
use std::ffi::{c_char, c_double, c_int};

/// An entry, as `resty/async/runtime.lua` declares it
/// (`resty_async_posted`).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Posted {
    /// The task whose result this is; 0: none (the Lua side writes 0 when
    /// it has read the result).
    pub id: c_double,
    /// A number, or a boolean (0 or 1).
    pub num: c_double,
    /// A string's or an error message's bytes, in the task's slot.
    pub ptr: *const c_char,
    pub len: usize,
    /// One of `ffi.rs`'s `KIND_BOOLEAN`, `KIND_NUMBER`, `KIND_STRING`,
    /// `KIND_ERROR`.
    pub kind: c_int,
}

/// Entries of a table: tasks in slots at higher indexes are taken with a
/// call into Rust, as before. (40 bytes each.)
pub(crate) const CAPACITY: usize = 2048;

/// See the module docs. For one thread (not `Send`).
#[derive(Default)]
pub(crate) struct Mailbox {
    /// (Cells: the Lua side writes to the entries between calls.)
    entries: OnceCell<Box<[UnsafeCell<Posted>]>>,
}

impl Mailbox {
    /// The table's address (made now if it was not) and its capacity.
    pub(crate) fn get(&self) -> (*mut Posted, usize) {
        let entries = self.entries.get_or_init(|| {
            (0..CAPACITY)
                .map(|_| {
                    UnsafeCell::new(Posted {
                        id: 0.0,
                        num: 0.0,
                        ptr: std::ptr::null(),
                        len: 0,
                        kind: 0,
                    })
                })
                .collect()
        });
        (UnsafeCell::raw_get(entries.as_ptr()), entries.len())
    }

    fn entry(&self, index: usize) -> Option<*mut Posted> {
        self.entries.get()?.get(index).map(UnsafeCell::get)
    }

    /// Writes entry `index` (if the table exists and has it): whether it
    /// did.
    pub(crate) fn post(&self, index: usize, posted: Posted) -> bool {
        let Some(e) = self.entry(index) else {
            return false;
        };
        // SAFETY: an entry of the table, which lives as long as `self`;
        // no reference to it is held (the Lua side, which also writes it,
        // does not run during this call).
        unsafe { e.write(posted) };
        true
    }

    /// The id in entry `index` (0 when there is none, or the Lua side read
    /// it).
    pub(crate) fn id(&self, index: usize) -> c_double {
        match self.entry(index) {
            // SAFETY: as in `post`.
            Some(e) => unsafe { (*e).id },
            None => 0.0,
        }
    }

    /// Empties every entry, for a new runtime: ids start again in it, and
    /// an entry of the runtime it replaces must not match one of its own.
    pub(crate) fn reset(&self) {
        for e in self.entries.get().into_iter().flatten() {
            // SAFETY: as in `post`.
            unsafe { (*e.get()).id = 0.0 };
        }
    }

    /// Empties entry `index` if it holds the result of task `id` (whose
    /// bytes are about to go).
    pub(crate) fn clear(&self, index: usize, id: c_double) {
        if let Some(e) = self.entry(index) {
            // SAFETY: as in `post`.
            unsafe {
                if (*e).id == id {
                    (*e).id = 0.0;
                    (*e).ptr = std::ptr::null();
                    (*e).len = 0;
                }
            }
        }
    }
}
