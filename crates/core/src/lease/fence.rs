//! Who may revoke at expiry, and the fenced record changes of such a revocation. On a shared
//! store only the elected expiry leader (`cluster::Leadership`) revokes due leases, and the
//! record change that follows the upstream revocation (delete, or a failed attempt written
//! back) is fenced by its term: a paused or deposed leader's write fails in the store and is
//! logged ("fenced"), the record stays for the new leader. What the deposed leader already did
//! upstream is a revocation the new leader repeats: every backend's revocation is idempotent
//! (a user, key or role already gone counts as revoked). Alone on its store (no leadership
//! set) the daemon is always the leader and nothing is fenced. `rm` and prefix revocations
//! are never fenced: any daemon may revoke what it is asked to.
//!
//! Owns: `Fence`, `expiry_fence`, `delete`, `store_if`.
//! Must never: let a write through after the term it was fenced with was refused, or revoke at
//! expiry without a term on a shared store.

use super::record::{self, LeaseRecord};
use super::LeaseManager;
use crate::barrier::Version;
use crate::cluster::{Leadership, Term};
use crate::error::Result;
use std::sync::Arc;

/// The right to revoke at expiry, taken before the upstream call.
pub(super) enum Fence {
    /// Alone on the store: unfenced.
    Single,
    /// The leader's term; its writes are fenced by it.
    Term(Arc<dyn Leadership>, Term),
    /// Another daemon leads (or nobody yet): do not revoke at expiry.
    NotLeader,
}

pub(super) fn expiry_fence(mgr: &LeaseManager) -> Fence {
    match mgr.leadership.get() {
        None => Fence::Single,
        Some(l) => match l.term() {
            Some(t) => Fence::Term(l.clone(), t),
            None => Fence::NotLeader,
        },
    }
}

fn refused(l: &dyn Leadership, term: Term, id: &str, what: &str) {
    tracing::error!(
        lease = %id,
        term = term.revision,
        node = %l.node_id(),
        "fenced: {what} refused, this daemon's expiry term is over (another daemon leads); \
         the record is left to the new leader, whose revocation repeats the upstream one \
         (idempotent)"
    );
    l.lost(term);
}

/// Delete the record of `id` after its upstream revocation. Ok(false): fenced off.
pub(super) fn delete(mgr: &LeaseManager, id: &str, fence: &Fence) -> Result<bool> {
    match fence {
        Fence::Term(l, term) => {
            let ok = mgr
                .barrier
                .delete_fenced(&record::key(id), l.as_ref(), *term)?;
            if !ok {
                refused(l.as_ref(), *term, id, "deleting the revoked lease's record");
            }
            Ok(ok)
        }
        Fence::Single | Fence::NotLeader => record::delete(&mgr.barrier, id).map(|_| true),
    }
}

/// Write a failed attempt back (compare-and-swap against `version`). Ok(None): fenced off.
pub(super) fn store_if(
    mgr: &LeaseManager,
    rec: &LeaseRecord,
    version: &Version,
    fence: &Fence,
) -> Result<Option<bool>> {
    match fence {
        Fence::Term(l, term) => {
            let raw = serde_json::to_vec(rec)
                .map_err(|e| crate::error::Error::io(format!("lease record: {e}")))?;
            let r = mgr.barrier.compare_and_swap_fenced(
                &record::key(&rec.id),
                Some(version),
                Some(&raw),
                l.as_ref(),
                *term,
            )?;
            if r.is_none() {
                refused(l.as_ref(), *term, &rec.id, "recording the failed attempt");
            }
            Ok(r)
        }
        Fence::Single | Fence::NotLeader => record::store_if(&mgr.barrier, rec, version).map(Some),
    }
}
