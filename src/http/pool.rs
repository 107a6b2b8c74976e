//! Upstream connection reuse: a small per-thread cache of idle HTTP/1 connections in front
//! of Pingora's shared pool.
//!
//! Pingora's pool, on every release, wraps the stream in an `Arc<Mutex<_>>`, takes the pool
//! lock and spawns a task that watches the idle connection; every reuse wakes that task to
//! hand the stream back. On a one-request-per-connection-use proxy that is paid per request:
//! `perf` put it at ~11 % of Switchboard's CPU under load (benches/RESULTS.md). Pingora runs
//! each worker as its own single-threaded runtime (work stealing is off), so a connection
//! released on a thread is best reused on that thread: this cache is a plain `Vec` per
//! thread, no lock, no task per connection.
//!
//! What Pingora's watcher gave, the cache keeps differently:
//! - a connection is checked before reuse (a non-blocking read: closed by the vendor, or
//!   unexpected bytes, and it is dropped; the next one is tried, then a new one is dialled),
//!   so a vendor's idle close is found *before* a request is sent on it;
//! - idle connections expire after the vendor's idle timeout: checked on every take, and a
//!   per-thread sweep (one task per worker thread, once a second) closes expired and
//!   vendor-closed connections even when no traffic comes;
//! - the cache holds at most [`PER_THREAD`] connections per thread; when full, the oldest is
//!   closed.
//!
//! Pingora's transport connector still dials (TCP, TLS). Peers are HTTP/1-only (no ALPN
//! `h2` is offered): Switchboard's own client ([`super::client`]) speaks HTTP/1 on them.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use pingora::connectors::TransportConnector;
use pingora::prelude::HttpPeer;
use pingora::protocols::Stream;
use pingora::upstreams::peer::Peer;
use pingora::Result;
use tokio::io::AsyncReadExt;

use super::client::Conn;

/// Idle connections kept per worker thread, over all vendors.
pub const PER_THREAD: usize = 128;

/// How often each worker thread closes expired idle connections.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

struct Idle {
    key: u64,
    stream: Stream,
    expires: Instant,
}

thread_local! {
    static IDLE: RefCell<Vec<Idle>> = const { RefCell::new(Vec::new()) };
    static SWEEPING: Cell<bool> = const { Cell::new(false) };
}

/// Upstream connections: reused from this thread's idle cache when possible, else dialled
/// by Pingora's transport connector (TCP, TLS).
pub struct Upstreams {
    connector: TransportConnector,
}

impl Upstreams {
    /// Wraps Pingora's transport connector.
    pub fn new(connector: TransportConnector) -> Self {
        Upstreams { connector }
    }

    /// A connection to `peer`.
    pub async fn get(&self, peer: &HttpPeer) -> Result<Conn> {
        if let Some(stream) = take(peer.reuse_hash(), Instant::now()) {
            return Ok(Conn::new(stream));
        }
        // Boxed: dialling (TCP, TLS handshake) is a future of several KiB that would
        // otherwise sit inline in every request's state, and be copied with it, even when
        // the connection is reused.
        let stream = Box::pin(self.connector.new_stream(peer)).await?;
        Ok(Conn::new(stream))
    }

    /// Returns a connection whose exchange completed; it is kept for reuse when the
    /// protocol allows it (keep-alive, body read to its end, nothing after it), closed
    /// otherwise.
    pub fn release(conn: Conn, peer: &HttpPeer, idle: Duration) {
        if let Some(stream) = conn.into_reusable() {
            put(peer.reuse_hash(), stream, Instant::now() + idle);
            start_sweeper();
        }
    }
}

/// The newest healthy, unexpired idle connection for `key`; expired or broken ones met on
/// the way are closed.
fn take(key: u64, now: Instant) -> Option<Stream> {
    IDLE.with(|cell| {
        let mut idle = cell.borrow_mut();
        while let Some(i) = idle.iter().rposition(|c| c.key == key) {
            let mut c = idle.remove(i);
            if c.expires > now && still_idle(&mut c.stream) {
                return Some(c.stream);
            }
        }
        None
    })
}

fn put(key: u64, stream: Stream, expires: Instant) {
    IDLE.with(|cell| {
        let mut idle = cell.borrow_mut();
        if idle.len() >= PER_THREAD {
            idle.remove(0);
        }
        idle.push(Idle {
            key,
            stream,
            expires,
        });
    });
}

/// Closes this thread's expired and vendor-closed idle connections; how many remain.
fn sweep(now: Instant) -> usize {
    IDLE.with(|cell| {
        let mut idle = cell.borrow_mut();
        idle.retain_mut(|c| c.expires > now && still_idle(&mut c.stream));
        idle.len()
    })
}

/// An idle connection must have nothing to read: bytes mean the vendor sent something
/// unasked (the framing can no longer be trusted), end-of-stream means it closed.
fn still_idle(stream: &mut Stream) -> bool {
    let mut buf = [0u8; 1];
    // `unconstrained`: tokio's cooperative budget could make a ready read look pending.
    let read = std::pin::pin!(tokio::task::unconstrained(stream.read(&mut buf)));
    read.poll(&mut Context::from_waker(Waker::noop()))
        .is_pending()
}

/// One sweeping task per worker thread, started by the first connection it keeps and ended
/// when the thread holds none.
fn start_sweeper() {
    if SWEEPING.with(|s| s.replace(true)) {
        return;
    }
    // Spawned from a request running on this worker's single-threaded runtime, so the task
    // runs on this thread and sees this thread's cache.
    tokio::spawn(async {
        loop {
            tokio::time::sleep(SWEEP_EVERY).await;
            if sweep(Instant::now()) == 0 {
                SWEEPING.with(|s| s.set(false));
                return;
            }
        }
    });
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    async fn pair() -> (Stream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        (
            Box::new(pingora::protocols::l4::stream::Stream::from(
                client.unwrap(),
            )),
            server.unwrap().0,
        )
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reuses_newest_healthy_and_drops_closed_or_chatty_or_expired() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let (a, _a_peer) = pair().await;
        let (b, b_peer) = pair().await;
        let (c, mut c_peer) = pair().await;
        let (d, _d_peer) = pair().await;
        put(7, a, later);
        put(7, b, later);
        put(7, c, later);
        put(9, d, now); // already expired
        drop(b_peer); // the vendor closed b
        c_peer.write_all(b"x").await.unwrap(); // c has unasked bytes
        tokio::time::sleep(Duration::from_millis(50)).await;
        // c and b are newer than a but unusable: both closed, a reused.
        assert!(take(7, now).is_some());
        assert!(take(7, now).is_none());
        assert!(take(9, now + Duration::from_millis(1)).is_none());
        assert_eq!(sweep(now), 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn sweep_closes_expired_and_keeps_live() {
        let now = Instant::now();
        let (a, _ap) = pair().await;
        let (b, _bp) = pair().await;
        put(1, a, now + Duration::from_secs(60));
        put(1, b, now + Duration::from_millis(10));
        assert_eq!(sweep(now + Duration::from_secs(1)), 1);
        assert_eq!(sweep(now + Duration::from_secs(61)), 0);
    }

    /// The background sweep, not just `sweep()`: it runs on the thread's runtime, closes an
    /// expired and a vendor-closed connection with no traffic at all, and ends when the
    /// cache is empty (so the next release starts it again).
    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn the_sweeper_closes_idle_connections_without_traffic_and_then_stops() {
        let (expired, _peer) = pair().await;
        let (closed, closed_peer) = pair().await;
        put(3, expired, Instant::now());
        put(4, closed, Instant::now() + Duration::from_secs(3600));
        drop(closed_peer);
        start_sweeper();
        assert!(SWEEPING.with(Cell::get));
        // Paused time jumps over the sweeper's sleep; real time lets the FIN arrive.
        #[allow(clippy::disallowed_methods)]
        std::thread::sleep(Duration::from_millis(50));
        tokio::time::sleep(SWEEP_EVERY * 2).await;
        assert_eq!(IDLE.with(|c| c.borrow().len()), 0);
        assert!(
            !SWEEPING.with(Cell::get),
            "the sweeper ended with the cache empty"
        );
    }

    #[tokio::test(flavor = "current_thread")]
    async fn full_cache_closes_the_oldest() {
        let now = Instant::now();
        let later = now + Duration::from_secs(60);
        let mut peers = Vec::new();
        for k in 0..=PER_THREAD as u64 {
            let (s, p) = pair().await;
            peers.push(p);
            put(k, s, later);
        }
        assert!(take(0, now).is_none(), "the oldest was closed");
        assert!(take(PER_THREAD as u64, now).is_some());
        assert_eq!(sweep(now), PER_THREAD - 1);
        assert_eq!(sweep(later), 0);
    }
}
