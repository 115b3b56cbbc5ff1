//! The memory of boxes, kept for the next boxes of the same layout.
//!
//! Every pool job of a plain task is a box that the worker allocates and,
//! once its result is taken, frees (`futureless.rs`). Under load the
//! worker allocates a poll's worth of them in a row and frees them in a
//! row, more than glibc's per-thread cache holds (7 blocks of a size): the
//! rest would come from, and go back to, the arena of nginx's per-request
//! pools, in between those. Kept here, the blocks of the jobs in flight
//! are allocated once and then reused, and nginx's heap sees none of that
//! traffic.

use std::alloc::Layout;
use std::cell::RefCell;
use std::ptr::NonNull;

/// Most blocks kept of one layout (their sizes are those of a job's
/// closure and result, typically a few hundred bytes), and most layouts.
/// Past those a box's memory is freed, as it would be without this list.
pub(crate) const MAX_PER_LAYOUT: usize = 256;
pub(crate) const MAX_LAYOUTS: usize = 16;

/// See the module docs. For one thread's boxes (not `Send`).
#[derive(Default)]
pub(crate) struct Blocks {
    /// For each layout, blocks allocated by the global allocator with it,
    /// whose values were dropped.
    bins: RefCell<Vec<(Layout, Vec<NonNull<u8>>)>>,
}

impl Blocks {
    /// `value` in a box, in a kept block of its layout if there is one.
    pub(crate) fn boxed<T>(&self, value: T) -> Box<T> {
        let layout = Layout::new::<T>();
        let found = {
            let mut bins = self.bins.borrow_mut();
            // (a runtime's jobs have one or a few layouts)
            bins.iter_mut()
                .find(|(l, _)| *l == layout)
                .and_then(|(_, blocks)| blocks.pop())
        };
        let Some(block) = found else {
            return Box::new(value);
        };
        let p = block.as_ptr().cast::<T>();
        // SAFETY: `block` was allocated by the global allocator with
        // `layout`, which is `T`'s (Layout::new::<T>() above), so it is
        // suitably sized and aligned for a `T`, and what a Box<T> frees
        // with. Its earlier value was dropped in `keep`, which gave the
        // block to this list alone; writing moves `value` in without
        // reading what was there.
        unsafe {
            p.write(value);
            Box::from_raw(p)
        }
    }

    /// Drops the value of `b` and keeps its block (or frees it, past
    /// [`MAX_PER_LAYOUT`] or [`MAX_LAYOUTS`]). (The drop may run any code,
    /// this list's calls included: it runs while the list is not borrowed.)
    pub(crate) fn keep<T: ?Sized>(&self, b: Box<T>) {
        let layout = Layout::for_value(&*b);
        let room = layout.size() > 0 && {
            let bins = self.bins.borrow();
            match bins.iter().find(|(l, _)| *l == layout) {
                Some((_, blocks)) => blocks.len() < MAX_PER_LAYOUT,
                None => bins.len() < MAX_LAYOUTS,
            }
        };
        if !room {
            drop(b);
            return;
        }
        let p = Box::into_raw(b);
        // SAFETY: `p` comes from Box::into_raw: valid, aligned and owned
        // here; its value is dropped once, and its memory (allocated by
        // the global allocator with `layout`, as every Box's of this size
        // is) is listed instead of freed.
        unsafe { std::ptr::drop_in_place(p) };
        // (a box of a non-zero size is never null)
        let Some(block) = NonNull::new(p.cast::<u8>()) else {
            return;
        };
        let mut bins = self.bins.borrow_mut();
        match bins.iter_mut().find(|(l, _)| *l == layout) {
            Some((_, blocks)) => blocks.push(block),
            None => bins.push((layout, vec![block])),
        }
    }

    /// Blocks kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.bins.borrow().iter().map(|(_, blocks)| blocks.len()).sum()
    }
}

impl Drop for Blocks {
    fn drop(&mut self) {
        for (layout, blocks) in self.bins.get_mut().drain(..) {
            for block in blocks {
                // SAFETY: allocated by the global allocator with `layout`,
                // and its value dropped (see `keep`): free it as a Box
                // would.
                unsafe { std::alloc::dealloc(block.as_ptr(), layout) };
            }
        }
    }
}
