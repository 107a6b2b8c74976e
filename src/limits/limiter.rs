//! One vendor's limiter: puts the parts together and makes each request's decision.
//!
//! Owns: [`Limiter`] and the order of a decision — one clock reading; the key's state; shadow
//! buckets; behind anyone already waiting; pauses before tokens; all or nothing across the
//! enforced buckets; then allow, reject, or wait in line — and the metrics of each outcome.
//!
//! Must not: allocate, lock (beyond the key table's shard read lock) or hash more than once
//! per decision on the allow/reject path; hold a frozen clock or a shard lock across an
//! `.await`; build responses (a denial is returned as facts, see `verdict`).
//!
//! Approximate: what the parts say: GCRA state under races (`gcra`), the key cap
//! (`table`), line lengths (`queue`) and pause expiry (`pauses`).

use std::sync::Arc;
use std::time::Duration;

use smallvec::SmallVec;

use super::clock::{now_ns, Frozen};
use super::counters::{Counted, Counters};
use super::pauses::{self, Pauses};
use super::plan::{Plan, Plans};
use super::queue::Lines;
use super::table::KeyTable;
use super::{
    decide_n, Bucket, BucketSpec, Decision, KeySource, KeyState, LimitMetrics, Scope, TokioClock,
    Verdict,
};

/// One vendor's rate limiter.
pub struct Limiter {
    plans: Plans,
    keys: KeyTable,
    /// The state of every shared bucket.
    global: KeyState,
    /// Shared with a successor after a reload (same endpoints): waiters keep their place.
    lines: Arc<Lines>,
    /// The limiter that replaced this one at a reload: waiters still in this one's lines
    /// decide on its state.
    successor: arc_swap::ArcSwapOption<Limiter>,
    pauses: Pauses,
    counters: Counters,
    /// Where the API key is.
    pub source: KeySource,
    /// Set once shutdown starts: queued requests are answered instead of held.
    draining: Option<Arc<crate::lifecycle::Lifecycle>>,
}

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
        let plans = Plans::new(vendor_wide, per_endpoint, endpoint_names);
        let counters = Counters::new(metrics.as_ref(), endpoint_names);
        let (gauge, vendor) = match metrics {
            Some(m) => (Some(m.keys), m.vendor),
            None => (None, String::new()),
        };
        Limiter {
            keys: KeyTable::new(
                max_keys,
                plans.key_slots(),
                plans.longest_key_window(),
                gauge,
                vendor,
            ),
            global: KeyState::new(plans.global_slots()),
            lines: Arc::default(),
            successor: arc_swap::ArcSwapOption::empty(),
            pauses: Pauses::default(),
            counters,
            plans,
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
            .endpoint(ep)
            .is_some_and(|p| !p.enforce.is_empty() || !p.shadow.is_empty())
    }

    /// Live keys in the table.
    pub fn keys(&self) -> usize {
        self.keys.live()
    }

    /// Runs `f` on the state of `key`, or on the shared state when the plan has no per-key
    /// bucket. `f` runs under the key table's shard read lock: short and synchronous.
    #[inline]
    fn with_key<R>(&self, plan: &Plan, key: u64, now: u64, f: impl FnOnce(&KeyState) -> R) -> R {
        if !plan.needs_key {
            return f(&self.global);
        }
        self.keys.with(key, now, f)
    }

    /// The decision, pauses first: a paused bucket denies without looking at tokens.
    fn decide_plan(&self, plan: &Plan, id: u64, key: &KeyState, now: u64, cost: u32) -> Decision {
        if let Some(deny) = self.pauses.held(&self.plans, plan, id, now) {
            return deny;
        }
        let checks: SmallVec<[(&Bucket<TokioClock>, &KeyState); 8]> = plan
            .enforce
            .iter()
            .map(|&i| {
                let rt = &self.plans.buckets[i];
                let k = match rt.spec.scope {
                    Scope::Key => key,
                    Scope::Global => &self.global,
                };
                (&rt.bucket, k)
            })
            .collect();
        decide_n(&checks, cost)
    }

    /// Shadow buckets take a token when they have one and count when they would have
    /// rejected; they never hold the request.
    fn shadow(&self, ep: usize, plan: &Plan, key: &KeyState, cost: u32) {
        for &i in &plan.shadow {
            let rt = &self.plans.buckets[i];
            let k = match rt.spec.scope {
                Scope::Key => key,
                Scope::Global => &self.global,
            };
            if decide_n(&[(&rt.bucket, k)], cost) != Decision::Allow {
                self.counters
                    .count(ep, rt.spec.scope, Counted::ShadowRejected);
            }
        }
    }

    /// Gives back the `cost` tokens an allowed request of `key` on `ep` took from each
    /// enforced bucket: for a request a later check refused (the fleet's buckets, or its
    /// concurrency slots), so all or nothing holds across them.
    pub fn refund_n(&self, key: u64, ep: usize, cost: u32) {
        let Some(plan) = self.plans.endpoint(ep) else {
            return;
        };
        self.with_key(plan, key, now_ns(), |k| {
            for &i in &plan.enforce {
                let rt = &self.plans.buckets[i];
                let state = match rt.spec.scope {
                    Scope::Key => k,
                    Scope::Global => &self.global,
                };
                rt.bucket.refund(state, cost);
            }
        });
    }

    /// The most tokens one request of endpoint `ep` can ever take: the smallest `burst` of
    /// the buckets it is decided by (`None` when it has none).
    pub fn most_cost(&self, ep: usize) -> Option<u32> {
        let plan = self.plans.endpoint(ep)?;
        plan.enforce
            .iter()
            .map(|&i| self.plans.buckets[i].spec.shape.burst)
            .min()
    }

    /// Decides for one request of `key` (from [`KeySource::key_of`]) on endpoint `ep`,
    /// waiting in line when the denying buckets queue.
    pub async fn admit(&self, key: u64, ep: usize) -> Verdict {
        self.admit_n(key, ep, 1).await
    }

    /// [`Limiter::admit`] for a request that costs `cost` tokens of each bucket (SMS
    /// segments × recipients), all or nothing.
    pub async fn admit_n(&self, key: u64, ep: usize, cost: u32) -> Verdict {
        let Some(plan) = self.plans.endpoint(ep) else {
            return Verdict::Allow;
        };
        if plan.enforce.is_empty() && plan.shadow.is_empty() {
            return Verdict::Allow;
        }
        match self.first_look(key, ep, plan, cost) {
            Ok(v) => v,
            // Boxed: the waiting state is large and rarely needed; unboxed it would be moved
            // with every decision's future.
            Err(terms) => Box::pin(self.wait_in_line(key, ep, plan, terms, cost)).await,
        }
    }

    /// The synchronous part of [`Limiter::admit`], on one clock reading: a verdict, or the
    /// queue terms to wait under.
    fn first_look(
        &self,
        key: u64,
        ep: usize,
        plan: &Plan,
        cost: u32,
    ) -> Result<Verdict, (Duration, usize)> {
        let frozen = Frozen::now();
        let decision = self.with_key(plan, key, frozen.nanos(), |k| {
            self.shadow(ep, plan, k, cost);
            // Requests already waiting for this key and endpoint go first.
            if plan.queueable && self.lines.waiting(key, ep) {
                if let Some(terms) = self.plans.queue_terms(plan, u64::MAX) {
                    return Err(terms);
                }
            }
            Ok(self.decide_plan(plan, key, k, frozen.nanos(), cost))
        })?;
        match decision {
            Decision::Allow => {
                let scope = if plan.needs_key {
                    Scope::Key
                } else {
                    Scope::Global
                };
                self.counters.count(ep, scope, Counted::Allowed);
                Ok(Verdict::Allow)
            }
            Decision::Deny {
                wait,
                worst,
                denied,
            } => match self.plans.queue_terms(plan, denied) {
                Some(terms) if wait <= terms.0 => Err(terms),
                _ => {
                    let scope = self.plans.scope_of(plan, worst);
                    self.counters.count(ep, scope, Counted::Rejected);
                    Ok(Verdict::Reject(self.plans.reject(plan, wait, worst)))
                }
            },
        }
    }

    /// Waits for a token behind earlier waiters of the same key and endpoint, never longer
    /// than `max_wait` in all.
    async fn wait_in_line(
        &self,
        key: u64,
        ep: usize,
        plan: &Plan,
        (max_wait, max_waiters): (Duration, usize),
        cost: u32,
    ) -> Verdict {
        let deadline = tokio::time::Instant::now() + max_wait;
        let mut place = self.lines.join(key, ep);
        let ahead = place.ahead();
        let scope = self.plans.scope_of(plan, 0);
        if ahead >= max_waiters {
            drop(place);
            self.counters.count(ep, scope, Counted::Rejected);
            return Verdict::Reject(self.plans.estimate(plan, ahead));
        }
        self.counters.count(ep, scope, Counted::Queued);
        place.wait(self.counters.queue_depth());
        let verdict = async {
            let Ok(_turn) = tokio::time::timeout_at(deadline, place.turn()).await else {
                return Verdict::Reject(self.plans.estimate(plan, ahead));
            };
            loop {
                // Reloaded while waiting: the same line, the new limits and state.
                let next = self.deciding();
                let (lim, p) = match next
                    .as_deref()
                    .and_then(|n| Some((n, n.plans.endpoint(ep)?)))
                {
                    Some(found) => found,
                    None => (self, plan),
                };
                let decision = {
                    let frozen = Frozen::now();
                    let now = frozen.nanos();
                    lim.with_key(p, key, now, |k| lim.decide_plan(p, key, k, now, cost))
                };
                match decision {
                    Decision::Allow => return Verdict::Allow,
                    Decision::Deny { wait, worst, .. } => {
                        if tokio::time::Instant::now() + wait > deadline {
                            return Verdict::Reject(lim.plans.reject(p, wait, worst));
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
                            return Verdict::Reject(lim.plans.reject(p, left, worst));
                        }
                    }
                }
            }
        }
        .await;
        // Out of the line (and of the queue depth) before counting, as a decision is final.
        drop(place);
        match verdict {
            Verdict::Allow => self.counters.count(ep, scope, Counted::Allowed),
            Verdict::Reject(r) => self.counters.count(ep, r.scope, Counted::Rejected),
        }
        verdict
    }

    /// The vendor said this key is out of requests (a 429, or `remaining: 0`) for `hint`:
    /// hold the key's buckets for this endpoint until then, at most one window of each.
    pub fn pause(&self, key: u64, ep: usize, hint: Duration) {
        let Some(plan) = self.plans.endpoint(ep) else {
            return;
        };
        self.pauses.hold(&self.plans, plan, key, now_ns(), hint);
    }

    /// What the vendor said about this key's quota: a `rate_limited` answer (`limited`) or
    /// a `remaining: 0` header, with its reset hint in seconds. A rate-limited answer
    /// without a hint pauses for one second; an exhausted quota without one does nothing.
    pub fn vendor_said(&self, key: u64, ep: usize, limited: bool, hint_s: Option<u64>) {
        if let Some(hint) = pauses::length(limited, hint_s) {
            self.pause(key, ep, hint);
        }
    }

    /// Builds the successor of `old` at a reload: its state carried over
    /// ([`Limiter::carry_from`]) and, when the endpoints and the key source are the same,
    /// its rate-limit lines too, so requests waiting in them keep their place ahead of new
    /// ones. Call [`Limiter::hand_over`] on `old` once this one is in an `Arc`.
    pub fn taking_over(mut self, old: &Limiter) -> Self {
        self.carry_from(old);
        if self.plans.names == old.plans.names && self.source.same_as(&old.source) {
            self.lines = old.lines.clone();
        }
        self
    }

    /// From now on, requests waiting in this limiter's lines decide on `next`'s state (when
    /// `next` took these lines over; otherwise they finish here).
    pub fn hand_over(&self, next: &Arc<Limiter>) {
        if Arc::ptr_eq(&self.lines, &next.lines) {
            self.successor.store(Some(next.clone()));
        }
    }

    /// The limiter that decides for this one's waiters now: the last successor.
    fn deciding(&self) -> Option<Arc<Limiter>> {
        let mut last = self.successor.load_full()?;
        while let Some(n) = last.successor.load_full() {
            last = n;
        }
        Some(last)
    }

    /// Takes over the state of `old`, this vendor's limiter before a reload: each key's use
    /// of every limit that is still there (same place in the config, same scope) — in
    /// tokens, so a changed limit keeps what each key has used — and the pauses in force.
    /// Limits that are gone leave their state behind; new ones start full. Decisions `old`
    /// makes during the copy (microseconds, before the swap) are not carried.
    pub fn carry_from(&self, old: &Limiter) {
        let pairs = self.plans.matching(&old.plans);
        if pairs.is_empty() {
            return;
        }
        let (keyed, global): (Vec<_>, Vec<_>) = pairs
            .iter()
            .map(|&(n, o)| (&self.plans.buckets[n], &old.plans.buckets[o]))
            .partition(|(n, _)| n.spec.scope == Scope::Key);
        let now = now_ns();
        if !keyed.is_empty() {
            old.keys.for_each(|key, was| {
                self.keys.with(key, now, |k| {
                    for (n, o) in &keyed {
                        n.bucket.carry(k, &o.bucket, was);
                    }
                });
            });
        }
        for (n, o) in &global {
            n.bucket.carry(&self.global, &o.bucket, &old.global);
        }
        self.pauses.carry(&old.pauses, &pairs, now);
    }

    /// Seeds `key`'s enforced buckets of `scope` on endpoint `ep`, in the plan's order, from
    /// the fleet's state: `used` yields, for each, the fraction of the fleet's bucket in use.
    /// The bucket then holds that fraction of this pod's share too, so when this limiter
    /// takes over from the fleet's decisions it starts where the fleet was, not with a full
    /// burst. Frees nothing already taken here.
    pub fn seed(&self, key: u64, ep: usize, scope: Scope, used: impl IntoIterator<Item = f64>) {
        let Some(plan) = self.plans.endpoint(ep) else {
            return;
        };
        let now = now_ns();
        let buckets = plan
            .enforce
            .iter()
            .map(|&i| &self.plans.buckets[i])
            .filter(|rt| rt.spec.scope == scope);
        let seed = |k: &KeyState| {
            let state = match scope {
                Scope::Key => k,
                Scope::Global => &self.global,
            };
            for (rt, used) in buckets.zip(used) {
                rt.bucket.seed(state, used);
            }
        };
        match scope {
            Scope::Key if plan.needs_key => self.keys.with(key, now, seed),
            _ => seed(&self.global),
        }
    }

    /// Drops keys idle for longer than their longest window (their buckets are full again,
    /// so forgetting them changes nothing) and expired pauses. Returns the number of live
    /// keys.
    pub fn evict(&self) -> usize {
        let now = now_ns();
        self.pauses.expire(now);
        self.keys.evict_idle(now)
    }

    /// How often eviction should run: a tenth of the idle time, between 1 s and 60 s.
    pub fn evict_every(&self) -> Duration {
        self.keys.evict_every()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::{allowed, count, limiter, metrics, spec};
    use super::super::Reject;
    use super::*;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_what_each_key_used_of_the_limits_still_there() {
        let old = limiter(vec![spec(3, 60, 3)], vec![spec(50, 60, 1)], None);
        assert_eq!(allowed(&old, 1, 1, 3).await, 3, "key 1 used its 3");
        assert_eq!(
            allowed(&old, 3, 0, 1).await,
            1,
            "key 3 used the endpoint's one"
        );
        old.vendor_said(4, 1, true, Some(30));
        advance(Duration::from_millis(10)).await;
        // The key-wide limit raised to 5, the endpoint's removed.
        let new = limiter(vec![spec(5, 60, 5)], vec![], None);
        new.carry_from(&old);
        assert_eq!(
            allowed(&new, 1, 1, 10).await,
            2,
            "3 of 5 used: 2 more, not 5"
        );
        assert_eq!(
            allowed(&new, 3, 0, 10).await,
            4,
            "the endpoint's limit is gone"
        );
        assert_eq!(allowed(&new, 5, 1, 10).await, 5, "a new key starts full");
        // The vendor's pause of key 4 was carried too.
        assert_eq!(allowed(&new, 4, 1, 1).await, 0);
        advance(Duration::from_secs(30)).await;
        assert_eq!(allowed(&new, 4, 1, 1).await, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_queued_across_a_reload_keeps_its_place_and_meets_the_new_limit() {
        let mut q = spec(1, 60, 1);
        q.mode = super::super::Mode::Queue;
        q.max_wait = Duration::from_secs(1000);
        let old = Arc::new(limiter(vec![q.clone()], vec![], None));
        assert_eq!(old.admit(1, 1).await, Verdict::Allow);
        let (done, mut order) = tokio::sync::mpsc::unbounded_channel();
        let queue = |l: &Arc<Limiter>, who: &'static str| {
            let (l, done) = (l.clone(), done.clone());
            tokio::spawn(async move {
                let v = l.admit(1, 1).await;
                let _ = done.send((who, v, tokio::time::Instant::now()));
            })
        };
        let t0 = tokio::time::Instant::now();
        // Waits for the next token of the old limit (60 s).
        queue(&old, "waiter");
        tokio::task::yield_now().await;
        advance(Duration::from_secs(1)).await;
        // Lowered to 1 per 2 minutes: the waiter now meets the new limit.
        q.shape = super::super::Shape {
            rate: 1,
            per: Duration::from_secs(120),
            burst: 1,
        };
        // The same key source (a reload keeps it when the key config is the same).
        let names = ["ep".to_string(), "other".to_string()];
        let next = Limiter::new(
            &[q],
            &[vec![], vec![]],
            &names,
            old.source.clone(),
            1000,
            None,
        );
        let new = Arc::new(next.taking_over(&old));
        old.hand_over(&new);
        // A newcomer queues behind the waiter (the line is shared), not in a line of its own.
        queue(&new, "newcomer");
        let (first, v1, at1) = order.recv().await.unwrap();
        let (second, v2, at2) = order.recv().await.unwrap();
        assert_eq!(
            (first, v1, second, v2),
            ("waiter", Verdict::Allow, "newcomer", Verdict::Allow)
        );
        // The waiter woke at its old time (60 s), found the new limit's token not there yet
        // (the first request's use, carried at 1 s: 59/60 of a token, 118 s of the new
        // spacing) and waited on; the newcomer went one new spacing later.
        assert_eq!(at1 - t0, Duration::from_secs(119));
        assert_eq!(at2 - t0, Duration::from_secs(239));
    }

    #[tokio::test(start_paused = true)]
    async fn a_reload_keeps_what_the_fleet_used_of_a_global_limit() {
        let mut g = spec(10, 60, 10);
        g.scope = Scope::Global;
        let old = limiter(vec![g.clone()], vec![], None);
        assert_eq!(
            allowed(&old, 1, 1, 4).await + allowed(&old, 2, 1, 3).await,
            7
        );
        g.shape = super::super::Shape {
            rate: 20,
            per: Duration::from_secs(60),
            burst: 20,
        };
        let new = limiter(vec![g], vec![], None);
        new.carry_from(&old);
        assert_eq!(allowed(&new, 3, 1, 30).await, 13);
        // A limit that moved to another scope is another limit: it starts full.
        let keyed = limiter(vec![spec(20, 60, 20)], vec![], None);
        keyed.carry_from(&old);
        assert_eq!(allowed(&keyed, 1, 1, 30).await, 20);
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
    async fn a_rejection_is_counted_under_the_scope_of_the_bucket_that_denied() {
        let mut global = spec(2, 60, 2);
        global.scope = Scope::Global;
        let m = metrics();
        let decisions = m.decisions.clone();
        let l = limiter(vec![global], vec![spec(10, 60, 10)], Some(m));
        assert_eq!(allowed(&l, 1, 0, 3).await, 2);
        assert_eq!(count(&decisions, "key", "allowed"), 2);
        assert_eq!(count(&decisions, "global", "rejected"), 1);
        let Verdict::Reject(Reject { limit, scope, .. }) = l.admit(2, 0).await else {
            panic!("should reject")
        };
        assert_eq!((limit, scope), (2, Scope::Global));
    }
}
