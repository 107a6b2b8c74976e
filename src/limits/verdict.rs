//! What the limiter answers for one request: go, or the facts of a denial.
//!
//! Owns: [`Verdict`] and [`Reject`] — how long until a token frees, and the rate, window and
//! scope of the bucket that denied, which is what a client needs to come back at the right
//! time.
//!
//! Must not: build responses. The 429 a client sees — its envelope, `Retry-After` and
//! `X-RateLimit-*` headers — is the envelope's (`Envelope::rate_limited_locally`), so the
//! limiter stays free of wire formats.
//!
//! Approximate: `wait` is exact to the nanosecond, but clients get whole seconds, rounded up
//! ([`Reject::retry_after_s`]); a request turned away from a full line gets an estimate
//! (one emission interval per request ahead), not a computed TAT.

use std::time::Duration;

use super::Scope;

/// Why a request may not go now, with what the app needs to come back at the right time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reject {
    /// Earliest time a token frees up.
    pub wait: Duration,
    /// The tightest bucket's rate (for `X-RateLimit-Limit`).
    pub limit: u32,
    /// Its window.
    pub per: Duration,
    /// Its scope.
    pub scope: Scope,
}

impl Reject {
    /// `Retry-After` in whole seconds, rounded up, at least 1.
    pub fn retry_after_s(&self) -> u64 {
        let d = self.wait;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }

    /// Requests left in the bucket that denied (`X-RateLimit-Remaining`): none, or it would
    /// not have denied.
    pub fn remaining(&self) -> u32 {
        0
    }

    /// Seconds until that bucket takes a request again (`X-RateLimit-Reset`, as a delta):
    /// the same instant as [`Reject::retry_after_s`].
    pub fn reset_s(&self) -> u64 {
        self.retry_after_s()
    }
}

/// The answer for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Go ahead (tokens taken).
    Allow,
    /// Answer 429.
    Reject(Reject),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn after(wait: Duration) -> Reject {
        Reject {
            wait,
            limit: 10,
            per: Duration::from_secs(60),
            scope: Scope::Key,
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds_and_is_never_zero() {
        for (wait, secs) in [
            (Duration::ZERO, 1),
            (Duration::from_nanos(1), 1),
            (Duration::from_secs(1), 1),
            (Duration::from_millis(8_571), 9),
            (Duration::from_secs(30), 30),
        ] {
            let r = after(wait);
            assert_eq!(r.retry_after_s(), secs, "{wait:?}");
            assert_eq!(r.reset_s(), secs, "{wait:?}");
            assert_eq!(r.remaining(), 0);
        }
    }
}
