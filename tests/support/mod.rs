//! Shared test support: the real `switchboard` binary started on ephemeral ports, the
//! in-process vendor simulator, and a raw HTTP/1.1 client that can send malformed requests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod redis;

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchboard::simulator::{Dialect, Scenario, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The repository root.
pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A port that was free a moment ago, for the binary to listen on.
///
/// Taken below the kernel's ephemeral range (32768+ on Linux), never handed out twice by
/// this process: a port the kernel chose for `bind(0)` and released could be chosen again
/// for a simulator another test starts meanwhile, which then answered in the proxy's place
/// (seen once in CI). Test binaries run one at a time, so per-process uniqueness suffices.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const LOW: u16 = 20_000;
    const SPAN: u16 = 12_000;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let start = (std::process::id() % u32::from(SPAN)) as u16;
    for _ in 0..SPAN {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = LOW + (start.wrapping_add(n)) % SPAN;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN)
}

/// Starts the simulator for `vendor` with a scenario given as YAML.
pub async fn sim(vendor: &str, scenario_yaml: &str) -> Simulator {
    sim_in(&root().join("config/profiles"), vendor, scenario_yaml).await
}

/// Like [`sim`], with the vendor's profile taken from another folder.
pub async fn sim_in(profiles: &Path, vendor: &str, scenario_yaml: &str) -> Simulator {
    let scenario = Scenario::from_yaml(scenario_yaml).expect("scenario");
    let dialect = Dialect::load(profiles, vendor).expect("dialect");
    Simulator::start("127.0.0.1:0".parse().unwrap(), scenario, dialect, true)
        .await
        .expect("simulator")
}

/// A running switchboard process, killed on drop.
pub struct Sb {
    pub child: Child,
    pub admin: SocketAddr,
    pub dir: tempfile::TempDir,
}

impl Drop for Sb {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Config preamble: admin on a free port, profiles from the repo.
pub fn preamble(admin_port: u16, grace: &str) -> String {
    preamble_in(admin_port, grace, &root().join("config/profiles"))
}

fn preamble_in(admin_port: u16, grace: &str, profiles: &Path) -> String {
    format!(
        "admin: {{ listen: 127.0.0.1:{admin_port} }}\nshutdown: {{ grace_period: {grace} }}\nlog: {{ level: warn }}\nprofiles_dir: {}\n",
        profiles.display()
    )
}

impl Sb {
    /// Starts the binary with this vendor list (YAML under `vendors:`), waits until ready.
    pub fn start(vendors_yaml: &str) -> Sb {
        Self::start_with(vendors_yaml, "5s", &[])
    }

    /// Like [`Sb::start`], with a grace period and extra environment.
    pub fn start_with(vendors_yaml: &str, grace: &str, env: &[(&str, String)]) -> Sb {
        Self::start_full(
            "",
            vendors_yaml,
            grace,
            env,
            &root().join("config/profiles"),
        )
    }

    /// Like [`Sb::start`], with profiles from another folder.
    pub fn start_in(vendors_yaml: &str, profiles: &Path) -> Sb {
        Self::start_full("", vendors_yaml, "5s", &[], profiles)
    }

    /// Like [`Sb::start`], with more top-level config (e.g. a `quota_store:` section).
    pub fn start_top(top_yaml: &str, vendors_yaml: &str) -> Sb {
        Self::start_full(
            top_yaml,
            vendors_yaml,
            "5s",
            &[],
            &root().join("config/profiles"),
        )
    }

    /// Like [`Sb::start_top`], with extra environment for the process (e.g. `SSL_CERT_FILE`).
    pub fn start_top_env(top_yaml: &str, vendors_yaml: &str, env: &[(&str, String)]) -> Sb {
        Self::start_full(
            top_yaml,
            vendors_yaml,
            "5s",
            env,
            &root().join("config/profiles"),
        )
    }

    /// Starts the binary on `file`, a config the test laid out itself inside `dir` (kept
    /// for the life of the process), with the admin listener on `admin_port`.
    pub fn start_file(dir: tempfile::TempDir, file: &Path, admin_port: u16) -> Sb {
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(file)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchboard");
        let admin = format!("127.0.0.1:{admin_port}").parse().unwrap();
        let mut sb = Sb { child, admin, dir };
        sb.wait_ready();
        sb
    }

    /// Starts the binary with top-level config `top`, these vendors, grace period, extra
    /// environment and profiles folder.
    pub fn start_full(
        top: &str,
        vendors_yaml: &str,
        grace: &str,
        env: &[(&str, String)],
        profiles: &Path,
    ) -> Sb {
        let admin_port = free_port();
        let text = format!(
            "{}{top}vendors:\n{vendors_yaml}",
            preamble_in(admin_port, grace, profiles)
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("switchboard.yaml");
        std::fs::write(&file, text).expect("write config");
        let mut admin: SocketAddr = format!("127.0.0.1:{admin_port}").parse().unwrap();
        for (k, v) in env {
            if *k == "SWITCHBOARD__ADMIN__LISTEN" {
                admin = v.parse().unwrap();
            }
        }
        let log = std::fs::File::create(dir.path().join("stderr.log")).expect("log");
        let child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .arg("--config")
            .arg(&file)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn switchboard");
        let mut sb = Sb { child, admin, dir };
        sb.wait_ready();
        sb
    }

    /// The config file the process was started with (rewrite it to test a reload).
    pub fn config_file(&self) -> PathBuf {
        self.dir.path().join("switchboard.yaml")
    }

    /// What the process wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap_or_default()
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("switchboard exited early ({status}):\n{}", self.stderr());
            }
            if let Ok(r) = blocking_get(self.admin, "/readyz") {
                if r.status == 200 {
                    return;
                }
            }
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("switchboard not ready in 30s:\n{}", self.stderr());
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([format!("-{sig}"), self.child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits for the process to exit, returning its exit code and how long it took.
    pub fn wait_exit(&mut self, limit: Duration) -> (Option<i32>, Duration) {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = self.child.try_wait() {
                return (status.code(), start.elapsed());
            }
            #[allow(clippy::disallowed_methods)]
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "switchboard did not exit within {limit:?}:\n{}",
            self.stderr()
        );
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body ended early (connection closed before the declared length).
    pub truncated: bool,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// Builds a request with Content-Length (when a body is given) and Host.
pub fn request(method: &str, path: &str, headers: &[(&str, &str)], body: Option<&[u8]>) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\n").into_bytes();
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        out.extend_from_slice(b"Host: app.local\r\n");
    }
    for (k, v) in headers {
        out.extend_from_slice(format!("{k}: {v}\r\n").as_bytes());
    }
    if let Some(b) = body {
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", b.len()).as_bytes());
        out.extend_from_slice(b);
    } else {
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// A client connection, for keep-alive tests.
pub struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub async fn open(addr: SocketAddr) -> Conn {
        Conn {
            stream: TcpStream::connect(addr).await.expect("connect"),
            buf: Vec::new(),
        }
    }

    pub async fn send(&mut self, raw: &[u8]) -> std::io::Result<Resp> {
        self.stream.write_all(raw).await?;
        self.read_response().await
    }

    async fn fill(&mut self) -> std::io::Result<usize> {
        // Read into the heap buffer: a 64 KiB array in this future, copied into every
        // caller's, overflowed test stacks.
        self.buf.reserve(65536);
        self.stream.read_buf(&mut self.buf).await
    }

    pub async fn read_response(&mut self) -> std::io::Result<Resp> {
        let eof = || {
            std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response",
            )
        };
        let (status, headers, head_len) = loop {
            let mut hs = [httparse::EMPTY_HEADER; 64];
            let mut r = httparse::Response::new(&mut hs);
            match r.parse(&self.buf) {
                Ok(httparse::Status::Complete(n)) => {
                    break (r.code.unwrap_or(0), header_pairs(r.headers), n);
                }
                Ok(httparse::Status::Partial) => {
                    if self.fill().await? == 0 {
                        return Err(eof());
                    }
                }
                Err(e) => {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        e.to_string(),
                    ))
                }
            }
        };
        self.buf.drain(..head_len);
        let get = |n: &str| headers.iter().find(|(k, _)| k == n).map(|(_, v)| v.clone());
        let mut truncated = false;
        let body = if status == 204 || status == 304 {
            Vec::new()
        } else if get("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
            let mut body = Vec::new();
            loop {
                let pos = loop {
                    if let Some(p) = self.buf.windows(2).position(|w| w == b"\r\n") {
                        break Some(p);
                    }
                    if self.fill().await? == 0 {
                        break None;
                    }
                };
                let Some(p) = pos else {
                    truncated = true;
                    break;
                };
                let size =
                    usize::from_str_radix(String::from_utf8_lossy(&self.buf[..p]).trim(), 16)
                        .unwrap_or(0);
                self.buf.drain(..p + 2);
                if size == 0 {
                    while self.buf.len() < 2 && self.fill().await? > 0 {}
                    self.buf.drain(..self.buf.len().min(2));
                    break;
                }
                while self.buf.len() < size + 2 {
                    if self.fill().await? == 0 {
                        truncated = true;
                        break;
                    }
                }
                if truncated {
                    body.append(&mut self.buf);
                    break;
                }
                body.extend(self.buf.drain(..size));
                self.buf.drain(..2);
            }
            body
        } else if let Some(len) = get("content-length").and_then(|v| v.parse::<usize>().ok()) {
            while self.buf.len() < len {
                match self.fill().await {
                    Ok(0) | Err(_) => {
                        truncated = true;
                        break;
                    }
                    Ok(_) => {}
                }
            }
            let n = len.min(self.buf.len());
            self.buf.drain(..n).collect()
        } else {
            while let Ok(n) = self.fill().await {
                if n == 0 {
                    break;
                }
            }
            self.buf.drain(..).collect()
        };
        Ok(Resp {
            status,
            headers,
            body,
            truncated,
        })
    }
}

/// Parsed headers as (lowercase name, value) pairs.
pub fn header_pairs(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect()
}

/// One request on a fresh connection.
pub async fn send(addr: SocketAddr, raw: &[u8]) -> Resp {
    Conn::open(addr).await.send(raw).await.expect("response")
}

/// A plain GET on a fresh connection.
pub async fn get(addr: SocketAddr, path: &str) -> Resp {
    send(addr, &request("GET", path, &[], None)).await
}

/// A blocking GET (for use outside a runtime).
pub fn blocking_get(addr: SocketAddr, path: &str) -> std::io::Result<Resp> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf)?;
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    let n = match r.parse(&buf) {
        Ok(httparse::Status::Complete(n)) => n,
        _ => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "bad response",
            ))
        }
    };
    Ok(Resp {
        status: r.code.unwrap_or(0),
        headers: Vec::new(),
        body: buf[n..].to_vec(),
        truncated: false,
    })
}

/// One `POST /v1/calls` with `key` as its bearer token, on a fresh connection to `addr`.
pub async fn post_call(addr: SocketAddr, key: &str) -> Resp {
    let auth = format!("Bearer {key}");
    send(
        addr,
        &request(
            "POST",
            "/v1/calls",
            &[("authorization", &auth)],
            Some(b"{}"),
        ),
    )
    .await
}

/// A vendor entry for the config, pointing at `upstream`.
pub fn vendor_yaml(name: &str, port: u16, upstream: &str, extra: &str) -> String {
    format!("  - name: {name}\n    listen: 127.0.0.1:{port}\n    upstream: {upstream}\n{extra}")
}

/// Address of a local listener port.
pub fn local(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

/// Files under a folder with an extension, sorted.
pub fn files_with_ext(dir: &Path, ext: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
        .unwrap_or_default();
    v.retain(|p| p.extension().is_some_and(|e| e == ext));
    v.sort();
    v
}

/// Starts an HTTPS simulator with the test certificate (`tests/fixtures/tls`).
pub async fn tls_sim(scenario_yaml: &str) -> Simulator {
    let scenario = Scenario::from_yaml(scenario_yaml).expect("scenario");
    let dir = root().join("tests/fixtures/tls");
    let (cert, key) = (dir.join("server.pem"), dir.join("server.key"));
    Simulator::start_tls(
        "127.0.0.1:0".parse().unwrap(),
        scenario,
        Dialect::default(),
        true,
        Some((cert.as_path(), key.as_path())),
    )
    .await
    .expect("tls simulator")
}

/// A simulator playing `vendor` (its profile's dialect) and Switchboard in front of it, with
/// `extra` config lines under the vendor entry and `env` overrides.
pub async fn proxied(
    vendor: &str,
    scenario: &str,
    extra: &str,
    env: &[(&str, String)],
) -> (Simulator, Sb, SocketAddr) {
    let s = sim(vendor, scenario).await;
    let port = free_port();
    let sb = Sb::start_with(
        &vendor_yaml(
            vendor,
            port,
            &format!("http://{}", s.addr()),
            &format!("    profile: {vendor}\n{extra}"),
        ),
        "5s",
        env,
    );
    (s, sb, local(port))
}

/// `/metrics` once every one of `requests` answered requests is counted in
/// `switchboard_requests_total`. Pingora runs the logging hook (which counts a request by its
/// final status) after the response is written, so a test that reads metrics right after
/// its last response can get there first. Panics with the last scrape when they are not all
/// counted within [`WAIT`].
pub async fn metrics_settled(admin: SocketAddr, requests: u64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = get(admin, "/metrics").await.text();
        let counted: f64 = text
            .lines()
            .filter(|l| l.starts_with("switchboard_requests_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if counted >= requests as f64 {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {requests} requests in switchboard_requests_total, {counted} counted; last /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The value of the first `/metrics` line starting with `line_start` (labels in Prometheus'
/// sorted order), if any.
pub fn metric(text: &str, line_start: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// How long [`until`] and [`until_metric`] wait before failing the test. Generous: it is only
/// reached when the awaited state never comes, and the machine running the tests may be busy.
pub const WAIT: Duration = Duration::from_secs(10);

/// Polls `check` every 10 ms until it returns `Some`, and returns that. Panics naming `what`
/// once `limit` passes without it: a state a test waits for that never comes is a failure,
/// not something to carry on past.
pub async fn until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(Instant::now() < deadline, "waited {limit:?} for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// `/metrics` once the series starting with `line_start` has the value `want`. Panics with
/// the last scrape when it does not get there within [`WAIT`].
pub async fn until_metric(admin: SocketAddr, line_start: &str, want: f64) -> String {
    let deadline = Instant::now() + WAIT;
    loop {
        let text = get(admin, "/metrics").await.text();
        if metric(&text, line_start) == Some(want) {
            return text;
        }
        assert!(
            Instant::now() < deadline,
            "waited {WAIT:?} for {line_start} to be {want}; last /metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `switchboard check-config` on a one-vendor (`tryvox`) config with `extra` under the vendor.
pub fn check_config_with(extra: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.yaml");
    let yaml = format!(
        "{}vendors:\n{}",
        preamble(free_port(), "1s"),
        vendor_yaml("tryvox", free_port(), "http://127.0.0.1:9", extra)
    );
    std::fs::write(&file, yaml).unwrap();
    Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap()
}
