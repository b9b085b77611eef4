//! Tests of the fault-injecting wrapper, and of the engine over it: over the memory and the file
//! store, a failed call changes nothing (or, for a lost acknowledgement, exactly what was asked),
//! a successful one is durable, nothing panics, and everything is readable once faults stop.

use super::*;
use crate::barrier::KdfParams;
use crate::engine::{Engine, EngineConfig};
use crate::storage::conformance;
use crate::storage::file::FileStorage;
use crate::storage::memory::MemoryStorage;
use crate::{Caller, SecretBytes};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};

#[test]
fn plan_parses_and_refuses_nonsense() {
    let p = FaultPlan::parse("rate=0.2, put=0.5,enospc=1,lost_ack=0.25,seed=9,while=/tmp/x")
        .expect("parse");
    assert_eq!(p.rates, [0.2, 0.5, 0.2, 0.2, 0.2, 0.2]);
    assert_eq!((p.enospc, p.lost_ack, p.seed), (1.0, 0.25, 9));
    assert_eq!(p.while_exists, Some(PathBuf::from("/tmp/x")));
    assert_eq!(FaultPlan::parse("").expect("empty"), FaultPlan::default());
    for bad in [
        "rate=2",
        "rate=-0.1",
        "rate=x",
        "put",
        "bogus=1",
        "seed=-1",
        "get=NaN",
    ] {
        let e = FaultPlan::parse(bad).expect_err(bad);
        assert_eq!(e.kind, ErrorKind::InvalidInput, "{bad}");
    }
    assert!(p.describe().contains("put=0.5"));
}

#[test]
fn conformance_with_faults_off() {
    let mem = FaultyStorage::new(Arc::new(MemoryStorage::new()), FaultPlan::uniform(1.0, 1));
    mem.set_enabled(false);
    conformance::run(&mem);
    let dir = tempfile::tempdir().expect("tempdir");
    let file = FileStorage::open(&dir.path().join("s")).expect("open");
    conformance::run(&FaultyStorage::new(
        Arc::new(file),
        FaultPlan::uniform(0.0, 1),
    ));
}

#[test]
fn every_call_fails_and_changes_nothing_at_rate_one() {
    let inner = Arc::new(MemoryStorage::new());
    inner.put("k", b"old").expect("seed");
    let s = FaultyStorage::new(inner.clone(), FaultPlan::uniform(1.0, 3));
    assert_eq!(kind(s.get("k")), Some(ErrorKind::Io));
    assert_eq!(kind(s.put("k", b"new")), Some(ErrorKind::Io));
    assert_eq!(kind(s.delete("k")), Some(ErrorKind::Io));
    assert_eq!(kind(s.list("")), Some(ErrorKind::Io));
    assert_eq!(kind(s.has_prefix("")), Some(ErrorKind::Io));
    assert_eq!(
        kind(s.apply(&[WriteOp::Put("z".into(), b"z".to_vec())])),
        Some(ErrorKind::Io)
    );
    assert_eq!(
        kind(s.compare_and_swap("k", Some(b"old"), None)),
        Some(ErrorKind::Io)
    );
    assert_eq!(inner.dump(), vec![("k".to_string(), b"old".to_vec())]);
    let t = s.total();
    assert_eq!((t.calls, t.injected, t.lost_ack), (7, 7, 0));
    assert!(t.enospc > 0 && t.enospc < 7, "both error shapes: {t:?}");
    assert!(s.summary().contains("injected 7 of 7 calls"));
    // Off again: the store answers.
    s.set_enabled(false);
    assert_eq!(s.get("k").expect("get"), Some(b"old".to_vec()));
}

#[test]
fn lost_acknowledgements_land_and_report_failure() {
    let inner = Arc::new(MemoryStorage::new());
    let plan = FaultPlan {
        lost_ack: 1.0,
        ..FaultPlan::uniform(1.0, 5)
    };
    let s = FaultyStorage::new(inner.clone(), plan);
    assert_eq!(kind(s.put("k", b"v")), Some(ErrorKind::Io));
    assert_eq!(inner.get("k").expect("get"), Some(b"v".to_vec()));
    // Reads are never "after" faults: nothing to lose.
    assert_eq!(kind(s.get("k")), Some(ErrorKind::Io));
    assert_eq!(s.stats(OpKind::Put).lost_ack, 1);
    assert_eq!(s.stats(OpKind::Get).lost_ack, 0);
}

#[test]
fn the_while_file_switches_faults() {
    let dir = tempfile::tempdir().expect("tempdir");
    let flag = dir.path().join("on");
    let plan = FaultPlan {
        while_exists: Some(flag.clone()),
        ..FaultPlan::uniform(1.0, 1)
    };
    let s = FaultyStorage::new(Arc::new(MemoryStorage::new()), plan);
    s.put("a", b"1").expect("no flag: no fault");
    std::fs::write(&flag, b"").expect("flag");
    assert_eq!(kind(s.get("a")), Some(ErrorKind::Io));
    std::fs::remove_file(&flag).expect("unflag");
    assert_eq!(s.get("a").expect("get"), Some(b"1".to_vec()));
}

#[test]
fn the_same_seed_injects_the_same_faults() {
    let run = |seed| {
        let s = FaultyStorage::new(
            Arc::new(MemoryStorage::new()),
            FaultPlan::uniform(0.3, seed),
        );
        (0..200)
            .map(|i| s.put(&format!("k{i}"), b"v").is_ok())
            .collect::<Vec<_>>()
    };
    assert_eq!(run(11), run(11));
    assert_ne!(run(11), run(12));
    let hits = run(11).iter().filter(|ok| !**ok).count();
    assert!((20..=100).contains(&hits), "about 30% of 200: {hits}");
}

fn kind<T>(r: Result<T>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind)
}

// ---- the wrapper against a model, over both stores ----

#[derive(Debug, Clone)]
enum SOp {
    Get(u8),
    Put(u8, u8),
    Delete(u8),
    List(u8),
    Batch(Vec<(u8, Option<u8>)>),
    Cas(u8, Option<u8>, Option<u8>),
}

fn key(k: u8) -> String {
    format!("{}/{}", k % 2, k)
}
fn val(v: u8) -> Vec<u8> {
    vec![v; 1 + v as usize % 7]
}

fn sop() -> impl Strategy<Value = SOp> {
    let k = 0u8..6;
    prop_oneof![
        k.clone().prop_map(SOp::Get),
        (k.clone(), any::<u8>()).prop_map(|(k, v)| SOp::Put(k, v)),
        k.clone().prop_map(SOp::Delete),
        (0u8..3).prop_map(SOp::List),
        proptest::collection::vec((k.clone(), proptest::option::of(any::<u8>())), 1..4)
            .prop_map(SOp::Batch),
        (
            k,
            proptest::option::of(0u8..3),
            proptest::option::of(0u8..3)
        )
            .prop_map(|(k, e, n)| SOp::Cas(k, e, n)),
    ]
}

type Model = BTreeMap<String, Vec<u8>>;

fn snapshot(s: &dyn Storage) -> Model {
    s.list("")
        .expect("list inner")
        .into_iter()
        .map(|k| {
            let v = s
                .get(&k)
                .expect("get inner")
                .expect("listed key has a value");
            (k, v)
        })
        .collect()
}

/// The model after `op` succeeds (and CAS's answer).
fn apply_model(m: &Model, op: &SOp) -> (Model, Option<bool>) {
    let mut m = m.clone();
    let mut swapped = None;
    match op {
        SOp::Get(_) | SOp::List(_) => {}
        SOp::Put(k, v) => {
            m.insert(key(*k), val(*v));
        }
        SOp::Delete(k) => {
            m.remove(&key(*k));
        }
        SOp::Batch(ops) => {
            for (k, v) in ops {
                match v {
                    Some(v) => m.insert(key(*k), val(*v)),
                    None => m.remove(&key(*k)),
                };
            }
        }
        SOp::Cas(k, e, n) => {
            let ok = m.get(&key(*k)) == e.map(val).as_ref();
            if ok {
                match n {
                    Some(v) => m.insert(key(*k), val(*v)),
                    None => m.remove(&key(*k)),
                };
            }
            swapped = Some(ok);
        }
    }
    (m, swapped)
}

/// Run `ops` against `s` (wrapping `inner`); check every answer; return the injected count.
fn check_against_model(
    s: &FaultyStorage,
    inner: &dyn Storage,
    ops: &[SOp],
) -> std::result::Result<u64, TestCaseError> {
    let lost_ack_possible = s.plan().lost_ack > 0.0;
    let mut m = snapshot(inner);
    for op in ops {
        let (after, swapped) = apply_model(&m, op);
        let res: Result<Option<bool>> = match op {
            SOp::Get(k) => s.get(&key(*k)).map(|v| {
                assert_eq!(v.as_ref(), m.get(&key(*k)), "get {k}");
                None
            }),
            SOp::List(p) => s.list(&format!("{p}")).map(|l| {
                let want: Vec<&String> = m
                    .keys()
                    .filter(|k| k.starts_with(&format!("{p}")))
                    .collect();
                assert_eq!(l.iter().collect::<Vec<_>>(), want, "list {p}");
                None
            }),
            SOp::Put(k, v) => s.put(&key(*k), &val(*v)).map(|_| None),
            SOp::Delete(k) => s.delete(&key(*k)).map(|_| None),
            SOp::Batch(b) => s
                .apply(
                    &b.iter()
                        .map(|(k, v)| match v {
                            Some(v) => WriteOp::Put(key(*k), val(*v)),
                            None => WriteOp::Delete(key(*k)),
                        })
                        .collect::<Vec<_>>(),
                )
                .map(|_| None),
            SOp::Cas(k, e, n) => s
                .compare_and_swap(&key(*k), e.map(val).as_deref(), n.map(val).as_deref())
                .map(Some),
        };
        let now = snapshot(inner);
        match res {
            Ok(answer) => {
                prop_assert_eq!(answer, swapped, "cas answer of {:?}", op);
                prop_assert_eq!(&now, &after, "state after acknowledged {:?}", op);
                m = after;
            }
            Err(e) => {
                prop_assert_eq!(e.kind, ErrorKind::Io);
                prop_assert!(e.message.contains("injected"), "{}", e.message);
                if lost_ack_possible {
                    prop_assert!(
                        now == m || now == after,
                        "a failed {:?} left a state that is neither before nor after",
                        op
                    );
                } else {
                    prop_assert_eq!(&now, &m, "a failed {:?} changed the store", op);
                }
                m = now;
            }
        }
    }
    Ok(s.total().injected)
}

fn plan_strategy() -> impl Strategy<Value = FaultPlan> {
    (
        0.0f64..0.6,
        0.0f64..1.0,
        prop_oneof![Just(0.0), 0.0f64..1.0],
        any::<u64>(),
    )
        .prop_map(|(rate, enospc, lost_ack, seed)| FaultPlan {
            enospc,
            lost_ack,
            ..FaultPlan::uniform(rate, seed)
        })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn faulty_memory_store_matches_the_model(plan in plan_strategy(),
                                              ops in proptest::collection::vec(sop(), 1..60)) {
        let inner = Arc::new(MemoryStorage::new());
        let s = FaultyStorage::new(inner.clone(), plan);
        check_against_model(&s, inner.as_ref(), &ops)?;
    }
}

proptest! {
    // Every acknowledged write of the file store is an fsync: fewer cases keep CI short.
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn faulty_file_store_matches_the_model_and_survives_reopen(
        plan in plan_strategy(),
        ops in proptest::collection::vec(sop(), 1..40),
    ) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("s");
        let inner: Arc<dyn Storage> = Arc::new(FileStorage::open(&path).expect("open"));
        let s = FaultyStorage::new(inner.clone(), plan);
        check_against_model(&s, inner.as_ref(), &ops)?;
        let before = snapshot(inner.as_ref());
        drop(s);
        drop(inner);
        let reopened = FileStorage::open(&path).expect("reopen");
        prop_assert_eq!(snapshot(&reopened), before, "state after reopen");
    }
}

// ---- the engine over the wrapper ----

/// Drive a real engine (generic mount) through writes, deletes and renames of a few secrets
/// while storage fails 20% of calls; every acknowledged change must be there, every failed one
/// must have left the old state (or, with lost acknowledgements, possibly the new one); then, with faults off,
/// everything reads back, also from a fresh engine over the reopened store.
fn engine_under_faults(file: bool, lost_ack: f64, seed: u64) -> (u64, u64, u64) {
    const KEYS: [&str; 4] = ["secret/a", "secret/b", "secret/d/c", "secret/d/e"];
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("s");
    let inner: Arc<dyn Storage> = if file {
        Arc::new(FileStorage::open(&path).expect("open"))
    } else {
        Arc::new(MemoryStorage::new())
    };
    let plan = FaultPlan {
        lost_ack,
        ..FaultPlan::uniform(0.2, seed)
    };
    let faulty = Arc::new(FaultyStorage::new(inner.clone(), plan));
    faulty.set_enabled(false);
    let cfg = EngineConfig {
        kdf: KdfParams::minimum(),
        ..EngineConfig::default()
    };
    let e = Engine::new(faulty.clone(), cfg.clone());
    e.unseal(b"pass").expect("unseal");
    faulty.set_enabled(true);
    let c = Caller::new(0, 0, 1);
    // Every write is one storage write (put, or one batch), so without lost acknowledgements a
    // failed request must have changed nothing.
    let loose = lost_ack > 0.0;
    // Possible values per key: None (absent) or Some(value).
    let mut possible: BTreeMap<&str, BTreeSet<Option<Vec<u8>>>> =
        KEYS.iter().map(|k| (*k, BTreeSet::from([None]))).collect();
    let (mut acked, mut failed) = (0u64, 0u64);
    let mut x = seed | 1;
    for i in 0..600u64 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let k = KEYS[(x % 4) as usize];
        let value = format!("{k}#{i}").into_bytes();
        // A failure is EIO, or ENOENT where the key may be absent; returns whether it was EIO.
        let check_err = |err: &crate::Error, set: &BTreeSet<Option<Vec<u8>>>| {
            let ok = err.kind == ErrorKind::Io
                || (err.kind == ErrorKind::NotFound && set.contains(&None));
            assert!(
                ok,
                "op {i} on {k}: unexpected {:?}: {}",
                err.kind, err.message
            );
            err.kind == ErrorKind::Io
        };
        match (x >> 8) % 5 {
            0..=2 => match e.write(&c, k, SecretBytes::from_slice(&value)) {
                Ok(()) => {
                    acked += 1;
                    possible.insert(k, BTreeSet::from([Some(value)]));
                }
                Err(err) => {
                    let set = possible.get_mut(k).expect("key");
                    failed += u64::from(check_err(&err, set));
                    if loose {
                        set.insert(Some(value));
                    }
                }
            },
            3 => match e.delete(&c, k) {
                Ok(()) => {
                    acked += 1;
                    possible.insert(k, BTreeSet::from([None]));
                }
                Err(err) => {
                    let set = possible.get_mut(k).expect("key");
                    failed += u64::from(check_err(&err, set));
                    if loose {
                        set.insert(None);
                    }
                }
            },
            _ => {
                let to = KEYS[((x >> 16) % 4) as usize];
                if to == k {
                    continue;
                }
                let from_set = possible[k].clone();
                match e.rename(&c, k, to) {
                    Ok(()) => {
                        acked += 1;
                        // The value moved: `to` now holds what `from` held.
                        possible.insert(to, from_set.into_iter().filter(Option::is_some).collect());
                        possible.insert(k, BTreeSet::from([None]));
                    }
                    Err(err) => {
                        if !check_err(&err, &from_set) {
                            continue; // ENOENT: nothing to move, nothing changed
                        }
                        failed += 1;
                        if !loose {
                            continue; // failed before the batch: nothing moved
                        }
                        let moved: Vec<_> = from_set.into_iter().collect();
                        possible.get_mut(to).expect("to").extend(moved);
                        possible.get_mut(k).expect("from").insert(None);
                    }
                }
            }
        }
        // Reads under faults: the right value or EIO, never a wrong one or "absent" by mistake.
        match e.read(&c, k) {
            Ok(v) => assert!(
                possible[k].contains(&Some(v.expose().to_vec())),
                "op {i}: {k} read a value it cannot hold"
            ),
            Err(err) => {
                check_err(&err, &possible[k]);
            }
        }
    }
    let injected = faulty.total().injected;
    faulty.set_enabled(false);
    let verify = |e: &Engine, when: &str| {
        for k in KEYS {
            let got = match e.read(&c, k) {
                Ok(v) => Some(v.expose().to_vec()),
                Err(err) if err.kind == ErrorKind::NotFound => None,
                Err(err) => panic!("{when}: {k}: {}", err.message),
            };
            assert!(
                possible[k].contains(&got),
                "{when}: {k} holds a value no acknowledged or attempted change left there"
            );
            if possible[k].len() == 1 {
                // Settled by an acknowledged change (or untouched): exact.
                assert!(possible[k].contains(&got));
            }
        }
    };
    verify(&e, "faults off");
    e.seal();
    drop(e);
    if file {
        drop(faulty);
        drop(inner);
        let reopened: Arc<dyn Storage> = Arc::new(FileStorage::open(&path).expect("reopen"));
        let e2 = Engine::new(reopened, cfg);
        e2.unseal(b"pass").expect("unseal after reopen");
        verify(&e2, "after reopen");
    }
    (acked, failed, injected)
}

#[test]
fn engine_over_faulty_stores_acknowledges_only_durable_changes() {
    let mut totals = (0, 0, 0);
    for (file, lost_ack, seed) in [
        (false, 0.0, 1),
        (false, 0.5, 2),
        (true, 0.0, 3),
        (true, 0.5, 4),
    ] {
        let (a, f, i) = engine_under_faults(file, lost_ack, seed);
        assert!(
            a > 100 && f > 20 && i >= f,
            "acked {a}, failed {f}, injected {i}"
        );
        totals = (totals.0 + a, totals.1 + f, totals.2 + i);
    }
    println!(
        "engine under faults: {} acknowledged changes verified, {} failed requests, {} faults injected",
        totals.0, totals.1, totals.2
    );
}
