//! Property tests: for any status, headers and bytes, the normaliser returns a valid envelope
//! (serialisable, canonical status in range, stored body within its cap) and never panics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::SystemTime;

use http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;
use switchboard::normalize::{self, Profile, VendorResponse, MAX_KEPT_BODY};

static PROFILES: std::sync::LazyLock<Vec<Profile>> = std::sync::LazyLock::new(load_profiles);

fn load_profiles() -> Vec<Profile> {
    let dir = support::root().join("config/profiles");
    let mut v = vec![Profile::generic()];
    for name in ["tryvox", "telephony_io", "agent_platform", "line_platform"] {
        v.push(Profile::load(&dir, name).unwrap());
    }
    v
}

/// Bodies that look like vendor errors, then get mangled: JSON-ish fragments, XML, HTML, raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let fragments = prop::collection::vec(
        prop_oneof![
            Just(b"{\"error\":".to_vec()),
            Just(b"{\"code\":".to_vec()),
            Just(b"\"message\":".to_vec()),
            Just(b"[".to_vec()),
            Just(b"]".to_vec()),
            Just(b"}".to_vec()),
            Just(b",".to_vec()),
            Just(b"\"RATE_LIMITED\"".to_vec()),
            Just(b"<Code>".to_vec()),
            Just(b"</Code>".to_vec()),
            Just(b"<html><title>".to_vec()),
            Just(b"\xff\xfe\xc3".to_vec()),
            Just(b"1e999".to_vec()),
            "[ -~]{0,40}".prop_map(|s| s.into_bytes()),
            prop::collection::vec(any::<u8>(), 0..40),
        ],
        0..40,
    );
    fragments.prop_map(|parts| parts.concat())
}

fn headers() -> impl Strategy<Value = HeaderMap> {
    let names = prop_oneof![
        Just("retry-after"),
        Just("x-ratelimit-reset"),
        Just("ratelimit-reset"),
        Just("content-encoding"),
        Just("content-type"),
        Just("x-request-id"),
    ];
    let values = prop_oneof![
        Just("gzip".to_string()),
        Just("deflate".to_string()),
        Just("application/json".to_string()),
        Just("text/html".to_string()),
        Just("Wed, 21 Oct 2015 07:28:00 GMT".to_string()),
        Just("99999999999999999999999".to_string()),
        Just("-1".to_string()),
        Just("NaN".to_string()),
        "[ -~]{0,20}",
        any::<u32>().prop_map(|n| n.to_string()),
    ];
    prop::collection::vec((names, values), 0..6).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            if let Ok(v) = HeaderValue::from_str(&v) {
                h.append(HeaderName::from_static(k), v);
            }
        }
        h
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn any_response_gives_a_valid_envelope(status in 100u16..600, h in headers(), b in body(), p in 0usize..5, truncated in any::<bool>()) {
        let profiles = &*PROFILES;
        let resp = VendorResponse { status, headers: &h, body: &b, truncated, path: "/v1/messages" };
        let n = normalize::normalize(&profiles[p], "v", "sb-prop", &resp, SystemTime::now());
        let json = serde_json::to_vec(&n.envelope).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        prop_assert!(v["error"]["code"].is_string());
        let st = n.envelope.status();
        prop_assert!((400..600).contains(&st), "status {}", st);
        prop_assert!(n.envelope.error.message.len() <= 1024);
        let kept = serde_json::to_vec(&v["error"]["upstream"]["body"]).unwrap();
        prop_assert!(kept.len() <= MAX_KEPT_BODY * 6 + 256, "kept body {} bytes", kept.len());
        let _ = normalize::success_error(&profiles[p], "v", "sb-prop", &resp, SystemTime::now());
    }
}
