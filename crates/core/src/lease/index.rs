//! The in-memory lease index: every lease this daemon knows, by id, with what scheduling and
//! the per-uid bound need (`Meta`: due time, uid), the due queue ordered by deadline,
//! the ids in flight (claimed), folders a revocation just emptied, and the per-uid counts
//! (live leases and leases being issued).
//!
//! Owns: `Index` and `Meta` and every answer computed from them alone: whether a path is a
//! lease or a folder of leases, folder listings, counts, and the `[limits] leases_per_uid`
//! bound (checked and counted together, under the one index lock).
//! Must never: do I/O (storage or upstream) or sleep — it is only touched under the manager's
//! index lock, which is never held across such calls — or decide on its own to drop a lease
//! (only the revocation, restore and sync paths remove entries).

use super::record::LeaseRecord;
use crate::backend::DirEntry;
use crate::error::{Error, ErrorKind, Result};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

/// How long a folder emptied by a revocation still answers as a folder.
const EMPTIED_GRACE: Duration = Duration::from_secs(30);

#[derive(Clone, Copy)]
pub(super) struct Meta {
    pub(super) due: Option<u64>,
    pub(super) uid: u32,
}

impl Meta {
    pub(super) fn of(rec: &LeaseRecord) -> Self {
        Self {
            due: rec.due_ms(),
            uid: rec.uid,
        }
    }
    /// `rec`'s scheduling for an entry already indexed. (Leases issued by another daemon on
    /// a shared store are scheduled like any other: only the elected expiry leader revokes at
    /// expiry, `fence.rs`, so no issuer has to go first.)
    pub(super) fn like(self, rec: &LeaseRecord) -> Self {
        Self::of(rec)
    }
}

#[derive(Default)]
pub(super) struct Index {
    pub(super) leases: BTreeMap<String, Meta>,
    pub(super) queue: BTreeSet<(u64, String)>,
    pub(super) inflight: HashSet<String>,
    /// Folders emptied by a revocation in the last few seconds, with when. They still answer
    /// as folders so that `rm -r` (unlink every file, then rmdir) can finish its walk.
    emptied: BTreeMap<String, Instant>,
    /// uid → its leases in `leases` (the `[limits] leases_per_uid` bound counts these).
    per_uid: HashMap<u32, u64>,
    /// uid → leases being issued (counted by the bound, not yet in `leases`).
    issuing: HashMap<u32, u64>,
}

impl Index {
    pub(super) fn set(&mut self, id: &str, meta: Meta) {
        match self.leases.insert(id.to_string(), meta) {
            Some(old) => {
                if let Some(d) = old.due {
                    self.queue.remove(&(d, id.to_string()));
                }
                if old.uid != meta.uid {
                    self.uncount(old.uid);
                    *self.per_uid.entry(meta.uid).or_default() += 1;
                }
            }
            None => *self.per_uid.entry(meta.uid).or_default() += 1,
        }
        if let Some(d) = meta.due {
            self.queue.insert((d, id.to_string()));
        }
    }
    fn uncount(&mut self, uid: u32) {
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }
    pub(super) fn remove(&mut self, id: &str) {
        if let Some(old) = self.leases.remove(id) {
            if let Some(d) = old.due {
                self.queue.remove(&(d, id.to_string()));
            }
            self.uncount(old.uid);
        }
        let now = Instant::now();
        self.emptied
            .retain(|_, t| now.duration_since(*t) < EMPTIED_GRACE);
        let mut p = id;
        while let Some((parent, _)) = p.rsplit_once('/') {
            self.emptied.insert(parent.to_string(), now);
            p = parent;
        }
    }

    /// Forget every lease (at seal). Claims in flight stay: their holders release them.
    pub(super) fn forget_all(&mut self) {
        self.leases.clear();
        self.per_uid.clear();
        self.issuing.clear();
        self.queue.clear();
        self.emptied.clear();
    }

    /// Live leases created by `uid`.
    pub(super) fn count_of(&self, uid: u32) -> u64 {
        self.per_uid.get(&uid).copied().unwrap_or(0)
    }

    /// Live leases of `uid` plus the ones being issued for it (what the bound counts).
    pub(super) fn held(&self, uid: u32) -> u64 {
        self.per_uid.get(&uid).copied().unwrap_or(0) + self.issuing.get(&uid).copied().unwrap_or(0)
    }

    /// Count one lease of `uid` as being issued, within `limit` (checked and counted under one
    /// lock, so concurrent issues cannot overshoot the bound).
    pub(super) fn reserve(&mut self, uid: u32, limit: Option<u64>) -> Result<()> {
        if let Some(limit) = limit {
            over_quota(uid, self.held(uid), limit)?;
        }
        *self.issuing.entry(uid).or_default() += 1;
        Ok(())
    }

    /// Give back a `reserve` (the lease is now in `leases`, or its issue failed).
    pub(super) fn unreserve(&mut self, uid: u32) {
        if let Some(n) = self.issuing.get_mut(&uid) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.issuing.remove(&uid);
            }
        }
    }

    /// Is `path` a lease (Some(false)), a folder of leases (Some(true)), or nothing (None)?
    pub(super) fn kind(&self, path: &str) -> Option<bool> {
        if path.is_empty() {
            return Some(true);
        }
        if self.leases.contains_key(path) {
            return Some(false);
        }
        let prefix = format!("{path}/");
        let live = self
            .leases
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(k, _)| k.starts_with(&prefix));
        let recently_emptied = self
            .emptied
            .get(path)
            .is_some_and(|t| t.elapsed() < EMPTIED_GRACE);
        (live || recently_emptied).then_some(true)
    }

    /// `rmdir` of an emptied folder: forget it.
    pub(super) fn forget_folder(&mut self, path: &str) {
        let prefix = format!("{path}/");
        self.emptied
            .retain(|k, _| k != path && !k.starts_with(&prefix));
    }

    /// The children of folder `path` ("" for the top).
    pub(super) fn list(&self, path: &str) -> Vec<DirEntry> {
        let prefix = if path.is_empty() {
            String::new()
        } else {
            format!("{path}/")
        };
        let mut out: Vec<DirEntry> = Vec::new();
        let mut last_dir: Option<String> = None;
        for (k, _) in self.leases.range(prefix.clone()..) {
            let Some(rest) = k.strip_prefix(&prefix) else {
                break;
            };
            match rest.split_once('/') {
                Some((dir, _)) => {
                    if last_dir.as_deref() != Some(dir) {
                        last_dir = Some(dir.to_string());
                        out.push(DirEntry::dir(dir));
                    }
                }
                None => out.push(DirEntry::file(rest)),
            }
        }
        out
    }

    /// Live leases created by `uid`, counted over the index itself.
    pub(super) fn count_uid(&self, uid: u32) -> usize {
        self.leases.values().filter(|m| m.uid == uid).count()
    }

    /// The ids that start with `prefix`.
    pub(super) fn ids_under(&self, prefix: &str) -> Vec<String> {
        self.leases
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// The ids of the leases `uid` created.
    pub(super) fn ids_of(&self, uid: u32) -> Vec<String> {
        self.leases
            .iter()
            .filter(|(_, m)| m.uid == uid)
            .map(|(k, _)| k.clone())
            .collect()
    }
}

/// EDQUOT (with the reason) if `uid`, holding `held`, may not have one more lease.
pub(super) fn over_quota(uid: u32, held: u64, limit: u64) -> Result<()> {
    if held >= limit {
        return Err(Error::new(
            ErrorKind::Quota,
            format!(
                "uid {uid} holds {held} live leases; the bound is {limit} \
                 ([limits] leases_per_uid): revoke some (rm sys/leases/...) or let them expire"
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(due: u64, uid: u32) -> Meta {
        Meta {
            due: Some(due),
            uid,
        }
    }

    /// Leases under folders whose names are string prefixes of each other, and siblings that
    /// sort between a folder and its children ('-' and '.' sort before '/', '0' after it).
    fn index() -> Index {
        let mut ix = Index::default();
        for (i, id) in [
            "aws/creds/a/1",
            "aws/creds/a/2",
            "aws/creds/a/deep/3",
            "aws/creds/ab/4",
            "aws/creds/a-b/5",
            "aws/creds/a.b/6",
            "aws/creds/a0/7",
            "aws/creds/b/8",
            "awsx/creds/a/9",
            "pg/creds/a/10",
        ]
        .iter()
        .enumerate()
        {
            ix.set(id, meta(1000 + i as u64, 1000 + (i % 3) as u32));
        }
        ix
    }

    #[test]
    fn prefix_range_is_exactly_the_folder() {
        let ix = index();
        assert_eq!(
            ix.ids_under("aws/creds/a/"),
            ["aws/creds/a/1", "aws/creds/a/2", "aws/creds/a/deep/3"]
        );
        assert_eq!(ix.ids_under("aws/creds/ab/"), ["aws/creds/ab/4"]);
        assert_eq!(ix.ids_under("aws/creds/a-b/"), ["aws/creds/a-b/5"]);
        assert_eq!(ix.ids_under("aws/creds/a/deep/"), ["aws/creds/a/deep/3"]);
        assert_eq!(ix.ids_under("aws/"), {
            let mut v: Vec<&str> = ix
                .leases
                .keys()
                .map(String::as_str)
                .filter(|k| k.starts_with("aws/"))
                .collect();
            v.sort();
            v
        });
        assert!(ix.ids_under("aws/creds/c/").is_empty());
        assert!(ix.ids_under("zzz/").is_empty());
        // The raw form is a string prefix (callers pass a folder with its '/').
        assert_eq!(ix.ids_under("aws/creds/a").len(), 7);
        assert_eq!(ix.ids_under("").len(), ix.leases.len());
    }

    #[test]
    fn kind_and_listing_tell_string_prefix_siblings_apart() {
        let mut ix = index();
        assert_eq!(ix.kind("aws/creds/a/1"), Some(false));
        assert_eq!(ix.kind("aws/creds/ab"), Some(true));
        assert_eq!(ix.kind("aws/creds/a/deep"), Some(true));
        assert_eq!(ix.kind("aws/creds/a/de"), None);
        assert_eq!(ix.kind("aws/cred"), None);
        assert_eq!(ix.kind("aws/creds/a"), Some(true));
        let names = |v: Vec<DirEntry>| -> Vec<String> { v.into_iter().map(|e| e.name).collect() };
        assert_eq!(names(ix.list("aws/creds/a")), ["1", "2", "deep"]);
        // Each child once (a folder's leases are contiguous in the ordered index), in
        // index order ('-' and '.' sort before '/').
        assert_eq!(
            names(ix.list("aws/creds")),
            ["a-b", "a.b", "a", "a0", "ab", "b"]
        );
        assert_eq!(names(ix.list("")), ["aws", "awsx", "pg"]);
        assert!(ix.list("aws/creds/c").is_empty());
        // Removing every lease of a folder leaves its siblings alone.
        for id in ix.ids_under("aws/creds/a/") {
            ix.remove(&id);
        }
        assert_eq!(ix.ids_under("aws/creds/ab/"), ["aws/creds/ab/4"]);
        assert!(ix.ids_under("aws/creds/a/").is_empty());
        assert_eq!(ix.kind("aws/creds/a/deep"), Some(true), "recently emptied");
        ix.forget_folder("aws/creds/a/deep");
        assert_eq!(ix.kind("aws/creds/a/deep"), None);
    }

    #[test]
    fn counts_and_queue_follow_set_and_remove() {
        let mut ix = index();
        let n = ix.leases.len();
        assert_eq!(ix.queue.len(), n);
        let total: u64 = (1000..1003).map(|u| ix.count_of(u)).sum();
        assert_eq!(total as usize, n);
        for u in 1000..1003 {
            assert_eq!(ix.count_of(u) as usize, ix.count_uid(u));
            assert_eq!(ix.ids_of(u).len(), ix.count_uid(u));
        }
        // Rescheduling moves the queue entry; a new uid moves the count.
        ix.set("aws/creds/b/8", meta(5, 2000));
        assert_eq!(ix.queue.len(), n);
        assert_eq!(
            ix.queue.first().map(|(d, id)| (*d, id.as_str())),
            Some((5, "aws/creds/b/8"))
        );
        assert_eq!(ix.count_of(2000), 1);
        for id in ix.ids_under("") {
            ix.remove(&id);
        }
        assert!(ix.queue.is_empty() && ix.per_uid.is_empty() && ix.leases.is_empty());
    }
}
