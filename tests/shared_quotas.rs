//! Fleet quotas end to end: several real Switchboard processes sharing one real
//! `redis-server`, in front of a simulator that enforces the vendor's own window per key and
//! counts the 429s it sends. Per-pod limits would let three sidecars send three times the
//! vendor's number; shared ones must hold it for the fleet.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use support::redis::{fleet, one_fleet_at_a_time, Redis};
use support::*;

/// Sends `POST /v1/calls` for `key` as fast as answers come back until `until`, pausing
/// 20 ms after a 429 (an app backing off, and less spinning on 2 CPUs). Returns the
/// statuses seen.
async fn hammer(addr: SocketAddr, key: String, until: Instant) -> Vec<u16> {
    hammer_at(addr, "/v1/calls", key, until).await
}

/// [`hammer`] on another path.
async fn hammer_at(addr: SocketAddr, path: &'static str, key: String, until: Instant) -> Vec<u16> {
    timed_hammer_at(addr, path, key, until)
        .await
        .into_iter()
        .map(|(s, _)| s)
        .collect()
}

/// [`hammer`], with how long each answer took.
async fn timed_hammer(addr: SocketAddr, key: String, until: Instant) -> Vec<(u16, Duration)> {
    timed_hammer_at(addr, "/v1/calls", key, until).await
}

/// [`timed_hammer`] on another path.
async fn timed_hammer_at(
    addr: SocketAddr,
    path: &str,
    key: String,
    until: Instant,
) -> Vec<(u16, Duration)> {
    let mut seen = Vec::new();
    let auth = format!("Bearer {key}");
    let mut conn = Conn::open(addr).await;
    while Instant::now() < until {
        let req = request("POST", path, &[("authorization", &auth)], Some(b"{}"));
        let sent = Instant::now();
        let r = match conn.send(&req).await {
            Ok(r) => r,
            Err(_) => {
                conn = Conn::open(addr).await;
                continue;
            }
        };
        seen.push((r.status, sent.elapsed()));
        if r.status == 429 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    seen
}

/// A fresh Redis, the simulator running `scenario`, and `n` pods with `extra` under the
/// vendor (timeout 50 ms, `expected` replicas), each deciding in Redis before this returns.
async fn shared_fleet(
    n: usize,
    expected: u32,
    scenario: &str,
    extra: &str,
) -> (Redis, switchboard::simulator::Simulator, Vec<(Sb, u16)>) {
    let redis = Redis::start();
    let s = sim("tryvox", scenario).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: {expected} }}\n",
        redis.url()
    );
    let pods = fleet(n, &store, &upstream, extra);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    (redis, s, pods)
}

/// The vendor: 30 per 3 s per key, a sliding window, counting its own 429s.
const VENDOR_30_PER_3S: &str = "limits:\n  - { match: { path_prefix: /v1/calls }, rate: 30, per: 3s, key_header: authorization }\ndefault: { status: 201, json: { id: c } }\n";

/// Switchboard's side: the vendor's number, shared (over 3.1 s: the network's jitter means
/// exact on Switchboard's clock is not exact at the vendor's).
const SHARED_30_PER_3S: &str =
    "    limits: [ { rate: 30, per: 3100ms, burst: 3, shared: true } ]\n";

/// Switchboard's side for the accuracy test: the vendor's number over 3.1 s (the 0.1 s
/// absorbs network jitter), burst 1, queueing up to 5 s — so the fleet can use all of it.
const SHARED_QUEUED: &str = "    limits: [ { rate: 30, per: 3100ms, burst: 1, shared: true, mode: queue, max_wait: 5s } ]\n";

/// `redis-cli MONITOR` into a file for as long as it lives: every command Redis ran.
struct Monitor {
    child: std::process::Child,
    out: tempfile::NamedTempFile,
}

impl Monitor {
    fn start(redis: &Redis) -> Monitor {
        let out = tempfile::NamedTempFile::new().unwrap();
        let child = std::process::Command::new("redis-cli")
            .args(["-p", &redis.port.to_string(), "MONITOR"])
            .stdout(out.reopen().unwrap())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        Monitor { child, out }
    }

    fn stop(mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(self.out.path()).unwrap()
    }
}

/// Three sidecars, two keys, saturating load for 9 s: the vendor never says 429, each key
/// gets at least 95 % of its quota, and Redis never sees an API key — not in a key, not in
/// any command (`MONITOR` for the whole run). Halfway, `SCRIPT FLUSH`: the pods load the
/// script again and no decision fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_sidecars_share_one_vendor_quota() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start();
    let s = sim("tryvox", VENDOR_30_PER_3S).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 3 }}\n",
        redis.url()
    );
    let pods = fleet(3, &store, &upstream, SHARED_QUEUED);
    // Start-up never waits for Redis: each pod begins on its local share. Load starts once
    // every pod decides in Redis (the fallback test covers the other case).
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    let monitor = Monitor::start(&redis);
    let begun = Instant::now();
    let until = begun + Duration::from_secs(9);
    let mut tasks = Vec::new();
    for (_, port) in &pods {
        for key in ["sk_test_fleet_A", "sk_test_fleet_B"] {
            tasks.push(tokio::spawn(hammer(local(*port), key.to_string(), until)));
        }
    }
    tokio::time::sleep_until((begun + Duration::from_millis(4500)).into()).await;
    redis.cli(&["SCRIPT", "FLUSH"]);
    let mut statuses = Vec::new();
    for t in tasks {
        statuses.extend(t.await.unwrap());
    }
    let commands = monitor.stop();
    let accepted = s.hits() - s.limited();
    assert_eq!(
        s.limited(),
        0,
        "the vendor answered 429: the fleet went over its quota"
    );
    assert!(statuses.iter().all(|&c| c == 201), "{statuses:?}");
    // Each key: 30 per 3.1 s for 9 s is 87 (and the first one at once). The fleet must use
    // the quota, not hoard it.
    let quota = 30.0 * 9.0 / 3.1 + 1.0;
    let per_key = accepted as f64 / 2.0;
    // (Requests queued before the end may be admitted just after it.)
    assert!(per_key <= quota + 3.0, "{accepted} accepted for two keys");
    assert!(
        per_key >= 0.95 * quota,
        "only {accepted} accepted for two keys (quota {quota:.0} each)"
    );
    // No API key anywhere in Redis: keys, values, commands.
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(keys.contains("sb:{tryvox:"), "{keys}");
    assert!(commands.contains("EVALSHA"), "MONITOR saw no decisions");
    for seen in [&keys, &commands] {
        assert!(
            !seen.contains("fleet_A") && !seen.contains("fleet_B") && !seen.contains("sk_test"),
            "an API key reached Redis"
        );
    }
    // After the flush the script was sent in full once more, and nothing failed.
    assert!(commands.contains("\"EVAL\""), "no EVAL after SCRIPT FLUSH");
    assert!(redis.cached_scripts() >= 1);
    for (sb, _) in &pods {
        let m = get(sb.admin, "/metrics").await.text();
        assert_eq!(metric(&m, "switchboard_quota_store_fallback"), Some(0.0));
        let asked = metric(&m, "switchboard_quota_store_duration_seconds_count");
        assert!(asked.is_some_and(|n| n > 10.0), "{asked:?}");
        let failed: f64 = m
            .lines()
            .filter(|l| l.starts_with("switchboard_quota_store_errors_total{"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert_eq!(failed, 0.0, "decisions failed");
    }
    eprintln!("accepted {accepted} for two keys (quota {quota:.0} each)");
}

/// Redis unreachable from the start: start-up does not wait for it, every request is
/// answered, and each pod decides on its local share (`rate / expected_replicas`), so the
/// fleet still stays within the vendor's quota.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_each_pod_keeps_to_its_share() {
    let _turn = one_fleet_at_a_time().await;
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
    // Each pod: 10 per 3.1 s, burst 1 -> at most 1 + 6 s / 310 ms = 20; the fleet 60.
    let accepted = s.hits() - s.limited();
    assert!(accepted <= 61, "{accepted}");
    assert!(accepted >= 45, "the local shares were not used: {accepted}");
}

/// A vendor 429 with a hint, answered to one pod, pauses that key on every pod: the second
/// pod answers the key's next request itself, and the vendor sees nothing more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vendor_429_told_to_one_pod_pauses_the_key_on_every_pod() {
    let _turn = one_fleet_at_a_time().await;
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 429, headers: { retry-after: \"20\" }, json: { error: { code: RATE_LIMITED, message: slow down } } }, { status: 201, json: { id: c } } ]\n";
    let extra =
        "    retry: { max_attempts: 1 }\n    limits: [ { rate: 100, per: 1m, shared: true } ]\n";
    let (_redis, s, pods) = shared_fleet(2, 2, scenario, extra).await;
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

/// Shared 30 per 3.1 s with a burst of 24: a local share (10 per 3.1 s, burst 8) that
/// started full at a hand-over would let 24 through at once, fleet-wide, on top of the
/// window the fleet had just used. (The 0.1 s under the vendor's window absorbs the
/// network's jitter: exact on Redis's clock is not exact at the vendor.)
const SHARED_BURSTY: &str = "    limits: [ { rate: 30, per: 3100ms, burst: 24, shared: true } ]\n";

/// What the fleet did in an outage test.
struct Outage {
    answers: Vec<(u16, Duration)>,
}

impl Outage {
    fn check(&self, s: &switchboard::simulator::Simulator) {
        assert!(!self.answers.is_empty());
        assert!(
            self.answers.iter().all(|(c, _)| *c == 201 || *c == 429),
            "every request answered, by the vendor or by Switchboard: {:?}",
            self.answers.iter().map(|(c, _)| c).collect::<Vec<_>>()
        );
        assert_eq!(s.limited(), 0, "the vendor answered 429");
        // The outage lasts seconds; no request waited for Redis through it.
        let slowest = self.answers.iter().map(|(_, d)| *d).max().unwrap();
        assert!(
            slowest < Duration::from_secs(1),
            "a request took {slowest:?}"
        );
    }
}

/// Vendor hits received in `[from, from + span)`.
fn hits_in(s: &switchboard::simulator::Simulator, from: Instant, span: Duration) -> usize {
    s.requests()
        .iter()
        .filter(|r| r.at >= from && r.at < from + span)
        .count()
}

/// Three pods saturating one key for 12 s while `outage` runs against Redis.
async fn through_outage<F, Fut>(
    redis_url: String,
    outage: F,
) -> (Outage, switchboard::simulator::Simulator, Vec<(Sb, u16)>)
where
    F: FnOnce(Vec<std::net::SocketAddr>, Instant) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let s = sim("tryvox", VENDOR_30_PER_3S).await;
    let upstream = format!("http://{}", s.addr());
    let store =
        format!("quota_store: {{ redis: '{redis_url}', timeout: 50ms, expected_replicas: 3 }}\n");
    let pods = fleet(3, &store, &upstream, SHARED_BURSTY);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    let begun = Instant::now();
    let until = begun + Duration::from_secs(12);
    let tasks: Vec<_> = pods
        .iter()
        .map(|(_, port)| tokio::spawn(timed_hammer(local(*port), "sk_test_outage".into(), until)))
        .collect();
    outage(pods.iter().map(|(sb, _)| sb.admin).collect(), begun).await;
    let mut answers = Vec::new();
    for t in tasks {
        answers.extend(t.await.unwrap());
    }
    (Outage { answers }, s, pods)
}

/// Every pod's fallback gauge at `want`.
async fn all_at(admins: &[std::net::SocketAddr], want: f64) {
    for a in admins {
        until_metric(*a, "switchboard_quota_store_fallback", want).await;
    }
}

/// Decisions each pod has asked Redis for so far.
async fn asked(admins: &[std::net::SocketAddr]) -> Vec<f64> {
    let mut n = Vec::new();
    for a in admins {
        let m = get(*a, "/metrics").await.text();
        n.push(metric(&m, "switchboard_quota_store_duration_seconds_count").unwrap_or(0.0));
    }
    n
}

/// Waits until every pod has asked Redis for more decisions than `before`.
async fn asking_again(admins: &[std::net::SocketAddr], before: &[f64]) {
    let deadline = Instant::now() + WAIT;
    loop {
        let now = asked(admins).await;
        if now.iter().zip(before).all(|(n, b)| n > b) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no shared decisions again: {before:?} -> {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Redis frozen mid-run (`SIGSTOP`: connections stay open, nothing answers — the dangerous
/// stall): no request waits on it, each pod hands over to its local share seeded from the
/// fleet's state (no burst), the vendor never says 429, and after `SIGCONT` the pods decide
/// in Redis again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_redis_hands_over_to_the_local_shares_without_a_burst() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start();
    let stopped = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = stopped.clone();
    let r = &redis;
    let (outage, s, _pods) = through_outage(redis.url(), |admins, start| async move {
        tokio::time::sleep_until((start + Duration::from_secs(4)).into()).await;
        r.signal("-STOP");
        *seen.lock().unwrap() = Some(Instant::now());
        all_at(&admins, 1.0).await;
        tokio::time::sleep_until((start + Duration::from_secs(8)).into()).await;
        let before = asked(&admins).await;
        r.signal("-CONT");
        all_at(&admins, 0.0).await;
        asking_again(&admins, &before).await;
    })
    .await;
    let stopped = stopped.lock().unwrap().unwrap();
    outage.check(&s);
    // Seeded from the fleet's state, the local shares go on at their pace: 3 pods, one
    // per second each. Unseeded, each would let its burst of 8 through at once.
    let handed_over = hits_in(&s, stopped, Duration::from_secs(1));
    assert!(
        handed_over <= 8,
        "{handed_over} requests in the hand-over's first second"
    );
}

/// Redis killed (`kill -9`) mid-run and started again empty on the same port: every request
/// answered, the vendor never says 429, and when the pods find Redis again its buckets are
/// full — yet no burst reaches the vendor, because for a window after recovery each pod
/// still needs its local share's token (what it decided alone is not in the new Redis).
/// The restarted Redis has no scripts: the pods load them again (NOSCRIPT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restarted_empty_brings_no_burst_back() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start();
    let (port, url) = (redis.port, redis.url());
    let back = std::sync::Arc::new(std::sync::Mutex::new(None));
    let seen = back.clone();
    let (outage, s, _pods) = through_outage(url, |admins, start| async move {
        tokio::time::sleep_until((start + Duration::from_secs(4)).into()).await;
        drop(redis); // SIGKILL
        all_at(&admins, 1.0).await;
        tokio::time::sleep_until((start + Duration::from_secs(7)).into()).await;
        let before = asked(&admins).await;
        let fresh = Redis::start_on(port, tempfile::tempdir().unwrap());
        *seen.lock().unwrap() = Some(Instant::now());
        all_at(&admins, 0.0).await;
        asking_again(&admins, &before).await;
        assert!(fresh.cli(&["KEYS", "*"]).contains("sb:{tryvox:"));
        assert!(fresh.cached_scripts() >= 1);
        // Kept until the hammers stop, so the pods stay on shared decisions.
        tokio::time::sleep_until((start + Duration::from_secs(12)).into()).await;
        drop(fresh);
    })
    .await;
    outage.check(&s);
    let back = back.lock().unwrap().unwrap();
    // An empty Redis has every bucket full: 24 at once if it alone decided. The pods' local
    // shares, drained by the outage, go on at one per second each.
    let burst = hits_in(&s, back, Duration::from_millis(1500));
    assert!(
        burst <= 9,
        "{burst} requests in the 1.5 s after Redis came back"
    );
}

/// A shared vendor-wide bucket and a shared endpoint bucket together, one key, two pods,
/// queueing: calls saturate their endpoint's 10 while messages use what the vendor-wide
/// 30 has left.
/// A call turned away by its endpoint bucket takes nothing from the vendor-wide one (all or
/// nothing in one script), so no capacity is stranded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn vendor_wide_and_endpoint_buckets_strand_nothing() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start();
    let vendor = "limits:\n  - { match: { path_prefix: /v1 }, rate: 30, per: 3s, key_header: authorization }\ndefault: { status: 201, json: { id: c } }\n";
    let s = sim("tryvox", vendor).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 2 }}\n",
        redis.url()
    );
    let q = "burst: 1, shared: true, mode: queue, max_wait: 5s";
    let extra = format!("    limits: [ {{ rate: 30, per: 3100ms, {q} }} ]\n    endpoints:\n      - name: calls\n        match: {{ path_prefix: /v1/calls }}\n        limits: [ {{ rate: 10, per: 3100ms, {q} }} ]\n");
    let pods = fleet(2, &store, &upstream, &extra);
    for (sb, _) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_fallback", 0.0).await;
    }
    let until = Instant::now() + Duration::from_millis(6200);
    let key = "sk_test_two_buckets";
    let mut calls = Vec::new();
    let mut messages = Vec::new();
    for (_, port) in &pods {
        calls.push(tokio::spawn(hammer_at(
            local(*port),
            "/v1/calls",
            key.into(),
            until,
        )));
        messages.push(tokio::spawn(hammer_at(
            local(*port),
            "/v1/messages",
            key.into(),
            until,
        )));
    }
    let admitted = |tasks: Vec<tokio::task::JoinHandle<Vec<u16>>>| async move {
        let mut n = 0;
        for t in tasks {
            n += t.await.unwrap().iter().filter(|&&c| c == 201).count();
        }
        n
    };
    let calls = admitted(calls).await;
    let messages = admitted(messages).await;
    assert_eq!(s.limited(), 0, "the vendor answered 429");
    eprintln!("{calls} calls, {messages} messages");
    // Two windows of 3.1 s: calls at most 10 each (+1 at once) — fewer when messages took
    // the vendor-wide token first, which is contention, not loss; the vendor-wide 30 each
    // (+1) used in full by calls and messages together. (Requests queued before the end
    // may be admitted just after it.)
    assert!((5..=24).contains(&calls), "{calls} calls");
    let all = calls + messages;
    assert!(all <= 64, "{calls} + {messages}");
    assert!(
        all >= 58,
        "{calls} + {messages}: vendor-wide capacity stranded"
    );
}

/// `expected_replicas: 1` but three pods heartbeat: each counts three live replicas and
/// sizes its local share at a third, so when Redis goes the fleet still keeps to the
/// vendor's quota (sized by the stale 1, each pod alone would send the whole of it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_local_share_follows_the_live_replicas() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start();
    let s = sim("tryvox", VENDOR_30_PER_3S).await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 1 }}\n",
        redis.url()
    );
    let pods = fleet(3, &store, &upstream, SHARED_30_PER_3S);
    // Another key than the load's: its tokens are not in the load's window at the vendor.
    let auth = [("authorization", "Bearer sk_test_warm")];
    for (sb, port) in &pods {
        until_metric(sb.admin, "switchboard_quota_store_replicas", 3.0).await;
        // One shared decision after the count: the share is sized as decisions go.
        let r = send(
            local(*port),
            &request("POST", "/v1/calls", &auth, Some(b"{}")),
        )
        .await;
        assert_eq!(r.status, 201, "{}", r.text());
    }
    drop(redis);
    let before = s.hits();
    let until = Instant::now() + Duration::from_secs(6);
    let tasks: Vec<_> = pods
        .iter()
        .map(|(_, port)| tokio::spawn(hammer(local(*port), "sk_test_live".into(), until)))
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let admins: Vec<_> = pods.iter().map(|(sb, _)| sb.admin).collect();
    all_at(&admins, 1.0).await;
    assert_eq!(s.limited(), 0, "the vendor answered 429");
    // Each pod: 10 per 3.1 s, burst 1 -> at most 1 + 6 s / 310 ms = 20; the fleet 60.
    let accepted = s.hits() - before;
    assert!(accepted <= 61, "{accepted}");
    assert!(accepted >= 45, "the local shares were not used: {accepted}");
}

/// A retry is an upstream attempt like any other: it takes the fleet's shared tokens too.
/// 3 per minute for the fleet; one request answered 503 then retried on pod A has used 2, so
/// pod B gets one more and then answers 429 itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_take_shared_tokens() {
    let _turn = one_fleet_at_a_time().await;
    let scenario = "rules:\n  - match: { path_prefix: /v1/calls }\n    steps: [ { status: 503, json: { error: { code: UNAVAILABLE, message: busy } } }, { status: 201, json: { id: c } } ]\n";
    let extra = "    retry: { max_attempts: 3 }\n    limits: [ { rate: 3, per: 1m, burst: 3, shared: true } ]\n";
    let (_redis, s, pods) = shared_fleet(2, 2, scenario, extra).await;
    let auth = [("authorization", "Bearer sk_test_retried")];
    let call = || request("POST", "/v1/calls", &auth, Some(b"{}"));
    let r = send(local(pods[0].1), &call()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(s.hits(), 2, "the 503 and its retry");
    let r = send(local(pods[1].1), &call()).await;
    assert_eq!(r.status, 201, "{}", r.text());
    let r = send(local(pods[1].1), &call()).await;
    assert_eq!(r.status, 429, "{}", r.text());
    assert_eq!(r.json()["error"]["source"], "proxy");
    assert_eq!(s.hits(), 3);
}

/// A shared global bucket and a shared per-key one are two calls to Redis (two Cluster
/// slots) but one decision: a request its key bucket refuses gives the global token back,
/// so another key can have it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_refusal_gives_the_global_token_back() {
    let _turn = one_fleet_at_a_time().await;
    let redis = Redis::start();
    let s = sim("tryvox", "default: { status: 201, json: { id: c } }\n").await;
    let upstream = format!("http://{}", s.addr());
    let store = format!(
        "quota_store: {{ redis: '{}', timeout: 50ms, expected_replicas: 1 }}\n",
        redis.url()
    );
    let extra = "    limits:\n      - { rate: 2, per: 1m, burst: 2, scope: global, shared: true }\n      - { rate: 1, per: 1m, burst: 1, shared: true }\n";
    let pods = fleet(1, &store, &upstream, extra);
    until_metric(pods[0].0.admin, "switchboard_quota_store_fallback", 0.0).await;
    let addr = local(pods[0].1);
    assert_eq!(post_call(addr, "sk_test_key_a").await.status, 201);
    // Refused by key A's own bucket: the global one is not spent by it.
    let r = post_call(addr, "sk_test_key_a").await;
    assert_eq!(
        (r.status, r.json()["error"]["source"].as_str()),
        (429, Some("proxy"))
    );
    assert_eq!(
        post_call(addr, "sk_test_key_b").await.status,
        201,
        "the global token was kept"
    );
    // Now the global bucket is spent.
    assert_eq!(post_call(addr, "sk_test_key_c").await.status, 429);
    assert_eq!(s.hits(), 2);
}
