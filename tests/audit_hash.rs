//! `sys/audit-hash` in both forms: as an exchange file (open read-write, write the value, read
//! the hash from offset 0 in the same open) and as write, close, reopen, read.

mod common;
use common::{write_synced, Daemon};
use std::io::{Read, Seek, SeekFrom, Write};

fn exchange(d: &Daemon, value: &[u8]) -> String {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.p("sys/audit-hash"))
        .expect("open read-write");
    f.write_all(value).expect("write the value");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut out = String::new();
    f.read_to_string(&mut out).expect("read the hash");
    out
}

#[test]
fn audit_hash_as_an_exchange_file_and_by_reopening() {
    let d = Daemon::start();
    // The old form: write, close, reopen, read.
    write_synced(d.p("sys/audit-hash"), b"canary-1").expect("write");
    let old = std::fs::read_to_string(d.p("sys/audit-hash")).expect("read");
    assert!(
        old.starts_with("hmac-sha256:") && old.ends_with('\n'),
        "{old:?}"
    );
    // The exchange form gives the same hash for the same value, and another for another.
    let same = exchange(&d, b"canary-1");
    assert_eq!(same, old);
    let other = exchange(&d, b"canary-2");
    assert!(
        other.starts_with("hmac-sha256:") && other != old,
        "{other:?}"
    );
    // Two values in one open: a write at offset 0 after the read starts a new input.
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(d.p("sys/audit-hash"))
        .expect("open");
    f.write_all(b"canary-1").expect("w");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut a = String::new();
    f.read_to_string(&mut a).expect("r");
    f.seek(SeekFrom::Start(0)).expect("seek");
    f.write_all(b"canary-2").expect("w");
    f.seek(SeekFrom::Start(0)).expect("seek");
    let mut b = String::new();
    f.read_to_string(&mut b).expect("r");
    assert_eq!((a.as_str(), b.as_str()), (old.as_str(), other.as_str()));
    drop(f);
    // The last hash asked (here by exchange) is what a plain read shows; the value itself
    // is in no log line.
    let last = std::fs::read_to_string(d.p("sys/audit-hash")).expect("read");
    assert_eq!(last, other);
    assert!(!d.log_text().contains("canary-"), "a value reached the log");
    // In a shell too: bash opens read-write with <>.
    let o = d.sh_ok("exec 3<>sys/audit-hash; printf canary-1 >&3; cat sys/audit-hash");
    assert_eq!(o, other, "an exchange open never read changes nothing");
}
