//! nomadfs-fuse: the thin adapter between the kernel's FUSE requests and the engine.
//!
//! Owns: inode numbers, open-file handles (a snapshot per open, a zeroized write buffer
//! committed at close), and the errno table. Must never: decide access or store anything
//! itself — every decision is the engine's.

mod caller;
pub mod errno;
mod files;
mod fs;
mod inodes;
mod invalidate;
mod kcache;
mod logbudget;
pub mod memory;

pub use fs::NomadFs;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};
use nomadfs_core::Engine;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How to mount.
#[derive(Debug, Clone)]
pub struct MountOptions {
    /// Let other uids enter (the engine's policies decide what they see).
    pub allow_other: bool,
    /// Request-handling threads.
    pub threads: usize,
    /// Ask the kernel (via fusermount3) to unmount if the daemon dies.
    pub auto_unmount: bool,
    /// The daemon's own uid: without `allow_other` the kernel admits only it and root.
    pub owner_uid: u32,
    /// Serve static values through the kernel's page cache where every admitted caller sees
    /// the same view (`kernel_cache = true`; off: direct I/O, nothing in the page cache).
    pub kernel_cache: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        Self {
            allow_other: false,
            threads: 4,
            auto_unmount: true,
            owner_uid: 0,
            kernel_cache: false,
        }
    }
}

/// Mount `engine` at `mountpoint`; requests are served on background threads until the
/// returned session is dropped or unmounted.
pub fn mount(
    engine: Arc<Engine>,
    mountpoint: &Path,
    opts: &MountOptions,
) -> std::io::Result<BackgroundSession> {
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
    let admitted = if opts.allow_other {
        None
    } else {
        let mut uids = vec![opts.owner_uid, 0];
        uids.dedup();
        Some(uids)
    };
    if opts.kernel_cache && admitted.is_none() {
        tracing::warn!(
            "kernel_cache = true has no effect with allow_other = true: callers may see \
             different views, so values are served with direct I/O"
        );
    }
    let fs = NomadFs::new(engine.clone(), admitted, opts.kernel_cache);
    let inval = fs.invalidator();
    let told = inval.clone();
    engine.set_change_listener(Box::new(move |path| told.changed(path)));
    let session = fuser::spawn_mount(fs, mountpoint, &cfg)?;
    inval.connect(session.notifier());
    Ok(session)
}

/// Unmount and wait (bounded) for the request threads to finish.
///
/// fuser's own unmount with `AutoUnmount` only closes the socket to `fusermount3` and can
/// leave the mount in place while the threads wait for requests, so we ask for the unmount
/// ourselves: `fusermount3 -u` (refused while files are open), then a lazy one. Once the
/// kernel drops the connection the session's threads end. If they have not ended after
/// `grace`, we return anyway: the process exit closes /dev/fuse, which aborts the connection.
pub fn unmount(session: BackgroundSession, mountpoint: &Path, grace: Duration) {
    let quiet = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false)
    };
    if !session.guard.is_finished()
        && !quiet(Command::new("fusermount3").arg("-u").arg(mountpoint))
        && !quiet(
            Command::new("fusermount3")
                .arg("-u")
                .arg("-z")
                .arg(mountpoint),
        )
        && !quiet(Command::new("umount").arg("-l").arg(mountpoint))
    {
        tracing::warn!(mountpoint = %mountpoint.display(), "could not unmount");
    }
    let deadline = Instant::now() + grace;
    while !session.guard.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if session.guard.is_finished() {
        if let Err(e) = session.join() {
            tracing::warn!("filesystem thread: {e}");
        }
    } else {
        tracing::warn!("filesystem threads still busy at exit");
        // Dropping would block on the fuser thread; leak it, the process is exiting.
        std::mem::forget(session);
    }
}
