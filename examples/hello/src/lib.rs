//! An OpenResty module written with resty-async: `require "hello"`.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mlua::prelude::*;
use resty_async::Module;

/// A counter whose async method waits before it counts.
struct Counter(Arc<AtomicI64>);

impl LuaUserData for Counter {
    fn add_methods<M: LuaUserDataMethods<Self>>(methods: &mut M) {
        methods.add_async_method("incr_after", |_, this, ms: u64| {
            // The future holds the count, not the Lua object.
            let n = Arc::clone(&this.0);
            async move {
                resty_async::sleep(Duration::from_millis(ms.min(10_000))).await;
                Ok(n.fetch_add(1, Ordering::Relaxed) + 1)
            }
        });
    }
}

#[mlua::lua_module]
fn hello(lua: &Lua) -> LuaResult<LuaTable> {
    let mut m = Module::new(lua, "hello")?;
    // async: awaits a timer that nginx's event loop fires
    m.add_async("slow_add", |_lua, (a, b): (i64, i64)| async move {
        resty_async::sleep(Duration::from_millis(10)).await;
        Ok(a.saturating_add(b))
    })?;
    // blocking: CPU work on the pool; Err(message) returns nil, message
    m.add_blocking("count_primes", |n: u64| {
        if n > 1_000_000 {
            return Err(format!("n must be at most 1000000, got {n}"));
        }
        Ok((2..=n)
            .filter(|&i| (2..).take_while(|d| d * d <= i).all(|d| i % d != 0))
            .count())
    })?;
    m.add_class::<Counter>()?;
    m.add_function("counter", |_, start: i64| {
        Ok(Counter(Arc::new(AtomicI64::new(start))))
    })?;
    m.build()
}

#[cfg(test)]
mod tests;
