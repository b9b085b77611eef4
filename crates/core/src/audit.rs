//! The audit log: one JSON line per request, hash-chained, appended to a file.
//!
//! Owns: the audit file (creating it `0600`, its parent directories `0700`), the line format,
//! the hash chain (`seq`, `prev`), durability (`FsyncPolicy`, `Wait`, group commit, the
//! background flusher), reopening for log rotation, and `verify`, which checks a file's chain.
//!
//! Must never: write a secret value, credential, passphrase or ciphertext. Those reach this
//! module only as bytes handed to the caller-supplied HMAC function, and only its
//! `hmac-sha256:HEX` output is written (anything else it returns is refused). This module never
//! sees the HMAC key. `reason` and `path` are written as given: the engine must not put secrets
//! in them (`Error` messages already name paths and reasons only). It must never panic, and
//! never report a record as logged unless its line was written (and synced, per policy).
//!
//! # Durability
//!
//! Every line is written (a completed `write(2)`) before `record_as` returns, under every
//! policy; a line that cannot be written is an error and the caller refuses the request. What
//! the policy (`FsyncPolicy`) chooses is which lines are also fdatasync'd first, by what the
//! line is for (`Wait`): the default, `changes`, syncs (group commit) a change's intent line
//! before the change commits and a line naming a credential's lease before it is handed out,
//! and lets an answer's line (a read) go once written. A thread syncs whatever was written
//! and not yet synced every `FLUSH_INTERVAL`; a failed fsync kills the file for writing, so
//! every later record fails and every request is refused until `reopen`.
//!
//! # Line format
//!
//! One JSON object per line, fields in this order:
//!
//! ```text
//! {"seq":2,"prev":"<64 hex>","time":"2024-05-01T12:34:56.789Z","uid":1000,"gid":1000,
//!  "pid":4242,"exe":"/usr/bin/cat","cgroup":"/user.slice","operation":"read",
//!  "path":"secret/db","result":"ok","errno":null,"lease_id":null,"reason":null,
//!  "values":{"response":"hmac-sha256:<64 hex>"}}
//! ```
//!
//! (on one line). `result` is `ok`, `error`, or `intent`: the line a change writes (and makes
//! durable) before it commits; its outcome follows in a line of its own. An aggregate of
//! repeated refusals (`refusals.rs`) ends with `"count":N` after `values`.
//! `seq` starts at 1 in each file and increments by 1; `prev` is the hex SHA-256
//! of the previous line's exact bytes without its newline, 64 zeros on the first line. Each line
//! is written with a single `write(2)` on an `O_APPEND` descriptor, so concurrent writers never
//! interleave.
//!
//! # What the chain proves, and what it does not
//!
//! The chain is a plain (unkeyed) SHA-256 chain. It detects a deleted, inserted, reordered or
//! edited line in the middle of the file — unless the attacker also rewrites every later line,
//! which anyone able to write the file can do, since no key is involved. It cannot detect
//! truncation of the file's tail: dropping the last N lines (or editing the very last line,
//! which no later line vouches for) leaves a valid chain. To detect that, keep a checkpoint
//! elsewhere (the `last_seq` and `last_hash` of a `VerifyReport`, or of the line just written,
//! shipped off the host) and compare. The chain makes tampering evident, not impossible.
//!
//! # Rotation
//!
//! `reopen` (SIGHUP after logrotate has renamed the file) opens the path again. A new or empty
//! file starts a fresh chain (`seq` 1, `prev` zeros) whose first line, operation
//! `audit-reopen`, names the seq and hash the previous file ended with. If the path still holds
//! a non-empty log, the chain continues from its last line. Between the rename and the reopen,
//! `record` fails (the path no longer names the open file): rotate by rename + SIGHUP, not
//! `copytruncate` (which would break the chain).
//!
//! Size: over ~500 lines because the writer, the fsync policies with their group commit and
//! flusher, and the tests of each (about half the file) share one file's state.

use crate::caller::Caller;
use crate::error::{Error, Result};
use serde::Serialize;
use sha2::{Digest, Sha256};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// The `prev` of the first line of a file.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";
/// The prefix every written value carries.
pub const HMAC_PREFIX: &str = "hmac-sha256:";
/// Longest last line `open` will read back to continue a chain.
const MAX_TAIL: u64 = 16 << 20;

/// When `record_as` makes its line durable (fdatasync'd) before returning. Under every policy
/// a line is written (one completed `write(2)`, so in the kernel's page cache: a crash of the
/// daemon loses nothing) before `record_as` returns, and a line that cannot be written is an
/// error, which refuses the request (fail closed). The policies differ in which lines also wait
/// for an fsync, i.e. what a crash of the whole host (power loss, kernel panic) may lose.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every waited-for line (`Wait::Answer` and `Wait::Commit`) performs its own `fdatasync`.
    Always,
    /// Group commit for every waited-for line (`Wait::Answer` and `Wait::Commit`): a record
    /// waits until an `fdatasync` that started after its append has completed; one waiting
    /// thread performs it for all others waiting. Every answer, reads included, waits for it.
    Group,
    /// Group commit for the lines of changes only (`Wait::Commit`: a change's intent line
    /// before it commits, a line naming a credential's lease before it is handed out). An
    /// answer's line (`Wait::Answer`: a value read, a listing, a transit result, a refusal) is
    /// written before the answer but not synced per line: the next group commit or the
    /// background flusher (`FLUSH_INTERVAL`) makes it durable, so a host crash can lose at
    /// most the answer lines of the last interval. The default (SECURITY.md, "Audit log").
    #[default]
    Changes,
    /// Never sync (the kernel writes back when it likes); for tests and tmpfs.
    Never,
}

impl FsyncPolicy {
    /// The name used in `mounts.toml`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::Group => "group",
            Self::Changes => "changes",
            Self::Never => "never",
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for FsyncPolicy {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "always" => Ok(Self::Always),
            "group" => Ok(Self::Group),
            "changes" => Ok(Self::Changes),
            "never" => Ok(Self::Never),
            other => Err(Error::invalid(format!(
                "audit fsync policy {other:?}: expected changes, group, always or never"
            ))),
        }
    }
}

/// What a line is for, which decides (with the policy) whether `record_as` waits for its
/// fsync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Written only, never waited for: the outcome of a change whose intent line is already
    /// durable, aggregated refusals.
    Written,
    /// The line of an answer that changes nothing: durable before returning under `always`
    /// and `group`; written before returning (and synced within `FLUSH_INTERVAL`) under
    /// `changes`.
    Answer,
    /// The intent line of a change or a credential mint, or a line naming a lease handed out:
    /// durable before returning under every policy but `never`.
    Commit,
}

/// How long a written line may wait for its fsync at most (policies other than `never`): a
/// background thread fdatasyncs the file when lines were appended since the last sync.
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// One request to log. `values` are (field name, bytes) pairs: the bytes are only ever passed
/// to the HMAC function; the line carries `"values":{name: "hmac-sha256:..."}`.
#[derive(Debug, Clone, Copy)]
pub struct AuditRecord<'a> {
    pub caller: &'a Caller,
    /// "read", "write", "list", "delete", "stat", ...
    pub op: &'a str,
    pub path: &'a str,
    pub ok: bool,
    /// The errno name on failure ("EACCES").
    pub errno: Option<&'a str>,
    pub lease_id: Option<&'a str>,
    /// Why it failed; must not contain secrets.
    pub reason: Option<&'a str>,
    pub values: &'a [(&'a str, &'a [u8])],
}

/// A hash-chained, append-only audit file. Share it (`Arc`) between threads.
pub struct AuditLog {
    path: PathBuf,
    policy: FsyncPolicy,
    /// How often the flusher thread syncs lines nobody waited for.
    flush_interval: std::time::Duration,
    inner: Mutex<Inner>,
    /// The last record failed (and none has succeeded since): every request is refused, also
    /// those that would not be recorded otherwise.
    failing: AtomicBool,
}

impl fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuditLog")
            .field("path", &self.path)
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

/// The chain state and the open file; guarded by `AuditLog::inner`.
struct Inner {
    sink: Arc<Sink>,
    /// seq of the last line written (0: none yet).
    seq: u64,
    /// SHA-256 of the last line written (zeros: none yet).
    prev: [u8; 32],
    /// File length after the last complete line (to cut off a short write).
    len: u64,
    /// Set when a short write could not be cut off: the file ends mid-line.
    broken: Option<String>,
}

/// One open audit file and its group-commit state. Writers keep an `Arc` to the file their
/// line went to, so a `reopen` never makes them sync the wrong file.
struct Sink {
    file: File,
    /// (st_dev, st_ino) of the file, to notice the path being deleted or replaced.
    ident: (u64, u64),
    /// Lines appended to this file so far (a line's ticket is the count after its append).
    appended: AtomicU64,
    /// An fsync failed: nothing more is written to this file.
    dead: AtomicBool,
    /// fdatasyncs performed on this file (tests and diagnostics).
    syncs: AtomicU64,
    sync: Mutex<SyncState>,
    synced_cv: Condvar,
}

#[derive(Default)]
struct SyncState {
    /// Every ticket up to this one is durable.
    synced: u64,
    /// A thread is in `fdatasync` now.
    running: bool,
    /// The first fsync failure; every ticket not yet durable fails with it.
    failed: Option<String>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // No code panics while holding these locks; if one ever did, the state is still consistent
    // (it is updated only after each write succeeds), so carry on.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn io_err(path: &Path, what: &str, e: impl fmt::Display) -> Error {
    Error::io(format!("audit log {}: {what}: {e}", path.display()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

fn sha256(line: &[u8]) -> [u8; 32] {
    Sha256::digest(line).into()
}

/// `hmac-sha256:` followed by exactly 64 hex digits.
fn is_hmac(s: &str) -> bool {
    s.strip_prefix(HMAC_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365]
    let mp = (5 * doy + 2) / 153; // [0, 11]
    let d = doy - (153 * mp + 2) / 5 + 1; // [1, 31]
    let m = if mp < 10 { mp + 3 } else { mp - 9 }; // [1, 12]
    let y = yoe + era * 400 + i64::from(m <= 2);
    // d and m are in small ranges; the casts cannot truncate.
    (y, m as u32, d as u32)
}

/// RFC 3339, UTC, milliseconds: `2024-05-01T12:34:56.789Z`.
pub(crate) fn rfc3339_ms(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX / 2);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, mo, da) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{da:02}T{:02}:{:02}:{:02}.{:03}Z",
        sod / 3600,
        sod % 3600 / 60,
        sod % 60,
        d.subsec_millis()
    )
}

/// The part of a line after `seq`, `prev` and `time`, serialized outside the lock.
#[derive(Serialize)]
struct Body<'a> {
    uid: u32,
    gid: u32,
    pid: u32,
    exe: Option<&'a str>,
    cgroup: Option<&'a str>,
    operation: &'a str,
    path: &'a str,
    result: &'a str,
    errno: Option<&'a str>,
    lease_id: Option<&'a str>,
    reason: Option<&'a str>,
    values: Values<'a>,
    /// Aggregated lines only: how many refusals this line stands for.
    #[serde(skip_serializing_if = "Option::is_none")]
    count: Option<u64>,
}

/// What a line says beyond its record: whether it announces a change about to be made, and
/// (aggregated refusals) how many requests it stands for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Annotation {
    /// Written before a state change commits: `"result":"intent"`. The change is made only if
    /// this line was written; the outcome follows in a line of its own.
    pub intent: bool,
    /// An aggregate of repeated refusals: `"count":N`.
    pub count: Option<u64>,
}

/// (name, "hmac-sha256:...") pairs, written as a JSON object in the given order.
struct Values<'a>(Vec<(&'a str, String)>);

impl Serialize for Values<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

/// Serialize a record's body (`{"uid":...}`), HMACing its values.
fn body_of(
    rec: &AuditRecord<'_>,
    ann: Annotation,
    hmac: &dyn Fn(&[u8]) -> String,
) -> Result<Vec<u8>> {
    let mut values = Vec::with_capacity(rec.values.len());
    for (i, (name, bytes)) in rec.values.iter().enumerate() {
        if rec.values[..i].iter().any(|(n, _)| n == name) {
            return Err(Error::io(format!(
                "audit record for {}: value field {name:?} given twice",
                rec.path
            )));
        }
        let mac = hmac(bytes);
        if !is_hmac(&mac) {
            // Never write what we were given: it might be the value itself.
            return Err(Error::io(format!(
                "audit record for {}: the HMAC function returned something other than \
                 hmac-sha256:HEX for {name:?}; refusing to write it",
                rec.path
            )));
        }
        values.push((*name, mac));
    }
    let body = Body {
        uid: rec.caller.uid,
        gid: rec.caller.gid,
        pid: rec.caller.pid,
        exe: rec.caller.exe.as_deref(),
        cgroup: rec.caller.cgroup.as_deref(),
        operation: rec.op,
        path: rec.path,
        result: match (ann.intent, rec.ok) {
            (true, _) => "intent",
            (false, true) => "ok",
            (false, false) => "error",
        },
        errno: rec.errno,
        lease_id: rec.lease_id,
        reason: rec.reason,
        values: Values(values),
        count: ann.count,
    };
    serde_json::to_vec(&body).map_err(|e| Error::io(format!("audit record: encoding: {e}")))
}

/// Build a full line (with newline) from a body `{"uid":...}`.
fn line_of(seq: u64, prev: &[u8; 32], body: &[u8]) -> Vec<u8> {
    let head = format!(
        "{{\"seq\":{seq},\"prev\":\"{}\",\"time\":\"{}\",",
        hex(prev),
        rfc3339_ms(SystemTime::now())
    );
    let rest = body.strip_prefix(b"{").unwrap_or(body);
    let mut line = Vec::with_capacity(head.len() + rest.len() + 1);
    line.extend_from_slice(head.as_bytes());
    line.extend_from_slice(rest);
    line.push(b'\n');
    line
}

/// The `seq` of a line, if it is a JSON object with an unsigned `seq`.
fn seq_of(line: &[u8]) -> Option<u64> {
    let v: serde_json::Value = serde_json::from_slice(line).ok()?;
    v.get("seq")?.as_u64()
}

/// Read the last line of a non-empty file (without its newline). Errors if the file does not
/// end with a newline (a torn write or tampering: continuing would glue a line onto it).
fn last_line(file: &mut File, len: u64, path: &Path) -> Result<Vec<u8>> {
    let mut last = [0u8; 1];
    file.seek(SeekFrom::Start(len - 1))
        .and_then(|_| file.read_exact(&mut last))
        .map_err(|e| io_err(path, "reading its tail", e))?;
    if last[0] != b'\n' {
        return Err(io_err(
            path,
            "cannot continue the chain",
            "the file ends with an incomplete line (a crash mid-write, or tampering); \
             move it aside and run `nomadfs audit verify` on it",
        ));
    }
    let end = len - 1; // the final newline
    let mut start = end;
    let mut tail: Vec<u8> = Vec::new(); // bytes [start, end)
    while start > 0 {
        if end - start > MAX_TAIL {
            return Err(io_err(
                path,
                "cannot continue the chain",
                "last line too long",
            ));
        }
        let step = start.min(8192);
        let mut chunk = vec![0u8; usize::try_from(step).unwrap_or(8192)];
        file.seek(SeekFrom::Start(start - step))
            .and_then(|_| file.read_exact(&mut chunk))
            .map_err(|e| io_err(path, "reading its tail", e))?;
        start -= step;
        chunk.extend_from_slice(&tail);
        tail = chunk;
        if let Some(nl) = tail[..usize::try_from(step).unwrap_or(0)]
            .iter()
            .rposition(|&b| b == b'\n')
        {
            return Ok(tail[nl + 1..].to_vec());
        }
    }
    Ok(tail)
}

/// What `open_sink` found in the file.
struct Opened {
    sink: Sink,
    seq: u64,
    prev: [u8; 32],
    len: u64,
}

fn open_sink(path: &Path, policy: FsyncPolicy) -> Result<Opened> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| io_err(path, "creating its directory", e))?;
        }
    }
    let mut opts = OpenOptions::new();
    opts.read(true).append(true).mode(0o600);
    let (mut file, created) = match opts.clone().create_new(true).open(path) {
        Ok(f) => (f, true),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => (
            opts.open(path).map_err(|e| io_err(path, "opening", e))?,
            false,
        ),
        Err(e) => return Err(io_err(path, "creating", e)),
    };
    let meta = file.metadata().map_err(|e| io_err(path, "stat", e))?;
    let ident = (meta.dev(), meta.ino());
    if created && policy != FsyncPolicy::Never {
        // Make the new directory entry durable too.
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(|e| io_err(path, "syncing its directory", e))?;
        }
    }
    let len = if meta.is_file() { meta.len() } else { 0 };
    let (seq, prev) = if len == 0 {
        (0, [0u8; 32])
    } else {
        let last = last_line(&mut file, len, path)?;
        let seq = seq_of(&last).ok_or_else(|| {
            io_err(
                path,
                "cannot continue the chain",
                "its last line is not an audit line with a seq",
            )
        })?;
        (seq, sha256(&last))
    };
    Ok(Opened {
        sink: Sink {
            file,
            ident,
            appended: AtomicU64::new(0),
            dead: AtomicBool::new(false),
            syncs: AtomicU64::new(0),
            sync: Mutex::new(SyncState::default()),
            synced_cv: Condvar::new(),
        },
        seq,
        prev,
        len,
    })
}

impl Sink {
    fn sync_data(&self) -> io::Result<()> {
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.file.sync_data()
    }

    /// Whether lines were appended that no completed fsync covers yet.
    fn behind(&self) -> Option<u64> {
        let target = self.appended.load(Ordering::SeqCst);
        (lock(&self.sync).synced < target).then_some(target)
    }

    /// Group commit: return once an fdatasync that started after ticket `t` was appended has
    /// completed (or report the failure of the one that covered it).
    fn wait_durable(&self, t: u64, path: &Path) -> Result<()> {
        let mut st = lock(&self.sync);
        loop {
            if st.synced >= t {
                return Ok(());
            }
            if let Some(e) = &st.failed {
                return Err(io_err(path, "fsync", e));
            }
            if !st.running {
                st.running = true;
                // Every line counted here finished its write(2) before this fsync starts.
                let target = self.appended.load(Ordering::SeqCst);
                drop(st);
                let r = self.sync_data();
                st = lock(&self.sync);
                st.running = false;
                match r {
                    Ok(()) => st.synced = st.synced.max(target),
                    Err(e) => {
                        self.dead.store(true, Ordering::SeqCst);
                        st.failed.get_or_insert_with(|| e.to_string());
                    }
                }
                self.synced_cv.notify_all();
                continue;
            }
            st = self.synced_cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
    }
}

impl AuditLog {
    /// Open (creating `0600`, parent directories `0700`) the audit file at `path` for
    /// appending, continuing the chain from its last line if it has one.
    pub fn open(path: &Path, fsync: FsyncPolicy) -> Result<AuditLog> {
        Self::open_with(path, fsync, FLUSH_INTERVAL)
    }

    /// `open` with another flush interval (tests).
    pub(crate) fn open_with(
        path: &Path,
        fsync: FsyncPolicy,
        flush_interval: std::time::Duration,
    ) -> Result<AuditLog> {
        let o = open_sink(path, fsync)?;
        let sink = Arc::new(o.sink);
        start_flusher(&sink, path, fsync, flush_interval)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            policy: fsync,
            flush_interval,
            inner: Mutex::new(Inner {
                sink,
                seq: o.seq,
                prev: o.prev,
                len: o.len,
                broken: None,
            }),
            failing: AtomicBool::new(false),
        })
    }

    /// True while the last record failed: callers must refuse every request.
    pub fn is_failing(&self) -> bool {
        self.failing.load(Ordering::SeqCst)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn policy(&self) -> FsyncPolicy {
        self.policy
    }

    /// The (seq, hex SHA-256) of the last line written: a checkpoint to keep elsewhere, which
    /// detects truncation of the tail.
    pub fn checkpoint(&self) -> (u64, String) {
        let inner = lock(&self.inner);
        (inner.seq, hex(&inner.prev))
    }

    /// Append one line for `rec` and make it durable (`Wait::Commit`: the strictest wait the
    /// policy has). Each of `rec.values` is passed to `hmac`, which must return
    /// `hmac-sha256:HEX`; only that is written. Returns an `Io` error if the line could not be
    /// written and made durable per the policy: the caller must then refuse the request.
    pub fn record(&self, rec: &AuditRecord<'_>, hmac: &dyn Fn(&[u8]) -> String) -> Result<()> {
        self.record_as(rec, Annotation::default(), Wait::Commit, hmac)
    }

    /// `record` with an annotation, waiting as `wait` and the policy say. The line is always
    /// written (one write(2)) before this returns; whether it is also fsynced first is the
    /// policy's choice for this kind of line (`FsyncPolicy`). Lines not waited for are made
    /// durable by the next synced line or by the flusher within `FLUSH_INTERVAL`.
    pub fn record_as(
        &self,
        rec: &AuditRecord<'_>,
        ann: Annotation,
        wait: Wait,
        hmac: &dyn Fn(&[u8]) -> String,
    ) -> Result<()> {
        let r = (|| {
            let body = body_of(rec, ann, hmac)?;
            let (sink, ticket) = {
                let mut inner = lock(&self.inner);
                self.append(&mut inner, &body)?
            };
            self.make_durable(&sink, ticket, wait)
        })();
        self.failing.store(r.is_err(), Ordering::SeqCst);
        r
    }

    /// Reopen the path (SIGHUP after log rotation). A new or empty file starts a fresh chain
    /// whose first line (operation `audit-reopen`) names where the previous file ended; a
    /// non-empty one is continued from its last line.
    pub fn reopen(&self) -> Result<()> {
        let mut inner = lock(&self.inner);
        let o = open_sink(&self.path, self.policy)?;
        let sink = Arc::new(o.sink);
        start_flusher(&sink, &self.path, self.policy, self.flush_interval)?;
        // Lines written to the old file since its last sync: make them durable now (the old
        // file's flusher stops once its last writer lets go of it).
        if self.policy != FsyncPolicy::Never {
            if let Some(t) = inner.sink.behind() {
                let _ = inner.sink.wait_durable(t, &self.path);
            }
        }
        let (old_seq, old_hash) = (inner.seq, hex(&inner.prev));
        let fresh = o.len == 0;
        *inner = Inner {
            sink,
            seq: o.seq,
            prev: o.prev,
            len: o.len,
            broken: None,
        };
        if !fresh {
            self.failing.store(false, Ordering::SeqCst);
            return Ok(());
        }
        let reason =
            format!("log reopened; the previous file ended at seq {old_seq} (sha256 {old_hash})");
        let internal = Caller::internal();
        let rec = AuditRecord {
            caller: &internal,
            op: "audit-reopen",
            path: "",
            ok: true,
            errno: None,
            lease_id: None,
            reason: Some(&reason),
            values: &[],
        };
        let body = body_of(&rec, Annotation::default(), &|_| String::new())?;
        let (sink, ticket) = self.append(&mut inner, &body)?;
        drop(inner);
        self.make_durable(&sink, ticket, Wait::Commit)?;
        self.failing.store(false, Ordering::SeqCst);
        Ok(())
    }

    /// Write one line with a single write(2), under the lock. Returns the file it went to and
    /// its group-commit ticket.
    fn append(&self, inner: &mut Inner, body: &[u8]) -> Result<(Arc<Sink>, u64)> {
        let path = self.path.as_path();
        if let Some(why) = &inner.broken {
            return Err(io_err(path, "unusable until reopened", why));
        }
        if inner.sink.dead.load(Ordering::SeqCst) {
            return Err(io_err(path, "unusable until reopened", "an fsync failed"));
        }
        // Writing to a deleted or replaced file would log into the void.
        match std::fs::metadata(path) {
            Ok(m) if (m.dev(), m.ino()) == inner.sink.ident => {}
            Ok(_) => {
                return Err(io_err(
                    path,
                    "not written",
                    "the path now names another file (rotated or replaced); reopen it",
                ))
            }
            Err(e) => return Err(io_err(path, "not written (deleted?)", e)),
        }
        let seq = inner.seq + 1;
        let line = line_of(seq, &inner.prev, body);
        let written = loop {
            match (&inner.sink.file).write(&line) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                r => break r,
            }
        };
        match written {
            Ok(n) if n == line.len() => {}
            Ok(n) => {
                // A torn line: cut it off so the next line does not glue onto it.
                if n > 0 {
                    if let Err(e) = inner.sink.file.set_len(inner.len) {
                        inner.broken = Some(format!(
                            "a short write left a partial line that could not be removed: {e}"
                        ));
                    }
                }
                return Err(io_err(
                    path,
                    "short write",
                    format!("{n} of {} bytes (disk full?)", line.len()),
                ));
            }
            Err(e) => return Err(io_err(path, "write", e)),
        }
        inner.seq = seq;
        inner.prev = sha256(&line[..line.len() - 1]);
        inner.len += line.len() as u64;
        let ticket = inner.sink.appended.fetch_add(1, Ordering::SeqCst) + 1;
        Ok((Arc::clone(&inner.sink), ticket))
    }

    fn make_durable(&self, sink: &Sink, ticket: u64, wait: Wait) -> Result<()> {
        match (self.policy, wait) {
            (FsyncPolicy::Never, _) | (_, Wait::Written) => Ok(()),
            (FsyncPolicy::Changes, Wait::Answer) => Ok(()),
            (FsyncPolicy::Group | FsyncPolicy::Changes, _) => sink.wait_durable(ticket, &self.path),
            (FsyncPolicy::Always, _) => {
                // Every line counted here finished its write(2) before this fsync starts.
                let target = sink.appended.load(Ordering::SeqCst);
                match sink.sync_data() {
                    Ok(()) => {
                        let mut st = lock(&sink.sync);
                        st.synced = st.synced.max(target);
                        Ok(())
                    }
                    Err(e) => {
                        sink.dead.store(true, Ordering::SeqCst);
                        Err(io_err(&self.path, "fsync", e))
                    }
                }
            }
        }
    }

    /// fdatasyncs performed on the current file so far (tests and diagnostics).
    pub fn syncs(&self) -> u64 {
        lock(&self.inner).sink.syncs.load(Ordering::Relaxed)
    }

    /// Whether every line written to the current file is covered by a completed fsync.
    pub fn all_synced(&self) -> bool {
        lock(&self.inner).sink.behind().is_none()
    }
}

impl Drop for AuditLog {
    /// A clean shutdown leaves no line unsynced (best effort: there is nobody to tell).
    fn drop(&mut self) {
        if self.policy == FsyncPolicy::Never {
            return;
        }
        let inner = lock(&self.inner);
        if let Some(t) = inner.sink.behind() {
            let _ = inner.sink.wait_durable(t, &self.path);
        }
    }
}

/// Start the thread that fdatasyncs `sink` every `interval` when lines were written since its
/// last sync (lines nobody waited for: answers under `changes`, outcomes of changes). It holds
/// the sink weakly and ends once the file is no longer used (reopen, drop) or an fsync failed
/// (then the sink is dead: the next record fails and the request is refused).
fn start_flusher(
    sink: &Arc<Sink>,
    path: &Path,
    policy: FsyncPolicy,
    interval: std::time::Duration,
) -> Result<()> {
    if policy == FsyncPolicy::Never {
        return Ok(());
    }
    let weak = Arc::downgrade(sink);
    let file_path = path.to_path_buf();
    std::thread::Builder::new()
        .name("audit-flush".into())
        .spawn(move || loop {
            std::thread::sleep(interval);
            let Some(sink) = weak.upgrade() else {
                return;
            };
            if sink.dead.load(Ordering::SeqCst) {
                return;
            }
            if let Some(t) = sink.behind() {
                if let Err(e) = sink.wait_durable(t, &file_path) {
                    tracing::error!("audit log flush failed: {}", e.message);
                    return;
                }
            }
        })
        .map(|_| ())
        .map_err(|e| io_err(path, "starting its flusher thread", e))
}

/// A chain that checked out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyReport {
    /// Lines checked.
    pub lines: u64,
    /// seq of the last line (0 for an empty file).
    pub last_seq: u64,
    /// Hex SHA-256 of the last line (zeros for an empty file): compare with a checkpoint to
    /// detect truncation, which the chain alone cannot.
    pub last_hash: String,
}

/// Why a chain failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyFailure {
    /// The line is not a JSON object with `seq` and a 64-hex `prev` (or is incomplete).
    Malformed,
    /// Lines are missing just before this one.
    Deleted,
    /// The line (or, for a `prev` mismatch, the line before it) was changed, or lines were
    /// reordered.
    Edited,
    /// The file could not be read.
    Read,
}

impl fmt::Display for VerifyFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Malformed => "malformed line",
            Self::Deleted => "deleted line",
            Self::Edited => "edited line",
            Self::Read => "read error",
        })
    }
}

/// The first bad line and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerifyError {
    /// 1-based line number of the first bad line.
    pub line: u64,
    pub failure: VerifyFailure,
    pub detail: String,
}

impl fmt::Display for VerifyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}: {}", self.line, self.failure, self.detail)
    }
}

impl std::error::Error for VerifyError {}

/// Check a whole audit file: every line parses, `seq` increments by 1 from 1, and each `prev`
/// is the SHA-256 of the line before (zeros for the first). Cannot detect a truncated tail.
pub fn verify<R: BufRead>(mut r: R) -> Result<VerifyReport, VerifyError> {
    let mut n: u64 = 0;
    let mut last_seq: u64 = 0;
    let mut last_hash = [0u8; 32];
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let got = r.read_until(b'\n', &mut buf).map_err(|e| VerifyError {
            line: n + 1,
            failure: VerifyFailure::Read,
            detail: e.to_string(),
        })?;
        if got == 0 {
            break;
        }
        n += 1;
        let fail = |failure, detail: String| VerifyError {
            line: n,
            failure,
            detail,
        };
        let Some(line) = buf.strip_suffix(b"\n") else {
            return Err(fail(
                VerifyFailure::Malformed,
                "incomplete final line (no newline)".into(),
            ));
        };
        let v: serde_json::Value = serde_json::from_slice(line)
            .map_err(|e| fail(VerifyFailure::Malformed, format!("not JSON: {e}")))?;
        let seq = v
            .get("seq")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| fail(VerifyFailure::Malformed, "no unsigned \"seq\"".into()))?;
        let prev = v
            .get("prev")
            .and_then(serde_json::Value::as_str)
            .filter(|p| p.len() == 64 && p.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| fail(VerifyFailure::Malformed, "no 64-hex \"prev\"".into()))?;
        let want_seq = last_seq + 1;
        let want_prev = hex(&last_hash);
        let prev_ok = prev.eq_ignore_ascii_case(&want_prev);
        if seq == want_seq && !prev_ok {
            // The line before no longer hashes to what this one recorded.
            let (line, detail) = if n == 1 {
                (n, "the first line's prev is not zeros".to_string())
            } else {
                (
                    n - 1,
                    format!(
                        "its SHA-256 does not match the prev recorded by line {n} \
                         (or line {n}'s prev was changed)"
                    ),
                )
            };
            return Err(VerifyError {
                line,
                failure: VerifyFailure::Edited,
                detail,
            });
        }
        if seq > want_seq && !prev_ok {
            let missing = seq - want_seq;
            let detail = if n == 1 {
                format!("{missing} line(s) missing before the first line (it has seq {seq})")
            } else {
                format!(
                    "{missing} line(s) missing between line {} and this one \
                     (seq jumps from {last_seq} to {seq})",
                    n - 1
                )
            };
            return Err(fail(VerifyFailure::Deleted, detail));
        }
        if seq != want_seq {
            let detail = if prev_ok {
                format!("seq is {seq}, expected {want_seq} (its seq was changed)")
            } else {
                format!("seq is {seq}, expected {want_seq} (edited, duplicated or reordered)")
            };
            return Err(fail(VerifyFailure::Edited, detail));
        }
        last_seq = seq;
        last_hash = sha256(line);
    }
    Ok(VerifyReport {
        lines: n,
        last_seq,
        last_hash: hex(&last_hash),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use std::io::BufReader;

    const KEY: &[u8] = b"test audit key, 32 bytes long!!!";

    fn mac(bytes: &[u8]) -> String {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(KEY).expect("key");
        m.update(bytes);
        format!("{HMAC_PREFIX}{}", hex(&m.finalize().into_bytes()))
    }

    fn caller() -> Caller {
        let mut c = Caller::new(1000, 1000, 4242);
        c.exe = Some("/usr/bin/cat".into());
        c.cgroup = Some("/user.slice/x.scope".into());
        c
    }

    fn rec<'a>(c: &'a Caller, path: &'a str, values: &'a [(&'a str, &'a [u8])]) -> AuditRecord<'a> {
        AuditRecord {
            caller: c,
            op: "read",
            path,
            ok: true,
            errno: None,
            lease_id: None,
            reason: None,
            values,
        }
    }

    fn write_n(log: &AuditLog, n: usize) {
        let c = caller();
        for i in 0..n {
            let p = format!("secret/k{i}");
            log.record(&rec(&c, &p, &[("response", b"v")]), &mac)
                .expect("record");
        }
    }

    fn verify_file(p: &Path) -> Result<VerifyReport, VerifyError> {
        verify(BufReader::new(File::open(p).expect("open")))
    }

    fn lines(p: &Path) -> Vec<String> {
        std::fs::read_to_string(p)
            .expect("read")
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn write_lines(p: &Path, ls: &[String]) {
        let mut s = ls.join("\n");
        s.push('\n');
        std::fs::write(p, s).expect("write");
    }

    #[test]
    fn audit_time_format() {
        assert_eq!(rfc3339_ms(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + std::time::Duration::from_millis(1_709_210_096_789);
        assert_eq!(rfc3339_ms(t), "2024-02-29T12:34:56.789Z");
        let t = UNIX_EPOCH + std::time::Duration::from_secs(951_782_400); // 2000-02-29
        assert_eq!(rfc3339_ms(t), "2000-02-29T00:00:00.000Z");
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn audit_record_then_verify_ok() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("a/b/audit.log");
        let log = AuditLog::open(&p, FsyncPolicy::Group).expect("open");
        let c = caller();
        log.record(&rec(&c, "secret/db", &[("response", b"hunter2")]), &mac)
            .expect("record");
        log.record(
            &AuditRecord {
                caller: &c,
                op: "write",
                path: "secret/\"q\"\n",
                ok: false,
                errno: Some("EACCES"),
                lease_id: Some("creds/x/1234"),
                reason: Some("policy denies write"),
                values: &[("request", b"x"), ("response", b"y")],
            },
            &mac,
        )
        .expect("record");
        let r = verify_file(&p).expect("verify");
        assert_eq!(r.lines, 2);
        assert_eq!(r.last_seq, 2);
        assert_eq!(log.checkpoint(), (2, r.last_hash.clone()));
        let ls = lines(&p);
        assert_eq!(ls.len(), 2);
        let v: serde_json::Value = serde_json::from_str(&ls[0]).expect("json");
        assert_eq!(v["seq"], 1);
        assert_eq!(v["prev"], GENESIS);
        assert_eq!(v["uid"], 1000);
        assert_eq!(v["pid"], 4242);
        assert_eq!(v["exe"], "/usr/bin/cat");
        assert_eq!(v["cgroup"], "/user.slice/x.scope");
        assert_eq!(v["operation"], "read");
        assert_eq!(v["result"], "ok");
        assert!(v["errno"].is_null());
        assert_eq!(v["values"]["response"], mac(b"hunter2"));
        let t = v["time"].as_str().expect("time");
        assert_eq!(t.len(), 24);
        assert!(t.ends_with('Z'));
        let v: serde_json::Value = serde_json::from_str(&ls[1]).expect("json");
        assert_eq!(v["prev"], hex(&sha256(ls[0].as_bytes())));
        assert_eq!(v["path"], "secret/\"q\"\n");
        assert_eq!(v["result"], "error");
        assert_eq!(v["errno"], "EACCES");
        assert_eq!(v["lease_id"], "creds/x/1234");
        assert_eq!(v["reason"], "policy denies write");
        // Modes: file 0600, created directories 0700.
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").mode() & 0o777;
        assert_eq!(mode(&p), 0o600);
        assert_eq!(mode(&d.path().join("a/b")), 0o700);
        assert_eq!(mode(&d.path().join("a")), 0o700);
    }

    #[test]
    fn audit_verify_names_a_deleted_line() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        write_n(&AuditLog::open(&p, FsyncPolicy::Never).expect("open"), 6);
        let ls = lines(&p);
        for gone in 0..5 {
            let mut cut = ls.clone();
            cut.remove(gone);
            write_lines(&p, &cut);
            let e = verify_file(&p).expect_err("deleted");
            assert_eq!(e.failure, VerifyFailure::Deleted, "{e}");
            assert_eq!(e.line, gone as u64 + 1, "{e}");
        }
        // Two consecutive lines gone.
        let mut cut = ls.clone();
        cut.drain(2..4);
        write_lines(&p, &cut);
        let e = verify_file(&p).expect_err("deleted");
        assert_eq!((e.line, e.failure), (3, VerifyFailure::Deleted));
        assert!(e.to_string().contains("2 line(s) missing"), "{e}");
        // The tail can be cut undetectably (documented).
        write_lines(&p, &ls[..4]);
        assert_eq!(verify_file(&p).expect("truncated tail passes").lines, 4);
    }

    #[test]
    fn audit_verify_names_an_edited_line() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        write_n(&AuditLog::open(&p, FsyncPolicy::Never).expect("open"), 5);
        let ls = lines(&p);
        // One byte of the path in line 3.
        let mut ed = ls.clone();
        ed[2] = ed[2].replace("secret/k2", "secret/k9");
        assert_ne!(ed[2], ls[2]);
        write_lines(&p, &ed);
        let e = verify_file(&p).expect_err("edited");
        assert_eq!((e.line, e.failure), (3, VerifyFailure::Edited), "{e}");
        // One byte that breaks the JSON.
        let mut ed = ls.clone();
        ed[1].replace_range(0..1, "[");
        write_lines(&p, &ed);
        let e = verify_file(&p).expect_err("malformed");
        assert_eq!((e.line, e.failure), (2, VerifyFailure::Malformed), "{e}");
        // The seq of line 4.
        let mut ed = ls.clone();
        ed[3] = ed[3].replacen("\"seq\":4", "\"seq\":7", 1);
        write_lines(&p, &ed);
        let e = verify_file(&p).expect_err("seq");
        assert_eq!((e.line, e.failure), (4, VerifyFailure::Edited), "{e}");
        // Two lines swapped.
        let mut ed = ls.clone();
        ed.swap(1, 2);
        write_lines(&p, &ed);
        let e = verify_file(&p).expect_err("swapped");
        assert_eq!(e.line, 2, "{e}");
        // A torn final line.
        let mut s = ls.join("\n");
        s.push('\n');
        s.push_str("{\"seq\":6");
        std::fs::write(&p, s).expect("write");
        let e = verify_file(&p).expect_err("torn");
        assert_eq!((e.line, e.failure), (6, VerifyFailure::Malformed), "{e}");
        // Untouched passes; an empty file passes.
        write_lines(&p, &ls);
        assert_eq!(verify_file(&p).expect("ok").lines, 5);
        assert_eq!(verify(&b""[..]).expect("empty").lines, 0);
    }

    #[test]
    fn audit_concurrent_writers_keep_the_chain() {
        let d = tempfile::tempdir().expect("tmp");
        for policy in [FsyncPolicy::Group, FsyncPolicy::Always, FsyncPolicy::Never] {
            let p = d.path().join(format!("{policy:?}.log"));
            let log = Arc::new(AuditLog::open(&p, policy).expect("open"));
            let threads: Vec<_> = (0..8)
                .map(|t| {
                    let log = Arc::clone(&log);
                    std::thread::spawn(move || {
                        let c = Caller::new(t, t, t);
                        for i in 0..50 {
                            let p = format!("secret/t{t}/{i}");
                            let big = vec![b'x'; 100 * usize::try_from(i).unwrap_or(0)];
                            log.record(&rec(&c, &p, &[("response", &big)]), &mac)
                                .expect("record");
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().expect("join");
            }
            let r = verify_file(&p).expect("chain intact");
            assert_eq!((r.lines, r.last_seq), (400, 400), "{policy:?}");
        }
    }

    #[test]
    fn audit_reopen_continues_or_starts_the_chain() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        write_n(&AuditLog::open(&p, FsyncPolicy::Group).expect("open"), 3);
        // A restart continues the chain from the file's last line.
        let log = AuditLog::open(&p, FsyncPolicy::Group).expect("reopen");
        assert_eq!(log.checkpoint().0, 3);
        write_n(&log, 2);
        assert_eq!(verify_file(&p).expect("ok").lines, 5);
        // SIGHUP with the file still in place: continue.
        log.reopen().expect("reopen");
        write_n(&log, 1);
        assert_eq!(verify_file(&p).expect("ok").last_seq, 6);
        let end = log.checkpoint();
        // Rotated away: between rename and reopen, records fail (fail closed)...
        let rotated = d.path().join("audit.log.1");
        std::fs::rename(&p, &rotated).expect("rename");
        let e = log
            .record(&rec(&caller(), "secret/x", &[]), &mac)
            .expect_err("rotated");
        assert_eq!(e.kind, crate::ErrorKind::Io);
        // ...and after reopen a fresh chain starts with a note naming the old end.
        log.reopen().expect("reopen");
        write_n(&log, 2);
        let r = verify_file(&p).expect("new chain");
        assert_eq!(r.lines, 3);
        let first: serde_json::Value = serde_json::from_str(&lines(&p)[0]).expect("json");
        assert_eq!(first["seq"], 1);
        assert_eq!(first["prev"], GENESIS);
        assert_eq!(first["operation"], "audit-reopen");
        let note = first["reason"].as_str().expect("reason");
        assert!(
            note.contains(&format!("seq {}", end.0)) && note.contains(&end.1),
            "{note}"
        );
        assert_eq!(verify_file(&rotated).expect("old chain").last_hash, end.1);
    }

    #[test]
    fn audit_values_appear_only_as_hmacs() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, FsyncPolicy::Never).expect("open");
        let canary: &[u8] = b"CANARY-s3cr3t-Zq8xW2";
        let c = caller();
        log.record(
            &AuditRecord {
                caller: &c,
                op: "write",
                path: "secret/app",
                ok: true,
                errno: None,
                lease_id: None,
                reason: None,
                values: &[("request", canary), ("response", canary)],
            },
            &mac,
        )
        .expect("record");
        let bytes = std::fs::read(&p).expect("read");
        let b64 = base64::engine::general_purpose::STANDARD;
        let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forms = [
            canary.to_vec(),
            hex(canary).into_bytes(),
            hex(canary).to_uppercase().into_bytes(),
            b64.encode(canary).into_bytes(),
            b64u.encode(canary).into_bytes(),
            b"s3cr3t".to_vec(),
        ];
        for f in forms {
            assert!(
                !bytes.windows(f.len()).any(|w| w == f.as_slice()),
                "{} found in the audit file",
                String::from_utf8_lossy(&f)
            );
        }
        assert!(String::from_utf8_lossy(&bytes).contains(&mac(canary)));
        // An HMAC function that returns something else is refused, nothing written.
        let before = std::fs::read(&p).expect("read");
        for bad in [
            |b: &[u8]| String::from_utf8_lossy(b).into_owned(),
            |b: &[u8]| format!("{HMAC_PREFIX}{}", String::from_utf8_lossy(b)),
        ] {
            let e = log
                .record(&rec(&c, "secret/app", &[("response", canary)]), &bad)
                .expect_err("bad hmac");
            assert_eq!(e.kind, crate::ErrorKind::Io);
            assert!(!e.message.contains("CANARY"), "{e}");
        }
        let e = log
            .record(&rec(&c, "s", &[("a", b"1"), ("a", b"2")]), &mac)
            .expect_err("duplicate field");
        assert_eq!(e.kind, crate::ErrorKind::Io);
        assert_eq!(std::fs::read(&p).expect("read"), before);
    }

    #[test]
    fn audit_unwritable_file_is_an_io_error() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, FsyncPolicy::Group).expect("open");
        write_n(&log, 1);
        let c = caller();
        let r = rec(&c, "secret/x", &[]);
        // Deleted.
        std::fs::remove_file(&p).expect("rm");
        assert_eq!(
            log.record(&r, &mac).expect_err("deleted").kind,
            crate::ErrorKind::Io
        );
        // Replaced by a directory: records fail, and reopen fails too (as root, too).
        std::fs::create_dir(&p).expect("mkdir");
        assert_eq!(
            log.record(&r, &mac).expect_err("dir").kind,
            crate::ErrorKind::Io
        );
        assert_eq!(log.reopen().expect_err("dir").kind, crate::ErrorKind::Io);
        // A file whose writes fail (ENOSPC, whoever we are): /dev/full.
        let full = Path::new("/dev/full");
        if full.exists() {
            let log = AuditLog::open(full, FsyncPolicy::Never).expect("open /dev/full");
            let e = log.record(&r, &mac).expect_err("ENOSPC");
            assert_eq!(e.kind, crate::ErrorKind::Io);
            assert!(e.message.contains("write"), "{e}");
        }
        // A file that ends mid-line is not continued.
        let torn = d.path().join("torn.log");
        std::fs::write(&torn, b"{\"seq\":1").expect("write");
        assert_eq!(
            AuditLog::open(&torn, FsyncPolicy::Never)
                .expect_err("torn")
                .kind,
            crate::ErrorKind::Io
        );
    }

    #[test]
    fn audit_open_reads_a_long_tail() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, FsyncPolicy::Never).expect("open");
        let c = caller();
        let long = "p".repeat(20_000);
        for path in ["a", long.as_str(), "b", long.as_str()] {
            log.record(&rec(&c, path, &[]), &mac).expect("record");
        }
        let log = AuditLog::open(&p, FsyncPolicy::Never).expect("reopen");
        write_n(&log, 1);
        assert_eq!(verify_file(&p).expect("ok").lines, 5);
        // A one-line file, too.
        let q = d.path().join("one.log");
        write_n(&AuditLog::open(&q, FsyncPolicy::Never).expect("open"), 1);
        write_n(&AuditLog::open(&q, FsyncPolicy::Never).expect("open"), 1);
        assert_eq!(verify_file(&q).expect("ok").lines, 2);
    }

    fn record_wait(log: &AuditLog, n: usize, wait: Wait) -> Result<()> {
        let c = caller();
        for i in 0..n {
            let p = format!("secret/w{i}");
            log.record_as(
                &rec(&c, &p, &[("response", b"v")]),
                Annotation::default(),
                wait,
                &mac,
            )?;
        }
        Ok(())
    }

    #[test]
    fn audit_policy_names_round_trip() {
        for p in [
            FsyncPolicy::Always,
            FsyncPolicy::Group,
            FsyncPolicy::Changes,
            FsyncPolicy::Never,
        ] {
            assert_eq!(p.name().parse::<FsyncPolicy>().expect("parse"), p);
            assert_eq!(p.to_string(), p.name());
        }
        assert_eq!(FsyncPolicy::default(), FsyncPolicy::Changes);
        let e = "sometimes".parse::<FsyncPolicy>().expect_err("bad");
        assert!(e.message.contains("changes, group, always or never"), "{e}");
    }

    #[test]
    fn audit_policies_sync_what_they_promise() {
        // A flusher that never runs in the test's time: only the waits are counted.
        let hour = std::time::Duration::from_secs(3600);
        let d = tempfile::tempdir().expect("tmp");
        // (policy, fsyncs after 5 answers, fsyncs after 1 commit more)
        for (policy, answers, commit) in [
            (FsyncPolicy::Always, 5, 6),
            (FsyncPolicy::Group, 5, 6),
            (FsyncPolicy::Changes, 0, 1),
            (FsyncPolicy::Never, 0, 0),
        ] {
            let p = d.path().join(format!("{policy}.log"));
            let log = AuditLog::open_with(&p, policy, hour).expect("open");
            // Every line is written before record_as returns, whatever the policy.
            record_wait(&log, 5, Wait::Answer).expect("answers");
            assert_eq!(lines(&p).len(), 5, "{policy}");
            assert_eq!(log.syncs(), answers, "{policy}: fsyncs after 5 answers");
            assert_eq!(
                log.all_synced(),
                policy != FsyncPolicy::Changes && policy != FsyncPolicy::Never,
                "{policy}"
            );
            // Outcome lines are never waited for.
            record_wait(&log, 3, Wait::Written).expect("written");
            assert_eq!(
                log.syncs(),
                answers,
                "{policy}: fsyncs after written-only lines"
            );
            // A commit is durable before it returns, and covers every line written before it.
            record_wait(&log, 1, Wait::Commit).expect("commit");
            assert_eq!(log.syncs(), commit, "{policy}: fsyncs after a commit");
            assert_eq!(log.all_synced(), policy != FsyncPolicy::Never, "{policy}");
            assert_eq!(verify_file(&p).expect("chain").lines, 9);
        }
    }

    #[test]
    fn audit_flusher_syncs_unwaited_lines() {
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let tick = std::time::Duration::from_millis(20);
        let log = AuditLog::open_with(&p, FsyncPolicy::Changes, tick).expect("open");
        record_wait(&log, 4, Wait::Answer).expect("answers");
        // Not a timing assertion: the flusher must get there eventually (10 s is 500 ticks).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !log.all_synced() && std::time::Instant::now() < deadline {
            std::thread::sleep(tick);
        }
        assert!(
            log.all_synced(),
            "the flusher never synced the answer lines"
        );
        assert!(log.syncs() >= 1);
        // Nothing new written: the flusher does not sync again.
        let before = log.syncs();
        std::thread::sleep(tick * 10);
        assert_eq!(
            log.syncs(),
            before,
            "the flusher synced with nothing to sync"
        );
        // Never: no flusher at all.
        let q = d.path().join("never.log");
        let log = AuditLog::open_with(&q, FsyncPolicy::Never, tick).expect("open");
        record_wait(&log, 2, Wait::Commit).expect("lines");
        std::thread::sleep(tick * 10);
        assert_eq!(log.syncs(), 0);
    }

    #[test]
    fn audit_answers_fail_closed_under_every_policy() {
        let full = Path::new("/dev/full");
        if !full.exists() {
            return;
        }
        for policy in [
            FsyncPolicy::Always,
            FsyncPolicy::Group,
            FsyncPolicy::Changes,
            FsyncPolicy::Never,
        ] {
            // /dev/full: every write(2) fails with ENOSPC; an unsynced answer is refused too.
            let log = AuditLog::open(full, policy).expect("open /dev/full");
            for wait in [Wait::Written, Wait::Answer, Wait::Commit] {
                let e = record_wait(&log, 1, wait).expect_err("ENOSPC");
                assert_eq!(e.kind, crate::ErrorKind::Io, "{policy} {wait:?}");
                assert!(log.is_failing(), "{policy} {wait:?}");
            }
        }
        // A file whose fsync failed (the flusher's or a commit's) takes no more lines: the
        // next answer is refused and the log reports failing until reopened.
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, FsyncPolicy::Changes).expect("open");
        record_wait(&log, 1, Wait::Answer).expect("answer");
        lock(&log.inner).sink.dead.store(true, Ordering::SeqCst);
        let e = record_wait(&log, 1, Wait::Answer).expect_err("dead file");
        assert!(e.message.contains("fsync failed"), "{e}");
        assert!(log.is_failing());
        log.reopen().expect("reopen");
        assert!(!log.is_failing());
        record_wait(&log, 1, Wait::Answer).expect("answer after reopen");
        assert_eq!(verify_file(&p).expect("chain").lines, 2);
    }

    #[test]
    fn audit_drop_and_reopen_sync_pending_lines() {
        let hour = std::time::Duration::from_secs(3600);
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let log = AuditLog::open_with(&p, FsyncPolicy::Changes, hour).expect("open");
        record_wait(&log, 2, Wait::Answer).expect("answers");
        assert!(!log.all_synced());
        // Reopen with the file in place: the old file's pending lines are synced first.
        let old = Arc::clone(&lock(&log.inner).sink);
        log.reopen().expect("reopen");
        assert!(
            old.behind().is_none(),
            "pending lines of the old file not synced"
        );
        assert_eq!(old.syncs.load(Ordering::Relaxed), 1);
        drop(old);
        record_wait(&log, 1, Wait::Answer).expect("answer");
        let sink = Arc::clone(&lock(&log.inner).sink);
        assert!(sink.behind().is_some());
        drop(log);
        assert!(sink.behind().is_none(), "drop left lines unsynced");
    }
}
