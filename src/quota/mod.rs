//! The shared quota store (SPEC §3 "Sharing a quota across replicas", design notes in
//! `QUOTAS.md`): limits marked `shared` are decided for the whole fleet in one Redis.
//!
//! Owns: the connection to Redis (standalone or Cluster), the decision script (GCRA on
//! Redis's clock, every shared bucket of a request all or nothing, after the fleet-wide
//! pause), the breaker, the replica heartbeat, the Redis key layout and the account tag that
//! stands in for the API key in those keys.
//!
//! Everything that waits on Redis runs on the store's own thread and tokio runtime: Pingora
//! runs several single-threaded runtimes, and the connection driver, the deadlines, the probe
//! and the heartbeat must not depend on one of them being polled. A decision is spawned onto
//! that runtime and awaited from wherever it was asked, so its deadline holds whatever the
//! caller's runtime is doing.
//!
//! Must not: wait on Redis past `timeout` on the request path, block, fail start-up, or put
//! an API key or a URL (it may hold the password) in a key, a value or a log line. Knows
//! nothing of the limiter: the caller decides what to do with a `Wait`, an error, or
//! [`QuotaStore::in_fallback`] (decide locally on `rate / share_divisor()`).

mod breaker;
mod conn;
mod heartbeat;

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use redis::{Cmd, ErrorKind, RedisError, ServerErrorKind, ToRedisArgs, Value};
use smallvec::SmallVec;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

use crate::metrics::QuotaMetrics;

pub use breaker::OPEN_AFTER;
pub use conn::check_url;
pub use heartbeat::{EVERY as HEARTBEAT_EVERY, LIVE_FOR as HEARTBEAT_LIVE_FOR};

use breaker::Breaker;
use conn::{Conn, Target};

/// How often the store probes Redis while the breaker is open.
pub const PROBE_EVERY: Duration = Duration::from_secs(1);

/// How long connecting (TCP, TLS, AUTH, the Cluster's slot map) may take. Off the request
/// path: only the store's own thread waits for it.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// The shortest deadline for the store's own round trips (probe, heartbeat). They are off
/// the request path, so a loaded host does not flap the breaker over a 5 ms budget; a
/// Redis that then misses decisions' deadlines opens it again after [`OPEN_AFTER`].
const BACKGROUND_DEADLINE: Duration = Duration::from_millis(100);

/// Connection settings (the integrator maps the validated config onto it).
#[derive(Clone)]
pub struct StoreSettings {
    /// One URL = a standalone Redis, several = Redis Cluster nodes; `redis://` or
    /// `rediss://` (TLS).
    pub urls: Vec<String>,
    /// Sent with AUTH; replaces a password in the URLs.
    pub password: Option<String>,
    /// The longest a decision waits on Redis (SPEC default 5 ms).
    pub timeout: Duration,
    /// The fleet's size as configured: the floor of [`QuotaStore::share_divisor`].
    pub expected_replicas: u32,
    /// This replica's member in the heartbeat set (e.g. the pod name); unique per replica.
    pub replica_id: String,
}

impl std::fmt::Debug for StoreSettings {
    // By hand: URLs and the password are secrets.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreSettings")
            .field("urls", &self.urls.len())
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("timeout", &self.timeout)
            .field("expected_replicas", &self.expected_replicas)
            .field("replica_id", &self.replica_id)
            .finish()
    }
}

impl StoreSettings {
    /// Everything [`QuotaStore::start`] would refuse to connect with, for `check-config`
    /// (the store itself never fails: it stays in fallback and logs). Never echoes a URL.
    pub fn check(&self) -> Result<(), String> {
        Target::new(self, CONNECT_TIMEOUT).map(|_| ())
    }
}

/// One shared bucket of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedBucket<'a> {
    /// Stable bucket id within the account, e.g. `v:0` or `ep:voice:1`. Must not contain
    /// `}` (it would end the key's Cluster hash tag).
    pub name: &'a str,
    /// GCRA emission interval (µs).
    pub interval_us: u64,
    /// GCRA tolerance (µs) = `interval_us * (burst - 1)`.
    pub tolerance_us: u64,
}

impl<'a> SharedBucket<'a> {
    /// The bucket that never admits more than `rate` in any window of `per`, `burst` back to
    /// back (SPEC §3): interval `per / (rate - burst + 1)`, rounded UP to whole µs — rounding
    /// down would let `rate + 1` through in a window (e.g. 10 per 1 s, burst 5: 166 666 µs
    /// spacing puts the 11th request at 999 996 µs). `None` for an impossible shape.
    pub fn from_shape(name: &'a str, rate: u32, per: Duration, burst: u32) -> Option<Self> {
        if burst == 0 || burst > rate || per.is_zero() {
            return None;
        }
        let per_us = u64::try_from(per.as_micros()).ok()?;
        let interval_us = per_us.div_ceil(u64::from(rate - burst + 1)).max(1);
        Some(SharedBucket {
            name,
            interval_us,
            tolerance_us: interval_us.checked_mul(u64::from(burst - 1))?,
        })
    }
}

/// Every shared bucket of one request, decided at once.
#[derive(Debug, Clone, Copy)]
pub struct SharedRequest<'a> {
    /// The vendor's name (must not contain `}`).
    pub vendor: &'a str,
    /// The account, from [`account_tag`] (never the API key).
    pub account: &'a str,
    /// Tokens the request takes from every bucket.
    pub cost: u64,
    /// The buckets; all allow or none is touched.
    pub buckets: &'a [SharedBucket<'a>],
}

/// What the fleet decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SharedVerdict {
    /// Every bucket had the tokens and has taken them.
    Allow,
    /// Not now: a bucket needs this long (the longest of them), or the account is paused.
    /// Nothing was taken.
    Wait(Duration),
}

/// A decision and what it tells of the buckets' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    /// The fleet's verdict.
    pub verdict: SharedVerdict,
    /// Redis's clock (µs since the epoch) at which an `Allow` was granted.
    pub at_us: Option<u64>,
    /// For each bucket of the request, in its order: how far the bucket's TAT is ahead of
    /// Redis's now after the decision (µs), i.e. how much of its capacity is in use. Empty
    /// while the account is paused.
    pub debts_us: SmallVec<[u64; 4]>,
}

/// Why the store did not decide. The caller then decides on its local share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// No answer within `timeout`.
    #[error("quota store: no answer within the timeout")]
    Timeout,
    /// No connection (refused, dropped, not yet made, Cluster node missing).
    #[error("quota store: not connected")]
    Connect,
    /// Redis answered with an error (the script failed, a wrong type, an unexpected reply).
    #[error("quota store: script error")]
    Script,
    /// The breaker is open: Redis was not asked.
    #[error("quota store: breaker open")]
    Open,
}

impl StoreError {
    /// The `reason` label of `switchboard_quota_store_errors_total` (`open` is never
    /// counted there: it is a consequence, not a failure).
    pub fn as_str(self) -> &'static str {
        match self {
            StoreError::Timeout => "timeout",
            StoreError::Connect => "connect",
            StoreError::Script => "script",
            StoreError::Open => "open",
        }
    }

    fn of(e: &RedisError) -> StoreError {
        if e.is_timeout() {
            return StoreError::Timeout;
        }
        match e.kind() {
            ErrorKind::Io
            | ErrorKind::AuthenticationFailed
            | ErrorKind::ClusterConnectionNotFound
            | ErrorKind::InvalidClientConfig
            | ErrorKind::Server(
                ServerErrorKind::BusyLoading
                | ServerErrorKind::ClusterDown
                | ServerErrorKind::MasterDown
                | ServerErrorKind::TryAgain
                | ServerErrorKind::ReadOnly
                | ServerErrorKind::Moved
                | ServerErrorKind::Ask,
            ) => StoreError::Connect,
            _ if e.is_connection_dropped() || e.is_connection_refusal() => StoreError::Connect,
            _ => StoreError::Script,
        }
    }
}

/// A keyed hash of the API key for Redis keys: the first 128 bits of
/// HMAC-SHA-256(secret, api_key), 32 hex digits. Redis keys show up in SLOWLOG, MONITOR and
/// dumps; without the secret a tag cannot be matched against a list of candidate keys.
/// Every replica of a fleet must use the same secret, or they stop sharing buckets.
pub fn account_tag(secret: &[u8], api_key: &[u8]) -> String {
    use std::fmt::Write;
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let tag = ring::hmac::sign(&key, api_key);
    let mut hex = String::with_capacity(32);
    for b in &tag.as_ref()[..16] {
        let _ = write!(hex, "{b:02x}");
    }
    hex
}

/// The Redis key of one bucket: `sb:{<vendor>:<account>}:<bucket>`. The hash tag keeps one
/// account's buckets and pause in one Cluster slot, so one script can touch them all.
pub fn bucket_key(vendor: &str, account: &str, bucket: &str) -> String {
    format!("sb:{{{vendor}:{account}}}:{bucket}")
}

/// The Redis key of a concurrency bucket's lease set: `sb:{<vendor>:<account>}:lease:<bucket>`
/// (the account's hash tag: one Cluster slot with its other keys).
pub fn lease_key(vendor: &str, account: &str, bucket: &str) -> String {
    bucket_key(vendor, account, &format!("lease:{bucket}"))
}

/// The Redis key of an account's fleet-wide pause: `sb:{<vendor>:<account>}:pause`.
pub fn pause_key(vendor: &str, account: &str) -> String {
    bucket_key(vendor, account, "pause")
}

/// A script sent by digest (EVALSHA), and in full (EVAL, which also caches it) when Redis
/// answers NOSCRIPT: after `SCRIPT FLUSH`, a restart, or a failover to a fresh replica.
struct Lua {
    src: &'static str,
    sha: String,
}

impl Lua {
    fn new(src: &'static str) -> Lua {
        Lua {
            src,
            sha: redis::Script::new(src).get_hash().to_owned(),
        }
    }

    fn cmd<A: ToRedisArgs>(&self, keys: &[String], args: &A, full: bool) -> Cmd {
        let mut c = if full {
            let mut c = redis::cmd("EVAL");
            c.arg(self.src);
            c
        } else {
            let mut c = redis::cmd("EVALSHA");
            c.arg(&self.sha);
            c
        };
        c.arg(keys.len()).arg(keys).arg(args);
        c
    }

    async fn run<A: ToRedisArgs>(
        &self,
        conn: &mut Conn,
        keys: &[String],
        args: &A,
    ) -> redis::RedisResult<Value> {
        match conn.query(&self.cmd(keys, args, false)).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                conn.query(&self.cmd(keys, args, true)).await
            }
            r => r,
        }
    }
}

/// State shared by the store's handle and its background task.
struct Inner {
    settings: StoreSettings,
    metrics: QuotaMetrics,
    breaker: Breaker,
    /// `None` until connected, and again after the breaker opened: a wedged multiplexed
    /// connection never recovers by itself, so the probe builds a fresh one.
    conn: RwLock<Option<Conn>>,
    /// Live replicas at the last heartbeat (0 = not counted yet).
    live: AtomicU32,
    /// Times the breaker closed (decisions went back to Redis), the first connect included.
    closes: AtomicU64,
    /// When it last closed, in ms since `born`.
    closed_at_ms: AtomicU64,
    born: Instant,
    decide: Lua,
    pause: Lua,
    refund: Lua,
    heartbeat: Lua,
    lease: Lua,
}

impl Inner {
    fn conn(&self) -> Option<Conn> {
        self.conn.read().ok().and_then(|c| c.clone())
    }

    fn set_conn(&self, conn: Option<Conn>) {
        if let Ok(mut c) = self.conn.write() {
            *c = conn;
        }
    }

    fn succeeded(&self) {
        self.breaker.success();
    }

    /// One failed round trip; opens the breaker after [`OPEN_AFTER`] in a row.
    fn failed(&self, e: StoreError) {
        if self.breaker.failure() {
            self.opened(e);
        }
    }

    fn opened(&self, e: StoreError) {
        self.set_conn(None);
        self.metrics.fallback.set(1);
        tracing::warn!(
            reason = e.as_str(),
            "quota store unavailable; shared limits decided on this replica's share"
        );
    }

    /// One probe: connect if needed, load the decision script (a restarted Redis has none),
    /// close the breaker. Failures keep it open and drop the half-made connection.
    async fn probe(&self, target: &Target) {
        let mut conn = match self.conn() {
            Some(c) => c,
            None => match target.connect(CONNECT_TIMEOUT).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::debug!(
                        reason = StoreError::of(&e).as_str(),
                        "quota store probe: connect failed"
                    );
                    return;
                }
            },
        };
        let mut load = redis::cmd("SCRIPT");
        load.arg("LOAD").arg(self.decide.src);
        let deadline = self.settings.timeout.max(BACKGROUND_DEADLINE);
        match tokio::time::timeout(deadline, conn.query::<String>(&load)).await {
            Ok(Ok(_)) => {
                self.set_conn(Some(conn));
                if self.breaker.close() {
                    let ms = u64::try_from(self.born.elapsed().as_millis()).unwrap_or(u64::MAX);
                    self.closed_at_ms.store(ms, Ordering::Relaxed);
                    self.closes.fetch_add(1, Ordering::Release);
                    self.metrics.fallback.set(0);
                    tracing::info!("quota store reachable; shared limits decided in Redis");
                }
                self.beat().await;
            }
            Ok(Err(e)) => {
                tracing::debug!(
                    reason = StoreError::of(&e).as_str(),
                    "quota store probe failed"
                );
                self.set_conn(None);
            }
            Err(_) => {
                tracing::debug!("quota store probe: no answer");
                self.set_conn(None);
            }
        }
    }

    /// One heartbeat; the count feeds [`QuotaStore::share_divisor`].
    async fn beat(&self) {
        let Some(mut conn) = self.conn() else { return };
        let deadline = self.settings.timeout.max(BACKGROUND_DEADLINE);
        let keys = [heartbeat::KEY.to_owned()];
        let args = (
            self.settings.replica_id.as_str(),
            heartbeat::LIVE_FOR.as_millis() as u64,
        );
        let attempt = self.heartbeat.run(&mut conn, &keys, &args);
        match tokio::time::timeout(deadline, attempt).await {
            Ok(Ok(Value::Int(n))) => {
                self.succeeded();
                let n = u32::try_from(n).unwrap_or(u32::MAX);
                self.live.store(n, Ordering::Relaxed);
                self.metrics.replicas.set(i64::from(n));
            }
            Ok(Ok(_)) => self.failed(StoreError::Script),
            Ok(Err(e)) => self.failed(StoreError::of(&e)),
            Err(_) => self.failed(StoreError::Timeout),
        }
    }

    /// The store's own loop: probe while the breaker is open, heartbeat while it is closed.
    async fn run(self: Arc<Self>, target: Option<Target>) {
        let Some(target) = target else {
            // Unusable settings (logged at start): stay in fallback, never ask.
            return std::future::pending().await;
        };
        let mut next_beat = Instant::now();
        let mut tick = tokio::time::interval(PROBE_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if self.breaker.is_open() {
                self.probe(&target).await;
                next_beat = Instant::now() + heartbeat::EVERY;
            } else if Instant::now() >= next_beat {
                self.beat().await;
                next_beat = Instant::now() + heartbeat::EVERY;
            }
        }
    }
}

/// The handle the limiter and the proxy share. Dropping the last one stops the store's
/// thread.
pub struct QuotaStore {
    inner: Arc<Inner>,
    /// The store's runtime; `None` when it could not be started (then always in fallback).
    rt: Option<Handle>,
    _stop: Option<oneshot::Sender<()>>,
}

impl std::fmt::Debug for QuotaStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuotaStore")
            .field("settings", &self.inner.settings)
            .field("in_fallback", &self.in_fallback())
            .finish()
    }
}

impl QuotaStore {
    /// Starts the store: never blocks and never fails. Connecting happens in the background
    /// on the store's own thread and runtime; until the first successful round trip the
    /// store is in fallback. Callable with or without a runtime around. Unusable settings
    /// (see [`StoreSettings::check`]) are logged and leave it in fallback for good.
    pub fn start(settings: StoreSettings, metrics: QuotaMetrics) -> Arc<QuotaStore> {
        metrics.fallback.set(1);
        metrics
            .expected_replicas
            .set(i64::from(settings.expected_replicas));
        let target = match Target::new(&settings, CONNECT_TIMEOUT) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "quota store not started; shared limits decided locally");
                None
            }
        };
        let inner = Arc::new(Inner {
            settings,
            metrics,
            breaker: Breaker::new(),
            conn: RwLock::new(None),
            live: AtomicU32::new(0),
            closes: AtomicU64::new(0),
            closed_at_ms: AtomicU64::new(0),
            born: Instant::now(),
            decide: Lua::new(include_str!("decide.lua")),
            pause: Lua::new(include_str!("pause.lua")),
            refund: Lua::new(include_str!("refund.lua")),
            lease: Lua::new(include_str!("lease.lua")),
            heartbeat: Lua::new(include_str!("heartbeat.lua")),
        });
        let (stop, stopped) = oneshot::channel::<()>();
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "quota store: no runtime; shared limits decided locally");
                return Arc::new(QuotaStore {
                    inner,
                    rt: None,
                    _stop: None,
                });
            }
        };
        let handle = rt.handle().clone();
        let task = inner.clone().run(target);
        let spawned = std::thread::Builder::new()
            .name("sb-quota".into())
            .spawn(move || {
                // Runs until the handle is dropped; the runtime is dropped here, on its own
                // thread, never inside someone else's async context.
                rt.block_on(async {
                    tokio::select! {
                        _ = stopped => {}
                        _ = task => {}
                    }
                });
            });
        match spawned {
            Ok(_) => Arc::new(QuotaStore {
                inner,
                rt: Some(handle),
                _stop: Some(stop),
            }),
            Err(e) => {
                tracing::error!(error = %e, "quota store: no thread; shared limits decided locally");
                Arc::new(QuotaStore {
                    inner,
                    rt: None,
                    _stop: None,
                })
            }
        }
    }

    /// One atomic decision for every shared bucket of a request, all or nothing, on Redis's
    /// clock. Never waits longer than `timeout` (then `Err(Timeout)`); while the breaker is
    /// open answers `Err(Open)` at once without a round trip.
    pub async fn decide(&self, req: &SharedRequest<'_>) -> Result<SharedVerdict, StoreError> {
        self.decided(req).await.map(|d| d.verdict)
    }

    /// [`decide`](Self::decide), with Redis's clock (µs since the epoch) at which an `Allow`
    /// was granted (`None` for a `Wait`): what the fleet's admissions can be checked against.
    pub async fn decide_at(
        &self,
        req: &SharedRequest<'_>,
    ) -> Result<(SharedVerdict, Option<u64>), StoreError> {
        self.decided(req).await.map(|d| (d.verdict, d.at_us))
    }

    /// [`decide`](Self::decide), with everything the script said of the buckets.
    pub async fn decided(&self, req: &SharedRequest<'_>) -> Result<Decided, StoreError> {
        let mut keys = Vec::with_capacity(req.buckets.len() + 1);
        keys.push(pause_key(req.vendor, req.account));
        let mut args = Vec::with_capacity(req.buckets.len() * 2 + 1);
        args.push(req.cost);
        for b in req.buckets {
            keys.push(bucket_key(req.vendor, req.account, b.name));
            args.push(b.interval_us);
            args.push(b.tolerance_us);
        }
        let started = Instant::now();
        let reply = self
            .round_trip(
                |inner, mut conn| async move { inner.decide.run(&mut conn, &keys, &args).await },
            )
            .await;
        if !matches!(reply, Err(StoreError::Open)) {
            self.inner
                .metrics
                .duration
                .observe(started.elapsed().as_secs_f64());
        }
        let reply = reply?;
        match parse_decision(&reply) {
            Some(d) => Ok(d),
            None => {
                self.inner
                    .metrics
                    .errors
                    .with_label_values(&["script"])
                    .inc();
                self.inner.failed(StoreError::Script);
                Err(StoreError::Script)
            }
        }
    }

    /// Gives back what an `Allow` of `req` took (its buckets' TATs moved back one cost's
    /// worth): for a request whose other group of buckets then refused it. Same deadline and
    /// breaker as a decision; best effort (a failure leaves the fleet stricter, never looser).
    pub async fn refund(&self, req: &SharedRequest<'_>) -> Result<(), StoreError> {
        let keys: Vec<String> = req
            .buckets
            .iter()
            .map(|b| bucket_key(req.vendor, req.account, b.name))
            .collect();
        let mut args = Vec::with_capacity(req.buckets.len() + 1);
        args.push(req.cost);
        args.extend(req.buckets.iter().map(|b| b.interval_us));
        self.round_trip(
            |inner, mut conn| async move { inner.refund.run(&mut conn, &keys, &args).await },
        )
        .await
        .map(|_| ())
    }

    /// One concurrency lease on the fleet-wide bucket `bucket` of `account`: granted while
    /// fewer than `max` live leases are held, living at most `ttl` (the attempt's deadline),
    /// so a pod that dies holding one leaks nothing for longer. Same deadline and breaker as a
    /// decision.
    pub async fn lease(
        &self,
        vendor: &str,
        account: &str,
        bucket: &str,
        max: u32,
        id: &str,
        ttl: Duration,
    ) -> Result<Lease, StoreError> {
        let keys = [lease_key(vendor, account, bucket)];
        let ttl_us = u64::try_from(ttl.as_micros()).unwrap_or(u64::MAX).max(1);
        let args = (max, id.to_string(), ttl_us);
        let reply = self
            .round_trip(move |inner, mut conn| async move {
                inner.lease.run(&mut conn, &keys, &args).await
            })
            .await?;
        let Value::Array(items) = &reply else {
            return Err(StoreError::Script);
        };
        match items.as_slice() {
            [Value::Int(1), ..] => Ok(Lease::Granted),
            [Value::Int(0), Value::Int(wait), ..] => Ok(Lease::Full(Duration::from_micros(
                u64::try_from(*wait).unwrap_or(1),
            ))),
            _ => Err(StoreError::Script),
        }
    }

    /// Gives a lease back, in the background (the caller is a guard's `drop`): best effort,
    /// as a lease not given back expires at its deadline anyway.
    pub fn release(&self, vendor: &str, account: &str, bucket: &str, id: &str) {
        let (Some(rt), Some(mut conn)) = (&self.rt, self.inner.conn()) else {
            return;
        };
        let mut cmd = redis::cmd("ZREM");
        cmd.arg(lease_key(vendor, account, bucket)).arg(id);
        let deadline = BACKGROUND_DEADLINE.max(self.inner.settings.timeout);
        rt.spawn(async move {
            let _ = tokio::time::timeout(deadline, conn.query::<Value>(&cmd)).await;
        });
    }

    /// Fleet-wide pause: every bucket of `account` in `vendor` answers `Wait` until `for_`
    /// has passed (a longer pause already set is kept). Same deadline and breaker as a
    /// decision.
    pub async fn pause(
        &self,
        vendor: &str,
        account: &str,
        for_: Duration,
    ) -> Result<(), StoreError> {
        let ms = u64::try_from(for_.as_micros().div_ceil(1000)).unwrap_or(u64::MAX);
        if ms == 0 {
            return Ok(());
        }
        let keys = [pause_key(vendor, account)];
        self.round_trip(
            |inner, mut conn| async move { inner.pause.run(&mut conn, &keys, &ms).await },
        )
        .await
        .map(|_| ())
    }

    /// True while decisions fall back to the local share (breaker open / never connected).
    pub fn in_fallback(&self) -> bool {
        self.inner.breaker.is_open() || self.rt.is_none()
    }

    /// N for the local share: `max(expected_replicas, live replicas last counted through
    /// the heartbeat)`, at least 1.
    pub fn share_divisor(&self) -> u32 {
        self.inner
            .settings
            .expected_replicas
            .max(self.inner.live.load(Ordering::Relaxed))
            .max(1)
    }

    /// How many times decisions went (back) to Redis, the first connect included: the
    /// number of the current shared period. A caller that decided locally while this was
    /// `n` knows the fallback it took part in ended when this reads `n + 1`.
    pub fn shared_period(&self) -> u64 {
        self.inner.closes.load(Ordering::Acquire)
    }

    /// How long ago the current shared period began.
    pub fn shared_for(&self) -> Duration {
        let at = Duration::from_millis(self.inner.closed_at_ms.load(Ordering::Relaxed));
        self.inner.born.elapsed().saturating_sub(at)
    }

    /// Live replicas at the last heartbeat (0 until one succeeded).
    pub fn live_replicas(&self) -> u32 {
        self.inner.live.load(Ordering::Relaxed)
    }

    /// Runs `call` on the store's runtime within `timeout`, through the breaker, counting
    /// failures by reason.
    async fn round_trip<F, Fut>(&self, call: F) -> Result<Value, StoreError>
    where
        F: FnOnce(Arc<Inner>, Conn) -> Fut,
        Fut: std::future::Future<Output = redis::RedisResult<Value>> + Send + 'static,
    {
        let inner = &self.inner;
        let (Some(rt), false) = (&self.rt, inner.breaker.is_open()) else {
            return Err(StoreError::Open);
        };
        let Some(conn) = inner.conn() else {
            return Err(StoreError::Open);
        };
        let deadline = inner.settings.timeout;
        let fut = call(inner.clone(), conn);
        let outcome = match rt.spawn(tokio::time::timeout(deadline, fut)).await {
            Ok(Ok(Ok(v))) => Ok(v),
            Ok(Ok(Err(e))) => Err(StoreError::of(&e)),
            Ok(Err(_)) => Err(StoreError::Timeout),
            // The store's runtime is gone (shutting down).
            Err(_) => Err(StoreError::Connect),
        };
        match outcome {
            Ok(v) => {
                inner.succeeded();
                Ok(v)
            }
            Err(e) => {
                inner.metrics.errors.with_label_values(&[e.as_str()]).inc();
                inner.failed(e);
                Err(e)
            }
        }
    }
}

/// A concurrency lease's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lease {
    /// Taken; give it back with [`QuotaStore::release`].
    Granted,
    /// Every slot is held; the earliest lease expires within this long.
    Full(Duration),
}

/// `{1, now_us, debt...}` → Allow at `now_us`; `{0, wait_us, debt...}` → Wait.
fn parse_decision(v: &Value) -> Option<Decided> {
    let Value::Array(items) = v else { return None };
    let [Value::Int(flag), Value::Int(n), debts @ ..] = items.as_slice() else {
        return None;
    };
    let n = u64::try_from(*n).ok()?;
    let debts_us = debts
        .iter()
        .map(|d| match d {
            Value::Int(d) => Some(u64::try_from(*d).unwrap_or(0)),
            _ => None,
        })
        .collect::<Option<_>>()?;
    let (verdict, at_us) = match flag {
        1 => (SharedVerdict::Allow, Some(n)),
        0 => (SharedVerdict::Wait(Duration::from_micros(n)), None),
        _ => return None,
    };
    Some(Decided {
        verdict,
        at_us,
        debts_us,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn account_tag_is_keyed_and_hides_the_key() {
        let a = account_tag(b"fleet-secret", b"sk_live_VISIBLE123");
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|b| b.is_ascii_hexdigit()));
        assert!(!a.contains("VISIBLE"));
        assert_eq!(
            a,
            account_tag(b"fleet-secret", b"sk_live_VISIBLE123"),
            "stable per secret"
        );
        assert_ne!(
            a,
            account_tag(b"other-secret", b"sk_live_VISIBLE123"),
            "keyed"
        );
        assert_ne!(a, account_tag(b"fleet-secret", b"sk_live_VISIBLE124"));
    }

    #[test]
    fn keys_share_one_hash_tag_per_account() {
        assert_eq!(bucket_key("tryvox", "ab12", "v:0"), "sb:{tryvox:ab12}:v:0");
        assert_eq!(pause_key("tryvox", "ab12"), "sb:{tryvox:ab12}:pause");
    }

    #[test]
    fn shapes_round_the_interval_up() {
        let b = SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 5).unwrap();
        assert_eq!(b.interval_us, 166_667);
        assert_eq!(b.tolerance_us, 4 * 166_667);
        // The 11th request of the densest run lands at or after one window.
        assert!(b.interval_us * 6 >= 1_000_000);
        let b = SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 1).unwrap();
        assert_eq!((b.interval_us, b.tolerance_us), (100_000, 0));
        assert!(SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 11).is_none());
        assert!(SharedBucket::from_shape("v:0", 10, Duration::ZERO, 1).is_none());
    }

    #[test]
    fn decision_replies_parse() {
        let allow = Value::Array(vec![
            Value::Int(1),
            Value::Int(1_700_000_000_000_000),
            Value::Int(300_000),
            Value::Int(0),
        ]);
        let d = parse_decision(&allow).unwrap();
        assert_eq!(d.verdict, SharedVerdict::Allow);
        assert_eq!(d.at_us, Some(1_700_000_000_000_000));
        assert_eq!(d.debts_us.as_slice(), &[300_000, 0]);
        let wait = Value::Array(vec![Value::Int(0), Value::Int(1500)]);
        let d = parse_decision(&wait).unwrap();
        assert_eq!(d.verdict, SharedVerdict::Wait(Duration::from_micros(1500)));
        assert_eq!((d.at_us, d.debts_us.len()), (None, 0));
        assert_eq!(parse_decision(&Value::Int(1)), None);
        let odd = Value::Array(vec![Value::Int(1), Value::Int(5), Value::Nil]);
        assert_eq!(parse_decision(&odd), None);
    }

    /// Pingora's hooks are `Send` futures on several runtimes: the handle must be shared
    /// across threads and its futures moved between them.
    #[test]
    fn handle_and_futures_are_send() {
        fn send_sync<T: Send + Sync>(_: &T) {}
        fn send<T: Send>(_: T) {}
        let store = QuotaStore::start(
            StoreSettings {
                urls: vec!["redis://127.0.0.1:1".into()],
                password: None,
                timeout: Duration::from_millis(5),
                expected_replicas: 1,
                replica_id: "t".into(),
            },
            crate::metrics::Metrics::new(&[]).unwrap().quota,
        );
        send_sync(&store);
        let buckets = [SharedBucket::from_shape("v:0", 1, Duration::from_secs(1), 1).unwrap()];
        let r = SharedRequest {
            vendor: "v",
            account: "a",
            cost: 1,
            buckets: &buckets,
        };
        send(store.decide(&r));
        send(store.pause("v", "a", Duration::from_secs(1)));
    }

    #[test]
    fn settings_debug_hides_secrets() {
        let s = StoreSettings {
            urls: vec!["redis://:hunter2@h:6379".into()],
            password: Some("hunter3".into()),
            timeout: Duration::from_millis(5),
            expected_replicas: 3,
            replica_id: "pod-a".into(),
        };
        let d = format!("{s:?}");
        assert!(!d.contains("hunter"), "{d}");
        assert!(s.check().is_ok());
    }
}
