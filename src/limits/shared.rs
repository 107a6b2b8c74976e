//! Limits marked `shared: true`: decided for the whole fleet in the quota store, and on this
//! pod's local share while the store cannot answer (SPEC §3, `QUOTAS.md`).
//!
//! Owns: which shared buckets apply to a request (vendor-wide and the endpoint's, per key or
//! global), their names and GCRA terms in the store, the account a request is counted
//! under (a keyed hash of its API key), waiting in queue mode between asks, and the
//! fallback limiter that enforces `rate / N` per bucket on this pod alone.
//!
//! Must not: block on the store past its timeout (the store enforces it), or hold an API key
//! anywhere but in the request's own headers.
//!
//! Hand-overs. Every answer from the store says how much of each bucket the fleet has in
//! use; the local share of that key is seeded with the same fraction, so when the store
//! stops answering each pod starts from its part of what the fleet left, not from a full
//! burst. The share is `rate / N`, N = [`QuotaStore::share_divisor`]; it is rebuilt when N
//! changes while decisions are shared (the seeds come back with the next answers). Going
//! back: for the longest shared window after the store answers again (plus two probe
//! periods, as pods find Redis again up to a probe apart), a pod that decided alone during
//! the outage also needs its local share's token, because a window that straddles the
//! recovery holds admissions Redis never saw; Redis alone decides after that.
//!
//! Approximate: a hand-over can over-admit, in the one window that straddles it, by up to
//! the shared bucket's burst: GCRA state tells how much is in use, not when it was used, so
//! the fleet's admissions just before and the local shares' just after are not one
//! sliding window. A pod's seed is the fleet's state at its own last answer (another pod's
//! later admissions are not in it). Keep `burst` small where the vendor's limit is exact.
//! The share is only resized on a shared decision after the count changed. A key idle
//! when the share is rebuilt starts the next hand-over with a full
//! share (it used nothing lately); during a fleet-wide pause the store answers no fractions,
//! so the seed is the one from before the pause. A single decision that misses the deadline
//! is decided on the local share without the breaker opening. Key-scoped and global shared
//! buckets are two store calls (one Cluster slot per account): a global token taken for a
//! request whose key bucket then denies is given back by a third (GCRA state is a sum, so
//! that is exact), unless the store fails in between; for a moment another pod may see it
//! taken.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use smallvec::SmallVec;

use super::{BucketSpec, KeySource, LimitMetrics, Limiter, Mode, Reject, Scope, Shape, Verdict};
use crate::quota::{
    account_tag, Decided, QuotaStore, SharedBucket, SharedRequest, SharedVerdict, PROBE_EVERY,
};

/// One shared bucket as the store sees it.
#[derive(Debug, Clone)]
struct Term {
    name: String,
    scope: Scope,
    interval_us: u64,
    tolerance_us: u64,
    spec: BucketSpec,
}

impl Term {
    fn new(name: String, spec: &BucketSpec) -> Self {
        let sh = &spec.shape;
        // The store's own rounding (up, to whole µs), so the window guarantee holds there.
        let (interval_us, tolerance_us) =
            SharedBucket::from_shape(&name, sh.rate, sh.per, sh.burst)
                .map_or((u64::MAX, 0), |b| (b.interval_us, b.tolerance_us));
        Term {
            name,
            scope: spec.scope,
            interval_us,
            tolerance_us,
            spec: spec.clone(),
        }
    }

    /// The fraction of this bucket's capacity a `debt` (µs of TAT ahead of now) stands for.
    fn used(&self, debt_us: u64) -> f64 {
        let capacity = self.interval_us.saturating_add(self.tolerance_us).max(1);
        debt_us as f64 / capacity as f64
    }

    fn bucket(&self) -> SharedBucket<'_> {
        SharedBucket {
            name: &self.name,
            interval_us: self.interval_us,
            tolerance_us: self.tolerance_us,
        }
    }
}

/// A vendor's shared limits.
pub struct SharedLimits {
    store: Arc<QuotaStore>,
    vendor: String,
    /// The keyed hash's secret (the store's password when set): the same on every replica,
    /// so one key is one account fleet-wide.
    secret: Vec<u8>,
    source: KeySource,
    /// The shared buckets of each endpoint (vendor-wide ones included).
    by_endpoint: Vec<Vec<Term>>,
    /// This pod's share, enforced while the store cannot answer.
    local: Arc<LocalShare>,
    /// `shared_period() + 1` of the store when this pod last decided alone: a request then
    /// needs its local share's token too until the window after recovery has passed.
    alone_before: AtomicU64,
    /// The longest window of the shared buckets: how long that lasts.
    longest_per: Duration,
}

/// This pod's share of every shared bucket, as a [`Limiter`], rebuilt when N changes.
pub struct LocalShare {
    current: ArcSwap<Share>,
    build: ShareSpecs,
}

/// One build of the local share.
struct Share {
    n: u32,
    limiter: Arc<Limiter>,
}

/// What a local share is built from.
struct ShareSpecs {
    wide: Vec<BucketSpec>,
    eps: Vec<Vec<BucketSpec>>,
    endpoint_names: Vec<String>,
    source: KeySource,
    max_keys: usize,
    metrics: Option<LimitMetrics>,
}

impl ShareSpecs {
    fn build(&self, n: u32) -> Share {
        let limiter = Limiter::new(
            &self.wide.iter().map(|s| share(s, n)).collect::<Vec<_>>(),
            &self
                .eps
                .iter()
                .map(|e| e.iter().map(|s| share(s, n)).collect())
                .collect::<Vec<_>>(),
            &self.endpoint_names,
            self.source.clone(),
            self.max_keys,
            self.metrics.clone(),
        );
        Share {
            n,
            limiter: Arc::new(limiter),
        }
    }
}

impl LocalShare {
    /// The share in force.
    pub fn limiter(&self) -> Arc<Limiter> {
        self.current.load().limiter.clone()
    }

    /// The share for `n` replicas, rebuilt (empty) when it was sized for another N.
    fn resize(&self, n: u32) {
        let now = self.current.load();
        if now.n != n {
            tracing::info!(
                vendor = %self.build.metrics.as_ref().map_or("", |m| m.vendor.as_str()),
                replicas = n,
                "local share of shared limits resized"
            );
            self.current.store(Arc::new(self.build.build(n)));
        }
    }
}

impl super::Sweep for LocalShare {
    fn evict(&self) -> usize {
        self.current.load().limiter.evict()
    }

    fn evict_every(&self) -> Duration {
        self.current.load().limiter.evict_every()
    }
}

/// Only the shared specs of a list.
fn shared_of(specs: &[BucketSpec]) -> Vec<BucketSpec> {
    specs.iter().filter(|s| s.shared).cloned().collect()
}

/// A spec's share of the fleet's quota: `rate / n` with a burst to match, never below one.
fn share(spec: &BucketSpec, n: u32) -> BucketSpec {
    let n = n.max(1);
    let rate = (spec.shape.rate / n).max(1);
    let burst = (spec.shape.burst / n).clamp(1, rate);
    BucketSpec {
        shape: Shape {
            rate,
            per: spec.shape.per,
            burst,
        },
        ..spec.clone()
    }
}

impl SharedLimits {
    /// The shared limits among a vendor's, or `None` when it has none. `metrics` count the
    /// local share's decisions like the pod's own; `secret` keys the account hash.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<QuotaStore>,
        vendor: &str,
        secret: Vec<u8>,
        vendor_wide: &[BucketSpec],
        per_endpoint: &[Vec<BucketSpec>],
        endpoint_names: &[String],
        source: KeySource,
        max_keys: usize,
        expected_replicas: u32,
        metrics: Option<LimitMetrics>,
    ) -> Option<Self> {
        let wide = shared_of(vendor_wide);
        let eps: Vec<Vec<BucketSpec>> = per_endpoint.iter().map(|e| shared_of(e)).collect();
        if wide.is_empty() && eps.iter().all(Vec::is_empty) {
            return None;
        }
        // One entry per endpoint name (`other` last, usually with no list of its own).
        let none = Vec::new();
        let by_endpoint = endpoint_names
            .iter()
            .enumerate()
            .map(|(i, name)| (eps.get(i).unwrap_or(&none), name))
            .map(|(ep, name)| {
                let mut terms: Vec<Term> = wide
                    .iter()
                    .enumerate()
                    .map(|(j, s)| Term::new(format!("v:{j}"), s))
                    .collect();
                terms.extend(
                    ep.iter()
                        .enumerate()
                        .map(|(j, s)| Term::new(format!("ep:{name}:{j}"), s)),
                );
                terms
            })
            .collect();
        let longest_per = wide
            .iter()
            .chain(eps.iter().flatten())
            .map(|s| s.shape.per)
            .max()
            .unwrap_or_default();
        let build = ShareSpecs {
            wide,
            eps,
            endpoint_names: endpoint_names.to_vec(),
            source: source.clone(),
            max_keys,
            metrics,
        };
        let first = build.build(expected_replicas.max(1));
        Some(SharedLimits {
            store,
            vendor: vendor.to_string(),
            secret,
            source,
            by_endpoint,
            local: Arc::new(LocalShare {
                current: ArcSwap::from_pointee(first),
                build,
            }),
            alone_before: AtomicU64::new(0),
            longest_per,
        })
    }

    /// The local share (for the idle-key sweeper).
    pub fn local_share(&self) -> &Arc<LocalShare> {
        &self.local
    }

    /// The local share's limiter in force (a vendor 429 pauses it like the pod's own).
    pub fn fallback(&self) -> Arc<Limiter> {
        self.local.limiter()
    }

    /// Decides on the local share alone, remembering that this pod did.
    async fn alone(&self, key: u64, ep: usize, cost: u32) -> Verdict {
        let period = self.store.shared_period() + 1;
        if self.alone_before.load(Ordering::Relaxed) != period {
            self.alone_before.store(period, Ordering::Relaxed);
        }
        let local = self.local.limiter();
        local.admit_n(key, ep, share_cost(&local, ep, cost)).await
    }

    /// The most tokens one request of endpoint `ep` can ever take: the smallest `burst` of
    /// its shared buckets (`None` when it has none).
    pub fn most_cost(&self, ep: usize) -> Option<u32> {
        self.by_endpoint
            .get(ep)?
            .iter()
            .map(|t| t.spec.shape.burst)
            .min()
    }

    /// True for the longest window after the store came back, when this pod decided alone
    /// before: its own decisions of that window are not in Redis.
    fn recovering(&self) -> bool {
        let period = self.store.shared_period();
        self.alone_before.load(Ordering::Relaxed) == period
            && period > 0
            && self.store.shared_for() < self.longest_per + 2 * PROBE_EVERY
    }

    /// Whether any shared limit applies to endpoint `ep`.
    pub fn applies(&self, ep: usize) -> bool {
        self.by_endpoint.get(ep).is_some_and(|t| !t.is_empty())
    }

    /// The account a request is counted under: a keyed hash of its API key, or
    /// `anonymous`; `global` for global buckets.
    fn account(&self, headers: &http::HeaderMap) -> String {
        match self.source.key(headers) {
            Some(k) => account_tag(&self.secret, k),
            None => "anonymous".to_string(),
        }
    }

    /// Decides a request against the endpoint's shared buckets: the store's answer, waited
    /// for in queue mode (asking again after the wait it names, within `max_wait`), or the
    /// local share's when the store cannot answer in time. `key` is the local bucket key
    /// (for the local share).
    pub async fn admit(&self, headers: &http::HeaderMap, key: u64, ep: usize) -> Verdict {
        self.admit_n(headers, key, ep, 1).await
    }

    /// [`SharedLimits::admit`] for a request of `cost` tokens of each bucket.
    pub async fn admit_n(
        &self,
        headers: &http::HeaderMap,
        key: u64,
        ep: usize,
        cost: u32,
    ) -> Verdict {
        let Some(terms) = self.by_endpoint.get(ep).filter(|t| !t.is_empty()) else {
            return Verdict::Allow;
        };
        if self.store.in_fallback() {
            return self.alone(key, ep, cost).await;
        }
        if self.recovering() {
            let local = self.local.limiter();
            if let Verdict::Reject(r) = local.admit_n(key, ep, share_cost(&local, ep, cost)).await {
                return Verdict::Reject(r);
            }
        } else {
            self.local.resize(self.store.share_divisor());
        }
        let account = self.account(headers);
        let mut granted: SmallVec<[&Term; 4]> = SmallVec::new();
        for scope in [Scope::Global, Scope::Key] {
            let group: SmallVec<[&Term; 4]> = terms.iter().filter(|t| t.scope == scope).collect();
            if group.is_empty() {
                continue;
            }
            let account = match scope {
                Scope::Global => "global",
                Scope::Key => account.as_str(),
            };
            match self.ask(&group, account, (key, ep, scope), cost).await {
                Ok(None) => granted = group,
                Ok(Some(reject)) => {
                    // All or nothing across both calls: the global tokens go back.
                    if !granted.is_empty() {
                        self.give_back(&granted, "global", cost).await;
                    }
                    return Verdict::Reject(reject);
                }
                // The store is slow or down: this pod's share decides, for every bucket.
                Err(()) => return self.alone(key, ep, cost).await,
            }
        }
        Verdict::Allow
    }

    /// One request's call to the store: `buckets` of `account`, `cost` tokens each.
    fn request<'a>(
        &'a self,
        account: &'a str,
        buckets: &'a [SharedBucket<'a>],
        cost: u32,
    ) -> SharedRequest<'a> {
        SharedRequest {
            vendor: &self.vendor,
            account,
            cost: u64::from(cost),
            buckets,
        }
    }

    /// Returns what an allowed group took (best effort: a failure leaves it taken, which is
    /// stricter, never looser).
    async fn give_back(&self, group: &[&Term], account: &str, cost: u32) {
        let buckets = buckets_of(group);
        let _ = self
            .store
            .refund(&self.request(account, &buckets, cost))
            .await;
    }

    /// One group's decision: `Ok(None)` allowed, `Ok(Some)` rejected, `Err` no answer. Each
    /// answer seeds the local share of `(key, ep, scope)`.
    async fn ask(
        &self,
        group: &[&Term],
        account: &str,
        (key, ep, scope): (u64, usize, Scope),
        cost: u32,
    ) -> Result<Option<Reject>, ()> {
        let buckets = buckets_of(group);
        let req = self.request(account, &buckets, cost);
        // Queue mode: the strictest queueing bucket's max_wait bounds the wait in all.
        let queue = group
            .iter()
            .filter(|t| t.spec.mode == Mode::Queue)
            .map(|t| t.spec.max_wait)
            .min();
        let give_up = queue.map(|w| Instant::now() + w);
        loop {
            let decided = self.store.decided(&req).await;
            if let Ok(Decided { debts_us, .. }) = &decided {
                if !debts_us.is_empty() {
                    let used = group.iter().zip(debts_us).map(|(t, &d)| t.used(d));
                    self.local.limiter().seed(key, ep, scope, used);
                }
            }
            match decided.map(|d| d.verdict) {
                Ok(SharedVerdict::Allow) => return Ok(None),
                Ok(SharedVerdict::Wait(wait)) => {
                    let now = Instant::now();
                    match give_up {
                        Some(end) if now + wait <= end => tokio::time::sleep(wait).await,
                        _ => return Ok(Some(reject(group, wait))),
                    }
                }
                Err(_) => return Err(()),
            }
        }
    }

    /// Tells every replica that the vendor said this key is over its limit, until `for_`.
    pub async fn pause(&self, headers: &http::HeaderMap, for_: Duration) {
        let account = self.account(headers);
        // Best effort: when the store cannot take it, this pod's own pause still holds.
        let _ = self.store.pause(&self.vendor, &account, for_).await;
    }
}

/// What a request of `cost` takes of the local share: at most the share's burst. The share
/// is the fleet's burst divided by the replicas, so a cost the fleet admits could exceed it
/// and be refused for the whole outage; clamped, it takes the whole share instead.
fn share_cost(local: &Limiter, ep: usize, cost: u32) -> u32 {
    local.most_cost(ep).map_or(cost, |most| cost.min(most))
}

/// A group's buckets as the store takes them.
fn buckets_of<'a>(group: &[&'a Term]) -> SmallVec<[SharedBucket<'a>; 4]> {
    group.iter().map(|t| t.bucket()).collect()
}

/// The 429's terms for a shared denial: the tightest bucket of the group.
fn reject(group: &[&Term], wait: Duration) -> Reject {
    let tightest = group
        .iter()
        .min_by_key(|t| t.spec.shape.interval())
        .map(|t| &t.spec);
    Reject {
        wait,
        limit: tightest.map_or(0, |s| s.shape.rate),
        per: tightest.map_or(Duration::from_secs(1), |s| s.shape.per),
        scope: tightest.map_or(Scope::Key, |s| s.scope),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_divides_rate_and_burst_but_never_below_one() {
        let spec = super::super::BucketSpec {
            shape: Shape {
                rate: 30,
                per: Duration::from_secs(3),
                burst: 6,
            },
            scope: Scope::Key,
            mode: Mode::Reject,
            max_wait: Duration::from_secs(5),
            max_waiters: 100,
            shadow: false,
            shared: true,
        };
        let s = share(&spec, 3);
        assert_eq!((s.shape.rate, s.shape.burst), (10, 2));
        let s = share(&spec, 100);
        assert_eq!((s.shape.rate, s.shape.burst), (1, 1));
        assert!(s.shape.quota().is_some());
    }
}
