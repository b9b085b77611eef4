//! Crash consistency (SIGKILL mid-write, mid-rotation) and tamper detection through a real
//! FUSE mount and the file (redb) store. See docs/FORMAT.md and docs/SEMANTICS.md.

mod common;
#[path = "common/rel.rs"]
mod rel;
use common::*;
use rel::{parse_value, value_for, write_acked, KeyState, Rng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const KEYS: usize = 4;

fn store_files(store: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(store)
        .expect("read store dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    names
}

#[test]
fn crash_consistency_under_sigkill() {
    let cycles: usize = std::env::var("NOMADFS_CRASH_CYCLES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(50);
    let mut rng = Rng::from_env("NOMADFS_CRASH_SEED");
    let started = Instant::now();
    let mut d = Daemon::start();
    for w in 0..WRITERS {
        std::fs::create_dir(d.p(&format!("secret/w{w}"))).expect("mkdir writer folder");
    }
    let mnt: PathBuf = d.mnt.clone();
    let state: Mutex<Vec<KeyState>> = Mutex::new(vec![KeyState::default(); WRITERS * KEYS]);
    let total_acked = AtomicU64::new(0);
    let unexpected: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut keys_verified = 0u64;
    let mut in_flight_landed = 0u64;

    for cycle in 0..cycles {
        let stop = AtomicBool::new(false);
        let delay = Duration::from_millis(rng.range(10, 150));
        std::thread::scope(|s| {
            for w in 0..WRITERS {
                let (mnt, state, stop, total_acked, unexpected) =
                    (&mnt, &state, &stop, &total_acked, &unexpected);
                s.spawn(move || {
                    let mut k = 0;
                    while !stop.load(Ordering::SeqCst) {
                        let idx = w * KEYS + k;
                        let seq = state.lock().expect("state")[idx].next_attempt();
                        let path = mnt.join(format!("secret/w{w}/k{k}"));
                        match write_acked(&path, value_for(w, k, seq)) {
                            Ok(()) => {
                                state.lock().expect("state")[idx].acked = Some(seq);
                                total_acked.fetch_add(1, Ordering::SeqCst);
                            }
                            Err(e) => {
                                // Errors are expected only once the kill has begun (the flag is
                                // set before the kill).
                                if !stop.load(Ordering::SeqCst) {
                                    unexpected
                                        .lock()
                                        .expect("errors")
                                        .push(format!("cycle {cycle} w{w}/k{k} s{seq}: {e}"));
                                }
                                break;
                            }
                        }
                        k = (k + 1) % KEYS;
                    }
                });
            }
            std::thread::sleep(delay);
            stop.store(true, Ordering::SeqCst);
            d.kill9();
        });
        {
            let errs = unexpected.lock().expect("errors");
            assert!(
                errs.is_empty(),
                "writes failed before the kill: {errs:?}\n{}",
                d.log_text()
            );
        }
        assert_eq!(
            store_files(&d.store()),
            vec!["nomadfs.redb".to_string()],
            "cycle {cycle}: leftover files in the store after SIGKILL"
        );
        d.spawn(true);
        let st = state.lock().expect("state").clone();
        for w in 0..WRITERS {
            for k in 0..KEYS {
                let ks = st[w * KEYS + k];
                let rel = format!("secret/w{w}/k{k}");
                match std::fs::read(d.p(&rel)) {
                    Ok(v) => {
                        let Some((pw, pk, seq)) = parse_value(&v) else {
                            panic!(
                                "cycle {cycle}: {rel} holds a torn/unknown value ({} bytes): {:?}",
                                v.len(),
                                String::from_utf8_lossy(&v[..v.len().min(80)])
                            );
                        };
                        assert_eq!(
                            (pw, pk),
                            (w, k),
                            "cycle {cycle}: {rel} holds another key's value"
                        );
                        let attempted = ks.attempted.expect("a value exists, so one was attempted");
                        assert!(
                            seq <= attempted,
                            "cycle {cycle}: {rel} holds s{seq}, never attempted (max {attempted})"
                        );
                        if let Some(a) = ks.acked {
                            assert!(
                                seq >= a,
                                "cycle {cycle}: {rel} went back to s{seq}; s{a} was acknowledged"
                            );
                            if seq > a {
                                in_flight_landed += 1;
                            }
                        }
                    }
                    Err(e) => {
                        assert_eq!(
                            e.raw_os_error(),
                            Some(libc::ENOENT),
                            "cycle {cycle}: reading {rel}: {e}\n{}",
                            d.log_text()
                        );
                        assert!(
                            ks.acked.is_none(),
                            "cycle {cycle}: {rel} is gone, but s{:?} was acknowledged",
                            ks.acked
                        );
                    }
                }
                keys_verified += 1;
            }
        }
        assert_eq!(
            store_files(&d.store()),
            vec!["nomadfs.redb".to_string()],
            "cycle {cycle}: unexpected files in the store after restart"
        );
    }
    let log = d.log_text();
    assert!(
        !log.contains("ERROR"),
        "the daemon logged errors:\n{}",
        log.lines()
            .filter(|l| l.contains("ERROR"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    println!(
        "crash: {cycles} kill cycles, {} acknowledged writes, {keys_verified} key reads verified \
         against the last acknowledged value, {in_flight_landed} in-flight writes landed, {:.1} s",
        total_acked.load(Ordering::SeqCst),
        started.elapsed().as_secs_f64()
    );
}

/// Secrets of distinct lengths, so their encrypted entries can be told apart by size
/// (entry = 17 header bytes + plaintext + 16 tag bytes).
const TAMPER_SECRETS: [(&str, usize); 3] = [("alpha", 101), ("beta", 211), ("gamma", 307)];

fn tamper_value(len: usize, salt: u8) -> Vec<u8> {
    (0..len)
        .map(|i| b'A' + ((i + salt as usize) % 26) as u8)
        .collect()
}

fn put_raw(store: &Path, key: &str, value: &[u8]) {
    use nomadfs_core::storage::{file::FileStorage, Storage};
    let s = FileStorage::open(store).expect("open store");
    s.put(key, value).expect("put raw");
}

/// One tampering: its description, the raw `(key, value)` puts, and the secrets that must
/// now fail with EIO.
type TamperCase = (String, Vec<(String, Vec<u8>)>, Vec<&'static str>);

/// The phrases the barrier's integrity errors use (crates/core/src/barrier/entry.rs).
fn log_mentions_integrity_failure(log: &str) -> bool {
    log.lines().any(|l| {
        l.contains("ERROR")
            && [
                "failed authentication",
                "entry is truncated",
                "unknown entry version",
                "unknown key term",
            ]
            .iter()
            .any(|p| l.contains(p))
    })
}

#[test]
fn tampered_entries_fail_with_eio() {
    let started = Instant::now();
    let mut d = Daemon::start();
    for (i, (name, len)) in TAMPER_SECRETS.iter().enumerate() {
        if *name == "gamma" {
            // gamma under a second key term, so a valid-but-wrong term can be tried on alpha.
            d.sh_ok("echo x > sys/rotate");
        }
        std::fs::write(d.p(&format!("secret/{name}")), tamper_value(*len, i as u8))
            .expect("write secret");
    }
    d.stop();
    let dump = store_dump(&d.store());
    let key_of = |len: usize| -> (String, Vec<u8>) {
        let hits: Vec<_> = dump
            .iter()
            .filter(|(k, v)| k.starts_with("v/") && v.len() == 17 + len + 16)
            .cloned()
            .collect();
        assert_eq!(hits.len(), 1, "entry of a {len}-byte secret: {hits:?}");
        hits.into_iter().next().expect("one entry")
    };
    let entries: Vec<(String, Vec<u8>)> = TAMPER_SECRETS.iter().map(|(_, l)| key_of(*l)).collect();
    let (ka, va) = entries[0].clone();
    let (kb, vb) = entries[1].clone();
    let n = va.len();

    let flip = |pos: usize, bit: u8| {
        let mut v = va.clone();
        v[pos] ^= 1 << bit;
        v
    };
    let mut cases: Vec<TamperCase> = Vec::new();
    for (what, pos, bit) in [
        ("version byte", 0, 0),
        ("term (high byte)", 1, 7),
        ("term (low byte)", 4, 1),
        ("nonce first byte", 5, 3),
        ("nonce last byte", 16, 6),
        ("body first byte", 17, 0),
        ("body middle", 17 + 50, 5),
        ("body last byte", n - 17, 2),
        ("tag first byte", n - 16, 4),
        ("tag last byte", n - 1, 7),
    ] {
        cases.push((
            format!("flip bit {bit} of {what} (byte {pos})"),
            vec![(ka.clone(), flip(pos, bit))],
            vec!["alpha"],
        ));
    }
    {
        let vc = &entries[2].1;
        assert_ne!(va[1..5], vc[1..5], "gamma should be under a newer term");
        let mut v = va.clone();
        v[1..5].copy_from_slice(&vc[1..5]);
        cases.push((
            "term set to another existing term".to_string(),
            vec![(ka.clone(), v)],
            vec!["alpha"],
        ));
    }
    for (what, len) in [
        ("truncate by 1 byte", n - 1),
        ("truncate by the tag", n - 16),
        ("truncate to the header", 17),
        ("truncate to 1 byte", 1),
        ("truncate to empty", 0),
    ] {
        cases.push((
            what.to_string(),
            vec![(ka.clone(), va[..len].to_vec())],
            vec!["alpha"],
        ));
    }
    for (what, extra) in [
        ("extend by 1 zero byte", vec![0u8]),
        ("extend by 16 bytes", vec![0x5a; 16]),
    ] {
        let mut v = va.clone();
        v.extend_from_slice(&extra);
        cases.push((what.to_string(), vec![(ka.clone(), v)], vec!["alpha"]));
    }
    cases.push((
        "swap alpha and beta".to_string(),
        vec![(ka.clone(), vb.clone()), (kb.clone(), va.clone())],
        vec!["alpha", "beta"],
    ));
    cases.push((
        "copy beta over alpha".to_string(),
        vec![(ka.clone(), vb.clone())],
        vec!["alpha"],
    ));

    for (what, edits, broken) in &cases {
        for (k, v) in edits {
            put_raw(&d.store(), k, v);
        }
        let log_before = d.log_text().len();
        d.spawn(true);
        for (i, (name, len)) in TAMPER_SECRETS.iter().enumerate() {
            let r = std::fs::read(d.p(&format!("secret/{name}")));
            if broken.contains(name) {
                match r {
                    Ok(v) => panic!(
                        "{what}: secret/{name} read {} bytes instead of EIO (original: {})",
                        v.len(),
                        v == tamper_value(*len, i as u8)
                    ),
                    Err(e) => assert_eq!(
                        e.raw_os_error(),
                        Some(libc::EIO),
                        "{what}: secret/{name}: {e}"
                    ),
                }
            } else {
                assert_eq!(
                    r.expect("untampered secret reads"),
                    tamper_value(*len, i as u8),
                    "{what}: untampered secret/{name}"
                );
            }
        }
        let log = d.log_text();
        assert!(
            log_mentions_integrity_failure(&log[log_before..]),
            "{what}: no integrity failure in the log:\n{}",
            &log[log_before..]
        );
        d.stop();
        // Restore the original bytes for the next case.
        put_raw(&d.store(), &ka, &va);
        put_raw(&d.store(), &kb, &vb);
    }
    // After every restore, everything reads back as written.
    d.spawn(true);
    for (i, (name, len)) in TAMPER_SECRETS.iter().enumerate() {
        assert_eq!(
            std::fs::read(d.p(&format!("secret/{name}"))).expect("restored secret"),
            tamper_value(*len, i as u8)
        );
    }
    println!(
        "tamper: {} cases, each EIO with an integrity failure logged, {:.1} s",
        cases.len(),
        started.elapsed().as_secs_f64()
    );
}

fn key_term(d: &Daemon) -> u64 {
    let h = std::fs::read_to_string(d.p("sys/health")).expect("health");
    let v: serde_json::Value = serde_json::from_str(&h).expect("health json");
    v["key_term"]
        .as_u64()
        .unwrap_or_else(|| panic!("no key_term in {h}"))
}

#[test]
fn rotation_interrupted_by_kill() {
    let started = Instant::now();
    let mut rng = Rng::from_env("NOMADFS_CRASH_SEED");
    let mut d = Daemon::start();
    let mut expected: Vec<(String, Vec<u8>)> = Vec::new();
    for i in 0..5 {
        let (rel, v) = (format!("secret/r{i}"), tamper_value(20 + i, i as u8));
        std::fs::write(d.p(&rel), &v).expect("write");
        expected.push((rel, v));
    }
    let mut term = key_term(&d);
    assert!(term >= 1, "initial key_term {term}");
    let mut rotations_acked = 0;
    for cycle in 0..10 {
        let mut child = std::process::Command::new("sh")
            .arg("-c")
            .arg("echo x > sys/rotate")
            .current_dir(&d.mnt)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn rotate");
        std::thread::sleep(Duration::from_micros(rng.range(0, 6_000)));
        d.kill9();
        let ok = child.wait().expect("wait rotate").success();
        assert_eq!(
            store_files(&d.store()),
            vec!["nomadfs.redb".to_string()],
            "cycle {cycle}: leftover files in the store"
        );
        d.spawn(true);
        let now = key_term(&d);
        assert!(now >= 1, "cycle {cycle}: key_term {now}");
        assert!(
            now >= term,
            "cycle {cycle}: key_term went back from {term} to {now}"
        );
        if ok {
            rotations_acked += 1;
            assert!(
                now > term,
                "cycle {cycle}: rotation acknowledged but key_term stayed {term}"
            );
        }
        assert!(
            now <= term + 1,
            "cycle {cycle}: key_term jumped from {term} to {now}"
        );
        term = now;
        for (rel, v) in &expected {
            match std::fs::read(d.p(rel)) {
                Ok(got) => assert!(&got == v, "cycle {cycle}: {rel} reads wrong data"),
                Err(e) => panic!("cycle {cycle}: {rel}: {e}\n{}", d.log_text()),
            }
        }
        // A secret under the current term, read back after later kills too.
        let (rel, v) = (
            format!("secret/after{cycle}"),
            tamper_value(30 + cycle, cycle as u8),
        );
        write_acked(d.p(&rel), &v).expect("write after restart");
        expected.push((rel, v));
    }
    println!(
        "rotation: 10 kill cycles, {rotations_acked} rotations acknowledged before the kill, \
         final key_term {term}, {} secrets verified each cycle, {:.1} s",
        expected.len(),
        started.elapsed().as_secs_f64()
    );
}
