//! Telling the adapter what the core changed on its own, so that a cache of it (the kernel's)
//! can be dropped: mounts, unmounts and remounts (also another daemon's, seen on a shared
//! store: `table.rs`), lease revocations (also by expiry: the lease manager's hook), and policy
//! changes (`policy_store.rs`, as "everything").

use super::*;

/// Called with a logical path whose node (and everything under it) changed by the core's own
/// doing. `""`: everything.
pub type ChangeListener = Arc<dyn Fn(&str) + Send + Sync>;

impl Engine {
    /// Be told of nodes the core changes on its own (replaces an earlier listener).
    pub fn set_change_listener(&self, listener: Box<dyn Fn(&str) + Send + Sync>) {
        *self.changes.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::from(listener));
        let changes = Arc::downgrade(&self.changes);
        self.leases.set_on_revoked(Box::new(move |id| {
            let Some(c) = changes.upgrade() else { return };
            let f = c.read().unwrap_or_else(|p| p.into_inner()).clone();
            // The lease's file, and the folders of its path (each may have emptied).
            let mut p = id;
            while let (Some(f), false) = (&f, p.is_empty()) {
                f(&control_plane::lease_file(p));
                p = p.rsplit_once('/').map_or("", |(parent, _)| parent);
            }
        }));
    }

    pub(super) fn changed(&self, path: &str) {
        let f = self
            .changes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        f.inspect(|f| f(path));
    }

    /// The table went from `old` to `new`: each mount path added, removed or re-pointed (and
    /// its file in the control plane, and the folders above it) changed.
    pub(super) fn table_changed(&self, old: &MountTable, new: &MountTable) {
        let differs =
            |p: &str| old.mounts.get(p).map(|m| &m.entry) != new.mounts.get(p).map(|m| &m.entry);
        for p in old.mounts.keys().chain(new.mounts.keys()) {
            if differs(p) {
                self.changed(&control_plane::mount_file(p));
                let mut at = p.as_str();
                while !at.is_empty() {
                    self.changed(at);
                    at = at.rsplit_once('/').map_or("", |(parent, _)| parent);
                }
            }
        }
    }
}
