//! Lease manager logic on virtual time. The backend here is a recorder, not a fake of any
//! upstream service: these tests are about scheduling, renewal and retry, nothing else.

use super::*;
use crate::backend::{Ctx, Node};
use crate::barrier::KdfParams;
use crate::secret::SecretBytes;
use crate::storage::memory::MemoryStorage;
use std::sync::atomic::AtomicU32;

#[derive(Default)]
struct Recorder {
    revoked: Mutex<Vec<String>>,
    /// Fail this many revocations before succeeding (u32::MAX: always).
    failures: AtomicU32,
    /// Run once inside the next revocation (what another daemon does meanwhile).
    during: Mutex<Option<Box<dyn FnOnce() + Send>>>,
    /// (lease id, new expiry) of every renewal the manager asked for.
    renewed: Mutex<Vec<(String, u64)>>,
    renew_fails: AtomicBool,
}

impl Backend for Recorder {
    fn kind(&self) -> &'static str {
        "recorder"
    }
    fn help(&self) -> String {
        String::new()
    }
    fn stat(&self, _: &Ctx<'_>, _: &str) -> Result<Node> {
        Ok(Node::dir())
    }
    fn list(&self, _: &Ctx<'_>, _: &str) -> Result<Vec<DirEntry>> {
        Ok(vec![])
    }
    fn read(&self, _: &Ctx<'_>, _: &str) -> Result<SecretBytes> {
        Ok(SecretBytes::new(vec![]))
    }
    fn revoke(&self, lease: &LeaseRecord) -> Result<()> {
        let during = lock(&self.during).take();
        if let Some(during) = during {
            during();
        }
        let f = self.failures.load(Ordering::SeqCst);
        if f > 0 {
            if f != u32::MAX {
                self.failures.fetch_sub(1, Ordering::SeqCst);
            }
            return Err(Error::io("upstream refused"));
        }
        lock(&self.revoked).push(lease.id.clone());
        Ok(())
    }
    fn renew(&self, lease: &LeaseRecord) -> Result<()> {
        if self.renew_fails.load(Ordering::SeqCst) {
            return Err(Error::io("upstream refused the extension"));
        }
        lock(&self.renewed).push((lease.id.clone(), lease.expires_ms));
        Ok(())
    }
}

const T0: u64 = 1_800_000_000_000;

fn setup() -> (
    Arc<Barrier>,
    Arc<ManualClock>,
    Arc<Recorder>,
    Arc<LeaseManager>,
) {
    let storage = Arc::new(MemoryStorage::new());
    let barrier = Arc::new(Barrier::new(storage, KdfParams::minimum()));
    barrier.unseal(b"pw").expect("unseal");
    let (clock, rec, m) = manager(&barrier);
    (barrier, clock, rec, m)
}

fn manager(barrier: &Arc<Barrier>) -> (Arc<ManualClock>, Arc<Recorder>, Arc<LeaseManager>) {
    let clock = Arc::new(ManualClock::new(T0));
    let rec = Arc::new(Recorder::default());
    let m = Arc::new(LeaseManager::new(
        barrier.clone(),
        clock.clone(),
        LeaseConfig {
            concurrency: 4,
            max_attempts: 3,
            backoff_base_ms: 1000,
            backoff_max_ms: 60_000,
        },
    ));
    let b: Arc<dyn Backend> = rec.clone();
    m.set_lookup(Box::new(move |mount| (mount == "aws").then(|| b.clone())));
    m.restore().expect("restore");
    (clock, rec, m)
}

fn issue(m: &LeaseManager, name: &str, ttl: u64, max: u64, uid: u32) -> String {
    let id = LeaseManager::new_id(&format!("aws/creds/{name}"));
    m.issue(NewLease {
        id: id.clone(),
        path: format!("aws/creds/{name}"),
        ttl_secs: ttl,
        max_ttl_secs: max,
        renewable: true,
        uid,
        secret: serde_json::json!({"user": name}),
        limit: None,
    })
    .expect("issue");
    id
}

#[test]
fn expiry_in_deadline_order() {
    let (_b, clock, rec, m) = setup();
    let late = issue(&m, "late", 30, 100, 1);
    let early = issue(&m, "early", 10, 100, 1);
    let mid = issue(&m, "mid", 20, 100, 1);
    assert_eq!(m.process_due(), 0);
    assert_eq!(m.next_due_in(), Some(10_000));
    clock.advance(10_000);
    assert_eq!(m.process_due(), 1);
    clock.advance(10_000);
    assert_eq!(m.process_due(), 1);
    clock.advance(10_000);
    assert_eq!(m.process_due(), 1);
    assert_eq!(*lock(&rec.revoked), vec![early, mid, late]);
    assert_eq!(m.count(), 0);
}

#[test]
fn renew_counts_from_now_and_caps_at_max() {
    let (_b, clock, _rec, m) = setup();
    let id = issue(&m, "r", 60, 300, 1);
    clock.advance(50_000);
    let r = m.renew(&id, Some(100)).expect("renew");
    assert_eq!(r.expires_ms, T0 + 150_000);
    // Past the max TTL: capped, not an error.
    let r = m.renew(&id, Some(10_000)).expect("renew capped");
    assert_eq!(r.expires_ms, T0 + 300_000);
    // Default increment is the original TTL.
    clock.advance(10_000);
    let r = m.renew(&id, None).expect("renew default");
    assert_eq!(r.expires_ms, T0 + 120_000);
    clock.advance(200_000);
    assert_eq!(
        m.renew(&id, None).map_err(|e| e.kind),
        Err(ErrorKind::InvalidInput)
    );
    assert_eq!(
        m.renew("aws/creds/r/nope", None).map_err(|e| e.kind),
        Err(ErrorKind::NotFound)
    );
}

#[test]
fn non_renewable_lease_refuses_renewal() {
    let (_b, _clock, _rec, m) = setup();
    let id = LeaseManager::new_id("aws/creds/x");
    m.issue(NewLease {
        id: id.clone(),
        path: "aws/creds/x".into(),
        ttl_secs: 60,
        max_ttl_secs: 60,
        renewable: false,
        uid: 1,
        secret: serde_json::Value::Null,
        limit: None,
    })
    .expect("issue");
    assert_eq!(
        m.renew(&id, None).map_err(|e| e.kind),
        Err(ErrorKind::NotPermitted)
    );
}

#[test]
fn failed_revocation_retries_with_backoff_then_irrevocable() {
    let (_b, clock, rec, m) = setup();
    rec.failures.store(u32::MAX, Ordering::SeqCst);
    let id = issue(&m, "x", 10, 10, 1);
    clock.advance(10_000);
    assert_eq!(m.process_due(), 0);
    let r = m.get(&id).expect("still there");
    assert_eq!((r.attempts, r.irrevocable), (1, false));
    let wait1 = r.retry_at_ms.expect("retry scheduled") - clock.now_ms();
    assert!((500..=1000).contains(&wait1), "first backoff {wait1}");
    // Not yet due: nothing happens.
    assert_eq!(m.process_due(), 0);
    assert_eq!(m.get(&id).expect("lease").attempts, 1);
    clock.advance(wait1);
    m.process_due();
    let r = m.get(&id).expect("lease");
    assert_eq!(r.attempts, 2);
    let wait2 = r.retry_at_ms.expect("retry") - clock.now_ms();
    assert!((1000..=2000).contains(&wait2), "second backoff {wait2}");
    clock.advance(wait2);
    m.process_due();
    let r = m.get(&id).expect("kept, never dropped");
    assert!(r.irrevocable);
    assert_eq!(r.state(), "irrevocable");
    assert_eq!(r.last_error.as_deref(), Some("upstream refused"));
    assert_eq!(
        m.next_due_in(),
        None,
        "irrevocable leases are not scheduled"
    );
    // A manual revoke once upstream works again still cleans it up.
    rec.failures.store(0, Ordering::SeqCst);
    m.revoke(&id).expect("manual revoke");
    assert_eq!(m.count(), 0);
}

#[test]
fn failed_then_recovered() {
    let (_b, clock, rec, m) = setup();
    rec.failures.store(1, Ordering::SeqCst);
    let id = issue(&m, "x", 10, 10, 1);
    assert_eq!(m.revoke(&id).map_err(|e| e.kind), Err(ErrorKind::Io));
    assert!(m.exists(&id), "kept after a failed rm");
    clock.advance(2_000);
    assert_eq!(m.process_due(), 1);
    assert!(!m.exists(&id));
}

#[test]
fn prefix_and_uid_revocation() {
    let (_b, _clock, rec, m) = setup();
    let a1 = issue(&m, "a", 100, 100, 1001);
    let a2 = issue(&m, "a", 100, 100, 1002);
    let b1 = issue(&m, "b", 100, 100, 1001);
    let ab = issue(&m, "ab", 100, 100, 1003);
    assert_eq!(m.revoke_prefix("aws/creds/a/").expect("prefix"), 2);
    assert!(!m.exists(&a1) && !m.exists(&a2));
    assert!(
        m.exists(&ab),
        "prefix is a folder, not a string prefix of names"
    );
    assert_eq!(m.revoke_uid(1001).expect("uid"), 1);
    assert!(!m.exists(&b1));
    assert_eq!(lock(&rec.revoked).len(), 3);
    assert_eq!(
        m.revoke("aws/creds/a/unknown").map_err(|e| e.kind),
        Err(ErrorKind::NotFound)
    );
}

#[test]
fn listing_as_folders() {
    let (_b, _clock, _rec, m) = setup();
    let a = issue(&m, "a", 100, 100, 1);
    issue(&m, "b", 100, 100, 1);
    let top: Vec<String> = m.list("").into_iter().map(|e| e.name).collect();
    assert_eq!(top, vec!["aws"]);
    let creds: Vec<String> = m.list("aws/creds").into_iter().map(|e| e.name).collect();
    assert_eq!(creds, vec!["a", "b"]);
    assert_eq!(m.kind("aws/creds"), Some(true));
    assert_eq!(m.kind(&a), Some(false));
    assert_eq!(m.kind("aws/nope"), None);
}

#[test]
fn restore_after_restart_makes_expired_leases_due_at_once() {
    let (barrier, clock, _rec, m) = setup();
    let short = issue(&m, "short", 10, 10, 1);
    let long = issue(&m, "long", 3600, 3600, 1);
    drop(m);
    // "Restart": a new manager over the same store, an hour later.
    let (clock2, rec2, m2) = manager(&barrier);
    clock2.set(clock.now_ms() + 60_000);
    assert_eq!(m2.count(), 2);
    assert_eq!(m2.process_due(), 1);
    assert_eq!(*lock(&rec2.revoked), vec![short]);
    assert!(m2.exists(&long));
    let r = m2.get(&long).expect("long");
    assert_eq!(r.expires_ms, T0 + 3_600_000);
}

#[test]
fn a_burst_is_revoked_concurrently_and_completely() {
    let (_b, clock, rec, m) = setup();
    for i in 0..500 {
        issue(&m, &format!("r{}", i % 7), 30, 30, i);
    }
    clock.advance(30_000);
    assert_eq!(m.process_due(), 500);
    assert_eq!(lock(&rec.revoked).len(), 500);
    assert_eq!(m.count(), 0);
}

#[test]
fn sealed_manager_refuses() {
    let (_b, _clock, _rec, m) = setup();
    m.clear();
    assert_eq!(
        m.revoke_prefix("aws/").map_err(|e| e.kind),
        Err(ErrorKind::Sealed)
    );
    assert_eq!(m.process_due(), 0);
}

#[test]
fn scheduler_thread_revokes_on_real_time() {
    let storage = Arc::new(MemoryStorage::new());
    let barrier = Arc::new(Barrier::new(storage, KdfParams::minimum()));
    barrier.unseal(b"pw").expect("unseal");
    let rec = Arc::new(Recorder::default());
    let m = Arc::new(LeaseManager::new(
        barrier,
        Arc::new(SystemClock),
        LeaseConfig::default(),
    ));
    let b: Arc<dyn Backend> = rec.clone();
    m.set_lookup(Box::new(move |_| Some(b.clone())));
    m.restore().expect("restore");
    m.start();
    issue(&m, "t", 1, 1, 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while m.count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.count(), 0, "revoked by the scheduler within 5 s");
}

#[test]
fn issue_with_huge_ttl_never_panics() {
    // `config/lease` accepts any duration up to u64::MAX seconds; issuing must saturate (the
    // lease then lives "forever" until revoked), not overflow.
    let (_b, clock, rec, m) = setup();
    let id = issue(&m, "forever", u64::MAX, u64::MAX, 1);
    let got = m.get(&id).expect("get");
    assert_eq!(got.expires_ms, u64::MAX);
    assert_eq!(got.max_expires_ms, u64::MAX);
    let id2 = issue(&m, "long", u64::MAX / 1000 + 1, u64::MAX / 1000 + 1, 1);
    assert_eq!(m.get(&id2).expect("get").expires_ms, u64::MAX);
    clock.advance(365 * 86_400_000);
    assert_eq!(m.process_due(), 0);
    assert!(lock(&rec.revoked).is_empty());
    m.renew(&id, None).expect("renew");
}

/// A memory store that says it is shared, so two managers behave as two daemons on etcd.
struct SharedMemory(Arc<MemoryStorage>);

impl crate::storage::Storage for SharedMemory {
    fn kind(&self) -> &'static str {
        "memory"
    }
    fn shared(&self) -> bool {
        true
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.0.get(key)
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.0.list(prefix)
    }
    fn apply(&self, ops: &[crate::storage::WriteOp]) -> Result<()> {
        self.0.apply(ops)
    }
    fn compare_and_swap(&self, k: &str, e: Option<&[u8]>, n: Option<&[u8]>) -> Result<bool> {
        self.0.compare_and_swap(k, e, n)
    }
}

/// One "daemon" (barrier + lease manager) on the shared store `mem`.
fn shared_daemon(mem: &Arc<MemoryStorage>) -> (Arc<ManualClock>, Arc<Recorder>, Arc<LeaseManager>) {
    let b = Arc::new(Barrier::new(
        Arc::new(SharedMemory(mem.clone())),
        KdfParams::minimum(),
    ));
    b.unseal(b"pw").expect("unseal");
    manager(&b)
}

/// An expiry election in memory (what `cluster::etcd` does through etcd): one current term;
/// a fenced write lands only while its term is the current one.
struct TestElection {
    store: Arc<MemoryStorage>,
    /// (leader node, term).
    current: Mutex<(String, i64)>,
}

struct TestNode {
    election: Arc<TestElection>,
    node: String,
}

impl TestElection {
    fn elect(&self, node: &str) {
        let mut c = lock(&self.current);
        *c = (node.to_string(), c.1 + 1);
    }
}

impl crate::cluster::Leadership for TestNode {
    fn role(&self) -> Role {
        if self.term().is_some() {
            Role::Leader
        } else {
            Role::Follower
        }
    }
    fn term(&self) -> Option<crate::cluster::Term> {
        let c = lock(&self.election.current);
        (c.0 == self.node).then_some(crate::cluster::Term { revision: c.1 })
    }
    fn node_id(&self) -> String {
        self.node.clone()
    }
    fn leader_id(&self) -> Option<String> {
        Some(lock(&self.election.current).0.clone())
    }
    fn lost(&self, _: crate::cluster::Term) {}
    fn set_eligible(&self, _: bool) {}
    fn apply_fenced(
        &self,
        term: crate::cluster::Term,
        ops: &[crate::storage::WriteOp],
    ) -> Result<bool> {
        let c = lock(&self.election.current);
        if c.1 != term.revision {
            return Ok(false);
        }
        crate::storage::Storage::apply(self.election.store.as_ref(), ops).map(|_| true)
    }
    fn compare_and_swap_fenced(
        &self,
        term: crate::cluster::Term,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<Option<bool>> {
        let c = lock(&self.election.current);
        if c.1 != term.revision {
            return Ok(None);
        }
        crate::storage::Storage::compare_and_swap(self.election.store.as_ref(), key, expected, new)
            .map(Some)
    }
}

#[test]
fn only_the_expiry_leader_revokes_and_a_deposed_leaders_record_change_is_fenced() {
    let mem = Arc::new(MemoryStorage::new());
    let election = Arc::new(TestElection {
        store: mem.clone(),
        current: Mutex::new((String::new(), 0)),
    });
    let daemon = |node: &str| {
        let (clock, rec, m) = shared_daemon(&mem);
        m.set_leadership(Arc::new(TestNode {
            election: election.clone(),
            node: node.into(),
        }));
        (clock, rec, m)
    };
    let (clock_a, rec_a, a) = daemon("a");
    let (clock_b, rec_b, b) = daemon("b");
    election.elect("a");
    assert_eq!((a.role(), b.role()), (Role::Leader, Role::Follower));
    let advance = |ms| {
        clock_a.advance(ms);
        clock_b.advance(ms);
    };
    let id = issue(&b, "shared", 10, 100, 1);
    // A learns of B's lease (the watch; the backstop sync here) and schedules it like its own.
    assert_eq!(a.sync_shared().expect("sync"), (1, 0));
    // B renews; A's copy of the deadline is stale but A re-reads before revoking.
    advance(8_000);
    b.renew(&id, Some(30)).expect("renew");
    advance(12_000);
    assert_eq!(a.process_due(), 0, "A revoked a renewed lease");
    // Past the new deadline: the follower (B, the issuer) does nothing at expiry, A revokes.
    advance(18_000);
    assert_eq!(b.process_due(), 0);
    assert!(
        lock(&rec_b.revoked).is_empty(),
        "a follower revoked at expiry"
    );
    assert_eq!(a.process_due(), 1);
    assert_eq!(*lock(&rec_a.revoked), vec![id.clone()]);
    b.note_deleted(&id);
    assert_eq!(b.count(), 0, "the watch's delete leaves B's index");

    // A is deposed while its revocation is upstream: the upstream call ran (idempotent), but
    // its record change is fenced off; the new leader revokes it again and deletes it.
    let orphan = issue(&a, "orphan", 5, 100, 1);
    b.note_stored(&orphan);
    assert!(b.exists(&orphan), "the watch's put indexes it on B");
    advance(6_000);
    let e2 = election.clone();
    *lock(&rec_a.during) = Some(Box::new(move || e2.elect("b")));
    assert_eq!(
        a.process_due(),
        0,
        "a deposed leader's revocation must not count"
    );
    assert_eq!(lock(&rec_a.revoked).len(), 2, "its upstream call ran");
    assert!(
        a.get(&orphan).is_ok(),
        "the record stays for the new leader"
    );
    assert_eq!(a.process_due(), 0, "a follower now");
    assert_eq!(b.process_due(), 1);
    assert_eq!(*lock(&rec_b.revoked), vec![orphan.clone()]);
    assert!(b.barrier.list(STORE_PREFIX).expect("list").is_empty());
    // Deposed during a failed upstream attempt: writing the attempt back is fenced too (the
    // record stays as the new leader last left it).
    let failing = issue(&b, "failing", 5, 100, 1);
    a.note_stored(&failing);
    advance(6_000);
    election.elect("a");
    let e3 = election.clone();
    rec_a.failures.store(1, Ordering::SeqCst);
    *lock(&rec_a.during) = Some(Box::new(move || e3.elect("b")));
    assert_eq!(a.process_due(), 0);
    assert_eq!(
        b.get(&failing).expect("record").attempts,
        0,
        "fenced write-back landed"
    );
    assert_eq!(b.process_due(), 1);
    // `rm` works on any node, leader or not.
    let third = issue(&b, "third", 100, 100, 1);
    // (The backstop sync: B's new lease in, the orphan B revoked out.)
    assert_eq!(a.sync_shared().expect("sync"), (1, 1));
    a.revoke(&third).expect("rm on a follower");
    assert!(a.barrier.list(STORE_PREFIX).expect("list").is_empty());
}

#[test]
fn revocation_failure_does_not_resurrect_a_lease_another_daemon_revoked() {
    let mem = Arc::new(MemoryStorage::new());
    let daemon = || shared_daemon(&mem);
    let (_ca, _ra, a) = daemon();
    let (_cb, rec_b, b) = daemon();
    let id = issue(&a, "x", 10, 100, 1);
    // B loads the record and calls upstream, which fails; meanwhile A revokes and deletes it.
    rec_b.failures.store(1, Ordering::SeqCst);
    let (a2, id2) = (a.clone(), id.clone());
    *lock(&rec_b.during) = Some(Box::new(move || a2.revoke(&id2).expect("a revokes")));
    // B's failure update must not write the record back: the lease is gone, so done.
    b.revoke(&id).expect("revoked (by A)");
    assert!(b.barrier.list(STORE_PREFIX).expect("list").is_empty());
    assert_eq!(b.count(), 0);
    assert_eq!(a.count(), 0);
}

#[test]
fn cleanup_lease_is_retried_until_upstream_answers() {
    let (_b, clock, rec, m) = setup();
    let id = LeaseManager::new_id("aws/creds/deploy");
    let r = m
        .issue_cleanup(
            NewLease {
                id: id.clone(),
                path: "aws/creds/deploy".into(),
                ttl_secs: 0,
                max_ttl_secs: 0,
                renewable: false,
                uid: 7,
                secret: serde_json::json!({"user": "u"}),
                limit: None,
            },
            "CreateUser timed out",
        )
        .expect("cleanup lease");
    assert_eq!(r.state(), "retrying");
    assert_eq!(r.last_error.as_deref(), Some("CreateUser timed out"));
    // Listed, owned by the uid that tried, never renewable.
    assert!(m.exists(&id));
    assert_eq!(
        m.renew(&id, None).map_err(|e| e.kind).err(),
        Some(ErrorKind::NotPermitted)
    );
    // Not before the backoff; upstream still down at the first try; gone at the second.
    assert_eq!(m.process_due(), 0);
    rec.failures.store(1, Ordering::SeqCst);
    clock.advance(1_000);
    assert_eq!(m.process_due(), 0);
    assert_eq!(m.get(&id).expect("still there").attempts, 2);
    clock.advance(2_000);
    assert_eq!(m.process_due(), 1);
    assert!(!m.exists(&id));
    assert_eq!(*lock(&rec.revoked), vec![id]);
}

#[test]
fn scheduler_workers_drain_a_burst_and_retry_failures() {
    let storage = Arc::new(MemoryStorage::new());
    let barrier = Arc::new(Barrier::new(storage, KdfParams::minimum()));
    barrier.unseal(b"pw").expect("unseal");
    let rec = Arc::new(Recorder::default());
    // 3 failures spread over the burst: each is retried after a 10-20 ms backoff.
    rec.failures.store(3, Ordering::SeqCst);
    let m = Arc::new(LeaseManager::new(
        barrier,
        Arc::new(SystemClock),
        LeaseConfig {
            concurrency: 4,
            max_attempts: 5,
            backoff_base_ms: 20,
            backoff_max_ms: 100,
        },
    ));
    let b: Arc<dyn Backend> = rec.clone();
    m.set_lookup(Box::new(move |_| Some(b.clone())));
    m.restore().expect("restore");
    m.start();
    for i in 0..200 {
        issue(&m, &format!("b{}", i % 5), 1, 1, i);
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while m.count() > 0 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(m.count(), 0, "every lease revoked by the workers");
    let mut revoked = lock(&rec.revoked).clone();
    assert_eq!(revoked.len(), 200);
    revoked.sort();
    revoked.dedup();
    assert_eq!(revoked.len(), 200, "no lease revoked twice");
}

#[test]
fn renew_extends_upstream_first_and_a_refusal_changes_nothing() {
    let (_b, clock, rec, m) = setup();
    let id = issue(&m, "r", 10, 100, 1);
    clock.advance(5_000);
    let r = m.renew(&id, Some(30)).expect("renew");
    assert_eq!(r.expires_ms, T0 + 35_000);
    assert_eq!(*lock(&rec.renewed), vec![(id.clone(), T0 + 35_000)]);
    rec.renew_fails.store(true, Ordering::SeqCst);
    let e = m.renew(&id, Some(60)).err().map(|e| e.kind);
    assert_eq!(e, Some(ErrorKind::Io));
    assert_eq!(m.get(&id).expect("lease").expires_ms, T0 + 35_000);
    assert_eq!(m.next_due_in(), Some(30_000));
}

#[test]
fn held_leases_wait_for_release_and_discard_forgets_without_upstream() {
    let (_b, clock, rec, m) = setup();
    let new = |name: &str| NewLease {
        id: LeaseManager::new_id(&format!("aws/creds/{name}")),
        path: format!("aws/creds/{name}"),
        ttl_secs: 1,
        max_ttl_secs: 10,
        renewable: true,
        uid: 1,
        secret: serde_json::json!({}),
        limit: None,
    };
    let kept = m.issue_held(new("kept")).expect("issue").id;
    let gone = m.issue_held(new("gone")).expect("issue").id;
    clock.advance(5_000);
    assert_eq!(m.process_due(), 0, "a held lease was revoked");
    m.discard(&gone).expect("discard");
    assert!(!m.exists(&gone));
    m.release(&kept);
    assert_eq!(m.process_due(), 1);
    assert_eq!(*lock(&rec.revoked), vec![kept]);
}

#[test]
fn leases_per_uid_are_bounded() {
    let (_b, clock, _rec, m) = setup();
    let bounded = |name: &str, uid: u32| NewLease {
        id: LeaseManager::new_id(&format!("aws/creds/{name}")),
        path: format!("aws/creds/{name}"),
        ttl_secs: 10,
        max_ttl_secs: 10,
        renewable: true,
        uid,
        secret: serde_json::json!({"user": name}),
        limit: Some(2),
    };
    let first = m.issue(bounded("a", 7)).expect("first").id;
    m.issue_held(bounded("b", 7)).expect("second");
    let e = m.issue(bounded("c", 7)).expect_err("third");
    assert_eq!(e.kind, ErrorKind::Quota);
    assert!(e.message.contains("leases_per_uid"), "{}", e.message);
    assert_eq!(
        m.check_quota(7, Some(2)).map_err(|e| e.kind),
        Err(ErrorKind::Quota)
    );
    assert_eq!(m.count_of(7), 2);
    // Another uid and an unbounded issue are not affected.
    m.issue(bounded("d", 8)).expect("other uid");
    issue(&m, "e", 10, 10, 7);
    assert_eq!(m.count_of(7), 3);
    // A revoked lease frees its place; expiry too.
    m.revoke(&first).expect("revoke");
    assert_eq!(m.count_of(7), 2);
    clock.advance(11_000);
    while m.process_due() > 0 {}
    assert!(m.count_of(7) <= 1, "expired leases still counted");
    m.check_quota(7, Some(2)).expect("room again");
}
