//! The generic detector: reads whatever a vendor sent (JSON in its common shapes, RFC 7807
//! problem documents, XML, HTML, plain text, nothing) and pulls out a code, a message,
//! per-field details and a request id. Profile pointers are tried first; the detector fills
//! whatever they leave empty. It never panics and never allocates more than the input allows.

use http::HeaderMap;
use serde_json::Value;

use crate::envelope::Detail;

use super::profile::Profile;

/// `Value::pointer` without its per-token allocation (it unescapes `~0`/`~1` with
/// `String::replace` on every token, a large share of normalising a small body).
pub fn lookup<'a>(doc: &'a Value, pointer: &str) -> Option<&'a Value> {
    if pointer.contains('~') {
        return doc.pointer(pointer);
    }
    if pointer.is_empty() {
        return Some(doc);
    }
    let rest = pointer.strip_prefix('/')?;
    rest.split('/').try_fold(doc, |v, token| match v {
        Value::Object(m) => m.get(token),
        Value::Array(a) => {
            if token.len() > 1 && token.starts_with('0') || token.starts_with('+') {
                return None;
            }
            token.parse::<usize>().ok().and_then(|i| a.get(i))
        }
        _ => None,
    })
}

/// What could be read out of a vendor body.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Extracted {
    /// The vendor's own code, as text.
    pub code: Option<String>,
    /// The vendor's message.
    pub message: Option<String>,
    /// Per-field problems.
    pub details: Vec<Detail>,
    /// The vendor's request id.
    pub request_id: Option<String>,
}

/// Largest number of details kept.
const MAX_DETAILS: usize = 32;

const CODE_PTRS: [&str; 10] = [
    "/error/code",
    "/code",
    "/error_code",
    "/errorCode",
    "/error/type",
    "/errors/0/code",
    "/error/status",
    "/status",
    "/reason",
    "/type",
];
const MESSAGE_PTRS: [&str; 17] = [
    "/error/message",
    "/message",
    "/error_description",
    "/detail",
    "/errors/0/message",
    "/errors/0/detail",
    "/errors/0/title",
    "/error/description",
    "/errorMessage",
    "/error_message",
    "/msg",
    "/description",
    "/title",
    "/error/detail",
    "/fault/faultstring",
    "/error",
    "/errors",
];
const DETAIL_PTRS: [&str; 8] = [
    "/error/details",
    "/details",
    "/errors",
    "/error/errors",
    "/invalid-params",
    "/invalid_params",
    "/validation_errors",
    "/detail",
];
const REQUEST_ID_PTRS: [&str; 9] = [
    "/request_id",
    "/requestId",
    "/error/request_id",
    "/error/requestId",
    "/meta/request_id",
    "/meta/requestId",
    "/trace_id",
    "/traceId",
    "/correlation_id",
];
const REQUEST_ID_HEADERS: [&str; 7] = [
    "x-request-id",
    "request-id",
    "x-amzn-requestid",
    "x-correlation-id",
    "x-trace-id",
    "twilio-request-id",
    "cf-ray",
];
const FIELD_PTRS: [&str; 10] = [
    "/field",
    "/param",
    "/parameter",
    "/name",
    "/path",
    "/loc",
    "/source/pointer",
    "/source/parameter",
    "/attribute",
    "/property",
];
const REASON_PTRS: [&str; 8] = [
    "/reason",
    "/message",
    "/msg",
    "/detail",
    "/description",
    "/title",
    "/error",
    "/code",
];

/// A scalar as text: strings as is, numbers stringified; arrays of strings joined.
fn text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
        Value::Number(n) => Some(n.to_string()),
        Value::Array(items) => {
            let parts: Vec<String> = items
                .iter()
                .filter_map(|i| match i {
                    Value::String(s) if !s.trim().is_empty() => Some(s.trim().to_string()),
                    _ => None,
                })
                .collect();
            (!parts.is_empty()).then(|| parts.join("; "))
        }
        _ => None,
    }
}

fn first_text<'a>(doc: &Value, ptrs: impl IntoIterator<Item = &'a str>) -> Option<String> {
    ptrs.into_iter().find_map(|p| lookup(doc, p).and_then(text))
}

/// A string that reads like a code, not a sentence.
fn code_like(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.contains(char::is_whitespace)
}

/// The code: profile pointers, then the common places. A numeric code equal to the HTTP
/// status is no code at all (Google-style `{"error":{"code":400,"status":"INVALID_ARGUMENT"}}`);
/// a problem+json `type` URI gives its last path segment.
fn find_code(doc: &Value, profile: &Profile, status: u16) -> Option<String> {
    if let Some(c) = first_text(doc, profile.code.iter().map(String::as_str)) {
        return Some(c);
    }
    for ptr in CODE_PTRS {
        let Some(v) = lookup(doc, ptr) else { continue };
        let candidate = match v {
            Value::Number(n) if n.as_u64() == Some(u64::from(status)) => continue,
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.trim().to_string(),
            _ => continue,
        };
        if ptr == "/type" {
            if candidate == "about:blank" {
                continue;
            }
            let seg = candidate
                .trim_end_matches('/')
                .rsplit('/')
                .next()
                .unwrap_or("");
            if code_like(seg) {
                return Some(seg.to_string());
            }
            continue;
        }
        if code_like(&candidate) && !(ptr == "/status" && candidate.parse::<u16>().is_ok()) {
            return Some(candidate);
        }
    }
    // OAuth-style {"error": "invalid_grant"}: a code-like string under /error.
    match lookup(doc, "/error") {
        Some(Value::String(s)) if code_like(s.trim()) => Some(s.trim().to_string()),
        _ => None,
    }
}

fn find_message(doc: &Value, profile: &Profile, code: Option<&str>) -> Option<String> {
    if let Some(m) = first_text(doc, profile.message.iter().map(String::as_str)) {
        return Some(m);
    }
    MESSAGE_PTRS.iter().find_map(|p| {
        let v = lookup(doc, p)?;
        // An `errors` array of objects is details, not a message.
        let t = text(v)?;
        // `/error` holding the code itself (OAuth) is not a message.
        (Some(t.as_str()) != code).then_some(t)
    })
}

fn detail_from_item(item: &Value, field_ptrs: &[&str], reason_ptrs: &[&str]) -> Option<Detail> {
    match item {
        Value::String(s) if !s.trim().is_empty() => Some(Detail {
            field: None,
            reason: s.trim().to_string(),
        }),
        Value::Object(_) => {
            let field = field_ptrs.iter().find_map(|p| match lookup(item, p)? {
                Value::Array(parts) => {
                    let joined: Vec<String> = parts
                        .iter()
                        .filter_map(|x| text(x).or_else(|| x.as_u64().map(|n| n.to_string())))
                        .collect();
                    (!joined.is_empty()).then(|| joined.join("."))
                }
                v => text(v),
            });
            let field = field.map(|f| f.trim_start_matches("/data/attributes/").to_string());
            let reason = reason_ptrs
                .iter()
                .find_map(|p| lookup(item, p).and_then(text));
            match (field, reason) {
                (None, None) => None,
                (field, reason) => Some(Detail {
                    field,
                    reason: reason.unwrap_or_else(|| "invalid".into()),
                }),
            }
        }
        _ => None,
    }
}

fn find_details(doc: &Value, profile: &Profile) -> Vec<Detail> {
    if let Some(spec) = &profile.details {
        if let Some(Value::Array(items)) = lookup(doc, &spec.pointer) {
            let f: Vec<&str> = spec.field.iter().map(String::as_str).collect();
            let r: Vec<&str> = spec.reason.iter().map(String::as_str).collect();
            let (f, r) = (
                if f.is_empty() { FIELD_PTRS.to_vec() } else { f },
                if r.is_empty() {
                    REASON_PTRS.to_vec()
                } else {
                    r
                },
            );
            return items
                .iter()
                .filter_map(|i| detail_from_item(i, &f, &r))
                .take(MAX_DETAILS)
                .collect();
        }
    }
    for ptr in DETAIL_PTRS {
        match lookup(doc, ptr) {
            Some(Value::Array(items)) if !items.is_empty() => {
                let explicit = matches!(
                    ptr,
                    "/error/details"
                        | "/details"
                        | "/invalid-params"
                        | "/invalid_params"
                        | "/validation_errors"
                );
                let many = items.len() > 1;
                let out: Vec<Detail> = items
                    .iter()
                    .filter_map(|i| detail_from_item(i, &FIELD_PTRS, &REASON_PTRS))
                    // A lone field-less entry of `errors` is the error itself, not a detail.
                    .filter(|d| explicit || many || d.field.is_some())
                    .take(MAX_DETAILS)
                    .collect();
                if !out.is_empty() {
                    return out;
                }
            }
            // Rails-style {"errors": {"email": ["is invalid"]}}.
            Some(Value::Object(map)) if ptr == "/errors" => {
                return map
                    .iter()
                    .flat_map(|(k, v)| {
                        let reasons: Vec<String> = match v {
                            Value::Array(a) => a.iter().filter_map(text).collect(),
                            other => text(other).into_iter().collect(),
                        };
                        reasons.into_iter().map(move |r| Detail {
                            field: Some(k.clone()),
                            reason: r,
                        })
                    })
                    .take(MAX_DETAILS)
                    .collect();
            }
            _ => {}
        }
    }
    Vec::new()
}

fn header_text(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
}

fn find_request_id(doc: Option<&Value>, headers: &HeaderMap, profile: &Profile) -> Option<String> {
    let from_doc = |ptrs: &mut dyn Iterator<Item = &str>| doc.and_then(|d| first_text(d, ptrs));
    from_doc(&mut profile.request_id.iter().map(String::as_str))
        .or_else(|| {
            profile
                .request_id_headers
                .iter()
                .find_map(|h| header_text(headers, h.as_str()))
        })
        .or_else(|| from_doc(&mut REQUEST_ID_PTRS.iter().copied()))
        .or_else(|| {
            REQUEST_ID_HEADERS
                .iter()
                .find_map(|h| header_text(headers, h))
        })
}

/// Extracts from a parsed JSON document.
pub fn from_json(doc: &Value, headers: &HeaderMap, profile: &Profile, status: u16) -> Extracted {
    let code = find_code(doc, profile, status);
    let message = find_message(doc, profile, code.as_deref());
    let mut details = find_details(doc, profile);
    // NestJS-style {"message": ["a must be…", "b must be…"]}: the list is the details too.
    if details.is_empty() {
        if let Some(Value::Array(items)) = lookup(doc, "/message") {
            details = items
                .iter()
                .filter_map(|i| detail_from_item(i, &FIELD_PTRS, &REASON_PTRS))
                .take(MAX_DETAILS)
                .collect();
        }
    }
    Extracted {
        code,
        message,
        details,
        request_id: find_request_id(Some(doc), headers, profile),
    }
}

/// Text between `<tag ...>` and `</tag>`, case-insensitive, for any of `tags`.
fn xml_tag(body: &str, tags: &[&str]) -> Option<String> {
    let lower = body.to_ascii_lowercase();
    for tag in tags {
        let t = tag.to_ascii_lowercase();
        let open = format!("<{t}");
        let mut from = 0;
        while let Some(pos) = lower[from..].find(&open) {
            let start = from + pos;
            let after = start + open.len();
            // `<code>` or `<code attr=…>`, not `<codes>`.
            let next = lower.as_bytes().get(after).copied();
            if !matches!(next, Some(b'>') | Some(b' ') | Some(b'\t') | Some(b'\n')) {
                from = after;
                continue;
            }
            let Some(gt) = lower[after..].find('>') else {
                break;
            };
            let content_start = after + gt + 1;
            let close = format!("</{t}>");
            let Some(end) = lower[content_start..].find(&close) else {
                break;
            };
            let raw = &body[content_start..content_start + end];
            let cleaned = strip_tags(
                raw.trim()
                    .trim_start_matches("<![CDATA[")
                    .trim_end_matches("]]>"),
            );
            if !cleaned.is_empty() {
                return Some(cleaned);
            }
            from = content_start + end;
        }
    }
    None
}

/// Removes markup and decodes the five XML entities; collapses white space.
fn strip_tags(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut in_tag = false;
    for c in s.chars() {
        match c {
            '<' => in_tag = true,
            '>' => {
                in_tag = false;
                out.push(' ');
            }
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    let decoded = out
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&apos;", "'")
        .replace("&#39;", "'")
        .replace("&nbsp;", " ")
        .replace("&amp;", "&");
    decoded.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Extracts from a non-JSON body: XML error documents, HTML pages, plain text.
pub fn from_text(
    body: &str,
    headers: &HeaderMap,
    profile: &Profile,
    content_type: &str,
) -> Extracted {
    let trimmed = body.trim_start_matches('\u{feff}').trim();
    let looks_html = content_type.contains("html")
        || trimmed
            .get(..5)
            .is_some_and(|h| h.eq_ignore_ascii_case("<!doc") || h.eq_ignore_ascii_case("<html"));
    let looks_xml = !looks_html && (content_type.contains("xml") || trimmed.starts_with('<'));
    let (code, message) = if looks_html {
        (None, xml_tag(trimmed, &["title", "h1"]))
    } else if looks_xml {
        (
            xml_tag(trimmed, &["code", "errorcode", "error_code", "faultcode"]),
            xml_tag(
                trimmed,
                &[
                    "message",
                    "errormessage",
                    "error_message",
                    "faultstring",
                    "detail",
                    "error",
                ],
            ),
        )
    } else {
        let line = trimmed
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map(str::to_string);
        (None, line)
    };
    let request_id = if looks_xml {
        xml_tag(trimmed, &["requestid", "request_id"])
    } else {
        None
    }
    .or_else(|| find_request_id(None, headers, profile));
    Extracted {
        code,
        message,
        details: Vec::new(),
        request_id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ex(doc: Value, status: u16) -> Extracted {
        from_json(&doc, &HeaderMap::new(), &Profile::generic(), status)
    }

    #[test]
    fn lookup_agrees_with_serde_json_pointer() {
        let doc = json!({"a": [10, {"b": 1}], "": {"": 2}, "x/y": 3, "m~n": 4, "0": 5});
        for p in [
            "", "/", "//", "/a", "/a/0", "/a/1/b", "/a/01", "/a/+1", "/a/2", "/a/-1", "/a/b",
            "/x~1y", "/m~0n", "/0", "a", "/a/0/c", "/a/1/b/c",
        ] {
            assert_eq!(lookup(&doc, p), doc.pointer(p), "{p:?}");
        }
    }

    #[test]
    fn nested_and_flat_shapes() {
        let e = ex(
            json!({"error": {"code": "X", "message": "m", "details": [{"field": "to", "reason": "bad"}]}}),
            400,
        );
        assert_eq!(e.code.as_deref(), Some("X"));
        assert_eq!(e.message.as_deref(), Some("m"));
        assert_eq!(
            e.details,
            vec![Detail {
                field: Some("to".into()),
                reason: "bad".into()
            }]
        );
        let e = ex(
            json!({"error": "Invalid phone number format", "code": "invalid_parameter"}),
            400,
        );
        assert_eq!(e.code.as_deref(), Some("invalid_parameter"));
        assert_eq!(e.message.as_deref(), Some("Invalid phone number format"));
    }

    #[test]
    fn google_style_numeric_status_is_skipped() {
        let e = ex(
            json!({"error": {"code": 403, "message": "no", "status": "PERMISSION_DENIED"}}),
            403,
        );
        assert_eq!(e.code.as_deref(), Some("PERMISSION_DENIED"));
    }

    #[test]
    fn oauth_error_is_a_code_not_a_message() {
        let e = ex(
            json!({"error": "invalid_grant", "error_description": "expired"}),
            400,
        );
        assert_eq!(e.code.as_deref(), Some("invalid_grant"));
        assert_eq!(e.message.as_deref(), Some("expired"));
    }

    #[test]
    fn xml_and_html() {
        let h = HeaderMap::new();
        let p = Profile::generic();
        let e = from_text("<?xml version='1.0'?><TwilioResponse><RestException><Code>20404</Code><Message>The requested resource was not found</Message></RestException></TwilioResponse>", &h, &p, "application/xml");
        assert_eq!(e.code.as_deref(), Some("20404"));
        assert_eq!(
            e.message.as_deref(),
            Some("The requested resource was not found")
        );
        let e = from_text(
            "<html><head><title>502 Bad Gateway</title></head><body><h1>502</h1></body></html>",
            &h,
            &p,
            "text/html",
        );
        assert_eq!(e.message.as_deref(), Some("502 Bad Gateway"));
    }
}
