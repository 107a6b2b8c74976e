//! Fleet quotas end to end: several real Switchboard processes sharing one real
//! `redis-server`, in front of a simulator that enforces the vendor's own window per key and
//! counts the 429s it sends. Per-pod limits would let three sidecars send three times the
//! vendor's number; shared ones must hold it for the fleet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::redis::Redis;
use support::*;

/// Sends `POST /v1/calls` for `key` as fast as answers come back until `until`, pausing
/// 20 ms after a 429 (an app backing off, and less spinning on 2 CPUs). Returns the
/// statuses seen.
async fn hammer(addr: SocketAddr, key: String, until: Instant) -> Vec<u16> {
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
/// section and `extra` under the vendor entry.
fn fleet(n: usize, store: &str, upstream: &str, extra: &str) -> Vec<(Sb, u16)> {
    (0..n)
        .map(|_| {
            let port = free_port();
            (
                Sb::start_top(store, &vendor_yaml("tryvox", port, upstream, extra)),
                port,
            )
        })
        .collect()
}

/// The vendor: 30 per 3 s per key, a sliding window, counting its own 429s.
const VENDOR_30_PER_3S: &str = "limits:\n  - { match: { path_prefix: /v1/calls }, rate: 30, per: 3s, key_header: authorization }\ndefault: { status: 201, json: { id: c } }\n";

/// Switchboard's side: the vendor's number, shared.
const SHARED_30_PER_3S: &str = "    limits: [ { rate: 30, per: 3s, burst: 3, shared: true } ]\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_share_one_vendor_quota() {
    let redis = Redis::start();
    let s = sim("tryvox", VENDOR_30_PER_3S).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 3 }}\n",
        redis.url()
    );
    let pods = fleet(3, &store, &upstream, SHARED_30_PER_3S);
    // Start-up never waits for Redis: each pod begins on its local share. Load starts once
    // every pod decides in Redis (the fallback test covers the other case).
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    let until = Instant::now() + Duration::from_secs(9);
    let mut tasks = Vec::new();
    for (_, port) in &pods {
        for key in ["sk_test_fleet_A", "sk_test_fleet_B"] {
            tasks.push(tokio::spawn(hammer(local(*port), key.to_string(), until)));
        }
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let accepted = s.hits() - s.limited();
    assert_eq!(
        s.limited(),
        0,
        "the vendor answered 429: the fleet went over its quota"
    );
    assert!(
        statuses.iter().all(|&c| c == 201 || c == 429),
        "{statuses:?}"
    );
    // Two keys, each 30 per 3 s for 9 s: 90 each at most; GCRA with a burst of 3 admits
    // 3 + 9 s / (3 s / 28) ≈ 87 per key. The fleet must use the quota, not hoard it.
    let per_key = accepted as f64 / 2.0;
    assert!(per_key <= 93.0, "{accepted} accepted for two keys");
    assert!(
        per_key >= 0.9 * 87.0,
        "only {accepted} accepted for two keys"
    );
    // No API key in any Redis key.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("sb:{tryvox:"), "{keys}");
    assert!(
        !keys.contains("fleet_A") && !keys.contains("fleet_B"),
        "{keys}"
    );
    // Every pod decided in Redis (not on its local share).
    for (sb, _) in &pods {
        let m = get(sb.admin, "/metrics").await.text();
        assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(0.0));
        let asked = metric(&m, "switchboard_quota_store_duration_seconds_count");
        assert!(asked.is_some_and(|n| n > 10.0), "{asked:?}");
    }
    eprintln!("accepted {accepted} for two keys (at most 2 x 87 by the GCRA)");
}

/// Redis unreachable from the start: start-up does not wait for it, every request is
/// answered, and each pod decides on its local share (`rate / expected_replicas`), so the
/// fleet still stays within the vendor's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_pod_keeps_to_its_share() {
    let s = sim("tryvox", VENDOR_30_PER_3S).await;
    let upstream = format!("http://{}", s.addr());
    // Nothing listens there.
    let store = format!(
        "quota_store: {{ redis: 'redis://127.0.0.1:{}', timeout: 20ms, expected_replicas: 3 }}\n",
        free_port()
    );
    let pods = fleet(3, &store, &upstream, SHARED_30_PER_3S);
    for (sb, _) in &pods {
        let m = get(sb.admin, "/metrics").await.text();
        assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(1.0));
    }
    let until = Instant::now() + Duration::from_secs(6);
    let mut tasks = Vec::new();
    for (_, port) in &pods {
        tasks.push(tokio::spawn(hammer(
            local(*port),
            "sk_test_down".into(),
            until,
        )));
    }
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    assert!(!statuses.is_empty());
    assert!(
        statuses.iter().all(|&c| c == 201 || c == 429),
        "{statuses:?}"
    );
    assert_eq!(
        s.limited(),
        0,
        "the vendor answered 429 while Redis was down"
    );
    // Each pod: 10 per 3 s, burst 1 -> at most 1 + 6 s / 300 ms = 21; the fleet 63.
    let accepted = s.hits() - s.limited();
    assert!(accepted <= 63, "{accepted}");
    assert!(accepted >= 45, "the local shares were not used: {accepted}");
}

/// A vendor 429 with a hint, answered to one pod, pauses that key on every pod: the second
/// pod answers the key's next request itself, and the vendor sees nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_429_told_to_one_pod_pauses_the_key_on_every_pod() {
    let redis = Redis::start();
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 429, headers: { retry-after: \"20\" }, json: { error: { code: RATE_LIMITED, message: slow down } } }, { status: 201, json: { id: c } } ]\n";
    let s = sim("tryvox", scenario).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 2 }}\n",
        redis.url()
    );
    let extra =
        "    retry: { max_attempts: 1 }\n    limits: [ { rate: 100, per: 1m, shared: true } ]\n";
    let pods = fleet(2, &store, &upstream, extra);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    let auth = [("authorization", "Bearer sk_test_paused")];
    let r = send(
        local(pods[0].1),
        &request("POST", "/v1/calls", &auth, Some(b"{}")),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["source"], "upstream");
    // The other pod was never told; the fleet's pause answers for it.
    let r = send(
        local(pods[1].1),
        &request("POST", "/v1/calls", &auth, Some(b"{}")),
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.text());
    let v = r.json();
    assert_eq!(v["error"]["source"], "proxy", "{v}");
    let wait = v["error"]["retry_after_s"].as_u64().unwrap_or(0);
    assert!((15..=20).contains(&wait), "{v}");
    assert_eq!(s.hits(), 1, "the paused key reached the vendor again");
    // Another key is not paused.
    let other = [("authorization", "Bearer sk_test_other")];
    let r = send(
        local(pods[1].1),
        &request("POST", "/v1/calls", &other, Some(b"{}")),
    )
    .await;
    assert_eq!(r.status, 201, "{}", r.text());
}
