//! Results of Rust functions as Lua values.
//!
//! A task's output is kept as [`LuaValues::One`] rather than a
//! `MultiValue` (a heap allocation) when the function returns a string, a
//! boolean or a number.

use std::any::Any;

use mlua::{BString, IntoLua, IntoLuaMulti, Lua, MultiValue, Value};

use crate::strings::create;

/// A function's results, converted for Lua on the worker thread.
pub(crate) enum LuaValues {
    /// Exactly one value (no allocation).
    One(Value),
    /// Any number of values.
    Many(MultiValue),
}

impl LuaValues {
    /// All the values.
    pub(crate) fn into_multi(self) -> MultiValue {
        match self {
            LuaValues::One(v) => MultiValue::from_vec(vec![v]),
            LuaValues::Many(m) => m,
        }
    }
}

/// `r` as one Lua value if it is a string (`String`, `&'static str`,
/// `BString`; not `Vec<u8>`: mlua makes that a table), a boolean or a
/// number, converted as mlua converts it.
fn one_value<R: 'static>(lua: &Lua, r: &R) -> Option<mlua::Result<Value>> {
    let r = r as &dyn Any;
    let string = |bytes: &[u8]| Some(create(lua, bytes).map(Value::String));
    if let Some(s) = r.downcast_ref::<String>() {
        string(s.as_bytes())
    } else if let Some(s) = r.downcast_ref::<&'static str>() {
        string(s.as_bytes())
    } else if let Some(s) = r.downcast_ref::<BString>() {
        string(s.as_slice())
    } else if let Some(b) = r.downcast_ref::<bool>() {
        Some(Ok(Value::Boolean(*b)))
    } else if let Some(n) = r.downcast_ref::<f64>() {
        Some(Ok(Value::Number(*n)))
    } else if let Some(n) = r.downcast_ref::<i64>() {
        Some(n.into_lua(lua))
    } else {
        r.downcast_ref::<usize>().map(|n| n.into_lua(lua))
    }
}

/// A function's results for Lua: `r.into_lua_multi(lua)`, but a string,
/// boolean or number becomes [`LuaValues::One`] (a string made by
/// [`create`]).
pub(crate) fn convert<R: IntoLuaMulti + 'static>(lua: &Lua, r: R) -> mlua::Result<LuaValues> {
    match one_value(lua, &r) {
        Some(v) => v.map(LuaValues::One),
        None => {
            let values = r.into_lua_multi(lua)?;
            // A value of a registered userdata type, alone or in a table:
            // see crate::class.
            for v in values.iter() {
                crate::class::adopt_value(lua, v)?;
            }
            Ok(LuaValues::Many(values))
        }
    }
}
