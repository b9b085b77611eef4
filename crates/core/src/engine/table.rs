//! The live mount table: the cached copy, re-reading it when other daemons share the store,
//! and mount, unmount, remount.
//!
//! Owns: changes of the table (saved by compare-and-swap) and the order of an unmount (leases
//! revoked first, then the table, then the data). Must never: save a table built from a stale
//! copy.

use super::*;

/// How old the mount table may get before a daemon on a shared store re-reads it.
pub(super) const TABLE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(2);

impl Engine {
    pub(super) fn table(&self) -> Arc<MountTable> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub(super) fn set_table(&self, t: MountTable) {
        let new = Arc::new(t);
        let old = std::mem::replace(
            &mut *self.table.write().unwrap_or_else(|p| p.into_inner()),
            new.clone(),
        );
        self.table_changed(&old, &new);
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
            .ok_or_else(|| Error::not_found(&format!("mount {name}")))
    }

    /// The live mount at `name`. When other daemons share the store, the stored table is
    /// re-read on a miss (another daemon may have mounted it) and when the copy here is older
    /// than `TABLE_MAX_AGE` (another daemon may have unmounted or moved it).
    pub(super) fn mounted(&self, name: &str) -> Option<Arc<Mounted>> {
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
    pub(super) fn fresh_table(&self) -> Result<(Arc<MountTable>, Option<crate::barrier::Version>)> {
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
    pub(super) fn refresh_table(&self) {
        let _g = match self.control.try_lock() {
            Ok(g) => g,
            // The watch marked the table stale and is re-reading it: wait for that (bounded)
            // rather than answer from the old copy.
            Err(_) if self.table_stale() => {
                let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
                loop {
                    if let Ok(g) = self.control.try_lock() {
                        break g;
                    }
                    if std::time::Instant::now() >= deadline {
                        return;
                    }
                    std::thread::sleep(std::time::Duration::from_millis(2));
                }
            }
            Err(_) => return,
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

    /// Re-read the stored mount table now (another daemon sharing the store changed it: the
    /// cluster watch calls this). Waits for a change this daemon is making; the kernel's
    /// entries of what moved are dropped through the change listener (`set_table`).
    pub fn reload_table(&self) {
        // Stale first: a listing meanwhile waits for this re-read (`refresh_table`).
        *self.table_read_at.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let _g = self.lock_control();
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

    fn table_stale(&self) -> bool {
        self.table_read_at
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none()
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
}
