//! The upstream PostgreSQL client the `postgresql` backend uses to make and drop login roles.
//!
//! Owns: parsing and checking a connection URL (`postgres://user:pass@host:port/db`), talking to
//! that server with tokio-postgres (TCP with or without TLS per `sslmode`, see `tls`, or a Unix
//! socket), a small pool of idle
//! connections, and the SQL of the three upstream acts: create a role (the role's statements
//! with `{{name}}`, `{{password}}`, `{{expiration}}` substituted, one transaction), extend it
//! (`ALTER ROLE … VALID UNTIL`, or the role's renew statements) and drop it (the role's
//! revocation statements, or the default that really ends access: `NOLOGIN`, terminate its
//! sessions, `REASSIGN OWNED`/`DROP OWNED`, `DROP ROLE`). Identifiers and literals of the default
//! statements are quoted by the server (`format('%I')`/`format('%L')`), since DDL takes no bind
//! parameters. Also owns `role_name` and `password`, the names and passwords nomadfs makes.
//! It is a synchronous facade over its own small tokio runtime (like `aws::iam`): any thread may
//! call it, many at once. Every call is bounded by a connect timeout and an operation timeout.
//!
//! Must never: log the connection password or a generated password, or put either in an error
//! message (server messages are scrubbed of the generated password and of every secret the URL
//! carries: password, query-parameter values, `options` — see `Redactor`);
//! leave a role half-made (creation is one transaction: all statements or none).
//!
//! Size: over ~500 lines because one client: URL parsing, the pool and the SQL of the three
//! upstream acts share its connection types; TLS is `tls.rs`.

use super::target::chain;
pub use super::target::{Redactor, Target};
use crate::blocking::OwnRuntime;
use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use rand::Rng;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_postgres::types::Type;

/// PostgreSQL's identifier limit (NAMEDATALEN - 1) in bytes.
pub const NAME_MAX: usize = 63;
/// Length of generated passwords (alphanumeric: ~190 bits).
pub const PASSWORD_LEN: usize = 32;
/// Time to open a connection (TCP + startup + authentication).
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one upstream act, connecting included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(20);
/// Idle connections kept for reuse.
const POOL_MAX: usize = 16;
/// How long the default revocation waits for each terminated session to end (ms).
const TERMINATE_WAIT_MS: i64 = 5000;

/// A role name for `role` and `uid`: `nomadfs-<role>-u<uid>-<8 random hex>`, at most 63 bytes
/// (the role part is cut to fit), only `[a-z0-9_-]` (anything else in `role` becomes '-', upper
/// case is lowered), so it is safe inside `"{{name}}"` in a statement.
pub fn role_name(role: &str, uid: u32) -> String {
    role_name_with_suffix(role, uid, &format!("{:08x}", rand::random::<u32>()))
}

fn role_name_with_suffix(role: &str, uid: u32, suffix: &str) -> String {
    const PREFIX: &str = "nomadfs-";
    let tail = format!("-u{uid}-{suffix}");
    let budget = NAME_MAX.saturating_sub(PREFIX.len() + tail.len());
    let role: String = role
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .take(budget)
        .collect();
    format!("{PREFIX}{role}{tail}")
}

/// A fresh password: `PASSWORD_LEN` random alphanumerics from the OS generator (safe inside
/// `'{{password}}'` without quoting).
pub fn password() -> SecretBytes {
    let rng = rand::rngs::OsRng;
    let bytes: Vec<u8> = rng
        .sample_iter(rand::distributions::Alphanumeric)
        .take(PASSWORD_LEN)
        .collect();
    SecretBytes::new(bytes)
}

/// A failed `create_role`.
#[derive(Debug)]
pub struct CreateFailed {
    pub error: Error,
    /// The statements went out and no verdict came back: the role may exist.
    pub maybe_created: bool,
}

/// A role being made (see `PgClient::create_role_begin`). Dropping it rolls back.
pub struct PendingRole {
    decide: Option<tokio::sync::oneshot::Sender<bool>>,
    done: std::sync::mpsc::Receiver<std::result::Result<(), CreateFailed>>,
}

impl PendingRole {
    /// Commit (`true`) or roll back, and wait for the outcome.
    pub fn finish(mut self, commit: bool) -> std::result::Result<(), CreateFailed> {
        if let Some(tx) = self.decide.take() {
            let _ = tx.send(commit);
        }
        self.done.recv().unwrap_or_else(|_| {
            Err(CreateFailed {
                error: Error::io("PostgreSQL client: the call ended without an answer"),
                maybe_created: commit,
            })
        })
    }
}

impl Drop for PendingRole {
    fn drop(&mut self) {
        if let Some(tx) = self.decide.take() {
            let _ = tx.send(false);
        }
    }
}

/// Replace every `{{key}}` by its value. Unknown placeholders stay as they are (roles are
/// checked for them when written).
pub fn substitute(template: &str, vars: &[(&str, &str)]) -> String {
    let mut out = template.to_string();
    for (k, v) in vars {
        out = out.replace(&format!("{{{{{k}}}}}"), v);
    }
    out
}

/// Join statements into one simple-query text: PostgreSQL runs a multi-statement simple query
/// as one implicit transaction (all or nothing).
fn join(statements: &[String]) -> String {
    statements
        .iter()
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join(";\n")
}

/// The PostgreSQL client. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct PgClient {
    /// First, so it shuts down before the pool is dropped.
    runtime: OwnRuntime,
    inner: Arc<Inner>,
}

struct Inner {
    config: tokio_postgres::Config,
    tls: super::tls::TlsSettings,
    redact: Redactor,
    display: String,
    idle: Mutex<Vec<tokio_postgres::Client>>,
}

impl std::fmt::Debug for PgClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgClient")
            .field("target", &self.inner.display)
            .finish_non_exhaustive()
    }
}

impl PgClient {
    /// A client for `target`; starts its runtime, does not connect (the first call does).
    pub fn new(target: &Target) -> Result<PgClient> {
        let runtime = OwnRuntime::new("nomadfs-pg", "PostgreSQL client")?;
        Ok(PgClient {
            runtime,
            inner: Arc::new(Inner {
                config: target.config.clone(),
                tls: target.tls.clone(),
                redact: target.redact.clone(),
                display: target.display.clone(),
                idle: Mutex::new(Vec::new()),
            }),
        })
    }

    /// Run `fut` on the client's runtime, bounded by the operation timeout, and wait for it
    /// from this (any) thread.
    fn run<T, F>(&self, what: &str, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.runtime.run_within(OPERATION_TIMEOUT, fut, || {
            Error::io(format!(
                "PostgreSQL at {}: {what}: no answer within {}s",
                self.inner.display,
                OPERATION_TIMEOUT.as_secs()
            ))
        })
    }

    /// Connect and run `SELECT 1` (a new connection, so a changed password is really tried).
    pub fn ping(&self) -> Result<()> {
        let inner = self.inner.clone();
        self.run("connect", async move {
            let c = inner.connect().await?;
            c.batch_execute("SELECT 1")
                .await
                .map_err(|e| inner.err("SELECT 1", &e, None))?;
            inner.put_back(c);
            Ok(())
        })
    }

    /// Run the creation statements for `name` in one transaction and commit it. On failure,
    /// the error says whether the role may exist after all.
    pub fn create_role(
        &self,
        statements: &[String],
        name: &str,
        password: &SecretBytes,
        expiration: &str,
    ) -> std::result::Result<(), CreateFailed> {
        self.create_role_begin(statements, name, password, expiration)
            .map_err(|error| CreateFailed {
                error,
                maybe_created: false,
            })?
            .finish(true)
    }

    /// Start making role `name`: on the client's runtime, `BEGIN` and the creation statements
    /// run in an open transaction, which then waits for `PendingRole::finish` (commit or roll
    /// back; dropping it rolls back). The caller makes its own record durable meanwhile, so the
    /// role can only commit after it — and a crash before the commit rolls the role back.
    pub fn create_role_begin(
        &self,
        statements: &[String],
        name: &str,
        password: &SecretBytes,
        expiration: &str,
    ) -> Result<PendingRole> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let runtime = self.runtime.get()?;
        let pw = password
            .text()
            .ok_or_else(|| Error::io("generated password is not UTF-8"))?;
        let body = join(
            &statements
                .iter()
                .map(|s| {
                    substitute(
                        s,
                        &[("name", name), ("password", pw), ("expiration", expiration)],
                    )
                })
                .collect::<Vec<_>>(),
        );
        let sql = zeroize::Zeroizing::new(format!("BEGIN;\n{body}"));
        drop(zeroize::Zeroizing::new(body));
        let scrub = zeroize::Zeroizing::new(pw.to_string());
        let inner = self.inner.clone();
        let name = name.to_string();
        let (decide_tx, decide_rx) = tokio::sync::oneshot::channel::<bool>();
        let (done_tx, done_rx) = std::sync::mpsc::sync_channel(1);
        let commit_sent = Arc::new(AtomicBool::new(false));
        runtime.spawn(async move {
            let what = format!("creating role {name}");
            let flag = commit_sent.clone();
            let work = async {
                let failed = |error| CreateFailed {
                    error,
                    maybe_created: false,
                };
                let c = inner.conn().await.map_err(failed)?;
                if let Err(e) = c.batch_execute(&sql).await {
                    // Refused or cut off before COMMIT: nothing is committed (the connection is
                    // dropped, which ends an open transaction).
                    return Err(failed(inner.err(&what, &e, Some(&scrub))));
                }
                if !decide_rx.await.unwrap_or(false) {
                    if c.batch_execute("ROLLBACK").await.is_ok() {
                        inner.put_back(c);
                    }
                    return Err(failed(Error::io(format!(
                        "PostgreSQL at {}: {what}: rolled back",
                        inner.display
                    ))));
                }
                flag.store(true, Ordering::SeqCst);
                match c.batch_execute("COMMIT").await {
                    Ok(()) => {
                        inner.put_back(c);
                        Ok(())
                    }
                    Err(e) => Err(CreateFailed {
                        error: inner.err(&what, &e, Some(&scrub)),
                        maybe_created: e.as_db_error().is_none(),
                    }),
                }
            };
            let outcome = match tokio::time::timeout(OPERATION_TIMEOUT, work).await {
                Ok(r) => r,
                Err(_) => Err(CreateFailed {
                    error: Error::io(format!(
                        "PostgreSQL at {}: {what}: no answer within {}s",
                        inner.display,
                        OPERATION_TIMEOUT.as_secs()
                    )),
                    maybe_created: commit_sent.load(Ordering::SeqCst),
                }),
            };
            let _ = done_tx.send(outcome);
        });
        Ok(PendingRole {
            decide: Some(decide_tx),
            done: done_rx,
        })
    }

    /// Extend role `name` to `expiration`: `ALTER ROLE … VALID UNTIL …`, or `statements`
    /// (with `{{name}}` and `{{expiration}}`) when given.
    pub fn renew_role(&self, statements: &[String], name: &str, expiration: &str) -> Result<()> {
        let inner = self.inner.clone();
        let custom = (!statements.is_empty()).then(|| {
            join(
                &statements
                    .iter()
                    .map(|s| substitute(s, &[("name", name), ("expiration", expiration)]))
                    .collect::<Vec<_>>(),
            )
        });
        let (name, expiration) = (name.to_string(), expiration.to_string());
        self.run("renew", async move {
            let c = inner.conn().await?;
            let what = format!("extending role {name}");
            let sql = match custom {
                Some(sql) => sql,
                None => {
                    let row = c
                        .query_typed_opt(
                            "SELECT format('ALTER ROLE %I VALID UNTIL %L', rolname::text, $2::text) \
                             FROM pg_roles WHERE rolname = $1",
                            &[(&name, Type::TEXT), (&expiration, Type::TEXT)],
                        )
                        .await
                        .map_err(|e| inner.err(&what, &e, None))?;
                    match row {
                        Some(r) => r.try_get(0).map_err(|e| inner.err(&what, &e, None))?,
                        None => {
                            inner.put_back(c);
                            return Err(Error::io(format!(
                                "PostgreSQL at {}: {what}: the role does not exist",
                                inner.display
                            )));
                        }
                    }
                }
            };
            c.batch_execute(&sql)
                .await
                .map_err(|e| inner.err(&what, &e, None))?;
            inner.put_back(c);
            Ok(())
        })
    }

    /// Drop role `name` so that it can no longer act. A role that does not exist counts as
    /// done. With `statements` (and `{{name}}`), runs those in one transaction; otherwise the
    /// default: `ALTER ROLE NOLOGIN` (committed first), then in one transaction terminate its
    /// sessions (waiting for them to end), `REASSIGN OWNED BY` it to the connecting user,
    /// `DROP OWNED BY` it (its privileges in this database) and `DROP ROLE`.
    pub fn drop_role(&self, statements: &[String], name: &str) -> Result<()> {
        let inner = self.inner.clone();
        let custom = (!statements.is_empty()).then(|| {
            join(
                &statements
                    .iter()
                    .map(|s| substitute(s, &[("name", name)]))
                    .collect::<Vec<_>>(),
            )
        });
        let name = name.to_string();
        self.run("revoke", async move {
            let c = inner.conn().await?;
            let what = format!("dropping role {name}");
            let row = c
                .query_typed_opt(
                    "SELECT format('ALTER ROLE %I NOLOGIN', rolname::text), \
                     format('SELECT count(pg_terminate_backend(pid, %s)) FROM pg_stat_activity \
                             WHERE usename = %L AND pid <> pg_backend_pid(); \
                             REASSIGN OWNED BY %I TO CURRENT_USER; DROP OWNED BY %I; \
                             DROP ROLE %I', $2::bigint, rolname::text, rolname::text, \
                             rolname::text, rolname::text) \
                     FROM pg_roles WHERE rolname = $1",
                    &[(&name, Type::TEXT), (&TERMINATE_WAIT_MS, Type::INT8)],
                )
                .await
                .map_err(|e| inner.err(&what, &e, None))?;
            let Some(row) = row else {
                inner.put_back(c);
                return Ok(()); // already gone
            };
            match custom {
                Some(sql) => c
                    .batch_execute(&sql)
                    .await
                    .map_err(|e| inner.err(&what, &e, None))?,
                None => {
                    let nologin: String = row.try_get(0).map_err(|e| inner.err(&what, &e, None))?;
                    let rest: String = row.try_get(1).map_err(|e| inner.err(&what, &e, None))?;
                    c.batch_execute(&nologin)
                        .await
                        .map_err(|e| inner.err(&what, &e, None))?;
                    c.batch_execute(&rest)
                        .await
                        .map_err(|e| inner.err(&what, &e, None))?;
                }
            }
            inner.put_back(c);
            tracing::info!(role = %name, "dropped PostgreSQL role");
            Ok(())
        })
    }

    /// Whether role `name` exists (tests, recovery).
    pub fn role_exists(&self, name: &str) -> Result<bool> {
        let inner = self.inner.clone();
        let name = name.to_string();
        self.run("role lookup", async move {
            let c = inner.conn().await?;
            let row = c
                .query_typed_opt(
                    "SELECT 1 FROM pg_roles WHERE rolname = $1",
                    &[(&name, Type::TEXT)],
                )
                .await
                .map_err(|e| inner.err("looking up a role", &e, None))?;
            inner.put_back(c);
            Ok(row.is_some())
        })
    }
}

impl Inner {
    /// `ErrorKind::Io` naming the act, the server and its reason (with `scrub` redacted).
    fn err(&self, what: &str, e: &tokio_postgres::Error, scrub: Option<&str>) -> Error {
        let mut reason = match e.as_db_error() {
            Some(db) => {
                let mut s = format!("{} {}: {}", db.severity(), db.code().code(), db.message());
                if let Some(d) = db.detail() {
                    s.push_str(&format!(" ({d})"));
                }
                s
            }
            None => {
                let text = chain(e);
                if text.contains("server does not support TLS") {
                    format!(
                        "the server does not support SSL (sslmode={} needs ssl = on in its \
                         postgresql.conf)",
                        self.tls.mode.name()
                    )
                } else {
                    text
                }
            }
        };
        if let Some(secret) = scrub.filter(|s| !s.is_empty()) {
            reason = reason.replace(secret, "<redacted>");
        }
        let reason = self.redact.apply(&reason);
        Error::io(format!("PostgreSQL at {}: {what}: {reason}", self.display))
    }

    /// A new connection; its driver task runs on the client's runtime. The TLS files are read
    /// now (a renewed certificate counts from the next connection).
    async fn connect(&self) -> Result<tokio_postgres::Client> {
        let tls = self.tls.connector().map_err(|e| {
            Error::io(format!(
                "PostgreSQL at {}: connect: {}",
                self.display, e.message
            ))
        })?;
        let (client, connection) = self
            .config
            .connect(tls)
            .await
            .map_err(|e| self.err("connect", &e, None))?;
        let redact = self.redact.clone();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("PostgreSQL connection ended: {}", redact.apply(&chain(&e)));
            }
        });
        Ok(client)
    }

    /// An idle connection, or a new one.
    async fn conn(&self) -> Result<tokio_postgres::Client> {
        loop {
            let c = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match c {
                Some(c) if !c.is_closed() => return Ok(c),
                Some(_) => continue,
                None => return self.connect().await,
            }
        }
    }

    /// Keep `c` for reuse (only after a call that succeeded: a failed one is dropped).
    fn put_back(&self, c: tokio_postgres::Client) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < POOL_MAX && !c.is_closed() {
            idle.push(c);
        }
    }
}

#[cfg(test)]
mod tests;
