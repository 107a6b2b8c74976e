//! Which buckets each endpoint's requests go through, built once from the config, and how a
//! denial reads back as facts.
//!
//! Owns: one vendor's buckets (a GCRA [`Bucket`] with the [`BucketSpec`] it came from, and
//! its slot in the per-key or the shared state), each endpoint's [`Plan`] (the buckets it
//! enforces, the shadow ones, the ones a vendor 429 pauses, whether it needs a key, whether
//! it may queue), and turning "check `worst` denied for `wait`" into a [`Reject`] or into
//! queue terms.
//!
//! Must not: hold per-key state, read the clock, or change after construction: decisions
//! read plans without locking.
//!
//! Approximate: an endpoint enforces at most [`MAX_BUCKETS_PER_REQUEST`] buckets (the
//! decision reports denials as a 64-bit set); the config never gets near that. A request
//! turned away from a full line gets an estimated wait, not a computed one.

use std::time::Duration;

use smallvec::SmallVec;

use super::{Bucket, BucketSpec, Mode, Reject, Scope, TokioClock};

/// Most buckets one request may go through (the decision reports denials as a bit set).
pub const MAX_BUCKETS_PER_REQUEST: usize = 64;

/// One bucket as it runs: its GCRA and what the config said about it.
pub(super) struct Rt {
    pub(super) bucket: Bucket<TokioClock>,
    pub(super) spec: BucketSpec,
    /// Where the config has it: vendor-wide (`None`) or the endpoint of that name, and its
    /// position in that list. What makes it "the same limit" across a reload.
    pub(super) origin: (Option<String>, usize),
}

/// The buckets one endpoint's requests go through (indices into [`Plans::buckets`]).
#[derive(Default)]
pub(super) struct Plan {
    /// Checked all or nothing; a denial holds or rejects the request.
    pub(super) enforce: SmallVec<[usize; 4]>,
    /// Counted, never blocking.
    pub(super) shadow: SmallVec<[usize; 2]>,
    /// What a vendor 429 pauses.
    pub(super) pause: SmallVec<[usize; 4]>,
    /// Some bucket is per key (else the shared state serves every request).
    pub(super) needs_key: bool,
    /// Some enforced bucket queues.
    pub(super) queueable: bool,
}

/// Every bucket of one vendor and every endpoint's plan.
pub(super) struct Plans {
    pub(super) buckets: Vec<Rt>,
    /// The endpoints' names, in plan order.
    pub(super) names: Vec<String>,
    by_endpoint: Vec<Plan>,
    key_slots: usize,
    global_slots: usize,
}

impl Plans {
    /// `vendor_wide` apply to every request; `per_endpoint[i]` to endpoint `i`; one plan per
    /// name in `endpoint_names`. Shapes were validated by the config; an impossible one is
    /// skipped.
    pub(super) fn new(
        vendor_wide: &[BucketSpec],
        per_endpoint: &[Vec<BucketSpec>],
        endpoint_names: &[String],
    ) -> Self {
        let clock = TokioClock;
        let mut buckets = Vec::new();
        let (mut key_slots, mut global_slots) = (0, 0);
        let mut add = |spec: &BucketSpec, origin: (Option<String>, usize)| -> Option<usize> {
            let slot = match spec.scope {
                Scope::Key => &mut key_slots,
                Scope::Global => &mut global_slots,
            };
            let bucket = Bucket::new(spec.shape, *slot, clock, Duration::ZERO)?;
            *slot += 1;
            buckets.push(Rt {
                bucket,
                spec: spec.clone(),
                origin,
            });
            Some(buckets.len() - 1)
        };
        let wide: Vec<usize> = vendor_wide
            .iter()
            .enumerate()
            .filter_map(|(j, s)| add(s, (None, j)))
            .collect();
        let mut own: Vec<Vec<usize>> = Vec::new();
        for (ep, specs) in per_endpoint.iter().enumerate() {
            let name = endpoint_names.get(ep).cloned().unwrap_or_default();
            own.push(
                specs
                    .iter()
                    .enumerate()
                    .filter_map(|(j, s)| add(s, (Some(name.clone()), j)))
                    .collect(),
            );
        }
        let by_endpoint = (0..endpoint_names.len())
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
        Plans {
            buckets,
            names: endpoint_names.to_vec(),
            by_endpoint,
            key_slots,
            global_slots,
        }
    }

    /// Endpoint `ep`'s plan.
    #[inline]
    pub(super) fn endpoint(&self, ep: usize) -> Option<&Plan> {
        self.by_endpoint.get(ep)
    }

    /// Pairs `(new, old)` of bucket indices that are the same limit in `self` and `old`:
    /// the same place in the config and the same scope (its shape may have changed).
    pub(super) fn matching(&self, old: &Plans) -> Vec<(usize, usize)> {
        self.buckets
            .iter()
            .enumerate()
            .filter_map(|(n, rt)| {
                old.buckets
                    .iter()
                    .position(|o| o.origin == rt.origin && o.spec.scope == rt.spec.scope)
                    .map(|o| (n, o))
            })
            .collect()
    }

    /// TAT slots each key's state needs.
    pub(super) fn key_slots(&self) -> usize {
        self.key_slots
    }

    /// TAT slots the shared state needs.
    pub(super) fn global_slots(&self) -> usize {
        self.global_slots
    }

    /// The longest window of any per-key bucket: a key idle that long has refilled every
    /// bucket, so it is as good as new.
    pub(super) fn longest_key_window(&self) -> Duration {
        self.buckets
            .iter()
            .filter(|r| r.spec.scope == Scope::Key)
            .map(|r| r.spec.shape.per)
            .max()
            .unwrap_or(Duration::ZERO)
    }

    /// The spec of `plan`'s enforced check `n`.
    fn enforced(&self, plan: &Plan, n: usize) -> Option<&BucketSpec> {
        plan.enforce
            .get(n)
            .and_then(|&i| self.buckets.get(i))
            .map(|r| &r.spec)
    }

    /// The facts of a denial by `plan`'s check `worst` for `wait`.
    pub(super) fn reject(&self, plan: &Plan, wait: Duration, worst: usize) -> Reject {
        let spec = self.enforced(plan, worst);
        Reject {
            wait,
            limit: spec.map_or(0, |s| s.shape.rate),
            per: spec.map_or(Duration::ZERO, |s| s.shape.per),
            scope: spec.map_or(Scope::Key, |s| s.scope),
        }
    }

    /// The scope of `plan`'s check `worst` (the metric label of its decision).
    pub(super) fn scope_of(&self, plan: &Plan, worst: usize) -> Scope {
        self.enforced(plan, worst).map_or(Scope::Key, |s| s.scope)
    }

    /// Queue settings when every bucket that denied (bit `n` of `denied` for check `n`) is
    /// in queue mode: the smallest `max_wait` and `max_waiters` among them.
    pub(super) fn queue_terms(&self, plan: &Plan, denied: u64) -> Option<(Duration, usize)> {
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

    /// A `Retry-After` for a request turned away from a line: one emission interval of the
    /// tightest bucket per request ahead of it.
    pub(super) fn estimate(&self, plan: &Plan, ahead: usize) -> Reject {
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
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::spec;
    use super::*;

    fn global(mut s: BucketSpec) -> BucketSpec {
        s.scope = Scope::Global;
        s
    }

    fn plans(wide: Vec<BucketSpec>, own: Vec<BucketSpec>) -> Plans {
        Plans::new(&wide, &[own, vec![]], &["ep".into(), "other".into()])
    }

    #[test]
    fn a_vendor_429_pauses_the_narrowest_buckets_that_could_have_prevented_it() {
        // Endpoint's own per-key bucket first (index 2: after the two vendor-wide ones).
        let p = plans(
            vec![spec(100, 60, 10), global(spec(500, 60, 50))],
            vec![spec(10, 60, 2)],
        );
        assert_eq!(p.endpoint(0).map(|p| p.pause.to_vec()), Some(vec![2]));
        // Else the key-wide one (`other` has no own bucket).
        assert_eq!(p.endpoint(1).map(|p| p.pause.to_vec()), Some(vec![0]));
        // Else every shared one.
        let p = plans(
            vec![global(spec(500, 60, 50))],
            vec![global(spec(50, 60, 5))],
        );
        assert_eq!(p.endpoint(0).map(|p| p.pause.to_vec()), Some(vec![0, 1]));
        assert!(p.endpoint(0).is_some_and(|p| !p.needs_key));
        assert!(p.endpoint(2).is_none());
    }

    #[test]
    fn shadow_buckets_are_counted_apart_and_never_paused() {
        let mut s = spec(3, 60, 3);
        s.shadow = true;
        let p = plans(vec![], vec![s]);
        let plan = p.endpoint(0).unwrap();
        assert!(plan.enforce.is_empty() && plan.pause.is_empty());
        assert_eq!(plan.shadow.to_vec(), vec![0]);
        assert!(plan.needs_key);
    }

    #[test]
    fn queue_terms_are_the_strictest_of_the_deniers_and_only_if_all_queue() {
        let mut a = spec(10, 60, 1);
        a.mode = Mode::Queue;
        a.max_wait = Duration::from_secs(5);
        a.max_waiters = 10;
        let mut b = a.clone();
        b.max_wait = Duration::from_secs(2);
        b.max_waiters = 50;
        let p = plans(vec![a, b], vec![spec(10, 60, 1)]);
        let plan = p.endpoint(0).unwrap();
        assert!(plan.queueable);
        assert_eq!(
            p.queue_terms(plan, 0b001),
            Some((Duration::from_secs(5), 10))
        );
        assert_eq!(
            p.queue_terms(plan, 0b011),
            Some((Duration::from_secs(2), 10))
        );
        assert_eq!(
            p.queue_terms(plan, 0b111),
            None,
            "a reject-mode bucket denied"
        );
    }

    #[test]
    fn a_denial_reads_back_as_the_facts_of_the_bucket_that_denied() {
        let p = plans(vec![global(spec(600, 60, 60))], vec![spec(10, 60, 4)]);
        let plan = p.endpoint(0).unwrap();
        let r = p.reject(plan, Duration::from_secs(3), 1);
        assert_eq!(
            (r.limit, r.per, r.scope),
            (10, Duration::from_secs(60), Scope::Key)
        );
        assert_eq!(p.scope_of(plan, 0), Scope::Global);
        // Turned away with 2 ahead: 3 intervals of the tightest bucket (60 s / 7).
        assert_eq!(p.estimate(plan, 2).wait, Duration::from_secs(60) / 7 * 3);
        assert_eq!(p.longest_key_window(), Duration::from_secs(60));
        assert_eq!((p.key_slots(), p.global_slots()), (1, 1));
    }
}
