//! The backend contract.
//!
//! Owns: `trait Backend` — the operations a mounted backend answers on paths relative to its
//! mount — and the node and listing types. Must never: know about inodes, file handles or
//! errnos (the adapter's business), or reach storage outside the `View` it was given.

use crate::caller::Caller;
use crate::error::{Error, Result};
use crate::lease::LeaseRecord;
use crate::secret::SecretBytes;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeKind {
    Dir,
    File,
}

/// Whether the kernel may keep a node's attributes (and, where a mount opts in, its content).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    /// Stored content that changes only through the daemon, which invalidates the kernel's copy
    /// on every change: it may be cached where every caller sees the same view.
    Allowed,
    /// Generated at open (credentials, status, control files): never cached, size not final.
    Never,
}

/// How the writes of one open of a node apply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Buffered and committed whole at close (values, documents): a document cut at a write(2)
    /// boundary never goes live.
    Buffered,
    /// Each write(2) acts at once (`sys/seal`, a lease's renewal): a control file.
    EachWrite,
    /// An exchange file (`transit/encrypt/NAME`): opened read-write, the bytes written are the
    /// input of `Backend::exchange` and its output is what reads of the same open see.
    Exchange,
    /// An exchange file when opened read-write, otherwise buffered (written whole at close,
    /// read back by a later open): `sys/audit-hash`.
    ExchangeWhenReadWrite,
}

impl Writes {
    /// Whether an open with these access modes is an exchange.
    pub fn exchanges(self, read: bool, write: bool) -> bool {
        match self {
            Writes::Exchange => true,
            Writes::ExchangeWhenReadWrite => read && write,
            Writes::Buffered | Writes::EachWrite => false,
        }
    }
    /// Whether some open of the node is an exchange.
    pub fn may_exchange(self) -> bool {
        matches!(self, Writes::Exchange | Writes::ExchangeWhenReadWrite)
    }
}

/// What `stat` knows of a path, without side effects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Node {
    pub kind: NodeKind,
    /// True size for stored values and generated text; 0 for other generated content.
    pub size: u64,
    /// Permission bits the path supports (owner triplet), before policy: 0o600, 0o400, 0o200, 0o700.
    pub mode: u16,
    /// Whether the kernel may keep it.
    pub cache: Cache,
    /// How writes to it apply.
    pub writes: Writes,
}

impl Node {
    pub const fn dir() -> Self {
        Self {
            kind: NodeKind::Dir,
            size: 0,
            mode: 0o700,
            cache: Cache::Allowed,
            writes: Writes::Buffered,
        }
    }
    pub const fn file(size: u64) -> Self {
        Self {
            kind: NodeKind::File,
            size,
            mode: 0o600,
            cache: Cache::Allowed,
            writes: Writes::Buffered,
        }
    }
    /// Generated on read, e.g. `sys/leases/ID`, `creds/NAME`; a write acts at once.
    pub const fn generated(mode: u16) -> Self {
        Self {
            kind: NodeKind::File,
            size: 0,
            mode,
            cache: Cache::Never,
            writes: Writes::EachWrite,
        }
    }
    /// Generated text whose length is known at `stat` (help, `sys/health`): it stats its
    /// true size, so `[ -s FILE ]` and tools that read up to the size see it whole.
    pub const fn generated_text(mode: u16, len: usize) -> Self {
        let mut n = Self::generated(mode);
        n.size = len as u64;
        n
    }
    /// Control file that only accepts writes, each acting at once (`sys/seal`).
    pub const fn write_only() -> Self {
        Self::generated(0o200)
    }
    /// A write-only document, buffered and applied whole at close (`config/root`,
    /// `transit/keys/NAME/config`): never read back.
    pub const fn write_only_document() -> Self {
        let mut n = Self::file(0);
        n.mode = 0o200;
        n
    }
    /// An exchange file: write the input, read the output in the same open.
    pub const fn exchange() -> Self {
        let mut n = Self::generated(0o600);
        n.writes = Writes::Exchange;
        n
    }
    /// A file that is an exchange file when opened read-write (write the input, read the
    /// output in the same open) and otherwise a buffered one (written whole at close, read
    /// back by a later open): `sys/audit-hash`. Nothing is generated at open.
    pub const fn exchange_or_buffered() -> Self {
        let mut n = Self::file(0);
        n.writes = Writes::ExchangeWhenReadWrite;
        n
    }
    pub fn is_dir(&self) -> bool {
        self.kind == NodeKind::Dir
    }
    /// Content generated at open: never cached, never truncated, never patched.
    pub fn is_generated(&self) -> bool {
        self.cache == Cache::Never
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub name: String,
    pub kind: NodeKind,
}

impl DirEntry {
    pub fn file(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: NodeKind::File,
        }
    }
    pub fn dir(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            kind: NodeKind::Dir,
        }
    }
}

/// Per-request context handed to a backend.
pub struct Ctx<'a> {
    pub caller: &'a Caller,
    /// The mount path the request came through ("aws"), for lease ids.
    pub mount: &'a str,
    /// The bound on the caller's live leases (`None`: unbounded, e.g. an admin).
    pub lease_limit: Option<u64>,
    /// The lease a `read` minted (set by the backend): the answer carries it, so nothing has
    /// to find it in the bytes.
    pub issued: std::sync::OnceLock<String>,
}

impl Ctx<'_> {
    /// Say that this request's answer is a credential held under lease `id`.
    pub fn issued(&self, id: &str) {
        let _ = self.issued.set(id.to_string());
    }
}

fn unsupported(op: &str, path: &str) -> Error {
    Error::not_permitted(format!("{op} is not supported on {path:?}"))
}

/// A mounted backend. Paths are relative to the mount: "" is the mount's root, segments are
/// joined with '/', never empty, never "." or "..".
pub trait Backend: Send + Sync {
    /// The backend type ("generic", "aws", ...).
    fn kind(&self) -> &'static str;
    /// Help text for `MOUNT/.help`.
    fn help(&self) -> String;
    /// A privileged (control-plane) backend: every operation on it needs `sudo` on its path,
    /// `sudo` grants everything there, and without it its names do not exist for the caller
    /// (no probing). Its folders move nothing a caller could read, so a rename is decided on
    /// its two paths alone. Default: an ordinary backend, decided capability by capability.
    fn privileged(&self) -> bool {
        false
    }
    /// Paths anyone who can enter the mount may stat, list and read, whatever the policy
    /// (`sys/health`). `.help` is open to all in every mount. Default: none.
    fn open_to_all(&self, path: &str) -> bool {
        let _ = path;
        false
    }
    /// The lease a request on `path` acts on (`sys/leases/ID`), named in its audit line.
    fn lease_named<'p>(&self, path: &'p str) -> Option<&'p str> {
        let _ = path;
        None
    }
    /// Describe a path. Must have no side effects (lookups and `ls -l` call it).
    fn stat(&self, ctx: &Ctx<'_>, path: &str) -> Result<Node>;
    fn list(&self, ctx: &Ctx<'_>, path: &str) -> Result<Vec<DirEntry>>;
    /// The content a new open sees (one snapshot per open). A read that mints a credential
    /// (see `mints`) names its lease with `ctx.issued(id)`.
    fn read(&self, ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes>;
    /// Whether a `read` of `path` makes something upstream (a credential under a lease): it is
    /// then a change like a write, announced in the audit log before it happens.
    fn mints(&self, path: &str) -> bool {
        let _ = path;
        false
    }
    /// Commit a whole new content (called at close).
    fn write(&self, ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        let _ = (ctx, data);
        Err(unsupported("write", path))
    }
    /// Check the content buffered so far for `path` (an open for writing, committed whole at
    /// close by `write`): refuse what can no longer become valid, so the write(2) that carries
    /// the bad bytes fails (shells ignore the result of close). Called on every write(2) with
    /// the whole buffer so far: return at once for paths with nothing to check, and bound the
    /// work (see `backends::partial`). Nothing is stored here. Default: nothing to check.
    fn check_partial(&self, path: &str, data: &[u8]) -> Result<()> {
        let _ = (path, data);
        Ok(())
    }
    /// Check that `path` may be written, and say how its writes will apply: called when a file
    /// is created and when one is opened for writing, so refusals come at open rather than at
    /// close. Nothing is stored here.
    fn create(&self, ctx: &Ctx<'_>, path: &str) -> Result<Writes> {
        let _ = ctx;
        Err(unsupported("create", path))
    }
    fn delete(&self, ctx: &Ctx<'_>, path: &str) -> Result<()> {
        let _ = ctx;
        Err(unsupported("delete", path))
    }
    fn mkdir(&self, ctx: &Ctx<'_>, path: &str) -> Result<()> {
        let _ = ctx;
        Err(unsupported("mkdir", path))
    }
    fn rmdir(&self, ctx: &Ctx<'_>, path: &str) -> Result<()> {
        let _ = ctx;
        Err(unsupported("rmdir", path))
    }
    fn rename(&self, ctx: &Ctx<'_>, from: &str, to: &str) -> Result<()> {
        let _ = (ctx, to);
        Err(unsupported("rename", from))
    }
    /// `touch` (times set to now). Default: nothing to do (times are not kept).
    fn touch(&self, ctx: &Ctx<'_>, path: &str) -> Result<()> {
        let _ = (ctx, path);
        Ok(())
    }
    /// Run the exchange of an exchange node (`Node::exchange`): `input` is every byte written in
    /// one open, the answer is what that open reads back. Called once per input.
    fn exchange(&self, ctx: &Ctx<'_>, path: &str, input: SecretBytes) -> Result<SecretBytes> {
        let _ = (ctx, input);
        Err(unsupported("exchange", path))
    }
    /// Revoke a secret this backend issued under `lease` (expiry, `rm` of the lease file,
    /// unmount). Must be idempotent: a retry after a partial failure or a crash succeeds.
    fn revoke(&self, lease: &LeaseRecord) -> Result<()> {
        Err(unsupported("revoke", &lease.path))
    }
    /// Extend upstream a secret whose lease is being renewed to `lease.expires_ms` (called
    /// before the new expiry is stored; an error leaves the lease as it was). Default: nothing
    /// upstream expires by itself, so there is nothing to extend.
    fn renew(&self, lease: &LeaseRecord) -> Result<()> {
        let _ = lease;
        Ok(())
    }
    /// Roll back upstream side effects whose intent was logged but never completed (called at
    /// unseal, after the leases are restored).
    fn recover(&self) -> Result<()> {
        Ok(())
    }
}
