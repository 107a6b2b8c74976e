//! Where a request's API key is, and how it becomes a bucket key without being stored.

use std::hash::BuildHasher;

use http::header::HeaderName;
use http::HeaderMap;

/// The bucket key of requests that carry no API key (metrics and docs call it `anonymous`).
pub const ANONYMOUS: u64 = 0;

/// Reads the API key from one header, optionally after an auth scheme (`Bearer`).
#[derive(Debug, Clone)]
pub struct KeySource {
    header: HeaderName,
    scheme: Option<String>,
    hasher: std::collections::hash_map::RandomState,
}

impl KeySource {
    /// A key in `header`, after `scheme` (case-insensitive) when given.
    pub fn new(header: HeaderName, scheme: Option<String>) -> Self {
        KeySource {
            header,
            scheme,
            hasher: std::collections::hash_map::RandomState::new(),
        }
    }

    /// This source, or a new one when `header` or `scheme` differ: the same keys hash the
    /// same across a reload (the hash key is per process), so their buckets carry over.
    pub fn again(&self, header: HeaderName, scheme: Option<String>) -> Self {
        if self.header == header && self.scheme == scheme {
            self.clone()
        } else {
            KeySource::new(header, scheme)
        }
    }

    /// Whether `other` reads the same header and scheme and hashes keys alike (it is this
    /// source carried over a reload).
    pub fn same_as(&self, other: &KeySource) -> bool {
        use std::hash::BuildHasher;
        self.header == other.header
            && self.scheme == other.scheme
            && self.hasher.hash_one(0u8) == other.hasher.hash_one(0u8)
    }

    /// The header that carries the key.
    pub fn header(&self) -> &HeaderName {
        &self.header
    }

    /// The API key in `headers`: the key header's value after the scheme (case-insensitive,
    /// then whitespace) when it starts with it, else the whole trimmed value; `None` when
    /// there is no key (no header, an empty value, the scheme alone). The one place that
    /// knows where a key is, for the limiter and for redaction alike.
    pub fn key<'a>(&self, headers: &'a HeaderMap) -> Option<&'a [u8]> {
        let mut raw = headers.get(&self.header)?.as_bytes().trim_ascii();
        if let Some(s) = &self.scheme {
            let n = s.len();
            if raw.eq_ignore_ascii_case(s.as_bytes()) {
                return None;
            }
            if raw.len() > n
                && raw[..n].eq_ignore_ascii_case(s.as_bytes())
                && raw[n].is_ascii_whitespace()
            {
                raw = raw[n..].trim_ascii();
            }
        }
        (!raw.is_empty()).then_some(raw)
    }

    /// The request's bucket key: a keyed 64-bit hash of the API key (SipHash with a
    /// per-process random key, so the table never holds a key nor a stable digest of one),
    /// or `ANONYMOUS` (0). A value without the configured scheme counts whole: a different
    /// credential is still a different key.
    pub fn key_of(&self, headers: &HeaderMap) -> u64 {
        match self.key(headers) {
            // 0 is anonymous and u64::MAX the shared buckets; a real key hashing to either
            // shares its neighbour's buckets (stricter only).
            Some(raw) => self.hasher.hash_one(raw).clamp(1, u64::MAX - 1),
            None => ANONYMOUS,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut m = HeaderMap::new();
        for (k, v) in pairs {
            m.append(*k, http::HeaderValue::from_static(v));
        }
        m
    }

    #[test]
    fn bearer_keys() {
        let ks = KeySource::new(http::header::AUTHORIZATION, Some("bearer".into()));
        let a = ks.key_of(&h(&[("authorization", "Bearer sk_live_a")]));
        assert_eq!(
            a,
            ks.key_of(&h(&[("authorization", "bearer   sk_live_a ")]))
        );
        assert_ne!(a, ks.key_of(&h(&[("authorization", "Bearer sk_live_b")])));
        assert_ne!(a, ANONYMOUS);
        assert_eq!(ks.key_of(&h(&[])), ANONYMOUS);
        assert_eq!(ks.key_of(&h(&[("authorization", "Bearer ")])), ANONYMOUS);
        // Another scheme is still a distinct credential.
        let basic = ks.key_of(&h(&[("authorization", "Basic dXNlcjpwYXNz")]));
        assert!(basic != ANONYMOUS && basic != a);
    }

    #[test]
    fn named_header_keys() {
        let ks = KeySource::new(HeaderName::from_static("x-api-key"), None);
        let a = ks.key_of(&h(&[("x-api-key", "k1")]));
        assert_ne!(a, ANONYMOUS);
        assert_eq!(ks.key_of(&h(&[("authorization", "Bearer k1")])), ANONYMOUS);
    }
}
