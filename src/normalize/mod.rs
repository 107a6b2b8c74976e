//! Normalisation: whatever went wrong becomes the canonical envelope.
//!
//! - [`normalize`] turns one vendor error response (status, headers, body bytes) into an
//!   envelope, using the vendor's [`Profile`] first and the generic detector for whatever the
//!   profile leaves open. It is pure (no I/O), total (any bytes in, a valid envelope out) and
//!   bounded (decompression and stored bodies are capped).
//! - [`transport`] classifies failures where no usable response arrived.
//!
//! Approximate by nature: the generic detector guesses from common shapes and keywords;
//! profiles make a vendor exact.

pub mod capture;
pub mod classify;
pub mod detect;
pub mod hints;
pub mod profile;
pub mod render;
pub mod transport;
pub mod xml;

pub use profile::Profile;

use std::borrow::Cow;
use std::io::Read;
use std::time::SystemTime;

use http::HeaderMap;
use serde_json::Value;

use crate::envelope::{cap_message, Code, Envelope, ErrorBody, Source, UpstreamInfo};

/// Most bytes of an error body Switchboard reads (and decompresses to).
pub const MAX_ERROR_BODY: usize = 64 * 1024;
/// Most bytes of the vendor body kept in `upstream.body`.
pub const MAX_KEPT_BODY: usize = 16 * 1024;

/// One vendor response to normalise.
#[derive(Debug, Clone, Copy)]
pub struct VendorResponse<'a> {
    /// Vendor HTTP status.
    pub status: u16,
    /// Vendor response headers.
    pub headers: &'a HeaderMap,
    /// The body bytes read (at most [`MAX_ERROR_BODY`]).
    pub body: &'a [u8],
    /// More body followed than was read.
    pub truncated: bool,
    /// The request path (some profile rules match on it).
    pub path: &'a str,
}

/// The outcome: the envelope plus what the retry policy needs to know.
#[derive(Debug, Clone, PartialEq)]
pub struct Normalized {
    /// The canonical envelope.
    pub envelope: Envelope,
    /// The profile says whether the vendor processed the request; `None` = not said.
    pub unprocessed: Option<bool>,
}

impl Normalized {
    /// The attempt's outcome as the retry decision sees it: the classified code, and the
    /// facts the vendor stated (its status, the profile's `unprocessed` mark).
    pub fn outcome(&self, status: u16) -> crate::retry::Outcome {
        let e = &self.envelope.error;
        crate::retry::Outcome::Response {
            status,
            code: e.code,
            retryable: e.retryable,
            unprocessed: self.unprocessed,
            hint: e.retry_after_s.map(std::time::Duration::from_secs),
        }
    }
}

/// Decompresses a gzip/deflate body, never past [`MAX_ERROR_BODY`]; `true` when cut.
fn decoded<'a>(headers: &HeaderMap, body: &'a [u8]) -> (Cow<'a, [u8]>, bool) {
    let enc = headers
        .get(http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let limit = MAX_ERROR_BODY as u64;
    let mut out = Vec::new();
    let result = match enc.as_str() {
        "gzip" | "x-gzip" => flate2::read::MultiGzDecoder::new(body)
            .take(limit + 1)
            .read_to_end(&mut out),
        "deflate" => flate2::read::ZlibDecoder::new(body)
            .take(limit + 1)
            .read_to_end(&mut out),
        _ => return (Cow::Borrowed(body), false),
    };
    match result {
        Ok(_) => {
            let cut = out.len() > MAX_ERROR_BODY;
            out.truncate(MAX_ERROR_BODY);
            (Cow::Owned(out), cut)
        }
        // Not really compressed (or corrupt): read it as it came.
        Err(_) if out.is_empty() => (Cow::Borrowed(body), false),
        Err(_) => (Cow::Owned(out), true),
    }
}

fn kept_body(bytes: &[u8], doc: Option<Value>, cut: bool) -> Value {
    if let (Some(doc), false) = (doc, cut) {
        if bytes.len() <= MAX_KEPT_BODY {
            return doc;
        }
    }
    if bytes.is_empty() && !cut {
        return Value::String(String::new());
    }
    let mut end = bytes.len().min(MAX_KEPT_BODY);
    let text = loop {
        match std::str::from_utf8(&bytes[..end]) {
            Ok(s) => break Cow::Borrowed(s),
            // Cut on a char boundary when the body is valid UTF-8 up to there.
            Err(e) if e.valid_up_to() > 0 && e.error_len().is_none() => end = e.valid_up_to(),
            Err(_) => break String::from_utf8_lossy(&bytes[..end]),
        }
    };
    let mut s = text.into_owned();
    if cut || bytes.len() > MAX_KEPT_BODY {
        s.push_str(&format!(
            "…[truncated by switchboard: kept {} of {}{} bytes]",
            end,
            bytes.len(),
            if cut { "+" } else { "" }
        ));
    }
    Value::String(s)
}

fn content_type(headers: &HeaderMap) -> String {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase()
}

fn parse_json(bytes: &[u8]) -> Option<Value> {
    let start = bytes.iter().position(|b| !b.is_ascii_whitespace())?;
    matches!(bytes[start], b'{' | b'[').then(|| serde_json::from_slice(bytes).ok())?
}

/// Builds the envelope for a vendor error response.
pub fn normalize(
    profile: &Profile,
    vendor: &str,
    request_id: &str,
    resp: &VendorResponse<'_>,
    now: SystemTime,
) -> Normalized {
    build(profile, vendor, request_id, resp, now, read(resp), None)
}

/// What Switchboard makes of any vendor response: the envelope for an error (a status ≥ 300,
/// or a 2xx a `success_errors` rule declares one); `None` for a success, passed through.
pub fn answer(
    profile: &Profile,
    vendor: &str,
    request_id: &str,
    resp: &VendorResponse<'_>,
    now: SystemTime,
) -> Option<Normalized> {
    if (200..300).contains(&resp.status) {
        success_error(profile, vendor, request_id, resp, now)
    } else {
        Some(normalize(profile, vendor, request_id, resp, now))
    }
}

/// For a 2xx response that a profile rule may declare an error: the envelope when it does.
pub fn success_error(
    profile: &Profile,
    vendor: &str,
    request_id: &str,
    resp: &VendorResponse<'_>,
    now: SystemTime,
) -> Option<Normalized> {
    let body = read(resp);
    let doc = body.doc.as_ref()?;
    let rule = profile.success_errors.iter().find(|r| {
        r.matcher.matches(resp.status, None, "", resp.path)
            && r.pointer.get(doc).is_some_and(|v| r.equals.contains(v))
    })?;
    let forced = rule.code;
    Some(build(profile, vendor, request_id, resp, now, body, forced))
}

/// A vendor body ready to read: decompressed (capped), and parsed when it is JSON or XML.
struct Decoded<'a> {
    bytes: Cow<'a, [u8]>,
    /// Less than the whole body: the read or the decompression was capped.
    cut: bool,
    doc: Option<Value>,
    /// `doc` is the JSON view of an XML body ([`xml::view`]): the body is kept as text.
    from_xml: bool,
}

fn read<'a>(resp: &VendorResponse<'a>) -> Decoded<'a> {
    let (bytes, decode_cut) = decoded(resp.headers, resp.body);
    let mut doc = parse_json(&bytes);
    let mut from_xml = false;
    if doc.is_none() && looks_xml(&bytes, resp.headers) {
        doc = std::str::from_utf8(&bytes).ok().and_then(xml::view);
        from_xml = doc.is_some();
    }
    Decoded {
        bytes,
        cut: resp.truncated || decode_cut,
        doc,
        from_xml,
    }
}

/// An XML document and not an HTML page (which the text reader takes by its title).
fn looks_xml(bytes: &[u8], headers: &HeaderMap) -> bool {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    let head = &bytes[start..bytes.len().min(start + 64)];
    let lower: Vec<u8> = head.iter().map(u8::to_ascii_lowercase).collect();
    let html = lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html");
    let ct = content_type(headers);
    !html && !ct.contains("html") && head.first() == Some(&b'<')
}

/// The envelope for a vendor response; `forced` is the code a `success_errors` rule names.
fn build(
    profile: &Profile,
    vendor: &str,
    request_id: &str,
    resp: &VendorResponse<'_>,
    now: SystemTime,
    body: Decoded<'_>,
    forced: Option<Code>,
) -> Normalized {
    let Decoded {
        bytes,
        cut,
        doc,
        from_xml,
    } = body;
    let extracted = match &doc {
        Some(d) => detect::from_json(d, resp.headers, profile, resp.status),
        None => detect::from_text(
            &String::from_utf8_lossy(&bytes),
            resp.headers,
            profile,
            &content_type(resp.headers),
        ),
    };
    let message_lower = extracted.message.as_deref().unwrap_or("").to_lowercase();
    let vcode = extracted.code.as_deref();
    let mapping = profile.mapping(resp.status, vcode, &message_lower, resp.path);
    let code = match (forced, mapping) {
        (Some(c), _) => c,
        (_, Some(m)) => m.code,
        _ => classify::canonical(resp.status, vcode, extracted.message.as_deref()),
    };
    let retry_after_s = hints::hint(resp.headers, profile, now)
        .or_else(|| mapping.and_then(|m| m.retry_after).map(|d| d.as_secs()));
    let retryable = mapping
        .and_then(|m| m.retryable)
        .unwrap_or_else(|| code.default_retryable(Some(resp.status)));
    let from_details = || {
        let parts: Vec<String> = extracted
            .details
            .iter()
            .take(3)
            .map(|d| match &d.field {
                Some(f) => format!("{f}: {}", d.reason),
                None => d.reason.clone(),
            })
            .collect();
        (!parts.is_empty()).then(|| parts.join("; "))
    };
    let message = extracted
        .message
        .clone()
        .or_else(from_details)
        .unwrap_or_else(|| {
            let reason = http::StatusCode::from_u16(resp.status)
                .ok()
                .and_then(|s| s.canonical_reason())
                .unwrap_or("");
            let said = format!("vendor answered HTTP {} {reason}", resp.status);
            // A code and no words (`{"error": "invalid_parameter"}`): the code is all the
            // vendor said, so it is said too.
            match &extracted.code {
                Some(c) => format!("{}: {c}", said.trim_end()),
                None => said.trim_end().to_string(),
            }
        });
    let envelope = Envelope {
        error: ErrorBody {
            code,
            message: cap_message(message),
            retryable,
            retry_after_s,
            details: extracted.details,
            source: Source::Upstream,
            vendor: vendor.to_string(),
            attempts: 1,
            upstream: Some(UpstreamInfo {
                status: resp.status,
                code: extracted.code,
                request_id: extracted.request_id,
                body: kept_body(&bytes, doc.filter(|_| !from_xml), cut),
            }),
        },
        request_id: request_id.to_string(),
    };
    Normalized {
        envelope,
        unprocessed: mapping.and_then(|m| m.unprocessed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn norm(status: u16, body: &[u8], headers: &HeaderMap) -> Envelope {
        let resp = VendorResponse {
            status,
            headers,
            body,
            truncated: false,
            path: "/",
        };
        normalize(&Profile::generic(), "v", "sb-1", &resp, SystemTime::now()).envelope
    }

    #[test]
    fn empty_body_uses_the_status() {
        let e = norm(503, b"", &HeaderMap::new());
        assert_eq!(e.error.code, Code::UpstreamUnavailable);
        assert_eq!(
            e.error.message,
            "vendor answered HTTP 503 Service Unavailable"
        );
        assert_eq!(e.status(), 503);
    }

    #[test]
    fn gzip_bodies_are_read() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(br#"{"error":{"code":"NOT_FOUND","message":"gone"}}"#);
        let z = enc.finish().unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert("content-encoding", http::HeaderValue::from_static("gzip"));
        let e = norm(404, &z, &h);
        assert_eq!(e.error.message, "gone");
        assert_eq!(
            e.error.upstream.map(|u| u.code),
            Some(Some("NOT_FOUND".into()))
        );
    }

    #[test]
    fn deflate_bodies_are_read() {
        use std::io::Write;
        let mut enc = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::fast());
        let _ = enc.write_all(br#"{"error":{"code":"NOT_FOUND","message":"gone"}}"#);
        let z = enc.finish().unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert(
            "content-encoding",
            http::HeaderValue::from_static("deflate"),
        );
        assert_eq!(norm(404, &z, &h).error.message, "gone");
    }

    #[test]
    fn gzip_bomb_is_capped() {
        use std::io::Write;
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        let _ = enc.write_all(&vec![b'a'; 10 * 1024 * 1024]);
        let z = enc.finish().unwrap_or_default();
        let mut h = HeaderMap::new();
        h.insert("content-encoding", http::HeaderValue::from_static("gzip"));
        let e = norm(500, &z, &h);
        let body = e.error.upstream.map(|u| u.body).unwrap_or_default();
        let s = body.as_str().unwrap_or("");
        assert!(s.len() < MAX_KEPT_BODY + 200);
        assert!(s.contains("truncated by switchboard"));
    }

    /// A profile with every precedence tier: a status-only 429 rule listed first, a code map
    /// entry for `insufficient_quota`, and a rule naming a vendor code listed last.
    fn tiered() -> Profile {
        let doc = serde_json::json!({
            "name": "tiers",
            "fields": { "code": ["/error/code"], "message": ["/error/message"] },
            "rules": [
                { "match": { "status": 429 }, "code": "rate_limited", "unprocessed": true },
                { "match": { "status": 429 }, "code": "upstream_unavailable" },
                { "match": { "message": ["hold on"] }, "code": "upstream_unavailable" },
                { "match": { "status": 429, "vendor_code": "insufficient_quota",
                             "message": ["trial"] }, "code": "permission_denied" },
            ],
            "codes": [
                { "vendor": "insufficient_quota", "code": "insufficient_credits",
                  "retryable": false },
                { "vendor": "slow_down", "code": "rate_limited" },
            ],
        });
        match Profile::compile(&doc) {
            Ok(p) => p,
            Err(e) => panic!("test profile: {e:?}"),
        }
    }

    fn with(profile: &Profile, status: u16, code: &str, message: &str) -> Normalized {
        let body = serde_json::json!({ "error": { "code": code, "message": message } });
        let body = body.to_string();
        let headers = HeaderMap::new();
        let resp = VendorResponse {
            status,
            headers: &headers,
            body: body.as_bytes(),
            truncated: false,
            path: "/",
        };
        normalize(profile, "v", "sb-1", &resp, SystemTime::now())
    }

    #[test]
    fn the_code_map_beats_a_rule_on_the_status_alone() {
        let n = with(
            &tiered(),
            429,
            "insufficient_quota",
            "You exceeded your quota",
        );
        assert_eq!(n.envelope.error.code, Code::InsufficientCredits);
        assert!(!n.envelope.error.retryable);
        // The status rule's `unprocessed` is not borrowed by the code that won.
        assert_eq!(n.unprocessed, None);
    }

    #[test]
    fn a_status_rule_decides_when_the_code_is_unknown() {
        let n = with(&tiered(), 429, "mystery", "Too many requests");
        assert_eq!(n.envelope.error.code, Code::RateLimited);
        assert_eq!(
            n.unprocessed,
            Some(true),
            "the first status rule, in file order"
        );
    }

    #[test]
    fn rules_naming_the_vendor_beat_the_code_map() {
        // Listed after the status rules, still tried first: it names the vendor's code.
        let n = with(&tiered(), 429, "insufficient_quota", "Your trial has ended");
        assert_eq!(n.envelope.error.code, Code::PermissionDenied);
        // A message-only rule beats the map's entry for the code.
        let n = with(&tiered(), 429, "slow_down", "Hold on a moment");
        assert_eq!(n.envelope.error.code, Code::UpstreamUnavailable);
        // Without the message the map decides.
        let n = with(&tiered(), 429, "slow_down", "Too many requests");
        assert_eq!(
            (n.envelope.error.code, n.unprocessed),
            (Code::RateLimited, None)
        );
    }

    #[test]
    fn nothing_matching_leaves_it_to_the_generic_detector() {
        let n = with(&tiered(), 404, "mystery", "No such call");
        assert_eq!(n.envelope.error.code, Code::NotFound);
        assert_eq!(n.unprocessed, None);
    }

    #[test]
    fn invalid_utf8_is_kept_lossy() {
        let e = norm(500, b"\xff\xfe oops \xc3", &HeaderMap::new());
        assert_eq!(e.error.code, Code::InternalError);
        assert!(serde_json::to_vec(&e).is_ok());
    }
}
