//! Generated text the engine itself answers: the root `.help`, the mount table, health.
//!
//! Must never: show a caller a mount, or a count, its policy hides.

use super::*;

pub(super) const ROOT_HELP_HEAD: &str = "\
nomadfs: secrets as files. Each folder here is a mounted backend; `cat MOUNT/.help` explains it.
`sys/` is the control plane (`cat sys/.help`).

";

impl Engine {
    /// `sys/health`. The lease count is the daemon's for a caller with `sudo` on
    /// `sys/leases/`, else the caller's own. `role` is the daemon's in the expiry election
    /// (`single` alone on its store; `leader`/`follower` on etcd, with `node` and `leader`).
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
        // One read of the store: did it answer?
        let initialized = self.barrier.is_initialized();
        let leadership = self.leases.leadership();
        let v = serde_json::json!({
            "sealed": self.is_sealed(),
            "initialized": *initialized.as_ref().unwrap_or(&false),
            "version": VERSION,
            "storage": self.barrier.storage().kind(),
            "storage_ok": initialized.is_ok(),
            // Not the message: it names endpoints, and health is readable by every uid.
            "storage_err": initialized
                .as_ref()
                .err()
                .map(|_| "the store did not answer a read (the daemon log has the reason)"),
            "role": self.leases.role().as_str(),
            "node": leadership.map(|l| l.node_id()),
            "leader": leadership.and_then(|l| l.leader_id()),
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
    pub(super) fn table_text(&self, visible: &dyn Fn(&str) -> bool) -> String {
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
    pub(super) fn root_help(&self, caller: &Caller) -> String {
        let policies = self.policies();
        let visible = |m: &str| policies.may_see(caller, m, true);
        format!("{ROOT_HELP_HEAD}{}", self.table_text(&visible))
    }
}
