//! End-to-end tests of the foundation: forwarding, proxy-generated envelopes, admin
//! endpoints, request ids and shutdown — the real binary against the in-process simulator.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::{Duration, Instant};

use support::*;
use switchboard::simulator::pattern_body;

const ECHO: &str = "default: { status: 200, echo: true }\n";

/// Starts a simulator and one vendor in front of it; returns (sim, proxy, vendor address).
async fn setup(
    scenario: &str,
    extra: &str,
) -> (switchboard::simulator::Simulator, Sb, std::net::SocketAddr) {
    let sim = sim("tryvox", scenario).await;
    let port = free_port();
    let extra = format!("    timeouts: {{ connect: 1s, response: 1s }}\n{extra}");
    let sb = Sb::start(&vendor_yaml(
        "tryvox",
        port,
        &format!("http://{}", sim.addr()),
        &extra,
    ));
    (sim, sb, local(port))
}

fn assert_envelope(r: &Resp, code: &str, status: u16) -> serde_json::Value {
    assert_eq!(r.status, status, "status; body: {}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("x-switchboard-error"), Some(code));
    let v = r.json();
    assert_eq!(v["error"]["code"], code, "{v}");
    assert_eq!(v["error"]["vendor"], "tryvox");
    assert!(v["error"]["message"]
        .as_str()
        .is_some_and(|m| !m.is_empty()));
    assert!(v["error"]["details"].is_array());
    assert_eq!(
        Some(v["request_id"].as_str().unwrap()),
        r.header("x-request-id")
    );
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_and_post_pass_through_byte_identical() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let body: Vec<u8> = (0..10_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let raw = request(
        "POST",
        "/v1/calls?x=1&y=%20z",
        &[
            ("Authorization", "Bearer sk_test_1"),
            ("X-Custom", "kept"),
            ("Content-Type", "application/octet-stream"),
        ],
        Some(&body),
    );
    let r = send(addr, &raw).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, body, "response body must come back byte-identical");
    let g = get(addr, "/v1/numbers/abc?page=2").await;
    assert_eq!(g.status, 200);

    let seen = sim.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].method, "POST");
    assert_eq!(seen[0].path, "/v1/calls?x=1&y=%20z");
    assert_eq!(
        seen[0].body, body,
        "vendor must receive the body byte-identical"
    );
    assert_eq!(seen[0].header("authorization"), Some("Bearer sk_test_1"));
    assert_eq!(seen[0].header("x-custom"), Some("kept"));
    assert_eq!(seen[1].method, "GET");
    assert_eq!(seen[1].path, "/v1/numbers/abc?page=2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_request_body_is_forwarded_intact() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let mut raw =
        b"POST /v1/calls HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    let mut expected = Vec::new();
    for part in [&b"{\"to\":"[..], b"\"+14155551234\"", b"}"] {
        raw.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        raw.extend_from_slice(part);
        raw.extend_from_slice(b"\r\n");
        expected.extend_from_slice(part);
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = send(addr, &raw).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, expected);
    assert_eq!(sim.requests()[0].body, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_mib_success_body_streams_through() {
    let (_sim, _sb, addr) = setup("default: { status: 200, body_size: 1048576 }\n", "").await;
    let r = get(addr, "/v1/recordings/1").await;
    assert_eq!(r.status, 200);
    assert!(!r.truncated);
    assert_eq!(r.body.len(), 1 << 20);
    assert!(r.body == pattern_body(1 << 20), "1 MiB body differs");
    // The same with a chunked upstream response.
    let (_sim, _sb, addr) = setup(
        "default: { status: 200, body_size: 1048576, chunked: true }\n",
        "",
    )
    .await;
    let r = get(addr, "/v1/recordings/1").await;
    assert!(
        r.body == pattern_body(1 << 20),
        "chunked 1 MiB body differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_is_rewritten_and_never_chooses_the_destination() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let r = send(
        addr,
        &request("GET", "/v1/calls", &[("Host", "evil.example:666")], None),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = sim.requests();
    assert_eq!(seen.len(), 1, "request must reach the configured upstream");
    assert_eq!(
        seen[0].header("host"),
        Some(sim.addr().to_string().as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_not_forwarded() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let r = send(
        addr,
        &request(
            "GET",
            "/v1/calls",
            &[
                ("Connection", "keep-alive, X-Hop"),
                ("X-Hop", "secret"),
                ("Keep-Alive", "timeout=5"),
                ("X-End", "1"),
            ],
            None,
        ),
    )
    .await;
    assert_eq!(r.status, 200);
    let seen = &sim.requests()[0];
    assert_eq!(seen.header("x-hop"), None);
    assert_eq!(seen.header("keep-alive"), None);
    assert_eq!(seen.header("x-end"), Some("1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_serves_several_requests_on_one_connection() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let mut c = Conn::open(addr).await;
    for i in 0..3 {
        let body = format!("req{i}");
        let r = c
            .send(&request("POST", "/v1/calls", &[], Some(body.as_bytes())))
            .await
            .unwrap();
        assert_eq!(r.body, body.as_bytes());
    }
    assert_eq!(sim.hits(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_upstream_is_upstream_unavailable() {
    let port = free_port();
    // Port 1 (tcpmux): nothing listens there and no other test can take it, unlike a
    // "free" ephemeral port that a concurrently starting test may bind during the retries.
    let dead = 1;
    let _sb = Sb::start(&vendor_yaml(
        "tryvox",
        port,
        &format!("http://127.0.0.1:{dead}"),
        "    timeouts: { connect: 1s, response: 1s }\n",
    ));
    for method in ["GET", "POST"] {
        let r = send(local(port), &request(method, "/v1/calls", &[], Some(b"{}"))).await;
        let v = assert_envelope(&r, "upstream_unavailable", 503);
        assert_eq!(v["error"]["source"], "proxy");
        assert_eq!(v["error"]["retryable"], true);
        // Never sent, so retried whatever the method (SPEC §6 rule 1), up to max_attempts.
        assert_eq!(v["error"]["attempts"], 3);
        assert_eq!(v["error"]["upstream"], serde_json::Value::Null);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_after_send_is_outcome_unknown_for_post_and_unavailable_for_get() {
    let (sim, _sb, addr) = setup("default: { action: reset }\n", "").await;
    let r = send(
        addr,
        &request("POST", "/v1/calls", &[], Some(b"{\"to\":\"+1\"}")),
    )
    .await;
    let v = assert_envelope(&r, "outcome_unknown", 502);
    assert_eq!(v["error"]["retryable"], false);
    assert_eq!(v["error"]["attempts"], 1);
    assert_eq!(
        sim.hits(),
        1,
        "a POST whose response was lost is never sent twice"
    );
    // A GET is safe to repeat: retried up to max_attempts (3).
    let r = get(addr, "/v1/calls/1").await;
    let v = assert_envelope(&r, "upstream_unavailable", 503);
    assert_eq!(v["error"]["attempts"], 3);
    assert_eq!(sim.hits(), 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_mid_response_cuts_the_stream() {
    let (_sim, _sb, addr) = setup(
        "default: { status: 200, body_size: 200000, action: truncate }\n",
        "",
    )
    .await;
    let r = Conn::open(addr)
        .await
        .send(&request("GET", "/v1/calls", &[], None))
        .await
        .unwrap();
    // The header was already forwarded, so no envelope is possible: the client must see the
    // body end early rather than a complete-looking response.
    assert_eq!(r.status, 200);
    assert!(r.truncated, "body must be cut, got {} bytes", r.body.len());
    assert!(r.body.len() < 200000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_upstream_is_an_envelope() {
    let (_sim, _sb, addr) = setup("default: { action: garbage }\n", "").await;
    let r = get(addr, "/v1/calls").await;
    assert_envelope(&r, "upstream_unavailable", 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_upstream_is_upstream_timeout_within_the_configured_timeout() {
    let (_sim, _sb, addr) = setup("default: { action: hang }\n", "").await;
    let start = Instant::now();
    let r = send(addr, &request("POST", "/v1/calls", &[], Some(b"{}"))).await;
    let took = start.elapsed();
    let v = assert_envelope(&r, "upstream_timeout", 504);
    assert_eq!(v["error"]["retryable"], true);
    assert!(
        took >= Duration::from_millis(900),
        "answered before the 1s timeout: {took:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "timeout not enforced: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unresolvable_host_is_upstream_unavailable() {
    let port = free_port();
    let _sb = Sb::start(&vendor_yaml(
        "tryvox",
        port,
        "http://no-such-host.invalid",
        "    timeouts: { connect: 1s, response: 1s }\n",
    ));
    let r = get(local(port), "/v1/calls").await;
    let v = assert_envelope(&r, "upstream_unavailable", 503);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("no-such-host.invalid"),
        "{v}"
    );
    // The process keeps serving.
    let r = get(local(port), "/v1/calls").await;
    assert_eq!(r.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_kept_or_generated() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let r = send(
        addr,
        &request("GET", "/v1/calls", &[("X-Request-Id", "app-42")], None),
    )
    .await;
    assert_eq!(r.header("x-request-id"), Some("app-42"));
    assert_eq!(sim.requests()[0].header("x-request-id"), Some("app-42"));
    let r = get(addr, "/v1/calls").await;
    let id = r.header("x-request-id").unwrap();
    assert!(id.starts_with("sb-") && id.len() > 20, "{id}");

    let port = free_port();
    let _sb2 = Sb::start(&vendor_yaml(
        "tryvox",
        port,
        &format!("http://127.0.0.1:{}", free_port()),
        "",
    ));
    let r = send(
        local(port),
        &request("GET", "/", &[("X-Request-Id", "trace-7")], None),
    )
    .await;
    assert_eq!(r.json()["request_id"], "trace-7");
    assert_eq!(r.header("x-request-id"), Some("trace-7"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_bodies_are_payload_too_large() {
    let (sim, _sb, addr) = setup(ECHO, "    max_request_body: 1KiB\n").await;
    let big = vec![b'x'; 4096];
    let r = send(addr, &request("POST", "/v1/calls", &[], Some(&big))).await;
    let v = assert_envelope(&r, "payload_too_large", 413);
    assert_eq!(v["error"]["attempts"], 0);
    assert_eq!(
        sim.hits(),
        0,
        "an over-limit declared body must not reach the vendor"
    );

    // Chunked: the size is only known while streaming.
    let mut raw =
        b"POST /v1/calls HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..4 {
        raw.extend_from_slice(b"400\r\n");
        raw.extend_from_slice(&[b'y'; 1024]);
        raw.extend_from_slice(b"\r\n");
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let r = send(addr, &raw).await;
    assert_envelope(&r, "payload_too_large", 413);
    // A body at the limit passes.
    let ok = vec![b'z'; 1024];
    let r = send(addr, &request("POST", "/v1/calls", &[], Some(&ok))).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body, ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_is_rejected() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    let raw = b"POST /v1/calls HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let r = send(addr, raw).await;
    assert_envelope(&r, "validation_failed", 400);
    assert_eq!(sim.hits(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_do_not_break_the_proxy() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    for raw in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nBad Header\r\n\r\n",
        b"\x00\x01\x02\x03\r\n\r\n",
    ] {
        // README: a request that cannot be parsed gets Pingora's bare 400, then the close.
        let mut conn = Conn::open(addr).await;
        let r = conn
            .send(raw)
            .await
            .unwrap_or_else(|e| panic!("no answer to {:?}: {e}", String::from_utf8_lossy(raw)));
        assert_eq!(
            r.status,
            400,
            "{:?} answered {}",
            String::from_utf8_lossy(raw),
            r.status
        );
        let next = tokio::time::timeout(WAIT, conn.read_response()).await;
        assert!(
            matches!(next, Ok(Err(_))),
            "the connection stays open after {:?}",
            String::from_utf8_lossy(raw)
        );
    }
    assert_eq!(sim.hits(), 0);
    assert_eq!(
        get(addr, "/v1/calls").await.status,
        200,
        "proxy must keep serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_endpoints() {
    let (_sim, sb, addr) = setup(ECHO, "").await;
    assert_eq!(get(addr, "/v1/calls").await.status, 200);
    assert_eq!(get(sb.admin, "/healthz").await.status, 200);
    assert_eq!(get(sb.admin, "/readyz").await.status, 200);
    assert_eq!(get(sb.admin, "/nope").await.status, 404);
    let m = get(sb.admin, "/metrics").await;
    assert_eq!(m.status, 200);
    let text = metrics_settled(sb.admin, 1).await;
    assert!(
        text.contains(r#"switchboard_requests_total{endpoint="other",method="GET",status="200",vendor="tryvox"} 1"#),
        "{text}"
    );
    assert!(
        text.contains("switchboard_upstream_duration_seconds_bucket"),
        "{text}"
    );
    assert!(!text.contains("sk_test"), "no keys in metrics");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn env_overrides_the_admin_listener() {
    let port = free_port();
    let admin = format!("127.0.0.1:{}", free_port());
    let sb = Sb::start_with(
        &vendor_yaml("tryvox", port, "http://127.0.0.1:9", ""),
        "5s",
        &[("SWITCHBOARD__ADMIN__LISTEN", admin.clone())],
    );
    assert_eq!(sb.admin.to_string(), admin);
    assert_eq!(get(sb.admin, "/healthz").await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_then_exits_zero() {
    let sim = sim(
        "tryvox",
        "default: { status: 200, json: { done: true }, delay: 1500ms }\n",
    )
    .await;
    let port = free_port();
    let mut sb = Sb::start_with(
        &vendor_yaml("tryvox", port, &format!("http://{}", sim.addr()), ""),
        "10s",
        &[("SWITCHBOARD__LOG__LEVEL", "info".to_string())],
    );
    let inflight = tokio::spawn(async move { get(local(port), "/v1/calls").await });
    until("the vendor to get the request", WAIT, || {
        (sim.hits() > 0).then_some(())
    })
    .await;
    let t0 = Instant::now();
    sb.signal("TERM");
    // Not ready any more: 503, or the admin listener already closed; never 200 again.
    until(
        "/readyz to stop answering 200",
        WAIT,
        || match blocking_get(sb.admin, "/readyz") {
            Ok(r) if r.status == 200 => None,
            Ok(r) => {
                assert_eq!(r.status, 503, "/readyz while draining");
                Some(())
            }
            Err(_) => Some(()),
        },
    )
    .await;
    let r = inflight.await.unwrap();
    assert_eq!(r.status, 200, "in-flight request must finish");
    assert_eq!(r.json()["done"], true);
    let (code, _) = sb.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    // The drained request's access line was written before the exit (lines are buffered
    // off the request's path, and flushed by the exit).
    let logs = sb.stderr();
    assert!(
        logs.lines()
            .any(|l| l.contains("switchboard::access") && l.contains("status=200")),
        "{logs}"
    );
    // Exited soon after the drain, not after the 10 s grace period.
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_gives_up_after_the_grace_period() {
    let sim = sim("tryvox", "default: { action: hang }\n").await;
    let port = free_port();
    let mut sb = Sb::start_with(
        &vendor_yaml(
            "tryvox",
            port,
            &format!("http://{}", sim.addr()),
            "    timeouts: { response: 60s }\n",
        ),
        "1s",
        &[],
    );
    let _hung = tokio::spawn(async move {
        Conn::open(local(port))
            .await
            .send(&request("GET", "/", &[], None))
            .await
    });
    until("the vendor to get the request", WAIT, || {
        (sim.hits() > 0).then_some(())
    })
    .await;
    sb.signal("TERM");
    let (code, took) = sb.wait_exit(Duration::from_secs(10));
    assert_eq!(code, Some(0));
    assert!(
        took >= Duration::from_millis(900),
        "exited before the grace period: {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_when_idle_exits_at_once() {
    let port = free_port();
    let mut sb = Sb::start_with(
        &vendor_yaml("tryvox", port, "http://127.0.0.1:9", ""),
        "30s",
        &[],
    );
    sb.signal("TERM");
    let (code, took) = sb.wait_exit(Duration::from_secs(5));
    assert_eq!(code, Some(0));
    assert!(took < Duration::from_secs(3), "idle drain took {took:?}");
    // SIGINT (exits at once, code 130) is tests/signals.rs's.
}

#[test]
fn a_busy_port_is_a_clear_startup_error() {
    let held = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = held.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("c.yaml");
    std::fs::write(
        &file,
        format!(
            "{}vendors:\n{}",
            preamble(free_port(), "1s"),
            vendor_yaml("tryvox", port, "http://127.0.0.1:9", "")
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .arg("--config")
        .arg(&file)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "cannot listen on 127.0.0.1:{port} (vendor tryvox)"
        )),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_connections_are_kept_alive_and_reused() {
    let (sim, _sb, addr) = setup(ECHO, "").await;
    for _ in 0..5 {
        assert_eq!(get(addr, "/v1/calls").await.status, 200);
    }
    assert_eq!(sim.hits(), 5);
    assert_eq!(
        sim.connections(),
        1,
        "5 sequential requests should share one pooled upstream connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_uses_rustls_with_ssl_cert_file() {
    let sim = tls_sim(ECHO).await;
    let port = free_port();
    let upstream = format!("https://localhost:{}", sim.addr().port());
    let ca = root()
        .join("tests/fixtures/tls/ca.pem")
        .display()
        .to_string();
    let _sb = Sb::start_with(
        &vendor_yaml(
            "tryvox",
            port,
            &upstream,
            "    timeouts: { connect: 2s, response: 2s }\n",
        ),
        "5s",
        &[("SSL_CERT_FILE", ca)],
    );
    let r = send(
        local(port),
        &request("POST", "/v1/calls", &[], Some(b"{\"to\":\"+1\"}")),
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.body, b"{\"to\":\"+1\"}");
    let seen = sim.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("host"),
        Some(format!("localhost:{}", sim.addr().port()).as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untrusted_upstream_certificate_is_upstream_unavailable() {
    let sim = tls_sim(ECHO).await;
    let port = free_port();
    let upstream = format!("https://localhost:{}", sim.addr().port());
    // No SSL_CERT_FILE: the system store does not trust the test CA.
    let _sb = Sb::start(&vendor_yaml(
        "tryvox",
        port,
        &upstream,
        "    timeouts: { connect: 2s, response: 2s }\n",
    ));
    let r = get(local(port), "/v1/calls").await;
    let v = assert_envelope(&r, "upstream_unavailable", 503);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("TLS"),
        "{v}"
    );
    assert_eq!(sim.hits(), 0);
}
