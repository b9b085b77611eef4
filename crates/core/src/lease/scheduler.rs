//! The expiry scheduler: a pool of `concurrency` worker threads over the index's due queue.
//! Each worker takes the earliest due lease nobody holds the moment it is due (no batches: a
//! slow revocation never holds back the next due one while another worker is free), revokes
//! it through `revoke`, and otherwise sleeps on the `due` condvar until the next deadline (at
//! most 1 s, so a clock step is noticed). Worker 0 also runs the shared-store sync. A
//! revocation that could not even run (storage unreachable) is deferred, not retried in a
//! tight loop. `process_due` is the same pass run once, on the caller's thread (tests, virtual
//! time). On a shared store only the elected expiry leader's workers take due leases
//! (`fence.rs`); a follower's workers look again every `FOLLOWER_POLL` (a takeover is then
//! at most that late after the election).
//!
//! Owns: `start`, `process_due`, `next_due_in`, `take_due`, `defer_if_still_due`.
//! Must never: revoke a lease without holding its claim, hold the index lock while revoking,
//! or keep the manager alive (workers hold it weakly and end when it is dropped).

use super::index::{Index, Meta};
use super::{fence, lock, revoke, sync, LeaseManager};
use crate::error::{Error, ErrorKind};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// How often a follower's workers check whether this daemon became the expiry leader.
const FOLLOWER_POLL: Duration = Duration::from_millis(250);

fn follower(mgr: &LeaseManager) -> bool {
    matches!(fence::expiry_fence(mgr), fence::Fence::NotLeader)
}

/// One scheduler pass: revoke every lease that is due. Returns how many were revoked.
pub(super) fn process_due(mgr: &LeaseManager) -> usize {
    if !mgr.loaded.load(Ordering::SeqCst) || follower(mgr) {
        return 0;
    }
    let now = mgr.now_ms();
    let ids: Vec<String> = {
        let ix = lock(&mgr.index);
        ix.queue
            .iter()
            .take_while(|(d, _)| *d <= now)
            .filter(|(_, id)| !ix.inflight.contains(id))
            .map(|(_, id)| id.clone())
            .collect()
    };
    // Earliest first: `revoke_many` pops from the end.
    let mut ids = ids;
    ids.reverse();
    revoke::revoke_many(mgr, ids, true).0
}

/// Milliseconds until the next due lease (None: nothing scheduled).
pub(super) fn next_due_in(mgr: &LeaseManager) -> Option<u64> {
    let now = mgr.now_ms();
    lock(&mgr.index)
        .queue
        .first()
        .map(|(d, _)| d.saturating_sub(now))
}

/// Take the earliest due lease that nobody is revoking, claiming it. Err: nothing is due;
/// the value is how long to wait (ms) before looking again.
fn take_due(mgr: &LeaseManager, ix: &mut Index) -> std::result::Result<String, u64> {
    if !mgr.loaded.load(Ordering::SeqCst) {
        return Err(1000);
    }
    let now = mgr.now_ms();
    let mut pick = None;
    let mut wait = 1000;
    for (d, id) in &ix.queue {
        if *d > now {
            wait = d - now;
            break;
        }
        if !ix.inflight.contains(id) {
            pick = Some(id.clone());
            break;
        }
    }
    match pick {
        Some(id) => {
            ix.inflight.insert(id.clone());
            Ok(id)
        }
        // Wait at least 1 ms (in-flight ones end with a notify), at most 1 s (a clock step).
        None => Err(wait.clamp(1, 1000)),
    }
}

/// A revocation failed before it could reschedule the lease (e.g. storage unreachable):
/// push its deadline back in the index so the workers do not retry it in a tight loop.
fn defer_if_still_due(mgr: &LeaseManager, id: &str, e: &Error) {
    if e.kind == ErrorKind::NotFound {
        return;
    }
    let now = mgr.now_ms();
    let mut ix = lock(&mgr.index);
    if let Some(meta) = ix.leases.get(id).cloned() {
        if meta.due.is_some_and(|d| d <= now) {
            let retry = now.saturating_add(revoke::backoff_ms(&mgr.config, 4));
            tracing::warn!(lease = %id, retry_in_ms = retry - now, "revocation could not run: {}", e.message);
            ix.set(
                id,
                Meta {
                    due: Some(retry),
                    ..meta
                },
            );
        }
    }
}

/// Start the expiry scheduler: `concurrency` worker threads. Each takes the earliest due
/// lease the moment it is due (no batches: a slow revocation never holds back the next
/// due one while another worker is free) and sleeps on a condvar until the next deadline.
/// They end when the manager is dropped.
pub(super) fn start(mgr: &Arc<LeaseManager>) {
    for n in 0..mgr.config.concurrency.max(1) {
        let weak: Weak<LeaseManager> = Arc::downgrade(mgr);
        let spawned = std::thread::Builder::new()
            .name(format!("nomadfs-lease-{n}"))
            .spawn(move || {
                let mut synced = std::time::Instant::now();
                loop {
                    let Some(m) = weak.upgrade() else { break };
                    // Worker 0 also keeps the index in step with a shared store.
                    if n == 0
                        && m.barrier.storage().shared()
                        && synced.elapsed() >= sync::SHARED_SYNC
                    {
                        synced = std::time::Instant::now();
                        sync::sync_shared_logged(&m);
                    }
                    if follower(&m) {
                        let ix = lock(&m.index);
                        let _ = m.due.wait_timeout(ix, FOLLOWER_POLL);
                        continue;
                    }
                    let mut ix = lock(&m.index);
                    match take_due(&m, &mut ix) {
                        Ok(id) => {
                            drop(ix);
                            // Upstream failures are recorded on the lease (retry or
                            // irrevocable); Ok(false): another daemon renewed it,
                            // rescheduled. Other errors (storage) leave it due: back off.
                            if let Err(e) = revoke::revoke_claimed(&m, &id, true) {
                                defer_if_still_due(&m, &id, &e);
                            }
                            revoke::release(&m, &id);
                        }
                        Err(wait) => {
                            let wait = if n == 0 && m.barrier.storage().shared() {
                                wait.min(sync::SHARED_SYNC.as_millis() as u64)
                            } else {
                                wait
                            };
                            let _ = m.due.wait_timeout(ix, Duration::from_millis(wait));
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!("cannot start a lease scheduler worker: {e}");
        }
    }
}
