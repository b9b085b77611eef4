//! Renewal: extending a lease's deadline by an increment counted from now, capped by its max
//! TTL. Done under the lease's claim (a revocation cannot finish between the read and the
//! write back), upstream first (e.g. a database role's `VALID UNTIL`, through
//! `Backend::renew`), then the record by compare-and-swap (another daemon's change wins: EBUSY).
//!
//! Owns: `renew`, `renew_claimed`.
//! Must never: renew a lease that is not renewable, expired, or being revoked; change the
//! record or the index when the upstream refused; or hold the index lock across the upstream
//! call.

use super::index::Meta;
use super::{lock, record, revoke, LeaseManager, LeaseRecord};
use crate::error::{Error, ErrorKind, Result};

/// Renew by `increment_secs` (default: the lease's own increment) counted from now, capped
/// by the lease's max TTL (capping is not an error).
pub(super) fn renew(
    mgr: &LeaseManager,
    id: &str,
    increment_secs: Option<u64>,
) -> Result<LeaseRecord> {
    mgr.check_loaded()?;
    // Claimed, so a revocation cannot finish between the read and the write back.
    if !revoke::claim(mgr, id) {
        return Err(Error::not_found(&format!("sys/leases/{id}")));
    }
    let res = renew_claimed(mgr, id, increment_secs);
    revoke::release(mgr, id);
    res
}

fn renew_claimed(mgr: &LeaseManager, id: &str, increment_secs: Option<u64>) -> Result<LeaseRecord> {
    let Some((mut rec, version)) = record::load_versioned(&mgr.barrier, id)? else {
        lock(&mgr.index).remove(id);
        return Err(Error::not_found(&format!("sys/leases/{id}")));
    };
    if !rec.renewable {
        return Err(Error::not_permitted(format!("lease {id} is not renewable")));
    }
    if rec.irrevocable || rec.attempts > 0 {
        return Err(Error::invalid(format!(
            "lease {id} is being revoked; it cannot be renewed"
        )));
    }
    let now = mgr.now_ms();
    if now >= rec.expires_ms {
        return Err(Error::invalid(format!("lease {id} has expired")));
    }
    let inc = increment_secs.unwrap_or(rec.increment_secs);
    rec.expires_ms = now
        .saturating_add(inc.saturating_mul(1000))
        .min(rec.max_expires_ms);
    // Upstream first (e.g. a database role's VALID UNTIL): if that fails, nothing changes.
    let backend = lock(&mgr.lookup).as_ref().and_then(|f| f(rec.mount()));
    if let Some(b) = backend {
        b.renew(&rec)
            .map_err(|e| Error::new(e.kind, format!("renewing {id}: {}", e.message)))?;
    }
    if !record::store_if(&mgr.barrier, &rec, &version)? {
        return Err(Error::new(
            ErrorKind::Busy,
            format!("lease {id} was changed by another daemon meanwhile; try again"),
        ));
    }
    let mut ix = lock(&mgr.index);
    let meta = ix.leases.get(id).map_or(Meta::of(&rec), |m| m.like(&rec));
    ix.set(id, meta);
    drop(ix);
    mgr.changed.notify_all();
    mgr.due.notify_all();
    Ok(rec)
}
