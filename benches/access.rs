//! One access line as the request path pays for it: formatting a typical entry and queueing it
//! (`AccessLog::record`), JSON and text, against the baseline it replaces — the same fields
//! through `tracing::info!` and `tracing-subscriber`'s fmt layer (writing to a sink, so
//! neither side pays for stderr). Also `access::enabled()` under an `EnvFilter` at `info`.
//! Target (issue 17): the whole line ≤ 5,000 instructions on the request's thread.
//!
//! Run: `cargo bench --bench access`
//!
//! 2026-12-01, the shared 2-core dev VM under load from other builds (noisy): json 227 ns,
//! text 221 ns, tracing json 1.75 µs, tracing text 1.02 µs, `enabled` 11 ns. Instructions
//! (callgrind, `--toggle-collect` on the function per call): `AccessLog::record` json 2,387,
//! text 2,354; tracing json 21,261, text 14,757; `enabled` 170.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use switchboard::access::{self, AccessLog, Entry};
use switchboard::config::LogFormat;

fn typical() -> Entry<'static> {
    Entry {
        request_id: "sb-01M8SB8H7649NC7HKNFC4Q8FW7",
        vendor: "tryvox",
        endpoint: "voice",
        method: "POST",
        status: 201,
        upstream_status: Some(201),
        code: None,
        attempts: 1,
        duration: Duration::from_nanos(1_234_567),
        upstream: Some(Duration::from_nanos(901_234)),
        error: None,
    }
}

/// `record` in a loop; the queue is emptied (into nothing) whenever it nears the cap, as the
/// writer thread would, so no iteration takes the cheaper dropping path.
fn ours(c: &mut Criterion, name: &str, format: LogFormat) {
    let log = AccessLog::new(format, access::CAP);
    let e = typical();
    c.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let start = Instant::now();
            for _ in 0..iters {
                log.record(black_box(&e));
                if log.queued() > access::CAP / 2 {
                    log.drain_with(|c| {
                        black_box(c);
                        Ok(())
                    });
                }
            }
            start.elapsed()
        })
    });
}

fn lines(c: &mut Criterion) {
    ours(c, "access/json", LogFormat::Json);
    ours(c, "access/text", LogFormat::Text);

    let e = typical();
    let json = tracing_subscriber::fmt()
        .json()
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(json, || {
        c.bench_function("access/tracing_json (baseline)", |b| {
            b.iter(|| access::tracing_event(black_box(&e)))
        });
        c.bench_function("access/enabled", |b| b.iter(access::enabled));
    });
    let text = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter("info")
        .with_writer(std::io::sink)
        .finish();
    tracing::subscriber::with_default(text, || {
        c.bench_function("access/tracing_text (baseline)", |b| {
            b.iter(|| access::tracing_event(black_box(&e)))
        });
    });
}

criterion_group!(benches, lines);
criterion_main!(benches);
