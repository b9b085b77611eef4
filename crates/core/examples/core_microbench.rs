//! In-process micro-benchmarks of engine paths (no FUSE, no audit): the per-operation cost of
//! transit encrypt/decrypt, and lease restore / prefix revocation at scale.
//!
//! usage (release, from the workspace root):
//!   cargo run --release -p nomadfs-core --example core_microbench -- transit [OPS] [memory|file]
//!   cargo run --release -p nomadfs-core --example core_microbench -- leases [N] [memory|file]
//!
//! Benchmarks, not tests: prints numbers, never fails on one.

use nomadfs_core::backend::Ctx;
use nomadfs_core::barrier::KdfParams;
use nomadfs_core::lease::{LeaseRecord, NewLease};
use nomadfs_core::storage::file::FileStorage;
use nomadfs_core::storage::memory::MemoryStorage;
use nomadfs_core::storage::Storage;
use nomadfs_core::{Backend, Caller, DirEntry, Engine, EngineConfig, Node, SecretBytes};
use std::sync::Arc;
use std::time::Instant;

fn storage(kind: &str, dir: &std::path::Path) -> Arc<dyn Storage> {
    match kind {
        "file" => match FileStorage::open(dir) {
            Ok(s) => Arc::new(s),
            Err(e) => {
                eprintln!("cannot open the file store: {}", e.message);
                std::process::exit(2);
            }
        },
        _ => Arc::new(MemoryStorage::new()),
    }
}

fn engine(s: Arc<dyn Storage>) -> Arc<Engine> {
    let e = Engine::new(
        s,
        EngineConfig {
            kdf: KdfParams::minimum(),
            initial_mounts: vec![],
            ..EngineConfig::default()
        },
    );
    if e.unseal(b"bench passphrase").is_err() {
        eprintln!("unseal failed");
        std::process::exit(2);
    }
    e
}

fn die(what: &str, e: nomadfs_core::Error) -> ! {
    eprintln!("{what}: {}", e.message);
    std::process::exit(2);
}

fn transit(ops: usize, kind: &str) {
    let dir = tempdir();
    let e = engine(storage(kind, &dir));
    let root = Caller::new(0, 0, 1);
    e.mount("transit", "transit", "")
        .unwrap_or_else(|err| die("mount", err));
    e.mkdir(&root, "transit/keys/k")
        .unwrap_or_else(|err| die("mkdir", err));
    let plain = SecretBytes::from_slice(&[7u8; 64]);
    // Warm up.
    let mut ct = SecretBytes::from_slice(b"");
    for _ in 0..1000 {
        ct = e
            .exchange(&root, "transit/encrypt/k", plain.duplicate())
            .unwrap_or_else(|err| die("encrypt", err));
    }
    let t = Instant::now();
    for _ in 0..ops {
        // What one `open O_RDWR + write + pread + close` asks of the engine besides the
        // exchange itself: a lookup (stat).
        e.stat(&root, "transit/encrypt/k")
            .unwrap_or_else(|err| die("stat", err));
        ct = e
            .exchange(&root, "transit/encrypt/k", plain.duplicate())
            .unwrap_or_else(|err| die("encrypt", err));
    }
    let enc = t.elapsed().as_secs_f64() * 1e6 / ops as f64;
    let t = Instant::now();
    for _ in 0..ops {
        e.exchange(&root, "transit/decrypt/k", ct.duplicate())
            .unwrap_or_else(|err| die("decrypt", err));
    }
    let dec = t.elapsed().as_secs_f64() * 1e6 / ops as f64;
    println!(
        "{{\"bench\":\"transit\",\"store\":\"{kind}\",\"ops\":{ops},\"stat_plus_encrypt_us\":{enc:.2},\"decrypt_us\":{dec:.2}}}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn leases(n: usize, kind: &str) {
    let dir = tempdir();
    let s = storage(kind, &dir);
    let e = engine(s.clone());
    let threads = 4;
    let t = Instant::now();
    std::thread::scope(|sc| {
        for w in 0..threads {
            let e = &e;
            sc.spawn(move || {
                for i in (w..n).step_by(threads) {
                    // Ten folders, so a prefix revocation below takes a tenth.
                    let path = format!("pg/creds/r{}", i % 10);
                    let new = NewLease {
                        id: nomadfs_core::lease::LeaseManager::new_id(&path),
                        path,
                        ttl_secs: 86_400,
                        max_ttl_secs: 86_400,
                        renewable: true,
                        uid: 1000 + (i % 7) as u32,
                        secret: serde_json::json!({ "username": format!("nomadfs-bench-{i}") }),
                        limit: None,
                    };
                    if let Err(err) = e.leases().issue(new) {
                        die("issue", err);
                    }
                }
            });
        }
    });
    let issue_s = t.elapsed().as_secs_f64();
    drop(e);
    let rss_before = rss_kib();
    // A fresh daemon over the same store: unseal restores every lease.
    let e = engine(s);
    let restore_s = {
        let t = Instant::now();
        let got = e
            .leases()
            .restore()
            .unwrap_or_else(|err| die("restore", err));
        assert_eq!(got, n, "restored count");
        t.elapsed().as_secs_f64()
    };
    let rss = rss_kib();
    let t = Instant::now();
    let _ = e.leases().list("pg/creds/r3");
    let list_ms = t.elapsed().as_secs_f64() * 1e3;
    // Revocation with an upstream that answers at once: nomadfs's own cost per revocation
    // (record read, record delete, index), 16 at a time like `rm -r`.
    e.leases()
        .set_lookup(Box::new(|_| Some(Arc::new(NoUpstream) as Arc<dyn Backend>)));
    let t = Instant::now();
    let revoked = e
        .leases()
        .revoke_prefix("pg/creds/r3/")
        .unwrap_or_else(|err| die("revoke", err));
    let revoke_s = t.elapsed().as_secs_f64();
    println!(
        "{{\"bench\":\"leases\",\"store\":\"{kind}\",\"leases\":{n},\"issue_s\":{issue_s:.2},\"restore_s\":{restore_s:.3},\"list_tenth_ms\":{list_ms:.2},\"rss_before_mib\":{:.1},\"rss_after_restore_mib\":{:.1},\"revoked\":{revoked},\"revocations_per_s\":{:.0}}}",
        rss_before as f64 / 1024.0,
        rss as f64 / 1024.0,
        revoked as f64 / revoke_s
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A backend whose upstream revocation succeeds at once.
struct NoUpstream;

impl Backend for NoUpstream {
    fn kind(&self) -> &'static str {
        "none"
    }
    fn help(&self) -> String {
        String::new()
    }
    fn stat(&self, _: &Ctx<'_>, path: &str) -> nomadfs_core::Result<Node> {
        Err(nomadfs_core::Error::not_found(path))
    }
    fn list(&self, _: &Ctx<'_>, path: &str) -> nomadfs_core::Result<Vec<DirEntry>> {
        Err(nomadfs_core::Error::not_found(path))
    }
    fn read(&self, _: &Ctx<'_>, path: &str) -> nomadfs_core::Result<SecretBytes> {
        Err(nomadfs_core::Error::not_found(path))
    }
    fn revoke(&self, _: &LeaseRecord) -> nomadfs_core::Result<()> {
        Ok(())
    }
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("nomadfs-microbench-{}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let what = args.get(1).map(String::as_str).unwrap_or("transit");
    let n: Option<usize> = args.get(2).and_then(|s| s.parse().ok());
    let kind = args.get(3).map(String::as_str).unwrap_or("file");
    match what {
        "transit" => transit(n.unwrap_or(200_000), kind),
        "leases" => leases(n.unwrap_or(100_000), kind),
        _ => {
            eprintln!("usage: core_microbench transit|leases [N] [memory|file]");
            std::process::exit(2);
        }
    }
}
