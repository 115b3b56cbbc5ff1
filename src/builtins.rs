//! The built-in module `resty_async_core`: the functions of
//! `require "resty.async"` (`sleep`, `sha256`, `read_file`, `write_file`)
//! and the control functions of this crate's runtime. `resty/async.lua`
//! wraps them; do not require it directly.

use std::fs::OpenOptions;
use std::io::Write;

use std::time::Duration;

use mlua::{BString, Either, Lua, Table, Value};

use sha2::{Digest, Sha256};

use crate::module::Module;
use crate::sendable::{Bytes, Sendable};

/// Longest `async.sleep` (one year): longer ones are almost surely a bug.
pub const MAX_SLEEP: f64 = 365.0 * 86400.0;

/// A string argument: as with Lua's own functions (`luaL_checklstring`),
/// a number is converted (a missing argument reads as nil). mlua copies a
/// string straight off the stack into the `BString`; `Right` is anything
/// else.
type StringArg = Either<BString, Value>;

fn string_arg(arg: StringArg, pos: usize, fname: &str) -> Result<Vec<u8>, String> {
    match arg {
        Either::Left(s) => Ok(s.into()),
        Either::Right(other) => Err(format!(
            "bad argument #{pos} to '{fname}' (string expected, got {})",
            lua_type(&other)
        )),
    }
}

/// Longest file `read_file` returns (1 GiB): a Lua string holds it, and
/// an endless file (/dev/zero) must not eat the memory of the worker.
pub const MAX_READ: u64 = 1 << 30;

fn read_capped(path: &str) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    let hint = file.metadata().map(|m| m.len()).unwrap_or(0).min(MAX_READ);
    let mut buf = Vec::with_capacity(hint as usize);
    file.take(MAX_READ + 1)
        .read_to_end(&mut buf)
        .map_err(|e| format!("cannot read {path}: {e}"))?;
    if buf.len() as u64 > MAX_READ {
        return Err(format!("cannot read {path}: larger than {MAX_READ} bytes"));
    }
    Ok(buf)
}

fn path_arg(arg: StringArg, pos: usize, fname: &str) -> Result<String, String> {
    let bytes = string_arg(arg, pos, fname)?;
    let path = String::from_utf8(bytes)
        .map_err(|_| format!("bad argument #{pos} to '{fname}' (path is not UTF-8)"))?;
    if path.is_empty() || path.contains('\0') {
        return Err(format!(
            "bad argument #{pos} to '{fname}' (empty path or NUL byte)"
        ));
    }
    Ok(path)
}

/// Writes (or appends) `data` to the file at `path`; the number of bytes.
fn write(path: &str, data: &[u8], append: bool) -> Result<f64, String> {
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .append(append)
        .truncate(!append)
        .open(path)
        .map_err(|e| format!("cannot open {path}: {e}"))?;
    file.write_all(data)
        .map_err(|e| format!("cannot write {path}: {e}"))?;
    // Exact: a Lua string is far shorter than 2^53 bytes.
    Ok(data.len() as f64)
}

/// Lowercase hex SHA-256 of `data`.
fn sha256_hex_array(data: &[u8]) -> [u8; 64] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut hex = [0; 64];
    for (i, b) in Sha256::digest(data).into_iter().enumerate() {
        hex[2 * i] = DIGITS[usize::from(b >> 4)];
        hex[2 * i + 1] = DIGITS[usize::from(b & 15)];
    }
    hex
}

/// The raw table of the built-ins (wrapped by `resty/async.lua`). Only the
/// built-in module (feature `core-module`) has it.
#[cfg_attr(not(feature = "core-module"), allow(dead_code))]
pub(crate) fn raw_module(lua: &Lua) -> mlua::Result<Table> {
    let mut m = Module::new_core(lua, "resty.async")?;
    m.add_value("version", env!("CARGO_PKG_VERSION"))?;
    m.add_raw("sleep", |_, rt, (secs,): (Value,)| {
        Ok(rt.spawn_sleep(seconds_arg(&secs, 1, "sleep", MAX_SLEEP)?))
    })?;
    m.add_raw_blocking("sha256", |_, (data,): (StringArg,)| {
        let data = Bytes::from_vec(string_arg(data, 1, "sha256")?);
        Ok(move || Sendable::Bytes(Bytes::copy(&sha256_hex_array(&data))))
    })?;
    m.add_raw_blocking("read_file", |_, (path,): (StringArg,)| {
        let path = path_arg(path, 1, "read_file")?;
        Ok(move || match read_capped(&path) {
            Ok(bytes) => Sendable::Bytes(Bytes::from_vec(bytes)),
            Err(e) => Sendable::Failed(e),
        })
    })?;
    m.add_raw_blocking(
        "write_file",
        |_, (path, data, mode): (StringArg, StringArg, Value)| {
            let path = path_arg(path, 1, "write_file")?;
            let data = Bytes::from_vec(string_arg(data, 2, "write_file")?);
            let append = match mode {
                Value::Nil => false,
                Value::String(s) if s.as_bytes().as_ref() == b"w" => false,
                Value::String(s) if s.as_bytes().as_ref() == b"a" => true,
                _ => return Err("bad argument #3 to 'write_file' (mode must be \"w\" or \"a\")".to_owned()),
            };
            Ok(move || Sendable::from_result(write(&path, &data, append)))
        },
    )?;
    Ok(m.into_raw())
}

#[cfg(feature = "core-module")]
#[mlua::lua_module(name = "resty_async_core")]
fn resty_async_core(lua: &Lua) -> mlua::Result<Table> {
    raw_module(lua)
}

/// Checks a timeout-like number argument: finite, not negative, at most
/// `max` seconds.
pub(crate) fn seconds_arg(v: &Value, pos: usize, fname: &str, max: f64) -> Result<Duration, String> {
    let secs = match v {
        Value::Integer(i) => *i as f64,
        Value::Number(n) => *n,
        other => {
            return Err(format!(
                "bad argument #{pos} to '{fname}' (number expected, got {})",
                lua_type(other)
            ));
        }
    };
    if !secs.is_finite() || secs < 0.0 {
        return Err(format!(
            "bad argument #{pos} to '{fname}' (seconds must be a finite number >= 0, got {})",
            fmt_number(secs)
        ));
    }
    if secs > max {
        return Err(format!(
            "bad argument #{pos} to '{fname}' (seconds must be at most {}, got {})",
            fmt_number(max),
            fmt_number(secs)
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A number the way a person reads it: `1e300`, not 301 digits.
fn fmt_number(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e15 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}

/// The name Lua's `type()` gives a value (mlua says "integer" for whole
/// numbers, which LuaJIT does not have).
pub(crate) fn lua_type(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "number",
        other => other.type_name(),
    }
}
