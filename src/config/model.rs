//! The validated configuration model, and the conversion from the raw file into it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use super::raw::*;
use crate::diag::{parse_duration, parse_size, typed, Problems};
use crate::limits::{BucketSpec, CostSpec, Mode, Scope, Shape, SlotSpec};
use crate::normalize::Profile;
use crate::retry::Policy;

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// The file it came from.
    pub file: PathBuf,
    /// Admin listener.
    pub admin: Admin,
    /// Shutdown behaviour.
    pub shutdown: Shutdown,
    /// Process-wide server settings.
    pub server: Server,
    /// Logging.
    pub log: Log,
    /// Folder holding `<profile>.yaml` vendor profiles.
    pub profiles_dir: PathBuf,
    /// Where limits marked `shared` are decided (none: every limit is this pod's own).
    pub quota_store: Option<QuotaStore>,
    /// When a changed file is reloaded without a signal.
    pub reload: Reload,
    /// One entry per vendor listener.
    pub vendors: Vec<Vendor>,
    /// The file as read, environment overrides applied (for `GET /config`, redacted).
    pub source: serde_json::Value,
}

/// `reload:` — SIGHUP always reloads; with `watch`, so does a change of the file's content
/// (or of a profile's), looked for every `poll`.
#[derive(Debug, Clone, PartialEq)]
pub struct Reload {
    /// Poll the config file and the profiles for changes.
    pub watch: bool,
    /// How often.
    pub poll: Duration,
}

/// `quota_store:` — the Redis that decides limits marked `shared: true` for the fleet.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaStore {
    /// `redis://` or `rediss://` URLs: one for a standalone Redis, several for Cluster nodes.
    pub urls: Vec<String>,
    /// Environment variable holding the password (read at start-up, never logged).
    pub password_env: Option<String>,
    /// Longest a decision waits on Redis before this pod decides on its local share.
    pub timeout: Duration,
    /// Replicas assumed when counting live ones is not possible (the local share is
    /// `rate / max(expected_replicas, live replicas)`).
    pub expected_replicas: u32,
}

/// `admin:` — the listener for `/metrics`, `/healthz`, `/readyz`.
#[derive(Debug, Clone, PartialEq)]
pub struct Admin {
    /// Address to bind; 127.0.0.1 by default.
    pub listen: SocketAddr,
}

/// `shutdown:`
#[derive(Debug, Clone, PartialEq)]
pub struct Shutdown {
    /// Longest time SIGTERM waits for in-flight requests before exiting anyway.
    pub grace_period: Duration,
}

/// `server:`
#[derive(Debug, Clone, PartialEq)]
pub struct Server {
    /// Worker threads serving all vendor listeners.
    pub threads: usize,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// `log:`
#[derive(Debug, Clone, PartialEq)]
pub struct Log {
    /// Output format.
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `switchboard=debug`.
    pub level: String,
}

/// The request header with which an app picks the error format for one request.
pub const ERRORS_HEADER: http::HeaderName = http::HeaderName::from_static("x-switchboard-errors");

/// How a vendor's errors reach the app (SPEC §3 "Error format per app").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorFormat {
    /// The canonical envelope.
    Envelope,
    /// The vendor's own status, headers and body, byte for byte, with the canonical code in
    /// `X-Switchboard-Error`: for apps on the vendor's SDK.
    Vendor,
}

impl ErrorFormat {
    /// The format a request asks for with `X-Switchboard-Errors`, else `self`.
    pub fn for_request(self, headers: &http::HeaderMap) -> ErrorFormat {
        match headers.get(&ERRORS_HEADER).map(|v| v.as_bytes()) {
            Some(v) if v.eq_ignore_ascii_case(b"vendor") => ErrorFormat::Vendor,
            Some(v) if v.eq_ignore_ascii_case(b"envelope") => ErrorFormat::Envelope,
            _ => self,
        }
    }
}

/// One vendor: a local listener in front of one upstream base URL.
#[derive(Debug, Clone)]
pub struct Vendor {
    /// Name used in envelopes, metrics and logs.
    pub name: String,
    /// Local address apps send to.
    pub listen: SocketAddr,
    /// Where requests go.
    pub upstream: Upstream,
    /// Profile name (`<profiles_dir>/<profile>.yaml`), if any.
    pub profile: Option<String>,
    /// The compiled profile (the generic detector alone when none is named).
    pub dialect: Arc<Profile>,
    /// How its errors reach the app (`errors:`; `passthrough_errors: true` is `vendor`).
    pub errors: ErrorFormat,
    /// Upstream timeouts.
    pub timeouts: Timeouts,
    /// Named endpoints, matched in order; unmatched requests are `other`.
    pub endpoints: Vec<Endpoint>,
    /// Largest request body accepted, in bytes.
    pub max_request_body: u64,
    /// How often the upstream host name is resolved again.
    pub dns_refresh: Duration,
    /// Where the API key is (for per-key limits).
    pub key: KeyConfig,
    /// Limits on every request of the vendor.
    pub limits: Vec<BucketSpec>,
    /// Concurrency limits (`in_flight: N`) on every request of the vendor.
    pub in_flight: Vec<SlotSpec>,
    /// Most API keys tracked at once; new keys beyond share one stricter bucket.
    pub max_keys: usize,
    /// Retry policy.
    pub retry: Policy,
}

/// `vendors[].key`: the header holding the API key, and its auth scheme if any.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyConfig {
    /// Header name, lower case.
    pub header: String,
    /// Scheme word before the key (`bearer`), if any.
    pub scheme: Option<String>,
}

/// The vendor's base URL, split for use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Upstream {
    /// The URL as configured.
    pub url: String,
    /// `https`?
    pub tls: bool,
    /// Host name or IP literal (no brackets).
    pub host: String,
    /// Port.
    pub port: u16,
    /// Value for the `Host` header sent upstream.
    pub authority: String,
}

/// `vendors[].timeouts`
#[derive(Debug, Clone)]
pub struct Timeouts {
    /// TCP + TLS connect.
    pub connect: Duration,
    /// Longest wait for each read from the vendor, including the response header.
    pub response: Duration,
    /// Idle pooled connections are closed after this.
    pub idle: Duration,
}

/// A named group of paths, the unit for per-endpoint limits and metrics.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Name (metric label).
    pub name: String,
    /// Path prefix to match.
    pub path_prefix: String,
    /// Methods to match (upper case); empty = any.
    pub methods: Vec<String>,
    /// Limits on this endpoint's requests (on top of the vendor-wide ones).
    pub limits: Vec<BucketSpec>,
    /// Concurrency limits on this endpoint's requests (on top of the vendor-wide ones).
    pub in_flight: Vec<SlotSpec>,
    /// What one request costs in tokens, read from its body (`None`: one token).
    pub cost: Option<CostSpec>,
}

/// Label used for requests that match no endpoint.
pub const OTHER_ENDPOINT: &str = "other";

fn section<T: DeserializeOwned + Default>(v: &Value, path: &str, p: &mut Problems) -> T {
    if v.is_null() {
        return T::default();
    }
    typed(v, path, p).unwrap_or_default()
}

fn addr(s: &str, path: &str, p: &mut Problems) -> Option<SocketAddr> {
    match s.parse() {
        Ok(a) => Some(a),
        Err(_) => {
            p.push(
                path,
                format!("invalid listen address {s:?} (expected ip:port, e.g. 127.0.0.1:8081)"),
            );
            None
        }
    }
}

fn duration(s: Option<&str>, default: Duration, path: &str, p: &mut Problems) -> Duration {
    match s.map(parse_duration) {
        None => default,
        Some(Ok(d)) if d.is_zero() => {
            p.push(path, "must be greater than zero");
            default
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.push(path, e);
            default
        }
    }
}

/// Parses an upstream base URL. The path must be empty: apps keep their paths unchanged.
pub fn parse_upstream(url: &str) -> Result<Upstream, String> {
    let bad = |why: &str| format!("invalid upstream {url:?}: {why}");
    let uri: http::Uri = url
        .parse()
        .map_err(|_| bad("not a URL (expected e.g. https://api.example.com)"))?;
    let tls = match uri.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(bad("scheme must be http or https")),
    };
    let host = uri.host().ok_or_else(|| bad("missing host"))?;
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    if host.is_empty() {
        return Err(bad("missing host"));
    }
    if uri.path_and_query().is_some_and(|pq| pq.as_str() != "/") {
        return Err(bad(
            "must have no path or query (put the path in the app's base URL instead)",
        ));
    }
    let default_port = if tls { 443 } else { 80 };
    let port = uri.port_u16().unwrap_or(default_port);
    let authority = match uri.port_u16() {
        Some(p) if p != default_port => format!("{}:{p}", uri.host().unwrap_or(&host)),
        _ => uri.host().unwrap_or(&host).to_string(),
    };
    Ok(Upstream {
        url: url.to_string(),
        tls,
        host,
        port,
        authority,
    })
}

fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

const METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT",
];

fn vendor(
    v: &Value,
    i: usize,
    base_dir: &Path,
    profiles_dir: &Path,
    p: &mut Problems,
) -> Option<Vendor> {
    let path = format!("vendors[{i}]");
    let raw: RawVendor = typed(v, &path, p)?;
    if !valid_name(&raw.name) {
        p.push(
            format!("{path}.name"),
            format!("invalid name {:?} (use a-z, 0-9, _ and -)", raw.name),
        );
    }
    let listen = addr(&raw.listen, &format!("{path}.listen"), p);
    let upstream = match parse_upstream(&raw.upstream) {
        Ok(u) => Some(u),
        Err(e) => {
            p.push(format!("{path}.upstream"), e);
            None
        }
    };
    let mut dialect = Arc::new(Profile::generic());
    if let Some(profile) = &raw.profile {
        let file = profiles_dir.join(format!("{profile}.yaml"));
        let shown = pathdiff(&file, base_dir);
        if !valid_name(profile) {
            p.push(
                format!("{path}.profile"),
                format!("invalid profile name {profile:?}"),
            );
        } else if !file.is_file() {
            p.push(
                format!("{path}.profile"),
                format!("profile {profile:?} not found (looked for {shown})"),
            );
        } else {
            match Profile::load(profiles_dir, profile) {
                Ok(compiled) => dialect = Arc::new(compiled),
                Err(problems) => {
                    for (at, msg) in problems {
                        let at = if at.is_empty() {
                            String::new()
                        } else {
                            format!("{at}: ")
                        };
                        p.push(format!("{path}.profile"), format!("{shown}: {at}{msg}"));
                    }
                }
            }
        }
    }
    let t = &raw.timeouts;
    let timeouts = Timeouts {
        connect: duration(
            t.connect.as_deref(),
            Duration::from_secs(2),
            &format!("{path}.timeouts.connect"),
            p,
        ),
        response: duration(
            t.response.as_deref(),
            Duration::from_secs(30),
            &format!("{path}.timeouts.response"),
            p,
        ),
        idle: duration(
            t.idle.as_deref(),
            Duration::from_secs(60),
            &format!("{path}.timeouts.idle"),
            p,
        ),
    };
    let mut names = HashSet::new();
    let mut endpoints = Vec::new();
    for (j, e) in raw.endpoints.iter().enumerate() {
        let ep = format!("{path}.endpoints[{j}]");
        if !valid_name(&e.name) || e.name == OTHER_ENDPOINT {
            p.push(
                format!("{ep}.name"),
                format!(
                    "invalid endpoint name {:?} (use a-z, 0-9, _ and -; `other` is reserved)",
                    e.name
                ),
            );
        } else if !names.insert(e.name.clone()) {
            p.push(
                format!("{ep}.name"),
                format!("duplicate endpoint name {:?}", e.name),
            );
        }
        if !e.matcher.path_prefix.starts_with('/') {
            p.push(
                format!("{ep}.match.path_prefix"),
                format!("path_prefix {:?} must start with /", e.matcher.path_prefix),
            );
        }
        let mut methods = Vec::new();
        for (k, m) in e.matcher.methods.iter().flatten().enumerate() {
            let up = m.to_ascii_uppercase();
            if METHODS.contains(&up.as_str()) {
                methods.push(up);
            } else {
                p.push(
                    format!("{ep}.match.methods[{k}]"),
                    format!("unknown HTTP method {m:?}"),
                );
            }
        }
        let (limits, in_flight) = limit_list(&e.limits, &format!("{ep}.limits"), p);
        let cost = e.cost.as_ref().and_then(|c| {
            let mut pointer = |v: &Option<String>, name: &str| match v {
                Some(ptr) if !ptr.starts_with('/') => {
                    p.push(
                        format!("{ep}.cost.{name}"),
                        format!("invalid JSON pointer {ptr:?} (must start with /, e.g. /Body)"),
                    );
                    None
                }
                other => other.clone(),
            };
            let spec = CostSpec {
                segments: pointer(&c.segments, "segments"),
                recipients: pointer(&c.recipients, "recipients"),
            };
            if spec.segments.is_none() && spec.recipients.is_none() {
                p.push(
                    format!("{ep}.cost"),
                    "a cost names segments, recipients or both (JSON pointers into the body)",
                );
            }
            (spec != CostSpec::default()).then_some(spec)
        });
        endpoints.push(Endpoint {
            name: e.name.clone(),
            path_prefix: e.matcher.path_prefix.clone(),
            methods,
            limits,
            in_flight,
            cost,
        });
    }
    let max_request_body = match raw.max_request_body.as_ref().map(parse_size) {
        None => 1024 * 1024,
        Some(Ok(n)) if n > 0 => n,
        Some(Ok(_)) => {
            p.push(
                format!("{path}.max_request_body"),
                "must be greater than zero",
            );
            1
        }
        Some(Err(e)) => {
            p.push(format!("{path}.max_request_body"), e);
            1
        }
    };
    let dns_refresh = duration(
        raw.dns_refresh.as_deref(),
        Duration::from_secs(30),
        &format!("{path}.dns_refresh"),
        p,
    );
    let (limits, in_flight) = limit_list(&raw.limits, &format!("{path}.limits"), p);
    let key = key_config(raw.key.as_ref(), &format!("{path}.key"), p);
    let max_keys = match raw.max_keys {
        None => DEFAULT_MAX_KEYS,
        Some(n) if (1..=10_000_000).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                format!("{path}.max_keys"),
                format!("invalid max_keys {n} (expected 1 to 10000000)"),
            );
            DEFAULT_MAX_KEYS
        }
    };
    let retry = retry_policy(raw.retry.as_ref(), &format!("{path}.retry"), p);
    let errors = match (raw.errors.as_deref(), raw.passthrough_errors) {
        (None, None | Some(false)) | (Some("envelope"), None | Some(false)) => {
            ErrorFormat::Envelope
        }
        (None | Some("vendor"), Some(true)) | (Some("vendor"), None | Some(false)) => {
            ErrorFormat::Vendor
        }
        (Some("envelope"), Some(true)) => {
            p.push(
                format!("{path}.passthrough_errors"),
                "passthrough_errors: true (the old name of errors: vendor) contradicts errors: envelope",
            );
            ErrorFormat::Envelope
        }
        (Some(other), _) => {
            p.push(
                format!("{path}.errors"),
                format!("invalid errors {other:?} (expected envelope or vendor)"),
            );
            ErrorFormat::Envelope
        }
    };
    Some(Vendor {
        retry,
        key,
        limits,
        in_flight,
        max_keys,
        name: raw.name,
        listen: listen?,
        upstream: upstream?,
        profile: raw.profile,
        dialect,
        errors,
        timeouts,
        endpoints,
        max_request_body,
        dns_refresh,
    })
}

/// Keys tracked per vendor unless `max_keys` says otherwise (about 100 bytes each).
pub const DEFAULT_MAX_KEYS: usize = 1_000_000;

/// Most limits in one list (vendor-wide or one endpoint's).
const MAX_LIMITS: usize = 16;

fn key_config(raw: Option<&RawKey>, path: &str, p: &mut Problems) -> KeyConfig {
    let header = raw
        .and_then(|k| k.header.as_deref())
        .unwrap_or("authorization")
        .to_ascii_lowercase();
    if http::header::HeaderName::from_bytes(header.as_bytes()).is_err() {
        p.push(
            format!("{path}.header"),
            format!("invalid header name {header:?}"),
        );
    }
    // Bearer is implied only for the Authorization header; a named header holds the key as is.
    let scheme = match raw.and_then(|k| k.scheme.as_deref()) {
        Some(s) if s.eq_ignore_ascii_case("none") => None,
        Some(s) if !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') => {
            Some(s.to_ascii_lowercase())
        }
        Some(s) => {
            p.push(
                format!("{path}.scheme"),
                format!("invalid scheme {s:?} (a word such as bearer, or none)"),
            );
            None
        }
        None if header == "authorization" => Some("bearer".into()),
        None => None,
    };
    KeyConfig { header, scheme }
}

fn retry_policy(raw: Option<&RawRetry>, path: &str, p: &mut Problems) -> Policy {
    let d = Policy::default();
    let Some(r) = raw else {
        return d;
    };
    let max_attempts = match r.max_attempts {
        None => d.max_attempts,
        Some(n) if (1..=10).contains(&n) => n as u32,
        Some(n) => {
            p.push(
                format!("{path}.max_attempts"),
                format!("invalid max_attempts {n} (expected 1 to 10; 1 = never retry)"),
            );
            d.max_attempts
        }
    };
    let b = r.backoff.as_ref();
    let base = duration(
        b.and_then(|b| b.base.as_deref()),
        d.base,
        &format!("{path}.backoff.base"),
        p,
    );
    let max = duration(
        b.and_then(|b| b.max.as_deref()),
        d.max,
        &format!("{path}.backoff.max"),
        p,
    );
    if base > max {
        p.push(
            format!("{path}.backoff"),
            "base must not be larger than max",
        );
    }
    let max_retry_after = duration(
        r.max_retry_after.as_deref(),
        d.max_retry_after,
        &format!("{path}.max_retry_after"),
        p,
    );
    let deadline = duration(
        r.deadline.as_deref(),
        d.deadline,
        &format!("{path}.deadline"),
        p,
    );
    let budget = r.budget.as_ref();
    let budget_ratio = match budget.and_then(|b| b.ratio) {
        None => d.budget_ratio,
        Some(x) if (0.0..=10.0).contains(&x) => x,
        Some(x) => {
            p.push(
                format!("{path}.budget.ratio"),
                format!("invalid ratio {x} (expected 0 to 10, e.g. 0.2)"),
            );
            d.budget_ratio
        }
    };
    let budget_min_per_second = match budget.and_then(|b| b.min_per_second) {
        None => d.budget_min_per_second,
        Some(n) if (0..=100_000).contains(&n) => n as u32,
        Some(n) => {
            p.push(
                format!("{path}.budget.min_per_second"),
                format!("invalid min_per_second {n} (expected 0 to 100000)"),
            );
            d.budget_min_per_second
        }
    };
    let idempotency_header = match r.idempotency_header.as_deref() {
        None => d.idempotency_header,
        Some(name) => http::header::HeaderName::from_bytes(name.as_bytes()).unwrap_or_else(|_| {
            p.push(
                format!("{path}.idempotency_header"),
                format!("invalid header name {name:?}"),
            );
            d.idempotency_header
        }),
    };
    let queue = match r.queue {
        None => d.queue,
        Some(n) if (1..=1_000_000).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                format!("{path}.queue"),
                format!("invalid queue {n} (expected 1 to 1000000)"),
            );
            d.queue
        }
    };
    Policy {
        max_attempts,
        base,
        max,
        max_retry_after,
        budget_ratio,
        budget_min_per_second,
        idempotency_header,
        deadline,
        queue,
    }
}

/// `per:` a duration (`1m`, `90s`) or a bare unit (`s`, `m`, `h`).
fn window(s: &str) -> Result<Duration, String> {
    match s.trim() {
        "s" => Ok(Duration::from_secs(1)),
        "m" => Ok(Duration::from_secs(60)),
        "h" => Ok(Duration::from_secs(3600)),
        other => parse_duration(other),
    }
}

/// A list's rate limits and its concurrency limits (`in_flight`), in file order each.
fn limit_list(raw: &[RawLimit], path: &str, p: &mut Problems) -> (Vec<BucketSpec>, Vec<SlotSpec>) {
    if raw.len() > MAX_LIMITS {
        p.push(path, format!("at most {MAX_LIMITS} limits per list"));
    }
    let (mut rates, mut slots) = (Vec::new(), Vec::new());
    for (i, l) in raw.iter().enumerate() {
        let at = format!("{path}[{i}]");
        if l.in_flight.is_some() {
            slots.extend(in_flight(l, &at, p));
        } else {
            rates.extend(limit(l, &at, p));
        }
    }
    (rates, slots)
}

/// `{ in_flight: N, scope, mode, max_wait, max_waiters, shadow }`.
fn in_flight(raw: &RawLimit, path: &str, p: &mut Problems) -> Option<SlotSpec> {
    let before = p.0.len();
    let max = match raw.in_flight {
        Some(n) if (1..=100_000).contains(&n) => n as u32,
        n => {
            p.push(
                format!("{path}.in_flight"),
                format!("invalid in_flight {n:?} (expected 1 to 100000)"),
            );
            1
        }
    };
    for (given, name) in [
        (raw.rate.is_some(), "rate"),
        (raw.per.is_some(), "per"),
        (raw.burst.is_some(), "burst"),
    ] {
        if given {
            p.push(
                format!("{path}.{name}"),
                "a concurrency limit (in_flight) has no rate, per or burst: make it a limit of its own",
            );
        }
    }
    let (scope, mode, max_wait, max_waiters) = admission(raw, path, p);
    (p.0.len() == before).then_some(SlotSpec {
        max,
        scope,
        mode,
        max_wait,
        max_waiters,
        shadow: raw.shadow,
        shared: raw.shared,
    })
}

fn limit(raw: &RawLimit, path: &str, p: &mut Problems) -> Option<BucketSpec> {
    let before = p.0.len();
    let rate = match raw.rate {
        None => {
            p.push(format!("{path}.rate"), "missing rate (requests per window)");
            1
        }
        Some(n) if (1..=1_000_000_000).contains(&n) => n as u32,
        Some(n) => {
            p.push(
                format!("{path}.rate"),
                format!("invalid rate {n} (expected 1 to 1000000000)"),
            );
            1
        }
    };
    let per = match raw.per.as_deref().map(window) {
        None => {
            p.push(
                format!("{path}.per"),
                "missing per (the window: s, m, h or e.g. 10s)",
            );
            Duration::from_secs(1)
        }
        Some(Ok(d)) if d.is_zero() => {
            p.push(format!("{path}.per"), "must be greater than zero");
            Duration::from_secs(1)
        }
        Some(Ok(d)) if d > Duration::from_secs(86_400) => {
            p.push(format!("{path}.per"), "must be at most 24h");
            Duration::from_secs(1)
        }
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            p.push(format!("{path}.per"), e);
            Duration::from_secs(1)
        }
    };
    let burst = match raw.burst {
        None => (rate / 10).max(1),
        Some(n) if n >= 1 && n <= i64::from(rate) => n as u32,
        Some(n) if n > i64::from(rate) => {
            p.push(
                format!("{path}.burst"),
                format!("burst {n} is larger than rate {rate}: the vendor could see more than rate in one window"),
            );
            1
        }
        Some(n) => {
            p.push(
                format!("{path}.burst"),
                format!("invalid burst {n} (expected 1 to rate)"),
            );
            1
        }
    };
    let (scope, mode, max_wait, max_waiters) = admission(raw, path, p);
    let shape = Shape { rate, per, burst };
    if p.0.len() == before && shape.quota().is_none() {
        p.push(path, "this rate, per and burst make no usable bucket");
    }
    (p.0.len() == before).then_some(BucketSpec {
        shape,
        scope,
        mode,
        max_wait,
        max_waiters,
        shadow: raw.shadow,
        shared: raw.shared,
    })
}

/// What a limit of either kind shares: whose requests it counts, and what a request it
/// cannot take now gets (`scope`, `mode`, `max_wait`, `max_waiters`); and that a shared one
/// is not shadow.
fn admission(raw: &RawLimit, path: &str, p: &mut Problems) -> (Scope, Mode, Duration, usize) {
    if raw.shared && raw.shadow {
        p.push(
            format!("{path}.shared"),
            "a shared limit cannot be shadow (shadow limits are counted per pod)",
        );
    }
    let scope = match raw.scope.as_deref() {
        None | Some("key") => Scope::Key,
        Some("global") => Scope::Global,
        Some(o) => {
            p.push(
                format!("{path}.scope"),
                format!("invalid scope {o:?} (expected key or global)"),
            );
            Scope::Key
        }
    };
    let mode = match raw.mode.as_deref() {
        None | Some("reject") => Mode::Reject,
        Some("queue") => Mode::Queue,
        Some(o) => {
            p.push(
                format!("{path}.mode"),
                format!("invalid mode {o:?} (expected reject or queue)"),
            );
            Mode::Reject
        }
    };
    if mode != Mode::Queue {
        if raw.max_wait.is_some() {
            p.push(
                format!("{path}.max_wait"),
                "max_wait applies only to mode: queue",
            );
        }
        if raw.max_waiters.is_some() {
            p.push(
                format!("{path}.max_waiters"),
                "max_waiters applies only to mode: queue",
            );
        }
    }
    let max_wait = duration(
        raw.max_wait.as_deref(),
        Duration::from_secs(5),
        &format!("{path}.max_wait"),
        p,
    );
    if max_wait > Duration::from_secs(300) {
        p.push(
            format!("{path}.max_wait"),
            "must be at most 5m (a held request holds a connection)",
        );
    }
    let max_waiters = match raw.max_waiters {
        None => 100,
        Some(n) if (1..=100_000).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                format!("{path}.max_waiters"),
                format!("invalid max_waiters {n} (expected 1 to 100000)"),
            );
            1
        }
    };
    (scope, mode, max_wait, max_waiters)
}

/// A path as the user would recognise it (relative to the config folder when inside it).
fn pathdiff(file: &Path, base: &Path) -> String {
    file.strip_prefix(base)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| file.display().to_string())
}

pub(crate) fn validate(v: &Value, file: &Path, base_dir: &Path) -> Result<Config, Problems> {
    let mut p = Problems::default();
    let raw: RawConfig = if v.is_null() {
        RawConfig::default()
    } else {
        typed(v, "", &mut p).unwrap_or_default()
    };

    let admin: RawAdmin = section(&raw.admin, "admin", &mut p);
    let admin_listen = admin.listen.as_deref().unwrap_or("127.0.0.1:9901");
    let admin_addr = addr(admin_listen, "admin.listen", &mut p);

    let shutdown: RawShutdown = section(&raw.shutdown, "shutdown", &mut p);
    let grace_period = duration(
        shutdown.grace_period.as_deref(),
        Duration::from_secs(20),
        "shutdown.grace_period",
        &mut p,
    );
    if grace_period > Duration::from_secs(3600) {
        p.push("shutdown.grace_period", "must be at most 1h");
    }

    let server: RawServer = section(&raw.server, "server", &mut p);
    let threads = match server.threads {
        None => 1,
        Some(n) if (1..=64).contains(&n) => n as usize,
        Some(n) => {
            p.push(
                "server.threads",
                format!("invalid threads {n} (expected 1 to 64)"),
            );
            1
        }
    };

    let log: RawLog = section(&raw.log, "log", &mut p);
    let format = match log.format.as_deref() {
        None | Some("text") => LogFormat::Text,
        Some("json") => LogFormat::Json,
        Some(other) => {
            p.push(
                "log.format",
                format!("invalid format {other:?} (expected text or json)"),
            );
            LogFormat::Text
        }
    };
    let level = log.level.unwrap_or_else(|| "info".into());
    if tracing_subscriber::EnvFilter::try_new(&level).is_err() {
        p.push(
            "log.level",
            format!("invalid level {level:?} (expected e.g. info, debug)"),
        );
    }

    let profiles_dir = base_dir.join(raw.profiles_dir.as_deref().unwrap_or("profiles"));

    let reload: RawReload = section(&raw.reload, "reload", &mut p);
    let poll = duration(
        reload.poll.as_deref(),
        Duration::from_secs(2),
        "reload.poll",
        &mut p,
    );
    if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&poll) {
        p.push("reload.poll", "must be between 100ms and 60s");
    }
    let reload = Reload {
        watch: reload.watch.unwrap_or(true),
        poll,
    };

    if raw.vendors.is_empty() {
        p.push("vendors", "at least one vendor is required");
    }
    let mut vendors = Vec::new();
    for (i, v) in raw.vendors.iter().enumerate() {
        if let Some(vd) = vendor(v, i, base_dir, &profiles_dir, &mut p) {
            vendors.push(vd);
        }
    }
    // Duplicates are checked on the raw values, so they are found even in entries that have
    // other problems.
    let mut names = HashSet::new();
    let mut ports = HashSet::new();
    if let Some(a) = admin_addr {
        ports.insert(a.port());
    }
    for (i, v) in raw.vendors.iter().enumerate() {
        if let Some(name) = v.get("name").and_then(Value::as_str) {
            if !names.insert(name.to_string()) {
                p.push(
                    format!("vendors[{i}].name"),
                    format!("duplicate vendor name {name:?}"),
                );
            }
        }
        let listen = v.get("listen").and_then(Value::as_str);
        if let Some(port) = listen
            .and_then(|l| l.parse::<SocketAddr>().ok())
            .map(|a| a.port())
        {
            if !ports.insert(port) {
                p.push(
                    format!("vendors[{i}].listen"),
                    format!("port {port} is already used by another listener"),
                );
            }
        }
    }

    let quota_store = quota_store(&raw.quota_store, &mut p);
    // Only when there is none at all: an invalid one has its own problems listed.
    if raw.quota_store.is_null() {
        for (path, shared) in shared_limits(&raw.vendors) {
            if shared {
                p.push(
                    path,
                    "shared: true needs a quota_store (the Redis that decides it for the fleet)",
                );
            }
        }
    }

    if !p.0.is_empty() {
        return Err(p);
    }
    let Some(admin_listen) = admin_addr else {
        return Err(p);
    };
    Ok(Config {
        file: file.to_path_buf(),
        admin: Admin {
            listen: admin_listen,
        },
        shutdown: Shutdown { grace_period },
        server: Server { threads },
        log: Log { format, level },
        profiles_dir,
        quota_store,
        reload,
        vendors,
        source: v.clone(),
    })
}

/// Every limit's `shared` flag with its key path, read from the raw vendor entries (so it is
/// found even in entries with other problems).
fn shared_limits(vendors: &[Value]) -> Vec<(String, bool)> {
    let flag = |l: &Value| l.get("shared").and_then(Value::as_bool).unwrap_or(false);
    let mut out = Vec::new();
    for (i, v) in vendors.iter().enumerate() {
        for (j, l) in v
            .get("limits")
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            out.push((format!("vendors[{i}].limits[{j}].shared"), flag(l)));
        }
        let endpoints = v.get("endpoints").and_then(Value::as_array);
        for (k, e) in endpoints.into_iter().flatten().enumerate() {
            let limits = e.get("limits").and_then(Value::as_array);
            for (j, l) in limits.into_iter().flatten().enumerate() {
                let path = format!("vendors[{i}].endpoints[{k}].limits[{j}].shared");
                out.push((path, flag(l)));
            }
        }
    }
    out
}

/// `quota_store:`, when present: every bad value reported with its path.
fn quota_store(v: &Value, p: &mut Problems) -> Option<QuotaStore> {
    if v.is_null() {
        return None;
    }
    let before = p.0.len();
    let raw: RawQuotaStore = typed(v, "quota_store", p)?;
    let urls: Vec<String> = match &raw.redis {
        None => {
            p.push(
                "quota_store.redis",
                "required: a redis:// URL or a list of Cluster nodes",
            );
            Vec::new()
        }
        Some(Value::String(u)) => vec![u.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .enumerate()
            .filter_map(|(i, u)| match u.as_str() {
                Some(u) => Some(u.to_string()),
                None => {
                    p.push(
                        format!("quota_store.redis[{i}]"),
                        format!("expected a URL, got {u}"),
                    );
                    None
                }
            })
            .collect(),
        Some(other) => {
            p.push(
                "quota_store.redis",
                format!("expected a URL or a list of URLs, got {other}"),
            );
            Vec::new()
        }
    };
    let many = urls.len() > 1;
    for (i, u) in urls.iter().enumerate() {
        let path = if many {
            format!("quota_store.redis[{i}]")
        } else {
            "quota_store.redis".to_string()
        };
        if let Err(why) = redis_url(u) {
            p.push(path, why);
        }
    }
    if let Some(var) = &raw.password_env {
        let named = !var.is_empty() && var.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !named {
            p.push(
                "quota_store.password_env",
                format!("invalid variable name {var:?}"),
            );
        } else if std::env::var_os(var).is_none() {
            p.push(
                "quota_store.password_env",
                format!("environment variable {var} is not set"),
            );
        }
    }
    let timeout = duration(
        raw.timeout.as_deref(),
        Duration::from_millis(5),
        "quota_store.timeout",
        p,
    );
    if timeout.is_zero() || timeout > Duration::from_secs(1) {
        p.push(
            "quota_store.timeout",
            format!("{timeout:?} is out of range (expected 1ms to 1s: a decision waits this long at most)"),
        );
    }
    let expected_replicas = match raw.expected_replicas {
        None => 1,
        Some(n) if (1..=10_000).contains(&n) => n as u32,
        Some(n) => {
            p.push(
                "quota_store.expected_replicas",
                format!("invalid expected_replicas {n} (expected 1 to 10000)"),
            );
            1
        }
    };
    (p.0.len() == before).then_some(QuotaStore {
        urls,
        password_env: raw.password_env,
        timeout,
        expected_replicas,
    })
}

/// Checks a Redis URL: `redis://` or `rediss://` (TLS), a host, an optional port; no
/// password in it (that belongs in `password_env`, out of the config file).
fn redis_url(u: &str) -> Result<(), String> {
    // Checked first, and the URL not echoed: it would carry the password into the output.
    if u.contains('@') {
        return Err("invalid Redis URL: credentials in the URL (use password_env instead)".into());
    }
    let bad = |why: &str| Err(format!("invalid Redis URL {u:?}: {why}"));
    let Some((scheme, rest)) = u.split_once("://") else {
        return bad("expected redis://host:port or rediss://host:port");
    };
    if scheme != "redis" && scheme != "rediss" {
        return bad("the scheme must be redis or rediss");
    }
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (h, Some(p)),
        _ => (authority, None),
    };
    if host.is_empty() {
        return bad("no host");
    }
    if let Some(p) = port {
        if p.parse::<u16>().map_or(true, |n| n == 0) {
            return bad("the port must be 1 to 65535");
        }
    }
    // The store's own check too (e.g. `#insecure`, which this build refuses): check-config
    // and start-up must not disagree.
    crate::quota::check_url(u).map_err(|why| format!("invalid Redis URL {u:?}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_urls() {
        let u = parse_upstream("https://api.tryvox.io").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.authority.as_str()),
            (true, "api.tryvox.io", 443, "api.tryvox.io")
        );
        let u = parse_upstream("http://127.0.0.1:9000/").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.tls, u.port, u.authority.as_str()),
            (false, 9000, "127.0.0.1:9000")
        );
        let u = parse_upstream("http://[::1]:9000").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.host.as_str(), u.authority.as_str()),
            ("::1", "[::1]:9000")
        );
        assert!(parse_upstream("ftp://x").is_err());
        assert!(parse_upstream("https://x.io/v1").is_err());
        assert!(parse_upstream("nonsense").is_err());
    }
}

#[cfg(test)]
mod quota_store_tests {
    use super::*;

    fn load(yaml: &str) -> Result<Config, Problems> {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v: Value =
            serde_json::to_value(serde_yaml_value(yaml).unwrap_or_else(|e| panic!("{e}")))
                .unwrap_or_default();
        validate(&v, &dir.path().join("c.yaml"), dir.path())
    }

    /// The YAML as the `config` crate would hand it over (through JSON).
    fn serde_yaml_value(yaml: &str) -> Result<Value, String> {
        ::config::Config::builder()
            .add_source(::config::File::from_str(yaml, ::config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize::<Value>())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn a_valid_store_and_shared_limits_load() {
        let cfg = load(
            "quota_store: { redis: [ 'redis://10.0.0.1:6379', 'rediss://r.example:6380' ], timeout: 20ms, expected_replicas: 3 }\n\
             vendors:\n  - { name: v, listen: '127.0.0.1:18999', upstream: 'https://api.example', limits: [ { rate: 30, per: 3s, shared: true } ] }\n",
        )
        .unwrap_or_else(|p| panic!("{:?}", p.0));
        let q = cfg.quota_store.unwrap_or_else(|| panic!("no store"));
        assert_eq!(q.urls.len(), 2);
        assert_eq!(q.timeout, Duration::from_millis(20));
        assert_eq!(q.expected_replicas, 3);
        assert!(cfg.vendors[0].limits[0].shared);
        // Without the section, defaults: none, and limits are the pod's own.
        let cfg = load("vendors:\n  - { name: v, listen: '127.0.0.1:18999', upstream: 'https://api.example' }\n")
            .unwrap_or_else(|p| panic!("{:?}", p.0));
        assert!(cfg.quota_store.is_none());
    }
}
