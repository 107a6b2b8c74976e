//! The admin listener: `GET /healthz` (process alive), `GET /readyz` (config loaded,
//! listeners bound, not draining), `GET /metrics` (Prometheus text) and `GET /config` (the
//! config in force, secrets redacted, with its hash in `X-Switchboard-Config`). Anything else
//! is 404.
//!
//! Pingora's own Prometheus service answers on every path, so this is a small `ServeHttp` app.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;
use crate::reload::Active;

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
    active: Arc<Active>,
}

impl AdminApp {
    /// Serves these metrics, this lifecycle and the config in force.
    pub fn new(metrics: Metrics, lifecycle: Arc<Lifecycle>, active: Arc<Active>) -> Self {
        AdminApp {
            metrics,
            lifecycle,
            active,
        }
    }

    /// The response for a method and path (split out so it can be tested without sockets).
    pub fn answer(&self, method: &str, path: &str) -> (u16, &'static str, Vec<u8>) {
        let text = "text/plain; charset=utf-8";
        if method != "GET" && method != "HEAD" {
            return (405, text, b"method not allowed\n".to_vec());
        }
        match path {
            "/healthz" => (200, text, b"ok\n".to_vec()),
            "/readyz" if self.lifecycle.is_ready() => (200, text, b"ready\n".to_vec()),
            "/readyz" if self.lifecycle.is_draining() => (503, text, b"draining\n".to_vec()),
            "/readyz" => (503, text, b"starting\n".to_vec()),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics.render(),
            ),
            "/config" => (200, "application/json", self.active.get().shown.clone()),
            _ => (404, text, b"not found\n".to_vec()),
        }
    }
}

#[async_trait]
impl ServeHttp for AdminApp {
    async fn response(&self, session: &mut ServerSession) -> Response<Vec<u8>> {
        let req = session.req_header();
        let (status, ctype, body) = self.answer(req.method.as_str(), req.uri.path());
        let len = body.len();
        let hash = self.active.get().hash.clone();
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", len)
            .header("cache-control", "no-store")
            .header("x-switchboard-config", hash)
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
