//! `floorfs MNT`: the bare FUSE floor for the benchmarks.
//!
//! One root directory holding one file, `x`, 64 bytes, served from memory. The file is writable
//! (writes land at their offset, truncation through `setattr` and `O_TRUNC`), the session runs
//! multi-threaded, entry/attr TTL is 1 s, and no `direct_io`. It does nothing a secrets store
//! would have to do, so any FUSE design costs at least this much per request.
//!
//! `FLOORFS_DIRECT_IO=1` serves the file with `direct_io`, as nomadfs serves secrets: every
//! read(2) then reaches the daemon (a read loop costs one more READ to find EOF). That is the
//! floor of a FUSE design that keeps secret bytes out of the page cache.
//!
//! Runs in the foreground until SIGTERM or SIGINT, then unmounts.

use std::error::Error;
use std::ffi::OsStr;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{
    Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEntry, ReplyOpen,
    ReplyWrite, Request, TimeOrNow, WriteFlags,
};
use signal_hook::consts::{SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

const TTL: Duration = Duration::from_secs(1);
const FILE_INO: INodeNo = INodeNo(2);
const FILE_NAME: &str = "x";
const INITIAL: &[u8; 64] = b"floorfs-0123456789abcdef0123456789abcdef0123456789abcdef01234567";

struct FloorFs {
    data: Mutex<Vec<u8>>,
    open_flags: FopenFlags,
    uid: u32,
    gid: u32,
}

impl FloorFs {
    fn data(&self) -> MutexGuard<'_, Vec<u8>> {
        // A poisoned lock only means a worker panicked mid-request; the bytes are still usable.
        self.data
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn dir_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::Directory,
            perm: 0o755,
            nlink: 2,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn file_attr(&self, size: usize) -> FileAttr {
        let size = size as u64;
        FileAttr {
            ino: FILE_INO,
            size,
            blocks: size.div_ceil(512),
            atime: UNIX_EPOCH,
            mtime: UNIX_EPOCH,
            ctime: UNIX_EPOCH,
            crtime: UNIX_EPOCH,
            kind: FileType::RegularFile,
            perm: 0o644,
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            flags: 0,
            blksize: 4096,
        }
    }

    fn attr_of(&self, ino: INodeNo) -> Option<FileAttr> {
        if ino == INodeNo::ROOT {
            Some(self.dir_attr())
        } else if ino == FILE_INO {
            let len = self.data().len();
            Some(self.file_attr(len))
        } else {
            None
        }
    }
}

impl Filesystem for FloorFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name.to_str() == Some(FILE_NAME) {
            let len = self.data().len();
            reply.entry(&TTL, &self.file_attr(len), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino) {
            Some(attr) => reply.attr(&TTL, &attr),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino == FILE_INO {
            let len = {
                let mut data = self.data();
                if let Some(size) = size {
                    match usize::try_from(size) {
                        Ok(size) if size <= 1 << 20 => data.resize(size, 0),
                        _ => return reply.error(Errno::EFBIG),
                    }
                }
                data.len()
            };
            reply.attr(&TTL, &self.file_attr(len));
        } else if ino == INodeNo::ROOT {
            reply.attr(&TTL, &self.dir_attr());
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        // Only seen when the kernel hands O_TRUNC to open (atomic_o_trunc); otherwise it
        // arrives as a setattr(size = 0) first.
        if flags.0 & libc_o_trunc() != 0 {
            self.data().clear();
        }
        reply.opened(FileHandle(0), self.open_flags);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let data = self.data();
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        reply.data(&data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        buf: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let Ok(start) = usize::try_from(offset) else {
            return reply.error(Errno::EFBIG);
        };
        let end = start.saturating_add(buf.len());
        if end > 1 << 20 {
            return reply.error(Errno::EFBIG);
        }
        let mut data = self.data();
        if data.len() < end {
            data.resize(end, 0);
        }
        data[start..end].copy_from_slice(buf);
        drop(data);
        reply.written(u32::try_from(buf.len()).unwrap_or(u32::MAX));
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        let skip = usize::try_from(offset).unwrap_or(usize::MAX);
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(skip) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// `O_TRUNC` on Linux (all architectures fuser supports there).
const fn libc_o_trunc() -> i32 {
    0o1000
}

fn main() {
    if let Err(e) = run() {
        eprintln!("floorfs: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let (Some(mnt), None) = (args.next(), args.next()) else {
        return Err("usage: floorfs MOUNTPOINT".into());
    };
    let mnt = PathBuf::from(mnt);
    let threads = std::env::var("FLOORFS_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get().max(2))
                .unwrap_or(2)
        });

    let mut config = Config::default();
    config.mount_options = vec![
        MountOption::FSName("floorfs".to_string()),
        MountOption::Subtype("floorfs".to_string()),
        MountOption::DefaultPermissions,
    ];
    config.n_threads = Some(threads);
    config.clone_fd = std::env::var_os("FLOORFS_NO_CLONE_FD").is_none();

    // Register the handlers before mounting, so a SIGTERM that races the mount still unmounts.
    let mut signals = Signals::new([SIGTERM, SIGINT])?;
    let direct = std::env::var_os("FLOORFS_DIRECT_IO").is_some_and(|v| v == "1");
    let fs = FloorFs {
        open_flags: if direct {
            FopenFlags::FOPEN_DIRECT_IO
        } else {
            FopenFlags::empty()
        },
        data: Mutex::new(INITIAL.to_vec()),
        uid: current_id("/proc/self/status", "Uid:"),
        gid: current_id("/proc/self/status", "Gid:"),
    };
    let session = fuser::spawn_mount(fs, &mnt, &config)?;
    println!("{}", mnt.display());
    let _ = signals.forever().next();
    session.umount_and_join()?;
    Ok(())
}

/// Real uid/gid from /proc (no libc, no unsafe); 0 if unreadable.
fn current_id(path: &str, key: &str) -> u32 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}
