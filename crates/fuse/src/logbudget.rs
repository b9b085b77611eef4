//! A per-uid budget for the daemon's own log lines about requests (refusals, failures), so
//! that one uid looping on a refused request cannot flood the daemon log.
//!
//! Owns: the counters. Each uid may have `BUDGET` request lines logged per `INTERVAL`; past
//! that its lines are counted, not written, and the first logged request after the interval
//! ends writes one "N log lines suppressed for uid U" line per uid that went over. Must never:
//! suppress the summary, or let one uid's flood use up another uid's budget.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Request log lines one uid may cause per interval.
pub const BUDGET: u32 = 50;
/// The interval.
pub const INTERVAL: Duration = Duration::from_secs(10);
/// More uids than this in one interval: the rest share one budget (uid `u32::MAX`).
const MAX_UIDS: usize = 4096;

struct State {
    since: Instant,
    /// uid → (lines logged, lines suppressed) in the current interval.
    per_uid: HashMap<u32, (u32, u64)>,
}

pub struct LogBudget {
    state: Mutex<State>,
    budget: u32,
    interval: Duration,
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new(BUDGET, INTERVAL)
    }
}

impl LogBudget {
    pub fn new(budget: u32, interval: Duration) -> Self {
        Self {
            state: Mutex::new(State {
                since: Instant::now(),
                per_uid: HashMap::new(),
            }),
            budget,
            interval,
        }
    }

    /// May a line caused by `uid` be logged now? Writes the summary of the last interval first
    /// when one has ended.
    pub fn admit(&self, uid: u32) -> bool {
        let (ok, summary) = self.take(uid, Instant::now());
        for (u, n) in summary {
            tracing::warn!(
                uid = u,
                "{n} log lines suppressed for uid {u} in the last {}s (more than {} per interval)",
                self.interval.as_secs(),
                self.budget
            );
        }
        ok
    }

    /// The decision and the (uid, suppressed) pairs of an interval that ended.
    fn take(&self, uid: u32, now: Instant) -> (bool, Vec<(u32, u64)>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let mut summary = Vec::new();
        if now.duration_since(s.since) >= self.interval {
            summary = s
                .per_uid
                .iter()
                .filter(|(_, (_, n))| *n > 0)
                .map(|(u, (_, n))| (*u, *n))
                .collect();
            summary.sort_unstable();
            s.per_uid.clear();
            s.since = now;
        }
        let key = if s.per_uid.len() >= MAX_UIDS && !s.per_uid.contains_key(&uid) {
            u32::MAX
        } else {
            uid
        };
        let e = s.per_uid.entry(key).or_insert((0, 0));
        let ok = if e.0 < self.budget {
            e.0 += 1;
            true
        } else {
            e.1 += 1;
            false
        };
        (ok, summary)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_per_uid_then_one_summary() {
        let b = LogBudget::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted = (0..10).filter(|_| b.take(7, t0).0).count();
        assert_eq!(admitted, 3);
        // Another uid has its own budget.
        assert!(b.take(8, t0).0);
        // The next interval: one summary for uid 7 (7 suppressed), and a fresh budget.
        let (ok, summary) = b.take(8, t0 + Duration::from_secs(11));
        assert!(ok);
        assert_eq!(summary, vec![(7, 7)]);
        let (_, again) = b.take(7, t0 + Duration::from_secs(12));
        assert!(again.is_empty());
    }
}
