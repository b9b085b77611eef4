//! Claims and revocation: taking the right to act on a lease (one holder at a time: a
//! revocation, a renewal, or a lease held while its secret is being made), revoking one lease
//! (upstream first, through the backend mounted where it was issued; then the record), many at
//! bounded concurrency (a prefix, a uid, the due ones), and what a failed attempt leaves:
//! the failure recorded on the lease, a retry after exponential backoff with jitter, and after
//! `max_attempts` the irrevocable state (kept and listed with its reason).
//!
//! Owns: `claim`/`release`, `revoke_if`/`revoke_claimed`, `revoke_many`/`finish_many`, the
//! prefix and uid fan-outs, `backoff_ms`.
//! Must never: forget a lease whose upstream revocation has not succeeded, hold the index lock
//! across an upstream or storage call, write a failed attempt back over a record another
//! daemon changed meanwhile (compare-and-swap: its record wins), or log the record's secret.

use super::index::Meta;
use super::{fence, lock, record, sync, LeaseConfig, LeaseManager};
use crate::error::{Error, ErrorKind, Result};
use rand::Rng;
use std::sync::atomic::Ordering;
use std::sync::Mutex;
use std::time::Duration;

/// Take the right to revoke `id` (waits while another thread is revoking it).
/// Ok(false): it is gone.
pub(super) fn claim(mgr: &LeaseManager, id: &str) -> bool {
    if !sync::find(mgr, id) {
        return false;
    }
    let mut ix = lock(&mgr.index);
    loop {
        if !ix.leases.contains_key(id) {
            return false;
        }
        if ix.inflight.insert(id.to_string()) {
            return true;
        }
        ix = mgr
            .changed
            .wait_timeout(ix, Duration::from_millis(50))
            .map(|(g, _)| g)
            .unwrap_or_else(|p| p.into_inner().0);
    }
}

/// Give back a lease taken by `claim` or `issue_held`.
pub(super) fn release(mgr: &LeaseManager, id: &str) {
    lock(&mgr.index).inflight.remove(id);
    mgr.changed.notify_all();
    // A due lease a worker skipped because it was in flight may still be due (e.g. a
    // renewal of an expired lease was refused): one idle worker looks again.
    mgr.due.notify_one();
}

/// The wait before retry number `attempts`: exponential from `backoff_base_ms`, capped at
/// `backoff_max_ms`, with jitter.
pub(super) fn backoff_ms(config: &LeaseConfig, attempts: u32) -> u64 {
    let exp = config
        .backoff_base_ms
        .saturating_mul(1u64 << attempts.saturating_sub(1).min(30))
        .min(config.backoff_max_ms);
    // Full jitter in [exp/2, exp].
    let half = exp / 2;
    half + rand::thread_rng().gen_range(0..=half.max(1))
}

/// `only_due`: the scheduler's call. The record in storage is the truth (another daemon
/// sharing the store may have renewed the lease): if it is not due by it, it is only
/// rescheduled. Ok(false): not revoked (not due).
pub(super) fn revoke_if(mgr: &LeaseManager, id: &str, only_due: bool) -> Result<bool> {
    mgr.check_loaded()?;
    if !claim(mgr, id) {
        return Err(Error::not_found(&format!("sys/leases/{id}")));
    }
    let res = revoke_claimed(mgr, id, only_due);
    release(mgr, id);
    res
}

pub(super) fn revoke_claimed(mgr: &LeaseManager, id: &str, only_due: bool) -> Result<bool> {
    let started = std::time::Instant::now();
    // How late this starts after the lease was due (0 for an early `rm`): the scheduler's
    // share of expiry lateness, logged with the revocation for scripts/bench-leases.
    let late_ms = lock(&mgr.index)
        .leases
        .get(id)
        .and_then(|m| m.due)
        .map_or(0, |d| mgr.now_ms().saturating_sub(d));
    let Some((mut rec, version)) = record::load_versioned(&mgr.barrier, id)? else {
        lock(&mgr.index).remove(id);
        return Err(Error::not_found(&format!("sys/leases/{id}")));
    };
    if only_due {
        let mut ix = lock(&mgr.index);
        let meta = ix.leases.get(id).map_or(Meta::of(&rec), |m| m.like(&rec));
        if meta.due.is_none_or(|d| d > mgr.now_ms()) {
            ix.set(id, meta);
            return Ok(false);
        }
    }
    // At expiry only the elected leader revokes, its record change fenced by its term
    // (taken now, before anything upstream: `fence.rs`).
    let fence = if only_due {
        fence::expiry_fence(mgr)
    } else {
        fence::Fence::Single
    };
    if matches!(fence, fence::Fence::NotLeader) {
        return Ok(false);
    }
    let backend = lock(&mgr.lookup).as_ref().and_then(|f| f(rec.mount()));
    let upstream_started = std::time::Instant::now();
    let upstream = match backend {
        Some(b) => b.revoke(&rec),
        None => Err(Error::io(format!(
            "no mount at {}/ to revoke it with",
            rec.mount()
        ))),
    };
    let upstream_ms = upstream_started.elapsed().as_millis();
    match upstream {
        Ok(()) => {
            // Deleting is idempotent: another daemon revoking it too is harmless.
            if !fence::delete(mgr, id, &fence)? {
                return Ok(false);
            }
            lock(&mgr.index).remove(id);
            mgr.on_revoked.get().inspect(|f| f(id));
            tracing::info!(
                lease = %id,
                late_ms,
                upstream_ms,
                total_ms = started.elapsed().as_millis(),
                "revoked"
            );
            Ok(true)
        }
        Err(e) => {
            rec.attempts += 1;
            rec.last_error = Some(e.message.clone());
            if rec.attempts >= mgr.config.max_attempts {
                rec.irrevocable = true;
                rec.retry_at_ms = None;
                tracing::error!(
                    lease = %id,
                    attempts = rec.attempts,
                    "irrevocable: {}",
                    e.message
                );
            } else {
                let next = mgr.now_ms() + backoff_ms(&mgr.config, rec.attempts);
                rec.retry_at_ms = Some(next);
                tracing::warn!(
                    lease = %id,
                    attempts = rec.attempts,
                    "revocation failed, will retry: {}",
                    e.message
                );
            }
            let Some(stored) = fence::store_if(mgr, &rec, &version, &fence)? else {
                return Ok(false);
            };
            if !stored {
                // Another daemon sharing the store acted on it meanwhile: its record wins.
                match record::load(&mgr.barrier, id)? {
                    None => {
                        lock(&mgr.index).remove(id);
                        tracing::info!(lease = %id, "revoked by another daemon");
                        return Ok(true);
                    }
                    Some(now) => {
                        let mut ix = lock(&mgr.index);
                        let meta = ix.leases.get(id).map_or(Meta::of(&now), |m| m.like(&now));
                        ix.set(id, meta);
                    }
                }
                return Err(Error::io(format!("revoking {id}: {}", e.message)));
            }
            let mut ix = lock(&mgr.index);
            let meta = ix.leases.get(id).map_or(Meta::of(&rec), |m| m.like(&rec));
            ix.set(id, meta);
            drop(ix);
            mgr.due.notify_all();
            Err(Error::io(format!("revoking {id}: {}", e.message)))
        }
    }
}

/// Revoke many, at most `concurrency` at a time. Returns (revoked, first error).
pub(super) fn revoke_many(
    mgr: &LeaseManager,
    ids: Vec<String>,
    only_due: bool,
) -> (usize, Option<Error>, usize) {
    if ids.is_empty() {
        return (0, None, 0);
    }
    let queue = Mutex::new(ids);
    let done = std::sync::atomic::AtomicUsize::new(0);
    let failed = std::sync::atomic::AtomicUsize::new(0);
    let first_err: Mutex<Option<Error>> = Mutex::new(None);
    let workers = mgr.config.concurrency.max(1).min(lock(&queue).len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let Some(id) = lock(&queue).pop() else { break };
                match revoke_if(mgr, &id, only_due) {
                    Ok(true) => {
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(false) => {}
                    Err(e) if e.kind == ErrorKind::NotFound => {}
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        lock(&first_err).get_or_insert(e);
                    }
                }
            });
        }
    });
    let err = lock(&first_err).take();
    (
        done.load(Ordering::Relaxed),
        err,
        failed.load(Ordering::Relaxed),
    )
}

fn finish_many(what: &str, (n, err, failed): (usize, Option<Error>, usize)) -> Result<usize> {
    match err {
        None => Ok(n),
        Some(e) => Err(Error::io(format!(
            "{what}: {failed} revocation(s) failed ({n} done); first: {}",
            e.message
        ))),
    }
}

/// Revoke every lease whose id starts with `prefix`.
pub(super) fn prefix(mgr: &LeaseManager, prefix: &str) -> Result<usize> {
    mgr.check_loaded()?;
    let ids = lock(&mgr.index).ids_under(prefix);
    let r = revoke_many(mgr, ids, false);
    finish_many(&format!("revoke {prefix}"), r)
}

/// Revoke every lease that `uid` created.
pub(super) fn uid(mgr: &LeaseManager, uid: u32) -> Result<usize> {
    mgr.check_loaded()?;
    let ids = lock(&mgr.index).ids_of(uid);
    let r = revoke_many(mgr, ids, false);
    finish_many(&format!("revoke uid {uid}"), r)
}
