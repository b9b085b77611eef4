//! Giving memory back: the write buffers of open files can add up to many MiB (bounded per
//! uid by `[limits] buffered_bytes_per_uid`); once they are freed, glibc's allocator would keep
//! the pages (its mmap threshold grows with every large free, and free chunks stay in per-thread
//! arenas), so the daemon's RSS — locked under mlockall — would stay at its peak.
//!
//! Owns: the two allocator calls, each wrapped and commented (the only `unsafe` in this crate).
//! Must never: do anything but tune or trim the allocator.

use std::sync::atomic::{AtomicU64, Ordering};

/// Allocations at least this large get their own mapping, returned to the kernel at free.
const MMAP_THRESHOLD: i32 = 128 << 10;
/// Malloc arenas at most (glibc's default is 8 per core).
const ARENA_MAX: i32 = 2;
/// Trim once this much was freed since the last trim.
const TRIM_AFTER: u64 = 16 << 20;

static FREED: AtomicU64 = AtomicU64::new(0);

/// At start, before the request threads exist: a fixed mmap threshold (glibc otherwise raises
/// it to the largest block freed so far, up to 32 MiB, after which 1 MiB buffers come from the
/// heap and stay there) and few arenas. Returns what failed, if anything.
pub fn tune() -> Vec<String> {
    let mut failed = Vec::new();
    for (name, param, value) in [
        ("M_MMAP_THRESHOLD", libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD),
        ("M_ARENA_MAX", libc::M_ARENA_MAX, ARENA_MAX),
    ] {
        if !mallopt(param, value) {
            failed.push(format!("mallopt({name}, {value}) refused"));
        }
    }
    failed
}

#[allow(unsafe_code)]
fn mallopt(param: i32, value: i32) -> bool {
    // SAFETY: mallopt takes two integers and only changes the allocator's tunables; glibc
    // documents it as safe to call at any time (the parameters here are valid ones).
    unsafe { libc::mallopt(param, value) == 1 }
}

/// `bytes` of buffers were just freed: give free heap pages back to the kernel once enough
/// has been freed since the last time.
pub fn freed(bytes: u64) {
    if bytes == 0 {
        return;
    }
    let total = FREED.fetch_add(bytes, Ordering::Relaxed) + bytes;
    if total >= TRIM_AFTER && FREED.swap(0, Ordering::Relaxed) >= TRIM_AFTER {
        trim();
    }
}

#[allow(unsafe_code)]
fn trim() {
    // SAFETY: malloc_trim takes an integer (the padding to keep) and only returns free pages
    // of the allocator's own heaps to the kernel; it is thread-safe (it locks each arena).
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn tune_and_trim_are_accepted() {
        assert!(super::tune().is_empty());
        super::freed(super::TRIM_AFTER);
    }
}
