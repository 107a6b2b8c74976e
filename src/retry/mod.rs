//! Whether to send a request again, and when (SPEC §6). [`decide`] is a pure function of the
//! policy, the attempt and its outcome; the exchange (`proxy::exchange`) carries it out.
//!
//! The four safety rules:
//! 1. the connection failed before the request was sent: always safe;
//! 2. the vendor said it did not process the request (HTTP 429 classified `rate_limited`,
//!    HTTP 503, or a profile code or rule marked `unprocessed`): safe for any method. These
//!    are facts the vendor stated, never a guess from a message's words;
//! 3. 500, 502, 504, timeouts, a response lost after sending: safe only for idempotent
//!    methods or requests carrying the idempotency header;
//! 4. never: a profile code marked non-retryable (`DELIVERY_FAILED`, `MAX_ATTEMPTS_EXCEEDED`,
//!    credit and consent errors), whatever the status.

mod budget;

pub use budget::Budget;

use std::sync::OnceLock;

use crate::envelope::Code;
use std::time::{Duration, Instant};

/// Time since a process-wide origin (the budget's clock).
pub fn now() -> Duration {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    ORIGIN.get_or_init(Instant::now).elapsed()
}

/// A vendor's retry policy (validated config).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Attempts in all, the first included (1 = never retry).
    pub max_attempts: u32,
    /// Backoff floor: the first retry waits up to this (full jitter).
    pub base: Duration,
    /// Backoff ceiling.
    pub max: Duration,
    /// Longest vendor hint worth waiting for; a longer one ends retrying at once.
    pub max_retry_after: Duration,
    /// Retries at most this fraction of requests over the budget window...
    pub budget_ratio: f64,
    /// ...plus this many per second, whatever the traffic.
    pub budget_min_per_second: u32,
    /// Header that makes a non-idempotent request safe to repeat (parsed once at load).
    pub idempotency_header: http::header::HeaderName,
    /// Longest a request may take in all, waits included.
    pub deadline: Duration,
    /// Most requests of this vendor waiting for a retry at once.
    pub queue: usize,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_attempts: 3,
            base: Duration::from_millis(200),
            max: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(30),
            budget_ratio: 0.2,
            budget_min_per_second: 5,
            idempotency_header: http::header::HeaderName::from_static("idempotency-key"),
            deadline: Duration::from_secs(60),
            queue: 1000,
        }
    }
}

/// How an attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// No connection (refused, DNS, TLS, connect timeout): the vendor never saw the request.
    NotSent,
    /// Sent, then no usable response (timeout, reset, garbage).
    Lost,
    /// The vendor answered with an error.
    Response {
        /// The vendor's status.
        status: u16,
        /// The canonical code the answer was classified as (for the app). Whether the
        /// request may be repeated rests on the facts below, never on the code alone: a
        /// `rate_limited` inferred from a message's words on a 400 is not a vendor's word
        /// that it did not act.
        code: Code,
        /// Retryable per the code and the profile.
        retryable: bool,
        /// The profile says whether it was processed (a code or rule marked
        /// `unprocessed`); `None` = not said.
        unprocessed: Option<bool>,
        /// The vendor's wait hint.
        hint: Option<Duration>,
    },
}

impl Outcome {
    /// The vendor stated that it did not process the request (rule 2): HTTP 429 classified
    /// `rate_limited`, HTTP 503, or a profile code/rule marked `unprocessed` — in that
    /// order of strength: the profile's `unprocessed: false` demotes the status facts.
    pub fn vendor_did_not_process(&self) -> bool {
        match *self {
            Outcome::Response {
                status,
                code,
                unprocessed,
                ..
            } => {
                unprocessed.unwrap_or((status == 429 && code == Code::RateLimited) || status == 503)
            }
            _ => false,
        }
    }

    /// The same outcome with `wait` as its hint when the vendor gave none.
    pub fn or_hint(self, wait: Duration) -> Self {
        match self {
            Outcome::Response {
                status,
                code,
                retryable,
                unprocessed,
                hint: None,
            } => Outcome::Response {
                status,
                code,
                retryable,
                unprocessed,
                hint: Some(wait),
            },
            other => other,
        }
    }

    /// The vendor stated that this key is over its rate limit, so its buckets pause (SPEC
    /// §6): a `rate_limited` answer on HTTP 429, or on any status when the profile marks the
    /// code `unprocessed`. Words in a message never pause anything.
    pub fn vendor_throttled(&self) -> bool {
        match *self {
            Outcome::Response {
                status,
                code: Code::RateLimited,
                unprocessed,
                ..
            } => unprocessed.unwrap_or(status == 429),
            _ => false,
        }
    }
}

/// What is known about the request and the attempts so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Attempts made, this one included.
    pub made: u32,
    /// GET, HEAD, PUT, DELETE, OPTIONS.
    pub idempotent_method: bool,
    /// The request carries the idempotency header.
    pub idempotency_key: bool,
    /// The body can be sent again byte for byte (it was buffered).
    pub replayable: bool,
    /// Time left before the request's deadline.
    pub time_left: Duration,
}

/// Why an attempt is retried: label `reason` of `switchboard_retries_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The connection failed before the request was sent.
    ConnectError,
    /// The vendor answered 429 `rate_limited` (or a code marked unprocessed said so).
    RateLimited,
    /// The vendor said it did not process the request (503, or a code marked unprocessed).
    Unavailable,
    /// 500/502/504/408 on a request that is safe to repeat.
    ServerError,
    /// The response was lost after sending, on a request that is safe to repeat.
    Lost,
    /// A code the profile marks retryable on another status, on a safe request.
    RetryableCode,
}

impl RetryReason {
    /// Every reason, for pre-creating the metric series.
    pub const ALL: [RetryReason; 6] = [
        RetryReason::ConnectError,
        RetryReason::RateLimited,
        RetryReason::Unavailable,
        RetryReason::ServerError,
        RetryReason::Lost,
        RetryReason::RetryableCode,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::ConnectError => "connect_error",
            RetryReason::RateLimited => "rate_limited",
            RetryReason::Unavailable => "unavailable",
            RetryReason::ServerError => "server_error",
            RetryReason::Lost => "lost",
            RetryReason::RetryableCode => "retryable_code",
        }
    }
}

/// Why retrying stops (metric label `reason` of `switchboard_retry_giveups_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUp {
    /// The outcome is final (a client error, a non-retryable code). Not counted: it is no
    /// give-up, there was nothing to retry.
    Final,
    /// The request may have been processed and is not safe to repeat.
    Unsafe,
    /// The body was streamed, not buffered: it cannot be sent again.
    NotReplayable,
    /// `max_attempts` reached.
    Attempts,
    /// The vendor asked for a longer wait than `max_retry_after`.
    HintTooLong,
    /// The wait would pass the deadline.
    Deadline,
    /// The retry budget is spent.
    Budget,
    /// The bounded retry line is full (answered `overloaded`).
    Overloaded,
    /// The retry got no rate-limit token.
    RateLimit,
    /// A shutdown started while the retry waited.
    Shutdown,
}

impl GiveUp {
    /// Every counted reason ([`GiveUp::Final`] is not one), for pre-creating the series.
    pub const COUNTED: [GiveUp; 9] = [
        GiveUp::Budget,
        GiveUp::Attempts,
        GiveUp::HintTooLong,
        GiveUp::Deadline,
        GiveUp::Unsafe,
        GiveUp::NotReplayable,
        GiveUp::Overloaded,
        GiveUp::RateLimit,
        GiveUp::Shutdown,
    ];

    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUp::Final => "final",
            GiveUp::Unsafe => "unsafe",
            GiveUp::NotReplayable => "not_replayable",
            GiveUp::Attempts => "max_attempts",
            GiveUp::HintTooLong => "hint_too_long",
            GiveUp::Deadline => "deadline",
            GiveUp::Budget => "budget",
            GiveUp::Overloaded => "overloaded",
            GiveUp::RateLimit => "ratelimit",
            GiveUp::Shutdown => "shutdown",
        }
    }
}

/// The decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Send again after this wait.
    Retry {
        /// How long to wait first.
        after: Duration,
        /// Why it is retried.
        reason: RetryReason,
    },
    /// Answer with the last outcome.
    Stop(GiveUp),
}

/// Whether the outcome may be repeated at all (rules 1–4), and the retry reason.
fn safe(outcome: &Outcome, idempotent: bool) -> Result<RetryReason, GiveUp> {
    match *outcome {
        Outcome::NotSent => Ok(RetryReason::ConnectError),
        Outcome::Lost if idempotent => Ok(RetryReason::Lost),
        Outcome::Lost => Err(GiveUp::Unsafe),
        Outcome::Response {
            status,
            retryable,
            unprocessed,
            ..
        } => {
            // Rule 4 first: a code the profile marks non-retryable is final.
            if !retryable {
                return Err(GiveUp::Final);
            }
            if outcome.vendor_did_not_process() {
                return Ok(if outcome.vendor_throttled() {
                    RetryReason::RateLimited
                } else {
                    RetryReason::Unavailable
                });
            }
            if unprocessed == Some(false) && !idempotent {
                return Err(GiveUp::Unsafe);
            }
            if status >= 500 || status == 408 {
                return if idempotent {
                    Ok(RetryReason::ServerError)
                } else {
                    Err(GiveUp::Unsafe)
                };
            }
            // A retryable code on another status (e.g. 409 marked retryable by a profile,
            // or a 400 whose words read "rate limit") repeats only what is safe to repeat.
            if idempotent {
                Ok(RetryReason::RetryableCode)
            } else {
                Err(GiveUp::Unsafe)
            }
        }
    }
}

/// Exponential backoff with full jitter: uniform in `[0, min(max, base · 2^(retry−1))]`,
/// `jitter` mapping a ceiling to a value in `[0, ceiling]`.
pub fn backoff(policy: &Policy, retry: u32, jitter: impl FnOnce(Duration) -> Duration) -> Duration {
    let exp = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
    let ceiling = policy.base.saturating_mul(exp).min(policy.max);
    jitter(ceiling).min(ceiling)
}

/// Decides whether to send again; `jitter` is [`backoff`]'s randomness. The retry budget
/// is the caller's last check ([`Budget::try_retry`]): only a retry that will happen may
/// spend it.
pub fn decide(
    policy: &Policy,
    attempt: &Attempt,
    outcome: &Outcome,
    jitter: impl FnOnce(Duration) -> Duration,
) -> Decision {
    let idempotent = attempt.idempotent_method || attempt.idempotency_key;
    let reason = match safe(outcome, idempotent) {
        Ok(r) => r,
        Err(g) => return Decision::Stop(g),
    };
    if !attempt.replayable {
        return Decision::Stop(GiveUp::NotReplayable);
    }
    if attempt.made >= policy.max_attempts {
        return Decision::Stop(GiveUp::Attempts);
    }
    let hint = match outcome {
        Outcome::Response { hint, .. } => *hint,
        _ => None,
    };
    let after = match hint {
        Some(h) if h > policy.max_retry_after => return Decision::Stop(GiveUp::HintTooLong),
        Some(h) => h,
        None => backoff(policy, attempt.made, jitter),
    };
    if after >= attempt.time_left {
        return Decision::Stop(GiveUp::Deadline);
    }
    Decision::Retry { after, reason }
}

#[cfg(test)]
mod tests;
