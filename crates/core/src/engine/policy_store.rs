//! The policy store: policies from the config plus the live ones stored under `core/policies/`
//! (`sys/policies/NAME`), compiled, and swapped whole on every change.
//!
//! Owns: loading, validating, storing and deleting live policies. Must never: let a bad policy
//! replace a good one (a refused document leaves the old set in force).

use super::*;

pub(super) const POLICY_PREFIX: &str = "core/policies/";

impl Engine {
    /// Set the policies from the config and the admin uids (the daemon passes its own uid
    /// when the config names none). Live policies from `sys/policies/` join them at unseal.
    pub fn set_policies(&self, docs: Vec<PolicyDoc>, admins: Vec<u32>) -> Result<()> {
        let resolver = EtcFiles::system().unwrap_or_else(|_| EtcFiles::parse("", ""));
        let compiled = Policies::new(docs.clone(), admins.clone(), &resolver)?;
        *self
            .config_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = (docs, admins);
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = compiled;
        self.changed("");
        if !self.is_sealed() {
            self.reload_policies()?;
        }
        Ok(())
    }

    /// True when every uid in `uids` is an admin (one unfiltered view for all of them).
    pub fn all_admins(&self, uids: &[u32]) -> bool {
        let p = self.policies.read().unwrap_or_else(|p| p.into_inner());
        uids.iter().all(|&uid| p.is_admin_uid(uid))
    }

    pub fn policies(&self) -> Policies {
        self.policies
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Rebuild the policy set: config policies plus the live ones stored under
    /// `core/policies/` (a live policy of the same name replaces the config's).
    pub(crate) fn reload_policies(&self) -> Result<()> {
        let (docs, admins) = self
            .config_policies
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let resolver = EtcFiles::system().unwrap_or_else(|_| EtcFiles::parse("", ""));
        let mut set = Policies::new(docs, admins, &resolver)?;
        for key in self.barrier.list(POLICY_PREFIX)? {
            let name = &key[POLICY_PREFIX.len()..];
            let Some(raw) = self.barrier.get(&key)? else {
                continue;
            };
            let text = String::from_utf8_lossy(raw.expose()).to_string();
            match PolicyDoc::parse(name, &text).and_then(|d| set.with_upserted(d, &resolver)) {
                Ok(s) => set = s,
                Err(e) => tracing::error!(policy = name, "stored policy skipped: {}", e.message),
            }
        }
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = set;
        self.changed("");
        Ok(())
    }

    /// Re-read the live policies now (another daemon sharing the store changed one: the
    /// cluster watch calls this); the kernel's cached entries are dropped (`changed("")`).
    /// Sealed: nothing to do (unseal loads them).
    pub fn invalidate_policies(&self) {
        if self.is_sealed() {
            return;
        }
        if let Err(e) = self.reload_policies() {
            tracing::warn!("re-reading the policies failed: {}", e.message);
        }
    }

    /// Store and apply a live policy (`sys/policies/NAME`); a bad one is refused, the old stays.
    pub(crate) fn put_policy(&self, name: &str, text: &str) -> Result<()> {
        let resolver = EtcFiles::system().unwrap_or_else(|_| EtcFiles::parse("", ""));
        let doc = PolicyDoc::parse(name, text)?;
        let set = self.policies().with_upserted(doc, &resolver)?;
        self.barrier
            .put(&format!("{POLICY_PREFIX}{name}"), text.as_bytes())?;
        *self.policies.write().unwrap_or_else(|p| p.into_inner()) = set;
        self.changed("");
        tracing::info!(policy = name, "policy written");
        Ok(())
    }

    pub(crate) fn policy_text(&self, name: &str) -> Result<String> {
        if let Some(raw) = self.barrier.get(&format!("{POLICY_PREFIX}{name}"))? {
            return Ok(String::from_utf8_lossy(raw.expose()).to_string());
        }
        let doc = self
            .policies()
            .get(name)
            .cloned()
            .ok_or_else(|| Error::not_found(&format!("policy {name}")))?;
        toml::to_string(&doc).map_err(|e| Error::io(e.to_string()))
    }

    pub(crate) fn delete_policy(&self, name: &str) -> Result<()> {
        let key = format!("{POLICY_PREFIX}{name}");
        if self.barrier.size(&key)?.is_none() {
            return Err(if self.policies().get(name).is_some() {
                Error::not_permitted(format!(
                    "policy {name} comes from mounts.toml; edit it there"
                ))
            } else {
                Error::not_found(&format!("policy {name}"))
            });
        }
        self.barrier.delete(&key)?;
        self.reload_policies()
    }
}
