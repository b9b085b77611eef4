//! Open file handles: a snapshot per open for reads, a zeroized buffer for writes.

use nomadfs_core::SecretBytes;
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
    /// A write of this open failed (EFBIG): nothing of it will ever be stored.
    pub poisoned: bool,
}

impl WriteBuf {
    pub fn new(data: SecretBytes, pending_empty: bool) -> Self {
        Self {
            data,
            dirty: false,
            pending_empty,
            poisoned: false,
        }
    }

    /// Forget everything: nothing of this open will be stored.
    pub fn discard(&mut self) {
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

pub struct Handle {
    pub ino: u64,
    pub path: String,
    /// What reads see: the snapshot taken at open (None for write-only opens).
    pub snapshot: Option<SecretBytes>,
    /// Pending content, committed at flush/release (None for read-only opens).
    pub write: Option<WriteBuf>,
    /// A control file: every write(2) is one command, acted on at once (its error is the
    /// write's error, which shells report — they ignore errors from close).
    pub immediate: bool,
    /// The opener's process (thread group). A FLUSH from another process is a fork's copy of
    /// the fd being closed (e.g. at exec), not the writer's close: it must not commit a
    /// half-written buffer. The writer's own close (any of its threads) commits; release
    /// commits whatever is left.
    pub opener_tgid: u32,
    /// Who opened it (`opener.pid` is the opening thread): commits at release (where the kernel names no caller) act as them.
    pub opener: nomadfs_core::Caller,
    /// An exchange file (`transit/encrypt/NAME`): input and output live here, never in
    /// `snapshot`/`write`, so nothing of it is committed at flush or release.
    pub exchange: Option<crate::exchange::Exchange>,
}

pub type Shared = Arc<Mutex<Handle>>;

#[derive(Default)]
pub struct Handles {
    map: Mutex<HashMap<u64, Shared>>,
    next: AtomicU64,
}

impl Handles {
    pub fn insert(&self, h: Handle) -> u64 {
        let fh = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        self.lock().insert(fh, Arc::new(Mutex::new(h)));
        fh
    }
    pub fn get(&self, fh: u64) -> Option<Shared> {
        self.lock().get(&fh).cloned()
    }
    pub fn remove(&self, fh: u64) -> Option<Shared> {
        self.lock().remove(&fh)
    }
    /// Size of a file created but not yet committed (no stored entry exists yet).
    pub fn pending_size(&self, ino: u64) -> Option<u64> {
        self.lock().values().find_map(|h| {
            let h = h.lock().unwrap_or_else(|p| p.into_inner());
            if h.ino == ino {
                // Only a buffer that will still be stored stands in for the file.
                h.write
                    .as_ref()
                    .filter(|w| !w.poisoned && (w.dirty || w.pending_empty))
                    .map(|w| w.data.len() as u64)
            } else {
                None
            }
        })
    }
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Shared>> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
