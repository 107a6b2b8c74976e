//! Config reload through the real binary (SPEC §3 "Reload"): SIGHUP and a changed file —
//! rewritten, or swapped in by a symlink exactly as Kubernetes updates a ConfigMap volume —
//! validated first, bucket state kept, refused with reasons when invalid or when only a
//! restart could apply it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;

const OK: &str = "switchboard_config_reloads_total{result=\"ok\"}";
const REFUSED: &str = "switchboard_config_reloads_total{result=\"error\"}";
const LAST_OK: &str = "switchboard_config_last_reload_successful";

/// A vendor entry with `limits` (YAML flow list) in front of `upstream`.
fn tryvox(port: u16, upstream: &str, limits: &str) -> String {
    vendor_yaml(
        "tryvox",
        port,
        upstream,
        &format!("    profile: tryvox\n    limits: {limits}\n"),
    )
}

/// Replaces `file` by `text` the way editors and config tools do: a new file renamed over it.
fn rewrite(file: &Path, text: &str) {
    let tmp = file.with_extension("yaml.new");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, file).unwrap();
}

/// `file` with `from` replaced by `to` (which must be there).
fn edit(file: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(file).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    rewrite(file, &text.replace(from, to));
}

/// Statuses of `n` calls for `key`.
async fn calls(port: u16, key: &str, n: usize) -> Vec<u16> {
    let mut out = Vec::new();
    for _ in 0..n {
        out.push(post_call(local(port), key).await.status);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_with_a_raised_limit_keeps_the_tokens_used() {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_top(
        "reload: { watch: false }\n",
        &tryvox(port, &upstream, "[ { rate: 3, per: 1m, burst: 3 } ]"),
    );
    assert_eq!(calls(port, "sk_test_reload", 4).await, [201, 201, 201, 429]);
    edit(
        &sb.config_file(),
        "rate: 3, per: 1m, burst: 3",
        "rate: 5, per: 1m, burst: 5",
    );
    // Not watching: only the signal reloads.
    sb.signal("HUP");
    until_metric(sb.admin, OK, 1.0).await;
    // 3 of 5 used: 2 more, not 5.
    assert_eq!(calls(port, "sk_test_reload", 3).await, [201, 201, 429]);
    // Another key has the new limit in full.
    assert_eq!(
        calls(port, "sk_test_other", 6).await,
        [201, 201, 201, 201, 201, 429]
    );
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(metric(&m, LAST_OK), Some(1.0));
    assert_eq!(metric(&m, REFUSED), Some(0.0));
}

/// A ConfigMap volume: `switchboard.yaml -> ..data/switchboard.yaml`, `..data -> ..<ts>/`.
/// Kubernetes updates it by writing a new `..<ts>/` and renaming a new `..data` link over
/// the old one; no signal reaches the container. The change is picked up all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_picked_up_without_a_signal() {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let (port, admin) = (free_port(), free_port());
    let upstream = format!("http://{}", s.addr());
    let text = |limits: &str| {
        format!(
            "{}reload: {{ poll: 200ms }}\nvendors:\n{}",
            preamble(admin, "5s"),
            tryvox(port, &upstream, limits)
        )
    };
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let version = |name: &str, body: &str| {
        std::fs::create_dir(root.join(name)).unwrap();
        std::fs::write(root.join(name).join("switchboard.yaml"), body).unwrap();
    };
    version(
        "..2026_12_01_v1",
        &text("[ { rate: 2, per: 1m, burst: 2 } ]"),
    );
    std::os::unix::fs::symlink("..2026_12_01_v1", root.join("..data")).unwrap();
    std::os::unix::fs::symlink("..data/switchboard.yaml", root.join("switchboard.yaml")).unwrap();
    let file = root.join("switchboard.yaml");
    let sb = Sb::start_file(dir, &file, admin);
    assert_eq!(calls(port, "sk_test_cm", 3).await, [201, 201, 429]);

    version(
        "..2026_12_01_v2",
        &text("[ { rate: 4, per: 1m, burst: 4 } ]"),
    );
    std::os::unix::fs::symlink("..2026_12_01_v2", root.join("..data_tmp")).unwrap();
    std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
    std::fs::remove_dir_all(root.join("..2026_12_01_v1")).unwrap();
    until_metric(sb.admin, OK, 1.0).await;
    assert_eq!(
        calls(port, "sk_test_cm", 3).await,
        [201, 201, 429],
        "2 of 4 used"
    );
    let shown = get(sb.admin, "/config").await;
    assert!(shown.text().contains("\"rate\": 4"), "{}", shown.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_refused_and_the_old_one_serves_on() {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let mut sb = Sb::start_top(
        "reload: { watch: false }\n",
        &tryvox(port, &upstream, "[ { rate: 2, per: 1m, burst: 2 } ]"),
    );
    let file = sb.config_file();
    let good = std::fs::read_to_string(&file).unwrap();
    edit(
        &file,
        "rate: 2, per: 1m, burst: 2",
        "rate: 2, per: 1fortnight, burst: 9",
    );
    sb.signal("HUP");
    until_metric(sb.admin, REFUSED, 1.0).await;
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(metric(&m, LAST_OK), Some(0.0));
    assert_eq!(metric(&m, OK), Some(0.0));
    // Every problem named, with file and key path.
    let log = sb.stderr();
    assert!(log.contains("config reload refused"), "{log}");
    assert!(log.contains("vendors[0].limits[0].per"), "{log}");
    assert!(log.contains("vendors[0].limits[0].burst"), "{log}");
    assert!(log.contains(&file.display().to_string()), "{log}");
    // The old config serves on: its limit of 2, and the process alive.
    assert_eq!(calls(port, "sk_test_bad", 3).await, [201, 201, 429]);
    assert!(sb.child.try_wait().unwrap().is_none());
    // Fixed: accepted, and the gauge says so.
    rewrite(
        &file,
        &good.replace("rate: 2, per: 1m, burst: 2", "rate: 3, per: 1m, burst: 3"),
    );
    sb.signal("HUP");
    until_metric(sb.admin, OK, 1.0).await;
    assert_eq!(
        metric(&get(sb.admin, "/metrics").await.text(), LAST_OK),
        Some(1.0)
    );
    assert_eq!(calls(port, "sk_test_bad", 2).await, [201, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_needs_a_restart_is_refused_and_named() {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_top(
        "reload: { watch: false }\nserver: { threads: 1 }\n",
        &tryvox(port, &upstream, "[ { rate: 2, per: 1m, burst: 2 } ]"),
    );
    let file = sb.config_file();
    let other = free_port();
    edit(
        &file,
        &format!("listen: 127.0.0.1:{port}"),
        &format!("listen: 127.0.0.1:{other}"),
    );
    edit(&file, "threads: 1", "threads: 2");
    sb.signal("HUP");
    until_metric(sb.admin, REFUSED, 1.0).await;
    let log = sb.stderr();
    assert!(log.contains("needs a restart"), "{log}");
    assert!(
        log.contains(&format!("listens on 127.0.0.1:{other}")),
        "{log}"
    );
    assert!(
        log.contains(&format!("vendor tryvox on 127.0.0.1:{port} is gone")),
        "{log}"
    );
    assert!(log.contains("server.threads changed (1 -> 2)"), "{log}");
    // Still the old listener and limit.
    assert_eq!(calls(port, "sk_test_restart", 3).await, [201, 201, 429]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_flight_across_a_reload_completes() {
    let s = sim(
        "tryvox",
        "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 201, delay: 1500ms, json: { id: slow } } ]\n",
    )
    .await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_top(
        "reload: { watch: false }\n",
        &tryvox(port, &upstream, "[ { rate: 10, per: 1m, burst: 10 } ]"),
    );
    let slow = tokio::spawn(calls(port, "sk_test_flight", 1));
    until("the vendor has the request", WAIT, || {
        (s.hits() == 1).then_some(())
    })
    .await;
    edit(
        &sb.config_file(),
        "rate: 10, per: 1m, burst: 10",
        "rate: 1, per: 1m, burst: 1",
    );
    sb.signal("HUP");
    until_metric(sb.admin, OK, 1.0).await;
    assert_eq!(slow.await.unwrap(), [201], "the request in flight was cut");
    // The new limit (1) already counts the request let through before: nothing left.
    assert_eq!(calls(port, "sk_test_flight", 1).await, [429]);
}

/// A profile is part of the config: editing it (no signal, the file watched) changes how
/// the next error is classified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_change_takes_effect_for_the_next_error() {
    let profiles = tempfile::tempdir().unwrap();
    for f in files_with_ext(&root().join("config/profiles"), "yaml") {
        std::fs::copy(&f, profiles.path().join(f.file_name().unwrap())).unwrap();
    }
    let s = sim("tryvox", "default: { vendor_error: VERIFICATION_FAILED }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_full(
        "reload: { poll: 200ms }\n",
        &tryvox(port, &upstream, "[]"),
        "5s",
        &[],
        profiles.path(),
    );
    let check = || async {
        send(
            local(port),
            &request("POST", "/v1/verify/check", &[], Some(b"{}")),
        )
        .await
    };
    let r = check().await;
    assert_eq!(r.status, 422);
    assert_eq!(
        r.json()["error"]["code"],
        "verification_failed",
        "{}",
        r.text()
    );
    edit(
        &profiles.path().join("tryvox.yaml"),
        "{ vendor: VERIFICATION_FAILED, code: verification_failed }",
        "{ vendor: VERIFICATION_FAILED, code: validation_failed }",
    );
    until_metric(sb.admin, OK, 1.0).await;
    let r = check().await;
    assert_eq!(
        r.json()["error"]["code"],
        "validation_failed",
        "{}",
        r.text()
    );
}

/// Several writes in quick succession: the process ends on the last one, and `/config`,
/// its `X-Switchboard-Config` header and `switchboard_config_info` agree on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_changes_end_on_the_last_one() {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_top(
        "reload: { poll: 100ms }\n",
        &tryvox(port, &upstream, "[ { rate: 10, per: 1m, burst: 10 } ]"),
    );
    let file = sb.config_file();
    let first = get(sb.admin, "/config").await;
    let first_hash = first.header("x-switchboard-config").unwrap().to_string();
    let original = std::fs::read_to_string(&file).unwrap();
    for rate in [11, 12, 13, 14, 3] {
        rewrite(
            &file,
            &original.replace(
                "rate: 10, per: 1m, burst: 10",
                &format!("rate: {rate}, per: 1m, burst: {rate}"),
            ),
        );
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    let deadline = Instant::now() + WAIT;
    let shown = loop {
        let r = get(sb.admin, "/config").await;
        if r.text().contains("\"rate\": 3,") || r.text().contains("\"rate\": 3\n") {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "never reached the last write: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let hash = shown.header("x-switchboard-config").unwrap().to_string();
    assert_ne!(hash, first_hash);
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(
        metric(&m, &format!("switchboard_config_info{{hash=\"{hash}\"}}")),
        Some(1.0),
        "{m}"
    );
    assert_eq!(
        metric(
            &m,
            &format!("switchboard_config_info{{hash=\"{first_hash}\"}}")
        ),
        None
    );
    assert_eq!(calls(port, "sk_test_rapid", 4).await, [201, 201, 201, 429]);
}

/// Shared limits across a reload: the same quota store, the same Redis buckets (their names
/// come from where the limit sits), so what the fleet used is still used; decisions stay in
/// Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shared_limits_keep_working_across_a_reload() {
    let redis = support::redis::Redis::start();
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_top(
        &format!(
            "reload: {{ watch: false }}\nquota_store: {{ redis: '{}', timeout: 50ms }}\n",
            redis.url()
        ),
        &tryvox(
            port,
            &upstream,
            "[ { rate: 3, per: 1m, burst: 3, shared: true } ]",
        ),
    );
    until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    assert_eq!(calls(port, "sk_test_shared_reload", 2).await, [201, 201]);
    edit(
        &sb.config_file(),
        "rate: 3, per: 1m, burst: 3, shared: true",
        "rate: 4, per: 1m, burst: 4, shared: true",
    );
    sb.signal("HUP");
    until_metric(sb.admin, OK, 1.0).await;
    // 2 of 4 used in Redis: 2 more.
    assert_eq!(
        calls(port, "sk_test_shared_reload", 3).await,
        [201, 201, 429]
    );
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(0.0));
    let asked = metric(&m, "switchboard_quota_store_duration_seconds_count").unwrap_or(0.0);
    assert!(asked >= 5.0, "{asked} decisions in Redis");
    assert_eq!(s.hits(), 4);
}

/// Reading the API key from another header makes every key a new one (their bucket state
/// is under the old reading), as README "Changing the config" says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_key_header_starts_every_key_afresh() {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let port = free_port();
    let upstream = format!("http://{}", s.addr());
    let sb = Sb::start_top(
        "reload: { watch: false }\n",
        &tryvox(port, &upstream, "[ { rate: 2, per: 1m, burst: 2 } ]"),
    );
    assert_eq!(calls(port, "sk_test_moved", 3).await, [201, 201, 429]);
    edit(
        &sb.config_file(),
        "    profile: tryvox\n",
        "    profile: tryvox\n    key: { header: x-api-key }\n",
    );
    sb.signal("HUP");
    until_metric(sb.admin, OK, 1.0).await;
    let moved = request(
        "POST",
        "/v1/calls",
        &[("x-api-key", "sk_test_moved")],
        Some(b"{}"),
    );
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(send(local(port), &moved).await.status);
    }
    assert_eq!(
        got,
        [201, 201, 429],
        "the same key, read from its new header, starts full"
    );
}
