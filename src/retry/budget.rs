//! The retry budget (Linkerd's semantics): over a sliding window, retries may be at most
//! `ratio` × requests, plus `min_per_second` × the window's seconds so a quiet vendor can
//! still be retried. Under a vendor failing every request, this caps the load Switchboard adds
//! at `1 + ratio` times the app's.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Window length, in one-second slots.
const SLOTS: usize = 10;

/// One second of counts. `epoch` is the second it holds; a slot from an older second is
/// stale and counts as empty.
#[derive(Default)]
struct Slot {
    epoch: AtomicU64,
    requests: AtomicU64,
    retries: AtomicU64,
}

/// A vendor's retry budget.
pub struct Budget {
    ratio: f64,
    min_per_second: u32,
    slots: [Slot; SLOTS],
}

impl Budget {
    /// A budget allowing `ratio` retries per request plus `min_per_second`.
    pub fn new(ratio: f64, min_per_second: u32) -> Self {
        Budget {
            ratio,
            min_per_second,
            slots: Default::default(),
        }
    }

    fn slot(&self, now_s: u64) -> &Slot {
        let s = &self.slots[(now_s % SLOTS as u64) as usize];
        let seen = s.epoch.load(Ordering::Acquire);
        if seen != now_s
            && s.epoch
                .compare_exchange(seen, now_s, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        {
            // This thread moved the slot to a new second: start it empty. A count racing
            // with the reset may be lost; the budget is an estimate either way.
            s.requests.store(0, Ordering::Release);
            s.retries.store(0, Ordering::Release);
        }
        s
    }

    fn totals(&self, now_s: u64) -> (u64, u64) {
        let mut req = 0;
        let mut ret = 0;
        for s in &self.slots {
            let e = s.epoch.load(Ordering::Acquire);
            if e + (SLOTS as u64) > now_s && e <= now_s {
                req += s.requests.load(Ordering::Relaxed);
                ret += s.retries.load(Ordering::Relaxed);
            }
        }
        (req, ret)
    }

    /// Counts an original request at `now` (time since any fixed origin).
    pub fn request(&self, now: Duration) {
        self.slot(now.as_secs())
            .requests
            .fetch_add(1, Ordering::Relaxed);
    }

    /// Whether one more retry fits, without taking it: asked before a retry waits, so a
    /// request does not wait for a retry the budget would refuse.
    pub fn has_room(&self, now: Duration) -> bool {
        let (req, ret) = self.totals(now.as_secs());
        let allowed = self.ratio * req as f64 + f64::from(self.min_per_second) * SLOTS as f64;
        (ret as f64) + 1.0 <= allowed
    }

    /// Takes one retry from the budget if there is room; `false` when spent. Called only
    /// for a retry that is about to be sent: a retry stopped on the way (queue full,
    /// shutdown, no rate-limit token) spends nothing (SPEC §6).
    pub fn try_retry(&self, now: Duration) -> bool {
        let now_s = now.as_secs();
        if !self.has_room(now) {
            return false;
        }
        self.slot(now_s).retries.fetch_add(1, Ordering::Relaxed);
        true
    }
}

impl Budget {
    /// Gives back a retry [`Budget::try_retry`] took for a retry that was not sent after
    /// all (no rate-limit token came).
    pub fn refund(&self, now: Duration) {
        let s = self.slot(now.as_secs());
        let _ = s
            .retries
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_the_ratio_plus_the_floor() {
        let b = Budget::new(0.2, 1);
        let t = Duration::from_secs(100);
        for _ in 0..1000 {
            b.request(t);
        }
        // 0.2 × 1000 + 1/s × 10 s = 210.
        let granted = (0..1000).filter(|_| b.try_retry(t)).count();
        assert_eq!(granted, 210);
    }

    #[test]
    fn looking_spends_nothing() {
        let b = Budget::new(0.0, 1);
        let t = Duration::from_secs(7);
        for _ in 0..100 {
            assert!(b.has_room(t));
        }
        assert_eq!((0..100).filter(|_| b.try_retry(t)).count(), 10);
        assert!(!b.has_room(t));
        b.refund(t);
        assert!(b.try_retry(t), "a refunded retry can be taken again");
        assert!(!b.try_retry(t));
    }

    #[test]
    fn the_window_slides() {
        let b = Budget::new(0.0, 1);
        let t = Duration::from_secs(50);
        assert_eq!((0..100).filter(|_| b.try_retry(t)).count(), 10);
        // Nine seconds later the spent retries still count; eleven seconds later they don't.
        assert!(!b.try_retry(t + Duration::from_secs(9)));
        assert_eq!(
            (0..100)
                .filter(|_| b.try_retry(t + Duration::from_secs(11)))
                .count(),
            10
        );
    }
}
