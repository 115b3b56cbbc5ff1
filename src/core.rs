//! The built-in module `resty_async_core`: the functions of
//! `require "resty.async"` (`sleep`, `sha256`, `read_file`, `write_file`)
//! and the control functions of this crate's runtime. `resty/async.lua`
//! wraps them; do not require it directly.

use std::fs::OpenOptions;
use std::io::Write;

use mlua::{BString, Lua, Table, Value};
use sha2::{Digest, Sha256};

use crate::module::{lua_type, seconds_arg, Module};

/// Longest `async.sleep` (one year): longer ones are almost surely a bug.
pub const MAX_SLEEP: f64 = 365.0 * 86400.0;

fn string_arg(arg: &Value, pos: usize, fname: &str) -> Result<Vec<u8>, String> {
    match arg {
        Value::String(s) => Ok(s.as_bytes().to_vec()),
        other => Err(format!(
            "bad argument #{pos} to '{fname}' (string expected, got {})",
            lua_type(other)
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

fn path_arg(arg: &Value, pos: usize, fname: &str) -> Result<String, String> {
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

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    let digest = Sha256::digest(data);
    let mut hex = String::with_capacity(64);
    for b in digest {
        hex.push(char::from_digit(u32::from(b >> 4), 16).expect("nibble"));
        hex.push(char::from_digit(u32::from(b & 15), 16).expect("nibble"));
    }
    hex
}

/// The raw table of the built-ins (wrapped by `resty/async.lua`).
pub fn raw_module(lua: &Lua) -> mlua::Result<Table> {
    let mut m = Module::new(lua, "resty.async")?;
    m.add_value("version", env!("CARGO_PKG_VERSION"))?;
    m.add_raw_async("sleep", |_, (secs,): (Value,)| {
        let dur = seconds_arg(&secs, 1, "sleep", MAX_SLEEP)?;
        Ok(async move {
            crate::sleep(dur).await;
            Ok(true)
        })
    })?;
    m.add_raw_async("sha256", |_, (data,): (Value,)| {
        let data = string_arg(&data, 1, "sha256")?;
        Ok(async move {
            crate::unblock(move || sha256_hex(&data))
                .await
                .map_err(mlua::Error::external)
        })
    })?;
    m.add_raw_async("read_file", |_, (path,): (Value,)| {
        let path = path_arg(&path, 1, "read_file")?;
        Ok(async move {
            let res = crate::unblock(move || read_capped(&path))
                .await
                .map_err(mlua::Error::external)?;
            res.map(BString::from).map_err(mlua::Error::RuntimeError)
        })
    })?;
    m.add_raw_async("write_file", |_, (path, data, mode): (Value, Value, Value)| {
        let path = path_arg(&path, 1, "write_file")?;
        let data = string_arg(&data, 2, "write_file")?;
        let append = match mode {
            Value::Nil => false,
            Value::String(s) if s.as_bytes().as_ref() == b"w" => false,
            Value::String(s) if s.as_bytes().as_ref() == b"a" => true,
            _ => return Err("bad argument #3 to 'write_file' (mode must be \"w\" or \"a\")".to_owned()),
        };
        Ok(async move {
            let res = crate::unblock(move || {
                let mut file = OpenOptions::new()
                    .write(true)
                    .create(true)
                    .append(append)
                    .truncate(!append)
                    .open(&path)
                    .map_err(|e| format!("cannot open {path}: {e}"))?;
                file.write_all(&data)
                    .map_err(|e| format!("cannot write {path}: {e}"))?;
                Ok::<_, String>(data.len())
            })
            .await
            .map_err(mlua::Error::external)?;
            res.map_err(mlua::Error::RuntimeError)
        })
    })?;
    Ok(m.into_raw())
}

#[cfg(feature = "core-module")]
#[mlua::lua_module(name = "resty_async_core")]
fn resty_async_core(lua: &Lua) -> mlua::Result<Table> {
    raw_module(lua)
}
