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
