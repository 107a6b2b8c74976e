//! Issue 16's limits for the whole fleet: concurrency (`{ in_flight: N, shared: true }`) and
//! cost-weighted shared buckets — two real Switchboard processes and a real redis-server in
//! front of one simulator that records how many requests it answers at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;

use support::redis::{fleet, one_fleet_at_a_time, Redis};
use support::*;

fn call() -> Vec<u8> {
    request(
        "POST",
        "/v1/calls",
        &[("authorization", "Bearer sk_live_alpha")],
        Some(br#"{"to":"+15550100"}"#),
    )
}

/// Two pods on one Redis, each deciding in it before this returns.
async fn two_pods(
    scenario: &str,
    extra: &str,
) -> (Redis, switchboard::simulator::Simulator, Vec<(Sb, u16)>) {
    let redis = Redis::start();
    let s = sim("tryvox", scenario).await;
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 2 }}\n",
        redis.url()
    );
    let pods = fleet(2, &store, &format!("http://{}", s.addr()), extra);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    (redis, s, pods)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pods_never_have_more_than_n_at_the_vendor() {
    let _turn = one_fleet_at_a_time().await;
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 201, delay: 1500ms, json: { id: c } } ]\n";
    let (redis, s, pods) =
        two_pods(scenario, "    limits: [ { in_flight: 2, shared: true } ]\n").await;
    let addrs: Vec<SocketAddr> = pods.iter().map(|(_, p)| local(*p)).collect();
    // Three at once on each pod: six, for two fleet-wide slots.
    let tasks: Vec<_> = (0..6)
        .map(|i| {
            let addr = addrs[i % 2];
            tokio::spawn(async move { send(addr, &call()).await })
        })
        .collect();
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.push(t.await.unwrap().status);
    }
    statuses.sort();
    assert_eq!(statuses, vec![201, 201, 429, 429, 429, 429]);
    assert_eq!(s.hits(), 2);
    assert_eq!(s.max_concurrent(), 2);
    // Given back: the lease sets are empty (or gone) once both are answered, and no key
    // names the API key.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(!keys.contains("sk_live_alpha"), "{keys}");
    for k in keys.lines().filter(|k| k.contains(":lease:")) {
        until("the lease given back", WAIT, || {
            (redis.cli(&["ZCARD", k]).trim() == "0").then_some(())
        })
        .await;
    }
    // And the slots serve again.
    assert_eq!(send(addrs[0], &call()).await.status, 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_that_dies_holding_a_slot_leaks_it_only_until_its_deadline() {
    let _turn = one_fleet_at_a_time().await;
    // The first call hangs at the vendor far past the request's 2 s deadline; later ones are quick.
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 201, delay: 20s, json: { id: slow } }, { status: 201, json: { id: c } } ]\n";
    let extra = "    retry: { deadline: 2s, max_attempts: 1 }\n    limits: [ { in_flight: 1, shared: true } ]\n";
    let (_redis, s, mut pods) = two_pods(scenario, extra).await;
    let (a, b) = (local(pods[0].1), local(pods[1].1));
    let hung = tokio::spawn(async move { send(a, &call()).await });
    until("the first call at the vendor", WAIT, || {
        (s.active() == 1).then_some(())
    })
    .await;
    // The other pod sees the fleet's one slot taken.
    assert_eq!(send(b, &call()).await.status, 429);
    // The pod holding it dies without giving it back.
    let (mut dead, _) = pods.remove(0);
    dead.child.kill().unwrap();
    let _ = dead.child.wait();
    hung.abort();
    // The lease expires at that request's deadline: then the slot serves the fleet again.
    let r = until_async_ok(b).await;
    assert_eq!(r, 201);
}

/// Sends calls to `addr` until one is admitted (429s while the dead pod's lease lives).
async fn until_async_ok(addr: SocketAddr) -> u16 {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let status = send(addr, &call()).await.status;
        if status != 429 || std::time::Instant::now() > deadline {
            return status;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_bucket_takes_each_requests_cost_across_pods() {
    let _turn = one_fleet_at_a_time().await;
    let scenario = "rules:\n  - match: { path_prefix: /v1/sms }\n    steps: [ { status: 200, json: { id: s } } ]\n";
    let extra = "    endpoints:\n      - name: sms\n        match: { path_prefix: /v1/sms }\n        cost: { segments: /Body, recipients: /To }\n        limits: [ { rate: 10, per: 1m, burst: 10, shared: true } ]\n";
    let (_redis, s, pods) = two_pods(scenario, extra).await;
    let (a, b) = (local(pods[0].1), local(pods[1].1));
    let sms = |to: usize| {
        let to: Vec<String> = (0..to).map(|i| format!("+1555010{i:02}")).collect();
        let body = serde_json::json!({ "Body": "hello", "To": to }).to_string();
        request(
            "POST",
            "/v1/sms",
            &[
                ("authorization", "Bearer sk_live_alpha"),
                ("content-type", "application/json"),
            ],
            Some(body.as_bytes()),
        )
    };
    // Six of the fleet's ten tokens on one pod; six more do not fit on the other …
    assert_eq!(send(a, &sms(6)).await.status, 200);
    assert_eq!(send(b, &sms(6)).await.status, 429);
    // … and took nothing: the four left are used exactly.
    assert_eq!(send(b, &sms(4)).await.status, 200);
    assert_eq!(send(a, &sms(1)).await.status, 429);
    assert_eq!(s.hits(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cost_the_fleet_admits_still_goes_while_redis_is_down() {
    let _turn = one_fleet_at_a_time().await;
    let scenario = "rules:\n  - match: { path_prefix: /v1/sms }\n    steps: [ { status: 200, json: { id: s } } ]\n";
    let extra = "    endpoints:\n      - name: sms\n        match: { path_prefix: /v1/sms }\n        cost: { recipients: /To }\n        limits: [ { rate: 10, per: 1m, burst: 10, shared: true } ]\n";
    let (redis, s, pods) = two_pods(scenario, extra).await;
    let a = local(pods[0].1);
    let body = serde_json::json!({ "Body": "hi", "To": vec!["+1"; 8] }).to_string();
    let sms = request(
        "POST",
        "/v1/sms",
        &[
            ("authorization", "Bearer sk_live_alpha"),
            ("content-type", "application/json"),
        ],
        Some(body.as_bytes()),
    );
    // Redis stops answering. The pod's share is 10 / 2 replicas = a burst of 5: a request of 8
    // the fleet would admit takes the whole share instead of being refused for the outage.
    redis.signal("-STOP");
    let r = send(a, &sms).await;
    redis.signal("-CONT");
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(s.hits(), 1);
}
