//! The file semantics of the mount, without FUSE: what a lookup, stat, open, read, write,
//! close, truncate, rename or unlink means for nodes the engine serves.
//!
//! Owns: the inode table, open handles (`handles.rs`: a kind per open — read snapshot,
//! buffered write, immediate control file, exchange), files created and not yet stored
//! (pending creates: found by their creator's path, listed by nobody, stored at close), the
//! commit rules at flush and release, truncate, the per-uid bounds of open files and buffered
//! bytes, and exchange files (`exchange.rs`). Every decision of access is the engine's.
//! Must never: import `fuser` (the adapter in `fs.rs` turns these calls into replies), or keep
//! a value past its handle (buffers zeroize on drop).
//!
//! `namespace.rs` has the operations on names (lookup, stat, setattr, mkdir, unlink, rmdir,
//! rename, access); `open.rs` those on open files; `dirs.rs` open folders.

pub mod exchange;
pub mod handles;

mod dirs;
mod namespace;
mod open;
#[cfg(test)]
mod tests;

use crate::inodes::Inodes;
use handles::{Bounds, Handle, Handles, Kind};
use nomadfs_core::engine::Op;
use nomadfs_core::{Cache, Caller, Engine, Error, ErrorKind, Node, NodeKind, SecretBytes};
use std::ffi::OsStr;
use std::sync::Arc;

pub use namespace::SetAttr;

/// Why a request was not done.
#[derive(Debug)]
pub enum Fail {
    /// No such open file or folder (EBADF), answered without a log line.
    BadHandle,
    /// Refused or failed: logged with the request's own path.
    Refused(Error),
    /// Refused or failed: logged with this path (an open file's).
    At(String, Error),
    /// A release that failed: logged as the opener (the request names no caller).
    Released {
        uid: u32,
        path: String,
        error: Error,
    },
}

impl From<Error> for Fail {
    fn from(e: Error) -> Self {
        Fail::Refused(e)
    }
}

pub type Res<T> = Result<T, Fail>;

/// What `open` and `create` answer.
#[derive(Debug, Clone, Copy)]
pub struct Opened {
    pub fh: u64,
    /// Nothing to commit at close: the kernel may skip the FLUSH round trip.
    pub no_flush: bool,
}

pub struct Files {
    engine: Arc<Engine>,
    inodes: Arc<Inodes>,
    handles: Handles,
    dirs: dirs::Dirs,
    /// The uids the kernel lets in (`None`: any uid).
    admitted: Option<Vec<u32>>,
    /// Told the inode of each value stored here (the adapter drops the kernel's attributes).
    stored: Box<dyn Fn(u64) + Send + Sync>,
}

pub(crate) fn name_str(name: &OsStr) -> Result<&str, Error> {
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

impl Files {
    /// `admitted`: the uids the kernel lets in (`None` when any uid may enter).
    pub fn new(engine: Arc<Engine>, inodes: Arc<Inodes>, admitted: Option<Vec<u32>>) -> Self {
        Self {
            engine,
            inodes,
            handles: Handles::default(),
            dirs: Default::default(),
            admitted,
            stored: Box::new(|_| {}),
        }
    }

    /// Be told the inode of each value stored through an open file or a truncate.
    pub fn on_stored(&mut self, f: Box<dyn Fn(u64) + Send + Sync>) {
        self.stored = f;
    }

    fn path(&self, ino: u64) -> Result<String, Error> {
        self.inodes.path(ino).ok_or_else(|| {
            Error::new(
                ErrorKind::NotFound,
                "a path no longer known (its inode was forgotten)",
            )
        })
    }

    /// May the kernel cache this node's entry and attributes? Only when every uid the kernel
    /// admits is an admin (one view for all), for static nodes, and not while the file is open
    /// for writing (its writer sees its own pending size, everyone else the stored one).
    pub fn cacheable(&self, ino: u64, node: &Node) -> bool {
        match &self.admitted {
            Some(uids) => {
                node.cache == Cache::Allowed
                    && self.engine.all_admins(uids)
                    && !self.handles.has_writer(ino)
            }
            None => false,
        }
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

    /// Audit a refusal decided here rather than by the engine (per-uid bounds, oversized or
    /// invalid writes); the engine audits everything else.
    fn audit_here(&self, c: &Caller, op: &'static str, path: &str, e: &Error) {
        if op == "write" || matches!(e.kind, ErrorKind::TooManyOpen | ErrorKind::NoSpace) {
            self.engine.record_refusal(c, op, path, e);
        }
    }

    /// The node an open handle stands for, when its path has no stored node (a control file
    /// or file created and not yet stored, or one unlinked while open): `fstat` on an open
    /// file always answers.
    fn node_of_handle(&self, ino: u64, fh: Option<u64>) -> Option<Node> {
        let h = self.handles.get(fh?)?;
        let h = h.lock().unwrap_or_else(|p| p.into_inner());
        if h.ino != ino {
            return None;
        }
        Some(match h.kind {
            Kind::Exchange(_) => Node::exchange(),
            Kind::Immediate { .. } => Node::write_only(),
            _ => Node::file(h.readable().map_or(0, |d| d.len() as u64)),
        })
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

    /// Store a value for `ino` now (truncate by path).
    fn store(&self, ino: u64, c: &Caller, path: &str, v: SecretBytes) -> Result<(), Error> {
        self.engine.write(c, path, v)?;
        self.handles.stored_now(ino);
        self.told_stored(ino);
        Ok(())
    }

    /// A value was stored for `ino`: tell the adapter, when the kernel may have cached its
    /// attributes (only a mount that admits a fixed set of uids gives them a TTL).
    fn told_stored(&self, ino: u64) {
        if self.admitted.is_some() {
            (self.stored)(ino);
        }
    }

    /// Store the handle's buffer if it was written (or, at release, created/truncated —
    /// unless a value was stored for the file since this open: the later store wins).
    fn commit(&self, h: &mut Handle, c: &Caller, releasing: bool) -> Result<(), Error> {
        let (ino, since, orphaned) = (h.ino, h.opened_seq, h.orphaned);
        let path = h.path.clone();
        if let Some(w) = h.write_buf() {
            if w.poisoned || orphaned {
                return Ok(());
            }
            let empty_due = releasing && w.pending_empty && !self.handles.stored_since(ino, since);
            if w.dirty || empty_due {
                let res = self.engine.write(c, &path, w.data.duplicate());
                w.dirty = false;
                w.pending_empty = false;
                res?;
                self.handles.stored_now(ino);
                self.told_stored(ino);
            }
        }
        Ok(())
    }
}
