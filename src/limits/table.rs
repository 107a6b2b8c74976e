//! The key table: one [`KeyState`] per live API key, capped at `max_keys`, and the eviction
//! of idle keys.
//!
//! Owns: the map from bucket key ([`KeySource::key_of`](super::KeySource::key_of), a keyed
//! hash) to state, the live-key count and its gauge, the cap and the one overflow state every
//! new key shares once the table is full, the warning that this is happening, and which keys
//! are idle enough to forget.
//!
//! Must not: ever see an API key (only its keyed hash; the overflow warning names no key),
//! hash the bucket key again ([`Prehashed`]), allocate for a known key, or hold a shard lock
//! beyond the synchronous closure it runs.
//!
//! Approximate: the live count is relaxed and corrected at each sweep, so new keys racing at
//! the cap may overshoot it by about one per thread; overflow is stricter, never looser (the
//! overflowing keys share one set of buckets); last use has whole-second resolution, which
//! the idle time's two spare seconds absorb; the overflow warning is at most one per
//! [`OVERFLOW_WARN_EVERY_S`], with the count of overflowed decisions since the last one.

use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
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

/// Shortest time between two "table full" warnings of one limiter.
pub(super) const OVERFLOW_WARN_EVERY_S: u32 = 60;

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
    full: Throttle,
    /// For the overflow warning.
    vendor: String,
}

impl KeyTable {
    /// An empty table of at most `max_keys` states of `slots` TATs each, forgetting keys
    /// idle for longer than `longest_window`.
    pub(super) fn new(
        max_keys: usize,
        slots: usize,
        longest_window: Duration,
        gauge: Option<IntGauge>,
        vendor: String,
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
            full: Throttle::new(OVERFLOW_WARN_EVERY_S),
            vendor,
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
            self.overflowed(now);
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

    /// Runs `f` on every live key's state (a reload's copy; not on the request path).
    pub(super) fn for_each(&self, mut f: impl FnMut(u64, &KeyState)) {
        for e in self.keys.iter() {
            f(*e.key(), e.value());
        }
    }

    /// A new key found the table full: say so, at most once per period.
    #[cold]
    fn overflowed(&self, now: u64) {
        if let Some(n) = self.full.note(secs(now)) {
            tracing::warn!(
                vendor = %self.vendor,
                max_keys = self.max_keys,
                overflowed = n,
                "rate-limit key table full: new API keys share one overflow bucket (stricter \
                 than their own) until idle keys are evicted; raise vendors[].max_keys if this \
                 persists"
            );
        }
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

/// Lets one event through per period and counts the rest: the first event at or after the
/// due time wins; the others in between are only counted.
struct Throttle {
    /// When the next event may go through (seconds since the clock's origin).
    next_s: AtomicU32,
    period_s: u32,
    /// Events since the last one let through.
    since: AtomicU64,
}

impl Throttle {
    fn new(period_s: u32) -> Self {
        Throttle {
            next_s: AtomicU32::new(0),
            period_s,
            since: AtomicU64::new(0),
        }
    }

    /// One event at `now_s`: `Some(events since the last one let through, this one
    /// included)` when it goes through.
    fn note(&self, now_s: u32) -> Option<u64> {
        self.since.fetch_add(1, Ordering::Relaxed);
        let next = self.next_s.load(Ordering::Relaxed);
        if now_s < next {
            return None;
        }
        self.next_s
            .compare_exchange(
                next,
                now_s.saturating_add(self.period_s),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .ok()?;
        Some(self.since.swap(0, Ordering::Relaxed))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::super::testing::{allowed, limiter, spec};
    use super::*;
    use tokio::time::advance;

    const S: u64 = 1_000_000_000;

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

    #[test]
    fn a_throttle_lets_one_through_per_period_and_counts_the_rest() {
        let t = Throttle::new(60);
        assert_eq!(t.note(5), Some(1), "the first goes through at once");
        assert_eq!(t.note(5), None);
        assert_eq!(t.note(64), None);
        assert_eq!(t.note(65), Some(3), "due again, with the two held back");
        assert_eq!(t.note(66), None);
    }

    /// Log lines written while the test runs, as text.
    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl Write for Lines {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Lines {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn overflow_past_max_keys_warns_at_most_once_a_period_and_names_no_key() {
        let log = Lines::default();
        let writer = log.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let t = KeyTable::new(2, 1, Duration::from_secs(60), None, "tryvox".into());
        let key = |i: u64| 0x5eed_0000_0000_0000 | i;
        tracing::subscriber::with_default(subscriber, || {
            t.with(key(1), 0, |_| ());
            t.with(key(2), 0, |_| ());
            assert!(log.text().is_empty(), "room left: nothing to say");
            for i in 3..100 {
                t.with(key(i), 10 * S, |_| ());
            }
            // Known keys still have their own state and say nothing.
            t.with(key(1), 10 * S, |_| ());
            assert_eq!(log.text().lines().count(), 1, "{}", log.text());
            t.with(
                key(100),
                (10 + u64::from(OVERFLOW_WARN_EVERY_S) - 1) * S,
                |_| (),
            );
            assert_eq!(log.text().lines().count(), 1);
            t.with(
                key(101),
                (10 + u64::from(OVERFLOW_WARN_EVERY_S)) * S,
                |_| (),
            );
        });
        let text = log.text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(
            lines[0].contains("WARN") && lines[0].contains("key table full"),
            "{text}"
        );
        assert!(
            lines[0].contains("vendor=tryvox") && lines[0].contains("max_keys=2"),
            "{text}"
        );
        // The first overflow, then the 98 since (97 held back in the period, and this one).
        assert!(lines[0].ends_with("overflowed=1"), "{text}");
        assert!(lines[1].ends_with("overflowed=98"), "{text}");
        for i in 1..=101 {
            let k = key(i);
            assert!(!text.contains(&k.to_string()) && !text.contains(&format!("{k:x}")));
        }
        assert_eq!(t.live(), 2);
    }
}
