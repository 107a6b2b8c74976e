//! The vendor simulator: a small HTTP/1.1 server that speaks a vendor's error dialect and
//! follows a scripted [`Scenario`] (statuses, bodies, delays, resets, hangs, garbage,
//! truncated bodies), recording every request it receives so tests can count what the
//! vendor saw.
//!
//! It is written directly on tokio (with `httparse`) because it must misbehave on purpose in
//! ways a well-behaved HTTP server library will not: reset mid-body, send garbage, hang.
//! It is a test and demo tool; it is not on Switchboard's request path.

pub mod dialect;
pub mod scenario;
pub mod upgrade;

pub use dialect::Dialect;
pub use scenario::{pattern_body, Action, Scenario, Step};

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;

const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 16 * 1024 * 1024;

/// A request as the simulator received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, String)>,
    /// The decoded body.
    pub body: Vec<u8>,
    /// When it was fully received.
    pub at: Instant,
}

impl Recorded {
    /// First value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

struct State {
    scenario: Scenario,
    dialect: Dialect,
    /// How many requests each rule has answered.
    counters: Mutex<Vec<u32>>,
    log: Mutex<Vec<Recorded>>,
    connections: AtomicUsize,
    /// Connections that ended (the simulator's side is closed).
    closed: AtomicUsize,
    /// Accepted request times per (limit, key), for the scenario's rate limits.
    windows: Mutex<std::collections::HashMap<(usize, String), std::collections::VecDeque<Instant>>>,
    /// Requests answered over a limit.
    limited: AtomicUsize,
    /// Requests received and not yet answered, and the most there ever were at once.
    active: AtomicUsize,
    max_active: AtomicUsize,
    quiet: bool,
}

/// Counts one request as being answered while it lives.
struct Answering<'a>(&'a State);

impl<'a> Answering<'a> {
    fn new(st: &'a State) -> Self {
        let now = st.active.fetch_add(1, Ordering::SeqCst) + 1;
        st.max_active.fetch_max(now, Ordering::SeqCst);
        Answering(st)
    }
}

impl Drop for Answering<'_> {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A running simulator. Dropping it stops accepting new connections.
pub struct Simulator {
    addr: SocketAddr,
    state: Arc<State>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Simulator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Simulator {
    /// Binds `listen` (port 0 for an ephemeral port) and serves plain HTTP on the current
    /// tokio runtime.
    pub async fn start(
        listen: SocketAddr,
        scenario: Scenario,
        dialect: Dialect,
        quiet: bool,
    ) -> std::io::Result<Simulator> {
        Self::start_tls(listen, scenario, dialect, quiet, None).await
    }

    /// Like [`Simulator::start`], serving HTTPS when `tls` (certificate chain and key, PEM
    /// files) is given.
    pub async fn start_tls(
        listen: SocketAddr,
        scenario: Scenario,
        dialect: Dialect,
        quiet: bool,
        tls: Option<(&Path, &Path)>,
    ) -> std::io::Result<Simulator> {
        let acceptor = tls.map(|(c, k)| acceptor(c, k)).transpose()?;
        let listener = TcpListener::bind(listen).await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State {
            counters: Mutex::new(vec![0; scenario.rules.len()]),
            scenario,
            dialect,
            log: Mutex::new(Vec::new()),
            connections: AtomicUsize::new(0),
            closed: AtomicUsize::new(0),
            windows: Mutex::new(std::collections::HashMap::new()),
            limited: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            max_active: AtomicUsize::new(0),
            quiet,
        });
        let st = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                st.connections.fetch_add(1, Ordering::SeqCst);
                let st = st.clone();
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    // `serve_conn` owns the stream: when it returns, the socket is closed.
                    match acceptor {
                        None => {
                            let _ = serve_conn(stream, st.clone()).await;
                        }
                        Some(a) => {
                            if let Ok(tls) = a.accept(stream).await {
                                let _ = serve_conn(tls, st.clone()).await;
                            }
                        }
                    }
                    st.closed.fetch_add(1, Ordering::SeqCst);
                });
            }
        });
        Ok(Simulator { addr, state, task })
    }

    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        lock(&self.state.log).clone()
    }

    /// How many requests were received.
    pub fn hits(&self) -> usize {
        lock(&self.state.log).len()
    }

    /// How many requests the scenario's rate limits refused (the vendor 429s).
    pub fn limited(&self) -> usize {
        self.state.limited.load(Ordering::SeqCst)
    }

    /// The most requests the simulator was answering at once (received, answer not yet
    /// written), since it started.
    pub fn max_concurrent(&self) -> usize {
        self.state.max_active.load(Ordering::SeqCst)
    }

    /// Requests received whose answer is not yet written.
    pub fn active(&self) -> usize {
        self.state.active.load(Ordering::SeqCst)
    }

    /// How many connections were accepted (to see upstream keep-alive at work).
    pub fn connections(&self) -> usize {
        self.state.connections.load(Ordering::SeqCst)
    }

    /// How many connections have ended, closed by either side (e.g. by `idle_close`).
    pub fn closed(&self) -> usize {
        self.state.closed.load(Ordering::SeqCst)
    }
}

fn acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    use tokio_rustls::rustls;
    let bad = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let certs = rustls_pemfile::certs(&mut std::io::BufReader::new(std::fs::File::open(cert)?))
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::io::BufReader::new(std::fs::File::open(key)?))?
        .ok_or_else(|| bad(format!("no private key in {}", key.display())))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| bad(e.to_string()))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Streams the simulator can serve on; `arm_reset` makes the coming close an RST.
trait Conn: AsyncRead + AsyncWrite + Unpin {
    fn arm_reset(&self) -> std::io::Result<()>;
}

impl Conn for TcpStream {
    fn arm_reset(&self) -> std::io::Result<()> {
        reset(self)
    }
}

impl Conn for tokio_rustls::server::TlsStream<TcpStream> {
    fn arm_reset(&self) -> std::io::Result<()> {
        reset(self.get_ref().0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

struct Head {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    close: bool,
}

async fn serve_conn<S: Conn>(mut stream: S, st: Arc<State>) -> std::io::Result<()> {
    let mut buf = BytesMut::with_capacity(8192);
    loop {
        let idle_close = st.scenario.idle_close().filter(|_| buf.is_empty());
        let next = read_request(&mut stream, &mut buf);
        let read = match idle_close {
            Some(idle) => match tokio::time::timeout(idle, next).await {
                Ok(r) => r,
                // Idle too long: close (dropping the stream sends FIN).
                Err(_) => return Ok(()),
            },
            _ => next.await,
        };
        let Some((head, body)) = read? else {
            return Ok(());
        };
        let rec = Recorded {
            method: head.method.clone(),
            path: head.path.clone(),
            headers: head.headers.clone(),
            body,
            at: Instant::now(),
        };
        let step = over_limit(&st, &rec).unwrap_or_else(|| pick_step(&st, &rec));
        if !st.quiet {
            // Never print header values: they carry API keys.
            println!(
                "simulator: {} {} ({} body bytes) -> {}",
                rec.method,
                rec.path,
                rec.body.len(),
                describe(&step)
            );
        }
        lock(&st.log).push(rec.clone());
        let _answering = Answering::new(&st);
        let delay = step.delay();
        if !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        match step.action {
            Action::Reset => {
                stream.arm_reset()?;
                return Ok(());
            }
            Action::Close => {
                stream.shutdown().await?;
                return Ok(());
            }
            Action::Hang => {
                // Hold the connection until the peer gives up.
                let mut sink = [0u8; 1024];
                while stream.read(&mut sink).await? > 0 {}
                return Ok(());
            }
            Action::Garbage => {
                stream
                    .write_all(b"\x00\x01garbage \xff\xfe not http\r\n\r\n")
                    .await?;
                stream.shutdown().await?;
                return Ok(());
            }
            Action::Upgrade => return upgrade_and_echo(stream, buf, &head, &step).await,
            Action::Respond | Action::Truncate => {}
        }
        let (status, headers, body) = build_response(&st, &step, &rec);
        let mut out = Vec::with_capacity(body.len() + 256);
        let reason = http::StatusCode::from_u16(status)
            .ok()
            .and_then(|s| s.canonical_reason())
            .unwrap_or("Unknown");
        let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
        for (k, v) in &headers {
            let _ = write!(out, "{k}: {v}\r\n");
        }
        if step.chunked {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            for chunk in body.chunks(16 * 1024) {
                let _ = write!(out, "{:x}\r\n", chunk.len());
                out.extend_from_slice(chunk);
                out.extend_from_slice(b"\r\n");
            }
            out.extend_from_slice(b"0\r\n\r\n");
        } else {
            let _ = write!(out, "content-length: {}\r\n\r\n", body.len());
            let keep = if step.action == Action::Truncate {
                body.len() / 2
            } else {
                body.len()
            };
            out.extend_from_slice(&body[..keep]);
        }
        stream.write_all(&out).await?;
        if step.action == Action::Truncate {
            stream.flush().await?;
            stream.arm_reset()?;
            return Ok(());
        }
        if head.close {
            return Ok(());
        }
    }
}

/// Answers 101 and turns the connection into an echo of raw bytes. Bytes the peer sent
/// right behind the request head (already in `buf`) are echoed first.
async fn upgrade_and_echo<S: Conn>(
    mut stream: S,
    mut buf: BytesMut,
    head: &Head,
    step: &Step,
) -> std::io::Result<()> {
    let header = |name: &str| {
        head.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let protocol = header("upgrade").unwrap_or("websocket");
    let mut out = Vec::with_capacity(256);
    let _ = write!(
        out,
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: {protocol}\r\nconnection: Upgrade\r\n"
    );
    if let Some(key) = header("sec-websocket-key") {
        let _ = write!(
            out,
            "sec-websocket-accept: {}\r\n",
            upgrade::websocket_accept(key)
        );
    }
    for (k, v) in &step.headers {
        let _ = write!(out, "{k}: {}\r\n", dialect::expand(v));
    }
    out.extend_from_slice(b"\r\n");
    stream.write_all(&out).await?;
    loop {
        if !buf.is_empty() {
            stream.write_all(&buf).await?;
            stream.flush().await?;
            buf.clear();
        }
        buf.reserve(16 * 1024);
        if stream.read_buf(&mut buf).await? == 0 {
            stream.shutdown().await?;
            return Ok(());
        }
    }
}

/// Makes the close an RST. A zero linger never blocks, which is what tokio's deprecation
/// warns about.
#[allow(deprecated)]
fn reset(stream: &TcpStream) -> std::io::Result<()> {
    stream.set_linger(Some(Duration::ZERO))
}

fn describe(step: &Step) -> String {
    match (&step.action, &step.vendor_error) {
        (Action::Respond, Some(e)) => e.clone(),
        (Action::Respond, None) => format!("{}", step.status.unwrap_or(200)),
        (a, _) => format!("{a:?}").to_lowercase(),
    }
}

fn matches(m: &scenario::Match, rec: &Recorded) -> bool {
    m.method
        .as_deref()
        .is_none_or(|x| x.eq_ignore_ascii_case(&rec.method))
        && m.path_prefix
            .as_deref()
            .is_none_or(|p| rec.path.starts_with(p))
}

/// The answer when `rec` is over one of the scenario's limits; otherwise counts it in each.
fn over_limit(st: &State, rec: &Recorded) -> Option<Step> {
    let now = Instant::now();
    let mut windows = lock(&st.windows);
    let applicable: Vec<usize> = (0..st.scenario.limits.len())
        .filter(|&i| matches(&st.scenario.limits[i].matcher, rec))
        .collect();
    let key_of = |l: &scenario::Limit| {
        rec.header(l.key_header.as_deref().unwrap_or("authorization"))
            .unwrap_or("")
            .to_string()
    };
    // First check every window, then count: a refused request counts nowhere.
    for &i in &applicable {
        let l = &st.scenario.limits[i];
        let per = l.window();
        let log = windows.entry((i, key_of(l))).or_default();
        while log.front().is_some_and(|t| now.duration_since(*t) >= per) {
            log.pop_front();
        }
        if log.len() >= l.rate as usize {
            st.limited.fetch_add(1, Ordering::SeqCst);
            let wait = log
                .front()
                .map_or(per, |t| per.saturating_sub(now.duration_since(*t)));
            let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
            return Some(l.over.clone().unwrap_or_else(|| Step {
                status: Some(429),
                headers: [
                    ("retry-after".to_string(), secs.max(1).to_string()),
                    ("x-ratelimit-remaining".to_string(), "0".to_string()),
                ]
                .into_iter()
                .collect(),
                json: Some(serde_json::json!({
                    "error": { "code": "rate_limited", "message": "simulator: rate limit exceeded" }
                })),
                ..Step::default()
            }));
        }
    }
    for &i in &applicable {
        let l = &st.scenario.limits[i];
        windows.entry((i, key_of(l))).or_default().push_back(now);
    }
    None
}

fn pick_step(st: &State, rec: &Recorded) -> Step {
    let found = st
        .scenario
        .rules
        .iter()
        .position(|r| matches(&r.matcher, rec));
    let Some(i) = found else {
        return st.scenario.default.clone().unwrap_or_else(|| Step {
            json: Some(serde_json::json!({"ok": true})),
            ..Step::default()
        });
    };
    let rule = &st.scenario.rules[i];
    let n = {
        let mut counters = lock(&st.counters);
        let n = counters[i];
        counters[i] = n.saturating_add(1);
        n
    };
    let mut seen = 0u32;
    for step in &rule.steps {
        seen = seen.saturating_add(step.repeat.unwrap_or(1).max(1));
        if n < seen {
            return step.clone();
        }
    }
    rule.steps.last().cloned().unwrap_or_default()
}

fn build_response(
    st: &State,
    step: &Step,
    rec: &Recorded,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut status = step.status.unwrap_or(200);
    let mut headers: Vec<(String, String)> = Vec::new();
    let mut body: Vec<u8> = Vec::new();
    let mut ctype = "application/json";
    if let Some(name) = &step.vendor_error {
        match st.dialect.examples.get(name) {
            Some(ex) => {
                status = step.status.unwrap_or(ex.status);
                headers.extend(
                    ex.headers
                        .iter()
                        .map(|(k, v)| (k.clone(), dialect::expand(v))),
                );
                body = ex.body.clone().into_bytes();
            }
            None => {
                status = 500;
                body = format!(
                    "simulator: vendor {:?} has no example {name:?}",
                    st.dialect.vendor
                )
                .into_bytes();
                ctype = "text/plain";
            }
        }
    }
    if let Some(b) = &step.body {
        body = b.clone().into_bytes();
        if !b.trim_start().starts_with(['{', '[']) {
            ctype = "text/plain";
        }
    }
    if let Some(j) = &step.json {
        body = serde_json::to_vec(j).unwrap_or_default();
    }
    if let Some(n) = step.body_size {
        body = pattern_body(n);
        ctype = "application/octet-stream";
    }
    if step.echo {
        body = rec.body.clone();
        ctype = "application/octet-stream";
    }
    if step.gzip {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        if enc.write_all(&body).is_ok() {
            if let Ok(z) = enc.finish() {
                body = z;
                headers.push(("content-encoding".into(), "gzip".into()));
            }
        }
    }
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"))
    {
        headers.push(("content-type".into(), ctype.into()));
    }
    headers.extend(
        step.headers
            .iter()
            .map(|(k, v)| (k.clone(), dialect::expand(v))),
    );
    (status, headers, body)
}

/// Reads one request; `None` when the peer closed cleanly between requests.
async fn read_request<S: Conn>(
    stream: &mut S,
    buf: &mut BytesMut,
) -> std::io::Result<Option<(Head, Vec<u8>)>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let (head, head_len) = loop {
        {
            let mut headers = [httparse::EMPTY_HEADER; 128];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let hs: Vec<(String, String)> = req
                        .headers
                        .iter()
                        .map(|h| {
                            (
                                h.name.to_ascii_lowercase(),
                                String::from_utf8_lossy(h.value).into_owned(),
                            )
                        })
                        .collect();
                    let close = hs
                        .iter()
                        .any(|(k, v)| k == "connection" && v.eq_ignore_ascii_case("close"));
                    break (
                        Head {
                            method: req.method.unwrap_or("").to_string(),
                            path: req.path.unwrap_or("").to_string(),
                            headers: hs,
                            close,
                        },
                        len,
                    );
                }
                Ok(httparse::Status::Partial) => {}
                Err(_) => return Err(bad("malformed request")),
            }
        }
        if buf.len() > MAX_HEAD {
            return Err(bad("request head too large"));
        }
        if stream.read_buf(buf).await? == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err(bad("eof in head"))
            };
        }
    };
    buf.advance(head_len);
    let chunked = head
        .headers
        .iter()
        .any(|(k, v)| k == "transfer-encoding" && v.to_ascii_lowercase().contains("chunked"));
    let body = if chunked {
        read_chunked(stream, buf).await?
    } else {
        let len: usize = head
            .headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        if len > MAX_BODY {
            return Err(bad("body too large"));
        }
        while buf.len() < len {
            if stream.read_buf(buf).await? == 0 {
                return Err(bad("eof in body"));
            }
        }
        buf.split_to(len).to_vec()
    };
    Ok(Some((head, body)))
}

async fn read_chunked<S: Conn>(stream: &mut S, buf: &mut BytesMut) -> std::io::Result<Vec<u8>> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    let mut body = Vec::new();
    loop {
        let line_end = loop {
            if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                break p;
            }
            if buf.len() > 1024 || stream.read_buf(buf).await? == 0 {
                return Err(bad("bad chunk size line"));
            }
        };
        let line = String::from_utf8_lossy(&buf[..line_end]).to_string();
        let size_hex = line.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_hex, 16).map_err(|_| bad("bad chunk size"))?;
        buf.advance(line_end + 2);
        if size == 0 {
            // Trailers (ignored) up to the empty line.
            loop {
                if let Some(p) = buf.windows(2).position(|w| w == b"\r\n") {
                    buf.advance(p + 2);
                    if p == 0 {
                        return Ok(body);
                    }
                    continue;
                }
                if stream.read_buf(buf).await? == 0 {
                    return Err(bad("eof in trailers"));
                }
            }
        }
        if body.len() + size > MAX_BODY {
            return Err(bad("body too large"));
        }
        while buf.len() < size + 2 {
            if stream.read_buf(buf).await? == 0 {
                return Err(bad("eof in chunk"));
            }
        }
        body.extend_from_slice(&buf[..size]);
        buf.advance(size + 2);
    }
}
