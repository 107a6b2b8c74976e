//! The GCRA core: one all-or-nothing decision across every bucket a request touches, on
//! `governor`'s arithmetic.
//!
//! Owns: a bucket's [`Shape`] and its quota, the per-key [`KeyState`] (one TAT slot per
//! key-scoped bucket, inline in the key table's entry, so a decision costs one map lookup
//! however many buckets apply — the first layout, one map per bucket, measured 539 ns at
//! 100k keys against a 200 ns target), and [`decide`], which takes a token from every bucket
//! or from none.
//!
//! `governor` has no way to look at a bucket without taking from it, nor to give a token
//! back, so checking buckets one after another would spend a token in the buckets that
//! allowed whenever a later one denies. Instead each bucket's governor limiter runs on
//! [`TxStore`]: [`decide`] hands it the stored TAT, governor's GCRA computes the new one,
//! and only when every bucket allowed are the new states committed, with a compare-and-swap
//! each. A denial writes nothing.
//!
//! Must not: look anything up in a map, allocate (the pending changes sit in an inline
//! buffer), or know about endpoints, queues, pauses or metrics — callers hand it the
//! `(bucket, key state)` pairs of one decision.
//!
//! Approximate: a stored TAT of 0 means "never used", so a real TAT of 0 ns is stored as
//! 1 ns (1 ns stricter); a decision that loses a race with another thread undoes what it
//! wrote and decides again, and when the undo itself is overtaken the bucket keeps the
//! stricter state (a lost race may cost a token, never grant one).

use std::cell::Cell;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::{NotKeyed, StateStore};
use governor::{Quota, RateLimiter};
use smallvec::SmallVec;

/// A bucket's shape: at most `rate` requests in any window of `per`, `burst` back to back.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Requests allowed per window.
    pub rate: u32,
    /// Window length.
    pub per: Duration,
    /// Requests that may go back to back.
    pub burst: u32,
}

impl Shape {
    /// The GCRA quota that never admits more than `rate` in any window of `per` (SPEC §3):
    /// `burst` cells at once, then one per `per / (rate - burst + 1)`. `None` when
    /// `burst` is 0, larger than `rate`, or the window is zero.
    pub fn quota(&self) -> Option<Quota> {
        if self.burst == 0 || self.burst > self.rate || self.per.is_zero() {
            return None;
        }
        Some(Quota::with_period(self.interval())?.allow_burst(NonZeroU32::new(self.burst)?))
    }

    /// The spacing after the burst: `per / (rate - burst + 1)` (the whole window for an
    /// impossible shape, never a division by zero).
    pub fn interval(&self) -> Duration {
        self.per / (self.rate.saturating_sub(self.burst) + 1)
    }
}

/// Everything known about one key: the theoretical arrival time (TAT, ns since the
/// limiter's start, 0 = never used) of each of its buckets, and when it was last used. Two
/// TATs (a key-wide and an endpoint bucket, the common case) are inline, so the state sits
/// in the key table's own entry (40 bytes with its key); more spill to the heap.
#[derive(Debug)]
pub struct KeyState {
    seen: AtomicU32,
    tats: SmallVec<[AtomicU64; 2]>,
}

impl KeyState {
    /// Fresh state with `slots` bucket slots.
    pub fn new(slots: usize) -> Self {
        KeyState {
            seen: AtomicU32::new(0),
            tats: (0..slots).map(|_| AtomicU64::new(0)).collect(),
        }
    }

    fn tat(&self, i: usize) -> Option<&AtomicU64> {
        self.tats.get(i)
    }

    /// Records a use at `now` (whole seconds since the epoch: eviction needs no more).
    pub fn touch(&self, now_s: u32) {
        self.seen.store(now_s, Ordering::Relaxed);
    }

    /// When it was last used (seconds since the epoch).
    pub fn seen(&self) -> u32 {
        self.seen.load(Ordering::Relaxed)
    }
}

/// The state governor works on during one check: the stored TAT it reads (`old`, 0 = never
/// used) and the TAT it would write (`new`). Governor never touches shared memory; the
/// decision commits `new` itself once every bucket allowed.
#[derive(Default, Clone, Copy)]
struct Tx {
    active: bool,
    old: u64,
    new: u64,
}

thread_local! {
    static TX: Cell<Tx> = const { Cell::new(Tx { active: false, old: 0, new: 0 }) };
}

/// The state store behind every bucket's governor limiter: the check in progress on this
/// thread (see `Tx`). Used outside [`decide`], a bucket would see a fresh state and
/// record nothing — [`decide`] is the only caller.
#[derive(Debug, Clone, Copy, Default)]
pub struct TxStore;

impl StateStore for TxStore {
    type Key = NotKeyed;

    fn measure_and_replace<T, F, E>(&self, _key: &NotKeyed, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        let tx = TX.with(Cell::get);
        let prev = (tx.active && tx.old != 0).then(|| Nanos::from(tx.old));
        let (out, new) = f(prev)?;
        if tx.active {
            // 0 means "never used"; a real state of 0 ns is stored as 1 ns (1 ns stricter).
            let new = u64::from(new).max(1);
            TX.with(|t| t.set(Tx { new, ..tx }));
        }
        Ok(out)
    }
}

/// A bucket: its GCRA quota, its slot in each key's state, and the clock it runs on.
pub struct Bucket<C: Clock> {
    limiter: RateLimiter<NotKeyed, TxStore, C, NoOpMiddleware<C::Instant>>,
    slot: usize,
    /// How far ahead of now a TAT is once the whole burst is used (ns): `burst × interval`.
    capacity_ns: u64,
    /// The spacing of tokens (ns): what one used token adds to a TAT.
    interval_ns: u64,
    /// When the governor limiter was made: its TATs count from there, not from `epoch`.
    born: C::Instant,
    clock: C,
    epoch: C::Instant,
}

impl<C: Clock + Clone> Bucket<C> {
    /// A bucket of this shape using slot `slot` of each key's state; pauses are measured
    /// from `epoch`. `None` for an impossible shape.
    pub fn new(shape: Shape, slot: usize, clock: C, epoch: C::Instant) -> Option<Self> {
        let quota = shape.quota()?;
        // Read just before governor reads it for itself: a few ns early, so a seed computed
        // from it is a few ns stricter, never looser.
        let born = clock.now();
        let limiter = RateLimiter::new(quota, TxStore, clock.clone());
        let interval = u64::try_from(shape.interval().as_nanos()).unwrap_or(u64::MAX);
        Some(Bucket {
            limiter,
            slot,
            capacity_ns: interval.saturating_mul(u64::from(shape.burst)),
            interval_ns: interval.max(1),
            born,
            clock,
            epoch,
        })
    }
}

impl<C: Clock> Bucket<C> {
    /// The time the whole burst takes to come back (`burst × interval`).
    pub fn window(&self) -> Duration {
        Duration::from_nanos(self.capacity_ns)
    }

    /// Now, in ns since the epoch.
    pub fn now(&self) -> u64 {
        u64::from(self.clock.now().duration_since(self.epoch))
    }

    /// Carries into `state` what `old_state` has used of `old` (the same limit before a
    /// reload, perhaps of another shape): as many tokens as are in use there are in use
    /// here, so a key that used 3 of 3 and now may have 5 gets 2 more, not 5. Never lowers
    /// this state's TAT.
    pub(crate) fn carry(&self, state: &KeyState, old: &Bucket<C>, old_state: &KeyState) {
        let (Some(tat), Some(old_tat)) = (state.tat(self.slot), old_state.tat(old.slot)) else {
            return;
        };
        let then = old_tat.load(Ordering::Acquire);
        let old_now = u64::from(old.clock.now().duration_since(old.born));
        let debt = then.saturating_sub(old_now);
        if then == 0 || debt == 0 {
            return;
        }
        // Tokens in use, in the old spacing, then in the new one (u128: no overflow).
        let carried = u128::from(debt) * u128::from(self.interval_ns) / u128::from(old.interval_ns);
        let carried = u64::try_from(carried).unwrap_or(u64::MAX);
        let now = u64::from(self.clock.now().duration_since(self.born));
        tat.fetch_max(now.saturating_add(carried).max(1), Ordering::AcqRel);
    }

    /// Gives `n` tokens back to `state`: the TAT moves back `n` spacings, never below now (a
    /// TAT in the past is a full bucket). Exact for tokens an admission took, since GCRA
    /// state is a sum; a bucket that refilled meanwhile just stays full.
    pub(crate) fn refund(&self, state: &KeyState, n: u32) {
        let Some(tat) = state.tat(self.slot) else {
            return;
        };
        let now = u64::from(self.clock.now().duration_since(self.born));
        let back = self.interval_ns.saturating_mul(u64::from(n));
        let _ = tat.fetch_update(Ordering::AcqRel, Ordering::Acquire, |t| {
            (t > now).then(|| t.saturating_sub(back).max(now).max(1))
        });
    }

    /// Marks `used` (a fraction, clamped to 0..=1) of `state`'s capacity in this bucket as in
    /// use now: the bucket then holds `1 - used` of its burst and refills from there. Never
    /// lowers the TAT, so it frees nothing already taken.
    pub(crate) fn seed(&self, state: &KeyState, used: f64) {
        let Some(tat) = state.tat(self.slot) else {
            return;
        };
        // In governor's frame: ns since this limiter was made.
        let now = u64::from(self.clock.now().duration_since(self.born));
        // Truncating a non-negative product below 2^64 ns; NaN clamps to 0.
        let debt = (self.capacity_ns as f64 * used.clamp(0.0, 1.0)) as u64;
        if debt > 0 {
            tat.fetch_max(now.saturating_add(debt).max(1), Ordering::AcqRel);
        }
    }
}

/// The outcome of one decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Every bucket had a token; one was taken from each.
    Allow,
    /// At least one bucket is empty; nothing was taken.
    Deny {
        /// Retry after this long at the earliest (the longest wait among the denials).
        wait: Duration,
        /// Index (into the checks) of the bucket with that longest wait.
        worst: usize,
        /// Bit `i` set when check `i` denied (checks beyond 64 are not reported).
        denied: u64,
    },
}

/// Collects the checks that denied and the longest wait among them.
#[derive(Debug, Default)]
pub(crate) struct Denials {
    longest: Option<(Duration, usize)>,
    denied: u64,
}

impl Denials {
    /// Check `i` denies for `wait`.
    pub(crate) fn deny(&mut self, i: usize, wait: Duration) {
        self.denied |= 1u64.checked_shl(i as u32).unwrap_or(0);
        if self.longest.is_none_or(|(d, _)| wait > d) {
            self.longest = Some((wait, i));
        }
    }

    /// The denial, when any check denied.
    pub(crate) fn decision(&self) -> Option<Decision> {
        self.longest.map(|(wait, worst)| Decision::Deny {
            wait,
            worst,
            denied: self.denied,
        })
    }
}

/// One pending state change: check `i` moves its TAT from `old` to `new`.
#[derive(Debug, Clone, Copy)]
struct Pending {
    old: u64,
    new: u64,
}

/// Takes one token from every `(bucket, key state)` if all have one, else none.
pub fn decide<C: Clock>(checks: &[(&Bucket<C>, &KeyState)]) -> Decision {
    decide_n(checks, 1)
}

/// Takes `cost` tokens from every `(bucket, key state)` if all have them, else none. A cost
/// above a bucket's burst can never be had: that bucket denies for its whole window (callers
/// refuse such a request before asking, so this is the reload edge, not the path).
pub fn decide_n<C: Clock>(checks: &[(&Bucket<C>, &KeyState)], cost: u32) -> Decision {
    let many = NonZeroU32::new(cost).filter(|n| n.get() > 1);
    loop {
        let mut pending: SmallVec<[Pending; 8]> = SmallVec::new();
        let mut denials = Denials::default();
        for (i, (bucket, key)) in checks.iter().enumerate() {
            let Some(tat) = key.tat(bucket.slot) else {
                continue;
            };
            let old = tat.load(Ordering::Acquire);
            TX.with(|t| {
                t.set(Tx {
                    active: true,
                    old,
                    new: old,
                })
            });
            // One token by the plain check, as before costs existed: the common case.
            let checked = match many {
                None => bucket.limiter.check().map_err(Some),
                Some(n) => match bucket.limiter.check_n(n) {
                    Ok(r) => r.map_err(Some),
                    Err(_too_many) => Err(None),
                },
            };
            let tx = TX.with(|t| t.replace(Tx::default()));
            match checked {
                Ok(()) => pending.push(Pending { old, new: tx.new }),
                Err(Some(not_until)) => {
                    denials.deny(i, not_until.wait_time_from(bucket.clock.now()))
                }
                Err(None) => denials.deny(i, bucket.window()),
            }
        }
        if let Some(deny) = denials.decision() {
            return deny;
        }
        if commit(&pending, checks) {
            return Decision::Allow;
        }
    }
}

/// Writes the recorded changes (one per check, in order) if nobody raced us. On a lost race,
/// undoes what it wrote — unless that moved on again, in which case keeping it only makes
/// the bucket stricter, never looser — and says to decide again on fresh state.
fn commit<C: Clock>(pending: &[Pending], checks: &[(&Bucket<C>, &KeyState)]) -> bool {
    let cell = |i: usize| checks.get(i).and_then(|(b, k)| k.tat(b.slot));
    let cas = |c: &AtomicU64, old: u64, new: u64| {
        c.compare_exchange(old, new, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    };
    let mut committed = 0;
    for (i, p) in pending.iter().enumerate() {
        if !cell(i).is_some_and(|c| cas(c, p.old, p.new)) {
            break;
        }
        committed += 1;
    }
    if committed == pending.len() {
        return true;
    }
    for (i, p) in pending.iter().enumerate().take(committed) {
        if let Some(c) = cell(i) {
            cas(c, p.new, p.old);
        }
    }
    false
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    type B = Bucket<FakeRelativeClock>;

    fn bucket(rate: u32, per: u64, burst: u32, slot: usize, clock: &FakeRelativeClock) -> B {
        let shape = Shape {
            rate,
            per: Duration::from_secs(per),
            burst,
        };
        Bucket::new(shape, slot, clock.clone(), clock.now()).unwrap()
    }

    #[test]
    fn a_seeded_bucket_holds_what_the_fleet_left() {
        let clock = FakeRelativeClock::default();
        // 10 per 10 s, burst 4: capacity 4 tokens.
        let b = bucket(10, 10, 4, 0, &clock);
        let fresh = KeyState::new(1);
        assert_eq!(admitted(&[(&b, &fresh)], 10), 4);
        let half = KeyState::new(1);
        b.seed(&half, 0.5);
        assert_eq!(admitted(&[(&b, &half)], 10), 2, "half the burst in use");
        let full = KeyState::new(1);
        b.seed(&full, 1.0);
        assert_eq!(admitted(&[(&b, &full)], 10), 0, "all of it in use");
        // Seeding never frees what was taken here.
        let used = KeyState::new(1);
        assert_eq!(admitted(&[(&b, &used)], 3), 3);
        b.seed(&used, 0.25);
        assert_eq!(admitted(&[(&b, &used)], 10), 1);
        // A seed decays like any use: one interval later one more token.
        let shape = Shape {
            rate: 10,
            per: Duration::from_secs(10),
            burst: 4,
        };
        clock.advance(shape.interval());
        assert_eq!(admitted(&[(&b, &full)], 10), 1);
        // A bucket made later counts its TATs from then: seeds land in its frame.
        clock.advance(Duration::from_secs(100));
        let late = bucket(10, 10, 4, 0, &clock);
        let seeded = KeyState::new(1);
        late.seed(&seeded, 0.5);
        assert_eq!(admitted(&[(&late, &seeded)], 10), 2);
    }

    #[test]
    fn a_reload_carries_the_tokens_used_not_the_time() {
        let clock = FakeRelativeClock::default();
        // 3 per 60 s, burst 3: all used.
        let old = bucket(3, 60, 3, 0, &clock);
        let used = KeyState::new(1);
        assert_eq!(admitted(&[(&old, &used)], 10), 3);
        clock.advance(Duration::from_secs(1));
        // Raised to 5, burst 5: 2 more, not 5.
        let new = bucket(5, 60, 5, 0, &clock);
        let carried = KeyState::new(1);
        new.carry(&carried, &old, &used);
        assert_eq!(admitted(&[(&new, &carried)], 10), 2);
        // Lowered to 2, burst 2: nothing now (3 in use of 2).
        let lower = bucket(2, 60, 2, 0, &clock);
        let carried = KeyState::new(1);
        lower.carry(&carried, &old, &used);
        assert_eq!(admitted(&[(&lower, &carried)], 10), 0);
        // A key that used nothing carries nothing.
        let fresh = KeyState::new(1);
        let carried = KeyState::new(1);
        new.carry(&carried, &old, &fresh);
        assert_eq!(admitted(&[(&new, &carried)], 10), 5);
    }

    fn admitted(checks: &[(&B, &KeyState)], n: usize) -> usize {
        (0..n).filter(|_| decide(checks) == Decision::Allow).count()
    }

    fn wait_of(d: Decision) -> Duration {
        match d {
            Decision::Deny { wait, .. } => wait,
            Decision::Allow => panic!("should deny"),
        }
    }

    #[test]
    fn burst_then_steady_rate() {
        let clock = FakeRelativeClock::default();
        // 60/min with burst 6: 6 at once, then one per 60s/55.
        let b = bucket(60, 60, 6, 0, &clock);
        let k = KeyState::new(1);
        assert_eq!(admitted(&[(&b, &k)], 100), 6);
        let w = wait_of(decide(&[(&b, &k)]));
        assert_eq!(w, Duration::from_secs(60) / 55);
        clock.advance(w);
        assert_eq!(admitted(&[(&b, &k)], 10), 1);
    }

    #[test]
    fn never_more_than_rate_in_any_window() {
        let clock = FakeRelativeClock::default();
        let (rate, burst) = (20u32, 5u32);
        let b = bucket(rate, 60, burst, 0, &clock);
        let k = KeyState::new(1);
        // Ask every 100 ms for 10 minutes; count admissions in every 60 s sliding window.
        let mut times = Vec::new();
        for step in 0..6000u64 {
            if decide(&[(&b, &k)]) == Decision::Allow {
                times.push(step);
            }
            clock.advance(Duration::from_millis(100));
        }
        for (i, t) in times.iter().enumerate() {
            let in_window = times[i..].iter().take_while(|u| **u < t + 600).count();
            assert!(
                in_window <= rate as usize,
                "{in_window} in the window from {t}"
            );
        }
        // And it is not stricter than the shape: the burst, then one per
        // per / (rate - burst + 1) = 3.75 s, over the 600 s run (less one for step rounding).
        let expected = burst as usize + 160;
        assert!(times.len() + 1 >= expected, "{} < {expected}", times.len());
    }

    #[test]
    fn keys_are_independent() {
        let clock = FakeRelativeClock::default();
        let b = bucket(10, 60, 2, 0, &clock);
        let (k1, k2) = (KeyState::new(1), KeyState::new(1));
        assert_eq!(admitted(&[(&b, &k1)], 5), 2);
        assert_eq!(admitted(&[(&b, &k2)], 5), 2);
    }

    #[test]
    fn a_denial_takes_no_token_from_the_buckets_that_allowed() {
        let clock = FakeRelativeClock::default();
        let key_wide = bucket(100, 60, 10, 0, &clock);
        let endpoint = bucket(10, 60, 2, 1, &clock);
        let k = KeyState::new(2);
        let both = [(&key_wide, &k), (&endpoint, &k)];
        assert_eq!(admitted(&both, 50), 2);
        // 48 denials later, the key-wide bucket still has 8 of its 10 burst tokens.
        assert_eq!(admitted(&[(&key_wide, &k)], 50), 8);
    }

    #[test]
    fn deny_reports_the_longest_wait_and_who_denied() {
        let clock = FakeRelativeClock::default();
        let fast = bucket(60, 60, 1, 0, &clock);
        let slow = bucket(1, 3600, 1, 1, &clock);
        let k = KeyState::new(2);
        assert_eq!(decide(&[(&fast, &k), (&slow, &k)]), Decision::Allow);
        let d = decide(&[(&fast, &k), (&slow, &k)]);
        assert_eq!(
            d,
            Decision::Deny {
                wait: Duration::from_secs(3600),
                worst: 1,
                denied: 0b11
            }
        );
    }

    #[test]
    fn a_refund_gives_back_exactly_what_was_taken() {
        let clock = FakeRelativeClock::default();
        let b = bucket(3, 60, 3, 0, &clock);
        let k = KeyState::new(1);
        assert_eq!(admitted(&[(&b, &k)], 10), 3);
        b.refund(&k, 2);
        assert_eq!(admitted(&[(&b, &k)], 10), 2, "two back, not more");
        // A refund of a bucket that refilled meanwhile gives nothing extra.
        clock.advance(Duration::from_secs(120));
        b.refund(&k, 3);
        assert_eq!(admitted(&[(&b, &k)], 10), 3);
    }

    #[test]
    fn impossible_shapes_are_refused() {
        let clock = FakeRelativeClock::default();
        for (rate, per, burst) in [(10, 60, 0), (10, 60, 11), (10, 0, 1)] {
            let s = Shape {
                rate,
                per: Duration::from_secs(per),
                burst,
            };
            assert!(
                Bucket::new(s, 0, clock.clone(), clock.now()).is_none(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn concurrent_decisions_never_over_admit() {
        let clock = FakeRelativeClock::default();
        let a = bucket(1000, 60, 50, 0, &clock);
        let b = bucket(1000, 60, 30, 1, &clock);
        let k = KeyState::new(2);
        let allowed: usize = std::thread::scope(|s| {
            let hs: Vec<_> = (0..4)
                .map(|_| s.spawn(|| admitted(&[(&a, &k), (&b, &k)], 1000)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum()
        });
        // A lost race may cost a token (stricter), never grant one (looser).
        assert!((1..=30).contains(&allowed), "{allowed}");
        assert!(admitted(&[(&a, &k)], 100) <= 50 - allowed);
    }
}
