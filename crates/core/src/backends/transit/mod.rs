//! The `transit` backend (`type = "transit"`): encryption as a service with named keys that
//! never leave the daemon.
//!
//! Owns: its view's layout — `keys/NAME/meta` (JSON: type, versions with creation times,
//! latest_version, min_decryption_version, deletion_allowed; no key material) and
//! `keys/NAME/v/N` (the 32 raw bytes of version N's AES-256-GCM key) — the ciphertext format
//! `nomadfs:vN:BASE64(nonce[12] || ciphertext || tag[16])` with AAD binding the key name and
//! version, and the key lifecycle (create, rotate, min_decryption_version, guarded delete).
//! `encrypt/NAME`, `decrypt/NAME` and `rewrap/NAME` are exchange nodes: the adapter hands the
//! bytes written in one open to `exchange` and serves its answer to the reads of that open.
//! Decrypted key versions are cached (`cache`: zeroized on drop, bounded, checked against the
//! stored record on every use, so a change made by another daemon sharing the store is never
//! served stale; `invalidate` is the hook for a storage watch).
//! Must never: return or log key material (info shows versions and settings only), put a
//! plaintext or key into an error message, or change a key except under the mutation lock in one
//! atomic batch (a rotation lost to a race would make its ciphertexts undecryptable).
//!
//! Size: over ~500 lines because the backend's request mapping and key records; `ctl` commands,
//! crypto, the key cache and the path table are their own modules.

use super::{partial, validate_name, Services};
use crate::backend::{Backend, Ctx, DirEntry, Node, Writes};
use crate::barrier::view::ViewOp;
use crate::barrier::{Version, View};
use crate::error::{Error, ErrorKind, Result};
use crate::lease::rfc3339;
use crate::route::Router;
use crate::secret::SecretBytes;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use paths::{HELP_INTRO, HELP_NOTES, PATHS};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// The one key type.
pub const KEY_TYPE: &str = "aes256-gcm96";
const PREFIX: &str = "nomadfs:v";
const NONCE: usize = 12;
const TAG: usize = 16;
const KEY_LEN: usize = 32;

/// Serialises key mutations (create, rotate, settings, delete) in this process: each is a
/// read-modify-write of `meta`. Process-wide, not per instance: the mount table is rebuilt on
/// every change, so two instances of one mount can briefly coexist.
static MUTATE: Mutex<()> = Mutex::new(());

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Keys,
    Key,
    Info,
    Ctl,
    OpDir(Exchange),
    OpFile(Exchange),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Exchange {
    Encrypt,
    Decrypt,
    Rewrap,
}

/// A key's settings and version list, as stored in `keys/NAME/meta`. No key material.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
struct Meta {
    #[serde(rename = "type")]
    kind: String,
    latest_version: u32,
    min_decryption_version: u32,
    deletion_allowed: bool,
    /// Version → creation time (ms since the epoch).
    versions: BTreeMap<u32, u64>,
}

pub struct Transit {
    view: View,
    services: Services,
    router: Router<Route>,
    cache: cache::KeyCache,
}

/// A key's settings as one operation uses them, with the stored form of `keys/NAME/meta` they
/// were read from (the cache's validity check).
struct Loaded {
    meta: Arc<Meta>,
    stamp: Version,
}

fn meta_key(name: &str) -> String {
    format!("keys/{name}/meta")
}
fn version_key(name: &str, version: u32) -> String {
    format!("keys/{name}/v/{version}")
}
fn key_prefix(name: &str) -> String {
    format!("keys/{name}/")
}

/// How often a key change is tried again when another daemon changed the key in between.
const CAS_ATTEMPTS: u32 = 8;

fn changed_meanwhile(name: &str) -> Error {
    Error::new(
        ErrorKind::Busy,
        format!("keys/{name}: changed by another daemon while this change was made; try again"),
    )
}

impl Transit {
    pub fn new(view: View, services: &Services) -> Self {
        Self {
            view,
            services: services.clone(),
            router: Router::declare(PATHS),
            cache: cache::KeyCache::default(),
        }
    }

    /// Forget what is cached of key `name` (its key material is wiped). Every use checks the
    /// cache against the stored record anyway; this hook lets a storage watch (a change made
    /// by another daemon sharing etcd) drop the key material at once.
    pub fn invalidate(&self, name: &str) {
        self.cache.invalidate(name);
    }

    /// Forget every cached key (e.g. a watch that lost its place).
    pub fn invalidate_all(&self) {
        self.cache.clear();
    }

    fn route<'p>(&self, path: &'p str) -> Result<(Route, &'p str)> {
        let (route, caps) = self
            .router
            .route(path)
            .ok_or_else(|| Error::not_found(path))?;
        Ok((route, caps.first().copied().unwrap_or("")))
    }

    /// The key's settings, or ENOENT.
    fn meta(&self, name: &str) -> Result<Meta> {
        validate_name(name)?;
        let raw = self
            .view
            .get(&meta_key(name))?
            .ok_or_else(|| Error::not_found(&format!("keys/{name}")))?;
        Self::parse_meta(name, raw.expose())
    }

    /// The key's settings and the stored form they were read from (for a compare-and-swap of
    /// a change: another daemon sharing the store may change the key meanwhile), or ENOENT.
    fn meta_versioned(&self, name: &str) -> Result<(Meta, Version)> {
        validate_name(name)?;
        let mk = meta_key(name);
        let stamp = self
            .view
            .version(&mk)?
            .ok_or_else(|| Error::not_found(&format!("keys/{name}")))?;
        let raw = self.view.open_version(&mk, &stamp)?;
        Ok((Self::parse_meta(name, raw.expose())?, stamp))
    }

    /// The key's settings for an operation: from the cache while the stored record is the one
    /// it was built from (one storage read, no decryption), else read and cached.
    fn load(&self, name: &str) -> Result<Loaded> {
        validate_name(name)?;
        let mk = meta_key(name);
        let Some(stamp) = self.view.version(&mk)? else {
            self.cache.invalidate(name);
            return Err(Error::not_found(&format!("keys/{name}")));
        };
        if let Some(meta) = self.cache.meta(name, &stamp) {
            return Ok(Loaded { meta, stamp });
        }
        let raw = self.view.open_version(&mk, &stamp)?;
        let meta = Arc::new(Self::parse_meta(name, raw.expose())?);
        self.cache.put_meta(name, stamp.clone(), meta.clone());
        Ok(Loaded { meta, stamp })
    }

    /// The cipher of `version` of the key `k` was loaded for: cached, or read and cached.
    fn cipher_of(&self, name: &str, k: &Loaded, version: u32) -> Result<Arc<Aes256Gcm>> {
        if let Some(c) = self.cache.cipher(name, &k.stamp, version) {
            return Ok(c);
        }
        let c = Arc::new(self.cipher(name, version)?);
        self.cache.put_cipher(name, &k.stamp, version, c.clone());
        Ok(c)
    }

    fn parse_meta(name: &str, raw: &[u8]) -> Result<Meta> {
        let meta: Meta = serde_json::from_slice(raw).map_err(|e| {
            Error::new(
                ErrorKind::Integrity,
                format!("keys/{name}: stored settings unreadable: {e}"),
            )
        })?;
        if meta.latest_version == 0
            || meta.min_decryption_version == 0
            || meta.min_decryption_version > meta.latest_version
            || !meta.versions.contains_key(&meta.latest_version)
        {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("keys/{name}: stored settings are inconsistent"),
            ));
        }
        Ok(meta)
    }

    fn exists(&self, name: &str) -> Result<bool> {
        if validate_name(name).is_err() {
            return Ok(false);
        }
        Ok(self.view.size(&meta_key(name))?.is_some())
    }

    fn names(&self) -> Result<Vec<String>> {
        let mut out: Vec<String> = Vec::new();
        for p in self.view.list("keys/")? {
            let rest = &p["keys/".len()..];
            if let Some(name) = rest.strip_suffix("/meta") {
                if !name.contains('/') {
                    out.push(name.to_string());
                }
            }
        }
        out.sort();
        out.dedup();
        Ok(out)
    }

    /// The cipher of `version` of key `name`.
    fn cipher(&self, name: &str, version: u32) -> Result<Aes256Gcm> {
        let Some(key) = self.view.get(&version_key(name, version))? else {
            // Deleted since its settings were read: the key is gone, not damaged.
            if !self.exists(name)? {
                return Err(Error::not_found(&format!("keys/{name}")));
            }
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("keys/{name}: version {version} is missing from the store"),
            ));
        };
        if key.len() != KEY_LEN {
            return Err(Error::new(
                ErrorKind::Integrity,
                format!("keys/{name}: version {version} has a malformed key"),
            ));
        }
        Aes256Gcm::new_from_slice(key.expose()).map_err(|_| {
            Error::new(
                ErrorKind::Integrity,
                format!("keys/{name}: version {version} has a malformed key"),
            )
        })
        // `key` (SecretBytes) is zeroized here.
    }

    fn new_key_bytes() -> SecretBytes {
        let mut k = SecretBytes::new(vec![0u8; KEY_LEN]);
        rand::rngs::OsRng.fill_bytes(k.expose_mut());
        k
    }

    fn lock() -> std::sync::MutexGuard<'static, ()> {
        MUTATE.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn encode_meta(meta: &Meta) -> Result<Vec<u8>> {
        serde_json::to_vec(meta).map_err(|e| Error::io(format!("encoding key settings: {e}")))
    }

    fn create_key(&self, name: &str) -> Result<()> {
        validate_name(name)?;
        let _g = Self::lock();
        if self.exists(name)? || self.view.has_prefix(&key_prefix(name))? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("keys/{name}: exists"),
            ));
        }
        let meta = Meta {
            kind: KEY_TYPE.to_string(),
            latest_version: 1,
            min_decryption_version: 1,
            deletion_allowed: false,
            versions: BTreeMap::from([(1, self.services.leases.now_ms())]),
        };
        let m = Self::encode_meta(&meta)?;
        let key = Self::new_key_bytes();
        let (mk, vk) = (meta_key(name), version_key(name, 1));
        // Created only if no daemon sharing the store created it meanwhile.
        let created = self.view.apply_if(
            &mk,
            None,
            &[ViewOp::Put(&vk, key.expose()), ViewOp::Put(&mk, &m)],
        )?;
        self.cache.invalidate(name);
        if !created {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("keys/{name}: exists"),
            ));
        }
        tracing::info!(key = name, "transit key created");
        Ok(())
    }

    fn delete_key(&self, name: &str) -> Result<()> {
        let _g = Self::lock();
        let mut attempts = 0;
        loop {
            let (meta, stamp) = self.meta_versioned(name)?;
            if !meta.deletion_allowed {
                return Err(Error::not_permitted(format!(
                    "keys/{name}: deletion is not allowed; write deletion_allowed=true to keys/{name}/ctl first"
                )));
            }
            let paths = self.view.list(&key_prefix(name))?;
            let ops: Vec<ViewOp<'_>> = paths.iter().map(|p| ViewOp::Delete(p)).collect();
            // Only the settings just checked are deleted: a key another daemon changed
            // meanwhile (deletion no longer allowed, a new version) is checked again.
            let res = self.view.apply_if(&meta_key(name), Some(&stamp), &ops);
            // Wiped whatever happened: a failed batch leaves the record as it was (re-read).
            self.cache.invalidate(name);
            if res? {
                break;
            }
            attempts += 1;
            if attempts >= CAS_ATTEMPTS {
                return Err(changed_meanwhile(name));
            }
        }
        tracing::info!(key = name, "transit key deleted");
        Ok(())
    }

    fn info(&self, name: &str) -> Result<SecretBytes> {
        let meta = self.meta(name)?;
        let versions: serde_json::Map<String, serde_json::Value> = meta
            .versions
            .iter()
            .map(|(v, ms)| {
                (
                    v.to_string(),
                    serde_json::json!({ "created": rfc3339(*ms), "created_unix": ms / 1000 }),
                )
            })
            .collect();
        let v = serde_json::json!({
            "name": name,
            "type": meta.kind,
            "latest_version": meta.latest_version,
            "min_decryption_version": meta.min_decryption_version,
            "deletion_allowed": meta.deletion_allowed,
            "versions": versions,
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        Ok(SecretBytes::from(s))
    }
}

impl Backend for Transit {
    fn kind(&self) -> &'static str {
        "transit"
    }

    fn help(&self) -> String {
        self.router.help(HELP_INTRO, HELP_NOTES)
    }

    fn stat(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Node> {
        let (route, name) = self.route(path)?;
        let known = |name: &str| -> Result<()> {
            if self.exists(name)? {
                Ok(())
            } else {
                Err(Error::not_found(path))
            }
        };
        Ok(match route {
            Route::Root | Route::Keys | Route::OpDir(_) => Node::dir(),
            Route::Key => {
                known(name)?;
                Node::dir()
            }
            Route::Info => {
                known(name)?;
                Node::generated(0o400)
            }
            Route::Ctl => {
                known(name)?;
                // Buffered, applied whole at close (all commands or none, even when a shell
                // writes them line by line); each complete line is checked as it arrives.
                Node::write_only_document()
            }
            Route::OpFile(_) => {
                known(name)?;
                Node::exchange()
            }
        })
    }

    fn list(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Vec<DirEntry>> {
        let (route, name) = self.route(path)?;
        match route {
            Route::Root => Ok(self.router.literal_children("")),
            Route::Keys => Ok(self.names()?.into_iter().map(DirEntry::dir).collect()),
            Route::OpDir(_) => Ok(self.names()?.into_iter().map(DirEntry::file).collect()),
            Route::Key => {
                if !self.exists(name)? {
                    return Err(Error::not_found(path));
                }
                Ok(self.router.literal_children(path))
            }
            Route::Info | Route::Ctl | Route::OpFile(_) => Err(Error::new(
                ErrorKind::NotADirectory,
                format!("{path}: not a folder"),
            )),
        }
    }

    fn read(&self, _ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes> {
        let (route, name) = self.route(path)?;
        match route {
            Route::Info => self.info(name),
            Route::Ctl => Err(Error::denied(format!("{path} is write-only"))),
            Route::OpFile(_) => {
                self.meta(name)?;
                Err(Error::not_permitted(format!(
                    "{path}: open it read-write, write the input, then read the output from offset 0"
                )))
            }
            Route::Root | Route::Keys | Route::Key | Route::OpDir(_) => Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a folder"),
            )),
        }
    }

    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Writes> {
        let (route, name) = self.route(path).map_err(|_| {
            Error::not_permitted(format!(
                "{path}: files cannot be created here (mkdir keys/NAME makes a key)"
            ))
        })?;
        match route {
            Route::Ctl => self.meta(name).map(|_| Writes::Buffered),
            Route::OpFile(_) => {
                self.meta(name)?;
                Err(Error::not_permitted(format!(
                    "{path}: an exchange file: open it read-write (without O_CREAT of a new file)"
                )))
            }
            Route::Info => {
                self.meta(name)?;
                Err(Error::denied(format!("{path} is read-only")))
            }
            Route::Root | Route::Keys | Route::Key | Route::OpDir(_) => Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a folder"),
            )),
        }
    }

    fn write(&self, ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        let (route, name) = self.route(path)?;
        match route {
            Route::Ctl => self.control(name, &data),
            _ => self.create(ctx, path).map(|_| ()),
        }
    }

    fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        match self.route(path) {
            Ok((Route::Ctl, name)) => self.check_control(name, data),
            _ => Ok(()),
        }
    }

    fn delete(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        let (route, name) = self.route(path)?;
        match route {
            // `rm -r keys/NAME` unlinks these first: they are views of the key and go with it,
            // so unlinking them is allowed (and does nothing) exactly when deleting the key is.
            Route::Info | Route::Ctl => {
                let meta = self.meta(name)?;
                if meta.deletion_allowed {
                    Ok(())
                } else {
                    Err(Error::not_permitted(format!(
                        "keys/{name}: deletion is not allowed; write deletion_allowed=true to keys/{name}/ctl first"
                    )))
                }
            }
            Route::Key => Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a key folder: use rmdir or rm -r"),
            )),
            _ => Err(Error::not_permitted(format!("{path} cannot be deleted"))),
        }
    }

    fn mkdir(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        match self.route(path) {
            Ok((Route::Key, name)) => self.create_key(name),
            Ok((Route::Root | Route::Keys | Route::OpDir(_), _)) => Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path}: exists"),
            )),
            Ok((Route::Info | Route::Ctl | Route::OpFile(_), _)) => {
                Err(Error::not_permitted(format!("{path}: not a folder")))
            }
            Err(_) => {
                // keys/NAME with a bad name: say why rather than "no such entry".
                if let Some(name) = path.strip_prefix("keys/") {
                    if !name.contains('/') {
                        validate_name(name)?;
                    }
                }
                Err(Error::not_permitted(format!(
                    "{path}: only keys/NAME can be made here"
                )))
            }
        }
    }

    fn rmdir(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        match self.route(path)? {
            (Route::Key, name) => self.delete_key(name),
            _ => Err(Error::not_permitted(format!("{path} cannot be removed"))),
        }
    }

    fn exchange(&self, _ctx: &Ctx<'_>, path: &str, input: SecretBytes) -> Result<SecretBytes> {
        let (route, name) = self.route(path)?;
        let Route::OpFile(op) = route else {
            return Err(Error::not_permitted(format!(
                "{path} is not an exchange file"
            )));
        };
        let k = self.load(name)?;
        match op {
            Exchange::Encrypt => self.encrypt_with(name, &k, input.expose()),
            Exchange::Decrypt => self.decrypt_with(name, &k, input.expose()),
            Exchange::Rewrap => {
                let plain = self.decrypt_with(name, &k, input.expose())?;
                self.encrypt_with(name, &k, plain.expose())
            }
        }
    }
}

mod cache;
mod control;
mod crypto;
mod paths;
#[cfg(test)]
mod tests;
