//! The generic detector: reads whatever a vendor sent (JSON in its common shapes, RFC 7807
//! problem documents, XML, HTML, plain text, nothing) and pulls out a code, a message,
//! per-field details and a request id. Profile pointers are tried first; the detector fills
//! whatever they leave empty. It never panics and never allocates more than the input allows.

use http::{HeaderMap, HeaderName};
use serde_json::Value;

use crate::envelope::Detail;

use super::profile::Profile;
use crate::pointer::Path;

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

/// Where details are looked for without a profile, and whether a list there is explicitly one
/// of details (any of its entries is one) or a list of errors (a lone field-less entry is the
/// error itself).
const DETAIL_PTRS: [(&[&str], bool); 8] = [
    (&["error", "details"], true),
    (&["details"], true),
    (&["errors"], false),
    (&["error", "errors"], false),
    (&["invalid-params"], true),
    (&["invalid_params"], true),
    (&["validation_errors"], true),
    (&["detail"], false),
];
/// Names, not text: `HeaderMap::get` with a `&str` parses the name on every call.
const REQUEST_ID_HEADERS: [HeaderName; 7] = [
    HeaderName::from_static("x-request-id"),
    HeaderName::from_static("request-id"),
    HeaderName::from_static("x-amzn-requestid"),
    HeaderName::from_static("x-correlation-id"),
    HeaderName::from_static("x-trace-id"),
    HeaderName::from_static("twilio-request-id"),
    HeaderName::from_static("cf-ray"),
];
const FIELD_PTRS: [&[&str]; 10] = [
    &["field"],
    &["param"],
    &["parameter"],
    &["name"],
    &["path"],
    &["loc"],
    &["source", "pointer"],
    &["source", "parameter"],
    &["attribute"],
    &["property"],
];
const REASON_PTRS: [&[&str]; 8] = [
    &["reason"],
    &["message"],
    &["msg"],
    &["detail"],
    &["description"],
    &["title"],
    &["error"],
    &["code"],
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

fn first_text(doc: &Value, ptrs: &[impl Path]) -> Option<String> {
    ptrs.iter().find_map(|p| p.find(doc).and_then(text))
}

/// A string that reads like a code, not a sentence.
fn code_like(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && !s.contains(char::is_whitespace)
}

/// `Forbidden`, `Unauthorized`: a word as a sentence would start, not an identifier.
fn capitalised_word(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(char::is_uppercase) && chars.all(char::is_lowercase)
}

/// A key as the detector compares it: ASCII letters and digits, lower-cased, so
/// `errorMessage`, `error_message`, `Error-Message` and `ERRORMESSAGE` are one name.
fn key_name(k: &str) -> smallvec::SmallVec<[u8; 24]> {
    k.bytes()
        .filter(u8::is_ascii_alphanumeric)
        .map(|b| b.to_ascii_lowercase())
        .collect()
}

/// A key naming an error object or list: `error`, `errors`, `requestError`, `Fault`,
/// `serviceException`, `RestException`, `err`.
fn error_like(name: &[u8]) -> bool {
    let has = |w: &[u8]| name.windows(w.len()).any(|x| x == w);
    name == b"err" || has(b"error") || has(b"exception") || has(b"fault") || name == b"problem"
}

/// The objects of a document that may hold the error, most specific first: error objects
/// (reached through error-named keys), the document itself, the first entry of an
/// error-named list, then other objects (a vendor-named wrapper, `detail: {…}`), each at most
/// [`MAX_LEVELS`] down.
fn containers(doc: &Value) -> Vec<Fields<'_>> {
    let Value::Object(root) = doc else {
        return Vec::new();
    };
    let (mut errors, mut entries, mut wrappers) = (Vec::new(), Vec::new(), Vec::new());
    let mut level = vec![(root, false)];
    for _ in 0..MAX_LEVELS {
        let mut next = Vec::new();
        for (obj, _) in &level {
            for (k, v) in obj.iter() {
                let named = error_like(&key_name(k));
                match v {
                    Value::Object(m) => {
                        if named {
                            errors.push(m)
                        } else {
                            wrappers.push(m)
                        }
                        next.push((m, named));
                    }
                    Value::Array(items) if named => {
                        if let Some(Value::Object(m)) = items.first() {
                            entries.push(m);
                            next.push((m, true));
                        }
                    }
                    _ => {}
                }
            }
            if errors.len() + entries.len() + wrappers.len() > MAX_CONTAINERS {
                break;
            }
        }
        level = next;
    }
    let mut out = Vec::with_capacity(1 + errors.len() + entries.len() + wrappers.len());
    out.extend(errors);
    out.push(root);
    out.extend(entries);
    out.extend(wrappers);
    out.truncate(MAX_CONTAINERS);
    // Each key's name is worked out once here, not once per name looked for.
    out.into_iter()
        .map(|m| m.iter().map(|(k, v)| (key_name(k), v)).collect())
        .collect()
}

/// An object's fields by [`key_name`], in document order.
type Fields<'a> = Vec<(smallvec::SmallVec<[u8; 24]>, &'a Value)>;

/// How far below the document the detector looks.
const MAX_LEVELS: usize = 3;
/// Most objects the detector reads fields from.
const MAX_CONTAINERS: usize = 32;

/// Code-like field names, best first.
const CODE_NAMES: [&[u8]; 10] = [
    b"code",
    b"errorcode",
    b"errcode",
    b"faultcode",
    b"subcode",
    b"type",
    b"errortype",
    b"status",
    b"reason",
    b"error",
];

/// Message-like field names, best first. `title` with `detail` is handled before these.
const MESSAGE_NAMES: [&[u8]; 20] = [
    b"message",
    b"msg",
    b"errormessage",
    b"errmsg",
    b"errormsg",
    b"errordescription",
    b"detail",
    b"description",
    b"text",
    b"errortext",
    b"faultstring",
    b"statusmessage",
    b"usermessage",
    b"developermessage",
    b"displaymessage",
    b"reason",
    b"info",
    b"title",
    b"error",
    b"errors",
];

/// The value under the first key of `obj` whose name is `name`.
fn field<'a>(obj: &Fields<'a>, name: &[u8]) -> Option<&'a Value> {
    obj.iter()
        .find(|(k, _)| k.as_slice() == name)
        .map(|(_, v)| *v)
}

/// A code read from a field: numbers equal to the HTTP status are no code (Google-style
/// `{"error":{"code":400,"status":"INVALID_ARGUMENT"}}`), nor is a numeric `status`; a `type`
/// URI gives its last path segment (RFC 7807, Vonage's `…/api-errors#throttled`).
fn code_from(name: &[u8], v: &Value, status: u16) -> Option<String> {
    let s = match v {
        Value::Number(n) if n.as_u64() == Some(u64::from(status)) => return None,
        Value::Number(n) => return (name != b"status").then(|| n.to_string()),
        Value::String(s) => s.trim(),
        _ => return None,
    };
    if s.parse::<u16>()
        .is_ok_and(|n| n == status || name == b"status")
    {
        return None;
    }
    // `"status": "error"`, `"type": "error"`: that it is an error, not which.
    if [
        "error", "errors", "fail", "failed", "failure", "false", "ko", "nok",
    ]
    .iter()
    .any(|w| s.eq_ignore_ascii_case(w))
    {
        return None;
    }
    // `{"error": "Forbidden"}`: one capitalised word under `error` is a message, where
    // `invalid_grant` or `authentication-error` is a code.
    if name == b"error" && capitalised_word(s) {
        return None;
    }
    if matches!(name, b"type" | b"errortype") {
        if s == "about:blank" {
            return None;
        }
        if s.contains("://") || s.starts_with('/') {
            // The last segment keeps its fragment: `api-errors#throttled`,
            // `messages-olympus#1120` (the fragment alone would lose its namespace).
            let seg = s.rsplit('/').find(|x| !x.is_empty()).unwrap_or("");
            return code_like(seg).then(|| seg.to_string());
        }
    }
    code_like(s).then(|| s.to_string())
}

/// The code: profile pointers, then code-like fields of the error's objects.
fn find_code(doc: &Value, boxes: &[Fields<'_>], profile: &Profile, status: u16) -> Option<String> {
    if let Some(c) = first_text(doc, &profile.code) {
        return Some(c);
    }
    boxes.iter().find_map(|obj| {
        CODE_NAMES
            .iter()
            .find_map(|name| field(obj, name).and_then(|v| code_from(name, v, status)))
    })
}

/// `title: detail` when an object gives both (RFC 7807, JSON:API): the title alone names the
/// kind of problem, the detail this occurrence.
fn title_and_detail(obj: &Fields<'_>) -> Option<String> {
    let title = field(obj, b"title").and_then(text)?;
    let detail = field(obj, b"detail").and_then(text)?;
    Some(if detail.starts_with(&title) {
        detail
    } else if title.ends_with(['.', ':', '!', '?']) {
        format!("{title} {detail}")
    } else {
        format!("{title}: {detail}")
    })
}

/// The message: profile pointers, then message-like fields of the error's objects. A value
/// equal to the code (OAuth's `{"error": "invalid_grant"}`) is the code, not a message.
fn find_message(
    doc: &Value,
    boxes: &[Fields<'_>],
    profile: &Profile,
    code: Option<&str>,
) -> Option<String> {
    if let Some(m) = first_text(doc, &profile.message) {
        if Some(m.as_str()) != code || !code_like(&m) {
            return Some(m);
        }
    }
    boxes.iter().find_map(|obj| {
        let first = MESSAGE_NAMES
            .iter()
            .take(5)
            .find_map(|n| field(obj, n).and_then(text));
        first
            .or_else(|| title_and_detail(obj))
            .or_else(|| {
                MESSAGE_NAMES.iter().skip(5).find_map(|name| {
                    let t = field(obj, name).and_then(text)?;
                    // A code-like `reason`/`error`/`title` is a code, not a message.
                    let wordy = !code_like(&t)
                        || capitalised_word(&t)
                        || !matches!(*name, b"reason" | b"error" | b"title");
                    (wordy && Some(t.as_str()) != code).then_some(t)
                })
            })
            .filter(|t| Some(t.as_str()) != code)
    })
}

fn detail_from_item(
    item: &Value,
    field_ptrs: &[impl Path],
    reason_ptrs: &[impl Path],
) -> Option<Detail> {
    match item {
        Value::String(s) if !s.trim().is_empty() => Some(Detail {
            field: None,
            reason: s.trim().to_string(),
        }),
        Value::Object(_) => {
            let field = field_ptrs.iter().find_map(|p| match p.find(item)? {
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
            let reason = reason_ptrs.iter().find_map(|p| p.find(item).and_then(text));
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

fn details_of(items: &[Value], field: &[impl Path], reason: &[impl Path]) -> Vec<Detail> {
    items
        .iter()
        .filter_map(|i| detail_from_item(i, field, reason))
        .take(MAX_DETAILS)
        .collect()
}

fn find_details(doc: &Value, profile: &Profile) -> Vec<Detail> {
    if let Some(spec) = &profile.details {
        if let Some(Value::Array(items)) = spec.pointer.get(doc) {
            // A profile that names no field (or reason) pointers gets the built-in ones.
            return match (spec.field.is_empty(), spec.reason.is_empty()) {
                (false, false) => details_of(items, &spec.field, &spec.reason),
                (false, true) => details_of(items, &spec.field, &REASON_PTRS),
                (true, false) => details_of(items, &FIELD_PTRS, &spec.reason),
                (true, true) => details_of(items, &FIELD_PTRS, &REASON_PTRS),
            };
        }
    }
    for (ptr, explicit) in DETAIL_PTRS {
        match ptr.find(doc) {
            Some(Value::Array(items)) if !items.is_empty() => {
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
            Some(Value::Object(map)) if ptr == ["errors"] => {
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

fn header_text(value: Option<&http::HeaderValue>) -> Option<String> {
    value
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty() && v.len() <= 200)
        .map(str::to_string)
}

/// Request-id field names.
const REQUEST_ID_NAMES: [&[u8]; 6] = [
    b"requestid",
    b"xrequestid",
    b"traceid",
    b"correlationid",
    b"reqid",
    b"transactionid",
];

fn find_request_id(
    doc: Option<&Value>,
    boxes: &[Fields<'_>],
    headers: &HeaderMap,
    profile: &Profile,
) -> Option<String> {
    doc.and_then(|d| first_text(d, &profile.request_id))
        .or_else(|| {
            profile
                .request_id_headers
                .iter()
                .find_map(|h| header_text(headers.get(h)))
        })
        .or_else(|| {
            boxes.iter().find_map(|obj| {
                REQUEST_ID_NAMES
                    .iter()
                    .find_map(|n| field(obj, n).and_then(text))
            })
        })
        .or_else(|| {
            crate::http::headers::first_values(headers, &REQUEST_ID_HEADERS)
                .into_iter()
                .find_map(header_text)
        })
}

const MESSAGE: &[&str] = &["message"];

/// Extracts from a parsed JSON document.
pub fn from_json(doc: &Value, headers: &HeaderMap, profile: &Profile, status: u16) -> Extracted {
    let boxes = containers(doc);
    let code = find_code(doc, &boxes, profile, status);
    let message = find_message(doc, &boxes, profile, code.as_deref());
    let mut details = find_details(doc, profile);
    // NestJS-style {"message": ["a must be…", "b must be…"]}: the list is the details too.
    if details.is_empty() {
        if let Some(Value::Array(items)) = MESSAGE.find(doc) {
            details = details_of(items, &FIELD_PTRS, &REASON_PTRS);
        }
    }
    Extracted {
        code,
        message,
        details,
        request_id: find_request_id(Some(doc), &boxes, headers, profile),
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
    .or_else(|| find_request_id(None, &[], headers, profile));
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
    fn message_like_names_in_any_case_up_to_three_levels_down() {
        let e = ex(
            json!({"Error": {"ErrorCode": "E1", "ErrorMessage": "deep"}}),
            400,
        );
        assert_eq!(
            (e.code.as_deref(), e.message.as_deref()),
            (Some("E1"), Some("deep"))
        );
        // A vendor-named wrapper, and an exception inside an error.
        let e = ex(
            json!({"requestError": {"serviceException": {"messageId": "UNAUTHORIZED", "text": "Invalid login details"}}}),
            401,
        );
        assert_eq!(e.message.as_deref(), Some("Invalid login details"));
        let e = ex(
            json!({"detail": {"status": "quota_exceeded", "message": "out of characters"}}),
            401,
        );
        assert_eq!(
            (e.code.as_deref(), e.message.as_deref()),
            (Some("quota_exceeded"), Some("out of characters"))
        );
        let e = ex(
            json!({"response": {"error_data": {"code": 1002, "description": "too long"}}}),
            400,
        );
        assert_eq!(
            (e.code.as_deref(), e.message.as_deref()),
            (Some("1002"), Some("too long"))
        );
        // Four levels down is too far.
        let e = ex(json!({"a": {"b": {"c": {"message": "found"}}}}), 400);
        assert_eq!(e.message.as_deref(), Some("found"));
        let e = ex(json!({"a": {"b": {"c": {"d": {"message": "lost"}}}}}), 400);
        assert_eq!(e.message, None);
        // The error object beats the document; the document beats an `errors` entry.
        let e = ex(
            json!({"message": "outer", "error": {"message": "inner"}}),
            400,
        );
        assert_eq!(e.message.as_deref(), Some("inner"));
        let e = ex(
            json!({"message": "Validation failed", "errors": [{"field": "to", "message": "bad"}]}),
            422,
        );
        assert_eq!(e.message.as_deref(), Some("Validation failed"));
    }

    #[test]
    fn a_problem_document_keeps_title_and_detail() {
        let e = ex(
            json!({"type": "https://example.com/errors#low-balance", "title": "Low balance", "detail": "Top up first"}),
            402,
        );
        assert_eq!(e.message.as_deref(), Some("Low balance: Top up first"));
        assert_eq!(e.code.as_deref(), Some("errors#low-balance"));
        let e = ex(
            json!({"errors": [{"code": "10009", "title": "Authentication failed.", "detail": "Bad key"}]}),
            401,
        );
        assert_eq!(e.message.as_deref(), Some("Authentication failed. Bad key"));
        let e = ex(
            json!({"title": "Not Found", "detail": "Not Found: call CA1"}),
            404,
        );
        assert_eq!(e.message.as_deref(), Some("Not Found: call CA1"));
    }

    #[test]
    fn words_that_say_only_that_it_failed_are_no_code() {
        let e = ex(
            json!({"status": "error", "message": "Agent not found"}),
            404,
        );
        assert_eq!(e.code, None);
        // One capitalised word under `error` is what the vendor said, not its code.
        let e = ex(json!({"error": "Forbidden"}), 403);
        assert_eq!((e.code, e.message.as_deref()), (None, Some("Forbidden")));
        let e = ex(json!({"error": "authentication-error"}), 401);
        assert_eq!(
            (e.code.as_deref(), e.message),
            (Some("authentication-error"), None)
        );
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
