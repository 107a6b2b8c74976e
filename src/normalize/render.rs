//! A profile's `render` section (SPEC §5): how Switchboard writes its *own* errors (its
//! 429, an unreachable or silent vendor, `outcome_unknown`, `overloaded`, …) in the vendor's
//! dialect, for apps in `errors: vendor` mode, so the vendor's SDK raises its native
//! exception.
//!
//! Owns: the templates per canonical code and the default, their validation at load (known
//! codes and placeholders, a status in range, valid headers, a JSON or XML body that stays
//! well-formed whatever is put in it), and filling one in with escaped values. What a body
//! is comes from the template's `content-type` header, else from its first character.
//!
//! Must not: put an unescaped value into a body, or be used for the vendor's own errors
//! (those reach a `vendor`-mode app as sent).

use std::collections::{BTreeMap, HashMap};

use http::{HeaderName, HeaderValue};
use serde::Deserialize;

use crate::diag::Problems;
use crate::envelope::Code;

/// The placeholders a body may use.
const PLACEHOLDERS: [&str; 4] = ["message", "code", "retry_after_s", "request_id"];

/// How values are escaped into a body: by what the body is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Json,
    Xml,
    Text,
}

/// One template.
#[derive(Debug, Clone)]
pub struct Template {
    /// The status to answer with (default: the canonical code's own).
    pub status: Option<u16>,
    body: String,
    /// Headers to send (`content-type` among them; default by the body's kind).
    pub headers: Vec<(HeaderName, HeaderValue)>,
    escape: Escape,
}

/// The values a template is filled with.
pub struct Values<'a> {
    /// The canonical code.
    pub code: Code,
    /// Switchboard's message.
    pub message: &'a str,
    /// The wait, when known.
    pub retry_after_s: Option<u64>,
    /// The request id.
    pub request_id: &'a str,
}

impl Template {
    /// The body with every placeholder filled in, each value escaped for the body's kind.
    pub fn body(&self, v: &Values<'_>) -> String {
        let retry = v.retry_after_s.map(|s| s.to_string()).unwrap_or_default();
        let value = |name: &str| -> &str {
            match name {
                "message" => v.message,
                "code" => v.code.as_str(),
                "retry_after_s" => &retry,
                _ => v.request_id,
            }
        };
        let mut out = String::with_capacity(self.body.len() + v.message.len());
        let mut rest = self.body.as_str();
        while let Some(open) = rest.find('{') {
            out.push_str(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}').map(|close| (&after[..close], close)) {
                Some((name, close)) if PLACEHOLDERS.contains(&name) => {
                    escape_into(&mut out, value(name), self.escape);
                    rest = &after[close + 1..];
                }
                _ => {
                    out.push('{');
                    rest = after;
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// The content type the body is sent with, unless the template names one.
    pub fn default_content_type(&self) -> &'static str {
        match self.escape {
            Escape::Json => "application/json",
            Escape::Xml => "application/xml",
            Escape::Text => "text/plain; charset=utf-8",
        }
    }
}

fn escape_into(out: &mut String, s: &str, how: Escape) {
    match how {
        Escape::Json => {
            // serde_json's own escaping, without the quotes it adds.
            let quoted = serde_json::to_string(s).unwrap_or_default();
            out.push_str(quoted.get(1..quoted.len().saturating_sub(1)).unwrap_or(""));
        }
        Escape::Xml => {
            for c in s.chars() {
                match c {
                    '<' => out.push_str("&lt;"),
                    '>' => out.push_str("&gt;"),
                    '&' => out.push_str("&amp;"),
                    '"' => out.push_str("&quot;"),
                    '\'' => out.push_str("&apos;"),
                    c => out.push(c),
                }
            }
        }
        Escape::Text => out.push_str(s),
    }
}

/// Every template of a profile.
#[derive(Debug, Clone, Default)]
pub struct Render {
    by_code: HashMap<Code, Template>,
    default: Option<Template>,
}

impl Render {
    /// The template for `code`: its own, else the default; `None` when the profile has no
    /// `render` (then Switchboard answers with its envelope).
    pub fn for_code(&self, code: Code) -> Option<&Template> {
        self.by_code.get(&code).or(self.default.as_ref())
    }

    /// Whether any template exists.
    pub fn is_empty(&self) -> bool {
        self.by_code.is_empty() && self.default.is_none()
    }
}

/// `render.<code>` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTemplate {
    status: Option<u16>,
    body: String,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

/// Compiles `render:`, naming every problem with its key path.
pub(super) fn compile(raw: BTreeMap<String, RawTemplate>, p: &mut Problems) -> Render {
    let mut out = Render::default();
    for (key, t) in raw {
        let path = format!("render.{key}");
        let Some(template) = template(t, &path, p) else {
            continue;
        };
        if key == "default" {
            out.default = Some(template);
        } else if let Some(code) = Code::parse(&key) {
            out.by_code.insert(code, template);
        } else {
            p.push(path, format!("unknown canonical code {key:?} (or default)"));
        }
    }
    out
}

fn template(t: RawTemplate, path: &str, p: &mut Problems) -> Option<Template> {
    let before = p.0.len();
    if let Some(s) = t.status {
        if !(400..=599).contains(&s) {
            p.push(
                format!("{path}.status"),
                format!("invalid status {s} (an error: 400 to 599)"),
            );
        }
    }
    let trimmed = t.body.trim_start();
    // The template's own content type says what the body is; else its first character.
    let declared = t
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.to_ascii_lowercase());
    let escape = if let Some(ct) = declared {
        if ct.contains("json") {
            Escape::Json
        } else if ct.contains("xml") {
            Escape::Xml
        } else {
            Escape::Text
        }
    } else if trimmed.starts_with('{') || trimmed.starts_with('[') {
        Escape::Json
    } else if trimmed.starts_with('<') {
        Escape::Xml
    } else {
        Escape::Text
    };
    let mut headers = Vec::new();
    for (k, v) in &t.headers {
        match (
            HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            (Ok(k), Ok(v)) => headers.push((k, v)),
            _ => p.push(
                format!("{path}.headers.{k}"),
                "invalid header name or value",
            ),
        }
    }
    let tpl = Template {
        status: t.status,
        body: t.body,
        headers,
        escape,
    };
    // Every `{word}` must be a known placeholder (a typo would be sent as is).
    let mut rest = tpl.body.as_str();
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        if let Some(close) = after.find('}') {
            let name = &after[..close];
            let word =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if word && !PLACEHOLDERS.contains(&name) {
                p.push(
                    format!("{path}.body"),
                    format!("unknown placeholder {{{name}}} (known: {{message}}, {{code}}, {{retry_after_s}}, {{request_id}})"),
                );
            }
        }
        rest = after;
    }
    // Filled with awkward values, a JSON body must still parse.
    if escape == Escape::Json {
        let sample = tpl.body(&Values {
            code: Code::RateLimited,
            message: "a \"quoted\" \\ message\n<&>",
            retry_after_s: Some(7),
            request_id: "sb-01TEST",
        });
        if let Err(e) = serde_json::from_str::<serde_json::Value>(&sample) {
            p.push(
                format!("{path}.body"),
                format!("not valid JSON once filled in ({e}); placeholders go inside strings, except {{retry_after_s}}"),
            );
        }
    }
    (p.0.len() == before).then_some(tpl)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn raw(body: &str) -> BTreeMap<String, RawTemplate> {
        let mut m = BTreeMap::new();
        m.insert(
            "rate_limited".to_string(),
            RawTemplate {
                status: Some(429),
                body: body.to_string(),
                headers: BTreeMap::new(),
            },
        );
        m
    }

    #[test]
    fn values_are_escaped_for_the_body_they_go_into() {
        let mut p = Problems::default();
        let r = compile(
            raw(
                r#"{"code": 20429, "message": "{message}", "wait": {retry_after_s}, "id": "{request_id}"}"#,
            ),
            &mut p,
        );
        assert!(p.0.is_empty(), "{:?}", p.0);
        let t = r.for_code(Code::RateLimited).unwrap();
        let body = t.body(&Values {
            code: Code::RateLimited,
            message: "say \"hi\" \\ now",
            retry_after_s: Some(3),
            request_id: "sb-1",
        });
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["message"], "say \"hi\" \\ now");
        assert_eq!(
            (v["wait"].as_u64(), v["code"].as_u64()),
            (Some(3), Some(20429))
        );
        assert!(r.for_code(Code::NotFound).is_none(), "no default");
        let xml = compile(raw("<Error><Message>{message}</Message></Error>"), &mut p);
        let body = xml.for_code(Code::RateLimited).unwrap().body(&Values {
            code: Code::RateLimited,
            message: "a < b & c",
            retry_after_s: None,
            request_id: "x",
        });
        assert_eq!(body, "<Error><Message>a &lt; b &amp; c</Message></Error>");
    }

    #[test]
    fn bad_templates_are_named() {
        let mut p = Problems::default();
        compile(raw(r#"{"message": {message}}"#), &mut p);
        compile(raw(r#"{"message": "{mesage}"}"#), &mut p);
        let mut m = raw("x");
        m.insert(
            "rate_limitted".into(),
            RawTemplate {
                status: Some(200),
                body: "x".into(),
                headers: BTreeMap::new(),
            },
        );
        compile(m, &mut p);
        let all: Vec<String> =
            p.0.iter()
                .map(|x| format!("{}: {}", x.path, x.message))
                .collect();
        let text = all.join("\n");
        assert!(
            text.contains("render.rate_limited.body: not valid JSON"),
            "{text}"
        );
        assert!(text.contains("unknown placeholder {mesage}"), "{text}");
        assert!(
            text.contains("render.rate_limitted.status: invalid status 200"),
            "{text}"
        );
    }
}
