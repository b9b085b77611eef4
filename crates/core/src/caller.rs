//! Who is asking.
//!
//! Owns: `Caller`, the identity the kernel reports for a request (uid, gid, pid) plus the facts
//! the adapter resolves about the process. Must never: be built from anything the caller
//! writes (no bearer tokens); the adapter fills it from the FUSE request header.

/// The identity of the process behind one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
    /// Supplementary groups, read at request time (empty when unknown).
    pub groups: Vec<u32>,
    /// Executable path, for policy and audit context (None when unknown).
    pub exe: Option<String>,
    /// cgroup path (`/system.slice/x.service`, a container's cgroup), for policy and audit
    /// (None when unknown).
    pub cgroup: Option<String>,
}

impl Caller {
    pub fn new(uid: u32, gid: u32, pid: u32) -> Self {
        Self {
            uid,
            gid,
            pid,
            groups: Vec::new(),
            exe: None,
            cgroup: None,
        }
    }
    /// The daemon itself (start-up work, the scheduler).
    pub fn internal() -> Self {
        Self::new(0, 0, 0)
    }
}
