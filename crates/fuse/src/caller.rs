//! The caller's identity: uid, gid and pid as the kernel reports them in the FUSE request
//! header, plus process facts read from /proc: supplementary groups, executable and cgroup.
//!
//! uid/gid/pid come from the kernel and cannot be forged by the caller. The /proc facts are
//! read at request time and cached per pid for one second (a pid can be reused, and a process
//! can exec another binary; SECURITY.md says how far they can be trusted). A caller whose
//! /proc entry cannot be read gets no supplementary groups, no exe and no cgroup.

use nomadfs_core::Caller;
use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

const TTL: Duration = Duration::from_secs(1);
const MAX_ENTRIES: usize = 4096;

#[derive(Clone)]
struct Facts {
    at: Instant,
    uid: u32,
    tgid: u32,
    groups: Vec<u32>,
    exe: Option<String>,
    cgroup: Option<String>,
}

fn cache() -> &'static Mutex<HashMap<u32, Facts>> {
    static CACHE: OnceLock<Mutex<HashMap<u32, Facts>>> = OnceLock::new();
    CACHE.get_or_init(|| Mutex::new(HashMap::new()))
}

fn read_facts(pid: u32, uid: u32) -> Facts {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let groups = status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .map(|g| {
            g.split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    let exe = std::fs::read_link(format!("/proc/{pid}/exe"))
        .ok()
        .map(|p| p.to_string_lossy().into_owned());
    // cgroup v2: a single "0::/path" line.
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("0::"))
                .map(str::to_string)
        });
    let tgid = status
        .lines()
        .find_map(|l| l.strip_prefix("Tgid:"))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or(pid);
    Facts {
        at: Instant::now(),
        uid,
        tgid,
        groups,
        exe,
        cgroup,
    }
}

/// The process (thread group) of the thread `pid` the kernel named in a request.
pub fn tgid(uid: u32, pid: u32) -> u32 {
    if pid == 0 {
        return 0;
    }
    facts(uid, pid).tgid
}

fn facts(uid: u32, pid: u32) -> Facts {
    let cached = cache()
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .get(&pid)
        .filter(|f| f.at.elapsed() < TTL && f.uid == uid)
        .cloned();
    match cached {
        Some(f) => f,
        None => {
            let f = read_facts(pid, uid);
            let mut m = cache().lock().unwrap_or_else(|p| p.into_inner());
            if m.len() >= MAX_ENTRIES {
                m.retain(|_, f| f.at.elapsed() < TTL);
                if m.len() >= MAX_ENTRIES {
                    m.clear();
                }
            }
            m.insert(pid, f.clone());
            f
        }
    }
}

pub fn from_request(uid: u32, gid: u32, pid: u32) -> Caller {
    let mut c = Caller::new(uid, gid, pid);
    if pid == 0 {
        return c;
    }
    let facts = facts(uid, pid);
    c.groups = facts.groups;
    c.exe = facts.exe;
    c.cgroup = facts.cgroup;
    c
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_process_facts() {
        let me = std::process::id();
        let c = from_request(0, 0, me);
        assert!(c.exe.is_some_and(|e| e.contains("nomadfs_fuse")));
        assert!(c.cgroup.is_some());
        let none = from_request(0, 0, 0);
        assert!(none.exe.is_none() && none.groups.is_empty());
    }
}
