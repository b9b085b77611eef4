//! The `fuser::Filesystem` implementation: each callback turns the kernel's request into a
//! call of the FUSE-free file layer (`files/`) and its answer into a reply — or its error into
//! an errno, logged in one place (`fail`).
//!
//! Longer than ~500 lines because `fuser::Filesystem` is one trait impl: every callback is a
//! dispatch and a reply, and about forty requests nomadfs does not serve are answered here
//! quietly (fuser's defaults log a WARN per call).
//!
//! Every file is served with direct I/O by default: no secret byte enters the page cache.
//! Entries and attributes get a zero TTL unless `Files::cacheable` (one admin view for every
//! admitted uid, a static node, not open for writing): then a short TTL, which saves a LOOKUP
//! per path segment on every open, and the daemon drops them from the kernel's cache as they
//! change (`invalidate.rs`). With `kernel_cache` on, read-only opens of static values on such
//! a mount read through the page cache instead (`kcache.rs`), kept until the value changes.
//! Opens and writes always reach the engine; reads do unless served from the page cache.

use crate::errno::errno;
use crate::files::{Fail, Files, Opened, SetAttr};
use crate::inodes::{join, Inodes};
use crate::invalidate::{Invalidator, Scope};
use crate::kcache::{KernelCache, Serve};
use fuser::{
    AccessFlags, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation,
    INodeNo, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory,
    ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use nomadfs_core::{Caller, Engine, Error, ErrorKind, Node, NodeKind};
use std::ffi::OsStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

/// Entries and attributes of nodes that are new, generated, or seen by more than one view.
const NO_CACHE: Duration = Duration::ZERO;
/// Entries and attributes of static nodes when every admitted caller is an admin.
const SHARED_VIEW_TTL: Duration = Duration::from_secs(1);

pub struct NomadFs {
    files: Files,
    /// Drops what the kernel caches of nodes that changed (`invalidate.rs`).
    inval: Arc<Invalidator>,
    start: SystemTime,
    /// Per-uid budget of request log lines (refusals and failures).
    log_budget: crate::logbudget::LogBudget,
}

fn caller(req: &Request) -> Caller {
    crate::caller::from_request(req.uid(), req.gid(), req.pid())
}

fn file_type(kind: NodeKind) -> FileType {
    match kind {
        NodeKind::Dir => FileType::Directory,
        NodeKind::File => FileType::RegularFile,
    }
}

impl NomadFs {
    /// `admitted`: the uids the kernel lets into the mount (`None` when any uid may enter);
    /// `kernel_cache`: serve static values through the page cache where every caller sees
    /// the same view (`kcache.rs`).
    pub fn new(engine: Arc<Engine>, admitted: Option<Vec<u32>>, kernel_cache: bool) -> Self {
        let inodes = Arc::new(Inodes::default());
        let kcache = Arc::new(KernelCache::new(kernel_cache));
        let inval = Arc::new(Invalidator::new(inodes.clone(), kcache.clone()));
        let mut files = Files::new(engine, inodes, admitted);
        let refill = inval.clone();
        files.set_kernel_cache(kcache, Box::new(move |ino| refill.refill(ino)));
        let stored = inval.clone();
        files.on_stored(Box::new(move |ino| stored.attr(ino)));
        Self {
            files,
            inval,
            start: SystemTime::now(),
            log_budget: Default::default(),
        }
    }

    /// What drops the kernel's cache of changed nodes: give it the session's notifier once
    /// mounted, and the engine's changes (`Engine::set_change_listener`).
    pub fn invalidator(&self) -> Arc<Invalidator> {
        self.inval.clone()
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

    /// The errno of `f` (logged, naming `at()` unless the failure names its own path).
    fn answer(&self, req: &Request, op: &str, f: Fail, at: impl FnOnce() -> String) -> Errno {
        match f {
            Fail::BadHandle => Errno::EBADF,
            Fail::Refused(e) => self.fail(req.uid(), op, &at(), &e),
            Fail::At(path, e) => self.fail(req.uid(), op, &path, &e),
            Fail::Released { uid, path, error } => self.fail(uid, op, &path, &error),
        }
    }

    /// The path of `ino` for a log line (never the inode number).
    fn log_path(&self, ino: INodeNo) -> String {
        self.files.log_path(ino.0)
    }

    /// The path of `name` in folder `parent`, for a log line.
    fn log_child(&self, parent: INodeNo, name: &OsStr) -> String {
        join(&self.log_path(parent), &name.to_string_lossy())
    }

    /// How long the kernel may keep this node's entry and attributes: see the module doc.
    fn ttl(&self, ino: u64, node: &Node) -> Duration {
        if self.files.cacheable(ino, node) {
            SHARED_VIEW_TTL
        } else {
            NO_CACHE
        }
    }

    fn attr(&self, ino: u64, node: &Node, c: &Caller) -> FileAttr {
        let nlink = if node.is_dir() { 2 } else { 1 };
        FileAttr {
            ino: INodeNo(ino),
            size: node.size,
            blocks: node.size.div_ceil(512),
            atime: self.start,
            mtime: self.start,
            ctime: self.start,
            crtime: self.start,
            kind: file_type(node.kind),
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

    fn reply_entry(&self, reply: ReplyEntry, ino: u64, node: &Node, c: &Caller) {
        let attr_ttl = self.ttl(ino, node);
        let entry_ttl = crate::files::exchange::entry_ttl(node, attr_ttl);
        reply.entry_with_ttls(
            &attr_ttl,
            &entry_ttl,
            &self.attr(ino, node, c),
            Generation(0),
        );
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
        match self.files.lookup(&c, parent.0, name) {
            Ok((ino, node)) => self.reply_entry(reply, ino, &node, &c),
            Err(f) => reply.error(self.answer(req, "lookup", f, || self.log_child(parent, name))),
        }
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.files.forget(ino.0, nlookup);
    }

    fn getattr(&self, req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        let c = caller(req);
        match self.files.getattr(&c, ino.0, fh.map(|f| f.0)) {
            Ok(node) => reply.attr(&self.ttl(ino.0, &node), &self.attr(ino.0, &node, &c)),
            Err(f) => reply.error(self.answer(req, "getattr", f, || self.log_path(ino))),
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
        let a = SetAttr {
            mode: mode.is_some(),
            owner: uid.is_some() || gid.is_some(),
            size,
            times: atime.is_some() || mtime.is_some(),
        };
        // The kernel holds this inode locked (a folder, for chmod or touch of one).
        let mut scope = Scope::enter(&self.inval, &[ino.0]);
        let res = self.files.setattr(&c, ino.0, a, fh.map(|f| f.0));
        scope.settle();
        match res {
            Ok(node) => reply.attr(&self.ttl(ino.0, &node), &self.attr(ino.0, &node, &c)),
            Err(f) => reply.error(self.answer(req, "setattr", f, || self.log_path(ino))),
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
        let mut scope = Scope::enter(&self.inval, &[parent.0]);
        let res = self.files.mkdir(&c, parent.0, name);
        scope.settle();
        match res {
            Ok((ino, node)) => reply.entry(
                &self.ttl(ino, &node),
                &self.attr(ino, &node, &c),
                Generation(0),
            ),
            Err(f) => reply.error(self.answer(req, "mkdir", f, || self.log_child(parent, name))),
        }
    }

    fn unlink(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = caller(req);
        let mut scope = Scope::enter(&self.inval, &[parent.0]);
        let res = self.files.unlink(&c, parent.0, name);
        scope.settle();
        match res {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(self.answer(req, "unlink", f, || self.log_child(parent, name))),
        }
    }

    fn rmdir(&self, req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let c = caller(req);
        let mut scope = Scope::enter(&self.inval, &[parent.0]);
        let res = self.files.rmdir(&c, parent.0, name);
        scope.settle();
        match res {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(self.answer(req, "rmdir", f, || self.log_child(parent, name))),
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
        let noreplace = flags.bits() & libc::RENAME_NOREPLACE != 0;
        let other = flags.bits() & !(libc::RENAME_NOREPLACE) != 0;
        let mut scope = Scope::enter(&self.inval, &[parent.0, newparent.0]);
        let res = self.files.rename(
            &c,
            (parent.0, name),
            (newparent.0, newname),
            noreplace,
            other,
        );
        scope.settle();
        match res {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(self.answer(req, "rename", f, || self.log_child(parent, name))),
        }
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let c = caller(req);
        let mut scope = Scope::enter(&self.inval, &[]);
        let res = self.files.open(&c, ino.0, flags.0);
        scope.settle();
        match res {
            Ok(Opened {
                fh,
                no_flush,
                serve,
            }) => {
                let mut fopen = match serve {
                    Serve::Direct => FopenFlags::FOPEN_DIRECT_IO,
                    // Without KEEP_CACHE the kernel drops the inode's pages at this open.
                    Serve::Refill => FopenFlags::empty(),
                    Serve::Keep => FopenFlags::FOPEN_KEEP_CACHE,
                };
                if no_flush {
                    fopen |= FopenFlags::FOPEN_NOFLUSH;
                }
                reply.opened(FileHandle(fh), fopen)
            }
            Err(f) => reply.error(self.answer(req, "open", f, || self.log_path(ino))),
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
        let mut scope = Scope::enter(&self.inval, &[parent.0]);
        let res = self.files.create(&c, parent.0, name, flags);
        scope.settle();
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
            Err(f) => reply.error(self.answer(req, "create", f, || self.log_child(parent, name))),
        }
    }

    fn read(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let c = caller(req);
        // An open file from before a change fills the page cache with its old snapshot:
        // marked before the reply, its pages dropped after it (`kcache.rs`).
        let stale = self.files.kernel_cache().reading(fh.0);
        let mut reply = Some(reply);
        let res = self.files.read(&c, fh.0, offset, size, |data| {
            if let Some(r) = reply.take() {
                r.data(data)
            }
        });
        if let (Err(f), Some(r)) = (res, reply) {
            r.error(self.answer(req, "read", f, || self.log_path(ino)))
        }
        if let Some(ino) = stale {
            self.inval.pages(ino);
        }
    }

    fn write(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let c = caller(req);
        let mut scope = Scope::enter(&self.inval, &[]);
        let res = self.files.write(&c, fh.0, offset, data, flags.0);
        scope.settle();
        match res {
            Ok(n) => reply.written(n),
            Err(f) => reply.error(self.answer(req, "write", f, || self.log_path(ino))),
        }
    }

    fn flush(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let mut scope = Scope::enter(&self.inval, &[]);
        let res = self.files.flush(req.pid(), fh.0);
        scope.settle();
        match res {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(self.answer(req, "close", f, || self.log_path(ino))),
        }
    }

    fn release(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        // RELEASE carries no caller: the layer commits as the process that opened the file.
        let mut scope = Scope::enter(&self.inval, &[]);
        let res = self.files.release(fh.0);
        scope.settle();
        match res {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(self.answer(req, "release", f, || self.log_path(ino))),
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
        match self.files.opendir(&c, ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(f) => reply.error(self.answer(req, "opendir", f, || self.log_path(ino))),
        }
    }

    fn readdir(
        &self,
        req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let res = self.files.readdir(fh.0, offset, |child, kind, next, name| {
            reply.add(INodeNo(child), next, file_type(kind), name)
        });
        match res {
            Ok(()) => reply.ok(),
            Err(f) => reply.error(self.answer(req, "readdir", f, || self.log_path(ino))),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.files.releasedir(fh.0);
        reply.ok()
    }

    fn access(&self, req: &Request, ino: INodeNo, mask: AccessFlags, reply: ReplyEmpty) {
        let c = caller(req);
        let want = mask.bits();
        let (r, w, x) = (
            want & libc::R_OK != 0,
            want & libc::W_OK != 0,
            want & libc::X_OK != 0,
        );
        match self.files.access(&c, ino.0, r, w, x) {
            Ok(true) => reply.ok(),
            Ok(false) => reply.error(Errno::EACCES),
            Err(f) => reply.error(self.answer(req, "access", f, || self.log_path(ino))),
        }
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
