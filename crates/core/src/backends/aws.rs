//! The `aws` backend: dynamic IAM users, one per `cat creds/NAME`, each under a lease.
//!
//! Owns: its view's layout — `config/root` (root credentials, JSON), `config/lease` (TTLs),
//! `roles/NAME` (IAM policy documents), `wal/<uuid>` (intent records for IAM users being made) —
//! and the order of side effects: intent logged → IAM user made → lease stored → intent cleared.
//! At unseal, `recover` deletes every user whose intent was never completed, so a crash between
//! "user created" and "lease stored" leaves no orphan. A creation that fails while IAM cannot
//! say what it made (timeout, outage) becomes a cleanup lease (`LeaseManager::issue_cleanup`),
//! retried with backoff until IAM answers; the caller gets EIO and no credential. Revocation
//! uses what the lease recorded (user, access key id, policy name): 3 IAM calls.
//! Must never: return the root keys (config/root is write-only), create anything on `stat` or
//! lookup, or log a credential.

use super::aws_iam::{user_name, AwsIam, IamApi, RootCredentials};
use super::{validate_name, Services};
use crate::backend::{Backend, Ctx, DirEntry, Node, NodeKind};
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::{parse_duration, LeaseManager, LeaseRecord, NewLease};
use crate::route::Router;
use crate::secret::SecretBytes;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Config,
    ConfigRoot,
    ConfigLease,
    Roles,
    Role,
    Creds,
    Cred,
}

const HELP: &str = "\
aws backend: dynamic IAM credentials, each under a lease.

  config/root     write-only: access_key=..., secret_key=..., optional region=..., endpoint=...
                  lines (or the same as JSON). Reading it fails (EACCES).
  config/lease    read/write: ttl=1h and max_ttl=24h (seconds or durations; JSON too)
  roles/NAME      an IAM policy document (JSON); rm deletes the role
  creds/NAME      each open creates an IAM user with the role's policy and one access key and
                  prints JSON: lease_id, lease_duration, renewable, access_key, secret_key
  creds/NAME.env  the same as AWS_ACCESS_KEY_ID=... lines plus NOMADFS_LEASE_ID=...

Revoke with `rm sys/leases/<lease_id>`; renew with `touch` or `echo 1h >` on it.
";

const DEFAULT_TTL: u64 = 3600;
const DEFAULT_MAX_TTL: u64 = 24 * 3600;
const POLICY_NAME: &str = "nomadfs";

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredRoot {
    access_key: String,
    secret_key: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    endpoint: Option<String>,
}

impl Drop for StoredRoot {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.secret_key.zeroize();
    }
}

#[derive(Serialize, Deserialize, Clone, Copy)]
struct LeaseCfg {
    ttl: u64,
    max_ttl: u64,
}

#[derive(Serialize, Deserialize)]
struct Intent {
    user_name: String,
    lease_id: String,
}

pub struct Aws {
    view: View,
    services: Services,
    router: Router<Route>,
    client: Mutex<Option<Arc<dyn IamApi>>>,
}

/// Parse `key=value` lines (blank lines and `#` comments skipped) or a JSON object of strings.
pub(crate) fn parse_fields(
    data: &SecretBytes,
    what: &str,
) -> Result<Vec<(String, Zeroizing<String>)>> {
    let text = std::str::from_utf8(data.expose())
        .map_err(|_| Error::invalid(format!("{what}: not UTF-8 text")))?
        .trim();
    let mut out = Vec::new();
    if text.starts_with('{') {
        let v: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| {
                Error::invalid(format!(
                    "{what}: invalid JSON at line {} column {}",
                    e.line(),
                    e.column()
                ))
            })?;
        for (k, v) in v {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                _ => return Err(Error::invalid(format!("{what}: {k} must be a string"))),
            };
            out.push((k, Zeroizing::new(s)));
        }
        return Ok(out);
    }
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((k, v)) = line.split_once('=') else {
            return Err(Error::invalid(format!(
                "{what}: line {} is not key=value",
                i + 1
            )));
        };
        let v = v.trim().trim_matches('"');
        out.push((k.trim().to_string(), Zeroizing::new(v.to_string())));
    }
    Ok(out)
}

fn not_dir(path: &str) -> Error {
    Error::new(ErrorKind::NotADirectory, format!("{path}: not a folder"))
}

impl Aws {
    pub fn new(view: View, services: &Services) -> Self {
        Self {
            view,
            services: services.clone(),
            router: Router::new(&[
                ("", Route::Root),
                ("config", Route::Config),
                ("config/root", Route::ConfigRoot),
                ("config/lease", Route::ConfigLease),
                ("roles", Route::Roles),
                ("roles/{name}", Route::Role),
                ("creds", Route::Creds),
                ("creds/{name}", Route::Cred),
            ]),
            client: Mutex::new(None),
        }
    }

    fn leases(&self) -> &LeaseManager {
        &self.services.leases
    }

    fn route<'p>(&self, path: &'p str) -> Result<(Route, Vec<&'p str>)> {
        self.router
            .route(path)
            .ok_or_else(|| Error::not_found(path))
    }

    fn role_key(name: &str) -> Result<String> {
        validate_name(name)?;
        if name.ends_with(".env") {
            return Err(Error::invalid(format!(
                "role name {name:?}: names ending in .env are reserved for creds/NAME.env"
            )));
        }
        Ok(format!("roles/{name}"))
    }

    /// The IAM client for the configured root credentials (built once, rebuilt after a change).
    fn client(&self) -> Result<Arc<dyn IamApi>> {
        let mut slot = self.client.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let raw = self.view.get("config/root")?.ok_or_else(|| {
            Error::io("aws/config/root is not set: write the root credentials first")
        })?;
        let stored: StoredRoot = serde_json::from_slice(raw.expose())
            .map_err(|e| Error::new(ErrorKind::Integrity, format!("config/root: {e}")))?;
        let creds = RootCredentials {
            access_key: stored.access_key.clone(),
            secret_key: SecretBytes::from_slice(stored.secret_key.as_bytes()),
            region: stored
                .region
                .clone()
                .unwrap_or_else(|| "us-east-1".to_string()),
            endpoint: stored.endpoint.clone(),
        };
        let c: Arc<dyn IamApi> = Arc::new(AwsIam::new(&creds)?);
        *slot = Some(c.clone());
        Ok(c)
    }

    fn lease_cfg(&self) -> Result<LeaseCfg> {
        match self.view.get("config/lease")? {
            None => Ok(LeaseCfg {
                ttl: DEFAULT_TTL,
                max_ttl: DEFAULT_MAX_TTL,
            }),
            Some(raw) => serde_json::from_slice(raw.expose())
                .map_err(|e| Error::new(ErrorKind::Integrity, format!("config/lease: {e}"))),
        }
    }

    fn write_root(&self, data: &SecretBytes) -> Result<()> {
        let mut access_key = None;
        let mut secret_key: Option<Zeroizing<String>> = None;
        let mut region = None;
        let mut endpoint = None;
        for (k, v) in parse_fields(data, "config/root")? {
            match k.as_str() {
                "access_key" => access_key = Some(v.to_string()),
                "secret_key" => secret_key = Some(v),
                "region" => region = Some(v.to_string()),
                "endpoint" => endpoint = Some(v.to_string()),
                other => {
                    return Err(Error::invalid(format!(
                    "config/root: unknown key {other:?} (access_key, secret_key, region, endpoint)"
                )))
                }
            }
        }
        let (Some(access_key), Some(secret_key)) = (access_key, secret_key) else {
            return Err(Error::invalid(
                "config/root: access_key and secret_key are required",
            ));
        };
        if access_key.is_empty() || secret_key.is_empty() {
            return Err(Error::invalid(
                "config/root: empty access_key or secret_key",
            ));
        }
        if let Some(e) = &endpoint {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(Error::invalid(
                    "config/root: endpoint must start with http:// or https://",
                ));
            }
        }
        let stored = StoredRoot {
            access_key,
            secret_key: secret_key.to_string(),
            region,
            endpoint,
        };
        let mut buf = Zeroizing::new(Vec::with_capacity(512));
        serde_json::to_writer(&mut *buf, &stored)
            .map_err(|e| Error::io(format!("config/root: {e}")))?;
        self.view.put("config/root", &buf)?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    fn write_lease_cfg(&self, data: &SecretBytes) -> Result<()> {
        let mut cfg = self.lease_cfg()?;
        for (k, v) in parse_fields(data, "config/lease")? {
            let secs = parse_duration(&v).filter(|s| *s > 0).ok_or_else(|| {
                Error::invalid(format!(
                    "config/lease: {k} = {:?} is not a duration",
                    v.as_str()
                ))
            })?;
            match k.as_str() {
                "ttl" | "lease" | "default_ttl" => cfg.ttl = secs,
                "max_ttl" | "lease_max" => cfg.max_ttl = secs,
                other => {
                    return Err(Error::invalid(format!(
                        "config/lease: unknown key {other:?} (ttl, max_ttl)"
                    )))
                }
            }
        }
        if cfg.ttl > cfg.max_ttl {
            return Err(Error::invalid("config/lease: ttl is larger than max_ttl"));
        }
        let raw = serde_json::to_vec(&cfg).map_err(|e| Error::io(e.to_string()))?;
        self.view.put("config/lease", &raw)
    }

    fn write_role(&self, name: &str, data: &SecretBytes) -> Result<()> {
        let key = Self::role_key(name)?;
        if data.len() > self.services.limits.max_value_size {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("roles/{name}: too large"),
            ));
        }
        let v: serde_json::Value = serde_json::from_slice(data.expose()).map_err(|e| {
            Error::invalid(format!("roles/{name}: not a JSON policy document ({e})"))
        })?;
        if !v.is_object() {
            return Err(Error::invalid(format!(
                "roles/{name}: the policy document must be a JSON object"
            )));
        }
        self.view.put(&key, data.expose())
    }

    /// Make one credential: intent → IAM user → lease → intent cleared.
    fn issue(&self, ctx: &Ctx<'_>, name: &str) -> Result<SecretBytes> {
        let (role, env) = match name.strip_suffix(".env") {
            Some(r) => (r, true),
            None => (name, false),
        };
        let policy = self
            .view
            .get(&Self::role_key(role)?)?
            .ok_or_else(|| Error::not_found(&format!("roles/{role}")))?;
        let policy = std::str::from_utf8(policy.expose())
            .map_err(|_| Error::new(ErrorKind::Integrity, "stored policy is not UTF-8"))?
            .to_string();
        let client = self.client()?;
        let cfg = self.lease_cfg()?;
        let path = format!("{}/creds/{role}", ctx.mount);
        let lease_id = LeaseManager::new_id(&path);
        let user = user_name(role, ctx.caller.uid);
        let intent_key = format!("wal/{}", uuid::Uuid::new_v4());
        let intent = serde_json::to_vec(&Intent {
            user_name: user.clone(),
            lease_id: lease_id.clone(),
        })
        .map_err(|e| Error::io(e.to_string()))?;
        self.view.put(&intent_key, &intent)?;
        let key = match client.create_user(&user, POLICY_NAME, &policy) {
            Ok(k) => k,
            Err(f) => {
                let e = f.error.context(format!("creating IAM user for {path}"));
                if f.maybe_left {
                    // The user may exist or still come to exist (a timed-out request): hand
                    // it to the lease manager as a cleanup lease, retried with backoff until
                    // IAM answers. Only if that cannot be stored does the intent stay, for
                    // `recover` at the next unseal.
                    let cleanup = self.leases().issue_cleanup(
                        NewLease {
                            id: lease_id.clone(),
                            path: path.clone(),
                            ttl_secs: 0,
                            max_ttl_secs: 0,
                            renewable: false,
                            uid: ctx.caller.uid,
                            secret: serde_json::json!({
                                "user_name": user,
                                "policy_name": POLICY_NAME,
                                "cleanup": true,
                            }),
                        },
                        &e.message,
                    );
                    match cleanup {
                        Ok(_) => {
                            let _ = self.view.delete(&intent_key);
                        }
                        Err(c) => tracing::error!(
                            user = %user,
                            "creation failed and its cleanup could not be scheduled, left for recovery at unseal: {}",
                            c.message
                        ),
                    }
                } else {
                    let _ = self.view.delete(&intent_key);
                }
                return Err(e);
            }
        };
        failpoint("aws-after-create-user");
        let lease = self.leases().issue(NewLease {
            id: lease_id.clone(),
            path: path.clone(),
            ttl_secs: cfg.ttl,
            max_ttl_secs: cfg.max_ttl,
            renewable: true,
            uid: ctx.caller.uid,
            // What revocation needs: with the key id and policy name it takes 3 IAM calls.
            secret: serde_json::json!({
                "user_name": user,
                "access_key_id": key.access_key_id,
                "policy_name": POLICY_NAME,
            }),
        });
        let lease = match lease {
            Ok(l) => l,
            Err(e) => {
                // Undo upstream; if that fails too, the intent stays for `recover`.
                match client.delete_user(&user) {
                    Ok(()) => {
                        let _ = self.view.delete(&intent_key);
                    }
                    Err(d) => {
                        tracing::error!(user = %user, "undo failed, left for recovery: {}", d.message)
                    }
                }
                return Err(e.context(format!("storing the lease for {path}")));
            }
        };
        if let Err(e) = self.view.delete(&intent_key) {
            // Harmless: recovery sees the lease exists and only clears the intent.
            tracing::warn!("clearing an intent record failed: {}", e.message);
        }
        tracing::info!(lease = %lease.id, user = %user, uid = ctx.caller.uid, "issued IAM credentials");
        let ttl = cfg.ttl.min(cfg.max_ttl);
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        let secret = std::str::from_utf8(key.secret_access_key.expose())
            .map_err(|_| Error::io("IAM returned a non-UTF-8 secret key"))?;
        if env {
            let _ = write!(
                out,
                "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nNOMADFS_LEASE_ID={}\nNOMADFS_LEASE_DURATION={}\n",
                key.access_key_id, secret, lease.id, ttl
            );
        } else {
            #[derive(Serialize)]
            struct Out<'a> {
                lease_id: &'a str,
                lease_duration: u64,
                renewable: bool,
                access_key: &'a str,
                secret_key: &'a str,
            }
            serde_json::to_writer_pretty(
                &mut *out,
                &Out {
                    lease_id: &lease.id,
                    lease_duration: ttl,
                    renewable: lease.renewable,
                    access_key: &key.access_key_id,
                    secret_key: secret,
                },
            )
            .map_err(|e| Error::io(e.to_string()))?;
            out.push(b'\n');
        }
        Ok(SecretBytes::from_slice(&out))
    }
}

/// Test hook: `NOMADFS_FAILPOINT=<name>` makes the daemon exit abruptly at that point, as a
/// crash would (the crash-recovery tests use it). Read on each call; absent in normal runs.
pub(crate) fn failpoint(name: &str) {
    if std::env::var_os("NOMADFS_FAILPOINT").is_some_and(|v| v == name) {
        tracing::warn!(failpoint = name, "failpoint hit: exiting abruptly");
        std::process::abort();
    }
}

impl Backend for Aws {
    fn kind(&self) -> &'static str {
        "aws"
    }

    fn help(&self) -> String {
        HELP.to_string()
    }

    fn stat(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Node> {
        let (route, caps) = self.route(path)?;
        Ok(match route {
            Route::Root | Route::Config | Route::Roles | Route::Creds => Node::dir(),
            Route::ConfigRoot => Node {
                kind: NodeKind::File,
                size: 0,
                mode: 0o200,
                dynamic: false,
                exchange: false,
            },
            Route::ConfigLease => Node::file(self.view.size("config/lease")?.unwrap_or(0)),
            Route::Role => match self.view.size(&Self::role_key(caps[0])?)? {
                Some(n) => Node::file(n),
                None => return Err(Error::not_found(path)),
            },
            Route::Cred => {
                let role = caps[0].strip_suffix(".env").unwrap_or(caps[0]);
                match self.view.size(&Self::role_key(role)?)? {
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
            Route::Root => Ok(vec![
                DirEntry::dir("config"),
                DirEntry::dir("roles"),
                DirEntry::dir("creds"),
            ]),
            Route::Config => Ok(vec![DirEntry::file("root"), DirEntry::file("lease")]),
            Route::Roles => Ok(roles()?.into_iter().map(DirEntry::file).collect()),
            Route::Creds => Ok(roles()?
                .into_iter()
                .flat_map(|r| {
                    [
                        DirEntry::file(r.clone()),
                        DirEntry::file(format!("{r}.env")),
                    ]
                })
                .collect()),
            _ => Err(not_dir(path)),
        }
    }

    fn read(&self, ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes> {
        let (route, caps) = self.route(path)?;
        match route {
            Route::ConfigRoot => Err(Error::denied(
                "aws/config/root is write-only: the root keys are never read back",
            )),
            Route::ConfigLease => {
                let cfg = self.lease_cfg()?;
                Ok(SecretBytes::from(format!(
                    "ttl = {}\nmax_ttl = {}\n",
                    cfg.ttl, cfg.max_ttl
                )))
            }
            Route::Role => self
                .view
                .get(&Self::role_key(caps[0])?)?
                .ok_or_else(|| Error::not_found(path)),
            Route::Cred => self.issue(ctx, caps[0]),
            Route::Root | Route::Config | Route::Roles | Route::Creds => Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a folder"),
            )),
        }
    }

    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        match self.route(path)? {
            (Route::ConfigRoot | Route::ConfigLease, _) => Ok(()),
            (Route::Role, caps) => Self::role_key(caps[0]).map(|_| ()),
            (Route::Cred, _) => Err(Error::denied(format!(
                "{path}: credentials are read, not written"
            ))),
            _ => Err(Error::not_permitted(format!("{path} cannot be written"))),
        }
    }

    fn write(&self, _ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        match self.route(path)? {
            (Route::ConfigRoot, _) => self.write_root(&data),
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
                let key = Self::role_key(caps[0])?;
                if self.view.size(&key)?.is_none() {
                    return Err(Error::not_found(path));
                }
                self.view.delete(&key)
            }
            _ => Err(Error::not_permitted(format!("{path} cannot be removed"))),
        }
    }

    fn revoke(&self, lease: &LeaseRecord) -> Result<()> {
        let user = lease
            .secret
            .get("user_name")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::new(ErrorKind::Integrity, "lease has no IAM user name"))?;
        // Leases recorded before the key id and policy name were kept have only the user name:
        // `revoke_user` then finds the rest itself (DeleteConflict → full sweep).
        let field = |k: &str| lease.secret.get(k).and_then(|v| v.as_str());
        self.client()?
            .revoke_user(user, field("access_key_id"), field("policy_name"))
    }

    fn recover(&self) -> Result<()> {
        let intents = self.view.list("wal/")?;
        if intents.is_empty() {
            return Ok(());
        }
        let mut first_err = None;
        for key in intents {
            let Some(raw) = self.view.get(&key)? else {
                continue;
            };
            let intent: Intent = match serde_json::from_slice(raw.expose()) {
                Ok(i) => i,
                Err(e) => {
                    tracing::error!("unreadable intent record, removed: {e}");
                    self.view.delete(&key)?;
                    continue;
                }
            };
            if self.leases().exists(&intent.lease_id) {
                self.view.delete(&key)?;
                continue;
            }
            match self.client().and_then(|c| c.delete_user(&intent.user_name)) {
                Ok(()) => {
                    tracing::warn!(user = %intent.user_name, "rolled back an IAM user whose lease was never stored");
                    self.view.delete(&key)?;
                }
                Err(e) => {
                    tracing::error!(user = %intent.user_name, "rollback failed, will retry at next unseal: {}", e.message);
                    first_err.get_or_insert(e);
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
