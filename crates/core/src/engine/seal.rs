//! Seal state: unseal (initialising an empty store), seal, key rotation.
//!
//! Owns: the order of what unsealing loads (keyring, mount table, leases, live policies,
//! recovery of unfinished upstream work) and what sealing drops. Must never: leave a
//! half-unsealed engine (any failure seals again).

use super::*;

impl Engine {
    pub fn is_sealed(&self) -> bool {
        self.barrier.is_sealed()
    }

    pub(super) fn lock_control(&self) -> std::sync::MutexGuard<'_, ()> {
        self.control.lock().unwrap_or_else(|p| p.into_inner())
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
}
