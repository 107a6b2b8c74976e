//! One vendor's limits: which buckets apply to which endpoint, the key table, queueing,
//! shadow mode, adaptive pauses, eviction and the metrics of all of it.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use governor::clock::Clock;
use prometheus::{IntCounter, IntCounterVec, IntGauge};
use smallvec::SmallVec;

use super::keys::KeySource;
use super::{decide, Bucket, Decision, Denials, KeyState, Shape};

/// `governor` clock on tokio's time, so queue waits and bucket time agree (and tests can
/// pause both). Instants are durations since one process-wide origin.
///
/// Reading the clock is the largest single cost of a decision here (governor reads it once
/// per bucket); `Frozen` lets one decision read it once.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

static ORIGIN: std::sync::OnceLock<tokio::time::Instant> = std::sync::OnceLock::new();

thread_local! {
    static FROZEN: std::cell::Cell<Option<Duration>> = const { std::cell::Cell::new(None) };
}

impl TokioClock {
    fn real() -> Duration {
        let origin = *ORIGIN.get_or_init(tokio::time::Instant::now);
        tokio::time::Instant::now().saturating_duration_since(origin)
    }
}

impl Clock for TokioClock {
    type Instant = Duration;

    fn now(&self) -> Duration {
        FROZEN.with(|f| f.get()).unwrap_or_else(Self::real)
    }
}

/// While alive, this thread's [`TokioClock`] reads stand still at one instant: one
/// synchronous decision sees one time. Never held across an `.await`.
struct Frozen(Duration);

impl Frozen {
    fn now() -> Self {
        let t = TokioClock::real();
        FROZEN.with(|f| f.set(Some(t)));
        Frozen(t)
    }

    fn nanos(&self) -> u64 {
        u64::try_from(self.0.as_nanos()).unwrap_or(u64::MAX)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        FROZEN.with(|f| f.set(None));
    }
}

/// The pause-table key of shared (global) buckets; [`KeySource::key_of`] never yields it.
const GLOBAL: u64 = u64::MAX;

fn secs(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

/// Hasher for keys that already are keyed hashes ([`KeySource::key_of`]): hashing them
/// again would only cost time.
#[derive(Debug, Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Whose requests share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One bucket per API key.
    Key,
    /// One bucket for everyone.
    Global,
}

impl Scope {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Global => "global",
        }
    }
}

/// What happens to a request the bucket cannot take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer 429 at once.
    Reject,
    /// Hold it until a token frees, up to `max_wait`.
    Queue,
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// Rate, window and burst.
    pub shape: Shape,
    /// Per key or shared.
    pub scope: Scope,
    /// Reject or queue.
    pub mode: Mode,
    /// Longest a queued request waits (queue mode).
    pub max_wait: Duration,
    /// Most requests of one key waiting on one endpoint (queue mode).
    pub max_waiters: usize,
    /// Count what would be rejected, never block.
    pub shadow: bool,
}

/// Decision labels, in counter order.
const DECISIONS: [&str; 4] = ["allowed", "queued", "rejected", "shadow_rejected"];
const ALLOWED: usize = 0;
const QUEUED: usize = 1;
const REJECTED: usize = 2;
const SHADOW_REJECTED: usize = 3;

/// The vendor's metric handles, resolved once so a decision never looks up labels.
pub struct LimitMetrics {
    /// The vendor label.
    pub vendor: String,
    /// `switchboard_ratelimit_decisions_total`.
    pub decisions: IntCounterVec,
    /// `switchboard_queue_depth{vendor}`.
    pub queue_depth: IntGauge,
    /// `switchboard_ratelimit_keys{vendor}`.
    pub keys: IntGauge,
}

/// Why a request may not go now, with what the app needs to come back at the right time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Earliest time a token frees up.
    pub wait: Duration,
    /// The tightest bucket's rate (for `X-RateLimit-Limit`).
    pub limit: u32,
    /// Its window.
    pub per: Duration,
    /// Its scope.
    pub scope: Scope,
}

impl Reject {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        let d = self.wait;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// The canonical answer: a `rate_limited` envelope from the proxy with the exact
    /// `Retry-After`, and the `X-RateLimit-*` headers of the bucket that denied.
    pub fn answer(
        &self,
        vendor: &str,
        request_id: &str,
    ) -> (crate::envelope::Envelope, [(&'static str, String); 3]) {
        let whose = match self.scope {
            Scope::Key => "this API key",
            Scope::Global => "all keys together",
        };
        let secs = self.retry_after_s();
        let env = crate::envelope::Envelope::proxy(
            crate::envelope::Code::RateLimited,
            format!(
                "rate limit of {} requests per {} reached for {whose}; retry in {secs} s",
                self.limit,
                humantime::format_duration(self.per)
            ),
            vendor,
            request_id,
        )
        .with_retry_after(Some(secs));
        let headers = [
            ("x-ratelimit-limit", self.limit.to_string()),
            ("x-ratelimit-remaining", "0".to_string()),
            ("x-ratelimit-reset", secs.to_string()),
        ];
        (env, headers)
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead (tokens taken).
    Allow,
    /// Answer 429.
    Reject(Reject),
}

struct Rt {
    bucket: Bucket<TokioClock>,
    spec: BucketSpec,
}

/// The buckets one endpoint's requests go through (indices into `buckets`).
#[derive(Default)]
struct Plan {
    enforce: SmallVec<[usize; 4]>,
    shadow: SmallVec<[usize; 2]>,
    /// What a vendor 429 pauses.
    pause: SmallVec<[usize; 4]>,
    needs_key: bool,
    queueable: bool,
}

/// A FIFO line of one key's requests on one endpoint.
#[derive(Default)]
struct Line {
    turn: tokio::sync::Mutex<()>,
    waiters: AtomicUsize,
}

/// One vendor's rate limiter.
pub struct Limiter {
    buckets: Vec<Rt>,
    plans: Vec<Plan>,
    keys: DashMap<u64, KeyState, BuildHasherDefault<Prehashed>>,
    live: AtomicUsize,
    max_keys: usize,
    key_slots: usize,
    global: KeyState,
    /// Shared by new keys once the table is full: stricter, never looser.
    overflow: KeyState,
    lines: DashMap<(u64, usize), Arc<Line>>,
    /// Seconds without a decision after which a key is as good as new.
    idle_after_s: u32,
    /// Adaptive pauses: (key or [`GLOBAL`], bucket) -> until (ns since the epoch).
    pauses: DashMap<(u64, usize), u64>,
    pause_entries: AtomicUsize,
    /// Counters per (endpoint, scope, decision).
    counters: Vec<IntCounter>,
    gauges: Option<(IntGauge, IntGauge)>,
    /// Where the API key is.
    pub source: KeySource,
    /// Set once shutdown starts: queued requests are answered instead of held.
    draining: Option<Arc<crate::lifecycle::Lifecycle>>,
}

/// Most buckets one request may go through (the decision reports denials as a bit set).
pub const MAX_BUCKETS_PER_REQUEST: usize = 64;

impl Limiter {
    /// Builds the limiter. `vendor_wide` apply to every request; `per_endpoint[i]` to
    /// endpoint `i` (the last entry, for `other`, is usually empty). `endpoint_names` label
    /// the metrics. Shapes were validated by the config; an impossible one is skipped.
    pub fn new(
        vendor_wide: &[BucketSpec],
        per_endpoint: &[Vec<BucketSpec>],
        endpoint_names: &[String],
        source: KeySource,
        max_keys: usize,
        metrics: Option<LimitMetrics>,
    ) -> Self {
        let clock = TokioClock;
        let mut buckets = Vec::new();
        let (mut key_slots, mut global_slots) = (0, 0);
        let mut add = |spec: &BucketSpec| -> Option<usize> {
            let slot = match spec.scope {
                Scope::Key => &mut key_slots,
                Scope::Global => &mut global_slots,
            };
            let bucket = Bucket::new(spec.shape, *slot, clock, Duration::ZERO)?;
            *slot += 1;
            buckets.push(Rt {
                bucket,
                spec: spec.clone(),
            });
            Some(buckets.len() - 1)
        };
        let wide: Vec<usize> = vendor_wide.iter().filter_map(&mut add).collect();
        let mut own: Vec<Vec<usize>> = Vec::new();
        for specs in per_endpoint {
            own.push(specs.iter().filter_map(&mut add).collect());
        }
        let plans = (0..endpoint_names.len())
            .map(|ep| {
                let mine = own.get(ep).cloned().unwrap_or_default();
                let mut plan = Plan::default();
                for &i in wide.iter().chain(&mine) {
                    let spec = &buckets[i].spec;
                    if spec.shadow {
                        plan.shadow.push(i);
                    } else if plan.enforce.len() < MAX_BUCKETS_PER_REQUEST {
                        plan.enforce.push(i);
                        plan.queueable |= spec.mode == Mode::Queue;
                    }
                    plan.needs_key |= spec.scope == Scope::Key;
                }
                // A vendor 429 on this endpoint pauses the narrowest buckets that could have
                // prevented it: the endpoint's own per-key buckets, else the key-wide ones,
                // else the shared ones.
                let pick = |set: &[usize], scope: Scope| -> SmallVec<[usize; 4]> {
                    set.iter()
                        .copied()
                        .filter(|&i| buckets[i].spec.scope == scope && !buckets[i].spec.shadow)
                        .collect()
                };
                plan.pause = pick(&mine, Scope::Key);
                if plan.pause.is_empty() {
                    plan.pause = pick(&wide, Scope::Key);
                }
                if plan.pause.is_empty() {
                    plan.pause = pick(&wide, Scope::Global);
                    plan.pause.extend(pick(&mine, Scope::Global));
                }
                plan
            })
            .collect();
        // A key idle for its longest window has refilled every bucket: it is as good as new.
        let idle_after = buckets
            .iter()
            .filter(|r| r.spec.scope == Scope::Key)
            .map(|r| r.spec.shape.per)
            .max()
            .unwrap_or(Duration::ZERO);
        let mut counters = Vec::new();
        let mut gauges = None;
        if let Some(m) = metrics {
            for name in endpoint_names {
                for scope in [Scope::Key, Scope::Global] {
                    for d in DECISIONS {
                        counters.push(m.decisions.with_label_values(&[
                            &m.vendor,
                            name,
                            scope.as_str(),
                            d,
                        ]));
                    }
                }
            }
            gauges = Some((m.queue_depth, m.keys));
        }
        Limiter {
            buckets,
            plans,
            keys: DashMap::default(),
            live: AtomicUsize::new(0),
            max_keys,
            key_slots,
            global: KeyState::new(global_slots),
            overflow: KeyState::new(key_slots),
            lines: DashMap::new(),
            // Rounded up, plus the second `seen` may have lost to truncation.
            idle_after_s: u32::try_from(idle_after.as_secs() + 2).unwrap_or(u32::MAX),
            pauses: DashMap::new(),
            pause_entries: AtomicUsize::new(0),
            counters,
            gauges,
            source,
            draining: None,
        }
    }

    /// From the start of a shutdown, requests waiting in a queue are answered at once (429
    /// with their remaining wait), so the app retries elsewhere rather than being cut at the
    /// end of the grace period.
    pub fn stop_waiting_on_shutdown(mut self, lifecycle: Arc<crate::lifecycle::Lifecycle>) -> Self {
        self.draining = Some(lifecycle);
        self
    }

    /// Whether any limit applies to this endpoint.
    pub fn applies(&self, ep: usize) -> bool {
        self.plans
            .get(ep)
            .is_some_and(|p| !p.enforce.is_empty() || !p.shadow.is_empty())
    }

    fn now(&self) -> u64 {
        u64::try_from(TokioClock::real().as_nanos()).unwrap_or(u64::MAX)
    }

    fn count(&self, ep: usize, scope: Scope, decision: usize) {
        let s = usize::from(scope == Scope::Global);
        if let Some(c) = self.counters.get((ep * 2 + s) * DECISIONS.len() + decision) {
            c.inc();
        }
    }

    /// Live keys in the table.
    pub fn keys(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Runs `f` on the state of `key` (inserted when new), or on the shared state when the
    /// plan has no per-key bucket. The key table's shard stays read-locked meanwhile, so
    /// `f` must be short and synchronous.
    fn with_key<R>(&self, plan: &Plan, key: u64, now: u64, f: impl FnOnce(&KeyState) -> R) -> R {
        if !plan.needs_key {
            return f(&self.global);
        }
        if let Some(k) = self.keys.get(&key) {
            k.touch(secs(now));
            return f(&k);
        }
        if self.live.load(Ordering::Relaxed) >= self.max_keys {
            self.overflow.touch(secs(now));
            return f(&self.overflow);
        }
        let k = self
            .keys
            .entry(key)
            .or_insert_with(|| {
                let n = self.live.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some((_, g)) = &self.gauges {
                    g.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                KeyState::new(self.key_slots)
            })
            .downgrade();
        k.touch(secs(now));
        f(&k)
    }

    /// The decision, pauses first: a paused bucket denies without looking at tokens.
    fn decide_plan(&self, plan: &Plan, id: u64, key: &KeyState, now: u64) -> Decision {
        if self.pause_entries.load(Ordering::Acquire) > 0 {
            let mut held = Denials::default();
            for (n, &i) in plan.enforce.iter().enumerate() {
                let target = match self.buckets[i].spec.scope {
                    Scope::Key => id,
                    Scope::Global => GLOBAL,
                };
                let until = self.pauses.get(&(target, i)).map_or(0, |u| *u);
                if until > now {
                    held.deny(n, Duration::from_nanos(until - now));
                }
            }
            if let Some(deny) = held.decision() {
                return deny;
            }
        }
        let checks: SmallVec<[(&Bucket<TokioClock>, &KeyState); 8]> = plan
            .enforce
            .iter()
            .map(|&i| {
                let rt = &self.buckets[i];
                let k = match rt.spec.scope {
                    Scope::Key => key,
                    Scope::Global => &self.global,
                };
                (&rt.bucket, k)
            })
            .collect();
        decide(&checks)
    }

    fn reject(&self, plan: &Plan, wait: Duration, worst: usize) -> Reject {
        let spec = plan
            .enforce
            .get(worst)
            .and_then(|&i| self.buckets.get(i))
            .map(|r| &r.spec);
        Reject {
            wait,
            limit: spec.map_or(0, |s| s.shape.rate),
            per: spec.map_or(Duration::ZERO, |s| s.shape.per),
            scope: spec.map_or(Scope::Key, |s| s.scope),
        }
    }

    fn scope_of(&self, plan: &Plan, worst: usize) -> Scope {
        plan.enforce
            .get(worst)
            .and_then(|&i| self.buckets.get(i))
            .map_or(Scope::Key, |r| r.spec.scope)
    }

    /// Queue settings when every bucket that denied is in queue mode: the smallest
    /// `max_wait` and `max_waiters` among them.
    fn queue_terms(&self, plan: &Plan, denied: u64) -> Option<(Duration, usize)> {
        let mut terms: Option<(Duration, usize)> = None;
        for (n, &i) in plan.enforce.iter().enumerate() {
            if denied & (1u64 << n) == 0 {
                continue;
            }
            let s = &self.buckets[i].spec;
            if s.mode != Mode::Queue {
                return None;
            }
            terms = Some(match terms {
                None => (s.max_wait, s.max_waiters),
                Some((w, n)) => (w.min(s.max_wait), n.min(s.max_waiters)),
            });
        }
        terms
    }

    /// Shadow buckets take a token when they have one and count when they would have
    /// rejected; they never hold the request.
    fn shadow(&self, ep: usize, plan: &Plan, key: &KeyState) {
        for &i in &plan.shadow {
            let rt = &self.buckets[i];
            let k = match rt.spec.scope {
                Scope::Key => key,
                Scope::Global => &self.global,
            };
            if decide(&[(&rt.bucket, k)]) != Decision::Allow {
                self.count(ep, rt.spec.scope, SHADOW_REJECTED);
            }
        }
    }

    /// Decides for one request of `key` (from [`KeySource::key_of`]) on endpoint `ep`,
    /// waiting in line when the denying buckets queue.
    pub async fn admit(&self, key: u64, ep: usize) -> Verdict {
        let Some(plan) = self.plans.get(ep) else {
            return Verdict::Allow;
        };
        if plan.enforce.is_empty() && plan.shadow.is_empty() {
            return Verdict::Allow;
        }
        match self.first_look(key, ep, plan) {
            Ok(v) => v,
            // Boxed: the waiting state is large and rarely needed; unboxed it would be moved
            // with every decision's future.
            Err(terms) => Box::pin(self.wait_in_line(key, ep, plan, terms)).await,
        }
    }

    /// The synchronous part of [`Limiter::admit`], on one clock reading: a verdict, or the
    /// queue terms to wait under.
    fn first_look(&self, key: u64, ep: usize, plan: &Plan) -> Result<Verdict, (Duration, usize)> {
        let frozen = Frozen::now();
        let decision = self.with_key(plan, key, frozen.nanos(), |k| {
            self.shadow(ep, plan, k);
            // Requests already waiting for this key and endpoint go first.
            if plan.queueable && self.waiting(key, ep) {
                if let Some(terms) = self.queue_terms(plan, u64::MAX) {
                    return Err(terms);
                }
            }
            Ok(self.decide_plan(plan, key, k, frozen.nanos()))
        })?;
        match decision {
            Decision::Allow => {
                let scope = if plan.needs_key {
                    Scope::Key
                } else {
                    Scope::Global
                };
                self.count(ep, scope, ALLOWED);
                Ok(Verdict::Allow)
            }
            Decision::Deny {
                wait,
                worst,
                denied,
            } => match self.queue_terms(plan, denied) {
                Some(terms) if wait <= terms.0 => Err(terms),
                _ => {
                    self.count(ep, self.scope_of(plan, worst), REJECTED);
                    Ok(Verdict::Reject(self.reject(plan, wait, worst)))
                }
            },
        }
    }

    fn waiting(&self, key: u64, ep: usize) -> bool {
        self.lines
            .get(&(key, ep))
            .is_some_and(|l| l.waiters.load(Ordering::Acquire) > 0)
    }

    /// Waits for a token behind earlier waiters of the same key and endpoint, never longer
    /// than `max_wait` in all.
    async fn wait_in_line(
        &self,
        key: u64,
        ep: usize,
        plan: &Plan,
        (max_wait, max_waiters): (Duration, usize),
    ) -> Verdict {
        let deadline = tokio::time::Instant::now() + max_wait;
        let line = self.lines.entry((key, ep)).or_default().clone();
        let ahead = line.waiters.fetch_add(1, Ordering::AcqRel);
        let scope = self.scope_of(plan, 0);
        if ahead >= max_waiters {
            self.leave(key, ep, &line);
            self.count(ep, scope, REJECTED);
            return Verdict::Reject(self.estimate(plan, ahead));
        }
        self.count(ep, scope, QUEUED);
        if let Some((q, _)) = &self.gauges {
            q.inc();
        }
        let verdict = async {
            let Ok(_turn) = tokio::time::timeout_at(deadline, line.turn.lock()).await else {
                return Verdict::Reject(self.estimate(plan, ahead));
            };
            loop {
                let decision = {
                    let frozen = Frozen::now();
                    let now = frozen.nanos();
                    self.with_key(plan, key, now, |k| self.decide_plan(plan, key, k, now))
                };
                match decision {
                    Decision::Allow => return Verdict::Allow,
                    Decision::Deny { wait, worst, .. } => {
                        if tokio::time::Instant::now() + wait > deadline {
                            return Verdict::Reject(self.reject(plan, wait, worst));
                        }
                        let until = tokio::time::Instant::now() + wait;
                        let slept = match &self.draining {
                            Some(l) => l.sleep_unless_draining(until).await,
                            None => {
                                tokio::time::sleep_until(until).await;
                                true
                            }
                        };
                        if !slept {
                            let left = until.saturating_duration_since(tokio::time::Instant::now());
                            return Verdict::Reject(self.reject(plan, left, worst));
                        }
                    }
                }
            }
        }
        .await;
        if let Some((q, _)) = &self.gauges {
            q.dec();
        }
        self.leave(key, ep, &line);
        match verdict {
            Verdict::Allow => self.count(ep, scope, ALLOWED),
            Verdict::Reject(r) => self.count(ep, r.scope, REJECTED),
        }
        verdict
    }

    fn leave(&self, key: u64, ep: usize, line: &Arc<Line>) {
        if line.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Last one out removes the line, unless someone just joined it.
            self.lines.remove_if(&(key, ep), |_, l| {
                l.waiters.load(Ordering::Acquire) == 0 && Arc::strong_count(l) <= 2
            });
        }
    }

    /// A `Retry-After` for a request turned away from a line: one emission interval of the
    /// tightest bucket per request ahead of it.
    fn estimate(&self, plan: &Plan, ahead: usize) -> Reject {
        let (worst, interval) = plan
            .enforce
            .iter()
            .map(|&i| self.buckets[i].spec.shape.interval())
            .enumerate()
            .max_by_key(|&(_, interval)| interval)
            .unwrap_or((0, Duration::from_secs(1)));
        let n = u32::try_from(ahead + 1).unwrap_or(u32::MAX);
        self.reject(plan, interval.saturating_mul(n), worst)
    }

    /// The vendor said this key is out of requests (a 429, or `remaining: 0`) for `hint`:
    /// hold the key's buckets for this endpoint until then, at most one window of each.
    pub fn pause(&self, key: u64, ep: usize, hint: Duration) {
        let Some(plan) = self.plans.get(ep) else {
            return;
        };
        let now = self.now();
        for &i in &plan.pause {
            let rt = &self.buckets[i];
            let for_ = hint.min(rt.spec.shape.per);
            let until = now.saturating_add(u64::try_from(for_.as_nanos()).unwrap_or(u64::MAX));
            let target = match rt.spec.scope {
                Scope::Key => key,
                Scope::Global => GLOBAL,
            };
            self.pauses
                .entry((target, i))
                .and_modify(|u| *u = (*u).max(until))
                .or_insert_with(|| {
                    self.pause_entries.fetch_add(1, Ordering::AcqRel);
                    until
                });
        }
    }

    /// Drops keys idle for longer than their longest window (their buckets are full again,
    /// so forgetting them changes nothing) and expired pauses. Returns the number of live
    /// keys.
    pub fn evict(&self) -> usize {
        let now = self.now();
        self.pauses.retain(|_, until| *until > now);
        self.pause_entries
            .store(self.pauses.len(), Ordering::Release);
        let (now_s, idle) = (secs(now), self.idle_after_s);
        self.keys
            .retain(|_, k| now_s.saturating_sub(k.seen()) <= idle);
        let n = self.keys.len();
        self.live.store(n, Ordering::Relaxed);
        if let Some((_, g)) = &self.gauges {
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        n
    }

    /// What the vendor said about this key's quota: a `rate_limited` answer (`limited`) or
    /// a `remaining: 0` header, with its reset hint in seconds. A rate-limited answer
    /// without a hint pauses for one second; an exhausted quota without one does nothing.
    pub fn vendor_said(&self, key: u64, ep: usize, limited: bool, hint_s: Option<u64>) {
        let hint = match (limited, hint_s) {
            (_, Some(s)) => Duration::from_secs(s),
            (true, None) => Duration::from_secs(1),
            (false, None) => return,
        };
        if hint.is_zero() {
            return;
        }
        self.pause(key, ep, hint);
    }

    /// How often eviction should run: a tenth of the idle time, between 1 s and 60 s.
    pub fn evict_every(&self) -> Duration {
        (Duration::from_secs(u64::from(self.idle_after_s)) / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

/// Background service that evicts idle keys of every vendor's limiter.
pub struct Sweeper {
    limiters: Vec<Arc<Limiter>>,
}

impl Sweeper {
    /// Sweeps these limiters until shutdown.
    pub fn new(limiters: Vec<Arc<Limiter>>) -> Self {
        Sweeper { limiters }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        let every = self
            .limiters
            .iter()
            .map(|l| l.evict_every())
            .min()
            .unwrap_or(Duration::from_secs(60));
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            for l in &self.limiters {
                l.evict();
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use prometheus::Opts;
    use tokio::time::{advance, Instant};

    fn spec(rate: u32, per_s: u64, burst: u32) -> BucketSpec {
        BucketSpec {
            shape: Shape {
                rate,
                per: Duration::from_secs(per_s),
                burst,
            },
            scope: Scope::Key,
            mode: Mode::Reject,
            max_wait: Duration::from_secs(5),
            max_waiters: 100,
            shadow: false,
        }
    }

    fn metrics() -> LimitMetrics {
        LimitMetrics {
            vendor: "v".into(),
            decisions: IntCounterVec::new(
                Opts::new("d", "d"),
                &["vendor", "endpoint", "scope", "decision"],
            )
            .unwrap(),
            queue_depth: IntGauge::new("q", "q").unwrap(),
            keys: IntGauge::new("k", "k").unwrap(),
        }
    }

    /// Endpoint 0 is `ep` with `own` limits; endpoint 1 is `other`.
    fn limiter(wide: Vec<BucketSpec>, own: Vec<BucketSpec>, m: Option<LimitMetrics>) -> Limiter {
        Limiter::new(
            &wide,
            &[own, vec![]],
            &["ep".into(), "other".into()],
            KeySource::new(http::header::AUTHORIZATION, Some("bearer".into())),
            1000,
            m,
        )
    }

    fn count(m: &IntCounterVec, scope: &str, d: &str) -> u64 {
        m.with_label_values(&["v", "ep", scope, d]).get()
    }

    async fn allowed(l: &Limiter, key: u64, ep: usize, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if l.admit(key, ep).await == Verdict::Allow {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test(start_paused = true)]
    async fn burst_then_rate_with_an_exact_retry_after() {
        // 10 per minute, burst 4: 4 at once, then one per 60 s / 7.
        let l = limiter(vec![], vec![spec(10, 60, 4)], None);
        assert_eq!(allowed(&l, 7, 0, 10).await, 4);
        let Verdict::Reject(r) = l.admit(7, 0).await else {
            panic!("should reject")
        };
        assert_eq!(r.wait, Duration::from_secs(60) / 7);
        assert_eq!((r.retry_after_s(), r.limit, r.scope), (9, 10, Scope::Key));
        advance(r.wait).await;
        assert_eq!(allowed(&l, 7, 0, 3).await, 1);
        // Another key, and the unlimited endpoint, are untouched.
        assert_eq!(allowed(&l, 8, 0, 10).await, 4);
        assert_eq!(allowed(&l, 7, 1, 50).await, 50);
    }

    #[tokio::test(start_paused = true)]
    async fn key_wide_endpoint_and_global_buckets_together() {
        let mut global = spec(6, 60, 6);
        global.scope = Scope::Global;
        let l = limiter(vec![spec(5, 60, 5), global], vec![spec(2, 60, 2)], None);
        // Endpoint bucket (2) binds on endpoint 0; denials cost the others nothing.
        assert_eq!(allowed(&l, 1, 0, 10).await, 2);
        // Key-wide (5) then has 3 left for key 1 on `other`.
        assert_eq!(allowed(&l, 1, 1, 10).await, 3);
        // Global (6) has 1 left, whoever asks.
        assert_eq!(allowed(&l, 2, 1, 10).await, 1);
        let Verdict::Reject(r) = l.admit(3, 1).await else {
            panic!("should reject")
        };
        assert_eq!(r.scope, Scope::Global);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_spreads_a_burst_and_never_waits_past_max_wait() {
        let mut s = spec(10, 10, 1); // one per 1 s after the first
        s.mode = Mode::Queue;
        s.max_wait = Duration::from_millis(3500);
        let l = Arc::new(limiter(vec![], vec![s], None));
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { (l.admit(5, 0).await, start.elapsed()) })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let mut admitted: Vec<Duration> = results
            .iter()
            .filter(|(v, _)| *v == Verdict::Allow)
            .map(|(_, at)| *at)
            .collect();
        admitted.sort();
        // At 0, 1, 2 and 3 s; the next token (4 s) is past max_wait.
        assert_eq!(admitted.len(), 4, "{results:?}");
        for (i, at) in admitted.iter().enumerate() {
            assert_eq!(at.as_secs(), i as u64, "{admitted:?}");
        }
        for (v, at) in &results {
            assert!(
                *at <= Duration::from_millis(3500),
                "{v:?} answered at {at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_line_rejects_at_once() {
        let mut s = spec(60, 60, 1);
        s.mode = Mode::Queue;
        s.max_waiters = 2;
        let m = metrics();
        let decisions = m.decisions.clone();
        let l = Arc::new(limiter(vec![], vec![s], Some(m)));
        assert_eq!(l.admit(9, 0).await, Verdict::Allow);
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.admit(9, 0).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let before = Instant::now();
        assert!(matches!(l.admit(9, 0).await, Verdict::Reject(_)));
        assert_eq!(before.elapsed(), Duration::ZERO);
        for w in waiting {
            assert_eq!(w.await.unwrap(), Verdict::Allow);
        }
        assert_eq!(count(&decisions, "key", "queued"), 2);
        assert_eq!(count(&decisions, "key", "rejected"), 1);
        assert_eq!(count(&decisions, "key", "allowed"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn shadow_counts_but_never_blocks() {
        let mut s = spec(3, 60, 3);
        s.shadow = true;
        let m = metrics();
        let decisions = m.decisions.clone();
        let l = limiter(vec![], vec![s], Some(m));
        assert_eq!(allowed(&l, 4, 0, 10).await, 10);
        assert_eq!(count(&decisions, "key", "shadow_rejected"), 7);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vendor_429_pauses_the_key_until_its_hint() {
        let l = limiter(vec![spec(100, 60, 10)], vec![spec(50, 60, 10)], None);
        assert_eq!(l.admit(1, 0).await, Verdict::Allow);
        l.vendor_said(1, 0, true, Some(30));
        let Verdict::Reject(r) = l.admit(1, 0).await else {
            panic!("should be paused")
        };
        assert_eq!(r.retry_after_s(), 30);
        // Only that key, and only the endpoint's own bucket: `other` still flows.
        assert_eq!(l.admit(2, 0).await, Verdict::Allow);
        assert_eq!(l.admit(1, 1).await, Verdict::Allow);
        advance(Duration::from_secs(30)).await;
        assert_eq!(l.admit(1, 0).await, Verdict::Allow);
        // A hint longer than the window is cut to the window; no hint pauses 1 s;
        // remaining: 0 without a hint does nothing.
        l.vendor_said(1, 0, true, Some(86_400));
        let Verdict::Reject(r) = l.admit(1, 0).await else {
            panic!("should be paused")
        };
        assert_eq!(r.retry_after_s(), 60);
        advance(Duration::from_secs(60)).await;
        l.vendor_said(1, 0, false, None);
        assert_eq!(l.admit(1, 0).await, Verdict::Allow);
        l.vendor_said(1, 0, true, None);
        assert!(matches!(l.admit(1, 0).await, Verdict::Reject(_)));
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_configured_limit_nothing_is_paused() {
        let l = limiter(vec![], vec![], None);
        assert!(!l.applies(0));
        l.vendor_said(1, 0, true, Some(30));
        assert_eq!(l.admit(1, 0).await, Verdict::Allow);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_and_the_table_is_capped() {
        let l = limiter(vec![spec(10, 60, 2)], vec![], None);
        for k in 1..=500u64 {
            l.admit(k, 0).await;
        }
        assert_eq!(l.keys(), 500);
        assert_eq!(l.evict(), 500, "nothing is idle yet");
        advance(Duration::from_secs(63)).await;
        l.admit(1, 0).await;
        assert_eq!(l.evict(), 1, "only the key used since");
        // Beyond max_keys (1000), new keys share one state: stricter, never unlimited.
        for k in 1000..2000u64 {
            l.admit(k, 0).await;
        }
        assert_eq!(l.keys(), 1000);
        // Two more keys would have a burst of 2 each; sharing, they get at most 2 together.
        let both = allowed(&l, 5000, 0, 5).await + allowed(&l, 5001, 0, 5).await;
        assert!(both <= 2, "{both}");
        assert_eq!(l.keys(), 1000);
    }
}
