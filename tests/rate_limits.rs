//! Rate limiting end to end: the real binary in front of a simulator that enforces the
//! vendor's own limit, counting what the vendor saw.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use switchboard::simulator::Simulator;

async fn pair(vendor: &str, scenario: &str, extra: &str) -> (Simulator, Sb, SocketAddr) {
    proxied(vendor, scenario, extra, &[]).await
}

fn call(key: &str) -> Vec<u8> {
    let auth = format!("Bearer {key}");
    request(
        "POST",
        "/v1/calls",
        &[
            ("authorization", auth.as_str()),
            ("content-type", "application/json"),
        ],
        Some(br#"{"to":"+15550100","from":"+15550101"}"#),
    )
}

/// Sends every request at once, each on its own connection.
async fn burst(addr: SocketAddr, reqs: Vec<Vec<u8>>) -> Vec<(Resp, Duration)> {
    let start = Instant::now();
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|raw| tokio::spawn(async move { (send(addr, &raw).await, start.elapsed()) }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

fn metric(text: &str, line_start: &str) -> f64 {
    support::metric(text, line_start).unwrap_or_else(|| panic!("no metric {line_start}"))
}

const VOICE_AT_VENDOR_LIMIT: &str = "    endpoints:\n      - name: voice\n        match: { path_prefix: /v1/calls }\n        limits: [ { rate: 10, per: 2s, burst: 10 } ]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrent_burst_from_several_keys_causes_zero_vendor_429s() {
    // The vendor allows 10 calls per key per 2 s; Switchboard is configured at exactly that.
    let scenario = "limits:\n  - { match: { path_prefix: /v1/calls }, rate: 10, per: 2s }\n";
    let (s, sb, addr) = pair("tryvox", scenario, VOICE_AT_VENDOR_LIMIT).await;
    let keys = ["sk_live_alpha", "sk_live_bravo", "sk_live_charlie"];
    let reqs = keys
        .iter()
        .flat_map(|k| std::iter::repeat_n(call(k), 25))
        .collect();
    let results = burst(addr, reqs).await;

    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    assert_eq!(ok, 30, "10 per key");
    assert_eq!(s.limited(), 0, "the vendor answered 429");
    assert_eq!(s.hits(), 30);
    for (r, _) in results.iter().filter(|(r, _)| r.status != 200) {
        assert_eq!(r.status, 429, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["source"], "proxy");
        assert_eq!(v["error"]["retryable"], true);
        assert_eq!(v["error"]["attempts"], 0);
        // The next token is 2 s after the burst; the answer says so, rounded up.
        let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
        assert!((1..=2).contains(&ra), "Retry-After {ra}");
        assert_eq!(v["error"]["retry_after_s"], ra);
        assert_eq!(r.header("x-ratelimit-limit"), Some("10"));
        assert_eq!(r.header("x-ratelimit-remaining"), Some("0"));
        assert_eq!(r.header("x-ratelimit-reset"), Some(ra.to_string().as_str()));
        assert_eq!(r.header("x-switchboard-error"), Some("rate_limited"));
    }

    // Coming back after Retry-After works, and still no vendor 429.
    let first_reject = results.iter().find(|(r, _)| r.status == 429).unwrap();
    let ra: u64 = first_reject
        .0
        .header("retry-after")
        .unwrap()
        .parse()
        .unwrap();
    // Waiting out the Retry-After the answer gave is the behaviour under test.
    tokio::time::sleep(Duration::from_secs(ra)).await;
    let again = send(addr, &call("sk_live_alpha")).await;
    assert_eq!(again.status, 200, "{}", again.text());
    assert_eq!(s.limited(), 0);

    // Metrics count every decision, by endpoint and scope; keys are counted, never shown.
    // (Errors are counted by the logging hook, after each answer: wait for all 76.)
    let m = metrics_settled(sb.admin, 76).await;
    let d = "switchboard_ratelimit_decisions_total{decision=";
    let tail = ",endpoint=\"voice\",scope=\"key\",vendor=\"tryvox\"}";
    assert_eq!(metric(&m, &format!("{d}\"allowed\"{tail}")), 31.0);
    assert_eq!(metric(&m, &format!("{d}\"rejected\"{tail}")), 45.0);
    assert_eq!(
        metric(&m, "switchboard_ratelimit_keys{vendor=\"tryvox\"}"),
        3.0
    );
    assert_eq!(
        metric(
            &m,
            "switchboard_errors_total{code=\"rate_limited\",endpoint=\"voice\",source=\"proxy\",vendor=\"tryvox\"}"
        ),
        45.0
    );
    assert!(!m.contains("sk_live"), "a key leaked into /metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_spreads_a_burst_at_the_rate_and_bounds_the_wait() {
    // 5 per second, burst 1: one every 200 ms; wait at most 1 s.
    let extra = "    endpoints:\n      - name: voice\n        match: { path_prefix: /v1/calls }\n        limits: [ { rate: 5, per: 1s, burst: 1, mode: queue, max_wait: 1s } ]\n";
    let (s, sb, addr) = pair("tryvox", "", extra).await;
    let results = burst(addr, vec![call("sk_live_q"); 10]).await;
    let ok = results.iter().filter(|(r, _)| r.status == 200).count();
    // Tokens at 0, 0.2, ..., 1.0 s: six fit in the 1 s wait, the rest are turned away.
    assert!((5..=6).contains(&ok), "{ok} admitted");
    for (r, at) in &results {
        assert!(
            *at < Duration::from_millis(1500),
            "answered after {at:?} (status {})",
            r.status
        );
        if r.status != 200 {
            assert_eq!(r.status, 429);
            assert_eq!(r.json()["error"]["source"], "proxy");
        }
    }
    // The vendor saw them spaced by the emission interval, not all at once.
    let mut times: Vec<Instant> = s.requests().iter().map(|r| r.at).collect();
    assert_eq!(times.len(), ok, "the vendor saw each admitted request");
    times.sort();
    for w in times.windows(2) {
        let gap = w[1].duration_since(w[0]);
        assert!(gap >= Duration::from_millis(150), "gap {gap:?}");
    }
    let m = get(sb.admin, "/metrics").await.text();
    let queued = metric(
        &m,
        "switchboard_ratelimit_decisions_total{decision=\"queued\",endpoint=\"voice\",scope=\"key\",vendor=\"tryvox\"}",
    );
    assert!(queued >= 4.0, "{queued} queued");
    assert_eq!(
        metric(&m, "switchboard_queue_depth{vendor=\"tryvox\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_429_with_retry_after_pauses_that_key() {
    // The vendor says 429 + Retry-After: 60 once (its documented example), then accepts.
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { vendor_error: RATE_LIMITED }, { status: 200 } ]\n";
    let extra = "    endpoints:\n      - name: voice\n        match: { path_prefix: /v1/calls }\n        limits: [ { rate: 100, per: 1m } ]\n";
    let (s, _sb, addr) = pair("tryvox", scenario, extra).await;
    let first = send(addr, &call("sk_live_p")).await;
    assert_eq!(first.status, 429);
    assert_eq!(first.json()["error"]["source"], "upstream");
    let second = send(addr, &call("sk_live_p")).await;
    assert_eq!(second.status, 429, "{}", second.text());
    let v = second.json();
    assert_eq!(v["error"]["source"], "proxy");
    let ra = v["error"]["retry_after_s"].as_u64().unwrap();
    assert!((59..=60).contains(&ra), "{ra}");
    assert_eq!(s.hits(), 1, "the paused key must not reach the vendor");
    // Another key is not paused.
    assert_eq!(send(addr, &call("sk_live_other")).await.status, 200);
    assert_eq!(s.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remaining_zero_with_an_epoch_reset_pauses_until_the_reset() {
    // The agent platform's headers: remaining 0 and an epoch reset 3 s ahead, on a success.
    let scenario = "default: { status: 200, json: { ok: true }, headers: { x-ratelimit-remaining: \"0\", x-ratelimit-reset: \"{now+3}\" } }\n";
    let extra = "    limits: [ { rate: 300, per: 1m } ]\n";
    let (s, _sb, addr) = pair("agent_platform", scenario, extra).await;
    let get_agents = request(
        "GET",
        "/v1/agents",
        &[("authorization", "Bearer sk_live_e")],
        None,
    );
    assert_eq!(send(addr, &get_agents).await.status, 200);
    let paused = send(addr, &get_agents).await;
    assert_eq!(paused.status, 429, "{}", paused.text());
    let ra: u64 = paused.header("retry-after").unwrap().parse().unwrap();
    assert!((2..=3).contains(&ra), "{ra}");
    assert_eq!(s.hits(), 1);
    // Waiting out the Retry-After the pause gave is the behaviour under test.
    tokio::time::sleep(Duration::from_secs(ra)).await;
    assert_eq!(send(addr, &get_agents).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shadow_mode_counts_without_blocking() {
    let extra = "    endpoints:\n      - name: voice\n        match: { path_prefix: /v1/calls }\n        limits: [ { rate: 2, per: 1m, shadow: true } ]\n";
    let (s, sb, addr) = pair("tryvox", "", extra).await;
    for _ in 0..5 {
        assert_eq!(send(addr, &call("sk_live_s")).await.status, 200);
    }
    assert_eq!(s.hits(), 5);
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(
        metric(
            &m,
            "switchboard_ratelimit_decisions_total{decision=\"shadow_rejected\",endpoint=\"voice\",scope=\"key\",vendor=\"tryvox\"}"
        ),
        4.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_never_reach_logs_or_metrics_and_keep_alive_survives_a_rejection() {
    let extra = "    limits: [ { rate: 1, per: 1m } ]\n";
    let env = [
        ("SWITCHBOARD__LOG__LEVEL", "debug".to_string()),
        ("SWITCHBOARD__LOG__FORMAT", "json".to_string()),
    ];
    let (_s, sb, addr) = proxied("tryvox", "", extra, &env).await;
    let mut conn = Conn::open(addr).await;
    let secret = "sk_live_TOPSECRET_4242";
    assert_eq!(conn.send(&call(secret)).await.unwrap().status, 200);
    // Rejected with its body unread by anyone: drained, and the connection stays usable.
    let r = conn.send(&call(secret)).await.unwrap();
    assert_eq!(r.status, 429);
    let r = conn.send(&call(secret)).await.unwrap();
    assert_eq!(r.status, 429);
    let anon = request("GET", "/v1/numbers", &[], None);
    assert_eq!(send(addr, &anon).await.status, 200);
    assert_eq!(
        send(addr, &anon).await.status,
        429,
        "anonymous shares one bucket"
    );
    let m = get(sb.admin, "/metrics").await.text();
    assert!(!m.contains("TOPSECRET"));
    // Access-log lines are written after each answer: wait for the last rejection's.
    let logs = until("3 rate_limited access-log lines", WAIT, || {
        let logs = sb.stderr();
        (logs.matches("rate_limited").count() >= 3).then_some(logs)
    })
    .await;
    assert!(!logs.contains("TOPSECRET"), "a key leaked into the logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_answers_queued_requests_at_once() {
    let extra = "    endpoints:\n      - name: voice\n        match: { path_prefix: /v1/calls }\n        limits: [ { rate: 1, per: 10s, burst: 1, mode: queue, max_wait: 20s } ]\n";
    let (s, mut sb, addr) = pair("tryvox", "", extra).await;
    assert_eq!(send(addr, &call("sk_live_d")).await.status, 200);
    // The next token is 10 s away: this one waits in line.
    let queued = tokio::spawn(async move { send(addr, &call("sk_live_d")).await });
    until_metric(sb.admin, "switchboard_queue_depth{vendor=\"tryvox\"}", 1.0).await;
    let start = Instant::now();
    sb.signal("TERM");
    let r = queued.await.unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(r.status, 429, "{}", r.text());
    let ra: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((9..=10).contains(&ra), "{ra}");
    let (code, _) = sb.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert_eq!(s.hits(), 1);
}

/// A request refused by a limit while its chunked body keeps coming (or never ends): the
/// refusal does not wait on the body for ever. What it drains to keep the connection is
/// bounded in time; past that the 429 goes out with `Connection: close`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_does_not_wait_for_a_body_that_never_ends() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let extra = "    limits: [ { rate: 1, per: 1m } ]\n";
    let (_s, _sb, addr) = proxied("tryvox", "", extra, &[]).await;
    assert_eq!(send(addr, &call("sk_test_slow")).await.status, 200);
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(
        b"POST /v1/calls HTTP/1.1\r\nHost: app.local\r\nAuthorization: Bearer sk_test_slow\r\n\
          Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .await
    .unwrap();
    // The body's end never comes; the answer must.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(WAIT, c.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "no answer while the body went on: {text:?}");
    assert!(text.starts_with("HTTP/1.1 429"), "{text}");
    assert!(
        text.to_ascii_lowercase().contains("connection: close"),
        "{text}"
    );
    assert!(text.contains("rate_limited"), "{text}");
}
