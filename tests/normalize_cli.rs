//! `switchboard normalize`, the real binary: the tool for writing a vendor profile.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::root;

fn run(args: &[&str], stdin: &[u8]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
        .current_dir(root())
        .arg("normalize")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// Splits the printed response into (status line, headers, JSON body).
fn printed(o: &Output) -> (String, Vec<String>, Value) {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let text = String::from_utf8(o.stdout.clone()).unwrap();
    let (head, body) = text.split_once("\n\n").unwrap();
    let mut lines = head.lines().map(str::to_string);
    let status = lines.next().unwrap();
    (status, lines.collect(), serde_json::from_str(body).unwrap())
}

#[test]
fn body_from_stdin_with_status_and_headers() {
    let o = run(
        &["--vendor", "tryvox", "--status", "429", "--header", "Retry-After: 60", "-"],
        br#"{"error":{"code":"RATE_LIMITED","message":"Rate limit exceeded. Try again in 60 seconds."}}"#,
    );
    let (status, headers, v) = printed(&o);
    assert_eq!(status, "HTTP/1.1 429 Too Many Requests");
    assert!(
        headers.contains(&"retry-after: 60".to_string()),
        "{headers:?}"
    );
    assert!(headers.contains(&"x-switchboard-error: rate_limited".to_string()));
    assert_eq!(v["error"]["code"], "rate_limited");
    assert_eq!(v["error"]["retry_after_s"], 60);
    assert_eq!(v["error"]["upstream"]["code"], "RATE_LIMITED");
}

#[test]
fn a_capture_file_gives_its_golden_envelope() {
    let o = run(
        &[
            "--vendor",
            "telephony_io",
            "tests/fixtures/normalize/telephony_io/insufficient_balance.http",
        ],
        b"",
    );
    let (status, _, v) = printed(&o);
    let golden: Value = serde_json::from_str(
        &std::fs::read_to_string(
            root().join("tests/fixtures/normalize/telephony_io/insufficient_balance.expected.json"),
        )
        .unwrap(),
    )
    .unwrap();
    assert!(
        status.starts_with(&format!("HTTP/1.1 {} ", golden["status"])),
        "{status}"
    );
    let mut want = golden["body"].clone();
    want["request_id"] = "sb-normalize".into();
    assert_eq!(v, want);
    assert!(
        v["error"]["upstream"]["body"]["required_credits"].is_number(),
        "{v}"
    );
}

#[test]
fn the_generic_detector_reads_xml() {
    let o = run(
        &["--vendor", "generic", "--status", "401", "--header", "Content-Type: application/xml", "-"],
        b"<Response><RestException><Code>20003</Code><Message>Authenticate</Message></RestException></Response>",
    );
    let (_, _, v) = printed(&o);
    assert_eq!(v["error"]["code"], "authentication_failed");
    assert_eq!(v["error"]["upstream"]["code"], "20003");
    assert_eq!(v["error"]["message"], "Authenticate");
}

#[test]
fn a_success_is_reported_as_passed_through() {
    let o = run(
        &["--vendor", "tryvox", "--status", "201", "-"],
        b"{\"id\":\"call_1\"}",
    );
    assert!(o.status.success());
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("passed through untouched"), "{out}");
}

#[test]
fn bad_input_is_a_clear_error_and_exit_1() {
    for (args, want) in [
        (
            &["--vendor", "nosuch", "--status", "400", "-"][..],
            "nosuch",
        ),
        (
            &["--vendor", "tryvox", "--status", "42", "-"][..],
            "invalid --status 42",
        ),
        (
            &[
                "--vendor", "tryvox", "--status", "400", "--header", "nocolon", "-",
            ][..],
            "nocolon",
        ),
        (&["--vendor", "tryvox", "README.md"][..], "capture"),
        (&["--vendor", "tryvox"][..], "--status"),
    ] {
        let o = run(args, b"");
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

/// The profile shown in README's "Adding a vendor" loads and does what it says.
#[test]
fn the_readme_profile_example_works() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let start = readme
        .find("   name: acme")
        .expect("README profile example");
    let end = start + readme[start..].find("```").unwrap();
    let yaml: String = readme[start..end]
        .lines()
        .map(|l| l.strip_prefix("   ").unwrap_or(l))
        .map(|l| format!("{l}\n"))
        .collect();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("acme.yaml"), yaml).unwrap();
    let profiles = dir.path().to_str().unwrap();

    let capture = b"HTTP/1.1 429 Too Many Requests\nContent-Type: application/json\nRetry-After: 30\n\n{\"error\":{\"code\":\"THROTTLED\",\"message\":\"Slow down\"}}";
    let (_, headers, v) = printed(&run(
        &["--vendor", "acme", "--profiles", profiles, "-"],
        capture,
    ));
    assert_eq!(v["error"]["code"], "rate_limited");
    assert!(headers.contains(&"retry-after: 30".to_string()));

    let capture = b"HTTP/1.1 400 Bad Request\n\n{\"error\":{\"code\":\"BAD_NUMBER\",\"message\":\"Recipient opted out\"}}";
    let (_, _, v) = printed(&run(
        &["--vendor", "acme", "--profiles", profiles, "-"],
        capture,
    ));
    assert_eq!(v["error"]["code"], "consent_required");

    // The vendor's code beats the status-only 503 rule (SPEC §5); an unknown code does not.
    let capture = b"HTTP/1.1 503 Service Unavailable\n\n{\"error\":{\"code\":\"THROTTLED\",\"message\":\"Slow down\"}}";
    let (_, _, v) = printed(&run(
        &["--vendor", "acme", "--profiles", profiles, "-"],
        capture,
    ));
    assert_eq!(v["error"]["code"], "rate_limited");
    let capture = b"HTTP/1.1 503 Service Unavailable\n\n{\"error\":{\"code\":\"DOWN\",\"message\":\"Slow down\"}}";
    let (_, _, v) = printed(&run(
        &["--vendor", "acme", "--profiles", profiles, "-"],
        capture,
    ));
    assert_eq!(v["error"]["code"], "upstream_unavailable");
    assert_eq!(v["error"]["retry_after_s"], 30);

    let (status, _, v) = printed(&run(
        &[
            "--vendor",
            "acme",
            "--profiles",
            profiles,
            "--status",
            "200",
            "--path",
            "/v1/messages",
            "-",
        ],
        br#"{"messages":[{"status":"failed"}]}"#,
    ));
    assert_eq!(v["error"]["code"], "delivery_failed");
    assert!(status.starts_with("HTTP/1.1 502"), "{status}");
}
