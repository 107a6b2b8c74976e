//! Concurrency limits (`in_flight: N`, issue 16) end to end: the real binary in front of a
//! simulator that answers slowly and records how many requests it was answering at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use support::*;
use tokio::io::AsyncWriteExt;

fn call() -> Vec<u8> {
    request(
        "POST",
        "/v1/calls",
        &[
            ("authorization", "Bearer sk_live_alpha"),
            ("content-type", "application/json"),
        ],
        Some(br#"{"to":"+15550100","from":"+15550101"}"#),
    )
}

/// Sends every request at once, each on its own connection.
async fn burst(addr: SocketAddr, n: usize) -> Vec<Resp> {
    let tasks: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { send(addr, &call()).await }))
        .collect();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

const SLOW: &str = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 201, delay: 1500ms, json: { id: call_1 } } ]\n";

fn calls_in_flight(limit: &str) -> String {
    format!("    endpoints:\n      - name: voice\n        match: {{ path_prefix: /v1/calls }}\n        limits: [ {limit} ]\n")
}

const AT_VENDOR: &str = "switchboard_inflight{endpoint=\"voice\",vendor=\"tryvox\"}";

fn decisions(m: &str, decision: &str) -> f64 {
    metric(
        m,
        &format!("switchboard_ratelimit_decisions_total{{decision=\"{decision}\",endpoint=\"voice\",scope=\"key\",vendor=\"tryvox\"}}"),
    )
    .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reject_mode_sends_two_and_answers_four_canonical_429s() {
    let (s, sb, addr) = proxied("tryvox", SLOW, &calls_in_flight("{ in_flight: 2 }"), &[]).await;
    let results = burst(addr, 6).await;
    let ok = results.iter().filter(|r| r.status == 201).count();
    assert_eq!(
        ok,
        2,
        "{:?}",
        results.iter().map(|r| r.status).collect::<Vec<_>>()
    );
    assert_eq!(s.hits(), 2, "the vendor saw only the two that had a slot");
    for r in results.iter().filter(|r| r.status != 201) {
        assert_eq!(r.status, 429, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "rate_limited");
        assert_eq!(v["error"]["source"], "proxy");
        assert_eq!(v["error"]["attempts"], 0);
        assert_eq!(r.header("retry-after"), Some("1"));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(msg.contains("concurrency limit of 2"), "{msg}");
    }
    let m = metrics_settled(sb.admin, 6).await;
    assert_eq!(decisions(&m, "rejected"), 4.0, "{m}");
    assert_eq!(decisions(&m, "allowed"), 2.0, "{m}");
    assert_eq!(
        metric(&m, AT_VENDOR),
        Some(0.0),
        "both answered: none at the vendor"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_mode_serves_all_six_never_more_than_two_at_the_vendor() {
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 201, delay: 300ms, json: { id: call_1 } } ]\n";
    let (s, sb, addr) = proxied(
        "tryvox",
        scenario,
        &calls_in_flight("{ in_flight: 2, mode: queue, max_wait: 10s }"),
        &[],
    )
    .await;
    let results = burst(addr, 6).await;
    for r in &results {
        assert_eq!(r.status, 201, "{}", r.text());
    }
    assert_eq!(s.hits(), 6);
    assert_eq!(
        s.max_concurrent(),
        2,
        "the vendor never had more than 2 at once"
    );
    let m = metrics_settled(sb.admin, 6).await;
    assert_eq!(decisions(&m, "allowed"), 6.0, "{m}");
    assert!(decisions(&m, "queued") >= 3.0, "at least 4 waited… {m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gauge_counts_requests_at_the_vendor_and_a_gone_client_frees_its_slot() {
    let (s, sb, addr) = proxied("tryvox", SLOW, &calls_in_flight("{ in_flight: 1 }"), &[]).await;
    // A client that sends and goes away while its request is at the vendor.
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.write_all(&call()).await.unwrap();
    until("the request at the vendor", WAIT, || {
        (s.active() == 1).then_some(())
    })
    .await;
    until_metric(sb.admin, AT_VENDOR, 1.0).await;
    // While it is there, the one slot is taken.
    let r = send(addr, &call()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    drop(c);
    // The vendor still answers it (it was sent): then the slot and the gauge are free again.
    until_metric(sb.admin, AT_VENDOR, 0.0).await;
    let r = send(addr, &call()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_timed_out_attempt_frees_its_slot_and_a_retry_takes_one_again() {
    // The first answer never comes in time; the next ones do at once. GETs are retried.
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 200, delay: 5s, json: { late: true } }, { status: 200, json: { id: call_1 } } ]\n";
    let extra = format!(
        "    timeouts: {{ response: 400ms }}\n    retry: {{ max_attempts: 2, backoff: {{ base: 10ms, max: 10ms }} }}\n{}",
        calls_in_flight("{ in_flight: 1 }")
    );
    let (s, sb, addr) = proxied("tryvox", scenario, &extra, &[]).await;
    let get_call = request(
        "GET",
        "/v1/calls/c1",
        &[("authorization", "Bearer sk_live_alpha")],
        None,
    );
    let r = send(addr, &get_call).await;
    assert_eq!(
        r.status,
        200,
        "the retry got the one slot back: {}",
        r.text()
    );
    assert_eq!(s.hits(), 2);
    let m = metrics_settled(sb.admin, 1).await;
    assert_eq!(metric(&m, AT_VENDOR), Some(0.0), "{m}");
    // Nothing left held: another request goes straight through.
    let r = send(addr, &get_call).await;
    assert_eq!(r.status, 200, "{}", r.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_refused_a_slot_gives_its_rate_token_back() {
    // Three calls a minute and one at a time: the one refused a slot must not spend a call.
    let limits = "{ rate: 3, per: 1m, burst: 3 }, { in_flight: 1 }";
    let (s, _sb, addr) = proxied("tryvox", SLOW, &calls_in_flight(limits), &[]).await;
    let first = tokio::spawn(async move { send(addr, &call()).await });
    until("the first call at the vendor", WAIT, || {
        (s.active() == 1).then_some(())
    })
    .await;
    let r = send(addr, &call()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("concurrency limit"), "{}", r.text());
    assert_eq!(first.await.unwrap().status, 201);
    // Two calls are left of the three, not one.
    assert_eq!(send(addr, &call()).await.status, 201);
    assert_eq!(send(addr, &call()).await.status, 201);
    let r = send(addr, &call()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert!(r.text().contains("rate limit of 3"), "{}", r.text());
    assert_eq!(s.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_in_flight_limit_is_refused_at_startup_by_key_path() {
    let out = check_config_with(&calls_in_flight("{ in_flight: 0, rate: 5, per: 1s }"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("endpoints[0].limits[0].in_flight"), "{err}");
    assert!(err.contains("endpoints[0].limits[0].rate"), "{err}");
    let out = check_config_with(&calls_in_flight("{ in_flight: 2, shared: true }"));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("limits[0].shared"), "{err}");
}
