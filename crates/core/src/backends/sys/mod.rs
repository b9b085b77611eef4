//! `sys/`: the control plane as files — health, seal/unseal, key rotation, the mount table.
//!
//! Owns: the paths under `sys/` and the text formats of its files. It acts through the
//! `Engine` (which owns the state). Must never: echo a passphrase, or show anything but `health`,
//! `unseal`, `seal` and help while sealed.

mod mount_spec;
mod paths;

use crate::backend::{DirEntry, Node};
use crate::backends::validate_name;
use crate::caller::Caller;
use crate::engine::Engine;
use crate::error::{Error, ErrorKind, Result};
use crate::mounts::normalize_path;
use crate::route::Router;
use crate::secret::SecretBytes;
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

/// The lease id a `sys/` path names (`leases/ID`).
pub(crate) fn lease_of(rest: &str) -> Option<&str> {
    rest.strip_prefix("leases/")
}

/// Paths under `sys/` anyone who can enter may read (no `sudo`): health, help, and the
/// caller's own refusals.
pub(crate) fn is_open_to_all(rest: &str) -> bool {
    matches!(rest, "" | ".help" | "health" | "self" | "self/errors")
}

pub(crate) struct Sys {
    router: Router<Route>,
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
    pub(crate) fn new() -> Self {
        Self {
            router: Router::declare(PATHS),
            hashes: Default::default(),
        }
    }

    fn route<'p>(&self, e: &Engine, path: &'p str) -> Result<(Route, Vec<&'p str>)> {
        let (route, caps) = self
            .router
            .route(path)
            .ok_or_else(|| Error::not_found(&format!("sys/{path}")))?;
        if e.is_sealed() && !open_while_sealed(route) {
            return Err(Error::not_found(&format!("sys/{path}")));
        }
        Ok((route, caps))
    }

    pub(crate) fn stat(&self, e: &Engine, caller: &Caller, path: &str) -> Result<Node> {
        let (route, caps) = self.route(e, path)?;
        Ok(match route {
            Route::Root | Route::Mounts => Node::dir(),
            // Generated text stats its true size (cheap to make; nothing secret in it).
            Route::Help | Route::Health | Route::MountsTable | Route::SelfErrors => {
                Node::generated_text(0o400, self.read(e, caller, path)?.len())
            }
            Route::SelfDir => Node::dir(),
            Route::Seal | Route::Unseal | Route::Rotate | Route::RevokeUid => Node::write_only(),
            Route::Policies => Node::dir(),
            Route::Policy => {
                e.policy_text(caps[0])?;
                Node::file(0)
            }
            // Read-write: an exchange (the hash of what was written, read in the same open).
            // Else buffered (not dynamic): the value is hashed whole at close; reads use direct
            // I/O, so the size 0 does not cut them short.
            Route::AuditHash => Node::exchange_or_buffered(),
            Route::Mount => {
                e.mount_entry(caps[0])?;
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

    pub(crate) fn list(&self, e: &Engine, path: &str) -> Result<Vec<DirEntry>> {
        let (route, _) = self.route(e, path)?;
        match route {
            // The fixed entries, from the table; while sealed only those that answer.
            Route::Root => Ok(self
                .router
                .literal_children("")
                .into_iter()
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
            Route::Policies => Ok(e.policies().names().map(DirEntry::file).collect()),
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

    pub(crate) fn read(&self, e: &Engine, caller: &Caller, path: &str) -> Result<SecretBytes> {
        let (route, caps) = self.route(e, path)?;
        let text = match route {
            Route::Help => self.router.help(HELP_INTRO, ""),
            Route::Health => e.health_json(caller),
            Route::SelfErrors => e.own_refusals(caller.uid),
            Route::MountsTable => e.mounts_table_text(),
            Route::Mount => {
                let m = e.mount_entry(caps[0])?;
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
            Route::Policy => e.policy_text(caps[0])?,
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
    pub(crate) fn create_node(&self, e: &Engine, path: &str) -> Result<Node> {
        self.create(e, path)?;
        Ok(match self.router.route(path).map(|(r, _)| r) {
            Some(Route::Policy | Route::Mount | Route::AuditHash) => Node::file(0),
            _ if path.starts_with("policies/") || path.starts_with("mounts/") => Node::file(0),
            _ => Node::write_only(),
        })
    }

    fn create(&self, e: &Engine, path: &str) -> Result<()> {
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

    /// Check a buffered control file's content so far (see `Engine::check_partial`).
    pub(crate) fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
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
    pub(crate) fn exchange(
        &self,
        e: &Engine,
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

    pub(crate) fn write(
        &self,
        e: &Engine,
        caller_uid: u32,
        path: &str,
        data: SecretBytes,
    ) -> Result<()> {
        if let Some(name) = path.strip_prefix("mounts/") {
            if !name.contains('/') && !e.is_sealed() {
                let spec = parse_mount_spec(&data)?;
                return e
                    .mount(name, spec.kind.trim(), &spec.description)
                    .map(|_| ());
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

    pub(crate) fn delete(&self, e: &Engine, path: &str) -> Result<()> {
        match self.route(e, path)? {
            (Route::Mount, caps) => e.unmount(caps[0]),
            (Route::Policy, caps) => e.delete_policy(caps[0]),
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
    pub(crate) fn rmdir(&self, e: &Engine, path: &str) -> Result<()> {
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
    pub(crate) fn touch(&self, e: &Engine, path: &str) -> Result<()> {
        match self.route(e, path)? {
            (Route::Lease, caps) if e.leases().kind(caps[0]) == Some(false) => {
                e.leases().renew(caps[0], None).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn rename(&self, e: &Engine, from: &str, to: &str) -> Result<()> {
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
