//! Keeps the request's API key out of what Switchboard writes back (SPEC §4): vendors echo
//! keys in messages and bodies ("invalid key sk_live_…"), and the envelope carries both.
//!
//! The secrets of a request are the whole value of its key header and the key inside it
//! (after the auth scheme). Every occurrence in the envelope's message, details, upstream
//! code, request id and body — strings at any depth, object keys included — becomes
//! [`REDACTED`]. Runs only when an envelope is written, never on a success.
//!
//! Approximate: a secret is matched byte for byte as sent; a vendor that echoes it
//! transformed (base64, percent-encoded, cut short) is not caught. Values shorter than
//! [`MIN_SECRET`] bytes are not treated as secrets: replacing every "k" in a message would
//! destroy it, and no real credential is that short.

use serde_json::Value;

use crate::envelope::Envelope;

/// What a secret becomes.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not redacted (see the module docs).
pub const MIN_SECRET: usize = 4;

/// The API key inside a key header's value: after `scheme` (case-insensitive, then
/// whitespace) when the value starts with it, else the whole trimmed value.
pub fn key_in<'a>(value: &'a [u8], scheme: Option<&str>) -> &'a [u8] {
    let raw = value.trim_ascii();
    if let Some(s) = scheme {
        let n = s.len();
        if raw.len() > n
            && raw[..n].eq_ignore_ascii_case(s.as_bytes())
            && raw[n].is_ascii_whitespace()
        {
            return raw[n..].trim_ascii();
        }
    }
    raw
}

/// A request's secrets, longest first (so a key inside the header value does not split it).
#[derive(Debug, Default, Clone)]
pub struct Secrets(Vec<String>);

impl Secrets {
    /// The secrets carried by `header` of a request, if it has one.
    pub fn of(value: Option<&http::HeaderValue>, scheme: Option<&str>) -> Self {
        let Some(v) = value else {
            return Secrets::default();
        };
        let mut out = Vec::with_capacity(2);
        for s in [v.as_bytes().trim_ascii(), key_in(v.as_bytes(), scheme)] {
            if s.len() >= MIN_SECRET {
                let s = String::from_utf8_lossy(s).into_owned();
                if !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out.sort_by_key(|s: &String| std::cmp::Reverse(s.len()));
        Secrets(out)
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `s` with every secret replaced.
    pub fn text(&self, s: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in &self.0 {
            let cur = out.as_deref().unwrap_or(s);
            if cur.contains(secret.as_str()) {
                out = Some(cur.replace(secret.as_str(), REDACTED));
            }
        }
        out
    }

    fn in_place(&self, s: &mut String) {
        if let Some(r) = self.text(s) {
            *s = r;
        }
    }

    fn value(&self, v: &mut Value) {
        match v {
            Value::String(s) => self.in_place(s),
            Value::Array(items) => items.iter_mut().for_each(|i| self.value(i)),
            Value::Object(map) => {
                let keyed: Vec<String> = map
                    .keys()
                    .filter(|k| self.text(k).is_some())
                    .cloned()
                    .collect();
                for k in keyed {
                    if let (Some(val), Some(nk)) = (map.remove(&k), self.text(&k)) {
                        map.insert(nk, val);
                    }
                }
                map.values_mut().for_each(|i| self.value(i));
            }
            _ => {}
        }
    }

    /// Removes every secret from what the envelope holds.
    pub fn envelope(&self, env: &mut Envelope) {
        if self.is_empty() {
            return;
        }
        let e = &mut env.error;
        self.in_place(&mut e.message);
        for d in &mut e.details {
            self.in_place(&mut d.reason);
            if let Some(f) = &mut d.field {
                self.in_place(f);
            }
        }
        if let Some(u) = &mut e.upstream {
            for s in [&mut u.code, &mut u.request_id].into_iter().flatten() {
                self.in_place(s);
            }
            self.value(&mut u.body);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Code, Detail, UpstreamInfo};

    #[test]
    fn keys_are_found_after_the_scheme() {
        assert_eq!(key_in(b"Bearer sk_1", Some("bearer")), b"sk_1");
        assert_eq!(key_in(b"  sk_1 ", Some("bearer")), b"sk_1");
        assert_eq!(key_in(b"Basic abc", Some("bearer")), b"Basic abc");
        assert_eq!(key_in(b"sk_1", None), b"sk_1");
    }

    #[test]
    fn every_place_in_the_envelope_is_redacted() {
        let v = http::HeaderValue::from_static("Bearer sk_live_SECRET");
        let s = Secrets::of(Some(&v), Some("bearer"));
        let mut env = Envelope::proxy(
            Code::AuthenticationFailed,
            "bad key sk_live_SECRET",
            "v",
            "r",
        );
        env.error.details.push(Detail {
            field: Some("sk_live_SECRET".into()),
            reason: "header was 'Bearer sk_live_SECRET'".into(),
        });
        env.error.upstream = Some(UpstreamInfo {
            status: 401,
            code: Some("sk_live_SECRET".into()),
            request_id: None,
            body: serde_json::json!({"error": {"key": "sk_live_SECRET", "sk_live_SECRET": [1, "x sk_live_SECRET"]}}),
        });
        s.envelope(&mut env);
        let text = String::from_utf8(env.to_json()).unwrap_or_default();
        assert!(!text.contains("SECRET"), "{text}");
        assert!(text.contains("header was '[redacted]'"), "{text}");
        assert!(text.contains("bad key [redacted]"), "{text}");
    }

    #[test]
    fn short_or_missing_values_are_no_secrets() {
        let v = http::HeaderValue::from_static("Bearer k");
        let s = Secrets::of(Some(&v), Some("bearer"));
        assert_eq!(s.text("kkk Bearer k"), Some("kkk [redacted]".into()));
        assert!(Secrets::of(None, None).is_empty());
        assert_eq!(
            Secrets::of(Some(&http::HeaderValue::from_static("abc")), None).text("abc"),
            None
        );
    }
}
