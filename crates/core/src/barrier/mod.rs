//! The barrier: everything between the engine and storage is encrypted here.
//!
//! Owns: the seal state, the keyring (term keys wrapped by a passphrase-derived master key), the
//! entry format (AES-256-GCM, random nonce, header and logical path in the AAD), deterministic
//! encryption of path segments (names never reach storage in plaintext), and `View`s that chroot
//! a backend to its own prefix. Byte formats: docs/FORMAT.md.
//!
//! Must never: write plaintext to storage, log or print key material or values, or return data
//! that failed authentication.
//!
//! Size: over ~500 lines because the barrier's one public surface (get, put, list, batches,
//! compare-and-swap, versions) over the keyring; KDF, keyring, entry format, names and views are
//! modules beside it.

mod entry;
mod kdf;
mod keyring;
mod names;
pub mod view;

pub use kdf::KdfParams;
pub use view::View;

use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretBytes;
use crate::storage::{Storage, WriteOp};
use keyring::Keyring;
use std::sync::{Arc, RwLock};

/// Raw storage key of the seal configuration (plaintext: KDF parameters and salt).
const SEAL_CONFIG_KEY: &str = "core-seal-config";
/// Raw storage key of the wrapped keyring.
const KEYRING_KEY: &str = "core-keyring";
/// Prefix of every barrier-encrypted storage key.
const ENCRYPTED_PREFIX: &str = "v/";

/// Why an unseal failed, so the daemon can pick its exit code.
#[derive(Debug, thiserror::Error)]
pub enum UnsealError {
    #[error("wrong passphrase (the keyring did not decrypt)")]
    WrongPassphrase,
    #[error("{0}")]
    Other(Error),
}

impl From<Error> for UnsealError {
    fn from(e: Error) -> Self {
        UnsealError::Other(e)
    }
}

impl From<UnsealError> for Error {
    fn from(e: UnsealError) -> Self {
        match e {
            UnsealError::WrongPassphrase => Error::denied("wrong passphrase"),
            UnsealError::Other(e) => e,
        }
    }
}

/// The encrypting layer over a `Storage`.
pub struct Barrier {
    storage: Arc<dyn Storage>,
    keyring: RwLock<Option<Arc<Keyring>>>,
    kdf: KdfParams,
    /// Logical path → storage key. Name encryption is deterministic and the name key never
    /// rotates, so a cached key stays right until seal (which clears it), also when other
    /// daemons share the store. Bounded.
    keys: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// Logical folder → its encrypted form, so a path missing from `keys` costs one segment
    /// encryption, not one per segment (e.g. restoring 100,000 lease records under one
    /// folder). Bounded; cleared at seal.
    folders: std::sync::Mutex<std::collections::HashMap<String, String>>,
}

const KEY_CACHE_MAX: usize = 16_384;
const FOLDER_CACHE_MAX: usize = 4_096;

impl Barrier {
    /// `kdf` is used only when initialising an empty store.
    pub fn new(storage: Arc<dyn Storage>, kdf: KdfParams) -> Self {
        Self {
            storage,
            keyring: RwLock::new(None),
            kdf,
            keys: Default::default(),
            folders: Default::default(),
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn is_initialized(&self) -> Result<bool> {
        Ok(self.storage.get(SEAL_CONFIG_KEY)?.is_some())
    }

    pub fn is_sealed(&self) -> bool {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
    }

    /// Unseal with `passphrase`; an empty store is initialised with it first.
    /// A wrong passphrase changes nothing.
    pub fn unseal(&self, passphrase: &[u8]) -> Result<(), UnsealError> {
        if passphrase.is_empty() {
            return Err(Error::invalid("empty passphrase").into());
        }
        let keyring = match self.storage.get(SEAL_CONFIG_KEY)? {
            Some(config) => {
                let params = KdfParams::decode(&config)?;
                let master = params.derive(passphrase)?;
                let wrapped = self.storage.get(KEYRING_KEY)?.ok_or_else(|| {
                    Error::new(
                        ErrorKind::Integrity,
                        "seal config present but keyring missing",
                    )
                })?;
                Keyring::unwrap(master, &config, &wrapped).map_err(|e| match e {
                    None => UnsealError::WrongPassphrase,
                    Some(e) => UnsealError::Other(e),
                })?
            }
            None => {
                let params = self.kdf.with_fresh_salt();
                params.validate()?;
                let config = params.encode();
                let master = params.derive(passphrase)?;
                let keyring = Keyring::generate_with(master);
                let wrapped = keyring.wrap(&config)?;
                // Keyring first: a crash in between leaves no seal config, i.e. an empty store.
                self.storage.put(KEYRING_KEY, &wrapped)?;
                if !self
                    .storage
                    .compare_and_swap(SEAL_CONFIG_KEY, None, Some(&config))?
                {
                    return Err(Error::new(
                        ErrorKind::Busy,
                        "the store was initialised concurrently; unseal again",
                    )
                    .into());
                }
                tracing::info!("initialised a new encrypted store");
                keyring
            }
        };
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(keyring));
        Ok(())
    }

    pub fn seal(&self) {
        *self.keyring.write().unwrap_or_else(|p| p.into_inner()) = None;
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clear();
    }

    fn keyring(&self) -> Result<Arc<Keyring>> {
        self.keyring
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .ok_or_else(Error::sealed)
    }

    /// Add a key term; new writes use it, old entries stay readable. Rotates the keyring as
    /// stored (another daemon sharing the store may have added terms since this one loaded
    /// it), and swaps it in only if nobody changed it meanwhile.
    pub fn rotate(&self) -> Result<u32> {
        let (current, old_wrapped, config) = self.stored_keyring()?;
        let rotated = current.rotated();
        let term = rotated.active_term();
        let new_wrapped = rotated.wrap(&config)?;
        if !self
            .storage
            .compare_and_swap(KEYRING_KEY, Some(&old_wrapped), Some(&new_wrapped))?
        {
            return Err(Error::new(
                ErrorKind::Busy,
                "keyring changed concurrently; retry",
            ));
        }
        self.install(rotated);
        tracing::info!(term, "rotated the encryption key");
        Ok(term)
    }

    /// The keyring as stored now, unwrapped with this daemon's master key, with its wrapped
    /// bytes and the seal config.
    fn stored_keyring(&self) -> Result<(Keyring, Vec<u8>, Vec<u8>)> {
        let master = self.keyring()?.master();
        let config = self
            .storage
            .get(SEAL_CONFIG_KEY)?
            .ok_or_else(|| Error::new(ErrorKind::Integrity, "seal config missing"))?;
        let wrapped = self
            .storage
            .get(KEYRING_KEY)?
            .ok_or_else(|| Error::new(ErrorKind::Integrity, "keyring missing"))?;
        let kr = Keyring::unwrap(master, &config, &wrapped).map_err(|e| {
            e.unwrap_or_else(|| {
                Error::new(
                    ErrorKind::Integrity,
                    "the stored keyring no longer opens with this store's master key",
                )
            })
        })?;
        Ok((kr, wrapped, config))
    }

    /// Swap in `kr` unless the barrier was sealed meanwhile.
    fn install(&self, kr: Keyring) {
        let mut slot = self.keyring.write().unwrap_or_else(|p| p.into_inner());
        if slot.is_some() {
            *slot = Some(Arc::new(kr));
        }
    }

    /// Re-read the keyring (an entry names a term this daemon has not seen: another daemon
    /// sharing the store rotated). Returns the keyring now in use.
    fn reload_keyring(&self) -> Result<Arc<Keyring>> {
        let (kr, _, _) = self.stored_keyring()?;
        tracing::info!(term = kr.active_term(), "reloaded the keyring from storage");
        self.install(kr);
        self.keyring()
    }

    /// The storage key of the wrapped keyring (plaintext name), e.g. to watch it.
    pub const KEYRING_STORAGE_KEY: &'static str = KEYRING_KEY;

    /// Another daemon sharing the store rotated (the watch saw the stored keyring change):
    /// re-read it, so this daemon's new writes use the new term at once. Sealed: nothing to
    /// do. Returns the active term now.
    pub fn keyring_changed(&self) -> Result<u32> {
        if self.is_sealed() {
            return Err(Error::sealed());
        }
        Ok(self.reload_keyring()?.active_term())
    }

    /// The keyring that knows the term `raw` was sealed with: this one, or a reloaded one.
    fn keyring_for(&self, kr: Arc<Keyring>, raw: &[u8]) -> Result<Arc<Keyring>> {
        match entry::term_of(raw) {
            Some(t) if kr.cipher(t).is_none() => self.reload_keyring(),
            _ => Ok(kr),
        }
    }

    pub fn active_term(&self) -> Result<u32> {
        Ok(self.keyring()?.active_term())
    }

    /// The per-store key for audit HMACs.
    pub fn audit_hmac(&self, data: &[u8]) -> Result<String> {
        Ok(self.keyring()?.audit_hmac(data))
    }

    fn storage_key(&self, kr: &Keyring, logical: &str) -> Result<String> {
        if let Some(k) = self
            .keys
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(logical)
        {
            return Ok(k.clone());
        }
        let enc = match logical.rsplit_once('/') {
            Some((parent, seg)) if !parent.is_empty() && !seg.is_empty() => {
                let parent_enc = self.folder_key(kr, parent)?;
                names::encrypt_child(kr, parent, &parent_enc, seg)?
            }
            _ => names::encrypt_path(kr, logical)?,
        };
        let key = format!("{ENCRYPTED_PREFIX}{enc}");
        let mut cache = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= KEY_CACHE_MAX {
            cache.clear();
        }
        cache.insert(logical.to_string(), key.clone());
        Ok(key)
    }

    /// The encrypted form of logical folder `folder` (no prefix, no trailing '/').
    fn folder_key(&self, kr: &Keyring, folder: &str) -> Result<String> {
        if let Some(k) = self
            .folders
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(folder)
        {
            return Ok(k.clone());
        }
        let enc = names::encrypt_path(kr, folder)?;
        let mut cache = self.folders.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= FOLDER_CACHE_MAX {
            cache.clear();
        }
        cache.insert(folder.to_string(), enc.clone());
        Ok(enc)
    }

    pub fn get(&self, logical: &str) -> Result<Option<SecretBytes>> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        match self.storage.get(&key)? {
            None => Ok(None),
            Some(raw) => self.open(kr, logical, &raw).map(Some),
        }
    }

    fn open(&self, kr: Arc<Keyring>, logical: &str, raw: &[u8]) -> Result<SecretBytes> {
        let kr = self.keyring_for(kr, raw)?;
        entry::open(&kr, logical, raw).inspect_err(|e| {
            tracing::error!(path = logical, "integrity failure: {}", e.message);
        })
    }

    /// The value and its stored form, the version token for `compare_and_swap`.
    pub fn get_versioned(&self, logical: &str) -> Result<Option<(SecretBytes, Version)>> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        match self.storage.get(&key)? {
            None => Ok(None),
            Some(raw) => {
                let value = self.open(kr, logical, &raw)?;
                Ok(Some((value, Version(raw))))
            }
        }
    }

    /// Write (`Some`) or delete (`None`) `logical` only if it is still at `expected` (`None`:
    /// absent). Every write seals with a fresh nonce, so an unchanged version means nobody
    /// (no daemon sharing the store) wrote it since. Returns whether it was written.
    pub fn compare_and_swap(
        &self,
        logical: &str,
        expected: Option<&Version>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        let sealed = match new {
            Some(v) => Some(entry::seal(&kr, logical, v)?),
            None => None,
        };
        self.storage
            .compare_and_swap(&key, expected.map(|v| v.0.as_slice()), sealed.as_deref())
    }

    /// The stored form of `logical` without decrypting it (None: absent): a cheap "has it
    /// changed?" check for caches of decrypted state. Every write seals with a fresh nonce, so
    /// an equal version means nobody (no daemon sharing the store) wrote it since.
    pub fn version(&self, logical: &str) -> Result<Option<Version>> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        Ok(self.storage.get(&key)?.map(Version))
    }

    /// Decrypt the stored form `version` of `logical` (read by `version`).
    pub fn open_version(&self, logical: &str, version: &Version) -> Result<SecretBytes> {
        let kr = self.keyring()?;
        self.open(kr, logical, &version.0)
    }

    /// Plaintext size of an entry without decrypting it (None: absent).
    pub fn size(&self, logical: &str) -> Result<Option<u64>> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        Ok(self
            .storage
            .get(&key)?
            .map(|raw| entry::plaintext_len(&raw) as u64))
    }

    pub fn put(&self, logical: &str, value: &[u8]) -> Result<()> {
        self.apply(&[BarrierOp::Put(logical, value)])
    }

    pub fn delete(&self, logical: &str) -> Result<()> {
        self.apply(&[BarrierOp::Delete(logical)])
    }

    /// Encrypt and apply a batch atomically.
    pub fn apply(&self, ops: &[BarrierOp<'_>]) -> Result<()> {
        let kr = self.keyring()?;
        let out = self.sealed_ops(&kr, ops)?;
        self.storage.apply(&out)
    }

    /// The storage writes of `ops`: names encrypted, values sealed.
    fn sealed_ops(&self, kr: &Keyring, ops: &[BarrierOp<'_>]) -> Result<Vec<WriteOp>> {
        let mut out = Vec::with_capacity(ops.len());
        for op in ops {
            out.push(match op {
                BarrierOp::Put(path, value) => {
                    WriteOp::Put(self.storage_key(kr, path)?, entry::seal(kr, path, value)?)
                }
                BarrierOp::Delete(path) => WriteOp::Delete(self.storage_key(kr, path)?),
            });
        }
        Ok(out)
    }

    /// Apply `ops` all or none, only if `logical` is still at `expected` (`None`: absent): a
    /// compare-and-swap over a batch. Returns whether they were applied.
    pub fn apply_if(
        &self,
        logical: &str,
        expected: Option<&Version>,
        ops: &[BarrierOp<'_>],
    ) -> Result<bool> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        let out = self.sealed_ops(&kr, ops)?;
        self.storage
            .apply_if(&key, expected.map(|v| v.0.as_slice()), &out)
    }

    /// Every logical path under `prefix` (which ends with '/' or is empty), in storage order.
    pub fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let kr = self.keyring()?;
        let enc_prefix = format!("{ENCRYPTED_PREFIX}{}", names::encrypt_prefix(&kr, prefix)?);
        let keys = self.storage.list(&enc_prefix)?;
        let mut out = Vec::with_capacity(keys.len());
        // Keys in storage order share their folders: decrypt each folder once.
        let mut last: Option<(String, String)> = None;
        for k in keys {
            let rest = k.get(ENCRYPTED_PREFIX.len()..).unwrap_or("");
            let logical = match rest.rsplit_once('/') {
                Some((enc_parent, enc_seg)) => {
                    let parent = match &last {
                        Some((e, l)) if e == enc_parent => l.clone(),
                        _ => {
                            let l = names::decrypt_path(&kr, enc_parent)?;
                            last = Some((enc_parent.to_string(), l.clone()));
                            l
                        }
                    };
                    let seg = names::decrypt_child(&kr, &parent, enc_seg)?;
                    format!("{parent}/{seg}")
                }
                None => names::decrypt_path(&kr, rest)?,
            };
            out.push(logical);
        }
        Ok(out)
    }

    /// The direct children of `prefix` ("" or ending in '/'), in storage order: an entry as
    /// its logical path, a subfolder as its logical path with a trailing '/' (see
    /// `Storage::list_children`; each segment is encrypted on its own, so the encrypted keys
    /// keep the folder structure and the store can seek past a subtree).
    pub fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        let kr = self.keyring()?;
        let enc_prefix = format!("{ENCRYPTED_PREFIX}{}", names::encrypt_prefix(&kr, prefix)?);
        let keys = self.storage.list_children(&enc_prefix)?;
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let rest = &k[ENCRYPTED_PREFIX.len()..];
            out.push(match rest.strip_suffix('/') {
                Some(folder) => format!("{}/", names::decrypt_path(&kr, folder)?),
                None => names::decrypt_path(&kr, rest)?,
            });
        }
        Ok(out)
    }

    /// The storage key prefix of logical `prefix` (ends with '/'), e.g. to watch it on a
    /// shared store. Needs the name key (unsealed).
    pub fn storage_prefix(&self, prefix: &str) -> Result<String> {
        let kr = self.keyring()?;
        Ok(format!(
            "{ENCRYPTED_PREFIX}{}",
            names::encrypt_prefix(&kr, prefix)?
        ))
    }

    /// The logical path of storage key `key` (None: not an encrypted entry's key).
    pub fn logical_of(&self, key: &str) -> Result<Option<String>> {
        let kr = self.keyring()?;
        match key.strip_prefix(ENCRYPTED_PREFIX) {
            Some(rest) => names::decrypt_path(&kr, rest).map(Some),
            None => Ok(None),
        }
    }

    /// Delete `logical` only while `term` leads the expiry election (`cluster`).
    /// Ok(false): fenced off, nothing deleted.
    pub fn delete_fenced(
        &self,
        logical: &str,
        leadership: &dyn crate::cluster::Leadership,
        term: crate::cluster::Term,
    ) -> Result<bool> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        leadership.apply_fenced(term, &[WriteOp::Delete(key)])
    }

    /// `compare_and_swap` only while `term` leads the expiry election. Ok(None): fenced off.
    pub fn compare_and_swap_fenced(
        &self,
        logical: &str,
        expected: Option<&Version>,
        new: Option<&[u8]>,
        leadership: &dyn crate::cluster::Leadership,
        term: crate::cluster::Term,
    ) -> Result<Option<bool>> {
        let kr = self.keyring()?;
        let key = self.storage_key(&kr, logical)?;
        let sealed = match new {
            Some(v) => Some(entry::seal(&kr, logical, v)?),
            None => None,
        };
        leadership.compare_and_swap_fenced(
            term,
            &key,
            expected.map(|v| v.0.as_slice()),
            sealed.as_deref(),
        )
    }

    pub fn has_prefix(&self, prefix: &str) -> Result<bool> {
        let kr = self.keyring()?;
        let enc_prefix = format!("{ENCRYPTED_PREFIX}{}", names::encrypt_prefix(&kr, prefix)?);
        self.storage.has_prefix(&enc_prefix)
    }
}

/// The stored form of an entry as read, for `Barrier::compare_and_swap` (and, compared, for
/// "changed since?").
#[derive(Clone, PartialEq, Eq)]
pub struct Version(Vec<u8>);

/// One write in an atomic barrier batch (logical paths, plaintext values).
pub enum BarrierOp<'a> {
    Put(&'a str, &'a [u8]),
    Delete(&'a str),
}

#[cfg(test)]
mod fuzz_tests;
#[cfg(test)]
mod tests;
