//! A `redis-server` of the test's own (Debian package, `./dev setup`): on a free port, no
//! persistence, killed on drop; and `redis-cli` to look inside it.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A `redis-server` child process on its own port; killed on drop.
pub struct Redis {
    child: Child,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    dir: tempfile::TempDir,
    password: Option<&'static str>,
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
        let mut cmd = Command::new("redis-server");
        if let Some(pw) = password {
            cmd.args(["--requirepass", pw]);
        }
        let child = cmd
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--daemonize", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (./dev setup installs it)");
        let r = Redis {
            child,
            port,
            dir,
            password,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while r.try_cli(&["PING"]).as_deref() != Some("PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        r
    }

    /// Its `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `redis-cli` against it: stdout when the command succeeded.
    pub fn try_cli(&self, args: &[&str]) -> Option<String> {
        let mut cmd = Command::new("redis-cli");
        if let Some(pw) = self.password {
            cmd.args(["--no-auth-warning", "-a", pw]);
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

    /// `kill -9`, then a fresh, empty server on the same port.
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
