//! Prometheus metrics (SPEC §7). One registry per process, owned by the service, never the
//! global default, so tests can build several in one process.
//!
//! Labels are bounded by construction: vendor and endpoint names come from config, codes from
//! the closed [`Code`] set, methods from a fixed list, statuses are numbers. Never a key, a
//! phone number or a raw path.

use std::sync::OnceLock;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::envelope::{Code, Source};
use crate::retry::{GiveUp, RetryReason};

/// Buckets suited to vendor API latency: 5 ms to 30 s.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0,
];

/// Buckets for a shared decision: 100 µs to 50 ms (the decision's own timeout is ~5 ms).
pub const QUOTA_BUCKETS: [f64; 10] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
];

/// One endpoint's series, resolved when its vendor's runtime is built, so that a request
/// does not hash its label values to find them (`with_label_values` cost about 300
/// instructions a call, three calls a request).
pub struct Series {
    /// `switchboard_request_duration_seconds` of the endpoint.
    pub request: prometheus::Histogram,
    /// `switchboard_upstream_duration_seconds` of the endpoint.
    pub upstream: prometheus::Histogram,
    /// `switchboard_inflight` of the endpoint.
    pub at_vendor: prometheus::IntGauge,
    /// `switchboard_cost_unreadable_total` of the endpoint.
    pub cost_unreadable: IntCounter,
    /// `switchboard_errors_total`, every code and source (they all exist from start-up),
    /// at [`error_index`].
    errors: Vec<IntCounter>,
    /// `switchboard_requests_total` by method and status: an open set, so resolved on first
    /// use.
    requests: Slots,
    /// `switchboard_upstream_attempts_total` by status or failure, also on first use.
    attempts: Slots,
    labels: [String; 2],
    requests_family: IntCounterVec,
    attempts_family: IntCounterVec,
}

impl Series {
    /// Counts an error answer in `switchboard_errors_total`.
    pub fn count_error(&self, code: Code, source: Source) {
        if let Some(c) = self.errors.get(error_index(code, source)) {
            c.inc();
        }
    }

    /// Counts an answered request in `switchboard_requests_total`: `status` as answered
    /// (`None` when it is not a valid status), or `client_closed` when the app went away.
    pub fn count_request(&self, method: &str, status: Option<http::StatusCode>, client_gone: bool) {
        // Bounded: the common methods, every other one `OTHER`.
        let m = METHODS
            .iter()
            .position(|m| *m == method)
            .unwrap_or(METHODS.len());
        let method = METHODS.get(m).copied().unwrap_or("OTHER");
        let (key, status_label) = match (client_gone, &status) {
            (true, _) => (1000, "client_closed"),
            (false, Some(c)) => (c.as_u16(), c.as_str()),
            (false, None) => (0, "0"),
        };
        let [vendor, endpoint] = &self.labels;
        let key = u32::from(key) | ((m as u32) << 16);
        self.requests.inc(key, || {
            self.requests_family
                .with_label_values(&[vendor, endpoint, method, status_label])
        });
    }

    /// Counts an attempt in `switchboard_upstream_attempts_total`: the vendor's status, or
    /// why there was none.
    pub fn count_attempt(&self, outcome: Result<http::StatusCode, Unanswered>) {
        // Keys: a status is 100 to 999; an unanswered attempt 1000 and up.
        let (key, label) = match &outcome {
            Ok(status) => (status.as_u16(), status.as_str()),
            Err(u) => (1000 + *u as u16, u.as_str()),
        };
        let [vendor, endpoint] = &self.labels;
        self.attempts.inc(u32::from(key), || {
            self.attempts_family
                .with_label_values(&[vendor, endpoint, label])
        });
    }
}

/// `switchboard_upstream_attempts_total{status}` for an attempt that got no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswered {
    /// The connection could not be made (or DNS failed): the vendor never saw it.
    ConnectError,
    /// A connect, read or write timed out, or the deadline passed.
    Timeout,
    /// Sent, then the connection broke.
    Lost,
}

impl Unanswered {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Unanswered::ConnectError => "connect_error",
            Unanswered::Timeout => "timeout",
            Unanswered::Lost => "lost",
        }
    }
}

/// Where a code and source's counter sits in [`Series`]'s error counters.
fn error_index(code: Code, source: Source) -> usize {
    code as usize * 2 + source as usize
}

/// The methods counted under their own name in `switchboard_requests_total`.
const METHODS: [&str; 7] = ["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];

/// A few counters of one family, each resolved the first time its key is counted and kept:
/// a lookup is a few atomic loads, with no lock and no hashing. An endpoint sees a handful of
/// (method, status) pairs; past [`SLOTS`] of them the family is asked each time.
struct Slots([OnceLock<(u32, IntCounter)>; SLOTS]);

const SLOTS: usize = 8;

impl Slots {
    fn new() -> Self {
        Slots(std::array::from_fn(|_| OnceLock::new()))
    }

    fn inc(&self, key: u32, resolve: impl Fn() -> IntCounter) {
        for slot in &self.0 {
            // Another thread may fill the empty slot first, with its own key: then look on.
            let (k, c) = slot.get_or_init(|| (key, resolve()));
            if *k == key {
                c.inc();
                return;
            }
        }
        resolve().inc();
    }
}

/// All metric families.
#[derive(Clone)]
pub struct Metrics {
    registry: Registry,
    /// `switchboard_requests_total{vendor,endpoint,method,status}`
    pub requests: IntCounterVec,
    /// `switchboard_errors_total{vendor,endpoint,code,source}`
    pub errors: IntCounterVec,
    /// `switchboard_request_duration_seconds{vendor,endpoint}`
    pub request_duration: HistogramVec,
    /// `switchboard_upstream_duration_seconds{vendor,endpoint}`
    pub upstream_duration: HistogramVec,
    /// `switchboard_ratelimit_decisions_total{vendor,endpoint,scope,decision}`
    pub ratelimit_decisions: IntCounterVec,
    /// `switchboard_queue_depth{vendor}`
    pub queue_depth: IntGaugeVec,
    /// `switchboard_ratelimit_keys{vendor}`
    pub ratelimit_keys: IntGaugeVec,
    /// `switchboard_inflight{vendor,endpoint}`
    pub inflight: IntGaugeVec,
    /// `switchboard_cost_unreadable_total{vendor,endpoint}`
    pub cost_unreadable: IntCounterVec,
    /// `switchboard_access_log_dropped_total`: set from [`crate::access::dropped`] at scrape.
    access_dropped: prometheus::IntCounter,
    /// `switchboard_upstream_attempts_total{vendor,endpoint,status}`
    pub upstream_attempts: IntCounterVec,
    /// `switchboard_retries_total{vendor,endpoint,reason}`
    pub retries: IntCounterVec,
    /// `switchboard_retry_giveups_total{vendor,endpoint,reason}`
    pub retry_giveups: IntCounterVec,
    /// The shared quota store's families (SPEC §7), present whether or not one is set.
    pub quota: QuotaMetrics,
    /// Config reloads (SPEC §7).
    pub reload: ReloadMetrics,
}

/// Config reload metric handles.
#[derive(Clone)]
pub struct ReloadMetrics {
    /// `switchboard_config_reloads_total{result}` (`ok`, `error`).
    pub reloads: IntCounterVec,
    /// `switchboard_config_last_reload_successful`: 1 or 0, as Prometheus's own.
    pub last_successful: prometheus::IntGauge,
    /// `switchboard_config_info{hash}`: 1 for the config in force.
    pub info: IntGaugeVec,
}

impl ReloadMetrics {
    /// The config of this `hash` is in force from start-up.
    pub fn started(&self, hash: &str) {
        self.last_successful.set(1);
        self.info.with_label_values(&[hash]).set(1);
    }

    /// A reload was refused: the running config goes on.
    pub fn failed(&self) {
        self.reloads.with_label_values(&["error"]).inc();
        self.last_successful.set(0);
    }

    /// A reload replaced the config `old` by `new`.
    pub fn succeeded(&self, old: &str, new: &str) {
        self.reloads.with_label_values(&["ok"]).inc();
        self.last_successful.set(1);
        if old != new {
            let _ = self.info.remove_label_values(&[old]);
        }
        self.info.with_label_values(&[new]).set(1);
    }
}

/// `reason` labels of `switchboard_quota_store_errors_total` (pre-created at 0).
pub const QUOTA_ERRORS: [&str; 3] = ["timeout", "connect", "script"];

/// The shared quota store's metric handles.
#[derive(Clone)]
pub struct QuotaMetrics {
    /// `switchboard_quota_store_duration_seconds`: one shared decision, round trip included.
    pub duration: prometheus::Histogram,
    /// `switchboard_quota_store_errors_total{reason}`.
    pub errors: IntCounterVec,
    /// `switchboard_quota_store_fallback`: 1 while deciding on the local share.
    pub fallback: prometheus::IntGauge,
    /// `switchboard_quota_store_replicas`: live replicas last counted through the heartbeat.
    pub replicas: prometheus::IntGauge,
    /// `switchboard_quota_store_expected_replicas`: the configured `expected_replicas`.
    pub expected_replicas: prometheus::IntGauge,
}

impl Metrics {
    /// Registers every family. `vendors` lists each vendor with its endpoint labels so that
    /// every `code` series exists at 0 from start-up.
    pub fn new(vendors: &[(String, Vec<String>)]) -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(c.clone()))?;
            Ok::<_, prometheus::Error>(c)
        };
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let histogram = |name: &str, help: &str| {
            let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
            let h = HistogramVec::new(opts, &["vendor", "endpoint"])?;
            registry.register(Box::new(h.clone()))?;
            Ok::<_, prometheus::Error>(h)
        };
        let requests = counter(
            "switchboard_requests_total",
            "Requests answered, by final status",
            &["vendor", "endpoint", "method", "status"],
        )?;
        let errors = counter(
            "switchboard_errors_total",
            "Error responses, by canonical code and source",
            &["vendor", "endpoint", "code", "source"],
        )?;
        let request_duration = histogram(
            "switchboard_request_duration_seconds",
            "Time from request received to response finished",
        )?;
        let upstream_duration = histogram(
            "switchboard_upstream_duration_seconds",
            "Time from upstream request sent to response header received, per attempt",
        )?;
        let ratelimit_decisions = counter(
            "switchboard_ratelimit_decisions_total",
            "Rate-limit decisions: allowed, queued (then allowed or rejected), rejected, shadow_rejected",
            &["vendor", "endpoint", "scope", "decision"],
        )?;
        let queue_depth = gauge(
            "switchboard_queue_depth",
            "Requests currently held waiting (rate-limit queue or a retry)",
            &["vendor"],
        )?;
        let ratelimit_keys = gauge(
            "switchboard_ratelimit_keys",
            "API keys with live rate-limit state",
            &["vendor"],
        )?;
        let cost_unreadable = counter(
            "switchboard_cost_unreadable_total",
            "Requests on an endpoint with a cost whose body could not be read for it (charged 1 token)",
            &["vendor", "endpoint"],
        )?;
        let access_dropped = prometheus::IntCounter::new(
            "switchboard_access_log_dropped_total",
            "Access-log lines dropped because stderr could not keep up (the line buffer was full) or a write failed",
        )?;
        registry.register(Box::new(access_dropped.clone()))?;
        let inflight = gauge(
            "switchboard_inflight",
            "Requests at the vendor now: an attempt under way (connecting included), its answer not yet complete",
            &["vendor", "endpoint"],
        )?;
        let upstream_attempts = counter(
            "switchboard_upstream_attempts_total",
            "Requests sent to the vendor, retries included, by vendor status (or connect_error, timeout, lost)",
            &["vendor", "endpoint", "status"],
        )?;
        let retries = counter(
            "switchboard_retries_total",
            "Retries sent, by why the previous attempt was retried",
            &["vendor", "endpoint", "reason"],
        )?;
        let retry_giveups = counter(
            "switchboard_retry_giveups_total",
            "Retriable-looking outcomes answered without a retry, by why (budget, max_attempts, unsafe, ...)",
            &["vendor", "endpoint", "reason"],
        )?;
        let plain_gauge = |name: &str, help: &str| {
            let g = prometheus::IntGauge::new(name, help)?;
            registry.register(Box::new(g.clone()))?;
            Ok::<_, prometheus::Error>(g)
        };
        let quota_duration = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "switchboard_quota_store_duration_seconds",
                "One shared quota decision, Redis round trip included",
            )
            .buckets(QUOTA_BUCKETS.to_vec()),
        )?;
        registry.register(Box::new(quota_duration.clone()))?;
        let quota = QuotaMetrics {
            duration: quota_duration,
            errors: counter(
                "switchboard_quota_store_errors_total",
                "Shared quota decisions that failed, by reason (timeout, connect, script)",
                &["reason"],
            )?,
            fallback: plain_gauge(
                "switchboard_quota_store_fallback",
                "1 while shared limits are decided on this replica's local share",
            )?,
            replicas: plain_gauge(
                "switchboard_quota_store_replicas",
                "Live replicas last counted through the quota store's heartbeat",
            )?,
            expected_replicas: plain_gauge(
                "switchboard_quota_store_expected_replicas",
                "The configured quota_store.expected_replicas (0 without a quota store)",
            )?,
        };
        for reason in QUOTA_ERRORS {
            quota.errors.with_label_values(&[reason]);
        }
        let reload = ReloadMetrics {
            reloads: counter(
                "switchboard_config_reloads_total",
                "Config reloads (SIGHUP or a changed file), by result (ok, error)",
                &["result"],
            )?,
            last_successful: plain_gauge(
                "switchboard_config_last_reload_successful",
                "1 when the last config reload succeeded (or none was tried), 0 when it was refused",
            )?,
            info: gauge(
                "switchboard_config_info",
                "1 for the config in force; hash: a digest of the config and its profiles",
                &["hash"],
            )?,
        };
        for result in ["ok", "error"] {
            reload.reloads.with_label_values(&[result]);
        }
        reload.last_successful.set(1);
        let m = Metrics {
            registry,
            requests,
            errors,
            request_duration,
            upstream_duration,
            ratelimit_decisions,
            queue_depth,
            ratelimit_keys,
            inflight,
            cost_unreadable,
            access_dropped,
            upstream_attempts,
            retries,
            retry_giveups,
            quota,
            reload,
        };
        m.declare(vendors);
        Ok(m)
    }

    /// Creates every vendor's and endpoint's series at 0 (again after a reload: new endpoints
    /// get theirs; existing ones are left as they are).
    pub fn declare(&self, vendors: &[(String, Vec<String>)]) {
        let (queue_depth, ratelimit_keys, retries, retry_giveups, errors) = (
            &self.queue_depth,
            &self.ratelimit_keys,
            &self.retries,
            &self.retry_giveups,
            &self.errors,
        );
        for (vendor, endpoints) in vendors {
            queue_depth.with_label_values(&[vendor]);
            ratelimit_keys.with_label_values(&[vendor]);
            for ep in endpoints {
                for reason in RetryReason::ALL {
                    retries.with_label_values(&[vendor, ep, reason.as_str()]);
                }
                for reason in GiveUp::COUNTED {
                    retry_giveups.with_label_values(&[vendor, ep, reason.as_str()]);
                }
                for code in Code::ALL {
                    for source in [Source::Upstream, Source::Proxy] {
                        errors.with_label_values(&[vendor, ep, code.as_str(), source.as_str()]);
                    }
                }
            }
        }
    }

    /// Moves `switchboard_queue_depth{vendor}` by `delta` (requests waiting for a retry).
    pub fn queue_depth_retry(&self, vendor: &str, delta: i64) {
        self.queue_depth.with_label_values(&[vendor]).add(delta);
    }

    /// The series of one vendor, one [`Series`] per endpoint in `endpoints` order.
    pub fn series<'a>(
        &self,
        vendor: &str,
        endpoints: impl Iterator<Item = &'a str>,
    ) -> Vec<Series> {
        endpoints
            .map(|e| {
                let mut errors = Vec::with_capacity(Code::ALL.len() * 2);
                for code in Code::ALL {
                    for source in [Source::Upstream, Source::Proxy] {
                        debug_assert_eq!(errors.len(), error_index(code, source));
                        errors.push(self.errors.with_label_values(&[
                            vendor,
                            e,
                            code.as_str(),
                            source.as_str(),
                        ]));
                    }
                }
                Series {
                    request: self.request_duration.with_label_values(&[vendor, e]),
                    upstream: self.upstream_duration.with_label_values(&[vendor, e]),
                    at_vendor: self.inflight.with_label_values(&[vendor, e]),
                    cost_unreadable: self.cost_unreadable.with_label_values(&[vendor, e]),
                    errors,
                    requests: Slots::new(),
                    attempts: Slots::new(),
                    labels: [vendor.to_string(), e.to_string()],
                    requests_family: self.requests.clone(),
                    attempts_family: self.upstream_attempts.clone(),
                }
            })
            .collect()
    }

    /// The rate-limit metric handles of one vendor.
    pub fn limits(&self, vendor: &str) -> crate::limits::LimitMetrics {
        crate::limits::LimitMetrics {
            vendor: vendor.to_string(),
            decisions: self.ratelimit_decisions.clone(),
            queue_depth: self.queue_depth.with_label_values(&[vendor]),
            keys: self.ratelimit_keys.with_label_values(&[vendor]),
        }
    }

    /// Like [`Metrics::limits`], with a key gauge of its own that is not exported: for a
    /// second limiter of the vendor (the shared limits' local share), whose decisions count
    /// with the vendor's but whose key count would overwrite the first one's.
    pub fn limits_uncounted_keys(&self, vendor: &str) -> crate::limits::LimitMetrics {
        let mut m = self.limits(vendor);
        if let Ok(g) = prometheus::IntGauge::new("switchboard_unexported_keys", "unexported") {
            m.keys = g;
        }
        m
    }

    /// The Prometheus text exposition of every family.
    pub fn render(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * 1024);
        // The access log counts what it drops on its own (it has no registry); a counter only
        // grows, so it is brought up to that count. Scrapes do not race here: the admin
        // service runs one thread and this read-then-add has no await in between.
        let dropped = crate::access::dropped();
        let counted = self.access_dropped.get();
        if dropped > counted {
            self.access_dropped.inc_by(dropped - counted);
        }
        let families = self.registry.gather();
        if let Err(e) = TextEncoder::new().encode(&families, &mut out) {
            tracing::error!(error = %e, "metrics encoding failed");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> Metrics {
        Metrics::new(&[("v".into(), vec!["a".into(), "other".into()])])
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The value of the exported series `name{labels}` (labels in the exposition's order).
    fn value(m: &Metrics, name: &str, labels: &str) -> Option<u64> {
        let text = String::from_utf8(m.render()).unwrap_or_default();
        let prefix = format!("{name}{{{labels}}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|v| v.parse().ok())
    }

    #[test]
    fn each_error_counts_under_its_own_code_and_source() {
        let m = metrics();
        let series = m.series("v", ["a"].into_iter());
        for (i, code) in Code::ALL.into_iter().enumerate() {
            for _ in 0..=i {
                series[0].count_error(code, Source::Upstream);
            }
            series[0].count_error(code, Source::Proxy);
        }
        for (i, code) in Code::ALL.into_iter().enumerate() {
            let labels = |source: &str| {
                format!(
                    "code=\"{}\",endpoint=\"a\",source=\"{source}\",vendor=\"v\"",
                    code.as_str()
                )
            };
            let name = "switchboard_errors_total";
            assert_eq!(value(&m, name, &labels("upstream")), Some(i as u64 + 1));
            assert_eq!(value(&m, name, &labels("proxy")), Some(1));
        }
    }

    #[test]
    fn requests_count_under_their_labels_beyond_the_resolved_few() {
        let m = metrics();
        let series = m.series("v", ["a"].into_iter());
        let statuses = [
            200u16, 201, 204, 400, 401, 404, 422, 429, 500, 502, 503, 504,
        ];
        // More (method, status) pairs than there are slots, each counted a different number
        // of times, interleaved so slots fill in an order unlike the pairs'.
        for round in 0..3 {
            for (i, status) in statuses.iter().enumerate() {
                for method in ["GET", "POST", "BREW"] {
                    if round <= i % 3 {
                        series[0].count_request(
                            method,
                            http::StatusCode::from_u16(*status).ok(),
                            false,
                        );
                    }
                }
            }
        }
        series[0].count_request("GET", None, false);
        series[0].count_request("GET", http::StatusCode::from_u16(200).ok(), true);
        for (i, status) in statuses.iter().enumerate() {
            for method in ["GET", "POST", "OTHER"] {
                let labels =
                    format!("endpoint=\"a\",method=\"{method}\",status=\"{status}\",vendor=\"v\"");
                let got = value(&m, "switchboard_requests_total", &labels);
                assert_eq!(got, Some(i as u64 % 3 + 1), "{labels}");
            }
        }
        for status in ["0", "client_closed"] {
            let labels = format!("endpoint=\"a\",method=\"GET\",status=\"{status}\",vendor=\"v\"");
            assert_eq!(value(&m, "switchboard_requests_total", &labels), Some(1));
        }
    }

    #[test]
    fn attempts_counted_from_many_threads_are_all_counted_once() {
        let m = metrics();
        let series = std::sync::Arc::new(m.series("v", ["a"].into_iter()));
        let status = |s: u16| http::StatusCode::from_u16(s).map_err(|_| Unanswered::Lost);
        let outcomes = [
            status(200),
            status(429),
            status(500),
            status(503),
            Err(Unanswered::Timeout),
            Err(Unanswered::Lost),
            Err(Unanswered::ConnectError),
        ];
        let labels = [
            "200",
            "429",
            "500",
            "503",
            "timeout",
            "lost",
            "connect_error",
        ];
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let series = series.clone();
                std::thread::spawn(move || {
                    for n in 0..1000 {
                        // Each thread walks the labels in its own order: racing to fill slots.
                        series[0].count_attempt(outcomes[(n + t * 3) % outcomes.len()]);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join()
                .unwrap_or_else(|_| panic!("a counting thread panicked"));
        }
        let mut total = 0;
        for label in labels {
            let l = format!("endpoint=\"a\",status=\"{label}\",vendor=\"v\"");
            let got = value(&m, "switchboard_upstream_attempts_total", &l);
            assert!(got.is_some_and(|n| n > 0), "{l}: {got:?}");
            total += got.unwrap_or(0);
        }
        assert_eq!(total, 4000);
    }

    #[test]
    fn every_code_series_exists_at_zero() {
        let m = Metrics::new(&[("v".into(), vec!["a".into(), "other".into()])])
            .unwrap_or_else(|e| panic!("{e}"));
        let text = String::from_utf8(m.render()).unwrap_or_default();
        for code in Code::ALL {
            let line = format!(
                "switchboard_errors_total{{code=\"{}\",endpoint=\"a\",source=\"upstream\",vendor=\"v\"}} 0",
                code.as_str()
            );
            assert!(text.contains(&line), "missing {line}");
        }
    }
}
