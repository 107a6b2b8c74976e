//! Official vendor SDKs pointed at Switchboard (issue 15; SPEC §3 "Error format per app"):
//! with `errors: vendor` the SDK sees the vendor's own error codes — for the vendor's
//! errors and for Switchboard's own — and Switchboard still counts every error by
//! canonical code. The SDKs are installed by `./dev setup` (PyPI); a missing one fails the
//! test, it does not skip it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::process::Command;

use support::*;

/// Runs the Twilio SDK script against `port`; its one JSON line.
fn twilio_sdk(port: u16) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(root().join("tests/sdk/twilio_sdk.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Twilio SDK script failed (is it installed? ./dev setup): {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

/// Runs the Telnyx SDK script against `port`; its one JSON line.
fn telnyx_sdk(port: u16) -> serde_json::Value {
    let out = Command::new("python3")
        .arg(root().join("tests/sdk/telnyx_sdk.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        // The SDK adds headers from this variable to every request; a developer's own must not
        // change what Switchboard sees.
        .env_remove("TELNYX_CUSTOM_HEADERS")
        .output()
        .expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Telnyx SDK script failed (is it installed? ./dev setup): {}{}",
        stdout,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_twilio_sdk_sees_twilio_codes_and_switchboard_counts_canonical_ones() {
    let s = sim(
        "twilio",
        "rules:\n  - match: { path_prefix: /2010-04-01/Accounts }\n    steps: [ { vendor_error: UNSUBSCRIBED_RECIPIENT } ]\n",
    )
    .await;
    let port = free_port();
    let sb = Sb::start(&vendor_yaml(
        "twilio",
        port,
        &format!("http://{}", s.addr()),
        "    profile: twilio\n    errors: vendor\n    limits: [ { rate: 1, per: 1m, burst: 1 } ]\n",
    ));
    // The vendor's own error: the SDK gets Twilio's 21610, as from api.twilio.com.
    let e = twilio_sdk(port);
    assert_eq!(e["type"], "TwilioRestException", "{e}");
    assert_eq!(
        (e["status"].as_u64(), e["code"].as_u64()),
        (Some(400), Some(21610)),
        "{e}"
    );
    // (The SDK puts "Unable to create record: " before Twilio's message.)
    let msg = e["msg"].as_str().unwrap_or("");
    assert!(
        msg.ends_with("Attempt to send to unsubscribed recipient"),
        "{e}"
    );
    // Switchboard's own 429: the SDK's native exception with Twilio's own 20429.
    let e = twilio_sdk(port);
    assert_eq!(
        (e["status"].as_u64(), e["code"].as_u64()),
        (Some(429), Some(20429)),
        "{e}"
    );
    assert_eq!(s.hits(), 1, "the second SMS never reached Twilio");
    // Both counted by canonical code.
    let m = metrics_settled(sb.admin, 2).await;
    let count = |code: &str, source: &str| {
        metric(
            &m,
            &format!("switchboard_errors_total{{code=\"{code}\",endpoint=\"other\",source=\"{source}\",vendor=\"twilio\"}}"),
        )
    };
    assert_eq!(count("consent_required", "upstream"), Some(1.0), "{m}");
    assert_eq!(count("rate_limited", "proxy"), Some(1.0), "{m}");

    // The same Twilio error for an app that asked for the canonical envelope: the SDK sees
    // its canonical 403 (no Twilio code to read), and it is counted under the same code.
    let port = free_port();
    let env_sb = Sb::start(&vendor_yaml(
        "twilio",
        port,
        &format!("http://{}", s.addr()),
        "    profile: twilio\n    errors: envelope\n",
    ));
    let e = twilio_sdk(port);
    // (With no top-level `code` in the body the SDK reports the HTTP status as the code.)
    assert_eq!(e["type"], "TwilioRestException", "{e}");
    assert_eq!(
        (e["status"].as_u64(), e["code"].as_u64()),
        (Some(403), Some(403)),
        "{e}"
    );
    assert_eq!(s.hits(), 2, "the envelope-mode SMS reached Twilio");
    let m = metrics_settled(env_sb.admin, 1).await;
    assert_eq!(
        metric(
            &m,
            "switchboard_errors_total{code=\"consent_required\",endpoint=\"other\",source=\"upstream\",vendor=\"twilio\"}"
        ),
        Some(1.0),
        "{m}"
    );

    // An unreachable Twilio: the SDK's own exception type, Switchboard's code in it.
    let port = free_port();
    let _dead = Sb::start(&vendor_yaml(
        "twilio",
        port,
        &format!("http://127.0.0.1:{}", free_port()),
        "    profile: twilio\n    errors: vendor\n    retry: { max_attempts: 1 }\n",
    ));
    let e = twilio_sdk(port);
    assert_eq!(e["type"], "TwilioRestException", "{e}");
    assert_eq!(
        (e["status"].as_u64(), e["code"].as_str()),
        (Some(503), Some("upstream_unavailable")),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_telnyx_sdk_sees_telnyx_codes_and_switchboard_counts_canonical_ones() {
    let s = sim(
        "telnyx",
        "rules:\n  - match: { path_prefix: /v2/messages }\n    steps: [ { vendor_error: BLOCKED_DUE_TO_STOP_MESSAGE } ]\n",
    )
    .await;
    let port = free_port();
    let sb = Sb::start(&vendor_yaml(
        "telnyx",
        port,
        &format!("http://{}", s.addr()),
        "    profile: telnyx\n    errors: vendor\n    limits: [ { rate: 1, per: 1m, burst: 1 } ]\n",
    ));
    // The vendor's own error: Telnyx's 409 with its 40300, as from api.telnyx.com/v2.
    let e = telnyx_sdk(port);
    assert_eq!(e["type"], "ConflictError", "{e}");
    assert_eq!(e["api_status_error"], true, "{e}");
    assert_eq!(e["status"].as_u64(), Some(409), "{e}");
    assert_eq!(e["codes"], serde_json::json!(["40300"]), "{e}");
    assert_eq!(
        e["body"]["errors"][0]["title"], "Blocked due to STOP message",
        "{e}"
    );
    let sent = s.requests();
    assert_eq!(
        sent.first().map(|r| r.path.as_str()),
        Some("/v2/messages"),
        "the SDK's path reached the vendor unchanged"
    );
    // Switchboard's own 429: the SDK's RateLimitError with Telnyx's own 10011.
    let e = telnyx_sdk(port);
    assert_eq!(e["type"], "RateLimitError", "{e}");
    assert_eq!(e["rate_limit_error"], true, "{e}");
    assert_eq!(e["status"].as_u64(), Some(429), "{e}");
    assert_eq!(e["codes"], serde_json::json!(["10011"]), "{e}");
    assert_eq!(e["body"]["errors"][0]["title"], "Too many requests", "{e}");
    assert_eq!(s.hits(), 1, "the second message never reached Telnyx");
    // Both counted by canonical code.
    let m = metrics_settled(sb.admin, 2).await;
    let count = |m: &str, code: &str, source: &str| {
        metric(
            m,
            &format!("switchboard_errors_total{{code=\"{code}\",endpoint=\"other\",source=\"{source}\",vendor=\"telnyx\"}}"),
        )
    };
    assert_eq!(count(&m, "consent_required", "upstream"), Some(1.0), "{m}");
    assert_eq!(count(&m, "rate_limited", "proxy"), Some(1.0), "{m}");

    // The same Telnyx error for an app that asked for the canonical envelope: the SDK raises
    // for the canonical 403 and the envelope is its `.body`; counted under the same code.
    let port = free_port();
    let env_sb = Sb::start(&vendor_yaml(
        "telnyx",
        port,
        &format!("http://{}", s.addr()),
        "    profile: telnyx\n    errors: envelope\n",
    ));
    let e = telnyx_sdk(port);
    assert_eq!(e["type"], "PermissionDeniedError", "{e}");
    assert_eq!(e["status"].as_u64(), Some(403), "{e}");
    assert_eq!(
        e["codes"],
        serde_json::json!([]),
        "no Telnyx `errors` array: {e}"
    );
    let env = &e["body"]["error"];
    assert_eq!(env["code"], "consent_required", "{e}");
    assert_eq!(env["source"], "upstream", "{e}");
    assert_eq!(env["retryable"], false, "{e}");
    assert_eq!(env["upstream"]["status"].as_u64(), Some(409), "{e}");
    assert_eq!(env["upstream"]["code"], "40300", "{e}");
    assert_eq!(s.hits(), 2, "the envelope-mode message reached Telnyx");
    let m = metrics_settled(env_sb.admin, 1).await;
    assert_eq!(count(&m, "consent_required", "upstream"), Some(1.0), "{m}");

    // An unreachable Telnyx: Switchboard answers, so the SDK raises for an HTTP 503
    // (InternalServerError) — not APIConnectionError, which it keeps for no answer at all —
    // with Switchboard's canonical code in Telnyx's `errors` shape.
    let port = free_port();
    let dead = Sb::start(&vendor_yaml(
        "telnyx",
        port,
        &format!("http://127.0.0.1:{}", free_port()),
        "    profile: telnyx\n    errors: vendor\n    retry: { max_attempts: 1 }\n",
    ));
    let e = telnyx_sdk(port);
    assert_eq!(e["type"], "InternalServerError", "{e}");
    assert_eq!(e["api_status_error"], true, "{e}");
    assert_eq!(e["status"].as_u64(), Some(503), "{e}");
    assert_eq!(
        e["codes"],
        serde_json::json!(["upstream_unavailable"]),
        "{e}"
    );
    let m = metrics_settled(dead.admin, 1).await;
    assert_eq!(count(&m, "upstream_unavailable", "proxy"), Some(1.0), "{m}");
}
