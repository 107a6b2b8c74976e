//! Token buckets: GCRA from `governor`, an all-or-nothing decision across every bucket a
//! request touches, and what surrounds it — per-key state, queueing, shadow mode, adaptive
//! pauses on the vendor's word, eviction and metrics.
//!
//! One file per concern:
//! - `gcra`: the decision across buckets on one key's state (pure, no maps, no clock of
//!   its own);
//! - `clock`: tokio time for governor, read once per decision;
//! - `spec`, `plan`: what the config says, compiled into each endpoint's plan;
//! - `table`: the key table, its `max_keys` cap and overflow, idle-key eviction;
//! - `queue`: the FIFO lines of queue mode;
//! - `pauses`: holding a key after the vendor's 429 or `remaining: 0`;
//! - `counters`: the decision counters and queue-depth gauge;
//! - `verdict`: the answer, as facts (the 429 response itself is
//!   `Envelope::rate_limited_locally`);
//! - `limiter`: [`Limiter`], which composes them and orders a decision;
//! - `sweeper`: the background task that evicts;
//! - `inflight`: concurrency limits (`in_flight: N`), slots held per attempt.
//!
//! Must not: see or store an API key (only [`KeySource::key_of`]'s keyed hash), build
//! responses, or make a decision dearer than one map lookup, one clock reading and one
//! compare-and-swap per bucket.
//!
//! Approximate: each part says what it approximates; in sum, every approximation is
//! stricter than the configured limit, never looser.

mod clock;
mod cost;
mod counters;
mod gcra;
mod inflight;
mod keys;
mod limiter;
mod pauses;
mod plan;
mod queue;
mod shared;
mod shared_inflight;
mod spec;
mod sweeper;
mod table;
#[cfg(test)]
mod testing;
mod verdict;

pub use clock::TokioClock;
pub use cost::{cost, recipients, segments, Cost, CostSpec, Unreadable};
pub use counters::LimitMetrics;
pub use gcra::{decide, decide_n, Bucket, Decision, KeyState, Shape, TxStore};
pub use inflight::{Full, InFlight, SlotSpec, Slots};
pub use keys::KeySource;
pub use limiter::Limiter;
pub use pauses::UNHINTED_PAUSE;
pub use shared::{LocalShare, SharedLimits};
pub use shared_inflight::{Held, Leases, SharedSlots};
pub use spec::{BucketSpec, Mode, Scope};
pub use sweeper::{Limiters, Sweep, Sweeper};
pub use verdict::{Reject, Verdict};
