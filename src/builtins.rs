//! The built-in module `resty_async_core`: the functions of
//! `require "resty.async"` (`sleep`, `sha256`, `read_file`, `write_file`)
//! and the control functions of this crate's runtime. `resty/async.lua`
//! wraps them; do not require it directly.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};

use std::time::Duration;

use mlua::{Lua, Table};

use sha2::{Digest, Sha256};

use crate::module::Module;
use crate::sendable::{Bytes, Sendable};

/// Longest `async.sleep` (one year): longer ones are almost surely a bug.
pub const MAX_SLEEP: f64 = 365.0 * 86400.0;

/// Longest file `read_file` returns (1 GiB): a Lua string holds it, and
/// an endless file (/dev/zero) must not eat the memory of the worker.
pub const MAX_READ: u64 = 1 << 30;

/// Opens `path` as `opts` says, without blocking: a FIFO would hold the
/// pool thread in open() until its other end came. A file with a lease
/// that the open must break is opened again, blocking (the kernel bounds
/// the wait by its lease-break time).
fn open_nonblocking(opts: &mut OpenOptions, path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match opts.custom_flags(libc::O_NONBLOCK).open(path) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => opts.custom_flags(0).open(path),
        res => res,
    }
}

fn read_capped(path: &Path) -> Result<Vec<u8>, String> {
    use std::io::Read;
    let path_shown = path.display();
    let fail = |e: std::io::Error| format!("cannot read {path_shown}: {e}");
    // Refused unless a regular file: a FIFO would hold the pool thread in
    // read() as long as a writer kept it open without writing; a device
    // may be endless, or block as long.
    let file = open_nonblocking(OpenOptions::new().read(true), path).map_err(fail)?;
    let meta = file.metadata().map_err(fail)?;
    // (a directory fails in read() with the OS's own message)
    if !meta.is_file() && !meta.is_dir() {
        return Err(format!(
            "cannot read {path_shown}: {}",
            not_a_file(&meta.file_type())
        ));
    }
    // A regular file that is too large already is refused before it is
    // read: reading it to the cap first held the pool thread for seconds
    // and the worker's memory by a GiB. (One that grows while it is read
    // is caught below; /proc files say 0.)
    if meta.is_file() && meta.len() > MAX_READ {
        return Err(too_large(&path_shown));
    }
    let hint = meta.len().min(MAX_READ);
    let mut buf = Vec::with_capacity(hint as usize);
    file.take(MAX_READ + 1).read_to_end(&mut buf).map_err(fail)?;
    if buf.len() as u64 > MAX_READ {
        return Err(too_large(&path_shown));
    }
    Ok(buf)
}

/// Why `read_file` refuses a file longer than [`MAX_READ`].
fn too_large(path: &std::path::Display<'_>) -> String {
    format!("cannot read {path}: larger than {MAX_READ} bytes")
}

/// Why `read_file` refuses a file of type `t` (neither a regular file nor
/// a directory).
fn not_a_file(t: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if t.is_fifo() {
        "a FIFO, not a regular file"
    } else if t.is_socket() {
        "a socket, not a regular file"
    } else if t.is_char_device() || t.is_block_device() {
        "a device, not a regular file"
    } else {
        "not a regular file"
    }
}

/// A path argument: any bytes but NUL, as the kernel takes them (a file
/// name need not be UTF-8, and such a file must be as readable as with
/// `io.open`).
fn path_arg(bytes: &[u8], pos: usize, fname: &str) -> Result<PathBuf, String> {
    use std::os::unix::ffi::OsStrExt;
    if bytes.is_empty() || bytes.contains(&0) {
        return Err(format!(
            "bad argument #{pos} to '{fname}' (empty path or NUL byte)"
        ));
    }
    Ok(PathBuf::from(std::ffi::OsStr::from_bytes(bytes)))
}

/// Writes (or appends) `data` to the file at `path`; the number of bytes.
fn write(path: &Path, data: &[u8], append: bool) -> Result<f64, String> {
    let path_shown = path.display();
    let open_failed = |e: std::io::Error| format!("cannot open {path_shown}: {e}");
    // (a FIFO without a reader fails with ENXIO; the writes then block as
    // usual)
    // A new file gets nginx's own mode for the files it makes, 0644: its
    // daemon clears the umask, so the default 0666 made files that every
    // local user could write.
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = open_nonblocking(
        OpenOptions::new()
            .mode(0o644)
            .write(true)
            .create(true)
            .append(append)
            .truncate(!append),
        path,
    )
    .map_err(open_failed)?;
    crate::sys::set_blocking(&file).map_err(open_failed)?;
    file.write_all(data)
        .map_err(|e| format!("cannot write {path_shown}: {e}"))?;
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

/// `async.sleep(secs)`'s duration, or the message of its misuse.
pub(crate) fn sleep_duration(secs: f64) -> Result<Duration, String> {
    seconds(secs, 1, "sleep", MAX_SLEEP)
}

/// `async.sha256(data)`'s job.
pub(crate) fn sha256_job(data: &[u8]) -> impl FnOnce() -> Sendable + Send + 'static {
    let data = Bytes::copy(data);
    move || Sendable::Bytes(Bytes::copy(&sha256_hex_array(&data)))
}

/// `async.read_file(path)`'s job, or the message of its misuse.
pub(crate) fn read_file_job(path: &[u8]) -> Result<impl FnOnce() -> Sendable + Send + 'static, String> {
    let path = path_arg(path, 1, "read_file")?;
    Ok(move || match read_capped(&path) {
        Ok(bytes) => Sendable::Bytes(Bytes::from_vec(bytes)),
        Err(e) => Sendable::Failed(e),
    })
}

/// `async.write_file(path, data, mode)`'s job, or the message of its
/// misuse.
pub(crate) fn write_file_job(
    path: &[u8],
    data: &[u8],
    append: bool,
) -> Result<impl FnOnce() -> Sendable + Send + 'static, String> {
    let path = path_arg(path, 1, "write_file")?;
    let data = Bytes::copy(data);
    Ok(move || Sendable::from_result(write(&path, &data, append)))
}

/// The raw table of the built-in module: the built-ins themselves are
/// called through the FFI (see `ffi.rs`). Only the built-in module
/// (feature `core-module`) has it.
#[cfg_attr(not(feature = "core-module"), allow(dead_code))]
pub(crate) fn raw_module(lua: &Lua) -> mlua::Result<Table> {
    let mut m = Module::new_core(lua, "resty.async")?;
    m.add_value("version", env!("CARGO_PKG_VERSION"))?;
    Ok(m.into_raw())
}

#[cfg(feature = "core-module")]
#[mlua::lua_module(name = "resty_async_core")]
fn resty_async_core(lua: &Lua) -> mlua::Result<Table> {
    raw_module(lua)
}

/// Checks a seconds argument: finite, not negative, at most `max`.
fn seconds(secs: f64, pos: usize, fname: &str, max: f64) -> Result<Duration, String> {
    // (`!(0 <= secs <= max)` also catches NaN, and infinities: `max` is
    // finite)
    debug_assert!(max.is_finite());
    if !(0.0..=max).contains(&secs) {
        return Err(bad_seconds(secs, pos, fname, max));
    }
    // (the product is exact to the nanosecond below 2^53 ns, 104 days, and
    // within one part in 2^53 above; Duration::from_secs_f64 rounds the
    // same value exactly, at several times the cost on the path of every
    // async.sleep; through i64, which converts in one instruction and
    // holds the largest sleep)
    Ok(Duration::from_nanos((secs * 1e9) as i64 as u64))
}

/// The message of a misuse that [`seconds`] found. (Out of its line: the
/// formatting would make every call set up its frame.)
#[cold]
#[inline(never)]
fn bad_seconds(secs: f64, pos: usize, fname: &str, max: f64) -> String {
    if !secs.is_finite() || secs < 0.0 {
        format!(
            "bad argument #{pos} to '{fname}' (seconds must be a finite number >= 0, got {})",
            fmt_number(secs)
        )
    } else {
        format!(
            "bad argument #{pos} to '{fname}' (seconds must be at most {}, got {})",
            fmt_number(max),
            fmt_number(secs)
        )
    }
}

/// A number the way a person reads it: `1e300`, not 301 digits.
fn fmt_number(x: f64) -> String {
    if x.is_finite() && x.abs() >= 1e15 {
        format!("{x:e}")
    } else {
        format!("{x}")
    }
}
