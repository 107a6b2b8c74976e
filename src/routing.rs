//! Routing: which configured endpoint a request belongs to, and where the vendor is on the
//! network right now.
//!
//! Host names are resolved off the request path by a background task and cached; a request
//! only reads the cache (and, when nothing was ever resolved, waits for one bounded async
//! lookup). Pingora's `HttpPeer::new(host)` resolves blocking and unwraps, so peers are only
//! ever built from socket addresses. The incoming `Host` header never chooses the destination.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;

use crate::config::{Endpoint, Upstream, OTHER_ENDPOINT};

/// Index of a configured endpoint; `endpoints.len()` stands for `other`.
pub type EndpointId = usize;

/// Matches requests to a vendor's configured endpoints, first match wins.
#[derive(Debug, Clone)]
pub struct Router {
    endpoints: Vec<Endpoint>,
}

impl Router {
    /// Builds a router over the configured endpoints (order kept).
    pub fn new(endpoints: Vec<Endpoint>) -> Self {
        Router { endpoints }
    }

    /// The endpoint for this method and path.
    pub fn route(&self, method: &str, path: &str) -> EndpointId {
        self.endpoints
            .iter()
            .position(|e| {
                path.starts_with(&e.path_prefix)
                    && (e.methods.is_empty() || e.methods.iter().any(|m| m == method))
            })
            .unwrap_or(self.endpoints.len())
    }

    /// The metric label of an endpoint id.
    pub fn name(&self, id: EndpointId) -> &str {
        self.endpoints
            .get(id)
            .map(|e| e.name.as_str())
            .unwrap_or(OTHER_ENDPOINT)
    }

    /// Every label this router can produce, `other` last.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.endpoints
            .iter()
            .map(|e| e.name.as_str())
            .chain(std::iter::once(OTHER_ENDPOINT))
    }

    /// Number of ids (configured endpoints plus `other`).
    pub fn len(&self) -> usize {
        self.endpoints.len() + 1
    }

    /// Never empty: `other` always exists.
    pub fn is_empty(&self) -> bool {
        false
    }
}

/// Why no address is available for the upstream.
#[derive(Debug, Clone, thiserror::Error)]
#[error("cannot resolve {host}: {reason}")]
pub struct ResolveError {
    /// The host that failed.
    pub host: String,
    /// What the resolver said.
    pub reason: String,
}

/// A cached, periodically refreshed view of an upstream host's addresses.
#[derive(Debug)]
pub struct Resolver {
    host: String,
    port: u16,
    refresh: Duration,
    addrs: RwLock<Arc<Vec<SocketAddr>>>,
    next: AtomicUsize,
}

impl Resolver {
    /// A resolver for the upstream; IP literals never touch DNS.
    pub fn new(upstream: &Upstream, refresh: Duration) -> Self {
        let fixed = upstream
            .host
            .parse::<IpAddr>()
            .map(|ip| vec![SocketAddr::new(ip, upstream.port)])
            .unwrap_or_default();
        Resolver {
            host: upstream.host.clone(),
            port: upstream.port,
            refresh,
            addrs: RwLock::new(Arc::new(fixed)),
            next: AtomicUsize::new(0),
        }
    }

    fn is_literal(&self) -> bool {
        self.host.parse::<IpAddr>().is_ok()
    }

    fn cached(&self) -> Arc<Vec<SocketAddr>> {
        match self.addrs.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Resolves now and replaces the cache. On failure the previous addresses are kept:
    /// a stale address is more useful than none while DNS is down.
    pub async fn refresh(&self) -> Result<(), ResolveError> {
        if self.is_literal() {
            return Ok(());
        }
        let found = tokio::net::lookup_host((self.host.as_str(), self.port))
            .await
            .map(Iterator::collect);
        self.update(found)
    }

    /// Takes one lookup's answer: addresses replace the cache; an error or an empty answer
    /// leaves the previous addresses in place.
    fn update(&self, found: std::io::Result<Vec<SocketAddr>>) -> Result<(), ResolveError> {
        let err = |reason: String| ResolveError {
            host: self.host.clone(),
            reason,
        };
        let found = found.map_err(|e| err(e.to_string()))?;
        if found.is_empty() {
            return Err(err("no addresses".into()));
        }
        let mut guard = match self.addrs.write() {
            Ok(g) => g,
            Err(poisoned) => poisoned.into_inner(),
        };
        *guard = Arc::new(found);
        Ok(())
    }

    /// An address to connect to, rotating over the resolved set. When nothing was ever
    /// resolved, one lookup is attempted, bounded by `timeout`.
    pub async fn pick(&self, timeout: Duration) -> Result<SocketAddr, ResolveError> {
        let mut addrs = self.cached();
        if addrs.is_empty() {
            match tokio::time::timeout(timeout, self.refresh()).await {
                Ok(r) => r?,
                Err(_) => {
                    return Err(ResolveError {
                        host: self.host.clone(),
                        reason: format!("lookup timed out after {timeout:?}"),
                    })
                }
            }
            addrs = self.cached();
        }
        let n = addrs.len();
        if n == 0 {
            return Err(ResolveError {
                host: self.host.clone(),
                reason: "no addresses".into(),
            });
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % n;
        Ok(addrs[i])
    }
}

/// Background service that refreshes every resolver on its own interval.
pub struct DnsRefresher {
    resolvers: Vec<Arc<Resolver>>,
}

impl DnsRefresher {
    /// Refreshes these resolvers until shutdown.
    pub fn new(resolvers: Vec<Arc<Resolver>>) -> Self {
        DnsRefresher { resolvers }
    }
}

#[async_trait]
impl BackgroundService for DnsRefresher {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let tasks = self.resolvers.iter().filter(|r| !r.is_literal()).map(|r| {
            let r = r.clone();
            let mut shutdown = shutdown.clone();
            async move {
                loop {
                    if let Err(e) = r.refresh().await {
                        tracing::warn!(error = %e, "DNS refresh failed; keeping previous addresses");
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(r.refresh) => {}
                        _ = shutdown.changed() => return,
                    }
                }
            }
        });
        let all = futures_join_all(tasks.collect());
        tokio::select! {
            _ = all => {}
            _ = shutdown.changed() => {}
        }
    }
}

/// Runs futures concurrently on the current task (small n; avoids a `futures` dependency).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(futs: Vec<F>) {
    let mut set = tokio::task::JoinSet::new();
    for f in futs {
        set.spawn(f);
    }
    while set.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse_upstream;

    fn ep(name: &str, prefix: &str, methods: &[&str]) -> Endpoint {
        Endpoint {
            name: name.into(),
            path_prefix: prefix.into(),
            methods: methods.iter().map(|m| m.to_string()).collect(),
            limits: Vec::new(),
            in_flight: Vec::new(),
            cost: None,
        }
    }

    #[test]
    fn first_match_wins_and_other_is_last() {
        let r = Router::new(vec![
            ep("send", "/v1/calls", &["POST"]),
            ep("calls", "/v1/calls", &[]),
        ]);
        assert_eq!(r.name(r.route("POST", "/v1/calls/x")), "send");
        assert_eq!(r.name(r.route("GET", "/v1/calls/x")), "calls");
        assert_eq!(r.name(r.route("GET", "/v2")), "other");
        assert_eq!(r.names().collect::<Vec<_>>(), ["send", "calls", "other"]);
    }

    #[tokio::test]
    async fn literal_needs_no_dns_and_unresolvable_is_an_error() {
        let lit = Resolver::new(
            &parse_upstream("http://127.0.0.1:9").unwrap_or_else(|e| panic!("{e}")),
            Duration::from_secs(1),
        );
        assert_eq!(
            lit.pick(Duration::from_secs(1)).await.ok(),
            Some("127.0.0.1:9".parse().unwrap_or_else(|e| panic!("{e}")))
        );
        let bad = Resolver::new(
            &parse_upstream("https://does-not-exist.invalid").unwrap_or_else(|e| panic!("{e}")),
            Duration::from_secs(1),
        );
        let e = bad.pick(Duration::from_secs(5)).await;
        assert!(e.is_err());
    }

    /// The distinct addresses `n` picks return.
    async fn picks(r: &Resolver, n: usize) -> Vec<SocketAddr> {
        let mut seen = Vec::new();
        for _ in 0..n {
            let a = r.pick(Duration::from_secs(1)).await;
            seen.push(a.unwrap_or_else(|e| panic!("pick: {e}")));
        }
        seen.sort();
        seen.dedup();
        seen
    }

    /// The README's promise: a failed refresh keeps the last good addresses, and requests go
    /// on being sent to them (no new lookup while the cache holds something).
    #[tokio::test]
    async fn a_failed_refresh_keeps_the_last_good_addresses() {
        let r = Resolver::new(
            &parse_upstream("https://vendor.invalid").unwrap_or_else(|e| panic!("{e}")),
            Duration::from_secs(1),
        );
        let good: Vec<SocketAddr> = ["192.0.2.1:443", "192.0.2.2:443"]
            .iter()
            .map(|a| a.parse().unwrap_or_else(|e| panic!("{e}")))
            .collect();
        assert!(r.update(Ok(good.clone())).is_ok());
        assert_eq!(picks(&r, 4).await, good);

        let failed = r.update(Err(std::io::Error::other("SERVFAIL")));
        assert!(failed.is_err_and(|e| e.reason.contains("SERVFAIL")));
        assert_eq!(picks(&r, 4).await, good, "an error kept the old addresses");

        // A real lookup that fails: `.invalid` never resolves (RFC 6761).
        assert!(r.refresh().await.is_err());
        assert_eq!(
            picks(&r, 4).await,
            good,
            "a failed lookup kept the old addresses"
        );

        assert!(r.update(Ok(Vec::new())).is_err());
        assert_eq!(
            picks(&r, 4).await,
            good,
            "an empty answer kept the old addresses"
        );

        let moved: SocketAddr = "192.0.2.9:443".parse().unwrap_or_else(|e| panic!("{e}"));
        assert!(r.update(Ok(vec![moved])).is_ok());
        assert_eq!(
            picks(&r, 2).await,
            [moved],
            "a good answer replaces the cache"
        );
    }
}
