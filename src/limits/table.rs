//! The key table: one [`KeyState`] per live API key, capped at `max_keys`, and the eviction
//! of idle keys.
//!
//! Owns: the map from bucket key ([`KeySource::key_of`](super::KeySource::key_of), a keyed
//! hash) to state, the live-key count and its gauge, the cap and the one overflow state every
//! new key shares once the table is full, and which keys are idle enough to forget.
//!
//! Must not: ever see an API key (only its keyed hash), hash the bucket key again
//! ([`Prehashed`]), allocate for a known key, or hold a shard lock beyond the synchronous
//! closure it runs.
//!
//! Approximate: the live count is relaxed and corrected at each sweep, so new keys racing at
//! the cap may overshoot it by about one per thread; overflow is stricter, never looser (the
//! overflowing keys share one set of buckets); last use has whole-second resolution, which
//! the idle time's two spare seconds absorb.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use prometheus::IntGauge;

use super::clock::secs;
use super::KeyState;

/// Hasher for keys that already are keyed hashes ([`KeySource::key_of`]): hashing them
/// again would only cost time.
///
/// [`KeySource::key_of`]: super::KeySource::key_of
#[derive(Debug, Default)]
pub struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// Every live key's state.
pub(super) struct KeyTable {
    keys: DashMap<u64, KeyState, BuildHasherDefault<Prehashed>>,
    live: AtomicUsize,
    max_keys: usize,
    /// TAT slots of each new state.
    slots: usize,
    /// Shared by new keys once the table is full: stricter, never looser.
    overflow: KeyState,
    /// Seconds without a decision after which a key is as good as new.
    idle_after_s: u32,
    /// `switchboard_ratelimit_keys`.
    gauge: Option<IntGauge>,
}

impl KeyTable {
    /// An empty table of at most `max_keys` states of `slots` TATs each, forgetting keys
    /// idle for longer than `longest_window`.
    pub(super) fn new(
        max_keys: usize,
        slots: usize,
        longest_window: Duration,
        gauge: Option<IntGauge>,
    ) -> Self {
        KeyTable {
            keys: DashMap::default(),
            live: AtomicUsize::new(0),
            max_keys,
            slots,
            overflow: KeyState::new(slots),
            // Rounded up, plus the second `seen` may have lost to truncation.
            idle_after_s: u32::try_from(longest_window.as_secs() + 2).unwrap_or(u32::MAX),
            gauge,
        }
    }

    /// Live keys.
    pub(super) fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Runs `f` on the state of `key` (inserted when new, the overflow state when the table
    /// is full), stamped as used at `now` (ns). The key's shard stays read-locked meanwhile,
    /// so `f` must be short and synchronous.
    #[inline]
    pub(super) fn with<R>(&self, key: u64, now: u64, f: impl FnOnce(&KeyState) -> R) -> R {
        if let Some(k) = self.keys.get(&key) {
            k.touch(secs(now));
            return f(&k);
        }
        if self.live.load(Ordering::Relaxed) >= self.max_keys {
            self.overflow.touch(secs(now));
            return f(&self.overflow);
        }
        let k = self
            .keys
            .entry(key)
            .or_insert_with(|| {
                let n = self.live.fetch_add(1, Ordering::Relaxed) + 1;
                if let Some(g) = &self.gauge {
                    g.set(i64::try_from(n).unwrap_or(i64::MAX));
                }
                KeyState::new(self.slots)
            })
            .downgrade();
        k.touch(secs(now));
        f(&k)
    }

    /// Forgets keys unused for longer than their longest window at `now` (ns): their buckets
    /// are full again, so forgetting them changes nothing. Returns the live keys.
    pub(super) fn evict_idle(&self, now: u64) -> usize {
        let (now_s, idle) = (secs(now), self.idle_after_s);
        self.keys
            .retain(|_, k| now_s.saturating_sub(k.seen()) <= idle);
        let n = self.keys.len();
        self.live.store(n, Ordering::Relaxed);
        if let Some(g) = &self.gauge {
            g.set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        n
    }

    /// How often eviction should run: a tenth of the idle time, between 1 s and 60 s.
    pub(super) fn evict_every(&self) -> Duration {
        (Duration::from_secs(u64::from(self.idle_after_s)) / 10)
            .clamp(Duration::from_secs(1), Duration::from_secs(60))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::super::testing::{allowed, limiter, spec};
    use super::*;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn idle_keys_are_evicted_and_the_table_is_capped() {
        let l = limiter(vec![spec(10, 60, 2)], vec![], None);
        for k in 1..=500u64 {
            l.admit(k, 0).await;
        }
        assert_eq!(l.keys(), 500);
        assert_eq!(l.evict(), 500, "nothing is idle yet");
        advance(Duration::from_secs(63)).await;
        l.admit(1, 0).await;
        assert_eq!(l.evict(), 1, "only the key used since");
        // Beyond max_keys (1000), new keys share one state: stricter, never unlimited.
        for k in 1000..2000u64 {
            l.admit(k, 0).await;
        }
        assert_eq!(l.keys(), 1000);
        // Two more keys would have a burst of 2 each; sharing, they get at most 2 together.
        let both = allowed(&l, 5000, 0, 5).await + allowed(&l, 5001, 0, 5).await;
        assert!(both <= 2, "{both}");
        assert_eq!(l.keys(), 1000);
    }
}
