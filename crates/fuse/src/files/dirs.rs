//! Open folders: a listing snapshot taken at opendir, counted against the opener's open files.

use super::{Fail, Files, Res};
use crate::inodes::{join, ROOT};
use nomadfs_core::{Caller, NodeKind};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// A directory listing snapshot taken at opendir: (ino, kind, name).
pub type Listing = Vec<(u64, NodeKind, String)>;

#[derive(Default)]
pub(super) struct Dirs {
    /// Open folders: fh → (the opener's uid, the listing).
    open: Mutex<HashMap<u64, (u32, Listing)>>,
    next: AtomicU64,
}

impl Dirs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, (u32, Listing)>> {
        self.open.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Files {
    /// opendir(3): the listing (with `.` and `..`) as it is now. Answers the handle.
    pub fn opendir(&self, c: &Caller, ino: u64) -> Res<u64> {
        let res = self.path(ino).and_then(|path| {
            let entries = self.engine.list(c, &path)?;
            let parent_ino = if ino == ROOT {
                ROOT
            } else {
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                self.inodes.peek(parent).unwrap_or(ROOT)
            };
            let mut out = vec![
                (ino, NodeKind::Dir, ".".to_string()),
                (parent_ino, NodeKind::Dir, "..".to_string()),
            ];
            for e in entries {
                let child = join(&path, &e.name);
                let child_ino = self
                    .inodes
                    .peek(&child)
                    .unwrap_or_else(|| synthetic_ino(&child));
                out.push((child_ino, e.kind, e.name));
            }
            Ok(out)
        });
        // An open folder counts against the uid's open files too.
        let res = res.and_then(|entries| {
            self.handles
                .reserve_open(c.uid, self.bounds(c).open_files)
                .map(|()| entries)
        });
        match res {
            Ok(entries) => {
                let fh = self.dirs.next.fetch_add(1, Ordering::Relaxed) + 1;
                self.dirs.lock().insert(fh, (c.uid, entries));
                Ok(fh)
            }
            Err(e) => {
                self.audit_here(c, "opendir", &self.log_path(ino), &e);
                Err(e.into())
            }
        }
    }

    /// readdir(3) from entry `offset` on: `add(ino, kind, next offset, name)` until it says
    /// the reply is full.
    pub fn readdir(
        &self,
        fh: u64,
        offset: u64,
        mut add: impl FnMut(u64, NodeKind, u64, &str) -> bool,
    ) -> Res<()> {
        let dirs = self.dirs.lock();
        let (_, entries) = dirs.get(&fh).ok_or(Fail::BadHandle)?;
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if add(*ino, *kind, (i + 1) as u64, name) {
                break;
            }
        }
        Ok(())
    }

    pub fn releasedir(&self, fh: u64) {
        if let Some((uid, _)) = self.dirs.lock().remove(&fh) {
            self.handles.unreserve_open(uid);
        }
    }
}

/// A stable inode number for a `readdir` entry the kernel has not looked up (high bit set, so
/// it never collides with the table's counter).
fn synthetic_ino(path: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in path.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h | (1 << 63)
}
