//! Config reload without a restart (SPEC §3 "Reload"): SIGHUP, or a change of the config
//! file's content or of a profile's, noticed by polling (a Kubernetes ConfigMap update is an
//! atomic symlink swap that sends no signal; reading through the path follows it).
//!
//! Owns: the active [`Runtime`] (swapped whole, so a request keeps the one it started on),
//! the triggers and their debounce, "validate, then swap" (the new file goes through
//! [`config::load`], the very function `check-config` runs), what cannot change without a
//! restart, carrying each vendor's limiter state over, the reload metrics and the redacted
//! view `GET /config` serves.
//!
//! Must not: serve a config that failed validation, drop the old one before the new one is
//! whole, block a request on a reload, or show a secret in the config view or a log line.
//!
//! Approximate: polling reads the config file and every file of the profiles folder each
//! `reload.poll`; a change is reloaded once two reads 200 ms apart agree, so a burst of
//! writes ends on its last state. Decisions made on the old limiters while their state is
//! copied (microseconds) are not carried. Requests waiting in a rate-limit queue keep their
//! place and decide on the new limiter, unless the endpoints or the key config changed (then
//! they finish on the old one). The retry budget starts afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use tokio::sync::Notify;

use crate::config::{self, Config};
use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::proxy::{Quota, VendorRuntime};

/// Two reads of the files this far apart must agree before a change is reloaded.
const SETTLE: Duration = Duration::from_millis(200);

/// Everything a request needs from the config, built from one validated [`Config`].
pub struct Runtime {
    /// The config it was built from.
    pub config: Arc<Config>,
    /// One per vendor listener.
    pub vendors: Vec<Arc<VendorRuntime>>,
    by_port: HashMap<u16, usize>,
    /// A digest of the config (as shown) and of its profiles' files: the
    /// `switchboard_config_info` label.
    pub hash: String,
    /// `GET /config`: the config as read, secrets redacted, as JSON.
    pub shown: Vec<u8>,
}

impl Runtime {
    /// The vendor listening on `port`.
    pub fn vendor_on(&self, port: u16) -> Option<&Arc<VendorRuntime>> {
        self.by_port.get(&port).and_then(|&i| self.vendors.get(i))
    }
}

/// The runtime in force, swapped whole by a reload.
pub struct Active {
    now: ArcSwap<Runtime>,
}

impl Active {
    /// Starts with `runtime`.
    pub fn new(runtime: Runtime) -> Arc<Active> {
        Arc::new(Active {
            now: ArcSwap::from_pointee(runtime),
        })
    }

    /// The runtime in force (cheap; hold it only as long as one request).
    pub fn get(&self) -> arc_swap::Guard<Arc<Runtime>> {
        self.now.load()
    }

    /// The runtime in force, owned.
    pub fn current(&self) -> Arc<Runtime> {
        self.now.load_full()
    }

    fn set(&self, runtime: Runtime) {
        self.now.store(Arc::new(runtime));
    }
}

/// Builds runtimes: what every build shares (metrics, the shutdown state, the quota store).
pub struct Builder {
    /// Where each vendor's series go.
    pub metrics: Metrics,
    /// Queued requests are answered when shutdown starts.
    pub lifecycle: Arc<Lifecycle>,
    /// The fleet's quota store, when configured (kept across reloads).
    pub quota: Option<Quota>,
}

impl Builder {
    /// The runtime for `cfg`. With `previous`, each vendor on the same listener takes over
    /// its predecessor's limiter state and its DNS resolver.
    pub fn runtime(&self, cfg: Config, previous: Option<&Runtime>) -> Runtime {
        self.metrics.declare(&vendor_labels(&cfg));
        let vendors: Vec<Arc<VendorRuntime>> = cfg
            .vendors
            .iter()
            .map(|v| {
                let before = previous.and_then(|p| p.vendor_on(v.listen.port()));
                Arc::new(VendorRuntime::new(
                    v.clone(),
                    &self.metrics,
                    Some(self.lifecycle.clone()),
                    self.quota.as_ref(),
                    before.map(|b| &**b),
                ))
            })
            .collect();
        let by_port = vendors
            .iter()
            .enumerate()
            .map(|(i, v)| (v.cfg.listen.port(), i))
            .collect();
        let shown_value = crate::redact::config_view(&cfg.source);
        let shown = serde_json::to_vec_pretty(&shown_value).unwrap_or_default();
        let hash = digest(&shown, &cfg);
        Runtime {
            config: Arc::new(cfg),
            vendors,
            by_port,
            hash,
            shown,
        }
    }
}

/// Each vendor with its endpoint labels (for the metric series made at 0).
pub fn vendor_labels(cfg: &Config) -> Vec<(String, Vec<String>)> {
    cfg.vendors
        .iter()
        .map(|v| {
            let labels = crate::routing::Router::new(v.endpoints.clone())
                .names()
                .map(str::to_string)
                .collect();
            (v.name.clone(), labels)
        })
        .collect()
}

/// SHA-256 of the shown config and of every profile file it uses, as 16 hex digits.
fn digest(shown: &[u8], cfg: &Config) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(shown);
    for v in &cfg.vendors {
        if let Some(p) = &v.profile {
            ctx.update(p.as_bytes());
            ctx.update(&std::fs::read(profile_file(cfg, p)).unwrap_or_default());
        }
    }
    ctx.finish()
        .as_ref()
        .iter()
        .take(8)
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn profile_file(cfg: &Config, name: &str) -> PathBuf {
    cfg.profiles_dir.join(format!("{name}.yaml"))
}

/// What differs between `old` and `new` that only a restart can change, each named.
pub fn restart_needed(old: &Config, new: &Config) -> Vec<String> {
    let mut why = Vec::new();
    if old.admin != new.admin {
        why.push(format!(
            "admin.listen changed ({} -> {})",
            old.admin.listen, new.admin.listen
        ));
    }
    if old.server != new.server {
        why.push(format!(
            "server.threads changed ({} -> {})",
            old.server.threads, new.server.threads
        ));
    }
    if old.shutdown != new.shutdown {
        why.push("shutdown.grace_period changed".into());
    }
    if old.log != new.log {
        why.push("log changed".into());
    }
    if old.quota_store != new.quota_store {
        why.push("quota_store changed".into());
    }
    for (i, v) in new.vendors.iter().enumerate() {
        match old.vendors.iter().find(|o| o.listen == v.listen) {
            None => why.push(format!(
                "vendors[{i}] ({}) listens on {}, where no vendor listened: a new listener",
                v.name, v.listen
            )),
            Some(o) if o.upstream != v.upstream || o.dns_refresh != v.dns_refresh => why.push(
                format!("vendors[{i}] ({}): upstream or dns_refresh changed", v.name),
            ),
            Some(_) => {}
        }
    }
    for o in &old.vendors {
        if !new.vendors.iter().any(|v| v.listen == o.listen) {
            why.push(format!(
                "vendor {} on {} is gone: its listener stays open until a restart",
                o.name, o.listen
            ));
        }
    }
    why
}

/// The files whose content a reload depends on, read now: the config file and every file
/// of the profiles folder (a new config may name a profile not used before).
fn fingerprint(file: &Path, profiles_dir: &Path) -> Vec<(PathBuf, Option<Vec<u8>>)> {
    let mut files = vec![(file.to_path_buf(), std::fs::read(file).ok())];
    if let Ok(dir) = std::fs::read_dir(profiles_dir) {
        let mut names: Vec<PathBuf> = dir.filter_map(|e| e.ok().map(|e| e.path())).collect();
        names.sort();
        for p in names {
            if p.extension().is_some_and(|e| e == "yaml") {
                let bytes = std::fs::read(&p).ok();
                files.push((p, bytes));
            }
        }
    }
    files
}

/// The background service that reloads: on SIGHUP and, with `reload.watch`, when the
/// files change.
pub struct Reloader {
    file: PathBuf,
    active: Arc<Active>,
    builder: Builder,
    signal: Arc<Notify>,
}

impl Reloader {
    /// Reloads `file` into `active` when `signal` fires or the files change.
    pub fn new(file: PathBuf, active: Arc<Active>, builder: Builder, signal: Arc<Notify>) -> Self {
        Reloader {
            file,
            active,
            builder,
            signal,
        }
    }

    /// Loads, validates and, when valid and possible without a restart, swaps in the file's
    /// config. Returns whether the new config is in force.
    pub fn reload(&self, why: &str) -> bool {
        let m = &self.builder.metrics.reload;
        let old = self.active.current();
        let new = match config::load(&self.file) {
            Ok(c) => c,
            Err(e) => {
                for p in &e.problems {
                    tracing::error!(
                        file = %e.file.display(),
                        key = %p.path,
                        problem = %p.message,
                        "config reload refused: invalid; the running config goes on"
                    );
                }
                m.failed();
                return false;
            }
        };
        let blocked = restart_needed(&old.config, &new);
        if !blocked.is_empty() {
            for b in &blocked {
                tracing::error!(
                    file = %self.file.display(),
                    reason = %b,
                    "config reload refused: needs a restart; the running config goes on"
                );
            }
            m.failed();
            return false;
        }
        let runtime = self.builder.runtime(new, Some(&old));
        let hash = runtime.hash.clone();
        self.active.set(runtime);
        m.succeeded(&old.hash, &hash);
        tracing::info!(trigger = why, config = %hash, previous = %old.hash, "config reloaded");
        true
    }
}

#[async_trait]
impl BackgroundService for Reloader {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let profiles = |a: &Active| a.get().config.profiles_dir.clone();
        let mut seen = fingerprint(&self.file, &profiles(&self.active));
        loop {
            let (watch, poll) = {
                let r = &self.active.get().config.reload;
                (r.watch, r.poll)
            };
            let poll_tick = async {
                if watch {
                    tokio::time::sleep(poll).await
                } else {
                    std::future::pending().await
                }
            };
            tokio::select! {
                _ = self.signal.notified() => {
                    seen = fingerprint(&self.file, &profiles(&self.active));
                    self.reload("SIGHUP");
                }
                _ = poll_tick => {
                    let mut now = fingerprint(&self.file, &profiles(&self.active));
                    if now == seen {
                        continue;
                    }
                    // Settle: a burst of writes (or a rename half done) ends on its last state.
                    loop {
                        tokio::time::sleep(SETTLE).await;
                        let again = fingerprint(&self.file, &profiles(&self.active));
                        if again == now {
                            break;
                        }
                        now = again;
                    }
                    seen = now;
                    let dir = profiles(&self.active);
                    if self.reload("file changed") && profiles(&self.active) != dir {
                        // Another profiles folder now: watch that one.
                        seen = fingerprint(&self.file, &profiles(&self.active));
                    }
                }
                _ = shutdown.changed() => return,
            }
        }
    }
}
