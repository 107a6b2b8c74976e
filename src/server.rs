//! Assembles the Pingora server from a validated [`Config`] and runs it until shutdown.
//!
//! Signals (SPEC §8) are all handled on one thread of Switchboard's own, installed before
//! Pingora starts, so none keeps its default (terminating) action for a moment:
//! - SIGTERM, SIGQUIT: mark the process draining (`/readyz` fails), Pingora stops accepting,
//!   in-flight requests finish, and the process exits 0 as soon as none is left — at the
//!   latest after `shutdown.grace_period`. Pingora's own grace period sleeps unconditionally,
//!   so the signal thread ends the process once the in-flight count reaches zero. Another
//!   SIGTERM or SIGQUIT during the drain changes nothing: a supervisor repeating itself must
//!   not cut the requests the drain promised to finish.
//! - SIGINT: exits 130 at once, also during a drain (Pingora reads its shutdown signal only
//!   once, so the thread exits itself rather than asking Pingora).
//! - SIGHUP: reloads the config (`reload`): validated first, refused when invalid or when it
//!   changes what needs a restart; never ends the process.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownSignal, ShutdownSignalWatch, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::sync::Notify;

use crate::admin::AdminApp;
use crate::config::Config;
use crate::http::pool::Upstreams;
use crate::lifecycle::Lifecycle;
use crate::limits::{Sweep, Sweeper};
use crate::metrics::Metrics;
use crate::proxy::serve::Serve;
use crate::proxy::{Exchange, Quota, Switchboard};
use crate::reload::{Active, Builder, Reloader};
use crate::routing::DnsRefresher;
use pingora::connectors::ConnectorOptions;
use pingora::connectors::TransportConnector;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address cannot be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Which listener.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The signal handlers or their thread cannot be set up.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
}

fn check_bind(addr: SocketAddr, what: &str) -> Result<(), StartError> {
    TcpListener::bind(addr)
        .map(drop)
        .map_err(|source| StartError::Bind {
            addr,
            what: what.to_string(),
            source,
        })
}

/// Builds every service from `cfg` and runs until shutdown. Blocks the calling thread.
pub fn run(cfg: &Config) -> Result<(), StartError> {
    // First, so that no signal has its default action once the process is up.
    let lifecycle = Lifecycle::new();
    let reload = Arc::new(Notify::new());
    let drain = start_signal_thread(lifecycle.clone(), cfg.shutdown.grace_period, reload.clone())
        .map_err(StartError::Signals)?;

    // Pingora retries a busy port for a while and then panics; say it clearly up front.
    check_bind(cfg.admin.listen, "admin")?;
    for v in &cfg.vendors {
        check_bind(v.listen, &format!("vendor {}", v.name))?;
    }

    let grace = cfg.shutdown.grace_period;
    let conf = ServerConf {
        threads: cfg.server.threads,
        grace_period_seconds: Some(grace.as_secs_f64().ceil() as u64),
        graceful_shutdown_timeout_seconds: Some(1),
        // A fail-safe only: whether to retry is Switchboard's policy, not Pingora's.
        max_retries: 16,
        // One single-threaded runtime per worker thread: a connection stays on its thread,
        // with no cross-thread wake-ups. +4 % to +23 % req/s in 4 alternating A/B pairs
        // (benches/RESULTS.md); a sidecar has few threads and many short requests.
        work_stealing: false,
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();

    let metrics = Metrics::new(&crate::reload::vendor_labels(cfg))?;
    let quota = cfg
        .quota_store
        .as_ref()
        .map(|q| start_quota_store(q, &metrics));
    let builder = Builder {
        metrics: metrics.clone(),
        lifecycle: lifecycle.clone(),
        quota,
    };
    let first = builder.runtime(cfg.clone(), None);
    metrics.reload.started(&first.hash);
    let resolvers = first.vendors.iter().map(|v| v.resolver.clone()).collect();
    let active = Active::new(first);
    let sweep = active.clone();
    let limiters: crate::limits::Limiters = Box::new(move || {
        sweep
            .get()
            .vendors
            .iter()
            .flat_map(|v| {
                let own: Arc<dyn Sweep> = v.limits.clone();
                let share = v
                    .shared
                    .as_ref()
                    .map(|s| s.local_share().clone() as Arc<dyn Sweep>);
                std::iter::once(own).chain(share)
            })
            .collect()
    });
    let listen: Vec<SocketAddr> = cfg.vendors.iter().map(|v| v.listen).collect();

    let mut proxy = Service::new(
        "switchboard".to_string(),
        Serve::new(Switchboard::new(
            Exchange::new(
                Upstreams::new(TransportConnector::new(Some(
                    ConnectorOptions::from_server_conf(&server.configuration),
                ))),
                lifecycle.clone(),
                metrics.clone(),
            ),
            active.clone(),
        )),
    );
    for addr in &listen {
        proxy.add_tcp(&addr.to_string());
    }
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(metrics, lifecycle.clone(), active.clone()),
    );
    admin.add_tcp(&cfg.admin.listen.to_string());
    admin.threads = Some(1);

    server.add_service(proxy);
    server.add_service(admin);
    server.add_service(background_service("dns", DnsRefresher::new(resolvers)));
    server.add_service(background_service("limits", Sweeper::new(limiters)));
    server.add_service(background_service(
        "reload",
        Reloader::new(cfg.file.clone(), active, builder, reload),
    ));
    server.add_service(background_service(
        "readiness",
        Readiness {
            lifecycle: lifecycle.clone(),
            listen,
        },
    ));

    tracing::info!(
        vendors = cfg.vendors.len(),
        admin = %cfg.admin.listen,
        "switchboard starting"
    );
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainSignal(drain)),
    });
    tracing::info!("switchboard stopped");
    Ok(())
}

/// Starts the fleet's quota store: it connects in the background on a thread of its own, so
/// start-up and readiness never wait for Redis (until it answers, shared limits are decided
/// on this pod's local share).
fn start_quota_store(q: &crate::config::QuotaStore, metrics: &Metrics) -> Quota {
    // Checked by the config's validation; read here once and kept out of every log.
    let password = q
        .password_env
        .as_ref()
        .and_then(|var| std::env::var(var).ok());
    // The account hash must be keyed the same on every replica: the store's password is a
    // secret they all share. Without one the hash is a fixed-salt digest (still never the
    // key; README says to set a password).
    let secret = password
        .clone()
        .unwrap_or_else(|| "switchboard-account".to_string())
        .into_bytes();
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "switchboard".to_string());
    let settings = crate::quota::StoreSettings {
        urls: q.urls.clone(),
        password,
        timeout: q.timeout,
        expected_replicas: q.expected_replicas,
        replica_id: format!("{host}:{}:{}", std::process::id(), ulid::Ulid::new()),
    };
    Quota {
        store: crate::quota::QuotaStore::start(settings, metrics.quota.clone()),
        secret,
        expected_replicas: q.expected_replicas,
    }
}

/// Marks the process ready once every vendor listener accepts connections.
struct Readiness {
    lifecycle: Arc<Lifecycle>,
    listen: Vec<SocketAddr>,
}

#[async_trait]
impl BackgroundService for Readiness {
    async fn start(&self, _shutdown: ShutdownWatch) {
        for addr in &self.listen {
            let target = match addr.ip().is_unspecified() {
                true => SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), addr.port()),
                false => *addr,
            };
            while tokio::net::TcpStream::connect(target).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.lifecycle.set_ready();
        tracing::info!("ready");
    }
}

/// Tells Pingora to stop accepting once the signal thread has started a drain.
struct DrainSignal(Arc<Notify>);

#[async_trait]
impl ShutdownSignalWatch for DrainSignal {
    async fn recv(&self) -> ShutdownSignal {
        self.0.notified().await;
        ShutdownSignal::GracefulTerminate
    }
}

/// Registers every signal Switchboard handles, then serves them on a thread of its own with
/// a one-thread runtime. The handlers are in place when this returns. The returned `Notify`
/// fires once, when a drain starts.
fn start_signal_thread(
    lifecycle: Arc<Lifecycle>,
    grace: Duration,
    reload: Arc<Notify>,
) -> std::io::Result<Arc<Notify>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // `signal()` installs the OS handler at once (and for the life of the process).
    let signals = {
        let _in_rt = rt.enter();
        SignalStreams {
            term: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        }
    };
    let drain = Arc::new(Notify::new());
    let notify = drain.clone();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || rt.block_on(handle_signals(signals, lifecycle, grace, notify, reload)))?;
    Ok(drain)
}

struct SignalStreams {
    term: Signal,
    quit: Signal,
    int: Signal,
    hup: Signal,
}

/// Exit status for SIGINT: the shell's 128 + signal number, as for a program interrupted
/// by Ctrl-C. Not 0: whatever was in flight was cut.
const SIGINT_EXIT: i32 = 130;

async fn handle_signals(
    mut s: SignalStreams,
    lifecycle: Arc<Lifecycle>,
    grace: Duration,
    drain: Arc<Notify>,
    reload: Arc<Notify>,
) {
    loop {
        let which = tokio::select! {
            _ = s.int.recv() => {
                tracing::warn!(
                    inflight = lifecycle.inflight(),
                    draining = lifecycle.is_draining(),
                    "SIGINT: exiting now"
                );
                crate::access::flush();
                std::process::exit(SIGINT_EXIT);
            }
            _ = s.hup.recv() => {
                tracing::info!("SIGHUP: reloading the config");
                // Kept if the reloader is busy: one more reload after the current one.
                reload.notify_one();
                continue;
            }
            _ = s.term.recv() => "SIGTERM",
            _ = s.quit.recv() => "SIGQUIT",
        };
        if lifecycle.is_draining() {
            tracing::warn!(
                inflight = lifecycle.inflight(),
                "{which}: already draining; the drain goes on (SIGINT exits now)"
            );
            continue;
        }
        tracing::info!(
            inflight = lifecycle.inflight(),
            grace_s = grace.as_secs_f64(),
            "{which}: draining"
        );
        lifecycle.start_draining();
        drain.notify_one();
        tokio::spawn(exit_when_drained(lifecycle.clone(), Instant::now() + grace));
    }
}

/// Exits 0 once nothing has been in flight for a short settle time (connections accepted just
/// before the listeners closed get to start their request), or when the grace period ends.
async fn exit_when_drained(lifecycle: Arc<Lifecycle>, deadline: Instant) {
    let settle = Duration::from_millis(100);
    let mut idle_since: Option<Instant> = None;
    loop {
        let now = Instant::now();
        if now >= deadline {
            tracing::warn!(
                inflight = lifecycle.inflight(),
                "grace period over; exiting"
            );
            crate::access::flush();
            std::process::exit(0);
        }
        if lifecycle.inflight() == 0 {
            let since = *idle_since.get_or_insert(now);
            if now.duration_since(since) >= settle {
                tracing::info!("drained; exiting");
                crate::access::flush();
                std::process::exit(0);
            }
        } else {
            idle_since = None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
