//! Raw serde shapes of the YAML file, as written by people. Leaves that need parsing
//! (durations, sizes, addresses) stay strings here so that *every* bad value can be reported
//! with its path, rather than stopping at the first one serde meets.
//!
//! Unknown keys are not rejected by `deny_unknown_fields` (that stops at the first); the loader
//! collects every ignored key with `serde_ignored` and reports them all as errors.

use serde::Deserialize;
use serde_json::Value;

/// The whole file.
#[derive(Debug, Deserialize, Default)]
pub struct RawConfig {
    #[serde(default)]
    pub admin: Value,
    #[serde(default)]
    pub shutdown: Value,
    #[serde(default)]
    pub server: Value,
    #[serde(default)]
    pub log: Value,
    pub profiles_dir: Option<String>,
    #[serde(default)]
    pub quota_store: Value,
    #[serde(default)]
    pub reload: Value,
    #[serde(default)]
    pub vendors: Vec<Value>,
}

/// `reload:` — when a changed config file is picked up without a signal.
#[derive(Debug, Deserialize, Default)]
pub struct RawReload {
    pub watch: Option<bool>,
    pub poll: Option<String>,
}

/// `quota_store:` — where limits marked `shared` are decided.
#[derive(Debug, Deserialize, Default)]
pub struct RawQuotaStore {
    /// One URL, or a list of Redis Cluster nodes.
    pub redis: Option<Value>,
    pub password_env: Option<String>,
    pub timeout: Option<String>,
    pub expected_replicas: Option<i64>,
}

/// `admin:`
#[derive(Debug, Deserialize, Default)]
pub struct RawAdmin {
    pub listen: Option<String>,
}

/// `shutdown:`
#[derive(Debug, Deserialize, Default)]
pub struct RawShutdown {
    pub grace_period: Option<String>,
}

/// `server:`
#[derive(Debug, Deserialize, Default)]
pub struct RawServer {
    pub threads: Option<i64>,
}

/// `log:`
#[derive(Debug, Deserialize, Default)]
pub struct RawLog {
    pub format: Option<String>,
    pub level: Option<String>,
}

/// One entry of `vendors:`.
#[derive(Debug, Deserialize)]
pub struct RawVendor {
    pub name: String,
    pub listen: String,
    pub upstream: String,
    pub profile: Option<String>,
    #[serde(default)]
    pub timeouts: RawTimeouts,
    #[serde(default)]
    pub endpoints: Vec<RawEndpoint>,
    pub max_request_body: Option<Value>,
    pub dns_refresh: Option<String>,
    /// Deprecated alias: `true` is `errors: vendor`.
    pub passthrough_errors: Option<bool>,
    pub errors: Option<String>,
    pub key: Option<RawKey>,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    pub max_keys: Option<i64>,
    pub retry: Option<RawRetry>,
}

/// `vendors[].retry:`
#[derive(Debug, Deserialize, Default)]
pub struct RawRetry {
    pub max_attempts: Option<i64>,
    pub backoff: Option<RawBackoff>,
    pub max_retry_after: Option<String>,
    pub budget: Option<RawBudget>,
    pub idempotency_header: Option<String>,
    pub deadline: Option<String>,
    pub queue: Option<i64>,
}

/// `vendors[].retry.backoff:`
#[derive(Debug, Deserialize, Default)]
pub struct RawBackoff {
    pub base: Option<String>,
    pub max: Option<String>,
}

/// `vendors[].retry.budget:`
#[derive(Debug, Deserialize, Default)]
pub struct RawBudget {
    pub ratio: Option<f64>,
    pub min_per_second: Option<i64>,
}

/// `vendors[].key:` where the API key is.
#[derive(Debug, Deserialize, Default)]
pub struct RawKey {
    pub header: Option<String>,
    pub scheme: Option<String>,
}

/// One entry of `limits:` (vendor-wide or per endpoint).
#[derive(Debug, Deserialize, Default)]
pub struct RawLimit {
    pub in_flight: Option<i64>,
    pub rate: Option<i64>,
    pub per: Option<String>,
    pub burst: Option<i64>,
    pub scope: Option<String>,
    pub mode: Option<String>,
    pub max_wait: Option<String>,
    pub max_waiters: Option<i64>,
    #[serde(default)]
    pub shadow: bool,
    #[serde(default)]
    pub shared: bool,
}

/// `vendors[].timeouts:`
#[derive(Debug, Deserialize, Default)]
pub struct RawTimeouts {
    pub connect: Option<String>,
    pub response: Option<String>,
    pub idle: Option<String>,
}

/// `vendors[].endpoints[]`
#[derive(Debug, Deserialize)]
pub struct RawEndpoint {
    pub name: String,
    #[serde(rename = "match")]
    pub matcher: RawMatch,
    #[serde(default)]
    pub limits: Vec<RawLimit>,
    pub cost: Option<RawCost>,
}

/// `vendors[].endpoints[].cost`: JSON pointers into the request body.
#[derive(Debug, Deserialize)]
pub struct RawCost {
    pub segments: Option<String>,
    pub recipients: Option<String>,
}

/// `vendors[].endpoints[].match`
#[derive(Debug, Deserialize)]
pub struct RawMatch {
    pub path_prefix: String,
    pub methods: Option<Vec<String>>,
}
