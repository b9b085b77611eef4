//! Before mounting: make the mountpoint usable, whatever a previous daemon left there.
//!
//! Owns: clearing a stale mount (a dead nomadfs's mount answers ENOTCONN until unmounted),
//! refusing a mountpoint a live nomadfs serves (naming its pid), and the pid file.
//!
//! How the pid is found: a file store at DIR gets `DIR.pid` beside its folder (pid and
//! mountpoint, written once mounted, removed at a clean exit; outside the store's folder, which
//! holds only the database). When that names a live `nomadfs` process
//! serving this mountpoint, that is the pid. Otherwise (etcd/memory store, another store, a
//! stale file) every process named `nomadfs` that holds `/dev/fuse` open is a candidate; the
//! kernel does not tell which connection a /dev/fuse descriptor belongs to, so all of them are
//! named. An ENOTCONN mount needs no pid: the connection is aborted only when the last
//! descriptor of its daemon is closed, i.e. that daemon is gone.

use crate::mountinfo;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `mnt` made absolute without touching it (canonicalize would stat the dead mount itself).
pub fn absolute(mnt: &Path) -> PathBuf {
    let abs = if mnt.is_absolute() {
        mnt.to_path_buf()
    } else {
        std::env::current_dir().unwrap_or_default().join(mnt)
    };
    match (abs.parent(), abs.file_name()) {
        (Some(parent), Some(name)) => parent
            .canonicalize()
            .map(|p| p.join(name))
            .unwrap_or(abs.clone()),
        _ => abs,
    }
}

/// Make `mnt` ready for a new mount: create it if missing, lazily unmount a stale nomadfs
/// mount on it, refuse a live one.
pub fn prepare(mnt: &Path, pid_file: Option<&Path>) -> Result<(), String> {
    for _ in 0..20 {
        match std::fs::metadata(mnt) {
            Ok(meta) => {
                let mounts = mountinfo::current();
                if let Some(m) = mountinfo::at(&mounts, mnt) {
                    if m.fstype == mountinfo::FSTYPE {
                        return Err(live_error(mnt, pid_file));
                    }
                }
                if !meta.is_dir() {
                    return Err(format!("mountpoint {} is not a directory", mnt.display()));
                }
                return Ok(());
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                let mounts = mountinfo::current();
                match mountinfo::at(&mounts, mnt).map(|m| m.fstype.as_str()) {
                    Some(mountinfo::FSTYPE) => {}
                    // Unmounted between the stat and the read of mountinfo: look again.
                    None => continue,
                    Some(other) => {
                        return Err(format!(
                            "mountpoint {}: {e}; it is a dead {other} mount, not a nomadfs one: unmount it (fusermount3 -u -z {})",
                            mnt.display(),
                            mnt.display()
                        ))
                    }
                }
                // The dead daemon's auto-unmount helper (fusermount3) may be about to unmount
                // it: let it finish first, or its unmount could land on our new mount.
                wait_for_helpers(mnt, Duration::from_secs(3));
                match std::fs::metadata(mnt) {
                    Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
                        let how = lazy_unmount(mnt)?;
                        tracing::warn!(
                            mountpoint = %mnt.display(),
                            "stale mount left by a dead nomadfs (Transport endpoint is not connected): lazily unmounted with {how}"
                        );
                    }
                    _ => tracing::info!(
                        mountpoint = %mnt.display(),
                        "stale mount left by a dead nomadfs was cleared by its auto-unmount helper"
                    ),
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return std::fs::create_dir_all(mnt)
                    .map_err(|e| format!("cannot create mountpoint {}: {e}", mnt.display()));
            }
            Err(e) => return Err(format!("mountpoint {}: {e}", mnt.display())),
        }
    }
    Err(format!(
        "mountpoint {}: still a dead mount after 20 attempts to clear it",
        mnt.display()
    ))
}

/// After the session ended on its own: lazily unmount our mount if it is still there.
pub fn unmount_if_ours(mnt: &Path) {
    let mounts = mountinfo::current();
    if mountinfo::at(&mounts, mnt).is_some_and(|m| m.fstype == mountinfo::FSTYPE) {
        if let Err(e) = lazy_unmount(mnt) {
            // The session's own unmount may have won the race: only a mount still there counts.
            let now = mountinfo::current();
            if mountinfo::at(&now, mnt).is_some_and(|m| m.fstype == mountinfo::FSTYPE) {
                tracing::warn!("{e}");
            }
        }
    }
}

/// `fusermount3 -u -z`, then `umount -l`; which one worked.
fn lazy_unmount(mnt: &Path) -> Result<&'static str, String> {
    use std::process::{Command, Stdio};
    let run = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
    };
    let fm = run(Command::new("fusermount3").arg("-u").arg("-z").arg(mnt));
    if matches!(&fm, Ok(o) if o.status.success()) {
        return Ok("fusermount3 -u -z");
    }
    let um = run(Command::new("umount").arg("-l").arg(mnt));
    if matches!(&um, Ok(o) if o.status.success()) {
        return Ok("umount -l");
    }
    let why = |r: &std::io::Result<std::process::Output>| match r {
        Ok(o) => String::from_utf8_lossy(&o.stderr).trim().to_string(),
        Err(e) => e.to_string(),
    };
    Err(format!(
        "mountpoint {} is a stale nomadfs mount and could not be unmounted: fusermount3 -u -z: {}; umount -l: {}",
        mnt.display(),
        why(&fm),
        why(&um)
    ))
}

fn comm(pid: u32) -> Option<String> {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .map(|s| s.trim_end().to_string())
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// fusermount3 processes whose arguments name `mnt` (a dead daemon's auto-unmount helper).
fn helpers(mnt: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let want = mnt.as_os_str().as_bytes();
    pids()
        .into_iter()
        .filter(|p| comm(*p).as_deref() == Some("fusermount3"))
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| c.split(|b| *b == 0).any(|a| a == want))
                .unwrap_or(false)
        })
        .collect()
}

fn wait_for_helpers(mnt: &Path, limit: Duration) {
    let deadline = Instant::now() + limit;
    while !helpers(mnt).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn holds_dev_fuse(pid: u32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .any(|e| std::fs::read_link(e.path()).is_ok_and(|t| t == Path::new("/dev/fuse")))
        })
        .unwrap_or(false)
}

/// The pid in `pid_file` if it names a live nomadfs serving `mnt`.
fn pid_from_file(pid_file: &Path, mnt: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let mut lines = text.lines();
    let pid: u32 = lines.next()?.trim().parse().ok()?;
    let at = lines.next().map(PathBuf::from);
    (pid != std::process::id()
        && comm(pid).as_deref() == Some("nomadfs")
        && at.as_deref().is_none_or(|a| a == mnt))
    .then_some(pid)
}

fn live_error(mnt: &Path, pid_file: Option<&Path>) -> String {
    let who = match pid_file.and_then(|f| pid_from_file(f, mnt)) {
        Some(pid) => format!("pid {pid}; stop it first: kill -TERM {pid}"),
        None => {
            let me = std::process::id();
            let c: Vec<String> = pids()
                .into_iter()
                .filter(|p| {
                    *p != me && comm(*p).as_deref() == Some("nomadfs") && holds_dev_fuse(*p)
                })
                .map(|p| p.to_string())
                .collect();
            match c.as_slice() {
                [] => "pid unknown".to_string(),
                [one] => format!("pid {one}; stop it first: kill -TERM {one}"),
                many => format!(
                    "one of the nomadfs processes holding /dev/fuse: pids {}",
                    many.join(", ")
                ),
            }
        }
    };
    format!(
        "mountpoint {} is already served by a running nomadfs ({who})",
        mnt.display()
    )
}

/// Who holds the store, for a "store in use" error: " (nomadfs pid N, mounted at M)".
pub fn store_holder(pid_file: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(pid_file) else {
        return String::new();
    };
    let mut lines = text.lines();
    let pid: Option<u32> = lines.next().and_then(|l| l.trim().parse().ok());
    match pid {
        Some(pid) if comm(pid).as_deref() == Some("nomadfs") => format!(
            " (by nomadfs pid {pid}, mounted at {})",
            lines.next().unwrap_or("?")
        ),
        _ => String::new(),
    }
}

/// The pid file of a file store at `store`: `/var/lib/nomadfs` → `/var/lib/nomadfs.pid`.
pub fn pid_file_for(store: &Path) -> Option<PathBuf> {
    let abs = absolute(store);
    let name = abs.file_name()?;
    let mut pid_name = name.to_os_string();
    pid_name.push(".pid");
    Some(abs.with_file_name(pid_name))
}

/// Written once mounted; removed by `PidFile::drop` at a clean exit (if still ours).
pub struct PidFile(PathBuf);

impl PidFile {
    pub fn write(path: &Path, mnt: &Path) -> Option<Self> {
        let body = format!("{}\n{}\n", std::process::id(), mnt.display());
        match std::fs::write(path, body) {
            Ok(()) => Some(Self(path.to_path_buf())),
            Err(e) => {
                tracing::warn!("cannot write pid file {}: {e}", path.display());
                None
            }
        }
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let mine = std::fs::read_to_string(&self.0)
            .ok()
            .and_then(|t| t.lines().next()?.trim().parse::<u32>().ok())
            == Some(std::process::id());
        if mine {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_sits_beside_the_store() {
        assert_eq!(
            pid_file_for(Path::new("/var/lib/nomadfs")),
            Some(PathBuf::from("/var/lib/nomadfs.pid"))
        );
        assert_eq!(
            pid_file_for(Path::new("/nonexistent-x/store/")),
            Some(PathBuf::from("/nonexistent-x/store.pid"))
        );
        assert_eq!(pid_file_for(Path::new("/")), None);
    }

    #[test]
    fn a_plain_directory_is_ready_and_a_missing_one_is_made() {
        let d = tempfile::tempdir().expect("tmp");
        prepare(d.path(), None).expect("plain dir");
        let m = d.path().join("a/b");
        prepare(&m, None).expect("made");
        assert!(m.is_dir());
        let f = d.path().join("file");
        std::fs::write(&f, "x").expect("file");
        assert!(prepare(&f, None)
            .expect_err("file")
            .contains("not a directory"));
    }
}
