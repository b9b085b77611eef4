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

/// Persist `rec` (unconditionally).
pub(super) fn store(barrier: &Barrier, rec: &LeaseRecord) -> Result<()> {
    let raw = serde_json::to_vec(rec).map_err(|e| Error::io(format!("lease record: {e}")))?;
    barrier.put(&key(&rec.id), &raw)
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

/// Delete the record of `id`.
pub(super) fn delete(barrier: &Barrier, id: &str) -> Result<()> {
    barrier.delete(&key(id))
}
