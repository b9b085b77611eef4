//! The caller's identity from the FUSE request header (uid, gid, pid as the kernel reports them).

use nomadfs_core::Caller;

pub fn from_request(uid: u32, gid: u32, pid: u32) -> Caller {
    Caller::new(uid, gid, pid)
}
