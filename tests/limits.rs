//! Per-uid bounds (`[limits]`) and the daemon log under a hostile uid, through a real mount:
//! uid 1001 acts through `setpriv`, root is the admin. Floods are bounded in count.

mod common;

use common::moto::Moto;
use common::pg::Pg;
use common::{errno_of, write_synced, Daemon};
use nomadfs_core::backends::aws_iam::{AwsIam, RootCredentials};
use nomadfs_core::SecretBytes;
use std::process::{Command, Output};

const CONFIG: &str = r#"allow_other = true
[[policy]]
name = "u"
uids = [1001]
rules = [ { path = "secret/u/*", capabilities = ["read", "list", "create", "update", "delete"] },
          { path = "secret/ro/*", capabilities = ["read", "list"] },
          { path = "aws/creds/*", capabilities = ["read"] },
          { path = "pg/creds/*", capabilities = ["read"] } ]
[limits]
open_files_per_uid = 8
buffered_bytes_per_uid = 65536
leases_per_uid = 2
"#;

/// Run `prog args...` as uid/gid 1001 in the mountpoint.
fn as_1001(d: &Daemon, prog: &str, args: &[&str]) -> Output {
    Command::new("setpriv")
        .args(["--reuid=1001", "--regid=1001", "--clear-groups", prog])
        .args(args)
        .current_dir(&d.mnt)
        .output()
        .expect("setpriv")
}

fn py_1001(d: &Daemon, script: &str) -> String {
    let o = as_1001(d, "/usr/bin/python3", &["-c", script]);
    assert!(
        o.status.success(),
        "python as 1001 failed: {}\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

/// The daemon log without its ANSI colour codes.
fn plain(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn seed(d: &Daemon) {
    std::fs::create_dir_all(d.p("secret/u")).expect("mkdir u");
    std::fs::create_dir_all(d.p("secret/ro")).expect("mkdir ro");
    std::fs::write(d.p("secret/u/f"), "value").expect("seed f");
    std::fs::write(d.p("secret/ro/x"), "value").expect("seed x");
}

#[test]
fn open_files_past_the_bound_are_emfile_with_the_reason() {
    let d = Daemon::start_with(CONFIG);
    seed(&d);
    let out = py_1001(
        &d,
        r#"
import os, errno
fds = []
try:
    for i in range(20):
        fds.append(os.open('secret/u/f', os.O_RDONLY))
    print('all', len(fds))
except OSError as e:
    print('refused', len(fds), errno.errorcode[e.errno])
# An open folder counts too.
try:
    os.listdir('secret/u')
    print('listed')
except OSError as e:
    print('list', errno.errorcode[e.errno])
for fd in fds:
    os.close(fd)
fds = [os.open('secret/u/f', os.O_RDONLY) for _ in range(8)]
print('again', len(fds))
"#,
    );
    assert!(out.contains("refused 8 EMFILE"), "{out}");
    assert!(out.contains("list EMFILE"), "{out}");
    assert!(
        out.contains("again 8"),
        "closed files free their places: {out}"
    );
    let log = d.log_text();
    assert!(
        log.contains(
            "uid 1001 has 8 files open here; the bound is 8 ([limits] open_files_per_uid)"
        ),
        "{log}"
    );
    let audit = std::fs::read_to_string(d.audit()).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("EMFILE") && l.contains("open_files_per_uid")),
        "the refusal is audited"
    );
}

#[test]
fn buffered_bytes_past_the_bound_are_enospc_and_nothing_is_stored() {
    let d = Daemon::start_with(CONFIG);
    seed(&d);
    let out = py_1001(
        &d,
        r#"
import os, errno
def w(fd, data, name):
    try:
        os.write(fd, data)
        print(name, 'written')
    except OSError as e:
        print(name, errno.errorcode[e.errno])
flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC
a = os.open('secret/u/a', flags)
w(a, b'a' * 40000, 'a')
b = os.open('secret/u/b', flags)
w(b, b'b' * 20000, 'b1')
w(b, b'b' * 20000, 'b2')
w(b, b'b', 'b3')
os.close(b)
os.close(a)
c = os.open('secret/u/c', flags)
w(c, b'c' * 60000, 'c')
os.close(c)
"#,
    );
    assert!(out.contains("a written"), "{out}");
    assert!(out.contains("b1 written"), "{out}");
    assert!(out.contains("b2 ENOSPC"), "the write past the bound: {out}");
    assert!(
        out.contains("b3 ENOSPC"),
        "later writes of that open: {out}"
    );
    assert!(
        out.contains("c written"),
        "closed buffers free their bytes: {out}"
    );
    assert_eq!(std::fs::read(d.p("secret/u/a")).expect("a").len(), 40000);
    assert_eq!(
        errno_of(std::fs::metadata(d.p("secret/u/b"))),
        Some(libc::ENOENT),
        "nothing of the refused open is stored"
    );
    assert_eq!(std::fs::read(d.p("secret/u/c")).expect("c").len(), 60000);
    let log = d.log_text();
    assert!(
        log.contains("uid 1001 would have 80000 bytes buffered in open files; the bound is 65536 ([limits] buffered_bytes_per_uid): nothing of this open will be stored"),
        "{log}"
    );
    let audit = std::fs::read_to_string(d.audit()).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("ENOSPC") && l.contains("secret/u/b")),
        "the refusal is audited"
    );
}

#[test]
fn read_snapshots_count_against_the_buffered_bytes_bound() {
    let d = Daemon::start_with(CONFIG);
    seed(&d);
    std::fs::write(d.p("secret/ro/big"), vec![b'r'; 30000]).expect("big");
    let out = py_1001(
        &d,
        r#"
import os, errno
fds = []
for i in range(3):
    try:
        fds.append(os.open('secret/ro/big', os.O_RDONLY))
        print(i, 'open')
    except OSError as e:
        print(i, errno.errorcode[e.errno])
os.close(fds.pop())
fd = os.open('secret/ro/big', os.O_RDONLY)
print('again', len(os.read(fd, 100000)))
"#,
    );
    // 2 × 30000 bytes fit in 65536; a third snapshot does not, until one is closed.
    assert!(out.contains("0 open") && out.contains("1 open"), "{out}");
    assert!(out.contains("2 ENOSPC"), "{out}");
    assert!(out.contains("again 30000"), "{out}");
}

#[test]
fn an_admin_is_not_bounded() {
    let d = Daemon::start_with(CONFIG);
    seed(&d);
    use std::io::Write;
    let held: Vec<std::fs::File> = (0..12)
        .map(|_| std::fs::File::open(d.p("secret/u/f")).expect("root opens past the bound"))
        .collect();
    let mut writers: Vec<std::fs::File> = (0..3)
        .map(|i| std::fs::File::create(d.p(&format!("secret/u/big{i}"))).expect("create"))
        .collect();
    for w in &mut writers {
        w.write_all(&[7u8; 50_000])
            .expect("root buffers past the bound");
    }
    for w in writers {
        w.sync_all().expect("commit");
    }
    drop(held);
    for i in 0..3 {
        assert_eq!(
            std::fs::read(d.p(&format!("secret/u/big{i}")))
                .expect("stored")
                .len(),
            50_000
        );
    }
}

#[test]
fn leases_past_the_bound_are_edquot_and_nothing_is_made_upstream() {
    let m = Moto::start();
    let d = Daemon::start_with(CONFIG);
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    std::fs::write(d.p("aws/config/root"), m.root_config()).expect("config/root");
    std::fs::write(
        d.p("aws/roles/deploy"),
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#,
    )
    .expect("role");
    let mut c = RootCredentials::new("testing", SecretBytes::from_slice(b"testing"));
    c.endpoint = Some(m.endpoint.clone());
    let iam = AwsIam::new(&c).expect("iam client");

    let o = as_1001(
        &d,
        "bash",
        &[
            "-c",
            "for i in 1 2 3; do cat aws/creds/deploy >/dev/null && echo ok$i || echo refused$i; done",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("ok1") && out.contains("ok2"), "{out}{err}");
    assert!(out.contains("refused3"), "{out}");
    assert!(err.contains("Disk quota exceeded"), "EDQUOT: {err}");
    assert_eq!(
        iam.list_users().expect("users").len(),
        2,
        "third never made"
    );
    let log = d.log_text();
    assert!(
        log.contains("uid 1001 holds 2 live leases; the bound is 2 ([limits] leases_per_uid)"),
        "{log}"
    );
    // Root (an admin) is not bounded.
    for _ in 0..3 {
        std::fs::read(d.p("aws/creds/deploy")).expect("root's credential");
    }
    // A revoked lease frees its place.
    let folder = d.p("sys/leases/aws/creds/deploy");
    let mut revoked = false;
    for e in std::fs::read_dir(&folder).expect("leases") {
        let p = e.expect("entry").path();
        let text = std::fs::read_to_string(&p).expect("lease");
        if text.contains("\"uid\": 1001") {
            std::fs::remove_file(&p).expect("revoke");
            revoked = true;
            break;
        }
    }
    assert!(revoked, "no lease of uid 1001 found");
    let o = as_1001(&d, "cat", &["aws/creds/deploy"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn ioctl_is_enotty_quietly_and_refusals_are_logged_within_a_budget() {
    let d = Daemon::start_with(CONFIG);
    seed(&d);
    let before = d.log_text().len();
    let out = py_1001(
        &d,
        r#"
import os, errno, fcntl, termios
fd = os.open('secret/u/f', os.O_RDONLY)
codes = set()
for _ in range(300):
    try:
        fcntl.ioctl(fd, termios.TIOCGWINSZ, b'\0' * 8)
        codes.add('ok')
    except OSError as e:
        codes.add(errno.errorcode[e.errno])
os.close(fd)
print('ioctl', sorted(codes))
refused = 0
for _ in range(300):
    try:
        os.unlink('secret/ro/x')
    except OSError as e:
        refused += e.errno == errno.EACCES
print('refused', refused)
"#,
    );
    assert!(out.contains("ioctl ['ENOTTY']"), "{out}");
    assert!(out.contains("refused 300"), "{out}");
    let log = d.log_text();
    let new = plain(&log[before..]);
    assert!(!new.contains("Not Implemented"), "fuser's warning: {new}");
    let lines = new
        .lines()
        .filter(|l| l.contains("uid=1001") && l.contains("refused"))
        .count();
    // Budget 50 per 10 s interval; the flood may straddle two intervals.
    assert!(
        (1..=100).contains(&lines),
        "{lines} refusal lines for uid 1001 (budget 50 per interval)"
    );
    // Once the interval is over, the next logged request writes the summary.
    std::thread::sleep(std::time::Duration::from_millis(10_500));
    let _ = as_1001(&d, "rm", &["-f", "secret/ro/x"]);
    let log = plain(&d.log_text()[before..]);
    assert!(log.contains("log lines suppressed for uid 1001"), "{log}");
    // The path, never an inode number.
    assert!(log.contains("path=\"secret/ro/x\""), "{log}");
}

#[test]
fn postgresql_roles_past_the_lease_bound_are_edquot_and_never_created() {
    let pg = Pg::start();
    let d = Daemon::start_with(CONFIG);
    pg.psql("CREATE TABLE IF NOT EXISTS app (v int)");
    std::fs::write(d.p("sys/mounts/pg"), "postgresql\n").expect("mount pg");
    write_synced(d.p("pg/config/connection"), pg.admin_url()).expect("config/connection");
    write_synced(
        d.p("pg/roles/app"),
        r#"creation_statements = ["CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"]"#,
    )
    .expect("role");
    let o = as_1001(
        &d,
        "bash",
        &[
            "-c",
            "for i in 1 2 3 4; do cat pg/creds/app >/dev/null && echo ok$i || echo refused$i; done",
        ],
    );
    let out = String::from_utf8_lossy(&o.stdout);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(out.contains("ok1") && out.contains("ok2"), "{out}{err}");
    assert!(
        out.contains("refused3") && out.contains("refused4"),
        "{out}"
    );
    assert!(err.contains("Disk quota exceeded"), "EDQUOT: {err}");
    let roles = pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'nomadfs-%-u1001-%'");
    assert_eq!(roles.trim(), "2", "roles past the bound were created");
}
