//! Adaptive pauses: once the vendor says a key is out of requests (a 429, or `remaining: 0`
//! with a reset hint), that key's buckets deny until then without looking at tokens.
//!
//! Owns: the pause table ((key, or [`GLOBAL`] for shared buckets, bucket) → until), its
//! entry count, which lets a decision skip the table with one atomic load while nothing is
//! paused anywhere, how a vendor hint becomes a pause, and the expiry of pauses.
//!
//! Must not: take or give back tokens (a pause is a denial in front of the buckets), pause a
//! bucket for longer than its window, or key anything by an API key (only by its keyed
//! hash).
//!
//! Approximate: the entry count is refreshed only at each sweep, so between a pause's expiry
//! and the next sweep decisions still look the table up (a correct answer, just a slower
//! one); a vendor 429 on a plan with only shared buckets pauses everyone.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;

use super::gcra::Denials;
use super::plan::{Plan, Plans};
use super::{Decision, Scope};

/// The pause-table key of shared (global) buckets; [`KeySource::key_of`] never yields it.
///
/// [`KeySource::key_of`]: super::KeySource::key_of
pub(super) const GLOBAL: u64 = u64::MAX;

/// Every pause in force.
#[derive(Default)]
pub(super) struct Pauses {
    /// (key or [`GLOBAL`], bucket) -> until (ns since the clock's origin).
    table: DashMap<(u64, usize), u64>,
    /// Entries in `table`, as of the last insert or sweep.
    entries: AtomicUsize,
}

/// Whom a pause of a bucket of this scope holds: the key, or everyone.
fn target(scope: Scope, key: u64) -> u64 {
    match scope {
        Scope::Key => key,
        Scope::Global => GLOBAL,
    }
}

impl Pauses {
    /// The denial of `plan`'s paused buckets for `key` at `now` (ns), if any is paused.
    #[inline]
    pub(super) fn held(&self, plans: &Plans, plan: &Plan, key: u64, now: u64) -> Option<Decision> {
        if self.entries.load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut held = Denials::default();
        for (n, &i) in plan.enforce.iter().enumerate() {
            let t = target(plans.buckets[i].spec.scope, key);
            let until = self.table.get(&(t, i)).map_or(0, |u| *u);
            if until > now {
                held.deny(n, Duration::from_nanos(until - now));
            }
        }
        held.decision()
    }

    /// Holds `plan`'s pause set for `key` from `now` (ns) for `hint`, at most one window of
    /// each bucket; an earlier pause that ends later stays.
    pub(super) fn hold(&self, plans: &Plans, plan: &Plan, key: u64, now: u64, hint: Duration) {
        for &i in &plan.pause {
            let rt = &plans.buckets[i];
            let for_ = hint.min(rt.spec.shape.per);
            let until = now.saturating_add(u64::try_from(for_.as_nanos()).unwrap_or(u64::MAX));
            self.table
                .entry((target(rt.spec.scope, key), i))
                .and_modify(|u| *u = (*u).max(until))
                .or_insert_with(|| {
                    self.entries.fetch_add(1, Ordering::AcqRel);
                    until
                });
        }
    }

    /// Copies `old`'s pauses in force at `now` onto the matching buckets (`(new, old)` index
    /// pairs): the vendor's word still holds after a reload.
    pub(super) fn carry(&self, old: &Pauses, pairs: &[(usize, usize)], now: u64) {
        for e in old.table.iter() {
            let (&(target, old_i), &until) = (e.key(), e.value());
            if until <= now {
                continue;
            }
            for &(n, _) in pairs.iter().filter(|(_, o)| *o == old_i) {
                self.table.insert((target, n), until);
            }
        }
        self.entries.store(self.table.len(), Ordering::Release);
    }

    /// Drops the pauses over at `now` (ns).
    pub(super) fn expire(&self, now: u64) {
        self.table.retain(|_, until| *until > now);
        self.entries.store(self.table.len(), Ordering::Release);
    }
}

/// How long a vendor `rate_limited` answer without a reset hint pauses the key (and so
/// the least a retry of it waits: an earlier one would meet its own pause).
pub const UNHINTED_PAUSE: Duration = Duration::from_secs(1);

/// How long the vendor's word pauses a key: its reset hint (`hint_s`) when it gave one; one
/// second for a `rate_limited` answer (`limited`) without one; nothing for an exhausted
/// quota without one, nor for a zero hint.
pub(super) fn length(limited: bool, hint_s: Option<u64>) -> Option<Duration> {
    let hint = match (limited, hint_s) {
        (_, Some(s)) => Duration::from_secs(s),
        (true, None) => UNHINTED_PAUSE,
        (false, None) => return None,
    };
    (!hint.is_zero()).then_some(hint)
}

#[cfg(test)]
mod tests {
    use super::super::testing::{limiter, spec};
    use super::super::Verdict;
    use super::*;
    use tokio::time::advance;

    #[test]
    fn what_the_vendor_said_becomes_a_pause_length() {
        for (limited, hint, want) in [
            (true, Some(30), Some(30)),
            (false, Some(30), Some(30)),
            (true, None, Some(1)),
            (false, None, None),
            (true, Some(0), None),
        ] {
            assert_eq!(
                length(limited, hint),
                want.map(Duration::from_secs),
                "{limited} {hint:?}"
            );
        }
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
}
