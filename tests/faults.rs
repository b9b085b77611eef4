//! Storage faults through a real mount: the daemon runs with `NOMADFS_STORAGE_FAULTS` (see
//! crates/core/src/storage/faulty.rs), 8 writers and 4 readers work while a seeded fraction of
//! storage calls fail (half of them "no space", some after the write landed), then faults stop.
//!
//! Checks: no panic (the daemon stays up, its log has no panic); every failed request answered
//! EIO and was logged and audited; every write acknowledged by a successful fsync is there when
//! faults stop and after a restart (a failed one may or may not have landed, never torn); the
//! mount works normally once faults stop. `NOMADFS_FAULTS_SECS` (default 8) sets the duration,
//! `NOMADFS_FAULTS_RATE` (default 0.05) the fraction, `NOMADFS_FAULTS_SEED` replays a run.

mod common;
#[path = "common/rel.rs"]
mod rel;

use common::*;
use rel::{parse_value, value_for, write_acked, KeyState, Rng};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WRITERS: usize = 8;
const READERS: usize = 4;
const KEYS: usize = 6;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// What each key holds now, checked against what was acknowledged and attempted:
/// `Some(seq)` or `None` (absent).
fn verify(d: &Daemon, st: &[KeyState], when: &str) -> Vec<Option<u64>> {
    let mut out = Vec::new();
    for w in 0..WRITERS {
        for k in 0..KEYS {
            let ks = st[w * KEYS + k];
            let rel = format!("secret/w{w}/k{k}");
            match std::fs::read(d.p(&rel)) {
                Ok(v) => {
                    let Some((pw, pk, seq)) = parse_value(&v) else {
                        panic!(
                            "{when}: {rel} holds a torn/unknown value ({} bytes)",
                            v.len()
                        );
                    };
                    assert_eq!((pw, pk), (w, k), "{when}: {rel} holds another key's value");
                    let attempted = ks.attempted.expect("a value exists, so one was attempted");
                    assert!(
                        seq <= attempted,
                        "{when}: {rel} holds s{seq}, never attempted"
                    );
                    if let Some(a) = ks.acked {
                        assert!(
                            seq >= a,
                            "{when}: {rel} holds s{seq}, but s{a} was acknowledged"
                        );
                    }
                    out.push(Some(seq));
                }
                Err(e) => {
                    assert_eq!(
                        e.raw_os_error(),
                        Some(libc::ENOENT),
                        "{when}: reading {rel}: {e}\n{}",
                        d.log_text()
                    );
                    assert!(
                        ks.acked.is_none(),
                        "{when}: {rel} is gone, but s{:?} was acknowledged",
                        ks.acked
                    );
                    out.push(None);
                }
            }
        }
    }
    out
}

fn count_lines(text: &str, needle: &str) -> usize {
    text.lines().filter(|l| l.contains(needle)).count()
}

/// `injected N of M calls` from the daemon's exit report.
fn injected_from_log(log: &str) -> Option<(u64, u64)> {
    let line = log
        .lines()
        .rev()
        .find(|l| l.contains("storage faults: injected"))?;
    let rest = line.split("storage faults: injected ").nth(1)?;
    let mut it = rest.split_whitespace();
    let n = it.next()?.parse().ok()?;
    let _of = it.next()?;
    let m = it.next()?.parse().ok()?;
    Some((n, m))
}

#[test]
fn storage_faults_answer_eio_lose_nothing_and_recover() {
    let secs: u64 = env_or("NOMADFS_FAULTS_SECS", 8);
    let rate: f64 = env_or("NOMADFS_FAULTS_RATE", 0.05);
    let seed = Rng::from_env("NOMADFS_FAULTS_SEED").next();
    let mut d = Daemon::start();
    for w in 0..WRITERS {
        std::fs::create_dir(d.p(&format!("secret/w{w}"))).expect("mkdir writer folder");
    }
    // Restart with a fault plan that is idle until the flag file exists.
    let flag = d.dir.path().join("faults-on");
    d.env = vec![(
        "NOMADFS_STORAGE_FAULTS".into(),
        format!(
            "rate={rate},enospc=0.5,lost_ack=0.3,seed={seed},while={}",
            flag.display()
        ),
    )];
    d.restart();
    let log = d.log_text();
    assert!(
        log.contains("STORAGE FAULT INJECTION IS ON"),
        "the daemon must say loudly that faults are on"
    );
    assert!(d
        .sh_ok("cat sys/health")
        .contains("\"storage\": \"faulty\""));

    let mnt = d.mnt.clone();
    let state: Mutex<Vec<KeyState>> = Mutex::new(vec![KeyState::default(); WRITERS * KEYS]);
    let stop = AtomicBool::new(false);
    let (acked, failed_writes, reads_ok, eio) = (
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
        AtomicU64::new(0),
    );
    let wrong: Mutex<Vec<String>> = Mutex::new(Vec::new());
    std::fs::write(&flag, b"").expect("faults on");
    let started = Instant::now();
    std::thread::scope(|s| {
        for w in 0..WRITERS {
            let (mnt, state, stop, acked, failed_writes, eio, wrong) =
                (&mnt, &state, &stop, &acked, &failed_writes, &eio, &wrong);
            s.spawn(move || {
                let mut k = 0;
                while !stop.load(Ordering::SeqCst) {
                    let idx = w * KEYS + k;
                    let seq = state.lock().expect("state")[idx].next_attempt();
                    let path = mnt.join(format!("secret/w{w}/k{k}"));
                    match write_acked(&path, value_for(w, k, seq)) {
                        Ok(()) => {
                            state.lock().expect("state")[idx].acked = Some(seq);
                            acked.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                            failed_writes.fetch_add(1, Ordering::SeqCst);
                            eio.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => wrong
                            .lock()
                            .expect("wrong")
                            .push(format!("write w{w}/k{k} s{seq}: {e} (want EIO)")),
                    }
                    k = (k + 1) % KEYS;
                }
            });
        }
        for r in 0..READERS {
            let (mnt, stop, reads_ok, eio, wrong) = (&mnt, &stop, &reads_ok, &eio, &wrong);
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (r as u64 + 1));
                while !stop.load(Ordering::SeqCst) {
                    let (w, k) = (
                        rng.below(WRITERS as u64) as usize,
                        rng.below(KEYS as u64) as usize,
                    );
                    let path = mnt.join(format!("secret/w{w}/k{k}"));
                    match std::fs::read(&path) {
                        Ok(v) => match parse_value(&v) {
                            Some((pw, pk, _)) if (pw, pk) == (w, k) => {
                                reads_ok.fetch_add(1, Ordering::SeqCst);
                            }
                            _ => wrong
                                .lock()
                                .expect("wrong")
                                .push(format!("read w{w}/k{k}: a wrong or torn value")),
                        },
                        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                        Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                            eio.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => wrong
                            .lock()
                            .expect("wrong")
                            .push(format!("read w{w}/k{k}: {e} (want EIO)")),
                    }
                    // ls under faults: EIO or a listing, nothing else.
                    if let Err(e) = std::fs::read_dir(mnt.join(format!("secret/w{w}")))
                        .and_then(|rd| rd.collect::<std::io::Result<Vec<_>>>())
                    {
                        if e.raw_os_error() == Some(libc::EIO) {
                            eio.fetch_add(1, Ordering::SeqCst);
                        } else {
                            wrong
                                .lock()
                                .expect("wrong")
                                .push(format!("ls secret/w{w}: {e} (want EIO)"));
                        }
                    }
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::SeqCst);
    });
    let fault_secs = started.elapsed().as_secs_f64();
    // The daemon survived.
    assert!(
        d.child
            .as_mut()
            .expect("child")
            .try_wait()
            .expect("try_wait")
            .is_none(),
        "the daemon died under storage faults:\n{}",
        d.log_text()
    );
    std::fs::remove_file(&flag).expect("faults off");

    let wrong = wrong.into_inner().expect("wrong");
    assert!(
        wrong.is_empty(),
        "answers other than EIO under faults: {wrong:?}"
    );
    let (acked, failed_writes, reads_ok, eio) = (
        acked.into_inner(),
        failed_writes.into_inner(),
        reads_ok.into_inner(),
        eio.into_inner(),
    );
    assert!(acked > 0, "no write succeeded under faults");
    assert!(failed_writes > 0, "no write failed: were faults injected?");

    // Faults off: the mount recovers; every acknowledged write is there.
    let st = state.lock().expect("state").clone();
    let live = verify(&d, &st, "faults stopped");
    d.sh_ok("ls -R secret > /dev/null && echo probe > secret/probe && cat secret/probe && rm secret/probe");

    // Restart without the plan: the same values, durably.
    d.stop();
    let log = d.log_text();
    let (injected, calls) = injected_from_log(&log).expect("the daemon reports injected faults");
    assert!(injected > 0, "no faults injected");
    d.env.clear();
    d.spawn(true);
    let after = verify(&d, &st, "after restart");
    assert_eq!(live, after, "values changed across the restart");
    assert!(d.sh_ok("cat sys/health").contains("\"storage\": \"file\""));

    // Logged and audited; no panic.
    let log = d.log_text();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
    let logged = count_lines(&log, "(injected fault)");
    let audit = std::fs::read_to_string(d.audit()).expect("audit log");
    let audited = count_lines(&audit, "\"errno\":\"EIO\"");
    assert!(logged > 0, "injected faults were not logged");
    assert!(
        audited as u64 >= eio,
        "{eio} requests failed with EIO, only {audited} EIO audit records"
    );
    assert!(
        audit.contains("injected fault"),
        "the audit records do not give the reason"
    );
    let verified = std::process::Command::new(bin())
        .args(["audit", "verify"])
        .arg(d.audit())
        .output()
        .expect("audit verify");
    assert!(
        verified.status.success(),
        "audit chain: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
    let present = after.iter().filter(|v| v.is_some()).count();
    println!(
        "faults: {fault_secs:.1} s at rate {rate}: {injected} faults injected in {calls} storage \
         calls; {acked} writes acknowledged, {failed_writes} failed with EIO, {reads_ok} reads \
         verified, {eio} EIO answers in all ({audited} EIO audit records, {logged} log lines); \
         {} keys verified after faults and after restart ({present} present)",
        after.len()
    );
}

#[test]
fn a_malformed_fault_plan_stops_the_daemon() {
    let mut d = Daemon::start();
    d.stop();
    d.env = vec![("NOMADFS_STORAGE_FAULTS".into(), "rate=lots".into())];
    let mut child = d
        .command(true)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(st) = child.try_wait().expect("try_wait") {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            unmount(&d.mnt);
            panic!("the daemon started with a malformed fault plan");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(1));
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().expect("stderr"), &mut err)
        .expect("stderr");
    assert!(err.contains("NOMADFS_STORAGE_FAULTS"), "{err}");
    assert!(!is_mounted(Path::new(&d.mnt)));
}
