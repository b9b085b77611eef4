//! Leases: every dynamic secret handed out carries one; it is the handle for renewal and
//! revocation, and the daemon revokes it itself at expiry.
//!
//! This module is the facade: `LeaseManager` (its state, construction, and the public API,
//! each call delegating to the part that does the job). The parts, one job each:
//! - `record`: the persisted `LeaseRecord` (encrypted through the barrier at
//!   `core/leases/<id>`, wall-clock deadlines), its serialisation and `describe`;
//! - `index`: the in-memory index (per-lease `Meta`, the due queue ordered by deadline, ids in
//!   flight, listings and `kind`, per-uid counts and the `leases_per_uid` bound);
//! - `issue`: issuing (`NewLease`, held leases, cleanup leases for the upstream leftovers of a
//!   failed creation, `discard`);
//! - `renew`: renewal (upstream first, then the record by compare-and-swap);
//! - `revoke`: claims and revocation (one, a prefix, a uid; bounded concurrency; retry with
//!   exponential backoff and jitter; the irrevocable state, kept and listed with its reason);
//! - `scheduler`: the pool of `concurrency` expiry workers over the due queue;
//! - `sync`: the index in step with storage (restore at unseal: leases that expired while the
//!   daemon was down are due at once; on a shared store, records other daemons write or
//!   delete, seen through the watch and a periodic backstop sync);
//! - `fence`: who revokes at expiry (on a shared store only the elected leader,
//!   `cluster::Leadership`) and the record changes fenced by its term;
//! - `clock`: wall-clock time behind a trait (virtual time in tests).
//!
//! Parts depend on the facade (`LeaseManager`'s fields, `lock`) and on `record`/`index`;
//! beyond that only `revoke` → `sync`, `scheduler` → `revoke`/`sync`, and `issue`/`renew` →
//! `revoke` (claims). Nothing depends on `scheduler`, `issue` or `renew` but the facade.
//!
//! Owns: the lease manager's state (index lock, the `changed` and `due` condvars, the loaded
//! flag, the backend lookup) and its public API.
//! Must never: forget a lease whose upstream revocation has not succeeded, hold the index lock
//! across an upstream or storage call, log the secret data a record carries, or grow logic of
//! its own (a new job is a new part).

pub mod clock;
mod fence;
mod index;
mod issue;
mod record;
mod renew;
mod revoke;
mod scheduler;
mod sync;

use crate::backend::{Backend, DirEntry};
use crate::barrier::Barrier;
use crate::cluster::{Leadership, Role};
use crate::error::{Error, Result};
pub use clock::{parse_duration, parse_duration_ms, rfc3339, Clock, ManualClock, SystemClock};
use index::Index;
pub use issue::NewLease;
pub use record::LeaseRecord;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

/// Tuning of revocation.
#[derive(Debug, Clone, Copy)]
pub struct LeaseConfig {
    /// Upstream revocations in flight at once (expiry workers; also the fan-out of `rm -r`).
    pub concurrency: usize,
    /// Failed attempts before a lease is marked irrevocable.
    pub max_attempts: u32,
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
}

impl Default for LeaseConfig {
    fn default() -> Self {
        Self {
            concurrency: 16,
            max_attempts: 12,
            backoff_base_ms: 1_000,
            backoff_max_ms: 10 * 60_000,
        }
    }
}

/// Finds the backend mounted at a path (the engine's mount table).
pub type BackendLookup = Box<dyn Fn(&str) -> Option<Arc<dyn Backend>> + Send + Sync>;

pub struct LeaseManager {
    barrier: Arc<Barrier>,
    clock: Arc<dyn Clock>,
    config: LeaseConfig,
    lookup: Mutex<Option<BackendLookup>>,
    /// Told the id of each lease revoked here (`set_on_revoked`).
    on_revoked: std::sync::OnceLock<OnRevoked>,
    index: Mutex<Index>,
    /// Wakes waiters on in-flight ids (`claim`).
    changed: Condvar,
    /// Wakes the expiry workers: a new earliest deadline, a rescheduled lease, restore, seal.
    due: Condvar,
    loaded: AtomicBool,
    /// The expiry election on a shared store (unset: alone, always the leader).
    leadership: std::sync::OnceLock<Arc<dyn Leadership>>,
}

/// Told the id of each lease revoked (`LeaseManager::set_on_revoked`).
pub type OnRevoked = Box<dyn Fn(&str) + Send + Sync>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl LeaseManager {
    pub fn new(barrier: Arc<Barrier>, clock: Arc<dyn Clock>, config: LeaseConfig) -> Self {
        Self {
            barrier,
            clock,
            config,
            lookup: Mutex::new(None),
            on_revoked: std::sync::OnceLock::new(),
            index: Mutex::new(Index::default()),
            changed: Condvar::new(),
            due: Condvar::new(),
            loaded: AtomicBool::new(false),
            leadership: std::sync::OnceLock::new(),
        }
    }

    pub fn set_lookup(&self, lookup: BackendLookup) {
        *lock(&self.lookup) = Some(lookup);
    }

    /// Be told the id of each lease revoked (by `rm`, a prefix, a uid, or at expiry); the
    /// first call wins.
    pub fn set_on_revoked(&self, f: OnRevoked) {
        let _ = self.on_revoked.set(f);
    }

    /// Join an expiry election (a shared store): only its leader revokes due leases, its
    /// record changes fenced by its term. The first call wins.
    pub fn set_leadership(&self, l: Arc<dyn Leadership>) {
        let _ = self.leadership.set(l);
    }

    /// This daemon's role in the expiry election (`single` without one).
    pub fn role(&self) -> Role {
        self.leadership.get().map_or(Role::Single, |l| l.role())
    }

    /// The election, if any (node and leader ids for `sys/health`).
    pub fn leadership(&self) -> Option<&Arc<dyn Leadership>> {
        self.leadership.get()
    }

    pub fn now_ms(&self) -> u64 {
        self.clock.now_ms()
    }

    /// A fresh lease id under `path` (`aws/creds/deploy` → `aws/creds/deploy/<uuid>`).
    pub fn new_id(path: &str) -> String {
        format!("{path}/{}", uuid::Uuid::new_v4())
    }

    fn check_loaded(&self) -> Result<()> {
        if self.loaded.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err(Error::sealed())
        }
    }

    // Issuing.

    /// Record a new lease (persisted before this returns).
    pub fn issue(&self, new: NewLease) -> Result<LeaseRecord> {
        issue::issue(self, new, false)
    }

    /// Record a new lease before its secret exists upstream, held: nothing revokes or renews it
    /// (expiry, `rm`, prefix revocation wait) until the caller calls `release` — after making
    /// the secret — or `discard` — when making it certainly failed. A crash in between leaves a
    /// durable lease whose revocation finds nothing or the secret: never an untracked secret.
    pub fn issue_held(&self, new: NewLease) -> Result<LeaseRecord> {
        issue::issue(self, new, true)
    }

    /// Record the upstream leftovers of a creation that failed part way (e.g. an IAM user that
    /// may exist after a timed-out call) as a lease already being revoked: not renewable, state
    /// "retrying" with `reason`, first attempt after the backoff. The scheduler retries it like
    /// any failed revocation, so the leftover goes away once the upstream answers again, and a
    /// restart keeps it (it is persisted before this returns).
    pub fn issue_cleanup(&self, new: NewLease, reason: &str) -> Result<LeaseRecord> {
        issue::cleanup(self, new, reason)
    }

    /// Forget a lease held with `issue_held` whose secret was never made (no upstream call).
    pub fn discard(&self, id: &str) -> Result<()> {
        issue::discard(self, id)
    }

    /// Would one more lease for `uid` stay within `limit`? EDQUOT (with the reason) if not.
    /// Backends ask before making anything upstream; `issue` asks again.
    pub fn check_quota(&self, uid: u32, limit: Option<u64>) -> Result<()> {
        let Some(limit) = limit else {
            return Ok(());
        };
        let held = lock(&self.index).held(uid);
        index::over_quota(uid, held, limit)
    }

    // Reading the index.

    pub fn exists(&self, id: &str) -> bool {
        lock(&self.index).leases.contains_key(id)
    }

    pub fn count(&self) -> usize {
        lock(&self.index).leases.len()
    }

    /// Live leases of `uid`.
    pub fn count_of(&self, uid: u32) -> u64 {
        lock(&self.index).count_of(uid)
    }

    /// Live leases created by `uid`.
    pub fn count_uid(&self, uid: u32) -> usize {
        lock(&self.index).count_uid(uid)
    }

    pub fn get(&self, id: &str) -> Result<LeaseRecord> {
        self.check_loaded()?;
        if !sync::find(self, id) {
            return Err(Error::not_found(&format!("sys/leases/{id}")));
        }
        record::load(&self.barrier, id)?
            .ok_or_else(|| Error::not_found(&format!("sys/leases/{id}")))
    }

    /// Is `path` a lease (Some(false)), a folder of leases (Some(true)), or nothing (None)?
    pub fn kind(&self, path: &str) -> Option<bool> {
        lock(&self.index).kind(path)
    }

    /// The children of folder `path` ("" for the top).
    pub fn list(&self, path: &str) -> Vec<DirEntry> {
        lock(&self.index).list(path)
    }

    /// `rmdir` of an emptied folder: forget it.
    pub fn forget_folder(&self, path: &str) {
        lock(&self.index).forget_folder(path);
    }

    // Renewal and revocation.

    /// Renew by `increment_secs` (default: the lease's own increment) counted from now, capped
    /// by the lease's max TTL (capping is not an error).
    pub fn renew(&self, id: &str, increment_secs: Option<u64>) -> Result<LeaseRecord> {
        renew::renew(self, id, increment_secs)
    }

    /// Give back a lease taken by `claim` or `issue_held`.
    pub fn release(&self, id: &str) {
        revoke::release(self, id);
    }

    /// Revoke one lease now: upstream first, then the record. On upstream failure the lease
    /// stays, marked for retry (or irrevocable after too many attempts), and this fails (Io).
    pub fn revoke(&self, id: &str) -> Result<()> {
        revoke::revoke_if(self, id, false).map(|_| ())
    }

    /// Revoke every lease whose id starts with `prefix`.
    pub fn revoke_prefix(&self, prefix: &str) -> Result<usize> {
        revoke::prefix(self, prefix)
    }

    /// Revoke every lease that `uid` created.
    pub fn revoke_uid(&self, uid: u32) -> Result<usize> {
        revoke::uid(self, uid)
    }

    // The scheduler.

    /// Start the expiry scheduler: `concurrency` worker threads. Each takes the earliest due
    /// lease the moment it is due (no batches: a slow revocation never holds back the next
    /// due one while another worker is free) and sleeps on a condvar until the next deadline.
    /// They end when the manager is dropped.
    pub fn start(self: &Arc<Self>) {
        scheduler::start(self);
    }

    /// One scheduler pass: revoke every lease that is due. Returns how many were revoked.
    pub fn process_due(&self) -> usize {
        scheduler::process_due(self)
    }

    /// Milliseconds until the next due lease (None: nothing scheduled).
    pub fn next_due_in(&self) -> Option<u64> {
        scheduler::next_due_in(self)
    }

    // The index and storage: unseal, shared store, seal.

    /// Load every lease from storage (at unseal). Leases that expired while the daemon was down
    /// are due at once.
    pub fn restore(&self) -> Result<usize> {
        sync::restore(self)
    }

    /// On a shared store: index lease records other daemons wrote and forget the
    /// ones that are gone from storage (another daemon revoked them). Returns (added, removed).
    pub fn sync_shared(&self) -> Result<(usize, usize)> {
        sync::sync_shared(self)
    }

    /// On a shared store, the watch saw lease record `id` written (by any daemon).
    pub fn note_stored(&self, id: &str) {
        sync::stored(self, id);
    }

    /// On a shared store, the watch saw lease record `id` deleted (by any daemon).
    pub fn note_deleted(&self, id: &str) {
        sync::deleted(self, id);
    }

    /// Forget the in-memory index (at seal); nothing is revoked.
    pub fn clear(&self) {
        self.loaded.store(false, Ordering::SeqCst);
        // Sealed: cannot revoke, so must not lead the expiry election.
        self.leadership.get().inspect(|l| l.set_eligible(false));
        lock(&self.index).forget_all();
        self.changed.notify_all();
        self.due.notify_all();
    }
}

// tests.rs (`use super::*`) also names these.
#[cfg(test)]
use {crate::error::ErrorKind, record::STORE_PREFIX, std::time::Duration};
#[cfg(test)]
mod tests;
