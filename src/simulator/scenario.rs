//! Scenario files: which response the simulator gives to which request, in what order.
//!
//! ```yaml
//! rules:
//!   - match: { method: POST, path_prefix: /v1/calls }
//!     steps:
//!       - { status: 503, repeat: 2 }          # first two matching requests
//!       - { status: 200, json: { id: call_1 } } # then this, forever (the last step sticks)
//!   - match: { path_prefix: /v1/verify }
//!     steps: [ { vendor_error: VERIFICATION_FAILED } ]  # the profile's own example
//! default: { status: 200, echo: true }
//! ```

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use crate::diag::parse_duration;

/// What to do instead of (or while) answering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Send a complete response.
    #[default]
    Respond,
    /// Read the request, then reset the connection (RST) without answering.
    Reset,
    /// Read the request, then close the connection (FIN) without answering.
    Close,
    /// Read the request and never answer.
    Hang,
    /// Answer with bytes that are not HTTP, then close.
    Garbage,
    /// Send the header and half the body, then reset.
    Truncate,
    /// Answer `101 Switching Protocols` (the request's `Upgrade` protocol, and for a
    /// WebSocket the `Sec-WebSocket-Accept` its key calls for; the step's `headers` are
    /// added), then echo every byte the peer sends, unchanged, until it closes.
    Upgrade,
}

/// One scripted response.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Step {
    /// Status code (default 200, or the example's).
    pub status: Option<u16>,
    /// Extra headers (`{now+N}` in a value becomes the epoch second N seconds from now).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Raw body text.
    pub body: Option<String>,
    /// A JSON body.
    pub json: Option<Value>,
    /// A generated body of this many bytes (deterministic pattern, see [`pattern_body`]).
    pub body_size: Option<usize>,
    /// Echo the request body back.
    #[serde(default)]
    pub echo: bool,
    /// Use one of the vendor profile's documented examples (status, headers, body).
    pub vendor_error: Option<String>,
    /// Send the body chunked instead of with Content-Length.
    #[serde(default)]
    pub chunked: bool,
    /// Gzip-compress the body (and say so in Content-Encoding).
    #[serde(default)]
    pub gzip: bool,
    /// Wait before answering, e.g. `1500ms`.
    pub delay: Option<String>,
    /// What to do.
    #[serde(default)]
    pub action: Action,
    /// How many matching requests this step answers before the next step (default 1).
    pub repeat: Option<u32>,
}

impl Step {
    /// The parsed delay (invalid values were rejected at load).
    pub fn delay(&self) -> Duration {
        self.delay
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
            .unwrap_or_default()
    }
}

/// Which requests a rule applies to.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Match {
    /// Method, any case; absent = any.
    pub method: Option<String>,
    /// Path prefix; absent = any.
    pub path_prefix: Option<String>,
}

/// A rule: a matcher and its sequence of steps.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// Which requests.
    #[serde(rename = "match", default)]
    pub matcher: Match,
    /// Responses in order; the last one repeats forever.
    pub steps: Vec<Step>,
}

/// A vendor-side rate limit the simulator enforces, as vendors do: at most `rate` accepted
/// requests per key in any window of `per` (a sliding log). Requests over it get `over`
/// (default: 429 with `Retry-After`, `X-RateLimit-Remaining: 0` and a small JSON error) and
/// are not counted in the window.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limit {
    /// Which requests count.
    #[serde(rename = "match", default)]
    pub matcher: Match,
    /// Requests per window.
    pub rate: u32,
    /// Window, e.g. `1m`.
    pub per: String,
    /// Header holding the key (default `authorization`); absent = one shared key.
    pub key_header: Option<String>,
    /// The answer over the limit.
    pub over: Option<Step>,
}

impl Limit {
    /// The parsed window (invalid values were rejected at load).
    pub fn window(&self) -> Duration {
        parse_duration(&self.per).unwrap_or(Duration::from_secs(60))
    }
}

/// A whole scenario.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Rules, first match wins.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// Vendor-side rate limits, checked before the rules.
    #[serde(default)]
    pub limits: Vec<Limit>,
    /// Answer when no rule matches (default: 200 echoing a small JSON summary).
    pub default: Option<Step>,
    /// Close a keep-alive connection that stays idle this long (as vendors' load balancers
    /// do, often sooner than the client's own idle timeout); absent = never.
    pub idle_close: Option<String>,
}

impl Scenario {
    /// The parsed idle close (invalid values were rejected at load).
    pub fn idle_close(&self) -> Option<Duration> {
        self.idle_close
            .as_deref()
            .and_then(|d| parse_duration(d).ok())
    }

    /// Parses YAML text.
    pub fn from_yaml(text: &str) -> Result<Self, String> {
        let v: Value = ::config::Config::builder()
            .add_source(::config::File::from_str(text, ::config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| format!("scenario: {e}"))?;
        let s: Scenario = if v.is_null() {
            Scenario::default()
        } else {
            serde_path_to_error::deserialize(&v)
                .map_err(|e| format!("scenario: {}: {}", e.path(), e.inner()))?
        };
        for step in s.rules.iter().flat_map(|r| &r.steps).chain(&s.default) {
            if let Some(d) = &step.delay {
                parse_duration(d).map_err(|e| format!("scenario: delay: {e}"))?;
            }
        }
        if let Some(d) = &s.idle_close {
            parse_duration(d).map_err(|e| format!("scenario: idle_close: {e}"))?;
        }
        for l in &s.limits {
            parse_duration(&l.per).map_err(|e| format!("scenario: limits: per: {e}"))?;
            if l.rate == 0 {
                return Err("scenario: limits: rate must be at least 1".into());
            }
        }
        if s.rules.iter().any(|r| r.steps.is_empty()) {
            return Err("scenario: every rule needs at least one step".into());
        }
        Ok(s)
    }

    /// Reads a scenario file.
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_yaml(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// The deterministic body used for `body_size`: tests regenerate it to compare bytes.
pub fn pattern_body(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| b"0123456789abcdefghijklmnopqrstuvwxyz\n"[i % 37])
        .collect()
}
