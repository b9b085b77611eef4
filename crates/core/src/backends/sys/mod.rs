//! `sys/`: the control plane as files — health, seal/unseal, key rotation, the mount table,
//! leases, policies.
//!
//! Owns: the paths under `sys/`, the text formats of its files, and the rule that makes it a
//! privileged backend (`sudo` for everything but health, help and the caller's own errors).
//! It is a `Backend` like any other, the fixed mount of the engine's table, and acts on the
//! engine's state through `Control` (held weakly: the engine owns it). Must never: echo a
//! passphrase, or show anything but `health`, `unseal`, `seal` and help while sealed.

mod backend;
mod control;
mod mount_spec;
mod paths;

pub use control::{Control, Status};

use crate::backend::{DirEntry, Node, Writes};
use crate::backends::validate_name;
use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::mounts::normalize_path;
use crate::mounts::MountEntry;
use crate::route::Router;
use crate::secret::SecretBytes;
use backend::{health_json, in_sys};
use mount_spec::{check_mount_spec_prefix, parse_mount_spec};
use paths::{HELP_INTRO, PATHS};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Route {
    Root,
    Help,
    Health,
    Seal,
    Unseal,
    Rotate,
    Mounts,
    MountsTable,
    Mount,
    Leases,
    Lease,
    RevokeUid,
    Policies,
    Policy,
    AuditHash,
    SelfDir,
    SelfErrors,
}

/// Where the control plane is mounted.
pub const MOUNT: &str = "sys";

/// The control plane's entry in the mount table (fixed: never stored, never unmounted).
pub fn mount_entry() -> MountEntry {
    MountEntry {
        path: MOUNT.into(),
        kind: "system".into(),
        description: "system endpoints used for control, policy and debugging".into(),
        uuid: String::new(),
    }
}

/// The file of lease `id` (and of each folder of its path), for cache invalidation.
pub fn lease_file(id: &str) -> String {
    format!("{MOUNT}/leases/{id}")
}

/// The file of the mount at `name`, for cache invalidation.
pub fn mount_file(name: &str) -> String {
    format!("{MOUNT}/mounts/{name}")
}

pub struct Sys {
    router: Router<Route>,
    control: std::sync::Weak<dyn Control>,
    /// The last hash asked of `sys/audit-hash`, per uid (never the value).
    hashes: std::sync::Mutex<std::collections::HashMap<u32, String>>,
}

/// Whether `route` answers while sealed.
fn open_while_sealed(route: Route) -> bool {
    matches!(
        route,
        Route::Root
            | Route::Help
            | Route::Health
            | Route::Seal
            | Route::Unseal
            | Route::SelfDir
            | Route::SelfErrors
    )
}

/// The lease id of a `leases/...` path.
fn caps_first(path: &str) -> &str {
    path.strip_prefix("leases/").unwrap_or("")
}

impl Sys {
    pub fn new(control: std::sync::Weak<dyn Control>) -> Self {
        Self {
            router: Router::declare(PATHS),
            control,
            hashes: Default::default(),
        }
    }

    fn control(&self) -> Result<std::sync::Arc<dyn Control>> {
        self.control
            .upgrade()
            .ok_or_else(|| Error::io("the engine is shutting down"))
    }

    fn route<'p>(&self, e: &dyn Control, path: &'p str) -> Result<(Route, Vec<&'p str>)> {
        let (route, caps) = self
            .router
            .route(path)
            .ok_or_else(|| Error::not_found(&format!("sys/{path}")))?;
        if e.is_sealed() && !open_while_sealed(route) {
            return Err(Error::not_found(&format!("sys/{path}")));
        }
        Ok((route, caps))
    }

    fn stat_in(&self, e: &dyn Control, caller: &Caller, path: &str) -> Result<Node> {
        let (route, caps) = self.route(e, path)?;
        Ok(match route {
            Route::Root | Route::Mounts => Node::dir(),
            // Generated text stats its true size (cheap to make; nothing secret in it).
            Route::Help | Route::Health | Route::MountsTable | Route::SelfErrors => {
                Node::generated_text(0o400, self.read_in(e, caller, path)?.len())
            }
            Route::SelfDir => Node::dir(),
            Route::Seal | Route::Unseal | Route::Rotate | Route::RevokeUid => Node::write_only(),
            Route::Policies => Node::dir(),
            Route::Policy => {
                e.policy_text(caps[0]).map_err(|e| in_sys(path, e))?;
                Node::file(0)
            }
            // Read-write: an exchange (the hash of what was written, read in the same open).
            // Else buffered (not dynamic): the value is hashed whole at close; reads use direct
            // I/O, so the size 0 does not cut them short.
            Route::AuditHash => Node::exchange_or_buffered(),
            Route::Mount => {
                e.mount_entry(caps[0]).map_err(|e| in_sys(path, e))?;
                Node::generated(0o600)
            }
            Route::Leases => Node::dir(),
            Route::Lease => match e.leases().kind(caps[0]) {
                Some(true) => Node::dir(),
                Some(false) => Node::generated(0o600),
                None => return Err(Error::not_found(&format!("sys/{path}"))),
            },
        })
    }

    fn list_in(&self, e: &dyn Control, path: &str) -> Result<Vec<DirEntry>> {
        let (route, _) = self.route(e, path)?;
        match route {
            // The fixed entries, from the table; while sealed only those that answer. (The
            // engine lists `.help` first in every mount's root.)
            Route::Root => Ok(self
                .router
                .literal_children("")
                .into_iter()
                .filter(|c| c.name != ".help")
                .filter(|c| {
                    !e.is_sealed()
                        || self
                            .router
                            .route(&c.name)
                            .is_some_and(|(r, _)| open_while_sealed(r))
                })
                .collect()),
            Route::Leases => Ok(e.leases().list("")),
            Route::SelfDir => Ok(self.router.literal_children("self")),
            Route::Policies => Ok(e.policy_names().into_iter().map(DirEntry::file).collect()),
            Route::Lease if e.leases().kind(caps_first(path)) == Some(true) => {
                Ok(e.leases().list(caps_first(path)))
            }
            Route::Mounts => Ok(e
                .mount_entries()
                .into_iter()
                .map(|m| DirEntry::file(m.path))
                .collect()),
            _ => Err(Error::new(
                ErrorKind::NotADirectory,
                format!("sys/{path}: not a folder"),
            )),
        }
    }

    fn read_in(&self, e: &dyn Control, caller: &Caller, path: &str) -> Result<SecretBytes> {
        let (route, caps) = self.route(e, path)?;
        let text = match route {
            Route::Help => self.router.help(HELP_INTRO, ""),
            Route::Health => health_json(e, caller),
            Route::SelfErrors => e.own_refusals(caller.uid),
            Route::MountsTable => e.mounts_table_text(),
            Route::Mount => {
                let m = e.mount_entry(caps[0]).map_err(|e| in_sys(path, e))?;
                format!(
                    "path = {:?}\ntype = {:?}\ndescription = {:?}\n",
                    format!("{}/", m.path),
                    m.kind,
                    m.description
                )
            }
            Route::Lease => {
                let rec = e.leases().get(caps[0])?;
                rec.describe(e.leases().now_ms())
            }
            Route::Policy => e.policy_text(caps[0]).map_err(|e| in_sys(path, e))?,
            Route::AuditHash => {
                let h = self
                    .hashes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get(&caller.uid)
                    .cloned()
                    .ok_or_else(|| Error::not_found("sys/audit-hash: write a value to it first"))?;
                format!("{h}\n")
            }
            Route::Seal | Route::Unseal | Route::Rotate | Route::RevokeUid => {
                return Err(Error::denied(format!("sys/{path} is write-only")))
            }
            Route::Root | Route::Mounts | Route::Leases | Route::Policies | Route::SelfDir => {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("sys/{path}: is a folder"),
                ))
            }
        };
        Ok(SecretBytes::from(text))
    }

    /// Check that `sys/path` may be written, and say how its writes apply: documents
    /// (policies, mount specs, audit-hash values) are buffered and applied whole at close (a
    /// document cut at a write(2) boundary must never go live; mount specs are checked as bytes
    /// arrive, `check_partial`); every other control file acts on each write.
    fn create_in(&self, e: &dyn Control, path: &str) -> Result<Writes> {
        self.may_create(e, path)?;
        Ok(match self.router.route(path).map(|(r, _)| r) {
            Some(Route::Policy | Route::Mount | Route::AuditHash) => Writes::Buffered,
            _ if path.starts_with("policies/") || path.starts_with("mounts/") => Writes::Buffered,
            _ => Writes::EachWrite,
        })
    }

    fn may_create(&self, e: &dyn Control, path: &str) -> Result<()> {
        match self.route(e, path) {
            Ok((Route::Seal | Route::Unseal | Route::Rotate | Route::RevokeUid, _)) => Ok(()),
            Ok((Route::Policy | Route::AuditHash, _)) => Ok(()),
            Ok((Route::Lease, caps)) => match e.leases().kind(caps[0]) {
                Some(false) => Ok(()),
                Some(true) => Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("sys/{path}: is a folder"),
                )),
                None => Err(Error::not_permitted(format!(
                    "sys/{path}: leases are made by reading credentials, not by writing here"
                ))),
            },
            Ok((Route::Mount, caps)) => match e.mount_entry(caps[0]) {
                Ok(_) => Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("sys/{path}: mount path in use"),
                )),
                Err(_) => normalize_path(caps[0]).map(|_| ()),
            },
            Ok(_) => Err(Error::not_permitted(format!(
                "sys/{path} cannot be written"
            ))),
            Err(_) if path.starts_with("policies/") && !e.is_sealed() => {
                validate_name(&path["policies/".len()..])
            }
            Err(_) => match path.strip_prefix("mounts/") {
                Some(name) if !e.is_sealed() => normalize_path(name).map(|_| ()),
                _ => Err(Error::not_permitted(format!(
                    "sys/{path} cannot be created"
                ))),
            },
        }
    }

    /// Check a buffered control file's content so far (see `Backend::check_partial`).
    fn check_partial_in(&self, path: &str, data: &[u8]) -> Result<()> {
        if let Some(name) = path.strip_prefix("mounts/") {
            if !name.contains('/') {
                return check_mount_spec_prefix(data);
            }
        }
        // Policy documents (TOML or JSON), as `put_policy` will check them at close.
        match path.strip_prefix("policies/") {
            Some(name) if !name.contains('/') => {
                super::partial::check_document(data, &format!("policy {name}"), |text| {
                    crate::policy::PolicyDoc::parse(name, text).map(|_| ())
                })
            }
            _ => Ok(()),
        }
    }

    /// The exchange of `sys/audit-hash` (opened read-write): the HMAC of `input`, which is also
    /// the last hash asked by `uid`.
    fn exchange_in(
        &self,
        e: &dyn Control,
        uid: u32,
        path: &str,
        input: SecretBytes,
    ) -> Result<SecretBytes> {
        match self.route(e, path)? {
            (Route::AuditHash, _) => {
                let h = e.audit_hash(input.expose())?;
                let out = SecretBytes::from(format!("{h}\n"));
                self.hashes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(uid, h);
                Ok(out)
            }
            _ => Err(Error::not_permitted(format!(
                "sys/{path} is not an exchange file"
            ))),
        }
    }

    fn write_in(
        &self,
        e: &dyn Control,
        caller_uid: u32,
        path: &str,
        data: SecretBytes,
    ) -> Result<()> {
        if let Some(name) = path.strip_prefix("mounts/") {
            if !name.contains('/') && !e.is_sealed() {
                let spec = parse_mount_spec(&data)?;
                return e.mount(name, spec.kind.trim(), &spec.description);
            }
        }
        if let Some(name) = path.strip_prefix("policies/") {
            if !e.is_sealed() {
                validate_name(name)?;
                let text = data
                    .text()
                    .ok_or_else(|| Error::invalid("policy is not UTF-8 text"))?;
                return e.put_policy(name, text);
            }
        }
        let (route, caps) = self.route(e, path)?;
        match route {
            Route::AuditHash => {
                let h = e.audit_hash(data.expose())?;
                self.hashes
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(caller_uid, h);
                Ok(())
            }
            Route::Lease => {
                let text = data
                    .text()
                    .ok_or_else(|| Error::invalid("renewal increment is not text"))?;
                let inc = if text.trim().is_empty() {
                    None
                } else {
                    Some(crate::lease::parse_duration(text).ok_or_else(|| {
                        Error::invalid(format!(
                            "renewal increment {:?}: write seconds (3600) or a duration (1h, 30m)",
                            text.trim()
                        ))
                    })?)
                };
                e.leases().renew(caps[0], inc).map(|_| ())
            }
            Route::RevokeUid => {
                let text = data.text().unwrap_or("").trim().to_string();
                let uid: u32 = text
                    .parse()
                    .map_err(|_| Error::invalid(format!("revoke-uid: {text:?} is not a uid")))?;
                e.leases().revoke_uid(uid).map(|_| ())
            }
            Route::Seal => {
                e.seal();
                Ok(())
            }
            Route::Unseal => {
                let pass = data
                    .text()
                    .ok_or_else(|| Error::invalid("passphrase is not UTF-8"))?;
                e.unseal(pass.as_bytes()).map_err(Error::from)
            }
            Route::Rotate => e.rotate().map(|_| ()),
            _ => Err(Error::not_permitted(format!(
                "sys/{path} cannot be written"
            ))),
        }
    }

    fn delete_in(&self, e: &dyn Control, path: &str) -> Result<()> {
        match self.route(e, path)? {
            (Route::Mount, caps) => e.unmount(caps[0]).map_err(|e| in_sys(path, e)),
            (Route::Policy, caps) => e.delete_policy(caps[0]).map_err(|e| in_sys(path, e)),
            (Route::Lease, caps) => match e.leases().kind(caps[0]) {
                Some(true) => Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("sys/{path}: is a folder (rm -r revokes everything under it)"),
                )),
                _ => e.leases().revoke(caps[0]),
            },
            _ => Err(Error::not_permitted(format!(
                "sys/{path} cannot be removed"
            ))),
        }
    }

    /// `rmdir` of a lease folder (the last step of `rm -r`): revoke everything under it.
    fn rmdir_in(&self, e: &dyn Control, path: &str) -> Result<()> {
        match self.route(e, path)? {
            (Route::Lease, caps) => {
                if e.leases().kind(caps[0]) == Some(false) {
                    return Err(Error::new(
                        ErrorKind::NotADirectory,
                        format!("sys/{path}: is a lease, not a folder"),
                    ));
                }
                e.leases().revoke_prefix(&format!("{}/", caps[0]))?;
                e.leases().forget_folder(caps[0]);
                Ok(())
            }
            _ => Err(Error::not_permitted(format!(
                "sys/{path}: folders under sys/ are fixed"
            ))),
        }
    }

    /// `touch`: on a lease, renew it by its default increment; elsewhere nothing.
    fn touch_in(&self, e: &dyn Control, path: &str) -> Result<()> {
        match self.route(e, path)? {
            (Route::Lease, caps) if e.leases().kind(caps[0]) == Some(false) => {
                e.leases().renew(caps[0], None).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    fn rename_in(&self, e: &dyn Control, from: &str, to: &str) -> Result<()> {
        match (self.route(e, from)?, to.strip_prefix("mounts/")) {
            ((Route::Mount, caps), Some(new)) if !new.contains('/') => e.remount(caps[0], new),
            _ => Err(Error::not_permitted(format!(
                "sys/{from} cannot be renamed to sys/{to}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests;
