//! Fleet-wide concurrency limits (`{ in_flight: N, shared: true }`): at most N requests of a
//! bucket at the vendor at once across every replica, counted in the quota store as one
//! lease per attempt.
//!
//! Owns: each endpoint's shared concurrency buckets, taking their leases all or nothing (one
//! store call per bucket, given back when a later one is full), the [`Leases`] guard that
//! gives them back, and the local share used while the store cannot answer.
//!
//! Must not: put an API key in a Redis key (the account tag stands for it), or hold a lease
//! past the attempt's deadline: each lease expires by itself then, so a pod that dies holding
//! leases leaks no slot for longer than its requests would have lasted.
//!
//! Approximate: queue mode asks the store again every [`POLL`] (or sooner, when the earliest
//! lease expires sooner) until `max_wait`: waiters across the fleet are served in no
//! particular order, not FIFO. While the store cannot answer, each pod allows its local share,
//! `N / expected_replicas` rounded up (at least 1): the fleet can then exceed N by the
//! rounding, or by the leases still live in Redis when it went.

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;
use tokio::time::Instant;

use super::counters::Counters;
use super::{Full, InFlight, KeySource, LimitMetrics, Mode, Scope, SlotSpec, Slots};
use crate::quota::{account_tag, Lease, QuotaStore};

/// How often a queued request asks the store again for a slot.
pub const POLL: Duration = Duration::from_millis(25);

/// One shared concurrency bucket: its name in the store and its spec.
struct Term {
    name: String,
    spec: SlotSpec,
}

/// The shared concurrency limits of one vendor.
pub struct SharedSlots {
    store: Arc<QuotaStore>,
    vendor: Arc<str>,
    secret: Vec<u8>,
    source: KeySource,
    /// Per endpoint id, its shared buckets in a fixed order.
    by_endpoint: Vec<Vec<Arc<Term>>>,
    /// This pod's share of each bucket, used while the store cannot answer.
    fallback: InFlight,
    /// `switchboard_ratelimit_decisions_total` for the fleet's decisions (the local share
    /// counts its own).
    counters: Counters,
}

/// The leases (or local-share slots) one attempt holds; dropping it gives them back.
#[must_use = "the leases are given back when this is dropped"]
pub struct Leases {
    store: Arc<QuotaStore>,
    vendor: Arc<str>,
    held: SmallVec<[(Arc<Term>, String, String); 2]>,
    _local: Option<Slots>,
}

impl Leases {
    /// Gives every lease back (in the background).
    fn release(&mut self) {
        for (term, account, id) in self.held.drain(..) {
            self.store.release(&self.vendor, &account, &term.name, &id);
        }
    }
}

impl Drop for Leases {
    fn drop(&mut self) {
        self.release();
    }
}

/// Everything one attempt holds of its concurrency limits: this pod's slots and the fleet's
/// leases. Dropping it gives all of them back.
pub struct Held {
    /// Slots of this pod's own `in_flight` limits.
    pub local: Slots,
    /// Leases of the shared ones.
    pub fleet: Option<Leases>,
}

/// A spec's share of the fleet's slots: `N / n` rounded up, at least one.
fn share(spec: &SlotSpec, n: u32) -> SlotSpec {
    SlotSpec {
        max: spec.max.div_ceil(n.max(1)).max(1),
        ..spec.clone()
    }
}

impl SharedSlots {
    /// The shared concurrency limits among a vendor's (`None` when it has none).
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        store: Arc<QuotaStore>,
        vendor: &str,
        secret: Vec<u8>,
        source: KeySource,
        vendor_wide: &[SlotSpec],
        per_endpoint: &[Vec<SlotSpec>],
        names: &[String],
        expected_replicas: u32,
        metrics: Option<&LimitMetrics>,
    ) -> Option<Self> {
        let shared =
            |l: &[SlotSpec]| -> Vec<SlotSpec> { l.iter().filter(|s| s.shared).cloned().collect() };
        let wide = shared(vendor_wide);
        let eps: Vec<Vec<SlotSpec>> = per_endpoint.iter().map(|e| shared(e)).collect();
        if wide.is_empty() && eps.iter().all(Vec::is_empty) {
            return None;
        }
        let wide_terms: Vec<Arc<Term>> = wide
            .iter()
            .enumerate()
            .map(|(j, s)| {
                Arc::new(Term {
                    name: format!("v:{j}"),
                    spec: s.clone(),
                })
            })
            .collect();
        let by_endpoint = names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mut terms = wide_terms.clone();
                for (j, s) in eps.get(i).into_iter().flatten().enumerate() {
                    terms.push(Arc::new(Term {
                        name: format!("ep:{name}:{j}"),
                        spec: s.clone(),
                    }));
                }
                terms
            })
            .collect();
        let n = expected_replicas.max(1);
        let local_wide: Vec<SlotSpec> = wide.iter().map(|s| share(s, n)).collect();
        let local_eps: Vec<Vec<SlotSpec>> = eps
            .iter()
            .map(|e| e.iter().map(|s| share(s, n)).collect())
            .collect();
        Some(SharedSlots {
            store,
            vendor: vendor.into(),
            secret,
            source,
            by_endpoint,
            fallback: InFlight::new(&local_wide, &local_eps, names, metrics),
            counters: Counters::new(metrics, names),
        })
    }

    /// Whether endpoint `ep` has a shared concurrency limit.
    #[inline]
    pub fn applies(&self, ep: usize) -> bool {
        self.by_endpoint.get(ep).is_some_and(|t| !t.is_empty())
    }

    /// The account a request's per-key leases are counted under: a keyed hash of its API
    /// key, or `anonymous`.
    fn account(&self, headers: &http::HeaderMap, scope: Scope) -> String {
        match (scope, self.source.key(headers)) {
            (Scope::Global, _) => "global".to_string(),
            (Scope::Key, Some(k)) => account_tag(&self.secret, k),
            (Scope::Key, None) => "anonymous".to_string(),
        }
    }

    /// Takes a lease of every shared bucket of `ep`, all or nothing, each living until
    /// `until` (the request's deadline) at most. Queue-mode buckets ask again until their
    /// `max_wait`; when the store cannot answer, the local share decides. `key` is the local
    /// key hash (for the local share).
    pub async fn acquire(
        &self,
        headers: &http::HeaderMap,
        key: u64,
        ep: usize,
        until: Instant,
    ) -> Result<Leases, Full> {
        let (mut queued, mut local) = (false, false);
        let got = self
            .lease_all(headers, key, ep, until, (&mut queued, &mut local))
            .await;
        // The local share counted its own decision; the fleet's are counted here.
        let scope = self
            .by_endpoint
            .get(ep)
            .and_then(|t| t.first())
            .map_or(Scope::Key, |t| t.spec.scope);
        if !local {
            super::inflight::count_outcome(&self.counters, ep, scope, queued, &got);
        }
        got
    }

    async fn lease_all(
        &self,
        headers: &http::HeaderMap,
        key: u64,
        ep: usize,
        until: Instant,
        (queued, local): (&mut bool, &mut bool),
    ) -> Result<Leases, Full> {
        let mut leases = Leases {
            store: self.store.clone(),
            vendor: self.vendor.clone(),
            held: SmallVec::new(),
            _local: None,
        };
        let Some(terms) = self.by_endpoint.get(ep) else {
            return Ok(leases);
        };
        if self.store.in_fallback() {
            *local = true;
            leases._local = Some(self.fallback.acquire(key, ep, until, |_| {}).await?);
            return Ok(leases);
        }
        let id = format!("{:016x}", rand::random::<u64>());
        for term in terms {
            let spec = &term.spec;
            let account = self.account(headers, spec.scope);
            let give_up = match spec.mode {
                Mode::Queue => until.min(Instant::now() + spec.max_wait),
                Mode::Reject => Instant::now(),
            };
            // Held before asking: a call that times out here may still be granted in Redis,
            // and a request dropped mid-call never hears back; either way the guard's drop
            // removes the id (removing one that was never added is harmless).
            leases
                .held
                .push((term.clone(), account.clone(), id.clone()));
            loop {
                let ttl = until.saturating_duration_since(Instant::now());
                let got = self
                    .store
                    .lease(&self.vendor, &account, &term.name, spec.max, &id, ttl)
                    .await;
                match got {
                    Ok(Lease::Granted) => break,
                    Ok(Lease::Full(wait)) => {
                        if Instant::now() >= give_up {
                            return Err(Full {
                                max: spec.max,
                                scope: spec.scope,
                            });
                        }
                        *queued = true;
                        // Asked once more at `give_up` at the latest, however short max_wait is.
                        let next = (Instant::now() + wait.min(POLL)).min(give_up);
                        tokio::time::sleep_until(next).await;
                    }
                    // The store stopped answering: what was taken goes back (by `leases`'
                    // drop) and this pod's share decides the whole request.
                    Err(_) => {
                        leases.release();
                        *local = true;
                        leases._local = Some(self.fallback.acquire(key, ep, until, |_| {}).await?);
                        return Ok(leases);
                    }
                }
            }
        }
        Ok(leases)
    }
}
