//! Opt-in kernel caching of static values (`kernel_cache = true`): which opens may read
//! through the kernel's page cache, and when what the kernel holds may be stale.
//!
//! Owns: per inode, a generation (bumped on every change the adapter hears of: a value stored
//! here, an unlink, a change the engine reports — remount, unmount, seal, a policy change) and
//! a `dirty` mark (the kernel may hold pages of an older generation); per open file that reads
//! through the cache, the generation it was opened at. The notifications themselves are
//! `invalidate.rs`'s (every change sends `inval_inode(ino, 0, 0)`, which drops the pages).
//!
//! The rules, so that no open made after a change reads a page of the value before it:
//! - an open of an inode marked dirty is answered without `FOPEN_KEEP_CACHE` (the kernel then
//!   drops the inode's pages itself, before the open returns) and clears the mark: a change
//!   whose notification is still queued cannot leave an old page for it;
//! - an open file keeps its snapshot (as with direct I/O): when it reads after a change (its
//!   generation is old), the page it fills is stale — the inode is marked dirty and its pages
//!   dropped again after the reply, and while such an open file exists every new open of the
//!   inode uses direct I/O (it never reads the shared cache);
//! - while files reading through the cache are open on an inode, its size (stat, lookup) is
//!   their snapshot's (`Files::stat_ino`): the kernel keeps one size per inode and clamps
//!   cached reads to it, and the path may name another value by now;
//! - opens for writing always use direct I/O (a buffered write never enters the page cache:
//!   values are stored at close, and what the kernel would cache before then is not stored).
//!
//! Must never: decide access (the engine does, at every open), or grant the cache on a mount
//! where callers can see different views (`Files::cacheable` decides that).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// How an open file is served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Serve {
    /// Every read reaches the daemon; nothing enters the page cache (the default).
    Direct,
    /// Through the page cache; the kernel first drops what it holds of the inode.
    Refill,
    /// Through the page cache, keeping what the kernel holds (it is current).
    Keep,
}

#[derive(Debug, Default)]
struct Ino {
    /// Unique across inodes and time (from `KernelCache::clock`): an entry dropped and made
    /// again never repeats a generation an open may have taken before.
    generation: u64,
    /// The kernel may hold pages of an older generation.
    dirty: bool,
    /// Open files reading through the cache: fh → the generation at open.
    open: HashMap<u64, u64>,
}

impl Ino {
    fn stale_open(&self) -> bool {
        self.open.values().any(|g| *g != self.generation)
    }
}

#[derive(Default)]
pub struct KernelCache {
    on: bool,
    clock: AtomicU64,
    inos: Mutex<HashMap<u64, Ino>>,
    /// fh → ino of the open files in `Ino::open`.
    handles: Mutex<HashMap<u64, u64>>,
}

impl KernelCache {
    pub fn new(on: bool) -> Self {
        Self {
            on,
            ..Self::default()
        }
    }

    pub fn on(&self) -> bool {
        self.on
    }

    fn inos(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Ino>> {
        self.inos.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn handles(&self) -> std::sync::MutexGuard<'_, HashMap<u64, u64>> {
        self.handles.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The value of `ino` (or its attributes, or its name) changed: what the kernel holds of
    /// it is old from now on.
    pub fn changed(&self, ino: u64) {
        if !self.on {
            return;
        }
        let mut inos = self.inos();
        let i = inos.entry(ino).or_default();
        i.generation = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        i.dirty = true;
    }

    /// The generation of `ino` now: taken by an open before it reads its snapshot.
    pub fn generation(&self, ino: u64) -> u64 {
        self.inos().get(&ino).map_or(0, |i| i.generation)
    }

    /// A read-only open `fh` of `ino` that may use the cache, whose snapshot was read at
    /// generation `at` (or later): how to serve it.
    pub fn opened(&self, ino: u64, fh: u64, at: u64) -> Serve {
        if !self.on {
            return Serve::Direct;
        }
        let mut inos = self.inos();
        let i = inos.entry(ino).or_default();
        // A change since the snapshot was read (it may be old), or an open file that may
        // still fill the cache with an old value.
        if i.generation != at || i.stale_open() {
            return Serve::Direct;
        }
        let serve = if std::mem::take(&mut i.dirty) {
            Serve::Refill
        } else {
            Serve::Keep
        };
        i.open.insert(fh, i.generation);
        drop(inos);
        self.handles().insert(fh, ino);
        serve
    }

    /// A READ on `fh`: `Some(ino)` when it fills the cache with bytes of an older generation
    /// (the caller drops the inode's pages after replying).
    pub fn reading(&self, fh: u64) -> Option<u64> {
        if !self.on {
            return None;
        }
        let ino = *self.handles().get(&fh)?;
        let mut inos = self.inos();
        let i = inos.get_mut(&ino)?;
        let at = *i.open.get(&fh)?;
        if at == i.generation {
            return None;
        }
        i.dirty = true;
        Some(ino)
    }

    /// Does `fh` read through the page cache?
    pub fn is_cached(&self, fh: u64) -> bool {
        self.on && self.handles().contains_key(&fh)
    }

    /// The files reading through the page cache open on `ino`, newest generation first.
    pub fn open_on(&self, ino: u64) -> Vec<u64> {
        if !self.on {
            return Vec::new();
        }
        let inos = self.inos();
        let Some(i) = inos.get(&ino) else {
            return Vec::new();
        };
        let mut open: Vec<(u64, u64)> = i.open.iter().map(|(fh, g)| (*g, *fh)).collect();
        open.sort_unstable_by(|a, b| b.cmp(a));
        open.into_iter().map(|(_, fh)| fh).collect()
    }

    /// `fh` was released.
    pub fn released(&self, fh: u64) {
        if !self.on {
            return;
        }
        let Some(ino) = self.handles().remove(&fh) else {
            return;
        };
        let mut inos = self.inos();
        if let Some(i) = inos.get_mut(&ino) {
            if i.open.remove(&fh).is_some_and(|g| g != i.generation) {
                i.dirty = true;
            }
            if i.open.is_empty() && !i.dirty {
                inos.remove(&ino);
            }
        }
    }

    /// The kernel forgot `ino`: it holds nothing of it any more.
    pub fn forgotten(&self, ino: u64) {
        if !self.on {
            return;
        }
        let mut inos = self.inos();
        if inos.get(&ino).is_some_and(|i| i.open.is_empty()) {
            inos.remove(&ino);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn off_is_always_direct() {
        let k = KernelCache::new(false);
        k.changed(5);
        assert_eq!(k.opened(5, 1, k.generation(5)), Serve::Direct);
        assert_eq!(k.reading(1), None);
    }

    #[test]
    fn keep_until_a_change_then_refill_once() {
        let k = KernelCache::new(true);
        assert_eq!(k.opened(5, 1, k.generation(5)), Serve::Keep);
        k.released(1);
        assert_eq!(k.opened(5, 2, k.generation(5)), Serve::Keep);
        assert_eq!(k.reading(2), None, "same generation");
        k.released(2);
        k.changed(5);
        assert_eq!(
            k.opened(5, 3, k.generation(5)),
            Serve::Refill,
            "a change drops the pages first"
        );
        assert_eq!(k.opened(5, 4, k.generation(5)), Serve::Keep);
        k.released(3);
        k.released(4);
        // Another inode is not affected.
        k.changed(6);
        assert_eq!(k.opened(5, 7, k.generation(5)), Serve::Keep);
    }

    #[test]
    fn an_open_file_from_before_a_change_keeps_others_off_the_cache() {
        let k = KernelCache::new(true);
        assert_eq!(k.opened(5, 1, k.generation(5)), Serve::Keep);
        assert!(k.open_on(5) == vec![1] && k.open_on(6).is_empty());
        assert!(k.is_cached(1) && !k.is_cached(2));
        k.changed(5);
        // Its next READ fills a page of the old value: dropped after the reply, and marked.
        assert_eq!(k.reading(1), Some(5));
        // While it is open, new opens never read the shared cache.
        assert_eq!(k.opened(5, 2, k.generation(5)), Serve::Direct);
        assert_eq!(k.reading(2), None, "a direct open is not tracked");
        k.released(2);
        k.released(1);
        assert_eq!(k.opened(5, 3, k.generation(5)), Serve::Refill);
        assert_eq!(k.opened(5, 4, k.generation(5)), Serve::Keep);
        k.released(3);
        k.released(4);
        k.forgotten(5);
        assert!(k.inos().is_empty() && k.handles().is_empty());
    }

    #[test]
    fn a_stale_open_file_closed_without_reading_still_marks() {
        let k = KernelCache::new(true);
        assert_eq!(k.opened(5, 1, k.generation(5)), Serve::Keep);
        k.changed(5);
        assert_eq!(k.opened(5, 2, k.generation(5)), Serve::Direct);
        k.released(1);
        assert_eq!(k.opened(5, 3, k.generation(5)), Serve::Refill);
        k.released(3);
        // A snapshot read before a change is served direct.
        let at = k.generation(5);
        k.changed(5);
        assert_eq!(k.opened(5, 4, at), Serve::Direct);
        assert_eq!(k.opened(5, 5, k.generation(5)), Serve::Refill);
    }
}
