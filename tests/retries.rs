//! Safe retries end to end: the real binary in front of the simulator, counting exactly what
//! the vendor received. (Connection refused and reset-after-send are in `foundation.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use switchboard::simulator::Simulator;

async fn pair(vendor: &str, scenario: &str, extra: &str) -> (Simulator, Sb, SocketAddr) {
    proxied(vendor, scenario, extra, &[]).await
}

/// Fast backoff so tests do not sleep for the production defaults.
const FAST: &str = "    retry: { backoff: { base: 5ms, max: 20ms } }\n";

fn post(path: &str, headers: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
    let mut h = vec![("content-type", "application/json")];
    h.extend_from_slice(headers);
    request("POST", path, &h, Some(body))
}

fn metric(text: &str, line_start: &str) -> f64 {
    support::metric(text, line_start).unwrap_or_else(|| panic!("no metric {line_start}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unavailable_twice_then_success_sends_three_identical_requests() {
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 503, repeat: 2 }, { status: 201, echo: true } ]\n";
    let (s, sb, addr) = pair("tryvox", scenario, FAST).await;
    let body = br#"{"to":"+15550100","from":"+15550101"}"#;
    let r = send(
        addr,
        &post("/v1/calls", &[("idempotency-key", "idem-1")], body),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.body, body, "the final answer is the vendor's own");
    let got = s.requests();
    assert_eq!(got.len(), 3);
    for rec in &got {
        assert_eq!(rec.body, body, "replayed byte for byte");
        assert_eq!(rec.header("idempotency-key"), Some("idem-1"));
    }
    let m = get(sb.admin, "/metrics").await.text();
    let at = |status: &str| {
        metric(
            &m,
            &format!("switchboard_upstream_attempts_total{{endpoint=\"other\",status=\"{status}\",vendor=\"tryvox\"}}"),
        )
    };
    assert_eq!((at("503"), at("201")), (2.0, 1.0));
    assert_eq!(
        metric(
            &m,
            "switchboard_retries_total{endpoint=\"other\",reason=\"unavailable\",vendor=\"tryvox\"}"
        ),
        2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_500_is_retried_only_with_an_idempotency_key() {
    let (s, _sb, addr) = pair(
        "tryvox",
        "default: { vendor_error: INTERNAL_ERROR }\n",
        FAST,
    )
    .await;
    let r = send(addr, &post("/v1/calls", &[], b"{}")).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["attempts"], 1);
    assert_eq!(
        s.hits(),
        1,
        "a POST 500 without a key may have placed the call"
    );
    let r = send(
        addr,
        &post("/v1/calls", &[("idempotency-key", "k-2")], b"{}"),
    )
    .await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"]["attempts"], 3);
    assert_eq!(s.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn codes_marked_final_are_sent_once_whatever_the_status() {
    for example in ["DELIVERY_FAILED", "MAX_ATTEMPTS_EXCEEDED"] {
        let (s, _sb, addr) = pair(
            "tryvox",
            &format!("default: {{ vendor_error: {example} }}\n"),
            FAST,
        )
        .await;
        // Even with an idempotency key: the vendor processed these.
        let r = send(addr, &post("/v1/calls", &[("idempotency-key", "k")], b"{}")).await;
        assert!(
            r.status == 502 || r.status == 429,
            "{example}: {}",
            r.status
        );
        assert_eq!(r.json()["error"]["retryable"], false);
        assert_eq!(s.hits(), 1, "{example} was retried");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_retry_after_is_waited_for() {
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 429, headers: { retry-after: \"1\" }, json: { error: { code: RATE_LIMITED, message: slow down } } }, { status: 200 } ]\n";
    let (s, _sb, addr) = pair("tryvox", scenario, FAST).await;
    let r = send(addr, &post("/v1/calls", &[], b"{}")).await;
    assert_eq!(r.status, 200, "a POST 429 was not processed: retried");
    let got = s.requests();
    assert_eq!(got.len(), 2);
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_reset_header_is_waited_for() {
    let scenario = "rules:\n  - match: { path_prefix: /v1/agents }\n    steps: [ { status: 429, headers: { x-ratelimit-remaining: \"0\", x-ratelimit-reset: \"{now+2}\" }, json: { success: false, error: { code: rate_limited, message: Too many requests } } }, { status: 200 } ]\n";
    let (s, _sb, addr) = pair("agent_platform", scenario, FAST).await;
    let r = get(addr, "/v1/agents").await;
    assert_eq!(r.status, 200, "{}", r.text());
    let got = s.requests();
    assert_eq!(got.len(), 2);
    // `{now+2}` is two epoch seconds ahead: between 1 and 2 s away.
    let gap = got[1].at.duration_since(got[0].at);
    assert!(gap >= Duration::from_secs(1), "retried after {gap:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hint_past_max_retry_after_answers_at_once() {
    // TryVox's documented 429 says Retry-After: 60; we wait at most 30 s.
    let (s, _sb, addr) = pair("tryvox", "default: { vendor_error: RATE_LIMITED }\n", FAST).await;
    let start = Instant::now();
    let r = send(addr, &post("/v1/calls", &[], b"{}")).await;
    assert!(start.elapsed() < Duration::from_secs(2));
    assert_eq!(r.status, 429);
    let v = r.json();
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(v["error"]["retry_after_s"], 60);
    assert_eq!(r.header("retry-after"), Some("60"));
    assert_eq!(s.hits(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_caps_amplification_under_a_failing_vendor() {
    let extra = "    retry: { backoff: { base: 1ms, max: 2ms }, budget: { ratio: 0.2, min_per_second: 0 } }\n";
    let (s, sb, addr) = pair("tryvox", "default: { status: 503 }\n", extra).await;
    for _ in 0..50 {
        let r = get(addr, "/v1/numbers").await;
        assert_eq!(r.status, 503);
    }
    // Without a budget: 150 requests (3 attempts each). With 20 %: at most 60.
    let hits = s.hits();
    assert!((50..=60).contains(&hits), "{hits} vendor requests for 50");
    let m = get(sb.admin, "/metrics").await.text();
    let spent = metric(
        &m,
        "switchboard_retry_giveups_total{endpoint=\"other\",reason=\"budget\",vendor=\"tryvox\"}",
    );
    assert!(spent >= 30.0, "{spent}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_retry_queue_answers_overloaded() {
    let extra = "    retry: { queue: 1 }\n";
    let scenario = "default: { status: 503, headers: { retry-after: \"2\" } }\n";
    let (_s, _sb, addr) = pair("tryvox", scenario, extra).await;
    let reqs: Vec<_> = (0..2)
        .map(|_| tokio::spawn(async move { get(addr, "/v1/numbers").await }))
        .collect();
    let mut codes = Vec::new();
    for r in reqs {
        let r = r.await.unwrap();
        codes.push(r.json()["error"]["code"].as_str().unwrap().to_string());
    }
    codes.sort();
    assert_eq!(codes, ["overloaded", "upstream_unavailable"], "{codes:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_past_the_replay_buffer_is_sent_once() {
    let (s, _sb, addr) = pair("tryvox", "default: { status: 503 }\n", FAST).await;
    let body = vec![b'x'; 70 * 1024];
    let r = send(
        addr,
        &post("/v1/calls", &[("idempotency-key", "big")], &body),
    )
    .await;
    assert_eq!(r.status, 503);
    assert_eq!(s.hits(), 1);
    assert_eq!(s.requests()[0].body.len(), body.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callers_deadline_bounds_the_waits() {
    let scenario = "default: { status: 503, headers: { retry-after: \"1\" } }\n";
    let (s, _sb, addr) = pair("tryvox", scenario, "").await;
    let start = Instant::now();
    let r = send(
        addr,
        &request(
            "GET",
            "/v1/numbers",
            &[("x-switchboard-deadline", "500")],
            None,
        ),
    )
    .await;
    assert_eq!(r.status, 503);
    assert!(start.elapsed() < Duration::from_millis(900));
    assert_eq!(s.hits(), 1, "a 1 s wait does not fit a 500 ms deadline");
    assert_eq!(
        s.requests()[0].header("x-switchboard-deadline"),
        None,
        "the header is Switchboard's, not the vendor's"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_waiting_retries() {
    let scenario = "default: { status: 503, headers: { retry-after: \"20\" } }\n";
    let (s, mut sb, addr) = pair("tryvox", scenario, "").await;
    let waiting = tokio::spawn(async move { get(addr, "/v1/numbers").await });
    // Held for its retry (the vendor said come back in 20 s).
    until_metric(sb.admin, "switchboard_queue_depth{vendor=\"tryvox\"}", 1.0).await;
    assert_eq!(s.hits(), 1);
    let start = Instant::now();
    sb.signal("TERM");
    let r = waiting.await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    let (code, _) = sb.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(s.hits(), 1);
}

/// `errors: vendor` changes what the app sees, not what Switchboard does: a GET answered
/// 503 is retried as in envelope mode, and the last answer reaches the app as sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_format_errors_are_retried_like_envelopes() {
    let extra = "    errors: vendor\n    retry: { backoff: { base: 5ms, max: 20ms } }\n";
    let (s, _sb, addr) = pair(
        "tryvox",
        "default: { status: 503, body: \"vendor says no\" }\n",
        extra,
    )
    .await;
    let r = get(addr, "/v1/numbers").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.text(), "vendor says no");
    assert_eq!(
        r.header("x-switchboard-error"),
        Some("upstream_unavailable")
    );
    assert_eq!(s.hits(), 3, "max_attempts 3, as with envelopes");
}

/// A vendor that closes idle keep-alive connections (as load balancers do) must not turn the
/// next call into `outcome_unknown`: the closed connection is found before anything is sent
/// on it, so a non-idempotent POST goes out exactly once, on a fresh connection, and succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_the_vendor_closed_while_idle_is_not_reused() {
    let scenario = "idle_close: 100ms\nrules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 201, json: { id: call_1 } } ]\n";
    let (s, _sb, addr) = pair("tryvox", scenario, "").await;
    let body = br#"{"to":"+15550100"}"#;
    for round in 0..3 {
        let r = send(addr, &post("/v1/calls", &[], body)).await;
        assert_eq!(r.status, 201, "round {round}: {}", r.text());
        // The vendor closes the pooled connection once it idles 100 ms: wait until it has.
        until("the vendor's idle close", WAIT, || {
            (s.closed() > round).then_some(())
        })
        .await;
    }
    assert_eq!(
        s.requests().len(),
        3,
        "each POST reached the vendor exactly once"
    );
    assert_eq!(s.connections(), 3, "each on a new connection");
}
