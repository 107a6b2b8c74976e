//! Cost-weighted limits (issue 16, SPEC §3 "Cost") end to end: an SMS endpoint whose
//! requests take SMS segments × recipients tokens of its bucket, read from JSON and form
//! bodies, through the real binary in front of the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use support::*;

const OK: &str = "rules:\n  - match: { path_prefix: /v1/sms }\n    steps: [ { status: 200, json: { id: sms_1 } } ]\n";

/// 10 tokens, all at once, none back for a minute: what each request takes is what is left.
const SMS: &str = "    endpoints:\n      - name: sms\n        match: { path_prefix: /v1/sms }\n        cost: { segments: /Body, recipients: /To }\n        limits: [ { rate: 10, per: 1m, burst: 10 } ]\n";

fn sms(content_type: &str, body: &str) -> Vec<u8> {
    request(
        "POST",
        "/v1/sms",
        &[
            ("authorization", "Bearer sk_live_alpha"),
            ("content-type", content_type),
        ],
        Some(body.as_bytes()),
    )
}

/// A JSON SMS; `to` is an array of numbers or a comma-separated string.
fn json_sms(text: &str, to: impl serde::Serialize) -> Vec<u8> {
    let body = serde_json::json!({ "Body": text, "To": to }).to_string();
    sms("application/json", &body)
}

async fn status(addr: SocketAddr, raw: &[u8]) -> (u16, serde_json::Value) {
    let r = send(addr, raw).await;
    let v = if r.status == 200 {
        serde_json::Value::Null
    } else {
        r.json()
    };
    (r.status, v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn segment_costs_fill_a_bucket_exactly() {
    let (s, _sb, addr) = proxied("tryvox", OK, SMS, &[]).await;
    // 161 GSM-7 characters are 2 segments; to 2 recipients: 4 tokens.
    let two_parts = "a".repeat(161);
    assert_eq!(
        status(addr, &json_sms(&two_parts, ["+15550100", "+15550101"]))
            .await
            .0,
        200
    );
    // A form body, as Twilio's API takes: 69 letters and an emoji (2 UTF-16 units) are UCS-2,
    // 71 units, 2 parts of 67; one recipient: 2 tokens. 6 used.
    let ucs2 = format!("{}😀", "b".repeat(69));
    let form = format!("Body={}&To=%2B15550100", urlencode(&ucs2));
    assert_eq!(
        status(addr, &sms("application/x-www-form-urlencoded", &form))
            .await
            .0,
        200
    );
    // 4 left: a request of 5 (one part to five recipients, a comma list) does not fit …
    let (code, v) = status(addr, &json_sms("hi", "+1,+2,+3,+4,+5")).await;
    assert_eq!(code, 429, "{v}");
    assert_eq!(v["error"]["code"], "rate_limited");
    // … and took nothing: one of exactly 4 does, and leaves the bucket empty.
    assert_eq!(status(addr, &json_sms("hi", "+1,+2,+3,+4")).await.0, 200);
    assert_eq!(
        status(addr, &json_sms("hi", ["+1"])).await.0,
        429,
        "10 of 10 used"
    );
    assert_eq!(s.hits(), 3);
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_above_the_burst_is_refused_at_once() {
    let (s, _sb, addr) = proxied("tryvox", OK, SMS, &[]).await;
    // 11 recipients of one part: more than the 10 the bucket can ever hold.
    let to: Vec<String> = (0..11).map(|i| format!("+1555010{i:02}")).collect();
    let to: Vec<&str> = to.iter().map(String::as_str).collect();
    let (code, v) = status(addr, &json_sms("hello", &to)).await;
    assert_eq!(code, 413, "{v}");
    assert_eq!(v["error"]["code"], "payload_too_large");
    assert_eq!(v["error"]["retryable"], false);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("costs 11 tokens") && msg.contains("10"),
        "{msg}"
    );
    assert_eq!(s.hits(), 0);
    // The bucket is untouched: ten single-part messages still go.
    for _ in 0..10 {
        assert_eq!(status(addr, &json_sms("hi", ["+1"])).await.0, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_body_costs_one_and_is_counted() {
    let (s, sb, addr) = proxied("tryvox", OK, SMS, &[]).await;
    let r = send(addr, &sms("application/json", "{not json")).await;
    assert_eq!(r.status, 200, "sent on, charged one token: {}", r.text());
    // A Body of the wrong type is unreadable too.
    let r = send(
        addr,
        &sms("application/json", r#"{"Body": 42, "To": ["+1"]}"#),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    let m = metrics_settled(sb.admin, 2).await;
    assert_eq!(
        metric(
            &m,
            "switchboard_cost_unreadable_total{endpoint=\"sms\",vendor=\"tryvox\"}"
        ),
        Some(2.0),
        "{m}"
    );
    assert_eq!(s.hits(), 2);
    // 8 left, not fewer: a request of 8 fits exactly.
    let to: Vec<&str> = std::iter::repeat_n("+1", 8).collect();
    assert_eq!(status(addr, &json_sms("hi", &to)).await.0, 200);
    assert_eq!(status(addr, &json_sms("hi", ["+1"])).await.0, 429);
}

#[test]
fn a_bad_cost_pointer_is_refused_at_startup() {
    let extra = "    endpoints:\n      - name: sms\n        match: { path_prefix: /v1/sms }\n        cost: { segments: Body }\n";
    let out = check_config_with(extra);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("endpoints[0].cost.segments"), "{err}");
}
