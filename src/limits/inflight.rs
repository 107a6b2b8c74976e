//! Concurrency limits (`{ in_flight: N }`): at most N requests of a bucket at the vendor at
//! once — Twilio's 20429 counts concurrent requests per account, Plivo caps concurrent calls.
//!
//! Owns: one counting semaphore per bucket and key (per-key buckets) or per bucket (global
//! ones), the all-or-nothing acquisition of every bucket an endpoint goes through, and the
//! [`Slots`] guard that gives them back. A slot is taken for one attempt — from just before
//! the request is sent until the vendor's answer is complete (a streamed body included) or
//! the attempt fails — and released when the guard drops, on every path: the answer done,
//! the client gone, a timeout, shutdown, the request's future cancelled. A retry takes its
//! slots again.
//!
//! Must not: see an API key (only [`super::KeySource::key_of`]'s hash); hold a key's
//! semaphore once nobody holds or waits for it (the table would grow with every key ever
//! seen).
//!
//! Approximate: a queued request waits in FIFO order per semaphore (tokio's semaphore is
//! fair); with two buckets (vendor-wide and endpoint) it waits for them one after the other,
//! in a fixed order, so two requests never hold each other's second slot.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use smallvec::SmallVec;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::counters::{Counted, Counters};
use super::{LimitMetrics, Mode, Scope};

/// One configured concurrency limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotSpec {
    /// Most requests of the bucket at the vendor at once.
    pub max: u32,
    /// Per key or shared by every key.
    pub scope: Scope,
    /// Reject at once, or wait for a slot.
    pub mode: Mode,
    /// Longest a request waits for a slot (queue mode).
    pub max_wait: Duration,
    /// Most requests waiting for one semaphore (queue mode).
    pub max_waiters: usize,
    /// Count what would be refused, never block.
    pub shadow: bool,
    /// Counted for the whole fleet in the quota store (a lease per attempt), not here.
    pub shared: bool,
}

/// Why no slot was given.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full {
    /// The limit that was full.
    pub max: u32,
    /// Whose requests it counts.
    pub scope: Scope,
}

/// A semaphore and how many wait on it.
struct Gate {
    sem: Arc<Semaphore>,
    waiting: AtomicUsize,
}

impl Gate {
    fn new(max: u32) -> Arc<Gate> {
        Arc::new(Gate {
            sem: Arc::new(Semaphore::new(max as usize)),
            waiting: AtomicUsize::new(0),
        })
    }
}

/// A request waiting for one gate: counted in its line while this lives, and the key's gate
/// tidied away when it goes, on every path.
struct Waiting<'a> {
    bucket: &'a Bucket,
    key: u64,
    gate: Option<Arc<Gate>>,
    /// How many were waiting before this one.
    ahead: usize,
}

impl<'a> Waiting<'a> {
    fn join(bucket: &'a Bucket, key: u64, gate: Arc<Gate>) -> Self {
        let ahead = gate.waiting.fetch_add(1, Ordering::AcqRel);
        Waiting {
            bucket,
            key,
            gate: Some(gate),
            ahead,
        }
    }

    /// The gate waited for (`None` only once dropped).
    fn gate(&self) -> Option<&Gate> {
        self.gate.as_deref()
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.gate.take() {
            g.waiting.fetch_sub(1, Ordering::AcqRel);
            drop(g);
            self.bucket.tidy(self.key);
        }
    }
}

/// One concurrency bucket as it runs.
struct Bucket {
    spec: SlotSpec,
    /// Where the config has it (vendor-wide or an endpoint's, and its place): what makes it
    /// the same limit across a reload.
    origin: (Option<String>, usize),
    global: Arc<Gate>,
    per_key: DashMap<u64, Arc<Gate>>,
}

impl Bucket {
    fn gate(&self, key: u64) -> Arc<Gate> {
        match self.spec.scope {
            Scope::Global => self.global.clone(),
            Scope::Key => self
                .per_key
                .entry(key)
                .or_insert_with(|| Gate::new(self.spec.max))
                .clone(),
        }
    }

    /// Drops `key`'s gate when nobody holds a slot of it or waits for it (the map's own
    /// reference is the last).
    fn tidy(&self, key: u64) {
        if self.spec.scope == Scope::Key {
            self.per_key.remove_if(&key, |_, g| {
                Arc::strong_count(g) == 1 && Arc::strong_count(&g.sem) == 1
            });
        }
    }
}

/// Every concurrency bucket of one vendor, and which an endpoint goes through.
#[derive(Default)]
pub struct InFlight {
    buckets: Vec<Arc<Bucket>>,
    /// Per endpoint (by id), the buckets it goes through, in a fixed order.
    by_endpoint: Vec<SmallVec<[usize; 2]>>,
    /// `switchboard_ratelimit_decisions_total`, one count per request and outcome.
    counters: Counters,
    /// Tells queued requests that shutdown started (they are answered at once).
    draining: Option<Arc<crate::lifecycle::Lifecycle>>,
}

/// The slots one attempt holds; dropping it gives them back.
#[must_use = "the slots are released when this is dropped"]
pub struct Slots {
    held: SmallVec<[Held; 2]>,
}

/// One bucket's slot for one key; `None` where a shadow bucket was full.
type Held = (Arc<Bucket>, u64, Option<OwnedSemaphorePermit>);

impl Drop for Slots {
    fn drop(&mut self) {
        for (bucket, key, permit) in self.held.drain(..) {
            drop(permit);
            bucket.tidy(key);
        }
    }
}

impl Slots {
    /// Holds nothing.
    pub fn none() -> Slots {
        Slots {
            held: SmallVec::new(),
        }
    }
}

impl InFlight {
    /// `vendor_wide` limits apply to every endpoint; `per_endpoint[i]` to endpoint `i`
    /// (endpoint ids index `names`, the last being `other`).
    pub fn new(
        vendor_wide: &[SlotSpec],
        per_endpoint: &[Vec<SlotSpec>],
        names: &[String],
        metrics: Option<&LimitMetrics>,
    ) -> Self {
        let mut buckets = Vec::new();
        let mut add = |spec: &SlotSpec, origin: (Option<String>, usize)| {
            buckets.push(Arc::new(Bucket {
                spec: spec.clone(),
                origin,
                global: Gate::new(spec.max),
                per_key: DashMap::new(),
            }));
            buckets.len() - 1
        };
        let wide: Vec<usize> = vendor_wide
            .iter()
            .enumerate()
            .map(|(j, s)| add(s, (None, j)))
            .collect();
        let mut by_endpoint = Vec::with_capacity(names.len());
        for (ep, name) in names.iter().enumerate() {
            let mut mine: SmallVec<[usize; 2]> = wide.iter().copied().collect();
            for (j, s) in per_endpoint.get(ep).into_iter().flatten().enumerate() {
                mine.push(add(s, (Some(name.clone()), j)));
            }
            by_endpoint.push(mine);
        }
        InFlight {
            buckets,
            by_endpoint,
            counters: Counters::new(metrics, names),
            draining: None,
        }
    }

    /// Queued requests give up at once when `lifecycle` starts draining.
    pub fn stop_waiting_on_shutdown(mut self, lifecycle: Arc<crate::lifecycle::Lifecycle>) -> Self {
        self.draining = Some(lifecycle);
        self
    }

    /// Keeps the state of every limit that is the same in `before` (same place in the
    /// config, same spec), so requests at the vendor across a reload still count; a changed
    /// or new limit starts empty.
    pub fn taking_over(mut self, before: &InFlight) -> Self {
        for b in &mut self.buckets {
            if let Some(old) = before
                .buckets
                .iter()
                .find(|o| o.origin == b.origin && o.spec == b.spec)
            {
                *b = old.clone();
            }
        }
        self
    }

    /// Whether endpoint `ep` has a concurrency limit at all.
    #[inline]
    pub fn applies(&self, ep: usize) -> bool {
        self.by_endpoint.get(ep).is_some_and(|b| !b.is_empty())
    }

    /// Takes a slot of every bucket of `ep` for `key`, all or nothing. Queue-mode buckets
    /// wait up to their `max_wait`, never past `until`. Shadow buckets count a refusal
    /// (`shadow_full` is told) and let the request through. Each request is counted once
    /// per outcome (`queued` when it waited, then `allowed` or `rejected`).
    pub async fn acquire(
        &self,
        key: u64,
        ep: usize,
        until: Instant,
        shadow_full: impl FnMut(Full),
    ) -> Result<Slots, Full> {
        if !self.applies(ep) {
            return Ok(Slots::none());
        }
        let scope = self
            .by_endpoint
            .get(ep)
            .and_then(|l| l.first())
            .map_or(Scope::Key, |&i| self.buckets[i].spec.scope);
        let mut queued = false;
        let got = self.take(key, ep, until, shadow_full, &mut queued).await;
        count_outcome(&self.counters, ep, scope, queued, &got);
        got
    }

    async fn take(
        &self,
        key: u64,
        ep: usize,
        until: Instant,
        mut shadow_full: impl FnMut(Full),
        queued: &mut bool,
    ) -> Result<Slots, Full> {
        let mut slots = Slots::none();
        let Some(list) = self.by_endpoint.get(ep) else {
            return Ok(slots);
        };
        for &i in list {
            let bucket = &self.buckets[i];
            let spec = &bucket.spec;
            let full = Full {
                max: spec.max,
                scope: spec.scope,
            };
            let gate = bucket.gate(key);
            let permit = match gate.sem.clone().try_acquire_owned() {
                Err(_) if spec.shadow => {
                    drop(gate);
                    self.counters.count(ep, spec.scope, Counted::ShadowRejected);
                    shadow_full(full);
                    None
                }
                Err(_) if spec.mode == Mode::Reject => {
                    drop(gate);
                    bucket.tidy(key);
                    return Err(full);
                }
                Ok(p) => {
                    drop(gate);
                    Some(p)
                }
                Err(_) => {
                    // Counted as waiting until this is dropped, however the wait ends (a
                    // cancelled request included); the key's gate is tidied then too.
                    let line = Waiting::join(bucket, key, gate);
                    if line.ahead >= spec.max_waiters {
                        return Err(full);
                    }
                    *queued = true;
                    let by = until.min(Instant::now() + spec.max_wait);
                    let Some(g) = line.gate() else {
                        return Err(full);
                    };
                    let wait = g.sem.clone().acquire_owned();
                    let got = match &self.draining {
                        // A shutdown answers the waiters at once, as the rate limiter's do.
                        Some(l) => tokio::select! {
                            p = wait => p.ok(),
                            _ = l.sleep_unless_draining(by) => None,
                        },
                        None => tokio::time::timeout_at(by, wait)
                            .await
                            .ok()
                            .and_then(Result::ok),
                    };
                    match got {
                        Some(p) => Some(p),
                        None => return Err(full),
                    }
                }
            };
            slots.held.push((bucket.clone(), key, permit));
        }
        Ok(slots)
    }

    /// Slots taken now of endpoint `ep`'s buckets for `key`.
    #[cfg(test)]
    fn held(&self, key: u64, ep: usize) -> Vec<u32> {
        self.by_endpoint
            .get(ep)
            .into_iter()
            .flatten()
            .map(|&i| {
                let b = &self.buckets[i];
                let free = match b.spec.scope {
                    Scope::Global => b.global.sem.available_permits(),
                    Scope::Key => b
                        .per_key
                        .get(&key)
                        .map_or(b.spec.max as usize, |g| g.sem.available_permits()),
                };
                b.spec.max.saturating_sub(free as u32)
            })
            .collect()
    }

    /// How many keys have a gate now (the table only holds keys in flight or waiting).
    #[cfg(test)]
    fn keys(&self) -> usize {
        self.buckets.iter().map(|b| b.per_key.len()).sum()
    }
}

/// Counts one request's concurrency decision: `queued` when it waited, then `allowed` (under
/// `scope`) or `rejected` (under the full bucket's scope).
pub(super) fn count_outcome<T>(
    counters: &Counters,
    ep: usize,
    scope: Scope,
    queued: bool,
    got: &Result<T, Full>,
) {
    if queued {
        counters.count(ep, scope, Counted::Queued);
    }
    match got {
        Ok(_) => counters.count(ep, scope, Counted::Allowed),
        Err(full) => counters.count(ep, full.scope, Counted::Rejected),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(max: u32, scope: Scope, mode: Mode) -> SlotSpec {
        SlotSpec {
            max,
            scope,
            mode,
            max_wait: Duration::from_secs(5),
            max_waiters: 100,
            shadow: false,
            shared: false,
        }
    }

    fn names() -> Vec<String> {
        vec!["calls".into(), "other".into()]
    }

    fn far() -> Instant {
        Instant::now() + Duration::from_secs(60)
    }

    #[tokio::test]
    async fn reject_mode_refuses_past_the_limit_and_frees_on_drop() {
        let f = InFlight::new(&[spec(2, Scope::Key, Mode::Reject)], &[], &names(), None);
        let a = f.acquire(7, 0, far(), |_| {}).await;
        let b = f.acquire(7, 0, far(), |_| {}).await;
        assert!(a.is_ok() && b.is_ok());
        let c = f.acquire(7, 0, far(), |_| {}).await;
        assert_eq!(
            c.err(),
            Some(Full {
                max: 2,
                scope: Scope::Key
            })
        );
        // Another key has its own slots.
        let other = f.acquire(8, 0, far(), |_| {}).await;
        assert!(other.is_ok());
        assert_eq!(f.held(7, 0), vec![2]);
        drop(a);
        assert_eq!(f.held(7, 0), vec![1]);
        assert!(f.acquire(7, 0, far(), |_| {}).await.is_ok());
        drop((b, other));
        // Nobody holds or waits: the keys' gates are gone.
        assert_eq!(f.keys(), 0);
    }

    #[tokio::test]
    async fn all_or_nothing_across_buckets() {
        let f = InFlight::new(
            &[spec(3, Scope::Global, Mode::Reject)],
            &[vec![spec(1, Scope::Key, Mode::Reject)]],
            &names(),
            None,
        );
        let a = f.acquire(1, 0, far(), |_| {}).await;
        assert!(a.is_ok());
        assert!(f.acquire(1, 0, far(), |_| {}).await.is_err());
        // The refused request gave back the global slot it took first.
        assert_eq!(f.held(1, 0), vec![1, 1]);
        // `other` goes through the vendor-wide bucket only.
        assert_eq!(f.held(1, 1), vec![1]);
    }

    #[tokio::test(start_paused = true)]
    async fn queue_mode_waits_in_order_and_gives_up_at_max_wait() {
        let mut s = spec(1, Scope::Global, Mode::Queue);
        s.max_wait = Duration::from_secs(2);
        let f = Arc::new(InFlight::new(&[s], &[], &names(), None));
        let first = f.acquire(1, 0, far(), |_| {}).await.ok();
        let f2 = f.clone();
        let waiter = tokio::spawn(async move { f2.acquire(1, 0, far(), |_| {}).await.is_ok() });
        tokio::time::sleep(Duration::from_secs(1)).await;
        drop(first);
        assert!(waiter.await.unwrap_or(false), "served once the slot freed");
        let held = f.acquire(1, 0, far(), |_| {}).await.ok();
        let t = Instant::now();
        assert!(f.acquire(1, 0, far(), |_| {}).await.is_err());
        assert_eq!(t.elapsed(), Duration::from_secs(2));
        // The request's own deadline, when sooner, ends the wait.
        let t = Instant::now();
        let soon = Instant::now() + Duration::from_millis(300);
        assert!(f.acquire(1, 0, soon, |_| {}).await.is_err());
        assert_eq!(t.elapsed(), Duration::from_millis(300));
        drop(held);
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_line_is_refused_at_once() {
        let mut s = spec(1, Scope::Key, Mode::Queue);
        s.max_waiters = 1;
        let f = Arc::new(InFlight::new(&[s], &[], &names(), None));
        let _held = f.acquire(1, 0, far(), |_| {}).await.ok();
        let f2 = f.clone();
        let _waiting = tokio::spawn(async move { f2.acquire(1, 0, far(), |_| {}).await.is_ok() });
        tokio::task::yield_now().await;
        let t = Instant::now();
        assert!(f.acquire(1, 0, far(), |_| {}).await.is_err());
        assert_eq!(t.elapsed(), Duration::ZERO);
    }

    #[tokio::test]
    async fn shadow_counts_and_lets_through() {
        let mut s = spec(1, Scope::Global, Mode::Reject);
        s.shadow = true;
        let f = InFlight::new(&[s], &[], &names(), None);
        let _a = f.acquire(1, 0, far(), |_| {}).await;
        let mut told = 0;
        assert!(f.acquire(1, 0, far(), |_| told += 1).await.is_ok());
        assert_eq!(told, 1);
    }

    #[tokio::test]
    async fn a_cancelled_wait_leaves_nothing_behind() {
        let f = Arc::new(InFlight::new(
            &[spec(1, Scope::Key, Mode::Queue)],
            &[],
            &names(),
            None,
        ));
        let held = f.acquire(5, 0, far(), |_| {}).await.ok();
        let f2 = f.clone();
        let waiter = tokio::spawn(async move { f2.acquire(5, 0, far(), |_| {}).await.is_ok() });
        tokio::task::yield_now().await;
        waiter.abort();
        let _ = waiter.await;
        drop(held);
        assert_eq!(f.keys(), 0, "no gate kept for a key nobody uses");
        assert!(f.acquire(5, 0, far(), |_| {}).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_its_place_in_a_global_line() {
        let mut s = spec(1, Scope::Global, Mode::Queue);
        s.max_waiters = 1;
        let f = Arc::new(InFlight::new(&[s], &[], &names(), None));
        let held = f.acquire(1, 0, far(), |_| {}).await.ok();
        for _ in 0..3 {
            let f2 = f.clone();
            let waiter = tokio::spawn(async move { f2.acquire(1, 0, far(), |_| {}).await.is_ok() });
            tokio::task::yield_now().await;
            waiter.abort();
            let _ = waiter.await;
        }
        // Three waiters gone: the line of one is empty again, so the next one waits (and is
        // served when the slot frees) instead of being refused at once.
        let f2 = f.clone();
        let next = tokio::spawn(async move { f2.acquire(1, 0, far(), |_| {}).await.is_ok() });
        tokio::task::yield_now().await;
        drop(held);
        assert!(next.await.unwrap_or(false));
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_answers_the_waiters_at_once() {
        let life = crate::lifecycle::Lifecycle::new();
        let f = Arc::new(
            InFlight::new(&[spec(1, Scope::Key, Mode::Queue)], &[], &names(), None)
                .stop_waiting_on_shutdown(life.clone()),
        );
        let _held = f.acquire(1, 0, far(), |_| {}).await.ok();
        let f2 = f.clone();
        let t = Instant::now();
        let waiter = tokio::spawn(async move { f2.acquire(1, 0, far(), |_| {}).await.is_ok() });
        tokio::time::sleep(Duration::from_millis(100)).await;
        life.start_draining();
        assert!(!waiter.await.unwrap_or(true), "refused, not served");
        assert!(t.elapsed() < Duration::from_secs(1), "not held to max_wait");
    }

    #[tokio::test]
    async fn a_reload_keeps_the_same_limits_slots() {
        let before = InFlight::new(&[spec(1, Scope::Global, Mode::Reject)], &[], &names(), None);
        let _held = before.acquire(1, 0, far(), |_| {}).await.ok();
        let same = InFlight::new(&[spec(1, Scope::Global, Mode::Reject)], &[], &names(), None)
            .taking_over(&before);
        assert!(
            same.acquire(1, 0, far(), |_| {}).await.is_err(),
            "still counted"
        );
        let raised = InFlight::new(&[spec(2, Scope::Global, Mode::Reject)], &[], &names(), None)
            .taking_over(&before);
        assert!(
            raised.acquire(1, 0, far(), |_| {}).await.is_ok(),
            "a changed limit starts empty"
        );
    }
}
