//! Property tests: the engine against a reference model, and decoders fed arbitrary input.
//!
//! The model test drives a real `Engine` over `MemoryStorage` with random operation sequences
//! and compares every answer with a `BTreeMap` of path → value. Unsealing costs one argon2id
//! derivation (19 MiB), so one engine is kept per test thread and reset between cases (every
//! file deleted, which the model also checks); every 100th case starts from a fresh store.
//!
//! The `*_never_panics` tests feed arbitrary bytes and strings to the parsers that see
//! untrusted input; more cases: `PROPTEST_CASES=1000000 cargo test -p nomadfs-core
//! never_panics --release` (see fuzz/README.md).

use crate::audit;
use crate::backend::NodeKind;
use crate::barrier::KdfParams;
use crate::engine::{Engine, EngineConfig};
use crate::lease::clock::{parse_duration, rfc3339};
use crate::lease::LeaseRecord;
use crate::policy::{Capability, EtcFiles, Policies, PolicyDoc};
use crate::route::Router;
use crate::storage::memory::MemoryStorage;
use crate::{Caller, ErrorKind, SecretBytes};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::sync::Arc;

const PASS: &[u8] = b"model passphrase";
/// The files the model writes (closed under the folder renames `d` ↔ `e`). No file is ever a
/// folder of another, so only the folder renames below can meet NotEmpty.
const FILES: [&str; 6] = [
    "secret/a",
    "secret/b",
    "secret/d/x",
    "secret/d/y",
    "secret/e/x",
    "secret/e/y",
];
/// The folders the files imply (implicit folders: they exist while they hold a file).
const DIRS: [&str; 2] = ["secret/d", "secret/e"];

/// Cases for the engine model (argon2 on seal/unseal/restart makes these the slow ones).
const MODEL_CASES: u32 = 1000;
/// Cases for the cheap decoders.
const FUZZ_CASES: u32 = 10_000;

/// The default case count unless PROPTEST_CASES asks for more (or fewer).
fn config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn admin() -> Caller {
    Caller::new(0, 0, 1)
}

#[derive(Debug, Clone)]
enum Op {
    Put(usize, Vec<u8>),
    Read(usize),
    Delete(usize),
    /// File to file within the mount (overwrites the target).
    Rename(usize, usize),
    /// Folder to folder (`secret/d` ↔ `secret/e`).
    RenameDir(usize, usize),
    /// 0: `secret`, 1..: `DIRS[i - 1]`.
    List(usize),
    /// Read a folder path.
    ReadDir(usize),
    /// Seal, check that nothing is visible, unseal (first trying a wrong passphrase if set).
    SealUnseal(bool),
    Rotate,
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    let f = 0..FILES.len();
    let d = 0..DIRS.len();
    prop_oneof![
        24 => (f.clone(), prop::collection::vec(any::<u8>(), 0..48)).prop_map(|(i, v)| Op::Put(i, v)),
        16 => f.clone().prop_map(Op::Read),
        10 => f.clone().prop_map(Op::Delete),
        10 => (f.clone(), f).prop_map(|(a, b)| Op::Rename(a, b)),
        6 => (d.clone(), d.clone()).prop_map(|(a, b)| Op::RenameDir(a, b)),
        8 => (0..=DIRS.len()).prop_map(Op::List),
        4 => d.prop_map(Op::ReadDir),
        3 => Just(Op::Rotate),
        // Each of these costs an argon2id derivation (19 MiB): rare, about one case in two.
        1 => prop::bool::weighted(0.25).prop_map(Op::SealUnseal),
        1 => Just(Op::Restart),
    ]
}

type Answer<T> = std::result::Result<T, ErrorKind>;

fn answer<T>(r: crate::Result<T>) -> Answer<T> {
    r.map_err(|e| e.kind)
}

/// The reference: full path → value, and the active key term.
#[derive(Default)]
struct Model {
    files: BTreeMap<String, Vec<u8>>,
    term: u32,
}

impl Model {
    fn children(&self, dir: &str) -> Vec<(String, NodeKind)> {
        let prefix = format!("{dir}/");
        let mut out: BTreeMap<String, NodeKind> = BTreeMap::new();
        for k in self.files.keys() {
            if let Some(rest) = k.strip_prefix(&prefix) {
                match rest.split_once('/') {
                    Some((name, _)) => out.insert(name.to_string(), NodeKind::Dir),
                    None => out.insert(rest.to_string(), NodeKind::File),
                };
            }
        }
        out.into_iter().collect()
    }

    fn list(&self, dir: &str) -> Answer<Vec<(String, NodeKind)>> {
        let mut children = self.children(dir);
        if dir == "secret" {
            children.insert(0, (".help".to_string(), NodeKind::File));
        } else if children.is_empty() {
            return Err(ErrorKind::NotFound);
        }
        Ok(children)
    }

    fn rename(&mut self, from: &str, to: &str) -> Answer<()> {
        if from == to {
            // The generic backend answers a rename onto itself with success, even for a
            // missing source (the kernel looks the source up first, so FUSE never asks).
            return Ok(());
        }
        let v = self.files.remove(from).ok_or(ErrorKind::NotFound)?;
        self.files.insert(to.to_string(), v);
        Ok(())
    }

    fn rename_dir(&mut self, from: &str, to: &str) -> Answer<()> {
        if from == to {
            return Ok(());
        }
        if self.children(from).is_empty() {
            return Err(ErrorKind::NotFound);
        }
        if !self.children(to).is_empty() {
            return Err(ErrorKind::NotEmpty);
        }
        let prefix = format!("{from}/");
        let moved: Vec<String> = self
            .files
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for k in moved {
            if let Some(v) = self.files.remove(&k) {
                self.files.insert(format!("{to}/{}", &k[prefix.len()..]), v);
            }
        }
        Ok(())
    }
}

struct Harness {
    storage: Arc<MemoryStorage>,
    engine: Arc<Engine>,
    cases: u32,
}

fn new_engine(storage: &Arc<MemoryStorage>) -> Arc<Engine> {
    let e = Engine::new(
        storage.clone(),
        EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e.unseal(PASS).expect("unseal");
    e
}

thread_local! {
    static HARNESS: RefCell<Option<Harness>> = const { RefCell::new(None) };
}

/// The engine for this case, emptied; a fresh store every 100 cases.
fn take_harness() -> Harness {
    let h = HARNESS.with(|h| h.borrow_mut().take());
    let mut h = match h {
        Some(h) if h.cases < 100 => h,
        _ => {
            let storage = Arc::new(MemoryStorage::new());
            let engine = new_engine(&storage);
            Harness {
                storage,
                engine,
                cases: 0,
            }
        }
    };
    h.cases += 1;
    if h.engine.is_sealed() {
        h.engine.unseal(PASS).expect("unseal after a failed case");
    }
    for f in FILES {
        let _ = h.engine.delete(&admin(), f);
    }
    h
}

fn names(entries: Vec<crate::DirEntry>) -> Vec<(String, NodeKind)> {
    entries.into_iter().map(|d| (d.name, d.kind)).collect()
}

fn run_model(h: &mut Harness, ops: &[Op]) -> Result<(), TestCaseError> {
    let c = admin();
    let mut m = Model {
        term: h.engine.barrier().active_term().expect("term"),
        ..Model::default()
    };
    prop_assert_eq!(
        answer(h.engine.list(&c, "secret").map(names)),
        m.list("secret"),
        "the store was not empty at the start of the case"
    );
    for (step, op) in ops.iter().enumerate() {
        let e = &h.engine;
        match op {
            Op::Put(i, v) => {
                let got = answer(e.write(&c, FILES[*i], SecretBytes::from_slice(v)));
                prop_assert_eq!(got, Ok(()), "step {}: {:?}", step, op);
                m.files.insert(FILES[*i].to_string(), v.clone());
            }
            Op::Read(i) => {
                let got = answer(e.read(&c, FILES[*i]).map(|d| d.expose().to_vec()));
                let want = m.files.get(FILES[*i]).cloned().ok_or(ErrorKind::NotFound);
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::Delete(i) => {
                let got = answer(e.delete(&c, FILES[*i]));
                let want = m
                    .files
                    .remove(FILES[*i])
                    .map(|_| ())
                    .ok_or(ErrorKind::NotFound);
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::Rename(a, b) => {
                let got = answer(e.rename(&c, FILES[*a], FILES[*b]));
                prop_assert_eq!(
                    got,
                    m.rename(FILES[*a], FILES[*b]),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::RenameDir(a, b) => {
                let got = answer(e.rename(&c, DIRS[*a], DIRS[*b]));
                prop_assert_eq!(
                    got,
                    m.rename_dir(DIRS[*a], DIRS[*b]),
                    "step {}: {:?}",
                    step,
                    op
                );
            }
            Op::List(i) => {
                let dir = if *i == 0 { "secret" } else { DIRS[*i - 1] };
                let got = answer(e.list(&c, dir).map(names));
                prop_assert_eq!(got, m.list(dir), "step {}: {:?}", step, op);
            }
            Op::ReadDir(i) => {
                let got = answer(e.read(&c, DIRS[*i]).map(|_| ()));
                let want = if m.children(DIRS[*i]).is_empty() {
                    Err(ErrorKind::NotFound)
                } else {
                    Err(ErrorKind::IsADirectory)
                };
                prop_assert_eq!(got, want, "step {}: {:?}", step, op);
            }
            Op::SealUnseal(wrong_first) => {
                e.seal();
                prop_assert!(e.is_sealed());
                // Sealed, the mount is gone: nothing under it is visible.
                prop_assert_eq!(
                    answer(e.read(&c, "secret/a").map(|_| ())),
                    Err(ErrorKind::NotFound)
                );
                prop_assert_eq!(
                    answer(e.list(&c, "secret").map(|_| ())),
                    Err(ErrorKind::NotFound)
                );
                if *wrong_first {
                    prop_assert!(e.unseal(b"not the passphrase").is_err());
                    prop_assert!(e.is_sealed());
                }
                e.unseal(PASS).expect("unseal");
            }
            Op::Rotate => {
                m.term += 1;
                prop_assert_eq!(answer(e.rotate()), Ok(m.term), "step {}", step);
            }
            Op::Restart => {
                // Drop the engine (and its in-memory keyring) first, then start over the store.
                let storage = h.storage.clone();
                h.engine = Engine::new(
                    storage.clone(),
                    EngineConfig {
                        kdf: KdfParams::minimum(),
                        ..EngineConfig::default()
                    },
                );
                prop_assert!(h.engine.is_sealed());
                h.engine.unseal(PASS).expect("unseal after restart");
                prop_assert_eq!(
                    answer(h.engine.barrier().active_term()),
                    Ok(m.term),
                    "step {}",
                    step
                );
            }
        }
    }
    // Everything observable at the end agrees with the model.
    let e = &h.engine;
    for f in FILES {
        let got = answer(e.read(&c, f).map(|d| d.expose().to_vec()));
        prop_assert_eq!(
            got,
            m.files.get(f).cloned().ok_or(ErrorKind::NotFound),
            "{}",
            f
        );
        let size = answer(e.stat(&c, f).map(|n| n.size));
        let want = m
            .files
            .get(f)
            .map(|v| v.len() as u64)
            .ok_or(ErrorKind::NotFound);
        prop_assert_eq!(size, want, "stat {}", f);
    }
    for dir in ["secret", DIRS[0], DIRS[1]] {
        prop_assert_eq!(answer(e.list(&c, dir).map(names)), m.list(dir), "{}", dir);
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(MODEL_CASES))]

    #[test]
    fn engine_matches_reference_model(ops in prop::collection::vec(op(), 1..40)) {
        let mut h = take_harness();
        let r = run_model(&mut h, &ops);
        HARNESS.with(|slot| *slot.borrow_mut() = Some(h));
        r?;
    }
}

// ---------------------------------------------------------------------------------------------
// Decoders and parsers: arbitrary input gives an answer, never a panic.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq)]
enum R {
    Root,
    Config,
    ConfigRoot,
    Role,
    Cred,
    Any,
}

/// Path-ish strings: mostly segments and slashes, with the odd empty segment.
fn pathish() -> impl Strategy<Value = String> {
    prop_oneof![
        ".*",
        "(/?[a-z{}*.]{0,6}){0,6}/?",
        "(config|roles|creds|[a-z]{1,3})(/(root|lease|[a-z]{0,3})){0,3}",
    ]
}

proptest! {
    #![proptest_config(config(FUZZ_CASES))]

    #[test]
    fn route_never_panics(path in pathish()) {
        let r = Router::new(&[
            ("", R::Root),
            ("config", R::Config),
            ("config/root", R::ConfigRoot),
            ("roles/{name}", R::Role),
            ("creds/{name}/{*rest}", R::Cred),
            ("{*path}", R::Any),
        ]);
        if let Some((route, caps)) = r.route(&path) {
            // Captures are non-empty pieces of the path; a one-segment capture has no '/'.
            for cap in &caps {
                prop_assert!(!cap.is_empty());
                prop_assert!(path.contains(cap));
            }
            if route == R::Role {
                prop_assert!(!caps[0].contains('/'));
            }
            prop_assert!(!path.split('/').any(str::is_empty) || path.is_empty());
        }
        let _ = r.literal_children(&path);
    }

    #[test]
    fn policy_parse_never_panics(
        name in prop_oneof!["[a-z]{1,8}", ".*"],
        text in prop_oneof![
            ".*",
            policy_toml(),
            policy_toml().prop_map(|t| format!("{{{t}}}")),
        ],
        probe in pathish(),
    ) {
        if let Ok(doc) = PolicyDoc::parse(&name, &text) {
            // A policy that parses also compiles and answers questions.
            let resolver = EtcFiles::parse("root:x:0:0::/:/bin/sh\n", "root:x:0:\n");
            if let Ok(set) = Policies::new(vec![doc], vec![], &resolver) {
                let c = Caller::new(1000, 1000, 1);
                let _ = set.capabilities(&c, &probe);
                let _ = set.allowed(&c, &probe, Capability::Read);
                let _ = set.may_see(&c, &probe, true);
            }
        }
    }

    #[test]
    fn lease_record_json_never_panics(raw in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..256),
        lease_json().prop_map(String::into_bytes),
    ], now in any::<u64>()) {
        if let Ok(rec) = serde_json::from_slice::<LeaseRecord>(&raw) {
            // What `sys/leases/<id>` shows of a stored record.
            let _ = rec.describe(now);
            let _ = (rec.mount(), rec.state());
            let again = serde_json::to_vec(&rec).expect("serialise");
            let back: LeaseRecord = serde_json::from_slice(&again).expect("reparse");
            prop_assert_eq!(back, rec);
        }
    }

    #[test]
    fn duration_parse_never_panics(text in prop_oneof![
        ".*",
        "[0-9smhd ]{0,24}",
        "[0-9]{15,25}[smhd]?",
    ]) {
        if let Some(secs) = parse_duration(&text) {
            let _ = rfc3339(secs.saturating_mul(1000));
        }
    }

    #[test]
    fn audit_verify_never_panics(lines in prop::collection::vec(prop_oneof![
        prop::collection::vec(any::<u8>(), 0..64),
        audit_line().prop_map(String::into_bytes),
    ], 0..6)) {
        let raw = lines.join(&b'\n');
        match audit::verify(&raw[..]) {
            Ok(report) => prop_assert!(report.lines <= lines.len() as u64),
            Err(e) => prop_assert!(e.line >= 1),
        }
    }
}

fn policy_toml() -> impl Strategy<Value = String> {
    let value = prop_oneof![
        "\"[a-z/*+{}?.\\[\\]-]{0,12}\"",
        "[0-9-]{1,12}",
        "\\[(\"[a-z*]{0,8}\", ?){0,3}\\]",
        "\\[([0-9]{1,11}, ?){0,3}\\]",
        Just("true".to_string()),
    ];
    let key = prop_oneof![
        Just("name"),
        Just("uids"),
        Just("gids"),
        Just("users"),
        Just("groups"),
        Just("cgroups"),
        Just("exes"),
        Just("path"),
        Just("capabilities"),
    ];
    let line = (key, value).prop_map(|(k, v)| format!("{k} = {v}\n"));
    let rule = (
        "[a-z/*+{}?.\\[\\]-]{0,16}",
        prop::collection::vec(
            prop_oneof![
                Just("read"),
                Just("list"),
                Just("create"),
                Just("update"),
                Just("delete"),
                Just("sudo"),
                Just("deny"),
                Just("bogus"),
            ],
            0..4,
        ),
    )
        .prop_map(|(p, caps)| {
            let caps: Vec<String> = caps.iter().map(|c| format!("\"{c}\"")).collect();
            format!(
                "[[rules]]\npath = \"{}\"\ncapabilities = [{}]\n",
                p.replace('\\', ""),
                caps.join(", ")
            )
        });
    (
        prop::collection::vec(line, 0..4),
        prop::collection::vec(rule, 0..3),
    )
        .prop_map(|(lines, rules)| format!("{}{}", lines.concat(), rules.concat()))
}

fn lease_json() -> impl Strategy<Value = String> {
    let num = prop_oneof![
        Just("0".to_string()),
        Just("18446744073709551615".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        Just("1e400".to_string()),
        Just("null".to_string()),
        any::<u64>().prop_map(|n| n.to_string()),
    ];
    (
        prop::collection::vec(num, 9),
        ".{0,12}",
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(n, s, renewable, irrevocable)| {
            let s = serde_json::to_string(&s).unwrap_or_default();
            format!(
                "{{\"id\":{s},\"path\":{s},\"issued_ms\":{},\"expires_ms\":{},\
                 \"max_expires_ms\":{},\"increment_secs\":{},\"renewable\":{renewable},\
                 \"uid\":{},\"secret\":{{\"user\":{s}}},\"attempts\":{},\"retry_at_ms\":{},\
                 \"last_error\":{s},\"irrevocable\":{irrevocable}{}}}",
                n[0],
                n[1],
                n[2],
                n[3],
                n[4],
                n[5],
                n[6],
                if n[7] == "0" { ",\"extra\":1" } else { "" },
            )
        })
}

fn audit_line() -> impl Strategy<Value = String> {
    (
        prop_oneof![
            Just("1".to_string()),
            Just("2".to_string()),
            Just("0".to_string()),
            Just("-1".to_string()),
            Just("18446744073709551615".to_string()),
            Just("1.5".to_string()),
            Just("\"1\"".to_string()),
            any::<u64>().prop_map(|n| n.to_string()),
        ],
        prop_oneof![
            Just("0".repeat(64)),
            "[0-9a-fA-F]{64}",
            "[0-9a-fA-F]{0,66}",
            ".{0,8}",
        ],
    )
        .prop_map(|(seq, prev)| {
            let prev = serde_json::to_string(&prev).unwrap_or_default();
            format!("{{\"seq\":{seq},\"prev\":{prev},\"op\":\"read\"}}")
        })
}
