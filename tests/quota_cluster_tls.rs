//! The quota store against a real Redis Cluster and a real TLS-only Redis, through the real
//! binary: a fleet sharing one vendor quota through three Cluster masters, and shared
//! decisions over `rediss://` with a private CA trusted through `SSL_CERT_FILE` — and no
//! false success when the scheme or the trust is wrong.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use support::redis::{one_fleet_at_a_time, Redis, RedisCluster};
use support::*;

/// Sends `POST /v1/calls` for `key` as fast as answers come back until `until`, pausing
/// 20 ms after a 429 (an app backing off, and less spinning on 2 CPUs). Returns the
/// statuses seen.
async fn hammer(addr: SocketAddr, key: &str, until: Instant) -> Vec<u16> {
    let mut seen = Vec::new();
    let auth = format!("Bearer {key}");
    let mut conn = Conn::open(addr).await;
    while Instant::now() < until {
        let req = request(
            "POST",
            "/v1/calls",
            &[("authorization", &auth)],
            Some(b"{}"),
        );
        let r = match conn.send(&req).await {
            Ok(r) => r,
            Err(_) => {
                conn = Conn::open(addr).await;
                continue;
            }
        };
        seen.push(r.status);
        if r.status == 429 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    seen
}

/// `n` Switchboard processes in front of `upstream`, each with the top-level `store`
/// section, `extra` under the vendor entry and `env` in its environment.
fn fleet(
    n: usize,
    store: &str,
    upstream: &str,
    extra: &str,
    env: &[(&str, String)],
) -> Vec<(Sb, u16)> {
    (0..n)
        .map(|_| {
            let port = free_port();
            let vendor = vendor_yaml("tryvox", port, upstream, extra);
            (Sb::start_top_env(store, &vendor, env), port)
        })
        .collect()
}

/// One `POST /v1/calls` for `key` on a fresh connection.
async fn call(port: u16, key: &str) -> Resp {
    post_call(local(port), key).await
}

/// The vendor: 30 per 3 s per key, a sliding window, counting its own 429s.
const VENDOR_30_PER_3S: &str = "limits:\n  - { match: { path_prefix: /v1/calls }, rate: 30, per: 3s, key_header: authorization }\ndefault: { status: 201, json: { id: c } }\n";

/// The YAML flow list of `urls`, quoted.
fn yaml_list(urls: &[String]) -> String {
    let quoted: Vec<String> = urls.iter().map(|u| format!("'{u}'")).collect();
    format!("[ {} ]", quoted.join(", "))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sidecars_share_one_vendor_quota_through_a_redis_cluster() {
    let _turn = one_fleet_at_a_time().await;
    let cluster = RedisCluster::start();
    let s = sim("tryvox", VENDOR_30_PER_3S).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: {}, timeout: 250ms, expected_replicas: 2 }}\n",
        yaml_list(&cluster.urls())
    );
    // Two under the vendor's number: the GCRA holds the window on Redis's clock, the vendor
    // counts arrivals on its own, and a request admitted early but delivered late (2 busy
    // cores, other test binaries) would otherwise make a 31st in the vendor's window. Two
    // pods deciding alone would still send 56 per 3 s. The timeout is generous for the same
    // reason: a decision that times out is made on the local share instead.
    let shared = "    limits: [ { rate: 28, per: 3s, burst: 3, shared: true } ]\n";
    let pods = fleet(2, &store, &upstream, shared, &[]);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    let key = "sk_test_cluster_fleet";
    let until = Instant::now() + Duration::from_secs(6);
    let tasks: Vec<_> = pods
        .iter()
        .map(|(_, port)| tokio::spawn(hammer(local(*port), key, until)))
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    // Named in the failure: a decision that failed was made on a local share.
    let mut errors = Vec::new();
    for (sb, _) in &pods {
        let m = get(sb.admin, "/metrics").await.text();
        errors.extend(
            m.lines()
                .filter(|l| l.starts_with("switchboard_quota_store_errors_total"))
                .map(str::to_owned),
        );
    }
    let errors = errors.join("; ");
    assert_eq!(
        s.limited(),
        0,
        "the vendor answered 429: the fleet went over its quota ({errors})"
    );
    assert!(
        statuses.iter().all(|&c| c == 201 || c == 429),
        "{statuses:?}"
    );
    // 28 per 3 s for 6 s: 56 in two windows; GCRA with a burst of 3 admits
    // 3 + 6 s / (3 s / 26) = 55. Both pods pushed far more than that.
    let accepted = s.hits();
    assert!(accepted <= 58, "{accepted} accepted");
    assert!(accepted >= 49, "only {accepted} accepted");
    assert!(statuses.len() > accepted, "the load never saturated");

    // The buckets live in the cluster: the account's keys share one hash tag, so one slot,
    // so one node — the one that owns the slot. No key names the API key.
    let keys = cluster.all_keys();
    let buckets: Vec<&(u16, String)> = keys
        .iter()
        .filter(|(_, k)| k.starts_with("sb:{tryvox:"))
        .collect();
    assert!(!buckets.is_empty(), "no bucket key on any node: {keys:?}");
    let owner = cluster.owner_of(&buckets[0].1).port;
    assert!(
        buckets.iter().all(|(port, _)| *port == owner),
        "an account's keys on several nodes (node :{owner} owns their slot): {keys:?}"
    );
    assert!(
        keys.iter().all(|(_, k)| !k.contains("cluster_fleet")),
        "{keys:?}"
    );
    // Both pods heartbeat into the one replica set, wherever its slot is.
    assert!(keys.iter().any(|(_, k)| k == "sb:replicas"), "{keys:?}");
    for (sb, _) in &pods {
        let m = until_metric(sb.admin, "switchboard_quota_store_replicas", 2.0).await;
        assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(0.0));
        let asked = metric(&m, "switchboard_quota_store_duration_seconds_count");
        assert!(asked.is_some_and(|n| n > 10.0), "{asked:?}");
    }
    eprintln!(
        "accepted {accepted} of {} (at most 55 by the GCRA); keys on node :{owner}",
        statuses.len()
    );
}

/// Lines in a TLS server's log for connections it turned away during the handshake, for
/// `why` (OpenSSL's reason, e.g. `wrong version number`; `""` for any).
fn handshakes_refused(redis: &Redis, why: &str) -> usize {
    redis
        .log()
        .lines()
        .filter(|l| l.contains("Error accepting a client connection") && l.contains(why))
        .count()
}

/// Three shared per minute, burst 3: the fleet's whole minute is three requests.
const SHARED_3_PER_MIN: &str = "    limits: [ { rate: 3, per: 1m, burst: 3, shared: true } ]\n";

/// Two pods with `store` (TLS, its CA in `ca`, trusted through `SSL_CERT_FILE` only) share
/// three requests a minute for one key: both leave fallback, the first three requests,
/// alternating pods, reach the vendor, the next two are Switchboard's own 429 whichever
/// pod answers, and every pod decided in Redis. Returns the fleet, for looking inside.
async fn two_pods_share_three_a_minute(store: &str, ca: &Path) -> Vec<(Sb, u16)> {
    assert!(store.contains("rediss://127.0.0.1:"), "{store}");
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let upstream = format!("http://{}", s.addr());
    let env = [("SSL_CERT_FILE", ca.display().to_string())];
    let pods = fleet(2, store, &upstream, SHARED_3_PER_MIN, &env);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    for port in [pods[0].1, pods[1].1, pods[0].1] {
        let r = call(port, TLS_KEY).await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    for port in [pods[1].1, pods[0].1] {
        let r = call(port, TLS_KEY).await;
        assert_eq!(r.status, 429, "{}", r.text());
        let v = r.json();
        assert_eq!(v["error"]["source"], "proxy", "{v}");
    }
    assert_eq!(s.hits(), 3, "the vendor saw more than the fleet's three");
    for (sb, _) in &pods {
        let m = get(sb.admin, "/metrics").await.text();
        assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(0.0));
        let asked = metric(&m, "switchboard_quota_store_duration_seconds_count");
        assert!(asked.is_some_and(|n| n >= 2.0), "{asked:?}");
    }
    pods
}

/// The API key [`two_pods_share_three_a_minute`] sends.
const TLS_KEY: &str = "sk_test_tls_fleet";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_the_private_ca_in_ssl_cert_file_shares_decisions() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start_tls();
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 500ms, expected_replicas: 2 }}\n",
        redis.url()
    );
    two_pods_share_three_a_minute(&store, redis.tls_ca().unwrap()).await;
    // The buckets are in the TLS server, and carry no API key.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("sb:{tryvox:"), "{keys}");
    assert!(!keys.contains("tls_fleet"), "{keys}");
    assert_eq!(handshakes_refused(&redis, ""), 0, "{}", redis.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_redis_cluster_shares_decisions() {
    let _turn = one_fleet_at_a_time().await;
    let cluster = RedisCluster::start_tls();
    let urls = cluster.urls();
    let store = format!(
        "quota_store: {{ redis: {}, timeout: 500ms, expected_replicas: 2 }}\n",
        yaml_list(&urls)
    );
    let ca = cluster.nodes[0].tls_ca().unwrap();
    two_pods_share_three_a_minute(&store, ca).await;
    let keys = cluster.all_keys();
    let buckets: Vec<_> = keys
        .iter()
        .filter(|(_, k)| k.starts_with("sb:{tryvox:"))
        .collect();
    assert!(!buckets.is_empty(), "{keys:?}");
    assert!(
        keys.iter().all(|(_, k)| !k.contains("tls_fleet")),
        "{keys:?}"
    );
    for n in &cluster.nodes {
        assert_eq!(handshakes_refused(n, ""), 0, "{}", n.log());
    }
}

/// A pod that cannot make a session with the TLS server (`store` is wrong for it) stays on
/// its local share: once the server has turned away three of its probes for `why`, it still
/// reports fallback, has asked Redis nothing, and answers from its share
/// (`rate / expected_replicas`, here one request of 2 per minute).
async fn stays_in_fallback(redis: &Redis, why: &str, store: &str, env: &[(&str, String)]) {
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let upstream = format!("http://{}", s.addr());
    let extra = "    limits: [ { rate: 2, per: 1m, burst: 2, shared: true } ]\n";
    let pods = fleet(1, store, &upstream, extra, env);
    let (sb, port) = &pods[0];
    until(&format!("three handshakes refused for {why}"), WAIT, || {
        (handshakes_refused(redis, why) >= 3).then_some(())
    })
    .await;
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(1.0));
    assert_eq!(
        metric(&m, "switchboard_quota_store_duration_seconds_count"),
        Some(0.0)
    );
    let r = call(*port, "sk_test_fallback").await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = call(*port, "sk_test_fallback").await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(s.hits(), 1);
    let m = get(sb.admin, "/metrics").await.text();
    assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(1.0));
    assert_eq!(redis.cli(&["DBSIZE"]), "0", "something reached Redis");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_redis_url_to_a_tls_port_stays_in_fallback() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start_tls();
    let plain = redis.url().replacen("rediss://", "redis://", 1);
    let store =
        format!("quota_store: {{ redis: '{plain}', timeout: 50ms, expected_replicas: 2 }}\n");
    let ca = redis.tls_ca().unwrap().display().to_string();
    // The server reads the pod's plaintext as a broken TLS record.
    stays_in_fallback(
        &redis,
        "wrong version number",
        &store,
        &[("SSL_CERT_FILE", ca)],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_without_the_ca_trusted_stays_in_fallback() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start_tls();
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 2 }}\n",
        redis.url()
    );
    // rustls rejects the certificate for its issuer alone (the names match: the trusted
    // case above passes with the same certificate), and tells the server so.
    stays_in_fallback(&redis, "unknown ca", &store, &[]).await;
}

/// `#insecure` (redis-rs's switch to skip certificate checks) is refused by `check-config`
/// and at start, by name: this build has no such mode, and a pod that kept trying would sit
/// in fallback with no visible reason.
#[test]
fn rediss_insecure_fragment_is_refused_by_check_config() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("switchboard.yaml");
    std::fs::write(
        &file,
        "quota_store: { redis: 'rediss://127.0.0.1:6380/#insecure' }\nvendors:\n  - name: tryvox\n    listen: 127.0.0.1:0\n    upstream: http://127.0.0.1:9\n    limits: [ { rate: 3, per: 1m, shared: true } ]\n",
    )
    .unwrap();
    for args in [vec!["check-config"], vec![]] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["--config", file.to_str().unwrap()])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {err}");
        assert!(
            err.contains("quota_store.redis: invalid Redis URL")
                && err.contains("#insecure is not supported"),
            "{args:?}: {err}"
        );
    }
}
