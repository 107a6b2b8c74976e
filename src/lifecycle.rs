//! Process lifecycle shared by the proxy, the admin endpoints and the shutdown watcher:
//! whether we are ready, whether we are draining, and how many requests are in flight.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// Lifecycle flags and the in-flight request count.
#[derive(Debug, Default)]
pub struct Lifecycle {
    ready: AtomicBool,
    draining: AtomicBool,
    inflight: AtomicUsize,
}

impl Lifecycle {
    /// A new, not-yet-ready lifecycle.
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    /// Marks listeners bound and config loaded.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
    }

    /// Starts draining: `/readyz` fails from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    /// Whether `/readyz` should answer 200.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst) && !self.draining.load(Ordering::SeqCst)
    }

    /// Whether a shutdown is under way.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }

    /// Sleeps until `until`, waking early (with `false`) once a shutdown starts: requests
    /// that wait (for a retry, for a rate-limit token) are answered rather than cut at the
    /// end of the grace period. Checks every 100 ms.
    pub async fn sleep_unless_draining(&self, until: tokio::time::Instant) -> bool {
        loop {
            if self.is_draining() {
                return false;
            }
            let now = tokio::time::Instant::now();
            if now >= until {
                return true;
            }
            tokio::time::sleep((until - now).min(std::time::Duration::from_millis(100))).await;
        }
    }

    /// Requests currently being handled.
    pub fn inflight(&self) -> usize {
        self.inflight.load(Ordering::SeqCst)
    }

    /// Counts one request in flight until the guard drops.
    pub fn track(self: &Arc<Self>) -> InflightGuard {
        self.inflight.fetch_add(1, Ordering::SeqCst);
        InflightGuard(self.clone())
    }
}

/// Decrements the in-flight count on drop, whatever path the request took.
#[derive(Debug)]
pub struct InflightGuard(Arc<Lifecycle>);

impl Drop for InflightGuard {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::SeqCst);
    }
}
