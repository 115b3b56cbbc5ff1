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
//! ```rust,ignore
//! use std::time::Duration;
//! use mlua::prelude::*;
//! use resty_async::Module;
//!
//! #[mlua::lua_module]
//! fn my_module(lua: &Lua) -> LuaResult<LuaTable> {
//!     let mut m = Module::new(lua, "my_module")?;
//!     // async: awaits timers, pool jobs, or futures completed elsewhere
//!     m.add_async("slow_add", |_lua, (a, b): (i64, i64)| async move {
//!         resty_async::sleep(Duration::from_millis(10)).await;
//!         Ok(a + b)
//!     })?;
//!     // blocking: runs on the pool
//!     m.add_blocking("count_lines", |path: String| {
//!         std::fs::read_to_string(&path).map(|s| s.lines().count())
//!     })?;
//!     // sync
//!     m.add_function("hello", |_, name: String| Ok(format!("hello, {name}")))?;
//!     m.build()
//! }
//! ```
//!
//! From Lua: `local m = require "my_module"; local n, err = m.slow_add(1, 2)`.
#![warn(missing_docs, rust_2018_idioms)]
#![warn(clippy::undocumented_unsafe_blocks)]

#[macro_use]
mod sys;

mod builtins;
mod class;
mod config;
mod control;
mod executor;
mod futureless;
mod mlua_async;
mod module;
pub mod net;
mod pool;
mod raw;
mod record;
mod runtime;
mod sendable;
mod socket;
mod spawn;
mod strings;
mod timer;
mod values;
mod vm;
mod yieldable;

#[cfg(test)]
mod tests;

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
