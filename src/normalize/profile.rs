//! Vendor profiles: one vendor's error dialect as data (`config/profiles/<vendor>.yaml`),
//! compiled once at load. Pointers are checked, canonical codes must be in the closed set,
//! and every problem is reported with its key path.
//!
//! ```yaml
//! name: tryvox
//! fields:                                  # where things live (JSON pointers, tried in order)
//!   code: [/error/code]
//!   message: [/error/message]
//!   details: { pointer: /error/details, field: [/field], reason: [/reason] }
//!   request_id: { pointers: [/request_id], headers: [x-request-id] }
//! rate_limit:
//!   reset: { header: x-ratelimit-reset, kind: epoch }   # epoch | delta | auto
//!   remaining_header: x-ratelimit-remaining
//! codes:                                   # vendor code -> canonical code
//!   - { vendor: RATE_LIMITED, code: rate_limited, unprocessed: true }
//!   - { vendor: DELIVERY_FAILED, code: delivery_failed, retryable: false }
//! rules:                                   # see "Precedence" below
//!   - { match: { message: [already in use] }, code: conflict }
//!   - { match: { status: [409] }, code: conflict }
//!   - { match: { status: [503] }, code: upstream_unavailable, retry_after: 30s }
//! success_errors:                          # 2xx bodies that are really errors
//!   - { match: { status: [200], path_prefix: [/v1/messages] }, pointer: /status,
//!       equals: [failed, undelivered], code: delivery_failed }
//! examples: [...]                          # documented responses (simulator, golden tests)
//! ```
//!
//! Precedence (SPEC §5), most specific first — see [`Profile::mapping`]:
//! 1. rules that name the vendor's code or message (`vendor_code` and/or `message` in
//!    `match`, with or without `status` / `path_prefix`);
//! 2. the `codes` map;
//! 3. rules on the status (and path) alone;
//! 4. nothing: the generic detector decides.
//!
//! Within a tier the first matching rule in file order wins. So a vendor's own code beats a
//! rule on its status: with a `status: 429` rule and `quota_exceeded` in `codes`, a 429 saying
//! `quota_exceeded` is `insufficient_credits` (not retried, pauses nothing), and the status
//! rule still decides a 429 whose code the map does not know.
//!
//! `rate_limit.remaining_header`, when named, is the only header read for "no requests left"
//! (see [`super::hints::exhausted`]); without it the common `X-RateLimit-Remaining` names are.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use http::HeaderName;
use serde::Deserialize;
use serde_json::Value;

use crate::diag::{parse_duration, typed, Problems};
use crate::envelope::Code;

use crate::pointer::Pointer;

/// How an `X-RateLimit-Reset`-style header reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ResetKind {
    /// Unix epoch seconds.
    Epoch,
    /// Seconds from now.
    Delta,
    /// Epoch when it looks like one (≥ 10^9), else delta.
    Auto,
}

/// A rate-limit reset header and how to read it.
#[derive(Debug, Clone)]
pub struct ResetHeader {
    /// Header name.
    pub header: HeaderName,
    /// Epoch or delta.
    pub kind: ResetKind,
}

/// Where per-field details live.
#[derive(Debug, Clone)]
pub struct DetailsSpec {
    /// Pointer to the array.
    pub pointer: Pointer,
    /// Pointers inside each item for the field name.
    pub field: Vec<Pointer>,
    /// Pointers inside each item for the reason.
    pub reason: Vec<Pointer>,
}

/// When a rule applies. Every given condition must hold; lists mean "any of".
#[derive(Debug, Clone, Default)]
pub struct Matcher {
    /// Vendor HTTP statuses.
    pub status: Vec<u16>,
    /// Vendor codes (exact, case-sensitive as the vendor sends them).
    pub vendor_code: Vec<String>,
    /// Case-insensitive substrings of the vendor message.
    pub message: Vec<String>,
    /// Request path prefixes (used by `success_errors`).
    pub path_prefix: Vec<String>,
}

impl Matcher {
    /// Whether the rule names the vendor's code or message: such rules are tried before the
    /// `codes` map, the others (status and path alone) after it.
    pub fn names_vendor(&self) -> bool {
        !self.vendor_code.is_empty() || !self.message.is_empty()
    }

    /// Whether the rule applies.
    pub fn matches(
        &self,
        status: u16,
        code: Option<&str>,
        message_lower: &str,
        path: &str,
    ) -> bool {
        (self.status.is_empty() || self.status.contains(&status))
            && (self.vendor_code.is_empty()
                || code.is_some_and(|c| self.vendor_code.iter().any(|v| v == c)))
            && (self.message.is_empty()
                || self
                    .message
                    .iter()
                    .any(|m| message_lower.contains(m.as_str())))
            && (self.path_prefix.is_empty()
                || self
                    .path_prefix
                    .iter()
                    .any(|p| path.starts_with(p.as_str())))
    }
}

/// What a matched rule or code entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapping {
    /// Canonical code.
    pub code: Code,
    /// Retryability override.
    pub retryable: Option<bool>,
    /// The vendor did not process the request (safe to repeat for any method).
    pub unprocessed: Option<bool>,
    /// A retry hint to use when the vendor's headers give none.
    pub retry_after: Option<Duration>,
}

/// A profile rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// When.
    pub matcher: Matcher,
    /// Then.
    pub mapping: Mapping,
}

/// A rule that declares some 2xx bodies errors.
#[derive(Debug, Clone)]
pub struct SuccessError {
    /// Which responses are candidates (status, path) — only these are ever buffered.
    pub matcher: Matcher,
    /// Pointer to the field to test.
    pub pointer: Pointer,
    /// Values that make it an error.
    pub equals: Vec<Value>,
    /// Canonical code (default: decided by the detector).
    pub code: Option<Code>,
}

/// A compiled vendor profile. [`Profile::generic`] is the detector alone.
#[derive(Debug, Clone, Default)]
pub struct Profile {
    /// Profile name.
    pub name: String,
    /// Pointers to the vendor code.
    pub code: Vec<Pointer>,
    /// Pointers to the message.
    pub message: Vec<Pointer>,
    /// Details array.
    pub details: Option<DetailsSpec>,
    /// Pointers to the vendor request id.
    pub request_id: Vec<Pointer>,
    /// Headers holding the vendor request id.
    pub request_id_headers: Vec<HeaderName>,
    /// Reset header.
    pub reset: Option<ResetHeader>,
    /// Remaining-requests header: when set, the only one the adaptive pause reads.
    pub remaining_header: Option<HeaderName>,
    /// Rules in file order; [`Profile::mapping`] tries them in two tiers around `codes`.
    pub rules: Vec<Rule>,
    /// Vendor code map.
    pub codes: HashMap<String, Mapping>,
    /// 2xx error rules.
    pub success_errors: Vec<SuccessError>,
    /// Switchboard's own errors in this vendor's dialect (`errors: vendor`).
    pub render: super::render::Render,
}

impl Profile {
    /// The detector alone: no pointers, no map.
    pub fn generic() -> Self {
        Profile {
            name: "generic".into(),
            ..Profile::default()
        }
    }

    /// Loads and compiles `<dir>/<name>.yaml`. Problems carry key paths inside the file.
    pub fn load(dir: &Path, name: &str) -> Result<Profile, Vec<(String, String)>> {
        if name == "generic" {
            return Ok(Profile::generic());
        }
        let file = dir.join(format!("{name}.yaml"));
        let v: Value = ::config::Config::builder()
            .add_source(::config::File::from(file.as_path()).format(::config::FileFormat::Yaml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| vec![(String::new(), format!("cannot read: {e}"))])?;
        Self::compile(&v)
    }

    /// Compiles a parsed profile document.
    pub fn compile(v: &Value) -> Result<Profile, Vec<(String, String)>> {
        let mut p = Problems::default();
        let raw: Option<RawProfile> = typed(v, "", &mut p);
        let out = raw.map(|raw| compile(raw, &mut p));
        match out {
            Some(profile) if p.0.is_empty() => Ok(profile),
            _ => Err(p.0.into_iter().map(|x| (x.path, x.message)).collect()),
        }
    }

    /// What the profile says about a vendor error, by SPEC §5's precedence: rules naming the
    /// vendor's code or message, then the `codes` map, then rules on the status alone (first
    /// match in file order within each tier). `None` leaves it to the generic detector.
    /// `message_lower` is the vendor message, lowercased.
    pub fn mapping(
        &self,
        status: u16,
        code: Option<&str>,
        message_lower: &str,
        path: &str,
    ) -> Option<Mapping> {
        let rule = |specific: bool| {
            self.rules
                .iter()
                .filter(|r| r.matcher.names_vendor() == specific)
                .find(|r| r.matcher.matches(status, code, message_lower, path))
                .map(|r| r.mapping)
        };
        // A vendor code that is a canonical code's name means that code: Switchboard's own
        // errors rendered in the vendor's dialect carry one (and some vendors use the names).
        let canonical = || {
            code.and_then(|c| Code::parse(&c.to_ascii_lowercase()))
                .filter(|c| *c != Code::UnknownError)
                .map(|code| Mapping {
                    code,
                    retryable: None,
                    unprocessed: None,
                    retry_after: None,
                })
        };
        rule(true)
            .or_else(|| code.and_then(|c| self.codes.get(c).copied()))
            .or_else(canonical)
            .or_else(|| rule(false))
    }

    /// Whether a 2xx response to this path may be an error (so its body must be read).
    pub fn success_candidate(&self, status: u16, path: &str) -> bool {
        self.success_errors
            .iter()
            .any(|r| r.matcher.matches(status, None, "", path))
    }
}

#[derive(Debug, Deserialize)]
struct RawProfile {
    name: String,
    #[serde(default)]
    fields: RawFields,
    #[serde(default)]
    rate_limit: RawRateLimit,
    #[serde(default)]
    codes: Vec<RawCode>,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    success_errors: Vec<RawSuccess>,
    #[serde(default)]
    render: std::collections::BTreeMap<String, super::render::RawTemplate>,
    // Documented responses; read by the simulator and golden tests, not compiled here.
    #[serde(default)]
    #[allow(dead_code)]
    examples: Vec<Value>,
}

#[derive(Debug, Deserialize, Default)]
struct RawFields {
    #[serde(default)]
    code: Vec<String>,
    #[serde(default)]
    message: Vec<String>,
    details: Option<RawDetails>,
    #[serde(default)]
    request_id: RawRequestId,
}

#[derive(Debug, Deserialize)]
struct RawDetails {
    pointer: String,
    #[serde(default)]
    field: Vec<String>,
    #[serde(default)]
    reason: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawRequestId {
    #[serde(default)]
    pointers: Vec<String>,
    #[serde(default)]
    headers: Vec<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawRateLimit {
    reset: Option<RawReset>,
    remaining_header: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawReset {
    header: String,
    kind: ResetKind,
}

#[derive(Debug, Deserialize)]
struct RawCode {
    vendor: Value,
    code: String,
    retryable: Option<bool>,
    unprocessed: Option<bool>,
    retry_after: Option<String>,
}

#[derive(Debug, Deserialize, Default)]
struct RawMatch {
    status: Option<OneOrMany<u16>>,
    vendor_code: Option<OneOrMany<Value>>,
    message: Option<OneOrMany<String>>,
    path_prefix: Option<OneOrMany<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany<T> {
    // `Many` first: with `T = Value`, `One` would also accept a list, as a single value.
    Many(Vec<T>),
    One(T),
}

impl<T> OneOrMany<T> {
    fn into_vec(self) -> Vec<T> {
        match self {
            OneOrMany::One(t) => vec![t],
            OneOrMany::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
struct RawRule {
    #[serde(rename = "match")]
    matcher: RawMatch,
    code: String,
    retryable: Option<bool>,
    unprocessed: Option<bool>,
    retry_after: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawSuccess {
    #[serde(rename = "match")]
    matcher: RawMatch,
    pointer: String,
    equals: Vec<Value>,
    code: Option<String>,
}

fn pointers(list: Vec<String>, path: &str, p: &mut Problems) -> Vec<Pointer> {
    list.iter()
        .enumerate()
        .filter_map(|(i, ptr)| pointer(ptr, &format!("{path}[{i}]"), p))
        .collect()
}

/// `None` (and a problem, so the profile is refused) for a malformed pointer.
fn pointer(ptr: &str, path: &str, p: &mut Problems) -> Option<Pointer> {
    let parsed = Pointer::parse(ptr);
    if parsed.is_none() {
        p.push(
            path,
            format!("invalid JSON pointer {ptr:?} (must start with /)"),
        );
    }
    parsed
}

fn header(name: &str, path: &str, p: &mut Problems) -> Option<HeaderName> {
    match HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()) {
        Ok(h) => Some(h),
        Err(_) => {
            p.push(path, format!("invalid header name {name:?}"));
            None
        }
    }
}

fn code(name: &str, path: &str, p: &mut Problems) -> Code {
    Code::parse(name).unwrap_or_else(|| {
        p.push(
            path,
            format!("unknown canonical code {name:?} (see the code table)"),
        );
        Code::UnknownError
    })
}

/// Vendor codes may be numbers in the YAML (e.g. `20404`); they are compared as text.
fn code_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn hint(s: Option<String>, path: &str, p: &mut Problems) -> Option<Duration> {
    s.and_then(|s| match parse_duration(&s) {
        Ok(d) => Some(d),
        Err(e) => {
            p.push(path, e);
            None
        }
    })
}

fn matcher(m: RawMatch, path: &str, p: &mut Problems) -> Matcher {
    let vendor_code = m
        .vendor_code
        .map(OneOrMany::into_vec)
        .unwrap_or_default()
        .iter()
        .enumerate()
        .filter_map(|(i, v)| {
            let t = code_text(v);
            if t.is_none() {
                p.push(
                    format!("{path}.vendor_code[{i}]"),
                    format!("invalid vendor code {v}"),
                );
            }
            t
        })
        .collect();
    let out = Matcher {
        status: m.status.map(OneOrMany::into_vec).unwrap_or_default(),
        vendor_code,
        message: m
            .message
            .map(OneOrMany::into_vec)
            .unwrap_or_default()
            .into_iter()
            .map(|s| s.to_lowercase())
            .collect(),
        path_prefix: m.path_prefix.map(OneOrMany::into_vec).unwrap_or_default(),
    };
    if out.status.iter().any(|s| !(100..=599).contains(s)) {
        p.push(format!("{path}.status"), "statuses must be 100 to 599");
    }
    out
}

fn compile(raw: RawProfile, p: &mut Problems) -> Profile {
    let f = raw.fields;
    let details = f.details.map(|d| DetailsSpec {
        pointer: pointer(&d.pointer, "fields.details.pointer", p).unwrap_or(Pointer::ROOT),
        field: pointers(d.field, "fields.details.field", p),
        reason: pointers(d.reason, "fields.details.reason", p),
    });
    let mut codes = HashMap::new();
    for (i, c) in raw.codes.into_iter().enumerate() {
        let path = format!("codes[{i}]");
        let Some(vendor) = code_text(&c.vendor) else {
            p.push(
                format!("{path}.vendor"),
                format!("invalid vendor code {}", c.vendor),
            );
            continue;
        };
        let mapping = Mapping {
            code: code(&c.code, &format!("{path}.code"), p),
            retryable: c.retryable,
            unprocessed: c.unprocessed,
            retry_after: hint(c.retry_after, &format!("{path}.retry_after"), p),
        };
        if codes.insert(vendor.clone(), mapping).is_some() {
            p.push(
                format!("{path}.vendor"),
                format!("duplicate vendor code {vendor:?}"),
            );
        }
    }
    let rules = raw
        .rules
        .into_iter()
        .enumerate()
        .map(|(i, r)| Rule {
            matcher: matcher(r.matcher, &format!("rules[{i}].match"), p),
            mapping: Mapping {
                code: code(&r.code, &format!("rules[{i}].code"), p),
                retryable: r.retryable,
                unprocessed: r.unprocessed,
                retry_after: hint(r.retry_after, &format!("rules[{i}].retry_after"), p),
            },
        })
        .collect();
    let success_errors = raw
        .success_errors
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            let path = format!("success_errors[{i}]");
            let m = matcher(s.matcher, &format!("{path}.match"), p);
            if m.status.is_empty() || m.status.iter().any(|s| !(200..300).contains(s)) {
                p.push(
                    format!("{path}.match.status"),
                    "list the 2xx statuses this rule inspects",
                );
            }
            if m.path_prefix.is_empty() {
                p.push(
                    format!("{path}.match.path_prefix"),
                    "required: success bodies are only buffered for the paths named here",
                );
            }
            SuccessError {
                matcher: m,
                pointer: pointer(&s.pointer, &format!("{path}.pointer"), p)
                    .unwrap_or(Pointer::ROOT),
                equals: s.equals,
                code: s.code.map(|c| code(&c, &format!("{path}.code"), p)),
            }
        })
        .collect();
    let rl = raw.rate_limit;
    Profile {
        name: raw.name,
        code: pointers(f.code, "fields.code", p),
        message: pointers(f.message, "fields.message", p),
        details,
        request_id: pointers(f.request_id.pointers, "fields.request_id.pointers", p),
        request_id_headers: f
            .request_id
            .headers
            .iter()
            .enumerate()
            .filter_map(|(i, h)| header(h, &format!("fields.request_id.headers[{i}]"), p))
            .collect(),
        reset: rl.reset.and_then(|r| {
            header(&r.header, "rate_limit.reset.header", p).map(|header| ResetHeader {
                header,
                kind: r.kind,
            })
        }),
        remaining_header: rl
            .remaining_header
            .and_then(|h| header(&h, "rate_limit.remaining_header", p)),
        rules,
        codes,
        success_errors,
        render: super::render::compile(raw.render, p),
    }
}
