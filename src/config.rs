//! The settings of `async.configure`: their defaults, limits and checks,
//! all here.

use std::path::{Path, PathBuf};

use mlua::{Lua, Table, Value};

use crate::sys;

/// Settings read when a runtime is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Config {
    /// Where the private directory of the completion socket is made.
    pub base_dir: PathBuf,
    /// Most threads of the blocking pool.
    pub threads: usize,
    /// Most jobs waiting in the blocking pool's queue.
    pub max_queue: usize,
    /// How much lower the priority (nice value) of a pool thread is than
    /// the worker's once it has run a long job, 0 to 19: long CPU jobs
    /// give the CPU to the event loop first (see [`crate::pool::NICE_AFTER`]).
    pub pool_nice: i32,
    /// The CPUs pool threads run on, as `taskset -c` numbers them (empty:
    /// those of the worker, which starts them). See
    /// [`crate::pool::Pool::with_cpus`]. Sorted, without duplicates.
    pub pool_cpus: Vec<usize>,
    /// Worker threads of the process's tokio runtime (the `tokio`
    /// feature; see `tokio.rs`). Every build takes the option, so that
    /// one `configure` table fits every module of a worker.
    pub tokio_threads: usize,
    /// Defaults of the network streams ([`crate::net`]). Unlike the other
    /// settings, they may change while the runtime runs: a stream reads
    /// them when it is opened.
    pub net: NetConfig,
}

/// The defaults of [`crate::net::TcpStream`]: timeouts of its socket
/// operations and of nginx's keepalive pool, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct NetConfig {
    /// `connect_timeout`: connecting (and the TLS handshake).
    pub connect_ms: u32,
    /// `send_timeout`: one send.
    pub send_ms: u32,
    /// `read_timeout`: one read.
    pub read_ms: u32,
    /// `keepalive_timeout`: how long an idle connection stays in nginx's
    /// pool.
    pub keepalive_ms: u32,
    /// `keepalive_pool`: most idle connections per pool name.
    pub pool_size: u32,
}

impl Default for NetConfig {
    fn default() -> NetConfig {
        // ngx_lua's own defaults (lua_socket_connect_timeout and friends,
        // lua_socket_keepalive_timeout, lua_socket_pool_size).
        NetConfig {
            connect_ms: 60_000,
            send_ms: 60_000,
            read_ms: 60_000,
            keepalive_ms: 60_000,
            pool_size: 30,
        }
    }
}

/// Most pool threads.
pub(crate) const MAX_THREADS: usize = 1024;
/// Most queued pool jobs.
pub(crate) const MAX_QUEUE: usize = 1 << 20;
/// Most worker threads of the tokio runtime.
pub(crate) const MAX_TOKIO_THREADS: usize = 256;
/// Longest socket timeout: nginx's timers take at most 2^31 - 1 ms.
pub(crate) const MAX_SOCKET_MS: u32 = i32::MAX as u32;
/// Most idle connections of one keepalive pool.
pub(crate) const MAX_POOL_SIZE: u32 = 1 << 20;
/// Highest CPU number of `pool_cpus` (glibc's `CPU_SETSIZE` - 1).
const MAX_CPU: usize = sys::MAX_CPUS - 1;
/// The default [`Config::pool_nice`]: against a busy worker on the same
/// core, a pool thread gets a small share of the CPU (the scheduler's
/// weights for nice 0 against 10); on an idle core, all of it.
pub(crate) const DEFAULT_POOL_NICE: i32 = 10;

impl Default for Config {
    fn default() -> Config {
        Config {
            base_dir: std::env::temp_dir(),
            threads: sys::cpus().min(MAX_THREADS),
            max_queue: 1024,
            pool_nice: DEFAULT_POOL_NICE,
            pool_cpus: Vec::new(),
            tokio_threads: 1,
            net: NetConfig::default(),
        }
    }
}

/// What a bad `configure` call gets: misuse is raised in the caller, a
/// setting the runtime cannot take is returned as `nil, message`.
#[derive(Debug)]
pub(crate) enum ConfigError {
    Misuse(String),
    Refused(String),
}

fn misuse(what: impl std::fmt::Display) -> ConfigError {
    ConfigError::Misuse(format!("bad argument #1 to 'configure' ({what})"))
}

/// A Lua number of seconds above 0, as whole milliseconds (at least 1) no
/// more than [`MAX_SOCKET_MS`].
fn socket_ms(lua: &Lua, k: &str, v: &Value) -> Result<u32, ConfigError> {
    let secs = number(lua, k, v)?;
    let max = f64::from(MAX_SOCKET_MS) / 1000.0;
    if !(secs > 0.0 && secs <= max) {
        return Err(misuse(format!(
            "option '{k}' must be a number of seconds above 0 and at most {max}"
        )));
    }
    Ok(((secs * 1000.0).round() as u32).clamp(1, MAX_SOCKET_MS))
}

/// The number that Lua makes of `v`: a number, or a string that converts
/// to one, as `luaL_checknumber` takes it (ngx_lua's functions, and so
/// `async.sleep` and the timeouts of the Lua API); `None` for anything
/// else.
fn to_number(lua: &Lua, v: &Value) -> Option<f64> {
    match v {
        Value::Integer(i) => Some(*i as f64),
        Value::Number(n) => Some(*n),
        Value::String(_) => lua.coerce_number(v.clone()).ok().flatten(),
        _ => None,
    }
}

/// Option `k`'s value `v` as a number (see [`to_number`]).
fn number(lua: &Lua, k: &str, v: &Value) -> Result<f64, ConfigError> {
    to_number(lua, v).ok_or_else(|| misuse(format!("option '{k}': number expected, got {}", type_name(v))))
}

/// `n` if it is an integer from `lo` to `hi`.
fn integer(n: f64, lo: i64, hi: i64) -> Option<i64> {
    (n.fract() == 0.0 && n >= lo as f64 && n <= hi as f64).then_some(n as i64)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Integer(_) => "number",
        other => other.type_name(),
    }
}

fn expect<'a>(k: &str, v: &'a Value, want: &str) -> Result<&'a Value, ConfigError> {
    if type_name(v) == want {
        Ok(v)
    } else {
        Err(misuse(format!(
            "option '{k}': {want} expected, got {}",
            type_name(v)
        )))
    }
}

impl Config {
    /// This configuration with the options of `opts` (a `configure` table)
    /// applied, and the `timeout` option if given (seconds; the Lua side
    /// keeps it). Unknown options, wrong types and values out of range
    /// are misuse; so is a CPU the machine cannot have. A number may be
    /// given as a string that Lua converts to one.
    pub(crate) fn with_options(&self, lua: &Lua, opts: &Table) -> Result<(Config, Option<f64>), ConfigError> {
        let mut c = self.clone();
        let mut timeout = None;
        for pair in opts.pairs::<Value, Value>() {
            let (k, v) = pair.map_err(|e| misuse(crate::raw::error_message(&e)))?;
            let Value::String(name) = &k else {
                return Err(misuse(format!(
                    "unknown option '{}'",
                    k.to_string().unwrap_or_default()
                )));
            };
            let name = name.to_string_lossy();
            match name.as_str() {
                "timeout" => {
                    let n = number(lua, &name, &v)?;
                    if !(n.is_finite() && n > 0.0) {
                        return Err(misuse("timeout must be a finite number > 0"));
                    }
                    timeout = Some(n);
                }
                "threads" => {
                    c.threads = integer(number(lua, &name, &v)?, 1, MAX_THREADS as i64).ok_or_else(|| {
                        misuse(format!(
                            "option 'threads' must be an integer from 1 to {MAX_THREADS}"
                        ))
                    })? as usize;
                }
                "max_queue" => {
                    c.max_queue = integer(number(lua, &name, &v)?, 1, MAX_QUEUE as i64).ok_or_else(|| {
                        misuse(format!(
                            "option 'max_queue' must be an integer from 1 to {MAX_QUEUE}"
                        ))
                    })? as usize;
                }
                "pool_nice" => {
                    c.pool_nice = integer(number(lua, &name, &v)?, 0, 19)
                        .ok_or_else(|| misuse("option 'pool_nice' must be an integer from 0 to 19"))?
                        as i32;
                }
                "tokio_threads" => {
                    c.tokio_threads = integer(number(lua, &name, &v)?, 1, MAX_TOKIO_THREADS as i64)
                        .ok_or_else(|| {
                            misuse(format!(
                                "option 'tokio_threads' must be an integer from 1 to {MAX_TOKIO_THREADS}"
                            ))
                        })? as usize;
                }
                "base_dir" => {
                    let Value::String(s) = expect(&name, &v, "string")? else {
                        unreachable!()
                    };
                    let dir = s.to_str().map_err(|_| misuse("option 'base_dir' is not UTF-8"))?;
                    // (a relative one would name a directory in whatever
                    // the worker's working directory is)
                    if !Path::new(&*dir).is_absolute() {
                        return Err(misuse(format!(
                            "option 'base_dir' must be an absolute path, got {}",
                            lua_string(&dir)
                        )));
                    }
                    c.base_dir = PathBuf::from(&*dir);
                }
                "pool_cpus" => {
                    let Value::Table(t) = expect(&name, &v, "table")? else {
                        unreachable!()
                    };
                    c.pool_cpus = cpu_list(lua, t).ok_or_else(|| {
                        misuse(format!(
                            "option 'pool_cpus' must be a list of CPU numbers from 0 to {MAX_CPU}"
                        ))
                    })?;
                }
                "connect_timeout" => c.net.connect_ms = socket_ms(lua, &name, &v)?,
                "send_timeout" => c.net.send_ms = socket_ms(lua, &name, &v)?,
                "read_timeout" => c.net.read_ms = socket_ms(lua, &name, &v)?,
                "keepalive_timeout" => c.net.keepalive_ms = socket_ms(lua, &name, &v)?,
                "keepalive_pool" => {
                    c.net.pool_size = integer(number(lua, &name, &v)?, 1, i64::from(MAX_POOL_SIZE))
                        .ok_or_else(|| {
                            misuse(format!(
                                "option 'keepalive_pool' must be an integer from 1 to {MAX_POOL_SIZE}"
                            ))
                        })? as u32;
                }
                other => return Err(misuse(format!("unknown option '{other}'"))),
            }
        }
        // (CPUs the machine has but the process may not use fail when a
        // thread starts: see Pool::with_cpus.)
        if let Some(end) = sys::possible_cpus_end() {
            if let Some(&cpu) = c.pool_cpus.iter().find(|&&n| n >= end) {
                return Err(ConfigError::Refused(format!(
                    "pool_cpus: no CPU {cpu} on this machine (its CPUs are numbered 0 to {})",
                    end - 1
                )));
            }
        }
        Ok((c, timeout))
    }

    /// The settings read when a runtime is made (all but the network
    /// defaults, which may change while it runs) that differ between
    /// `self`, in use, and `asked`, each in Lua terms (`threads = 2 (not
    /// 3)`), in the order of the README's table.
    pub(crate) fn fixed_changes(&self, asked: &Config) -> Vec<String> {
        // (destructured: a new setting must be placed here or below)
        let Config {
            base_dir,
            threads,
            max_queue,
            pool_nice,
            pool_cpus,
            tokio_threads,
            net: _,
        } = self;
        let mut out = Vec::new();
        let mut change = |name: &str, differs: bool, now: String, not: String| {
            if differs {
                out.push(format!("{name} = {now} (not {not})"));
            }
        };
        change(
            "threads",
            *threads != asked.threads,
            threads.to_string(),
            asked.threads.to_string(),
        );
        change(
            "max_queue",
            *max_queue != asked.max_queue,
            max_queue.to_string(),
            asked.max_queue.to_string(),
        );
        change(
            "base_dir",
            *base_dir != asked.base_dir,
            lua_string(&base_dir.to_string_lossy()),
            lua_string(&asked.base_dir.to_string_lossy()),
        );
        change(
            "pool_nice",
            *pool_nice != asked.pool_nice,
            pool_nice.to_string(),
            asked.pool_nice.to_string(),
        );
        change(
            "pool_cpus",
            *pool_cpus != asked.pool_cpus,
            lua_list(pool_cpus),
            lua_list(&asked.pool_cpus),
        );
        change(
            "tokio_threads",
            *tokio_threads != asked.tokio_threads,
            tokio_threads.to_string(),
            asked.tokio_threads.to_string(),
        );
        out
    }
}

/// `s` as a Lua string literal.
fn lua_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            // (three digits: a digit that follows is not read as part of it)
            c if c.is_ascii_control() => out.push_str(&format!("\\{:03}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// `list` as a Lua table constructor: `{ 0, 1 }`, `{}`.
fn lua_list(list: &[usize]) -> String {
    if list.is_empty() {
        return "{}".to_string();
    }
    let items: Vec<String> = list.iter().map(usize::to_string).collect();
    format!("{{ {} }}", items.join(", "))
}

/// The CPU numbers of a Lua list (sorted, without duplicates); `None` if
/// it is anything else.
fn cpu_list(lua: &Lua, t: &Table) -> Option<Vec<usize>> {
    let n = t.raw_len();
    if t.pairs::<Value, Value>().count() != n {
        return None;
    }
    let mut cpus = Vec::with_capacity(n);
    for i in 1..=n {
        let n = to_number(lua, &t.raw_get::<Value>(i).ok()?)?;
        cpus.push(integer(n, 0, MAX_CPU as i64)? as usize);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}
