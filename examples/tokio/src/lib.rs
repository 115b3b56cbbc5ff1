//! An OpenResty module on tokio crates, written with resty-async's `tokio`
//! feature: `require "resty_async_tokio"`.
//!
//! `fetch(url [, opts])` is an HTTP/1.1 client (hyper-util's client on
//! tokio, rustls for https). Each request runs as a task on the worker's
//! tokio runtime (`resty_async::tokio::spawn`): connecting, the TLS
//! handshake and reading the response happen on the runtime's threads,
//! and the nginx worker only turns the result into Lua values. A timeout
//! or an aborted request drops the task's handle, which aborts it.
//!
//! The other functions are small fixtures of the test suite (`t/110-tokio.t`):
//! tokio timers awaited directly, mlua's `create_async_function` as the
//! tutorials write it, a tokio task that panics, one whose drop is counted.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::{Body, Incoming};
use hyper::header::{HeaderName, HeaderValue, CONNECTION};
use hyper::{Method, Request, Uri};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use mlua::prelude::*;
use resty_async::{Module, Record};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// How long an idle keepalive connection stays in a client's pool.
const POOL_IDLE: Duration = Duration::from_secs(60);
/// Most idle keepalive connections per host and client.
const POOL_MAX_IDLE_PER_HOST: usize = 64;

/// What decides which client (TLS settings, connection pool) serves a
/// request.
#[derive(Clone, PartialEq, Eq, Hash)]
struct ClientKey {
    ssl_verify: bool,
    ca_file: Option<PathBuf>,
}

/// The default of `max_body`. The whole body is held in the worker's
/// memory, twice for a moment (read, then copied into a Lua string), and
/// one worker serves every request's fetches: a bound well under what a
/// worker can spare keeps one huge or endless response from taking it all.
/// Larger bodies need `max_body` said outright.
const MAX_BODY: u64 = 64 * 1024 * 1024;

/// A request, checked on the worker thread.
struct Fetch {
    key: ClientKey,
    request: Request<Full<Bytes>>,
    max_body: u64,
}

/// The port the URL names: `None` when it names none (or an empty one,
/// which RFC 3986 allows), then the scheme's default applies. `Uri`
/// takes any digits and letters there, and hyper-util's connector takes
/// the default port for a bad one.
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

/// A response, made on a tokio thread, turned into Lua values on the
/// worker.
struct Response {
    status: u16,
    headers: Vec<(HeaderName, Bytes)>,
    body: Bytes,
}

thread_local! {
    /// The clients of this process (the pid), by TLS settings; each keeps
    /// its own keepalive pool. fetch() runs on the worker thread.
    static CLIENTS: std::cell::RefCell<(u32, HashMap<ClientKey, HttpClient>)> =
        std::cell::RefCell::new((0, HashMap::new()));
}

/// rustls on *ring*: it builds in a fraction of aws-lc-rs's time, at the
/// price of no post-quantum key exchange (hence rustls's deprecation).
#[allow(deprecated)]
fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The system's CA certificates (read once per process), or those of
/// `ca_file` alone.
fn roots(ca_file: Option<&PathBuf>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("cannot read ca_file {}: {e}", path.display()))?;
            let (added, _) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(format!("ca_file {}: no CA certificate found", path.display()));
            }
        }
        None => {
            store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
        }
    }
    Ok(store)
}

/// `ssl_verify = false`: any certificate is taken, as curl's `-k` does.
#[derive(Debug)]
struct NoVerification(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn make_client(key: &ClientKey) -> Result<HttpClient, String> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let tls = if key.ssl_verify {
        builder
            .with_root_certificates(roots(key.ca_file.as_ref())?)
            .with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider())))
            .with_no_client_auth()
    };
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE_PER_HOST)
        .build(connector))
}

/// This process's clients (made before fork(), their connections would
/// be the parent's).
fn with_clients<R>(f: impl FnOnce(&mut HashMap<ClientKey, HttpClient>) -> R) -> R {
    CLIENTS.with(|c| {
        let mut c = c.borrow_mut();
        let pid = std::process::id();
        if c.0 != pid {
            *c = (pid, HashMap::new());
        }
        f(&mut c.1)
    })
}

/// The client for `key`, made on first use in this process. Making one
/// reads CA certificates (the system's store, or `ca_file`): file I/O,
/// done on resty-async's blocking pool, not on the nginx worker.
async fn client(key: ClientKey) -> Result<HttpClient, String> {
    if let Some(client) = with_clients(|c| c.get(&key).cloned()) {
        return Ok(client);
    }
    let k = key.clone();
    let made = resty_async::unblock(move || make_client(&k))
        .await
        .map_err(|e| e.to_string())??;
    // (Another call may have made one meanwhile: the first stays.)
    Ok(with_clients(|c| c.entry(key).or_insert(made).clone()))
}

fn opt<T: FromLua>(opts: &Option<LuaTable>, name: &str, want: &str) -> Result<Option<T>, String> {
    let Some(t) = opts else { return Ok(None) };
    t.get::<Option<T>>(name)
        .map_err(|_| format!("bad option '{name}' ({want} expected)"))
}

/// Checks the URL and the options, and builds the request.
fn prepare(lua: &Lua, url: &str, opts: &Option<LuaTable>) -> Result<Fetch, String> {
    let uri: Uri = url.parse().map_err(|e| format!("bad url {url:?}: {e}"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        Some(other) => return Err(format!("unsupported scheme {other:?} in {url:?} (http or https)")),
        None => return Err(format!("bad url {url:?}: no scheme (http:// or https://)")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("bad url {url:?}: no host"));
    }
    url_port(&uri).map_err(|()| format!("bad url {url:?}: bad port"))?;
    let method: Option<LuaString> = opt(opts, "method", "string")?;
    let method = match method {
        Some(m) => {
            Method::from_bytes(&m.as_bytes()).map_err(|_| format!("bad method {:?}", m.to_string_lossy()))?
        }
        None => Method::GET,
    };
    let body: Option<LuaString> = opt(opts, "body", "string")?;
    let body = body.map_or_else(Bytes::new, |b| Bytes::copy_from_slice(&b.as_bytes()));
    let ssl_verify: Option<bool> = opt(opts, "ssl_verify", "boolean")?;
    let keepalive: Option<bool> = opt(opts, "keepalive", "boolean")?;
    let ca_file: Option<String> = opt(opts, "ca_file", "string")?;
    let headers: Option<LuaTable> = opt(opts, "headers", "table")?;
    let max_body: Option<f64> = opt(opts, "max_body", "number")?;
    let max_body = match max_body {
        None => MAX_BODY,
        Some(n) if n >= 0.0 && n.fract() == 0.0 => n as u64,
        Some(_) => return Err("bad option 'max_body' (a whole number of bytes expected)".into()),
    };

    let mut request = Request::builder().method(method).uri(uri);
    if let Some(headers) = headers {
        for pair in headers.pairs::<LuaString, LuaValue>() {
            let (name, value) =
                pair.map_err(|_| "bad option 'headers' (names must be strings)".to_string())?;
            let name = HeaderName::from_bytes(&name.as_bytes())
                .map_err(|_| format!("bad header name {:?}", name.to_string_lossy()))?;
            let values = match value {
                LuaValue::Table(list) => list.sequence_values::<LuaString>().collect::<LuaResult<Vec<_>>>(),
                other => LuaString::from_lua(other, lua).map(|s| vec![s]),
            }
            .map_err(|_| format!("bad value of header {name} (a string or a list of strings expected)"))?;
            for v in values {
                let v = HeaderValue::from_bytes(&v.as_bytes())
                    .map_err(|_| format!("bad value of header {name}"))?;
                request = request.header(name.clone(), v);
            }
        }
    }
    if keepalive == Some(false) {
        request = request.header(CONNECTION, HeaderValue::from_static("close"));
    }
    let request = request
        .body(Full::new(body))
        .map_err(|e| format!("bad request: {e}"))?;
    Ok(Fetch {
        key: ClientKey {
            ssl_verify: ssl_verify.unwrap_or(true),
            ca_file: ca_file.map(PathBuf::from),
        },
        request,
        max_body,
    })
}

/// An error and its causes, as one line ("client error (Connect): tcp
/// connect error: Connection refused (os error 111)").
fn describe(e: &(dyn std::error::Error + 'static)) -> String {
    let mut msg = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let s = c.to_string();
        if !msg.ends_with(&s) {
            msg.push_str(": ");
            msg.push_str(&s);
        }
        cause = c.source();
    }
    msg
}

/// Sends the request and reads the whole response (on a tokio thread).
async fn send(client: HttpClient, request: Request<Full<Bytes>>, max_body: u64) -> Result<Response, String> {
    let res = client.request(request).await.map_err(|e| describe(&e))?;
    let status = res.status().as_u16();
    let headers = res
        .headers()
        .iter()
        .map(|(k, v)| (k.clone(), Bytes::copy_from_slice(v.as_bytes())))
        .collect();
    let body = read_body(res.into_body(), max_body).await?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// The whole body, read into one buffer, or an error once it would pass
/// `limit` bytes (its length announced, or the bytes read). The error
/// drops the body, and hyper then closes the connection rather than pool
/// it.
async fn read_body(mut body: Incoming, limit: u64) -> Result<Bytes, String> {
    let too_large = || format!("response body larger than {limit} bytes");
    let hint = body.size_hint();
    if hint.lower() > limit {
        return Err(too_large());
    }
    let mut out = BytesMut::with_capacity(hint.exact().unwrap_or(0) as usize);
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| format!("reading the body: {}", describe(&e)))?;
        if let Ok(data) = frame.into_data() {
            if data.len() as u64 > limit - out.len() as u64 {
                return Err(too_large());
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out.freeze())
}

/// `{ status = ..., headers = {...}, body = "..." }`, made in one protected
/// call (resty_async::Record: mlua makes each string and each table write
/// under a protected call of its own). A header that came several times is
/// a list of its values.
fn response_record(res: Response) -> Record {
    let mut seen: Vec<(&HeaderName, Vec<&Bytes>)> = Vec::with_capacity(res.headers.len());
    for (name, value) in &res.headers {
        match seen.iter_mut().find(|(n, _)| *n == name) {
            Some((_, values)) => values.push(value),
            None => seen.push((name, vec![value])),
        }
    }
    let mut headers = Record::with_capacity(seen.len());
    for (name, values) in &seen {
        match values[..] {
            [one] => {
                headers.set(name.as_str(), &one[..]);
            }
            _ => {
                let mut list = Record::with_capacity(values.len());
                for v in values {
                    list.push(&v[..]);
                }
                headers.set(name.as_str(), list);
            }
        }
    }
    let mut t = Record::with_capacity(3);
    t.set("status", res.status)
        .set("headers", headers)
        .set("body", Vec::from(res.body));
    t
}

// --- test fixtures -------------------------------------------------------

/// Futures of `guarded_sleep` dropped so far (finished or aborted).
static DROPPED: AtomicUsize = AtomicUsize::new(0);

struct DropGuard;

impl Drop for DropGuard {
    fn drop(&mut self) {
        DROPPED.fetch_add(1, Ordering::SeqCst);
    }
}

/// Writes a line to stderr (nginx's error log) when dropped.
struct LogOnDrop(String);

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        eprintln!("{}", self.0);
    }
}

#[mlua::lua_module]
fn resty_async_tokio(lua: &Lua) -> LuaResult<LuaTable> {
    let mut m = Module::new(lua, "resty_async_tokio")?;

    m.add_async("fetch", |lua, (url, opts): (String, Option<LuaTable>)| {
        let prepared = prepare(&lua, &url, &opts);
        async move {
            let f = prepared.map_err(LuaError::RuntimeError)?;
            let client = client(f.key).await.map_err(LuaError::RuntimeError)?;
            let (request, max_body) = (f.request, f.max_body);
            let res = resty_async::tokio::spawn(send(client, request, max_body))
                .await
                .map_err(LuaError::RuntimeError)?;
            Ok(response_record(res))
        }
    })?;

    // A tokio timer awaited by the resty-async task itself.
    m.add_async("sleep", |_lua, ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(true)
    })?;

    // The pattern of mlua's tutorials, as it stands.
    let mlua_sleep = lua.create_async_function(|_lua, ms: u64| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        Ok(format!("slept {ms} ms"))
    })?;
    m.add_lua_async("mlua_sleep", mlua_sleep)?;

    // A tokio task that holds a drop counter while it sleeps.
    m.add_async("guarded_sleep", |_lua, ms: u64| async move {
        // (made here and moved in: an abort before the tokio task's first
        // poll drops it too)
        let guard = DropGuard;
        resty_async::tokio::spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_millis(ms)).await;
        })
        .await;
        Ok(true)
    })?;
    m.add_function("dropped", |_, ()| Ok(DROPPED.load(Ordering::SeqCst)))?;

    // A tokio task nobody awaits, which never ends: the runtime's shutdown
    // at exit drops it (it logs `msg` then).
    m.add_function("detached", |_, msg: String| {
        resty_async::tokio::handle().spawn(async move {
            let _log = LogOnDrop(msg);
            std::future::pending::<()>().await
        });
        Ok(true)
    })?;

    // A blocking tokio job nobody awaits, sleeping `ms` on a blocking
    // thread of the runtime (as a DNS look-up does), then logging that it
    // ended: the runtime's shutdown at exit waits for it only briefly.
    m.add_function("blocking_job", |_, ms: u64| {
        let ms = ms.min(60_000);
        resty_async::tokio::handle().spawn_blocking(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("blocking tokio job done after {ms} ms");
        });
        Ok(true)
    })?;

    // tokio's own TcpStream, on the resty-async task itself: sends an
    // HTTP/1.0 GET of `path` to `addr`, returns the status line.
    m.add_async("tcp_get", |_lua, (addr, path): (String, String)| async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(&addr)
            .await
            .map_err(LuaError::external)?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .map_err(LuaError::external)?;
        let mut resp = Vec::new();
        s.read_to_end(&mut resp).await.map_err(LuaError::external)?;
        let resp = String::from_utf8_lossy(&resp);
        Ok(resp.lines().next().unwrap_or("").to_owned())
    })?;

    // A guarded sleep started with plain `tokio::spawn`, whose tokio
    // handle the call awaits: the call's end does not abort it.
    m.add_async("plain_spawn_sleep", |_lua, ms: u64| async move {
        let guard = DropGuard;
        let h = tokio::spawn(async move {
            let _guard = guard;
            tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
        });
        h.await.map_err(LuaError::external)?;
        Ok(true)
    })?;

    // Whether an add_blocking closure (on a pool thread) is in a tokio
    // runtime's context.
    m.add_blocking("blocking_in_context", |()| {
        Ok::<_, String>(tokio::runtime::Handle::try_current().is_ok())
    })?;

    // The worker threads of the runtime, from `resty_async::tokio::handle`
    // called in an add_blocking closure (on a pool thread), which may be
    // what starts it.
    m.add_blocking("workers_from_pool", |()| {
        Ok::<_, String>(resty_async::tokio::handle().metrics().num_workers())
    })?;

    m.add_async("panic_after", |_lua, ms: u64| async move {
        resty_async::tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            panic!("tokio task panic after {ms} ms");
        })
        .await;
        Ok(())
    })?;

    m.build()
}
