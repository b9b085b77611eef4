//! POSIX behaviour of a generic mount that pjdfstest and fsx found wrong (scripts/posix runs
//! the tools; docs/SEMANTICS.md lists what is different on purpose). One test per fixed bug.

mod common;
use common::*;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::Command;

fn size_seen_by_another_process(path: &std::path::Path) -> String {
    let o = Command::new("stat")
        .arg("-c")
        .arg("%s")
        .arg(path)
        .output()
        .expect("stat");
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// fsx: a read-write open reads back what it wrote, also after fsync (which commits), and
/// an `O_TRUNC` open reads empty, not the old value.
#[test]
fn read_write_open_reads_its_own_writes() {
    let d = Daemon::start();
    let p = d.p("secret/rw");
    std::fs::write(&p, b"0123456789").expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open rw");
    f.write_all_at(b"AB", 0).expect("pwrite");
    let mut buf = [0u8; 10];
    f.read_exact_at(&mut buf, 0).expect("pread");
    assert_eq!(&buf, b"AB23456789", "before fsync");
    f.sync_all().expect("fsync");
    f.read_exact_at(&mut buf, 0).expect("pread");
    assert_eq!(&buf, b"AB23456789", "after fsync");
    drop(f);

    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .truncate(true)
        .open(&p)
        .expect("open rw trunc");
    let mut out = Vec::new();
    f.read_to_end(&mut out).expect("read");
    assert!(out.is_empty(), "O_TRUNC open read {} old bytes", out.len());
    f.write_all(b"new").expect("write");
    drop(f);
    assert_eq!(std::fs::read(&p).expect("read"), b"new");
}

/// fsx: the writing process sees the size of what it wrote (fstat, lseek SEEK_END) before
/// close; others still see the stored size.
#[test]
fn writer_sees_its_own_size() {
    let d = Daemon::start();
    let p = d.p("secret/sz");
    std::fs::write(&p, b"12345").expect("write");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    f.write_all_at(b"abcdefgh", 5).expect("pwrite");
    assert_eq!(f.metadata().expect("fstat").len(), 13);
    assert_eq!(std::fs::metadata(&p).expect("stat").len(), 13);
    assert_eq!(f.seek(SeekFrom::End(0)).expect("seek"), 13);
    assert_eq!(size_seen_by_another_process(&p), "5");
    f.set_len(3).expect("ftruncate");
    assert_eq!(f.metadata().expect("fstat").len(), 3);
    drop(f);
    assert_eq!(size_seen_by_another_process(&p), "3");
    assert_eq!(std::fs::read(&p).expect("read"), b"123");
}

/// O_APPEND appends to the open's buffer even when another process's stat has reset the
/// kernel's idea of the size to the stored one (lost data before).
#[test]
fn append_survives_a_stat_by_another_process() {
    let d = Daemon::start();
    let p = d.p("secret/app");
    std::fs::write(&p, b"12345").expect("write");
    let mut f = OpenOptions::new().append(true).open(&p).expect("open");
    f.write_all(b"abc").expect("append");
    assert_eq!(size_seen_by_another_process(&p), "5");
    f.write_all(b"def").expect("append");
    drop(f);
    assert_eq!(std::fs::read(&p).expect("read"), b"12345abcdef");
}

/// A created file is found by its path while its creator still has it open (it is stored
/// at close), and can be opened, truncated and renamed meanwhile.
#[test]
fn created_open_file_exists_by_path() {
    let d = Daemon::start();
    let p = d.p("secret/new");
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&p)
        .expect("create");
    assert_eq!(std::fs::metadata(&p).expect("stat while open").len(), 0);
    f.write_all(b"value").expect("write");
    assert_eq!(std::fs::metadata(&p).expect("stat").len(), 5);
    // Another open of the not-yet-stored file reads it as empty (values appear at close).
    let other = File::open(&p).expect("open the created file");
    let mut out = Vec::new();
    (&other).read_to_end(&mut out).expect("read");
    assert!(out.is_empty());
    drop(other);
    std::fs::rename(&p, d.p("secret/moved")).expect("rename while open");
    f.write_all(b"!").expect("write");
    drop(f);
    assert_eq!(std::fs::read(d.p("secret/moved")).expect("read"), b"value!");
    assert_eq!(errno_of(std::fs::metadata(&p)), Some(libc::ENOENT));

    // Closed and reopened at once, many times (fsx's close/open): never ENOENT.
    for i in 0..50 {
        let q = d.p(&format!("secret/reopen{i}"));
        drop(File::create(&q).expect("create"));
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&q)
            .expect("reopen right after close");
        f.write_all_at(b"x", 0).expect("write");
    }
}

/// pjdfstest unlink: unlinking an open file works, and the writer's close does not bring
/// the name back (the open file lives on without a name).
#[test]
fn unlink_while_open_for_writing() {
    let d = Daemon::start();
    let p = d.p("secret/gone");
    let mut f = File::create(&p).expect("create");
    f.write_all(b"abc").expect("write");
    std::fs::remove_file(&p).expect("unlink a created, open file");
    f.write_all(b"def").expect("write after unlink");
    drop(f);
    assert_eq!(errno_of(std::fs::metadata(&p)), Some(libc::ENOENT));

    std::fs::write(&p, b"stored").expect("write");
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .expect("open");
    std::fs::remove_file(&p).expect("unlink a stored, open file");
    f.write_all_at(b"XY", 0).expect("write after unlink");
    let mut buf = [0u8; 6];
    f.read_exact_at(&mut buf, 0).expect("read after unlink");
    assert_eq!(&buf, b"XYored");
    drop(f);
    assert_eq!(errno_of(std::fs::metadata(&p)), Some(libc::ENOENT));
}

/// A file created or truncated at open and closed unwritten is stored empty at release —
/// unless another open stored a value since: the later store wins.
#[test]
fn later_store_wins_over_an_unwritten_truncating_open() {
    let d = Daemon::start();
    let p = d.p("secret/v");
    std::fs::write(&p, b"old").expect("write");
    let first = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&p)
        .expect("open trunc");
    std::fs::write(&p, b"newer").expect("second writer");
    drop(first);
    // RELEASE reaches the daemon after close(2) returns: a restart (clean unmount) makes sure
    // it has been handled before we look.
    let mut d = d;
    d.restart();
    assert_eq!(std::fs::read(&p).expect("read"), b"newer");
    // Alone, an unwritten truncating open still empties the file.
    drop(
        OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&p)
            .expect("open trunc"),
    );
    d.restart();
    assert_eq!(std::fs::read(&p).expect("read"), b"");
}

/// pjdfstest *::enametoolong_component: names over 255 bytes are ENAMETOOLONG (not EINVAL,
/// not ENOENT); 255 bytes are fine.
#[test]
fn long_names_are_enametoolong() {
    let d = Daemon::start();
    let ok = "n".repeat(255);
    std::fs::write(d.p(&format!("secret/{ok}")), b"v").expect("255-byte name");
    let long = format!("secret/{ok}.x");
    assert_eq!(
        errno_of(std::fs::write(d.p(&long), b"v")),
        Some(libc::ENAMETOOLONG)
    );
    assert_eq!(
        errno_of(std::fs::metadata(d.p(&long))),
        Some(libc::ENAMETOOLONG)
    );
    assert_eq!(
        errno_of(std::fs::create_dir(d.p(&long))),
        Some(libc::ENAMETOOLONG)
    );
    assert_eq!(
        errno_of(std::fs::rename(d.p(&format!("secret/{ok}")), d.p(&long))),
        Some(libc::ENAMETOOLONG)
    );
}

#[test]
fn open_flags_sanity() {
    // O_EXCL on an existing name, and a created file with mode 0 is still writable by its
    // opener (modes come from policy).
    let d = Daemon::start();
    let p = d.p("secret/x");
    std::fs::write(&p, b"v").expect("write");
    assert_eq!(
        errno_of(OpenOptions::new().write(true).create_new(true).open(&p)),
        Some(libc::EEXIST)
    );
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o000)
        .open(d.p("secret/m0"))
        .expect("create mode 0");
    f.write_all(b"ok").expect("write");
    drop(f);
    assert_eq!(std::fs::read(d.p("secret/m0")).expect("read"), b"ok");
}

/// pjdfstest rename::eexist_enotempty_to_non_empty: a folder holding a file that is created
/// but not yet stored (the creator's RELEASE still in flight) is not empty.
#[test]
fn folder_with_a_file_being_created_is_not_empty() {
    let d = Daemon::start();
    std::fs::create_dir(d.p("secret/from")).expect("mkdir");
    std::fs::create_dir(d.p("secret/to")).expect("mkdir");
    let f = File::create(d.p("secret/to/f")).expect("create");
    assert_eq!(
        errno_of(std::fs::rename(d.p("secret/from"), d.p("secret/to"))),
        Some(libc::ENOTEMPTY)
    );
    assert_eq!(
        errno_of(std::fs::remove_dir(d.p("secret/to"))),
        Some(libc::ENOTEMPTY)
    );
    drop(f);
    assert!(std::fs::metadata(d.p("secret/to/f")).is_ok());
}
