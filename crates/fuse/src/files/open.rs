//! Operations on open files: open, create, read, write, flush (a close), release (the last
//! close), and the commit rules between them.

use super::exchange;
use super::handles::{Handle, Kind, WriteBuf};
use super::{is_read, is_write, name_str, noted, Fail, Files, Opened, Res};
use crate::inodes::join;
use nomadfs_core::engine::Op;
use nomadfs_core::{Caller, Error, ErrorKind, SecretBytes, Writes};
use std::ffi::OsStr;

impl Files {
    fn new_handle(&self, c: &Caller, ino: u64, path: String, kind: Kind) -> Handle {
        Handle {
            ino,
            path,
            kind,
            opener_tgid: crate::caller::tgid(c.uid, c.pid),
            opener: c.clone(),
            orphaned: false,
            opened_seq: 0,
            bounds: self.bounds(c),
            charged: 0,
        }
    }

    /// open(2) of an existing node with `flags` (O_ACCMODE, O_TRUNC).
    pub fn open(&self, c: &Caller, ino: u64, flags: i32) -> Res<Opened> {
        let res = self.open_inner(c, ino, flags);
        if let Err(Fail::Refused(e)) = &res {
            let path = self.log_path(ino);
            self.audit_here(c, "open", &path, e);
        }
        res
    }

    fn open_inner(&self, c: &Caller, ino: u64, flags: i32) -> Res<Opened> {
        let path = self.path(ino)?;
        let node = self.stat_ino(ino, &path, c)?;
        if node.is_dir() {
            return Err(Error::new(ErrorKind::IsADirectory, format!("{path}: is a folder")).into());
        }
        // An exchange-or-buffered node is an exchange file only when opened read-write;
        // otherwise a buffered one.
        if node.writes.exchanges(is_read(flags), is_write(flags)) {
            // Read-after-write: nothing is read at open or committed at close.
            exchange::check_open(&path, &node, is_read(flags), is_write(flags))?;
            let h = self.new_handle(c, ino, path, Kind::Exchange(Default::default()));
            let fh = self.handles.insert(h)?;
            return Ok(Opened { fh, no_flush: true });
        }
        // The mode bits already say no; the reason is the policy's when it is the policy.
        if is_read(flags) && node.mode & 0o400 == 0 {
            let e = self
                .engine
                .check(c, &path, &Op::Read)
                .err()
                .unwrap_or_else(|| Error::denied(format!("{path} is write-only")));
            self.engine.record_refusal(c, "open", &path, &e);
            return Err(e.into());
        }
        if is_write(flags) && node.mode & 0o200 == 0 {
            // The engine's refusal is audited and recorded by the engine itself.
            self.engine.create(c, &path)?;
            let e = Error::denied(format!("{path} is read-only"));
            self.engine.record_refusal(c, "open", &path, &e);
            return Err(e.into());
        }
        if is_write(flags) {
            // Refusals (name, mount in use, ...) come at open, not at close.
            self.engine.create(c, &path)?;
        }
        let trunc = flags & libc::O_TRUNC != 0;
        let snapshot = if is_read(flags) {
            Some(self.read_value(ino, &path, c)?)
        } else {
            None
        };
        let kind = if is_write(flags) {
            // A node the caller cannot read (write-only config, update-only policy) is
            // replaced whole: never read it to patch it.
            let each_write = node.writes == Writes::EachWrite;
            let replace = trunc || each_write || node.mode & 0o400 == 0;
            let initial = match (&snapshot, replace) {
                (_, true) => SecretBytes::default(),
                (Some(s), false) => s.duplicate(),
                (None, false) => self.read_value(ino, &path, c)?,
            };
            let buf = WriteBuf::new(initial, replace && !each_write);
            if each_write {
                Kind::Immediate { snapshot, buf }
            } else {
                Kind::Buffered(buf)
            }
        } else {
            // Neither (O_ACCMODE 3): nothing can be read or written through it.
            snapshot.map_or(Kind::Closed, Kind::Read)
        };
        // A handle that cannot write has nothing to commit at close.
        let no_flush = !matches!(kind, Kind::Buffered(_) | Kind::Immediate { .. });
        let fh = self.handles.insert(self.new_handle(c, ino, path, kind))?;
        Ok(Opened { fh, no_flush })
    }

    /// The path of `ino` for a log line (never the inode number).
    pub fn log_path(&self, ino: u64) -> String {
        self.inodes
            .path(ino)
            .unwrap_or_else(|| "(a path no longer known)".to_string())
    }

    /// open(2) with O_CREAT of `name` in `parent`: the file exists (for its creator) from now
    /// and is stored at its first close, even empty. Answers (ino, handle).
    pub fn create(&self, c: &Caller, parent: u64, name: &OsStr, flags: i32) -> Res<(u64, u64)> {
        let res = (|| -> Result<(u64, u64), Error> {
            let path = join(&self.path(parent)?, name_str(name)?);
            if flags & libc::O_EXCL != 0 && self.engine.stat(c, &path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{path}: exists"),
                ));
            }
            let node = self.engine.create(c, &path)?;
            let ino = self.inodes.lookup(&path);
            // Closing a created file stores it, even empty (at release).
            let each_write = node.writes == Writes::EachWrite;
            let buf = WriteBuf::new(SecretBytes::default(), !each_write);
            let kind = if each_write {
                Kind::Immediate {
                    snapshot: None,
                    buf,
                }
            } else {
                Kind::Buffered(buf)
            };
            let fh = self.handles.insert(self.new_handle(c, ino, path, kind))?;
            Ok((ino, fh))
        })();
        res.map_err(|e| {
            let path = join(&self.log_path(parent), &name.to_string_lossy());
            self.audit_here(c, "create", &path, &e);
            Fail::At(path, e)
        })
    }

    /// read(2): `out` gets the bytes at `offset` (an exchange file runs its exchange at the
    /// first read at offset 0).
    pub fn read(
        &self,
        c: &Caller,
        fh: u64,
        offset: u64,
        size: u32,
        out: impl FnOnce(&[u8]),
    ) -> Res<()> {
        let h = self.handles.get(fh).ok_or(Fail::BadHandle)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        let hm = &mut *h;
        if let Kind::Exchange(x) = &mut hm.kind {
            let path = &hm.path;
            let run = |input| self.engine.exchange(c, path, input);
            return match x.read(path, offset, size, run) {
                Ok(data) => {
                    out(data);
                    Ok(())
                }
                Err(e) => Err(Fail::At(path.clone(), e)),
            };
        }
        let data = h.readable().ok_or(Fail::BadHandle)?;
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        out(&data[start..end]);
        Ok(())
    }

    /// write(2) of `data` at `offset` (`flags`: the open's, for O_APPEND). Answers the bytes
    /// written.
    pub fn write(&self, c: &Caller, fh: u64, offset: u64, data: &[u8], flags: i32) -> Res<u32> {
        let h = self.handles.get(fh).ok_or(Fail::BadHandle)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        let limit = self.engine.limits().max_value_size as u64;
        let path = h.path.clone();
        let hm = &mut *h;
        let (uid, bounds) = (hm.opener.uid, hm.bounds);
        let fail = |e: Error| {
            self.audit_here(c, "write", &path, &e);
            Fail::At(path.clone(), e)
        };
        let (immediate, w) = match &mut hm.kind {
            Kind::Exchange(x) => {
                let limit = exchange::input_limit(&self.engine);
                let after = x.input_len_after(offset, data.len());
                if let Err(e) = self
                    .handles
                    .charge(uid, bounds, &mut hm.charged, after, &path)
                {
                    let freed = x.discard();
                    let _ = self.handles.charge(uid, bounds, &mut hm.charged, 0, &path);
                    crate::memory::freed(freed);
                    return Err(fail(noted(e, "nothing of this input will be used")));
                }
                let res = x.write(&path, offset, data, limit);
                let held = x.input_len();
                let _ = self
                    .handles
                    .charge(uid, bounds, &mut hm.charged, held, &path);
                return res.map(|()| data.len() as u32).map_err(fail);
            }
            Kind::Buffered(w) => (false, w),
            Kind::Immediate { buf, .. } => (true, buf),
            Kind::Read(_) | Kind::Closed => return Err(Fail::BadHandle),
        };
        // O_APPEND appends to this open's buffer: the kernel's offset comes from a file size
        // that another process's stat may have reset to the stored (older) size meanwhile.
        let offset = if flags & libc::O_APPEND != 0 {
            w.data.len() as u64
        } else {
            offset
        };
        let charged = &mut hm.charged;
        // Nothing of this open will be stored after any of these refusals.
        let refuse = |w: &mut WriteBuf, charged: &mut u64, e: Error| {
            let freed = w.data.capacity() as u64;
            w.discard(e.kind);
            let _ = self.handles.charge(uid, bounds, charged, 0, &path);
            crate::memory::freed(freed);
            fail(e)
        };
        if let Some(kind) = w.refused.filter(|k| *k != ErrorKind::TooLarge) {
            return Err(fail(Error::new(
                kind,
                format!("{path}: an earlier write of this open was refused; nothing of it will be stored"),
            )));
        }
        if w.poisoned || offset.saturating_add(data.len() as u64) > limit {
            let e = Error::new(
                ErrorKind::TooLarge,
                format!("{path}: value exceeds the limit of {limit} bytes"),
            );
            return Err(refuse(w, charged, e));
        }
        if immediate {
            // The engine audits and records this write's refusal itself.
            return match self.engine.write(c, &path, SecretBytes::from_slice(data)) {
                Ok(()) => Ok(data.len() as u32),
                Err(e) => Err(Fail::At(path.clone(), e)),
            };
        }
        let after = offset
            .saturating_add(data.len() as u64)
            .max(w.data.len() as u64);
        if let Err(e) = self.handles.charge(uid, bounds, charged, after, &path) {
            let e = noted(e, "nothing of this open will be stored");
            return Err(refuse(w, charged, e));
        }
        w.write_at(offset as usize, data);
        // A buffered control file (a mount spec) is checked as it arrives: what can no longer
        // become valid fails this write(2), and nothing of the open is applied.
        if let Err(e) = self.engine.check_partial(&path, w.data.expose()) {
            let e = noted(e.context(&path), "nothing of this open will be applied");
            return Err(refuse(w, charged, e));
        }
        Ok(data.len() as u32)
    }

    /// A close (FLUSH) by the thread `pid`: the opener's process commits what it wrote;
    /// another process closing an inherited copy of the fd commits nothing.
    pub fn flush(&self, pid: u32, fh: u64) -> Res<()> {
        let h = self.handles.get(fh).ok_or(Fail::BadHandle)?;
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        // Same process? A thread of the opener shows up under /proc/<tgid>/task/<tid>.
        if !h.same_process(pid) {
            return Ok(());
        }
        let c = h.opener.clone();
        self.commit(&mut h, &c, false)
            .map_err(|e| Fail::At(h.path.clone(), e))
    }

    /// The last close (RELEASE): commit what is left, as the opener, and drop the handle
    /// (its snapshot and buffers zeroize).
    pub fn release(&self, fh: u64) -> Res<()> {
        let Some(shared) = self.handles.get(fh) else {
            return Ok(());
        };
        let mut h = shared.lock().unwrap_or_else(|p| p.into_inner());
        let c = h.opener.clone();
        let res = self.commit(&mut h, &c, true);
        let freed = match &h.kind {
            Kind::Buffered(w) | Kind::Immediate { buf: w, .. } => w.data.capacity() as u64,
            Kind::Exchange(x) => x.input_len(),
            Kind::Read(_) | Kind::Closed => 0,
        };
        h.kind = Kind::Closed;
        let (uid, bounds) = (h.opener.uid, h.bounds);
        let path_now = h.path.clone();
        let _ = self
            .handles
            .charge(uid, bounds, &mut h.charged, 0, &path_now);
        let path = std::mem::take(&mut h.path);
        drop(h);
        // Out of the table only once committed: a created file is never missing in between.
        self.handles.remove(fh);
        crate::memory::freed(freed);
        res.map_err(|error| Fail::Released { uid, path, error })
    }
}
