//! Golden files for the normaliser: `tests/fixtures/normalize/<profile>/<case>.http` is a
//! vendor response as sent (status line, headers, raw body); `<case>.expected.json` is what
//! Switchboard answers. `UPDATE_GOLDEN=1 cargo test --test normalize_golden` rewrites the
//! expected files; review the diff.
//!
//! Fixture directives (removed before normalising): `X-Fixture-Gzip: 1` gzips the body and
//! sets `Content-Encoding: gzip`; `X-Fixture-Path: /p` is the request path.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};
use switchboard::normalize::capture::{self, Capture};
use switchboard::normalize::{self, Profile};

/// Golden runs pretend it is 2024-01-24T23:59:00Z, so epoch reset headers are stable.
fn now() -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(1_706_140_740)
}

fn profile_for(dir: &str) -> Profile {
    let root = support::root();
    for base in [
        root.join("config/profiles"),
        root.join("tests/fixtures/profiles"),
    ] {
        if base.join(format!("{dir}.yaml")).is_file() || dir == "generic" {
            return Profile::load(&base, dir).unwrap_or_else(|e| panic!("profile {dir}: {e:?}"));
        }
    }
    panic!("no profile for fixture folder {dir}");
}

/// What the app would receive, as JSON.
fn answer(profile: &Profile, vendor: &str, f: &Capture) -> Value {
    let Some(n) = normalize::answer(profile, vendor, "sb-golden", &f.response(), now()) else {
        return json!({ "passthrough": true });
    };
    let env = &n.envelope;
    let headers: serde_json::Map<String, Value> = env
        .headers()
        .map(|(k, v)| {
            (
                k.to_string(),
                Value::String(v.to_str().unwrap().to_string()),
            )
        })
        .collect();
    json!({
        "status": env.status(),
        "headers": headers,
        "unprocessed": n.unprocessed,
        "body": serde_json::to_value(env).unwrap(),
    })
}

fn run_folder(dir: &Path, update: bool, failures: &mut Vec<String>) -> usize {
    let name = dir.file_name().unwrap().to_string_lossy().to_string();
    let profile = profile_for(&name);
    let mut n = 0;
    for case in support::files_with_ext(dir, "http") {
        n += 1;
        let f = capture::parse(&std::fs::read(&case).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", case.display()));
        let got = serde_json::to_string_pretty(&answer(&profile, &name, &f)).unwrap() + "\n";
        let golden = case.with_extension("expected.json");
        if update {
            std::fs::write(&golden, &got).unwrap();
        } else if std::fs::read_to_string(&golden).unwrap_or_default() != got {
            failures.push(format!("{}:\n{got}", case.display()));
        }
    }
    n
}

#[test]
fn golden_files() {
    let base = support::root().join("tests/fixtures/normalize");
    let update = std::env::var_os("UPDATE_GOLDEN").is_some();
    let mut failures = Vec::new();
    let mut total = 0;
    let mut dirs: Vec<_> = std::fs::read_dir(&base)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    dirs.sort();
    for d in dirs {
        total += run_folder(&d, update, &mut failures);
    }
    assert!(total >= 50, "only {total} fixtures");
    assert!(
        failures.is_empty(),
        "{} golden mismatches:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

/// Every documented example of every seed vendor has a fixture (so the profile is built from
/// all of them).
#[test]
fn every_profile_example_has_a_fixture() {
    let root = support::root();
    let profiles = support::files_with_ext(&root.join("config/profiles"), "yaml");
    assert!(profiles.len() >= 5);
    for f in profiles {
        let vendor = f.file_stem().unwrap().to_str().unwrap();
        let dialect =
            switchboard::simulator::Dialect::load(&root.join("config/profiles"), vendor).unwrap();
        for name in dialect.examples.keys() {
            let file = root.join(format!(
                "tests/fixtures/normalize/{vendor}/{}.http",
                name.to_lowercase()
            ));
            assert!(
                file.is_file(),
                "no fixture for {vendor} example {name}: {}",
                file.display()
            );
        }
    }
}

fn case(vendor: &str, name: &str) -> Value {
    let f = capture::parse(
        &std::fs::read(
            support::root().join(format!("tests/fixtures/normalize/{vendor}/{name}.http")),
        )
        .unwrap(),
    )
    .unwrap();
    answer(&profile_for(vendor), vendor, &f)
}

#[test]
fn seed_traps() {
    // TryVox MAX_ATTEMPTS_EXCEEDED: a 429 that is not a rate limit, never retried.
    let v = case("tryvox", "max_attempts_exceeded");
    assert_eq!(v["body"]["error"]["code"], "too_many_attempts");
    assert_eq!(v["body"]["error"]["retryable"], false);
    // TryVox DELIVERY_FAILED: a 502 that was processed.
    let v = case("tryvox", "delivery_failed");
    assert_eq!(
        (v["status"].as_u64(), v["body"]["error"]["code"].as_str()),
        (Some(502), Some("delivery_failed"))
    );
    assert_eq!(v["body"]["error"]["retryable"], false);
    // Telephony.io 402 keeps its extra fields in upstream.body.
    let v = case("telephony_io", "insufficient_balance");
    assert_eq!(v["body"]["error"]["code"], "insufficient_credits");
    assert_eq!(
        v["body"]["error"]["upstream"]["body"]["required_credits"],
        1.5
    );
    assert_eq!(
        v["body"]["error"]["upstream"]["body"]["current_balance"],
        0.25
    );
    // Agent platform: epoch X-RateLimit-Reset, and 503 asks for 30 s+.
    let v = case("agent_platform", "rate_limited");
    assert_eq!(v["body"]["error"]["retry_after_s"], 60);
    assert_eq!(v["headers"]["retry-after"], "60");
    let v = case("agent_platform", "service_unavailable");
    assert_eq!(v["body"]["error"]["retry_after_s"], 30);
    assert_eq!(v["unprocessed"], true);
    let v = case("agent_platform", "name_in_use");
    assert_eq!(v["body"]["error"]["code"], "conflict");
    assert_eq!(v["body"]["error"]["upstream"]["request_id"], "req_abc123");
    // SPEC §5: the vendor's code beats a status-only rule — a 429 out of credit is not a
    // rate limit (not retried, pauses nothing), in both profiles that have a 429 rule.
    for (vendor, case_name) in [
        ("agent_platform", "quota_exceeded_429"),
        ("line_platform", "insufficient_credits_429"),
    ] {
        let v = case(vendor, case_name);
        assert_eq!(
            v["body"]["error"]["code"], "insufficient_credits",
            "{vendor}"
        );
        assert_eq!(v["body"]["error"]["retryable"], false, "{vendor}");
        assert_eq!(v["unprocessed"], Value::Null, "{vendor}");
    }
    // ...and the status-only rule still decides a code the map does not know.
    let v = case("agent_platform", "rate_limited_unknown_code");
    assert_eq!(v["body"]["error"]["code"], "rate_limited");
    assert_eq!(v["unprocessed"], true);
    // A 409 with the seed's validation_error code is a conflict whatever the message.
    let v = case("agent_platform", "duplicate_resource");
    assert_eq!(v["body"]["error"]["code"], "conflict");
    // TryVox details survive as {field, reason}.
    let v = case("tryvox", "validation_failed");
    assert_eq!(
        v["body"]["error"]["details"][1],
        json!({"field": "from", "reason": "required field missing"})
    );
}
