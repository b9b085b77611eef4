//! The `fuser::Filesystem` implementation: each method resolves inode → path, calls the
//! engine, and replies — or maps the error through `errno` in one place (`fail`).
//!
//! Every file is served with direct I/O: no secret byte enters the page cache. Entries and
//! attributes get a zero TTL whenever callers may see different things (another uid may enter,
//! or an admitted uid is not an admin, so policies narrow its view); only when every uid the
//! kernel admits is an admin — one view for all — do static nodes get a short TTL, which saves
//! a LOOKUP per path segment on every open. Opens, reads and writes always reach the engine, so
//! revocation, sealing and policy changes take effect on the next open either way.
//! Lookups and getattr only `stat`, which has no side effects.

use crate::errno::errno;
use crate::handles::{Bounds, Handle, Handles, WriteBuf};
use crate::inodes::{join, Inodes, ROOT};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nomadfs_core::engine::Op;
use nomadfs_core::{Caller, Engine, Error, ErrorKind, Node, NodeKind, SecretBytes};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

/// Entries and attributes of nodes that are new, generated, or seen by more than one view.
const NO_CACHE: Duration = Duration::ZERO;
/// Entries and attributes of static nodes when every admitted caller is an admin.
const SHARED_VIEW_TTL: Duration = Duration::from_secs(1);

/// A directory listing snapshot taken at opendir: (ino, kind, name).
type Listing = Vec<(u64, FileType, String)>;

pub struct NomadFs {
    engine: Arc<Engine>,
    inodes: Inodes,
    handles: Handles,
    /// Open folders: fh → (the opener's uid, the listing).
    dirs: Mutex<HashMap<u64, (u32, Listing)>>,
    next_dir: std::sync::atomic::AtomicU64,
    start: SystemTime,
    /// The uids the kernel lets in (`None`: any uid, `allow_other`).
    admitted: Option<Vec<u32>>,
    /// Per-uid budget of request log lines (refusals and failures).
    log_budget: crate::logbudget::LogBudget,
}

fn caller(req: &Request) -> Caller {
    crate::caller::from_request(req.uid(), req.gid(), req.pid())
}

fn name_str(name: &OsStr) -> Result<&str, Error> {
    if name.len() > 255 {
        // Checked here too, so a lookup of such a name says so (not ENOENT).
        return Err(Error::new(
            ErrorKind::NameTooLong,
            format!("name of {} bytes: at most 255", name.len()),
        ));
    }
    name.to_str()
        .ok_or_else(|| Error::invalid("names must be UTF-8"))
}

/// `e` with a note on what follows from it.
fn noted(mut e: Error, note: &str) -> Error {
    e.message = format!("{}: {note}", e.message);
    e
}

fn is_write(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
}
fn is_read(flags: i32) -> bool {
    matches!(flags & libc::O_ACCMODE, libc::O_RDONLY | libc::O_RDWR)
}

impl NomadFs {
    /// `admitted`: the uids the kernel lets into the mount (`None` when any uid may enter).
    pub fn new(engine: Arc<Engine>, admitted: Option<Vec<u32>>) -> Self {
        Self {
            admitted,
            engine,
            inodes: Inodes::default(),
            handles: Handles::default(),
            dirs: Mutex::new(HashMap::new()),
            next_dir: std::sync::atomic::AtomicU64::new(1),
            start: SystemTime::now(),
            log_budget: Default::default(),
        }
    }

    /// Log a refused or failed request of `uid` (paths and reasons only, never values, within
    /// the uid's log budget) and answer its errno.
    fn fail(&self, uid: u32, op: &str, path: &str, e: &Error) -> Errno {
        let level = match e.kind {
            ErrorKind::NotFound => tracing::Level::DEBUG,
            ErrorKind::Io | ErrorKind::Integrity => tracing::Level::ERROR,
            _ => tracing::Level::INFO,
        };
        let on = match level {
            tracing::Level::DEBUG => tracing::enabled!(tracing::Level::DEBUG),
            tracing::Level::ERROR => tracing::enabled!(tracing::Level::ERROR),
            _ => tracing::enabled!(tracing::Level::INFO),
        };
        if on && self.log_budget.admit(uid) {
            match level {
                tracing::Level::DEBUG => tracing::debug!(op, path, uid, "{}", e.message),
                tracing::Level::ERROR => tracing::error!(op, path, uid, "{}", e.message),
                _ => tracing::info!(op, path, uid, "refused: {}", e.message),
            }
        }
        errno(e.kind)
    }

    /// The per-uid bounds that apply to `c` (none for admins unless configured).
    fn bounds(&self, c: &Caller) -> Bounds {
        if !self.engine.bounded(c) {
            return Bounds::default();
        }
        let l = self.engine.uid_limits();
        Bounds {
            open_files: l.open_files,
            buffered_bytes: l.buffered_bytes,
        }
    }

    /// The node an open handle stands for, when its path has no stored node (a control file
    /// or file created and not yet stored, or one unlinked while open): `fstat` on an open
    /// file always answers.
    fn node_of_handle(&self, ino: u64, fh: Option<FileHandle>) -> Option<Node> {
        let h = self.handles.get(fh?.0)?;
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        if h.ino != ino {
            return None;
        }
        Some(if h.exchange.is_some() {
            Node::exchange()
        } else if h.immediate {
            Node::write_only()
        } else {
            Node::file(h.readable().map_or(0, |d| d.len() as u64))
        })
    }

    /// Audit a refusal decided here rather than by the engine (per-uid bounds, oversized or
    /// invalid writes); the engine audits everything else.
    fn audit_here(&self, c: &Caller, op: &'static str, path: &str, e: &Error) {
        if op == "write" || matches!(e.kind, ErrorKind::TooManyOpen | ErrorKind::NoSpace) {
            self.engine.record_refusal(c, op, path, e);
        }
    }

    /// The path of `ino` for a log line (never the inode number).
    fn log_path(&self, ino: INodeNo) -> String {
        self.inodes
            .path(ino.0)
            .unwrap_or_else(|| "(a path no longer known)".to_string())
    }

    /// The path of `name` in folder `parent`, for a log line.
    fn log_child(&self, parent: INodeNo, name: &OsStr) -> String {
        join(&self.log_path(parent), &name.to_string_lossy())
    }

    /// How long the kernel may keep this node's entry and attributes: see the module doc.
    /// A file open for writing is never cached either: its writer sees its own pending size,
    /// everyone else the stored one.
    fn ttl(&self, ino: u64, node: &Node) -> Duration {
        match &self.admitted {
            Some(uids)
                if !node.dynamic
                    && self.engine.all_admins(uids)
                    && !self.handles.has_writer(ino) =>
            {
                SHARED_VIEW_TTL
            }
            _ => NO_CACHE,
        }
    }

    fn path(&self, ino: INodeNo) -> Result<String, Error> {
        self.inodes.path(ino.0).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "a path no longer known (its inode was forgotten)",
            )
        })
    }

    fn attr(&self, ino: u64, node: &Node, c: &Caller) -> FileAttr {
        let (kind, nlink) = match node.kind {
            NodeKind::Dir => (FileType::Directory, 2),
            NodeKind::File => (FileType::RegularFile, 1),
        };
        FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: self.start,
            mtime: self.start,
            ctime: self.start,
            crtime: self.start,
            kind,
            perm: node.mode,
            nlink,
            // The caller owns what it sees: the owner bits say what *this caller* may do.
            uid: c.uid,
            gid: c.gid,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }

    /// Stat a path; a file created but not yet committed is answered from its open handle,
    /// and a process that has the file open for writing sees the size of its own buffer.
    fn stat_ino(&self, ino: u64, path: &str, c: &Caller) -> Result<Node, Error> {
        match self.engine.stat(c, path) {
            Err(e) if e.kind == ErrorKind::NotFound => match self.pending_for(ino, path, c) {
                Some(size) => Ok(Node::file(size)),
                // Its last handle may have been committed and released meanwhile: look again.
                None => self.engine.stat(c, path),
            },
            Ok(mut node) if node.kind == NodeKind::File => {
                if let Some(size) = self.handles.own_pending_size(ino, c.pid) {
                    node.size = size;
                }
                Ok(node)
            }
            other => other,
        }
    }

    /// The size of a created file not yet stored (its creator still has it open), for a
    /// caller whose policy lets it create that path; to others it does not exist until stored.
    fn pending_for(&self, ino: u64, path: &str, c: &Caller) -> Option<u64> {
        let size = self.handles.pending_size(ino)?;
        self.engine.check(c, path, &Op::Create).ok().map(|_| size)
    }

    /// Dispatch `op` on `path`; when the file is held open-created here (not stored until its
    /// creator's close), as such (`Engine::dispatch_held_open`), so that its real outcome is
    /// authorised and audited.
    fn dispatch_maybe_held(
        &self,
        ino: u64,
        c: &Caller,
        path: &str,
        op: Op<'_>,
    ) -> Result<(), Error> {
        if self.handles.pending_size(ino).is_some() {
            self.engine.dispatch_held_open(c, path, op).map(|_| ())
        } else {
            self.engine.dispatch(c, path, op).map(|_| ())
        }
    }

    /// Read a stored value; a file created but not yet stored (its creator has not closed it)
    /// reads as empty to the thread creating it, and is not there for anyone else.
    fn read_value(&self, ino: u64, path: &str, c: &Caller) -> Result<SecretBytes, Error> {
        match self.engine.read(c, path) {
            // Only the thread that is creating it reads it (as empty): to everyone else a value
            // appears whole at its writer's close, so a new file is not there until then.
            Err(e)
                if e.kind == ErrorKind::NotFound
                    && self.handles.pending_by_thread(ino, c.pid)
                    && self.pending_for(ino, path, c).is_some() =>
            {
                Ok(SecretBytes::default())
            }
            other => other,
        }
    }

    /// Store the handle's buffer if it was written (or, at release, created/truncated —
    /// unless a value was stored for the file since this open: the later store wins).
    fn commit(&self, h: &mut Handle, c: &Caller, releasing: bool) -> Result<(), Error> {
        let (ino, since, orphaned) = (h.ino, h.opened_seq, h.orphaned);
        if let Some(w) = h.write.as_mut() {
            if w.poisoned || orphaned {
                return Ok(());
            }
            let empty_due = releasing && w.pending_empty && !self.handles.stored_since(ino, since);
            if w.dirty || empty_due {
                let res = self.engine.write(c, &h.path, w.data.duplicate());
                w.dirty = false;
                w.pending_empty = false;
                res?;
                self.handles.stored_now(ino);
            }
        }
        Ok(())
    }
}

impl Filesystem for NomadFs {
    fn init(&mut self, _req: &Request, config: &mut fuser::KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        // O_TRUNC arrives with open (not as a separate truncating setattr), so an overwrite
        // replaces the value at close, atomically, and a failed overwrite leaves the old value.
        if let Err(missing) = config.add_capabilities(fuser::InitFlags::FUSE_ATOMIC_O_TRUNC) {
            tracing::warn!("kernel lacks {missing:?}: O_TRUNC is not atomic");
        }
        Ok(())
    }

    fn lookup(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let c = caller(req);
        let res = self.path(parent).and_then(|p| {
            let path = join(&p, name_str(name)?);
            // A file created and still open (not stored until close) is found by its path too.
            let node = match self.inodes.peek(&path) {
                Some(ino) => self.stat_ino(ino, &path, &c)?,
                None => self.engine.stat(&c, &path)?,
            };
            Ok((path, node))
        });
        match res {
            Ok((path, node)) => {
                let ino = self.inodes.lookup(&path);
                let attr_ttl = self.ttl(ino, &node);
                let entry_ttl = crate::exchange::entry_ttl(&node, attr_ttl);
                reply.entry_with_ttls(
                    &attr_ttl,
                    &entry_ttl,
                    &self.attr(ino, &node, &c),
                    Generation(0),
                );
            }
            Err(e) => {
                reply.error(self.fail(req.uid(), "lookup", &self.log_child(parent, name), &e))
            }
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.inodes.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let c = caller(req);
        let res = self
            .path(ino)
            .and_then(|p| self.stat_ino(ino.0, &p, &c))
            .or_else(|e| match e.kind {
                // fstat of an open file: answered from its handle.
                ErrorKind::NotFound => self.node_of_handle(ino.0, fh).ok_or(e),
                _ => Err(e),
            });
        match res {
            Ok(node) => reply.attr(&self.ttl(ino.0, &node), &self.attr(ino.0, &node, &c)),
            Err(e) => reply.error(self.fail(req.uid(), "getattr", &self.log_path(ino), &e)),
        }
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let c = caller(req);
        let res = (|| -> Result<Node, Error> {
            let path = self.path(ino)?;
            // Modes are decided by policy: chmod is accepted and ignored (so `cp -p`/`mv` work),
            // but audited; chown is refused.
            if uid.is_some() || gid.is_some() {
                return Err(Error::not_permitted(format!(
                    "{path}: owners are decided by policy, not chown"
                )));
            }
            if mode.is_some() {
                self.dispatch_maybe_held(ino.0, &c, &path, Op::Chmod)?;
            }
            if let Some(size) = size {
                let limit = self.engine.limits().max_value_size as u64;
                if size > limit {
                    return Err(Error::new(
                        ErrorKind::TooLarge,
                        format!("{path}: size over the limit"),
                    ));
                }
                match fh.and_then(|fh| self.handles.get(fh.0)) {
                    Some(h) => {
                        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
                        let hm = &mut *h;
                        let (uid, bounds) = (hm.opener.uid, hm.bounds);
                        match hm.write.as_mut() {
                            Some(w) => {
                                // Growing counts against the opener's buffered bytes (ENOSPC
                                // past the bound, and nothing changes).
                                let after = size.max(w.data.len() as u64);
                                self.handles
                                    .charge(uid, bounds, &mut hm.charged, after, &path)?;
                                w.truncate(size as usize);
                                let _ = self.handles.charge(
                                    uid,
                                    bounds,
                                    &mut hm.charged,
                                    w.data.len() as u64,
                                    &path,
                                );
                            }
                            None => {
                                return Err(Error::denied(format!("{path}: not open for writing")))
                            }
                        }
                    }
                    None => {
                        // truncate(2) by path: never on generated content (it would mint a
                        // credential); to 0 without reading; else read, resize, commit at once.
                        let node = self.stat_ino(ino.0, &path, &c)?;
                        if node.dynamic {
                            return Err(Error::not_permitted(format!(
                                "{path}: generated content cannot be truncated"
                            )));
                        }
                        if size == 0 {
                            self.engine.write(&c, &path, SecretBytes::default())?;
                            self.handles.stored_now(ino.0);
                            return self.stat_ino(ino.0, &path, &c);
                        }
                        let current = match self.read_value(ino.0, &path, &c) {
                            Ok(v) => v,
                            Err(e) if e.kind == ErrorKind::NotFound => SecretBytes::default(),
                            Err(e) => return Err(e),
                        };
                        let mut w = WriteBuf::new(current, false);
                        w.truncate(size as usize);
                        self.engine.write(&c, &path, w.data.duplicate())?;
                        self.handles.stored_now(ino.0);
                    }
                }
            }
            if size.is_none() && (atime.is_some() || mtime.is_some()) {
                // `touch`: renews a lease file; times are not stored anywhere else.
                self.engine.touch(&c, &path)?;
            }
            self.stat_ino(ino.0, &path, &c)
        })();
        match res {
            Ok(node) => reply.attr(&self.ttl(ino.0, &node), &self.attr(ino.0, &node, &c)),
            Err(e) => reply.error(self.fail(req.uid(), "setattr", &self.log_path(ino), &e)),
        }
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
        let c = caller(req);
        let res = self.path(parent).and_then(|p| {
            let path = join(&p, name_str(name)?);
            self.engine.mkdir(&c, &path)?;
            let node = self.engine.stat(&c, &path)?;
            Ok((path, node))
        });
        match res {
            Ok((path, node)) => {
                let ino = self.inodes.lookup(&path);
                reply.entry(
                    &self.ttl(ino, &node),
                    &self.attr(ino, &node, &c),
                    Generation(0),
                );
            }
            Err(e) => reply.error(self.fail(req.uid(), "mkdir", &self.log_child(parent, name), &e)),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = caller(req);
        let res = self.path(parent).and_then(|p| {
            let path = join(&p, name_str(name)?);
            // Handles still open on the file store nothing from now on (POSIX: the open file
            // lives on without a name). A created file not yet stored exists only in them.
            let ino = self.inodes.peek(&path);
            match ino {
                Some(ino) => {
                    self.dispatch_maybe_held(ino, &c, &path, Op::Delete)?;
                    self.handles.unlinked(ino);
                }
                None => self.engine.delete(&c, &path)?,
            }
            Ok(path)
        });
        match res {
            Ok(path) => {
                self.inodes.unlink(&path);
                reply.ok()
            }
            Err(e) => {
                reply.error(self.fail(req.uid(), "unlink", &self.log_child(parent, name), &e))
            }
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = caller(req);
        let res = self.path(parent).and_then(|p| {
            let path = join(&p, name_str(name)?);
            // Said only to a caller the policy lets remove it; anyone else hears the policy.
            if self.handles.pending_under(&path) && self.engine.check(&c, &path, &Op::Rmdir).is_ok()
            {
                let e = Error::new(
                    ErrorKind::NotEmpty,
                    format!("{path}: holds a file still being created"),
                );
                self.engine.record_refusal(&c, "rmdir", &path, &e);
                return Err(e);
            }
            self.engine.rmdir(&c, &path)?;
            Ok(path)
        });
        match res {
            Ok(path) => {
                self.inodes.unlink(&path);
                reply.ok()
            }
            Err(e) => reply.error(self.fail(req.uid(), "rmdir", &self.log_child(parent, name), &e)),
        }
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let c = caller(req);
        let res = (|| -> Result<(String, String), Error> {
            let from = join(&self.path(parent)?, name_str(name)?);
            let to = join(&self.path(newparent)?, name_str(newname)?);
            if flags.bits() & !(libc::RENAME_NOREPLACE) != 0 {
                return Err(Error::invalid("RENAME_EXCHANGE/WHITEOUT are not supported"));
            }
            if flags.bits() & libc::RENAME_NOREPLACE != 0 && self.engine.stat(&c, &to).is_ok() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{to}: exists"),
                ));
            }
            // Said only to a caller the policy lets rename there; anyone else hears the policy.
            if self.handles.pending_under(&to)
                && self.engine.check(&c, &from, &Op::Rename(&to)).is_ok()
            {
                let e = Error::new(
                    ErrorKind::NotEmpty,
                    format!("{to}: holds a file still being created"),
                );
                self.engine.record_refusal(&c, "rename", &from, &e);
                return Err(e);
            }
            let (from_ino, to_ino) = (self.inodes.peek(&from), self.inodes.peek(&to));
            // A created file not yet stored: its open handles will store it under `to`.
            match from_ino {
                Some(i) => self.dispatch_maybe_held(i, &c, &from, Op::Rename(&to))?,
                None => self.engine.rename(&c, &from, &to)?,
            }
            // Whatever was at `to` is replaced: its open handles store nothing.
            if let Some(t) = to_ino.filter(|t| Some(*t) != from_ino) {
                self.handles.unlinked(t);
            }
            self.handles.renamed(&from, &to);
            Ok((from, to))
        })();
        match res {
            Ok((from, to)) => {
                self.inodes.rename(&from, &to);
                reply.ok()
            }
            Err(e) => {
                reply.error(self.fail(req.uid(), "rename", &self.log_child(parent, name), &e))
            }
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        let flags = flags.0;
        let res = (|| -> Result<(u64, FopenFlags), Error> {
            let path = self.path(ino)?;
            let node = self.stat_ino(ino.0, &path, &c)?;
            if node.is_dir() {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("{path}: is a folder"),
                ));
            }
            if node.exchange {
                // Read-after-write: nothing is read at open or committed at close.
                crate::exchange::check_open(&path, &node, is_read(flags), is_write(flags))?;
                let fh = self.handles.insert(Handle {
                    ino: ino.0,
                    path,
                    snapshot: None,
                    write: None,
                    immediate: false,
                    opener_tgid: crate::caller::tgid(req.uid(), req.pid()),
                    opener: c.clone(),
                    orphaned: false,
                    opened_seq: 0,
                    exchange: Some(Default::default()),
                    bounds: self.bounds(&c),
                    charged: 0,
                })?;
                // Nothing to commit at close: no FLUSH round trip.
                return Ok((fh, FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH));
            }
            // The mode bits already say no; the reason is the policy's when it is the policy.
            if is_read(flags) && node.mode & 0o400 == 0 {
                let e = self
                    .engine
                    .check(&c, &path, &Op::Read)
                    .err()
                    .unwrap_or_else(|| Error::denied(format!("{path} is write-only")));
                self.engine.record_refusal(&c, "open", &path, &e);
                return Err(e);
            }
            if is_write(flags) && node.mode & 0o200 == 0 {
                // The engine's refusal is audited and recorded by the engine itself.
                self.engine.create(&c, &path)?;
                let e = Error::denied(format!("{path} is read-only"));
                self.engine.record_refusal(&c, "open", &path, &e);
                return Err(e);
            }
            if is_write(flags) {
                // Refusals (name, mount in use, ...) come at open, not at close.
                self.engine.create(&c, &path)?;
            }
            let trunc = flags & libc::O_TRUNC != 0;
            let snapshot = if is_read(flags) {
                Some(self.read_value(ino.0, &path, &c)?)
            } else {
                None
            };
            let write = if is_write(flags) {
                // A node the caller cannot read (write-only config, update-only policy) is
                // replaced whole: never read it to patch it.
                let replace = trunc || node.dynamic || node.mode & 0o400 == 0;
                let initial = match (&snapshot, replace) {
                    (_, true) => SecretBytes::default(),
                    (Some(s), false) => s.duplicate(),
                    (None, false) => self.read_value(ino.0, &path, &c)?,
                };
                Some(WriteBuf::new(initial, replace && !node.dynamic))
            } else {
                None
            };
            // A handle that cannot write has nothing to commit at close: the kernel may skip
            // the FLUSH round trip (one request less per read-only open).
            let fopen = if write.is_some() {
                FopenFlags::FOPEN_DIRECT_IO
            } else {
                FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_NOFLUSH
            };
            let fh = self.handles.insert(Handle {
                ino: ino.0,
                path,
                snapshot,
                write,
                immediate: node.dynamic,
                opener_tgid: crate::caller::tgid(req.uid(), req.pid()),
                opener: c.clone(),
                orphaned: false,
                opened_seq: 0,
                exchange: None,
                bounds: self.bounds(&c),
                charged: 0,
            })?;
            Ok((fh, fopen))
        })();
        match res {
            Ok((fh, fopen)) => reply.opened(FileHandle(fh), fopen),
            Err(e) => {
                let path = self.log_path(ino);
                self.audit_here(&c, "open", &path, &e);
                reply.error(self.fail(req.uid(), "open", &path, &e))
            }
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let c = caller(req);
        let res = (|| -> Result<(u64, u64), Error> {
            let path = join(&self.path(parent)?, name_str(name)?);
            if flags & libc::O_EXCL != 0 && self.engine.stat(&c, &path).is_ok() {
                return Err(Error::new(
                    ErrorKind::AlreadyExists,
                    format!("{path}: exists"),
                ));
            }
            let node = self.engine.create(&c, &path)?;
            let ino = self.inodes.lookup(&path);
            let fh = self.handles.insert(Handle {
                ino,
                path,
                snapshot: None,
                // Closing a created file stores it, even empty (at release).
                write: Some(WriteBuf::new(SecretBytes::default(), !node.dynamic)),
                immediate: node.dynamic,
                opener_tgid: crate::caller::tgid(req.uid(), req.pid()),
                opener: c.clone(),
                orphaned: false,
                opened_seq: 0,
                exchange: None,
                bounds: self.bounds(&c),
                charged: 0,
            })?;
            Ok((ino, fh))
        })();
        match res {
            Ok((ino, fh)) => {
                let attr = self.attr(ino, &Node::file(0), &c);
                // Not cached: the file exists only once its first close commits it.
                reply.created(
                    &NO_CACHE,
                    &attr,
                    Generation(0),
                    FileHandle(fh),
                    FopenFlags::FOPEN_DIRECT_IO,
                )
            }
            Err(e) => {
                let path = self.log_child(parent, name);
                self.audit_here(&c, "create", &path, &e);
                reply.error(self.fail(req.uid(), "create", &path, &e))
            }
        }
    }

    fn read(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let Some(h) = self.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        let hm = &mut *h;
        if let Some(x) = hm.exchange.as_mut() {
            let (c, path) = (caller(req), &hm.path);
            let run = |input| self.engine.exchange(&c, path, input);
            return match x.read(path, offset, size, run) {
                Ok(data) => reply.data(data),
                Err(e) => reply.error(self.fail(req.uid(), "read", path, &e)),
            };
        }
        let Some(data) = h.readable() else {
            return reply.error(Errno::EBADF);
        };
        let start = (offset as usize).min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let Some(h) = self.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        let limit = self.engine.limits().max_value_size as u64;
        let path = h.path.clone();
        let hm = &mut *h;
        let (uid, bounds) = (hm.opener.uid, hm.bounds);
        if let Some(x) = hm.exchange.as_mut() {
            let limit = crate::exchange::input_limit(&self.engine);
            let after = x.input_len_after(offset, data.len());
            if let Err(e) = self
                .handles
                .charge(uid, bounds, &mut hm.charged, after, &path)
            {
                let freed = x.discard();
                let _ = self.handles.charge(uid, bounds, &mut hm.charged, 0, &path);
                crate::memory::freed(freed);
                let e = noted(e, "nothing of this input will be used");
                self.audit_here(&caller(req), "write", &path, &e);
                return reply.error(self.fail(req.uid(), "write", &path, &e));
            }
            let res = x.write(&path, offset, data, limit);
            let held = x.input_len();
            let _ = self
                .handles
                .charge(uid, bounds, &mut hm.charged, held, &path);
            return match res {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => {
                    self.audit_here(&caller(req), "write", &path, &e);
                    reply.error(self.fail(req.uid(), "write", &path, &e))
                }
            };
        }
        let immediate = hm.immediate;
        let Some(w) = hm.write.as_mut() else {
            return reply.error(Errno::EBADF);
        };
        // O_APPEND appends to this open's buffer: the kernel's offset comes from a file size
        // that another process's stat may have reset to the stored (older) size meanwhile.
        let offset = if flags.0 & libc::O_APPEND != 0 {
            w.data.len() as u64
        } else {
            offset
        };
        // Nothing of this open will be stored after any of these refusals.
        let refuse = |w: &mut WriteBuf, charged: &mut u64, e: Error| {
            let freed = w.data.capacity() as u64;
            w.discard(e.kind);
            let _ = self.handles.charge(uid, bounds, charged, 0, &path);
            crate::memory::freed(freed);
            self.audit_here(&caller(req), "write", &path, &e);
            self.fail(req.uid(), "write", &path, &e)
        };
        if let Some(kind) = w.refused.filter(|k| *k != ErrorKind::TooLarge) {
            let e = Error::new(
                kind,
                format!("{path}: an earlier write of this open was refused; nothing of it will be stored"),
            );
            self.audit_here(&caller(req), "write", &path, &e);
            return reply.error(self.fail(req.uid(), "write", &path, &e));
        }
        if w.poisoned || offset.saturating_add(data.len() as u64) > limit {
            let e = Error::new(
                ErrorKind::TooLarge,
                format!("{path}: value exceeds the limit of {limit} bytes"),
            );
            return reply.error(refuse(w, &mut hm.charged, e));
        }
        if immediate {
            let res = self
                .engine
                .write(&caller(req), &path, SecretBytes::from_slice(data));
            return match res {
                Ok(()) => reply.written(data.len() as u32),
                Err(e) => reply.error(self.fail(req.uid(), "write", &path, &e)),
            };
        }
        let after = offset
            .saturating_add(data.len() as u64)
            .max(w.data.len() as u64);
        if let Err(e) = self
            .handles
            .charge(uid, bounds, &mut hm.charged, after, &path)
        {
            let e = noted(e, "nothing of this open will be stored");
            return reply.error(refuse(w, &mut hm.charged, e));
        }
        w.write_at(offset as usize, data);
        // A buffered control file (a mount spec) is checked as it arrives: what can no longer
        // become valid fails this write(2), and nothing of the open is applied.
        if let Err(e) = self.engine.check_partial(&path, w.data.expose()) {
            let e = noted(e.context(&path), "nothing of this open will be applied");
            return reply.error(refuse(w, &mut hm.charged, e));
        }
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let Some(h) = self.handles.get(fh.0) else {
            return reply.error(Errno::EBADF);
        };
        let mut h = h.lock().unwrap_or_else(|p| p.into_inner());
        // Same process? A thread of the opener shows up under /proc/<tgid>/task/<tid>.
        if !h.same_process(req.pid()) {
            // Another process closing its inherited copy of the fd: not a commit point.
            return reply.ok();
        }
        let c = h.opener.clone();
        match self.commit(&mut h, &c, false) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(req.uid(), "close", &h.path, &e)),
        }
    }

    fn release(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let Some(shared) = self.handles.get(fh.0) else {
            return reply.ok();
        };
        let mut h = shared.lock().unwrap_or_else(|p| p.into_inner());
        // RELEASE carries no caller: commit as the process that opened the file.
        let _ = req;
        let c = h.opener.clone();
        let res = self.commit(&mut h, &c, true);
        // Snapshot and buffer are zeroized as the handle drops.
        let freed = h.write.as_ref().map_or(0, |w| w.data.capacity() as u64)
            + h.exchange.as_ref().map_or(0, |x| x.input_len());
        h.snapshot = None;
        h.write = None;
        h.exchange = None;
        let (uid, bounds) = (h.opener.uid, h.bounds);
        let path_now = h.path.clone();
        let _ = self
            .handles
            .charge(uid, bounds, &mut h.charged, 0, &path_now);
        let path = std::mem::take(&mut h.path);
        drop(h);
        // Out of the table only once committed: a created file is never missing in between.
        self.handles.remove(fh.0);
        crate::memory::freed(freed);
        match res {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(self.fail(uid, "release", &path, &e)),
        }
    }

    fn fsync(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.flush(req, ino, fh, LockOwner(0), reply)
    }

    fn opendir(&self, req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        let res = self.path(ino).and_then(|path| {
            let entries = self.engine.list(&c, &path)?;
            let parent_ino = if ino.0 == ROOT {
                ROOT
            } else {
                let parent = path.rsplit_once('/').map_or("", |(p, _)| p);
                self.inodes.peek(parent).unwrap_or(ROOT)
            };
            let mut out = vec![
                (ino.0, FileType::Directory, ".".to_string()),
                (parent_ino, FileType::Directory, "..".to_string()),
            ];
            for e in entries {
                let child = join(&path, &e.name);
                let child_ino = self
                    .inodes
                    .peek(&child)
                    .unwrap_or_else(|| synthetic_ino(&child));
                let kind = match e.kind {
                    NodeKind::Dir => FileType::Directory,
                    NodeKind::File => FileType::RegularFile,
                };
                out.push((child_ino, kind, e.name));
            }
            Ok(out)
        });
        // An open folder counts against the uid's open files too.
        let res = res.and_then(|entries| {
            self.handles
                .reserve_open(c.uid, self.bounds(&c).open_files)
                .map(|()| entries)
        });
        match res {
            Ok(entries) => {
                let fh = self
                    .next_dir
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.dirs
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(fh, (c.uid, entries));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => {
                let path = self.log_path(ino);
                self.audit_here(&c, "opendir", &path, &e);
                reply.error(self.fail(req.uid(), "opendir", &path, &e))
            }
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let dirs = self.dirs.lock().unwrap_or_else(|p| p.into_inner());
        let Some((_, entries)) = dirs.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let gone = self
            .dirs
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&fh.0);
        if let Some((uid, _)) = gone {
            self.handles.unreserve_open(uid);
        }
        reply.ok()
    }

    // Only regular files and folders exist: device nodes, symlinks and hard links are refused
    // (EPERM, not fuser's default ENOSYS, and without logging the name).
    fn mknod(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _name: &OsStr,
        _mode: u32,
        _umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn symlink(
        &self,
        _req: &Request,
        _parent: INodeNo,
        _link_name: &OsStr,
        _target: &std::path::Path,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply.error(Errno::EPERM);
    }

    fn getxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _size: u32,
        reply: fuser::ReplyXattr,
    ) {
        reply.error(Errno::NO_XATTR);
    }

    fn listxattr(&self, _req: &Request, _ino: INodeNo, size: u32, reply: fuser::ReplyXattr) {
        if size == 0 {
            reply.size(0)
        } else {
            reply.data(&[])
        }
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = caller(req);
        let res = self.path(ino).and_then(|p| self.stat_ino(ino.0, &p, &c));
        match res {
            Ok(node) => {
                let want = mask.bits();
                let mut ok = true;
                if want & libc::R_OK != 0 && node.mode & 0o400 == 0 {
                    ok = false;
                }
                if want & libc::W_OK != 0 && node.mode & 0o200 == 0 {
                    ok = false;
                }
                if want & libc::X_OK != 0 && node.mode & 0o100 == 0 {
                    ok = false;
                }
                if ok {
                    reply.ok()
                } else {
                    reply.error(Errno::EACCES)
                }
            }
            Err(e) => reply.error(self.fail(req.uid(), "access", &self.log_path(ino), &e)),
        }
    }

    // Every other request fuser would answer with ENOSYS after a multi-line WARN (one per
    // call, for any uid: a log flood). Answered here quietly. Where the kernel treats ENOSYS
    // as "not implemented, never ask again" and falls back to its own generic code (lseek,
    // poll, copy_file_range, bmap), that is the answer; elsewhere the errno a filesystem
    // without the feature gives.

    /// No symlinks exist: readlink on anything else is EINVAL.
    fn readlink(&self, _req: &Request, _ino: INodeNo, reply: ReplyData) {
        reply.error(Errno::EINVAL);
    }

    /// Only sent if READDIRPLUS was negotiated (it is not).
    fn readdirplus(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        reply: fuser::ReplyDirectoryPlus,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Folders hold nothing buffered.
    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn setxattr(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _name: &OsStr,
        _value: &[u8],
        _flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOTSUP);
    }

    fn removexattr(&self, _req: &Request, _ino: INodeNo, _name: &OsStr, reply: ReplyEmpty) {
        reply.error(Errno::NO_XATTR);
    }

    /// POSIX locks are the kernel's (local) business: FUSE_POSIX_LOCKS is not negotiated, so
    /// these are not sent; if they were, no lock service exists here.
    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        reply: fuser::ReplyLock,
    ) {
        reply.error(Errno::ENOLCK);
    }

    fn setlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        _start: u64,
        _end: u64,
        _typ: i32,
        _pid: u32,
        _sleep: bool,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::ENOLCK);
    }

    /// No block device underneath (the kernel stops asking after ENOSYS).
    fn bmap(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _blocksize: u32,
        _idx: u64,
        reply: fuser::ReplyBmap,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// No ioctl is supported on any file: ENOTTY, as for any file without ioctls.
    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        reply.error(Errno::ENOTTY);
    }

    /// The kernel then answers poll with "always ready", as for a regular file.
    fn poll(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _ph: fuser::PollNotifier,
        _events: fuser::PollEvents,
        _flags: fuser::PollFlags,
        reply: fuser::ReplyPoll,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// Values are stored whole at close: nothing to preallocate.
    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        reply.error(Errno::EOPNOTSUPP);
    }

    /// The kernel then seeks by itself (SEEK_SET/CUR/END on the size it knows).
    fn lseek(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: i64,
        _whence: i32,
        reply: fuser::ReplyLseek,
    ) {
        reply.error(Errno::ENOSYS);
    }

    /// The kernel then copies through read and write (which the engine checks).
    fn copy_file_range(
        &self,
        _req: &Request,
        _ino_in: INodeNo,
        _fh_in: FileHandle,
        _offset_in: u64,
        _ino_out: INodeNo,
        _fh_out: FileHandle,
        _offset_out: u64,
        _len: u64,
        _flags: fuser::CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        reply.error(Errno::ENOSYS);
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
