//! The index in step with storage. At unseal, `restore` indexes every stored record (leases
//! that expired while the daemon was down are due at once; an unreadable record is listed,
//! never scheduled, never forgotten). On a shared store (several daemons on one etcd): a
//! record another daemon wrote or deleted is seen at once through the store's watch
//! (`stored`/`deleted`, called by the cluster wiring), found on access (`find`), and, as a
//! backstop for a watch that missed events, by the periodic `sync_shared` (every
//! `SHARED_SYNC`); a record gone from storage (another daemon revoked it) leaves the index.
//! Leases from other daemons are scheduled like this daemon's own: only the elected expiry
//! leader revokes at expiry (`fence.rs`), so there is no grace for their issuer.
//!
//! Owns: `restore`, `find`, `stored`, `deleted`, `sync_shared` (and its logged form for the
//! scheduler), `SHARED_SYNC`.
//! Must never: revoke or call upstream (takeover is only scheduling: the revocation path
//! re-reads the record before acting), drop an entry that is claimed (in flight) or still in
//! storage, or hold the index lock across a storage call.

use super::index::{Index, Meta};
use super::record::{self, STORE_PREFIX};
use super::{lock, LeaseManager};
use crate::error::{ErrorKind, Result};
use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

/// How often a daemon on a shared store re-reads the lease records (new ones from other
/// daemons, ones another daemon revoked).
pub(super) const SHARED_SYNC: Duration = Duration::from_secs(30);

/// On a shared store: a lease this daemon does not know may have been issued by another
/// one. Look for its record and index it. Returns whether it is known now.
pub(super) fn find(mgr: &LeaseManager, id: &str) -> bool {
    if lock(&mgr.index).leases.contains_key(id) {
        return true;
    }
    if !mgr.barrier.storage().shared() {
        return false;
    }
    match record::load(&mgr.barrier, id) {
        Ok(Some(rec)) => {
            let mut ix = lock(&mgr.index);
            if !ix.leases.contains_key(id) {
                ix.set(id, Meta::of(&rec));
            }
            true
        }
        _ => false,
    }
}

/// The watch saw record `id` written (by any daemon): index it, or re-read its schedule
/// (a renewal elsewhere). Claimed entries are left alone (their holder re-reads the record).
pub(super) fn stored(mgr: &LeaseManager, id: &str) {
    if !mgr.loaded.load(Ordering::SeqCst) || lock(&mgr.index).inflight.contains(id) {
        return;
    }
    match record::load(&mgr.barrier, id) {
        Ok(Some(rec)) => {
            let mut ix = lock(&mgr.index);
            if !ix.inflight.contains(id) {
                ix.set(id, Meta::of(&rec));
            }
            drop(ix);
            mgr.changed.notify_all();
            mgr.due.notify_all();
        }
        Ok(None) => deleted(mgr, id),
        Err(e) => tracing::warn!(lease = %id, "watched lease record unreadable: {}", e.message),
    }
}

/// The watch saw record `id` deleted (revoked, here or by another daemon): forget it unless
/// it is claimed here, and tell the change listener.
pub(super) fn deleted(mgr: &LeaseManager, id: &str) {
    let mut ix = lock(&mgr.index);
    if ix.inflight.contains(id) || !ix.leases.contains_key(id) {
        return;
    }
    ix.remove(id);
    drop(ix);
    mgr.on_revoked.get().inspect(|f| f(id));
}

/// Load every lease from storage (at unseal). Leases that expired while the daemon was down
/// are due at once.
pub(super) fn restore(mgr: &LeaseManager) -> Result<usize> {
    let paths = mgr.barrier.list(STORE_PREFIX)?;
    let mut ix = Index::default();
    for p in &paths {
        let id = &p[STORE_PREFIX.len()..];
        match record::load(&mgr.barrier, id) {
            Ok(Some(rec)) => ix.set(id, Meta::of(&rec)),
            Ok(None) => {}
            Err(e) => {
                // Never forget it: listed (reads fail with the integrity error), not
                // scheduled, so an operator sees it and acts.
                tracing::error!(lease = %id, "cannot read lease record: {}", e.message);
                ix.set(
                    id,
                    Meta {
                        due: None,
                        uid: u32::MAX,
                    },
                );
            }
        }
    }
    let n = ix.leases.len();
    {
        // Leases being revoked or held (a credential being minted) right now stay claimed:
        // a restored copy must not be taken by a second worker meanwhile.
        let mut cur = lock(&mgr.index);
        ix.inflight = std::mem::take(&mut cur.inflight);
        *cur = ix;
    }
    mgr.loaded.store(true, Ordering::SeqCst);
    // Able to revoke now: may lead the expiry election.
    mgr.leadership.get().inspect(|l| l.set_eligible(true));
    mgr.changed.notify_all();
    mgr.due.notify_all();
    tracing::info!(leases = n, "leases restored");
    Ok(n)
}

/// On a shared store: index lease records other daemons wrote and forget the
/// ones that are gone from storage (another daemon revoked them). Returns (added, removed).
pub(super) fn sync_shared(mgr: &LeaseManager) -> Result<(usize, usize)> {
    mgr.check_loaded()?;
    let stored: BTreeSet<String> = mgr
        .barrier
        .list(STORE_PREFIX)?
        .into_iter()
        .map(|p| p[STORE_PREFIX.len()..].to_string())
        .collect();
    let (unknown, gone): (Vec<String>, Vec<String>) = {
        let ix = lock(&mgr.index);
        (
            stored
                .iter()
                .filter(|id| !ix.leases.contains_key(*id))
                .cloned()
                .collect(),
            ix.leases
                .keys()
                .filter(|id| !stored.contains(*id) && !ix.inflight.contains(*id))
                .cloned()
                .collect(),
        )
    };
    let mut added = 0;
    for id in unknown {
        if let Ok(Some(rec)) = record::load(&mgr.barrier, &id) {
            let mut ix = lock(&mgr.index);
            if !ix.leases.contains_key(&id) {
                ix.set(&id, Meta::of(&rec));
                added += 1;
            }
        }
    }
    let mut removed = 0;
    for id in gone {
        // Re-check: it may have been issued here since the listing.
        if matches!(record::load(&mgr.barrier, &id), Ok(None)) {
            let mut ix = lock(&mgr.index);
            if !ix.inflight.contains(&id) {
                ix.remove(&id);
                removed += 1;
            }
        }
    }
    if added > 0 {
        mgr.changed.notify_all();
    }
    Ok((added, removed))
}

/// `sync_shared`, its outcome logged (the scheduler's periodic call).
pub(super) fn sync_shared_logged(mgr: &LeaseManager) {
    match sync_shared(mgr) {
        Ok((0, 0)) => {}
        Ok((added, removed)) => {
            tracing::info!(added, removed, "lease index synced with the shared store")
        }
        Err(e) if e.kind == ErrorKind::Sealed => {}
        Err(e) => tracing::warn!("lease index sync failed: {}", e.message),
    }
}
