//! Per-request state carried between the proxy hooks, grouped by who writes it: the route
//! (set once on arrival), the request's own facts, the current attempt, and the answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::envelope::{Code, Envelope, Source};
use crate::lifecycle::InflightGuard;
use crate::routing::EndpointId;

use super::VendorRuntime;

/// Where the request goes.
#[derive(Default)]
pub struct Route {
    /// The vendor this listener serves.
    pub vendor: Option<Arc<VendorRuntime>>,
    /// Matched endpoint.
    pub endpoint: EndpointId,
    /// The rate-limit key (a keyed hash of the API key, never the key).
    pub limit_key: u64,
}

/// Facts about the request itself.
pub struct Request {
    /// Switchboard's request id.
    pub id: String,
    /// When the request arrived.
    pub started: Instant,
    /// Safe to repeat: an idempotent method, or the idempotency header.
    pub idempotent: bool,
    /// When the request must be answered by (set by the exchange).
    pub deadline: Instant,
    /// How long the request was given in all (for messages).
    pub budget: Duration,
    /// It carried `X-Switchboard-Deadline` (to drop upstream without looking again).
    pub had_deadline: bool,
    /// Tokens the request takes of each bucket (its `cost`; 1 without one): a retry takes
    /// as many.
    pub cost: u32,
}

/// The current (or last) attempt at the vendor.
#[derive(Default)]
pub struct Attempt {
    /// Attempts made so far.
    pub made: u32,
    /// The current attempt's request header was handed to the upstream.
    pub sent: bool,
    /// When the current attempt was sent.
    pub started: Option<Instant>,
    /// How long the last answered attempt took to its response header.
    pub elapsed: Option<Duration>,
    /// Upstream latency was already recorded per attempt (by the exchange).
    pub observed: bool,
    /// The vendor's status on the last attempt that answered.
    pub status: Option<u16>,
    /// The concurrency slots taken for the next attempt, which holds them while it runs
    /// (boxed: most requests have none, and the context is moved with every request).
    pub slots: Option<Box<crate::limits::Held>>,
}

/// What the app was answered.
#[derive(Default)]
pub struct Answer {
    /// Status answered to the client.
    pub status: Option<u16>,
    /// Canonical code and source when the answer was an error envelope.
    pub error: Option<(Code, Source)>,
    /// The client went away before an answer could be written.
    pub client_gone: bool,
}

/// Per-request state.
pub struct Ctx {
    /// Where the request goes.
    pub route: Route,
    /// The request's own facts.
    pub request: Request,
    /// The current attempt.
    pub attempt: Attempt,
    /// The answer.
    pub answer: Answer,
    _inflight: InflightGuard,
}

impl Ctx {
    /// A fresh context, counted as in flight until dropped.
    pub fn new(inflight: InflightGuard) -> Self {
        Ctx {
            route: Route::default(),
            request: Request {
                id: String::new(),
                started: Instant::now(),
                idempotent: false,
                deadline: Instant::now(),
                budget: Duration::ZERO,
                had_deadline: false,
                cost: 1,
            },
            attempt: Attempt::default(),
            answer: Answer::default(),
            _inflight: inflight,
        }
    }

    /// Records what the client was answered.
    pub fn answered(&mut self, status: u16, env: Option<&Envelope>) {
        self.answer.status = Some(status);
        self.answer.error = env.map(|e| (e.error.code, e.error.source));
    }
}
