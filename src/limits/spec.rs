//! What a configured limit says: its shape, whose requests share it, and what happens to a
//! request it cannot take now.
//!
//! Owns: the limiter's input types, as the config layer builds them (`config::model`
//! validates shapes before they get here).
//!
//! Must not: hold state or behaviour beyond labels; the limiter reads these once, at
//! construction.
//!
//! Approximate: nothing — these are plain values.

use std::time::Duration;

use super::Shape;

/// Whose requests share a bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One bucket per API key.
    Key,
    /// One bucket for everyone.
    Global,
}

impl Scope {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Global => "global",
        }
    }
}

/// What happens to a request the bucket cannot take now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answer 429 at once.
    Reject,
    /// Hold it until a token frees, up to `max_wait`.
    Queue,
}

/// One configured limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketSpec {
    /// Rate, window and burst.
    pub shape: Shape,
    /// Per key or shared.
    pub scope: Scope,
    /// Reject or queue.
    pub mode: Mode,
    /// Longest a queued request waits (queue mode).
    pub max_wait: Duration,
    /// Most requests of one key waiting on one endpoint (queue mode).
    pub max_waiters: usize,
    /// Count what would be rejected, never block.
    pub shadow: bool,
    /// Decided for the whole fleet in the quota store (`shared: true`), not by this pod alone.
    pub shared: bool,
}
