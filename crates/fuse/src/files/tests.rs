//! The file layer without a mount: a real engine over a memory store, driven as the kernel
//! would (lookup, open/create, write, flush, release).

use super::*;
use crate::inodes::ROOT;
use nomadfs_core::barrier::KdfParams;
use nomadfs_core::storage::memory::MemoryStorage;
use nomadfs_core::EngineConfig;
use std::sync::atomic::{AtomicUsize, Ordering};

const RW: i32 = libc::O_RDWR;
const WO: i32 = libc::O_WRONLY;
const RO: i32 = libc::O_RDONLY;

struct T {
    files: Files,
    stored: Arc<AtomicUsize>,
}

fn files() -> T {
    let e = Engine::new(
        Arc::new(MemoryStorage::new()),
        EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e.unseal(b"pass").expect("unseal");
    let mut files = Files::new(e, Arc::new(Inodes::default()), Some(vec![0]));
    let stored = Arc::new(AtomicUsize::new(0));
    let s = stored.clone();
    files.on_stored(Box::new(move |_| {
        s.fetch_add(1, Ordering::SeqCst);
    }));
    T { files, stored }
}

/// Root, as this test process (so that its flushes are the opener's).
fn me() -> Caller {
    Caller::new(0, 0, std::process::id())
}

/// Another process's thread (pid 1 is never this process).
fn other() -> Caller {
    Caller::new(0, 0, 1)
}

fn name(s: &str) -> &OsStr {
    OsStr::new(s)
}

impl T {
    fn ino(&self, path: &str) -> u64 {
        let (parent, leaf) = path.rsplit_once('/').unwrap_or(("", path));
        let p = if parent.is_empty() {
            ROOT
        } else {
            self.ino(parent)
        };
        self.files.lookup(&me(), p, name(leaf)).expect("lookup").0
    }
    fn stored(&self, path: &str) -> Option<Vec<u8>> {
        self.files
            .engine
            .read(&me(), path)
            .ok()
            .map(|v| v.expose().to_vec())
    }
    fn read(&self, c: &Caller, fh: u64) -> Vec<u8> {
        let mut out = Vec::new();
        self.files
            .read(c, fh, 0, 1 << 20, |d| out.extend_from_slice(d))
            .expect("read");
        out
    }
    fn create(&self, path: &str) -> (u64, u64) {
        let (parent, leaf) = path.rsplit_once('/').expect("a path in a folder");
        let p = self.ino(parent);
        self.files.create(&me(), p, name(leaf), WO).expect("create")
    }
}

fn errno_kind<T: std::fmt::Debug>(r: Res<T>) -> Option<ErrorKind> {
    match r {
        Err(Fail::Refused(e) | Fail::At(_, e) | Fail::Released { error: e, .. }) => Some(e.kind),
        Err(Fail::BadHandle) => None,
        Ok(v) => panic!("expected a refusal, got {v:?}"),
    }
}

#[test]
fn a_created_file_is_its_creators_until_close_and_stored_even_empty() {
    let t = files();
    let (ino, fh) = t.create("secret/new");
    // Found by its path (its creator may create there) though nothing is stored yet.
    assert_eq!(t.files.getattr(&me(), ino, None).expect("stat").size, 0);
    assert_eq!(t.stored("secret/new"), None);
    // A flush does not store an empty created file (a shell's dup2+close sends one) ...
    t.files.flush(std::process::id(), fh).expect("flush");
    assert_eq!(t.stored("secret/new"), None);
    // ... release does.
    t.files.release(fh).expect("release");
    assert_eq!(t.stored("secret/new").as_deref(), Some(&b""[..]));
    assert_eq!(t.stored.load(Ordering::SeqCst), 1, "the store was told");
}

#[test]
fn writes_are_buffered_and_committed_by_the_openers_close_only() {
    let t = files();
    let (ino, fh) = t.create("secret/a");
    assert_eq!(t.files.write(&me(), fh, 0, b"hello", WO).expect("w"), 5);
    // The writer sees its own pending size; the store has nothing yet.
    assert_eq!(t.files.getattr(&me(), ino, None).expect("stat").size, 5);
    assert_eq!(t.stored("secret/a"), None);
    // Another process closing an inherited copy commits nothing.
    t.files.flush(other().pid, fh).expect("flush by another");
    assert_eq!(t.stored("secret/a"), None);
    t.files.flush(std::process::id(), fh).expect("flush");
    assert_eq!(t.stored("secret/a").as_deref(), Some(&b"hello"[..]));
    t.files.release(fh).expect("release");
    assert_eq!(t.stored.load(Ordering::SeqCst), 1, "stored once");
    assert!(t.files.cacheable(ino, &Node::file(5)), "one admin view");
}

#[test]
fn reads_see_the_snapshot_of_their_open_and_read_write_opens_their_own_buffer() {
    let t = files();
    let (_, fh) = t.create("secret/s");
    t.files.write(&me(), fh, 0, b"one", WO).expect("w");
    t.files.release(fh).expect("release");
    let ino = t.ino("secret/s");
    let ro = t.files.open(&me(), ino, RO).expect("open ro");
    assert!(ro.no_flush);
    let rw = t.files.open(&me(), ino, RW).expect("open rw");
    assert!(!rw.no_flush);
    t.files.write(&me(), rw.fh, 3, b"-two", RW).expect("w");
    assert_eq!(t.read(&me(), rw.fh), b"one-two");
    t.files.flush(std::process::id(), rw.fh).expect("flush");
    assert_eq!(t.stored("secret/s").as_deref(), Some(&b"one-two"[..]));
    // The read-only open still sees what was there when it opened.
    assert_eq!(t.read(&me(), ro.fh), b"one");
    // It cannot write.
    assert!(matches!(
        t.files.write(&me(), ro.fh, 0, b"x", RO),
        Err(Fail::BadHandle)
    ));
    t.files.release(ro.fh).expect("release");
    t.files.release(rw.fh).expect("release");
    assert!(matches!(
        t.files.read(&me(), ro.fh, 0, 1, |_| {}),
        Err(Fail::BadHandle)
    ));
}

#[test]
fn o_trunc_empties_at_release_unless_a_later_value_was_stored() {
    let t = files();
    let (_, fh) = t.create("secret/t");
    t.files.write(&me(), fh, 0, b"old", WO).expect("w");
    t.files.release(fh).expect("release");
    let ino = t.ino("secret/t");
    let a = t.files.open(&me(), ino, WO | libc::O_TRUNC).expect("open");
    t.files.flush(std::process::id(), a.fh).expect("flush");
    assert_eq!(
        t.stored("secret/t").as_deref(),
        Some(&b"old"[..]),
        "not at flush"
    );
    t.files.release(a.fh).expect("release");
    assert_eq!(
        t.stored("secret/t").as_deref(),
        Some(&b""[..]),
        "at release"
    );
    // Truncated at open, but another open stored a value since: the later store wins.
    let b = t.files.open(&me(), ino, WO | libc::O_TRUNC).expect("open");
    let c = t.files.open(&me(), ino, WO | libc::O_TRUNC).expect("open");
    t.files.write(&me(), c.fh, 0, b"new", WO).expect("w");
    t.files.release(c.fh).expect("release");
    t.files.release(b.fh).expect("release");
    assert_eq!(t.stored("secret/t").as_deref(), Some(&b"new"[..]));
}

#[test]
fn truncate_by_handle_and_by_path() {
    let t = files();
    let (ino, fh) = t.create("secret/x");
    t.files.write(&me(), fh, 0, b"abcdef", WO).expect("w");
    let to = |size| SetAttr {
        size: Some(size),
        ..Default::default()
    };
    let n = t
        .files
        .setattr(&me(), ino, to(2), Some(fh))
        .expect("ftruncate");
    assert_eq!(n.size, 2, "the writer sees its buffer");
    t.files.release(fh).expect("release");
    assert_eq!(t.stored("secret/x").as_deref(), Some(&b"ab"[..]));
    // By path: read, resize, stored at once.
    let n = t.files.setattr(&me(), ino, to(4), None).expect("truncate");
    assert_eq!(n.size, 4);
    assert_eq!(t.stored("secret/x").as_deref(), Some(&b"ab\0\0"[..]));
    t.files
        .setattr(&me(), ino, to(0), None)
        .expect("truncate 0");
    assert_eq!(t.stored("secret/x").as_deref(), Some(&b""[..]));
    // Over the value size limit: EFBIG; chown: EPERM.
    let limit = t.files.engine.limits().max_value_size as u64;
    assert_eq!(
        errno_kind(t.files.setattr(&me(), ino, to(limit + 1), None)),
        Some(ErrorKind::TooLarge)
    );
    let chown = SetAttr {
        owner: true,
        ..Default::default()
    };
    assert_eq!(
        errno_kind(t.files.setattr(&me(), ino, chown, None)),
        Some(ErrorKind::NotPermitted)
    );
}

#[test]
fn an_unlinked_open_file_stores_nothing_and_a_renamed_one_stores_under_its_new_name() {
    let t = files();
    let (_, fh) = t.create("secret/gone");
    t.files.write(&me(), fh, 0, b"x", WO).expect("w");
    let dir = t.ino("secret");
    t.files.unlink(&me(), dir, name("gone")).expect("unlink");
    t.files.release(fh).expect("release");
    assert_eq!(t.stored("secret/gone"), None);

    let (_, fh) = t.create("secret/before");
    t.files.write(&me(), fh, 0, b"moved", WO).expect("w");
    t.files
        .rename(
            &me(),
            (dir, name("before")),
            (dir, name("after")),
            false,
            false,
        )
        .expect("rename");
    t.files.release(fh).expect("release");
    assert_eq!(t.stored("secret/before"), None);
    assert_eq!(t.stored("secret/after").as_deref(), Some(&b"moved"[..]));
    // A folder holding a file still being created is not empty (to whoever may remove it).
    t.files.mkdir(&me(), dir, name("d")).expect("mkdir");
    let (_, held) = t.create("secret/d/f");
    assert_eq!(
        errno_kind(t.files.rmdir(&me(), dir, name("d"))),
        Some(ErrorKind::NotEmpty)
    );
    t.files.release(held).expect("release");
}

#[test]
fn a_refused_write_poisons_its_open() {
    let t = files();
    let (_, fh) = t.create("secret/big");
    let limit = t.files.engine.limits().max_value_size as u64;
    assert_eq!(
        errno_kind(t.files.write(&me(), fh, limit, b"x", WO)),
        Some(ErrorKind::TooLarge)
    );
    t.files.release(fh).expect("release");
    assert_eq!(t.stored("secret/big"), None, "nothing of it is stored");
}

#[test]
fn a_control_file_acts_on_each_write() {
    let t = files();
    let ino = t.ino("sys/revoke-uid");
    let o = t.files.open(&me(), ino, WO | libc::O_TRUNC).expect("open");
    // Each write(2) is one command: a bad one fails that write.
    assert_eq!(
        errno_kind(t.files.write(&me(), o.fh, 0, b"not a uid\n", WO)),
        Some(ErrorKind::InvalidInput)
    );
    assert_eq!(t.files.write(&me(), o.fh, 0, b"1001\n", WO).expect("w"), 5);
    assert_eq!(
        t.files.getattr(&me(), ino, Some(o.fh)).expect("fstat").mode,
        0o200
    );
    t.files.release(o.fh).expect("release");
    assert_eq!(t.stored.load(Ordering::SeqCst), 0, "nothing stored");
}

#[test]
fn listings_are_snapshots_with_dot_entries() {
    let t = files();
    let (_, fh) = t.create("secret/l");
    t.files.release(fh).expect("release");
    let dir = t.ino("secret");
    let d = t.files.opendir(&me(), dir).expect("opendir");
    let mut names = Vec::new();
    t.files
        .readdir(d, 0, |_, _, _, n| {
            names.push(n.to_string());
            false
        })
        .expect("readdir");
    assert!(names.starts_with(&[".".into(), "..".into()]), "{names:?}");
    assert!(names.contains(&"l".to_string()), "{names:?}");
    // From an offset on, and until the reply is full.
    let mut first = Vec::new();
    t.files
        .readdir(d, 1, |_, _, next, n| {
            first.push((next, n.to_string()));
            true
        })
        .expect("readdir");
    assert_eq!(first, vec![(2, "..".to_string())]);
    t.files.releasedir(d);
    assert!(matches!(
        t.files.readdir(d, 0, |_, _, _, _| false),
        Err(Fail::BadHandle)
    ));
}

#[test]
fn audit_hash_is_an_exchange_when_opened_read_write_and_buffered_otherwise() {
    let t = files();
    let ino = t.ino("sys/audit-hash");
    // Write-only: buffered, hashed when closed, read back by a later open.
    let w = t
        .files
        .open(&me(), ino, WO | libc::O_TRUNC)
        .expect("open wo");
    assert!(!w.no_flush);
    t.files.write(&me(), w.fh, 0, b"value", WO).expect("w");
    t.files.release(w.fh).expect("release");
    let r = t.files.open(&me(), ino, RO).expect("open ro");
    let hashed = t.read(&me(), r.fh);
    t.files.release(r.fh).expect("release");
    assert!(hashed.starts_with(b"hmac-sha256:"), "{hashed:?}");
    // Read-write: an exchange file; nothing to commit at close.
    let x = t.files.open(&me(), ino, RW).expect("open rw");
    assert!(x.no_flush);
    t.files.write(&me(), x.fh, 0, b"value", RW).expect("w");
    assert_eq!(
        t.read(&me(), x.fh),
        hashed,
        "the same hash in the same open"
    );
    t.files.release(x.fh).expect("release");
}

#[test]
fn a_file_being_created_reads_as_empty_only_for_the_thread_creating_it() {
    let t = files();
    let (ino, fh) = t.create("secret/c");
    let own = t.files.open(&me(), ino, RO).expect("the creating thread");
    assert_eq!(t.read(&me(), own.fh), b"");
    assert_eq!(
        errno_kind(t.files.open(&other(), ino, RO)),
        Some(ErrorKind::NotFound)
    );
    t.files.release(own.fh).expect("release");
    t.files.release(fh).expect("release");
    assert!(t.files.open(&other(), ino, RO).is_ok(), "there once closed");
}
