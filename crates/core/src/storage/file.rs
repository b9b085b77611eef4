//! The embedded default: one redb database file in the storage directory.
//!
//! redb gives ACID transactions with checksummed two-phase commit, so an acknowledged write
//! survives `kill -9` and power loss (commit uses `Durability::Immediate`, i.e. fsync) and a
//! torn write is never visible. The directory is created with mode 0700 and the database file
//! with 0600. Must never: hold plaintext (the barrier above it encrypts keys and values).
//!
//! Group commit: every write (`apply`, `compare_and_swap`) joins a queue. The first writer to
//! find no commit under way leads: it takes what is queued (up to `MAX_BATCH` writes or
//! `MAX_BATCH_BYTES`), applies it in queue order in one redb write transaction and commits it
//! once (one fsync for the batch), then wakes each writer with its own result and hands the
//! lead to the next queued writer, if any. Writers that arrive during a commit wait for the
//! next batch, so batches grow with concurrency and a lone writer pays one commit as before.
//! A writer returns only once its batch is durable. Inside a batch each write sees the ones
//! before it (a compare-and-swap compares against the batch's earlier writes); a
//! compare-and-swap that does not match writes nothing and does not fail the batch. If the
//! batch fails (an insert or the commit fails) nothing of it is visible and every writer in it
//! gets the error.
//!
//! Size: over ~500 lines because the group commit (queue, leader hand-off, per-writer results)
//! belongs with the redb store it commits to; its tests are half the file.

use super::{child_of, past_subtree, storage_error, Child, Storage, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use redb::{Database, ReadableTable, TableDefinition};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// The database's page cache; kept small so the daemon's memory stays flat.
const CACHE_BYTES: usize = 8 * 1024 * 1024;
/// At most this many writes share one commit...
const MAX_BATCH: usize = 1024;
/// ...and at most about this many bytes of keys and values (a batch is held in memory).
const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

pub struct FileStorage {
    db: Database,
    path: PathBuf,
    queue: Mutex<Queue>,
    #[cfg(test)]
    test: TestHooks,
}

/// Tests: count commits, fail the next ones.
#[cfg(test)]
#[derive(Default)]
struct TestHooks {
    commits: std::sync::atomic::AtomicUsize,
    fail: std::sync::atomic::AtomicBool,
}

/// One queued write.
enum Request {
    Apply(Vec<WriteOp>),
    Cas {
        key: String,
        expected: Option<Vec<u8>>,
        new: Option<Vec<u8>>,
    },
    /// A batch applied only if `key` is `expected`.
    ApplyIf {
        key: String,
        expected: Option<Vec<u8>>,
        ops: Vec<WriteOp>,
    },
}

fn ops_bytes(ops: &[WriteOp]) -> usize {
    ops.iter()
        .map(|op| match op {
            WriteOp::Put(k, v) => k.len() + v.len(),
            WriteOp::Delete(k) => k.len(),
        })
        .sum()
}

impl Request {
    fn bytes(&self) -> usize {
        match self {
            Request::Apply(ops) => ops_bytes(ops),
            Request::ApplyIf { key, expected, ops } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + ops_bytes(ops)
            }
            Request::Cas { key, expected, new } => {
                key.len() + expected.as_ref().map_or(0, Vec::len) + new.as_ref().map_or(0, Vec::len)
            }
        }
    }
}

/// Where a waiting writer learns what became of its write.
#[derive(Default)]
struct Slot {
    state: Mutex<SlotState>,
    cv: Condvar,
}

#[derive(Default)]
enum SlotState {
    #[default]
    Waiting,
    /// The previous leader handed over: this writer commits the next batch.
    Lead,
    /// Its batch is over: `Ok(true)` written (or a CAS matched), `Ok(false)` a CAS did not.
    Done(Result<bool>),
}

impl Slot {
    fn set(&self, state: SlotState) {
        *lock(&self.state) = state;
        self.cv.notify_one();
    }
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<(Request, Arc<Slot>)>,
    /// A writer is leading (committing, or handed the lead and about to).
    leading: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The leader's batch: on drop (normally, or if the leader unwinds) every writer still
/// waiting in it is answered, and the lead passes to the next queued writer.
struct Batch<'a> {
    queue: &'a Mutex<Queue>,
    slots: Vec<Arc<Slot>>,
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        for slot in &self.slots {
            let mut st = lock(&slot.state);
            if !matches!(*st, SlotState::Done(_)) {
                *st = SlotState::Done(Err(Error::io(
                    "storage commit: the committing writer stopped before the batch finished",
                )));
                slot.cv.notify_one();
            }
        }
        let mut q = lock(self.queue);
        match q.pending.front() {
            Some((_, next)) => next.set(SlotState::Lead),
            None => q.leading = false,
        }
    }
}

impl FileStorage {
    /// Open (or create) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| storage_error(&format!("create {}", dir.display()), e))?;
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| storage_error(&format!("stat {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::invalid(format!(
                "storage path {} is not a directory",
                dir.display()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| storage_error(&format!("chmod {}", dir.display()), e))?;
        }
        let path = dir.join("nomadfs.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => Error::new(
                    ErrorKind::Busy,
                    format!("{} is in use by another process", path.display()),
                ),
                e => storage_error(&format!("open {}", path.display()), e),
            })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| storage_error("chmod database", e))?;
        // Create the table only on a new store: opening must not write (a refused passphrase
        // leaves the store byte-for-byte unchanged).
        let exists = {
            let tx = db.begin_read().map_err(|e| storage_error("read", e))?;
            match tx.open_table(TABLE) {
                Ok(_) => true,
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(storage_error("open table", e)),
            }
        };
        if !exists {
            let tx = db.begin_write().map_err(|e| storage_error("begin", e))?;
            tx.open_table(TABLE)
                .map_err(|e| storage_error("open table", e))?;
            tx.commit().map_err(|e| storage_error("commit", e))?;
        }
        Ok(Self {
            db,
            path,
            queue: Mutex::new(Queue::default()),
            #[cfg(test)]
            test: TestHooks::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Queue a write and return its result once its batch is durable (or failed).
    fn submit(&self, req: Request) -> Result<bool> {
        let slot = Arc::new(Slot::default());
        {
            let mut q = lock(&self.queue);
            q.pending.push_back((req, slot.clone()));
            if !q.leading {
                q.leading = true;
                drop(q);
                return self.lead(&slot);
            }
        }
        let mut st = lock(&slot.state);
        loop {
            match std::mem::take(&mut *st) {
                SlotState::Waiting => st = slot.cv.wait(st).unwrap_or_else(|p| p.into_inner()),
                SlotState::Lead => {
                    drop(st);
                    return self.lead(&slot);
                }
                SlotState::Done(r) => return r,
            }
        }
    }

    /// Commit the queue's head batch (which starts with `own`) and answer its writers.
    fn lead(&self, own: &Arc<Slot>) -> Result<bool> {
        let mut reqs = Vec::new();
        let mut batch = Batch {
            queue: &self.queue,
            slots: Vec::new(),
        };
        {
            let mut q = lock(&self.queue);
            let mut bytes = 0;
            while let Some((req, _)) = q.pending.front() {
                let n = req.bytes();
                if !reqs.is_empty() && (reqs.len() >= MAX_BATCH || bytes + n > MAX_BATCH_BYTES) {
                    break;
                }
                bytes += n;
                let Some((req, slot)) = q.pending.pop_front() else {
                    break;
                };
                reqs.push(req);
                batch.slots.push(slot);
            }
        }
        let results = self.commit(&reqs);
        let mut own_result = None;
        for (i, slot) in batch.slots.iter().enumerate() {
            let r = match &results {
                Ok(r) => Ok(r.get(i).copied().unwrap_or(false)),
                Err(e) => Err(e.clone()),
            };
            if Arc::ptr_eq(slot, own) {
                own_result = Some(r.clone());
            }
            slot.set(SlotState::Done(r));
        }
        batch.slots.clear();
        drop(batch);
        own_result.unwrap_or_else(|| Err(Error::io("storage commit: own write not in its batch")))
    }

    /// Apply `reqs` in order in one write transaction and commit it once.
    fn commit(&self, reqs: &[Request]) -> Result<Vec<bool>> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| storage_error("begin", e))?;
        let mut out = Vec::with_capacity(reqs.len());
        let mut dirty = false;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| storage_error("open", e))?;
            for req in reqs {
                match req {
                    Request::Apply(ops) => {
                        for op in ops {
                            write(&mut table, op_key(op), op_value(op))?;
                        }
                        dirty |= !ops.is_empty();
                        out.push(true);
                    }
                    Request::Cas { key, expected, new } => {
                        if current(&table, key)? != *expected {
                            out.push(false);
                            continue;
                        }
                        write(&mut table, key, new.as_deref())?;
                        dirty = true;
                        out.push(true);
                    }
                    Request::ApplyIf { key, expected, ops } => {
                        if current(&table, key)? != *expected {
                            out.push(false);
                            continue;
                        }
                        for op in ops {
                            write(&mut table, op_key(op), op_value(op))?;
                        }
                        dirty |= !ops.is_empty();
                        out.push(true);
                    }
                }
            }
        }
        #[cfg(test)]
        {
            use std::sync::atomic::Ordering;
            if self.test.fail.load(Ordering::SeqCst) {
                return Err(storage_error("commit", "injected failure"));
            }
            if dirty {
                self.test.commits.fetch_add(1, Ordering::SeqCst);
            }
        }
        if dirty {
            tx.commit().map_err(|e| storage_error("commit", e))?;
        } else {
            tx.abort().map_err(|e| storage_error("abort", e))?;
        }
        Ok(out)
    }
}

/// The value of `key` inside a write transaction (for the compare of a CAS).
fn current(table: &redb::Table<'_, &str, &[u8]>, key: &str) -> Result<Option<Vec<u8>>> {
    Ok(table
        .get(key)
        .map_err(|e| storage_error("get", e))?
        .map(|g| g.value().to_vec()))
}

fn op_key(op: &WriteOp) -> &str {
    match op {
        WriteOp::Put(k, _) | WriteOp::Delete(k) => k,
    }
}

fn op_value(op: &WriteOp) -> Option<&[u8]> {
    match op {
        WriteOp::Put(_, v) => Some(v),
        WriteOp::Delete(_) => None,
    }
}

/// Put (`Some`) or delete (`None`) one key in an open write table.
fn write(table: &mut redb::Table<'_, &str, &[u8]>, key: &str, value: Option<&[u8]>) -> Result<()> {
    match value {
        Some(v) => {
            table.insert(key, v).map_err(|e| storage_error("put", e))?;
        }
        None => {
            table.remove(key).map_err(|e| storage_error("delete", e))?;
        }
    }
    Ok(())
}

impl Storage for FileStorage {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let v = table.get(key).map_err(|e| storage_error("get", e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let mut out = Vec::new();
        for item in table
            .range(prefix..)
            .map_err(|e| storage_error("list", e))?
        {
            let (k, _) = item.map_err(|e| storage_error("list", e))?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_string());
        }
        Ok(out)
    }
    fn list_children(&self, prefix: &str) -> Result<Vec<String>> {
        // One read transaction (a consistent snapshot); a new range past each subtree.
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let mut out = Vec::new();
        let mut from = prefix.to_string();
        'seek: loop {
            let range = table
                .range(from.as_str()..)
                .map_err(|e| storage_error("list", e))?;
            for item in range {
                let (k, _) = item.map_err(|e| storage_error("list", e))?;
                let k = k.value();
                if !k.starts_with(prefix) {
                    break 'seek;
                }
                if let Child::Subtree(c) = child_of(prefix, k) {
                    out.push(c.to_string());
                    from = past_subtree(c);
                    continue 'seek;
                }
                out.push(k.to_string());
            }
            break;
        }
        Ok(out)
    }
    fn has_prefix(&self, prefix: &str) -> Result<bool> {
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let mut range = table
            .range(prefix..)
            .map_err(|e| storage_error("list", e))?;
        match range.next() {
            Some(item) => {
                let (k, _) = item.map_err(|e| storage_error("list", e))?;
                Ok(k.value().starts_with(prefix))
            }
            None => Ok(false),
        }
    }
    fn apply(&self, ops: &[WriteOp]) -> Result<()> {
        self.submit(Request::Apply(ops.to_vec())).map(|_| ())
    }
    fn apply_if(&self, key: &str, expected: Option<&[u8]>, ops: &[WriteOp]) -> Result<bool> {
        self.submit(Request::ApplyIf {
            key: key.to_string(),
            expected: expected.map(<[u8]>::to_vec),
            ops: ops.to_vec(),
        })
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        self.submit(Request::Cas {
            key: key.to_string(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::open(&dir.path().join("store")).expect("open");
        super::super::conformance::run(&s);
    }

    #[test]
    fn concurrent_writers() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::open(&dir.path().join("store")).expect("open");
        super::super::conformance::run_concurrent(&s);
    }

    fn commits(s: &FileStorage) -> usize {
        s.test.commits.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Hold the lead (as if a commit were under way), let `writers` queue up behind it, then
    /// hand the lead to the first of them; returns each writer's result.
    fn one_batch(s: &FileStorage, writers: usize) -> Vec<Result<()>> {
        lock(&s.queue).leading = true;
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..writers)
                .map(|t| {
                    scope.spawn(move || {
                        s.apply(&[
                            WriteOp::Put(format!("w/{t}"), vec![t as u8]),
                            WriteOp::Put(format!("w/{t}/twin"), vec![t as u8]),
                        ])
                    })
                })
                .collect();
            while lock(&s.queue).pending.len() < writers {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            {
                let q = lock(&s.queue);
                let (_, first) = q.pending.front().expect("queued");
                first.set(SlotState::Lead);
            }
            handles
                .into_iter()
                .map(|h| h.join().expect("writer thread"))
                .collect()
        })
    }

    #[test]
    fn writers_queued_during_a_commit_share_the_next_one() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::open(&dir.path().join("store")).expect("open");
        let before = commits(&s);
        let results = one_batch(&s, 8);
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        assert_eq!(commits(&s), before + 1, "eight writers, one commit");
        for t in 0..8u8 {
            assert_eq!(s.get(&format!("w/{t}")).expect("get"), Some(vec![t]));
            assert_eq!(s.get(&format!("w/{t}/twin")).expect("get"), Some(vec![t]));
        }
        // the lead was given back: a lone writer commits on its own
        s.put("after", b"1").expect("put after");
        assert_eq!(commits(&s), before + 2);
    }

    #[test]
    fn a_failed_batch_fails_every_writer_and_shows_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::open(&dir.path().join("store")).expect("open");
        s.put("kept", b"1").expect("put");
        s.test.fail.store(true, std::sync::atomic::Ordering::SeqCst);
        let results = one_batch(&s, 5);
        assert_eq!(results.len(), 5);
        for r in &results {
            let e = r.as_ref().expect_err("the batch failed");
            assert_eq!(e.kind, ErrorKind::Io);
            assert!(e.message.contains("injected failure"), "{}", e.message);
        }
        assert!(
            s.list("w/").expect("list").is_empty(),
            "nothing of the batch"
        );
        assert_eq!(s.get("kept").expect("get"), Some(b"1".to_vec()));
        s.test
            .fail
            .store(false, std::sync::atomic::Ordering::SeqCst);
        s.put("next", b"2").expect("the queue is not stuck");
        assert_eq!(s.get("next").expect("get"), Some(b"2".to_vec()));
    }

    #[test]
    fn a_cas_in_a_batch_sees_the_writes_before_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::open(&dir.path().join("store")).expect("open");
        let cas = |key: &str, expected: Option<&[u8]>, new: Option<&[u8]>| Request::Cas {
            key: key.into(),
            expected: expected.map(<[u8]>::to_vec),
            new: new.map(<[u8]>::to_vec),
        };
        let results = s
            .commit(&[
                Request::Apply(vec![WriteOp::Put("k".into(), b"a".to_vec())]),
                cas("k", Some(b"a"), Some(b"b")),
                cas("k", Some(b"a"), Some(b"c")),
                cas("n", None, Some(b"x")),
                Request::Apply(vec![WriteOp::Delete("k".into())]),
                cas("k", None, Some(b"z")),
                cas("n", Some(b"x"), None),
            ])
            .expect("commit");
        assert_eq!(results, vec![true, true, false, true, true, true, true]);
        assert_eq!(s.get("k").expect("get"), Some(b"z".to_vec()));
        assert_eq!(s.get("n").expect("get"), None);
        // a batch of CAS misses writes nothing and commits nothing
        let before = commits(&s);
        let results = s
            .commit(&[cas("k", Some(b"q"), None), cas("m", Some(b"q"), None)])
            .expect("commit");
        assert_eq!(results, vec![false, false]);
        assert_eq!(commits(&s), before);
    }

    #[test]
    fn survives_reopen_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("store");
        {
            let s = FileStorage::open(&p).expect("open");
            s.put("a", b"1").expect("put");
        }
        let s = FileStorage::open(&p).expect("reopen");
        assert_eq!(s.get("a").expect("get"), Some(b"1".to_vec()));
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("store");
        let _s = FileStorage::open(&p).expect("open");
        let e = FileStorage::open(&p).err().expect("second open must fail");
        assert_eq!(e.kind, ErrorKind::Busy);
    }
}
