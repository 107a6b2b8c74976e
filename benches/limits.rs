//! One limiter decision as the proxy makes it (`Limiter::admit`: key table lookup, two
//! buckets — key-wide + endpoint — all-or-nothing) at 1, 10k and 100k live keys, on 1 and 2
//! threads, against a naive `Mutex<HashMap>` GCRA (SPEC target: ≤ 200 ns at 100k). Also the
//! cost of deriving the bucket key from the `Authorization` header, and of reading a request's
//! token cost (SMS segments × recipients) from its body.
//!
//! Run: `cargo bench --bench limits`
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use switchboard::limits::{
    cost, BucketSpec, Cost, CostSpec, KeySource, Limiter, Mode, Scope, Shape, Verdict,
};

const SHAPE: Shape = Shape {
    rate: 1_000_000,
    per: Duration::from_secs(1),
    burst: 1000,
};

/// The baseline: one lock around a map of theoretical arrival times (same bucket keys,
/// std's default hasher).
struct Naive {
    map: Mutex<HashMap<u64, [u64; 2]>>,
    start: Instant,
    interval: u64,
    tolerance: u64,
}

impl Naive {
    fn new() -> Self {
        let interval = (SHAPE.per / (SHAPE.rate - SHAPE.burst + 1)).as_nanos() as u64;
        Naive {
            map: Mutex::new(HashMap::new()),
            start: Instant::now(),
            interval,
            tolerance: interval * u64::from(SHAPE.burst - 1),
        }
    }

    fn decide(&self, key: u64) -> bool {
        let now = self.start.elapsed().as_nanos() as u64;
        let mut m = self.map.lock().unwrap();
        let tats = m.entry(key).or_insert([0, 0]);
        if tats.iter().any(|t| *t > now + self.tolerance) {
            return false;
        }
        for t in tats.iter_mut() {
            *t = (*t).max(now) + self.interval;
        }
        true
    }
}

/// The limiter as the proxy builds it: a key-wide and an endpoint bucket on endpoint 0.
fn limiter() -> Limiter {
    let spec = BucketSpec {
        shape: SHAPE,
        scope: Scope::Key,
        mode: Mode::Reject,
        max_wait: Duration::ZERO,
        max_waiters: 1,
        shadow: false,
        shared: false,
    };
    Limiter::new(
        std::slice::from_ref(&spec),
        &[vec![spec.clone()], vec![]],
        &["voice".to_string(), "other".to_string()],
        KeySource::new(http::header::AUTHORIZATION, Some("bearer".into())),
        1_000_000,
        None,
    )
}

/// One decision, exactly as the proxy makes it. A reject-mode limiter never waits, so one
/// poll completes it.
fn admit(l: &Limiter, key: u64) -> bool {
    let fut = pin!(l.admit(key, 0));
    matches!(
        fut.poll(&mut Context::from_waker(Waker::noop())),
        Poll::Ready(Verdict::Allow)
    )
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");
    let source = KeySource::new(http::header::AUTHORIZATION, Some("bearer".into()));
    for n in [1u64, 10_000, 100_000] {
        // Bucket keys as the proxy derives them from `Authorization: Bearer sk_live_<n>`.
        let keys: Vec<u64> = (0..n)
            .map(|i| {
                let mut h = http::HeaderMap::new();
                let v = format!("Bearer sk_live_{i:024}");
                h.insert(http::header::AUTHORIZATION, v.parse().unwrap());
                source.key_of(&h)
            })
            .collect();
        let l = limiter();
        let naive = Naive::new();
        for k in &keys {
            admit(&l, *k);
            naive.decide(*k);
        }
        assert_eq!(l.keys() as u64, n);
        let (l, naive, keys) = (Arc::new(l), Arc::new(naive), Arc::new(keys));
        for threads in [1usize, 2] {
            let id = format!("{n}keys/{threads}t");
            g.bench_function(BenchmarkId::new("switchboard", &id), |bench| {
                bench.iter_custom(|iters| {
                    run(threads, iters, |i| {
                        let k = keys[(i % n) as usize];
                        black_box(admit(&l, k));
                    })
                })
            });
            g.bench_function(BenchmarkId::new("mutex_hashmap", &id), |bench| {
                bench.iter_custom(|iters| {
                    run(threads, iters, |i| {
                        black_box(naive.decide(keys[(i % n) as usize]));
                    })
                })
            });
        }
    }
    let mut h = http::HeaderMap::new();
    h.insert(
        http::header::AUTHORIZATION,
        "Bearer sk_live_000000000000000000000042".parse().unwrap(),
    );
    g.bench_function("key_of", |b| b.iter(|| black_box(source.key_of(&h))));
    g.finish();
}

/// `limits::cost` on an SMS send whose text is 160 characters (the most one GSM-7 part holds),
/// as JSON and as the form Twilio's API takes.
fn bench_cost(c: &mut Criterion) {
    let mut g = c.benchmark_group("cost");
    let spec = Cost::new(&CostSpec {
        segments: Some("/Body".into()),
        recipients: Some("/To".into()),
    });
    let text = "Your verification code is 482913. It expires in 10 minutes. \
                Do not share this code with anyone; we will never ask for it. Reply STOP to opt out.";
    let text = format!("{text:.<160}");
    assert_eq!(text.chars().count(), 160);
    let json = serde_json::json!({ "From": "+15557654321", "To": ["+15551234567"], "Body": text })
        .to_string();
    assert_eq!(cost(&spec, "application/json", json.as_bytes()), Ok(1));
    g.bench_function("json_160", |b| {
        b.iter(|| black_box(cost(&spec, "application/json", black_box(json.as_bytes()))))
    });
    let form = format!(
        "From=%2B15557654321&To=%2B15551234567&Body={}",
        text.replace(' ', "+")
    );
    let ct = "application/x-www-form-urlencoded";
    assert_eq!(cost(&spec, ct, form.as_bytes()), Ok(1));
    g.bench_function("form_160", |b| {
        b.iter(|| black_box(cost(&spec, ct, black_box(form.as_bytes()))))
    });
    g.finish();
}

/// Runs `iters` decisions on each of `threads` threads; the wall time per decision per thread.
fn run(threads: usize, iters: u64, f: impl Fn(u64) + Sync) -> Duration {
    let start = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads as u64 {
            let f = &f;
            s.spawn(move || {
                for i in 0..iters {
                    f(i.wrapping_mul(7919).wrapping_add(t));
                }
            });
        }
    });
    start.elapsed()
}

criterion_group! { name = benches; config = common::config(); targets = bench, bench_cost }
criterion_main!(benches);
