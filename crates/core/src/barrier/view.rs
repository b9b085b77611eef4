//! A `View` chroots a backend to its own prefix of the barrier: it can neither see nor name
//! anything outside it.

use super::{Barrier, BarrierOp};
use crate::error::Result;
use crate::secret::SecretBytes;
use std::sync::Arc;

#[derive(Clone)]
pub struct View {
    barrier: Arc<Barrier>,
    /// Ends with '/'.
    prefix: String,
}

/// One write in an atomic view batch.
pub enum ViewOp<'a> {
    Put(&'a str, &'a [u8]),
    Delete(&'a str),
}

impl View {
    pub fn new(barrier: Arc<Barrier>, prefix: impl Into<String>) -> Self {
        let mut prefix = prefix.into();
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Self { barrier, prefix }
    }
    fn full(&self, path: &str) -> String {
        format!("{}{path}", self.prefix)
    }
    pub fn prefix(&self) -> &str {
        &self.prefix
    }
    pub fn get(&self, path: &str) -> Result<Option<SecretBytes>> {
        self.barrier.get(&self.full(path))
    }
    /// The stored (encrypted) form of `path`, not decrypted: see `Barrier::version`.
    pub fn version(&self, path: &str) -> Result<Option<super::Version>> {
        self.barrier.version(&self.full(path))
    }
    /// Decrypt a stored form `version` read of `path`.
    pub fn open_version(&self, path: &str, version: &super::Version) -> Result<SecretBytes> {
        self.barrier.open_version(&self.full(path), version)
    }
    pub fn size(&self, path: &str) -> Result<Option<u64>> {
        self.barrier.size(&self.full(path))
    }
    pub fn put(&self, path: &str, value: &[u8]) -> Result<()> {
        self.barrier.put(&self.full(path), value)
    }
    pub fn delete(&self, path: &str) -> Result<()> {
        self.barrier.delete(&self.full(path))
    }
    pub fn apply(&self, ops: &[ViewOp<'_>]) -> Result<()> {
        let full = self.full_ops(ops);
        self.barrier.apply(&barrier_ops(&full))
    }
    /// The ops with their paths made full (owned), for `barrier_ops`.
    fn full_ops<'v>(&self, ops: &[ViewOp<'v>]) -> Vec<(String, Option<&'v [u8]>)> {
        ops.iter()
            .map(|op| match op {
                ViewOp::Put(p, v) => (self.full(p), Some(*v)),
                ViewOp::Delete(p) => (self.full(p), None),
            })
            .collect()
    }
    /// `apply`, only if `path` is still at `expected` (`None`: absent); whether it applied.
    pub fn apply_if(
        &self,
        path: &str,
        expected: Option<&super::Version>,
        ops: &[ViewOp<'_>],
    ) -> Result<bool> {
        let full = self.full_ops(ops);
        self.barrier
            .apply_if(&self.full(path), expected, &barrier_ops(&full))
    }
    /// Paths (relative to the view) under `prefix` ("" or ending in '/').
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let n = self.prefix.len();
        Ok(self
            .barrier
            .list(&self.full(prefix))?
            .into_iter()
            .map(|p| p[n..].to_string())
            .collect())
    }
    /// Direct children (relative to the view) of `prefix` ("" or ending in '/'): entries as
    /// paths, subfolders as paths ending in '/' (see `Barrier::list_children`).
    pub fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let n = self.prefix.len();
        Ok(self
            .barrier
            .list_children(&self.full(prefix))?
            .into_iter()
            .map(|p| p[n..].to_string())
            .collect())
    }
    pub fn has_prefix(&self, prefix: &str) -> Result<bool> {
        self.barrier.has_prefix(&self.full(prefix))
    }
    /// Delete everything in the view (unmount).
    pub fn clear(&self) -> Result<()> {
        let paths = self.list("")?;
        // 128: etcd's default limit of operations in one transaction.
        for chunk in paths.chunks(128) {
            let ops: Vec<ViewOp<'_>> = chunk.iter().map(|p| ViewOp::Delete(p)).collect();
            self.apply(&ops)?;
        }
        Ok(())
    }
}

fn barrier_ops<'a>(full: &'a [(String, Option<&'a [u8]>)]) -> Vec<BarrierOp<'a>> {
    full.iter()
        .map(|(p, v)| match v {
            Some(v) => BarrierOp::Put(p, v),
            None => BarrierOp::Delete(p),
        })
        .collect()
}
