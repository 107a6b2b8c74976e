//! The Pingora `ProxyHttp` implementation: a thin orchestrator. Each hook reads the request
//! state, calls the module that owns the concern (routing, normalize, metrics, headers) and
//! records what happened in [`Ctx`]. It holds no status tables, JSON or vendor names.
//!
//! One service serves every vendor listener; the vendor is chosen by the local port the
//! request arrived on, never by anything the client sent.

mod ctx;
pub mod forward;
pub mod pool;

pub use ctx::Ctx;
pub use forward::{Forwarder, Outcome};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorType, Result};

use crate::config::Vendor;
use crate::envelope::{Code, Envelope};
use crate::headers;
use crate::lifecycle::Lifecycle;
use crate::limits::{KeySource, Limiter, Verdict};
use crate::metrics::{method_label, Latency, Metrics};
use crate::normalize::transport::{classify, AttemptState};
use crate::routing::{Resolver, Router};

/// Everything the proxy needs about one vendor, built once from config.
pub struct VendorRuntime {
    /// The vendor's validated config.
    pub cfg: Vendor,
    /// Endpoint matching.
    pub router: Router,
    /// Cached upstream addresses.
    pub resolver: Arc<Resolver>,
    /// Rate limits.
    pub limits: Arc<Limiter>,
    /// Retry budget.
    pub retry_budget: crate::retry::Budget,
    /// Places for requests waiting to be retried.
    pub retry_queue: tokio::sync::Semaphore,
    /// The `Host` sent upstream (the vendor's authority), built once.
    pub host: http::HeaderValue,
    /// Latency histograms by endpoint id.
    latency: Vec<Latency>,
}

impl VendorRuntime {
    /// The latency histograms of an endpoint (`other` for an unknown id).
    pub fn latency(&self, endpoint: crate::routing::EndpointId) -> &Latency {
        let last = self.latency.len() - 1; // never empty: `other` is always there
        &self.latency[endpoint.min(last)]
    }

    /// Builds the runtime pieces for one vendor; `metrics` receives its rate-limit series;
    /// `lifecycle` tells queued requests that shutdown started.
    pub fn new(cfg: Vendor, metrics: &Metrics, lifecycle: Option<Arc<Lifecycle>>) -> Self {
        let router = Router::new(cfg.endpoints.clone());
        let resolver = Arc::new(Resolver::new(&cfg.upstream, cfg.dns_refresh));
        let header = http::header::HeaderName::from_bytes(cfg.key.header.as_bytes())
            .unwrap_or(http::header::AUTHORIZATION);
        let per_endpoint: Vec<_> = cfg.endpoints.iter().map(|e| e.limits.clone()).collect();
        let names: Vec<String> = router.names().map(str::to_string).collect();
        let mut limiter = Limiter::new(
            &cfg.limits,
            &per_endpoint,
            &names,
            KeySource::new(header, cfg.key.scheme.clone()),
            cfg.max_keys,
            Some(metrics.limits(&cfg.name)),
        );
        if let Some(l) = lifecycle {
            limiter = limiter.stop_waiting_on_shutdown(l);
        }
        let limits = Arc::new(limiter);
        let p = &cfg.retry;
        let retry_budget = crate::retry::Budget::new(p.budget_ratio, p.budget_min_per_second);
        let retry_queue = tokio::sync::Semaphore::new(p.queue);
        // Always valid: the authority is a parsed URI's host and port.
        let host = http::HeaderValue::from_str(&cfg.upstream.authority)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        let latency = metrics.latency(&cfg.name, router.names());
        VendorRuntime {
            latency,
            host,
            cfg,
            router,
            resolver,
            limits,
            retry_budget,
            retry_queue,
        }
    }
}

/// The proxy service shared by all vendor listeners.
pub struct Switchboard {
    forwarder: Forwarder,
    vendors: Vec<Arc<VendorRuntime>>,
    by_port: HashMap<u16, usize>,
    metrics: Metrics,
    lifecycle: Arc<Lifecycle>,
}

impl Switchboard {
    /// A proxy over these vendors.
    pub fn new(
        forwarder: Forwarder,
        vendors: Vec<Arc<VendorRuntime>>,
        metrics: Metrics,
        lifecycle: Arc<Lifecycle>,
    ) -> Self {
        let by_port = vendors
            .iter()
            .enumerate()
            .map(|(i, v)| (v.cfg.listen.port(), i))
            .collect();
        Switchboard {
            forwarder,
            vendors,
            by_port,
            metrics,
            lifecycle,
        }
    }

    fn vendor_for(&self, session: &Session) -> Option<Arc<VendorRuntime>> {
        let port = session.server_addr()?.as_inet()?.port();
        self.by_port
            .get(&port)
            .and_then(|&i| self.vendors.get(i))
            .cloned()
    }

    /// Answers locally with an envelope. The unread request body is drained when it is small
    /// enough to be worth keeping the connection for; otherwise the connection closes.
    async fn answer(
        &self,
        session: &mut Session,
        ctx: &mut Ctx,
        env: Envelope,
        drain: bool,
        extra: &[(&'static str, String)],
    ) -> Result<()> {
        if drain {
            if session.drain_request_body().await.is_err() {
                session.set_keepalive(None);
            }
        } else {
            session.set_keepalive(None);
        }
        match forward::write_envelope_with(session, ctx, env, extra).await {
            Outcome::Answered => Ok(()),
            Outcome::Aborted(e) => Err(e),
        }
    }
}

/// Custom error types so `fail_to_proxy` can tell our own refusals from Pingora's.
const PROXY_REFUSED: ErrorType = ErrorType::Custom("switchboard refused the request");

#[async_trait]
impl ProxyHttp for Switchboard {
    type CTX = Ctx;

    fn new_ctx(&self) -> Ctx {
        Ctx::new(self.lifecycle.track())
    }

    /// No downstream modules: Pingora's default adds a (disabled) response-compression
    /// module, which still runs on every response header and body chunk. Switchboard
    /// never compresses; the app gets the vendor's bytes and encoding as sent.
    fn init_downstream_modules(&self, _modules: &mut pingora::modules::http::HttpModules) {}

    async fn request_filter(&self, session: &mut Session, ctx: &mut Ctx) -> Result<bool> {
        let Some(vendor) = self.vendor_for(session) else {
            return Error::e_explain(ErrorType::InternalError, "request on an unknown listener");
        };
        let req = session.req_header();
        ctx.request_id = headers::request_id(
            req.headers
                .get(&headers::X_REQUEST_ID)
                .map(|v| v.as_bytes()),
        );
        ctx.endpoint = vendor.router.route(req.method.as_str(), req.uri.path());
        ctx.idempotent = req.method.is_idempotent();
        ctx.limit_key = vendor.limits.source.key_of(&req.headers);
        ctx.vendor = Some(vendor.clone());
        let name = vendor.cfg.name.as_str();

        // Request smuggling guard: Pingora drops Content-Length when Transfer-Encoding is also
        // present; such a request is malformed and never forwarded.
        let has_te = req.headers.contains_key(http::header::TRANSFER_ENCODING);
        let raw_cl = has_te
            && session
                .as_http1()
                .is_some_and(|s| headers::raw_has_content_length(&s.get_headers_raw_bytes()));
        if raw_cl {
            let env = Envelope::proxy(
                Code::ValidationFailed,
                "request has both Content-Length and Transfer-Encoding",
                name,
                &ctx.request_id,
            );
            self.answer(session, ctx, env, false, &[]).await?;
            return Ok(true);
        }
        let declared = session
            .req_header()
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > vendor.cfg.max_request_body) {
            let env = Envelope::proxy(
                Code::PayloadTooLarge,
                format!(
                    "request body exceeds the limit of {} bytes",
                    vendor.cfg.max_request_body
                ),
                name,
                &ctx.request_id,
            );
            self.answer(session, ctx, env, false, &[]).await?;
            return Ok(true);
        }
        if vendor.limits.applies(ctx.endpoint) {
            if let Verdict::Reject(r) = vendor.limits.admit(ctx.limit_key, ctx.endpoint).await {
                let (env, extra) = Envelope::rate_limited_locally(&r, name, &ctx.request_id);
                self.answer(session, ctx, env, true, &extra).await?;
                return Ok(true);
            }
        }
        // Protocol upgrades (WebSocket media streams) take Pingora's own proxy path.
        if session.is_upgrade_req() {
            return Ok(false);
        }
        match self.forwarder.run(session, ctx, &vendor).await {
            Outcome::Answered => Ok(true),
            Outcome::Aborted(e) => Err(e),
        }
    }

    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        _end_of_stream: bool,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.body_bytes += body.as_ref().map_or(0, |b| b.len() as u64);
        let limit = ctx
            .vendor
            .as_ref()
            .map_or(u64::MAX, |v| v.cfg.max_request_body);
        if ctx.body_bytes > limit {
            ctx.pending = Some((
                Code::PayloadTooLarge,
                format!("request body exceeds the limit of {limit} bytes"),
            ));
            return Error::e_explain(PROXY_REFUSED, "request body too large");
        }
        Ok(())
    }

    async fn upstream_peer(&self, _session: &mut Session, ctx: &mut Ctx) -> Result<Box<HttpPeer>> {
        let Some(vendor) = ctx.vendor.clone() else {
            return Error::e_explain(ErrorType::InternalError, "no vendor for request");
        };
        let cfg = &vendor.cfg;
        let addr = match vendor.resolver.pick(cfg.timeouts.connect).await {
            Ok(a) => a,
            Err(e) => {
                ctx.pending = Some((Code::UpstreamUnavailable, e.to_string()));
                return Error::e_explain(PROXY_REFUSED, "upstream host unresolvable");
            }
        };
        ctx.attempts += 1;
        ctx.sent = false;
        Ok(Box::new(vendor.peer(addr)))
    }

    async fn upstream_request_filter(
        &self,
        _session: &mut Session,
        upstream_request: &mut RequestHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        if let Some(v) = &ctx.vendor {
            upstream_request.insert_header(http::header::HOST, v.host.clone())?;
        }
        headers::strip_request_hop_by_hop(upstream_request);
        ctx.sent = true;
        ctx.upstream_started = Some(Instant::now());
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        ctx.upstream_status = Some(upstream_response.status.as_u16());
        ctx.upstream_elapsed = ctx.upstream_started.map(|t| t.elapsed());
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        upstream_response: &mut ResponseHeader,
        ctx: &mut Ctx,
    ) -> Result<()> {
        headers::strip_response_hop_by_hop(upstream_response);
        upstream_response.insert_header(headers::X_REQUEST_ID, &ctx.request_id)?;
        ctx.answered(upstream_response.status.as_u16(), None);
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        _session: &mut Session,
        e: Box<Error>,
        _ctx: &mut Ctx,
        _client_reused: bool,
    ) -> Box<Error> {
        // No retries yet: whether a failed attempt may be repeated is the retry policy's call.
        let mut e = e.more_context(format!("peer: {peer}"));
        e.set_retry(false);
        e
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Ctx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        ctx.sent = false;
        e.set_retry(false);
        e
    }

    async fn fail_to_proxy(&self, session: &mut Session, e: &Error, ctx: &mut Ctx) -> FailToProxy {
        let vendor = ctx
            .vendor
            .as_ref()
            .map_or("", |v| v.cfg.name.as_str())
            .to_string();
        if ctx.request_id.is_empty() {
            ctx.request_id = headers::request_id(None);
        }
        let state = AttemptState {
            sent: ctx.sent,
            idempotent: ctx.idempotent,
        };
        let classified = ctx.pending.take().or_else(|| classify(e, state));
        let Some((code, message)) = classified else {
            ctx.client_gone = true;
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        if session.response_written().is_some() {
            // Headers already went out (e.g. reset mid-body): all we can do is cut the stream.
            tracing::warn!(request_id = %ctx.request_id, %vendor, error = %e, "upstream failed mid-response");
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        }
        let env =
            Envelope::proxy(code, message, &vendor, &ctx.request_id).with_attempts(ctx.attempts);
        let status = env.status();
        tracing::debug!(request_id = %ctx.request_id, %vendor, code = %code, error = %e, "answering with proxy error");
        if let Outcome::Aborted(we) = forward::write_envelope(session, ctx, env).await {
            tracing::debug!(error = %we, "could not write error response");
        }
        FailToProxy {
            error_code: status,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut Ctx) {
        let Some(v) = &ctx.vendor else { return };
        let method = session.req_header().method.as_str();
        let endpoint = v.router.name(ctx.endpoint);
        let status = ctx
            .status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let status_label = if ctx.client_gone {
            "client_closed".to_string()
        } else {
            status.to_string()
        };
        self.metrics
            .requests
            .with_label_values(&[&v.cfg.name, endpoint, method_label(method), &status_label])
            .inc();
        if let Some((code, source)) = ctx.error {
            self.metrics
                .errors
                .with_label_values(&[&v.cfg.name, endpoint, code.as_str(), source.as_str()])
                .inc();
        }
        let latency = v.latency(ctx.endpoint);
        if let (Some(up), false) = (ctx.upstream_elapsed, ctx.upstream_observed) {
            latency.upstream.observe(up.as_secs_f64());
        }
        let elapsed = ctx.started.elapsed();
        latency.request.observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "switchboard::access",
            request_id = %ctx.request_id,
            vendor = %v.cfg.name,
            endpoint,
            method,
            status,
            upstream_status = ctx.upstream_status,
            code = ctx.error.map(|(c, _)| c.as_str()),
            attempts = ctx.attempts,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            upstream_ms = ctx.upstream_elapsed.map(|d| d.as_secs_f64() * 1000.0),
            error = e.map(|e| e.to_string()),
        );
    }
}
