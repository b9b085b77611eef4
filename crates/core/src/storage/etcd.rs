//! Shared storage in an etcd cluster (cargo feature `etcd`; `[storage] type = "etcd"`).
//!
//! Owns: mapping the `Storage` trait onto etcd's v3 KV API under one key prefix (get, put,
//! delete, paginated prefix listing at one revision, atomic batches as one txn, compare-and-swap
//! as a txn comparing the value or absence), and staying up while etcd members come and go: a
//! client talks to ONE endpoint at a time; a call that fails with a transport-level error
//! (Unavailable, timeout, no leader, connection refused) rebuilds the client on the next
//! endpoint and retries with bounded exponential backoff, all within a total deadline, after
//! which the call fails with `ErrorKind::Io` naming the endpoints and the last reason (also
//! logged). A tonic channel balanced over every endpoint keeps choosing a dead member after a
//! node dies, which is why the rotation is ours. It is a synchronous facade over the async
//! client: the storage owns a small tokio runtime and every call waits on a plain channel, so
//! any thread may call it. Also owns the connection's security: `https://` endpoints with a CA
//! file (and optionally a client certificate and key), rustls with ring through tonic, the
//! files read and checked (`crate::tls`) each time a client is built; etcd's user/password
//! authentication (the token is refreshed when it expires). A TLS refusal (unknown CA, host
//! name mismatch, client certificate refused) moves on to the next member at once and fails
//! the call, with that reason, once every member has refused; a refused password fails it at
//! once (it is the cluster's verdict).
//!
//! Must never: see plaintext (the barrier encrypts values and SIV-encrypts names before they
//! get here; only the seal config is plaintext and it holds no secret), log keys or values
//! (messages name the operation, the endpoint and etcd's reason), or report a compare-and-swap
//! as lost when its own earlier attempt landed (a retried CAS whose compare fails checks whether
//! the value now there is the one it was writing: barrier entries carry a random nonce, so equal
//! bytes mean our write), or put the etcd password in a message.
//!
//! Size: over ~500 lines because one etcd facade: endpoint rotation, TLS and auth, and the retry
//! loop every call shares.

use super::{Storage, WriteOp};
use crate::blocking::OwnRuntime;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretBytes;
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, DeleteOptions, GetOptions, KvClient, Txn, TxnOp,
    TxnOpResponse,
};
use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Time to open a connection to one endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Time for one request to one endpoint.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// Time for one storage call, every retry included.
pub const CALL_DEADLINE: Duration = Duration::from_secs(8);
/// First pause between attempts; doubles up to `BACKOFF_MAX`.
const BACKOFF_START: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(800);
/// Keys per page when listing.
const LIST_PAGE: i64 = 1000;
/// Largest answer accepted from etcd (tonic's default is 4 MiB; a 1 MiB value fits either way).
const MAX_DECODE: usize = 64 << 20;

/// Connection settings.
#[derive(Debug, Clone)]
pub struct EtcdConfig {
    /// `http://host:port` (or `host:port`); tried in order, rotating on failure.
    pub endpoints: Vec<String>,
    /// Every key lives under this prefix (non-empty, e.g. `nomadfs/`).
    pub prefix: String,
    /// Total time for one call, retries included.
    pub deadline: Duration,
    /// TLS (then every endpoint is `https://` or bare `host:port`).
    pub tls: Option<EtcdTls>,
    /// etcd authentication (`etcdctl user add`, `auth enable`).
    pub auth: Option<EtcdAuth>,
}

/// TLS to etcd: the CA that signed the members' certificates, and a client certificate for
/// `--client-cert-auth` members. Absolute paths, read when a client is built.
#[derive(Debug, Clone)]
pub struct EtcdTls {
    pub ca_file: PathBuf,
    /// (certificate, private key), PEM.
    pub client: Option<(PathBuf, PathBuf)>,
}

/// An etcd user and its password.
#[derive(Debug, Clone)]
pub struct EtcdAuth {
    pub user: String,
    pub password: Arc<SecretBytes>,
}

impl EtcdConfig {
    pub fn new(endpoints: Vec<String>, prefix: impl Into<String>) -> Self {
        Self {
            endpoints,
            prefix: prefix.into(),
            deadline: CALL_DEADLINE,
            tls: None,
            auth: None,
        }
    }
}

impl EtcdTls {
    /// tonic's TLS options from the files as they are now.
    fn options(&self) -> Result<etcd_client::TlsOptions> {
        let ca = crate::tls::read_checked("ca_file", &self.ca_file, false)?;
        crate::tls::certificates("ca_file", &self.ca_file, &ca)?;
        let mut o = etcd_client::TlsOptions::new()
            .ca_certificate(etcd_client::Certificate::from_pem(ca.as_slice()));
        if let Some((cert, key)) = &self.client {
            let c = crate::tls::read_checked("cert_file", cert, false)?;
            crate::tls::certificates("cert_file", cert, &c)?;
            let k = crate::tls::read_checked("key_file", key, true)?;
            crate::tls::private_key("key_file", key, &k)?;
            o = o.identity(etcd_client::Identity::from_pem(c.as_slice(), k.as_slice()));
        }
        Ok(o)
    }
}

/// The reason in an etcd client error, with its causes (a TLS failure named for a person).
fn reason_of(e: &etcd_client::Error, host: &str, ca: &str) -> String {
    use etcd_client::Error as E;
    let inner: Option<&(dyn std::error::Error + 'static)> = match e {
        E::TransportError(t) => Some(t),
        E::GRpcStatus(s) => Some(s),
        E::IoError(io) => Some(io),
        _ => None,
    };
    if let Some(why) = inner.and_then(|i| crate::tls::describe(i, host, ca)) {
        return why;
    }
    let mut s = match e {
        E::GRpcStatus(st) => format!("{:?}: {}", st.code(), st.message()),
        other => other.to_string(),
    };
    let mut cur = inner.and_then(|i| i.source());
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

/// The etcd storage. Calls may run concurrently from any thread.
pub struct EtcdStorage {
    /// First, so it shuts down before the shared state is dropped.
    runtime: OwnRuntime,
    shared: Arc<Shared>,
}

/// The connection state, shared with the cluster module (`cluster/etcd.rs`: election,
/// fenced writes, watches), which uses the same endpoints, rotation and deadline.
pub(crate) struct Shared {
    endpoints: Vec<String>,
    prefix: String,
    deadline: Duration,
    tls: Option<EtcdTls>,
    auth: Option<EtcdAuth>,
    conn: Mutex<Conn>,
}

/// The endpoint in use and its client (built lazily, rebuilt on rotation).
struct Conn {
    /// Bumped on every rotation, so concurrent failures rotate once, not once each.
    generation: u64,
    index: usize,
    client: Option<Clients>,
}

/// One connection: the KV client (with the larger decode limit) and the full client (leases,
/// watches).
#[derive(Clone)]
pub(crate) struct Clients {
    pub(crate) kv: KvClient,
    pub(crate) full: Client,
}

/// One failed attempt: whether trying again (elsewhere) may help, and why.
pub(crate) struct Failure {
    retry: bool,
    /// The kind a final failure reports: `Io`, or the caller's fault (a batch over etcd's
    /// `--max-txn-ops` is `InvalidInput`, a request over `--max-request-bytes` is `TooLarge`).
    kind: ErrorKind,
    pub(crate) reason: String,
}

impl Failure {
    /// The member's TLS refused us or we refused its certificate: another member may do better
    /// (its own certificate), asking this one again will not.
    fn tls_refused(&self) -> bool {
        self.reason.starts_with("TLS: ")
    }
}

impl From<etcd_client::Error> for Failure {
    fn from(e: etcd_client::Error) -> Self {
        use etcd_client::Error as E;
        let retry = match &e {
            E::GRpcStatus(s) => matches!(
                s.code(),
                tonic::Code::Unavailable
                    | tonic::Code::DeadlineExceeded
                    | tonic::Code::Unknown
                    | tonic::Code::Aborted
                    | tonic::Code::Cancelled
                    | tonic::Code::Internal
            ),
            E::TransportError(_) | E::IoError(_) => true,
            _ => false,
        };
        let kind = match &e {
            E::GRpcStatus(s) if s.message().contains("too large") => ErrorKind::TooLarge,
            E::GRpcStatus(s) if s.code() == tonic::Code::InvalidArgument => ErrorKind::InvalidInput,
            _ => ErrorKind::Io,
        };
        let reason = reason_of(&e, "", "ca_file");
        // A refused certificate or password does not get better by asking again.
        let refused = reason.starts_with("TLS: ")
            || matches!(&e, E::GRpcStatus(s) if s.message().contains("authentication failed")
                || s.code() == tonic::Code::Unauthenticated);
        Failure {
            retry: retry && !refused,
            kind,
            reason,
        }
    }
}

impl std::fmt::Debug for EtcdStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdStorage")
            .field("endpoints", &self.shared.endpoints)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

impl EtcdStorage {
    /// Check the settings and start the client's runtime. Contacts nothing: the first call
    /// connects (and fails with `Io` after the deadline if no endpoint answers).
    pub fn new(config: EtcdConfig) -> Result<Self> {
        let mut endpoints = Vec::new();
        for e in &config.endpoints {
            let e = e.trim();
            if e.is_empty() {
                return Err(Error::invalid("etcd endpoint is empty"));
            }
            if e.starts_with("https://") && config.tls.is_none() {
                return Err(Error::invalid(format!(
                    "etcd endpoint {e:?}: https:// needs ca_file (the CA that signed the etcd \
                     members' certificates)"
                )));
            }
            if e.starts_with("http://") && config.tls.is_some() {
                return Err(Error::invalid(format!(
                    "etcd endpoint {e:?}: ca_file is set, so every endpoint must be https:// \
                     (no plain-text member)"
                )));
            }
            if e.contains("://") && !e.starts_with("http://") && !e.starts_with("https://") {
                return Err(Error::invalid(format!(
                    "etcd endpoint {e:?} must be http://host:port, https://host:port or host:port"
                )));
            }
            endpoints.push(e.to_string());
        }
        if endpoints.is_empty() {
            return Err(Error::invalid("etcd storage needs at least one endpoint"));
        }
        if config.prefix.is_empty() {
            return Err(Error::invalid(
                "etcd prefix must not be empty (it keeps nomadfs's keys apart from others')",
            ));
        }
        if let Some(tls) = &config.tls {
            // Checked now, so a wrong path fails at start; read again at each connect.
            tls.options()?;
        }
        if let Some(a) = &config.auth {
            if a.user.is_empty() || a.password.is_empty() {
                return Err(Error::invalid("etcd user and password must not be empty"));
            }
            if a.password.text().is_none() {
                return Err(Error::invalid("etcd password is not UTF-8 text"));
            }
            if config.tls.is_none() {
                tracing::warn!(
                    "etcd: user/password over plain http: the password and the token cross \
                     the network in the clear (use https://)"
                );
            }
        }
        let runtime = OwnRuntime::new("nomadfs-etcd", "etcd client")?;
        Ok(Self {
            runtime,
            shared: Arc::new(Shared {
                endpoints,
                prefix: config.prefix,
                deadline: config.deadline,
                tls: config.tls,
                auth: config.auth,
                conn: Mutex::new(Conn {
                    generation: 0,
                    index: 0,
                    client: None,
                }),
            }),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The connection state, for the cluster module.
    pub(crate) fn shared_state(&self) -> Arc<Shared> {
        self.shared.clone()
    }

    /// The client's runtime, for the cluster module's background tasks.
    pub(crate) fn runtime(&self) -> &OwnRuntime {
        &self.runtime
    }

    /// Run `fut` on the client's runtime and wait for it from this (any) thread.
    fn run<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.runtime.run(fut)
    }
}

/// The smallest key greater than every key starting with `prefix` (etcd's range end).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    // Empty or all 0xff: "to the end of the keyspace".
    vec![0]
}

/// Keep only the last write per key, in order (etcd refuses a txn that touches a key twice;
/// applying the batch in order would leave the last write anyway).
fn last_write_per_key(ops: &[WriteOp]) -> Vec<&WriteOp> {
    let key = |op: &WriteOp| match op {
        WriteOp::Put(k, _) | WriteOp::Delete(k) => k.clone(),
    };
    let mut seen = std::collections::HashSet::new();
    let mut out: Vec<&WriteOp> = ops.iter().rev().filter(|op| seen.insert(key(op))).collect();
    out.reverse();
    out
}

impl Shared {
    pub(crate) fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn full(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    /// The client for the current endpoint (connecting if needed) and the generation it
    /// belongs to.
    async fn client(&self) -> std::result::Result<(u64, Clients), Failure> {
        let (generation, index) = {
            let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = &conn.client {
                return Ok((conn.generation, c.clone()));
            }
            (conn.generation, conn.index)
        };
        let client = self.connect_to(index).await?;
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.generation == generation && conn.client.is_none() {
            conn.client = Some(client.clone());
        }
        Ok((generation, client))
    }

    pub(crate) fn endpoint_count(&self) -> usize {
        self.endpoints.len()
    }

    pub(crate) fn endpoint_at(&self, index: usize) -> String {
        self.endpoints
            .get(index % self.endpoints.len().max(1))
            .cloned()
            .unwrap_or_default()
    }

    /// A new connection to endpoint number `index` (modulo the count), apart from the one the
    /// storage calls share (the cluster module's watches keep their own).
    pub(crate) async fn connect_to(&self, index: usize) -> std::result::Result<Clients, Failure> {
        let endpoint = self.endpoint_at(index);
        let mut options = ConnectOptions::new()
            .with_connect_timeout(CONNECT_TIMEOUT)
            .with_timeout(ATTEMPT_TIMEOUT)
            .with_keep_alive(Duration::from_secs(10), Duration::from_secs(3))
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            let o = tls.options().map_err(|e| Failure {
                retry: false,
                kind: e.kind,
                reason: e.message,
            })?;
            options = options.with_tls(o);
        }
        if let Some(a) = &self.auth {
            let pw = a.password.text().unwrap_or_default().to_string();
            options = options
                .with_user(a.user.clone(), pw)
                .with_auto_token_refresh(true);
        }
        let full = Client::connect([endpoint.as_str()], Some(options))
            .await
            .map_err(Failure::from)?;
        Ok(Clients {
            kv: full.kv_client().max_decoding_message_size(MAX_DECODE),
            full,
        })
    }

    /// After a failure on generation `generation`: drop its client and move to the next
    /// endpoint (unless another caller already did).
    fn rotate(&self, generation: u64) {
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if conn.generation != generation {
            return;
        }
        conn.generation = conn.generation.wrapping_add(1);
        conn.index = conn.index.wrapping_add(1) % self.endpoints.len().max(1);
        conn.client = None;
    }

    /// `reason` with the CA file's path where it says only "ca_file".
    fn explain(&self, reason: &str) -> String {
        match &self.tls {
            Some(t) if reason.ends_with("a CA in ca_file") => {
                format!("{reason} {}", t.ca_file.display())
            }
            _ => reason.to_string(),
        }
    }

    fn current_endpoint(&self) -> String {
        let conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        self.endpoints.get(conn.index).cloned().unwrap_or_default()
    }

    /// Run `attempt` until it succeeds, fails for good, or the deadline passes. `attempt` gets
    /// the client and whether an earlier attempt failed after possibly reaching etcd.
    pub(crate) async fn retrying<T, F, Fut>(&self, op: &'static str, mut attempt: F) -> Result<T>
    where
        F: FnMut(KvClient, bool) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        self.retrying_full(op, |c: Clients, retried| attempt(c.kv, retried))
            .await
    }

    /// `retrying` with both clients (the cluster module: leases, fenced txns).
    pub(crate) async fn retrying_full<T, F, Fut>(
        &self,
        op: &'static str,
        mut attempt: F,
    ) -> Result<T>
    where
        F: FnMut(Clients, bool) -> Fut,
        Fut: Future<Output = std::result::Result<T, Failure>>,
    {
        let start = Instant::now();
        let mut pause = BACKOFF_START;
        let mut retried = false;
        let mut tries = 0u32;
        let mut tls_refusals = 0usize;
        loop {
            tries = tries.saturating_add(1);
            let endpoint = self.current_endpoint();
            let (generation, failure) = match self.client().await {
                Ok((generation, client)) => match attempt(client, retried).await {
                    Ok(v) => {
                        if retried {
                            tracing::info!(op, endpoint, tries, "etcd call succeeded after retry");
                        }
                        return Ok(v);
                    }
                    Err(f) => (generation, f),
                },
                Err(f) => {
                    let generation = self
                        .conn
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .generation;
                    (generation, f)
                }
            };
            if failure.tls_refused() {
                // Next call starts at another member; this one tries each member once.
                self.rotate(generation);
                tls_refusals += 1;
                if tls_refusals < self.endpoints.len() {
                    tracing::warn!(
                        op,
                        endpoint,
                        "etcd member refused over TLS, trying the next endpoint: {}",
                        self.explain(&failure.reason)
                    );
                    retried = true;
                    continue;
                }
            }
            if !failure.retry {
                let msg = format!("etcd {op} at {endpoint}: {}", self.explain(&failure.reason));
                tracing::error!("{msg}");
                return Err(Error::new(failure.kind, msg));
            }
            retried = true;
            self.rotate(generation);
            let elapsed = start.elapsed();
            if elapsed + pause >= self.deadline {
                let msg = format!(
                    "etcd {op}: no endpoint of [{}] answered within {:.1}s ({tries} attempts); \
                     last: {endpoint}: {}",
                    self.endpoints.join(", "),
                    self.deadline.as_secs_f32(),
                    failure.reason
                );
                tracing::error!("{msg}");
                return Err(Error::new(ErrorKind::Io, msg));
            }
            tracing::warn!(
                op,
                endpoint,
                tries,
                "etcd call failed, trying the next endpoint: {}",
                failure.reason
            );
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(BACKOFF_MAX);
        }
    }
}

impl Storage for EtcdStorage {
    fn kind(&self) -> &'static str {
        "etcd"
    }

    fn shared(&self) -> bool {
        true
    }

    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let shared = self.shared.clone();
        let full = shared.full(key);
        self.run(async move {
            shared
                .retrying("get", |mut c, _| {
                    let full = full.clone();
                    async move {
                        let mut resp = c.get(full, None).await?;
                        Ok(resp
                            .take_kvs()
                            .into_iter()
                            .next()
                            .map(|kv| kv.into_key_value().1))
                    }
                })
                .await
        })
    }

    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let shared = self.shared.clone();
        let full = shared.full(prefix);
        self.run(async move {
            shared
                .retrying("list", |mut c, _| {
                    let shared = shared.clone();
                    let full = full.clone();
                    async move {
                        let end = prefix_end(&full);
                        let strip = shared.prefix.len();
                        let mut out = Vec::new();
                        let mut from = full.clone();
                        let mut revision = 0i64;
                        loop {
                            let opts = GetOptions::new()
                                .with_range(end.clone())
                                .with_keys_only()
                                .with_limit(LIST_PAGE)
                                .with_revision(revision);
                            let resp = c.get(from.clone(), Some(opts)).await?;
                            if revision == 0 {
                                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                            }
                            for kv in resp.kvs() {
                                let k = kv.key();
                                let name = k.get(strip..).unwrap_or_default();
                                let name = std::str::from_utf8(name).map_err(|_| Failure {
                                    retry: false,
                                    kind: ErrorKind::Integrity,
                                    reason: "a key under the prefix is not UTF-8 (not ours?)"
                                        .into(),
                                })?;
                                out.push(name.to_string());
                            }
                            match resp.kvs().last() {
                                Some(last) if resp.more() => {
                                    from = last.key().to_vec();
                                    from.push(0);
                                }
                                _ => break,
                            }
                        }
                        Ok(out)
                    }
                })
                .await
        })
    }

    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        // Pages of keys at one revision; past each child's subtree a new range (etcd keys are
        // ordered bytes, like the other stores).
        const PAGE: i64 = 100;
        let shared = self.shared.clone();
        let prefix = prefix.to_string();
        self.run(async move {
            shared
                .retrying("list", |mut c, _| {
                    let shared = shared.clone();
                    let prefix = prefix.clone();
                    async move {
                        let full = shared.full(&prefix);
                        let end = prefix_end(&full);
                        let strip = shared.prefix.len();
                        let mut out = Vec::new();
                        let mut from = full.clone();
                        let mut revision = 0i64;
                        'seek: loop {
                            let opts = GetOptions::new()
                                .with_range(end.clone())
                                .with_keys_only()
                                .with_limit(PAGE)
                                .with_revision(revision);
                            let resp = c.get(from.clone(), Some(opts)).await?;
                            if revision == 0 {
                                revision = resp.header().map(|h| h.revision()).unwrap_or(0);
                            }
                            for kv in resp.kvs() {
                                let name = kv.key().get(strip..).unwrap_or_default();
                                let name = std::str::from_utf8(name).map_err(|_| Failure {
                                    retry: false,
                                    kind: ErrorKind::Integrity,
                                    reason: "a key under the prefix is not UTF-8 (not ours?)"
                                        .into(),
                                })?;
                                if let super::Child::Subtree(child) = super::child_of(&prefix, name)
                                {
                                    out.push(child.to_string());
                                    from = shared.full(&super::past_subtree(child));
                                    continue 'seek;
                                }
                                out.push(name.to_string());
                            }
                            match resp.kvs().last() {
                                Some(last) if resp.more() => {
                                    from = last.key().to_vec();
                                    from.push(0);
                                }
                                _ => break,
                            }
                        }
                        Ok(out)
                    }
                })
                .await
        })
    }

    fn has_prefix(&self, prefix: &str) -> Result<bool> {
        let shared = self.shared.clone();
        let full = shared.full(prefix);
        self.run(async move {
            shared
                .retrying("list", |mut c, _| {
                    let full = full.clone();
                    async move {
                        let opts = GetOptions::new()
                            .with_range(prefix_end(&full))
                            .with_keys_only()
                            .with_limit(1);
                        Ok(!c.get(full, Some(opts)).await?.kvs().is_empty())
                    }
                })
                .await
        })
    }

    fn apply(&self, ops: &[WriteOp]) -> Result<()> {
        let ops = last_write_per_key(ops);
        if ops.is_empty() {
            return Ok(());
        }
        let txn_ops: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put(k, v) => TxnOp::put(self.shared.full(k), v.clone(), None),
                WriteOp::Delete(k) => TxnOp::delete(self.shared.full(k), None::<DeleteOptions>),
            })
            .collect();
        let shared = self.shared.clone();
        self.run(async move {
            shared
                .retrying("write", |mut c, _| {
                    // Puts and deletes are idempotent: repeating a batch that may have landed
                    // leaves the same state.
                    let txn = Txn::new().and_then(txn_ops.clone());
                    async move {
                        c.txn(txn).await?;
                        Ok(())
                    }
                })
                .await
        })
    }

    fn apply_if(&self, key: &str, expected: Option<&[u8]>, ops: &[WriteOp]) -> Result<bool> {
        let full = self.shared.full(key);
        let compare = match expected {
            Some(v) => Compare::value(full.clone(), CompareOp::Equal, v.to_vec()),
            // Version 0: the key does not exist.
            None => Compare::version(full.clone(), CompareOp::Equal, 0),
        };
        let ops = last_write_per_key(ops);
        // What `key` holds once the batch landed: how a retry tells its own attempt.
        let mine: Option<Option<Vec<u8>>> = ops.iter().find_map(|op| match op {
            WriteOp::Put(k, v) if k == key => Some(Some(v.clone())),
            WriteOp::Delete(k) if k == key => Some(None),
            _ => None,
        });
        let then: Vec<TxnOp> = ops
            .iter()
            .map(|op| match op {
                WriteOp::Put(k, v) => TxnOp::put(self.shared.full(k), v.clone(), None),
                WriteOp::Delete(k) => TxnOp::delete(self.shared.full(k), None::<DeleteOptions>),
            })
            .collect();
        let shared = self.shared.clone();
        self.run(async move {
            shared
                .retrying("conditional write", |mut c, retried| {
                    let txn = Txn::new()
                        .when([compare.clone()])
                        .and_then(then.clone())
                        .or_else([TxnOp::get(full.clone(), None)]);
                    let mine = mine.clone();
                    async move {
                        let resp = c.txn(txn).await?;
                        if resp.succeeded() {
                            return Ok(true);
                        }
                        if !retried {
                            return Ok(false);
                        }
                        // An earlier attempt may have landed before its answer was lost.
                        let now = resp.op_responses().into_iter().find_map(|r| match r {
                            TxnOpResponse::Get(g) => {
                                Some(g.kvs().first().map(|kv| kv.value().to_vec()))
                            }
                            _ => None,
                        });
                        Ok(matches!((now, mine), (Some(now), Some(mine)) if now == mine))
                    }
                })
                .await
        })
    }

    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        // A batch of one write of `key`: the same txn, the same retry rule.
        let op = match new {
            Some(v) => WriteOp::Put(key.to_string(), v.to_vec()),
            None => WriteOp::Delete(key.to_string()),
        };
        self.apply_if(key, expected, &[op])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_end_increments_the_last_byte() {
        assert_eq!(prefix_end(b"nomadfs/"), b"nomadfs0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn batch_keeps_the_last_write_per_key() {
        let ops = vec![
            WriteOp::Put("a".into(), b"1".to_vec()),
            WriteOp::Put("b".into(), b"2".to_vec()),
            WriteOp::Delete("a".into()),
        ];
        let kept = last_write_per_key(&ops);
        assert_eq!(
            kept,
            vec![
                &WriteOp::Put("b".into(), b"2".to_vec()),
                &WriteOp::Delete("a".into())
            ]
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        let e = EtcdStorage::new(EtcdConfig::new(vec![], "p/")).expect_err("no endpoints");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        let e =
            EtcdStorage::new(EtcdConfig::new(vec!["https://x:1".into()], "p/")).expect_err("tls");
        assert!(e.message.contains("needs ca_file"), "{}", e.message);
        let mut c = EtcdConfig::new(vec!["http://x:1".into()], "p/");
        c.tls = Some(EtcdTls {
            ca_file: "/nonexistent/ca.pem".into(),
            client: None,
        });
        let e = EtcdStorage::new(c.clone()).expect_err("http with a CA");
        assert!(e.message.contains("must be https://"), "{}", e.message);
        c.endpoints = vec!["https://x:1".into()];
        let e = EtcdStorage::new(c).expect_err("missing CA file");
        assert!(
            e.message
                .contains("ca_file /nonexistent/ca.pem: cannot read it"),
            "{}",
            e.message
        );
        let e = EtcdStorage::new(EtcdConfig::new(vec!["http://x:1".into()], ""))
            .expect_err("empty prefix");
        assert!(e.message.contains("prefix"), "{}", e.message);
    }
}
