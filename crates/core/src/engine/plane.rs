//! The engine as the control plane's `Control`: what `sys/` may read and change.
//!
//! Owns: the mapping of each control operation onto the engine's state. Must never: skip the
//! order an operation keeps elsewhere (each method calls the engine's own operation).

use super::*;
use crate::backends::sys::Status;

impl Control for Engine {
    fn status(&self) -> Status {
        // One read of the store: did it answer?
        let initialized = self.barrier.is_initialized();
        Status {
            sealed: self.is_sealed(),
            initialized: *initialized.as_ref().unwrap_or(&false),
            storage: self.barrier.storage().kind(),
            storage_ok: initialized.is_ok(),
            key_term: self.barrier.active_term().ok(),
        }
    }
    fn is_sealed(&self) -> bool {
        Engine::is_sealed(self)
    }
    fn leases(&self) -> &Arc<LeaseManager> {
        &self.leases
    }
    fn mount_entries(&self) -> Vec<MountEntry> {
        Engine::mount_entries(self)
    }
    fn mount_entry(&self, name: &str) -> Result<MountEntry> {
        Engine::mount_entry(self, name)
    }
    fn mount(&self, name: &str, kind: &str, description: &str) -> Result<()> {
        Engine::mount(self, name, kind, description).map(|_| ())
    }
    fn unmount(&self, name: &str) -> Result<()> {
        Engine::unmount(self, name)
    }
    fn remount(&self, from: &str, to: &str) -> Result<()> {
        Engine::remount(self, from, to)
    }
    fn mounts_table_text(&self) -> String {
        Engine::mounts_table_text(self)
    }
    fn policy_names(&self) -> Vec<String> {
        self.policies().names().map(str::to_string).collect()
    }
    fn policy_text(&self, name: &str) -> Result<String> {
        Engine::policy_text(self, name)
    }
    fn put_policy(&self, name: &str, text: &str) -> Result<()> {
        Engine::put_policy(self, name, text)
    }
    fn delete_policy(&self, name: &str) -> Result<()> {
        Engine::delete_policy(self, name)
    }
    fn may_sudo(&self, caller: &Caller, path: &str) -> bool {
        self.policies()
            .allowed(caller, path, crate::policy::Capability::Sudo)
    }
    fn own_refusals(&self, uid: u32) -> String {
        self.reasons.text_for(uid)
    }
    fn audit_hash(&self, value: &[u8]) -> Result<String> {
        self.barrier.audit_hmac(value)
    }
    fn seal(&self) {
        Engine::seal(self)
    }
    fn unseal(&self, passphrase: &[u8]) -> std::result::Result<(), UnsealError> {
        Engine::unseal(self, passphrase)
    }
    fn rotate(&self) -> Result<u32> {
        Engine::rotate(self)
    }
}
