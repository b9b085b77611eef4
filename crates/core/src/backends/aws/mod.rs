//! The `aws` backend: dynamic IAM users, one per `cat creds/NAME`, each under a lease.
//!
//! Owns: `config/root` (root credentials, JSON), what a role is (an IAM policy document),
//! `wal/<uuid>` (intent records for IAM users being made) — the rest of the layout
//! (`config/lease`, `roles/NAME`, `creds/NAME[.env|.process]`) is `dynamic`'s — and the order of side
//! effects: intent logged → IAM user made → lease stored → intent cleared. At unseal, `recover` deletes every user whose intent was never completed, so a crash between
//! "user created" and "lease stored" leaves no orphan; on a shared store it rolls back only
//! its own intents, or another daemon's once that daemon's window on it (`INTENT_WINDOW_MS`,
//! recorded in the intent) has passed, so an unseal never deletes a user another live daemon
//! is still making. A creation that fails while IAM cannot
//! say what it made (timeout, outage) becomes a cleanup lease (`LeaseManager::issue_cleanup`),
//! retried with backoff until IAM answers; the caller gets EIO and no credential. Revocation
//! uses what the lease recorded (user, access key id, policy name): 3 IAM calls.
//! `Aws` implements only `Upstream`; the mounted `Backend` is `Dynamic<Aws>`.
//! Must never: return the root keys (config/root is write-only), create anything on `stat` or
//! lookup, or log a credential.
//!
//! Size: over ~500 lines because the `Upstream` impl of IAM (settings, views, issue, revoke, the
//! `wal/` intents and their recovery) is one lifecycle; the IAM calls live in `iam.rs`.

pub mod iam;

use super::dynamic::{self, failpoint, parse_fields, CredView, HelpText, SecretConfig, Upstream};
use super::{partial, Services};
use crate::backend::Ctx;
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::{rfc3339, LeaseManager, LeaseRecord, NewLease};
use crate::secret::SecretBytes;
use iam::{user_name, AwsIam, IamApi, RootCredentials};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use zeroize::Zeroizing;

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

#[derive(Serialize, Deserialize)]
struct Intent {
    user_name: String,
    lease_id: String,
    /// The daemon making the user (its node id in the expiry election; absent alone on a
    /// store, and in intents written before it was kept).
    #[serde(default)]
    owner: Option<String>,
    /// Until when (wall-clock ms) the owner may still be making it: another daemon's
    /// `recover` leaves the intent alone until then (`INTENT_WINDOW_MS`).
    #[serde(default)]
    until_ms: Option<u64>,
}

/// How long a mint may take, every IAM call and the lease write included (3 IAM operations
/// of at most 10 s each, one storage call of at most 8 s, and a margin): the owner's hold on
/// its intent. Past it, any daemon's `recover` may roll the intent back.
const INTENT_WINDOW_MS: u64 = 120_000;

pub struct Aws {
    view: View,
    services: Services,
    client: Mutex<Option<Arc<dyn IamApi>>>,
}

impl Aws {
    pub fn new(view: View, services: &Services) -> Self {
        Self {
            view,
            services: services.clone(),
            client: Mutex::new(None),
        }
    }

    fn leases(&self) -> &LeaseManager {
        &self.services.leases
    }

    /// This daemon's id among the daemons sharing the store (None: alone on it).
    fn node_id(&self) -> Option<String> {
        self.leases().leadership().map(|l| l.node_id())
    }

    /// May this daemon roll `intent` back now? Its own (it is not minting while it
    /// unseals) or one from a daemon alone on its store or from before owners were kept:
    /// yes. Another daemon's: only once its window has passed (it may still be minting).
    fn may_roll_back(&self, intent: &Intent) -> bool {
        match (&intent.owner, intent.until_ms) {
            (Some(owner), _) if Some(owner) == self.node_id().as_ref() => true,
            (_, Some(until)) if self.node_id().is_some() => self.leases().now_ms() > until,
            _ => true,
        }
    }

    /// Is the intent's lease stored (by this daemon or, on a shared store, another)?
    fn lease_stored(&self, id: &str) -> Result<bool> {
        if self.leases().exists(id) {
            return Ok(true);
        }
        match self.leases().get(id) {
            Ok(_) => Ok(true),
            Err(e) if e.kind == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
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

    /// One `config/root` field, checked on its own (unknown keys, empty keys, the endpoint's
    /// scheme): what each complete line is checked with as it arrives, and again at commit.
    fn root_field(k: &str, v: &str) -> Result<()> {
        match k {
            "access_key" | "secret_key" if v.is_empty() => Err(Error::invalid(
                "config/root: empty access_key or secret_key",
            )),
            "endpoint" if !(v.starts_with("http://") || v.starts_with("https://")) => Err(
                Error::invalid("config/root: endpoint must start with http:// or https://"),
            ),
            "access_key" | "secret_key" | "region" | "endpoint" => Ok(()),
            other => Err(Error::invalid(format!(
                "config/root: unknown key {other:?} (access_key, secret_key, region, endpoint)"
            ))),
        }
    }

    /// Parse and check a whole `config/root` write (nothing is stored).
    fn parse_root(data: &SecretBytes) -> Result<StoredRoot> {
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
        Ok(StoredRoot {
            access_key,
            secret_key: secret_key.to_string(),
            region,
            endpoint,
        })
    }

    fn write_root(&self, data: &SecretBytes) -> Result<()> {
        let stored = Self::parse_root(data)?;
        let mut buf = Zeroizing::new(Vec::with_capacity(512));
        serde_json::to_writer(&mut *buf, &stored)
            .map_err(|e| Error::io(format!("config/root: {e}")))?;
        self.view.put("config/root", &buf)?;
        *self.client.lock().unwrap_or_else(|p| p.into_inner()) = None;
        Ok(())
    }

    /// Make one credential: intent → IAM user → lease → intent cleared.
    fn mint(&self, ctx: &Ctx<'_>, role: &str, view: CredView) -> Result<SecretBytes> {
        let policy = self
            .view
            .get(&dynamic::role_key(role)?)?
            .ok_or_else(|| Error::not_found(&format!("roles/{role}")))?;
        let policy = std::str::from_utf8(policy.expose())
            .map_err(|_| Error::new(ErrorKind::Integrity, "stored policy is not UTF-8"))?
            .to_string();
        let client = self.client()?;
        let cfg = dynamic::lease_cfg(&self.view)?;
        let path = format!("{}/creds/{role}", ctx.mount);
        let lease_id = LeaseManager::new_id(&path);
        let user = user_name(role, ctx.caller.uid);
        let intent_key = format!("wal/{}", uuid::Uuid::new_v4());
        let intent = serde_json::to_vec(&Intent {
            user_name: user.clone(),
            lease_id: lease_id.clone(),
            owner: self.node_id(),
            until_ms: Some(self.leases().now_ms().saturating_add(INTENT_WINDOW_MS)),
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
                            // Leftovers are always tracked.
                            limit: None,
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
            limit: ctx.lease_limit,
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
        ctx.issued(&lease.id);
        let ttl = cfg.ttl.min(cfg.max_ttl);
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        let secret = std::str::from_utf8(key.secret_access_key.expose())
            .map_err(|_| Error::io("IAM returned a non-UTF-8 secret key"))?;
        match view {
            CredView::Env => {
                let _ = write!(
                    out,
                    "AWS_ACCESS_KEY_ID={}\nAWS_SECRET_ACCESS_KEY={}\nNOMADFS_LEASE_ID={}\nNOMADFS_LEASE_DURATION={}\n",
                    key.access_key_id, secret, lease.id, ttl
                );
            }
            CredView::Process => {
                // The AWS credential_process contract: SDKs and the CLI run the command again
                // before `Expiration` (a new credential, a new lease). `lease_id` is an extra
                // key they ignore; the engine reads it to tie the response to its lease.
                #[derive(Serialize)]
                #[serde(rename_all = "PascalCase")]
                struct Process<'a> {
                    version: u32,
                    access_key_id: &'a str,
                    secret_access_key: &'a str,
                    expiration: String,
                    #[serde(rename = "lease_id")]
                    lease_id: &'a str,
                }
                serde_json::to_writer_pretty(
                    &mut *out,
                    &Process {
                        version: 1,
                        access_key_id: &key.access_key_id,
                        secret_access_key: secret,
                        expiration: rfc3339(lease.expires_ms),
                        lease_id: &lease.id,
                    },
                )
                .map_err(|e| Error::io(e.to_string()))?;
                out.push(b'\n');
            }
            CredView::Json => {
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
        }
        Ok(SecretBytes::from_slice(&out))
    }
}

impl Upstream for Aws {
    const KIND: &'static str = "aws";
    const SECRET: SecretConfig = SecretConfig {
        path: "config/root",
        read_refusal: "aws/config/root is write-only: the root keys are never read back",
    };
    const VIEWS: &'static [CredView] = &[CredView::Json, CredView::Env, CredView::Process];

    const HELP: HelpText = HelpText {
        intro: "aws backend: dynamic IAM credentials, each under a lease.",
        secret: "write-only: access_key=..., secret_key=..., optional region=..., endpoint=...\nlines (or the same as JSON). Reading it fails (EACCES).",
        role: "an IAM policy document (JSON); rm deletes the role",
        creds: &[
            "each open creates an IAM user with the role's policy and one access key and\nprints JSON: lease_id, lease_duration, renewable, access_key, secret_key",
            "the same as AWS_ACCESS_KEY_ID=... lines plus NOMADFS_LEASE_ID=... (dotenv, no\n`export`: for docker --env-file, systemd EnvironmentFile=, `set -a; . FILE`)",
            "the same as AWS credential_process JSON (Version 1, AccessKeyId,\nSecretAccessKey, Expiration = the lease's expiry, lease_id), for\n`credential_process = cat /run/nomadfs/aws/creds/NAME.process` in ~/.aws/config",
        ],
        notes: "Revoke with `rm sys/leases/<lease_id>`; renew with `touch` or `echo 1h >` on it.",
    };

    fn write_config(&self, data: &SecretBytes) -> Result<()> {
        self.write_root(data)
    }

    fn check_role(&self, name: &str, data: &[u8]) -> Result<()> {
        let v: serde_json::Value = serde_json::from_slice(data).map_err(|e| {
            Error::invalid(format!("roles/{name}: not a JSON policy document ({e})"))
        })?;
        if !v.is_object() {
            return Err(Error::invalid(format!(
                "roles/{name}: the policy document must be a JSON object"
            )));
        }
        Ok(())
    }

    fn check_config_partial(&self, data: &[u8]) -> Result<()> {
        partial::check_fields(
            data,
            "config/root",
            |k, v, _| Self::root_field(k, v),
            |text| Self::parse_root(&SecretBytes::from_slice(text.as_bytes())).map(|_| ()),
        )
    }

    fn check_role_partial(&self, name: &str, data: &[u8]) -> Result<()> {
        if !partial::worth_checking(data) {
            return Ok(());
        }
        let what = format!("roles/{name}");
        let text = partial::text_so_far(data, &what)?;
        match partial::json_complete(text, &format!("{what}: not a JSON policy document"))? {
            true => self.check_role(name, text.as_bytes()),
            false => Ok(()),
        }
    }

    fn issue(&self, ctx: &Ctx<'_>, role: &str, view: CredView) -> Result<SecretBytes> {
        self.mint(ctx, role, view)
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
            if self.lease_stored(&intent.lease_id)? {
                self.view.delete(&key)?;
                continue;
            }
            if !self.may_roll_back(&intent) {
                tracing::info!(
                    user = %intent.user_name,
                    owner = intent.owner.as_deref().unwrap_or(""),
                    "intent of another daemon still within its window, left to it (rolled back at a later unseal once the window has passed)"
                );
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
