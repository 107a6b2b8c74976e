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
//! Approximate: the local share is sized once, from `expected_replicas` at start-up (live
//! replicas counted later do not resize it); it is not seeded from the shared state, so a
//! hand-over can start with a share's full burst. Key-scoped and global shared buckets are
//! two store calls (one Cluster slot per account): a global token taken for a request whose
//! key bucket then denies is not given back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use smallvec::SmallVec;

use super::{BucketSpec, KeySource, LimitMetrics, Limiter, Mode, Reject, Scope, Shape, Verdict};
use crate::quota::{account_tag, QuotaStore, SharedBucket, SharedRequest, SharedVerdict};

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
    fallback: Arc<Limiter>,
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
        let n = expected_replicas;
        let fallback = Limiter::new(
            &wide.iter().map(|s| share(s, n)).collect::<Vec<_>>(),
            &eps.iter()
                .map(|e| e.iter().map(|s| share(s, n)).collect())
                .collect::<Vec<_>>(),
            endpoint_names,
            source.clone(),
            max_keys,
            metrics,
        );
        Some(SharedLimits {
            store,
            vendor: vendor.to_string(),
            secret,
            source,
            by_endpoint,
            fallback: Arc::new(fallback),
        })
    }

    /// The local-share limiter (for the idle-key sweeper).
    pub fn fallback(&self) -> &Arc<Limiter> {
        &self.fallback
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
        let Some(terms) = self.by_endpoint.get(ep).filter(|t| !t.is_empty()) else {
            return Verdict::Allow;
        };
        if self.store.in_fallback() {
            return self.fallback.admit(key, ep).await;
        }
        let account = self.account(headers);
        for scope in [Scope::Global, Scope::Key] {
            let group: SmallVec<[&Term; 4]> = terms.iter().filter(|t| t.scope == scope).collect();
            if group.is_empty() {
                continue;
            }
            let account = match scope {
                Scope::Global => "global",
                Scope::Key => account.as_str(),
            };
            match self.ask(&group, account).await {
                Ok(None) => {}
                Ok(Some(reject)) => return Verdict::Reject(reject),
                // The store is slow or down: this pod's share decides, for every bucket.
                Err(()) => return self.fallback.admit(key, ep).await,
            }
        }
        Verdict::Allow
    }

    /// One group's decision: `Ok(None)` allowed, `Ok(Some)` rejected, `Err` no answer.
    async fn ask(&self, group: &[&Term], account: &str) -> Result<Option<Reject>, ()> {
        let buckets: SmallVec<[SharedBucket<'_>; 4]> = group.iter().map(|t| t.bucket()).collect();
        let req = SharedRequest {
            vendor: &self.vendor,
            account,
            cost: 1,
            buckets: &buckets,
        };
        // Queue mode: the strictest queueing bucket's max_wait bounds the wait in all.
        let queue = group
            .iter()
            .filter(|t| t.spec.mode == Mode::Queue)
            .map(|t| t.spec.max_wait)
            .min();
        let give_up = queue.map(|w| Instant::now() + w);
        loop {
            match self.store.decide(&req).await {
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
