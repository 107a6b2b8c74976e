//! The request path's promises that a careful operator tried and found broken, each end to
//! end through the real binary: inspected 2xx bodies arrive byte for byte whatever their
//! size and chunking; a POST is repeated only on what the vendor stated, never on a
//! message's wording; the deadline bounds the attempts themselves; the request's key never
//! comes back in an envelope nor a query string in Pingora's log; the retry budget is spent
//! only by retries that are sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A 2xx body of `n` bytes that the `sms_gateway` profile inspects and finds fine: valid
/// JSON opening with a queued message, then a long field whose bytes are position-dependent,
/// so a lost, repeated or reordered stretch cannot go unnoticed.
fn queued_body(n: usize) -> Vec<u8> {
    let head = br#"{"messages":[{"status":"queued","id":"m1"}],"pad":""#;
    let tail = br#""}"#;
    let mut b = head.to_vec();
    let mut x: u32 = 2_463_534_242;
    while b.len() < n - tail.len() {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        b.push(b"abcdefghijklmnopqrstuvwxyz0123456789"[(x % 36) as usize]);
    }
    b.extend_from_slice(tail);
    b
}

/// Odd write sizes, so no chunk boundary lines up with the inspection cap or a buffer.
const PIECES: [usize; 7] = [1, 7, 4093, 65_537, 99_991, 12_345, 31];

/// A vendor written by hand for exact framing: answers every request on a connection with
/// `queued_body(size)`, where the path is `/v1/messages/<size>/<cl|chunked>`, written in
/// [`PIECES`]-sized writes (as chunks of those sizes when chunked).
async fn framing_vendor() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve_framed(stream));
        }
    });
    addr
}

async fn serve_framed(mut s: TcpStream) {
    let mut buf = Vec::new();
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
            continue;
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
        let parts: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let size: usize = parts.get(2).and_then(|p| p.parse().ok()).unwrap_or(10);
        let chunked = parts.get(3) == Some(&"chunked");
        let body = queued_body(size);
        let framing = if chunked {
            "Transfer-Encoding: chunked".to_string()
        } else {
            format!("Content-Length: {}", body.len())
        };
        let head =
            format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{framing}\r\n\r\n");
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let n = PIECES[i % PIECES.len()].min(body.len() - at);
            let piece = &body[at..at + n];
            let out = if chunked {
                let mut c = format!("{n:x}\r\n").into_bytes();
                c.extend_from_slice(piece);
                c.extend_from_slice(b"\r\n");
                c
            } else {
                piece.to_vec()
            };
            if s.write_all(&out).await.is_err() {
                return;
            }
            s.flush().await.ok();
            at += n;
            i += 1;
        }
        if chunked && s.write_all(b"0\r\n\r\n").await.is_err() {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspected_2xx_bodies_arrive_byte_for_byte_at_any_size_and_chunking() {
    let vendor = framing_vendor().await;
    let profiles = root().join("tests/fixtures/profiles");
    let port = free_port();
    let _sb = Sb::start_in(
        &vendor_yaml(
            "sms_gateway",
            port,
            &format!("http://{vendor}"),
            "    profile: sms_gateway\n",
        ),
        &profiles,
    );
    // One connection for all: the framing must also leave keep-alive intact.
    let mut conn = Conn::open(local(port)).await;
    // Under the 64 KiB cap, exactly at it, one past it, and far past it.
    for size in [
        1000,
        64 * 1024 - 1,
        64 * 1024,
        64 * 1024 + 1,
        100 * 1024,
        1024 * 1024,
        5 * 1024 * 1024,
    ] {
        for framing in ["cl", "chunked"] {
            let path = format!("/v1/messages/{size}/{framing}");
            let r = conn
                .send(&request("POST", &path, &[], Some(b"{}")))
                .await
                .expect("response");
            assert_eq!(r.status, 200, "{path}");
            assert!(!r.truncated, "{path}: body cut short");
            let want = queued_body(size);
            assert_eq!(r.body.len(), want.len(), "{path}: length");
            let first_diff = r.body.iter().zip(&want).position(|(a, b)| a != b);
            assert_eq!(first_diff, None, "{path}: bytes differ");
        }
    }
}

/// A vendor 422 (and a 403) whose message merely *says* "rate limit": classified
/// `rate_limited` for the app, but the POST is sent once and no bucket pauses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_is_not_repeated_on_rate_limit_wording() {
    let scenario = r#"rules:
  - match: { path_prefix: /v1/calls }
    steps: [ { status: 422, json: { error: { code: "E1", message: "Rate limit exceeded for this destination, slow down" } } } ]
  - match: { path_prefix: /v1/sms }
    steps: [ { status: 403, json: { message: "throttled: too many requests" } } ]
  - match: { path_prefix: /v1/unhinted }
    steps: [ { status: 429, json: { message: "too many requests" } }, { status: 200, json: { ok: true } } ]
  - match: { path_prefix: /v1/limited }
    steps: [ { status: 429, headers: { retry-after: "0" }, json: { message: "rate limit exceeded" } }, { status: 200, json: { ok: true } } ]
default: { status: 200, json: { ok: true } }
"#;
    let extra = "    retry: { max_attempts: 3, backoff: { base: 5ms, max: 10ms } }\n    limits: [ { rate: 100, per: 1m } ]\n";
    // No profile: the generic detector reads the words, as for any unknown vendor.
    let s = sim("tryvox", scenario).await;
    let port = free_port();
    let sb = Sb::start(&vendor_yaml(
        "plain",
        port,
        &format!("http://{}", s.addr()),
        extra,
    ));
    let addr = local(port);
    let key = [("authorization", "Bearer sk_test_wording")];
    for path in ["/v1/calls", "/v1/sms"] {
        let before = s.hits();
        let r = send(addr, &request("POST", path, &key, Some(b"{}"))).await;
        let v = r.json();
        assert_eq!(v["error"]["code"], "rate_limited", "{path}: {v}");
        assert_eq!(v["error"]["attempts"], 1, "{path}");
        assert_eq!(s.hits(), before + 1, "{path}: a POST sent twice on wording");
    }
    // The control: a vendor 429 *is* the vendor's word; the same POST is sent again.
    let before = s.hits();
    let other = [("authorization", "Bearer sk_test_control")];
    let r = send(addr, &request("POST", "/v1/limited", &other, Some(b"{}"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.hits(), before + 2);
    // A 429 without a hint pauses the key 1 s: its retry waits that long, not less (a
    // shorter backoff would meet the pause and never be sent).
    let before = s.hits();
    let third = [("authorization", "Bearer sk_test_unhinted")];
    let r = send(addr, &request("POST", "/v1/unhinted", &third, Some(b"{}"))).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.hits(), before + 2);
    // No pause: the same key's next request reaches the vendor.
    let before = s.hits();
    let r = send(addr, &request("GET", "/v1/numbers", &key, None)).await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.hits(), before + 1);
    let m = metrics_settled(sb.admin, 5).await;
    assert_eq!(
        metric(
            &m,
            "switchboard_retry_giveups_total{endpoint=\"other\",reason=\"unsafe\",vendor=\"plain\"}"
        ),
        Some(2.0),
        "both answers were retriable-looking but unsafe"
    );
}

/// The deadline bounds the attempts themselves: a silent vendor is cut at the caller's
/// `X-Switchboard-Deadline` (and at `retry.deadline`), not after `timeouts.response`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_deadline_cuts_a_silent_attempt() {
    let scenario = "default: { status: 200, delay: 20s, json: { late: true } }\n";
    let extra = "    timeouts: { response: 30s }\n    retry: { deadline: 1s, backoff: { base: 5ms, max: 10ms } }\n";
    let (s, _sb, addr) = proxied("tryvox", scenario, extra, &[]).await;
    for (headers, limit) in [
        (
            vec![("x-switchboard-deadline", "300")],
            Duration::from_millis(300),
        ),
        (vec![], Duration::from_secs(1)),
    ] {
        let started = Instant::now();
        let r = send(addr, &request("GET", "/v1/calls/c1", &headers, None)).await;
        let took = started.elapsed();
        assert_eq!(r.status, 504, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["code"], "upstream_timeout");
        assert_eq!(v["error"]["source"], "proxy");
        assert!(v["error"]["attempts"].as_u64() >= Some(1));
        // Behaviour, not speed: the vendor would have answered after 20 s, the response
        // timeout is 30 s; the answer came at the deadline.
        assert!(took >= limit, "{took:?} < {limit:?}");
        assert!(took < Duration::from_secs(10), "answered after {took:?}");
    }
    let got = s.requests();
    assert!(!got.is_empty());
    assert!(got
        .iter()
        .all(|r| r.header("x-switchboard-deadline").is_none()));
}

/// A vendor that echoes the key in its message and body: the envelope carries
/// `[redacted]` instead, in every place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_echoed_key_never_reaches_the_envelope() {
    let secret = "sk_live_4f9Qz7TopSecret";
    let scenario = format!(
        r#"default:
  status: 401
  json:
    error:
      code: INVALID_API_KEY
      message: "Invalid API key {secret}"
      details: [ {{ field: authorization, reason: "Bearer {secret} is revoked" }} ]
    echo: {{ authorization: "Bearer {secret}", key: "{secret}" }}
"#
    );
    let (_s, _sb, addr) = proxied("tryvox", &scenario, "", &[]).await;
    let r = post_call(addr, secret).await;
    assert_eq!(r.status, 401, "{}", r.text());
    let text = r.text();
    assert!(!text.contains("4f9Qz7TopSecret"), "{text}");
    let v = r.json();
    assert_eq!(v["error"]["code"], "authentication_failed");
    assert_eq!(v["error"]["message"], "Invalid API key [redacted]");
    assert_eq!(
        v["error"]["upstream"]["body"]["echo"]["authorization"],
        "[redacted]"
    );
    assert_eq!(v["error"]["upstream"]["body"]["echo"]["key"], "[redacted]");
    assert!(text.contains("[redacted] is revoked"), "{text}");
}

/// Pingora's own error line for a request prints its summary: with Switchboard's, the
/// path without the query string (where keys and phone numbers travel). At `trace`, where
/// Pingora would print raw request headers and URIs, its records are held back: neither the
/// query nor the key reaches the log at any level.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_query_string_nor_key_reaches_the_log_even_at_trace() {
    let scenario = "default: { status: 200, body_size: 200000, action: truncate }\n";
    let env = [("SWITCHBOARD__LOG__LEVEL", "trace".to_string())];
    let (_s, sb, addr) = proxied("tryvox", scenario, "", &env).await;
    let path = "/v1/calls?api_key=QuerySecret99&to=%2B15550001234";
    let auth = [("authorization", "Bearer sk_live_HeaderSecret77")];
    let mut c = Conn::open(addr).await;
    // The vendor cuts the body mid-way: the stream to the app is cut, Pingora logs it.
    let _ = c.send(&request("GET", path, &auth, None)).await;
    // Wait for the request's last lines: Pingora's error line, then the access line.
    let log = until("Pingora's error line and the access line", WAIT, || {
        let e = sb.stderr();
        (e.contains("GET /v1/calls vendor=tryvox") && e.contains("switchboard::access"))
            .then_some(e)
    })
    .await;
    for secret in ["QuerySecret99", "15550001234", "HeaderSecret77"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// Retries stopped before they are sent (here: no rate-limit token) spend no budget: a
/// later retry that can be sent still is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_budget_is_spent_only_by_retries_sent() {
    let scenario = r#"rules:
  - match: { path_prefix: /v1/calls }
    steps: [ { status: 503 } ]
  - match: { path_prefix: /v1/numbers }
    steps: [ { status: 503 }, { status: 200, json: { ok: true } } ]
"#;
    // Budget: 0 × requests + 1/s over 10 s = 10 retries in the window.
    let extra = r#"    retry: { max_attempts: 2, backoff: { base: 1ms, max: 2ms }, budget: { ratio: 0, min_per_second: 1 } }
    endpoints:
      - { name: voice, match: { path_prefix: /v1/calls }, limits: [ { rate: 1, per: 1m, burst: 1 } ] }
      - { name: numbers, match: { path_prefix: /v1/numbers } }
"#;
    let (s, sb, addr) = proxied("tryvox", scenario, extra, &[]).await;
    for i in 0..15 {
        let key = format!("Bearer sk_test_key_{i}");
        let r = send(
            addr,
            &request("POST", "/v1/calls", &[("authorization", &key)], Some(b"{}")),
        )
        .await;
        assert_eq!(r.status, 503, "{}", r.text());
    }
    assert_eq!(s.hits(), 15, "no retry was sent");
    let r = send(addr, &request("GET", "/v1/numbers", &[], None)).await;
    assert_eq!(r.status, 200, "the budget still has room: {}", r.text());
    let m = metrics_settled(sb.admin, 16).await;
    let series = |name: &str, ep: &str, reason: &str| {
        metric(
            &m,
            &format!("{name}{{endpoint=\"{ep}\",reason=\"{reason}\",vendor=\"tryvox\"}}"),
        )
    };
    assert_eq!(
        series("switchboard_retry_giveups_total", "voice", "ratelimit"),
        Some(15.0)
    );
    assert_eq!(
        series("switchboard_retry_giveups_total", "numbers", "budget"),
        Some(0.0)
    );
    assert_eq!(
        series("switchboard_retries_total", "numbers", "unavailable"),
        Some(1.0)
    );
}

/// A vendor that keeps sending `102 Processing` lines and never a final answer: each read
/// arrives well inside `timeouts.response`, so only a deadline that bounds the whole wait
/// for the final header ends it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_trickling_1xx_lines_is_cut_at_the_deadline() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                let _ = s.read(&mut buf).await;
                // Bounded: 200 lines at 50 ms is 10 s, far past the deadline under test.
                for _ in 0..200 {
                    if s.write_all(b"HTTP/1.1 102 Processing\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            });
        }
    });
    let (_sb, port) = sb_in_front_of("trickle", vendor, "    timeouts: { response: 30s }\n");
    let started = Instant::now();
    let r = send(
        local(port),
        &request(
            "GET",
            "/v1/calls/c1",
            &[("x-switchboard-deadline", "600")],
            None,
        ),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
    assert!(took >= Duration::from_millis(600), "{took:?}");
    assert!(took < Duration::from_secs(5), "answered after {took:?}");
}

/// A malformed request's error carries the raw bytes read (its headers, its query) as
/// context: at `debug`, where Switchboard logs why it refused one, only the error's kind is
/// printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_is_logged_without_its_bytes() {
    let env = [("SWITCHBOARD__LOG__LEVEL", "debug".to_string())];
    let (_s, sb, addr) = proxied("tryvox", "", "", &env).await;
    let raw = b"GET /v1/calls?api_key=QuerySecret42 HTTP/1.1\r\nHost: app.local\r\nAuthorization: Bearer sk_live_Malformed88\r\nBad Header Line\r\n\r\n";
    let r = send(addr, raw).await;
    assert_eq!(r.status, 400);
    let log = until("the malformed request's log line", WAIT, || {
        let e = sb.stderr();
        e.contains("malformed request").then_some(e)
    })
    .await;
    for secret in ["QuerySecret42", "Malformed88"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
}

/// Switchboard with one vendor, `name`, whose upstream is the hand-written server at `vendor`;
/// and the port it listens on for the app.
fn sb_in_front_of(name: &str, vendor: SocketAddr, extra: &str) -> (Sb, u16) {
    let port = free_port();
    let url = format!("http://{vendor}");
    (Sb::start(&vendor_yaml(name, port, &url, extra)), port)
}

/// Reads a request off a vendor's socket up to the end of its head: every byte read (the
/// head and whatever followed it), and where the head ends.
async fn read_head(s: &mut TcpStream) -> (Vec<u8>, usize) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 65_536];
    loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            return (buf, i + 4);
        }
        let n = s.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the request head ended early");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Header names' letter case, as the README's "Operations" promises: the app's request
/// headers reach the vendor in the app's own case; the vendor's response headers reach the
/// app with their values, the names Pingora knows title-cased and all others lower-case.
/// Checked on the raw bytes at both ends (the simulator and the test client lower-case names).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_names_keep_the_apps_case_upstream_and_are_normalised_downstream() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<String>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (head, _) = read_head(&mut s).await;
        let _ = seen_tx.send(String::from_utf8_lossy(&head).into_owned());
        s.write_all(
            b"HTTP/1.1 200 OK\r\nCONTENT-TYPE: application/json\r\nX-Vendor-Trace: T1\r\n\
              Retry-After: 3\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
        // Held open until Switchboard is done with it.
        let _ = s.read(&mut [0u8; 64]).await;
    });
    let (_sb, port) = sb_in_front_of("tryvox", vendor, "");
    let mut app = TcpStream::connect(local(port)).await.unwrap();
    app.write_all(
        b"GET /v1/numbers HTTP/1.1\r\nHost: app.local\r\nX-App-Trace: A1\r\n\
          Authorization: Bearer sk_test_case\r\nConnection: close\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, app.read_to_end(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    let seen = tokio::time::timeout(WAIT, seen_rx).await.unwrap().unwrap();
    assert!(seen.contains("\r\nX-App-Trace: A1\r\n"), "{seen}");
    assert!(
        seen.contains("\r\nAuthorization: Bearer sk_test_case\r\n"),
        "{seen}"
    );
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(
        answer.contains("\r\nContent-Type: application/json\r\n"),
        "{answer}"
    );
    assert!(answer.contains("\r\nContent-Length: 2\r\n"), "{answer}");
    assert!(answer.contains("\r\nx-vendor-trace: T1\r\n"), "{answer}");
    assert!(answer.contains("\r\nretry-after: 3\r\n"), "{answer}");
    assert!(answer.ends_with("\r\n\r\n{}"), "{answer}");
}

/// An app that lists its own framing in `Connection` (`Connection: Content-Length`) on a body
/// too large to buffer still has that body framed at the vendor: the vendor reads exactly the
/// declared bytes and nothing is left over to be read as a further request.
#[tokio::test]
async fn a_listed_content_length_still_frames_a_streamed_body() {
    const SIZE: usize = 200_000;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let vendor = listener.local_addr().unwrap();
    let (seen_tx, seen_rx) = tokio::sync::oneshot::channel::<(String, usize)>();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let (buf, end) = read_head(&mut s).await;
        let mut chunk = [0u8; 65_536];
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        // Read what the head says the body is, and no more.
        let mut body = buf.len() - end;
        while body < SIZE {
            let n = s.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the body ended early");
            body += n;
        }
        s.write_all(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n{}",
        )
        .await
        .unwrap();
        let _ = seen_tx.send((head, body));
        let _ = s.read(&mut chunk).await;
    });
    let (_sb, port) = sb_in_front_of("tryvox", vendor, "");
    let mut app = TcpStream::connect(local(port)).await.unwrap();
    let head = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: app.local\r\nContent-Type: application/json\r\n\
         Content-Length: {SIZE}\r\nConnection: Content-Length\r\n\r\n"
    );
    app.write_all(head.as_bytes()).await.unwrap();
    app.write_all(&vec![b'x'; SIZE]).await.unwrap();
    let mut answer = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, app.read(&mut answer))
        .await
        .expect("answered")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (seen, body) = tokio::time::timeout(WAIT, seen_rx).await.unwrap().unwrap();
    assert!(
        seen.contains(&format!("\r\nContent-Length: {SIZE}\r\n")),
        "{seen}"
    );
    // Exactly the body: a vendor framing it by another length would have read a different
    // count (or waited for bytes that never come).
    assert_eq!(body, SIZE, "{seen}");
}
