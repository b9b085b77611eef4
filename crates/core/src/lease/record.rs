//! The lease record: what is persisted for each lease, encrypted through the barrier at
//! `core/leases/<id>` (wall-clock deadlines, the uid that asked, what revocation needs), its
//! JSON form, reading it back with its stored version, and its text in `sys/leases/<id>`.
//!
//! Owns: `LeaseRecord`, the storage key layout (`STORE_PREFIX`), and the record's
//! serialisation (write, compare-and-swap write, read, delete).
//! Must never: touch the in-memory index, take the manager's locks or call upstream (it is the
//! data and its persistence only), or log the record (it carries what revocation needs).

use super::clock::rfc3339;
use crate::barrier::{Barrier, Version};
use crate::error::{Error, ErrorKind, Result};
use serde::{Deserialize, Serialize};

/// Where lease records live in the barrier: `core/leases/<id>`.
pub(super) const STORE_PREFIX: &str = "core/leases/";

/// A lease as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct LeaseRecord {
    /// `MOUNT/PATH/UUID`, e.g. `aws/creds/deploy/0d042c53-…`.
    pub id: String,
    /// The full path that issued it, e.g. `aws/creds/deploy`.
    pub path: String,
    pub issued_ms: u64,
    pub expires_ms: u64,
    /// Renewals never go past this.
    pub max_expires_ms: u64,
    /// Default renewal increment (`touch`).
    pub increment_secs: u64,
    pub renewable: bool,
    /// The uid that asked for the secret.
    pub uid: u32,
    /// What the issuing backend needs to revoke it (e.g. the IAM user name). Never secret
    /// material that is not needed for revocation.
    pub secret: serde_json::Value,
    #[serde(default)]
    pub attempts: u32,
    #[serde(default)]
    pub retry_at_ms: Option<u64>,
    #[serde(default)]
    pub last_error: Option<String>,
    #[serde(default)]
    pub irrevocable: bool,
}

impl LeaseRecord {
    /// When the scheduler should act on it (None: irrevocable, nothing scheduled).
    pub(super) fn due_ms(&self) -> Option<u64> {
        if self.irrevocable {
            None
        } else {
            Some(self.retry_at_ms.unwrap_or(self.expires_ms))
        }
    }

    /// The mount path the id starts with.
    pub fn mount(&self) -> &str {
        self.id.split('/').next().unwrap_or("")
    }

    pub fn state(&self) -> &'static str {
        if self.irrevocable {
            "irrevocable"
        } else if self.attempts > 0 {
            "retrying"
        } else {
            "active"
        }
    }

    /// The text of `sys/leases/<id>`.
    pub fn describe(&self, now_ms: u64) -> String {
        let v = serde_json::json!({
            "id": self.id,
            "path": self.path,
            "issue_time": rfc3339(self.issued_ms),
            "expire_time": rfc3339(self.expires_ms),
            "ttl": self.expires_ms.saturating_sub(now_ms) / 1000,
            "max_expire_time": rfc3339(self.max_expires_ms),
            "renewable": self.renewable,
            "uid": self.uid,
            "state": self.state(),
            "revocation_attempts": self.attempts,
            "last_error": self.last_error,
            "upstream": self.secret,
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }
}

/// The barrier key of lease `id`.
pub(super) fn key(id: &str) -> String {
    format!("{STORE_PREFIX}{id}")
}

/// Persist `rec` (unconditionally; durable when this returns). Concurrent writes of lease
/// records share one storage batch (`batch`).
pub(super) fn store(barrier: &Barrier, rec: &LeaseRecord) -> Result<()> {
    let raw = serde_json::to_vec(rec).map_err(|e| Error::io(format!("lease record: {e}")))?;
    batch::write(barrier, key(&rec.id), Some(raw))
}

pub(super) fn load(barrier: &Barrier, id: &str) -> Result<Option<LeaseRecord>> {
    match barrier.get(&key(id))? {
        None => Ok(None),
        Some(raw) => parse(id, raw.expose()).map(Some),
    }
}

fn parse(id: &str, raw: &[u8]) -> Result<LeaseRecord> {
    serde_json::from_slice(raw)
        .map_err(|e| Error::new(ErrorKind::Integrity, format!("lease {id}: {e}")))
}

/// The record and its stored version (to write it back only if nobody changed it).
pub(super) fn load_versioned(
    barrier: &Barrier,
    id: &str,
) -> Result<Option<(LeaseRecord, Version)>> {
    match barrier.get_versioned(&key(id))? {
        None => Ok(None),
        Some((raw, version)) => parse(id, raw.expose()).map(|rec| Some((rec, version))),
    }
}

/// Write `rec` back only if it is still at `version` (another daemon sharing the store
/// may have renewed or revoked it meanwhile). Returns whether it was written.
pub(super) fn store_if(barrier: &Barrier, rec: &LeaseRecord, version: &Version) -> Result<bool> {
    let raw = serde_json::to_vec(rec).map_err(|e| Error::io(format!("lease record: {e}")))?;
    barrier.compare_and_swap(&key(&rec.id), Some(version), Some(&raw))
}

/// Delete the record of `id` (durable when this returns; concurrent deletes, e.g. the workers
/// of a prefix revocation or of the expiry scheduler, share one storage batch).
pub(super) fn delete(barrier: &Barrier, id: &str) -> Result<()> {
    batch::write(barrier, key(id), None)
}

/// Group commit of lease-record writes: a writer that finds no batch being applied applies
/// its own write and every write that queued meanwhile, in one atomic `Barrier::apply` (one
/// storage commit, one fsync, instead of one each); the writers that queued behind it wait for
/// that batch's outcome, and the first still queued after it leads the next batch. Each
/// writer returns only once its own write is durable (or with the batch's error, its write
/// not made). A key already queued is written on its own (a batch names each key once).
mod batch {
    use crate::barrier::{Barrier, BarrierOp};
    use crate::error::{Error, Result};
    use std::collections::HashMap;
    use std::sync::{Arc, Condvar, Mutex, MutexGuard};

    /// Writes per batch at most (etcd's default limit of operations in one transaction).
    const MAX_BATCH: usize = 128;

    #[derive(Default)]
    struct Slot {
        state: Mutex<State>,
        cv: Condvar,
    }

    #[derive(Default)]
    enum State {
        #[default]
        Queued,
        /// Lead the next batch.
        Lead,
        Done(Result<()>),
    }

    struct Write {
        key: String,
        value: Option<Vec<u8>>,
        slot: Arc<Slot>,
    }

    #[derive(Default)]
    struct Group {
        queue: Vec<Write>,
        leading: bool,
    }

    /// Per barrier (by address: a group lives only while writers, which borrow the barrier,
    /// wait in it).
    static GROUPS: Mutex<Option<HashMap<usize, Group>>> = Mutex::new(None);

    fn groups() -> MutexGuard<'static, Option<HashMap<usize, Group>>> {
        GROUPS.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_state(slot: &Slot) -> MutexGuard<'_, State> {
        slot.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn apply_alone(barrier: &Barrier, key: &str, value: Option<&[u8]>) -> Result<()> {
        match value {
            Some(v) => barrier.apply(&[BarrierOp::Put(key, v)]),
            None => barrier.apply(&[BarrierOp::Delete(key)]),
        }
    }

    pub(super) fn write(barrier: &Barrier, key: String, value: Option<Vec<u8>>) -> Result<()> {
        let id = barrier as *const Barrier as usize;
        let slot = Arc::new(Slot::default());
        {
            let mut g = groups();
            let group = g.get_or_insert_with(HashMap::new).entry(id).or_default();
            if group.queue.iter().any(|w| w.key == key) {
                drop(g);
                return apply_alone(barrier, &key, value.as_deref());
            }
            group.queue.push(Write {
                key,
                value,
                slot: slot.clone(),
            });
            if group.leading {
                drop(g);
                let mut st = lock_state(&slot);
                loop {
                    match std::mem::take(&mut *st) {
                        State::Queued => {
                            st = slot.cv.wait(st).unwrap_or_else(|p| p.into_inner());
                        }
                        State::Done(res) => return res,
                        State::Lead => break,
                    }
                }
            } else {
                group.leading = true;
            }
        }
        lead(barrier, id);
        let outcome = std::mem::take(&mut *lock_state(&slot));
        match outcome {
            State::Done(res) => res,
            // Not reached: the leader's own write is in the batch it applied.
            State::Queued | State::Lead => Err(Error::io("lease record write lost its batch")),
        }
    }

    /// Apply one batch (this writer's own write is in it), then hand the lead to the first
    /// writer still queued, if any.
    fn lead(barrier: &Barrier, id: usize) {
        let batch: Vec<Write> = {
            let mut g = groups();
            let Some(group) = g.as_mut().and_then(|m| m.get_mut(&id)) else {
                return;
            };
            let n = group.queue.len().min(MAX_BATCH);
            group.queue.drain(..n).collect()
        };
        let ops: Vec<BarrierOp<'_>> = batch
            .iter()
            .map(|w| match &w.value {
                Some(v) => BarrierOp::Put(&w.key, v),
                None => BarrierOp::Delete(&w.key),
            })
            .collect();
        let res = barrier.apply(&ops);
        for w in &batch {
            *lock_state(&w.slot) = State::Done(res.clone());
            w.slot.cv.notify_one();
        }
        let mut g = groups();
        if let Some(map) = g.as_mut() {
            if let Some(group) = map.get_mut(&id) {
                match group.queue.first() {
                    Some(next) => {
                        *lock_state(&next.slot) = State::Lead;
                        next.slot.cv.notify_one();
                    }
                    None => {
                        map.remove(&id);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::barrier::KdfParams;
    use crate::storage::memory::MemoryStorage;
    use std::sync::Arc;

    fn rec(i: usize) -> LeaseRecord {
        LeaseRecord {
            id: format!("pg/creds/r/{i}"),
            path: "pg/creds/r".into(),
            issued_ms: 1,
            expires_ms: 2,
            max_expires_ms: 3,
            increment_secs: 1,
            renewable: true,
            uid: i as u32,
            secret: serde_json::json!({ "username": format!("u{i}") }),
            attempts: 0,
            retry_at_ms: None,
            last_error: None,
            irrevocable: false,
        }
    }

    /// Concurrent writers share batches and every write lands (and every delete), each one
    /// durable when its call returns; two barriers never mix their batches.
    #[test]
    fn concurrent_writes_and_deletes_all_land() {
        let barriers: Vec<Arc<Barrier>> = (0..2)
            .map(|_| {
                let b = Arc::new(Barrier::new(
                    Arc::new(MemoryStorage::new()),
                    KdfParams::minimum(),
                ));
                b.unseal(b"pw").expect("unseal");
                b
            })
            .collect();
        let n = 400;
        std::thread::scope(|s| {
            for t in 0..8 {
                let barriers = &barriers;
                s.spawn(move || {
                    for i in (t..n).step_by(8) {
                        let b = &barriers[i % 2];
                        store(b, &rec(i)).expect("store");
                        // Durable (readable) as soon as the call returns.
                        assert_eq!(load(b, &rec(i).id).expect("load"), Some(rec(i)));
                    }
                });
            }
        });
        for i in 0..n {
            assert_eq!(
                load(&barriers[i % 2], &rec(i).id).expect("load"),
                Some(rec(i))
            );
            assert_eq!(load(&barriers[1 - i % 2], &rec(i).id).expect("load"), None);
        }
        std::thread::scope(|s| {
            for t in 0..8 {
                let barriers = &barriers;
                s.spawn(move || {
                    for i in (t..n).step_by(8) {
                        if i % 3 != 0 {
                            delete(&barriers[i % 2], &rec(i).id).expect("delete");
                        }
                    }
                });
            }
        });
        for i in 0..n {
            let got = load(&barriers[i % 2], &rec(i).id).expect("load");
            assert_eq!(got.is_some(), i % 3 == 0, "lease {i}");
        }
    }

    /// A batch that fails fails every write in it, and nothing of it is written.
    #[test]
    fn a_failed_write_reports_its_error() {
        let b = Barrier::new(Arc::new(MemoryStorage::new()), KdfParams::minimum());
        // Sealed: the barrier refuses every write.
        let err = store(&b, &rec(1)).expect_err("sealed");
        assert_eq!(err.kind, ErrorKind::Sealed);
        assert_eq!(delete(&b, "x").map_err(|e| e.kind), Err(ErrorKind::Sealed));
    }
}
