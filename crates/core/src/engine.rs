//! The engine: one entry point per file operation, for any caller.
//!
//! Owns: resolving a full path (`secret/app/db`) to `sys/`, a mount's backend, or the root;
//! seal state and the live mount table; the rules common to every backend (reserved names,
//! cross-mount renames). Every request goes through `dispatch`, the one place where policy and
//! audit hook in. Must never: know about FUSE, inodes or errnos.

use crate::backend::{Ctx, DirEntry, Node};
use crate::backends::sys::Sys;
use crate::backends::Limits;
use crate::backends::Services;
use crate::barrier::{Barrier, KdfParams, UnsealError};
use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::{LeaseConfig, LeaseManager, SystemClock};
use crate::mounts::{self, MountEntry, MountTable, Mounted};
use crate::secret::SecretBytes;
use crate::storage::Storage;
use std::sync::{Arc, Mutex, RwLock};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A mount to create when the store has no mount table yet.
#[derive(Debug, Clone)]
pub struct MountSpec {
    pub path: String,
    pub kind: String,
    pub description: String,
}

#[derive(Debug, Clone)]
pub struct EngineConfig {
    pub limits: Limits,
    /// Used only on the first unseal of a store without a mount table.
    pub initial_mounts: Vec<MountSpec>,
    /// argon2id parameters for initialising an empty store.
    pub kdf: KdfParams,
    /// Revocation tuning.
    pub lease: LeaseConfig,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            limits: Limits::default(),
            initial_mounts: vec![MountSpec {
                path: "secret".into(),
                kind: "generic".into(),
                description: "generic secret storage".into(),
            }],
            kdf: KdfParams::default(),
            lease: LeaseConfig::default(),
        }
    }
}

/// One file operation, as the adapter asks it.
pub enum Op<'a> {
    Stat,
    List,
    Read,
    Create,
    Write(SecretBytes),
    Delete,
    Mkdir,
    Rmdir,
    Rename(&'a str),
    /// `touch` (times set to now): renews a lease file; nothing elsewhere.
    Touch,
}

/// What an operation answers.
pub enum Reply {
    Node(Node),
    Entries(Vec<DirEntry>),
    Data(SecretBytes),
    Done,
}

enum Target<'p> {
    Root,
    RootHelp,
    Sys(&'p str),
    MountHelp(Arc<Mounted>),
    Mount(Arc<Mounted>, &'p str),
}

type SharedTable = Arc<RwLock<Arc<MountTable>>>;

pub struct Engine {
    barrier: Arc<Barrier>,
    table: SharedTable,
    /// Serialises changes of the mount table and seal state.
    control: Mutex<()>,
    config: EngineConfig,
    leases: Arc<LeaseManager>,
    sys: Sys,
}

const ROOT_HELP_HEAD: &str = "\
nomadfs: secrets as files. Each folder here is a mounted backend; `cat MOUNT/.help` explains it.
`sys/` is the control plane (`cat sys/.help`).

";

impl Engine {
    pub fn new(storage: Arc<dyn Storage>, config: EngineConfig) -> Self {
        let barrier = Arc::new(Barrier::new(storage, config.kdf.clone()));
        let table: SharedTable = Arc::new(RwLock::new(Arc::new(MountTable::default())));
        let leases = Arc::new(LeaseManager::new(
            barrier.clone(),
            Arc::new(SystemClock),
            config.lease,
        ));
        // The lease manager finds the backend that issued a lease through the live table.
        let weak = Arc::downgrade(&table);
        leases.set_lookup(Box::new(move |mount| {
            let table = weak.upgrade()?;
            let t = table.read().unwrap_or_else(|p| p.into_inner()).clone();
            t.mounts.get(mount).map(|m| m.backend.clone())
        }));
        Self {
            barrier,
            table,
            control: Mutex::new(()),
            config,
            leases,
            sys: Sys::new(),
        }
    }

    /// Start background work (the lease expiry scheduler). Call once, after `new`.
    pub fn start(&self) {
        self.leases.start();
    }

    pub fn leases(&self) -> &Arc<LeaseManager> {
        &self.leases
    }

    fn services(&self) -> Services {
        Services {
            leases: self.leases.clone(),
            limits: self.config.limits,
        }
    }

    pub fn barrier(&self) -> &Arc<Barrier> {
        &self.barrier
    }

    pub fn limits(&self) -> Limits {
        self.config.limits
    }

    pub fn is_sealed(&self) -> bool {
        self.barrier.is_sealed()
    }

    fn lock_control(&self) -> std::sync::MutexGuard<'_, ()> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn table(&self) -> Arc<MountTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn set_table(&self, t: MountTable) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
    }

    /// Unseal (initialising an empty store) and load the mount table.
    pub fn unseal(&self, passphrase: &[u8]) -> Result<(), UnsealError> {
        let _g = self.lock_control();
        if !self.barrier.is_sealed() {
            return Ok(());
        }
        self.barrier.unseal(passphrase)?;
        let loaded = (|| -> Result<MountTable> {
            let entries = match mounts::load(&self.barrier)? {
                Some(entries) => entries,
                None => {
                    let mut entries = Vec::new();
                    for m in &self.config.initial_mounts {
                        entries.push(mounts::new_entry(&m.path, &m.kind, &m.description)?);
                    }
                    mounts::save(&self.barrier, &entries)?;
                    entries
                }
            };
            MountTable::build(&self.barrier, entries, &self.services())
        })();
        match loaded {
            Ok(t) => {
                self.set_table(t);
                if let Err(e) = self.leases.restore() {
                    self.set_table(MountTable::default());
                    self.barrier.seal();
                    return Err(e.into());
                }
                for m in self.table().mounts.values() {
                    if let Err(e) = m.backend.recover() {
                        tracing::error!(mount = %m.entry.path, "recovery of unfinished work failed: {}", e.message);
                    }
                }
                tracing::info!("unsealed");
                Ok(())
            }
            Err(e) => {
                self.barrier.seal();
                Err(e.into())
            }
        }
    }

    pub fn seal(&self) {
        let _g = self.lock_control();
        self.leases.clear();
        self.set_table(MountTable::default());
        self.barrier.seal();
        tracing::info!("sealed");
    }

    pub fn rotate(&self) -> Result<u32> {
        let _g = self.lock_control();
        self.barrier.rotate()
    }

    pub fn mount_entries(&self) -> Vec<MountEntry> {
        self.table().entries()
    }

    pub fn mount_entry(&self, name: &str) -> Result<MountEntry> {
        self.table()
            .mounts
            .get(name)
            .map(|m| m.entry.clone())
            .ok_or_else(|| Error::not_found(&format!("sys/mounts/{name}")))
    }

    /// Mount a backend of `kind` at `path`.
    pub fn mount(&self, path: &str, kind: &str, description: &str) -> Result<MountEntry> {
        let _g = self.lock_control();
        let entry = mounts::new_entry(path, kind, description)?;
        let table = self.table();
        if table.mounts.contains_key(&entry.path) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{}/ is already mounted", entry.path),
            ));
        }
        let mut entries = table.entries();
        entries.push(entry.clone());
        let new = MountTable::build(&self.barrier, entries.clone(), &self.services())?;
        mounts::save(&self.barrier, &entries)?;
        self.set_table(new);
        tracing::info!(path = %entry.path, kind = %entry.kind, "mounted");
        Ok(entry)
    }

    /// Unmount: revoke every lease of the mount, then drop it from the table, then delete its data.
    pub fn unmount(&self, path: &str) -> Result<()> {
        let _g = self.lock_control();
        let table = self.table();
        let name = path.trim_end_matches('/');
        let mounted = table
            .mounts
            .get(name)
            .ok_or_else(|| Error::not_found(&format!("{name}/")))?
            .clone();
        self.leases
            .revoke_prefix(&format!("{name}/"))
            .map_err(|e| Error::new(ErrorKind::Busy, format!("unmount {name}/: {}", e.message)))?;
        let entries: Vec<MountEntry> = table
            .entries()
            .into_iter()
            .filter(|e| e.path != name)
            .collect();
        let new = MountTable::build(&self.barrier, entries.clone(), &self.services())?;
        mounts::save(&self.barrier, &entries)?;
        self.set_table(new);
        if let Err(e) = mounts::view_for(&self.barrier, &mounted.entry.uuid).clear() {
            tracing::error!(path = name, "unmounted, but deleting its data failed: {e}");
        }
        tracing::info!(path = name, "unmounted");
        Ok(())
    }

    /// Move a mount to a new path: data kept, leases revoked.
    pub fn remount(&self, from: &str, to: &str) -> Result<()> {
        let _g = self.lock_control();
        let table = self.table();
        let from = from.trim_end_matches('/');
        let to = mounts::normalize_path(to)?;
        if !table.mounts.contains_key(from) {
            return Err(Error::not_found(&format!("{from}/")));
        }
        if table.mounts.contains_key(&to) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{to}/ is already mounted"),
            ));
        }
        self.leases
            .revoke_prefix(&format!("{from}/"))
            .map_err(|e| Error::new(ErrorKind::Busy, format!("remount {from}/: {}", e.message)))?;
        let entries: Vec<MountEntry> = table
            .entries()
            .into_iter()
            .map(|mut e| {
                if e.path == from {
                    e.path = to.clone();
                }
                e
            })
            .collect();
        let new = MountTable::build(&self.barrier, entries.clone(), &self.services())?;
        mounts::save(&self.barrier, &entries)?;
        self.set_table(new);
        tracing::info!(from, to = %to, "remounted");
        Ok(())
    }

    pub(crate) fn health_json(&self) -> String {
        let v = serde_json::json!({
            "sealed": self.is_sealed(),
            "initialized": self.barrier.is_initialized().unwrap_or(false),
            "version": VERSION,
            "storage": self.barrier.storage().kind(),
            "leases": self.leases.count(),
            "key_term": self.barrier.active_term().ok(),
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }

    pub(crate) fn mounts_table_text(&self) -> String {
        let mut rows = vec![(
            "Path".to_string(),
            "Type".to_string(),
            "Description".to_string(),
        )];
        for m in self.mount_entries() {
            rows.push((format!("{}/", m.path), m.kind, m.description));
        }
        rows.push((
            "sys/".into(),
            "system".into(),
            "system endpoints used for control, policy and debugging".into(),
        ));
        let w0 = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
        let w1 = rows.iter().map(|r| r.1.len()).max().unwrap_or(0);
        let mut out = String::new();
        for (a, b, c) in rows {
            out.push_str(format!("{a:<w0$}  {b:<w1$}  {c}").trim_end());
            out.push('\n');
        }
        out
    }

    fn root_help(&self) -> String {
        format!("{ROOT_HELP_HEAD}{}", self.mounts_table_text())
    }

    fn resolve<'p>(&self, path: &'p str) -> Result<Target<'p>> {
        if path.is_empty() {
            return Ok(Target::Root);
        }
        let (head, rest) = match path.find('/') {
            Some(n) => (&path[..n], &path[n + 1..]),
            None => (path, ""),
        };
        match head {
            ".help" if rest.is_empty() => Ok(Target::RootHelp),
            "sys" => Ok(Target::Sys(rest)),
            _ => {
                let m = self
                    .table()
                    .mounts
                    .get(head)
                    .cloned()
                    .ok_or_else(|| Error::not_found(path))?;
                if rest == ".help" {
                    Ok(Target::MountHelp(m))
                } else {
                    Ok(Target::Mount(m, rest))
                }
            }
        }
    }

    /// The single entry point for every file operation.
    pub fn dispatch(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        let target = self.resolve(path)?;
        match target {
            Target::Root => match op {
                Op::Stat => Ok(Reply::Node(Node::dir())),
                Op::List => {
                    let mut out = vec![DirEntry::file(".help"), DirEntry::dir("sys")];
                    out.extend(
                        self.mount_entries()
                            .into_iter()
                            .map(|m| DirEntry::dir(m.path)),
                    );
                    Ok(Reply::Entries(out))
                }
                _ => Err(Error::not_permitted(
                    "the root holds mounts; use sys/mounts to add one",
                )),
            },
            Target::RootHelp | Target::MountHelp(_) => {
                let text = match &target {
                    Target::MountHelp(m) => m.backend.help(),
                    _ => self.root_help(),
                };
                match op {
                    Op::Stat => Ok(Reply::Node(Node::generated(0o400))),
                    Op::Read => Ok(Reply::Data(SecretBytes::from(text))),
                    _ => Err(Error::not_permitted(format!("{path} is read-only"))),
                }
            }
            Target::Sys(rest) => match op {
                Op::Stat => self.sys.stat(self, rest).map(Reply::Node),
                Op::List => self.sys.list(self, rest).map(Reply::Entries),
                Op::Read => self.sys.read(self, rest).map(Reply::Data),
                // Files under sys/ are control files: each write acts at once.
                Op::Create => self
                    .sys
                    .create(self, rest)
                    .map(|_| Reply::Node(Node::write_only())),
                Op::Write(data) => self.sys.write(self, rest, data).map(|_| Reply::Done),
                Op::Delete => self.sys.delete(self, rest).map(|_| Reply::Done),
                Op::Rename(to) => match to.strip_prefix("sys/") {
                    Some(to) => self.sys.rename(self, rest, to).map(|_| Reply::Done),
                    None => Err(cross_mount(path, to)),
                },
                Op::Rmdir => self.sys.rmdir(self, rest).map(|_| Reply::Done),
                Op::Touch => self.sys.touch(self, rest).map(|_| Reply::Done),
                Op::Mkdir => Err(Error::not_permitted(format!(
                    "{path}: folders under sys/ are fixed"
                ))),
            },
            Target::Mount(m, rest) => {
                let ctx = Ctx {
                    caller,
                    mount: &m.entry.path,
                };
                let b = &m.backend;
                match op {
                    Op::Stat => b.stat(&ctx, rest).map(Reply::Node),
                    Op::List => {
                        let mut entries = b.list(&ctx, rest)?;
                        if rest.is_empty() {
                            entries.insert(0, DirEntry::file(".help"));
                        }
                        Ok(Reply::Entries(entries))
                    }
                    Op::Read => b.read(&ctx, rest).map(Reply::Data),
                    Op::Create => b.create(&ctx, rest).map(|_| Reply::Done),
                    Op::Write(data) => b.write(&ctx, rest, data).map(|_| Reply::Done),
                    Op::Delete => b.delete(&ctx, rest).map(|_| Reply::Done),
                    Op::Mkdir => b.mkdir(&ctx, rest).map(|_| Reply::Done),
                    Op::Rmdir => b.rmdir(&ctx, rest).map(|_| Reply::Done),
                    Op::Touch => Ok(Reply::Done),
                    Op::Rename(to) => {
                        let prefix = format!("{}/", m.entry.path);
                        match to.strip_prefix(&prefix) {
                            Some(to_rest) if !to_rest.is_empty() => {
                                b.rename(&ctx, rest, to_rest).map(|_| Reply::Done)
                            }
                            _ => Err(cross_mount(path, to)),
                        }
                    }
                }
            }
        }
    }

    pub fn stat(&self, caller: &Caller, path: &str) -> Result<Node> {
        match self.dispatch(caller, path, Op::Stat)? {
            Reply::Node(n) => Ok(n),
            _ => Err(Error::io("internal: stat answered without a node")),
        }
    }
    pub fn list(&self, caller: &Caller, path: &str) -> Result<Vec<DirEntry>> {
        match self.dispatch(caller, path, Op::List)? {
            Reply::Entries(e) => Ok(e),
            _ => Err(Error::io("internal: list answered without entries")),
        }
    }
    pub fn read(&self, caller: &Caller, path: &str) -> Result<SecretBytes> {
        match self.dispatch(caller, path, Op::Read)? {
            Reply::Data(d) => Ok(d),
            _ => Err(Error::io("internal: read answered without data")),
        }
    }
    /// Check that `path` may be (re)written, before any byte is buffered: called when a file is
    /// created and when one is opened for writing. Answers the node the file will be.
    pub fn create(&self, caller: &Caller, path: &str) -> Result<Node> {
        match self.dispatch(caller, path, Op::Create)? {
            Reply::Node(n) => Ok(n),
            _ => Ok(Node::file(0)),
        }
    }
    pub fn write(&self, caller: &Caller, path: &str, data: SecretBytes) -> Result<()> {
        self.dispatch(caller, path, Op::Write(data)).map(|_| ())
    }
    pub fn delete(&self, caller: &Caller, path: &str) -> Result<()> {
        self.dispatch(caller, path, Op::Delete).map(|_| ())
    }
    pub fn mkdir(&self, caller: &Caller, path: &str) -> Result<()> {
        self.dispatch(caller, path, Op::Mkdir).map(|_| ())
    }
    pub fn rmdir(&self, caller: &Caller, path: &str) -> Result<()> {
        self.dispatch(caller, path, Op::Rmdir).map(|_| ())
    }
    pub fn touch(&self, caller: &Caller, path: &str) -> Result<()> {
        self.dispatch(caller, path, Op::Touch).map(|_| ())
    }
    pub fn rename(&self, caller: &Caller, from: &str, to: &str) -> Result<()> {
        self.dispatch(caller, from, Op::Rename(to)).map(|_| ())
    }
}

fn cross_mount(from: &str, to: &str) -> Error {
    Error::new(
        ErrorKind::CrossMount,
        format!("cannot rename {from} to {to}: different mounts"),
    )
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
