//! The engine: one entry point per file operation, for any caller.
//!
//! Owns: the `Engine` (its state and its public operations) and the request types (`Op`,
//! `Reply`). The jobs are one module each: `guard` (every request's rate, policy decision,
//! intent and outcome lines, the caller's view), `resolve` (a path to the root or a mount's
//! backend — the control plane `sys/` is the fixed mount of the table), `table` (the live
//! mount table), `policy_store` (config and live policies), `seal` (unseal, seal, rotate),
//! `present` (the text the engine answers itself), `plane` (the engine as the control plane's
//! `Control`). Must never: know about FUSE, inodes or errnos, or name a backend's paths.

use crate::backend::{Ctx, DirEntry, Node};
use crate::backends::sys::{self as control_plane, Control, Sys};
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

mod changes;
mod guard;
mod plane;
mod policy_store;
mod present;
mod resolve;
mod seal;
mod table;

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
    /// A credential minted by this read, and the lease it is held under.
    Credential(SecretBytes, String),
    Done,
}

type SharedTable = Arc<RwLock<Arc<MountTable>>>;

pub struct Engine {
    barrier: Arc<Barrier>,
    table: SharedTable,
    /// Serialises changes of the mount table and seal state.
    control: Mutex<()>,
    config: EngineConfig,
    leases: Arc<LeaseManager>,
    /// The control plane: the fixed mount of the table (never stored, never unmounted).
    sys: Arc<Mounted>,
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
    /// Told the logical path of each node the core changes on its own (`changes.rs`).
    changes: Arc<RwLock<Option<ChangeListener>>>,
}

pub use changes::ChangeListener;

impl Engine {
    /// A sealed engine over `storage`. Shared (`Arc`): the control plane it mounts holds it
    /// weakly.
    pub fn new(storage: Arc<dyn Storage>, config: EngineConfig) -> Arc<Self> {
        Arc::new_cyclic(|me| Self::build(storage, config, me.clone()))
    }

    fn build(storage: Arc<dyn Storage>, config: EngineConfig, me: std::sync::Weak<Engine>) -> Self {
        let control: std::sync::Weak<dyn Control> = me;
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
            sys: Arc::new(Mounted {
                entry: control_plane::mount_entry(),
                backend: Arc::new(Sys::new(control)),
            }),
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
            changes: Arc::default(),
        }
    }

    pub fn set_audit(&self, mode: AuditMode) {
        *self.audit.write().unwrap_or_else(|p| p.into_inner()) = mode;
    }

    fn audit_mode(&self) -> AuditMode {
        self.audit.read().unwrap_or_else(|p| p.into_inner()).clone()
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
            Reply::Data(d) | Reply::Credential(d, _) => Ok(d),
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
    /// write(2) that carries it fails (shells ignore errors at close). Paths in a mount are
    /// checked by its backend (`Backend::check_partial`); what only storage can refuse is
    /// still decided at close.
    pub fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        use resolve::Target;
        match self.resolve(path) {
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

#[cfg(test)]
mod tests;
