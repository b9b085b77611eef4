//! The container recipes of docs/CONTAINERS.md, with bubblewrap (`bwrap`) as the container
//! runtime: a subtree bound read-only at /run/secrets, a single-file bind that sees a rotated
//! value, and a user namespace that keeps the caller's real uid for policy.

mod common;

use common::{write_synced, Daemon};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Output, Stdio};

const POLICY: &str = r#"allow_other = true
[[policy]]
name = "app"
uids = [1001]
rules = [ { path = "secret/app/*", capabilities = ["read", "list"] } ]
"#;

/// `bwrap` with the recipe's base: the host's root read-only, a fresh /dev and /run.
fn bwrap() -> Command {
    let mut c = Command::new("bwrap");
    c.args([
        "--ro-bind",
        "/",
        "/",
        "--dev",
        "/dev",
        "--tmpfs",
        "/run",
        "--die-with-parent",
    ]);
    c
}

fn run(mut c: Command, script: &str) -> Output {
    c.args(["sh", "-c", script])
        .output()
        .expect("bwrap (apt-get install -y bubblewrap)")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn seed(d: &Daemon) {
    std::fs::create_dir_all(d.p("secret/app")).expect("mkdir");
    write_synced(d.p("secret/app/db"), "db-v1").expect("seed db");
    write_synced(d.p("secret/app/key"), "key-v1").expect("seed key");
    write_synced(d.p("secret/other"), "not for the app").expect("seed other");
}

/// Let uids other than root reach the mountpoint inside the test's 0700 temp dir.
fn open_parent(d: &Daemon) {
    std::fs::set_permissions(d.dir.path(), std::fs::Permissions::from_mode(0o711))
        .expect("chmod temp dir");
}

#[test]
fn subtree_bound_read_only_at_run_secrets() {
    let d = Daemon::start();
    seed(&d);
    let src = d.p("secret/app");
    let mut c = bwrap();
    c.arg("--ro-bind").arg(&src).arg("/run/secrets");
    let o = run(
        c,
        "ls /run/secrets; cat /run/secrets/db; echo; \
         echo -n hacked 2>&1 > /run/secrets/db | grep -c 'Read-only file system'; \
         touch /run/secrets/new 2>&1 | grep -c 'Read-only file system'; \
         test -e /run/secrets/../other; echo other=$?",
    );
    assert!(o.status.success(), "bwrap: {}", text(&o.stderr));
    assert_eq!(text(&o.stdout), "db\nkey\ndb-v1\n1\n1\nother=1\n");
    // Nothing changed through the read-only bind.
    assert_eq!(
        std::fs::read_to_string(d.p("secret/app/db")).expect("db"),
        "db-v1"
    );
    assert!(!d.p("secret/app/new").exists());

    // The folder bind is live: a rotation by rename and a new secret are seen at the next read.
    let mut c = bwrap();
    c.arg("--ro-bind").arg(&src).arg("/run/secrets");
    let (first, rest) = before_and_after(
        c,
        "cat /run/secrets/key",
        "ls /run/secrets; cat /run/secrets/key",
        || {
            write_synced(d.p("secret/app/key.tmp"), "key-v2").expect("write tmp");
            std::fs::rename(d.p("secret/app/key.tmp"), d.p("secret/app/key")).expect("mv");
            write_synced(d.p("secret/app/added"), "new").expect("add");
        },
    );
    assert_eq!(first, "key-v1");
    assert_eq!(rest, "added\ndb\nkey\nkey-v2");
}

/// Run `script1` in the container, print a line, wait for the test to run `between` (the
/// container blocks on stdin meanwhile), then run `script2`; returns both outputs.
fn before_and_after(
    mut c: Command,
    script1: &str,
    script2: &str,
    between: impl FnOnce(),
) -> (String, String) {
    let mut child = c
        .args([
            "sh",
            "-c",
            &format!("{script1}; echo; echo --; read _go; {script2}"),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("bwrap");
    let mut out = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    loop {
        let mut line = String::new();
        let n = out.read_line(&mut line).expect("read");
        if n == 0 || line == "--\n" {
            break;
        }
        first.push_str(&line);
    }
    between();
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(b"go\n").expect("go");
    drop(stdin);
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).expect("rest");
    let st = child.wait_with_output().expect("wait");
    assert!(st.status.success(), "bwrap: {}", text(&st.stderr));
    (first.trim_end().to_string(), rest)
}

#[test]
fn single_file_bind_sees_a_rotated_value() {
    let d = Daemon::start();
    seed(&d);
    let ino = std::fs::metadata(d.p("secret/app/db")).expect("stat").ino();
    let mut c = bwrap();
    c.arg("--ro-bind").arg(d.p("secret/app/db")).arg("/run/db");
    let (first, rest) = before_and_after(c, "cat /run/db", "cat /run/db", || {
        // A rotation as writers do it: a new value committed in place, same path and inode.
        write_synced(d.p("secret/app/db"), "db-v2").expect("rotate");
    });
    assert_eq!(
        std::fs::metadata(d.p("secret/app/db")).expect("stat").ino(),
        ino,
        "a commit in place keeps the inode"
    );
    assert_eq!(first, "db-v1");
    assert_eq!(rest, "db-v2");

    // The same with the CLI's write (it opens, writes, fsyncs, closes the same path).
    let mut c = bwrap();
    c.arg("--ro-bind").arg(d.p("secret/app/db")).arg("/run/db");
    let (first, rest) = before_and_after(c, "cat /run/db", "cat /run/db", || {
        let o = Command::new(common::bin())
            .arg("--mount")
            .arg(&d.mnt)
            .args(["write", "secret/app/db", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut ch| {
                ch.stdin.take().map(|mut i| i.write_all(b"db-v3"));
                ch.wait_with_output()
            })
            .expect("nomadfs write");
        assert!(o.status.success(), "nomadfs write: {}", text(&o.stderr));
    });
    assert_eq!(first, "db-v2");
    assert_eq!(rest, "db-v3");
}

fn as_uid_in_userns(uid: u32, binds: &[(&Path, &str)], script: &str) -> Output {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg("bwrap")
        // A user namespace in which the caller is root (uid 0 maps to the real uid).
        .args(["--unshare-user", "--uid", "0", "--gid", "0"])
        .args(["--ro-bind", "/", "/", "--dev", "/dev", "--tmpfs", "/run"]);
    for (src, dst) in binds {
        c.arg("--ro-bind").arg(src).arg(dst);
    }
    c.args(["sh", "-c", script])
        .current_dir("/")
        .env_remove("NOMADFS_MOUNT");
    c.output().expect("setpriv bwrap")
}

#[test]
fn user_namespace_keeps_the_real_uid_for_policy() {
    let d = Daemon::start_with(POLICY);
    seed(&d);
    open_parent(&d);
    let app = d.p("secret/app");

    // uid 1001 is root in its namespace; the daemon still sees 1001 and applies its policy.
    let o = as_uid_in_userns(
        1001,
        &[(&app, "/run/secrets")],
        "id -u; cat /run/secrets/db; echo",
    );
    assert!(
        o.status.success(),
        "uid 1001 in a userns: {}",
        text(&o.stderr)
    );
    assert_eq!(text(&o.stdout), "0\ndb-v1\n");
    let audit = std::fs::read_to_string(d.audit()).expect("audit");
    assert!(
        audit.lines().any(|l| l.contains("\"uid\":1001")
            && l.contains("secret/app/db")
            && l.contains("\"read\"")),
        "no audit line for uid 1001 reading secret/app/db"
    );

    // What 1001's policy does not grant stays refused, namespace root or not.
    let o = as_uid_in_userns(
        1001,
        &[(&app, "/run/secrets")],
        &format!(
            "cat {} >/dev/null 2>&1; echo other=$?",
            d.p("secret/other").display()
        ),
    );
    assert_eq!(text(&o.stdout), "other=1\n", "{}", text(&o.stderr));

    // Another uid with no policy gets nothing, with the same recipe.
    let o = as_uid_in_userns(
        1002,
        &[],
        &format!(
            "id -u; cat {} >/dev/null 2>&1; echo db=$?",
            d.p("secret/app/db").display()
        ),
    );
    assert_eq!(text(&o.stdout), "0\ndb=1\n", "{}", text(&o.stderr));
}
