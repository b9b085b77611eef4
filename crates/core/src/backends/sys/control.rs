//! What `sys/` acts on: the engine's state, through the operations the control plane needs.
//!
//! Owns: `trait Control`, the one interface between the control plane and the engine. The
//! engine implements it and owns `sys/` (as the fixed mount of its table); `sys/` holds it
//! weakly, so neither module imports the other. Must never: give `sys/` a way around the
//! guard (every request reaches `sys/` through the engine's dispatch, already authorised).

use crate::barrier::UnsealError;
use crate::caller::Caller;
use crate::error::Result;
use crate::lease::LeaseManager;
use crate::mounts::MountEntry;
use std::sync::Arc;

/// The engine's status, as `sys/health` shows it.
pub struct Status {
    pub sealed: bool,
    pub initialized: bool,
    pub storage: &'static str,
    /// The store answered a read just now (`initialized` is false when it did not).
    pub storage_ok: bool,
    pub key_term: Option<u32>,
}

/// The state the control plane reads and changes. Errors name what they concern ("mount x",
/// "policy y"), not `sys/` paths: `sys/` adds its own.
pub trait Control: Send + Sync {
    fn status(&self) -> Status;
    fn is_sealed(&self) -> bool;
    fn leases(&self) -> &Arc<LeaseManager>;
    /// The live mount table (without the control plane's own mount).
    fn mount_entries(&self) -> Vec<MountEntry>;
    fn mount_entry(&self, name: &str) -> Result<MountEntry>;
    fn mount(&self, name: &str, kind: &str, description: &str) -> Result<()>;
    fn unmount(&self, name: &str) -> Result<()>;
    fn remount(&self, from: &str, to: &str) -> Result<()>;
    /// The mount table as `Path Type Description` columns.
    fn mounts_table_text(&self) -> String;
    fn policy_names(&self) -> Vec<String>;
    fn policy_text(&self, name: &str) -> Result<String>;
    fn put_policy(&self, name: &str, text: &str) -> Result<()>;
    fn delete_policy(&self, name: &str) -> Result<()>;
    /// Whether the policy gives `caller` `sudo` on `path` (admins have it everywhere).
    fn may_sudo(&self, caller: &Caller, path: &str) -> bool;
    /// The caller's own recent refusals, oldest first.
    fn own_refusals(&self, uid: u32) -> String;
    /// The HMAC the audit log would show for `value`.
    fn audit_hash(&self, value: &[u8]) -> Result<String>;
    fn seal(&self);
    fn unseal(&self, passphrase: &[u8]) -> std::result::Result<(), UnsealError>;
    /// Add a key term; answers it.
    fn rotate(&self) -> Result<u32>;
}
