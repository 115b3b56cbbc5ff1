//! The control functions of the network streams, which
//! `resty/async/net.lua` calls: `net_step` and `net_resolve`.
//!
//! A raw call whose task is pending with socket ops queued returns, after
//! the task id, `k` and the k values of the ops (below). Then
//! `net_step(id, ...)` hands the results of socket ops to task `id`, runs
//! the tasks they woke, and returns the task's new ops and, if it finished,
//! its results:
//!
//! ```text
//! net_step(id, sock, kind, value, sock, kind, value, ...)
//!   -> kick, k, <k values: the ops>, true, results...   (finished)
//!   -> kick, k, <k values: the ops>, false             (pending)
//!   -> kick, 0, nil, message                           (no such task)
//! ```
//!
//! A result is three values: the socket, the op kind, and what came of it
//! (`Connected`: how often the pool had handed out the connection; a
//! confirmed send: `true`; a receive: the data), or, for a failure, the
//! socket negated and ngx_lua's message. `kick`: the driver must run in
//! this cycle of the event loop (see `Runtime::driver_owed`).
//!
//! The ops, in order, each its kind and then:
//!
//! ```text
//! 1 CONNECT    sock, spec
//! 2 SEND       sock, data, ack
//! 3 RECV       sock, max, inline
//! 4 KEEPALIVE  sock, idle_ms, pool_size
//! 5 CLOSE      sock
//! 6 SPEC       spec, host, port (nil: unix), pool, pool_size,
//!              connect_ms, send_ms, read_ms,
//!              server_name (nil: no TLS; false: TLS without SNI), verify
//! ```
//!
//! A SPEC comes before each CONNECT that names it until the result of one
//! such connect came back (the waiter keeps it for the runtime's later
//! connects; spec 0 is never kept).

use std::net::{IpAddr, ToSocketAddrs};
use std::rc::Rc;

use std::ffi::{c_char, c_int};
use std::panic::{catch_unwind, AssertUnwindSafe};

use mlua::{ffi, Lua, MultiValue, Table, Value};

use crate::executor::Panicked;
use crate::executor::TaskId;
use crate::net::task::{Op, OpResult, SockId, CLOSE, CONNECT, KEEPALIVE, RECV, SEND, SPEC};
use crate::raw::{self, error_message, failure, results};
use crate::runtime::Runtime;
use crate::sendable::Sendable;
use crate::strings;
use crate::vm::{self, VmRuntime};

/// Adds `net_step` and `net_resolve` to a runtime's control table.
pub(crate) fn install(lua: &Lua, vm: &Rc<VmRuntime>, t: &Table) -> mlua::Result<()> {
    // SAFETY: net_step follows the lua_CFunction protocol (see there); its
    // upvalue points to the VmRuntime `vm` holds, which the Lua VM keeps
    // (app data) as long as the function can be called.
    let f = unsafe {
        let ptr = Rc::as_ptr(vm) as *mut std::ffi::c_void;
        lua.exec_raw::<mlua::Function>((), |state| {
            ffi::lua_pushlightuserdata(state, ptr);
            ffi::lua_pushcclosure(state, net_step, 1);
        })?
    };
    t.raw_set("net_step", f)?;
    // net_resolve(host) -> (raw convention) the host's address, from
    // getaddrinfo on the blocking pool: where nginx has no `resolver`.
    t.raw_set(
        "net_resolve",
        raw::raw(lua, vm, |_lua, rt, host: Value| {
            let Value::String(host) = host else {
                return Err("bad argument #1 to 'net_resolve' (string expected)".to_owned());
            };
            let host = host
                .to_str()
                .map_err(|_| "host name is not UTF-8".to_owned())?
                .to_owned();
            Ok(rt.spawn_job(move || Sendable::from_result(resolve(&host))))
        })?,
    )?;
    Ok(())
}

/// The first address of `host` (an IPv4 one if there is one), as a
/// cosocket connects to it.
fn resolve(host: &str) -> Result<String, String> {
    let addrs: Vec<IpAddr> = (host, 0)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve \"{host}\": {e}"))?
        .map(|a| a.ip())
        .collect();
    let ip = addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or(addrs.first())
        .ok_or_else(|| format!("cannot resolve \"{host}\": no address"))?;
    Ok(match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    })
}

fn string(lua: &Lua, bytes: &[u8]) -> mlua::Result<Value> {
    strings::create(lua, bytes).map(Value::String)
}

/// Appends the values of `op` (see the module docs).
/// One value of an op, as Lua gets it.
enum OpVal<'a> {
    Num(f64),
    Str(&'a [u8]),
    Bool(bool),
    Nil,
}

/// Hands the values of `op` (see the module docs) to `f`, in order.
fn op_values<E>(op: &Op, mut f: impl FnMut(OpVal<'_>) -> Result<(), E>) -> Result<(), E> {
    let n = |x: u32| OpVal::Num(f64::from(x));
    let kind = |k: u8| OpVal::Num(f64::from(k));
    match op {
        Op::Connect { sock, spec } => {
            if !spec.sent.get() {
                let c = &spec.conn;
                f(kind(SPEC))?;
                f(n(spec.id))?;
                f(OpVal::Str(c.host.as_bytes()))?;
                f(c.port.map_or(OpVal::Nil, |p| n(u32::from(p))))?;
                f(OpVal::Str(c.pool.as_bytes()))?;
                for x in [c.pool_size, c.connect_ms, c.send_ms, c.read_ms] {
                    f(n(x))?;
                }
                f(match &c.tls {
                    None => OpVal::Nil,
                    Some(None) => OpVal::Bool(false),
                    Some(Some(name)) => OpVal::Str(name.as_bytes()),
                })?;
                f(OpVal::Bool(c.verify))?;
            }
            f(kind(CONNECT))?;
            f(n(*sock))?;
            f(n(spec.id))
        }
        Op::Send { sock, data, ack } => {
            f(kind(SEND))?;
            f(n(*sock))?;
            f(OpVal::Str(data))?;
            f(OpVal::Bool(*ack))
        }
        Op::Recv { sock, max, inline } => {
            f(kind(RECV))?;
            f(n(*sock))?;
            f(n(*max))?;
            f(OpVal::Bool(*inline))
        }
        Op::Keepalive {
            sock,
            idle_ms,
            pool_size,
        } => {
            f(kind(KEEPALIVE))?;
            f(n(*sock))?;
            f(n(*idle_ms))?;
            f(n(*pool_size))
        }
        Op::Close { sock } => {
            f(kind(CLOSE))?;
            f(n(*sock))
        }
    }
}

/// Appends the values of `op` as mlua values.
fn push_op(lua: &Lua, out: &mut Vec<Value>, op: Op) -> mlua::Result<()> {
    op_values(&op, |v| {
        out.push(match v {
            OpVal::Num(x) => Value::Number(x),
            OpVal::Str(b) => string(lua, b)?,
            OpVal::Bool(b) => Value::Boolean(b),
            OpVal::Nil => Value::Nil,
        });
        Ok(())
    })
}

/// `k` and the k values of the ops queued for task `id` (for a raw
/// call's pending result).
pub(crate) fn ops_values(lua: &Lua, rt: &Runtime, id: TaskId) -> mlua::Result<MultiValue> {
    let mut out = Vec::with_capacity(16);
    out.push(Value::Nil);
    if let Some(task) = rt.net().get(id) {
        task.drain_ops(|op| push_op(lua, &mut out, op))?;
    }
    out[0] = Value::Number((out.len() - 1) as f64);
    Ok(MultiValue::from_vec(out))
}

/// What a step found, for `net_step` to push.
struct Stepped {
    kick: bool,
    ops: Vec<Op>,
    /// The task's results if it finished; `None` if pending; the error
    /// message if the task is gone.
    state: Result<Option<MultiValue>, &'static str>,
}

/// A result of the arguments of `net_step`: a socket (negative: failed),
/// an op kind, and the value (a number, or a string on the Lua stack).
struct Arg<'a> {
    sock: f64,
    kind: f64,
    num: f64,
    /// The string value: the bytes of a string on the Lua stack of the
    /// running `net_step` call.
    bytes: Option<&'a [u8]>,
}

/// The Rust part of `net_step`: hands the results to the task, runs what
/// they woke, takes the ops and the outcome.
fn step(lua: &Lua, vm: &VmRuntime, id: TaskId, args: &[Arg<'_>]) -> mlua::Result<Stepped> {
    let rt = vm.get();
    let _enter = vm::enter(&rt);
    let task = rt.net().get(id);
    rt.run_inline(|| {
        let Some(task) = &task else { return };
        for a in args {
            let kind = a.kind as u8;
            if a.sock < 0.0 {
                let msg = a.bytes.map_or_else(
                    || "the cosocket gave no error message".to_owned(),
                    |b| String::from_utf8_lossy(b).into_owned(),
                );
                task.deliver((-a.sock) as SockId, OpResult::Failed(kind, msg));
                continue;
            }
            let sock = a.sock as SockId;
            match (kind, a.bytes) {
                (CONNECT, _) => task.deliver(sock, OpResult::Connected(a.num as u32)),
                (SEND, _) => task.deliver(sock, OpResult::Sent),
                (RECV, Some(data)) => task.deliver(sock, OpResult::Received(data)),
                _ => {}
            }
        }
    });
    // The ops first: taking the finished task forgets its sockets.
    let mut ops = Vec::new();
    if let Some(task) = &task {
        task.drain_ops(|op| {
            ops.push(op);
            Ok::<(), ()>(())
        })
        .ok();
    }
    drop(task);
    let done = rt.take_finished(id);
    let kick = rt.driver_owed(id);
    let state = match done {
        Some(outcome) => Ok(Some(results(lua, outcome)?)),
        None if rt.has_task(id) => Ok(None),
        None => Err("cancelled"),
    };
    Ok(Stepped { kick, ops, state })
}

/// `net_step` (see the module docs): a C function, with the VM's
/// runtime as its upvalue. Its arguments are read off the stack and its
/// results pushed onto it without mlua's conversions, which would cost
/// more than the step.
///
/// The Rust part runs under `catch_unwind` and makes Lua values only
/// under protected calls; pushing the results may raise a memory error,
/// which unwinds through this frame (a `C-unwind` function) to the
/// caller's protected call, dropping what is owned here.
unsafe extern "C-unwind" fn net_step(state: *mut ffi::lua_State) -> c_int {
    // SAFETY: (for the whole function) `state` is the running Lua state
    // (lua_CFunction protocol); the upvalue is the VmRuntime that `install`
    // made this function for, which lives as long as the Lua VM.
    unsafe {
        let vm = &*(ffi::lua_touserdata(state, ffi::lua_upvalueindex(1)) as *const VmRuntime);
        let lua = Lua::get_or_init_from_ptr(state);
        let top = ffi::lua_gettop(state);
        let id = ffi::lua_tonumber(state, 1) as TaskId;
        let mut args = Vec::with_capacity(((top - 1) / 3).max(0) as usize);
        let mut i = 2;
        while i + 2 <= top {
            let (mut num, mut bytes) = (0.0, None);
            match ffi::lua_type(state, i + 2) {
                // Only a string: lua_tolstring converts (and allocates)
                // nothing then.
                ffi::LUA_TSTRING => {
                    let mut len = 0;
                    let p = ffi::lua_tolstring(state, i + 2, &mut len);
                    // (the string stays on this call's stack until
                    // `args` is dropped, before the lua_settop below)
                    bytes = Some(std::slice::from_raw_parts(p as *const u8, len));
                }
                ffi::LUA_TNUMBER => num = ffi::lua_tonumber(state, i + 2),
                _ => {}
            }
            args.push(Arg {
                sock: ffi::lua_tonumber(state, i),
                kind: ffi::lua_tonumber(state, i + 1),
                num,
                bytes,
            });
            i += 3;
        }
        let stepped = match catch_unwind(AssertUnwindSafe(|| step(lua, vm, id, &args))) {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => Stepped {
                kick: false,
                ops: Vec::new(),
                state: Ok(Some(failure(lua, &error_message(&e)).unwrap_or_default())),
            },
            Err(p) => Stepped {
                kick: false,
                ops: Vec::new(),
                state: Ok(Some(
                    failure(lua, &Panicked::from_payload(p).to_string()).unwrap_or_default(),
                )),
            },
        };
        drop(args);
        ffi::lua_settop(state, 0);
        let mut k = 0;
        for op in &stepped.ops {
            let _ = op_values(op, |_| {
                k += 1;
                Ok::<(), ()>(())
            });
        }
        let nres = match &stepped.state {
            Ok(Some(r)) => r.len() as c_int + 1,
            _ => 2,
        };
        ffi::luaL_checkstack(state, 2 + k + nres, c"resty-async: too many results".as_ptr());
        ffi::lua_pushboolean(state, c_int::from(stepped.kick));
        ffi::lua_pushnumber(state, f64::from(k));
        for op in &stepped.ops {
            let _ = op_values(op, |v| {
                match v {
                    OpVal::Num(x) => ffi::lua_pushnumber(state, x),
                    OpVal::Str(b) => {
                        ffi::lua_pushlstring(state, b.as_ptr() as *const c_char, b.len());
                    }
                    OpVal::Bool(b) => ffi::lua_pushboolean(state, c_int::from(b)),
                    OpVal::Nil => ffi::lua_pushnil(state),
                }
                Ok::<(), ()>(())
            });
        }
        match &stepped.state {
            Ok(Some(values)) => {
                ffi::lua_pushboolean(state, 1);
                // mlua pushes onto its own current state: moved from there.
                lua.exec_raw_lua(|raw| {
                    let from = raw.state();
                    for v in values.iter() {
                        if ffi::lua_checkstack(from, 2) == 0 || raw.push_value(v).is_err() {
                            ffi::lua_pushnil(state);
                            continue;
                        }
                        if from != state {
                            ffi::lua_xmove(from, state, 1);
                        }
                    }
                });
            }
            Ok(None) => {
                ffi::lua_pushboolean(state, 0);
                ffi::lua_pushnil(state);
            }
            Err(msg) => {
                ffi::lua_pushnil(state);
                ffi::lua_pushlstring(state, msg.as_ptr() as *const c_char, msg.len());
            }
        }
        ffi::lua_gettop(state)
    }
}
