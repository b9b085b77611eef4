//! The expiry election and the watches on etcd (feature `etcd`), on the etcd storage's
//! endpoints and settings (TLS, auth). The election and each watch keep their own connection
//! (rotating to the next endpoint on failure), so they never move the endpoint the storage
//! calls use; fenced writes go through the storage's connection and its retries.
//!
//! Election: every daemon holds an etcd lease (TTL `LEASE_TTL_SECS`, kept alive every
//! `TICK`) and, while unsealed (`set_eligible`; a sealed daemon cannot revoke, and one sealed
//! while leading gives the key up), tries, every tick, `txn(if create_revision(LEADER_KEY) == 0 then put(LEADER_KEY,
//! node id, lease))`. The winner's term is the key's create revision. The key goes when the
//! leader's etcd lease lapses (it died, was paused, or lost etcd), and another daemon's next
//! tick takes it: a takeover within TTL + one tick (~3.5 s). A term is also dropped locally
//! once `LEASE_TTL_SECS - MARGIN` has passed since the last keep-alive that was sent and
//! answered, so a daemon that cannot reach etcd stops acting as leader before its key can go.
//! Every fenced write is a txn that also compares the leader key's create revision with the
//! term: a paused or deposed leader's write fails in etcd, whatever it believes.
//!
//! Watches: `watch_prefix` streams the puts and deletes under a storage key prefix to a plain
//! thread (never the client's runtime, whose threads the storage calls wait on), resuming
//! after a lost stream from the last revision seen, on the next endpoint; a compacted
//! revision (events missed) is reported as a resync.
//!
//! Must never: keep claiming a term after a keep-alive says the lease is gone, block the
//! client's runtime, or log keys or values (only the node ids, which are not secret).
//!
//! Size: over ~500 lines because the election and the watches share the connection setup and the
//! resume/retry loops.

use crate::cluster::{Leadership, Role, Term};
use crate::error::{Error, Result};
use crate::storage::etcd::{Clients, EtcdStorage, Shared};
use crate::storage::WriteOp;
use etcd_client::{Compare, CompareOp, DeleteOptions, PutOptions, Txn, TxnOp, TxnOpResponse};
use etcd_client::{EventType, WatchOptions};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The leader key (under the store's prefix; outside the barrier's `v/` keys). Its value is
/// the leader's node id.
pub const LEADER_KEY: &str = "cluster/expiry-leader";
/// The etcd lease the leader key is bound to.
pub const LEASE_TTL_SECS: i64 = 3;
/// How often each daemon keeps its etcd lease alive and campaigns.
const TICK: Duration = Duration::from_millis(500);
/// A term is dropped locally this long before the etcd lease could lapse.
const MARGIN: Duration = Duration::from_millis(700);

/// Told each watched change: (storage key, deleted).
pub type OnEvent = Box<dyn Fn(&str, bool) + Send>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[derive(Default)]
struct State {
    /// This daemon's etcd lease.
    lease: Option<i64>,
    /// When the last keep-alive that was answered was sent.
    alive_at: Option<Instant>,
    term: Option<Term>,
    leader: Option<String>,
    /// Left the election (`resign`): campaign no more.
    stopped: bool,
    /// Unsealed, lease index loaded: may campaign (`set_eligible`).
    eligible: bool,
    /// Not eligible while holding the key: give it up at the next tick.
    step_down: bool,
}

/// The election over one etcd storage. Dropping the storage's runtime ends its task.
pub struct EtcdCluster {
    storage: Arc<EtcdStorage>,
    shared: Arc<Shared>,
    node: String,
    state: Arc<Mutex<State>>,
}

impl std::fmt::Debug for EtcdCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdCluster")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

impl EtcdCluster {
    /// Join the election on `storage` as `node` (an id unique per daemon, e.g. host-pid):
    /// the campaign runs in the background from now on.
    pub fn start(storage: Arc<EtcdStorage>, node: String) -> Result<Arc<Self>> {
        let shared = storage.shared_state();
        let me = Arc::new(Self {
            storage,
            shared,
            node,
            state: Arc::default(),
        });
        let (shared, state, node) = (me.shared.clone(), me.state.clone(), me.node.clone());
        me.storage
            .runtime()
            .get()?
            .spawn(campaign(shared, state, node));
        tracing::info!(node = %me.node, ttl_s = LEASE_TTL_SECS, "joined the expiry election");
        Ok(me)
    }

    /// Leave the election (at shutdown): campaign no more and revoke the etcd lease, which
    /// deletes the leader key if this daemon holds it, so another daemon takes over at its
    /// next tick instead of after the TTL. Bounded (2 s); a failure only means the TTL runs.
    pub fn resign(&self) {
        let lease = {
            let mut st = lock(&self.state);
            st.stopped = true;
            st.term = None;
            st.lease.take()
        };
        let Some(id) = lease else { return };
        let shared = self.shared.clone();
        let r = self.storage.runtime().run_within(
            Duration::from_secs(2),
            async move {
                shared
                    .retrying_full("lease revoke", |c: Clients, _| async move {
                        let mut full = c.full;
                        full.lease_revoke(id).await?;
                        Ok(())
                    })
                    .await
            },
            || Error::io("etcd lease revoke: no answer within 2 s"),
        );
        match r {
            Ok(()) => tracing::info!(node = %self.node, "left the expiry election"),
            Err(e) => tracing::warn!(
                node = %self.node,
                "leaving the expiry election: {} (its etcd lease lapses within {LEASE_TTL_SECS} s)",
                e.message
            ),
        }
    }

    fn leader_key(&self) -> Vec<u8> {
        self.shared.full(LEADER_KEY)
    }

    /// Stream every put (`false`) and delete (`true`) under storage key `prefix` to
    /// `on_event(storage key, deleted)`, and `on_resync()` when events may have been missed
    /// (the revision was compacted): both on one plain thread, in order.
    pub fn watch_prefix(
        &self,
        prefix: &str,
        on_event: OnEvent,
        on_resync: Box<dyn Fn() + Send>,
    ) -> Result<()> {
        let (tx, rx) = std::sync::mpsc::channel::<Option<(String, bool)>>();
        std::thread::Builder::new()
            .name("nomadfs-watch".into())
            .spawn(move || {
                while let Ok(ev) = rx.recv() {
                    match ev {
                        Some((key, deleted)) => on_event(&key, deleted),
                        None => on_resync(),
                    }
                }
            })
            .map_err(|e| Error::io(format!("cannot start the watch thread: {e}")))?;
        let shared = self.shared.clone();
        let full = shared.full(prefix);
        self.storage
            .runtime()
            .get()?
            .spawn(watch_loop(shared, full, tx));
        Ok(())
    }
}

/// The election's own connection, apart from the storage calls' shared one (whose endpoint
/// rotation it must not disturb): one endpoint at a time, the next after any failure; each
/// call bounded by `CALL_LIMIT`, never retried within a tick (the next tick is the retry).
struct OwnConn {
    shared: Arc<Shared>,
    index: usize,
    clients: Option<Clients>,
}

/// One election call (connecting included).
const CALL_LIMIT: Duration = Duration::from_millis(1500);

impl OwnConn {
    async fn call<T, F, Fut>(&mut self, op: &str, f: F) -> Result<T>
    where
        F: FnOnce(Clients) -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, etcd_client::Error>>,
    {
        let endpoint = self.shared.endpoint_at(self.index);
        let clients = match &self.clients {
            Some(c) => c.clone(),
            None => {
                match tokio::time::timeout(CALL_LIMIT, self.shared.connect_to(self.index)).await {
                    Ok(Ok(c)) => {
                        self.clients = Some(c.clone());
                        c
                    }
                    Ok(Err(f)) => return Err(self.fail(op, &endpoint, &f.reason)),
                    Err(_) => return Err(self.fail(op, &endpoint, "connect timed out")),
                }
            }
        };
        match tokio::time::timeout(CALL_LIMIT, f(clients)).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(self.fail(op, &endpoint, &e.to_string())),
            Err(_) => Err(self.fail(op, &endpoint, "timed out")),
        }
    }

    fn fail(&mut self, op: &str, endpoint: &str, reason: &str) -> Error {
        self.clients = None;
        self.index = self.index.wrapping_add(1) % self.shared.endpoint_count().max(1);
        Error::io(format!(
            "etcd {op} at {endpoint}: {reason} (next: the next endpoint)"
        ))
    }
}

/// One campaign tick after another until the runtime shuts down.
async fn campaign(shared: Arc<Shared>, state: Arc<Mutex<State>>, node: String) {
    let key = shared.full(LEADER_KEY);
    let mut own = OwnConn {
        shared,
        index: 0,
        clients: None,
    };
    loop {
        if lock(&state).stopped {
            return;
        }
        if let Err(e) = tick(&mut own, &state, &node, &key).await {
            tracing::warn!(node = %node, "expiry election: {}", e.message);
        }
        tokio::time::sleep(TICK).await;
    }
}

async fn tick(own: &mut OwnConn, state: &Mutex<State>, node: &str, key: &[u8]) -> Result<()> {
    let (stopped, eligible, step_down, lease) = {
        let st = lock(state);
        (st.stopped, st.eligible, st.step_down, st.lease)
    };
    if stopped {
        return Ok(());
    }
    if !eligible {
        // Sealed: no etcd lease kept, nothing campaigned. Sealed while leading: revoke the
        // etcd lease (the key goes with it) so another daemon takes over at its next tick.
        if let (true, Some(id)) = (step_down, lease) {
            own.call("lease revoke", |c| async move {
                let mut full = c.full;
                full.lease_revoke(id).await.map(|_| ())
            })
            .await?;
            tracing::info!(node, "stepped down as expiry leader (sealed)");
        }
        let mut st = lock(state);
        st.step_down = false;
        st.lease = None;
        st.term = None;
        st.alive_at = None;
        return Ok(());
    }
    // An etcd lease, kept alive.
    let lease = match lease {
        Some(id) => {
            let sent = Instant::now();
            let ttl = own
                .call("lease keep-alive", |c| async move {
                    let mut full = c.full;
                    let (mut keeper, mut stream) = full.lease_keep_alive(id).await?;
                    keeper.keep_alive().await?;
                    Ok(stream.message().await?.map_or(0, |r| r.ttl()))
                })
                .await?;
            if ttl <= 0 {
                let mut st = lock(state);
                if let Some(t) = st.term.take() {
                    tracing::warn!(
                        node,
                        term = t.revision,
                        "expiry leadership lost: the etcd lease lapsed"
                    );
                }
                st.lease = None;
                st.alive_at = None;
                return Ok(());
            }
            lock(state).alive_at = Some(sent);
            id
        }
        None => {
            let sent = Instant::now();
            let id = own
                .call("lease grant", |c| async move {
                    let mut full = c.full;
                    Ok(full.lease_grant(LEASE_TTL_SECS, None).await?.id())
                })
                .await?;
            let mut st = lock(state);
            st.lease = Some(id);
            st.alive_at = Some(sent);
            id
        }
    };
    // Campaign: take the key if nobody holds it; else learn who does.
    let (won, holder) = own
        .call("election", |c| {
            let key = key.to_vec();
            let node = node.to_string();
            async move {
                let mut kv = c.kv;
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        node.into_bytes(),
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key, None)]);
                let resp = kv.txn(txn).await?;
                if resp.succeeded() {
                    let rev = resp.header().map_or(0, |h| h.revision());
                    return Ok((Some(rev), None));
                }
                let holder = resp.op_responses().into_iter().find_map(|r| match r {
                    TxnOpResponse::Get(g) => g.kvs().first().map(|kv| {
                        (
                            kv.create_revision(),
                            kv.lease(),
                            String::from_utf8_lossy(kv.value()).to_string(),
                        )
                    }),
                    _ => None,
                });
                Ok((None, holder))
            }
        })
        .await?;
    let mut st = lock(state);
    if st.stopped || !st.eligible {
        return Ok(());
    }
    match (won, holder) {
        (Some(rev), _) => {
            st.term = Some(Term { revision: rev });
            st.leader = Some(node.to_string());
            tracing::info!(node, term = rev, "elected expiry leader");
        }
        (None, Some((rev, holder_lease, holder))) => {
            if holder_lease == lease && holder == node {
                // Ours (e.g. won on a call whose answer was lost): the term is its revision.
                if st.term.is_none() {
                    tracing::info!(node, term = rev, "elected expiry leader");
                }
                st.term = Some(Term { revision: rev });
            } else {
                if let Some(t) = st.term.take() {
                    tracing::warn!(node, term = t.revision, leader = %holder, "expiry leadership lost to another daemon");
                }
                if st.leader.as_deref() != Some(holder.as_str()) {
                    tracing::info!(node, leader = %holder, "following the expiry leader");
                }
            }
            st.leader = Some(holder);
        }
        (None, None) => {}
    }
    Ok(())
}

async fn watch_loop(
    shared: Arc<Shared>,
    prefix: Vec<u8>,
    tx: std::sync::mpsc::Sender<Option<(String, bool)>>,
) {
    let strip = shared.prefix().len();
    // The last revision delivered (0: none yet; start at "now").
    let mut last = 0i64;
    // Its own endpoint (rotating on failure), apart from the storage calls' connection.
    let mut index = 0usize;
    let mut failures = 0u32;
    loop {
        let endpoint = shared.endpoint_at(index);
        let mut opts = WatchOptions::new().with_prefix();
        if last > 0 {
            opts = opts.with_start_revision(last + 1);
        }
        let stream = match shared.connect_to(index).await {
            Ok(c) => {
                let mut full = c.full;
                full.watch(prefix.clone(), Some(opts))
                    .await
                    .map(|s| (full, s))
                    .map_err(|e| e.to_string())
            }
            Err(f) => Err(f.reason),
        };
        let (_client, mut stream) = match stream {
            Ok(s) => s,
            Err(reason) => {
                failures = failures.saturating_add(1);
                tracing::warn!(endpoint, "watch: {reason}; trying the next endpoint");
                index = index.wrapping_add(1) % shared.endpoint_count().max(1);
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        if failures > 0 {
            tracing::info!(endpoint, from_revision = last + 1, "watch resumed");
        }
        let why = loop {
            match stream.message().await {
                Ok(Some(resp)) => {
                    failures = 0;
                    if resp.canceled() {
                        tracing::warn!(
                            compact_revision = resp.compact_revision(),
                            "watch canceled ({}); re-reading everything",
                            resp.cancel_reason()
                        );
                        last = 0;
                        if tx.send(None).is_err() {
                            return;
                        }
                        break "canceled".to_string();
                    }
                    for ev in resp.events() {
                        let Some(kv) = ev.kv() else { continue };
                        last = last.max(kv.mod_revision());
                        let Some(key) = kv.key().get(strip..) else {
                            continue;
                        };
                        let key = String::from_utf8_lossy(key).to_string();
                        let deleted = matches!(ev.event_type(), EventType::Delete);
                        if tx.send(Some((key, deleted))).is_err() {
                            return;
                        }
                    }
                }
                Ok(None) => break "closed by the server".to_string(),
                Err(e) => break e.to_string(),
            }
        };
        failures = failures.saturating_add(1);
        tracing::warn!(
            endpoint,
            "watch stream ended ({why}); reconnecting on the next endpoint"
        );
        index = index.wrapping_add(1) % shared.endpoint_count().max(1);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

impl Leadership for EtcdCluster {
    fn role(&self) -> Role {
        if self.term().is_some() {
            Role::Leader
        } else {
            Role::Follower
        }
    }

    fn term(&self) -> Option<Term> {
        let st = lock(&self.state);
        let fresh = st.alive_at.is_some_and(|t| {
            t.elapsed() < Duration::from_secs(LEASE_TTL_SECS as u64).saturating_sub(MARGIN)
        });
        st.term.filter(|_| fresh)
    }

    fn node_id(&self) -> String {
        self.node.clone()
    }

    fn leader_id(&self) -> Option<String> {
        if self.term().is_some() {
            return Some(self.node.clone());
        }
        lock(&self.state).leader.clone()
    }

    fn set_eligible(&self, eligible: bool) {
        let mut st = lock(&self.state);
        st.eligible = eligible;
        if !eligible && st.term.take().is_some() {
            st.step_down = true;
        }
    }

    fn lost(&self, term: Term) {
        let mut st = lock(&self.state);
        if st.term == Some(term) {
            st.term = None;
            tracing::warn!(node = %self.node, term = term.revision, "expiry leadership lost: a fenced write was refused");
        }
    }

    fn apply_fenced(&self, term: Term, ops: &[WriteOp]) -> Result<bool> {
        let mut seen = std::collections::HashSet::new();
        let mut txn_ops: Vec<TxnOp> = Vec::new();
        for op in ops.iter().rev() {
            let k = match op {
                WriteOp::Put(k, _) | WriteOp::Delete(k) => k,
            };
            if !seen.insert(k.clone()) {
                continue;
            }
            txn_ops.push(match op {
                WriteOp::Put(k, v) => TxnOp::put(self.shared.full(k), v.clone(), None),
                WriteOp::Delete(k) => TxnOp::delete(self.shared.full(k), None::<DeleteOptions>),
            });
        }
        txn_ops.reverse();
        let fence = Compare::create_revision(self.leader_key(), CompareOp::Equal, term.revision);
        let shared = self.shared.clone();
        self.storage.runtime().run(async move {
            shared
                .retrying_full("fenced write", |c: Clients, _| {
                    let txn = Txn::new().when([fence.clone()]).and_then(txn_ops.clone());
                    async move {
                        let mut kv = c.kv;
                        Ok(kv.txn(txn).await?.succeeded())
                    }
                })
                .await
        })
    }

    fn compare_and_swap_fenced(
        &self,
        term: Term,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Option<bool>> {
        let full = self.shared.full(key);
        let leader = self.leader_key();
        let compare = match expected {
            Some(v) => Compare::value(full.clone(), CompareOp::Equal, v.to_vec()),
            None => Compare::version(full.clone(), CompareOp::Equal, 0),
        };
        let fence = Compare::create_revision(leader.clone(), CompareOp::Equal, term.revision);
        let then = match new {
            Some(v) => TxnOp::put(full.clone(), v.to_vec(), None),
            None => TxnOp::delete(full.clone(), None::<DeleteOptions>),
        };
        let new = new.map(<[u8]>::to_vec);
        let shared = self.shared.clone();
        self.storage.runtime().run(async move {
            shared
                .retrying_full("fenced compare-and-swap", |c: Clients, retried| {
                    let txn = Txn::new()
                        .when([fence.clone(), compare.clone()])
                        .and_then([then.clone()])
                        .or_else([
                            TxnOp::get(leader.clone(), None),
                            TxnOp::get(full.clone(), None),
                        ]);
                    let new = new.clone();
                    async move {
                        let mut kv = c.kv;
                        let resp = kv.txn(txn).await?;
                        if resp.succeeded() {
                            return Ok(Some(true));
                        }
                        let gets: Vec<Option<(i64, Vec<u8>)>> = resp
                            .op_responses()
                            .into_iter()
                            .filter_map(|r| match r {
                                TxnOpResponse::Get(g) => Some(
                                    g.kvs()
                                        .first()
                                        .map(|kv| (kv.create_revision(), kv.value().to_vec())),
                                ),
                                _ => None,
                            })
                            .collect();
                        let leader_rev = gets.first().cloned().flatten().map(|(r, _)| r);
                        if leader_rev != Some(term.revision) {
                            return Ok(None);
                        }
                        let now = gets.get(1).cloned().flatten().map(|(_, v)| v);
                        // An earlier attempt may have landed before its answer was lost.
                        Ok(Some(retried && now == new))
                    }
                })
                .await
        })
    }
}

/// Keep `engine` in step with what other daemons change in the shared store: watch the
/// wrapped keyring (`Barrier::keyring_changed`: new writes use a term another daemon added at
/// once), and once unsealed everything under the barrier's `core/` (policies, the mount
/// table, lease records), re-reading what changed: policies (`Engine::invalidate_policies`),
/// the mount table (`Engine::reload_table`), lease records
/// (`LeaseManager::note_stored`/`note_deleted`).
/// Each of them tells the change listener, which drops the kernel's entries.
pub fn follow(engine: &Arc<crate::Engine>, cluster: &Arc<EtcdCluster>) -> Result<()> {
    // The wrapped keyring (a plaintext key name): watched from the start.
    let weak = Arc::downgrade(engine);
    cluster.watch_prefix(
        crate::barrier::Barrier::KEYRING_STORAGE_KEY,
        Box::new(move |_, deleted| {
            if let (Some(e), false) = (weak.upgrade(), deleted) {
                match e.barrier().keyring_changed() {
                    Ok(_) => {}
                    Err(err) if err.kind == crate::ErrorKind::Sealed => {}
                    Err(err) => tracing::warn!("re-reading the keyring failed: {}", err.message),
                }
            }
        }),
        Box::new(|| {}),
    )?;
    let (engine, cluster) = (Arc::downgrade(engine), cluster.clone());
    std::thread::Builder::new()
        .name("nomadfs-follow".into())
        .spawn(move || {
            // The watched prefix is an encrypted name: wait for the name key (unseal).
            let prefix = loop {
                let Some(e) = engine.upgrade() else { return };
                if let Ok(p) = e.barrier().storage_prefix("core/") {
                    break p;
                }
                drop(e);
                std::thread::sleep(Duration::from_millis(200));
            };
            let (on_event, on_resync) = (engine.clone(), engine.clone());
            let watched = cluster.watch_prefix(
                &prefix,
                Box::new(move |key, deleted| {
                    if let Some(e) = on_event.upgrade() {
                        apply_event(&e, key, deleted);
                    }
                }),
                Box::new(move || {
                    if let Some(e) = on_resync.upgrade() {
                        e.invalidate_policies();
                        e.reload_table();
                        if let Err(err) = e.leases().sync_shared() {
                            tracing::warn!("lease index resync failed: {}", err.message);
                        }
                    }
                }),
            );
            match watched {
                Ok(()) => tracing::info!("watching the shared store for other daemons' changes"),
                Err(e) => tracing::error!(
                    "cannot watch the shared store (changes by other daemons are seen only \
                     when re-read): {}",
                    e.message
                ),
            }
        })
        .map_err(|e| Error::io(format!("cannot start the watch thread: {e}")))?;
    Ok(())
}

/// One watched change under `core/`.
fn apply_event(engine: &crate::Engine, key: &str, deleted: bool) {
    let logical = match engine.barrier().logical_of(key) {
        Ok(Some(l)) => l,
        Ok(None) | Err(_) => return,
    };
    if logical.starts_with("core/policies/") {
        engine.invalidate_policies();
    } else if logical == crate::mounts::TABLE_PATH {
        engine.reload_table();
    } else if let Some(id) = logical.strip_prefix("core/leases/") {
        if deleted {
            engine.leases().note_deleted(id);
        } else {
            engine.leases().note_stored(id);
        }
    }
}
