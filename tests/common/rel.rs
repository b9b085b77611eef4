//! Helpers shared by the reliability tests (faults, load, hygiene): a seeded generator, values
//! that cannot be torn or mixed without it showing, acknowledged writes, and /proc samples of a
//! daemon. Included with `#[path = "common/rel.rs"] mod rel;` next to `mod common;`.
#![allow(dead_code)]

/// A small xorshift generator: no extra dependency; the seed is printed so a run can be replayed
/// with the environment variable the caller names.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed | 1)
    }
    /// From `var` if set, else from the clock; prints the seed.
    pub fn from_env(var: &str) -> Self {
        let seed = std::env::var(var)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| {
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_nanos() as u64)
                    .unwrap_or(0x9e37_79b9)
            });
        println!("seed {seed} (replay with {var}={seed})");
        Rng::new(seed)
    }
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    /// Uniform-ish in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// The value writer `w` stores in key `k` at sequence `seq`: a header naming all three, then a
/// body (of a length that varies with seq) fully determined by the header.
pub fn value_for(w: usize, k: usize, seq: u64) -> Vec<u8> {
    let mut v = format!("w{w}k{k}s{seq}|").into_bytes();
    let n = 40 + ((w as u64 * 31 + k as u64 * 17 + seq * 131) % 3000) as usize;
    for i in 0..n {
        v.push(b'a' + ((w + k * 3 + seq as usize * 7 + i) % 26) as u8);
    }
    v.push(b'\n');
    v
}

/// `(w, k, seq)` if `v` is exactly some `value_for(w, k, seq)`.
pub fn parse_value(v: &[u8]) -> Option<(usize, usize, u64)> {
    let bar = v.iter().position(|&b| b == b'|')?;
    let head = std::str::from_utf8(v.get(..bar)?).ok()?;
    let rest = head.strip_prefix('w')?;
    let (w, rest) = rest.split_once('k')?;
    let (k, s) = rest.split_once('s')?;
    let (w, k, s) = (w.parse().ok()?, k.parse().ok()?, s.parse().ok()?);
    (value_for(w, k, s) == v).then_some((w, k, s))
}

/// Create/truncate, write, fsync (the commit point: its error is the commit's), close.
#[allow(unused_imports)] // not every includer writes
pub use crate::common::write_synced as write_acked;

/// What a writer did to one key: what the verification after a kill or a fault run compares.
#[derive(Clone, Copy, Default, Debug)]
pub struct KeyState {
    /// The last sequence number whose fsync returned Ok.
    pub acked: Option<u64>,
    /// The highest sequence number attempted (written or in flight).
    pub attempted: Option<u64>,
}

impl KeyState {
    /// Start the next write: its sequence number.
    pub fn next_attempt(&mut self) -> u64 {
        let seq = self.attempted.map_or(0, |a| a + 1);
        self.attempted = Some(seq);
        seq
    }
}

impl Rng {
    /// Uniform-ish in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }
}

/// `VmRSS` of a process, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// The number of open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

/// A field of /proc/PID/status ("Name:\tvalue" → "value").
pub fn status_field(pid: u32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let prefix = format!("{field}:");
    s.lines()
        .find_map(|l| l.strip_prefix(prefix.as_str()))
        .map(|v| v.trim().to_string())
}
