//! Each uid's own recent refusals, with their reasons: what `cat sys/self/errors` shows, so a
//! person at a shell can read *why* (a bare errno is not a reason).
//!
//! Owns: a small ring of the latest refusals per uid (time, operation, path, errno, reason).
//! Must never: show one uid's refusals to another, hold a value (reasons name paths and causes
//! only, like every `Error` message), or grow without bound (a fixed ring per uid, a fixed
//! number of uids, the least recently refused forgotten first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

/// Refusals kept per uid.
const PER_UID: usize = 32;
/// Uids kept at once.
const MAX_UIDS: usize = 1024;
/// Longest reason kept (bytes; cut at a character boundary).
const MAX_REASON: usize = 512;

struct Entry {
    time: SystemTime,
    op: &'static str,
    path: String,
    errno: &'static str,
    reason: String,
}

/// One uid's refusals (newest last) and the tick of its latest.
type Ring = (VecDeque<Entry>, u64);

#[derive(Default)]
pub struct Reasons {
    /// uid → its ring; and a counter that orders the rings' latest refusals.
    by_uid: Mutex<(HashMap<u32, Ring>, u64)>,
}

fn cut(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

impl Reasons {
    pub fn record(
        &self,
        uid: u32,
        op: &'static str,
        path: &str,
        errno: &'static str,
        reason: &str,
    ) {
        let mut g = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let (map, tick) = &mut *g;
        *tick += 1;
        if map.len() >= MAX_UIDS && !map.contains_key(&uid) {
            if let Some(oldest) = map.iter().min_by_key(|(_, (_, t))| *t).map(|(u, _)| *u) {
                map.remove(&oldest);
            }
        }
        let (ring, last) = map.entry(uid).or_default();
        *last = *tick;
        if ring.len() == PER_UID {
            ring.pop_front();
        }
        ring.push_back(Entry {
            time: SystemTime::now(),
            op,
            path: cut(path, MAX_REASON),
            errno,
            reason: cut(reason, MAX_REASON),
        });
    }

    /// `uid`'s refusals as text, oldest first: `TIME OPERATION PATH ERRNO REASON` per line,
    /// tab-separated (paths may hold spaces).
    pub fn text_for(&self, uid: u32) -> String {
        let g = self.by_uid.lock().unwrap_or_else(|p| p.into_inner());
        let mut out = String::new();
        if let Some((ring, _)) = g.0.get(&uid) {
            for e in ring {
                out.push_str(&format!(
                    "{}\t{}\t{}\t{}\t{}\n",
                    crate::audit::rfc3339_ms(e.time),
                    e.op,
                    if e.path.is_empty() { "/" } else { &e.path },
                    e.errno,
                    e.reason.replace(['\n', '\t'], " ")
                ));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_uid_sees_its_own_latest_refusals() {
        let r = Reasons::default();
        for i in 0..40 {
            r.record(1001, "read", &format!("secret/x{i}"), "EACCES", "policy");
        }
        r.record(1002, "write", "aws/roles/r", "EINVAL", "bad JSON at line 1");
        let a = r.text_for(1001);
        assert_eq!(a.lines().count(), PER_UID);
        assert!(a
            .lines()
            .last()
            .is_some_and(|l| l.contains("read\tsecret/x39\tEACCES\tpolicy")));
        assert!(!a.contains("aws/roles"));
        assert!(r
            .text_for(1002)
            .contains("write\taws/roles/r\tEINVAL\tbad JSON at line 1"));
        assert_eq!(r.text_for(7), "");
    }

    #[test]
    fn bounded_in_uids() {
        let r = Reasons::default();
        for uid in 0..(MAX_UIDS as u32 + 10) {
            r.record(uid, "stat", "p", "ENOENT", "no");
        }
        assert_eq!(
            r.text_for(0),
            "",
            "the least recently refused uid is forgotten"
        );
        assert!(!r.text_for(MAX_UIDS as u32 + 9).is_empty());
    }
}
