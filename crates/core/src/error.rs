//! The one error type of the core.
//!
//! Owns: `Error { kind, message }` and the list of kinds. Each module may have its own
//! `thiserror` enum; they all convert into this type. The FUSE adapter maps `ErrorKind` to an
//! errno in exactly one exhaustive `match`.
//!
//! Must never: carry a secret value in a message. Messages name paths and reasons only.

use std::fmt;

/// What went wrong, at the granularity a caller can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// The path does not exist.
    NotFound,
    /// Policy, mode or seal state forbids this caller this operation.
    PermissionDenied,
    /// The path exists but does not support this operation (e.g. `mkdir` under `creds/`).
    NotPermitted,
    /// Malformed input: a bad name, bad JSON, a bad config value.
    InvalidInput,
    /// A path component longer than 255 bytes.
    NameTooLong,
    /// The target exists already (mount path in use, `mkdir` of an existing folder).
    AlreadyExists,
    /// The value is larger than the configured limit.
    TooLarge,
    /// A folder that still holds entries.
    NotEmpty,
    /// A file where a folder was expected.
    NotADirectory,
    /// A folder where a file was expected.
    IsADirectory,
    /// Rename across mounts.
    CrossMount,
    /// The barrier is sealed.
    Sealed,
    /// The resource is in use (e.g. a mount whose leases could not be revoked).
    Busy,
    /// Storage, upstream service or audit failure.
    Io,
    /// Stored data failed authentication (tampering, corruption, wrong key).
    Integrity,
    /// A per-uid bound on open files was reached.
    TooManyOpen,
    /// A per-uid bound on buffered bytes was reached.
    NoSpace,
    /// A per-uid quota (outstanding leases) was reached.
    Quota,
    /// A per-uid request rate was exceeded: retry later.
    TryAgain,
}

impl ErrorKind {
    /// The errno's name as the audit log writes it. The adapter's `errno.rs` is the one table
    /// that maps kinds to errno numbers; its tests check that these names agree with it.
    pub fn errno_name(self) -> &'static str {
        match self {
            ErrorKind::NotFound => "ENOENT",
            ErrorKind::PermissionDenied | ErrorKind::Sealed => "EACCES",
            ErrorKind::NotPermitted => "EPERM",
            ErrorKind::InvalidInput => "EINVAL",
            ErrorKind::NameTooLong => "ENAMETOOLONG",
            ErrorKind::AlreadyExists => "EEXIST",
            ErrorKind::TooLarge => "EFBIG",
            ErrorKind::NotEmpty => "ENOTEMPTY",
            ErrorKind::NotADirectory => "ENOTDIR",
            ErrorKind::IsADirectory => "EISDIR",
            ErrorKind::CrossMount => "EXDEV",
            ErrorKind::Busy => "EBUSY",
            ErrorKind::Io | ErrorKind::Integrity => "EIO",
            ErrorKind::TooManyOpen => "EMFILE",
            ErrorKind::NoSpace => "ENOSPC",
            ErrorKind::Quota => "EDQUOT",
            ErrorKind::TryAgain => "EAGAIN",
        }
    }
}

/// The core's error: a kind for the errno, a message for the log and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error {
    pub kind: ErrorKind,
    pub message: String,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }
    pub fn not_found(path: &str) -> Self {
        Self::new(ErrorKind::NotFound, format!("{path}: no such entry"))
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::InvalidInput, message)
    }
    pub fn denied(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::PermissionDenied, message)
    }
    pub fn not_permitted(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotPermitted, message)
    }
    pub fn io(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::Io, message)
    }
    pub fn sealed() -> Self {
        Self::new(ErrorKind::Sealed, "the store is sealed")
    }
    /// Prefix the message with more context, keeping the kind.
    pub fn context(mut self, what: impl fmt::Display) -> Self {
        self.message = format!("{what}: {}", self.message);
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.message)
    }
}

impl std::error::Error for Error {}
