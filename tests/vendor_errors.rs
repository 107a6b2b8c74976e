//! End-to-end tests of error normalisation in the proxy: every seed example sent by the
//! simulator through the real binary must come out as its golden envelope; plus the paths
//! the golden tests cannot see (gzip on the wire, bodies past the buffer cap, passthrough,
//! errors inside 2xx bodies, vendors without a profile, a profile's remaining-quota header).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use serde_json::Value;
use support::*;
use switchboard::simulator::{Dialect, Simulator};

const SEED_VENDORS: [&str; 4] = ["tryvox", "telephony_io", "agent_platform", "line_platform"];

/// The profile's example names.
fn example_names(vendor: &str) -> Vec<String> {
    Dialect::load(&root().join("config/profiles"), vendor)
        .expect("profile")
        .examples
        .into_keys()
        .collect()
}

/// A simulator answering `/ex/<NAME>/` with the profile's example NAME.
async fn example_sim(vendor: &str, names: &[String]) -> Simulator {
    let mut yaml = String::from("rules:\n");
    for n in names {
        yaml.push_str(&format!(
            "  - match: {{ path_prefix: /ex/{n}/ }}\n    steps: [ {{ vendor_error: {n} }} ]\n"
        ));
    }
    sim(vendor, &yaml).await
}

fn without(mut v: Value, pointer: &str) -> Value {
    let (parent, key) = pointer.rsplit_once('/').unwrap();
    if let Some(Value::Object(m)) = v.pointer_mut(parent) {
        m.remove(key);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_seed_example_through_the_proxy_matches_its_golden_envelope() {
    let mut sims = Vec::new();
    let mut vendors_yaml = String::new();
    let mut plan = Vec::new();
    for vendor in SEED_VENDORS {
        let names = example_names(vendor);
        let s = example_sim(vendor, &names).await;
        let port = free_port();
        vendors_yaml.push_str(&vendor_yaml(
            vendor,
            port,
            &format!("http://{}", s.addr()),
            // One attempt: these tests are about the envelope, not retries.
            &format!("    profile: {vendor}\n    retry: {{ max_attempts: 1 }}\n"),
        ));
        sims.push(s);
        plan.push((vendor, local(port), names));
    }
    let _sb = Sb::start(&vendors_yaml);

    let mut checked = 0;
    for (vendor, addr, names) in plan {
        for name in names {
            let golden_path = root().join(format!(
                "tests/fixtures/normalize/{vendor}/{}.expected.json",
                name.to_lowercase()
            ));
            let golden: Value =
                serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
            let raw = request(
                "POST",
                &format!("/ex/{name}/"),
                &[
                    ("X-Request-Id", "sb-golden"),
                    ("Content-Type", "application/json"),
                ],
                Some(b"{}"),
            );
            let r = send(addr, &raw).await;
            let ctx = format!("{vendor}/{name}: {}", r.text());
            assert_eq!(u64::from(r.status), golden["status"], "{ctx}");
            assert_eq!(r.header("content-type"), Some("application/json"), "{ctx}");
            for (k, v) in golden["headers"].as_object().unwrap() {
                if k == "retry-after" {
                    continue;
                }
                assert_eq!(r.header(k), v.as_str(), "{ctx}: header {k}");
            }
            let body = r.json();
            // Retry hints computed from an epoch reset depend on the clock; the rest must be
            // byte-for-byte what the golden file says.
            let want_hint = &golden["body"]["error"]["retry_after_s"];
            let got_hint = &body["error"]["retry_after_s"];
            assert_eq!(want_hint.is_null(), got_hint.is_null(), "{ctx}: retry hint");
            if let Some(secs) = got_hint.as_u64() {
                assert_eq!(r.header("retry-after"), Some(secs.to_string().as_str()));
            } else {
                assert_eq!(r.header("retry-after"), None, "{ctx}");
            }
            assert_eq!(
                without(body, "/error/retry_after_s"),
                without(golden["body"].clone(), "/error/retry_after_s"),
                "{ctx}"
            );
            checked += 1;
        }
    }
    assert!(checked >= 25, "only {checked} examples checked");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn epoch_reset_becomes_a_retry_after_in_seconds() {
    let (_s, _sb, addr) = one(
        "agent_platform",
        "default: { vendor_error: rate_limited }\n",
        "",
    )
    .await;
    let r = get(addr, "/v1/agents").await;
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limited");
    // The simulator set X-RateLimit-Reset to now+30 (epoch seconds).
    let secs = v["error"]["retry_after_s"].as_u64().unwrap();
    assert!((28..=31).contains(&secs), "retry_after_s {secs}");
    assert_eq!(r.header("retry-after"), Some(secs.to_string().as_str()));
}

/// One vendor with a profile in front of a simulator running `scenario`.
async fn one(vendor: &str, scenario: &str, extra: &str) -> (Simulator, Sb, SocketAddr) {
    let extra = format!(
        "    timeouts: {{ connect: 1s, response: 2s }}\n    retry: {{ max_attempts: 1 }}\n{extra}"
    );
    proxied(vendor, scenario, &extra, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_error_bodies_are_decoded() {
    let (_s, _sb, addr) = one(
        "tryvox",
        "default: { vendor_error: MAX_ATTEMPTS_EXCEEDED, gzip: true }\n",
        "",
    )
    .await;
    let r = get(addr, "/v1/verify/check").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.header("content-encoding"), None);
    let v = r.json();
    assert_eq!(v["error"]["code"], "too_many_attempts");
    assert_eq!(v["error"]["retryable"], false);
    assert_eq!(v["error"]["upstream"]["code"], "MAX_ATTEMPTS_EXCEEDED");
    assert_eq!(
        v["error"]["upstream"]["body"]["error"]["message"],
        "Too many check attempts"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_bodies_past_the_cap_are_cut_and_say_so() {
    let (s, _sb, addr) = one(
        "tryvox",
        "rules:\n  - match: { path_prefix: /big }\n    steps: [ { status: 500, body_size: 300000 } ]\ndefault: { status: 200, json: { ok: true } }\n",
        "",
    )
    .await;
    let mut conn = Conn::open(addr).await;
    let r = conn.send(&request("GET", "/big", &[], None)).await.unwrap();
    assert_eq!(r.status, 500, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "internal_error");
    assert_eq!(v["error"]["upstream"]["status"], 500);
    let kept = v["error"]["upstream"]["body"].as_str().unwrap();
    assert!(kept.contains("truncated by switchboard"), "{kept:.200}");
    assert!(
        r.body.len() < 64 * 1024,
        "envelope is {} bytes",
        r.body.len()
    );
    // The app's connection survives; the half-read vendor connection is not reused.
    let r = conn.send(&request("GET", "/ok", &[], None)).await.unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ok"], true);
    assert_eq!(s.requests().len(), 2);
}

/// `errors: vendor` (for apps on the vendor's SDK): the vendor's error reaches the app byte
/// for byte, the canonical code rides along in `X-Switchboard-Error`, and it is counted by
/// that code. `passthrough_errors: true` is the old name of the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_format_errors_arrive_as_sent_and_are_still_classified() {
    for extra in ["    errors: vendor\n", "    passthrough_errors: true\n"] {
        let (s, sb, addr) = one(
            "tryvox",
            "default: { status: 502, headers: { content-type: application/json, x-vendor-trace: t-1 }, body: '{ \"error\" : {\"code\":\"DELIVERY_FAILED\",  \"message\":\"Carrier rejected\"}}' }\n",
            extra,
        )
        .await;
        let r = get(addr, "/v1/calls").await;
        assert_eq!(r.status, 502, "{extra}");
        assert_eq!(r.header("x-switchboard-error"), Some("delivery_failed"));
        assert_eq!(
            r.header("x-vendor-trace"),
            Some("t-1"),
            "the vendor's headers"
        );
        assert_eq!(
            r.text(),
            r#"{ "error" : {"code":"DELIVERY_FAILED",  "message":"Carrier rejected"}}"#,
            "the vendor's body, byte for byte"
        );
        assert_eq!(s.hits(), 1, "delivery_failed is never retried");
        assert!(r.header("x-request-id").is_some());
        let m = metrics_settled(sb.admin, 1).await;
        assert_eq!(
            metric(&m, "switchboard_errors_total{code=\"delivery_failed\",endpoint=\"other\",source=\"upstream\",vendor=\"tryvox\"}"),
            Some(1.0),
            "{m}"
        );
    }
}

/// One request may ask for the other format with `X-Switchboard-Errors` (not forwarded):
/// an app moving to envelopes call by call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_chooses_its_error_format() {
    let (s, _sb, addr) = one("tryvox", "default: { vendor_error: NOT_FOUND }\n", "").await;
    let r = get(addr, "/v1/calls/x").await;
    assert_eq!(
        r.json()["error"]["code"],
        "not_found",
        "envelope by default"
    );
    let asked =
        |f: &'static str| request("GET", "/v1/calls/x", &[("x-switchboard-errors", f)], None);
    let r = send(addr, &asked("vendor")).await;
    assert_eq!(r.status, 404);
    assert_eq!(
        r.json()["error"]["code"],
        "NOT_FOUND",
        "the vendor's own body"
    );
    assert_eq!(r.header("x-switchboard-error"), Some("not_found"));
    let r = send(addr, &asked("envelope")).await;
    assert_eq!(r.json()["error"]["code"], "not_found");
    assert!(
        s.requests()
            .iter()
            .all(|q| q.header("x-switchboard-errors").is_none()),
        "the header reached the vendor"
    );
    let (_s, _sb, addr) = one(
        "tryvox",
        "default: { vendor_error: NOT_FOUND }\n",
        "    errors: vendor\n",
    )
    .await;
    let r = send(addr, &asked("envelope")).await;
    assert_eq!(
        r.json()["error"]["code"],
        "not_found",
        "a vendor-format vendor, one envelope"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_without_a_profile_uses_the_generic_detector() {
    let s = sim(
        "tryvox",
        "rules:\n  - match: { path_prefix: /card }\n    steps: [ { status: 402, json: { error: { type: card_error, code: balance_insufficient, message: Your balance is too low } } } ]\n  - match: { path_prefix: /gw }\n    steps: [ { status: 502, headers: { content-type: text/html }, body: '<html><head><title>502 Bad Gateway</title></head><body><center><h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>' } ]\n",
    )
    .await;
    let port = free_port();
    let _sb = Sb::start(&vendor_yaml(
        "acme",
        port,
        &format!("http://{}", s.addr()),
        "",
    ));
    let r = get(local(port), "/card").await;
    assert_eq!(r.status, 402, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "insufficient_credits");
    assert_eq!(v["error"]["vendor"], "acme");
    assert_eq!(v["error"]["upstream"]["code"], "balance_insufficient");

    // A gateway's HTML page says nothing usable: the status decides.
    let r = get(local(port), "/gw").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert_eq!(r.json()["error"]["upstream"]["status"], 502);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_reported_inside_2xx_bodies_become_envelopes() {
    let profiles = root().join("tests/fixtures/profiles");
    let s = sim_in(
        &profiles,
        "sms_gateway",
        r#"rules:
  - match: { path_prefix: /v1/messages/fail }
    steps: [ { status: 200, json: { messages: [ { status: rejected, error_code: "29", error_text: "Recipient has opted out" } ] } } ]
  - match: { path_prefix: /v1/messages }
    steps: [ { status: 200, body: '{"messages":[{"status":"queued","id":"m1"}]}' } ]
  - match: { path_prefix: /v1/other }
    steps: [ { status: 200, json: { messages: [ { status: failed } ] } } ]
"#,
    )
    .await;
    let port = free_port();
    let _sb = Sb::start_in(
        &vendor_yaml(
            "sms_gateway",
            port,
            &format!("http://{}", s.addr()),
            "    profile: sms_gateway\n",
        ),
        &profiles,
    );
    let r = send(
        local(port),
        &request("POST", "/v1/messages/fail", &[], Some(b"{}")),
    )
    .await;
    let v = r.json();
    assert_eq!(v["error"]["code"], "delivery_failed", "{v}");
    assert_eq!(r.status, 502);
    assert_eq!(v["error"]["upstream"]["status"], 200);
    assert_eq!(v["error"]["upstream"]["code"], "29");

    // A 2xx the rule inspects and finds fine goes through byte for byte.
    let r = send(
        local(port),
        &request("POST", "/v1/messages", &[], Some(b"{}")),
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), r#"{"messages":[{"status":"queued","id":"m1"}]}"#);

    // Outside the rule's paths a 2xx is never inspected.
    let r = get(local(port), "/v1/other").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["messages"][0]["status"], "failed");
}

/// A profile's `remaining_header` drives the adaptive pause: a 200 saying `x-acme-remaining: 0`
/// pauses that key until the reset, and the common `X-RateLimit-Remaining` is not read for a
/// profile that names its own header.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profiles_remaining_header_pauses_the_key() {
    let profiles = tempfile::tempdir().unwrap();
    std::fs::write(
        profiles.path().join("acme.yaml"),
        "name: acme\nfields: { code: [/error/code], message: [/error/message] }\nrate_limit:\n  reset: { header: x-acme-reset, kind: delta }\n  remaining_header: x-acme-remaining\n",
    )
    .unwrap();
    let s = sim_in(
        profiles.path(),
        "acme",
        r#"rules:
  - match: { path_prefix: /v1/generic }
    steps: [ { status: 200, json: { ok: true }, headers: { x-ratelimit-remaining: "0", x-ratelimit-reset: "30" } } ]
default: { status: 200, json: { ok: true }, headers: { x-acme-remaining: "0", x-acme-reset: "30" } }
"#,
    )
    .await;
    let port = free_port();
    let _sb = Sb::start_in(
        &vendor_yaml(
            "acme",
            port,
            &format!("http://{}", s.addr()),
            "    profile: acme\n    limits: [ { rate: 300, per: 1m } ]\n",
        ),
        profiles.path(),
    );
    let get_as = |key: &str, path: &str| {
        let auth = format!("Bearer {key}");
        request("GET", path, &[("authorization", auth.as_str())], None)
    };

    let r = send(local(port), &get_as("sk_a", "/v1/calls")).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.hits(), 1);
    let paused = send(local(port), &get_as("sk_a", "/v1/calls")).await;
    assert_eq!(paused.status, 429, "{}", paused.text());
    let v = paused.json();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(v["error"]["source"], "proxy");
    let ra: u64 = paused.header("retry-after").unwrap().parse().unwrap();
    assert!((28..=30).contains(&ra), "retry-after {ra}");
    assert_eq!(s.hits(), 1, "the paused key must not reach the vendor");

    // The common header, on a vendor whose profile names its own, pauses nothing.
    for n in 2..=3 {
        let r = send(local(port), &get_as("sk_b", "/v1/generic")).await;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(s.hits(), n);
    }
}

/// SPEC §5 through the proxy: a 429 whose code says the account is out of credit is
/// `insufficient_credits` even though the profile has a status-only 429 rule — answered at
/// once (no retry) and pausing nothing (the key's next request reaches the vendor).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_out_of_credit_is_not_retried_and_pauses_nothing() {
    let scenario = "default: { status: 429, json: { success: false, error: { code: quota_exceeded, message: Insufficient credits } } }\n";
    let extra = "    limits: [ { rate: 300, per: 1m } ]\n    retry: { max_attempts: 3 }\n";
    let (s, _sb, addr) = proxied("agent_platform", scenario, extra, &[]).await;
    let get_agents = request(
        "GET",
        "/v1/agents",
        &[("authorization", "Bearer sk_live_credit")],
        None,
    );
    for n in 1..=2 {
        let r = send(addr, &get_agents).await;
        assert_eq!(r.status, 402, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "insufficient_credits");
        assert_eq!(v["error"]["retryable"], false);
        assert_eq!(v["error"]["attempts"], 1);
        assert_eq!(v["error"]["upstream"]["status"], 429);
        assert_eq!(s.hits(), n, "one attempt each, and no pause");
    }
}

/// A vendor error longer than what is read to classify it (64 KiB) still reaches a
/// vendor-format app whole, in both framings; a vendor 429 still pauses the key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_format_keeps_long_bodies_whole_and_429s_still_pause() {
    for chunked in [false, true] {
        let scenario =
            format!("default: {{ status: 400, body_size: 200000, chunked: {chunked} }}\n");
        let (_s, _sb, addr) = one("tryvox", &scenario, "    errors: vendor\n").await;
        let r = get(addr, "/v1/calls").await;
        assert_eq!(r.status, 400);
        assert_eq!(
            r.body,
            switchboard::simulator::pattern_body(200_000),
            "chunked {chunked}"
        );
        assert!(r.header("x-switchboard-error").is_some());
    }
    let scenario = "default: { vendor_error: RATE_LIMITED }\n";
    let extra = "    errors: vendor\n    limits: [ { rate: 100, per: 1m } ]\n";
    let (s, _sb, addr) = one("tryvox", scenario, extra).await;
    let r = get(addr, "/v1/calls").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("x-switchboard-error"), Some("rate_limited"));
    assert_eq!(r.header("retry-after"), Some("60"), "the vendor's own hint");
    // Paused by the vendor's word: Switchboard answers the next one itself.
    let r = get(addr, "/v1/calls").await;
    assert_eq!(r.status, 429);
    assert_eq!(s.hits(), 1);
}

/// In `errors: vendor` mode Switchboard's *own* errors speak the vendor's dialect too (the
/// profile's `render` templates), so the vendor's SDK raises its native exception: the
/// local 429 as TryVox's RATE_LIMITED with `Retry-After`, an unreachable vendor as a TryVox
/// error with Switchboard's code. Envelope-mode requests still get envelopes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_errors_are_rendered_in_the_vendor_dialect() {
    let (_s, _sb, addr) = one(
        "tryvox",
        "default: { status: 201, json: { id: c } }\n",
        "    errors: vendor\n    limits: [ { rate: 1, per: 1m, burst: 1 } ]\n",
    )
    .await;
    assert_eq!(get(addr, "/v1/calls").await.status, 201);
    let r = get(addr, "/v1/calls").await;
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "RATE_LIMITED", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("rate limit"),
        "{v}"
    );
    assert_eq!(
        v.as_object().unwrap().len(),
        1,
        "TryVox's shape, not the envelope: {v}"
    );
    assert_eq!(r.header("x-switchboard-error"), Some("rate_limited"));
    assert!(r
        .header("retry-after")
        .is_some_and(|s| s.parse::<u64>().is_ok()));
    assert_eq!(r.header("content-type"), Some("application/json"));
    // The same request asking for the envelope gets the envelope.
    let r = send(
        addr,
        &request(
            "GET",
            "/v1/calls",
            &[("x-switchboard-errors", "envelope")],
            None,
        ),
    )
    .await;
    assert_eq!(r.json()["error"]["code"], "rate_limited");
    assert_eq!(r.json()["error"]["source"], "proxy");

    // Nothing listens there.
    let port = free_port();
    let dead = format!("http://127.0.0.1:{}", free_port());
    let _sb = Sb::start(&vendor_yaml(
        "tryvox",
        port,
        &dead,
        "    profile: tryvox\n    errors: vendor\n    retry: { max_attempts: 1 }\n",
    ));
    let r = get(local(port), "/v1/calls").await;
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(
        r.json()["error"]["code"],
        "upstream_unavailable",
        "{}",
        r.text()
    );
    assert_eq!(
        r.header("x-switchboard-error"),
        Some("upstream_unavailable")
    );
}
