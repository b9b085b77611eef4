//! Fault injection for tests: a `Storage` wrapper that fails a seeded fraction of calls.
//!
//! Owns: the fault plan (`FaultPlan`, parsed from a `key=value,...` spec), the per-call decision
//! for each operation kind (get, put, delete, list, batch, cas), the injected errors (an I/O
//! error, or a "no space left on device" one), and counters of what it injected.
//!
//! Two shapes of fault:
//! - *before* (the default): the call fails and the inner store is not touched — a full disk, a
//!   refused write;
//! - *lost acknowledgement* (`lost_ack=F`, writes only): the inner call runs and succeeds, then
//!   the caller is told it failed — an fsync error after the data reached the disk, a timeout
//!   after a remote store committed. A failed write may therefore have landed; a successful one
//!   always has.
//!
//! The daemon builds this wrapper only when the environment variable `NOMADFS_STORAGE_FAULTS`
//! holds a plan (nothing in `mounts.toml` can turn it on), and says so at error level on start.
//!
//! Spec keys (all optional, comma-separated): `rate=F` (every kind), `get=F`, `put=F`,
//! `delete=F`, `list=F` (also `has_prefix`), `batch=F`, `cas=F` (fractions 0..=1, a kind's own
//! key wins over `rate`), `enospc=F` (the share of injected faults that say "no space";
//! default 0.5), `lost_ack=F` (the share of injected write faults that happen after the write;
//! default 0), `seed=N`, `while=PATH` (inject only while PATH exists, so a test can stop and
//! resume faults without restarting the daemon).
//!
//! Must never: be configured from anything a production deployment writes, change a value it
//! was not asked to write, or panic. Its messages carry no keys and no values.

use super::{Storage, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// The operation kinds faults are planned and counted for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpKind {
    Get,
    Put,
    Delete,
    List,
    Batch,
    Cas,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [
        OpKind::Get,
        OpKind::Put,
        OpKind::Delete,
        OpKind::List,
        OpKind::Batch,
        OpKind::Cas,
    ];
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Get => "get",
            OpKind::Put => "put",
            OpKind::Delete => "delete",
            OpKind::List => "list",
            OpKind::Batch => "batch",
            OpKind::Cas => "cas",
        }
    }
    fn index(self) -> usize {
        self as usize
    }
    fn writes(self) -> bool {
        !matches!(self, OpKind::Get | OpKind::List)
    }
}

/// What to inject, and when.
#[derive(Debug, Clone, PartialEq)]
pub struct FaultPlan {
    /// Per `OpKind` (in `OpKind::ALL` order): the fraction of calls that fail.
    pub rates: [f64; 6],
    /// The share of injected faults reported as "no space left on device".
    pub enospc: f64,
    /// The share of injected write faults that happen after the inner write succeeded.
    pub lost_ack: f64,
    pub seed: u64,
    /// Inject only while this file exists.
    pub while_exists: Option<PathBuf>,
}

impl Default for FaultPlan {
    fn default() -> Self {
        Self {
            rates: [0.0; 6],
            enospc: 0.5,
            lost_ack: 0.0,
            seed: 0,
            while_exists: None,
        }
    }
}

fn fraction(key: &str, v: &str) -> Result<f64> {
    match v.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(Error::invalid(format!(
            "storage fault plan: {key}={v:?} is not a fraction between 0 and 1"
        ))),
    }
}

impl FaultPlan {
    /// Every kind fails with probability `rate`.
    pub fn uniform(rate: f64, seed: u64) -> Self {
        Self {
            rates: [rate; 6],
            seed,
            ..Self::default()
        }
    }

    /// Parse `rate=0.1,put=0.3,enospc=0.5,lost_ack=0.2,seed=7,while=/tmp/on`.
    pub fn parse(spec: &str) -> Result<Self> {
        let mut plan = Self::default();
        let mut rate: Option<f64> = None;
        let mut own: [Option<f64>; 6] = [None; 6];
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (k, v) = item.split_once('=').ok_or_else(|| {
                Error::invalid(format!("storage fault plan: {item:?} is not key=value"))
            })?;
            let (k, v) = (k.trim(), v.trim());
            match k {
                "rate" => rate = Some(fraction(k, v)?),
                "enospc" => plan.enospc = fraction(k, v)?,
                "lost_ack" => plan.lost_ack = fraction(k, v)?,
                "seed" => {
                    plan.seed = v.parse().map_err(|_| {
                        Error::invalid(format!("storage fault plan: seed={v:?} is not a number"))
                    })?
                }
                "while" if !v.is_empty() => plan.while_exists = Some(PathBuf::from(v)),
                _ => match OpKind::ALL.iter().find(|o| o.name() == k) {
                    Some(o) => own[o.index()] = Some(fraction(k, v)?),
                    None => {
                        return Err(Error::invalid(format!(
                            "storage fault plan: unknown key {k:?} (known: rate, get, put, \
                             delete, list, batch, cas, enospc, lost_ack, seed, while)"
                        )))
                    }
                },
            }
        }
        for o in OpKind::ALL {
            plan.rates[o.index()] = own[o.index()].or(rate).unwrap_or(0.0);
        }
        Ok(plan)
    }

    /// A one-line description for the daemon's log.
    pub fn describe(&self) -> String {
        let rates: Vec<String> = OpKind::ALL
            .iter()
            .map(|o| format!("{}={}", o.name(), self.rates[o.index()]))
            .collect();
        format!(
            "{} enospc={} lost_ack={} seed={}{}",
            rates.join(" "),
            self.enospc,
            self.lost_ack,
            self.seed,
            self.while_exists
                .as_ref()
                .map(|p| format!(" while {} exists", p.display()))
                .unwrap_or_default()
        )
    }
}

/// Counters of one operation kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KindStats {
    pub calls: u64,
    /// Faults injected (both shapes).
    pub injected: u64,
    /// Of those, "no space" ones.
    pub enospc: u64,
    /// Of those, lost acknowledgements (the write landed).
    pub lost_ack: u64,
}

#[derive(Default)]
struct Counters {
    calls: AtomicU64,
    injected: AtomicU64,
    enospc: AtomicU64,
    lost_ack: AtomicU64,
}

/// A `Storage` that fails some calls of the one it wraps, as its `FaultPlan` says.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    plan: FaultPlan,
    enabled: AtomicBool,
    counters: [Counters; 6],
}

/// A decision: fail before the call, after it (lost acknowledgement), or not at all.
enum Fault {
    None,
    Before(Error),
    After(Error),
}

/// splitmix64: a well-mixed 64-bit value from a counter.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform value in [0, 1) from 53 random bits.
fn unit(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

impl FaultyStorage {
    pub fn new(inner: Arc<dyn Storage>, plan: FaultPlan) -> Self {
        Self {
            inner,
            plan,
            enabled: AtomicBool::new(true),
            counters: Default::default(),
        }
    }

    pub fn plan(&self) -> &FaultPlan {
        &self.plan
    }

    /// Turn injection on or off (on by default; `while=PATH` must hold too).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::SeqCst);
    }

    /// Whether faults are being injected right now.
    pub fn active(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
            && self.plan.while_exists.as_ref().is_none_or(|p| p.exists())
    }

    pub fn stats(&self, kind: OpKind) -> KindStats {
        let c = &self.counters[kind.index()];
        KindStats {
            calls: c.calls.load(Ordering::Relaxed),
            injected: c.injected.load(Ordering::Relaxed),
            enospc: c.enospc.load(Ordering::Relaxed),
            lost_ack: c.lost_ack.load(Ordering::Relaxed),
        }
    }

    /// Totals over every kind.
    pub fn total(&self) -> KindStats {
        OpKind::ALL
            .iter()
            .map(|k| self.stats(*k))
            .fold(KindStats::default(), |a, s| KindStats {
                calls: a.calls + s.calls,
                injected: a.injected + s.injected,
                enospc: a.enospc + s.enospc,
                lost_ack: a.lost_ack + s.lost_ack,
            })
    }

    /// `injected N of M calls (get a/b, put ...), N no-space, N lost acknowledgements`.
    pub fn summary(&self) -> String {
        let t = self.total();
        let per: Vec<String> = OpKind::ALL
            .iter()
            .map(|k| {
                let s = self.stats(*k);
                format!("{} {}/{}", k.name(), s.injected, s.calls)
            })
            .collect();
        format!(
            "injected {} of {} calls ({}), {} no-space, {} lost acknowledgements",
            t.injected,
            t.calls,
            per.join(", "),
            t.enospc,
            t.lost_ack
        )
    }

    fn decide(&self, kind: OpKind) -> Fault {
        let c = &self.counters[kind.index()];
        let n = c.calls.fetch_add(1, Ordering::Relaxed);
        let rate = self.plan.rates[kind.index()];
        if rate <= 0.0 || !self.active() {
            return Fault::None;
        }
        // Three independent draws from (seed, kind, call number).
        let base = mix(self.plan.seed ^ mix(kind.index() as u64) ^ n.wrapping_mul(3));
        if unit(base) >= rate {
            return Fault::None;
        }
        c.injected.fetch_add(1, Ordering::Relaxed);
        let no_space = unit(mix(base ^ 1)) < self.plan.enospc;
        let after = kind.writes() && unit(mix(base ^ 2)) < self.plan.lost_ack;
        let what = if no_space {
            c.enospc.fetch_add(1, Ordering::Relaxed);
            "no space left on device"
        } else {
            "input/output error"
        };
        let e = Error::new(
            ErrorKind::Io,
            format!("storage {}: {what} (injected fault)", kind.name()),
        );
        tracing::debug!(op = kind.name(), after, "storage fault injected");
        if after {
            c.lost_ack.fetch_add(1, Ordering::Relaxed);
            Fault::After(e)
        } else {
            Fault::Before(e)
        }
    }

    fn run<T>(&self, kind: OpKind, call: impl FnOnce(&dyn Storage) -> Result<T>) -> Result<T> {
        match self.decide(kind) {
            Fault::None => call(self.inner.as_ref()),
            Fault::Before(e) => Err(e),
            Fault::After(e) => {
                call(self.inner.as_ref())?;
                Err(e)
            }
        }
    }
}

impl Storage for FaultyStorage {
    fn kind(&self) -> &'static str {
        "faulty"
    }
    fn shared(&self) -> bool {
        self.inner.shared()
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        self.run(OpKind::Get, |s| s.get(key))
    }
    fn put(&self, key: &str, value: &[u8]) -> Result<()> {
        self.run(OpKind::Put, |s| s.put(key, value))
    }
    fn delete(&self, key: &str) -> Result<()> {
        self.run(OpKind::Delete, |s| s.delete(key))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        self.run(OpKind::List, |s| s.list(prefix))
    }
    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        self.run(OpKind::List, |s| s.list_children(prefix))
    }
    fn has_prefix(&self, prefix: &str) -> Result<bool> {
        self.run(OpKind::List, |s| s.has_prefix(prefix))
    }
    fn apply(&self, ops: &[WriteOp]) -> Result<()> {
        self.run(OpKind::Batch, |s| s.apply(ops))
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        self.run(OpKind::Cas, |s| s.compare_and_swap(key, expected, new))
    }
    fn apply_if(&self, key: &str, expected: Option<&[u8]>, ops: &[WriteOp]) -> Result<bool> {
        self.run(OpKind::Cas, |s| s.apply_if(key, expected, ops))
    }
}

#[cfg(test)]
#[path = "faulty_tests.rs"]
mod tests;
