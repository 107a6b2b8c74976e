//! One limiter decision (two buckets: key-wide + endpoint) at 1, 10k and 100k live keys, on
//! 1 and 2 threads, against a naive `Mutex<HashMap>` GCRA (SPEC target: ≤ 200 ns at 100k).
//!
//! Run: `cargo bench --bench limits`
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};
use governor::clock::DefaultClock;
use switchboard::limits::{decide, Bucket, Decision, Shape};

const SHAPE: Shape = Shape {
    rate: 1_000_000,
    per: Duration::from_secs(1),
    burst: 1000,
};

/// The baseline: one lock around a map of theoretical arrival times.
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

fn populated(keys: u64) -> (Bucket<DefaultClock>, Bucket<DefaultClock>, Naive) {
    let a = Bucket::new(SHAPE, DefaultClock::default()).unwrap();
    let b = Bucket::new(SHAPE, DefaultClock::default()).unwrap();
    let n = Naive::new();
    for k in 0..keys {
        decide(&[(&a, k), (&b, k)]);
        n.decide(k);
    }
    (a, b, n)
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("limits");
    for keys in [1u64, 10_000, 100_000] {
        let (a, b, naive) = populated(keys);
        let (a, b, naive) = (Arc::new(a), Arc::new(b), Arc::new(naive));
        for threads in [1usize, 2] {
            let id = format!("{keys}keys/{threads}t");
            g.bench_function(BenchmarkId::new("switchboard", &id), |bench| {
                bench.iter_custom(|iters| {
                    run(threads, iters, |i| {
                        let k = i % keys;
                        black_box(decide(&[(&a, k), (&b, k)]) == Decision::Allow);
                    })
                })
            });
            g.bench_function(BenchmarkId::new("mutex_hashmap", &id), |bench| {
                bench.iter_custom(|iters| {
                    run(threads, iters, |i| {
                        black_box(naive.decide(i % keys));
                    })
                })
            });
        }
    }
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

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
}

criterion_group! { name = benches; config = config(); targets = bench }
criterion_main!(benches);
