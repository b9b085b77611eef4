//! In-memory storage for `--dev` and tests. Everything is gone at exit.

use super::{child_of, past_subtree, Child, Storage, WriteOp};
use crate::error::Result;
use std::collections::BTreeMap;
use std::sync::RwLock;

#[derive(Default)]
pub struct MemoryStorage {
    map: RwLock<BTreeMap<String, Vec<u8>>>,
}

impl MemoryStorage {
    pub fn new() -> Self {
        Self::default()
    }
    /// Test helper: raw access to every stored entry.
    pub fn dump(&self) -> Vec<(String, Vec<u8>)> {
        self.read()
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.map.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Vec<u8>>> {
        self.map.write().unwrap_or_else(|p| p.into_inner())
    }
}

impl Storage for MemoryStorage {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read().get(key).cloned())
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .read()
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect())
    }
    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let map = self.read();
        let mut out = Vec::new();
        let mut from = prefix.to_string();
        'seek: loop {
            for k in map.range(from.clone()..).map(|(k, _)| k) {
                if !k.starts_with(prefix) {
                    break 'seek;
                }
                if let Child::Subtree(c) = child_of(prefix, k) {
                    out.push(c.to_string());
                    from = past_subtree(c);
                    continue 'seek;
                }
                out.push(k.clone());
            }
            break;
        }
        Ok(out)
    }
    fn has_prefix(&self, prefix: &str) -> Result<bool> {
        Ok(self
            .read()
            .range(prefix.to_string()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(prefix)))
    }
    fn apply(&self, ops: &[WriteOp]) -> Result<()> {
        let mut map = self.write();
        for op in ops {
            match op {
                WriteOp::Put(k, v) => {
                    map.insert(k.clone(), v.clone());
                }
                WriteOp::Delete(k) => {
                    map.remove(k);
                }
            }
        }
        Ok(())
    }
    fn apply_if(&self, key: &str, expected: Option<&[u8]>, ops: &[WriteOp]) -> Result<bool> {
        let mut map = self.write();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        for op in ops {
            match op {
                WriteOp::Put(k, v) => map.insert(k.clone(), v.clone()),
                WriteOp::Delete(k) => map.remove(k),
            };
        }
        Ok(true)
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        let mut map = self.write();
        if map.get(key).map(Vec::as_slice) != expected {
            return Ok(false);
        }
        match new {
            Some(v) => map.insert(key.to_string(), v.to_vec()),
            None => map.remove(key),
        };
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn conformance() {
        super::super::conformance::run(&super::MemoryStorage::new());
    }
    #[test]
    fn concurrent_writers() {
        super::super::conformance::run_concurrent(&super::MemoryStorage::new());
    }
}
