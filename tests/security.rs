//! Regression tests for the hostile-user review (issue 11): each defect reproduced through a
//! real mount, acting as unprivileged uids (setpriv), and shown fixed.

mod common;

use common::moto::Moto;
use common::{json, write_synced, Daemon, PASS};
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const POLICIES: &str = r#"allow_other = true
[[policy]]
name = "alice"
uids = [1001]
rules = [ { path = "secret/dropbox/*", capabilities = ["delete"] },
          { path = "secret/alice/*", capabilities = ["create", "read", "update", "delete", "list"] },
          { path = "secret/drop2/*", capabilities = ["create"] } ]
[[policy]]
name = "team"
uids = [1002]
rules = [ { path = "secret/team/*", capabilities = ["create", "read", "update", "delete", "list"] },
          { path = "secret/team/private/key", capabilities = ["deny"] },
          { path = "aws/creds/deploy", capabilities = ["read"] } ]
"#;

/// Run `script` with bash as `uid` (gid = uid, no groups) inside the mount.
fn as_uid(d: &Daemon, uid: u32, script: &str) -> Output {
    Command::new("setpriv")
        .args([
            &format!("--reuid={uid}"),
            &format!("--regid={uid}"),
            "--clear-groups",
            "bash",
            "-c",
            script,
        ])
        .current_dir(&d.mnt)
        .output()
        .expect("setpriv")
}

fn mkdirs(d: &Daemon, dirs: &[&str]) {
    for dir in dirs {
        std::fs::create_dir_all(d.p(dir)).unwrap_or_else(|e| panic!("mkdir {dir}: {e}"));
    }
}

fn ok(o: &Output) -> bool {
    o.status.success()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

fn read(d: &Daemon, rel: &str) -> String {
    std::fs::read_to_string(d.p(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
}

fn audit_lines(path: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn verify_audit(path: &Path) {
    let o = Command::new(common::bin())
        .args(["audit", "verify"])
        .arg(path)
        .output()
        .expect("audit verify");
    assert!(o.status.success(), "audit chain: {}", stderr(&o));
}

#[test]
fn rename_needs_read_on_what_it_moves() {
    let d = Daemon::start_with(POLICIES);
    mkdirs(&d, &["secret/dropbox", "secret/alice"]);
    write_synced(d.p("secret/dropbox/bobdrop"), "bob-secret").expect("bob's drop");
    write_synced(d.p("secret/alice/mine"), "alice-1").expect("alice's");

    // alice may delete in the drop box but not read it: she cannot read it by moving it.
    let o = as_uid(&d, 1001, "cat secret/dropbox/bobdrop");
    assert!(
        !ok(&o),
        "alice read the drop: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    let o = as_uid(&d, 1001, "mv secret/dropbox/bobdrop secret/alice/stolen");
    assert!(!ok(&o), "alice moved what she may not read");
    assert!(stderr(&o).contains("Permission denied"), "{}", stderr(&o));
    let o = as_uid(&d, 1001, "cat secret/alice/stolen");
    assert!(
        !ok(&o) && o.stdout.is_empty(),
        "the moved value is readable"
    );
    assert_eq!(read(&d, "secret/dropbox/bobdrop"), "bob-secret");
    assert!(!d.p("secret/alice/stolen").exists());

    // What she may read, delete and create, she may move.
    let o = as_uid(
        &d,
        1001,
        "mv secret/alice/mine secret/alice/moved && cat secret/alice/moved",
    );
    assert!(ok(&o), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "alice-1");
}

#[test]
fn folder_rename_is_refused_when_a_descendant_is_not_granted() {
    let d = Daemon::start_with(POLICIES);
    mkdirs(&d, &["secret/team/private", "secret/team/open/sub"]);
    write_synced(d.p("secret/team/private/key"), "denied-value").expect("key");
    write_synced(d.p("secret/team/private/ok"), "fine").expect("ok");
    write_synced(d.p("secret/team/open/a"), "a").expect("a");
    write_synced(d.p("secret/team/open/sub/b"), "b").expect("b");

    let o = as_uid(&d, 1002, "mv secret/team/private secret/team/pub");
    assert!(!ok(&o), "the folder with a denied secret moved");
    let o = as_uid(&d, 1002, "cat secret/team/pub/key");
    assert!(!ok(&o) && o.stdout.is_empty());
    assert_eq!(read(&d, "secret/team/private/key"), "denied-value");
    assert_eq!(read(&d, "secret/team/private/ok"), "fine");

    // A folder whose every descendant is granted moves whole.
    let o = as_uid(
        &d,
        1002,
        "mv secret/team/open secret/team/moved && cat secret/team/moved/sub/b",
    );
    assert!(ok(&o), "{}", stderr(&o));
    assert_eq!(String::from_utf8_lossy(&o.stdout), "b");
    // Out of the granted area: refused, nothing moved.
    let o = as_uid(&d, 1002, "mv secret/team/moved secret/elsewhere");
    assert!(!ok(&o));
    assert_eq!(read(&d, "secret/team/moved/a"), "a");
}

/// A tmpfs, unmounted (lazily) when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        std::fs::create_dir_all(at).expect("mkdir");
        let st = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                &format!("size={size},mode=0700"),
                "tmpfs",
            ])
            .arg(at)
            .status()
            .expect("mount tmpfs");
        assert!(st.success(), "mount tmpfs");
        Self(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A daemon whose audit log lives on its own small filesystem.
fn daemon_with_audit_on(dir: tempfile::TempDir, audit: &Path) -> Daemon {
    let mnt = dir.path().join("mnt");
    std::fs::create_dir_all(&mnt).expect("mkdir mnt");
    let cfg = format!(
        "mountpoint = {mnt:?}\nkdf_memory_kib = 19456\nkdf_iterations = 2\n{POLICIES}\n[storage]\ntype = \"file\"\npath = {:?}\n[audit]\npath = {audit:?}\nfsync = \"never\"\n",
        dir.path().join("store"),
    );
    std::fs::write(dir.path().join("mounts.toml"), cfg).expect("config");
    std::fs::write(dir.path().join("pass"), format!("{PASS}\n")).expect("pass");
    let mut d = Daemon {
        dir,
        mnt,
        child: None,
        env: Vec::new(),
    };
    d.spawn(true);
    d
}

fn fill(dir: &Path) {
    // Fill the filesystem to the last byte.
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1k"])
        .arg(format!("of={}", dir.join("fill").display()))
        .output();
    let _ = Command::new("dd")
        .args(["if=/dev/zero", "bs=1"])
        .arg(format!("of={}", dir.join("fill2").display()))
        .output();
}

#[test]
fn a_failing_audit_log_refuses_every_request_and_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let afs = dir.path().join("auditfs");
    let tmpfs = Tmpfs::mount(&afs, "256k");
    let audit = afs.join("audit.log");
    let d = daemon_with_audit_on(dir, &audit);
    write_synced(d.p("secret/a"), "old").expect("a");
    write_synced(d.p("secret/b"), "b").expect("b");
    std::fs::create_dir(d.p("secret/empty")).expect("mkdir");
    fill(&afs);

    let eio = |r: std::io::Result<()>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.raw_os_error(), Some(libc::EIO), "{what}: {e}");
    };
    eio(write_synced(d.p("secret/a"), "new"), "overwrite");
    eio(write_synced(d.p("secret/c"), "c"), "create");
    eio(std::fs::remove_file(d.p("secret/b")), "rm");
    eio(std::fs::rename(d.p("secret/b"), d.p("secret/b2")), "mv");
    eio(std::fs::create_dir(d.p("secret/newdir")), "mkdir");
    eio(std::fs::remove_dir(d.p("secret/empty")), "rmdir");
    eio(std::fs::read_dir(d.p("secret")).map(|_| ()), "ls");
    eio(std::fs::read(d.p("secret/a")).map(|_| ()), "cat");
    eio(std::fs::metadata(d.p("secret/a")).map(|_| ()), "stat");
    // A shell sees it too: the redirection's open is refused.
    let o = Command::new("bash")
        .arg("-c")
        .arg(format!("echo -n shell > {}", d.p("secret/a").display()))
        .output()
        .expect("bash");
    assert!(
        !o.status.success(),
        "bash wrote while the audit log was full"
    );

    // Space again: nothing had changed, and everything works.
    std::fs::remove_file(afs.join("fill")).expect("free");
    let _ = std::fs::remove_file(afs.join("fill2"));
    assert_eq!(read(&d, "secret/a"), "old");
    assert_eq!(read(&d, "secret/b"), "b");
    assert!(!d.p("secret/c").exists() && !d.p("secret/b2").exists());
    assert!(!d.p("secret/newdir").exists() && d.p("secret/empty").is_dir());
    write_synced(d.p("secret/a"), "new").expect("overwrite after freeing");
    assert_eq!(read(&d, "secret/a"), "new");
    // Every change in the log is announced by an intent line before its outcome.
    let lines = audit_lines(&audit);
    let writes: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|l| l["path"] == "secret/a" && l["operation"] == "write")
        .collect();
    let results: Vec<&str> = writes.iter().filter_map(|l| l["result"].as_str()).collect();
    assert_eq!(results, ["intent", "ok", "intent", "ok"], "{writes:?}");
    verify_audit(&audit);
    let mut d = d;
    d.stop();
    drop(tmpfs);
}

#[test]
fn refusal_floods_are_aggregated_and_rate_limited() {
    let d = Daemon::start_with(&format!(
        "{POLICIES}\n[limits]\nrequests_per_sec_per_uid = 200\nrequest_burst_per_uid = 400\n"
    ));
    write_synced(d.p("secret/x"), "x").expect("x");
    let before = std::fs::metadata(d.audit()).expect("audit").len();
    // uid 1003 has no policy at all: every stat is refused.
    const N: usize = 4000;
    let script = format!(
        "import os, errno\nc = {{}}\nfor i in range({N}):\n    try:\n        os.stat('secret/nx%d' % i)\n    except OSError as e:\n        c[errno.errorcode[e.errno]] = c.get(errno.errorcode[e.errno], 0) + 1\nprint(c)\n"
    );
    let o = Command::new("setpriv")
        .args([
            "--reuid=1003",
            "--regid=1003",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            &script,
        ])
        .current_dir(&d.mnt)
        .output()
        .expect("flood");
    assert!(o.status.success(), "{}", stderr(&o));
    let counts = String::from_utf8_lossy(&o.stdout).to_string();
    assert!(counts.contains("EAGAIN"), "no rate limit hit: {counts}");
    assert!(counts.contains("ENOENT"), "{counts}");
    // Root (an admin) is not rate limited.
    for i in 0..2000 {
        let e = std::fs::metadata(d.p(&format!("secret/nx{i}"))).expect_err("nx");
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "root: {e}");
    }
    assert_eq!(read(&d, "secret/x"), "x");
    // The aggregates of the last window are written within the interval plus a second.
    std::thread::sleep(nomadfs_core::refusals::INTERVAL + Duration::from_secs(2));
    let lines = audit_lines(&d.audit());
    let flood: Vec<&serde_json::Value> = lines.iter().filter(|l| l["uid"] == 1003).collect();
    let accounted: u64 = flood.iter().map(|l| l["count"].as_u64().unwrap_or(1)).sum();
    assert!(
        accounted >= N as u64,
        "{accounted} refusals accounted for, {N} made"
    );
    assert!(
        flood.len() <= 40,
        "{} audit lines for one uid's flood",
        flood.len()
    );
    assert!(flood.iter().any(|l| l["count"].as_u64().unwrap_or(0) > 100));
    let grown = std::fs::metadata(d.audit()).expect("audit").len() - before;
    assert!(grown < 200_000, "the audit log grew {grown} bytes");
    verify_audit(&d.audit());
}

#[test]
fn help_health_and_sys_names_show_only_what_the_caller_may_see() {
    let d = Daemon::start_with(POLICIES);
    std::fs::write(
        d.p("sys/mounts/hidden-team"),
        "type = \"generic\"\ndescription = \"TOP-SECRET-DESCRIPTION\"\n",
    )
    .expect("mount");
    assert!(read(&d, ".help").contains("TOP-SECRET-DESCRIPTION"));
    let o = as_uid(&d, 1001, "cat .help");
    assert!(ok(&o), "{}", stderr(&o));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(help.contains("secret/"), "{help}");
    assert!(!help.contains("hidden-team"), "{help}");
    assert!(!help.contains("TOP-SECRET"), "{help}");

    // Names under sys/ are no oracle without sudo: present and absent look alike.
    std::fs::write(
        d.p("sys/policies/extra"),
        "uids = [4242]\nrules = [ { path = \"secret/q\", capabilities = [\"read\"] } ]\n",
    )
    .expect("policy");
    for p in [
        "sys/mounts/secret",
        "sys/mounts/hidden-team",
        "sys/mounts/nonexistent",
        "sys/policies/extra",
        "sys/policies/nonexistent",
        "sys/leases/aws/creds/deploy/00000000-0000-0000-0000-000000000000",
    ] {
        let o = as_uid(&d, 1001, &format!("stat {p}"));
        assert!(!ok(&o), "{p} visible to uid 1001");
        assert!(stderr(&o).contains("No such file"), "{p}: {}", stderr(&o));
    }
    assert!(d.p("sys/mounts/secret").exists(), "root sees it");

    // Health counts only the caller's own leases.
    let m = Moto::start();
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    std::fs::write(d.p("aws/config/root"), m.root_config()).expect("config/root");
    std::fs::write(
        d.p("aws/roles/deploy"),
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:ListBucket","Resource":"*"}]}"#,
    )
    .expect("role");
    for _ in 0..2 {
        std::fs::read(d.p("aws/creds/deploy")).expect("root's creds");
    }
    let o = as_uid(
        &d,
        1002,
        "cat aws/creds/deploy >/dev/null && cat sys/health",
    );
    assert!(ok(&o), "{}", stderr(&o));
    assert_eq!(json(&o.stdout)["leases"], 1, "uid 1002's own");
    assert_eq!(json(read(&d, "sys/health").as_bytes())["leases"], 3);
    let o = as_uid(&d, 1001, "cat sys/health");
    assert_eq!(json(&o.stdout)["leases"], 0);
}

#[test]
fn size_and_write_bit_follow_read_and_update() {
    let d = Daemon::start_with(POLICIES);
    mkdirs(&d, &["secret/dropbox", "secret/drop2", "secret/alice"]);
    write_synced(d.p("secret/dropbox/bobdrop"), "0123456789").expect("drop");
    write_synced(d.p("secret/drop2/there"), "0123456789").expect("drop2");
    // delete-only: no size, no bits.
    let o = as_uid(
        &d,
        1001,
        "stat -c '%s %A' secret/dropbox/bobdrop; test -w secret/dropbox/bobdrop && echo W; test -r secret/dropbox/bobdrop && echo R; true",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0 ----------");
    // create-only on an existing file: it cannot be written (that would be an update).
    let o = as_uid(
        &d,
        1001,
        "stat -c '%s %A' secret/drop2/there; test -w secret/drop2/there && echo W; true",
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "0 ----------");
    let o = as_uid(&d, 1001, "echo -n x > secret/drop2/there");
    assert!(!ok(&o), "create-only overwrote an existing file");
    // ...but creating a new one works.
    let o = as_uid(&d, 1001, "echo -n new > secret/drop2/fresh");
    assert!(ok(&o), "{}", stderr(&o));
    assert_eq!(read(&d, "secret/drop2/fresh"), "new");
    // A reader sees the true size.
    write_synced(d.p("secret/alice/r"), "0123456789").expect("r");
    let o = as_uid(&d, 1001, "stat -c '%s' secret/alice/r");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "10");
}

#[test]
fn pending_files_never_leak_past_the_policy_and_outcomes_are_audited() {
    let d = Daemon::start_with(POLICIES);
    mkdirs(&d, &["secret/alice", "secret/hidden"]);
    write_synced(d.p("secret/alice/x"), "x").expect("x");
    // Root creates secret/hidden/pending and keeps it open (not stored until closed).
    let mut holder = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import os, sys, time\nf = open(sys.argv[1], 'w'); f.write('p'); f.flush()\nprint('open', flush=True)\ntime.sleep(30)\n",
        ])
        .arg(d.p("secret/hidden/pending"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("holder");
    {
        use std::io::BufRead;
        let out = holder.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(out)
            .read_line(&mut line)
            .expect("ready");
        assert_eq!(line.trim(), "open");
    }
    // Renaming into the hidden folder: the policy answers, not the pending file.
    let o = as_uid(&d, 1001, "mv -T secret/alice/x secret/hidden");
    assert!(!ok(&o));
    assert!(
        stderr(&o).contains("Permission denied") && !stderr(&o).contains("not empty"),
        "{}",
        stderr(&o)
    );
    let o = as_uid(&d, 1001, "rmdir secret/hidden");
    assert!(!stderr(&o).contains("not empty"), "{}", stderr(&o));
    let _ = holder.kill();
    let _ = holder.wait();

    // rm, mv and chmod of a file still being created: audited with their real outcome.
    let script = "import os\nf = open('secret/alice/new1', 'w'); f.write('1')\ng = open('secret/alice/new2', 'w'); g.write('2')\nos.chmod('secret/alice/new1', 0o600)\nos.rename('secret/alice/new1', 'secret/alice/renamed')\nos.unlink('secret/alice/new2')\nf.close(); g.close()\n";
    let o = as_uid(&d, 1001, &format!("/usr/bin/python3 -c \"{script}\""));
    assert!(ok(&o), "{}", stderr(&o));
    assert_eq!(read(&d, "secret/alice/renamed"), "1");
    assert!(!d.p("secret/alice/new2").exists());
    let lines = audit_lines(&d.audit());
    let outcome = |op: &str, path: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["operation"] == op && l["path"] == path && l["uid"] == 1001)
            .filter_map(|l| l["result"].as_str().map(str::to_string))
            .collect()
    };
    assert_eq!(outcome("create", "secret/alice/new1"), ["ok"]);
    assert_eq!(outcome("chmod", "secret/alice/new1"), ["ok"]);
    assert_eq!(outcome("rename", "secret/alice/new1"), ["intent", "ok"]);
    assert_eq!(outcome("delete", "secret/alice/new2"), ["intent", "ok"]);
}
