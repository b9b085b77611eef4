//! Durable write rate of the file store alone (no FUSE, no barrier): THREADS writers each
//! put 64-byte values under their own keys for SECONDS; prints one JSON line.
//!
//! usage: store_bench DIR [THREADS (8)] [SECONDS (3)]

use nomadfs_core::storage::file::FileStorage;
use nomadfs_core::storage::Storage;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

fn main() {
    let mut args = std::env::args().skip(1);
    let Some(dir) = args.next() else {
        eprintln!("usage: store_bench DIR [THREADS] [SECONDS]");
        std::process::exit(2);
    };
    let threads: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(8);
    let secs: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let s = match FileStorage::open(std::path::Path::new(&dir)) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("store_bench: {e}");
            std::process::exit(1);
        }
    };
    let stop = AtomicBool::new(false);
    let ops = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|scope| {
        for t in 0..threads {
            let (s, stop, ops, errors) = (&s, &stop, &ops, &errors);
            scope.spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match s.put(&format!("bench/{t}/{}", i % 1000), &[0xA5; 64]) {
                        Ok(()) => ops.fetch_add(1, Ordering::Relaxed),
                        Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                    };
                    i += 1;
                }
            });
        }
        std::thread::sleep(Duration::from_secs(secs));
        stop.store(true, Ordering::Relaxed);
    });
    let el = start.elapsed().as_secs_f64();
    let n = ops.into_inner();
    println!(
        "{{\"name\":\"store-put\",\"threads\":{threads},\"ops\":{n},\"secs\":{el:.3},\"ops_per_s\":{:.1},\"errors\":{}}}",
        n as f64 / el,
        errors.into_inner()
    );
}
