//! `resty_async_http`: an HTTP client for OpenResty handlers, hyper 1.x
//! over resty-async's cosocket streams (`resty_async::net`). nginx's event
//! loop does all the waiting; there is no tokio runtime.
//!
//! ```lua
//! local http = require "resty_async_http"
//! local res, err = http.fetch("https://example.com/", {
//!     method = "POST", body = "...", headers = { ["x-a"] = "b" },
//!     ssl_verify = true, keepalive = true,
//! })
//! -- res.status (number), res.headers (lowercase names), res.body
//! ```
//!
//! Options: `method` ("GET"), `body` (a string), `headers` (a table of
//! strings, or of lists of strings), `ssl_verify` (true), `keepalive`
//! (true: the connection goes back to nginx's pool), `version` (1.1, or 2
//! for HTTP/2 with prior knowledge, over `http://` only: cosockets do not
//! negotiate ALPN), `unix_socket` (a path: connect there; the URL still
//! names the host and the path), `server_name` (the TLS name to send and
//! verify, by default the URL's host; nginx checks names only, so a
//! verified `https://` to an IP address needs one), `max_body` (most bytes
//! of response body, 64 MiB by default). Timeouts are the call's
//! (`async.with_timeout`, `configure{ timeout }`) and the sockets'
//! (`configure{ connect_timeout, send_timeout, read_timeout }`). Failures
//! return `nil, "message"`.

// A fetch makes many small allocations (hyper's channels, buffers and
// header maps, two tasks), which mimalloc serves for less than glibc's
// malloc (bench/README.md has the figures). A module crate may pick its
// allocator: its Rust code is its own, and Lua gets copies of its data.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::client::conn::http1;
use hyper::{Method, Request, Uri};
use mlua::prelude::*;
use resty_async::net::{self, HyperExecutor, HyperTimer, Options, TcpStream};
use resty_async::{Module, Record};

/// A request, read from the Lua arguments before the future starts.
struct Fetch {
    uri: Uri,
    https: bool,
    host: String,
    port: u16,
    method: Method,
    body: Bytes,
    headers: Vec<(String, Vec<u8>)>,
    verify: bool,
    keepalive: bool,
    http2: bool,
    /// Connect to this unix socket instead of the URL's host and port.
    unix: Option<String>,
    /// The TLS server name, when not the URL's host.
    server_name: Option<String>,
    max_body: usize,
}

/// The default of `max_body`. The whole body is held in the worker's
/// memory, twice for a moment (read, then copied into a Lua string), and
/// one worker serves every request's fetches: a bound well under what a
/// worker can spare keeps one huge or endless response from taking it all.
/// Larger bodies need `max_body` said outright.
const MAX_BODY: usize = 64 * 1024 * 1024;

/// The port the URL names: `None` when it names none (or an empty one,
/// which RFC 3986 allows), then the scheme's default applies. `Uri`
/// takes any digits and letters there, and its `port_u16` says `None`
/// for a bad port too.
fn url_port(uri: &Uri) -> Result<Option<u16>, ()> {
    let Some(authority) = uri.authority() else {
        return Ok(None);
    };
    let host_port = authority.as_str().rsplit('@').next().unwrap_or("");
    let port = match host_port.rsplit_once(':') {
        Some((_, port)) if !port.contains(']') => port,
        _ => return Ok(None),
    };
    if port.is_empty() {
        return Ok(None);
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok(Some(p)),
        _ => Err(()),
    }
}

/// A Lua value's type as Lua names it (mlua tells integers apart).
fn type_name(v: &LuaValue) -> &'static str {
    match v {
        LuaValue::Integer(_) => "number",
        other => other.type_name(),
    }
}

fn bad(msg: impl std::fmt::Display) -> LuaError {
    LuaError::RuntimeError(msg.to_string())
}

fn string_opt(opts: &LuaTable, key: &str) -> LuaResult<Option<LuaString>> {
    match opts.raw_get::<LuaValue>(key)? {
        LuaValue::Nil => Ok(None),
        LuaValue::String(s) => Ok(Some(s)),
        other => Err(bad(format!(
            "opts.{key} must be a string, not {}",
            type_name(&other)
        ))),
    }
}

fn bool_opt(opts: &LuaTable, key: &str, default: bool) -> LuaResult<bool> {
    match opts.raw_get::<LuaValue>(key)? {
        LuaValue::Nil => Ok(default),
        LuaValue::Boolean(b) => Ok(b),
        other => Err(bad(format!(
            "opts.{key} must be a boolean, not {}",
            type_name(&other)
        ))),
    }
}

fn header_value(name: &str, v: LuaValue, out: &mut Vec<(String, Vec<u8>)>) -> LuaResult<()> {
    match v {
        LuaValue::String(s) => out.push((name.to_owned(), s.as_bytes().to_vec())),
        LuaValue::Integer(i) => out.push((name.to_owned(), i.to_string().into_bytes())),
        LuaValue::Number(n) => out.push((name.to_owned(), n.to_string().into_bytes())),
        LuaValue::Table(t) => {
            for v in t.sequence_values::<LuaValue>() {
                header_value(name, v?, out)?;
            }
        }
        other => {
            return Err(bad(format!(
                "header {name}: a string expected, not {}",
                type_name(&other)
            )))
        }
    }
    Ok(())
}

impl Fetch {
    fn parse(url: &[u8], opts: Option<LuaTable>) -> LuaResult<Fetch> {
        let text = std::str::from_utf8(url).map_err(|_| bad("bad url: not UTF-8"))?;
        let uri: Uri = text
            .parse()
            .map_err(|e| bad(format!("bad url \"{text}\": {e}")))?;
        let https = match uri.scheme_str() {
            Some("http") => false,
            Some("https") => true,
            Some(other) => {
                return Err(bad(format!(
                    "unsupported scheme \"{other}\" in \"{text}\" (http or https)"
                )))
            }
            None => return Err(bad(format!("bad url \"{text}\": http:// or https:// expected"))),
        };
        let host = match uri.host() {
            Some(h) if !h.is_empty() => h.to_owned(),
            _ => return Err(bad(format!("bad url \"{text}\": no host"))),
        };
        let port = url_port(&uri)
            .map_err(|()| bad(format!("bad url \"{text}\": bad port")))?
            .unwrap_or(if https { 443 } else { 80 });
        let mut f = Fetch {
            uri,
            https,
            host,
            port,
            method: Method::GET,
            body: Bytes::new(),
            headers: Vec::new(),
            verify: true,
            keepalive: true,
            http2: false,
            unix: None,
            server_name: None,
            max_body: MAX_BODY,
        };
        let Some(opts) = opts else { return Ok(f) };
        if let Some(m) = string_opt(&opts, "method")? {
            f.method = Method::from_bytes(&m.as_bytes()).map_err(|_| bad("opts.method: bad method"))?;
        }
        if let Some(b) = string_opt(&opts, "body")? {
            f.body = Bytes::copy_from_slice(&b.as_bytes());
        }
        match opts.raw_get::<LuaValue>("headers")? {
            LuaValue::Nil => {}
            LuaValue::Table(t) => {
                for pair in t.pairs::<LuaString, LuaValue>() {
                    let (k, v) = pair.map_err(|_| bad("opts.headers: names must be strings"))?;
                    header_value(&k.to_str()?, v, &mut f.headers)?;
                }
            }
            other => {
                return Err(bad(format!(
                    "opts.headers must be a table, not {}",
                    type_name(&other)
                )))
            }
        }
        if let Some(path) = string_opt(&opts, "unix_socket")? {
            let path = path.to_str().map_err(|_| bad("opts.unix_socket: not UTF-8"))?;
            f.unix = Some(format!("unix:{}", &*path));
        }
        if let Some(name) = string_opt(&opts, "server_name")? {
            let name = name.to_str().map_err(|_| bad("opts.server_name: not UTF-8"))?;
            f.server_name = Some(name.to_owned());
        }
        let max_body = match opts.raw_get::<LuaValue>("max_body")? {
            LuaValue::Nil => None,
            LuaValue::Integer(n) => Some(n as f64),
            LuaValue::Number(n) => Some(n),
            other => {
                return Err(bad(format!(
                    "opts.max_body must be a number, not {}",
                    type_name(&other)
                )))
            }
        };
        if let Some(n) = max_body {
            if !(n >= 0.0 && n.fract() == 0.0) {
                return Err(bad("opts.max_body must be a whole number of bytes, 0 or more"));
            }
            f.max_body = n as usize;
        }
        f.verify = bool_opt(&opts, "ssl_verify", true)?;
        f.keepalive = bool_opt(&opts, "keepalive", true)?;
        match opts.raw_get::<LuaValue>("version")? {
            LuaValue::Nil => {}
            v @ (LuaValue::Integer(_) | LuaValue::Number(_)) => {
                let v = match v {
                    LuaValue::Integer(i) => i as f64,
                    LuaValue::Number(n) => n,
                    _ => unreachable!(),
                };
                if v == 2.0 {
                    if https {
                        return Err(bad(
                            "opts.version 2 needs http:// (cosockets do not negotiate ALPN)",
                        ));
                    }
                    f.http2 = true;
                } else if v != 1.1 {
                    return Err(bad("opts.version must be 1.1 or 2"));
                }
            }
            other => {
                return Err(bad(format!(
                    "opts.version must be a number, not {}",
                    type_name(&other)
                )))
            }
        }
        Ok(f)
    }

    fn request(&self) -> Result<Request<Full<Bytes>>, String> {
        let path = self.uri.path_and_query().map_or("/", |p| p.as_str());
        // Host (or :authority) without the URL's userinfo: credentials
        // there are no part of the host, and must not go out in clear.
        let authority = self.uri.authority().map_or(self.host.as_str(), |a| {
            a.as_str().rsplit('@').next().unwrap_or("")
        });
        let mut b = Request::builder().method(self.method.clone());
        b = if self.http2 {
            b.uri(format!("http://{authority}{path}"))
        } else {
            b.uri(path).header(hyper::header::HOST, authority)
        };
        for (k, v) in &self.headers {
            b = b.header(k.as_str(), v.as_slice());
        }
        b.body(Full::new(self.body.clone()))
            .map_err(|e| format!("bad request: {e}"))
    }

    /// The address to connect to: the URL's authority as it is when it
    /// names a port (no copy), else host and default port.
    fn addr(&self) -> std::borrow::Cow<'_, str> {
        if let Some(unix) = &self.unix {
            return unix.as_str().into();
        }
        if let Some(a) = self.uri.authority() {
            if a.port().is_some() && !a.as_str().contains('@') {
                return a.as_str().into();
            }
        }
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port).into()
        } else {
            format!("{}:{}", self.host, self.port).into()
        }
    }
}

/// The message of an error: its own text, then its causes', so that the
/// socket's error (connect refused, TLS verification) shows.
fn message(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !msg.contains(&text) {
            msg.push_str(": ");
            msg.push_str(&text);
        }
        cause = c.source();
    }
    msg
}

struct Response {
    status: u16,
    headers: Record,
    body: BytesMut,
}

/// The whole body, read into one buffer, or an error once it would pass
/// `limit` bytes (its length announced, or the bytes read). The error
/// drops the body: the connection closes, never to the keepalive pool.
async fn read_body(mut body: Incoming, limit: usize) -> Result<BytesMut, String> {
    let too_large = || format!("response body larger than {limit} bytes");
    let hint = body.size_hint();
    if hint.lower() > limit as u64 {
        return Err(too_large());
    }
    let announced = hint.exact().unwrap_or(0) as usize;
    let mut out = BytesMut::with_capacity(announced);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| message(&e))?;
        if let Ok(data) = frame.into_data() {
            if data.len() > limit - out.len() {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}

/// The headers as a Lua table: lowercase names (hyper's), the values of
/// a repeated header joined by ", ".
fn collect_headers(h: &hyper::HeaderMap) -> Record {
    let mut out = Record::with_capacity(h.keys_len());
    let bytes: usize = h.iter().map(|(k, v)| k.as_str().len() + v.len() + 2).sum();
    out.reserve_bytes(bytes);
    let mut joined = Vec::new();
    for name in h.keys() {
        let mut values = h.get_all(name).iter();
        let first = values.next().map_or(&b""[..], |v| v.as_bytes());
        match values.next() {
            None => {
                out.set(name.as_str(), first);
            }
            Some(second) => {
                joined.clear();
                joined.extend_from_slice(first);
                for v in std::iter::once(second).chain(values) {
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v.as_bytes());
                }
                out.set(name.as_str(), &joined[..]);
            }
        }
    }
    out
}

/// The stream's options: TLS by the URL, `opts.server_name` or the URL's
/// host as the server name (an IP address gives none).
fn options(f: &Fetch) -> Options {
    let o = Options::new().tls(f.https).verify(f.verify);
    if !f.https {
        o
    } else if let Some(name) = &f.server_name {
        o.server_name(name.as_str())
    } else if f.host.parse::<std::net::IpAddr>().is_err() && !f.host.starts_with('[') {
        o.server_name(f.host.as_str())
    } else {
        o
    }
}

async fn fetch_http1(f: &Fetch) -> Result<Response, String> {
    let stream = options(f)
        // Request, then response: the body is known in full.
        .half_duplex(true)
        .open(&f.addr())
        .map_err(|e| e.to_string())?;
    // ngx_lua hands over at most lua_socket_buffer_size bytes a read: a
    // read buffer of fixed size saves hyper's adaptive growth.
    let (mut sender, conn) = http1::Builder::new()
        .read_buf_exact_size(Some(16 * 1024))
        .handshake::<TcpStream, Full<Bytes>>(stream)
        .await
        .map_err(|e| message(&e))?;
    // net::without_shutdown, not conn.without_shutdown(): hyper's own
    // misses the end of a connection whose server answered before the
    // request body was all sent.
    let conn = resty_async::spawn_local(net::without_shutdown(conn));
    let res = sender.send_request(f.request()?).await.map_err(|e| message(&e))?;
    let (parts, body) = res.into_parts();
    let body = read_body(body, f.max_body).await?;
    drop(sender);
    // The connection ends once idle; its socket goes back to nginx's pool
    // if both sides allow it.
    let reuse = f.keepalive
        && parts.version == hyper::Version::HTTP_11
        && !parts
            .headers
            .get_all(hyper::header::CONNECTION)
            .iter()
            .any(|v| v.as_bytes().eq_ignore_ascii_case(b"close"));
    if let Ok(Ok(io)) = conn.await {
        if reuse && io.read_buf.is_empty() {
            io.io.keepalive();
        }
    }
    Ok(Response {
        status: parts.status.as_u16(),
        headers: collect_headers(&parts.headers),
        body,
    })
}

async fn fetch_http2(f: &Fetch) -> Result<Response, String> {
    let stream = options(f).open(&f.addr()).map_err(|e| e.to_string())?;
    let (mut sender, conn) = hyper::client::conn::http2::Builder::new(HyperExecutor)
        .timer(HyperTimer)
        .handshake::<TcpStream, Full<Bytes>>(stream)
        .await
        .map_err(|e| message(&e))?;
    let conn = resty_async::spawn_local(conn);
    let res = sender.send_request(f.request()?).await.map_err(|e| message(&e))?;
    let (parts, body) = res.into_parts();
    let body = read_body(body, f.max_body).await?;
    // An HTTP/2 connection cannot be handed to another client (its state
    // is this one's): it closes.
    drop(sender);
    let _ = conn.await;
    Ok(Response {
        status: parts.status.as_u16(),
        headers: collect_headers(&parts.headers),
        body,
    })
}

/// `{ status = ..., headers = { ... }, body = ... }`, made in one go
/// (resty_async::Record: far cheaper than mlua's table writes, each under
/// a protected call of its own). The body's buffer is moved into the
/// record, not copied: its bytes are copied once, into the Lua string.
impl IntoLua for Response {
    fn into_lua(self, lua: &Lua) -> LuaResult<LuaValue> {
        let mut t = Record::with_capacity(3);
        t.set("status", self.status)
            .set("headers", self.headers)
            .set("body", Vec::from(self.body));
        t.into_lua(lua)
    }
}

#[mlua::lua_module]
fn resty_async_http(lua: &Lua) -> LuaResult<LuaTable> {
    let mut m = Module::new(lua, "resty_async_http")?;
    m.add_async("fetch", |lua, (url, opts): (LuaString, Option<LuaTable>)| {
        let req = Fetch::parse(&url.as_bytes(), opts);
        async move {
            let f = req?;
            let res = if f.http2 {
                fetch_http2(&f).await
            } else {
                fetch_http1(&f).await
            };
            let _ = lua;
            res.map_err(LuaError::RuntimeError)
        }
    })?;
    m.build()
}
