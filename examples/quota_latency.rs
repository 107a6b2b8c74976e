//! One shared quota decision's latency, as the proxy makes it (`QuotaStore::decide`: the hop
//! to the store's thread, EVALSHA, the answer), against a Redis on this host, paced at a
//! fixed rate. SPEC §8: a shared decision adds ≤ 1 ms p99 with Redis on the same host.
//!
//! Run: `benches/load/quota_latency.sh` (starts its own redis-server), or
//! `cargo run --release --example quota_latency -- redis://127.0.0.1:6379 [rate] [seconds]`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use switchboard::metrics::Metrics;
use switchboard::quota::{QuotaStore, SharedBucket, SharedRequest, StoreSettings};

fn main() {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    let rate: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10);
    let metrics = Metrics::new(&[]).expect("metrics");
    let store = QuotaStore::start(
        StoreSettings {
            urls: vec![url],
            password: None,
            timeout: Duration::from_millis(5),
            expected_replicas: 1,
            replica_id: "bench".into(),
        },
        metrics.quota.clone(),
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(10);
        while store.in_fallback() {
            assert!(Instant::now() < deadline, "the store never connected");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Two buckets, as a vendor-wide plus an endpoint limit; never denying, so every
        // call is a full decision that writes both.
        let a = SharedBucket::from_shape("v:0", 1_000_000, Duration::from_secs(1), 1000).unwrap();
        let b = SharedBucket::from_shape("ep:voice:0", 1_000_000, Duration::from_secs(1), 1000)
            .unwrap();
        let buckets = [a, b];
        let accounts: Vec<String> = (0..100).map(|i| format!("{i:032x}")).collect();
        let mut took = Vec::new();
        let mut errors = 0u64;
        let every = Duration::from_nanos(1_000_000_000 / rate.max(1));
        let mut tick = tokio::time::interval(every);
        let n = rate * secs;
        for i in 0..n {
            tick.tick().await;
            let req = SharedRequest {
                vendor: "bench",
                account: &accounts[(i % 100) as usize],
                cost: 1,
                buckets: &buckets,
            };
            let t = Instant::now();
            match store.decide(&req).await {
                Ok(_) => took.push(t.elapsed()),
                Err(_) => errors += 1,
            }
        }
        assert!(!took.is_empty(), "no decision succeeded ({errors} errors)");
        took.sort();
        let q = |p: f64| took[((took.len() as f64 * p) as usize).min(took.len() - 1)];
        println!(
            "decisions {} errors {errors} rate {rate}/s p50 {:?} p99 {:?} p99.9 {:?} max {:?}",
            took.len(),
            q(0.50),
            q(0.99),
            q(0.999),
            took[took.len() - 1]
        );
    });
}
