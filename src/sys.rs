//! The few system calls std does not wrap: peer credentials, `mkdtemp`,
//! `getpid`, thread priorities and CPU affinity. Every `unsafe` block of
//! the crate that talks to libc lives here.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Once;

/// Runs a libc call and turns `-1` into the thread's `errno` as `io::Error`.
macro_rules! syscall {
    ($fn:ident ( $($arg:expr),* $(,)? )) => {{
        #[allow(unused_unsafe)]
        // SAFETY: the caller of the macro guarantees the arguments are valid
        // for the named libc function (each call site says why).
        let res = unsafe { libc::$fn($($arg),*) };
        if res == -1 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(res)
        }
    }};
}

/// The id of the calling process.
pub(crate) fn getpid() -> u32 {
    // SAFETY: getpid has no preconditions and cannot fail.
    unsafe { libc::getpid() as u32 }
}

/// The pid of the process at the other end of a connected unix socket, as
/// the kernel recorded it at `connect()` time (`SO_PEERCRED`).
pub(crate) fn peer_pid(sock: &impl AsRawFd) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes and `len` is the size of
    // `cred`, as SO_PEERCRED requires; the fd is borrowed for the call.
    syscall!(getsockopt(
        sock.as_raw_fd(),
        libc::SOL_SOCKET,
        libc::SO_PEERCRED,
        (&mut cred as *mut libc::ucred).cast(),
        &mut len,
    ))?;
    Ok(cred.pid as u32)
}

/// Creates a fresh directory `<base>/<prefix>XXXXXX` with mode 0700 and
/// returns its path (`mkdtemp(3)`: the name is unpredictable and the call
/// fails rather than reuse an existing directory).
pub(crate) fn mkdtemp(base: &Path, prefix: &str) -> io::Result<PathBuf> {
    let mut template = base.as_os_str().as_bytes().to_vec();
    template.extend_from_slice(b"/");
    template.extend_from_slice(prefix.as_bytes());
    template.extend_from_slice(b"XXXXXX");
    let template = CString::new(template)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    let mut buf = template.into_bytes_with_nul();
    // SAFETY: `buf` is a NUL-terminated, writable buffer that mkdtemp fills in
    // place; it outlives the call.
    let res = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
    if res.is_null() {
        return Err(io::Error::last_os_error());
    }
    buf.pop(); // the NUL
    Ok(PathBuf::from(OsString::from_vec(buf)))
}

/// Sends one byte on a stream socket without blocking. MSG_NOSIGNAL: a
/// closed peer gives EPIPE, not a SIGPIPE that would kill a host that does
/// not ignore it.
pub(crate) fn send_byte(sock: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: the buffer is one valid byte for the length passed, and the
    // fd is borrowed for the call.
    syscall!(send(
        sock.as_raw_fd(),
        [1u8].as_ptr().cast(),
        1,
        libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
    ))?;
    Ok(())
}

/// Clears `O_NONBLOCK` on the descriptor of `f`.
pub(crate) fn set_blocking(f: &impl AsRawFd) -> io::Result<()> {
    // SAFETY: fcntl reads the flags of a descriptor that `f` keeps open.
    let flags = syscall!(fcntl(f.as_raw_fd(), libc::F_GETFL))?;
    // SAFETY: and sets them.
    syscall!(fcntl(f.as_raw_fd(), libc::F_SETFL, flags & !libc::O_NONBLOCK))?;
    Ok(())
}

/// Whether a process with this pid exists (`kill(pid, 0)`; EPERM means it
/// exists but belongs to someone else).
pub(crate) fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 sends nothing (only the checks run); no pointers.
    match syscall!(kill(pid as libc::pid_t, 0)) {
        Ok(_) => true,
        Err(e) => e.raw_os_error() == Some(libc::EPERM),
    }
}

static FORKS: AtomicU64 = AtomicU64::new(0);
static ATFORK: Once = Once::new();

extern "C" fn count_fork_in_child() {
    // Only an atomic add: fine in a fork handler.
    FORKS.fetch_add(1, Ordering::Relaxed);
}

/// Makes [`forks`] count the `fork()`s of this process from now on, and
/// returns its current value. (A `getpid()` per call would cost a system
/// call on every Lua call; a fork counter costs a load.)
pub(crate) fn watch_forks() -> u64 {
    ATFORK.call_once(|| {
        // SAFETY: the handler only does an atomic add, which is
        // async-signal-safe as a child fork handler must be. glibc ties the
        // registration to this shared object and drops it if the object is
        // unloaded (dlclose), so it never calls into unmapped code.
        let rc = unsafe { libc::pthread_atfork(None, None, Some(count_fork_in_child)) };
        debug_assert_eq!(rc, 0);
    });
    forks()
}

/// Keeps the shared object that holds this code loaded until the process
/// exits. Lua unloads a C module's library (`dlclose`) when the Lua VM that
/// loaded it closes, as every VM does under `lua_code_cache off`; this
/// library's pool threads and thread-local destructors must not outlive
/// its code.
pub(crate) fn pin_library() {
    static PINNED: Once = Once::new();
    PINNED.call_once(|| {
        // SAFETY: Dl_info is plain data (pointers and integers): all zeroes
        // is a valid value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        // SAFETY: dladdr only reads the loader's tables and writes `info`.
        // The function pointer is an address in this object, which is what
        // dladdr looks up.
        let found = unsafe { libc::dladdr(pin_library as *const libc::c_void, &mut info) };
        if found == 0 || info.dli_fname.is_null() {
            return;
        }
        // SAFETY: RTLD_NOLOAD only looks up an object that is loaded (this
        // one: dli_fname is its path) and takes a reference to it;
        // RTLD_NODELETE marks it never to be unloaded. The reference is
        // kept on purpose.
        unsafe {
            libc::dlopen(
                info.dli_fname,
                libc::RTLD_NOW | libc::RTLD_NOLOAD | libc::RTLD_NODELETE,
            )
        };
    });
}

/// How many times this process's ancestors forked since [`watch_forks`] was
/// first called: a value remembered before a fork differs after it.
pub(crate) fn forks() -> u64 {
    FORKS.load(Ordering::Relaxed)
}

/// Number of CPUs this process may run on.
pub(crate) fn cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The highest CPU number [`pin_thread`] takes, plus one (glibc's
/// `CPU_SETSIZE`).
pub(crate) const MAX_CPUS: usize = 1024;

/// One more than the highest CPU number the kernel may ever bring online
/// (the last number of /sys/devices/system/cpu/possible, e.g. "0-3"), if
/// it says. Not a count: CPU numbers may have holes, and a process may be
/// allowed only some of them.
pub(crate) fn possible_cpus_end() -> Option<usize> {
    let list = std::fs::read_to_string("/sys/devices/system/cpu/possible").ok()?;
    let last = list.trim().rsplit([',', '-']).next()?;
    last.parse::<usize>().ok().map(|n| n + 1)
}

/// Lets the calling thread run only on `cpus` (Linux `sched_setaffinity`;
/// elsewhere nothing). Numbers of [`MAX_CPUS`] or more are an error, as is
/// a set with no CPU this thread may use (offline, or outside its cpuset).
pub(crate) fn pin_thread(cpus: &[usize]) -> io::Result<()> {
    if let Some(&cpu) = cpus.iter().find(|&&c| c >= MAX_CPUS) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("CPU {cpu} is out of range (0 to {})", MAX_CPUS - 1),
        ));
    }
    #[cfg(target_os = "linux")]
    {
        // SAFETY: cpu_set_t is a plain bit array, valid when zeroed (the
        // empty set, as CPU_ZERO makes it).
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &cpu in cpus {
            // SAFETY: `cpu` < CPU_SETSIZE (checked above), so CPU_SET
            // writes inside `set`.
            unsafe { libc::CPU_SET(cpu, &mut set) };
        }
        // SAFETY: pid 0 is the calling thread on Linux; `set` is a valid
        // cpu_set_t of the size passed, and outlives the call.
        syscall!(sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set))?;
    }
    Ok(())
}

/// The nice value of the calling thread (Linux keeps one per thread;
/// elsewhere: 0).
pub(crate) fn thread_nice() -> io::Result<i32> {
    #[cfg(target_os = "linux")]
    {
        // getpriority can return -1 as a valid nice value: tell it from an
        // error by errno, which it sets only on failure.
        // SAFETY: __errno_location returns this thread's errno slot, valid
        // for the thread's lifetime.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: PRIO_PROCESS with a thread id reads that thread's nice
        // value on Linux; no pointers are involved.
        let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, gettid()) };
        if nice == -1 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(0) {
                return Err(e);
            }
        }
        Ok(nice)
    }
    #[cfg(not(target_os = "linux"))]
    Ok(0)
}

/// Lowers the calling thread's priority to nice value `target` (at most
/// 19) if it is higher now; never raises it (that needs CAP_SYS_NICE).
pub(crate) fn lower_thread_priority_to(target: i32) -> io::Result<()> {
    let target = target.min(19);
    if thread_nice()? >= target {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    // SAFETY: PRIO_PROCESS with a thread id sets only that thread's nice
    // value on Linux; no pointers are involved.
    syscall!(setpriority(libc::PRIO_PROCESS, gettid(), target))?;
    Ok(())
}

/// Whether the calling thread runs under `SCHED_OTHER`, the default policy
/// (elsewhere than on Linux: false).
pub(crate) fn thread_policy_is_other() -> bool {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: pid 0 is the calling thread; no pointers are involved.
        unsafe { libc::sched_getscheduler(0) == libc::SCHED_OTHER }
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Puts the calling thread under `SCHED_BATCH` (`on`) or back under
/// `SCHED_OTHER` (Linux; elsewhere nothing). Its nice value is kept, and
/// neither change needs a privilege.
pub(crate) fn set_thread_batch(on: bool) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        let policy = if on { libc::SCHED_BATCH } else { libc::SCHED_OTHER };
        let param = libc::sched_param { sched_priority: 0 };
        // SAFETY: pid 0 is the calling thread on Linux; `param` is a valid
        // sched_param that outlives the call.
        syscall!(sched_setscheduler(0, policy, &param))?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = on;
    Ok(())
}

/// Whether the calling thread is the process's main thread (nginx's
/// event loop runs there). Not known, so false, outside Linux.
pub(crate) fn is_main_thread() -> bool {
    #[cfg(target_os = "linux")]
    return gettid() == getpid();
    #[cfg(not(target_os = "linux"))]
    return false;
}

#[cfg(target_os = "linux")]
fn gettid() -> libc::id_t {
    // SAFETY: gettid has no preconditions and cannot fail.
    unsafe { libc::syscall(libc::SYS_gettid) as libc::id_t }
}

/// Blocks, in the calling thread, the signals sent to the process (nginx's
/// QUIT, HUP, CHLD ...), so that the kernel delivers them to a thread that
/// waits for them: nginx's. Signals a fault raises in this thread (SEGV,
/// BUS, ILL, FPE, TRAP, ABRT) stay unblocked.
#[cfg(feature = "tokio")]
pub(crate) fn block_async_signals() {
    // SAFETY: sigset_t is plain data; sigfillset initializes it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid sigset_t for these calls to fill and edit.
    unsafe {
        libc::sigfillset(&mut set);
        for sig in [
            libc::SIGSEGV,
            libc::SIGBUS,
            libc::SIGILL,
            libc::SIGFPE,
            libc::SIGTRAP,
            libc::SIGABRT,
        ] {
            libc::sigdelset(&mut set, sig);
        }
    }
    // SAFETY: `set` is initialized; a null old set is allowed.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    debug_assert_eq!(rc, 0);
}

/// Runs `f` when the process calls `exit()` (not when it is killed).
#[cfg(feature = "tokio")]
pub(crate) fn at_exit(f: extern "C" fn()) -> io::Result<()> {
    pin_library();
    // SAFETY: `f` is a function of this library, which pin_library keeps
    // mapped until the process ends, so exit() may call it.
    if unsafe { libc::atexit(f) } != 0 {
        return Err(io::Error::other("atexit failed"));
    }
    Ok(())
}
