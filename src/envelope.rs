//! The canonical error envelope (SPEC §4): the closed set of codes, their canonical HTTP
//! statuses and retryability, and the JSON body every error response carries.
//!
//! This module owns the *shape* of the contract. It does not decide which code an upstream
//! response maps to (that is `normalize`) nor when to retry (that is `retry`). Bodies are
//! written field by field with `serde_json`'s escaping (held to its derived output by a test),
//! never by string formatting, so they are always valid JSON.

use serde::Serialize;

use crate::access::json_str;
use crate::http::headers::X_REQUEST_ID;
use serde_json::Value;

/// Largest vendor message kept in `error.message`, in bytes (SPEC §4).
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// One of the stable, closed set of canonical error codes apps branch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Code {
    /// Fields missing or invalid.
    ValidationFailed,
    /// API key missing, invalid, expired or revoked.
    AuthenticationFailed,
    /// The key lacks permission for this resource.
    PermissionDenied,
    /// Outbound call/SMS blocked by consent, opt-out or compliance.
    ConsentRequired,
    /// The resource does not exist.
    NotFound,
    /// Duplicate resource.
    Conflict,
    /// Request larger than the configured limit.
    PayloadTooLarge,
    /// Balance, credits or quota exhausted.
    InsufficientCredits,
    /// Wrong verification code.
    VerificationFailed,
    /// Verification attempts exhausted; not a rate limit.
    TooManyAttempts,
    /// The vendor's or Switchboard's rate limit.
    RateLimited,
    /// The vendor's internal error.
    InternalError,
    /// Processed, but the carrier/channel failed.
    DeliveryFailed,
    /// Vendor unreachable or said it is unavailable.
    UpstreamUnavailable,
    /// No response in time.
    UpstreamTimeout,
    /// A non-idempotent request was sent but its response was lost.
    OutcomeUnknown,
    /// Switchboard's own queue or retry budget is full.
    Overloaded,
    /// Nothing matched; the vendor status is kept.
    UnknownError,
}

impl Code {
    /// Every code, in the order of the SPEC table. Metrics pre-create one series per entry.
    pub const ALL: [Code; 18] = [
        Code::ValidationFailed,
        Code::AuthenticationFailed,
        Code::PermissionDenied,
        Code::ConsentRequired,
        Code::NotFound,
        Code::Conflict,
        Code::PayloadTooLarge,
        Code::InsufficientCredits,
        Code::VerificationFailed,
        Code::TooManyAttempts,
        Code::RateLimited,
        Code::InternalError,
        Code::DeliveryFailed,
        Code::UpstreamUnavailable,
        Code::UpstreamTimeout,
        Code::OutcomeUnknown,
        Code::Overloaded,
        Code::UnknownError,
    ];

    /// The snake_case wire name, as used in the body, headers and metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::ValidationFailed => "validation_failed",
            Code::AuthenticationFailed => "authentication_failed",
            Code::PermissionDenied => "permission_denied",
            Code::ConsentRequired => "consent_required",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::PayloadTooLarge => "payload_too_large",
            Code::InsufficientCredits => "insufficient_credits",
            Code::VerificationFailed => "verification_failed",
            Code::TooManyAttempts => "too_many_attempts",
            Code::RateLimited => "rate_limited",
            Code::InternalError => "internal_error",
            Code::DeliveryFailed => "delivery_failed",
            Code::UpstreamUnavailable => "upstream_unavailable",
            Code::UpstreamTimeout => "upstream_timeout",
            Code::OutcomeUnknown => "outcome_unknown",
            Code::Overloaded => "overloaded",
            Code::UnknownError => "unknown_error",
        }
    }

    /// Parses a wire name; `None` for anything outside the closed set.
    pub fn parse(name: &str) -> Option<Code> {
        Code::ALL.into_iter().find(|c| c.as_str() == name)
    }

    /// The canonical HTTP status. `unknown_error` keeps the vendor's status, so it needs one.
    pub fn status(self, vendor_status: Option<u16>) -> u16 {
        match self {
            Code::ValidationFailed => 400,
            Code::AuthenticationFailed => 401,
            Code::PermissionDenied | Code::ConsentRequired => 403,
            Code::NotFound => 404,
            Code::Conflict => 409,
            Code::PayloadTooLarge => 413,
            Code::InsufficientCredits => 402,
            Code::VerificationFailed => 422,
            Code::TooManyAttempts | Code::RateLimited => 429,
            Code::InternalError => 500,
            Code::DeliveryFailed | Code::OutcomeUnknown => 502,
            Code::UpstreamUnavailable | Code::Overloaded => 503,
            Code::UpstreamTimeout => 504,
            // A vendor "error" that is not an HTTP error status still has to read as an error.
            Code::UnknownError => match vendor_status {
                Some(s) if (400..=599).contains(&s) => s,
                _ => 502,
            },
        }
    }

    /// Whether repeating the same request later can succeed, by default.
    pub fn default_retryable(self, vendor_status: Option<u16>) -> bool {
        match self {
            Code::RateLimited
            | Code::InternalError
            | Code::UpstreamUnavailable
            | Code::UpstreamTimeout
            | Code::Overloaded => true,
            Code::UnknownError => matches!(vendor_status, Some(s) if s == 429 || s >= 500),
            _ => false,
        }
    }
}

impl std::fmt::Display for Code {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who produced the error: the vendor, or Switchboard itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// The vendor answered with an error.
    Upstream,
    /// Switchboard answered without (or instead of) the vendor's answer.
    Proxy,
}

impl Source {
    /// Label value for metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Source::Upstream => "upstream",
            Source::Proxy => "proxy",
        }
    }
}

/// One per-field problem reported by the vendor.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Detail {
    /// The field the problem is about, when the vendor says.
    pub field: Option<String>,
    /// What is wrong with it.
    pub reason: String,
}

/// What the vendor actually said, kept inside the envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UpstreamInfo {
    /// The vendor's HTTP status.
    pub status: u16,
    /// The vendor's own error code, as text (numeric codes are stringified).
    pub code: Option<String>,
    /// The vendor's request id, when it gives one.
    pub request_id: Option<String>,
    /// The vendor's original body: parsed JSON, else a string; capped.
    pub body: Value,
}

/// The `error` object of the envelope.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ErrorBody {
    /// Canonical code.
    pub code: Code,
    /// Human message: the vendor's when it has one, else Switchboard's.
    pub message: String,
    /// Whether the same request can succeed later.
    pub retryable: bool,
    /// Seconds to wait before repeating, when known.
    pub retry_after_s: Option<u64>,
    /// Per-field problems.
    pub details: Vec<Detail>,
    /// Who produced the error.
    pub source: Source,
    /// The vendor name from config.
    pub vendor: String,
    /// How many times the vendor was tried for this request.
    pub attempts: u32,
    /// What the vendor said; `None` when it was never reached.
    pub upstream: Option<UpstreamInfo>,
}

/// The canonical envelope: `{"error": {...}, "request_id": "..."}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// The error itself.
    pub error: ErrorBody,
    /// Switchboard's request id, also sent as `X-Request-Id`.
    pub request_id: String,
}

impl Envelope {
    /// An error Switchboard produced itself (the vendor's answer, if any, is not in it).
    pub fn proxy(code: Code, message: impl Into<String>, vendor: &str, request_id: &str) -> Self {
        Envelope {
            error: ErrorBody {
                code,
                message: cap_message(message.into()),
                retryable: code.default_retryable(None),
                retry_after_s: None,
                details: Vec::new(),
                source: Source::Proxy,
                vendor: vendor.to_string(),
                attempts: 0,
                upstream: None,
            },
            request_id: request_id.to_string(),
        }
    }

    /// Switchboard's own 429, when a local limit denied (SPEC §3, §4): `rate_limited` from
    /// the proxy with the exact `Retry-After`, plus the `X-RateLimit-Limit`, `-Remaining` and
    /// `-Reset` headers of the bucket that denied. The limiter gives only the facts.
    pub fn rate_limited_locally(
        reject: &crate::limits::Reject,
        vendor: &str,
        request_id: &str,
    ) -> (Self, [(http::HeaderName, http::HeaderValue); 3]) {
        let whose = match reject.scope {
            crate::limits::Scope::Key => "this API key",
            crate::limits::Scope::Global => "all keys together",
        };
        let secs = reject.retry_after_s();
        let env = Envelope::proxy(
            Code::RateLimited,
            format!(
                "rate limit of {} requests per {} reached for {whose}; retry in {secs} s",
                reject.limit,
                humantime::format_duration(reject.per)
            ),
            vendor,
            request_id,
        )
        .with_retry_after(Some(secs));
        let headers = [
            (X_RATELIMIT_LIMIT, http::HeaderValue::from(reject.limit)),
            (
                X_RATELIMIT_REMAINING,
                http::HeaderValue::from(reject.remaining()),
            ),
            (X_RATELIMIT_RESET, http::HeaderValue::from(reject.reset_s())),
        ];
        (env, headers)
    }

    /// Switchboard's own 429 for a full concurrency limit (`in_flight`): a slot frees when
    /// one of the requests at the vendor is answered, so the hint is a second.
    pub fn concurrency_limited(full: &crate::limits::Full, vendor: &str, request_id: &str) -> Self {
        let whose = match full.scope {
            crate::limits::Scope::Key => "this API key",
            crate::limits::Scope::Global => "all keys together",
        };
        Envelope::proxy(
            Code::RateLimited,
            format!(
                "concurrency limit of {} requests at the vendor at once reached for {whose}; retry when one is answered",
                full.max
            ),
            vendor,
            request_id,
        )
        .with_retry_after(Some(1))
    }

    /// Sets how many upstream attempts were made.
    pub fn with_attempts(mut self, attempts: u32) -> Self {
        self.error.attempts = attempts;
        self
    }

    /// Sets the retry hint in seconds.
    pub fn with_retry_after(mut self, secs: Option<u64>) -> Self {
        self.error.retry_after_s = secs;
        self
    }

    /// The HTTP status this envelope is answered with.
    pub fn status(&self) -> u16 {
        self.error
            .code
            .status(self.error.upstream.as_ref().map(|u| u.status))
    }

    /// The serialised body: byte for byte what `serde_json` makes of the derived
    /// `Serialize` (a test holds the two together), written field by field. The shape is
    /// fixed, and `serde_json`'s string escaper goes byte by byte and writes every fragment
    /// on its own: about 2,000 instructions of each error answer. The vendor's parsed body is
    /// still written by `serde_json`; should that ever fail, a fixed valid envelope is
    /// returned rather than an empty body.
    pub fn to_json(&self) -> Vec<u8> {
        let e = &self.error;
        let mut out = Vec::with_capacity(512);
        out.extend_from_slice(br#"{"error":{"code":""#);
        out.extend_from_slice(e.code.as_str().as_bytes());
        out.extend_from_slice(br#"","message":"#);
        json_str(&mut out, &e.message);
        out.extend_from_slice(match e.retryable {
            true => br#","retryable":true,"retry_after_s":"#,
            false => br#","retryable":false,"retry_after_s":"#,
        });
        match e.retry_after_s {
            Some(s) => out.extend_from_slice(itoa::Buffer::new().format(s).as_bytes()),
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(br#","details":["#);
        for (i, d) in e.details.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(br#"{"field":"#);
            json_opt_str(&mut out, d.field.as_deref());
            out.extend_from_slice(br#","reason":"#);
            json_str(&mut out, &d.reason);
            out.push(b'}');
        }
        out.extend_from_slice(br#"],"source":""#);
        out.extend_from_slice(e.source.as_str().as_bytes());
        out.extend_from_slice(br#"","vendor":"#);
        json_str(&mut out, &e.vendor);
        out.extend_from_slice(br#","attempts":"#);
        out.extend_from_slice(itoa::Buffer::new().format(e.attempts).as_bytes());
        out.extend_from_slice(br#","upstream":"#);
        match &e.upstream {
            None => out.extend_from_slice(b"null"),
            Some(u) => {
                out.extend_from_slice(br#"{"status":"#);
                out.extend_from_slice(itoa::Buffer::new().format(u.status).as_bytes());
                out.extend_from_slice(br#","code":"#);
                json_opt_str(&mut out, u.code.as_deref());
                out.extend_from_slice(br#","request_id":"#);
                json_opt_str(&mut out, u.request_id.as_deref());
                out.extend_from_slice(br#","body":"#);
                // serde_json's own writer: a hand-written one measured no cheaper (its string
                // escaping is as fast as ours, and the rest is a walk of the tree either way).
                if serde_json::to_writer(&mut out, &u.body).is_err() {
                    return FALLBACK_ENVELOPE.to_vec();
                }
                out.push(b'}');
            }
        }
        out.extend_from_slice(br#"},"request_id":"#);
        json_str(&mut out, &self.request_id);
        out.push(b'}');
        out
    }

    /// Response headers that accompany the body (besides content type and length).
    /// Values built without parsing: the code is a static name, the retry hint a number, and
    /// the request id printable ASCII (see `http::headers::request_id`; one that were not
    /// would be left out rather than fail the answer).
    pub fn headers(&self) -> impl Iterator<Item = (http::HeaderName, http::HeaderValue)> + '_ {
        let code = http::HeaderValue::from_static(self.error.code.as_str());
        let id = http::HeaderValue::from_str(&self.request_id).ok();
        [
            Some((X_SWITCHBOARD_ERROR, code)),
            id.map(|v| (X_REQUEST_ID, v)),
            self.error
                .retry_after_s
                .map(|s| (http::header::RETRY_AFTER, http::HeaderValue::from(s))),
        ]
        .into_iter()
        .flatten()
    }
}

/// What [`Envelope::to_json`] answers should serialisation ever fail: still a valid envelope.
const FALLBACK_ENVELOPE: &[u8] = br#"{"error":{"code":"unknown_error","message":"envelope serialisation failed","retryable":false,"retry_after_s":null,"details":[],"source":"proxy","vendor":"","attempts":0,"upstream":null},"request_id":""}"#;

/// The canonical code of an answer that is an error, on every error answer (envelope or the
/// vendor's own).
pub const X_SWITCHBOARD_ERROR: http::HeaderName =
    http::HeaderName::from_static("x-switchboard-error");

/// The limit of the local bucket that denied (on Switchboard's own 429).
pub const X_RATELIMIT_LIMIT: http::HeaderName = http::HeaderName::from_static("x-ratelimit-limit");
/// Tokens left in that bucket.
pub const X_RATELIMIT_REMAINING: http::HeaderName =
    http::HeaderName::from_static("x-ratelimit-remaining");
/// Seconds until that bucket is full again.
pub const X_RATELIMIT_RESET: http::HeaderName = http::HeaderName::from_static("x-ratelimit-reset");

fn json_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => json_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

/// Cuts a message to [`MAX_MESSAGE_BYTES`] on a char boundary.
pub fn cap_message(mut s: String) -> String {
    if s.len() > MAX_MESSAGE_BYTES {
        let mut cut = MAX_MESSAGE_BYTES;
        while !s.is_char_boundary(cut) {
            cut -= 1;
        }
        s.truncate(cut);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The hand-written `to_json` is held to `serde_json`'s output of the derived
    /// `Serialize`, byte for byte, over every escape class and every optional field.
    #[test]
    fn to_json_is_what_serde_json_writes() -> Result<(), Box<dyn std::error::Error>> {
        let every_ascii: String = (0u8..=0x7f).map(char::from).collect();
        let texts = [
            String::new(),
            "plain".to_string(),
            every_ascii,
            "quote \" back \\ slash / tab\t nl\n".to_string(),
            "ünïcødé ✓ 😀 \u{7f}\u{80}\u{2028}".to_string(),
        ];
        let bodies = [
            Value::Null,
            serde_json::json!({"error": {"code": "X", "message": "m\n\"q\""}, "n": -1.5e300, "a": [1, true, null, {"z": []}]}),
            Value::String("<html>\u{1}</html>".into()),
            serde_json::json!(18446744073709551615u64),
            serde_json::json!({
                "ints": [0, -1, i64::MIN, i64::MAX, u64::MAX],
                "floats": [0.0, -0.0, 0.1, 1.5, -2.5e-7, 1e21, 1.7976931348623157e308, 5e-324],
                "nested": {"": {"b": [[], {}, [null, false, "s"]]}, "é\u{0}": "\u{1f}"},
            }),
            serde_json::from_str(
                r#"{"big": 12345678901234567890, "neg": -9223372036854775808, "f": 3.0}"#,
            )?,
        ];
        for (i, text) in texts.iter().enumerate() {
            for (j, body) in bodies.iter().enumerate() {
                let mut env = Envelope::proxy(
                    Code::ALL[(i + j) % Code::ALL.len()],
                    text.clone(),
                    text,
                    text,
                );
                env.error.retryable = j % 2 == 0;
                env.error.retry_after_s = (i % 2 == 0).then_some(u64::MAX - j as u64);
                env.error.attempts = (i * 7 + j) as u32;
                env.error.source = if j % 2 == 0 {
                    Source::Upstream
                } else {
                    Source::Proxy
                };
                env.error.details = (0..j)
                    .map(|k| Detail {
                        field: (k % 2 == 0).then(|| text.clone()),
                        reason: format!("{k}{text}"),
                    })
                    .collect();
                env.error.upstream = (j > 0).then(|| UpstreamInfo {
                    status: 400 + j as u16,
                    code: (i % 2 == 1).then(|| text.clone()),
                    request_id: (i % 3 == 0).then(|| text.clone()),
                    body: body.clone(),
                });
                assert_eq!(
                    String::from_utf8(env.to_json())?,
                    String::from_utf8(serde_json::to_vec(&env)?)?,
                    "text {i}, body {j}"
                );
            }
        }
        Ok(())
    }

    /// Renaming or re-statusing a public code is a breaking change: this table pins them.
    #[test]
    fn code_table_is_pinned() {
        let expected: [(&str, u16, bool); 18] = [
            ("validation_failed", 400, false),
            ("authentication_failed", 401, false),
            ("permission_denied", 403, false),
            ("consent_required", 403, false),
            ("not_found", 404, false),
            ("conflict", 409, false),
            ("payload_too_large", 413, false),
            ("insufficient_credits", 402, false),
            ("verification_failed", 422, false),
            ("too_many_attempts", 429, false),
            ("rate_limited", 429, true),
            ("internal_error", 500, true),
            ("delivery_failed", 502, false),
            ("upstream_unavailable", 503, true),
            ("upstream_timeout", 504, true),
            ("outcome_unknown", 502, false),
            ("overloaded", 503, true),
            ("unknown_error", 418, false),
        ];
        for (code, (name, status, retryable)) in Code::ALL.iter().zip(expected) {
            assert_eq!(code.as_str(), name);
            assert_eq!(
                serde_json::to_value(code).ok(),
                Some(Value::String(name.into()))
            );
            assert_eq!(code.status(Some(418)), status, "{name}");
            assert_eq!(code.default_retryable(Some(418)), retryable, "{name}");
            assert_eq!(Code::parse(name), Some(*code));
        }
        assert_eq!(Code::parse("nope"), None);
    }

    #[test]
    fn unknown_error_keeps_vendor_status_and_retryability() {
        assert_eq!(Code::UnknownError.status(Some(507)), 507);
        assert!(Code::UnknownError.default_retryable(Some(507)));
        assert_eq!(Code::UnknownError.status(Some(200)), 502);
        assert_eq!(Code::UnknownError.status(None), 502);
    }

    #[test]
    fn envelope_shape() {
        let e = Envelope::proxy(Code::UpstreamTimeout, "slow", "tryvox", "sb-1")
            .with_attempts(2)
            .with_retry_after(Some(3));
        let v: Value = serde_json::from_slice(&e.to_json()).unwrap_or_default();
        let keys: Vec<&str> = v["error"]
            .as_object()
            .map(|o| o.keys().map(|k| k.as_str()).collect())
            .unwrap_or_default();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(
            sorted,
            [
                "attempts",
                "code",
                "details",
                "message",
                "retry_after_s",
                "retryable",
                "source",
                "upstream",
                "vendor"
            ]
        );
        assert_eq!(v["error"]["code"], "upstream_timeout");
        assert_eq!(v["error"]["retryable"], true);
        assert_eq!(v["error"]["attempts"], 2);
        assert_eq!(v["error"]["upstream"], Value::Null);
        assert_eq!(v["request_id"], "sb-1");
        assert_eq!(e.status(), 504);
        assert!(e.headers().any(|(k, v)| k == "retry-after" && v == "3"));
    }

    #[test]
    fn a_local_rate_limit_answers_429_with_its_facts_in_the_envelope_and_headers() {
        use crate::limits::{Reject, Scope};
        use std::time::Duration;
        let r = Reject {
            wait: Duration::from_millis(8_571),
            limit: 10,
            per: Duration::from_secs(60),
            scope: Scope::Key,
        };
        let (e, extra) = Envelope::rate_limited_locally(&r, "tryvox", "sb-2");
        assert_eq!(e.status(), 429);
        assert_eq!(e.error.code, Code::RateLimited);
        assert_eq!(e.error.source, Source::Proxy);
        assert!(e.error.retryable);
        assert_eq!(e.error.retry_after_s, Some(9), "rounded up");
        assert_eq!(
            e.error.message,
            "rate limit of 10 requests per 1m reached for this API key; retry in 9 s"
        );
        assert_eq!(
            (e.error.vendor.as_str(), e.request_id.as_str()),
            ("tryvox", "sb-2")
        );
        assert!(e.headers().any(|(k, v)| k == "retry-after" && v == "9"));
        assert_eq!(
            extra,
            [
                (X_RATELIMIT_LIMIT, http::HeaderValue::from_static("10")),
                (X_RATELIMIT_REMAINING, http::HeaderValue::from_static("0")),
                (X_RATELIMIT_RESET, http::HeaderValue::from_static("9")),
            ]
        );
        let shared = Reject {
            scope: Scope::Global,
            ..r
        };
        let (e, _) = Envelope::rate_limited_locally(&shared, "tryvox", "sb-3");
        assert!(
            e.error.message.contains("for all keys together"),
            "{}",
            e.error.message
        );
    }

    #[test]
    fn message_is_capped_on_char_boundary() {
        let long = "é".repeat(1000);
        let capped = cap_message(long);
        assert!(capped.len() <= MAX_MESSAGE_BYTES);
        assert!(capped.len() >= MAX_MESSAGE_BYTES - 1);
    }
}
