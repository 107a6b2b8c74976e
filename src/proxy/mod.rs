//! The request path: [`serve`] accepts requests on Pingora's HTTP/1 server, [`Switchboard`]
//! orchestrates each one — it reads the request state, calls the module that owns the
//! concern (routing, limits, the exchange, metrics) and records what happened in [`Ctx`]. It
//! holds no status tables, JSON or vendor names.
//!
//! One service serves every vendor listener; the vendor is chosen by the local port the
//! request arrived on, never by anything the client sent.

mod ctx;
pub mod error;
pub mod exchange;
pub mod respond;
pub mod serve;
mod upgrade;

pub use ctx::Ctx;
pub use exchange::Exchange;

use std::sync::Arc;
use std::time::Duration;

use pingora::prelude::HttpPeer;
use pingora::protocols::http::ServerSession as Session;
use pingora::{Error, ErrorType};

use crate::config::Vendor;
use crate::http::headers;
use crate::lifecycle::Lifecycle;
use crate::limits::{BucketSpec, InFlight, KeySource, Limiter, SharedLimits};
use crate::metrics::{Metrics, Series};
use crate::reload::Active;
use crate::routing::{Resolver, Router};
use respond::Written;

/// Everything the proxy needs about one vendor, built once from config.
pub struct VendorRuntime {
    /// The vendor's validated config.
    pub cfg: Vendor,
    /// Endpoint matching.
    pub router: Router,
    /// Cached upstream addresses.
    pub resolver: Arc<Resolver>,
    /// Rate limits decided by this pod alone.
    pub limits: Arc<Limiter>,
    /// Concurrency limits (`in_flight`), this pod's requests.
    pub in_flight: InFlight,
    /// Concurrency limits marked `shared`, leased for the fleet in the quota store.
    pub shared_slots: Option<crate::limits::SharedSlots>,
    /// What a request costs, by endpoint id (`None`: one token; `other` never has one).
    costs: Vec<Option<crate::limits::Cost>>,
    /// Limits marked `shared`, decided for the fleet in the quota store.
    pub shared: Option<SharedLimits>,
    /// Retry budget.
    pub retry_budget: crate::retry::Budget,
    /// Places for requests waiting to be retried.
    pub retry_queue: tokio::sync::Semaphore,
    /// The `Host` sent upstream (the vendor's authority), built once.
    pub host: http::HeaderValue,
    /// Each endpoint's series, by endpoint id.
    series: Vec<Series>,
}

impl VendorRuntime {
    /// What a request of endpoint `ep` costs, when its endpoint says.
    #[inline]
    pub fn cost_of(&self, ep: crate::routing::EndpointId) -> Option<&crate::limits::Cost> {
        self.costs.get(ep).and_then(Option::as_ref)
    }

    /// The series of an endpoint (`other` for an unknown id).
    pub fn series(&self, endpoint: crate::routing::EndpointId) -> &Series {
        let last = self.series.len() - 1; // never empty: `other` is always there
        &self.series[endpoint.min(last)]
    }

    /// Builds the runtime pieces for one vendor; `metrics` receives its rate-limit series;
    /// `lifecycle` tells queued requests that shutdown started; `quota` is the fleet's
    /// quota store, when one is configured. `previous`, the same listener's runtime before a
    /// reload, hands over its limiter state and its resolver (same upstream: a reload that
    /// changes it is refused).
    pub fn new(
        cfg: Vendor,
        metrics: &Metrics,
        lifecycle: Option<Arc<Lifecycle>>,
        quota: Option<&Quota>,
        previous: Option<&VendorRuntime>,
    ) -> Self {
        let router = Router::new(cfg.endpoints.clone());
        let resolver = match previous {
            Some(p) => p.resolver.clone(),
            None => Arc::new(Resolver::new(&cfg.upstream, cfg.dns_refresh)),
        };
        let header = header_name(&cfg.key.header);
        let source = match previous {
            Some(p) => p.limits.source.again(header, cfg.key.scheme.clone()),
            None => KeySource::new(header, cfg.key.scheme.clone()),
        };
        let own = |specs: &[BucketSpec]| -> Vec<BucketSpec> {
            specs.iter().filter(|s| !s.shared).cloned().collect()
        };
        let all_per_endpoint: Vec<_> = cfg.endpoints.iter().map(|e| e.limits.clone()).collect();
        let per_endpoint: Vec<_> = all_per_endpoint.iter().map(|e| own(e)).collect();
        let names: Vec<String> = router.names().map(str::to_string).collect();
        let shared = quota.and_then(|q| {
            SharedLimits::new(
                q.store.clone(),
                &cfg.name,
                q.secret.clone(),
                &cfg.limits,
                &all_per_endpoint,
                &names,
                source.clone(),
                cfg.max_keys,
                q.expected_replicas,
                Some(metrics.limits_uncounted_keys(&cfg.name)),
            )
        });
        let mut limiter = Limiter::new(
            &own(&cfg.limits),
            &per_endpoint,
            &names,
            source,
            cfg.max_keys,
            Some(metrics.limits(&cfg.name)),
        );
        if let Some(l) = lifecycle.clone() {
            limiter = limiter.stop_waiting_on_shutdown(l);
        }
        if let Some(before) = previous {
            limiter = limiter.taking_over(&before.limits);
            if let (Some(now), Some(then)) = (&shared, &before.shared) {
                now.fallback().carry_from(&then.fallback());
            }
        }
        let limits = Arc::new(limiter);
        if let Some(before) = previous {
            before.limits.hand_over(&limits);
        }
        let slot_specs: Vec<_> = cfg.endpoints.iter().map(|e| e.in_flight.clone()).collect();
        let own_slots = |l: &[crate::limits::SlotSpec]| -> Vec<crate::limits::SlotSpec> {
            l.iter().filter(|s| !s.shared).cloned().collect()
        };
        let mut in_flight = InFlight::new(
            &own_slots(&cfg.in_flight),
            &slot_specs.iter().map(|e| own_slots(e)).collect::<Vec<_>>(),
            &names,
            Some(&metrics.limits(&cfg.name)),
        );
        let shared_slots = quota.and_then(|q| {
            crate::limits::SharedSlots::new(
                q.store.clone(),
                &cfg.name,
                q.secret.clone(),
                limits.source.clone(),
                &cfg.in_flight,
                &slot_specs,
                &names,
                q.expected_replicas,
                Some(&metrics.limits(&cfg.name)),
            )
        });
        if let Some(l) = &lifecycle {
            in_flight = in_flight.stop_waiting_on_shutdown(l.clone());
        }
        if let Some(before) = previous {
            in_flight = in_flight.taking_over(&before.in_flight);
        }
        let p = &cfg.retry;
        let retry_budget = crate::retry::Budget::new(p.budget_ratio, p.budget_min_per_second);
        let retry_queue = tokio::sync::Semaphore::new(p.queue);
        // Always valid: the authority is a parsed URI's host and port.
        let host = http::HeaderValue::from_str(&cfg.upstream.authority)
            .unwrap_or_else(|_| http::HeaderValue::from_static("invalid"));
        let series = metrics.series(&cfg.name, router.names());
        let costs = cfg
            .endpoints
            .iter()
            .map(|e| e.cost.as_ref().map(crate::limits::Cost::new))
            .collect();
        VendorRuntime {
            series,
            host,
            cfg,
            router,
            resolver,
            limits,
            in_flight,
            shared_slots,
            costs,
            shared,
            retry_budget,
            retry_queue,
        }
    }

    /// The upstream peer for one resolved address, its timeouts cut to `left` (what is
    /// left of the request's deadline).
    pub fn peer(&self, addr: std::net::SocketAddr, left: Duration) -> HttpPeer {
        let cfg = &self.cfg;
        let mut peer = HttpPeer::new(addr, cfg.upstream.tls, cfg.upstream.host.clone());
        let o = &mut peer.options;
        let connect = cfg.timeouts.connect.min(left);
        let response = cfg.timeouts.response.min(left);
        o.connection_timeout = Some(connect);
        o.total_connection_timeout = Some(connect);
        o.read_timeout = Some(response);
        o.write_timeout = Some(response);
        o.idle_timeout = Some(cfg.timeouts.idle);
        peer
    }
}

/// The fleet's quota store and what every vendor needs of it.
pub struct Quota {
    /// The store.
    pub store: Arc<crate::quota::QuotaStore>,
    /// Keys the account hash: the same on every replica (the store's password when set).
    pub secret: Vec<u8>,
    /// Sizes each pod's local share (`rate / expected_replicas`).
    pub expected_replicas: u32,
}

/// The configured key header; validated at load, so the fallback is never taken.
fn header_name(name: &str) -> http::HeaderName {
    http::HeaderName::from_bytes(name.as_bytes()).unwrap_or(http::header::AUTHORIZATION)
}

/// The request handler shared by all vendor listeners: what one request goes through once
/// its header is read ([`serve`] reads it and keeps the connection).
pub struct Switchboard {
    exchange: Exchange,
    active: Arc<Active>,
}

impl Switchboard {
    /// A handler over the vendors of the runtime in force (swapped by a reload).
    pub fn new(exchange: Exchange, active: Arc<Active>) -> Self {
        Switchboard { exchange, active }
    }

    /// The process lifecycle: shutdown, and requests in flight.
    pub fn lifecycle(&self) -> &Arc<Lifecycle> {
        self.exchange.lifecycle()
    }

    /// The vendor of the listener the request came in on, in the runtime in force now: the
    /// request keeps it to the end, whatever a reload swaps in meanwhile.
    fn vendor_for(&self, session: &Session) -> Option<Arc<VendorRuntime>> {
        let port = session.server_addr()?.as_inet()?.port();
        self.active.get().vendor_on(port).cloned()
    }

    /// Answers the request whose header `session` has read: exactly one response, or `Err`
    /// when the stream had to be cut (the connection is then not reused).
    pub async fn handle(&self, session: &mut Session, ctx: &mut Ctx) -> Written {
        let Some(vendor) = self.vendor_for(session) else {
            return Error::e_explain(ErrorType::InternalError, "request on an unknown listener");
        };
        let mut relay = session.is_upgrade_req();
        if relay && !upgrade::is_websocket(session.req_header()) {
            upgrade::refuse(session.req_header_mut());
            relay = false;
        }
        let req = session.req_header();
        ctx.request.id = headers::request_id(
            req.headers
                .get(&headers::X_REQUEST_ID)
                .map(|v| v.as_bytes()),
        );
        ctx.request.idempotent = req.method.is_idempotent();
        ctx.route.endpoint = vendor.router.route(req.method.as_str(), req.uri.path());
        ctx.route.limit_key = vendor.limits.source.key_of(&req.headers);
        ctx.route.vendor = Some(vendor.clone());
        match self.exchange.admit(session, ctx, &vendor).await {
            Some(written) => written,
            // Protocol upgrades (WebSocket media streams) are relayed, not exchanged.
            None if relay => {
                let upstreams = self.exchange.upstreams();
                Box::pin(upgrade::pass(upstreams, session, ctx, &vendor)).await
            }
            None => self.exchange.run(session, ctx, &vendor).await,
        }
    }

    /// What one request leaves behind once it is answered (or cut): its metrics and its
    /// access-log line. `cut` is why the stream was cut, if it was.
    pub fn finished(&self, session: &Session, ctx: &Ctx, cut: Option<&Error>) {
        let cut = cut.map(Summary);
        let Some(v) = &ctx.route.vendor else {
            if let Some(e) = cut {
                tracing::warn!("request failed before it was routed: {e}");
            }
            return;
        };
        let method = session.req_header().method.as_str();
        let endpoint = v.router.name(ctx.route.endpoint);
        let status = ctx
            .answer
            .status
            .or_else(|| session.response_written().map(|r| r.status.as_u16()))
            .unwrap_or(0);
        let series = v.series(ctx.route.endpoint);
        series.count_request(
            method,
            http::StatusCode::from_u16(status).ok(),
            ctx.answer.client_gone,
        );
        if let Some((code, source)) = ctx.answer.error {
            series.count_error(code, source);
        }
        let a = &ctx.attempt;
        if let (Some(up), false) = (a.elapsed, a.observed) {
            series.upstream.observe(up.as_secs_f64());
        }
        let elapsed = ctx.request.started.elapsed();
        series.request.observe(elapsed.as_secs_f64());
        if let Some(e) = cut {
            // The request's summary: never its query string (keys and phone numbers travel
            // there) nor its Host header.
            tracing::warn!(
                "request cut: {e}; {method} {} vendor={} request_id={}",
                session.req_header().uri.path(),
                v.cfg.name,
                ctx.request.id
            );
        }
        if crate::access::enabled() {
            crate::access::record(&crate::access::Entry {
                request_id: &ctx.request.id,
                vendor: &v.cfg.name,
                endpoint,
                method,
                status,
                upstream_status: a.status,
                code: ctx.answer.error.map(|(c, _)| c.as_str()),
                attempts: a.made,
                duration: elapsed,
                upstream: a.elapsed,
                error: cut.as_ref().map(|e| e as &dyn std::fmt::Display),
            });
        }
    }
}

/// An error as logs may show it: a malformed message's error carries the raw bytes read
/// (request headers with keys, query strings) as its context, so only its type is shown.
#[derive(Clone, Copy)]
struct Summary<'a>(&'a Error);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0.etype() {
            ErrorType::InvalidHTTPHeader => f.write_str("InvalidHTTPHeader (message not shown)"),
            _ => self.0.fmt(f),
        }
    }
}
