//! Bench-only module for `make bench` (see bench/run.sh and nginx/bench.conf).
//!
//! One cdylib, two Lua entry points over the same Rust functions:
//!
//! * `require "resty_async_bench"`: a resty-async [`Module`] whose functions
//!   run the jobs on the blocking pool (`sha256`, `spin`) or synchronously on
//!   the worker thread (`sha256_sync`, `spin_sync`);
//! * `require "resty_async_bench.sync"` (LuaJIT's all-in-one loader finds
//!   `luaopen_resty_async_bench_sync` in `resty_async_bench.so`): a plain mlua
//!   table with the synchronous functions only. It needs neither
//!   `ngx.semaphore` nor `resty.async`, so the Lua VM of an
//!   `ngx.run_worker_thread` thread can require it and call the very same
//!   Rust code.

use std::hint::black_box;
use std::time::{Duration, Instant};

use mlua::prelude::*;
use resty_async::Module;

/// Keeps a CPU busy for `ms` milliseconds of wall time (a stand-in for a
/// CPU-bound job: hashing, compression, template rendering...).
pub fn spin(ms: f64) -> u64 {
    let until = Instant::now() + Duration::from_secs_f64(ms.clamp(0.0, 10_000.0) / 1000.0);
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut rounds = 0u64;
    while Instant::now() < until {
        for _ in 0..256 {
            x = black_box(x.rotate_left(5) ^ x.wrapping_mul(0x2545_f491_4f6c_dd1d));
        }
        rounds += 1;
    }
    black_box(x);
    rounds
}

/// The trivial job: lowercase hex SHA-256 (the code behind `async.sha256`).
pub fn sha256(data: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(data).iter().map(|b| format!("{b:02x}")).collect()
}

#[mlua::lua_module(name = "resty_async_bench")]
fn resty_async_bench(lua: &Lua) -> LuaResult<LuaTable> {
    let mut m = Module::new(lua, "resty_async_bench")?;
    m.add_blocking("sha256", |data: mlua::BString| Ok::<_, String>(sha256(&data)))?;
    m.add_blocking("spin", |ms: f64| Ok::<_, String>(spin(ms)))?;
    m.add_function("sha256_sync", |_, data: LuaString| Ok(sha256(&data.as_bytes())))?;
    m.add_function("spin_sync", |_, ms: f64| Ok(spin(ms)))?;
    m.build()
}

#[mlua::lua_module(name = "resty_async_bench_sync")]
fn resty_async_bench_sync(lua: &Lua) -> LuaResult<LuaTable> {
    let t = lua.create_table()?;
    t.set(
        "sha256",
        lua.create_function(|_, data: LuaString| Ok(sha256(&data.as_bytes())))?,
    )?;
    t.set("spin", lua.create_function(|_, ms: f64| Ok(spin(ms)))?)?;
    Ok(t)
}
