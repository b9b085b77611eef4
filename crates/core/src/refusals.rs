//! Repeated refusals, aggregated: so that one uid looping over refused requests cannot fill the
//! audit disk for everyone else.
//!
//! Owns: the per-interval counters. The first refusal of a kind — same uid, operation, path
//! pattern (the mount: `secret/*`) and errno — in an interval is written to the audit log in
//! full; the others of that interval are only counted, and when the interval has passed one
//! line stands for them (`"count":N`, the path pattern, the last caller's pid, a sample
//! reason), in the same hash chain. Failures of the daemon itself (EIO) are never aggregated:
//! each is its own line. Must never: drop a count (a full table coarsens the pattern instead),
//! or hold a value (reasons carry paths and causes only).

use crate::caller::Caller;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long one aggregation window lasts.
pub const INTERVAL: Duration = Duration::from_secs(5);
/// More kinds than this at once: new kinds are counted per uid and operation only.
const MAX_KINDS: usize = 8192;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Kind {
    uid: u32,
    op: &'static str,
    pattern: String,
    errno: &'static str,
}

struct Window {
    started: Instant,
    /// Refusals after the first of this window (not written yet).
    suppressed: u64,
    /// The most recent suppressed caller and reason.
    last: Option<(Caller, String)>,
}

/// One line that stands for `count` refusals.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub caller: Caller,
    pub op: &'static str,
    pub pattern: String,
    pub errno: &'static str,
    pub count: u64,
    pub reason: String,
}

/// What to do with one refusal.
pub enum Decision {
    /// Write it in full (after writing the aggregates of windows that have just closed).
    Write(Vec<Aggregate>),
    /// Counted: it will be part of an aggregate line.
    Counted,
}

#[derive(Default)]
pub struct Refusals {
    windows: Mutex<HashMap<Kind, Window>>,
}

/// The path pattern a refusal is counted under: its first segment (the mount), then `/*`.
fn pattern_of(path: &str) -> String {
    match path.split_once('/') {
        Some((head, _)) => format!("{head}/*"),
        None if path.is_empty() => String::new(),
        None => path.to_string(),
    }
}

fn aggregate(k: &Kind, w: Window) -> Option<Aggregate> {
    let (caller, reason) = w.last?;
    Some(Aggregate {
        caller,
        op: k.op,
        pattern: k.pattern.clone(),
        errno: k.errno,
        count: w.suppressed,
        reason: format!(
            "{} more refusals like this within {} s (the last: {reason})",
            w.suppressed,
            INTERVAL.as_secs()
        ),
    })
}

impl Refusals {
    /// Account for one refusal of `op` on `path` with `errno`.
    pub fn decide(
        &self,
        caller: &Caller,
        op: &'static str,
        path: &str,
        errno: &'static str,
        reason: &str,
        now: Instant,
    ) -> Decision {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let mut kind = Kind {
            uid: caller.uid,
            op,
            pattern: pattern_of(path),
            errno,
        };
        if w.len() >= MAX_KINDS && !w.contains_key(&kind) {
            kind.pattern = "*".into();
            kind.errno = "*";
        }
        match w.get_mut(&kind) {
            Some(win) if now.duration_since(win.started) < INTERVAL => {
                win.suppressed += 1;
                win.last = Some((caller.clone(), reason.to_string()));
                Decision::Counted
            }
            _ => {
                let closed = w
                    .insert(
                        kind.clone(),
                        Window {
                            started: now,
                            suppressed: 0,
                            last: None,
                        },
                    )
                    .and_then(|old| aggregate(&kind, old));
                Decision::Write(closed.into_iter().collect())
            }
        }
    }

    /// The aggregates of every window that has closed by `now` (and forget those windows).
    pub fn due(&self, now: Instant) -> Vec<Aggregate> {
        let mut w = self.windows.lock().unwrap_or_else(|p| p.into_inner());
        let closed: Vec<Kind> = w
            .iter()
            .filter(|(_, win)| now.duration_since(win.started) >= INTERVAL)
            .map(|(k, _)| k.clone())
            .collect();
        closed
            .into_iter()
            .filter_map(|k| w.remove(&k).and_then(|win| aggregate(&k, win)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_is_written_the_rest_counted_then_aggregated() {
        let r = Refusals::default();
        let c = Caller::new(1001, 1001, 7);
        let t0 = Instant::now();
        assert!(matches!(
            r.decide(&c, "stat", "secret/nx1", "ENOENT", "secret/nx1: no such entry", t0),
            Decision::Write(v) if v.is_empty()
        ));
        for i in 2..=100 {
            let p = format!("secret/nx{i}");
            assert!(matches!(
                r.decide(&c, "stat", &p, "ENOENT", "no such entry", t0),
                Decision::Counted
            ));
        }
        // Another uid, another kind: written.
        let other = Caller::new(1002, 1002, 8);
        assert!(matches!(
            r.decide(&other, "stat", "secret/x", "ENOENT", "no", t0),
            Decision::Write(_)
        ));
        assert!(
            r.due(t0).is_empty(),
            "nothing is due before the interval ends"
        );
        let later = t0 + INTERVAL;
        let due = r.due(later);
        assert_eq!(
            due.len(),
            1,
            "one aggregate (uid 1002 had nothing suppressed)"
        );
        assert_eq!(due[0].count, 99);
        assert_eq!(due[0].pattern, "secret/*");
        assert_eq!(due[0].caller.uid, 1001);
        // A new window after a closed one that was not flushed: its aggregate comes first.
        r.decide(&c, "stat", "secret/a", "ENOENT", "no", later);
        r.decide(&c, "stat", "secret/b", "ENOENT", "no", later);
        match r.decide(&c, "stat", "secret/c", "ENOENT", "no", later + INTERVAL) {
            Decision::Write(v) => assert_eq!(v.first().map(|a| a.count), Some(1)),
            Decision::Counted => panic!("a new window writes its first refusal"),
        }
    }

    #[test]
    fn a_full_table_coarsens_instead_of_dropping() {
        let r = Refusals::default();
        let t0 = Instant::now();
        for uid in 0..MAX_KINDS as u32 {
            r.decide(&Caller::new(uid, 0, 1), "stat", "m/x", "ENOENT", "no", t0);
        }
        let c = Caller::new(99_999, 0, 1);
        assert!(matches!(
            r.decide(&c, "stat", "n/x", "ENOENT", "no", t0),
            Decision::Write(_)
        ));
        assert!(matches!(
            r.decide(&c, "read", "z/x", "EACCES", "no", t0),
            Decision::Write(_)
        ));
        assert!(matches!(
            r.decide(&c, "read", "q/x", "EPERM", "no", t0),
            Decision::Counted
        ));
    }
}
