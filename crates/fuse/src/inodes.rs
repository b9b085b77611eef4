//! The inode table: inode numbers ↔ paths, with the kernel's lookup counts.
//!
//! Inode numbers are never reused within a mount session; an entry goes away when the kernel
//! forgets it. Renames re-point an inode (and its descendants) to the new path.

use std::collections::HashMap;
use std::sync::RwLock;

pub const ROOT: u64 = 1;

struct Entry {
    path: String,
    lookups: u64,
}

struct Inner {
    by_ino: HashMap<u64, Entry>,
    by_path: HashMap<String, u64>,
    next: u64,
}

pub struct Inodes {
    inner: RwLock<Inner>,
}

impl Default for Inodes {
    fn default() -> Self {
        let mut by_ino = HashMap::new();
        by_ino.insert(
            ROOT,
            Entry {
                path: String::new(),
                lookups: 1,
            },
        );
        let mut by_path = HashMap::new();
        by_path.insert(String::new(), ROOT);
        Self {
            inner: RwLock::new(Inner {
                by_ino,
                by_path,
                next: ROOT + 1,
            }),
        }
    }
}

impl Inodes {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }
    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|p| p.into_inner())
    }

    pub fn path(&self, ino: u64) -> Option<String> {
        self.read().by_ino.get(&ino).map(|e| e.path.clone())
    }

    /// The inode for `path`, created if new; counts one kernel lookup.
    pub fn lookup(&self, path: &str) -> u64 {
        let mut g = self.write();
        if let Some(&ino) = g.by_path.get(path) {
            if let Some(e) = g.by_ino.get_mut(&ino) {
                e.lookups += 1;
            }
            return ino;
        }
        let ino = g.next;
        g.next += 1;
        g.by_ino.insert(
            ino,
            Entry {
                path: path.to_string(),
                lookups: 1,
            },
        );
        g.by_path.insert(path.to_string(), ino);
        ino
    }

    /// The inode of a known path, without counting a lookup (readdir).
    pub fn peek(&self, path: &str) -> Option<u64> {
        self.read().by_path.get(path).copied()
    }

    /// Every path the kernel knows, with its inode.
    pub fn known(&self) -> Vec<(String, u64)> {
        let g = self.read();
        g.by_path.iter().map(|(p, i)| (p.clone(), *i)).collect()
    }

    /// The inodes of `path` and of every known path under it.
    pub fn under(&self, path: &str) -> Vec<u64> {
        let prefix = format!("{path}/");
        let g = self.read();
        g.by_path
            .iter()
            .filter(|(p, _)| p.as_str() == path || p.starts_with(&prefix))
            .map(|(_, i)| *i)
            .collect()
    }

    pub fn forget(&self, ino: u64, n: u64) {
        if ino == ROOT {
            return;
        }
        let mut g = self.write();
        let gone = match g.by_ino.get_mut(&ino) {
            Some(e) => {
                e.lookups = e.lookups.saturating_sub(n);
                e.lookups == 0
            }
            None => false,
        };
        if gone {
            if let Some(e) = g.by_ino.remove(&ino) {
                if g.by_path.get(&e.path) == Some(&ino) {
                    g.by_path.remove(&e.path);
                }
            }
        }
    }

    /// After a successful rename: `from` (and everything under it) now lives at `to`.
    pub fn rename(&self, from: &str, to: &str) {
        let mut g = self.write();
        // Whatever was at `to` is replaced: unlink its path (the inode lives until forgotten).
        g.by_path.remove(to);
        let prefix = format!("{from}/");
        let moved: Vec<(String, u64)> = g
            .by_path
            .iter()
            .filter(|(p, _)| p.as_str() == from || p.starts_with(&prefix))
            .map(|(p, i)| (p.clone(), *i))
            .collect();
        for (old, ino) in moved {
            let new = format!("{to}{}", &old[from.len()..]);
            g.by_path.remove(&old);
            g.by_path.insert(new.clone(), ino);
            if let Some(e) = g.by_ino.get_mut(&ino) {
                e.path = new;
            }
        }
    }

    /// After unlink/rmdir: the path no longer names the inode.
    pub fn unlink(&self, path: &str) {
        let mut g = self.write();
        g.by_path.remove(path);
    }
}

/// Join a parent path and a child name.
pub fn join(parent: &str, name: &str) -> String {
    if parent.is_empty() {
        name.to_string()
    } else {
        format!("{parent}/{name}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_forget_rename() {
        let t = Inodes::default();
        let a = t.lookup("secret/a");
        assert_eq!(t.lookup("secret/a"), a);
        let d = t.lookup("secret/d");
        let c = t.lookup("secret/d/c");
        t.rename("secret/d", "secret/e");
        assert_eq!(t.path(d).as_deref(), Some("secret/e"));
        assert_eq!(t.path(c).as_deref(), Some("secret/e/c"));
        assert_eq!(t.peek("secret/d/c"), None);
        t.forget(a, 1);
        assert!(t.path(a).is_some());
        t.forget(a, 1);
        assert!(t.path(a).is_none());
        assert_eq!(t.path(ROOT).as_deref(), Some(""));
    }
}
