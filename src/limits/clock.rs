//! The limiter's time: a `governor` clock on tokio's time, and one reading per decision.
//!
//! Owns: the process-wide origin that every TAT, pause and last-use stamp is measured from
//! ([`TokioClock`]), and [`Frozen`], which makes one synchronous decision see one instant:
//! reading the clock is the largest single cost of a decision here (governor reads it once
//! per bucket), so a decision reads it once and every bucket sees that reading.
//!
//! Must not: stay frozen across an `.await` (a queued request would see time stand still),
//! nor serve anything that needs wall-clock time: this is tokio's monotonic time, which
//! tests pause and advance so that queue waits and bucket time agree.
//!
//! Approximate: the origin is fixed by the first reading in the process, and last-use stamps
//! ([`secs`]) keep whole seconds only (eviction needs no more).

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use governor::clock::Clock;

/// `governor` clock on tokio's time, so queue waits and bucket time agree (and tests can
/// pause both). Instants are durations since one process-wide origin.
///
/// Reading the clock is the largest single cost of a decision here (governor reads it once
/// per bucket); `Frozen` lets one decision read it once.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

static ORIGIN: OnceLock<tokio::time::Instant> = OnceLock::new();

thread_local! {
    static FROZEN: Cell<Option<Duration>> = const { Cell::new(None) };
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

/// Now, in ns since the origin, read afresh (not frozen): for pauses and eviction, which
/// run outside a decision.
pub(super) fn now_ns() -> u64 {
    nanos(TokioClock::real())
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Whole seconds of a time in ns since the origin: the resolution of last-use stamps.
pub(super) fn secs(ns: u64) -> u32 {
    u32::try_from(ns / 1_000_000_000).unwrap_or(u32::MAX)
}

/// While alive, this thread's [`TokioClock`] reads stand still at one instant: one
/// synchronous decision sees one time. Never held across an `.await`.
pub(super) struct Frozen(Duration);

impl Frozen {
    /// Reads the clock once and holds this thread's readings there until dropped.
    pub(super) fn now() -> Self {
        let t = TokioClock::real();
        FROZEN.with(|f| f.set(Some(t)));
        Frozen(t)
    }

    /// The held instant, in ns since the origin.
    pub(super) fn nanos(&self) -> u64 {
        nanos(self.0)
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        FROZEN.with(|f| f.set(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_frozen_clock_stands_still_until_dropped() {
        let frozen = Frozen::now();
        let held = TokioClock.now();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(TokioClock.now(), held);
        assert_eq!(frozen.nanos(), nanos(held));
        assert!(
            now_ns() >= nanos(held) + 5_000_000_000,
            "fresh readings move on"
        );
        drop(frozen);
        assert!(TokioClock.now() >= held + Duration::from_secs(5));
    }

    #[test]
    fn last_use_stamps_are_whole_seconds() {
        assert_eq!(secs(1_999_999_999), 1);
        assert_eq!(secs(u64::MAX), u32::MAX, "saturates, never wraps");
    }
}
