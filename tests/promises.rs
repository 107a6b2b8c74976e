//! README promises that no other test checks, end to end through the real binary and the
//! in-process simulator: WebSocket upgrades pass through with their bytes unchanged both
//! ways, hop-by-hop headers in the vendor's response never reach the app, and a retry that
//! gets no rate-limit token is not sent.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The handshake example of RFC 6455 §1.3: this key must be answered with this accept.
const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// A client-to-server WebSocket frame (RFC 6455 §5.2): FIN set, `opcode`, masked with `mask`,
/// as a browser would send it. The simulator echoes raw bytes, so what comes back is this
/// frame exactly.
fn ws_frame(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n @ 0..=125 => f.push(0x80 | n as u8),
        n @ 126..=0xFFFF => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// Reads exactly `n` bytes, failing the test if they do not come within [`WAIT`].
async fn read_exactly(stream: &mut TcpStream, n: usize) -> Vec<u8> {
    let mut buf = vec![0u8; n];
    tokio::time::timeout(WAIT, stream.read_exact(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{n} bytes did not come back within {WAIT:?}"))
        .expect("read");
    buf
}

/// Reads a response head byte by byte (so nothing after it is consumed) and parses it.
async fn read_head(stream: &mut TcpStream) -> (u16, Vec<(String, String)>) {
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut b = [0u8; 1];
        let n = tokio::time::timeout(WAIT, stream.read(&mut b))
            .await
            .expect("response head in time")
            .expect("read");
        assert!(
            n == 1,
            "closed inside the response head: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(b[0]);
    }
    let mut hs = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut hs);
    assert!(
        matches!(r.parse(&head), Ok(httparse::Status::Complete(_))),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (r.code.unwrap_or(0), header_pairs(r.headers))
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_upgrade_passes_through_and_bytes_flow_both_ways_unchanged() {
    let scenario =
        "rules:\n  - match: { path_prefix: /media }\n    steps: [ { action: upgrade } ]\n";
    let (s, _sb, addr) = proxied("tryvox", scenario, "", &[]).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let handshake = format!(
        "GET /media?call=c_1 HTTP/1.1\r\nHost: app.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nAuthorization: Bearer sk_test_ws\r\n\r\n"
    );
    stream.write_all(handshake.as_bytes()).await.unwrap();
    let (status, headers) = read_head(&mut stream).await;
    assert_eq!(status, 101, "{headers:?}");
    assert_eq!(header(&headers, "upgrade"), Some("websocket"));
    assert!(
        header(&headers, "connection").is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{headers:?}"
    );
    assert_eq!(header(&headers, "sec-websocket-accept"), Some(WS_ACCEPT));

    // The vendor got the upgrade as the app sent it.
    let seen = s.requests();
    assert_eq!(seen.len(), 1);
    let up = &seen[0];
    assert_eq!(
        (up.method.as_str(), up.path.as_str()),
        ("GET", "/media?call=c_1")
    );
    assert_eq!(up.header("upgrade"), Some("websocket"));
    assert!(
        up.header("connection")
            .is_some_and(|v| v.to_ascii_lowercase().contains("upgrade")),
        "{:?}",
        up.headers
    );
    assert_eq!(up.header("sec-websocket-key"), Some(WS_KEY));
    assert_eq!(up.header("sec-websocket-version"), Some("13"));
    assert_eq!(up.header("authorization"), Some("Bearer sk_test_ws"));

    // Frames and raw bytes, each echoed by the vendor: what comes back is what was sent.
    // Every byte value, CR LF included, so nothing is read as HTTP on the way; and 200 KiB
    // of audio-like binary, more than one read or write.
    let every_byte: Vec<u8> = (0..=255u8).collect();
    let audio: Vec<u8> = (0..200 * 1024u32).map(|i| (i * 31 % 251) as u8).collect();
    let rounds = [
        ws_frame(0x1, br#"{"event":"start","streamSid":"s_1"}"#, [1, 2, 3, 4]),
        ws_frame(0x2, &every_byte, [0xde, 0xad, 0xbe, 0xef]),
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec(),
        ws_frame(0x2, &audio, [9, 8, 7, 6]),
    ];
    for (i, out) in rounds.iter().enumerate() {
        stream.write_all(out).await.unwrap();
        let back = read_exactly(&mut stream, out.len()).await;
        assert!(back == *out, "round {i}: the echo differs");
    }
    assert_eq!(s.hits(), 1, "upgraded bytes are not requests");

    // The app ends the stream: the vendor sees it end and closes, and so does Switchboard.
    stream.shutdown().await.unwrap();
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, stream.read_to_end(&mut rest))
        .await
        .expect("the upgraded connection closes after the app's close")
        .unwrap();
    assert_eq!(
        n,
        0,
        "nothing after the echo: {:?}",
        String::from_utf8_lossy(&rest)
    );
}

/// Headers the vendor sends that are meant for the hop between it and Switchboard only.
const HOP_HEADERS: &str = "{ connection: \"close, x-hop\", x-hop: \"1\", keep-alive: \"timeout=5, max=100\", proxy-connection: keep-alive, trailer: x-checksum, te: trailers, x-end: kept }";

/// What README promises is dropped from a response (see `src/headers.rs`): `Connection` and
/// what it lists, `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`.
fn assert_no_hop_headers(r: &Resp, what: &str) {
    for name in ["x-hop", "keep-alive", "proxy-connection", "trailer", "te"] {
        assert_eq!(
            r.header(name),
            None,
            "{what}: {name} reached the app: {:?}",
            r.headers
        );
    }
    // Switchboard's own `Connection` to the app may be there; the vendor's may not.
    for (k, v) in &r.headers {
        if k == "connection" {
            let v = v.to_ascii_lowercase();
            assert!(
                !v.contains("x-hop") && !v.contains("close"),
                "{what}: connection: {v}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_in_vendor_responses_never_reach_the_app() {
    let scenario = format!(
        "rules:\n  - match: {{ path_prefix: /v1/recordings }}\n    steps: [ {{ status: 200, body_size: 100000, chunked: true, headers: {HOP_HEADERS} }} ]\n  - match: {{ path_prefix: /v1/verify }}\n    steps: [ {{ vendor_error: VERIFICATION_FAILED, headers: {HOP_HEADERS} }} ]\n"
    );
    let (s, _sb, addr) = proxied("tryvox", &scenario, "", &[]).await;
    let mut conn = Conn::open(addr).await;

    // A streamed success: the vendor's other headers come through, its hop headers do not.
    let r = conn
        .send(&request("GET", "/v1/recordings/r_1", &[], None))
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    assert!(r.body == switchboard::simulator::pattern_body(100_000) && !r.truncated);
    assert_eq!(
        r.header("x-end"),
        Some("kept"),
        "the vendor's headers are forwarded"
    );
    assert_no_hop_headers(&r, "streamed 2xx");

    // An error envelope built from the vendor's 422, on the same connection: the vendor's
    // `Connection: close` was for its own hop, so the app's connection stays open.
    let r = conn
        .send(&request(
            "POST",
            "/v1/verify/check",
            &[],
            Some(b"{\"code\":\"000000\"}"),
        ))
        .await
        .unwrap();
    assert_eq!(r.status, 422, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "verification_failed");
    assert_eq!(v["error"]["upstream"]["status"], 422);
    assert_no_hop_headers(&r, "error envelope");
    assert_eq!(s.hits(), 2);

    // A passthrough vendor hands its error over as is (status, headers, body) except for
    // the hop headers.
    let (_s, _sb, addr) = proxied("tryvox", &scenario, "    passthrough_errors: true\n", &[]).await;
    let r = send(
        addr,
        &request(
            "POST",
            "/v1/verify/check",
            &[],
            Some(b"{\"code\":\"000000\"}"),
        ),
    )
    .await;
    assert_eq!(r.status, 422);
    assert!(r.text().contains("VERIFICATION_FAILED"), "{}", r.text());
    assert_eq!(
        r.header("x-end"),
        Some("kept"),
        "the vendor's headers are forwarded"
    );
    assert_no_hop_headers(&r, "passthrough error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_that_gets_no_rate_limit_token_is_not_sent() {
    // One token per 10 s: the first attempt takes it, so the retry the 503 calls for finds
    // none and stops; the app gets the vendor's 503 as its answer.
    let extra = "    retry: { backoff: { base: 5ms, max: 20ms } }\n    limits: [ { rate: 1, per: 10s, burst: 1 } ]\n";
    let (s, sb, addr) = proxied("tryvox", "default: { status: 503 }\n", extra, &[]).await;
    let started = std::time::Instant::now();
    let r = send(
        addr,
        &request(
            "GET",
            "/v1/numbers",
            &[("authorization", "Bearer sk_test_rl")],
            None,
        ),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "waited for a token instead of stopping: {:?}",
        started.elapsed()
    );
    assert_eq!(r.status, 503, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(v["error"]["source"], "upstream");
    assert_eq!(v["error"]["attempts"], 1);
    assert_eq!(s.hits(), 1, "the retry was sent without a token");

    let m = metrics_settled(sb.admin, 1).await;
    let series = |family: &str, reason: &str| {
        metric(
            &m,
            &format!("{family}{{endpoint=\"other\",reason=\"{reason}\",vendor=\"tryvox\"}}"),
        )
    };
    assert_eq!(
        series("switchboard_retry_giveups_total", "ratelimit"),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        series("switchboard_retries_total", "unavailable"),
        Some(0.0),
        "a retry that was not sent is not counted as one"
    );
}

/// Only a WebSocket handshake is relayed. An h2c upgrade is an ordinary request with its
/// upgrade dropped (a vendor accepting it would otherwise get a tunnel past the limits), and a
/// request with a body and an `Upgrade` header has its body sent like any other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_websocket_handshakes_are_relayed_other_upgrades_are_ordinary_requests() {
    let scenario =
        "rules:\n  - match: { path_prefix: /media }\n    steps: [ { action: upgrade } ]\n";
    let (s, _sb, addr) = proxied("tryvox", scenario, "", &[]).await;
    let h2c = "GET /media HTTP/1.1\r\nHost: app.local\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nAuthorization: Bearer sk_test_up\r\n\r\n";
    let r = send(addr, h2c.as_bytes()).await;
    // This vendor switches protocols on /media whatever it is asked: a switch to a request
    // that asked for none is the vendor's fault, not a tunnel for the app.
    assert_eq!(r.status, 503, "{:?} {}", r.headers, r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    let seen = s.requests();
    assert!(!seen.is_empty());
    for up in &seen {
        for h in ["upgrade", "http2-settings", "connection"] {
            assert_eq!(up.header(h), None, "{h} reached the vendor");
        }
    }
    let before = seen.len();

    let body = br#"{"hello":"vendor"}"#;
    let post = format!(
        "POST /media HTTP/1.1\r\nHost: app.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut raw = post.into_bytes();
    raw.extend_from_slice(body);
    let r = send(addr, &raw).await;
    // A POST whose answer was garbled is never sent again: it may have been processed.
    assert_eq!(r.json()["error"]["code"], "outcome_unknown", "{}", r.text());
    let seen = s.requests();
    assert_eq!(seen.len(), before + 1);
    let post = &seen[before];
    assert_eq!(post.body, body.to_vec(), "the body went with the request");
    assert_eq!(post.header("upgrade"), None);
}

/// A vendor that takes an upgrade request and never answers it is timed out like any other
/// request (`timeouts.response`), not waited on for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_silent_on_an_upgrade_is_an_upstream_timeout() {
    let scenario = "rules:\n  - match: { path_prefix: /media }\n    steps: [ { action: upgrade, delay: 30s } ]\n";
    let extra = "    timeouts: { connect: 1s, response: 500ms }\n";
    let (_s, _sb, addr) = proxied("tryvox", scenario, extra, &[]).await;
    let handshake = format!(
        "GET /media HTTP/1.1\r\nHost: app.local\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: {WS_KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    let r = tokio::time::timeout(WAIT, send(addr, handshake.as_bytes()))
        .await
        .expect("an answer, not a hang");
    assert_eq!(r.status, 504, "{}", r.text());
    assert_eq!(r.json()["error"]["code"], "upstream_timeout");
}
