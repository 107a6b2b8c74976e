//! HTTP/1.1 pipelining (RFC 9112 §9.3.2), through the real binary: requests a client writes
//! in one go, before reading any answer, are each answered once, in order, on the same
//! connection — a POST with a body and an error among them. Where a connection cannot be
//! kept, the answer says `Connection: close` and the connection closes: the client knows to
//! send the rest again, and no request is left waiting.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::*;

const SCENARIO: &str = r#"rules:
  - match: { method: POST, path_prefix: /v1/calls }
    steps: [ { status: 201, json: { id: call_1 } } ]
  - match: { path_prefix: /v1/verify }
    steps: [ { vendor_error: VERIFICATION_FAILED } ]
"#;

/// A GET whose request id names its place in the line.
fn numbered_get(i: usize) -> Vec<u8> {
    let id = format!("pipe-{i}");
    request(
        "GET",
        &format!("/v1/numbers?i={i}"),
        &[("x-request-id", &id), ("authorization", "Bearer sk_test_p")],
        None,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_to_ten_pipelined_requests_are_answered_in_order() {
    let (s, _sb, addr) = proxied("tryvox", SCENARIO, "", &[]).await;
    let mut sent = 0;
    for n in 2..=10 {
        let all: Vec<u8> = (0..n).flat_map(numbered_get).collect();
        let mut c = Conn::open(addr).await;
        // Every request in one write: they reach Switchboard in as few reads as the kernel
        // makes of them, mostly one.
        let first = c.send(&all).await.unwrap();
        let mut answers = vec![first];
        for _ in 1..n {
            answers.push(c.read_response().await.unwrap());
        }
        for (i, r) in answers.iter().enumerate() {
            assert_eq!(r.status, 200, "request {i} of {n}: {}", r.text());
            assert_eq!(r.header("x-request-id"), Some(format!("pipe-{i}").as_str()));
            assert!(!r.truncated);
        }
        // The connection is still open for more.
        let again = c.send(&numbered_get(99)).await.unwrap();
        assert_eq!(again.header("x-request-id"), Some("pipe-99"));
        sent += n + 1;
        // The vendor got each one once, in the order sent.
        let seen = s.requests();
        assert_eq!(seen.len(), sent, "n = {n}");
        let paths: Vec<_> = seen[sent - n - 1..]
            .iter()
            .map(|r| r.path.clone())
            .collect();
        let want: Vec<_> = (0..n)
            .map(|i| format!("/v1/numbers?i={i}"))
            .chain(["/v1/numbers?i=99".to_string()])
            .collect();
        assert_eq!(paths, want);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_with_a_body_and_an_error_in_the_middle_keep_their_places() {
    let (s, _sb, addr) = proxied("tryvox", SCENARIO, "", &[]).await;
    let auth = ("authorization", "Bearer sk_test_p");
    let body = br#"{"to":"+15550001111","from":"+15550002222"}"#;
    // A chunked body too: its end is only known by parsing it.
    let chunked = b"POST /v1/calls HTTP/1.1\r\nHost: app.local\r\nAuthorization: Bearer sk_test_p\r\nX-Request-Id: pipe-chunked\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\n";
    let mut all = Vec::new();
    all.extend(numbered_get(0));
    all.extend(request(
        "POST",
        "/v1/calls",
        &[auth, ("x-request-id", "pipe-post")],
        Some(body),
    ));
    all.extend(request(
        "POST",
        "/v1/verify/check",
        &[auth, ("x-request-id", "pipe-error")],
        Some(b"{}"),
    ));
    all.extend_from_slice(chunked);
    all.extend(numbered_get(4));
    let mut c = Conn::open(addr).await;
    let mut answers = vec![c.send(&all).await.unwrap()];
    for _ in 1..5 {
        answers.push(c.read_response().await.unwrap());
    }
    let got: Vec<_> = answers
        .iter()
        .map(|r| (r.status, r.header("x-request-id").unwrap_or("").to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (200, "pipe-0".to_string()),
            (201, "pipe-post".to_string()),
            (422, "pipe-error".to_string()),
            (201, "pipe-chunked".to_string()),
            (200, "pipe-4".to_string()),
        ]
    );
    assert_eq!(answers[1].json()["id"], "call_1");
    assert_eq!(answers[2].json()["error"]["code"], "verification_failed");
    let seen = s.requests();
    assert_eq!(seen.len(), 5);
    assert_eq!(
        seen[1].body,
        body.to_vec(),
        "the POST's body, byte for byte"
    );
    assert_eq!(
        seen[3].body,
        b"{\"a\":1}".to_vec(),
        "the chunked body, whole"
    );
    assert_eq!(seen[4].path, "/v1/numbers?i=4");
}

/// A request refused before its body is read (larger than `max_request_body`) leaves the
/// rest of the line unframed: its answer closes the connection, and the requests behind it
/// are not answered on it — the client sees the close and knows they were not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_ends_the_connection_says_so_and_closes() {
    let extra = "    max_request_body: 16\n";
    let (s, _sb, addr) = proxied("tryvox", SCENARIO, extra, &[]).await;
    let auth = ("authorization", "Bearer sk_test_p");
    let mut all = Vec::new();
    all.extend(numbered_get(0));
    all.extend(request(
        "POST",
        "/v1/calls",
        &[auth, ("x-request-id", "pipe-big")],
        Some(&[b'x'; 64]),
    ));
    all.extend(numbered_get(2));
    let mut c = Conn::open(addr).await;
    let first = c.send(&all).await.unwrap();
    assert_eq!(first.status, 200);
    let big = c.read_response().await.unwrap();
    assert_eq!(big.status, 413, "{}", big.text());
    assert_eq!(big.header("connection"), Some("close"));
    // Then the connection ends: nothing more is written on it.
    let rest = c.read_response().await;
    assert!(
        rest.is_err(),
        "an answer after a close: {:?}",
        rest.map(|r| r.status)
    );
    assert_eq!(s.requests().len(), 1, "only the first reached the vendor");
}

/// Garbage behind a good request: the good one is answered, the garbage gets a 400 and the
/// connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_request_behind_a_good_one_gets_400_after_it() {
    let (_s, _sb, addr) = proxied("tryvox", SCENARIO, "", &[]).await;
    let mut all = numbered_get(0);
    all.extend_from_slice(b"NOT A REQUEST\r\n\r\n");
    let mut c = Conn::open(addr).await;
    let first = c.send(&all).await.unwrap();
    assert_eq!(first.header("x-request-id"), Some("pipe-0"));
    let bad = c.read_response().await.unwrap();
    assert_eq!(bad.status, 400);
    let after = tokio::time::timeout(WAIT, c.read_response())
        .await
        .expect("the connection closes after the 400");
    assert!(after.is_err(), "an answer after the 400");
}

/// `CONNECT` would make the connection a tunnel: refused with 405, and the connection closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_is_refused_and_the_connection_closed() {
    let (s, _sb, addr) = proxied("tryvox", SCENARIO, "", &[]).await;
    let mut all =
        b"CONNECT vendor.example:443 HTTP/1.1\r\nHost: vendor.example:443\r\n\r\n".to_vec();
    all.extend(numbered_get(1));
    let mut c = Conn::open(addr).await;
    let r = c.send(&all).await.unwrap();
    assert_eq!(r.status, 405);
    let after = tokio::time::timeout(WAIT, c.read_response())
        .await
        .expect("the connection closes after the 405");
    assert!(after.is_err(), "an answer after the 405");
    assert_eq!(s.hits(), 0, "nothing reached the vendor");
}

/// A request refused before its body was read (413 on its `Content-Length`), while the client
/// is still sending that body: the client can send all of it, then reads the whole answer and
/// a clean end of the connection. Closing with the body unread would make the kernel reset
/// the connection under the client's writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_body_still_being_sent_gets_its_answer_and_a_clean_close() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let extra = "    max_request_body: 1024\n";
    let (s, _sb, addr) = proxied("tryvox", SCENARIO, extra, &[]).await;
    const BODY: usize = 4 * 1024 * 1024;
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let head = format!(
        "POST /v1/calls HTTP/1.1\r\nHost: app.local\r\nAuthorization: Bearer sk_test_p\r\n\
         Content-Type: application/json\r\nContent-Length: {BODY}\r\n\r\n"
    );
    let writer = tokio::spawn(async move {
        wr.write_all(head.as_bytes()).await?;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..BODY / chunk.len() {
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    });
    let mut answer = Vec::new();
    let end = tokio::time::timeout(WAIT, rd.read_to_end(&mut answer))
        .await
        .expect("the connection ends");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(text.contains("payload_too_large"), "{text}");
    end.expect("the answer ends with a clean close, not a reset");
    let sent = tokio::time::timeout(WAIT, writer).await.unwrap().unwrap();
    sent.expect("the whole body could be sent");
    assert_eq!(s.hits(), 0, "nothing reached the vendor");
}
