//! The generic backend and the mount table through a real FUSE mount (SPEC §1-3, §8-9).

mod common;
use common::*;
use std::io::Write;
use std::process::Command;

#[test]
fn shell_write_read_list_delete() {
    let d = Daemon::start();
    d.sh_ok("echo -n s3cr3t > secret/db-pass");
    assert_eq!(d.sh_ok("cat secret/db-pass"), "s3cr3t");
    assert_eq!(d.sh_ok("stat -c %s secret/db-pass").trim(), "6");
    assert_eq!(d.sh_ok("ls secret"), "db-pass\n");
    d.sh_ok("mkdir secret/app && echo hi > secret/app/x && mkdir secret/empty");
    assert_eq!(d.sh_ok("ls secret"), "app\ndb-pass\nempty\n");
    d.sh_ok("mv secret/app secret/app2");
    assert_eq!(d.sh_ok("cat secret/app2/x"), "hi\n");
    assert!(
        !d.sh("rmdir secret/app2").status.success(),
        "non-empty rmdir must fail"
    );
    d.sh_ok("rmdir secret/empty && rm secret/db-pass");
    assert_eq!(d.sh_ok("ls secret"), "app2\n");
    assert_eq!(
        errno_of(std::fs::read(d.p("secret/db-pass"))),
        Some(libc::ENOENT)
    );
}

#[test]
fn binary_values_and_overwrite() {
    let d = Daemon::start();
    let bin: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    std::fs::write(d.p("secret/blob"), &bin).expect("write");
    assert!(
        std::fs::read(d.p("secret/blob")).expect("read") == bin,
        "binary roundtrip"
    );
    std::fs::write(d.p("secret/blob"), b"short").expect("overwrite");
    assert_eq!(
        String::from_utf8_lossy(&std::fs::read(d.p("secret/blob")).expect("read")),
        "short"
    );
    // empty value via : > and touch
    d.sh_ok(": > secret/empty && touch secret/touched");
    assert_eq!(d.sh_ok("stat -c %s secret/empty secret/touched"), "0\n0\n");
    // append keeps the old bytes
    d.sh_ok("echo -n more >> secret/blob");
    assert_eq!(
        std::fs::read(d.p("secret/blob")).expect("read"),
        b"shortmore"
    );
}

#[test]
fn bad_input_gets_clear_errnos_and_stores_nothing() {
    let d = Daemon::start();
    // over the size limit: EFBIG and nothing stored
    let mut f = std::fs::File::create(d.p("secret/big")).expect("create");
    let r = f.write_all(&vec![7u8; (1 << 20) + 10]);
    assert_eq!(errno_of(r), Some(libc::EFBIG));
    drop(f);
    assert_eq!(
        errno_of(std::fs::metadata(d.p("secret/big"))),
        Some(libc::ENOENT)
    );
    let o = d.sh("head -c 2000000 /dev/zero > secret/big2");
    assert!(!o.status.success());
    assert_eq!(
        errno_of(std::fs::metadata(d.p("secret/big2"))),
        Some(libc::ENOENT)
    );
    // an oversized overwrite leaves the old value
    std::fs::write(d.p("secret/keep"), b"old").expect("write");
    assert_eq!(
        errno_of(std::fs::write(d.p("secret/keep"), vec![1u8; 2 << 20])),
        Some(libc::EFBIG)
    );
    let kept = std::fs::read(d.p("secret/keep")).expect("read");
    assert!(kept == b"old", "old value replaced: {} bytes", kept.len());
    // reserved names
    assert_eq!(
        errno_of(std::fs::write(d.p("secret/.hidden"), b"x")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(std::fs::create_dir(d.p("secret/.d"))),
        Some(libc::EINVAL)
    );
    // writes into the root or unknown mounts
    assert!(std::fs::write(d.p("nosuch"), b"x").is_err());
    assert_eq!(
        errno_of(std::fs::write(d.p("nomount/x"), b"x")),
        Some(libc::ENOENT)
    );
    // the log names the reason
    assert!(
        d.log_text().contains("exceeds the limit"),
        "{}",
        d.log_text()
    );
}

#[test]
fn rename_across_mounts_is_exdev() {
    let d = Daemon::start();
    d.sh_ok("echo generic > sys/mounts/generic && echo v > secret/a");
    let r = std::fs::rename(d.p("secret/a"), d.p("generic/a"));
    assert_eq!(errno_of(r), Some(libc::EXDEV));
    std::fs::rename(d.p("secret/a"), d.p("secret/b")).expect("rename within mount");
    assert_eq!(std::fs::read(d.p("secret/b")).expect("read"), b"v\n");
}

#[test]
fn mount_table_through_files() {
    let d = Daemon::start();
    d.sh_ok("echo generic > sys/mounts/generic");
    d.sh_ok(r#"printf 'type = "generic"\ndescription = "team A"\n' > sys/mounts/team-a"#);
    let ls = d.sh_ok("ls sys/mounts");
    assert_eq!(ls, "generic\nsecret\nteam-a\n");
    let table = d.sh_ok("cat sys/mounts.table");
    assert!(table.starts_with("Path"), "{table}");
    assert!(
        table.contains("team-a/") && table.contains("team A") && table.contains("sys/"),
        "{table}"
    );
    assert!(d.sh_ok("cat sys/mounts/team-a").contains("generic"));
    // same name in two mounts: separate data
    d.sh_ok("echo -n S > secret/foo && echo -n G > generic/foo");
    assert_eq!(d.sh_ok("cat secret/foo generic/foo"), "SG");
    // overlap refused
    let o = d.sh("echo generic > sys/mounts/secret");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("File exists"));
    assert!(
        !d.sh("echo floppy > sys/mounts/x").status.success(),
        "unknown type"
    );
    // remount keeps data
    d.sh_ok("mv sys/mounts/generic sys/mounts/other");
    assert_eq!(d.sh_ok("cat other/foo"), "G");
    assert!(!d.p("generic").exists());
    // unmount deletes data
    d.sh_ok("rm sys/mounts/other && echo generic > sys/mounts/other");
    assert_eq!(
        errno_of(std::fs::read(d.p("other/foo"))),
        Some(libc::ENOENT)
    );
    // help files
    assert!(d.sh_ok("cat .help").contains("team-a/"));
    assert!(d.sh_ok("cat secret/.help").contains("generic"));
}

#[test]
fn values_survive_restart_and_wrong_passphrase_exits_2() {
    let mut d = Daemon::start();
    d.sh_ok(
        "echo -n persisted > secret/p && echo generic > sys/mounts/extra && echo -n e > extra/k",
    );
    d.restart();
    assert_eq!(d.sh_ok("cat secret/p extra/k"), "persistede");
    d.stop();
    let before = store_dump(&d.store());
    let o = d
        .command(false)
        .env("NOMADFS_PASSPHRASE", "not the passphrase")
        .output()
        .expect("run");
    assert_eq!(
        o.status.code(),
        Some(2),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(String::from_utf8_lossy(&o.stderr).contains("wrong passphrase"));
    assert!(
        store_dump(&d.store()) == before,
        "a wrong passphrase must change nothing"
    );
    assert!(!is_mounted(&d.mnt));
}

#[test]
fn canary_never_reaches_storage_in_plaintext() {
    let mut d = Daemon::start();
    let name = "CANARYNAME7731";
    let value = "CANARYVALUE-9f2b1c";
    d.sh_ok(&format!(
        "mkdir secret/{name}dir && echo -n {value} > secret/{name}dir/{name}"
    ));
    assert_eq!(d.sh_ok(&format!("cat secret/{name}dir/{name}")), value);
    d.stop();
    let bytes = all_bytes(&d.store());
    assert!(!bytes.is_empty());
    for needle in [name, value, "secret"] {
        assert!(
            !contains(&bytes, needle.as_bytes()),
            "{needle} found in storage"
        );
    }
    assert!(
        !contains(d.log_text().as_bytes(), value.as_bytes()),
        "value in daemon log"
    );
}

#[test]
fn sealed_start_shows_only_sys_until_unsealed() {
    let mut d = Daemon::start();
    d.sh_ok("echo -n v > secret/x");
    d.stop();
    d.spawn(false);
    assert_eq!(d.sh_ok("ls"), "sys\n");
    assert!(d.sh_ok("cat sys/health").contains("\"sealed\": true"));
    assert!(!d.sh("echo wrong > sys/unseal").status.success());
    d.sh_ok(&format!("echo '{PASS}' > sys/unseal"));
    assert!(d.sh_ok("cat sys/health").contains("\"sealed\": false"));
    assert_eq!(d.sh_ok("cat secret/x"), "v");
    d.sh_ok("echo x > sys/seal");
    assert_eq!(errno_of(std::fs::read(d.p("secret/x"))), Some(libc::ENOENT));
}

#[test]
fn rotate_keeps_data_readable_across_restart() {
    let mut d = Daemon::start();
    d.sh_ok("echo -n old > secret/o && echo go > sys/rotate && echo -n new > secret/n");
    assert!(d.sh_ok("cat sys/health").contains("\"key_term\": 2"));
    d.restart();
    assert_eq!(d.sh_ok("cat secret/o secret/n"), "oldnew");
}

#[test]
fn readers_see_old_or_new_never_a_mix() {
    let d = Daemon::start();
    let a = vec![b'a'; 300_000];
    let b = vec![b'b'; 100_000];
    std::fs::write(d.p("secret/flip"), &a).expect("write");
    let path = d.p("secret/flip");
    let (a2, b2) = (a.clone(), b.clone());
    let writer = std::thread::spawn(move || {
        for i in 0..40 {
            std::fs::write(&path, if i % 2 == 0 { &b2 } else { &a2 }).expect("write");
        }
    });
    let mut reads = 0;
    while !writer.is_finished() || reads < 10 {
        let got = std::fs::read(d.p("secret/flip")).expect("read");
        assert!(got == a || got == b, "torn read of {} bytes", got.len());
        reads += 1;
    }
    writer.join().expect("writer");
}

#[test]
fn invalid_config_is_refused_with_its_line() {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("mounts.toml");
    std::fs::write(
        &cfg,
        "mountpoint = \"/tmp/x\"\n[storage]\ntype = \"file\"\npath = \"/tmp/y\"\nbogus_key = 1\n",
    )
    .expect("write");
    let o = Command::new(bin())
        .arg("--config")
        .arg(&cfg)
        .arg("server")
        .output()
        .expect("run");
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("line 5") && err.contains("bogus_key"), "{err}");
}

#[test]
fn cli_commands_are_file_operations() {
    let d = Daemon::start();
    let cli = |args: &[&str]| {
        let o = Command::new(bin())
            .arg("--mount")
            .arg(&d.mnt)
            .args(args)
            .output()
            .expect("cli");
        assert!(
            o.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    assert!(cli(&["write", "secret/hello", "value=world"]).contains("Success!"));
    let out = cli(&["read", "secret/hello"]);
    assert!(out.starts_with("Key"), "{out}");
    assert!(
        out.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["value", "world"]),
        "{out}"
    );
    assert!(cli(&["mount", "generic", "kv2"]).contains("Success!"));
    assert!(cli(&["mounts"]).contains("kv2/"));
    cli(&["remount", "kv2", "kv3"]);
    assert!(cli(&["mounts"]).contains("kv3/"));
    cli(&["unmount", "kv3"]);
    assert!(!cli(&["mounts"]).contains("kv3/"));
    let st = cli(&["status"]);
    assert!(
        st.lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>() == ["sealed", "false"]),
        "{st}"
    );
}

#[test]
fn daemon_is_not_dumpable() {
    let d = Daemon::start();
    let pid = d.child.as_ref().expect("child").id();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    // PR_SET_DUMPABLE 0 makes /proc/PID owned by root and core dumps impossible.
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let core = limits
        .lines()
        .find(|l| l.starts_with("Max core file size"))
        .expect("core line");
    assert!(core.split_whitespace().nth(4) == Some("0"), "{core}");
    assert!(status.contains("State"));
    // Run as root (CAP_IPC_LOCK), the daemon locks its memory: secrets never reach swap.
    let locked: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmLck line");
    assert!(locked > 0, "VmLck is 0: memory not locked");
    assert!(d.log_text().contains("memory locked"));
}

#[test]
fn passphrase_from_the_environment_leaves_no_copy_in_environ() {
    let mut d = Daemon::start();
    d.stop();
    let mut child = d
        .command(false)
        .env("NOMADFS_PASSPHRASE", common::PASS)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut ready = false;
    while std::time::Instant::now() < deadline {
        if std::fs::read_to_string(d.p("sys/health")).is_ok_and(|h| h.contains("\"sealed\": false"))
        {
            ready = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    let environ = std::fs::read(format!("/proc/{}/environ", child.id())).unwrap_or_default();
    let _ = std::process::Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let _ = child.wait();
    assert!(ready, "daemon did not unseal from NOMADFS_PASSPHRASE");
    assert!(!environ.is_empty(), "could not read the daemon's environ");
    assert!(
        !contains(&environ, common::PASS.as_bytes()),
        "the passphrase is still in /proc/PID/environ"
    );
    assert!(!contains(&environ, b"NOMADFS_PASSPHRASE="));
}

/// Run a bash snippet inside the mountpoint (bash's printf writes line by line: two write(2)s).
fn bash(d: &Daemon, script: &str) -> std::process::Output {
    std::process::Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(&d.mnt)
        .output()
        .expect("bash")
}

#[test]
fn mount_specs_apply_whole_and_bad_ones_fail_the_write() {
    let d = Daemon::start();
    // The SPEC's form: two write(2) calls, applied whole at close.
    let o = bash(
        &d,
        r#"printf 'type = "generic"\ndescription = "team A"\n' > sys/mounts/team-a"#,
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let spec = d.sh_ok("cat sys/mounts/team-a");
    assert!(spec.contains("description = \"team A\""), "{spec}");
    // cat fstat()s its output: the just-created control file answers from its handle.
    std::fs::write(
        d.dir.path().join("spec"),
        "type = \"generic\"\ndescription = \"B\"\n",
    )
    .expect("spec");
    let o = bash(
        &d,
        &format!("cat {:?} > sys/mounts/team-b", d.dir.path().join("spec")),
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(d
        .sh_ok("cat sys/mounts/team-b")
        .contains("description = \"B\""));
    d.sh_ok("echo -n v > team-b/k");
    // A spec that can no longer become valid fails the write(2) that carries it; nothing is
    // mounted.
    for (name, script) in [
        ("y", "echo nosuchtype > sys/mounts/y"),
        (
            "z",
            r#"printf 'type = "generic"\nbogus = 1\n' > sys/mounts/z"#,
        ),
        ("w", r#"printf 'type = "floppy"\n' > sys/mounts/w"#),
    ] {
        let o = bash(&d, script);
        assert!(!o.status.success(), "{script} succeeded");
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("Invalid argument"),
            "{script}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        assert!(!d.p(name).exists(), "{script} mounted {name}/");
        assert!(
            !d.sh_ok("ls sys/mounts").lines().any(|l| l == name),
            "{script}"
        );
    }
    assert!(d.log_text().contains("unknown backend type \"nosuchtype\""));
    let audit = std::fs::read_to_string(d.audit()).expect("audit log");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("sys/mounts/y") && l.contains("EINVAL")),
        "the refused write is audited"
    );
}
