//! `sys/` as a `Backend`: each operation takes the engine's state through `Control` and
//! runs the control plane's own answer; and the generated `health` text.
//!
//! Owns: the mapping of `Backend` calls onto `Sys` and its access rule (privileged, what is
//! open to all, the lease a request names). Must never: act on anything without going
//! through `Control`.

use super::*;
use crate::backend::{Backend, Ctx};
use crate::lease::LeaseRecord;

/// An engine error about a mount or policy, named by its `sys/` path when it is a missing one.
pub(super) fn in_sys(path: &str, e: Error) -> Error {
    if e.kind == ErrorKind::NotFound {
        Error::not_found(&format!("{MOUNT}/{path}"))
    } else {
        e
    }
}

/// `sys/health`. The lease count is the daemon's for a caller with `sudo` on `sys/leases/`,
/// else the caller's own. `role` is the daemon's in the expiry election (`single` alone on
/// its store; `leader`/`follower` on etcd, with `node` and `leader`).
pub(super) fn health_json(e: &dyn Control, caller: &Caller) -> String {
    let leases = if e.may_sudo(caller, &format!("{MOUNT}/leases/")) {
        e.leases().count()
    } else {
        e.leases().count_uid(caller.uid)
    };
    let st = e.status();
    let v = serde_json::json!({
        "sealed": st.sealed,
        "initialized": st.initialized,
        "version": env!("CARGO_PKG_VERSION"),
        "storage": st.storage,
        "storage_ok": st.storage_ok,
        // Not the reason: it names endpoints, and health is readable by every uid.
        "storage_err": (!st.storage_ok)
            .then_some("the store did not answer a read (the daemon log has the reason)"),
        "role": e.leases().role().as_str(),
        "node": e.leases().leadership().map(|l| l.node_id()),
        "leader": e.leases().leadership().and_then(|l| l.leader_id()),
        "leases": leases,
        "key_term": st.key_term,
    });
    let mut s = serde_json::to_string_pretty(&v).unwrap_or_default();
    s.push('\n');
    s
}

/// The control plane as a backend: every operation is authorised by the guard (`sudo`, see
/// `privileged`) before it arrives here.
impl Backend for Sys {
    fn kind(&self) -> &'static str {
        "system"
    }
    fn help(&self) -> String {
        self.router.help(HELP_INTRO, "")
    }
    fn privileged(&self) -> bool {
        true
    }
    /// Health, help and the caller's own refusals: anyone who can enter may read them.
    fn open_to_all(&self, path: &str) -> bool {
        matches!(path, "" | ".help" | "health" | "self" | "self/errors")
    }
    fn lease_named<'p>(&self, path: &'p str) -> Option<&'p str> {
        path.strip_prefix("leases/")
    }
    fn stat(&self, ctx: &Ctx<'_>, path: &str) -> Result<Node> {
        self.stat_in(&*self.control()?, ctx.caller, path)
    }
    fn list(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Vec<DirEntry>> {
        self.list_in(&*self.control()?, path)
    }
    fn read(&self, ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes> {
        self.read_in(&*self.control()?, ctx.caller, path)
    }
    fn write(&self, ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        self.write_in(&*self.control()?, ctx.caller.uid, path, data)
    }
    fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        self.check_partial_in(path, data)
    }
    /// Documents (policies, mount specs, audit-hash values) are buffered and applied whole at
    /// close (a document cut at a write(2) boundary must never go live; mount specs are checked
    /// as bytes arrive, `check_partial`); every other control file acts on each write.
    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Writes> {
        self.create_in(&*self.control()?, path)
    }
    fn delete(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        self.delete_in(&*self.control()?, path)
    }
    fn mkdir(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        Err(Error::not_permitted(format!(
            "{MOUNT}/{path}: folders under {MOUNT}/ are fixed"
        )))
    }
    fn rmdir(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        self.rmdir_in(&*self.control()?, path)
    }
    fn rename(&self, _ctx: &Ctx<'_>, from: &str, to: &str) -> Result<()> {
        self.rename_in(&*self.control()?, from, to)
    }
    fn touch(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        self.touch_in(&*self.control()?, path)
    }
    fn exchange(&self, ctx: &Ctx<'_>, path: &str, input: SecretBytes) -> Result<SecretBytes> {
        self.exchange_in(&*self.control()?, ctx.caller.uid, path, input)
    }
    /// Nothing under `sys/` is issued under a lease.
    fn revoke(&self, lease: &LeaseRecord) -> Result<()> {
        Err(Error::not_permitted(format!(
            "{}: {MOUNT}/ issues no leases",
            lease.path
        )))
    }
}
