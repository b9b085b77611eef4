//! Per-uid bounds: what one unprivileged uid may hold or ask for, so that it cannot exhaust
//! memory, the audit disk or the log for everyone else.
//!
//! Owns: the bounds (`UidLimits`, from `[limits]` in mounts.toml) and the per-uid request-rate
//! buckets. The counters of held resources live where the resources are (open handles and
//! buffered bytes in the FUSE adapter's handle table, outstanding leases in the lease manager);
//! they ask `UidLimits` for the bound. Must never: apply a bound to an admin unless
//! `apply_to_admins` says so, or block a caller (past a bound the answer is an error at once).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

/// The bounds. `None`: unbounded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UidLimits {
    /// Open files per uid (EMFILE past it).
    pub open_files: Option<u64>,
    /// Bytes in one uid's open write buffers and exchange inputs, held until each is closed
    /// (ENOSPC past it).
    pub buffered_bytes: Option<u64>,
    /// Outstanding (live) leases created by one uid (EDQUOT past it).
    pub leases: Option<u64>,
    /// Sustained requests per second per uid (EAGAIN past it).
    pub requests_per_sec: Option<u32>,
    /// Requests one uid may make at once above the sustained rate.
    pub request_burst: u32,
    /// Apply the bounds to admins too (default: admins are exempt).
    pub apply_to_admins: bool,
}

impl Default for UidLimits {
    fn default() -> Self {
        Self {
            open_files: Some(256),
            buffered_bytes: Some(64 << 20),
            leases: Some(256),
            requests_per_sec: Some(2000),
            request_burst: 4000,
            apply_to_admins: false,
        }
    }
}

impl UidLimits {
    /// No bounds at all (tests, `--dev`).
    pub fn unbounded() -> Self {
        Self {
            open_files: None,
            buffered_bytes: None,
            leases: None,
            requests_per_sec: None,
            request_burst: 0,
            apply_to_admins: false,
        }
    }
}

/// A token bucket per uid.
#[derive(Default)]
pub struct RateBuckets {
    buckets: Mutex<HashMap<u32, (f64, Instant)>>,
}

/// More uids than this in the table: forget the full (idle) buckets first.
const MAX_TRACKED_UIDS: usize = 4096;

impl RateBuckets {
    /// Take one token for `uid`; false when its bucket is empty.
    pub fn admit(&self, uid: u32, per_sec: u32, burst: u32) -> bool {
        let now = Instant::now();
        let cap = f64::from(burst.max(1));
        let rate = f64::from(per_sec.max(1));
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() > MAX_TRACKED_UIDS {
            b.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * rate < cap
            });
        }
        let (tokens, at) = b.entry(uid).or_insert((cap, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(cap);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_admits_the_burst_then_refuses() {
        let b = RateBuckets::default();
        let admitted = (0..50).filter(|_| b.admit(7, 1, 10)).count();
        assert_eq!(admitted, 10);
        // Another uid has its own bucket.
        assert!(b.admit(8, 1, 10));
    }
}
