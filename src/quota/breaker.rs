//! The breaker in front of the quota store: after a few consecutive failures decisions stop
//! asking Redis (they fall back to the local share at once instead of each paying the
//! timeout), and only the store's own probe may close it again.
//!
//! Owns: the consecutive-failure count and the open flag, both atomics so that decisions on
//! any thread read them without a lock. Starts open: nothing is known about Redis until the
//! first successful round trip.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Consecutive failures that open the breaker.
pub const OPEN_AFTER: u32 = 3;

/// Open/closed state and the run of failures that leads to opening.
#[derive(Debug)]
pub struct Breaker {
    open: AtomicBool,
    failures: AtomicU32,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    /// A breaker that starts open (in fallback until a probe succeeds).
    pub fn new() -> Self {
        Breaker {
            open: AtomicBool::new(true),
            failures: AtomicU32::new(0),
        }
    }

    /// True while decisions must not ask Redis.
    pub fn is_open(&self) -> bool {
        self.open.load(Ordering::Acquire)
    }

    /// A round trip succeeded: the run of failures is over.
    pub fn success(&self) {
        // A plain store would also do; skipping it when already 0 keeps the cache line
        // shared between the threads that decide.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
    }

    /// A round trip failed. True when this failure opened the breaker (exactly one caller
    /// sees true per opening, so the connection is dropped and the change logged once).
    pub fn failure(&self) -> bool {
        let run = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        run >= OPEN_AFTER && !self.open.swap(true, Ordering::AcqRel)
    }

    /// A probe succeeded: decisions go back to Redis. True when it was open.
    pub fn close(&self) -> bool {
        self.failures.store(0, Ordering::Relaxed);
        self.open.swap(false, Ordering::AcqRel)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_open_and_closes_on_probe() {
        let b = Breaker::new();
        assert!(b.is_open());
        assert!(b.close());
        assert!(!b.is_open());
        assert!(!b.close(), "closing a closed breaker reports no change");
    }

    #[test]
    fn opens_after_consecutive_failures_once() {
        let b = Breaker::new();
        b.close();
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(b.failure(), "the third consecutive failure opens it");
        assert!(b.is_open());
        assert!(!b.failure(), "later failures do not open it again");
    }

    #[test]
    fn a_success_breaks_the_run() {
        let b = Breaker::new();
        b.close();
        b.failure();
        b.failure();
        b.success();
        assert!(!b.failure());
        assert!(!b.failure());
        assert!(!b.is_open());
        assert!(b.failure());
    }
}
