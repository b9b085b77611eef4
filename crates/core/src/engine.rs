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
use crate::gate::{self, AuditMode};
use crate::lease::{LeaseConfig, LeaseManager, SystemClock};
use crate::limits::{RateBuckets, UidLimits};
use crate::mounts::{self, MountEntry, MountTable, Mounted};
use crate::policy::{EtcFiles, Policies, PolicyDoc};
use crate::reasons::Reasons;
use crate::refusals::{Decision, Refusals};
use crate::secret::SecretBytes;
use crate::storage::Storage;
use std::sync::{Arc, Mutex, RwLock};

pub const VERSION: &str = env!("CARGO_PKG_VERSION");
const POLICY_PREFIX: &str = "core/policies/";

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
    /// Per-uid bounds (`[limits]`).
    pub uid_limits: UidLimits,
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
            uid_limits: UidLimits::default(),
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
    /// The input of an exchange node (`Node::exchange`); answers `Reply::Data`. Needs `update`
    /// on the path; audited with the input and output as HMACs.
    Exchange(SecretBytes),
    /// `chmod`: accepted and ignored (access is decided by policy), but audited; answers
    /// `Reply::Done` for whoever may see the node.
    Chmod,
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
    /// Policies from the config; live ones from `sys/policies/` are added at unseal.
    config_policies: Mutex<(Vec<PolicyDoc>, Vec<u32>)>,
    policies: RwLock<Policies>,
    audit: Arc<RwLock<AuditMode>>,
    /// Repeated refusals, counted per interval instead of each written (`refusals.rs`).
    refusals: Arc<Refusals>,
    /// Per-uid request rate (`[limits] requests_per_sec_per_uid`).
    rates: RateBuckets,
    /// Each uid's recent refusals with their reasons (`sys/self/errors`).
    reasons: Reasons,
    /// When the mount table was last re-read from a shared store.
    table_read_at: Mutex<Option<std::time::Instant>>,
}

/// The most entries a folder rename checks (and so moves).
const MAX_MOVED: usize = 100_000;

/// How old the mount table may get before a daemon on a shared store re-reads it.
const TABLE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

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
            config_policies: Mutex::new((Vec::new(), vec![0])),
            // Until the daemon says otherwise, root is the admin.
            policies: RwLock::new(
                Policies::new(Vec::new(), vec![0], &EtcFiles::parse("", ""))
                    .unwrap_or_else(|_| unreachable!("an empty policy set is valid")),
            ),
            audit: Arc::new(RwLock::new(AuditMode::Off)),
            refusals: Arc::new(Refusals::default()),
            rates: RateBuckets::default(),
            reasons: Reasons::default(),
            table_read_at: Mutex::new(None),
        }
    }

    /// Set the policies from the config and the admin uids (the daemon passes its own uid
    /// when the config names none). Live policies from `sys/policies/` join them at unseal.
    pub fn set_policies(&self, docs: Vec<PolicyDoc>, admins: Vec<u32>) -> Result<()> {
        let resolver = EtcFiles::system().unwrap_or_else(|_| EtcFiles::parse("", ""));
        let compiled = Policies::new(docs.clone(), admins.clone(), &resolver)?;
        *self
            .config_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (docs, admins);
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = compiled;
        if !self.is_sealed() {
            self.reload_policies()?;
        }
        Ok(())
    }

    /// True when every uid in `uids` is an admin (one unfiltered view for all of them).
    pub fn all_admins(&self, uids: &[u32]) -> bool {
        let p = self.policies.read().unwrap_or_else(|p| p.into_inner());
        uids.iter().all(|&uid| p.is_admin_uid(uid))
    }

    pub fn policies(&self) -> Policies {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuild the policy set: config policies plus the live ones stored under
    /// `core/policies/` (a live policy of the same name replaces the config's).
    pub(crate) fn reload_policies(&self) -> Result<()> {
        let (docs, admins) = self
            .config_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let resolver = EtcFiles::system().unwrap_or_else(|_| EtcFiles::parse("", ""));
        let mut set = Policies::new(docs, admins, &resolver)?;
        for key in self.barrier.list(POLICY_PREFIX)? {
            let name = &key[POLICY_PREFIX.len()..];
            let Some(raw) = self.barrier.get(&key)? else {
                continue;
            };
            let text = String::from_utf8_lossy(raw.expose()).to_string();
            match PolicyDoc::parse(name, &text).and_then(|d| set.with_upserted(d, &resolver)) {
                Ok(s) => set = s,
                Err(e) => tracing::error!(policy = name, "stored policy skipped: {}", e.message),
            }
        }
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = set;
        Ok(())
    }

    /// Store and apply a live policy (`sys/policies/NAME`); a bad one is refused, the old stays.
    pub(crate) fn put_policy(&self, name: &str, text: &str) -> Result<()> {
        let resolver = EtcFiles::system().unwrap_or_else(|_| EtcFiles::parse("", ""));
        let doc = PolicyDoc::parse(name, text)?;
        let set = self.policies().with_upserted(doc, &resolver)?;
        self.barrier
            .put(&format!("{POLICY_PREFIX}{name}"), text.as_bytes())?;
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = set;
        tracing::info!(policy = name, "policy written");
        Ok(())
    }

    pub(crate) fn policy_text(&self, name: &str) -> Result<String> {
        if let Some(raw) = self.barrier.get(&format!("{POLICY_PREFIX}{name}"))? {
            return Ok(String::from_utf8_lossy(raw.expose()).to_string());
        }
        let doc = self
            .policies()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(&format!("sys/policies/{name}")))?;
        toml::to_string(&doc).map_err(|e| Error::io(e.to_string()))
    }

    pub(crate) fn delete_policy(&self, name: &str) -> Result<()> {
        let key = format!("{POLICY_PREFIX}{name}");
        if self.barrier.size(&key)?.is_none() {
            return Err(if self.policies().get(name).is_some() {
                Error::not_permitted(format!(
                    "policy {name} comes from mounts.toml; edit it there"
                ))
            } else {
                Error::not_found(&format!("sys/policies/{name}"))
            });
        }
        self.barrier.delete(&key)?;
        self.reload_policies()
    }

    pub fn set_audit(&self, mode: AuditMode) {
        *self.audit.write().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    fn audit_mode(&self) -> AuditMode {
        self.audit.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// `sys/self/errors`: the caller's own recent refusals, oldest first.
    pub(crate) fn own_refusals(&self, uid: u32) -> String {
        self.reasons.text_for(uid)
    }

    /// `sys/audit-hash`: the HMAC the audit log would show for `value`.
    pub(crate) fn audit_hash(&self, value: &[u8]) -> Result<String> {
        self.barrier.audit_hmac(value)
    }

    /// Start background work (the lease expiry scheduler, the writer of aggregated refusals).
    /// Call once, after `new`.
    pub fn start(&self) {
        self.leases.start();
        let (refusals, audit) = (Arc::downgrade(&self.refusals), Arc::downgrade(&self.audit));
        let spawned = std::thread::Builder::new()
            .name("audit-aggregates".into())
            .spawn(move || loop {
                std::thread::sleep(std::time::Duration::from_secs(1));
                let (Some(r), Some(a)) = (refusals.upgrade(), audit.upgrade()) else {
                    return;
                };
                let due = r.due(std::time::Instant::now());
                if !due.is_empty() {
                    let mode = a.read().unwrap_or_else(|p| p.into_inner()).clone();
                    gate::write_aggregates(&mode, due);
                }
            });
        if let Err(e) = spawned {
            tracing::error!("aggregated refusals will be written only with later refusals: {e}");
        }
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

    /// The per-uid bounds (`[limits]`).
    pub fn uid_limits(&self) -> UidLimits {
        self.config.uid_limits
    }

    /// Whether the per-uid bounds apply to `caller` (admins are exempt unless configured).
    pub fn bounded(&self, caller: &Caller) -> bool {
        self.config.uid_limits.apply_to_admins
            || !self
                .policies
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .is_admin(caller)
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
                if let Err(e) = self.reload_policies() {
                    tracing::error!("live policies not loaded: {}", e.message);
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

    /// The mount table (re-read first when other daemons share the store).
    pub fn mount_entries(&self) -> Vec<MountEntry> {
        if self.barrier.storage().shared() {
            self.refresh_table();
        }
        self.table().entries()
    }

    pub fn mount_entry(&self, name: &str) -> Result<MountEntry> {
        self.mounted(name)
            .map(|m| m.entry.clone())
            .ok_or_else(|| Error::not_found(&format!("sys/mounts/{name}")))
    }

    /// The live mount at `name`. When other daemons share the store, the stored table is
    /// re-read on a miss (another daemon may have mounted it) and when the copy here is older
    /// than `TABLE_MAX_AGE` (another daemon may have unmounted or moved it).
    fn mounted(&self, name: &str) -> Option<Arc<Mounted>> {
        if !self.barrier.storage().shared() {
            return self.table().mounts.get(name).cloned();
        }
        let stale = self
            .table_read_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| t.elapsed() >= TABLE_MAX_AGE);
        if !stale {
            if let Some(m) = self.table().mounts.get(name) {
                return Some(m.clone());
            }
        }
        self.refresh_table();
        self.table().mounts.get(name).cloned()
    }

    /// The live table after re-reading the stored one (the caller holds the control lock),
    /// with the stored version to save a change against. Another daemon sharing the store may
    /// have changed it.
    fn fresh_table(&self) -> Result<(Arc<MountTable>, Option<crate::barrier::Version>)> {
        let (stored, version) = mounts::load_versioned(&self.barrier)?;
        let table = self.table();
        match stored {
            Some(entries) if entries != table.entries() => {
                let t = MountTable::rebuild(&table, &self.barrier, entries, &self.services())?;
                self.set_table(t);
                Ok((self.table(), version))
            }
            _ => Ok((table, version)),
        }
    }

    /// Re-read the mount table if another daemon may have changed it: always on a miss, and
    /// for listings when the store is shared. Skipped while this daemon changes the table
    /// itself (the change re-reads it anyway) or is sealed.
    fn refresh_table(&self) {
        let Ok(_g) = self.control.try_lock() else {
            return;
        };
        if self.barrier.is_sealed() {
            return;
        }
        match self.fresh_table() {
            Ok(_) => {
                *self.table_read_at.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some(std::time::Instant::now());
            }
            Err(e) => tracing::warn!("re-reading the mount table failed: {}", e.message),
        }
    }

    /// Mount a backend of `kind` at `path`.
    pub fn mount(&self, path: &str, kind: &str, description: &str) -> Result<MountEntry> {
        let _g = self.lock_control();
        let entry = mounts::new_entry(path, kind, description)?;
        let (table, version) = self.fresh_table()?;
        if table.mounts.contains_key(&entry.path) {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{}/ is already mounted", entry.path),
            ));
        }
        let mut entries = table.entries();
        entries.push(entry.clone());
        let new = MountTable::rebuild(&table, &self.barrier, entries.clone(), &self.services())?;
        mounts::save_if(&self.barrier, version.as_ref(), &entries)?;
        self.set_table(new);
        tracing::info!(path = %entry.path, kind = %entry.kind, "mounted");
        Ok(entry)
    }

    /// Unmount: revoke every lease of the mount, then drop it from the table, then delete its data.
    pub fn unmount(&self, path: &str) -> Result<()> {
        let _g = self.lock_control();
        let (table, _) = self.fresh_table()?;
        let name = path.trim_end_matches('/');
        let mounted = table
            .mounts
            .get(name)
            .ok_or_else(|| Error::not_found(&format!("{name}/")))?
            .clone();
        self.leases
            .revoke_prefix(&format!("{name}/"))
            .map_err(|e| Error::new(ErrorKind::Busy, format!("unmount {name}/: {}", e.message)))?;
        // Re-read: revocation can take long, and the table must be saved against its latest.
        let (table, version) = self.fresh_table()?;
        if table.mounts.get(name).map(|m| &m.entry) != Some(&mounted.entry) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("unmount {name}/: another daemon changed this mount meanwhile"),
            ));
        }
        let entries: Vec<MountEntry> = table
            .entries()
            .into_iter()
            .filter(|e| e.path != name)
            .collect();
        let new = MountTable::rebuild(&table, &self.barrier, entries.clone(), &self.services())?;
        mounts::save_if(&self.barrier, version.as_ref(), &entries)?;
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
        let (table, _) = self.fresh_table()?;
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
        let (table, version) = self.fresh_table()?;
        if !table.mounts.contains_key(from) || table.mounts.contains_key(&to) {
            return Err(Error::new(
                ErrorKind::Busy,
                format!("remount {from}/: another daemon changed the mount table meanwhile"),
            ));
        }
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
        mounts::save_if(&self.barrier, version.as_ref(), &entries)?;
        self.set_table(new);
        tracing::info!(from, to = %to, "remounted");
        Ok(())
    }

    /// `sys/health`. The lease count is the daemon's for a caller with `sudo` on
    /// `sys/leases/`, else the caller's own.
    pub(crate) fn health_json(&self, caller: &Caller) -> String {
        let leases =
            if self
                .policies()
                .allowed(caller, "sys/leases/", crate::policy::Capability::Sudo)
            {
                self.leases.count()
            } else {
                self.leases.count_uid(caller.uid)
            };
        let v = serde_json::json!({
            "sealed": self.is_sealed(),
            "initialized": self.barrier.is_initialized().unwrap_or(false),
            "version": VERSION,
            "storage": self.barrier.storage().kind(),
            "leases": leases,
            "key_term": self.barrier.active_term().ok(),
        });
        let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
        s.push('\n');
        s
    }

    /// The mount table as `Path Type Description` columns (`sys/mounts.table`).
    pub(crate) fn mounts_table_text(&self) -> String {
        self.table_text(&|_| true)
    }

    /// The table rows of the mounts `visible` keeps, then `sys/`.
    fn table_text(&self, visible: &dyn Fn(&str) -> bool) -> String {
        let mut rows = vec![(
            "Path".to_string(),
            "Type".to_string(),
            "Description".to_string(),
        )];
        for m in self
            .mount_entries()
            .into_iter()
            .filter(|m| visible(&m.path))
        {
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

    /// `.help` at the root: the mounts this caller may see, filtered as the root listing is.
    fn root_help(&self, caller: &Caller) -> String {
        let policies = self.policies();
        let visible = |m: &str| policies.may_see(caller, m, true);
        format!("{ROOT_HELP_HEAD}{}", self.table_text(&visible))
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
                let m = self.mounted(head).ok_or_else(|| Error::not_found(path))?;
                if rest == ".help" {
                    Ok(Target::MountHelp(m))
                } else {
                    Ok(Target::Mount(m, rest))
                }
            }
        }
    }

    /// The single entry point for every file operation: rate bound, policy check, the intent
    /// line of a change, the operation, the caller's view of the answer (mode bits, filtered
    /// listings), the outcome line.
    pub fn dispatch(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        self.dispatch_as(caller, path, op, false)
    }

    /// `dispatch` for a path the adapter holds open-created (a file not stored until its
    /// creator closes it): a stored value that is missing counts as there, for a caller who may
    /// create the path (to others the file does not exist yet). Used for `rm`, `mv` and `chmod`
    /// of such a file, so that they are authorised and audited with their real outcome.
    pub fn dispatch_held_open(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        self.dispatch_as(caller, path, op, true)
    }

    /// The policy decision alone for `op` on `path` (nothing runs, nothing is recorded): for
    /// the adapter's own checks that must not tell a caller more than the policy lets it
    /// know. A refusal the adapter then answers itself goes through `record_refusal`.
    pub fn check(&self, caller: &Caller, path: &str, op: &Op<'_>) -> Result<()> {
        let policies = self.policies();
        let (_, need, _) = self.need(path, op);
        self.authorize(&policies, caller, path, op, &need)
    }

    /// Audit a refusal the adapter decided on its own (a per-uid bound, an oversized write, a
    /// mount spec that can no longer become valid, ENOTEMPTY for a folder that holds a file
    /// still being created), like the engine's own refusals (aggregated when repeated). A
    /// failing audit log changes nothing here: the request is refused anyway.
    pub fn record_refusal(&self, caller: &Caller, op: &'static str, path: &str, err: &Error) {
        self.reasons
            .record(caller.uid, op, path, err.kind.errno_name(), &err.message);
        let mode = self.audit_mode();
        if let Decision::Write(closed) = self.refusals.decide(
            caller,
            op,
            path,
            err.kind.errno_name(),
            &err.message,
            std::time::Instant::now(),
        ) {
            gate::write_aggregates(&mode, closed);
            let rec = gate::Record {
                caller,
                op,
                path,
                result: Err(err),
                lease_id: None,
                values: Vec::new(),
                secret_bearing: false,
                intent: false,
                durable: true,
                count: None,
            };
            let _ = gate::audit(&mode, rec);
        }
    }

    fn dispatch_as(
        &self,
        caller: &Caller,
        path: &str,
        op: Op<'_>,
        held_open: bool,
    ) -> Result<Reply> {
        let policies = self.policies();
        let admin = policies.is_admin(caller);
        let (op_name, need, secret_bearing) = self.need(path, &op);
        let audit_mode = self.audit_mode();
        // HMACs only when a log will carry them (not on the hot path with audit off).
        let hashing = matches!(audit_mode, AuditMode::Log(_));
        let mut values: Vec<(&'static str, String)> = Vec::new();
        if let (true, Op::Write(data) | Op::Exchange(data)) = (hashing, &op) {
            if let Ok(h) = self.barrier.audit_hmac(data.expose()) {
                values.push(("request", h));
            }
        }
        // A credential read makes something upstream: a change like any write.
        let mints = matches!(op, Op::Read) && self.issued_here(caller, path);
        let changes = mints
            || matches!(
                op,
                Op::Write(_) | Op::Delete | Op::Mkdir | Op::Rmdir | Op::Rename(_) | Op::Touch
            );
        let is_stat = matches!(op, Op::Stat);
        let is_chmod = matches!(op, Op::Chmod);
        // Nothing changes and nothing leaves: the line need not be waited for.
        let check_only = matches!(op, Op::Create | Op::Chmod);
        let decided = self
            .admit(caller, admin)
            .and_then(|()| self.authorize(&policies, caller, path, &op, &need));
        if decided.is_ok() && changes {
            // Audited before it commits, or it does not happen.
            gate::audit(
                &audit_mode,
                gate::Record {
                    caller,
                    op: op_name,
                    path,
                    result: Ok(()),
                    lease_id: None,
                    values: values.clone(),
                    secret_bearing,
                    intent: true,
                    durable: true,
                    count: None,
                },
            )?;
        }
        let mut result = match decided {
            Ok(()) => match self.dispatch_inner(caller, path, op) {
                Err(e)
                    if held_open
                        && e.kind == ErrorKind::NotFound
                        && (admin
                            || policies.allowed(
                                caller,
                                path,
                                crate::policy::Capability::Create,
                            )) =>
                {
                    Ok(Reply::Done)
                }
                other => other,
            },
            Err(e) => Err(e),
        };
        if !admin {
            result = result.and_then(|reply| self.caller_view(&policies, caller, path, reply));
        }
        if is_chmod {
            result = result.map(|_| Reply::Done);
        }
        let lease_id = match &result {
            Ok(Reply::Data(d)) if mints => gate::lease_id_of(d.expose()),
            _ => path.strip_prefix("sys/leases/").map(str::to_string),
        };
        if let (true, Ok(Reply::Data(d))) = (hashing, &result) {
            if let Ok(h) = self.barrier.audit_hmac(d.expose()) {
                values.push(("response", h));
            }
        }
        // A successful stat is not recorded, unless the log is failing: then it is refused too.
        if is_stat && result.is_ok() && !gate::failing(&audit_mode) {
            return result;
        }
        if let Err(e) = &result {
            // A lookup of what is not there is how shells and tools probe: not a refusal.
            if !(is_stat && e.kind == ErrorKind::NotFound) {
                self.reasons
                    .record(caller.uid, op_name, path, e.kind.errno_name(), &e.message);
            }
        }
        // Repeated refusals are counted, not each written (the daemon's own failures are).
        if let Err(e) = &result {
            if !matches!(e.kind, ErrorKind::Io | ErrorKind::Integrity) {
                match self.refusals.decide(
                    caller,
                    op_name,
                    path,
                    e.kind.errno_name(),
                    &e.message,
                    std::time::Instant::now(),
                ) {
                    Decision::Counted => return result,
                    Decision::Write(closed) => gate::write_aggregates(&audit_mode, closed),
                }
            }
        }
        let audited = gate::audit(
            &audit_mode,
            gate::Record {
                caller,
                op: op_name,
                path,
                result: result.as_ref().map(|_| ()),
                lease_id: lease_id.as_deref(),
                values,
                secret_bearing: secret_bearing && result.is_ok(),
                intent: false,
                // The outcome of a change whose intent line is durable need not wait, nor
                // a check that changes nothing; a credential or a value is handed out only
                // once its line is durable.
                durable: (!changes || mints) && !check_only,
                count: None,
            },
        );
        if let Err(e) = audited {
            // A credential this very request made cannot be handed out unaudited: undo it.
            if let Some(id) = lease_id
                .as_deref()
                .filter(|_| self.issued_here(caller, path))
            {
                let owned = self.leases.get(id).is_ok_and(|l| {
                    l.uid == caller.uid
                        && l.path == path.trim_end_matches(".env").trim_end_matches(".process")
                });
                if owned {
                    let _ = self.leases.revoke(id);
                }
            }
            // A change that was made is already in the log (its intent line); its outcome
            // stands, and the next request finds the log failing and is refused.
            if changes && !mints && result.is_ok() {
                return result;
            }
            return Err(e);
        }
        result
    }

    /// The per-uid request rate (`[limits]`): EAGAIN past it.
    fn admit(&self, caller: &Caller, admin: bool) -> Result<()> {
        let l = self.config.uid_limits;
        let Some(rate) = l.requests_per_sec else {
            return Ok(());
        };
        if (admin && !l.apply_to_admins) || self.rates.admit(caller.uid, rate, l.request_burst) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::TryAgain,
            format!(
                "uid {}: more than {rate} requests/s (burst {}); slow down \
                 ([limits] requests_per_sec_per_uid)",
                caller.uid, l.request_burst
            ),
        ))
    }

    /// The policy decision for `op` on `path`: `need`, and for a rename everything it moves.
    fn authorize(
        &self,
        policies: &Policies,
        caller: &Caller,
        path: &str,
        op: &Op<'_>,
        need: &gate::Need,
    ) -> Result<()> {
        let exists = |p: &str| {
            self.dispatch_inner(&Caller::internal(), p, Op::Stat)
                .is_ok()
        };
        gate::check(policies, caller, need, &exists)?;
        match op {
            Op::Rename(to) if !policies.is_admin(caller) && !path.starts_with("sys/") => {
                self.check_moved(policies, caller, path, to, &exists)
            }
            _ => Ok(()),
        }
    }

    /// A rename moves content: the caller needs `read` and `delete` on every secret it moves
    /// and `create` (or `update` where it replaces) on each one's new path. `gate::check`
    /// decided the source and target paths themselves.
    fn check_moved(
        &self,
        policies: &Policies,
        caller: &Caller,
        from: &str,
        to: &str,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        use crate::policy::Capability as C;
        let internal = Caller::internal();
        // Nothing stored (a file still being created, or nothing at all): nothing moves.
        let Ok(Reply::Node(node)) = self.dispatch_inner(&internal, from, Op::Stat) else {
            return Ok(());
        };
        let refuse = |what: &str| {
            Err(Error::denied(format!(
                "uid {} may not move {from} to {to}: {what} (policy)",
                caller.uid
            )))
        };
        if !node.is_dir() {
            if !policies.allowed(caller, from, C::Read) {
                return refuse("a rename moves the value, and you may not read it");
            }
            return Ok(());
        }
        let mut stack = vec![String::new()];
        let mut walked = 0usize;
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                from.to_string()
            } else {
                format!("{from}/{rel}")
            };
            let Ok(Reply::Entries(entries)) = self.dispatch_inner(&internal, &dir, Op::List) else {
                continue;
            };
            for e in entries.into_iter().filter(|e| !e.name.starts_with('.')) {
                walked += 1;
                if walked > MAX_MOVED {
                    return Err(Error::invalid(format!(
                        "{from}: a folder with more than {MAX_MOVED} entries cannot be moved"
                    )));
                }
                let r = if rel.is_empty() {
                    e.name
                } else {
                    format!("{rel}/{}", e.name)
                };
                if e.kind == crate::backend::NodeKind::Dir {
                    stack.push(r);
                    continue;
                }
                let (old, new) = (format!("{from}/{r}"), format!("{to}/{r}"));
                let at_new = if exists(&new) { C::Update } else { C::Create };
                if !(policies.allowed(caller, &old, C::Read)
                    && policies.allowed(caller, &old, C::Delete)
                    && policies.allowed(caller, &new, at_new))
                {
                    return refuse(
                        "the folder holds secrets you may not read and delete there, \
                         or create at the new path",
                    );
                }
            }
        }
        Ok(())
    }

    /// Whether a read of `path` mints a leased credential (a `creds/` read of a dynamic mount).
    fn issued_here(&self, _caller: &Caller, path: &str) -> bool {
        let Some((head, rest)) = path.split_once('/') else {
            return false;
        };
        rest.starts_with("creds/")
            && self
                .table()
                .mounts
                .get(head)
                .is_some_and(|m| matches!(m.backend.kind(), "aws" | "postgresql"))
    }

    /// What `op` on `path` needs: (audit operation name, policy need, secret-bearing).
    fn need(&self, path: &str, op: &Op<'_>) -> (&'static str, gate::Need, bool) {
        use crate::policy::Capability as C;
        use gate::Need;
        let name = match op {
            Op::Stat => "stat",
            Op::List => "list",
            Op::Read => "read",
            Op::Create => "create",
            Op::Write(_) => "write",
            Op::Delete => "delete",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Rename(_) => "rename",
            Op::Touch => "touch",
            Op::Exchange(_) => "exchange",
            Op::Chmod => "chmod",
        };
        let (head, rest) = path.split_once('/').unwrap_or((path, ""));
        let free = path.is_empty()
            || path == ".help"
            || rest == ".help"
            || (head == "sys" && crate::backends::sys::is_open_to_all(rest));
        if matches!(op, Op::Stat | Op::Chmod)
            || (free && matches!(op, Op::Stat | Op::List | Op::Read))
        {
            return (name, Need::Free, false);
        }
        if head == "sys" {
            let need = match op {
                Op::List => Need::Cap(gate::folder(path), C::Sudo),
                Op::Rename(to) => Need::Two(
                    Box::new(Need::Cap(path.to_string(), C::Sudo)),
                    Box::new(Need::Cap((*to).to_string(), C::Sudo)),
                ),
                _ => Need::Cap(path.to_string(), C::Sudo),
            };
            return (
                name,
                need,
                matches!(op, Op::Read | Op::Write(_) | Op::Exchange(_)),
            );
        }
        let need = match op {
            Op::Stat | Op::Chmod => Need::Free,
            Op::List => Need::Cap(gate::folder(path), C::List),
            Op::Read => Need::Cap(path.to_string(), C::Read),
            Op::Create | Op::Write(_) => Need::Write(path.to_string()),
            Op::Delete | Op::Rmdir => Need::Cap(path.to_string(), C::Delete),
            Op::Mkdir => Need::Cap(path.to_string(), C::Create),
            Op::Touch | Op::Exchange(_) => Need::Cap(path.to_string(), C::Update),
            Op::Rename(to) => Need::Two(
                Box::new(Need::Cap(path.to_string(), C::Delete)),
                Box::new(Need::Write((*to).to_string())),
            ),
        };
        (
            name,
            need,
            matches!(op, Op::Read | Op::Write(_) | Op::Exchange(_)),
        )
    }

    /// Narrow an answer to what a (non-admin) caller may see and do.
    fn caller_view(
        &self,
        policies: &Policies,
        caller: &Caller,
        path: &str,
        reply: Reply,
    ) -> Result<Reply> {
        let in_mount =
            !(path.is_empty() || path == ".help" || path == "sys" || path.starts_with("sys/"));
        match reply {
            Reply::Node(mut node) => {
                if in_mount
                    && !path.ends_with("/.help")
                    && !policies.may_see(caller, path, node.is_dir())
                {
                    return Err(Error::not_found(path));
                }
                let free = path.is_empty()
                    || path.ends_with(".help")
                    || path == "sys"
                    || path
                        .strip_prefix("sys/")
                        .is_some_and(crate::backends::sys::is_open_to_all);
                if !free {
                    let key = if node.is_dir() {
                        gate::folder(path)
                    } else {
                        path.to_string()
                    };
                    let mut caps = policies.capabilities(caller, &key);
                    if path.starts_with("sys/") {
                        if caps.contains(crate::policy::Capability::Sudo) {
                            caps = crate::policy::CapSet::ALL;
                        } else if !(node.is_dir() && policies.may_see(caller, path, true)) {
                            // No probing of mount, policy or lease names without `sudo`.
                            return Err(Error::not_found(path));
                        }
                    }
                    gate::mask_mode(&mut node, caps);
                }
                Ok(Reply::Node(node))
            }
            Reply::Entries(entries) => {
                let entries = if path == "sys" {
                    entries
                        .into_iter()
                        .filter(|e| {
                            e.name.starts_with('.')
                                || crate::backends::sys::is_open_to_all(&e.name)
                                || policies.allowed(
                                    caller,
                                    &format!("sys/{}", e.name),
                                    crate::policy::Capability::Sudo,
                                )
                                || policies.may_see(
                                    caller,
                                    &format!("sys/{}", e.name),
                                    e.kind == crate::backend::NodeKind::Dir,
                                )
                        })
                        .collect()
                } else if path.is_empty() {
                    entries
                        .into_iter()
                        .filter(|e| {
                            e.name.starts_with('.')
                                || e.name == "sys"
                                || policies.may_see(caller, &e.name, true)
                        })
                        .collect()
                } else {
                    gate::filter_entries(policies, caller, path, entries)
                };
                Ok(Reply::Entries(entries))
            }
            other => Ok(other),
        }
    }

    fn dispatch_inner(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        let target = self.resolve(path)?;
        match target {
            Target::Root => match op {
                Op::Stat | Op::Chmod => Ok(Reply::Node(Node::dir())),
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
                    _ => self.root_help(caller),
                };
                match op {
                    Op::Stat | Op::Chmod => {
                        Ok(Reply::Node(Node::generated_text(0o400, text.len())))
                    }
                    Op::Read => Ok(Reply::Data(SecretBytes::from(text))),
                    _ => Err(Error::not_permitted(format!("{path} is read-only"))),
                }
            }
            Target::Sys(rest) => match op {
                Op::Stat | Op::Chmod => self.sys.stat(self, caller, rest).map(Reply::Node),
                Op::List => self.sys.list(self, rest).map(Reply::Entries),
                Op::Read => self.sys.read(self, caller, rest).map(Reply::Data),
                // Files under sys/ are control files: each write acts at once.
                Op::Create => self.sys.create(self, rest).map(|_| {
                    // Policies, mount specs and audit-hash values are buffered and applied
                    // whole at close (a document cut at a write(2) boundary must never go
                    // live; mount specs are checked as bytes arrive, `check_partial`); every
                    // other control file acts on each write.
                    if rest.starts_with("policies/")
                        || rest.starts_with("mounts/")
                        || rest == "audit-hash"
                    {
                        Reply::Node(Node::file(0))
                    } else {
                        Reply::Node(Node::write_only())
                    }
                }),
                Op::Write(data) => self
                    .sys
                    .write(self, caller.uid, rest, data)
                    .map(|_| Reply::Done),
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
                Op::Exchange(_) => Err(Error::not_permitted(format!(
                    "{path} is not an exchange file"
                ))),
            },
            Target::Mount(m, rest) => {
                let ctx = Ctx {
                    caller,
                    mount: &m.entry.path,
                    lease_limit: self
                        .config
                        .uid_limits
                        .leases
                        .filter(|_| self.bounded(caller)),
                };
                let b = &m.backend;
                match op {
                    Op::Stat | Op::Chmod => b.stat(&ctx, rest).map(Reply::Node),
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
                    Op::Exchange(input) => b.exchange(&ctx, rest, input).map(Reply::Data),
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
    /// Check the content buffered so far for `path` (an open file the caller created or opened
    /// for writing, applied whole at close): refuses what can no longer become valid, so the
    /// write(2) that carries it fails (shells ignore errors at close). Control files under
    /// `sys/` are checked by sys, paths in a mount by its backend (`Backend::check_partial`);
    /// what only storage can refuse is still decided at close.
    pub fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        match self.resolve(path) {
            Ok(Target::Sys(rest)) => self.sys.check_partial(rest, data),
            Ok(Target::Mount(m, rest)) if !rest.is_empty() => {
                // The adapter names the full path; drop the backend's own prefix of it.
                m.backend.check_partial(rest, data).map_err(|mut e| {
                    if let Some(msg) = e
                        .message
                        .strip_prefix(rest)
                        .and_then(|m| m.strip_prefix(": "))
                    {
                        e.message = msg.to_string();
                    }
                    e
                })
            }
            _ => Ok(()),
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
    /// Run an exchange node's operation on `input` (everything written in one open) and answer
    /// its output (what reads of that open see).
    pub fn exchange(&self, caller: &Caller, path: &str, input: SecretBytes) -> Result<SecretBytes> {
        match self.dispatch(caller, path, Op::Exchange(input))? {
            Reply::Data(d) => Ok(d),
            _ => Err(Error::io("internal: exchange answered without data")),
        }
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
