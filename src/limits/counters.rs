//! The limiter's metrics: decision counters per (endpoint, scope, decision), resolved once,
//! and the queue-depth gauge.
//!
//! Owns: [`LimitMetrics`] (the handles the metrics registry gives one vendor's limiter) and
//! the flat table of counter handles a decision indexes into, so counting never looks up a
//! label nor allocates.
//!
//! Must not: carry an API key, or anything derived from one, in a label (SPEC §7: labels are
//! bounded); the key-count gauge is the key table's.
//!
//! Approximate: nothing is sampled; a limiter built without metrics (benches, tests) counts
//! nothing.

use prometheus::{IntCounter, IntCounterVec, IntGauge};

use super::Scope;

/// The vendor's metric handles, resolved once so a decision never looks up labels.
#[derive(Clone)]
pub struct LimitMetrics {
    /// The vendor label.
    pub vendor: String,
    /// `switchboard_ratelimit_decisions_total`.
    pub decisions: IntCounterVec,
    /// `switchboard_queue_depth{vendor}`.
    pub queue_depth: IntGauge,
    /// `switchboard_ratelimit_keys{vendor}`.
    pub keys: IntGauge,
}

/// A `decision` label value; the discriminant is its place in each counter group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Counted {
    Allowed = 0,
    Queued = 1,
    Rejected = 2,
    ShadowRejected = 3,
}

impl Counted {
    /// Every decision, in counter order (each one's discriminant is its index).
    const ALL: [Counted; 4] = [
        Counted::Allowed,
        Counted::Queued,
        Counted::Rejected,
        Counted::ShadowRejected,
    ];

    /// The `decision` label.
    fn as_str(self) -> &'static str {
        match self {
            Counted::Allowed => "allowed",
            Counted::Queued => "queued",
            Counted::Rejected => "rejected",
            Counted::ShadowRejected => "shadow_rejected",
        }
    }
}

/// Counter handles per (endpoint, scope, decision), and the queue-depth gauge.
#[derive(Default)]
pub(super) struct Counters {
    by: Vec<IntCounter>,
    queue_depth: Option<IntGauge>,
}

impl Counters {
    /// Resolves every label combination of these endpoints up front (none without metrics).
    pub(super) fn new(metrics: Option<&LimitMetrics>, endpoint_names: &[String]) -> Self {
        let Some(m) = metrics else {
            return Counters::default();
        };
        let mut by = Vec::new();
        for name in endpoint_names {
            for scope in [Scope::Key, Scope::Global] {
                for d in Counted::ALL {
                    by.push(m.decisions.with_label_values(&[
                        &m.vendor,
                        name,
                        scope.as_str(),
                        d.as_str(),
                    ]));
                }
            }
        }
        Counters {
            by,
            queue_depth: Some(m.queue_depth.clone()),
        }
    }

    /// Counts one decision on endpoint `ep`.
    #[inline]
    pub(super) fn count(&self, ep: usize, scope: Scope, decision: Counted) {
        let s = usize::from(scope == Scope::Global);
        if let Some(c) = self
            .by
            .get((ep * 2 + s) * Counted::ALL.len() + decision as usize)
        {
            c.inc();
        }
    }

    /// `switchboard_queue_depth`, when metrics are on.
    pub(super) fn queue_depth(&self) -> Option<&IntGauge> {
        self.queue_depth.as_ref()
    }
}
