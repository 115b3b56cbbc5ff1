//! Tests of the runtime's parts, without nginx (LuaJIT is linked into the
//! test binary: see build.rs).

mod blocks;
mod config;
mod executor;
mod fork;
mod mailbox;
mod net;
mod plain;
mod pool;
mod record;
mod runtime;
mod socket;
mod timer;
#[cfg(feature = "tokio")]
mod tokio;

// The test binary has no host to take the Lua symbols from.
#[link(name = "luajit-5.1")]
extern "C" {}

/// Forks; the child runs `check` and leaves at once with its answer,
/// without the test harness. Whether the child answered `true`.
fn in_child(check: impl FnOnce() -> bool) -> bool {
    // SAFETY: the child runs only `check`, on this thread, then exits with
    // _exit. Other test threads may hold locks at the fork: `check` must
    // take none of theirs but glibc malloc's, which glibc resets in the
    // child (as nginx's workers rely on).
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        let answer = check();
        // SAFETY: leave the child at once, without running the harness.
        unsafe { libc::_exit(if answer { 0 } else { 1 }) };
    }
    let mut status = 0;
    // SAFETY: waiting for our own child.
    unsafe { libc::waitpid(pid, &mut status, 0) };
    libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
}
