//! Open file handles: a snapshot per open for reads, a zeroized buffer for writes.
//!
//! Size: over ~500 lines because the handle table, its kinds and the per-uid accounting of open
//! files and buffered bytes are the state of one lock.

use nomadfs_core::{Error, ErrorKind, SecretBytes};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// A write buffer that never leaves copies of its bytes behind when it grows.
#[derive(Debug, Default)]
pub struct WriteBuf {
    pub data: SecretBytes,
    /// Written since the last commit: the next flush commits.
    pub dirty: bool,
    /// Created or truncated at open but not yet written: committed (empty) at release only,
    /// so the flush that a shell's `dup2`+`close` sends never stores an empty value early.
    pub pending_empty: bool,
    /// A write of this open failed (EFBIG, ENOSPC, a bad mount spec): nothing of it will ever
    /// be stored.
    pub poisoned: bool,
    /// Why (the errno later writes of this open answer too).
    pub refused: Option<ErrorKind>,
}

impl WriteBuf {
    pub fn new(data: SecretBytes, pending_empty: bool) -> Self {
        Self {
            data,
            dirty: false,
            pending_empty,
            poisoned: false,
            refused: None,
        }
    }

    /// Forget everything: nothing of this open will be stored (`why`: the refusal).
    pub fn discard(&mut self, why: ErrorKind) {
        self.refused = Some(why);
        self.data = SecretBytes::default();
        self.dirty = false;
        self.pending_empty = false;
        self.poisoned = true;
    }

    /// Write `bytes` at `offset`, growing into a fresh zeroizing allocation when needed.
    pub fn write_at(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        if end > self.data.capacity() {
            let cap = end.max(self.data.capacity() * 2).max(64);
            let mut grown = Vec::with_capacity(cap);
            grown.extend_from_slice(self.data.expose());
            // The old allocation is zeroized when `self.data` is replaced and dropped.
            self.data = SecretBytes::new(grown);
        }
        let v = self.data.expose_mut();
        if v.len() < end {
            v.resize(end, 0);
        }
        v[offset..end].copy_from_slice(bytes);
        self.dirty = true;
    }

    pub fn truncate(&mut self, size: usize) {
        let v = self.data.expose_mut();
        if size <= v.len() {
            // Zero the cut-off tail before shortening.
            v[size..].iter_mut().for_each(|b| *b = 0);
            v.truncate(size);
        } else {
            let cur = v.len();
            self.write_at(cur, &vec![0; size - cur]);
        }
        self.dirty = true;
    }
}

/// What an open file is.
#[derive(Debug)]
pub enum Kind {
    /// Open for reading only: reads see the snapshot taken at open.
    Read(SecretBytes),
    /// Open for writing: pending content, committed at flush/release; reads (of a read-write
    /// open) see it, so a process reads back what it wrote.
    Buffered(WriteBuf),
    /// A generated node (a control file) open for writing: every write(2) is one command,
    /// acted on at once (its error is the write's error, which shells report — they ignore
    /// errors from close). Its writes are commands, not content: reads see the snapshot (if
    /// opened for reading) and the buffer only carries the refusal state.
    Immediate {
        snapshot: Option<SecretBytes>,
        buf: WriteBuf,
    },
    /// An exchange file (`transit/encrypt/NAME`): input and output live here, so nothing of
    /// it is committed at flush or release.
    Exchange(crate::files::exchange::Exchange),
    /// Released: contents dropped (zeroized).
    Closed,
}

pub struct Handle {
    pub ino: u64,
    pub path: String,
    pub kind: Kind,
    /// The opener's process (thread group). A FLUSH from another process is a fork's copy of
    /// the fd being closed (e.g. at exec), not the writer's close: it must not commit a
    /// half-written buffer. The writer's own close (any of its threads) commits; release
    /// commits whatever is left.
    pub opener_tgid: u32,
    /// Who opened it (`opener.pid` is the opening thread): commits at release (where the kernel names no caller) act as them.
    pub opener: nomadfs_core::Caller,
    /// The file was unlinked (or replaced by a rename) while open: as on any POSIX
    /// filesystem the open file lives on without a name, so nothing of it is ever stored.
    pub orphaned: bool,
    /// When it was opened, on the `Handles` clock (set by `insert`): a created or truncated
    /// file whose value was stored by someone else since is not emptied at release.
    pub opened_seq: u64,
    /// The per-uid bounds that apply to the opener (fixed at open).
    pub bounds: Bounds,
    /// Bytes of this open's write buffer or exchange input counted against the opener's uid
    /// (`Handles::charge`).
    pub charged: u64,
}

/// The per-uid bounds that apply to one opener (`None`: unbounded, e.g. an admin).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bounds {
    pub open_files: Option<u64>,
    pub buffered_bytes: Option<u64>,
}

/// What one uid holds in open files.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    /// Open files and folders.
    open: u64,
    /// Bytes in write buffers and exchange inputs.
    bytes: u64,
}

impl Handle {
    /// What `read(2)` on this open file sees. An open for writing reads its own buffer (which
    /// starts as the snapshot, or empty after `O_TRUNC`), so a read-write open reads back what
    /// it wrote, before and after an `fsync`. A control file's writes are commands, not
    /// content: its reads see the snapshot.
    pub fn readable(&self) -> Option<&[u8]> {
        match &self.kind {
            Kind::Read(s) => Some(s.expose()),
            Kind::Buffered(w) => Some(w.data.expose()),
            Kind::Immediate {
                snapshot: Some(s), ..
            } => Some(s.expose()),
            Kind::Immediate { buf, .. } => Some(buf.data.expose()),
            Kind::Exchange(_) | Kind::Closed => None,
        }
    }

    /// The write buffer of an open for writing (buffered or immediate).
    pub fn write_buf(&mut self) -> Option<&mut WriteBuf> {
        match &mut self.kind {
            Kind::Buffered(w) | Kind::Immediate { buf: w, .. } => Some(w),
            _ => None,
        }
    }

    /// Is it open for writing (buffered or immediate)?
    pub fn is_writer(&self) -> bool {
        matches!(self.kind, Kind::Buffered(_) | Kind::Immediate { .. })
    }

    /// The buffer that will be stored at flush/release if written (or created/truncated):
    /// a buffered write's, unless discarded.
    fn storable(&self) -> Option<&WriteBuf> {
        match &self.kind {
            Kind::Buffered(w) | Kind::Immediate { buf: w, .. } if !w.poisoned => Some(w),
            _ => None,
        }
    }

    /// Is the thread `pid` part of the process that opened this file? (No read of
    /// /proc/<pid>/status: the request can come from a process in exit or exec.)
    pub fn same_process(&self, pid: u32) -> bool {
        pid == self.opener.pid
            || std::path::Path::new(&format!("/proc/{}/task/{pid}", self.opener_tgid)).exists()
    }

    /// The size of the content this open will commit, if it differs from what is stored
    /// (written, truncated or created since the last commit, and not discarded).
    fn pending_len(&self) -> Option<u64> {
        match &self.kind {
            Kind::Buffered(w) if !w.poisoned && (w.dirty || w.pending_empty) => {
                Some(w.data.len() as u64)
            }
            _ => None,
        }
    }
}

pub type Shared = Arc<Mutex<Handle>>;

/// A table entry: the handle, and what scans need to know of it without locking it (a handle's
/// lock can be held across a slow storage call at close; scans must not wait for that while
/// holding the table).
struct Slot {
    /// Fixed at open (a rename changes the path, never the inode).
    ino: u64,
    /// The opener's uid (its open-files count is decremented at remove).
    uid: u32,
    /// Opened for writing (fixed at open).
    writer: bool,
    handle: Shared,
}

/// Lock order: the table (`map`) is never held while a handle is locked by the same thread,
/// and scans copy the handles they need out of the table before locking them (`stored` is a
/// leaf lock).
#[derive(Default)]
pub struct Handles {
    map: Mutex<HashMap<u64, Slot>>,
    next: AtomicU64,
    /// A clock for opens and stores.
    clock: AtomicU64,
    /// ino → clock of the last value stored for it while it had open handles.
    stored: Mutex<HashMap<u64, u64>>,
    /// uid → what it holds (a leaf lock).
    usage: Mutex<HashMap<u32, Usage>>,
}

fn locked(h: &Shared) -> std::sync::MutexGuard<'_, Handle> {
    h.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handles {
    /// Add an open file: EMFILE past the opener's `open_files` bound, ENOSPC if the content
    /// its write buffer starts with takes the opener past `buffered_bytes`.
    pub fn insert(&self, mut h: Handle) -> Result<u64, Error> {
        let uid = h.opener.uid;
        self.reserve_open(uid, h.bounds.open_files)?;
        // What the open holds in memory from the start: its write buffer, or the snapshot a
        // read-only open reads from (both count against `buffered_bytes_per_uid`).
        let initial = match &h.kind {
            Kind::Buffered(w) | Kind::Immediate { buf: w, .. } => w.data.len() as u64,
            Kind::Read(s) => s.len() as u64,
            _ => 0,
        };
        let mut charged = 0;
        if let Err(e) = self.charge(uid, h.bounds, &mut charged, initial, &h.path) {
            self.unreserve_open(uid);
            return Err(e);
        }
        h.charged = charged;
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        h.opened_seq = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        let slot = Slot {
            ino: h.ino,
            uid,
            writer: h.is_writer(),
            handle: Arc::new(Mutex::new(h)),
        };
        self.lock().insert(fh, slot);
        Ok(fh)
    }

    /// Count one more open file or folder of `uid`: EMFILE (with the reason) past `limit`.
    pub fn reserve_open(&self, uid: u32, limit: Option<u64>) -> Result<(), Error> {
        let mut u = self.usage_lock();
        let e = u.entry(uid).or_default();
        if let Some(limit) = limit.filter(|l| e.open >= *l) {
            let held = e.open;
            if held == 0 && e.bytes == 0 {
                u.remove(&uid);
            }
            return Err(Error::new(
                ErrorKind::TooManyOpen,
                format!(
                    "uid {uid} has {held} files open here; the bound is {limit} \
                     ([limits] open_files_per_uid)"
                ),
            ));
        }
        e.open += 1;
        Ok(())
    }

    /// One open file or folder of `uid` was closed.
    pub fn unreserve_open(&self, uid: u32) {
        let mut u = self.usage_lock();
        if let Some(e) = u.get_mut(&uid) {
            e.open = e.open.saturating_sub(1);
            if e.open == 0 && e.bytes == 0 {
                u.remove(&uid);
            }
        }
    }

    /// Count `new` bytes (instead of `*charged`) of one open of `uid` against its
    /// `buffered_bytes` bound: growing past it is refused (ENOSPC, with the reason) and
    /// nothing changes; shrinking always succeeds.
    pub fn charge(
        &self,
        uid: u32,
        bounds: Bounds,
        charged: &mut u64,
        new: u64,
        path: &str,
    ) -> Result<(), Error> {
        let mut u = self.usage_lock();
        let e = u.entry(uid).or_default();
        let others = e.bytes.saturating_sub(*charged);
        let total = others.saturating_add(new);
        if let Some(limit) = bounds
            .buffered_bytes
            .filter(|l| new > *charged && total > *l)
        {
            if e.open == 0 && e.bytes == 0 {
                u.remove(&uid);
            }
            return Err(Error::new(
                ErrorKind::NoSpace,
                format!(
                    "{path}: uid {uid} would have {total} bytes buffered in open files; the \
                     bound is {limit} ([limits] buffered_bytes_per_uid)"
                ),
            ));
        }
        e.bytes = total;
        *charged = new;
        if e.open == 0 && e.bytes == 0 {
            u.remove(&uid);
        }
        Ok(())
    }

    fn usage_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Usage>> {
        self.usage.lock().unwrap_or_else(|p| p.into_inner())
    }
    pub fn get(&self, fh: u64) -> Option<Shared> {
        self.lock().get(&fh).map(|s| s.handle.clone())
    }
    /// Take a handle out of the table (at release).
    pub fn remove(&self, fh: u64) -> Option<Shared> {
        let mut map = self.lock();
        let slot = map.remove(&fh)?;
        if !map.values().any(|o| o.ino == slot.ino) {
            self.stored_lock().remove(&slot.ino);
        }
        drop(map);
        self.unreserve_open(slot.uid);
        Some(slot.handle)
    }

    /// The handles open on `ino` (copied out: lock them after the table is released).
    fn on_ino(&self, ino: u64) -> Vec<Shared> {
        self.lock()
            .values()
            .filter(|s| s.ino == ino)
            .map(|s| s.handle.clone())
            .collect()
    }

    fn all(&self) -> Vec<Shared> {
        self.lock().values().map(|s| s.handle.clone()).collect()
    }

    /// A value was stored for `ino` (by a commit or a truncate by path).
    pub fn stored_now(&self, ino: u64) {
        let t = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        self.stored_lock().insert(ino, t);
    }

    /// Was a value stored for `ino` after `since` (a handle's `opened_seq`)?
    pub fn stored_since(&self, ino: u64, since: u64) -> bool {
        self.stored_lock().get(&ino).is_some_and(|&t| t > since)
    }

    /// `ino` was unlinked or replaced: its open handles will store nothing.
    /// Call without holding any handle lock.
    pub fn unlinked(&self, ino: u64) {
        for h in self.on_ino(ino) {
            locked(&h).orphaned = true;
        }
    }

    /// After a rename: handles open under `from` (or inside it) now commit under `to`.
    /// Call without holding any handle lock.
    pub fn renamed(&self, from: &str, to: &str) {
        let prefix = format!("{from}/");
        for h in self.all() {
            let mut h = locked(&h);
            if h.path == from || h.path.starts_with(&prefix) {
                h.path = format!("{to}{}", h.path.get(from.len()..).unwrap_or_default());
            }
        }
    }

    /// Does an open handle hold a created, not yet stored file inside folder `dir`? (Then
    /// the folder is not empty, though the store has nothing in it yet.)
    pub fn pending_under(&self, dir: &str) -> bool {
        let prefix = format!("{dir}/");
        self.all().iter().any(|h| {
            let h = locked(h);
            !h.orphaned && h.path.starts_with(&prefix) && h.pending_len().is_some()
        })
    }

    /// Is `ino` open for writing? (Without locking any handle: an unlinked file's writers still
    /// count, which only means its attributes are not cached.)
    pub fn has_writer(&self, ino: u64) -> bool {
        self.lock().values().any(|s| s.ino == ino && s.writer)
    }

    /// The snapshot length of the read-only open `fh`.
    pub fn read_snapshot_len(&self, fh: u64) -> Option<u64> {
        match &locked(&self.get(fh)?).kind {
            Kind::Read(s) => Some(s.len() as u64),
            _ => None,
        }
    }

    /// Size of a file created but not yet committed (no stored entry exists yet).
    pub fn pending_size(&self, ino: u64) -> Option<u64> {
        self.on_ino(ino).iter().find_map(|h| {
            // Only a buffer that will still be stored stands in for the file.
            locked(h)
                .storable()
                .filter(|w| w.dirty || w.pending_empty)
                .map(|w| w.data.len() as u64)
        })
    }
    /// Does thread `pid` hold `ino` open with a buffer that will still be stored (it created or
    /// truncated the file and has not closed it)?
    pub fn pending_by_thread(&self, ino: u64, pid: u32) -> bool {
        self.on_ino(ino).iter().any(|h| {
            let h = locked(h);
            h.opener.pid == pid && h.pending_len().is_some()
        })
    }
    /// The size the process of thread `pid` sees for `ino`: the size of its own uncommitted
    /// write buffer, if it has one (its writes are not stored until close, but its own
    /// `fstat`/`lseek(SEEK_END)`/`O_APPEND` must see them, as on any filesystem).
    pub fn own_pending_size(&self, ino: u64, pid: u32) -> Option<u64> {
        self.on_ino(ino).iter().find_map(|h| {
            let h = locked(h);
            h.pending_len().filter(|_| h.same_process(pid))
        })
    }
    fn stored_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.stored.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Slot>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handle(uid: u32, bounds: Bounds, initial: usize) -> Handle {
        Handle {
            ino: 5,
            path: "secret/x".into(),
            kind: Kind::Buffered(WriteBuf::new(SecretBytes::new(vec![1; initial]), false)),
            opener_tgid: 0,
            opener: nomadfs_core::Caller::new(uid, uid, 0),
            orphaned: false,
            opened_seq: 0,
            bounds,
            charged: 0,
        }
    }

    #[test]
    fn open_files_and_bytes_per_uid() {
        let t = Handles::default();
        let b = Bounds {
            open_files: Some(2),
            buffered_bytes: Some(100),
        };
        let a = t.insert(handle(7, b, 60)).expect("first");
        let e = t.insert(handle(7, b, 50)).expect_err("bytes at open");
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert!(
            e.message.contains("buffered_bytes_per_uid"),
            "{}",
            e.message
        );
        let _b = t.insert(handle(7, b, 40)).expect("second");
        let e = t.insert(handle(7, b, 0)).expect_err("third");
        assert_eq!(e.kind, ErrorKind::TooManyOpen);
        assert!(e.message.contains("open_files_per_uid"), "{}", e.message);
        // Another uid, and an unbounded opener, are not affected.
        t.insert(handle(8, b, 0)).expect("other uid");
        t.insert(handle(9, Bounds::default(), 1000))
            .expect("unbounded");
        // Growing one open past the bound is refused and changes nothing; shrinking frees.
        let h = t.get(a).expect("a");
        let mut h = h.lock().expect("lock");
        let mut charged = h.charged;
        assert_eq!(charged, 60);
        let e = t.charge(7, b, &mut charged, 61, "p").expect_err("grow");
        assert_eq!(e.kind, ErrorKind::NoSpace);
        assert_eq!(charged, 60);
        t.charge(7, b, &mut charged, 0, "p").expect("shrink");
        h.charged = charged;
        drop(h);
        t.remove(a);
        t.insert(handle(7, b, 60)).expect("room again");
    }

    #[test]
    fn write_buffer_grows_and_truncates() {
        let mut w = WriteBuf::default();
        w.write_at(0, b"hello");
        w.write_at(5, b" world");
        assert_eq!(w.data.expose(), b"hello world");
        w.write_at(2, b"LL");
        assert_eq!(w.data.expose(), b"heLLo world");
        w.truncate(2);
        assert_eq!(w.data.expose(), b"he");
        w.truncate(4);
        assert_eq!(w.data.expose(), b"he\0\0");
        w.write_at(200, b"x");
        assert_eq!(w.data.len(), 201);
    }
}
