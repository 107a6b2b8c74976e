//! Per-request state carried between the proxy hooks.

use std::sync::Arc;
use std::time::Instant;

use crate::envelope::{Code, Envelope, Source};
use crate::lifecycle::InflightGuard;
use crate::routing::EndpointId;

use super::VendorRuntime;

/// Per-request state.
pub struct Ctx {
    /// The vendor this listener serves (set in `request_filter`).
    pub vendor: Option<Arc<VendorRuntime>>,
    /// Switchboard's request id.
    pub request_id: String,
    /// Matched endpoint.
    pub endpoint: EndpointId,
    /// Method is idempotent (repeatable without side effects).
    pub idempotent: bool,
    /// The rate-limit key (a keyed hash of the API key, never the key).
    pub limit_key: u64,
    /// When the request arrived.
    pub started: Instant,
    /// Request body bytes received so far.
    pub body_bytes: u64,
    /// Upstream attempts made.
    pub attempts: u32,
    /// The current attempt's request header was handed to the upstream.
    pub sent: bool,
    /// When the current attempt was sent.
    pub upstream_started: Option<Instant>,
    /// How long the last answered attempt took to its response header.
    pub upstream_elapsed: Option<std::time::Duration>,
    /// Upstream latency was already recorded per attempt (by the forwarding engine).
    pub upstream_observed: bool,
    /// The vendor's status on the last attempt that answered.
    pub upstream_status: Option<u16>,
    /// A proxy error decided inside a hook, answered by `fail_to_proxy`.
    pub pending: Option<(Code, String)>,
    /// Status answered to the client.
    pub status: Option<u16>,
    /// Canonical code and source when the answer was an error envelope.
    pub error: Option<(Code, Source)>,
    /// The client went away before an answer could be written.
    pub client_gone: bool,
    _inflight: InflightGuard,
}

impl Ctx {
    /// A fresh context, counted as in flight until dropped.
    pub fn new(inflight: InflightGuard) -> Self {
        Ctx {
            vendor: None,
            request_id: String::new(),
            endpoint: 0,
            idempotent: false,
            limit_key: 0,
            started: Instant::now(),
            body_bytes: 0,
            attempts: 0,
            sent: false,
            upstream_started: None,
            upstream_elapsed: None,
            upstream_status: None,
            upstream_observed: false,
            pending: None,
            status: None,
            error: None,
            client_gone: false,
            _inflight: inflight,
        }
    }

    /// Records what the client was answered.
    pub fn answered(&mut self, status: u16, env: Option<&Envelope>) {
        self.status = Some(status);
        self.error = env.map(|e| (e.error.code, e.error.source));
    }
}
