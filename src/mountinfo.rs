//! `/proc/self/mountinfo`: which nomadfs mounts exist, and which one a path is under.
//!
//! Owns: parsing mountinfo lines (octal escapes in paths included). Used by the CLI (the mount
//! it runs inside) and by the daemon (a stale or live mount at its mountpoint before mounting).

use std::path::{Path, PathBuf};

/// The filesystem type the kernel reports for our mounts (fuse + subtype `nomadfs`).
pub const FSTYPE: &str = "fuse.nomadfs";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mountpoint: PathBuf,
    pub fstype: String,
}

/// Undo mountinfo's escapes: space, tab, newline and backslash appear as `\040` etc.
fn unescape(s: &str) -> PathBuf {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let digits = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        if let (b'\\', Some(d)) = (b[i], digits) {
            let v =
                u32::from(d[0] - b'0') * 64 + u32::from(d[1] - b'0') * 8 + u32::from(d[2] - b'0');
            out.push((v & 0xff) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    PathBuf::from(std::ffi::OsString::from_vec(out))
}

/// Parse mountinfo text: one entry per well-formed line, in the kernel's order (a later entry
/// at the same mountpoint is stacked on top of an earlier one).
pub fn parse(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split(' ').collect();
            let mountpoint = fields.get(4)?;
            let sep = fields.iter().position(|f| *f == "-")?;
            let fstype = fields.get(sep + 1)?;
            Some(Mount {
                mountpoint: unescape(mountpoint),
                fstype: (*fstype).to_string(),
            })
        })
        .collect()
}

/// This process's mount table (empty if /proc is not readable).
pub fn current() -> Vec<Mount> {
    parse(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

/// The top mount at exactly `path` (already absolute and normalised), if any.
pub fn at<'a>(mounts: &'a [Mount], path: &Path) -> Option<&'a Mount> {
    mounts.iter().rev().find(|m| m.mountpoint == path)
}

/// The innermost mount `path` lies under, if it is a nomadfs mount: (mountpoint, the rest of
/// the path relative to it). `path` must be absolute and normalised (no `..`).
pub fn nomadfs_containing(mounts: &[Mount], path: &Path) -> Option<(PathBuf, PathBuf)> {
    let inner = mounts
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(&m.mountpoint))
        // The longest mountpoint wins; among equal ones the later (stacked on top).
        .max_by_key(|(i, m)| (m.mountpoint.as_os_str().len(), *i))
        .map(|(_, m)| m)?;
    if inner.fstype != FSTYPE {
        return None;
    }
    let rest = path.strip_prefix(&inner.mountpoint).ok()?.to_path_buf();
    Some((inner.mountpoint.clone(), rest))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 22 0:25 / /run rw,nosuid - tmpfs tmpfs rw
41 30 0:40 / /run/nomadfs rw,nosuid,nodev - fuse.nomadfs nomadfs rw,user_id=0,group_id=0
42 22 0:41 / /tmp/with\\040space rw - fuse.nomadfs nomadfs rw
43 41 0:42 / /run/nomadfs/secret/inner rw - tmpfs tmpfs rw
garbage line
";

    #[test]
    fn parses_and_unescapes() {
        let m = parse(SAMPLE);
        assert_eq!(m.len(), 5);
        assert_eq!(m[2].mountpoint, Path::new("/run/nomadfs"));
        assert_eq!(m[2].fstype, FSTYPE);
        assert_eq!(m[3].mountpoint, Path::new("/tmp/with space"));
        assert_eq!(
            at(&m, Path::new("/run")).map(|m| m.fstype.as_str()),
            Some("tmpfs")
        );
        assert!(at(&m, Path::new("/nope")).is_none());
    }

    #[test]
    fn finds_the_innermost_nomadfs_mount() {
        let m = parse(SAMPLE);
        assert_eq!(
            nomadfs_containing(&m, Path::new("/run/nomadfs/secret/app")),
            Some((PathBuf::from("/run/nomadfs"), PathBuf::from("secret/app")))
        );
        assert_eq!(
            nomadfs_containing(&m, Path::new("/run/nomadfs")),
            Some((PathBuf::from("/run/nomadfs"), PathBuf::new()))
        );
        // Not a prefix match on names: /run/nomadfsX is not under /run/nomadfs.
        assert_eq!(nomadfs_containing(&m, Path::new("/run/nomadfsX")), None);
        // Under a tmpfs mounted inside the nomadfs mount: not ours.
        assert_eq!(
            nomadfs_containing(&m, Path::new("/run/nomadfs/secret/inner/x")),
            None
        );
        assert_eq!(nomadfs_containing(&m, Path::new("/home")), None);
        assert_eq!(
            nomadfs_containing(&m, Path::new("/tmp/with space/a")),
            Some((PathBuf::from("/tmp/with space"), PathBuf::from("a")))
        );
    }

    #[test]
    fn unescape_never_panics_on_odd_escapes() {
        for s in ["\\", "\\0", "\\04", "a\\0400", "\\999", "\\377"] {
            let _ = unescape(s);
        }
        assert_eq!(unescape("a\\134b"), PathBuf::from("a\\b"));
    }
}
