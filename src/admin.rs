//! The admin listener: `GET /healthz` (process alive), `GET /readyz` (config loaded,
//! listeners bound, not draining) and `GET /metrics` (Prometheus text). Anything else is 404.
//!
//! Pingora's own Prometheus service answers on every path, so this is a small `ServeHttp` app.

use std::sync::Arc;

use async_trait::async_trait;
use http::Response;
use pingora::apps::http_app::ServeHttp;
use pingora::protocols::http::ServerSession;

use crate::lifecycle::Lifecycle;
use crate::metrics::Metrics;

/// The admin HTTP app.
pub struct AdminApp {
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
}

impl AdminApp {
    /// Serves these metrics and this lifecycle.
    pub fn new(metrics: Metrics, lifecycle: Arc<Lifecycle>) -> Self {
        AdminApp { metrics, lifecycle }
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
        Response::builder()
            .status(status)
            .header("content-type", ctype)
            .header("content-length", len)
            .header("cache-control", "no-store")
            .body(body)
            .unwrap_or_else(|_| Response::new(Vec::new()))
    }
}
