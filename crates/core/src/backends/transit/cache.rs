//! The transit key cache: each key's settings and its decrypted versions (as ready ciphers),
//! so an encryption or decryption costs one storage read (the check below) instead of two
//! reads, two barrier decryptions, a JSON parse and an AES key expansion.
//!
//! Validity: an entry is used only while the stored (still encrypted) form of `keys/NAME/meta`
//! equals the one it was built from. Every write through the barrier seals with a fresh nonce,
//! so any change of the key record — rotate, a settings change, delete, a re-create, made here
//! or by another daemon sharing the store — fails that check and the entry is rebuilt from
//! storage. The version records (`keys/NAME/v/N`) are written once, with the meta that names
//! them, and deleted with it, so an unchanged meta vouches for them too. Local mutations and
//! `Transit::invalidate` (the hook for a storage watch) also drop the entry at once, so its
//! key material is wiped without waiting for the next use.
//!
//! Memory: ciphers are `Aes256Gcm` built with the `aes`/`aes-gcm` `zeroize` features (round
//! keys wiped on drop), held in `Arc`s: an evicted or invalidated entry's keys are wiped when
//! the last operation using them ends. Bounded: at most `MAX_KEYS` keys and `MAX_VERSIONS`
//! versions per key (past either, entries are dropped, never grown), whatever any uid does.
//!
//! Owns: `KeyCache`. Must never: serve an entry without the stored-form check, hold its lock
//! across storage I/O, or hold key bytes outside zeroizing memory.

use super::Meta;
use crate::barrier::Version;
use aes_gcm::Aes256Gcm;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// Keys cached at most (one entry each).
pub(super) const MAX_KEYS: usize = 1024;
/// Decrypted versions cached per key at most.
pub(super) const MAX_VERSIONS: usize = 32;

struct Entry {
    /// The stored form of `keys/NAME/meta` this entry was built from.
    stamp: Version,
    meta: Arc<Meta>,
    ciphers: HashMap<u32, Arc<Aes256Gcm>>,
}

#[derive(Default)]
pub(super) struct KeyCache {
    entries: Mutex<HashMap<String, Entry>>,
}

impl KeyCache {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The cached settings of `name`, if the entry was built from `stamp`.
    pub(super) fn meta(&self, name: &str, stamp: &Version) -> Option<Arc<Meta>> {
        let mut map = self.lock();
        match map.get(name) {
            Some(e) if e.stamp == *stamp => Some(e.meta.clone()),
            Some(_) => {
                // Stale (changed in storage): wipe it now.
                map.remove(name);
                None
            }
            None => None,
        }
    }

    /// Remember `meta`, read from `stamp`. Replaces an entry built from another stamp.
    pub(super) fn put_meta(&self, name: &str, stamp: Version, meta: Arc<Meta>) {
        let mut map = self.lock();
        if let Some(e) = map.get(name) {
            if e.stamp == stamp {
                return;
            }
        }
        if map.len() >= MAX_KEYS && !map.contains_key(name) {
            // Drop an arbitrary entry (HashMap order): bounded, never grown.
            if let Some(victim) = map.keys().next().cloned() {
                map.remove(&victim);
            }
        }
        map.insert(
            name.to_string(),
            Entry {
                stamp,
                meta,
                ciphers: HashMap::new(),
            },
        );
    }

    /// The cached cipher of `version` of `name`, if the entry was built from `stamp`.
    pub(super) fn cipher(
        &self,
        name: &str,
        stamp: &Version,
        version: u32,
    ) -> Option<Arc<Aes256Gcm>> {
        let map = self.lock();
        let e = map.get(name)?;
        if e.stamp != *stamp {
            return None;
        }
        e.ciphers.get(&version).cloned()
    }

    /// Remember the cipher of `version`, if the entry is still the one built from `stamp`.
    pub(super) fn put_cipher(&self, name: &str, stamp: &Version, version: u32, c: Arc<Aes256Gcm>) {
        let mut map = self.lock();
        let Some(e) = map.get_mut(name) else { return };
        if e.stamp != *stamp {
            return;
        }
        if e.ciphers.len() >= MAX_VERSIONS && !e.ciphers.contains_key(&version) {
            // Keep the latest version (what encryption uses); drop the others.
            let latest = e.meta.latest_version;
            e.ciphers.retain(|v, _| *v == latest);
        }
        e.ciphers.insert(version, c);
    }

    /// Forget `name` (its ciphers are wiped when no operation uses them any more).
    pub(super) fn invalidate(&self, name: &str) {
        self.lock().remove(name);
    }

    /// Forget every key.
    pub(super) fn clear(&self) {
        self.lock().clear();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().len()
    }

    #[cfg(test)]
    pub(super) fn versions(&self, name: &str) -> usize {
        self.lock().get(name).map_or(0, |e| e.ciphers.len())
    }
}
