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
//! `pg_client::PgClient::drop_role`); renewal moves its `VALID UNTIL` to the new expiry.
//! Must never: return the connection URL (config/connection is write-only), create anything on
//! `stat` or lookup, or log a password.

use super::aws::failpoint;
use super::dynamic::{self, CredView, Dynamic, SecretConfig, Upstream};
use super::{partial, Services};
use crate::backend::{Backend, Ctx, DirEntry, Node};
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::{parse_duration, rfc3339, LeaseManager, LeaseRecord, NewLease};
use crate::secret::SecretBytes;
use serde::{Deserialize, Serialize};
use std::io::Write as _;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

pub mod client;

use client::{password, role_name, PgClient, Target};

const HELP: &str = "\
postgresql backend: dynamic PostgreSQL login roles, each under a lease.

  config/connection  write-only: postgres://USER:PASSWORD@HOST:PORT/DATABASE (an admin that may
                     CREATE ROLE). Tested on write: a URL that cannot connect is refused (EIO)
                     and the previous one kept. No TLS: use a Unix socket or loopback.
                     Reading it fails (EACCES).
  config/lease       read/write: ttl=1h and max_ttl=24h (seconds or durations; JSON too)
  roles/NAME         TOML or JSON:
                       creation_statements = [\"CREATE ROLE \\\"{{name}}\\\" LOGIN PASSWORD '{{password}}'
                                               VALID UNTIL '{{expiration}}'\",
                                              \"GRANT SELECT ON ALL TABLES IN SCHEMA public TO \\\"{{name}}\\\"\"]
                       revocation_statements = [...]   optional ({{name}}); default: NOLOGIN,
                                                        end its sessions, REASSIGN/DROP OWNED, DROP ROLE
                       renew_statements = [...]        optional ({{name}}, {{expiration}});
                                                        default: ALTER ROLE ... VALID UNTIL
                       default_ttl = \"1h\", max_ttl = \"24h\"   optional (capped by config/lease)
                     A string works where a list does. rm deletes the role document.
  creds/NAME         each open creates a role and prints JSON: lease_id, lease_duration,
                     renewable, username, password
  creds/NAME.env     the same as PGUSER=, PGPASSWORD=, PGHOST=, PGPORT=, PGDATABASE= lines
                     plus NOMADFS_LEASE_ID= and NOMADFS_LEASE_DURATION=

Revoke with `rm sys/leases/<lease_id>`; renew with `touch` or `echo 1h >` on it (moves the
role's VALID UNTIL).
";

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

/// One statement or a list of them.
#[derive(Deserialize)]
#[serde(untagged)]
enum Statements {
    One(String),
    Many(Vec<String>),
}

impl Statements {
    fn into_vec(self) -> Vec<String> {
        match self {
            Statements::One(s) => vec![s],
            Statements::Many(v) => v,
        }
    }
}

/// A duration as seconds or text ("1h").
#[derive(Deserialize)]
#[serde(untagged)]
enum Dur {
    Secs(u64),
    Text(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoleDoc {
    creation_statements: Statements,
    #[serde(default)]
    revocation_statements: Option<Statements>,
    #[serde(default)]
    renew_statements: Option<Statements>,
    #[serde(default)]
    default_ttl: Option<Dur>,
    #[serde(default)]
    max_ttl: Option<Dur>,
}

/// A checked role document.
#[derive(Debug, PartialEq)]
pub(crate) struct Role {
    pub creation: Vec<String>,
    pub revocation: Vec<String>,
    pub renew: Vec<String>,
    pub default_ttl: Option<u64>,
    pub max_ttl: Option<u64>,
}

fn check_statements(what: &str, list: Vec<String>, allowed: &[&str]) -> Result<Vec<String>> {
    let list: Vec<String> = list
        .into_iter()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &list {
        let mut rest = s.as_str();
        while let Some(i) = rest.find("{{") {
            let after = rest.get(i + 2..).unwrap_or("");
            let Some(j) = after.find("}}") else {
                return Err(Error::invalid(format!("{what}: unclosed '{{{{'")));
            };
            let key = after.get(..j).unwrap_or("").trim();
            if !allowed.contains(&key) {
                return Err(Error::invalid(format!(
                    "{what}: unknown placeholder {{{{{key}}}}} (allowed here: {})",
                    allowed
                        .iter()
                        .map(|k| format!("{{{{{k}}}}}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )));
            }
            rest = after.get(j + 2..).unwrap_or("");
        }
    }
    Ok(list)
}

fn dur(what: &str, d: Option<Dur>) -> Result<Option<u64>> {
    let secs = match d {
        None => return Ok(None),
        Some(Dur::Secs(n)) => Some(n),
        Some(Dur::Text(t)) => parse_duration(&t),
    };
    match secs {
        Some(n) if n > 0 => Ok(Some(n)),
        _ => Err(Error::invalid(format!(
            "{what}: not a positive duration (e.g. 3600, \"90m\", \"1h\")"
        ))),
    }
}

/// Parse and check a role document (TOML, or JSON when it starts with '{').
pub(crate) fn parse_role(name: &str, data: &[u8]) -> Result<Role> {
    let what = format!("roles/{name}");
    let text = std::str::from_utf8(data)
        .map_err(|_| Error::invalid(format!("{what}: not UTF-8 text")))?
        .trim();
    let doc: RoleDoc = if text.starts_with('{') {
        serde_json::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "{what}: invalid role document (JSON line {} column {}: {})",
                e.line(),
                e.column(),
                first_line(&e.to_string())
            ))
        })?
    } else {
        toml::from_str(text).map_err(|e| {
            Error::invalid(format!(
                "{what}: invalid role document (TOML: {})",
                first_line(e.message())
            ))
        })?
    };
    let creation = check_statements(
        &format!("{what}: creation_statements"),
        doc.creation_statements.into_vec(),
        &["name", "password", "expiration"],
    )?;
    if creation.is_empty() {
        return Err(Error::invalid(format!(
            "{what}: creation_statements is empty"
        )));
    }
    if !creation.iter().any(|s| s.contains("{{name}}")) {
        return Err(Error::invalid(format!(
            "{what}: creation_statements never use {{{{name}}}}"
        )));
    }
    let revocation = check_statements(
        &format!("{what}: revocation_statements"),
        doc.revocation_statements
            .map(Statements::into_vec)
            .unwrap_or_default(),
        &["name"],
    )?;
    let renew = check_statements(
        &format!("{what}: renew_statements"),
        doc.renew_statements
            .map(Statements::into_vec)
            .unwrap_or_default(),
        &["name", "expiration"],
    )?;
    let default_ttl = dur(&format!("{what}: default_ttl"), doc.default_ttl)?;
    let max_ttl = dur(&format!("{what}: max_ttl"), doc.max_ttl)?;
    if let (Some(t), Some(m)) = (default_ttl, max_ttl) {
        if t > m {
            return Err(Error::invalid(format!(
                "{what}: default_ttl is larger than max_ttl"
            )));
        }
    }
    Ok(Role {
        creation,
        revocation,
        renew,
        default_ttl,
        max_ttl,
    })
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("").trim()
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
    dynamic: Dynamic,
    conn: Mutex<Option<Arc<Conn>>>,
    tested: Mutex<Option<Tested>>,
}

impl Postgres {
    pub fn new(view: View, services: &Services) -> Self {
        Self {
            dynamic: Dynamic::new(
                view,
                services,
                SecretConfig {
                    path: "config/connection",
                    read_refusal:
                        "config/connection is write-only: the connection URL is never read back",
                },
                &[CredView::Json, CredView::Env],
            ),
            conn: Mutex::new(None),
            tested: Mutex::new(None),
        }
    }

    fn leases(&self) -> &LeaseManager {
        &self.dynamic.services.leases
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
        let raw = self.dynamic.view.get("config/connection")?.ok_or_else(|| {
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
        self.dynamic.view.put("config/connection", &buf)?;
        *self.conn.lock().unwrap_or_else(|p| p.into_inner()) = Some(conn);
        tracing::info!(target = %target.display, "PostgreSQL connection configured");
        Ok(())
    }

    fn load_role(&self, name: &str) -> Result<Option<Role>> {
        match self.dynamic.view.get(&dynamic::role_key(name)?)? {
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
        let cfg = self.dynamic.lease_cfg()?;
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
}

impl Backend for Postgres {
    fn kind(&self) -> &'static str {
        "postgresql"
    }

    fn help(&self) -> String {
        HELP.to_string()
    }

    fn stat(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Node> {
        self.dynamic.stat(path)
    }

    fn list(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Vec<DirEntry>> {
        self.dynamic.list(path)
    }

    fn read(&self, ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes> {
        self.dynamic.read(self, ctx, path)
    }

    fn mints(&self, path: &str) -> bool {
        self.dynamic.mints(path)
    }

    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        self.dynamic.create(path)
    }

    fn write(&self, _ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        self.dynamic.write(self, path, data)
    }

    fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        self.dynamic.check_partial(self, path, data)
    }

    fn delete(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        self.dynamic.delete(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn role_documents_toml_and_json() {
        let r = parse_role(
            "ro",
            br#"creation_statements = "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
default_ttl = "1h"
max_ttl = 7200
"#,
        )
        .expect("toml");
        assert_eq!(r.creation.len(), 1);
        assert_eq!((r.default_ttl, r.max_ttl), (Some(3600), Some(7200)));
        assert!(r.revocation.is_empty() && r.renew.is_empty());
        let r = parse_role(
            "ro",
            br#"{"creation_statements": ["CREATE ROLE \"{{name}}\"", "GRANT x TO \"{{name}}\""],
                "revocation_statements": "DROP ROLE \"{{name}}\"",
                "renew_statements": ["ALTER ROLE \"{{name}}\" VALID UNTIL '{{expiration}}'"]}"#,
        )
        .expect("json");
        assert_eq!(r.creation.len(), 2);
        assert_eq!(r.revocation, vec!["DROP ROLE \"{{name}}\"".to_string()]);
        assert_eq!(r.renew.len(), 1);
    }

    #[test]
    fn role_documents_are_checked_as_they_arrive() {
        let check = |data: &[u8]| {
            partial::check_document(data, "roles/r", |t| {
                parse_role("r", t.as_bytes()).map(|_| ())
            })
        };
        // Not yet decidable: a required field still to come, an open array, a cut line, an
        // incomplete JSON object.
        for wait in [
            &b"default_ttl = \"1h\"\n"[..],
            b"creation_statements = [\n  \"CREATE ROLE x\",\n",
            b"creation_statements = \"CREATE",
            b"{\"creation_statements\": ",
            b"",
        ] {
            assert!(check(wait).is_ok(), "{}", String::from_utf8_lossy(wait));
        }
        // Final: broken syntax, a wrong type, an unknown key, a complete invalid document.
        for bad in [
            &b"foo bar\n"[..],
            b"creation_statements = 1\n",
            b"extra = 1\n",
            b"creation_statements = \"CREATE ROLE x\"\n",
            b"{\"creation_statements\": []}",
            b"{not json",
            b"\xff\n",
        ] {
            assert_eq!(
                check(bad).err().map(|e| e.kind),
                Some(ErrorKind::InvalidInput),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
        assert!(check(ROLE_OK.as_bytes()).is_ok());
    }

    const ROLE_OK: &str = "creation_statements = \"CREATE ROLE \\\"{{name}}\\\"\"\n";

    #[test]
    fn bad_role_documents_are_invalid() {
        for bad in [
            &b"\xff"[..],
            b"",
            b"{not json",
            b"creation_statements = 1",
            b"creation_statements = []",
            b"creation_statements = \"CREATE ROLE x\"",
            b"creation_statements = \"CREATE ROLE {{name}} {{oops}}\"",
            b"creation_statements = \"CREATE ROLE {{name\"",
            b"creation_statements = \"CREATE ROLE {{name}}\"\nrevocation_statements = \"{{password}}\"",
            b"creation_statements = \"CREATE ROLE {{name}}\"\ndefault_ttl = \"2h\"\nmax_ttl = \"1h\"",
            b"creation_statements = \"CREATE ROLE {{name}}\"\ndefault_ttl = \"soon\"",
            b"creation_statements = \"CREATE ROLE {{name}}\"\ndefault_ttl = 0",
            b"creation_statements = \"CREATE ROLE {{name}}\"\nextra = 1",
        ] {
            let e = parse_role("r", bad).err().map(|e| e.kind);
            assert_eq!(
                e,
                Some(ErrorKind::InvalidInput),
                "{}",
                String::from_utf8_lossy(bad)
            );
        }
    }
}
