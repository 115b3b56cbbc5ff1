//! Run Rust futures and blocking work from OpenResty without blocking the
//! nginx worker, driven by nginx's own event loop.
//!
//! A Lua handler calls a function of a module built with [`Module`]; the
//! function spawns a task on this worker's single-threaded executor and
//! polls it once (a blocking function's job goes straight to the pool, as a
//! task without a future). If it is not finished, the handler's light
//! thread waits on an `ngx.semaphore` while nginx serves other requests. Wake-ups from any
//! thread (the blocking pool, a `std::thread`, another runtime) write a byte
//! to a per-worker unix socket that a cosocket in an `ngx.timer` driver
//! reads; the driver runs the ready tasks on the worker thread and posts the
//! semaphores of the finished ones. Timers are fired by the same driver,
//! which sleeps on an `ngx.semaphore` until the next deadline: no reactor of
//! our own.
//!
//! # Writing a module
//!
//! A module crate (`crate-type = ["cdylib"]`, depending on this crate and
//! on mlua with the `luajit`, `module` and `async` features) fills a
//! [`Module`] in its `#[mlua::lua_module]` function. This is the template
//! of the repository, `examples/hello`:
//!
//! ```rust,no_run
//! use std::sync::atomic::{AtomicI64, Ordering};
//! use std::sync::Arc;
//! use std::time::Duration;
//!
//! use mlua::prelude::*;
//! use resty_async::Module;
//!
//! /// A counter whose async method waits before it counts.
//! struct Counter(Arc<AtomicI64>);
//!
//! impl LuaUserData for Counter {
//!     fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
//!         methods.add_async_method("incr_after", |_, this, ms: u64| {
//!             // The future holds the count, not the Lua object.
//!             let n = Arc::clone(&this.0);
//!             async move {
//!                 resty_async::sleep(Duration::from_millis(ms.min(10_000))).await;
//!                 Ok(n.fetch_add(1, Ordering::Relaxed) + 1)
//!             }
//!         });
//!     }
//! }
//!
//! #[mlua::lua_module]
//! fn hello(lua: &Lua) -> LuaResult<LuaTable> {
//!     let mut m = Module::new(lua, "hello")?;
//!     // async: awaits a timer that nginx's event loop fires
//!     m.add_async("slow_add", |_lua, (a, b): (i64, i64)| async move {
//!         resty_async::sleep(Duration::from_millis(10)).await;
//!         Ok(a.saturating_add(b))
//!     })?;
//!     // blocking: CPU work on the pool; Err(message) returns nil, message
//!     m.add_blocking("count_primes", |n: u64| {
//!         if n > 1_000_000 {
//!             return Err(format!("n must be at most 1000000, got {n}"));
//!         }
//!         Ok((2..=n)
//!             .filter(|&i| (2..).take_while(|d| d * d <= i).all(|d| i % d != 0))
//!             .count())
//!     })?;
//!     m.add_class::<Counter>()?;
//!     m.add_function("counter", |_, start: i64| {
//!         Ok(Counter(Arc::new(AtomicI64::new(start))))
//!     })?;
//!     m.build()
//! }
//! # fn main() {}
//! ```
//!
//! From Lua: `local hello = require "hello"`, then
//! `local sum, err = hello.slow_add(1, 2)`: the call waits 10 ms, and only
//! its own light thread yields. `hello.count_primes(2000000)` returns
//! `nil, "n must be at most 1000000, got 2000000"`, and
//! `hello.counter(41):incr_after(10)` returns 42 after 10 ms.
//!
//! With the `testing` feature (for a module crate's dev-dependency),
//! `resty_async::testing::Harness` calls these functions in `cargo test`,
//! without nginx.
#![warn(missing_docs, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]

// A panic is caught and returned to Lua only if it unwinds: with "abort"
// any panic in a module kills the nginx worker and every request it serves.
#[cfg(panic = "abort")]
compile_error!(
    "resty-async needs panic = \"unwind\" (it returns a Rust panic to Lua as nil, \
     \"rust function panicked: ...\"; with panic = \"abort\" a panic kills the nginx worker): \
     set panic = \"unwind\" in the [profile.*] sections of the module crate's Cargo.toml"
);

#[macro_use]
mod sys;

mod batch;
mod blocks;
mod builtins;
mod class;
mod config;
mod control;
mod executor;
mod ffi;
mod futureless;
mod local;
mod mailbox;
mod mlua_async;
mod module;
pub mod net;
mod panic;
mod pool;
mod protected;
mod raw;
mod record;
mod runtime;
mod sendable;
mod socket;
mod spawn;
mod strings;
mod timer;
#[cfg(feature = "tokio")]
pub mod tokio;
mod values;
mod vm;
mod waiters;
mod yieldable;

#[cfg(test)]
mod tests;

#[cfg(feature = "testing")]
pub mod testing;

/// The runtime's parts, for the crate's own benchmarks (`benches/`): not
/// a stable API.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod internals {
    pub use crate::executor::{Executor, Spawned};
    pub use crate::pool::Pool;
    pub use crate::socket::Notifier;
}

pub use crate::mlua_async::create_async_function;
pub use crate::module::Module;
pub use crate::pool::PoolError;
pub use crate::record::{Field, Key, Record};
pub use crate::runtime::{sleep, unblock};
pub use crate::spawn::{spawn_local, JoinError, JoinHandle};
pub use crate::timer::Sleep;
pub use mlua;
