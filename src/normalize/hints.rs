//! Retry hints from response headers: `Retry-After` (seconds or HTTP-date) and
//! `X-RateLimit-Reset`-style headers (epoch seconds, or a delta, per profile); and whether a
//! remaining-quota header says the key has nothing left (the profile's, else the common ones).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;

use super::profile::{Profile, ResetKind};

/// Reset headers the generic detector reads (as `auto`).
const RESET_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-ratelimit-reset"),
    http::HeaderName::from_static("ratelimit-reset"),
    http::HeaderName::from_static("x-rate-limit-reset"),
];

/// Whole seconds from `now` until `at`, rounded up, never negative.
fn until(at: SystemTime, now: SystemTime) -> u64 {
    match at.duration_since(now) {
        Ok(d) => d.as_secs() + u64::from(d.subsec_nanos() > 0),
        Err(_) => 0,
    }
}

/// `Retry-After: 120` or `Retry-After: Wed, 21 Oct 2015 07:28:00 GMT`.
pub fn retry_after(headers: &HeaderMap, now: SystemTime) -> Option<u64> {
    let v = headers
        .get(http::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(secs);
    }
    if let Ok(f) = v.parse::<f64>() {
        return (f.is_finite() && f >= 0.0).then(|| f.ceil() as u64);
    }
    httpdate::parse_http_date(v).ok().map(|at| until(at, now))
}

fn reset_value(v: &str, kind: ResetKind, now: SystemTime) -> Option<u64> {
    let n: f64 = v.trim().parse().ok()?;
    if !n.is_finite() || n < 0.0 {
        return None;
    }
    let epoch = match kind {
        ResetKind::Epoch => true,
        ResetKind::Delta => false,
        ResetKind::Auto => n >= 1e9,
    };
    if !epoch {
        return Some(n.ceil() as u64);
    }
    // Epoch milliseconds are seen in the wild too.
    let secs = if n >= 1e12 { n / 1000.0 } else { n };
    let at = UNIX_EPOCH.checked_add(Duration::try_from_secs_f64(secs).ok()?)?;
    Some(until(at, now))
}

/// The vendor's hint in seconds: `Retry-After` first, then the profile's reset header, then
/// the common reset headers.
pub fn hint(headers: &HeaderMap, profile: &Profile, now: SystemTime) -> Option<u64> {
    if let Some(s) = retry_after(headers, now) {
        return Some(s);
    }
    if let Some(r) = &profile.reset {
        if let Some(v) = headers.get(&r.header).and_then(|v| v.to_str().ok()) {
            return reset_value(v, r.kind, now);
        }
    }
    crate::http::headers::first_values(headers, &RESET_HEADERS)
        .into_iter()
        .find_map(|v| reset_value(v?.to_str().ok()?, ResetKind::Auto, now))
}

/// Remaining-quota headers (`X-RateLimit-Remaining` and kin), looked up on every response
/// (built names: a `&str` name is parsed again on each lookup).
const REMAINING_HEADERS: [http::HeaderName; 3] = [
    http::HeaderName::from_static("x-ratelimit-remaining"),
    http::HeaderName::from_static("ratelimit-remaining"),
    http::HeaderName::from_static("x-rate-limit-remaining"),
];

/// The vendor says this key has no requests left in its window (`remaining: 0`).
///
/// A profile that names `rate_limit.remaining_header` is read from that header only: the
/// vendor's count lives there, and a common-looking header on the same response may count
/// something else (another window, a downstream service) — a false "0" would pause a key
/// that still has quota. Profiles that name none (and the generic profile) read the common
/// names.
pub fn exhausted(headers: &HeaderMap, profile: &Profile) -> bool {
    let zero = |v: Option<&http::HeaderValue>| {
        v.and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n <= 0.0)
    };
    match &profile.remaining_header {
        Some(h) => zero(headers.get(h)),
        None => crate::http::headers::first_values(headers, &REMAINING_HEADERS)
            .into_iter()
            .any(zero),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &'static str, v: &str) -> HeaderMap {
        let mut m = HeaderMap::new();
        m.insert(
            k,
            v.parse()
                .unwrap_or_else(|_| http::HeaderValue::from_static("")),
        );
        m
    }

    #[test]
    fn retry_after_forms() {
        let now = UNIX_EPOCH + Duration::from_secs(1_706_140_740);
        assert_eq!(retry_after(&h("retry-after", "60"), now), Some(60));
        let date = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(retry_after(&h("retry-after", &date), now), Some(90));
        assert_eq!(retry_after(&h("retry-after", "soon"), now), None);
        assert_eq!(
            retry_after(&h("retry-after", "Wed, 21 Oct 2015 07:28:00 GMT"), now),
            Some(0)
        );
    }

    #[test]
    fn exhaustion() {
        let p = Profile::generic();
        assert!(exhausted(&h("x-ratelimit-remaining", "0"), &p));
        assert!(exhausted(&h("ratelimit-remaining", " 0 "), &p));
        assert!(exhausted(&h("x-rate-limit-remaining", "0"), &p));
        assert!(!exhausted(&h("x-ratelimit-remaining", "12"), &p));
        assert!(!exhausted(&h("x-ratelimit-remaining", "none"), &p));
        assert!(!exhausted(&HeaderMap::new(), &p));
    }

    fn acme() -> Profile {
        let doc = serde_json::json!({
            "name": "acme",
            "rate_limit": { "remaining_header": "X-Acme-Remaining" },
        });
        match Profile::compile(&doc) {
            Ok(p) => p,
            Err(e) => panic!("test profile: {e:?}"),
        }
    }

    #[test]
    fn a_profile_names_its_remaining_header() {
        let p = acme();
        assert!(exhausted(&h("x-acme-remaining", "0"), &p));
        assert!(!exhausted(&h("x-acme-remaining", "3"), &p));
        // The profile names the vendor's header: the common names are not read for it.
        assert!(!exhausted(&h("x-ratelimit-remaining", "0"), &p));
        let mut both = h("x-acme-remaining", "5");
        both.insert("x-ratelimit-remaining", http::HeaderValue::from_static("0"));
        assert!(!exhausted(&both, &p));
        // And the generic profile does not read a vendor's own header.
        assert!(!exhausted(&h("x-acme-remaining", "0"), &Profile::generic()));
    }

    #[test]
    fn reset_epoch_and_delta() {
        let now = UNIX_EPOCH + Duration::from_secs(1_706_140_740);
        let p = Profile::generic();
        assert_eq!(
            hint(&h("x-ratelimit-reset", "1706140800"), &p, now),
            Some(60)
        );
        assert_eq!(
            hint(&h("x-ratelimit-reset", "1706140800000"), &p, now),
            Some(60)
        );
        assert_eq!(hint(&h("ratelimit-reset", "7"), &p, now), Some(7));
        assert_eq!(hint(&h("x-ratelimit-reset", "-5"), &p, now), None);
        // Found by the property test: absurd values must not overflow.
        assert_eq!(
            hint(&h("x-ratelimit-reset", "99999999999999999999999"), &p, now),
            None
        );
    }
}
