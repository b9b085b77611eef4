//! Issuing: turning a backend's `NewLease` into a persisted, indexed lease. The per-uid bound
//! is reserved first (so concurrent issues cannot overshoot it) and given back if persisting
//! fails; a held lease is claimed for its issuer until it calls `release` (secret made) or
//! `discard` (making it certainly failed); a cleanup lease records the upstream leftovers of
//! a creation that failed part way as a lease already being revoked.
//!
//! Owns: `NewLease`, `issue`, `issue_reserved`, `cleanup`, `discard`.
//! Must never: return a lease before its record is durable, hand out a lease past the
//! caller's bound, or call upstream (the backend makes the secret; this only records it).

use super::index::Meta;
use super::{lock, record, revoke, LeaseManager, LeaseRecord};
use crate::error::Result;

/// A new lease, as a backend asks for it.
pub struct NewLease {
    pub id: String,
    pub path: String,
    pub ttl_secs: u64,
    pub max_ttl_secs: u64,
    pub renewable: bool,
    pub uid: u32,
    pub secret: serde_json::Value,
    /// The bound on `uid`'s live leases (`[limits] leases_per_uid`; `None` for admins and
    /// when unbounded): past it the lease is refused (EDQUOT).
    pub limit: Option<u64>,
}

/// Record a new lease (persisted before this returns); `held`: claimed for the caller (see
/// `LeaseManager::issue_held`).
pub(super) fn issue(mgr: &LeaseManager, new: NewLease, held: bool) -> Result<LeaseRecord> {
    mgr.check_loaded()?;
    let uid = new.uid;
    lock(&mgr.index).reserve(uid, new.limit)?;
    let res = issue_reserved(mgr, new, held);
    if res.is_err() {
        lock(&mgr.index).unreserve(uid);
    }
    res
}

fn issue_reserved(mgr: &LeaseManager, new: NewLease, held: bool) -> Result<LeaseRecord> {
    let now = mgr.now_ms();
    let max_ttl = new.max_ttl_secs.max(1);
    let ttl = new.ttl_secs.clamp(1, max_ttl);
    let rec = LeaseRecord {
        id: new.id,
        path: new.path,
        issued_ms: now,
        expires_ms: now.saturating_add(ttl.saturating_mul(1000)),
        max_expires_ms: now.saturating_add(max_ttl.saturating_mul(1000)),
        increment_secs: ttl,
        renewable: new.renewable,
        uid: new.uid,
        secret: new.secret,
        attempts: 0,
        retry_at_ms: None,
        last_error: None,
        irrevocable: false,
    };
    record::store(&mgr.barrier, &rec)?;
    let mut ix = lock(&mgr.index);
    let earliest = ix.queue.first().map(|(d, _)| *d);
    ix.set(&rec.id, Meta::of(&rec));
    ix.unreserve(rec.uid);
    if held {
        ix.inflight.insert(rec.id.clone());
    }
    drop(ix);
    if earliest.is_none_or(|e| rec.expires_ms < e) {
        mgr.due.notify_all();
    }
    Ok(rec)
}

/// Record the upstream leftovers of a creation that failed part way (e.g. an IAM user that
/// may exist after a timed-out call) as a lease already being revoked: not renewable, state
/// "retrying" with `reason`, first attempt after the backoff. The scheduler retries it like
/// any failed revocation, so the leftover goes away once the upstream answers again, and a
/// restart keeps it (it is persisted before this returns).
pub(super) fn cleanup(mgr: &LeaseManager, new: NewLease, reason: &str) -> Result<LeaseRecord> {
    mgr.check_loaded()?;
    let now = mgr.now_ms();
    let rec = LeaseRecord {
        id: new.id,
        path: new.path,
        issued_ms: now,
        expires_ms: now,
        max_expires_ms: now,
        increment_secs: 0,
        renewable: false,
        uid: new.uid,
        secret: new.secret,
        attempts: 1,
        retry_at_ms: Some(now.saturating_add(revoke::backoff_ms(&mgr.config, 1))),
        last_error: Some(reason.to_string()),
        irrevocable: false,
    };
    record::store(&mgr.barrier, &rec)?;
    lock(&mgr.index).set(&rec.id, Meta::of(&rec));
    mgr.due.notify_all();
    tracing::warn!(lease = %rec.id, "creation failed part way; its upstream leftovers will be revoked in the background: {reason}");
    Ok(rec)
}

/// Forget a lease held with `issue_held` whose secret was never made (no upstream call).
pub(super) fn discard(mgr: &LeaseManager, id: &str) -> Result<()> {
    let res = record::delete(&mgr.barrier, id);
    if res.is_ok() {
        lock(&mgr.index).remove(id);
    }
    revoke::release(mgr, id);
    res
}
