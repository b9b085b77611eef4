//! Physical storage: opaque keys to opaque bytes.
//!
//! Owns: the `Storage` trait (get/put/delete/list-prefix, compare-and-swap, atomic batches) and
//! its implementations: `memory` (dev mode and tests), `file` (the embedded default, an ACID
//! redb database) and `etcd` (cargo feature `etcd`: several daemons share one store).
//! `conformance` is the one test suite every implementation passes. `faulty` wraps any of
//! them and fails a seeded fraction of calls (tests only; see its module doc).
//!
//! Must never: see plaintext. Everything above the barrier reaches storage encrypted, names
//! included; storage only moves bytes and makes them durable.

#[cfg(feature = "etcd")]
pub mod etcd;
pub mod faulty;
pub mod file;
pub mod memory;

#[doc(hidden)]
pub mod conformance;

use crate::error::{Error, ErrorKind, Result};

/// One write in an atomic batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    Put(String, Vec<u8>),
    Delete(String),
}

/// A key-value store with prefix listing and atomic multi-key writes.
///
/// Every method that returns `Ok` for a write has made it durable (for durable stores).
pub trait Storage: Send + Sync {
    /// The kind, for `sys/health` ("memory", "file", "etcd").
    fn kind(&self) -> &'static str;
    /// Whether other daemons may write this store too (etcd): the engine then re-reads what
    /// it caches (mount table, keyring, leases) when it may be stale.
    fn shared(&self) -> bool {
        false
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.apply(&[WriteOp::Put(key.to_string(), value.to_vec())])
    }
    /// Delete a key; deleting an absent key is not an error.
    fn delete(&self, key: &str) -> Result<()> {
        self.apply(&[WriteOp::Delete(key.to_string())])
    }
    /// Every key that starts with `prefix`, in byte order.
    fn list(&self, prefix: &str) -> Result<Vec<String>>;
    /// The direct children of `prefix` ("" or ending in '/'), in byte order: a key directly
    /// under `prefix` comes as itself; a deeper subtree (`prefix` + `c/...`) comes once, as
    /// `prefix` + `c/` (a name may come both ways). The ordered stores seek past each child's
    /// subtree, so this costs O(direct children · log n) whatever lies below them.
    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for k in self.list(prefix)? {
            let entry = match child_of(prefix, &k) {
                Child::Leaf => k,
                Child::Subtree(c) => c.to_string(),
            };
            if out.last() != Some(&entry) {
                out.push(entry);
            }
        }
        Ok(out)
    }
    /// Whether any key starts with `prefix`.
    fn has_prefix(&self, prefix: &str) -> Result<bool> {
        Ok(!self.list(prefix)?.is_empty())
    }
    /// Apply all writes or none.
    fn apply(&self, ops: &[WriteOp]) -> Result<()>;
    /// Apply all of `ops` or none, and only if `key` currently is `expected` (`None`: absent):
    /// a compare-and-swap over a batch (a transit key's record with its new key version).
    /// Returns whether they were applied. `ops` should write `key` (its new value is how a
    /// retried call tells that its own earlier attempt landed).
    fn apply_if(&self, key: &str, expected: Option<&[u8]>, ops: &[WriteOp]) -> Result<bool> {
        let _ = (key, expected, ops);
        Err(Error::new(
            ErrorKind::Io,
            format!("storage {}: no conditional batches", self.kind()),
        ))
    }
    /// Replace the value of `key` only if it currently is `expected` (`None`: absent).
    /// `new = None` deletes. Returns whether the swap happened.
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool>;
}

pub(crate) fn storage_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::new(ErrorKind::Io, format!("storage {what}: {e}"))
}

/// What a key under a listed prefix is to that prefix (for `Storage::list_children`).
pub(crate) enum Child<'a> {
    /// The key itself is a direct child.
    Leaf,
    /// The key lies in the subtree of a child: `prefix` + `c/`, the child as listed.
    Subtree(&'a str),
}

/// Classify `key` (which starts with `prefix`) relative to `prefix`.
pub(crate) fn child_of<'a>(prefix: &str, key: &'a str) -> Child<'a> {
    match key.get(prefix.len()..).and_then(|rest| rest.find('/')) {
        Some(n) => Child::Subtree(&key[..prefix.len() + n + 1]),
        None => Child::Leaf,
    }
}

/// The first key after every key that starts with `subtree` (which ends with '/'): the same
/// string with the final '/' replaced by '0', the next byte. Every key in between starts with
/// `subtree`, so a range continued here skips exactly that subtree.
pub(crate) fn past_subtree(subtree: &str) -> String {
    let mut s = subtree.strip_suffix('/').unwrap_or(subtree).to_string();
    s.push('0');
    s
}
