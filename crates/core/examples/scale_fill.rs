//! Fill a nomadfs file store with many secrets fast, for `scripts/bench-scale`.
//!
//! usage: NOMADFS_PASSPHRASE=... scale_fill STORE_DIR N
//!
//! The store must already be initialised by the daemon (its first start creates the `secret/`
//! generic mount) and the daemon must be stopped (the store is opened exclusively). Writes N
//! 64-byte secrets through the barrier (encrypted names and values, exactly what the daemon
//! writes) in big atomic batches, in the generic backend's layout, below `secret/scale/`:
//! ten folders `c0`..`c9`, each holding N/10 secrets in folders of 1000
//! (`secret/scale/c3/g0042/s0007`). Prints one JSON line: secrets, seconds, rate.

use nomadfs_core::barrier::view::ViewOp;
use nomadfs_core::barrier::{Barrier, KdfParams, View};
use nomadfs_core::mounts::MountEntry;
use nomadfs_core::storage::file::FileStorage;
use std::sync::Arc;
use std::time::Instant;

const BATCH: usize = 2000;
const VALUE: &[u8; 64] = b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn main() {
    if let Err(e) = run() {
        eprintln!("scale_fill: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(n)) = (args.next(), args.next()) else {
        return Err("usage: NOMADFS_PASSPHRASE=... scale_fill STORE_DIR N".into());
    };
    let n: usize = n.parse()?;
    let pass = std::env::var("NOMADFS_PASSPHRASE").map_err(|_| "set NOMADFS_PASSPHRASE")?;
    let storage = Arc::new(FileStorage::open(std::path::Path::new(&dir))?);
    let barrier = Arc::new(Barrier::new(storage, KdfParams::default()));
    if !barrier.is_initialized()? {
        return Err("the store is not initialised: start the daemon on it once first".into());
    }
    barrier
        .unseal(pass.as_bytes())
        .map_err(|e| format!("unseal: {e}"))?;
    let table = barrier
        .get("core/mounts")?
        .ok_or("no mount table in the store")?;
    let entries: Vec<MountEntry> = serde_json::from_slice(table.expose())?;
    let secret = entries
        .iter()
        .find(|e| e.path == "secret" && e.kind == "generic")
        .ok_or("no generic mount at secret/")?;
    let view = View::new(barrier.clone(), format!("logical/{}/", secret.uuid));

    let start = Instant::now();
    let per_child = n.div_ceil(10);
    let mut paths = Vec::with_capacity(BATCH);
    let mut written = 0usize;
    for i in 0..n {
        let (child, j) = (i / per_child, i % per_child);
        paths.push(format!(
            "f/scale/c{child}/g{:04}/s{:04}",
            j / 1000,
            j % 1000
        ));
        if paths.len() == BATCH || i + 1 == n {
            let ops: Vec<ViewOp<'_>> = paths.iter().map(|p| ViewOp::Put(p, VALUE)).collect();
            view.apply(&ops)?;
            written += paths.len();
            paths.clear();
            if written % 100_000 < BATCH {
                eprintln!(
                    "scale_fill: {written} secrets, {:.1}s",
                    start.elapsed().as_secs_f64()
                );
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{{\"secrets\":{written},\"secs\":{secs:.3},\"per_s\":{:.0}}}",
        written as f64 / secs.max(1e-9)
    );
    Ok(())
}
