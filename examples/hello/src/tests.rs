//! The module's functions without nginx: `cargo test` runs them with
//! resty-async's test harness (the `testing` feature of the
//! dev-dependency).

use mlua::prelude::*;
use resty_async::testing::Harness;

fn load() -> LuaResult<(Harness, LuaTable)> {
    let h = Harness::new()?;
    let m = h.require("hello", super::hello)?;
    Ok((h, m))
}

#[test]
fn async_function() -> LuaResult<()> {
    let h = Harness::new()?;
    let m = h.require("hello", super::hello)?;
    assert_eq!(m.call_function::<i64>("slow_add", (1, 2))?, 3);
    Ok(())
}

#[test]
fn blocking_function_and_its_error() -> LuaResult<()> {
    let (_h, m) = load()?;
    assert_eq!(m.call_function::<usize>("count_primes", 100)?, 25);
    let (n, err): (Option<usize>, String) = m.call_function("count_primes", 2_000_000)?;
    assert_eq!(
        (n, err.as_str()),
        (None, "n must be at most 1000000, got 2000000")
    );
    Ok(())
}

#[test]
fn async_method() -> LuaResult<()> {
    let (_h, m) = load()?;
    let c: LuaAnyUserData = m.call_function("counter", 41)?;
    assert_eq!(c.call_method::<i64>("incr_after", 10)?, 42);
    Ok(())
}

#[test]
fn from_lua_code() -> LuaResult<()> {
    let (h, _m) = load()?;
    let chunk = r#"
        local hello = require "hello"
        local c = hello.counter(0)
        return hello.slow_add(2, 3), c:incr_after(1), c:incr_after(1)
    "#;
    assert_eq!(h.lua().load(chunk).eval::<(i64, i64, i64)>()?, (5, 1, 2));
    Ok(())
}
