//! Calling a module's functions in `cargo test`, without nginx (the
//! `testing` feature).
//!
//! A [`Harness`] is a plain LuaJIT state with a `resty.async` of its own in
//! `package.preload`: enough of the real one for [`Module::new`],
//! [`Module::build`] and [`Module::add_class`]. A call of a function that
//! has to wait runs the module's runtime on the test's thread (its tasks,
//! timers and blocking pool, as the driver does in nginx, woken through
//! the completion socket) until the task finishes, and returns what the
//! call returns in nginx: the results, or `nil, message` for an `Err`, a
//! panic or a timeout. A wrong argument raises, and so does a call that
//! would wait inside a C function (a `table.sort` comparator, a
//! `string.gsub` callback), as in nginx. Async methods of
//! registered userdata types wait the same way. Its `resty.async` has no
//! `with_timeout`, `spawn` or `stats`: test Lua code that uses them, and
//! network streams, under Test::Nginx (the template's `t/`).
//!
//! ```
//! use std::time::Duration;
//!
//! use mlua::prelude::*;
//! use resty_async::testing::Harness;
//! use resty_async::Module;
//!
//! // The function `#[mlua::lua_module]` is put on, in a module crate.
//! fn my_module(lua: &Lua) -> LuaResult<LuaTable> {
//!     let mut m = Module::new(lua, "my_module")?;
//!     m.add_async("slow_add", |_lua, (a, b): (i64, i64)| async move {
//!         resty_async::sleep(Duration::from_millis(10)).await;
//!         Ok(a + b)
//!     })?;
//!     m.add_blocking("count_lines", |text: String| Ok::<_, String>(text.lines().count()))?;
//!     m.build()
//! }
//!
//! # fn main() -> LuaResult<()> {
//! let h = Harness::new()?;
//! let m = h.require("my_module", my_module)?;
//! let sum: i64 = m.call_function("slow_add", (1, 2))?;
//! assert_eq!(sum, 3);
//! let n: usize = m.call_function("count_lines", "a\nb\nc")?;
//! assert_eq!(n, 3);
//! // the same from Lua
//! let n: i64 = h.lua().load(r#"return require("my_module").slow_add(2, 3)"#).eval()?;
//! assert_eq!(n, 5);
//! # Ok(())
//! # }
//! ```
//!
//! The test binary links LuaJIT (`libluajit-5.1.so`; Debian's package is
//! `libluajit2-5.1-dev` or `libluajit-5.1-dev`): the feature is meant for a
//! module crate's `[dev-dependencies]`, never for the module itself, which
//! takes its Lua symbols from nginx.
//!
//! [`Module::new`]: crate::Module::new
//! [`Module::build`]: crate::Module::build
//! [`Module::add_class`]: crate::Module::add_class

use std::cell::RefCell;
use std::io::{self, Read};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use mlua::{Function, Lua, Table};

use crate::executor::TaskId;
use crate::runtime::{Done, Runtime};
use crate::vm::{self, VmRuntime};

// Outside nginx nothing else provides the Lua symbols.
#[link(name = "luajit-5.1")]
extern "C" {}

/// Why a call whose task uses network streams fails here (raised after
/// `resty_async::testing: `, as the harness's other errors).
const NET_OPS: &str =
    "the task uses network streams, whose socket ops nginx carries out: test it under Test::Nginx";

/// The call timeout of a new [`Harness`], as in nginx by default.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// A Lua state in which the functions of resty-async modules run to
/// completion. See the module docs.
pub struct Harness {
    lua: Lua,
    config: Table,
}

impl Harness {
    /// A fresh LuaJIT state with every standard library (as ngx_lua
    /// loads them) and the harness's `resty.async`.
    pub fn new() -> mlua::Result<Harness> {
        // SAFETY: the unsafe libraries (`debug`, `ffi`) are loaded as
        // ngx_lua loads them; resty-async uses `debug` to guard mlua's
        // async functions. Only the test's own Lua code could misuse them.
        let lua = unsafe { Lua::unsafe_new() };
        let config = lua.create_table()?;
        config.raw_set("timeout", DEFAULT_TIMEOUT.as_secs_f64())?;
        let sys = lua.create_table()?;
        sys.raw_set("abi", crate::raw::ABI)?;
        sys.raw_set("net_ops", NET_OPS)?;
        sys.raw_set("ccall", crate::waiters::CCALL)?;
        sys.raw_set("config", config.clone())?;
        let link = RefCell::new(None);
        sys.raw_set(
            "drive",
            lua.create_function(move |lua, (id, timeout): (f64, f64)| {
                let Ok(mut link) = link.try_borrow_mut() else {
                    return Err(mlua::Error::RuntimeError(
                        "resty_async::testing: a call cannot wait inside a task".into(),
                    ));
                };
                drive(lua, &mut link, id as TaskId, timeout)
                    .map_err(|e| mlua::Error::RuntimeError(format!("resty_async::testing: {e}")))
            })?,
        )?;
        let preload: Table = lua.globals().get::<Table>("package")?.get("preload")?;
        let methods: Function = lua
            .load(include_str!("../../lualib/resty/async/methods.lua"))
            .set_name("=resty.async.methods")
            .into_function()?;
        preload.raw_set("resty.async.methods", methods)?;
        let lib: Function = lua
            .load(include_str!("resty_async.lua"))
            .set_name("=resty.async (testing)")
            .into_function()?;
        let lib: Table = lib.call(sys)?;
        preload.raw_set("resty.async", lua.create_function(move |_, ()| Ok(lib.clone()))?)?;
        Ok(Harness { lua, config })
    }

    /// The Lua state, to run Lua code that uses the module.
    pub fn lua(&self) -> &Lua {
        &self.lua
    }

    /// Loads module `name` with `open`, its `luaopen` function (the one
    /// `#[mlua::lua_module]` is put on), and returns its exports; Lua code
    /// gets the same table from `require(name)`.
    pub fn require<F>(&self, name: &str, open: F) -> mlua::Result<Table>
    where
        F: Fn(&Lua) -> mlua::Result<Table> + 'static,
    {
        let preload: Table = self.lua.globals().get::<Table>("package")?.get("preload")?;
        preload.raw_set(name, self.lua.create_function(move |lua, ()| open(lua))?)?;
        let require: Function = self.lua.globals().get("require")?;
        require.call(name)
    }

    /// Sets the time a call may take (60 s at first) before it returns
    /// `nil, "timeout"` and its task is dropped, as
    /// `async.configure{ timeout = ... }` does in nginx.
    pub fn set_timeout(&self, timeout: Duration) -> mlua::Result<()> {
        if timeout.is_zero() {
            return Err(mlua::Error::RuntimeError("the timeout must be above 0".into()));
        }
        self.config.raw_set("timeout", timeout.as_secs_f64())
    }
}

/// Runs the runtime of the Lua VM of `lua` until task `id` finishes
/// (`true`) or `timeout` seconds pass (`false`: the task is cancelled), as
/// the driver does in nginx: polls, runs the ready tasks, and in between
/// waits for a byte on the completion socket, or for the next timer.
/// `link` is the harness's end of that socket, connected on first use.
fn drive(lua: &Lua, link: &mut Option<UnixStream>, id: TaskId, timeout: f64) -> io::Result<bool> {
    let rt = VmRuntime::of(lua)
        .map_err(|e| io::Error::other(e.to_string()))?
        .get();
    let _enter = vm::enter(&rt);
    let stream = match link {
        Some(s) => s,
        None => link.insert(connect(&rt)?),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(timeout.clamp(0.0, 1e9));
    loop {
        let next = loop {
            let polled = rt.poll(true);
            if polled.tasks_ready {
                rt.run_tasks();
            }
            let mut done = false;
            while let Some(found) = rt.next_done() {
                match found {
                    Done::Finished(finished) if finished == id => done = true,
                    Done::Ops(task) if task == id => {
                        rt.cancel(id);
                        return Err(io::Error::other(NET_OPS));
                    }
                    // a task of an earlier call that nobody waits for
                    Done::Finished(other) | Done::Ops(other) => {
                        rt.cancel(other);
                    }
                }
            }
            if done {
                return Ok(true);
            }
            // (tasks that keep waking each other: the timeout still holds)
            if !polled.tasks_ready || Instant::now() >= deadline {
                break polled.next;
            }
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            rt.cancel(id);
            return Ok(false);
        }
        wait_for_wakeup(stream, next.map_or(left, |n| n.min(left)))?;
    }
}

/// Connects to the runtime's completion socket as its driver.
fn connect(rt: &Runtime) -> io::Result<UnixStream> {
    let path = rt.socket_path()?;
    let stream = UnixStream::connect(&path)?;
    if !rt.accept_driver()? {
        return Err(io::Error::other(
            "the completion socket did not see the connection",
        ));
    }
    Ok(stream)
}

/// Waits until a wake-up byte arrives on `stream` (it is consumed) or
/// `dur` passes.
fn wait_for_wakeup(stream: &mut UnixStream, dur: Duration) -> io::Result<()> {
    if dur.is_zero() {
        return Ok(());
    }
    stream.set_read_timeout(Some(dur))?;
    let mut buf = [0u8; 64];
    match stream.read(&mut buf) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the runtime closed its completion socket",
        )),
        Ok(_) => Ok(()),
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
            ) =>
        {
            Ok(())
        }
        Err(e) => Err(e),
    }
}
