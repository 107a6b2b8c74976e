//! `cargo fuzz run normalize`: any status, headers and body bytes must give a valid envelope,
//! never a panic. The first bytes choose status, headers and profile; the rest is the body.
#![no_main]

use std::sync::LazyLock;
use std::time::SystemTime;

use http::{HeaderMap, HeaderValue};
use libfuzzer_sys::fuzz_target;
use switchboard::normalize::{self, Profile, VendorResponse};

static PROFILES: LazyLock<Vec<Profile>> = LazyLock::new(|| {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/profiles");
    let mut v = vec![Profile::generic()];
    for name in ["tryvox", "telephony_io", "agent_platform", "line_platform"] {
        if let Ok(p) = Profile::load(&dir, name) {
            v.push(p);
        }
    }
    v
});

const HEADER_VALUES: [&str; 6] = [
    "gzip",
    "deflate",
    "60",
    "1706140800",
    "Wed, 21 Oct 2015 07:28:00 GMT",
    "text/html",
];
const HEADER_NAMES: [&str; 5] = [
    "content-encoding",
    "retry-after",
    "x-ratelimit-reset",
    "content-type",
    "x-request-id",
];

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let status = 100 + (u16::from_le_bytes([data[0], data[1]]) % 500);
    let mut headers = HeaderMap::new();
    for i in 0..5 {
        if data[2] & (1 << i) != 0 {
            let v = HEADER_VALUES[(data[3] as usize + i) % HEADER_VALUES.len()];
            headers.insert(HEADER_NAMES[i], HeaderValue::from_static(v));
        }
    }
    let profile = &PROFILES[data[3] as usize % PROFILES.len()];
    let body = &data[4..];
    let resp = VendorResponse {
        status,
        headers: &headers,
        body,
        truncated: data[2] & 0x80 != 0,
        path: "/v1/messages",
    };
    let n = normalize::normalize(profile, "fuzz", "sb-fuzz", &resp, SystemTime::now());
    let json = n.envelope.to_json();
    assert!(
        json.first() == Some(&b'{'),
        "envelope must serialise to a JSON object"
    );
    assert!(
        (400..600).contains(&n.envelope.status()),
        "an error status, whatever the input"
    );
    let _ = normalize::success_error(profile, "fuzz", "sb-fuzz", &resp, SystemTime::now());
});
