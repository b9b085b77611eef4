//! Dropping what the kernel caches of nodes the daemon changed (FUSE notify).
//!
//! Owns: turning a changed logical path (from the engine's change listener, or a commit made
//! here) into kernel notifications — the entry of the path (`inval_entry`), the attributes of
//! its parent folder, of the path and of everything known under it (`inval_inode`)
//! — and sending them without deadlocking the kernel.
//!
//! The deadlock to avoid: `inval_entry(P, name)` takes the kernel's lock of folder P. A request
//! that holds that lock (an unlink, create, rename or lookup in P) waits for our reply, so a
//! notification about P sent before replying to it never completes. So:
//! - every notification is sent by one worker thread, never by a request thread;
//! - a request that changed something (`Scope`) hands its notifications to the worker before
//!   it replies and waits for them (bounded: `WAIT`), so the caller's next system call sees
//!   the change — except those about a folder the request itself holds locked, which are sent
//!   after the reply;
//! - changes made outside any request (lease expiry, another daemon's mount table) are queued
//!   and not waited for.
//!
//! Every inode whose attributes are dropped also counts as changed for `kcache.rs` (its pages
//! go with its attributes: `inval_inode(ino, 0, 0)`), whether or not the kernel is connected.
//!
//! Must never: block a request thread without bound, or send anything before the kernel
//! connection exists (then there is nothing cached to drop).

use crate::inodes::Inodes;
use crate::kcache::KernelCache;
use fuser::{INodeNo, Notifier};
use std::cell::RefCell;
use std::ffi::OsStr;
use std::sync::mpsc::{channel, sync_channel, Sender, SyncSender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// How long a request waits for its notifications before replying anyway (only reached when
/// the kernel holds a lock the notification needs for another request in flight, or when the
/// machine is so loaded that the worker thread is not scheduled in time: 250 ms let a stale
/// entry through on a 2-core machine running 8 other loads, so the bound is generous).
const WAIT: Duration = Duration::from_millis(1500);

/// One notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Job {
    /// Forget the name `name` in folder `parent`.
    Entry { parent: u64, name: String },
    /// Forget the attributes of an inode.
    Attr(u64),
}

struct Batch {
    jobs: Vec<Job>,
    done: Option<SyncSender<()>>,
}

thread_local! {
    /// The notifications of the request this thread is serving (`Scope`), if any.
    static PENDING: RefCell<Option<Vec<Job>>> = const { RefCell::new(None) };
}

pub struct Invalidator {
    inodes: Arc<Inodes>,
    /// Told of every inode whose cached pages become old (`kcache.rs`).
    kcache: Arc<KernelCache>,
    notifier: Arc<OnceLock<Notifier>>,
    tx: Mutex<Sender<Batch>>,
}

impl Invalidator {
    pub fn new(inodes: Arc<Inodes>, kcache: Arc<KernelCache>) -> Self {
        let (tx, rx) = channel::<Batch>();
        let notifier: Arc<OnceLock<Notifier>> = Arc::default();
        let n = notifier.clone();
        let spawned = std::thread::Builder::new()
            .name("fuse-invalidate".into())
            .spawn(move || {
                for batch in rx {
                    if let Some(n) = n.get() {
                        for job in &batch.jobs {
                            send(n, job);
                        }
                    }
                    if let Some(done) = batch.done {
                        let _ = done.try_send(());
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(
                "no invalidation thread: the kernel may show removed nodes for up to a second: {e}"
            );
        }
        Self {
            inodes,
            kcache,
            notifier,
            tx: Mutex::new(tx),
        }
    }

    /// The kernel connection is up: notifications can be sent from now on.
    pub fn connect(&self, notifier: Notifier) {
        let _ = self.notifier.set(notifier);
    }

    /// `path` (and everything under it) changed: its entry, its attributes and those of its
    /// parent folder (its listing changed) and of everything under it. `""`: everything.
    pub fn changed(&self, path: &str) {
        if self.notifier.get().is_none() && !self.kcache.on() {
            return;
        }
        let jobs = self.jobs_for(path);
        for job in &jobs {
            if let Job::Attr(ino) = job {
                self.kcache.changed(*ino);
            }
        }
        if !jobs.is_empty() && self.notifier.get().is_some() {
            self.submit(jobs);
        }
    }

    /// The attributes of `ino` changed (a value stored, a size changed): also drops its pages.
    pub fn attr(&self, ino: u64) {
        self.kcache.changed(ino);
        if self.notifier.get().is_some() {
            self.submit(vec![Job::Attr(ino)]);
        }
    }

    /// Drop what the kernel holds of `ino` (pages and attributes) without counting a change:
    /// in a request, before its reply (an open that refills the page cache).
    pub fn refill(&self, ino: u64) {
        if self.notifier.get().is_some() {
            self.submit(vec![Job::Attr(ino)]);
        }
    }

    /// Drop the pages of `ino` (an open file from before a change filled one with its old
    /// snapshot): queued, not waited for (the page is locked until the reply that fills it,
    /// and the kernel's invalidation waits for that lock).
    pub fn pages(&self, ino: u64) {
        if self.notifier.get().is_some() {
            self.queue(vec![Job::Attr(ino)], None);
        }
    }

    /// In a request: held for its `Scope`; else queued.
    fn submit(&self, jobs: Vec<Job>) {
        let rest = PENDING.with(|p| match p.borrow_mut().as_mut() {
            Some(pending) => {
                pending.extend(jobs);
                None
            }
            None => Some(jobs),
        });
        if let Some(jobs) = rest {
            self.queue(jobs, None);
        }
    }

    fn queue(&self, jobs: Vec<Job>, done: Option<SyncSender<()>>) {
        let tx = self.tx.lock().unwrap_or_else(|p| p.into_inner());
        let _ = tx.send(Batch { jobs, done });
    }

    /// The notifications for a change at `path`.
    fn jobs_for(&self, path: &str) -> Vec<Job> {
        let mut jobs = Vec::new();
        let entry = |jobs: &mut Vec<Job>, p: &str| {
            let (parent, name) = p.rsplit_once('/').unwrap_or(("", p));
            if let Some(parent) = self.inodes.peek(parent) {
                jobs.push(Job::Entry {
                    parent,
                    name: name.to_string(),
                });
            }
        };
        if path.is_empty() {
            for (p, ino) in self.inodes.known() {
                if !p.is_empty() {
                    entry(&mut jobs, &p);
                }
                jobs.push(Job::Attr(ino));
            }
            return jobs;
        }
        entry(&mut jobs, path);
        // Attributes of the path and what the kernel knows under it (only when it knows the
        // path: it knows nothing under a folder it has no inode for).
        if self.inodes.peek(path).is_some() {
            jobs.extend(self.inodes.under(path).into_iter().map(Job::Attr));
        }
        if let Some(parent) = self
            .inodes
            .peek(path.rsplit_once('/').map_or("", |(p, _)| p))
        {
            jobs.push(Job::Attr(parent));
        }
        jobs
    }
}

fn send(n: &Notifier, job: &Job) {
    let res = match job {
        Job::Entry { parent, name } => n.inval_entry(INodeNo(*parent), OsStr::new(name)),
        Job::Attr(ino) => n.inval_inode(INodeNo(*ino), 0, 0),
    };
    if let Err(e) = res {
        tracing::debug!("kernel cache invalidation not sent: {e}");
    }
}

/// The notifications of one request: collected while it runs (`Invalidator::submit` on this
/// thread), sent at `settle` (before the reply) or at drop (after it).
pub struct Scope<'a> {
    inval: &'a Invalidator,
    /// Folders the kernel holds locked for this request.
    locked: Vec<u64>,
}

impl<'a> Scope<'a> {
    /// Collect this thread's notifications; `locked`: the folders the kernel holds locked for
    /// the request (the parent of a lookup, create, unlink, mkdir, rmdir; both of a rename).
    pub fn enter(inval: &'a Invalidator, locked: &[u64]) -> Self {
        PENDING.with(|p| *p.borrow_mut() = Some(Vec::new()));
        Self {
            inval,
            locked: locked.to_vec(),
        }
    }

    /// Send what was collected and wait (bounded) until the kernel has it; notifications about
    /// a folder this request holds locked wait for the drop (after the reply).
    pub fn settle(&mut self) {
        let jobs = PENDING.with(|p| p.borrow_mut().as_mut().map(std::mem::take));
        let Some(jobs) = jobs.filter(|j| !j.is_empty()) else {
            return;
        };
        let (now, later): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| match j {
            Job::Entry { parent, .. } => !self.locked.contains(parent),
            Job::Attr(_) => true,
        });
        if !later.is_empty() {
            PENDING.with(|p| {
                if let Some(pending) = p.borrow_mut().as_mut() {
                    pending.extend(later);
                }
            });
        }
        if !now.is_empty() {
            let (done, wait) = sync_channel(1);
            self.inval.queue(now, Some(done));
            let _ = wait.recv_timeout(WAIT);
        }
    }
}

impl Drop for Scope<'_> {
    fn drop(&mut self) {
        let jobs = PENDING.with(|p| p.borrow_mut().take());
        if let Some(jobs) = jobs.filter(|j| !j.is_empty()) {
            self.inval.queue(jobs, None);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inodes::ROOT;

    #[test]
    fn jobs_for_a_path_its_parents_and_what_is_under_it() {
        let inodes = Arc::new(Inodes::default());
        let x = inodes.lookup("X");
        let f = inodes.lookup("X/f");
        let s = inodes.lookup("sys");
        let l = inodes.lookup("sys/leases");
        let inval = Invalidator::new(inodes.clone(), Default::default());
        let jobs = inval.jobs_for("X");
        assert!(jobs.contains(&Job::Entry {
            parent: ROOT,
            name: "X".into()
        }));
        assert!(jobs.contains(&Job::Attr(x)) && jobs.contains(&Job::Attr(f)));
        // An unknown lease file: only its entry in its known parent (and that folder's
        // attributes).
        assert_eq!(
            inval.jobs_for("sys/leases/1"),
            vec![
                Job::Entry {
                    parent: l,
                    name: "1".into()
                },
                Job::Attr(l)
            ]
        );
        assert!(inval.jobs_for("sys/leases/aws/creds/r/1").is_empty());
        let _ = s;
        let all = inval.jobs_for("");
        assert!(all.contains(&Job::Attr(ROOT)) && all.contains(&Job::Attr(f)));
        assert_eq!(
            all.iter()
                .filter(|j| matches!(j, Job::Entry { .. }))
                .count(),
            4
        );
    }

    #[test]
    fn a_scope_holds_its_notifications_and_keeps_locked_folders_for_later() {
        let inodes = Arc::new(Inodes::default());
        let inval = Invalidator::new(inodes, Default::default());
        let mut scope = Scope::enter(&inval, &[7]);
        inval.submit(vec![
            Job::Attr(3),
            Job::Entry {
                parent: 7,
                name: "a".into(),
            },
        ]);
        scope.settle();
        let left = PENDING.with(|p| p.borrow().clone());
        assert_eq!(
            left,
            Some(vec![Job::Entry {
                parent: 7,
                name: "a".into()
            }])
        );
        drop(scope);
        assert_eq!(PENDING.with(|p| p.borrow().clone()), None);
    }
}
