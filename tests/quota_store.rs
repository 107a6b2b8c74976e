//! The shared quota store against a real `redis-server` (Debian package, `./dev setup`),
//! started by each test on a free port with no persistence and killed on drop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use support::redis::Redis;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use switchboard::metrics::{Metrics, QuotaMetrics};
use switchboard::quota::{
    account_tag, QuotaStore, SharedBucket, SharedRequest, SharedVerdict, StoreError, StoreSettings,
    OPEN_AFTER,
};

fn metrics() -> QuotaMetrics {
    Metrics::new(&[]).unwrap().quota
}

fn settings(redis: &Redis, id: &str, timeout: Duration, expected: u32) -> StoreSettings {
    StoreSettings {
        urls: vec![redis.url()],
        password: None,
        timeout,
        expected_replicas: expected,
        replica_id: id.into(),
    }
}

/// Polls `cond` every 20 ms until it holds or `limit` has passed.
async fn until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    while !cond().await {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn connected(store: &Arc<QuotaStore>) {
    until(Duration::from_secs(10), "store connected", || async {
        !store.in_fallback()
    })
    .await;
}

/// Generous for tests that check arithmetic, not deadlines: a loaded 2-core host must not
/// open the breaker in the middle of a window count.
const CALM: Duration = Duration::from_millis(500);

fn req<'a>(account: &'a str, buckets: &'a [SharedBucket<'a>]) -> SharedRequest<'a> {
    SharedRequest {
        vendor: "tryvox",
        account,
        cost: 1,
        buckets,
    }
}

/// Tight calls for `run`, sleeping at most 2 ms on a `Wait`; the Redis-side admission times.
async fn saturate(store: &QuotaStore, r: &SharedRequest<'_>, run: Duration) -> Vec<u64> {
    let mut admitted = Vec::new();
    let end = Instant::now() + run;
    while Instant::now() < end {
        match store.decide_at(r).await.expect("decision") {
            (SharedVerdict::Allow, Some(at)) => admitted.push(at),
            (SharedVerdict::Allow, None) => panic!("an Allow without its time"),
            (SharedVerdict::Wait(d), _) => {
                tokio::time::sleep(d.min(Duration::from_millis(2))).await;
            }
        }
    }
    admitted
}

/// Never more than `rate` in any window of `per` (the densest window starts at an
/// admission), and at least `floor` in every full window of the run.
fn check_windows(admitted: &[u64], rate: usize, per_us: u64, floor: usize) {
    assert!(
        admitted.windows(2).all(|w| w[0] <= w[1]),
        "Redis time ran backwards"
    );
    let last = *admitted.last().expect("some admissions");
    let mut full = 0;
    for (i, &start) in admitted.iter().enumerate() {
        let n = admitted[i..]
            .iter()
            .take_while(|&&t| t < start + per_us)
            .count();
        assert!(
            n <= rate,
            "{n} admitted in the window from {start} (rate {rate})"
        );
        if start + per_us <= last {
            full += 1;
            assert!(n >= floor, "only {n} admitted in the window from {start}");
        }
    }
    assert!(full > 0, "the run covered no full window");
}

/// A bucket of 10 per 1 s saturated for 3 s. The cap holds in every window; what a saturated
/// run can use is the GCRA's sustained rate, `rate - burst + 1` per window (SPEC §3's
/// spacing `per / (rate - burst + 1)`), so `floor` is per shape.
async fn exact_window(burst: u32, floor: usize) {
    let redis = Redis::start();
    let store = QuotaStore::start(settings(&redis, "pod-a", CALM, 1), metrics());
    connected(&store).await;
    let bucket = SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), burst).unwrap();
    let buckets = [bucket];
    let run = Duration::from_secs(3);
    let admitted = saturate(&store, &req("acct", &buckets), run).await;
    // The first burst, then one per interval.
    let most = burst as usize + (run.as_micros() as u64).div_ceil(bucket.interval_us) as usize;
    assert!(
        (most - 2..=most).contains(&admitted.len()),
        "{} admitted, at most {most}",
        admitted.len()
    );
    check_windows(&admitted, 10, 1_000_000, floor);
}

#[tokio::test]
async fn exact_window_burst_1() {
    // Sustained 10 per window; one of them may slip past a window's end by scheduling.
    exact_window(1, 9).await;
}

#[tokio::test]
async fn exact_window_burst_5() {
    // 10 in the first window (the burst and 5 more), 6 per window after it.
    exact_window(5, 6).await;
}

#[tokio::test]
async fn all_or_nothing_across_buckets() {
    let redis = Redis::start();
    let store = QuotaStore::start(settings(&redis, "pod-a", CALM, 1), metrics());
    connected(&store).await;
    let per = Duration::from_secs(10);
    let strict = SharedBucket::from_shape("ep:voice:0", 1, per, 1).unwrap();
    let loose = SharedBucket::from_shape("v:0", 10, per, 10).unwrap();
    let both = [loose, strict];
    let r = req("acct", &both);
    assert_eq!(store.decide(&r).await, Ok(SharedVerdict::Allow));
    // The strict bucket denies for about its 10 s interval ...
    match store.decide(&r).await {
        Ok(SharedVerdict::Wait(d)) => {
            assert!(d > Duration::from_secs(9) && d <= per, "waited {d:?}")
        }
        other => panic!("expected a Wait, got {other:?}"),
    }
    // ... and took nothing from the loose one: 9 of its 10 are still there, not 8.
    let only_loose = [loose];
    let r = req("acct", &only_loose);
    for i in 0..9 {
        assert_eq!(
            store.decide(&r).await,
            Ok(SharedVerdict::Allow),
            "loose #{i}"
        );
    }
    assert!(matches!(store.decide(&r).await, Ok(SharedVerdict::Wait(_))));
    // Keys expire when full again: 10 tokens taken at one 10 s interval each.
    let ttl: u64 = redis
        .cli(&["PTTL", "sb:{tryvox:acct}:v:0"])
        .parse()
        .unwrap();
    assert!((99_000..=100_000).contains(&ttl), "PTTL {ttl}");
}

#[tokio::test]
async fn noscript_after_script_flush() {
    let redis = Redis::start();
    let store = QuotaStore::start(settings(&redis, "pod-a", CALM, 1), metrics());
    connected(&store).await;
    let buckets = [SharedBucket::from_shape("v:0", 100, Duration::from_secs(1), 100).unwrap()];
    let r = req("acct", &buckets);
    assert_eq!(store.decide(&r).await, Ok(SharedVerdict::Allow));
    assert_eq!(redis.cli(&["SCRIPT", "FLUSH"]), "OK");
    assert_eq!(redis.cached_scripts(), 0);
    assert_eq!(store.decide(&r).await, Ok(SharedVerdict::Allow));
    assert!(redis.cached_scripts() >= 1, "the script was sent again");
    assert_eq!(store.decide(&r).await, Ok(SharedVerdict::Allow));
    assert!(!store.in_fallback());
}

#[tokio::test]
async fn pause_reaches_every_replica() {
    let redis = Redis::start();
    let a = QuotaStore::start(settings(&redis, "pod-a", CALM, 2), metrics());
    let b = QuotaStore::start(settings(&redis, "pod-b", CALM, 2), metrics());
    connected(&a).await;
    connected(&b).await;
    let buckets = [SharedBucket::from_shape("v:0", 100, Duration::from_secs(1), 100).unwrap()];
    let r = req("acct", &buckets);
    assert_eq!(b.decide(&r).await, Ok(SharedVerdict::Allow));
    a.pause("tryvox", "acct", Duration::from_secs(2))
        .await
        .unwrap();
    // A shorter hint from elsewhere does not cut the pause short.
    b.pause("tryvox", "acct", Duration::from_millis(100))
        .await
        .unwrap();
    for store in [&a, &b] {
        match store.decide(&r).await {
            Ok(SharedVerdict::Wait(d)) => assert!(
                d > Duration::from_millis(1500) && d <= Duration::from_secs(2),
                "waited {d:?}"
            ),
            other => panic!("expected the pause, got {other:?}"),
        }
    }
    // Another account is not paused.
    assert_eq!(
        b.decide(&req("other", &buckets)).await,
        Ok(SharedVerdict::Allow)
    );
}

/// Decides until the breaker opens; every decision ends within `bound`.
async fn until_open(store: &QuotaStore, r: &SharedRequest<'_>, bound: Duration) -> Vec<StoreError> {
    let mut errors = Vec::new();
    for _ in 0..(OPEN_AFTER * 4) {
        let t = Instant::now();
        let got = store.decide(r).await;
        let took = t.elapsed();
        assert!(took < bound, "a decision took {took:?}");
        match got {
            Err(StoreError::Open) => return errors,
            Err(e) => errors.push(e),
            Ok(v) => panic!("a decision with Redis gone: {v:?}"),
        }
    }
    panic!("the breaker never opened: {errors:?}");
}

async fn recovers(store: &QuotaStore, r: &SharedRequest<'_>) {
    until(
        Duration::from_secs(10),
        "shared decisions again",
        || async { !store.in_fallback() && store.decide(r).await.is_ok() },
    )
    .await;
}

#[tokio::test]
async fn frozen_redis_times_out_opens_the_breaker_and_recovers() {
    let redis = Redis::start();
    let timeout = Duration::from_millis(20);
    let m = metrics();
    let store = QuotaStore::start(settings(&redis, "pod-a", timeout, 1), m.clone());
    connected(&store).await;
    assert_eq!(m.fallback.get(), 0);
    let buckets = [SharedBucket::from_shape("v:0", 1000, Duration::from_secs(1), 1000).unwrap()];
    let r = req("acct", &buckets);
    assert_eq!(store.decide(&r).await, Ok(SharedVerdict::Allow));

    redis.signal("-STOP");
    let errors = until_open(&store, &r, Duration::from_millis(500)).await;
    assert!(
        errors.len() >= OPEN_AFTER as usize && errors.iter().all(|e| *e == StoreError::Timeout),
        "{errors:?}"
    );
    assert!(store.in_fallback());
    assert_eq!(m.fallback.get(), 1);
    assert!(m.errors.with_label_values(&["timeout"]).get() >= u64::from(OPEN_AFTER));
    // Open: answered at once, no round trip, nothing counted.
    let before = m.errors.with_label_values(&["timeout"]).get();
    let t = Instant::now();
    assert_eq!(store.decide(&r).await, Err(StoreError::Open));
    assert!(
        t.elapsed() < timeout,
        "an open breaker answered in {:?}",
        t.elapsed()
    );
    assert_eq!(m.errors.with_label_values(&["timeout"]).get(), before);

    redis.signal("-CONT");
    recovers(&store, &r).await;
    assert_eq!(m.fallback.get(), 0);
}

#[tokio::test]
async fn redis_killed_and_restarted_empty_recovers() {
    let redis = Redis::start();
    let m = metrics();
    let store = QuotaStore::start(
        settings(&redis, "pod-a", Duration::from_millis(20), 1),
        m.clone(),
    );
    connected(&store).await;
    let buckets = [SharedBucket::from_shape("v:0", 1000, Duration::from_secs(1), 1000).unwrap()];
    let r = req("acct", &buckets);
    assert_eq!(store.decide(&r).await, Ok(SharedVerdict::Allow));

    let redis = redis.crash_and_restart();
    // The old connection is dead; the breaker opens and the probe reconnects to the new,
    // empty server (no script cached there).
    let _ = until_open(&store, &r, Duration::from_millis(500)).await;
    recovers(&store, &r).await;
    assert_eq!(redis.cli(&["EXISTS", "sb:{tryvox:acct}:v:0"]), "1");
}

#[tokio::test]
async fn start_never_waits_for_redis() {
    // Nothing listens on this port: start returns at once, in fallback, and decides nothing.
    let port = support::free_port();
    let m = metrics();
    let t = Instant::now();
    let store = QuotaStore::start(
        StoreSettings {
            urls: vec![format!("redis://127.0.0.1:{port}")],
            password: None,
            timeout: Duration::from_millis(5),
            expected_replicas: 3,
            replica_id: "pod-a".into(),
        },
        m.clone(),
    );
    assert!(
        t.elapsed() < Duration::from_millis(100),
        "start took {:?}",
        t.elapsed()
    );
    assert!(store.in_fallback());
    assert_eq!(store.share_divisor(), 3);
    assert_eq!((m.fallback.get(), m.expected_replicas.get()), (1, 3));
    let buckets = [SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 1).unwrap()];
    assert_eq!(
        store.decide(&req("acct", &buckets)).await,
        Err(StoreError::Open)
    );

    // Redis appears later on that port: the store finds it by itself.
    let redis = Redis::start_on(port, tempfile::tempdir().unwrap());
    connected(&store).await;
    assert_eq!(
        store.decide(&req("acct", &buckets)).await,
        Ok(SharedVerdict::Allow)
    );
    drop(redis);
}

#[tokio::test]
async fn password_is_sent_with_auth() {
    let redis = Redis::start_with(
        support::free_port(),
        tempfile::tempdir().unwrap(),
        Some("s3cret"),
    );
    let buckets = [SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 1).unwrap()];
    let mut good = settings(&redis, "pod-a", CALM, 1);
    good.password = Some("s3cret".into());
    let store = QuotaStore::start(good, metrics());
    connected(&store).await;
    assert_eq!(
        store.decide(&req("acct", &buckets)).await,
        Ok(SharedVerdict::Allow)
    );

    // Refused: stays in fallback (the probe keeps trying; nothing reaches Redis).
    let mut bad = settings(&redis, "pod-b", CALM, 1);
    bad.password = Some("wrong".into());
    let refused = QuotaStore::start(bad, metrics());
    // Two probes refused by Redis itself (not merely not tried yet): still in fallback.
    until(Duration::from_secs(10), "two refused probes", || async {
        wrongpass(&redis) >= 2
    })
    .await;
    assert!(refused.in_fallback());
    assert_eq!(
        refused.decide(&req("acct", &buckets)).await,
        Err(StoreError::Open)
    );
    until(Duration::from_secs(10), "pod-a's heartbeat", || async {
        store.live_replicas() == 1
    })
    .await;
    assert_eq!(redis.cli(&["ZRANGE", "sb:replicas", "0", "-1"]), "pod-a");
}

#[tokio::test]
async fn tls_handshake_failure_keeps_probing() {
    // rediss:// to a server that is not TLS: the rustls handshake fails (no panic for want of
    // a crypto provider), the store stays in fallback and its thread goes on probing.
    use std::sync::atomic::{AtomicU32, Ordering};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicU32::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::Relaxed);
            tokio::spawn(async move {
                use tokio::io::AsyncWriteExt;
                let _ = sock.write_all(b"-ERR not tls\r\n").await;
            });
        }
    });
    let store = QuotaStore::start(
        StoreSettings {
            urls: vec![format!("rediss://127.0.0.1:{port}")],
            password: None,
            timeout: CALM,
            expected_replicas: 1,
            replica_id: "pod-a".into(),
        },
        metrics(),
    );
    until(Duration::from_secs(10), "three probes", || async {
        accepted.load(Ordering::Relaxed) >= 3
    })
    .await;
    assert!(store.in_fallback());
    let buckets = [SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 1).unwrap()];
    assert_eq!(
        store.decide(&req("acct", &buckets)).await,
        Err(StoreError::Open)
    );
}

/// AUTH attempts Redis refused (`INFO errorstats`).
fn wrongpass(redis: &Redis) -> u64 {
    let info = redis.cli(&["INFO", "errorstats"]);
    info.lines()
        .find_map(|l| l.strip_prefix("errorstat_WRONGPASS:count="))
        .map_or(0, |n| n.trim().parse().unwrap())
}

#[tokio::test]
async fn heartbeat_counts_live_replicas() {
    let redis = Redis::start();
    let ma = metrics();
    let a = QuotaStore::start(settings(&redis, "pod-a", CALM, 1), ma.clone());
    let b = QuotaStore::start(settings(&redis, "pod-b", CALM, 3), metrics());
    until(Duration::from_secs(15), "both replicas counted", || async {
        a.live_replicas() == 2 && b.live_replicas() == 2
    })
    .await;
    // max(expected, live): the live count raises a's N, b's floor of 3 stays.
    assert_eq!((a.share_divisor(), b.share_divisor()), (2, 3));
    assert_eq!(ma.replicas.get(), 2);
    assert_eq!(ma.expected_replicas.get(), 1);
    assert_eq!(redis.cli(&["ZCARD", "sb:replicas"]), "2");
}

#[tokio::test]
async fn redis_keys_never_hold_the_api_key() {
    let redis = Redis::start();
    let store = QuotaStore::start(settings(&redis, "pod-a", CALM, 1), metrics());
    connected(&store).await;
    let account = account_tag(b"fleet secret", b"sk_live_VISIBLE123");
    let buckets = [
        SharedBucket::from_shape("v:0", 5, Duration::from_secs(60), 2).unwrap(),
        SharedBucket::from_shape("ep:voice:0", 5, Duration::from_secs(60), 1).unwrap(),
    ];
    let r = req(&account, &buckets);
    for _ in 0..3 {
        store.decide(&r).await.unwrap();
    }
    store
        .pause("tryvox", &account, Duration::from_secs(30))
        .await
        .unwrap();
    let keys = redis.cli(&["KEYS", "*"]);
    assert!(
        keys.contains(&format!("sb:{{tryvox:{account}}}:v:0")),
        "{keys}"
    );
    assert!(
        keys.contains(&format!("sb:{{tryvox:{account}}}:pause")),
        "{keys}"
    );
    assert!(
        !keys.contains("VISIBLE123") && !keys.contains("sk_live"),
        "{keys}"
    );
    for key in keys.lines() {
        let dump = redis.cli(&["DUMP", key]);
        assert!(!dump.contains("VISIBLE123"), "{key} holds the API key");
    }
}

/// Each answer says how much of every bucket is in use (the TAT's lead over Redis's now),
/// which seeds the pod's local share for a hand-over.
#[tokio::test]
async fn answers_tell_each_buckets_use() {
    let redis = Redis::start();
    let store = QuotaStore::start(settings(&redis, "pod-a", CALM, 1), metrics());
    connected(&store).await;
    // 10 per 1 s, burst 5: interval 166,667 µs, capacity 5 intervals. 5 per 1 s, burst 1.
    let buckets = [
        SharedBucket::from_shape("v:0", 10, Duration::from_secs(1), 5).unwrap(),
        SharedBucket::from_shape("ep:x:0", 5, Duration::from_secs(1), 1).unwrap(),
    ];
    let r = req("acct", &buckets);
    let first = store.decided(&r).await.unwrap();
    assert_eq!(first.verdict, SharedVerdict::Allow);
    // One token of each: the TAT leads now by one interval (to the µs of the round trip).
    assert_eq!(first.debts_us.len(), 2);
    assert!(
        first.debts_us[0] <= 166_667 && first.debts_us[0] > 150_000,
        "{first:?}"
    );
    assert!(
        first.debts_us[1] <= 200_000 && first.debts_us[1] > 180_000,
        "{first:?}"
    );
    // The endpoint bucket is spent: a Wait, with the state before (nothing was taken).
    let second = store.decided(&r).await.unwrap();
    assert!(
        matches!(second.verdict, SharedVerdict::Wait(_)),
        "{second:?}"
    );
    assert_eq!(second.debts_us.len(), 2);
    assert!(second.debts_us[0] <= first.debts_us[0], "{second:?}");
    assert!(second.debts_us[1] > 0, "{second:?}");
    // Paused: no state to tell.
    store
        .pause("tryvox", "acct", Duration::from_secs(5))
        .await
        .unwrap();
    let paused = store.decided(&r).await.unwrap();
    assert!(matches!(paused.verdict, SharedVerdict::Wait(_)));
    assert!(paused.debts_us.is_empty(), "{paused:?}");
}
