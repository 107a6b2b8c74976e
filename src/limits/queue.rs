//! Queue mode's lines: the requests of one key on one endpoint wait for a token in arrival
//! order, behind those already waiting.
//!
//! Owns: the lines table ((key, endpoint) → line), each line's turn (a tokio mutex, which
//! hands itself over in FIFO order) and waiter count, and the [`Place`] a request holds in a
//! line — counted in the line and in `switchboard_queue_depth` until it is gone, however it
//! goes (an answer, or its future dropped mid-wait).
//!
//! Must not: decide about tokens (the limiter decides, on the request's turn), hold any lock
//! but the line's own turn across an `.await`, or keep a line nobody waits in.
//!
//! Approximate: a line's length is read after joining it, so racing joins may each see one
//! fewer ahead than `max_waiters` allows and both stay; the last one out removes the line
//! unless someone joined meanwhile (then that one removes it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use dashmap::DashMap;
use prometheus::IntGauge;

/// A FIFO line of one key's requests on one endpoint.
#[derive(Default)]
struct Line {
    turn: tokio::sync::Mutex<()>,
    waiters: AtomicUsize,
}

/// Every line with someone in it.
#[derive(Default)]
pub(super) struct Lines {
    table: DashMap<(u64, usize), Arc<Line>>,
}

impl Lines {
    /// Whether requests of `key` already wait on endpoint `ep` (a newcomer goes behind them).
    #[inline]
    pub(super) fn waiting(&self, key: u64, ep: usize) -> bool {
        self.table
            .get(&(key, ep))
            .is_some_and(|l| l.waiters.load(Ordering::Acquire) > 0)
    }

    /// Joins the line of `key` on `ep` (opening it when there is none).
    pub(super) fn join(&self, key: u64, ep: usize) -> Place<'_> {
        let line = self.table.entry((key, ep)).or_default().clone();
        let ahead = line.waiters.fetch_add(1, Ordering::AcqRel);
        Place {
            lines: self,
            at: (key, ep),
            line,
            ahead,
            depth: None,
        }
    }

    fn leave(&self, at: (u64, usize), line: &Arc<Line>) {
        if line.waiters.fetch_sub(1, Ordering::AcqRel) == 1 {
            // Last one out removes the line, unless someone just joined it.
            self.table.remove_if(&at, |_, l| {
                l.waiters.load(Ordering::Acquire) == 0 && Arc::strong_count(l) <= 2
            });
        }
    }
}

/// One request's place in a line; dropping it leaves the line.
pub(super) struct Place<'a> {
    lines: &'a Lines,
    at: (u64, usize),
    line: Arc<Line>,
    ahead: usize,
    /// The queue-depth gauge this place counts in, once it waits.
    depth: Option<&'a IntGauge>,
}

impl<'a> Place<'a> {
    /// Requests that were in the line when this one joined.
    pub(super) fn ahead(&self) -> usize {
        self.ahead
    }

    /// Counts this request in `depth` (the queue depth) until it leaves.
    pub(super) fn wait(&mut self, depth: Option<&'a IntGauge>) {
        if let Some(g) = depth {
            g.inc();
        }
        self.depth = depth;
    }

    /// Waits until every request ahead has had its turn; the turn lasts while the guard
    /// lives.
    pub(super) async fn turn(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.line.turn.lock().await
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        if let Some(g) = self.depth {
            g.dec();
        }
        self.lines.leave(self.at, &self.line);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use super::super::testing::{count, limiter, metrics, spec};
    use super::super::{Mode, Verdict};
    use super::*;
    use tokio::time::Instant;

    #[tokio::test(start_paused = true)]
    async fn queue_spreads_a_burst_and_never_waits_past_max_wait() {
        let mut s = spec(10, 10, 1); // one per 1 s after the first
        s.mode = Mode::Queue;
        s.max_wait = Duration::from_millis(3500);
        let l = Arc::new(limiter(vec![], vec![s], None));
        let start = Instant::now();
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { (l.admit(5, 0).await, start.elapsed()) })
            })
            .collect();
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await.unwrap());
        }
        let mut admitted: Vec<Duration> = results
            .iter()
            .filter(|(v, _)| *v == Verdict::Allow)
            .map(|(_, at)| *at)
            .collect();
        admitted.sort();
        // At 0, 1, 2 and 3 s; the next token (4 s) is past max_wait.
        assert_eq!(admitted.len(), 4, "{results:?}");
        for (i, at) in admitted.iter().enumerate() {
            assert_eq!(at.as_secs(), i as u64, "{admitted:?}");
        }
        for (v, at) in &results {
            assert!(
                *at <= Duration::from_millis(3500),
                "{v:?} answered at {at:?}"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_line_rejects_at_once() {
        let mut s = spec(60, 60, 1);
        s.mode = Mode::Queue;
        s.max_waiters = 2;
        let m = metrics();
        let decisions = m.decisions.clone();
        let l = Arc::new(limiter(vec![], vec![s], Some(m)));
        assert_eq!(l.admit(9, 0).await, Verdict::Allow);
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let l = l.clone();
                tokio::spawn(async move { l.admit(9, 0).await })
            })
            .collect();
        tokio::task::yield_now().await;
        let before = Instant::now();
        assert!(matches!(l.admit(9, 0).await, Verdict::Reject(_)));
        assert_eq!(before.elapsed(), Duration::ZERO);
        for w in waiting {
            assert_eq!(w.await.unwrap(), Verdict::Allow);
        }
        assert_eq!(count(&decisions, "key", "queued"), 2);
        assert_eq!(count(&decisions, "key", "rejected"), 1);
        assert_eq!(count(&decisions, "key", "allowed"), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiter_that_goes_away_gives_its_place_back() {
        let mut s = spec(60, 60, 1);
        s.mode = Mode::Queue;
        s.max_waiters = 1;
        let m = metrics();
        let depth = m.queue_depth.clone();
        let l = Arc::new(limiter(vec![], vec![s], Some(m)));
        assert_eq!(l.admit(9, 0).await, Verdict::Allow);
        let gone = {
            let l = l.clone();
            tokio::spawn(async move { l.admit(9, 0).await })
        };
        tokio::task::yield_now().await;
        assert_eq!(depth.get(), 1, "waiting");
        // The client disconnects: its request future is dropped mid-wait.
        gone.abort();
        assert!(gone.await.unwrap_err().is_cancelled());
        assert_eq!(depth.get(), 0);
        // Its place is free: the next request may wait (a full line would reject at once).
        let start = Instant::now();
        assert_eq!(l.admit(9, 0).await, Verdict::Allow);
        assert_eq!(start.elapsed(), Duration::from_secs(1));
        assert_eq!(depth.get(), 0);
    }
}
