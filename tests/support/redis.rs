//! A `redis-server` of the test's own (Debian package, `./dev setup`): on a free port, no
//! persistence, killed on drop; and `redis-cli` to look inside it. Also a three-master Redis
//! Cluster ([`RedisCluster`]) and a TLS-only server ([`Redis::start_tls`]) whose CA and
//! certificate are made at test time with the `openssl` CLI.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on its own port; killed on drop.
pub struct Redis {
    child: Child,
    /// The port it listens on (127.0.0.1); the TLS port for [`Redis::start_tls`].
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<&'static str>,
    /// The CA that signed its certificate, when it speaks only TLS.
    tls_ca: Option<PathBuf>,
}

impl Redis {
    /// A fresh server on a free port.
    pub fn start() -> Redis {
        Redis::start_on(super::free_port(), tempfile::tempdir().unwrap())
    }

    /// A fresh server on `port`, its files in `dir`.
    pub fn start_on(port: u16, dir: tempfile::TempDir) -> Redis {
        Redis::start_with(port, dir, None)
    }

    /// A fresh server on `port` requiring `password` when set.
    // Blocks the test's runtime while redis-server starts: nothing else runs on it then (the
    // store under test has its own thread), and it keeps crash_and_restart synchronous.
    #[allow(clippy::disallowed_methods)]
    pub fn start_with(port: u16, dir: tempfile::TempDir, password: Option<&'static str>) -> Redis {
        let port_args = ["--port".to_owned(), port.to_string()];
        Redis::spawn(port, dir, password, None, &port_args)
    }

    /// A fresh server that speaks only TLS, on a free port: `--port 0` (no plain listener),
    /// a certificate for `127.0.0.1` and `localhost` signed by a CA made for it (see
    /// [`Redis::tls_ca`]); clients are not asked for certificates. Its log (TLS handshake
    /// errors included) is in [`Redis::log`].
    pub fn start_tls() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let pki = make_test_pki(dir.path());
        let port = super::free_port();
        let args = pki.server_args(port);
        Redis::spawn(port, dir, None, Some(pki.ca), &args)
    }

    /// Starts `redis-server` with `port_args` (and whatever else the variant needs) and waits
    /// until it answers PING. Its stdout goes to `redis.log` in `dir`.
    #[allow(clippy::disallowed_methods)]
    fn spawn(
        port: u16,
        dir: tempfile::TempDir,
        password: Option<&'static str>,
        tls_ca: Option<PathBuf>,
        port_args: &[String],
    ) -> Redis {
        let mut cmd = Command::new("redis-server");
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw]);
        }
        let log = std::fs::File::create(dir.path().join("redis.log")).unwrap();
        let child = cmd
            .args(port_args)
            .args(["--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (./dev setup installs it)");
        let mut r = Redis {
            child,
            port,
            dir,
            password,
            tls_ca,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.try_cli(&["PING"]).as_deref() != Some("PONG") {
            if let Ok(Some(status)) = r.child.try_wait() {
                // A redis-server built without TLS, or a bad flag, exits at once: say why.
                panic!("redis-server exited ({status}):\n{}", r.log());
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING:\n{}",
                r.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Its URL: `redis://127.0.0.1:port`, or `rediss://` when it speaks only TLS.
    pub fn url(&self) -> String {
        let scheme = if self.tls_ca.is_some() {
            "rediss"
        } else {
            "redis"
        };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The CA certificate (PEM) that signed a TLS server's certificate.
    pub fn tls_ca(&self) -> Option<&Path> {
        self.tls_ca.as_deref()
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// `redis-cli` against it: stdout when the command succeeded.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        if let Some(pw) = self.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
        }
        if let Some(ca) = &self.tls_ca {
            cmd.arg("--tls").arg("--cacert").arg(ca);
        }
        let out = cmd
            .args(["-p", &self.port.to_string()])
            .args(args)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
    }

    /// `redis-cli` against it, which must succeed.
    pub fn cli(&self, args: &[&str]) -> String {
        self.try_cli(args)
            .unwrap_or_else(|| panic!("redis-cli {args:?} failed"))
    }

    /// Sends it a signal (`-STOP`, `-CONT`, ...).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig}");
    }

    /// `kill -9`, then a fresh, empty, plain (no password, no TLS) server on the same port.
    pub fn crash_and_restart(mut self) -> Redis {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        let port = self.port;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        drop(self);
        Redis::start_on(port, dir)
    }

    /// Scripts in its script cache.
    pub fn cached_scripts(&self) -> u64 {
        let info = self.cli(&["INFO", "memory"]);
        info.lines()
            .find_map(|l| l.strip_prefix("number_of_cached_scripts:"))
            .expect("number_of_cached_scripts in INFO")
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        // SIGKILL also ends a stopped process.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A CA and a server certificate it signed, PEM files.
struct TestPki {
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestPki {
    /// `redis-server` flags for TLS only on `port` (`--port 0`: no plaintext listener) with
    /// this certificate; clients are not asked for one.
    fn server_args(&self, port: u16) -> Vec<String> {
        let mut args = vec!["--port".to_owned(), "0".to_owned()];
        args.extend(["--tls-port".to_owned(), port.to_string()]);
        for (flag, file) in [
            ("--tls-cert-file", &self.cert),
            ("--tls-key-file", &self.key),
            ("--tls-ca-cert-file", &self.ca),
        ] {
            args.extend([flag.to_owned(), file.display().to_string()]);
        }
        args.extend(["--tls-auth-clients".to_owned(), "no".to_owned()]);
        args
    }
}

/// Makes a throwaway CA and a server certificate for `127.0.0.1` and `localhost` in `dir`
/// with the `openssl` CLI. rustls checks the name against the subject alternative names only
/// (never the CN) and wants the CA marked as one; the leaf is marked for server auth, and for
/// client auth too because Cluster nodes present it to each other on the TLS cluster bus
/// (which always checks the peer's certificate, whatever `tls-auth-clients` says).
fn make_test_pki(dir: &Path) -> TestPki {
    let path = |name: &str| dir.join(name);
    let openssl = |args: &[&str]| {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("openssl (Debian package openssl)");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2"],
            &["-subj", "/CN=switchboard test CA"],
            &["-addext", "basicConstraints=critical,CA:TRUE"],
            &["-addext", "keyUsage=critical,keyCertSign,cRLSign"],
        ]
        .concat(),
    );
    openssl(
        &[
            &["req"][..],
            &ec,
            &["-keyout", "server.key", "-out", "server.csr"],
            &["-subj", "/CN=localhost"],
        ]
        .concat(),
    );
    std::fs::write(
        path("server.ext"),
        "subjectAltName = IP:127.0.0.1, DNS:localhost\n\
         basicConstraints = critical, CA:FALSE\n\
         keyUsage = critical, digitalSignature\n\
         extendedKeyUsage = serverAuth, clientAuth\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "server.ext",
    ]);
    TestPki {
        ca: path("ca.pem"),
        cert: path("server.pem"),
        key: path("server.key"),
    }
}

/// A Redis Cluster of three masters (no replicas) on free ports, each with its own folder,
/// node file and no persistence; every node killed on drop.
pub struct RedisCluster {
    /// The masters; [`Redis::try_cli`] on one talks to that node only (no redirects).
    pub nodes: Vec<Redis>,
    /// The CA and certificate every node of a TLS cluster uses (after `nodes`: dropped last).
    _pki: Option<tempfile::TempDir>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled` servers, joins them with `redis-cli --cluster create`
    /// (which assigns all 16384 slots), and waits until every node reports
    /// `cluster_state:ok`.
    pub fn start() -> RedisCluster {
        RedisCluster::start_with(false)
    }

    /// Like [`RedisCluster::start`], every node speaking only TLS, the cluster bus included
    /// (`--tls-cluster yes`), with one certificate signed by one CA ([`Redis::tls_ca`] of any
    /// node).
    pub fn start_tls() -> RedisCluster {
        RedisCluster::start_with(true)
    }

    // Blocking, like `Redis::start_with`: nothing else runs on the test's runtime meanwhile.
    #[allow(clippy::disallowed_methods)]
    fn start_with(tls: bool) -> RedisCluster {
        let pki_dir = tls.then(|| tempfile::tempdir().unwrap());
        let pki = pki_dir.as_ref().map(|d| make_test_pki(d.path()));
        let nodes: Vec<Redis> = (0..3)
            .map(|_| {
                let port = super::free_port();
                let mut args = match &pki {
                    Some(pki) => pki.server_args(port),
                    None => vec!["--port".to_owned(), port.to_string()],
                };
                // The cluster bus is on port + 10000 unless told otherwise; give it a port
                // known to be free instead.
                let bus = super::free_port().to_string();
                let mut more = vec![
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                ];
                if tls {
                    more.extend(["--tls-cluster", "yes"]);
                }
                args.extend(more.into_iter().map(str::to_owned));
                let ca = pki.as_ref().map(|p| p.ca.clone());
                Redis::spawn(port, tempfile::tempdir().unwrap(), None, ca, &args)
            })
            .collect();
        let cluster = RedisCluster {
            nodes,
            _pki: pki_dir,
        };
        let mut create = Command::new("redis-cli");
        if let Some(pki) = &pki {
            create.arg("--tls").arg("--cacert").arg(&pki.ca);
        }
        create.arg("--cluster").arg("create");
        for n in &cluster.nodes {
            create.arg(format!("127.0.0.1:{}", n.port));
        }
        create.args(["--cluster-replicas", "0", "--cluster-yes"]);
        // It waits for the nodes to agree with no limit of its own (forever, when the bus
        // cannot connect): bound it.
        let out = run_bounded(create, Duration::from_secs(30));
        assert!(
            out.status.success(),
            "redis-cli --cluster create: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let deadline = Instant::now() + Duration::from_secs(30);
        for n in &cluster.nodes {
            loop {
                let info = n.try_cli(&["CLUSTER", "INFO"]).unwrap_or_default();
                if info.lines().any(|l| l.trim() == "cluster_state:ok") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "node :{} not cluster_state:ok:\n{info}",
                    n.port
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
        cluster
    }

    /// The nodes' URLs (`redis://`, or `rediss://` for a TLS cluster), one per master.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(Redis::url).collect()
    }

    /// The node serving `key`'s slot: the one whose own line in its `CLUSTER NODES` (the
    /// one marked `myself`) lists that slot.
    pub fn owner_of(&self, key: &str) -> &Redis {
        let slot = self.nodes[0].cli(&["CLUSTER", "KEYSLOT", key]);
        self.nodes
            .iter()
            .find(|n| {
                let nodes = n.cli(&["CLUSTER", "NODES"]);
                nodes
                    .lines()
                    .find(|l| l.contains("myself"))
                    .is_some_and(|l| owns_slot(l, slot.parse().unwrap()))
            })
            .unwrap_or_else(|| panic!("no node owns slot {slot}"))
    }

    /// Every key on every node, with the port of the node holding it.
    pub fn all_keys(&self) -> Vec<(u16, String)> {
        self.nodes
            .iter()
            .flat_map(|n| {
                n.cli(&["KEYS", "*"])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|k| (n.port, k.to_owned()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Whether a `CLUSTER NODES` line lists `slot` among its ranges (`a-b` or `a`; importing and
/// migrating markers in brackets are skipped).
fn owns_slot(line: &str, slot: u16) -> bool {
    line.split(' ').skip(8).any(|range| {
        if range.starts_with('[') {
            return false;
        }
        let (a, b) = range.split_once('-').unwrap_or((range, range));
        match (a.parse::<u16>(), b.parse::<u16>()) {
            (Ok(a), Ok(b)) => (a..=b).contains(&slot),
            _ => false,
        }
    })
}

/// Runs `cmd` to completion within `limit`, output captured; kills it and panics past that.
#[allow(clippy::disallowed_methods)]
fn run_bounded(mut cmd: Command, limit: Duration) -> std::process::Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e} (redis-cli: Debian package redis-tools)"));
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "{cmd:?} still running after {limit:?}: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

/// Held for the whole of a test that measures a fleet's rate against a vendor's window:
/// two such tests at once on a 2-core machine delay deliveries by more than the window's
/// margin. Tests of one binary run on parallel threads; this makes those tests take turns.
pub async fn one_fleet_at_a_time() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// `n` Switchboard processes (pods) for the vendor `tryvox` at `upstream`, with `store` (the
/// `quota_store:` line) and `extra` under the vendor; each with its listener port.
pub fn fleet(n: usize, store: &str, upstream: &str, extra: &str) -> Vec<(super::Sb, u16)> {
    (0..n)
        .map(|_| {
            let port = super::free_port();
            (
                super::Sb::start_top(store, &super::vendor_yaml("tryvox", port, upstream, extra)),
                port,
            )
        })
        .collect()
}
