//! The background task that keeps every limiter's tables small.
//!
//! Owns: [`Sweeper`], a Pingora background service that, every [`Limiter::evict_every`]
//! (the shortest among the limiters), forgets idle keys and expired pauses.
//!
//! Must not: sit on the request path, or decide what is idle (each limiter's key table
//! does).
//!
//! Approximate: a key is forgotten up to one sweep interval after it became idle, and an
//! expired pause costs decisions a table lookup until the next sweep.

use std::sync::Arc;
use std::time::Duration;

use super::Limiter;

/// Something with a key table to keep small.
pub trait Sweep: Send + Sync {
    /// Forgets idle keys and expired pauses; returns the live keys.
    fn evict(&self) -> usize;
    /// How often [`Sweep::evict`] should run.
    fn evict_every(&self) -> Duration;
}

impl Sweep for Limiter {
    fn evict(&self) -> usize {
        Limiter::evict(self)
    }

    fn evict_every(&self) -> Duration {
        Limiter::evict_every(self)
    }
}

/// The limiters in force now (a reload replaces them).
pub type Limiters = Box<dyn Fn() -> Vec<Arc<dyn Sweep>> + Send + Sync>;

/// Background service that evicts idle keys of every vendor's limiter.
pub struct Sweeper {
    limiters: Limiters,
}

impl Sweeper {
    /// Sweeps the limiters `limiters` names at each sweep, until shutdown.
    pub fn new(limiters: Limiters) -> Self {
        Sweeper { limiters }
    }
}

#[async_trait::async_trait]
impl pingora::services::background::BackgroundService for Sweeper {
    async fn start(&self, mut shutdown: pingora::server::ShutdownWatch) {
        loop {
            let limiters = (self.limiters)();
            let every = limiters
                .iter()
                .map(|l| l.evict_every())
                .min()
                .unwrap_or(Duration::from_secs(60));
            drop(limiters);
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = shutdown.changed() => return,
            }
            for l in (self.limiters)() {
                l.evict();
            }
        }
    }
}
