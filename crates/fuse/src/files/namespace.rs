//! Operations on names: lookup, stat, setattr (chmod, chown, truncate, touch), mkdir, unlink,
//! rmdir, rename, access.

use super::handles::WriteBuf;
use super::{name_str, Files, Res};
use crate::inodes::join;
use nomadfs_core::engine::Op;
use nomadfs_core::{Caller, Error, ErrorKind, Node, SecretBytes};
use std::ffi::OsStr;

/// What a setattr asks.
#[derive(Debug, Default, Clone, Copy)]
pub struct SetAttr {
    pub mode: bool,
    pub owner: bool,
    pub size: Option<u64>,
    /// atime or mtime set.
    pub times: bool,
}

impl Files {
    /// The inode and node of `name` in folder `parent` (counts one kernel lookup).
    pub fn lookup(&self, c: &Caller, parent: u64, name: &OsStr) -> Res<(u64, Node)> {
        let p = self.path(parent)?;
        let path = join(&p, name_str(name)?);
        // A file created and still open (not stored until close) is found by its path too.
        let node = match self.inodes.peek(&path) {
            Some(ino) => self.stat_ino(ino, &path, c)?,
            None => self.engine.stat(c, &path)?,
        };
        Ok((self.inodes.lookup(&path), node))
    }

    pub fn forget(&self, ino: u64, n: u64) {
        self.inodes.forget(ino, n);
    }

    /// Stat `ino`; an open file (`fh`) always answers, even once its path is gone.
    pub fn getattr(&self, c: &Caller, ino: u64, fh: Option<u64>) -> Res<Node> {
        let res = self
            .path(ino)
            .and_then(|p| self.stat_ino(ino, &p, c))
            .or_else(|e| match e.kind {
                // fstat of an open file: answered from its handle.
                ErrorKind::NotFound => self.node_of_handle(ino, fh).ok_or(e),
                _ => Err(e),
            });
        Ok(res?)
    }

    pub fn setattr(&self, c: &Caller, ino: u64, a: SetAttr, fh: Option<u64>) -> Res<Node> {
        let path = self.path(ino)?;
        // Modes are decided by policy: chmod is accepted and ignored (so `cp -p`/`mv` work),
        // but audited; chown is refused.
        if a.owner {
            return Err(Error::not_permitted(format!(
                "{path}: owners are decided by policy, not chown"
            ))
            .into());
        }
        if a.mode {
            self.dispatch_maybe_held(ino, c, &path, Op::Chmod)?;
        }
        if let Some(size) = a.size {
            let limit = self.engine.limits().max_value_size as u64;
            if size > limit {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("{path}: size over the limit"),
                )
                .into());
            }
            match fh.and_then(|fh| self.handles.get(fh)) {
                Some(h) => {
                    let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
                    let (uid, bounds) = (h.opener.uid, h.bounds);
                    let mut charged = h.charged;
                    let Some(w) = h.write_buf() else {
                        return Err(Error::denied(format!("{path}: not open for writing")).into());
                    };
                    // Growing counts against the opener's buffered bytes (ENOSPC past the
                    // bound, and nothing changes).
                    let after = size.max(w.data.len() as u64);
                    self.handles
                        .charge(uid, bounds, &mut charged, after, &path)?;
                    w.truncate(size as usize);
                    let len = w.data.len() as u64;
                    let _ = self.handles.charge(uid, bounds, &mut charged, len, &path);
                    h.charged = charged;
                }
                None => {
                    // truncate(2) by path: never on generated content (it would mint a
                    // credential); to 0 without reading; else read, resize, commit at once.
                    let node = self.stat_ino(ino, &path, c)?;
                    if node.is_generated() {
                        return Err(Error::not_permitted(format!(
                            "{path}: generated content cannot be truncated"
                        ))
                        .into());
                    }
                    if size == 0 {
                        self.store(ino, c, &path, SecretBytes::default())?;
                        return Ok(self.stat_ino(ino, &path, c)?);
                    }
                    let current = match self.read_value(ino, &path, c) {
                        Ok(v) => v,
                        Err(e) if e.kind == ErrorKind::NotFound => SecretBytes::default(),
                        Err(e) => return Err(e.into()),
                    };
                    let mut w = WriteBuf::new(current, false);
                    w.truncate(size as usize);
                    self.store(ino, c, &path, w.data.duplicate())?;
                }
            }
        }
        if a.size.is_none() && a.times {
            // `touch`: renews a lease file; times are not stored anywhere else.
            self.engine.touch(c, &path)?;
        }
        Ok(self.stat_ino(ino, &path, c)?)
    }

    pub fn mkdir(&self, c: &Caller, parent: u64, name: &OsStr) -> Res<(u64, Node)> {
        let path = join(&self.path(parent)?, name_str(name)?);
        self.engine.mkdir(c, &path)?;
        let node = self.engine.stat(c, &path)?;
        Ok((self.inodes.lookup(&path), node))
    }

    pub fn unlink(&self, c: &Caller, parent: u64, name: &OsStr) -> Res<()> {
        let path = join(&self.path(parent)?, name_str(name)?);
        // Handles still open on the file store nothing from now on (POSIX: the open file
        // lives on without a name). A created file not yet stored exists only in them.
        match self.inodes.peek(&path) {
            Some(ino) => {
                self.dispatch_maybe_held(ino, c, &path, Op::Delete)?;
                self.handles.unlinked(ino);
            }
            None => self.engine.delete(c, &path)?,
        }
        self.inodes.unlink(&path);
        Ok(())
    }

    pub fn rmdir(&self, c: &Caller, parent: u64, name: &OsStr) -> Res<()> {
        let path = join(&self.path(parent)?, name_str(name)?);
        // Said only to a caller the policy lets remove it; anyone else hears the policy.
        if self.handles.pending_under(&path) && self.engine.check(c, &path, &Op::Rmdir).is_ok() {
            let e = Error::new(
                ErrorKind::NotEmpty,
                format!("{path}: holds a file still being created"),
            );
            self.engine.record_refusal(c, "rmdir", &path, &e);
            return Err(e.into());
        }
        self.engine.rmdir(c, &path)?;
        self.inodes.unlink(&path);
        Ok(())
    }

    /// `noreplace`: RENAME_NOREPLACE; `other_flags`: any other rename flag (refused).
    pub fn rename(
        &self,
        c: &Caller,
        (parent, name): (u64, &OsStr),
        (newparent, newname): (u64, &OsStr),
        noreplace: bool,
        other_flags: bool,
    ) -> Res<()> {
        let from = join(&self.path(parent)?, name_str(name)?);
        let to = join(&self.path(newparent)?, name_str(newname)?);
        if other_flags {
            return Err(Error::invalid("RENAME_EXCHANGE/WHITEOUT are not supported").into());
        }
        if noreplace && self.engine.stat(c, &to).is_ok() {
            return Err(Error::new(ErrorKind::AlreadyExists, format!("{to}: exists")).into());
        }
        // Said only to a caller the policy lets rename there; anyone else hears the policy.
        if self.handles.pending_under(&to) && self.engine.check(c, &from, &Op::Rename(&to)).is_ok()
        {
            let e = Error::new(
                ErrorKind::NotEmpty,
                format!("{to}: holds a file still being created"),
            );
            self.engine.record_refusal(c, "rename", &from, &e);
            return Err(e.into());
        }
        let (from_ino, to_ino) = (self.inodes.peek(&from), self.inodes.peek(&to));
        // A created file not yet stored: its open handles will store it under `to`.
        match from_ino {
            Some(i) => self.dispatch_maybe_held(i, c, &from, Op::Rename(&to))?,
            None => self.engine.rename(c, &from, &to)?,
        }
        // Whatever was at `to` is replaced: its open handles store nothing.
        if let Some(t) = to_ino.filter(|t| Some(*t) != from_ino) {
            self.handles.unlinked(t);
        }
        self.handles.renamed(&from, &to);
        self.inodes.rename(&from, &to);
        Ok(())
    }

    /// access(2): may the caller read / write / enter, by the mode bits its view gives?
    pub fn access(&self, c: &Caller, ino: u64, read: bool, write: bool, exec: bool) -> Res<bool> {
        let node = self.path(ino).and_then(|p| self.stat_ino(ino, &p, c))?;
        Ok(!(read && node.mode & 0o400 == 0
            || write && node.mode & 0o200 == 0
            || exec && node.mode & 0o100 == 0))
    }
}
