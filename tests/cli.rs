//! The CLI through a real mount: it finds the mount it runs inside (no --mount, no
//! NOMADFS_MOUNT, no config), paths follow the current directory; list, help, status, seal,
//! unseal; and the first passphrase at a terminal is asked twice.

mod common;

use common::Daemon;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// `nomadfs ARGS` in `dir`, with nothing else to find the mount by.
fn cli_in(dir: &Path, args: &[&str], stdin: &str) -> Output {
    use std::io::Write;
    let mut c = Command::new(common::bin())
        .args(args)
        .current_dir(dir)
        .env_remove("NOMADFS_MOUNT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("nomadfs");
    let mut i = c.stdin.take().expect("stdin");
    i.write_all(stdin.as_bytes()).expect("stdin");
    drop(i);
    c.wait_with_output().expect("output")
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "{}: {}",
        o.status,
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn the_cli_works_from_inside_the_mount() {
    let d = Daemon::start();
    // The README's first CLI line: `cd /run/nomadfs && nomadfs write secret/hello value=world`.
    let out = ok(&cli_in(
        &d.mnt,
        &["write", "secret/hello", "value=world"],
        "",
    ));
    assert_eq!(out, "Success! Data written to: secret/hello\n");
    assert_eq!(
        std::fs::read_to_string(d.p("secret/hello")).expect("written"),
        r#"{"value":"world"}"#
    );
    // Relative to the current directory inside the mount.
    let secret = d.p("secret");
    let out = ok(&cli_in(&secret, &["read", "hello"], ""));
    assert!(out.contains("value    world"), "{out}");
    ok(&cli_in(&secret, &["write", "app/db", "pass=x"], ""));
    assert!(d.p("secret/app/db").exists());
    let out = ok(&cli_in(&secret, &["list"], ""));
    assert_eq!(out, "Keys\n----\napp/\nhello\n");
    let out = ok(&cli_in(&d.p("secret/app"), &["list", "/secret"], ""));
    assert_eq!(out, "Keys\n----\napp/\nhello\n");
    let out = ok(&cli_in(&d.p("secret/app"), &["read", "/secret/hello"], ""));
    assert!(out.contains("world"), "{out}");
    // help PATH = PATH/.help (or the nearest above).
    let want = std::fs::read_to_string(d.p("secret/.help")).expect(".help");
    assert_eq!(ok(&cli_in(&secret, &["help"], "")), want);
    assert_eq!(ok(&cli_in(&d.mnt, &["help", "secret/app"], "")), want);
    let root = std::fs::read_to_string(d.p(".help")).expect("root .help");
    assert_eq!(ok(&cli_in(&d.mnt, &["help"], "")), root);
    // Outside any mount, with nothing configured: the error says how to find it.
    // (An explicit config that does not exist: an installed /etc/nomadfs/mounts.toml on the
    // test machine must not count as configured.)
    let elsewhere = tempfile::tempdir().expect("tmp");
    let none = elsewhere.path().join("none.toml");
    let none = none.to_str().expect("utf-8 path");
    let o = cli_in(
        elsewhere.path(),
        &["--config", none, "read", "secret/hello"],
        "",
    );
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("run the command inside the mount"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    // --mount from outside still works, paths from the mount's root.
    let m = d.mnt.to_string_lossy().to_string();
    let out = ok(&cli_in(
        elsewhere.path(),
        &["--mount", &m, "read", "secret/hello"],
        "",
    ));
    assert!(out.contains("world"), "{out}");
}

#[test]
fn status_seal_and_unseal() {
    let d = Daemon::start();
    let m = d.mnt.to_string_lossy().to_string();
    let out = ok(&cli_in(&d.mnt, &["status"], ""));
    assert!(out.contains("sealed         false"), "{out}");
    assert!(out.contains("leases"), "{out}");
    assert!(
        out.contains("secret/") && out.contains("Path"),
        "mount table: {out}"
    );
    assert_eq!(
        ok(&cli_in(d.dir.path(), &["--mount", &m, "seal"], "")),
        "Success! nomadfs is sealed.\n"
    );
    let o = cli_in(d.dir.path(), &["--mount", &m, "status"], "");
    assert_eq!(o.status.code(), Some(2), "status exits 2 when sealed");
    assert!(String::from_utf8_lossy(&o.stdout).contains("sealed         true"));
    // A wrong passphrase on stdin is refused with the reason; the right one unseals.
    let o = cli_in(d.dir.path(), &["--mount", &m, "unseal"], "wrong\n");
    assert!(!o.status.success());
    assert!(!String::from_utf8_lossy(&o.stderr).is_empty());
    let out = ok(&cli_in(
        d.dir.path(),
        &["--mount", &m, "unseal"],
        &format!("{}\n", common::PASS),
    ));
    assert!(out.contains("sealed         false"), "{out}");
    assert!(d.p("secret").exists());
}

#[test]
fn a_new_store_at_a_terminal_asks_twice_until_both_match() {
    let mut d = Daemon::start();
    d.stop();
    let _ = std::fs::remove_dir_all(d.store());
    // `script` gives the daemon a terminal; stdin feeds it: a mismatch, then a match.
    let cmd = format!(
        "{} --config {} server",
        common::bin(),
        d.config_path().display()
    );
    let log = std::fs::File::create(d.log()).expect("log");
    let mut child = Command::new("script")
        .arg("-qfec")
        .arg(&cmd)
        .arg("/dev/null")
        .stdin(Stdio::piped())
        .stdout(log)
        .stderr(Stdio::null())
        .spawn()
        .expect("script");
    {
        use std::io::Write;
        let mut i = child.stdin.take().expect("stdin");
        i.write_all(b"first-try\nfirst-typo\nchosen-pass\nchosen-pass\n")
            .expect("type");
        // Keep stdin open until the daemon is up (EOF would end `script`).
        common::wait_until("unsealed after the prompt", 30, || {
            std::fs::read_to_string(d.p("sys/health"))
                .is_ok_and(|h| h.contains("\"sealed\": false"))
        });
        let pid: u32 = std::fs::read_to_string(d.dir.path().join("store.pid"))
            .expect("pid file")
            .lines()
            .next()
            .and_then(|l| l.parse().ok())
            .expect("pid");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status();
        common::wait_until("unmounted", 10, || !common::is_mounted(&d.mnt));
        drop(i);
    }
    let _ = child.wait();
    let log = d.log_text();
    assert!(
        log.contains(&format!("creating a new store at {}", d.store().display())),
        "{log}"
    );
    assert!(log.contains("do not match; try again"), "{log}");
    assert_eq!(log.matches("new passphrase:").count(), 2, "{log}");
    // The store took the second, matching pair.
    std::fs::write(d.dir.path().join("pass"), "chosen-pass\n").expect("pass");
    d.spawn(true);
    d.stop();
    std::fs::write(d.dir.path().join("pass"), "first-try\n").expect("pass");
    let o = d
        .command(true)
        .stdin(Stdio::null())
        .output()
        .expect("wrong");
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn a_non_terminal_first_start_is_unchanged() {
    // No terminal, no passphrase: starts sealed, asks nothing.
    let mut d = Daemon::start();
    d.stop();
    let _ = std::fs::remove_dir_all(d.store());
    d.spawn(false);
    assert!(std::fs::read_to_string(d.p("sys/health"))
        .expect("health")
        .contains("\"sealed\": true"));
    assert!(!d.log_text().contains("new passphrase"));
}
