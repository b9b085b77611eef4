//! nomadfs-core: the engine of nomadfs. It knows nothing of FUSE or the kernel: backends are
//! routed by path patterns and answer stat/read/write/list/delete/mkdir/rmdir/rename for a
//! `Caller`; the adapter turns kernel requests into these calls and `ErrorKind`s into errnos.

pub mod audit;
pub mod backend;
pub mod backends;
pub mod barrier;
mod blocking;
pub mod caller;
pub mod cluster;
pub mod engine;
pub mod error;
pub mod gate;
pub mod lease;
pub mod limits;
pub mod mounts;
pub mod policy;
pub mod reasons;
pub mod refusals;
pub mod route;
pub mod secret;
pub mod storage;
pub mod tls;

pub use backend::{Backend, Cache, DirEntry, Node, NodeKind, Writes};
pub use caller::Caller;
pub use engine::{Engine, EngineConfig};
pub use error::{Error, ErrorKind, Result};
pub use secret::SecretBytes;

#[cfg(test)]
mod model_tests;
