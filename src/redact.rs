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
use crate::limits::KeySource;

/// What a secret becomes.
pub const REDACTED: &str = "[redacted]";

/// Shorter values are not redacted (see the module docs).
pub const MIN_SECRET: usize = 4;

/// What `normalize` appends where it cut a stored body: a secret cut there is redacted as
/// far as it got.
const CUT_MARK: &str = "…[truncated by switchboard";

/// Object keys whose values `config_view` hides (matched case-insensitively, as parts of
/// the key): credentials, should a config ever carry one.
const SECRET_KEYS: [&str; 6] = [
    "password",
    "secret",
    "token",
    "api_key",
    "apikey",
    "authorization",
];

/// The config as `GET /config` shows it: values under a secret-sounding key (not the
/// `*_env` names of variables) and the credentials part of any URL become [`REDACTED`].
pub fn config_view(v: &Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    let secret =
                        !lower.ends_with("_env") && SECRET_KEYS.iter().any(|s| lower.contains(s));
                    let shown = match (secret, v) {
                        (true, Value::Null) => Value::Null,
                        (true, _) => Value::String(REDACTED.into()),
                        (false, v) => config_view(v),
                    };
                    (k.clone(), shown)
                })
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.iter().map(config_view).collect()),
        Value::String(s) => Value::String(url_without_credentials(s)),
        other => other.clone(),
    }
}

/// `scheme://user:pass@host…` → `scheme://[redacted]@host…`; anything else unchanged.
fn url_without_credentials(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_string();
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://{REDACTED}@{}", &rest[at + 1..]),
        None => s.to_string(),
    }
}

/// A request's secrets, longest first (so a key inside the header value does not split it).
/// Its `Debug` never prints them.
#[derive(Default, Clone)]
pub struct Secrets<'a>(smallvec::SmallVec<[&'a str; 2]>);

impl std::fmt::Debug for Secrets<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Secrets([redacted] x{})", self.0.len())
    }
}

impl<'a> Secrets<'a> {
    /// The secrets a request carries in the key header `source` reads: its whole value,
    /// and the key inside it.
    pub fn of(headers: &'a http::HeaderMap, source: &KeySource) -> Self {
        let mut out = smallvec::SmallVec::new();
        // No key (no header, or the scheme alone): nothing secret to look for.
        let Some(key) = source.key(headers) else {
            return Secrets(out);
        };
        let whole = headers
            .get(source.header())
            .map(|v| v.as_bytes().trim_ascii());
        for s in [whole, Some(key)].into_iter().flatten() {
            // Header values are visible ASCII or opaque bytes; only text can be echoed in
            // a JSON string, so a non-UTF-8 value has nothing to match.
            if let Ok(s) = std::str::from_utf8(s) {
                if s.len() >= MIN_SECRET && !out.contains(&s) {
                    out.push(s);
                }
            }
        }
        out.sort_by_key(|s: &&str| std::cmp::Reverse(s.len()));
        Secrets(out)
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `s` with every secret replaced, or `None` when it holds none. A secret cut short
    /// where the text was capped (its end, or `normalize`'s cut mark) is replaced as far as
    /// it got, down to [`MIN_SECRET`] bytes.
    pub fn text(&self, s: &str) -> Option<String> {
        let mut out: Option<String> = None;
        for secret in &self.0 {
            let cur = out.as_deref().unwrap_or(s);
            if cur.contains(secret) {
                out = Some(cur.replace(secret, REDACTED));
            }
            let cur = out.as_deref().unwrap_or(s);
            if let Some(cut) = cut_short(cur, secret) {
                out = Some(cut);
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

/// `s` with a prefix of `secret` that stands at a cut point (the end of `s`, or just
/// before the cut mark) replaced; `None` when there is none.
fn cut_short(s: &str, secret: &str) -> Option<String> {
    let cut_at = s.find(CUT_MARK).unwrap_or(s.len());
    let head = &s[..cut_at];
    let longest = (MIN_SECRET..secret.len())
        .rev()
        .filter(|&k| secret.is_char_boundary(k))
        .find(|&k| head.ends_with(&secret[..k]))?;
    let start = cut_at - longest;
    Some(format!("{}{REDACTED}{}", &s[..start], &s[cut_at..]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::{Code, Detail, UpstreamInfo};

    fn bearer() -> KeySource {
        KeySource::new(http::header::AUTHORIZATION, Some("bearer".into()))
    }

    fn auth(v: &'static str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            http::HeaderValue::from_static(v),
        );
        h
    }

    #[test]
    fn every_place_in_the_envelope_is_redacted() {
        let h = auth("Bearer sk_live_SECRET");
        let s = Secrets::of(&h, &bearer());
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
    fn a_secret_cut_by_a_cap_is_redacted_as_far_as_it_got() {
        let h = auth("Bearer sk_live_SECRET");
        let s = Secrets::of(&h, &bearer());
        assert_eq!(s.text("key: sk_live_SE"), Some("key: [redacted]".into()));
        assert_eq!(
            s.text("key: sk_live_S…[truncated by switchboard: kept 9 of 20 bytes]"),
            Some("key: [redacted]…[truncated by switchboard: kept 9 of 20 bytes]".into())
        );
        assert_eq!(s.text("no key here"), None);
    }

    #[test]
    fn short_missing_or_bare_scheme_values_are_no_secrets() {
        let h = auth("Bearer k");
        let s = Secrets::of(&h, &bearer());
        assert_eq!(s.text("kkk Bearer k"), Some("kkk [redacted]".into()));
        assert!(Secrets::of(&http::HeaderMap::new(), &bearer()).is_empty());
        // A bare scheme is no key (the limiter calls it anonymous too), so messages saying
        // "Bearer" stay readable...
        let h = auth("Bearer");
        assert!(Secrets::of(&h, &bearer()).is_empty());
        assert_eq!(Secrets::of(&auth("abc"), &bearer()).text("abc"), None);
        // ...and Debug never prints a secret.
        let h = auth("Bearer sk_live_SECRET");
        assert!(!format!("{:?}", Secrets::of(&h, &bearer())).contains("SECRET"));
    }
}

#[cfg(test)]
mod config_view_tests {
    use super::*;

    #[test]
    fn the_config_view_hides_credentials_and_keeps_the_rest() {
        let v = serde_json::json!({
            "quota_store": { "redis": ["redis://:hunter2@r:6379", "rediss://r2:6380"], "password_env": "REDIS_PW" },
            "vendors": [{ "name": "tryvox", "upstream": "https://user:pw@api.tryvox.io/v1?x=@", "api_key": "sk_live_x", "limits": [{ "rate": 5 }] }],
            "Authorization": null
        });
        let shown = config_view(&v);
        let text = shown.to_string();
        assert!(
            !text.contains("hunter2") && !text.contains("sk_live_x") && !text.contains("user:pw"),
            "{text}"
        );
        assert_eq!(
            shown["quota_store"]["redis"][0],
            "redis://[redacted]@r:6379"
        );
        assert_eq!(shown["quota_store"]["redis"][1], "rediss://r2:6380");
        assert_eq!(shown["quota_store"]["password_env"], "REDIS_PW");
        assert_eq!(
            shown["vendors"][0]["upstream"],
            "https://[redacted]@api.tryvox.io/v1?x=@"
        );
        assert_eq!(shown["vendors"][0]["api_key"], REDACTED);
        assert_eq!(shown["vendors"][0]["limits"][0]["rate"], 5);
        assert_eq!(shown["Authorization"], Value::Null);
    }
}
