//! Load: 16 concurrent readers and writers through a real mount (file store, audit log on) for
//! `NOMADFS_LOAD_SECS` seconds (default 25; `scripts/stress` runs 600), while the daemon's RSS
//! (`VmRSS`) and open file descriptors (`/proc/PID/fd`) are sampled every
//! `NOMADFS_LOAD_SAMPLE_SECS` (default 2). Fails on any I/O error or wrong value, on an fd count
//! that grows over the run, or on RSS growing more than `NOMADFS_LOAD_RSS_MIB` (default 16) MiB
//! after warm-up. The figures are printed as a table (run with `--nocapture`).
//!
//! Each worker owns `KEYS` secrets in its own folder and loops over a mix of operations:
//! overwrite (write + fsync + close), replace by rename, delete, list, and reads of any worker's
//! secrets; every value read must be exactly one some writer wrote for that very key.
//! The key space is fixed, so a flat daemon is the expected outcome.

mod common;
#[path = "common/rel.rs"]
mod rel;

use common::Daemon;
use rel::{fd_count, parse_value, rss_kib, value_for, write_acked, Rng};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WORKERS: usize = 16;
const KEYS: usize = 32;
/// Transient descriptors the daemon may hold at a sample's instant beyond its steady set: each
/// of its request threads can have one /proc file open while it looks up a caller.
const FD_SLACK: usize = 4;

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[derive(Default)]
struct Counts {
    writes: AtomicU64,
    renames: AtomicU64,
    deletes: AtomicU64,
    lists: AtomicU64,
    reads: AtomicU64,
    reads_absent: AtomicU64,
}

impl Counts {
    fn total(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
            + self.renames.load(Ordering::Relaxed)
            + self.deletes.load(Ordering::Relaxed)
            + self.lists.load(Ordering::Relaxed)
            + self.reads.load(Ordering::Relaxed)
            + self.reads_absent.load(Ordering::Relaxed)
    }
}

struct Sample {
    secs: f64,
    rss_kib: u64,
    fds: usize,
    ops: u64,
}

fn key_path(mnt: &Path, w: usize, k: usize) -> PathBuf {
    mnt.join(format!("secret/load/w{w}/k{k}"))
}

/// One worker's loop; returns a description of the first failure, if any.
fn worker(
    mnt: &Path,
    w: usize,
    seed: u64,
    stop: &AtomicBool,
    counts: &Counts,
) -> Result<(), String> {
    let mut rng = Rng::new(seed ^ (w as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut seq: u64 = 0;
    let dir = mnt.join(format!("secret/load/w{w}"));
    while !stop.load(Ordering::Relaxed) {
        let roll = rng.below(100);
        let k = rng.below(KEYS as u64) as usize;
        seq += 1;
        if roll < 35 {
            let p = key_path(mnt, w, k);
            write_acked(&p, value_for(w, k, seq))
                .map_err(|e| format!("write {}: {e}", p.display()))?;
            counts.writes.fetch_add(1, Ordering::Relaxed);
        } else if roll < 40 {
            let tmp = dir.join(format!("tmp{k}"));
            write_acked(&tmp, value_for(w, k, seq))
                .map_err(|e| format!("write {}: {e}", tmp.display()))?;
            let p = key_path(mnt, w, k);
            std::fs::rename(&tmp, &p).map_err(|e| format!("rename to {}: {e}", p.display()))?;
            counts.renames.fetch_add(1, Ordering::Relaxed);
        } else if roll < 43 {
            let p = key_path(mnt, w, k);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("delete {}: {e}", p.display())),
            }
            counts.deletes.fetch_add(1, Ordering::Relaxed);
        } else if roll < 48 {
            let n = std::fs::read_dir(&dir)
                .map_err(|e| format!("list {}: {e}", dir.display()))?
                .count();
            if n > 2 * KEYS {
                return Err(format!("{} lists {n} entries", dir.display()));
            }
            counts.lists.fetch_add(1, Ordering::Relaxed);
        } else {
            let other = rng.below(WORKERS as u64) as usize;
            let p = key_path(mnt, other, k);
            match std::fs::read(&p) {
                Ok(v) => match parse_value(&v) {
                    Some((pw, pk, _)) if (pw, pk) == (other, k) => {
                        counts.reads.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {
                        return Err(format!(
                            "read {}: a wrong or torn value ({} bytes)",
                            p.display(),
                            v.len()
                        ))
                    }
                },
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    counts.reads_absent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return Err(format!("read {}: {e}", p.display())),
            }
        }
    }
    Ok(())
}

#[test]
fn sixteen_readers_and_writers_keep_the_daemon_flat() {
    let secs = env_u64("NOMADFS_LOAD_SECS", 25);
    let every = env_u64("NOMADFS_LOAD_SAMPLE_SECS", 2).max(1);
    let rss_bound_kib = env_u64("NOMADFS_LOAD_RSS_MIB", 16) * 1024;
    let seed = Rng::from_env("NOMADFS_LOAD_SEED").next();
    let d = Daemon::start();
    let pid = d.child.as_ref().expect("daemon running").id();
    for w in 0..WORKERS {
        std::fs::create_dir_all(d.p(&format!("secret/load/w{w}"))).expect("mkdir worker folder");
    }
    let mnt = d.mnt.clone();
    let stop = AtomicBool::new(false);
    let counts = Counts::default();
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut samples: Vec<Sample> = Vec::new();
    let started = Instant::now();
    let sample = |samples: &mut Vec<Sample>, counts: &Counts| {
        samples.push(Sample {
            secs: started.elapsed().as_secs_f64(),
            rss_kib: rss_kib(pid).expect("daemon VmRSS"),
            fds: fd_count(pid).expect("daemon fds"),
            ops: counts.total(),
        });
    };
    sample(&mut samples, &counts);
    std::thread::scope(|s| {
        for w in 0..WORKERS {
            let (mnt, stop, counts, failures) = (&mnt, &stop, &counts, &failures);
            s.spawn(move || {
                if let Err(e) = worker(mnt, w, seed, stop, counts) {
                    failures
                        .lock()
                        .expect("failures")
                        .push(format!("worker {w}: {e}"));
                    stop.store(true, Ordering::Relaxed);
                }
            });
        }
        let end = started + Duration::from_secs(secs);
        while Instant::now() < end && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_secs(every).min(end - Instant::now()));
            sample(&mut samples, &counts);
        }
        stop.store(true, Ordering::Relaxed);
    });
    sample(&mut samples, &counts);
    let elapsed = started.elapsed().as_secs_f64();

    println!("  time_s     rss_kib   fds        ops");
    for s in &samples {
        println!("{:8.1} {:11} {:5} {:10}", s.secs, s.rss_kib, s.fds, s.ops);
    }
    let total = counts.total();
    println!(
        "load: {WORKERS} workers, {elapsed:.1} s, {total} ops ({:.0}/s): {} writes, {} renames, \
         {} deletes, {} lists, {} reads verified, {} reads of absent keys",
        total as f64 / elapsed.max(0.001),
        counts.writes.load(Ordering::Relaxed),
        counts.renames.load(Ordering::Relaxed),
        counts.deletes.load(Ordering::Relaxed),
        counts.lists.load(Ordering::Relaxed),
        counts.reads.load(Ordering::Relaxed),
        counts.reads_absent.load(Ordering::Relaxed),
    );

    let failures = failures.into_inner().expect("failures");
    assert!(
        failures.is_empty(),
        "I/O errors under load: {:?}\n{}",
        failures,
        d.log_text()
            .lines()
            .filter(|l| l.contains("ERROR"))
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert!(total > 0, "no operation completed");

    // Warm-up: the first fifth of the run (caches, thread arenas, the store's first pages).
    let warm = samples
        .iter()
        .position(|s| s.secs >= secs as f64 / 5.0)
        .unwrap_or(0);
    let after = &samples[warm..];
    assert!(
        after.len() >= 3,
        "too few samples after warm-up: {}",
        after.len()
    );
    let half = after.len() / 2;
    let (first, last) = after.split_at(half.max(1));
    let fd_first = first.iter().map(|s| s.fds).max().unwrap_or(0);
    let fd_last = last.iter().map(|s| s.fds).max().unwrap_or(0);
    let fd_min = after.iter().map(|s| s.fds).min().unwrap_or(0);
    let rss_warm = after[0].rss_kib;
    let rss_max = after.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "fds: {fd_min}..{fd_first} in the first half after warm-up, max {fd_last} in the second; \
         RSS {rss_warm} KiB after warm-up, max {rss_max} KiB (+{} KiB; bound {rss_bound_kib} KiB)",
        rss_max.saturating_sub(rss_warm)
    );
    assert!(
        fd_last <= fd_first + FD_SLACK,
        "the daemon's fd count grew over the run: {fd_first} → {fd_last}"
    );
    assert!(
        rss_max <= rss_warm + rss_bound_kib,
        "the daemon's RSS grew by {} KiB after warm-up (bound {rss_bound_kib} KiB)",
        rss_max - rss_warm
    );
}
