//! Tests of the runtime's parts, without nginx (LuaJIT is linked into the
//! test binary: see build.rs).

mod blocks;
mod executor;
mod fork;
mod mailbox;
mod net;
mod plain;
mod pool;
mod runtime;
mod socket;
mod timer;
#[cfg(feature = "tokio")]
mod tokio;

// The test binary has no host to take the Lua symbols from.
#[link(name = "luajit-5.1")]
extern "C" {}
