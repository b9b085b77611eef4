//! One generic dynamic-secret backend, `Dynamic<U>`, over a small `Upstream` trait that each
//! dynamic-secret engine implements (`aws`, `postgresql`; the next SQL and PKI engines too).
//!
//! The common layout: `config/<secret>` (the engine's write-only upstream settings),
//! `config/lease` (TTLs), `roles/NAME` (role documents, stored as written) and
//! `creds/NAME[.env|.process]` (a credential minted per open, in one of the views the engine
//! offers: JSON, dotenv, or the AWS `credential_process` JSON).
//!
//! Owns: routing those paths; the whole `Backend` impl on them (stat/list/read/create/write/
//! delete/check_partial/mints, modes, errnos, messages); role-name checks; the storage and
//! parsing of the lease settings; the `key=value`/JSON field parser for config files. The
//! engine supplies, through `Upstream`, what differs: its kind and help, its settings file,
//! checking a role document, minting, revoking, renewing and recovering credentials.
//! Must never: talk to an upstream itself, or return the write-only settings.
//!
//! # Adding a dynamic-secret backend
//!
//! 1. Make a folder `backends/NAME/` with `mod.rs` holding a struct that keeps the mount's
//!    `View` and `Services` (and its upstream client), and a client module beside it.
//! 2. `impl Upstream for It`: `KIND`, `SECRET` (the settings file's path and the refusal a read
//!    of it gets), `VIEWS` (the views `creds/NAME` offers), `HELP` (the intro, the lines of the
//!    settings file, `roles/NAME` and each view, the closing notes), then `write_config`
//!    and `check_role` (with their `_partial` forms, see `backends::partial`), `issue` (mint
//!    under a lease from `lease_cfg(&view)`, name it with `ctx.issued(id)`), `revoke`, and
//!    `renew`/`recover` if upstream needs them.
//! 3. Add it to `backends::KNOWN_TYPES` and `backends::build`, wrapped in `Dynamic::new`.
//!
//! The layout's paths are declared once, in `Dynamic::paths` (pattern, route, operations, help
//! line); `.help` and the fixed listings are derived from that table and `Upstream::HELP`.

mod fields;

use super::{partial, validate_name, Services};
use crate::backend::{Backend, Ctx, DirEntry, Node, Writes};
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::{parse_duration, LeaseRecord};
use crate::route::{Ops, PathDecl, Router};
use crate::secret::SecretBytes;
pub(crate) use fields::parse_fields;
use serde::{Deserialize, Serialize};

const DEFAULT_TTL: u64 = 3600;
const DEFAULT_MAX_TTL: u64 = 24 * 3600;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Config,
    ConfigSecret,
    ConfigLease,
    Roles,
    Role,
    Creds,
    Cred,
}

/// The lease settings in `config/lease`.
#[derive(Serialize, Deserialize, Clone, Copy)]
pub(crate) struct LeaseCfg {
    pub ttl: u64,
    pub max_ttl: u64,
}

/// The backend's write-only settings file.
#[derive(Clone, Copy)]
pub(crate) struct SecretConfig {
    /// Its path, `config/<name>`.
    pub path: &'static str,
    /// The message a read is refused with (EACCES).
    pub read_refusal: &'static str,
}

/// The views of one minted credential: `creds/NAME` (JSON), `creds/NAME.env` (dotenv lines,
/// no `export`: for `docker --env-file` and systemd `EnvironmentFile=`), `creds/NAME.process`
/// (the AWS `credential_process` JSON). A backend lists the views it offers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum CredView {
    Json,
    Env,
    Process,
}

impl CredView {
    /// How `.help` names the view's file.
    pub(crate) fn shown(self) -> &'static str {
        match self {
            CredView::Json => "creds/NAME",
            CredView::Env => "creds/NAME.env",
            CredView::Process => "creds/NAME.process",
        }
    }

    /// The file-name suffix of the view (`""` for the plain JSON).
    pub(crate) fn suffix(self) -> &'static str {
        match self {
            CredView::Json => "",
            CredView::Env => ".env",
            CredView::Process => ".process",
        }
    }
}

/// Suffixes no role name may end in (they name the views of `creds/NAME`).
const RESERVED_SUFFIXES: [&str; 2] = [".env", ".process"];

/// What a dynamic-secret backend adds to the common layout.
pub(crate) trait Upstream: Send + Sync + 'static {
    /// The backend type (`"aws"`), as `sys/mounts` names it.
    const KIND: &'static str;
    /// The write-only settings file.
    const SECRET: SecretConfig;
    /// The views `creds/NAME` offers, the plain JSON first.
    const VIEWS: &'static [CredView];
    /// What `MOUNT/.help` says beyond the common layout.
    const HELP: HelpText;
    /// Check and store a write to the write-only settings file.
    fn write_config(&self, data: &SecretBytes) -> Result<()>;
    /// Check role document `roles/name` before it is stored (its size is already checked).
    fn check_role(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Check the settings file's content so far (see `Backend::check_partial`).
    fn check_config_partial(&self, data: &[u8]) -> Result<()>;
    /// Check role document `roles/name` so far (see `Backend::check_partial`).
    fn check_role_partial(&self, name: &str, data: &[u8]) -> Result<()>;
    /// Mint one credential for role `role`, rendered as `view` (one the backend offers).
    fn issue(&self, ctx: &Ctx<'_>, role: &str, view: CredView) -> Result<SecretBytes>;
    /// Revoke what `lease` holds upstream (see `Backend::revoke`).
    fn revoke(&self, lease: &LeaseRecord) -> Result<()>;
    /// Extend upstream what `lease` holds (see `Backend::renew`). Default: nothing expires.
    fn renew(&self, lease: &LeaseRecord) -> Result<()> {
        let _ = lease;
        Ok(())
    }
    /// Roll back upstream what was begun and never completed (see `Backend::recover`).
    fn recover(&self) -> Result<()> {
        Ok(())
    }
}

/// The parts of `MOUNT/.help` a dynamic-secret backend writes; the rest (the layout, the
/// `config/lease` line) comes from the common table. Each help may run over several lines.
#[derive(Clone, Copy)]
pub(crate) struct HelpText {
    /// What the backend is: the first paragraph.
    pub intro: &'static str,
    /// The settings file's help.
    pub secret: &'static str,
    /// The help of `roles/NAME` (what a role document is).
    pub role: &'static str,
    /// The help of each credential view, in the order of `Upstream::VIEWS`.
    pub creds: &'static [&'static str],
    /// The closing paragraph (revocation, renewal).
    pub notes: &'static str,
}

const LEASE_HELP: &str = "read/write: ttl=1h and max_ttl=24h (seconds or durations; JSON too)";

/// A dynamic-secret backend: the common layout over upstream `U`.
pub(crate) struct Dynamic<U: Upstream> {
    view: View,
    services: Services,
    router: Router<Route>,
    up: U,
}

/// Test hook: `NOMADFS_FAILPOINT=<name>` makes the daemon exit abruptly at that point, as a
/// crash would (the crash-recovery tests use it). Read on each call; absent in normal runs.
pub(crate) fn failpoint(name: &str) {
    if std::env::var_os("NOMADFS_FAILPOINT").is_some_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint hit: exiting abruptly");
        std::process::abort();
    }
}

/// The lease settings of a mount (the defaults until `config/lease` is written).
pub(crate) fn lease_cfg(view: &View) -> Result<LeaseCfg> {
    match view.get("config/lease")? {
        None => Ok(LeaseCfg {
            ttl: DEFAULT_TTL,
            max_ttl: DEFAULT_MAX_TTL,
        }),
        Some(raw) => serde_json::from_slice(raw.expose())
            .map_err(|e| Error::new(ErrorKind::Integrity, format!("config/lease: {e}"))),
    }
}

/// The storage key of role `name`, after checking the name.
pub(crate) fn role_key(name: &str) -> Result<String> {
    validate_name(name)?;
    if let Some(sfx) = RESERVED_SUFFIXES.iter().find(|s| name.ends_with(**s)) {
        return Err(Error::invalid(format!(
            "role name {name:?}: names ending in {sfx} are reserved for creds/NAME{sfx}"
        )));
    }
    Ok(format!("roles/{name}"))
}

fn not_dir(path: &str) -> Error {
    Error::new(ErrorKind::NotADirectory, format!("{path}: not a folder"))
}

impl<U: Upstream> Dynamic<U> {
    pub(crate) fn new(view: View, services: &Services, up: U) -> Self {
        Self {
            view,
            services: services.clone(),
            router: Router::declare(&Self::paths()),
            up,
        }
    }

    /// The declared paths of the layout: routes, operations, help lines (`.help` and the fixed
    /// listings of the root and `config/` are derived from them). `creds/NAME` is declared once
    /// per view the backend offers (the first declaration routes; all give help).
    fn paths() -> Vec<PathDecl<Route>> {
        let mut paths = vec![
            PathDecl::new("", Route::Root, Ops::LIST, ""),
            PathDecl::new("config", Route::Config, Ops::LIST, ""),
            PathDecl::new(
                U::SECRET.path,
                Route::ConfigSecret,
                Ops::WRITE,
                U::HELP.secret,
            ),
            PathDecl::new(
                "config/lease",
                Route::ConfigLease,
                Ops::READ | Ops::WRITE,
                LEASE_HELP,
            ),
            PathDecl::new("roles", Route::Roles, Ops::LIST, ""),
            PathDecl::new(
                "roles/{name}",
                Route::Role,
                Ops::READ | Ops::WRITE | Ops::DELETE,
                U::HELP.role,
            ),
            PathDecl::new("creds", Route::Creds, Ops::LIST, ""),
        ];
        for (i, view) in U::VIEWS.iter().enumerate() {
            let help = U::HELP.creds.get(i).copied().unwrap_or("");
            paths.push(
                PathDecl::new("creds/{name}", Route::Cred, Ops::READ, help).shown(view.shown()),
            );
        }
        paths
    }

    /// The role and view a `creds/` file name names (`deploy.env` → `deploy`, Env); a suffix
    /// the backend does not offer is part of the (then invalid) role name.
    fn cred_view<'n>(&self, name: &'n str) -> (&'n str, CredView) {
        U::VIEWS
            .iter()
            .filter(|v| **v != CredView::Json)
            .find_map(|v| name.strip_suffix(v.suffix()).map(|r| (r, *v)))
            .unwrap_or((name, CredView::Json))
    }

    fn route<'p>(&self, path: &'p str) -> Result<(Route, Vec<&'p str>)> {
        self.router
            .route(path)
            .ok_or_else(|| Error::not_found(path))
    }

    /// One `config/lease` field: whether it sets the ttl (else max_ttl), and its seconds.
    fn lease_field(k: &str, v: &str) -> Result<(bool, u64)> {
        let secs = parse_duration(v).filter(|s| *s > 0).ok_or_else(|| {
            Error::invalid(format!("config/lease: {k} = {v:?} is not a duration"))
        })?;
        match k {
            "ttl" | "lease" | "default_ttl" => Ok((true, secs)),
            "max_ttl" | "lease_max" => Ok((false, secs)),
            other => Err(Error::invalid(format!(
                "config/lease: unknown key {other:?} (ttl, max_ttl)"
            ))),
        }
    }

    /// The lease settings a write of `data` to `config/lease` makes (nothing is stored).
    fn lease_cfg_from(&self, data: &SecretBytes) -> Result<LeaseCfg> {
        let mut cfg = lease_cfg(&self.view)?;
        for (k, v) in parse_fields(data, "config/lease")? {
            match Self::lease_field(&k, &v)? {
                (true, secs) => cfg.ttl = secs,
                (false, secs) => cfg.max_ttl = secs,
            }
        }
        if cfg.ttl > cfg.max_ttl {
            return Err(Error::invalid("config/lease: ttl is larger than max_ttl"));
        }
        Ok(cfg)
    }

    fn write_lease_cfg(&self, data: &SecretBytes) -> Result<()> {
        let cfg = self.lease_cfg_from(data)?;
        let raw = serde_json::to_vec(&cfg).map_err(|e| Error::io(e.to_string()))?;
        self.view.put("config/lease", &raw)
    }

    /// Check a buffered write so far (see `Backend::check_partial`): the settings file by the
    /// backend, `config/lease` line by line (or whole, as JSON), role documents by the backend.
    fn check_partial_at(&self, path: &str, data: &[u8]) -> Result<()> {
        match self.router.route(path) {
            Some((Route::ConfigSecret, _)) => self.up.check_config_partial(data),
            Some((Route::ConfigLease, _)) => partial::check_fields(
                data,
                "config/lease",
                |k, v, _| Self::lease_field(k, v).map(|_| ()),
                |text| {
                    self.lease_cfg_from(&SecretBytes::from_slice(text.as_bytes()))
                        .map(|_| ())
                },
            ),
            Some((Route::Role, caps)) => match caps.first() {
                Some(name) => self.up.check_role_partial(name, data),
                None => Ok(()),
            },
            _ => Ok(()),
        }
    }

    fn write_role(&self, name: &str, data: &SecretBytes) -> Result<()> {
        let key = role_key(name)?;
        if data.len() > self.services.limits.max_value_size {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("roles/{name}: too large"),
            ));
        }
        self.up.check_role(name, data.expose())?;
        self.view.put(&key, data.expose())
    }
}

impl<U: Upstream> Backend for Dynamic<U> {
    fn kind(&self) -> &'static str {
        U::KIND
    }

    fn help(&self) -> String {
        self.router.help(U::HELP.intro, U::HELP.notes)
    }

    fn stat(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Node> {
        let (route, caps) = self.route(path)?;
        Ok(match route {
            Route::Root | Route::Config | Route::Roles | Route::Creds => Node::dir(),
            Route::ConfigSecret => Node::write_only_document(),
            Route::ConfigLease => Node::file(self.view.size("config/lease")?.unwrap_or(0)),
            Route::Role => match self.view.size(&role_key(caps[0])?)? {
                Some(n) => Node::file(n),
                None => return Err(Error::not_found(path)),
            },
            Route::Cred => {
                let (role, _) = self.cred_view(caps[0]);
                match self.view.size(&role_key(role)?)? {
                    Some(_) => Node::generated(0o400),
                    None => return Err(Error::not_found(path)),
                }
            }
        })
    }

    fn list(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Vec<DirEntry>> {
        let (route, _) = self.route(path)?;
        let roles = || -> Result<Vec<String>> {
            Ok(self
                .view
                .list("roles/")?
                .into_iter()
                .filter_map(|p| p.strip_prefix("roles/").map(str::to_string))
                .collect())
        };
        match route {
            // The fixed entries, from the table.
            Route::Root => Ok(self.router.literal_children("")),
            Route::Config => Ok(self.router.literal_children("config")),
            Route::Roles => Ok(roles()?.into_iter().map(DirEntry::file).collect()),
            Route::Creds => Ok(roles()?
                .into_iter()
                .flat_map(|r| {
                    U::VIEWS
                        .iter()
                        .map(move |v| DirEntry::file(format!("{r}{}", v.suffix())))
                })
                .collect()),
            _ => Err(not_dir(path)),
        }
    }

    /// Whether reading `path` mints a credential (`creds/NAME` and its views).
    fn mints(&self, path: &str) -> bool {
        matches!(self.route(path), Ok((Route::Cred, _)))
    }

    fn read(&self, ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes> {
        let (route, caps) = self.route(path)?;
        match route {
            Route::ConfigSecret => Err(Error::denied(U::SECRET.read_refusal)),
            Route::ConfigLease => {
                let cfg = lease_cfg(&self.view)?;
                Ok(SecretBytes::from(format!(
                    "ttl = {}\nmax_ttl = {}\n",
                    cfg.ttl, cfg.max_ttl
                )))
            }
            Route::Role => self
                .view
                .get(&role_key(caps[0])?)?
                .ok_or_else(|| Error::not_found(path)),
            Route::Cred => {
                // Past the caller's lease bound nothing is made upstream (EDQUOT).
                self.services
                    .leases
                    .check_quota(ctx.caller.uid, ctx.lease_limit)?;
                let (role, view) = self.cred_view(caps[0]);
                self.up.issue(ctx, role, view)
            }
            Route::Root | Route::Config | Route::Roles | Route::Creds => Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a folder"),
            )),
        }
    }

    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Writes> {
        match self.route(path)? {
            (Route::ConfigSecret | Route::ConfigLease, _) => Ok(Writes::Buffered),
            (Route::Role, caps) => role_key(caps[0]).map(|_| Writes::Buffered),
            (Route::Cred, _) => Err(Error::denied(format!(
                "{path}: credentials are read, not written"
            ))),
            _ => Err(Error::not_permitted(format!("{path} cannot be written"))),
        }
    }

    fn write(&self, _ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        match self.route(path)? {
            (Route::ConfigSecret, _) => self.up.write_config(&data),
            (Route::ConfigLease, _) => self.write_lease_cfg(&data),
            (Route::Role, caps) => self.write_role(caps[0], &data),
            (Route::Cred, _) => Err(Error::denied(format!(
                "{path}: credentials are read, not written"
            ))),
            _ => Err(Error::not_permitted(format!("{path} cannot be written"))),
        }
    }

    fn delete(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        match self.route(path)? {
            (Route::Role, caps) => {
                let key = role_key(caps[0])?;
                if self.view.size(&key)?.is_none() {
                    return Err(Error::not_found(path));
                }
                self.view.delete(&key)
            }
            _ => Err(Error::not_permitted(format!("{path} cannot be removed"))),
        }
    }

    fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        self.check_partial_at(path, data)
    }

    fn revoke(&self, lease: &LeaseRecord) -> Result<()> {
        self.up.revoke(lease)
    }

    fn renew(&self, lease: &LeaseRecord) -> Result<()> {
        self.up.renew(lease)
    }

    fn recover(&self) -> Result<()> {
        self.up.recover()
    }
}

#[cfg(test)]
mod tests;
