//! The `postgresql` backend: dynamic PostgreSQL login roles, one per `cat creds/NAME`, each
//! under a lease.
//!
//! Owns: `config/connection` (the admin connection URL, JSON), what a role document is (the
//! statements and TTLs, TOML or JSON, stored as written) — the rest of the layout
//! (`config/lease`, `roles/NAME`, `creds/NAME[.env]`) is `dynamic`'s — and the order of side
//! effects: the role's statements run in an open transaction while the lease is stored (held)
//! → the transaction commits → the lease is released. The lease is the intent record: it names the role before the role can exist, so a crash at any
//! point leaves no untracked role (before the commit PostgreSQL rolls the role back; after it,
//! the lease's revocation at expiry or `rm` drops it); a certain failure discards the lease, an
//! uncertain one revokes it. One durable write per credential, overlapped with the statements.
//! Revocation drops the role (the role document's
//! `revocation_statements` at revocation time, or the default that ends access, see
//! `client::PgClient::drop_role`); renewal moves its `VALID UNTIL` to the new expiry.
//! `Postgres` implements only `Upstream`; the mounted `Backend` is `Dynamic<Postgres>`.
//! Must never: return the connection URL (config/connection is write-only), create anything on
//! `stat` or lookup, or log a password.

use super::dynamic::{self, failpoint, CredView, HelpText, SecretConfig, Upstream};
pub mod client;
mod roles;
mod target;
mod tls;

use super::{partial, Services};
use crate::backend::Ctx;
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::{rfc3339, LeaseManager, LeaseRecord, NewLease};
use crate::secret::SecretBytes;
use client::{password, role_name, PgClient, Target};
use roles::{parse_role, Role};
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct StoredConnection {
    url: String,
}

impl Drop for StoredConnection {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.url.zeroize();
    }
}

/// The client with what `.env` output needs of its target.
struct Conn {
    client: Arc<PgClient>,
    host: String,
    port: u16,
    dbname: Option<String>,
}

/// A connection URL test-connected at write(2), kept so the commit at close does not connect
/// a second time for the same bytes.
struct Tested {
    url: Zeroizing<String>,
    conn: Arc<Conn>,
    at: Instant,
}

/// How long a test connection made at write(2) stands for the commit at close.
const TESTED_FOR: Duration = Duration::from_secs(60);

pub struct Postgres {
    view: View,
    services: Services,
    conn: Mutex<Option<Arc<Conn>>>,
    tested: Mutex<Option<Tested>>,
}

impl Postgres {
    pub fn new(view: View, services: &Services) -> Self {
        Self {
            view,
            services: services.clone(),
            conn: Mutex::new(None),
            tested: Mutex::new(None),
        }
    }

    fn leases(&self) -> &LeaseManager {
        &self.services.leases
    }

    fn conn_of(target: &Target) -> Result<Conn> {
        Ok(Conn {
            client: Arc::new(PgClient::new(target)?),
            host: target.host.clone(),
            port: target.port,
            dbname: target.dbname.clone(),
        })
    }

    /// The client for the configured connection (built once, replaced after a change).
    fn conn(&self) -> Result<Arc<Conn>> {
        let mut slot = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let raw = self.view.get("config/connection")?.ok_or_else(|| {
            Error::io("config/connection is not set: write the connection URL first")
        })?;
        let stored: StoredConnection = serde_json::from_slice(raw.expose())
            .map_err(|e| Error::new(ErrorKind::Integrity, format!("config/connection: {e}")))?;
        let c = Arc::new(Self::conn_of(&Target::parse(&stored.url)?)?);
        *slot = Some(c.clone());
        Ok(c)
    }

    /// The client for `url`, test-connected: the one tested at write(2) for the same URL (if
    /// recent), else a new one, pinged.
    fn tested_conn(&self, url: &str, target: &Target) -> Result<Arc<Conn>> {
        {
            let slot = self.tested.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(t) = slot.as_ref() {
                if t.url.as_str() == url && t.at.elapsed() < TESTED_FOR {
                    return Ok(t.conn.clone());
                }
            }
        }
        let conn = Self::conn_of(target)?;
        conn.client.ping().map_err(|e| {
            e.context("config/connection: test connection failed; kept the old one")
        })?;
        Ok(Arc::new(conn))
    }

    /// Check the URL as it arrives: once its line is complete, parse it and test-connect (the
    /// write(2) that completes it fails with the reason); the client is kept for the commit.
    fn check_connection_partial(&self, data: &[u8]) -> Result<()> {
        if !data.ends_with(b"\n") || data.len() > partial::CHECK_CAP {
            return Ok(());
        }
        let text = partial::text_so_far(data, "config/connection")?;
        let url = text.trim();
        if url.is_empty() {
            return Ok(());
        }
        let target = Target::parse(url)?;
        let conn = self.tested_conn(url, &target)?;
        *self.tested.lock().unwrap_or_else(|p| p.into_inner()) = Some(Tested {
            url: Zeroizing::new(url.to_string()),
            conn,
            at: Instant::now(),
        });
        Ok(())
    }

    /// Check, test-connect (unless the same URL was tested at write), then store; a URL that
    /// fails keeps the previous one.
    fn write_connection(&self, data: &SecretBytes) -> Result<()> {
        let text = std::str::from_utf8(data.expose())
            .map_err(|_| Error::invalid("config/connection: not UTF-8 text"))?
            .trim();
        let target = Target::parse(text)?;
        let conn = self.tested_conn(text, &target)?;
        *self.tested.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let stored = StoredConnection {
            url: text.to_string(),
        };
        let mut buf = Zeroizing::new(Vec::with_capacity(256));
        serde_json::to_writer(&mut *buf, &stored)
            .map_err(|e| Error::io(format!("config/connection: {e}")))?;
        self.view.put("config/connection", &buf)?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        tracing::info!(target = %target.display, "PostgreSQL connection configured");
        Ok(())
    }

    fn load_role(&self, name: &str) -> Result<Option<Role>> {
        match self.view.get(&dynamic::role_key(name)?)? {
            None => Ok(None),
            Some(raw) => parse_role(name, raw.expose())
                .map(Some)
                .map_err(|e| Error::new(ErrorKind::Integrity, e.message)),
        }
    }

    /// The revocation statements of role document `role` now (empty: the default).
    fn revocation_of(&self, role: &str) -> Vec<String> {
        match self.load_role(role) {
            Ok(Some(r)) => r.revocation,
            Ok(None) => Vec::new(),
            Err(e) => {
                tracing::warn!(
                    role,
                    "role document unreadable, using the default revocation: {}",
                    e.message
                );
                Vec::new()
            }
        }
    }

    /// Make one credential: intent → role → lease → intent cleared.
    fn mint(&self, ctx: &Ctx<'_>, role_doc: &str, view: CredView) -> Result<SecretBytes> {
        let role = self
            .load_role(role_doc)?
            .ok_or_else(|| Error::not_found(&format!("roles/{role_doc}")))?;
        let conn = self.conn()?;
        let cfg = dynamic::lease_cfg(&self.view)?;
        let max_ttl = role.max_ttl.unwrap_or(cfg.max_ttl).min(cfg.max_ttl).max(1);
        let ttl = role.default_ttl.unwrap_or(cfg.ttl).clamp(1, max_ttl);
        let path = format!("{}/creds/{role_doc}", ctx.mount);
        let lease_id = LeaseManager::new_id(&path);
        let username = role_name(role_doc, ctx.caller.uid);
        let pass = password();
        // VALID UNTIL = the lease's expiry (rounded up to the second; the lease manager counts
        // from a moment later, by a few ms).
        let expires_ms = self
            .leases()
            .now_ms()
            .saturating_add(ttl.saturating_mul(1000))
            .saturating_add(999);
        let expiration = rfc3339(expires_ms);

        // The role's statements run in an open transaction while the lease (held: nothing
        // revokes it until we are done) is made durable; the role commits only after that. A
        // crash before the commit rolls the role back; after it, the lease tracks the role.
        let pending =
            conn.client
                .create_role_begin(&role.creation, &username, &pass, &expiration)?;
        let lease = self
            .leases()
            .issue_held(NewLease {
                id: lease_id,
                path: path.clone(),
                ttl_secs: ttl,
                max_ttl_secs: max_ttl,
                renewable: true,
                uid: ctx.caller.uid,
                secret: serde_json::json!({ "username": username, "role": role_doc }),
                limit: ctx.lease_limit,
            })
            .map_err(|e| e.context(format!("storing the lease for {path}")))?;
        failpoint("pg-after-lease");
        let created = pending.finish(true);
        if let Err(f) = created {
            if f.maybe_created {
                // The answer was lost: revoke now (drops the role if it exists); if that fails
                // too, the lease stays and is retried like any other.
                self.leases().release(&lease.id);
                if let Err(e) = self.leases().revoke(&lease.id) {
                    tracing::warn!(role = %username, "creation outcome unknown; revocation will be retried: {}", e.message);
                }
            } else if let Err(e) = self.leases().discard(&lease.id) {
                tracing::error!(lease = %lease.id, "discarding the lease of a role never made failed: {}", e.message);
            }
            return Err(f
                .error
                .context(format!("creating a PostgreSQL role for {path}")));
        }
        failpoint("pg-after-create-role");
        self.leases().release(&lease.id);
        tracing::info!(lease = %lease.id, role = %username, uid = ctx.caller.uid, "issued PostgreSQL credentials");
        ctx.issued(&lease.id);
        let duration = lease.expires_ms.saturating_sub(lease.issued_ms) / 1000;
        let pw = pass
            .text()
            .ok_or_else(|| Error::io("generated password is not UTF-8"))?;
        let mut out = Zeroizing::new(Vec::with_capacity(512));
        if view == CredView::Env {
            let _ = write!(out, "PGUSER={username}\nPGPASSWORD={pw}\n");
            if !conn.host.contains('\n') {
                let _ = write!(out, "PGHOST={}\nPGPORT={}\n", conn.host, conn.port);
            }
            if let Some(db) = conn.dbname.as_deref().filter(|d| !d.contains('\n')) {
                let _ = writeln!(out, "PGDATABASE={db}");
            }
            let _ = write!(
                out,
                "NOMADFS_LEASE_ID={}\nNOMADFS_LEASE_DURATION={duration}\n",
                lease.id
            );
        } else {
            #[derive(Serialize)]
            struct Out<'a> {
                lease_id: &'a str,
                lease_duration: u64,
                renewable: bool,
                username: &'a str,
                password: &'a str,
            }
            serde_json::to_writer_pretty(
                &mut *out,
                &Out {
                    lease_id: &lease.id,
                    lease_duration: duration,
                    renewable: lease.renewable,
                    username: &username,
                    password: pw,
                },
            )
            .map_err(|e| Error::io(e.to_string()))?;
            out.push(b'\n');
        }
        Ok(SecretBytes::from_slice(&out))
    }

    fn lease_names(lease: &LeaseRecord) -> Result<(String, String)> {
        let username = lease
            .secret
            .get("username")
            .and_then(|v| v.as_str())
            .ok_or_else(|| Error::new(ErrorKind::Integrity, "lease has no PostgreSQL role name"))?;
        let role = lease
            .secret
            .get("role")
            .and_then(|v| v.as_str())
            .unwrap_or("");
        Ok((username.to_string(), role.to_string()))
    }
}

impl Upstream for Postgres {
    const KIND: &'static str = "postgresql";
    const SECRET: SecretConfig = SecretConfig {
        path: "config/connection",
        read_refusal: "config/connection is write-only: the connection URL is never read back",
    };
    const VIEWS: &'static [CredView] = &[CredView::Json, CredView::Env];

    const HELP: HelpText = HelpText {
        intro: "postgresql backend: dynamic PostgreSQL login roles, each under a lease.",
        secret: "write-only: postgres://USER:PASSWORD@HOST:PORT/DATABASE (an admin that may\nCREATE ROLE). Tested on write: a URL that cannot connect is refused (EIO)\nand the previous one kept. TLS as in libpq: ?sslmode=disable|prefer\n(default)|require|verify-ca|verify-full, &sslrootcert=/abs/ca.pem,\n&sslcert=/abs/client.pem&sslkey=/abs/client.key (read by the daemon at\neach connect). Reading it fails (EACCES).",
        role: "TOML or JSON:\n  creation_statements = [\"CREATE ROLE \\\"{{name}}\\\" LOGIN PASSWORD '{{password}}'\n                          VALID UNTIL '{{expiration}}'\",\n                         \"GRANT SELECT ON ALL TABLES IN SCHEMA public TO \\\"{{name}}\\\"\"]\n  revocation_statements = [...]   optional ({{name}}); default: NOLOGIN,\n                                   end its sessions, REASSIGN/DROP OWNED, DROP ROLE\n  renew_statements = [...]        optional ({{name}}, {{expiration}});\n                                   default: ALTER ROLE ... VALID UNTIL\n  default_ttl = \"1h\", max_ttl = \"24h\"   optional (capped by config/lease)\nA string works where a list does. rm deletes the role document.",
        creds: &[
            "each open creates a role and prints JSON: lease_id, lease_duration,\nrenewable, username, password",
            "the same as PGUSER=, PGPASSWORD=, PGHOST=, PGPORT=, PGDATABASE= lines\nplus NOMADFS_LEASE_ID= and NOMADFS_LEASE_DURATION=",
        ],
        notes: "Revoke with `rm sys/leases/<lease_id>`; renew with `touch` or `echo 1h >` on it (moves the\nrole's VALID UNTIL).",
    };

    fn write_config(&self, data: &SecretBytes) -> Result<()> {
        self.write_connection(data)
    }

    fn check_role(&self, name: &str, data: &[u8]) -> Result<()> {
        parse_role(name, data).map(|_| ())
    }

    fn check_config_partial(&self, data: &[u8]) -> Result<()> {
        self.check_connection_partial(data)
    }

    fn check_role_partial(&self, name: &str, data: &[u8]) -> Result<()> {
        partial::check_document(data, &format!("roles/{name}"), |text| {
            parse_role(name, text.as_bytes()).map(|_| ())
        })
    }

    fn issue(&self, ctx: &Ctx<'_>, role: &str, view: CredView) -> Result<SecretBytes> {
        self.mint(ctx, role, view)
    }

    fn revoke(&self, lease: &LeaseRecord) -> Result<()> {
        let (username, role) = Self::lease_names(lease)?;
        let statements = self.revocation_of(&role);
        self.conn()?.client.drop_role(&statements, &username)
    }

    fn renew(&self, lease: &LeaseRecord) -> Result<()> {
        let (username, role) = Self::lease_names(lease)?;
        let statements = match self.load_role(&role) {
            Ok(Some(r)) => r.renew,
            _ => Vec::new(),
        };
        // Rounded up, so the role never ends before its lease.
        let expiration = rfc3339(lease.expires_ms.saturating_add(999));
        self.conn()?
            .client
            .renew_role(&statements, &username, &expiration)
    }
}
