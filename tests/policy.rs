//! Policies and the audit log through a real mount, with real uids (setpriv).

mod common;

use common::{contains, Daemon};
use std::process::Command;

const POLICIES: &str = r#"allow_other = true
[[policy]]
name = "app"
uids = [1001]
rules = [ { path = "secret/app/*", capabilities = ["read", "list"] },
          { path = "secret/app/deny", capabilities = ["deny"] },
          { path = "secret/drop/*", capabilities = ["create", "update", "list"] } ]
[[policy]]
name = "ops"
gids = [2002]
rules = [ { path = "secret/*", capabilities = ["read", "list", "create", "update", "delete"] },
          { path = "secret/app/*", capabilities = ["deny"] } ]
"#;

/// (uid, gid, supplementary groups)
const USERS: &[(u32, u32, &[u32])] = &[
    (1001, 1001, &[]),
    (1002, 2002, &[]),
    (1003, 1003, &[]),
    (1004, 1004, &[2002]),
    (1005, 1001, &[]),
];

const FILES: &[&str] = &[
    "secret/app/db",
    "secret/app/deny",
    "secret/app/sub/x",
    "secret/other",
    "secret/team/a",
    "secret/drop/f",
];
const DIRS: &[&str] = &["secret", "secret/app", "secret/team", "secret/drop"];

/// The reference evaluator: capabilities of (uid, gid, groups) on a policy path, written
/// independently of the daemon's (trailing `*` = prefix, deny wins, union of grants).
fn caps(uid: u32, gid: u32, groups: &[u32], path: &str) -> Vec<&'static str> {
    let mut rules: Vec<(&str, Vec<&'static str>)> = Vec::new();
    if uid == 1001 {
        rules.push(("secret/app/*", vec!["read", "list"]));
        rules.push(("secret/app/deny", vec!["deny"]));
        rules.push(("secret/drop/*", vec!["create", "update", "list"]));
    }
    if gid == 2002 || groups.contains(&2002) {
        rules.push((
            "secret/*",
            vec!["read", "list", "create", "update", "delete"],
        ));
        rules.push(("secret/app/*", vec!["deny"]));
    }
    let matches = |pat: &str| match pat.strip_suffix('*') {
        Some(prefix) => path.starts_with(prefix),
        None => path == pat,
    };
    let mut out = Vec::new();
    for (pat, cs) in &rules {
        if matches(pat) {
            if cs.contains(&"deny") {
                return Vec::new();
            }
            out.extend(cs.iter().copied());
        }
    }
    out
}

/// Can anything at or below `dir/` be granted (so the folder shows up)?
fn dir_visible(uid: u32, gid: u32, groups: &[u32], dir: &str) -> bool {
    let probe = ["", "x", "app/x", "team/x", "drop/x", "sub/x"];
    !caps(uid, gid, groups, &format!("{dir}/")).is_empty()
        || probe
            .iter()
            .any(|p| !caps(uid, gid, groups, &format!("{dir}/{p}")).is_empty())
}

fn as_user(d: &Daemon, (uid, gid, groups): (u32, u32, &[u32]), script: &str) -> String {
    let mut c = Command::new("setpriv");
    c.arg(format!("--reuid={uid}"))
        .arg(format!("--regid={gid}"));
    if groups.is_empty() {
        c.arg("--clear-groups");
    } else {
        let g: Vec<String> = groups.iter().map(u32::to_string).collect();
        c.arg(format!("--groups={}", g.join(",")));
    }
    let o = c
        .args(["sh", "-c", script])
        .current_dir(&d.mnt)
        .output()
        .expect("setpriv");
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn policy_matrix_through_the_mount() {
    let d = Daemon::start_with(POLICIES);
    for f in FILES {
        std::fs::create_dir_all(d.p(f).parent().expect("parent")).expect("mkdir");
        std::fs::write(d.p(f), b"value").expect("seed");
    }
    let mut cases = 0;
    let mut mismatches = Vec::new();
    for &(uid, gid, groups) in USERS {
        // One shell per user: every case prints "path op exit".
        let mut script = String::new();
        for f in FILES {
            script.push_str(&format!(
                "cat {f} >/dev/null 2>&1; echo {f} read $?\n\
                 test -e {f}; echo {f} visible $?\n\
                 test -r {f}; echo {f} readable $?\n\
                 (printf x > {f}) 2>/dev/null; echo {f} write $?\n"
            ));
        }
        for dir in DIRS {
            script.push_str(&format!(
                "ls {dir} >/dev/null 2>&1; echo {dir} read $?\n\
                 test -e {dir}; echo {dir} visible $?\n\
                 test -r {dir}; echo {dir} readable $?\n\
                 test -w {dir}; echo {dir} write $?\n"
            ));
        }
        let out = as_user(&d, (uid, gid, groups), &script);
        for line in out.lines() {
            let parts: Vec<&str> = line.split(' ').collect();
            let [path, op, code] = parts[..] else {
                panic!("bad line {line:?}")
            };
            let is_dir = DIRS.contains(&path);
            let key = if is_dir {
                format!("{path}/")
            } else {
                path.to_string()
            };
            let c = caps(uid, gid, groups, &key);
            let visible = if is_dir {
                dir_visible(uid, gid, groups, path)
            } else {
                !c.is_empty()
            };
            let expect = match (is_dir, op) {
                (_, "visible") => visible,
                (false, "read") | (false, "readable") => visible && c.contains(&"read"),
                (true, "read") | (true, "readable") => {
                    visible && (c.contains(&"list") || c.contains(&"read"))
                }
                (false, "write") => visible && c.contains(&"update"),
                (true, "write") => visible && c.contains(&"create"),
                _ => unreachable!(),
            };
            cases += 1;
            if (code == "0") != expect {
                mismatches.push(format!(
                    "uid {uid} gid {gid} {groups:?}: {op} {path} exit {code}, expected {}",
                    if expect { "ok" } else { "refused" }
                ));
            }
        }
    }
    assert!(cases >= 200, "only {cases} cases");
    assert!(
        mismatches.is_empty(),
        "{} of {cases} cases differ:\n{}",
        mismatches.len(),
        mismatches.join("\n")
    );
    // Filtered listing: ops (1002) lists secret/ but not app/, which a deny covers.
    let ls = as_user(&d, USERS[1], "ls secret");
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        vec!["drop", "other", "team"]
    );
    let ls = as_user(&d, USERS[0], "ls secret/app");
    assert_eq!(
        ls.split_whitespace().collect::<Vec<_>>(),
        vec!["db", "sub"],
        "deny hides"
    );
    // No policy: nothing at all.
    assert_eq!(
        as_user(&d, USERS[2], "ls secret 2>/dev/null; echo $?").trim(),
        "2"
    );
    // A user namespace does not make uid 1001 root here.
    let out = as_user(
        &d,
        USERS[2],
        "unshare --user --map-root-user cat secret/other >/dev/null 2>&1; echo $?",
    );
    assert_ne!(out.trim(), "0", "unshare --map-root-user gained access");
    // sys/ control files need sudo: a plain user cannot seal.
    assert_ne!(
        as_user(&d, USERS[1], "echo x > sys/seal 2>/dev/null; echo $?").trim(),
        "0"
    );
    assert!(d.p("secret/other").exists(), "still unsealed");
}

#[test]
fn live_policy_files() {
    let d = Daemon::start_with("allow_other = true\n");
    std::fs::write(d.p("secret/shared"), b"v").expect("seed");
    let u = (1001, 1001, &[][..]);
    assert_ne!(
        as_user(&d, u, "cat secret/shared >/dev/null 2>&1; echo $?").trim(),
        "0"
    );
    // A bad policy is refused with EINVAL (at the write that carries it, tests/shell_errors.rs;
    // else at commit, fsync/close); the old (none) stays.
    let bad = {
        use std::io::Write;
        let mut f = std::fs::File::create(d.p("sys/policies/p")).expect("create");
        f.write_all(
            b"uids = [1001]\nrules = [ { path = \"secret/*\", capabilities = [\"fly\"] } ]\n",
        )
        .and_then(|()| f.sync_all())
    };
    assert_eq!(common::errno_of(bad), Some(libc::EINVAL));
    assert!(!d.p("sys/policies/p").exists());
    std::fs::write(
        d.p("sys/policies/p"),
        "uids = [1001]\nrules = [ { path = \"secret/shared\", capabilities = [\"read\"] } ]\n",
    )
    .expect("policy");
    assert_eq!(as_user(&d, u, "cat secret/shared").trim(), "v");
    assert!(d.sh_ok("ls sys/policies").contains('p'));
    std::fs::remove_file(d.p("sys/policies/p")).expect("rm policy");
    assert_ne!(
        as_user(&d, u, "cat secret/shared >/dev/null 2>&1; echo $?").trim(),
        "0"
    );
}

#[test]
fn audit_records_hmacs_chains_and_fails_closed() {
    let d = Daemon::start();
    let canary = "canary-7f3a9e1d-audit";
    std::fs::write(d.p("secret/c"), canary).expect("write");
    assert_eq!(
        std::fs::read_to_string(d.p("secret/c")).expect("read"),
        canary
    );
    // sys/audit-hash gives the hash the log shows.
    std::fs::write(d.p("sys/audit-hash"), canary).expect("hash");
    let h = std::fs::read_to_string(d.p("sys/audit-hash")).expect("read hash");
    let h = h.trim();
    assert!(h.starts_with("hmac-sha256:"), "{h}");
    let log = std::fs::read(d.audit()).expect("audit log");
    assert!(
        contains(&log, h.as_bytes()),
        "value's HMAC not in the audit log"
    );
    assert!(
        !contains(&log, canary.as_bytes()),
        "canary in the audit log"
    );
    assert!(
        !contains(&d.log_text().into_bytes(), canary.as_bytes()),
        "canary in the daemon log"
    );
    let text = String::from_utf8_lossy(&log).to_string();
    let line = text
        .lines()
        .find(|l| l.contains("\"operation\":\"read\"") && l.contains("secret/c"))
        .expect("read line");
    let v: serde_json::Value = serde_json::from_str(line).expect("json");
    assert_eq!(v["uid"], 0);
    assert!(v["exe"].as_str().is_some_and(|e| !e.is_empty()));
    // The chain verifies; a deleted line is detected.
    let verify = |path: &std::path::Path| {
        Command::new(common::bin())
            .args(["audit", "verify"])
            .arg(path)
            .output()
            .expect("verify")
    };
    assert!(verify(&d.audit()).status.success());
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 3);
    let tampered = d.dir.path().join("tampered.log");
    let mut kept: Vec<&str> = lines.clone();
    kept.remove(1);
    std::fs::write(&tampered, kept.join("\n") + "\n").expect("write");
    assert!(
        !verify(&tampered).status.success(),
        "deleted line not detected"
    );
    let edited = text.replacen("secret/c", "secret/d", 1);
    std::fs::write(&tampered, edited).expect("write");
    assert!(
        !verify(&tampered).status.success(),
        "edited line not detected"
    );
    // The audit file gone (not reopened): secret reads fail closed with EIO.
    std::fs::remove_file(d.audit()).expect("rm audit");
    let r = std::fs::read(d.p("secret/c"));
    assert_eq!(common::errno_of(r), Some(libc::EIO));
}

#[test]
fn sighup_reopens_the_audit_log() {
    let d = Daemon::start();
    std::fs::write(d.p("secret/r"), b"v").expect("write");
    let rotated = d.dir.path().join("audit.log.1");
    std::fs::rename(d.audit(), &rotated).expect("rotate");
    let pid = d.child.as_ref().expect("daemon").id();
    let st = Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .expect("kill");
    assert!(st.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !d.audit().exists() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read(d.p("secret/r")).expect("read after reopen"),
        b"v"
    );
    let fresh = std::fs::read_to_string(d.audit()).expect("new audit file");
    assert!(
        fresh.contains("audit-reopen") && fresh.contains("secret/r"),
        "{fresh}"
    );
    for f in [d.audit(), rotated] {
        let o = Command::new(common::bin())
            .args(["audit", "verify"])
            .arg(&f)
            .output()
            .expect("verify");
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    }
}
