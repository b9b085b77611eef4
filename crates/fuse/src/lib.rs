//! nomadfs-fuse: the thin adapter between the kernel's FUSE requests and the engine.
//!
//! Owns: inode numbers, open-file handles (a snapshot per open, a zeroized write buffer
//! committed at close), and the errno table. Must never: decide access or store anything
//! itself — every decision is the engine's.

mod caller;
pub mod errno;
mod fs;
mod handles;
mod inodes;

pub use fs::NomadFs;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use nomadfs_core::Engine;
use std::path::Path;
use std::sync::Arc;

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other uids enter (the engine's policies decide what they see).
    pub allow_other: bool,
    /// Request-handling threads.
    pub threads: usize,
    /// Ask the kernel (via fusermount3) to unmount if the daemon dies.
    pub auto_unmount: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            threads: 4,
            auto_unmount: true,
        }
    }
}

/// Mount `engine` at `mountpoint`; requests are served on background threads until the
/// returned session is dropped or unmounted.
pub fn mount(engine: Arc<Engine>, mountpoint: &Path, opts: &MountOptions) -> std::io::Result<BackgroundSession> {
    let mut cfg = Config::default();
    cfg.mount_options = vec![
        MountOption::FSName("nomadfs".into()),
        MountOption::Subtype("nomadfs".into()),
        MountOption::NoDev,
        MountOption::NoSuid,
        MountOption::NoExec,
        MountOption::NoAtime,
    ];
    if opts.auto_unmount {
        cfg.mount_options.push(MountOption::AutoUnmount);
    }
    // Without `default_permissions`: the engine decides access, not the kernel's mode check.
    cfg.acl = if opts.allow_other {
        SessionACL::All
    } else {
        SessionACL::RootAndOwner
    };
    cfg.n_threads = Some(opts.threads.max(1));
    cfg.clone_fd = opts.threads > 1;
    fuser::spawn_mount(NomadFs::new(engine), mountpoint, &cfg)
}
