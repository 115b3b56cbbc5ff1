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

use mlua::{Lua, MultiValue, Table, Value};

use crate::executor::TaskId;
use crate::net::task::{Op, OpResult, SockId, CLOSE, CONNECT, KEEPALIVE, RECV, SEND, SPEC};
use crate::raw::{self, results};
use crate::runtime::Runtime;
use crate::sendable::Sendable;
use crate::strings;
use crate::vm::{self, VmRuntime};

/// Adds `net_step` and `net_resolve` to a runtime's control table.
pub(crate) fn install(lua: &Lua, vm: &Rc<VmRuntime>, t: &Table) -> mlua::Result<()> {
    let h = Rc::clone(vm);
    t.raw_set(
        "net_step",
        lua.create_function(move |lua, args: MultiValue| step(lua, &h, args))?,
    )?;
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

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        _ => None,
    }
}

/// A result triplet, as `OpResult`; `None` if malformed.
fn with_result(sock: &Value, kind: &Value, value: &Value, f: impl FnOnce(SockId, OpResult<'_>)) {
    let (Some(sock), Some(kind)) = (number(sock), number(kind)) else {
        return;
    };
    let kind = kind as u8;
    if sock < 0.0 {
        let msg = match value {
            Value::String(s) => s.to_string_lossy(),
            _ => "failed".to_owned(),
        };
        return f((-sock) as SockId, OpResult::Failed(kind, msg));
    }
    let sock = sock as SockId;
    match (kind, value) {
        (CONNECT, v) => f(sock, OpResult::Connected(number(v).unwrap_or(0.0) as u32)),
        (SEND, _) => f(sock, OpResult::Sent),
        (RECV, Value::String(s)) => f(sock, OpResult::Received(&s.as_bytes())),
        _ => {}
    }
}

fn string(lua: &Lua, bytes: &[u8]) -> mlua::Result<Value> {
    strings::create(lua, bytes).map(Value::String)
}

/// Appends the values of `op` (see the module docs).
fn push_op(lua: &Lua, out: &mut Vec<Value>, op: Op) -> mlua::Result<()> {
    let n = |x: u32| Value::Number(f64::from(x));
    match op {
        Op::Connect { sock, spec } => {
            if !spec.sent.get() {
                let c = &spec.conn;
                out.extend([Value::Number(f64::from(SPEC)), n(spec.id)]);
                out.push(string(lua, c.host.as_bytes())?);
                out.push(c.port.map_or(Value::Nil, |p| n(u32::from(p))));
                out.push(string(lua, c.pool.as_bytes())?);
                out.extend([n(c.pool_size), n(c.connect_ms), n(c.send_ms), n(c.read_ms)]);
                out.push(match &c.tls {
                    None => Value::Nil,
                    Some(None) => Value::Boolean(false),
                    Some(Some(name)) => string(lua, name.as_bytes())?,
                });
                out.push(Value::Boolean(c.verify));
            }
            out.extend([Value::Number(f64::from(CONNECT)), n(sock), n(spec.id)]);
        }
        Op::Send { sock, data, ack } => {
            out.extend([Value::Number(f64::from(SEND)), n(sock)]);
            out.push(string(lua, &data)?);
            out.push(Value::Boolean(ack));
        }
        Op::Recv { sock, max, inline } => {
            out.extend([
                Value::Number(f64::from(RECV)),
                n(sock),
                n(max),
                Value::Boolean(inline),
            ]);
        }
        Op::Keepalive {
            sock,
            idle_ms,
            pool_size,
        } => {
            out.extend([
                Value::Number(f64::from(KEEPALIVE)),
                n(sock),
                n(idle_ms),
                n(pool_size),
            ]);
        }
        Op::Close { sock } => out.extend([Value::Number(f64::from(CLOSE)), n(sock)]),
    }
    Ok(())
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

fn step(lua: &Lua, vm: &VmRuntime, args: MultiValue) -> mlua::Result<MultiValue> {
    let rt = vm.get();
    let _enter = vm::enter(&rt);
    let mut args = args.into_iter();
    let id = args.next().as_ref().and_then(number).unwrap_or(0.0) as TaskId;
    let task = rt.net().get(id);
    rt.run_inline(|| {
        let Some(task) = &task else { return };
        while let (Some(sock), Some(kind), Some(value)) = (args.next(), args.next(), args.next()) {
            with_result(&sock, &kind, &value, |sock, result| task.deliver(sock, result));
        }
    });
    // The ops first: taking the finished task forgets its sockets.
    let mut out = Vec::with_capacity(16);
    out.extend([Value::Nil, Value::Nil]);
    if let Some(task) = &task {
        task.drain_ops(|op| push_op(lua, &mut out, op))?;
    }
    drop(task);
    let done = rt.take_finished(id);
    out[0] = Value::Boolean(rt.driver_owed(id));
    out[1] = Value::Number((out.len() - 2) as f64);
    match done {
        Some(outcome) => {
            out.push(Value::Boolean(true));
            out.extend(results(lua, outcome)?);
        }
        None if rt.has_task(id) => out.push(Value::Boolean(false)),
        None => {
            out.push(Value::Nil);
            out.push(string(lua, b"cancelled")?);
        }
    }
    Ok(MultiValue::from_vec(out))
}
