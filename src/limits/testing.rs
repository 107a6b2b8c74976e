//! Builders shared by the limiter's unit tests.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use prometheus::{IntCounterVec, IntGauge, Opts};

use super::{BucketSpec, KeySource, LimitMetrics, Limiter, Mode, Scope, Shape, Verdict};

/// A per-key, reject-mode, enforced limit of `rate` per `per_s` seconds.
pub(super) fn spec(rate: u32, per_s: u64, burst: u32) -> BucketSpec {
    BucketSpec {
        shape: Shape {
            rate,
            per: Duration::from_secs(per_s),
            burst,
        },
        scope: Scope::Key,
        mode: Mode::Reject,
        max_wait: Duration::from_secs(5),
        max_waiters: 100,
        shadow: false,
        shared: false,
    }
}

/// Unregistered metrics for vendor `v`.
pub(super) fn metrics() -> LimitMetrics {
    LimitMetrics {
        vendor: "v".into(),
        decisions: IntCounterVec::new(
            Opts::new("d", "d"),
            &["vendor", "endpoint", "scope", "decision"],
        )
        .unwrap(),
        queue_depth: IntGauge::new("q", "q").unwrap(),
        keys: IntGauge::new("k", "k").unwrap(),
    }
}

/// Endpoint 0 is `ep` with `own` limits; endpoint 1 is `other`.
pub(super) fn limiter(
    wide: Vec<BucketSpec>,
    own: Vec<BucketSpec>,
    m: Option<LimitMetrics>,
) -> Limiter {
    Limiter::new(
        &wide,
        &[own, vec![]],
        &["ep".into(), "other".into()],
        KeySource::new(http::header::AUTHORIZATION, Some("bearer".into())),
        1000,
        m,
    )
}

/// Decisions on endpoint `ep` under `scope` and `d`.
pub(super) fn count(m: &IntCounterVec, scope: &str, d: &str) -> u64 {
    m.with_label_values(&["v", "ep", scope, d]).get()
}

/// How many of `n` requests of `key` on `ep` are allowed.
pub(super) async fn allowed(l: &Limiter, key: u64, ep: usize, n: usize) -> usize {
    let mut ok = 0;
    for _ in 0..n {
        if l.admit(key, ep).await == Verdict::Allow {
            ok += 1;
        }
    }
    ok
}
