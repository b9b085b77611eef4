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
//! Must never: return or log key material (info shows versions and settings only), put a
//! plaintext or key into an error message, or change a key except under the mutation lock in one
//! atomic batch (a rotation lost to a race would make its ciphertexts undecryptable).

use super::{partial, validate_name, Services};
use crate::backend::{Backend, Ctx, DirEntry, Node};
use crate::barrier::view::ViewOp;
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::rfc3339;
use crate::route::Router;
use crate::secret::SecretBytes;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Mutex;

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

const HELP: &str = "\
transit backend: encryption as a service. Keys never leave the daemon.

  keys/                 ls: the key names
  mkdir keys/NAME       create key NAME (version 1, AES-256-GCM)
  keys/NAME/info        JSON: name, type, versions (creation times), latest_version,
                        min_decryption_version, deletion_allowed. Never key material.
  keys/NAME/ctl         write-only commands, one per line:
                          rotate                     add a new version (new encryptions use it)
                          min_decryption_version=N   refuse ciphertexts older than version N
                          deletion_allowed=true|false
                        applied at close, all or none; a bad line fails the write that
                        carries it with EINVAL (reason in sys/self/errors and the daemon log)
  rmdir keys/NAME       delete the key (also rm -r); EPERM until deletion_allowed=true.
                        Everything encrypted with it becomes undecryptable.

  encrypt/NAME          open read-write, write the plaintext (raw bytes), read the ciphertext
                        `nomadfs:vN:BASE64` from offset 0 in the same open
  decrypt/NAME          the same with a ciphertext in, the plaintext out
  rewrap/NAME           the same with a ciphertext in, a ciphertext under the newest version out
                        Each read at offset 0 after writes runs the operation once; a new write
                        at offset 0 starts a new input. CLI: nomadfs encrypt|decrypt|rewrap NAME.

Errors: unknown key ENOENT; malformed or tampered ciphertext EINVAL; a ciphertext version below
min_decryption_version EPERM; plaintext over the size limit EFBIG. Capability: `update` on the
exchange path (e.g. transit/encrypt/NAME).
";

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
}

/// One line of a `ctl` write.
enum Command {
    Rotate,
    MinDecryption(u32),
    DeletionAllowed(bool),
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

/// AAD of a ciphertext: binds it to the key name and version, so a ciphertext cannot be moved
/// to another key or relabelled with another version.
fn aad(name: &str, version: u32) -> Vec<u8> {
    format!("nomadfs-transit\0{name}\0{version}").into_bytes()
}

/// A parsed `nomadfs:vN:BASE64` ciphertext.
struct Ciphertext {
    version: u32,
    /// nonce || ciphertext || tag
    raw: Vec<u8>,
}

/// Parse a ciphertext (surrounding whitespace ignored). Errors say what is wrong, never echo it.
fn parse_ciphertext(input: &[u8]) -> Result<Ciphertext> {
    let text = std::str::from_utf8(input)
        .map_err(|_| Error::invalid("ciphertext is not text (expected nomadfs:vN:BASE64)"))?
        .trim();
    if text.is_empty() {
        return Err(Error::invalid(
            "no ciphertext was written (expected nomadfs:vN:BASE64)",
        ));
    }
    let rest = text
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::invalid("not a nomadfs ciphertext (expected nomadfs:vN:BASE64)"))?;
    let (ver, b64) = rest
        .split_once(':')
        .ok_or_else(|| Error::invalid("ciphertext lacks the ':' after its version"))?;
    if ver.is_empty() || ver.len() > 10 || !ver.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid("ciphertext version is not a number"));
    }
    let version: u32 = ver
        .parse()
        .map_err(|_| Error::invalid("ciphertext version is out of range"))?;
    if version == 0 {
        return Err(Error::invalid("ciphertext version 0 does not exist"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| Error::invalid("ciphertext is not valid base64"))?;
    if raw.len() < NONCE + TAG {
        return Err(Error::invalid("ciphertext is truncated"));
    }
    Ok(Ciphertext { version, raw })
}

/// The largest ciphertext text a plaintext of `limit` bytes can produce, plus slack.
fn max_ciphertext_len(limit: usize) -> usize {
    let raw = limit.saturating_add(NONCE + TAG);
    raw.div_ceil(3)
        .saturating_mul(4)
        .saturating_add(PREFIX.len() + 16)
}

impl Transit {
    pub fn new(view: View, services: &Services) -> Self {
        Self {
            view,
            services: services.clone(),
            router: Router::new(&[
                ("", Route::Root),
                ("keys", Route::Keys),
                ("keys/{name}", Route::Key),
                ("keys/{name}/info", Route::Info),
                ("keys/{name}/ctl", Route::Ctl),
                ("encrypt", Route::OpDir(Exchange::Encrypt)),
                ("encrypt/{name}", Route::OpFile(Exchange::Encrypt)),
                ("decrypt", Route::OpDir(Exchange::Decrypt)),
                ("decrypt/{name}", Route::OpFile(Exchange::Decrypt)),
                ("rewrap", Route::OpDir(Exchange::Rewrap)),
                ("rewrap/{name}", Route::OpFile(Exchange::Rewrap)),
            ]),
        }
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
        let meta: Meta = serde_json::from_slice(raw.expose()).map_err(|e| {
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
        self.view
            .apply(&[ViewOp::Put(&vk, key.expose()), ViewOp::Put(&mk, &m)])?;
        tracing::info!(key = name, "transit key created");
        Ok(())
    }

    fn delete_key(&self, name: &str) -> Result<()> {
        let _g = Self::lock();
        let meta = self.meta(name)?;
        if !meta.deletion_allowed {
            return Err(Error::not_permitted(format!(
                "keys/{name}: deletion is not allowed; write deletion_allowed=true to keys/{name}/ctl first"
            )));
        }
        let paths = self.view.list(&key_prefix(name))?;
        let ops: Vec<ViewOp<'_>> = paths.iter().map(|p| ViewOp::Delete(p)).collect();
        self.view.apply(&ops)?;
        tracing::info!(key = name, "transit key deleted");
        Ok(())
    }

    /// One `ctl` command line (trimmed, not blank, not a comment).
    fn command(name: &str, line: &str) -> Result<Command> {
        let (cmd, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        match (cmd, value) {
            ("rotate", None) => Ok(Command::Rotate),
            ("min_decryption_version", Some(v)) => {
                v.parse().map(Command::MinDecryption).map_err(|_| {
                    Error::invalid(format!(
                        "keys/{name}/ctl: min_decryption_version must be a whole number, got {v:?}"
                    ))
                })
            }
            ("deletion_allowed", Some("true")) => Ok(Command::DeletionAllowed(true)),
            ("deletion_allowed", Some("false")) => Ok(Command::DeletionAllowed(false)),
            ("deletion_allowed", Some(v)) => Err(Error::invalid(format!(
                "keys/{name}/ctl: deletion_allowed must be true or false, got {v:?}"
            ))),
            _ => {
                let shown: String = cmd.chars().take(40).collect();
                Err(Error::invalid(format!(
                    "keys/{name}/ctl: unknown command {shown:?} (rotate, min_decryption_version=N, deletion_allowed=true|false)"
                )))
            }
        }
    }

    fn min_version_range(name: &str, n: u32, latest: u32) -> Result<()> {
        if n == 0 || n > latest {
            return Err(Error::invalid(format!(
                "keys/{name}/ctl: min_decryption_version must be between 1 and the latest version {latest}, got {n}"
            )));
        }
        Ok(())
    }

    /// Check the commands of a buffered `ctl` write as they arrive: each complete line is
    /// final (see `Backend::check_partial`).
    fn check_control(&self, name: &str, data: &[u8]) -> Result<()> {
        if !partial::worth_checking(data) {
            return Ok(());
        }
        let what = format!("keys/{name}/ctl");
        let text = partial::text_so_far(data, &what)
            .map_err(|_| Error::invalid(format!("{what}: commands must be text")))?;
        let mut latest = self.meta(name)?.latest_version;
        for line in partial::complete_lines(text).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match Self::command(name, line)? {
                Command::Rotate => latest = latest.saturating_add(1),
                Command::MinDecryption(n) => Self::min_version_range(name, n, latest)?,
                Command::DeletionAllowed(_) => {}
            }
        }
        Ok(())
    }

    /// Apply the commands of one `ctl` write (one per line), all or nothing.
    fn control(&self, name: &str, data: &SecretBytes) -> Result<()> {
        let text = std::str::from_utf8(data.expose())
            .map_err(|_| Error::invalid(format!("keys/{name}/ctl: commands must be text")))?;
        let _g = Self::lock();
        let mut meta = self.meta(name)?;
        let mut new_keys: Vec<(u32, SecretBytes)> = Vec::new();
        let mut any = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            any = true;
            match Self::command(name, line)? {
                Command::Rotate => {
                    let next = meta.latest_version.checked_add(1).ok_or_else(|| {
                        Error::invalid(format!("keys/{name}: no more versions available"))
                    })?;
                    meta.latest_version = next;
                    meta.versions.insert(next, self.services.leases.now_ms());
                    new_keys.push((next, Self::new_key_bytes()));
                }
                Command::MinDecryption(n) => {
                    Self::min_version_range(name, n, meta.latest_version)?;
                    meta.min_decryption_version = n;
                }
                Command::DeletionAllowed(b) => meta.deletion_allowed = b,
            }
        }
        if !any {
            return Err(Error::invalid(format!(
                "keys/{name}/ctl: no command (rotate, min_decryption_version=N, deletion_allowed=true|false)"
            )));
        }
        let m = Self::encode_meta(&meta)?;
        let paths: Vec<String> = new_keys
            .iter()
            .map(|(v, _)| version_key(name, *v))
            .collect();
        let mk = meta_key(name);
        let mut ops: Vec<ViewOp<'_>> = new_keys
            .iter()
            .zip(&paths)
            .map(|((_, k), p)| ViewOp::Put(p, k.expose()))
            .collect();
        ops.push(ViewOp::Put(&mk, &m));
        self.view.apply(&ops)?;
        tracing::info!(
            key = name,
            latest_version = meta.latest_version,
            min_decryption_version = meta.min_decryption_version,
            deletion_allowed = meta.deletion_allowed,
            "transit key settings changed"
        );
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

    fn encrypt_with(&self, name: &str, meta: &Meta, plaintext: &[u8]) -> Result<SecretBytes> {
        let limit = self.services.limits.max_value_size;
        if plaintext.len() > limit {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "plaintext of {} bytes exceeds the limit of {limit} bytes",
                    plaintext.len()
                ),
            ));
        }
        let version = meta.latest_version;
        let cipher = self.cipher(name, version)?;
        let mut nonce = [0u8; NONCE];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ad = aad(name, version);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| Error::io("encryption failed"))?;
        let mut raw = Vec::with_capacity(NONCE + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        Ok(SecretBytes::from(format!("{PREFIX}{version}:{b64}")))
    }

    fn decrypt_with(&self, name: &str, meta: &Meta, input: &[u8]) -> Result<SecretBytes> {
        if input.len() > max_ciphertext_len(self.services.limits.max_value_size) {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("ciphertext of {} bytes is over the limit", input.len()),
            ));
        }
        let c = parse_ciphertext(input)?;
        if c.version > meta.latest_version {
            return Err(Error::invalid(format!(
                "keys/{name} has no version {} (latest is {})",
                c.version, meta.latest_version
            )));
        }
        if c.version < meta.min_decryption_version {
            return Err(Error::not_permitted(format!(
                "ciphertext version {} is below keys/{name}'s min_decryption_version {}",
                c.version, meta.min_decryption_version
            )));
        }
        let cipher = self.cipher(name, c.version)?;
        let ad = aad(name, c.version);
        let (nonce, body) = c.raw.split_at(NONCE);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &ad })
            .map(SecretBytes::new)
            .map_err(|_| {
                Error::invalid(format!(
                    "ciphertext failed authentication with keys/{name} version {} (tampered, or made with another key)",
                    c.version
                ))
            })
    }
}

impl Backend for Transit {
    fn kind(&self) -> &'static str {
        "transit"
    }

    fn help(&self) -> String {
        HELP.to_string()
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
                Node {
                    dynamic: false,
                    ..Node::write_only()
                }
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
            Route::Root => Ok(["keys", "encrypt", "decrypt", "rewrap"]
                .into_iter()
                .map(DirEntry::dir)
                .collect()),
            Route::Keys => Ok(self.names()?.into_iter().map(DirEntry::dir).collect()),
            Route::OpDir(_) => Ok(self.names()?.into_iter().map(DirEntry::file).collect()),
            Route::Key => {
                if !self.exists(name)? {
                    return Err(Error::not_found(path));
                }
                Ok(vec![DirEntry::file("info"), DirEntry::file("ctl")])
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

    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        let (route, name) = self.route(path).map_err(|_| {
            Error::not_permitted(format!(
                "{path}: files cannot be created here (mkdir keys/NAME makes a key)"
            ))
        })?;
        match route {
            Route::Ctl => self.meta(name).map(|_| ()),
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
            _ => self.create(ctx, path),
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
        let meta = self.meta(name)?;
        match op {
            Exchange::Encrypt => self.encrypt_with(name, &meta, input.expose()),
            Exchange::Decrypt => self.decrypt_with(name, &meta, input.expose()),
            Exchange::Rewrap => {
                let plain = self.decrypt_with(name, &meta, input.expose())?;
                self.encrypt_with(name, &meta, plain.expose())
            }
        }
    }
}

#[cfg(test)]
mod tests;
