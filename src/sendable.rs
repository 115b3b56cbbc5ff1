//! Results made on a pool thread, on their way to the worker.

use std::any::Any;

use mlua::{BString, IntoLuaMulti, Lua, Value};

use crate::strings::create;
use crate::values::{convert, LuaValues};

/// Longest string LuaJIT makes (`LJ_MAX_STR` is 0x7fffff00, exclusive).
pub(crate) const MAX_LUA_STRING: usize = 0x7fff_feff;

/// Longest string [`Bytes`] keeps inline (a SHA-256 in hex fits).
pub(crate) const INLINE: usize = 64;

/// Bytes that cross between the worker and a pool thread, kept inline when
/// short. A heap buffer made by one thread and freed by the other misses
/// glibc's per-thread cache at both ends (each thread frees blocks of a
/// size it never allocates, and allocates blocks of a size it never
/// frees). Inline, a short string travels inside the job's cell, which the worker
/// both allocates and frees.
pub(crate) enum Bytes {
    /// `len` bytes at the start of `buf`.
    Inline { len: u8, buf: [u8; INLINE] },
    /// Longer ones.
    Heap(Vec<u8>),
}

impl Bytes {
    /// A copy of `b`.
    pub(crate) fn copy(b: &[u8]) -> Bytes {
        if b.len() <= INLINE {
            let mut buf = [0; INLINE];
            buf[..b.len()].copy_from_slice(b);
            Bytes::Inline {
                len: b.len() as u8,
                buf,
            }
        } else {
            Bytes::Heap(b.to_vec())
        }
    }

    /// `v`'s bytes: copied inline (and `v` freed here, by the thread that
    /// made it) when short, else `v` itself.
    pub(crate) fn from_vec(v: Vec<u8>) -> Bytes {
        if v.len() <= INLINE {
            Bytes::copy(&v)
        } else {
            Bytes::Heap(v)
        }
    }
}

impl std::ops::Deref for Bytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        match self {
            Bytes::Inline { len, buf } => &buf[..usize::from(*len)],
            Bytes::Heap(v) => v,
        }
    }
}

/// A function's results made on another thread (a pool job), to become
/// Lua values on the worker ([`Sendable::into_lua`]). A string, boolean or
/// float is carried as it is; any other result is boxed with its
/// conversion, made on the pool thread.
pub(crate) enum Sendable {
    /// One string.
    Bytes(Bytes),
    /// One boolean.
    Boolean(bool),
    /// One number.
    Number(f64),
    /// `nil, message`.
    Failed(String),
    /// Anything else, converted by mlua.
    Other(Box<dyn Convert>),
}

/// A result that mlua converts, on the worker (see [`Sendable::Other`]).
pub(crate) trait Convert: Send {
    fn convert(self: Box<Self>, lua: &Lua) -> mlua::Result<LuaValues>;
}

impl<R: IntoLuaMulti + Send + 'static> Convert for R {
    fn convert(self: Box<Self>, lua: &Lua) -> mlua::Result<LuaValues> {
        convert(lua, *self)
    }
}

impl Sendable {
    /// `r`, ready to cross to the worker: a `String`, `BString` or
    /// `&'static str` as [`Bytes`], a `bool` or `f64` as it is, anything
    /// else boxed. A string longer than Lua takes is the error mlua's
    /// conversion would give, with its length.
    pub(crate) fn new<R: IntoLuaMulti + Send + 'static>(r: R) -> Sendable {
        let mut slot = Some(r);
        let any = &mut slot as &mut dyn Any;
        if let Some(s) = any.downcast_mut::<Option<String>>() {
            return Sendable::bytes(s.take().expect("just set").into_bytes());
        }
        if let Some(s) = any.downcast_mut::<Option<BString>>() {
            return Sendable::bytes(s.take().expect("just set").into());
        }
        if let Some(s) = any.downcast_mut::<Option<&'static str>>() {
            return Sendable::Bytes(Bytes::copy(s.take().expect("just set").as_bytes()));
        }
        if let Some(b) = any.downcast_mut::<Option<bool>>() {
            return Sendable::Boolean(b.take().expect("just set"));
        }
        if let Some(n) = any.downcast_mut::<Option<f64>>() {
            return Sendable::Number(n.take().expect("just set"));
        }
        Sendable::Other(Box::new(slot.take().expect("just set")))
    }

    /// `v` as one string. The Lua side copies a string result into Lua
    /// with `ffi.string`, which raises for one too long, where the caller
    /// could not get its result or free its task: it is refused here.
    fn bytes(v: Vec<u8>) -> Sendable {
        if v.len() > MAX_LUA_STRING {
            return Sendable::Failed(format!(
                "string length overflow: a result of {} bytes, where a Lua string holds at most {MAX_LUA_STRING}",
                v.len()
            ));
        }
        Sendable::Bytes(Bytes::from_vec(v))
    }

    /// `Ok(r)` as [`Sendable::new`], `Err(e)` as `nil, e.to_string()`.
    pub(crate) fn from_result<R, E>(res: Result<R, E>) -> Sendable
    where
        R: IntoLuaMulti + Send + 'static,
        E: std::fmt::Display,
    {
        match res {
            Ok(r) => Sendable::new(r),
            Err(e) => Sendable::Failed(e.to_string()),
        }
    }

    /// The Lua values, made on the worker thread.
    pub(crate) fn into_lua(self, lua: &Lua) -> mlua::Result<LuaValues> {
        match self {
            Sendable::Bytes(b) => create(lua, &b).map(|s| LuaValues::One(Value::String(s))),
            Sendable::Boolean(b) => Ok(LuaValues::One(Value::Boolean(b))),
            Sendable::Number(n) => Ok(LuaValues::One(Value::Number(n))),
            Sendable::Failed(msg) => Err(mlua::Error::RuntimeError(msg)),
            Sendable::Other(r) => r.convert(lua),
        }
    }
}
