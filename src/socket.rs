//! The completion socket: how a wake-up on any thread becomes an nginx read
//! event on the worker.
//!
//! The runtime listens on a unix stream socket in a fresh private directory
//! ([`Rendezvous`]). The Lua driver connects to it with an ordinary cosocket;
//! the runtime accepts the first peer whose credentials say it is this very
//! process, and drops the listener, which removes the socket file and the
//! directory. From then on [`Notifier::notify`] writes one byte per batch of
//! wake-ups to the accepted end, and nginx's epoll wakes the driver.

use std::io;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::sys;

const DIR_PREFIX: &str = "resty-async.";
/// Longest path a `sockaddr_un` holds, less the NUL.
const SUN_PATH_MAX: usize = 107;
/// Bound on connections examined per `accept_own` call, so strangers that
/// keep connecting cannot keep the worker in the loop.
const ACCEPT_BATCH: usize = 256;

/// A listening socket in a private directory, waiting for the driver.
///
/// Dropping it closes the listener and removes the socket file and the
/// directory.
#[derive(Debug)]
pub struct Rendezvous {
    dir: PathBuf,
    path: PathBuf,
    listener: UnixListener,
    rejected: u64,
}

impl Rendezvous {
    /// Creates `<base>/resty-async.<pid>.XXXXXX/c.sock` (directory mode 0700)
    /// and listens on it. Directories left by dead processes of the same
    /// prefix are removed first.
    pub fn create(base: &Path) -> io::Result<Rendezvous> {
        sweep_stale(base);
        let prefix = format!("{DIR_PREFIX}{}.", sys::getpid());
        let dir = sys::mkdtemp(base, &prefix).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot create a directory in {}: {e}", base.display()),
            )
        })?;
        let path = dir.join("c.sock");
        if path.as_os_str().len() > SUN_PATH_MAX {
            let _ = std::fs::remove_dir(&dir);
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket path too long ({} bytes, max {SUN_PATH_MAX}): {}",
                    path.as_os_str().len(),
                    path.display()
                ),
            ));
        }
        let listener = match UnixListener::bind(&path).and_then(|l| l.set_nonblocking(true).map(|()| l)) {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_file(&path);
                let _ = std::fs::remove_dir(&dir);
                return Err(e);
            }
        };
        Ok(Rendezvous {
            dir,
            path,
            listener,
            rejected: 0,
        })
    }

    /// The path the driver connects to (`unix:` + this, for a cosocket).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Connections refused so far because they came from another process.
    #[cfg(test)]
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    pub(crate) fn rejected_mut(&mut self) -> &mut u64 {
        &mut self.rejected
    }

    /// Accepts pending connections until one comes from this process, which
    /// is returned (non-blocking). Connections of other processes are closed
    /// at once. `Ok(None)`: ours has not arrived yet.
    pub fn accept_own(&mut self) -> io::Result<Option<UnixStream>> {
        let me = sys::getpid();
        for _ in 0..ACCEPT_BATCH {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                // A peer that gave up between connect and accept.
                Err(e) if e.kind() == io::ErrorKind::ConnectionAborted => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            match sys::peer_pid(&stream) {
                Ok(pid) if pid == me => {
                    stream.set_nonblocking(true)?;
                    return Ok(Some(stream));
                }
                _ => self.rejected += 1, // dropped: closed
            }
        }
        Ok(None)
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// Removes `resty-async.<pid>.*` directories whose process is gone (a worker
/// killed between creating its socket and accepting the driver).
fn sweep_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(DIR_PREFIX)) else {
            continue;
        };
        let Some(pid) = rest.split('.').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if pid == sys::getpid() || sys::process_alive(pid) {
            continue;
        }
        let dir = entry.path();
        let _ = std::fs::remove_file(dir.join("c.sock"));
        let _ = std::fs::remove_dir(&dir);
    }
}

/// The wake-up side, shared with every waker (any thread).
///
/// `pending` is set by the first wake-up after the driver's last poll; only
/// that one writes a byte, so a burst of completions costs one write and one
/// nginx read event.
#[derive(Debug, Default)]
pub struct Notifier {
    pending: AtomicBool,
    writer: Mutex<Option<UnixStream>>,
    written: AtomicU64,
}

impl Notifier {
    /// Asks the driver to poll: writes a byte unless one is already pending.
    pub fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.write_byte();
        }
    }

    /// Called when the driver starts a poll: wake-ups that arrive while it
    /// runs tasks write nothing (the poll will see them or `release` will).
    pub fn hold(&self) {
        self.pending.store(true, Ordering::Release);
    }

    /// Ends a poll. Wake-ups from now on write a byte; `more` (work left
    /// over or queued during the poll) asks for one at once, so the driver
    /// comes back after nginx has served other events.
    ///
    /// `more` is asked only after wake-ups write again: a completion queued
    /// while it is being asked writes its own byte, and one queued before
    /// (whose wake-up wrote nothing, as the poll held it) is seen by it.
    /// (The swap reads the `true` such a wake-up wrote, which makes its
    /// queueing visible here.) Asked before, it could miss a completion
    /// queued in between, which would wait for the driver's idle poll.
    pub fn release(&self, more: impl FnOnce() -> bool) {
        self.pending.swap(false, Ordering::AcqRel);
        if more() {
            self.notify();
        }
    }

    /// Bytes written so far (one per batch of wake-ups).
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    /// Installs (or removes) the accepted end the bytes go to.
    pub fn set_writer(&self, stream: Option<UnixStream>) {
        *self.writer.lock().unwrap_or_else(|e| e.into_inner()) = stream;
    }

    /// Whether a driver is connected.
    pub fn connected(&self) -> bool {
        self.writer.lock().unwrap_or_else(|e| e.into_inner()).is_some()
    }

    fn write_byte(&self) {
        // The lock keeps the fd open while we write: `set_writer` cannot
        // close it (and the number be reused) under us.
        let guard = self.writer.lock().unwrap_or_else(|e| e.into_inner());
        let Some(stream) = guard.as_ref() else {
            // No driver yet: it polls right after it connects.
            return;
        };
        loop {
            match sys::send_byte(stream) {
                Ok(()) => {
                    self.written.fetch_add(1, Ordering::Relaxed);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Full buffer: unread bytes are already there, the driver
                // will wake. Any other error: the driver is gone and polls
                // when it reconnects.
                Err(_) => return,
            }
        }
    }
}
