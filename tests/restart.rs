//! Restart after a crash, through real mounts: SIGKILL + immediate restart (what a supervisor
//! does) always works; a stale mount is cleared with a log line; a live daemon on the
//! mountpoint is named by pid; a closed log pipe does not kill the daemon, and SIGINT still
//! unmounts it.

mod common;

use common::{is_mounted, unmount, Daemon};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Spawn the daemon (stderr appended to its log) and wait until `sys/health` reads unsealed.
fn spawn_ready(d: &Daemon) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(d.log())
        .map_err(|e| e.to_string())?;
    let mut child = d
        .command(true)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(h) = std::fs::read_to_string(d.p("sys/health")) {
            if h.contains("\"sealed\": false") {
                return Ok(child);
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("exited early: {st}"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = child.kill();
    let _ = child.wait();
    Err("not ready in 20 s".into())
}

fn log_tail(d: &Daemon) -> String {
    let t = d.log_text();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn rounds() -> usize {
    std::env::var("NOMADFS_RESTART_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200)
}

#[test]
fn sigkill_and_immediate_restart_always_works() {
    let mut d = Daemon::start();
    let mut child = d.child.take().expect("first daemon");
    let n = rounds();
    let mut ok = 0;
    let mut failures = Vec::new();
    for round in 0..n {
        // A value per round: each restart must also serve what the previous daemon committed.
        let key = format!("secret/round-{round}");
        common::write_synced(d.p(&key), format!("v{round}")).expect("write before the kill");
        child.kill().expect("SIGKILL");
        child.wait().expect("reap");
        // No cleanup between: the dead daemon's mount may still be there (ENOTCONN).
        match spawn_ready(&d) {
            Ok(c) => {
                child = c;
                match std::fs::read_to_string(d.p(&key)) {
                    Ok(v) if v == format!("v{round}") => ok += 1,
                    other => failures.push(format!("round {round}: read back {other:?}")),
                }
            }
            Err(e) => {
                failures.push(format!("round {round}: {e}\n{}", log_tail(&d)));
                unmount(&d.mnt);
                child = spawn_ready(&d).expect("recover after a failed restart");
            }
        }
    }
    d.child = Some(child);
    let log = d.log_text();
    println!(
        "restart after SIGKILL: {ok} of {n} restarts succeeded; stale mounts met: {} cleared by us, {} by the dead daemon's auto-unmount helper",
        log.matches("lazily unmounted").count(),
        log.matches("cleared by its auto-unmount helper").count()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_eq!(ok, n);
    d.stop();
    let log = d.log_text();
    assert!(
        !log.contains('\u{1b}'),
        "ANSI colours in a log written to a file"
    );
}

/// fusermount3 processes whose arguments name `mnt` (the daemon's auto-unmount helper).
fn helpers(mnt: &Path) -> Vec<u32> {
    use std::os::unix::ffi::OsStrExt;
    let want = mnt.as_os_str().as_bytes();
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm"))
                .is_ok_and(|c| c.trim() == "fusermount3")
                && std::fs::read(format!("/proc/{p}/cmdline"))
                    .is_ok_and(|c| c.split(|b| *b == 0).any(|a| a == want))
        })
        .collect()
}

#[test]
fn a_stale_mount_is_lazily_unmounted_with_a_log_line() {
    let mut d = Daemon::start();
    // Kill the auto-unmount helper first, then the daemon: nothing clears the mount.
    let hs = helpers(&d.mnt);
    assert!(!hs.is_empty(), "no auto-unmount helper found");
    for h in hs {
        let _ = Command::new("kill")
            .arg("-KILL")
            .arg(h.to_string())
            .status();
    }
    let mut c = d.child.take().expect("daemon");
    c.kill().expect("kill");
    c.wait().expect("wait");
    let e = std::fs::metadata(&d.mnt).expect_err("a dead mount");
    assert_eq!(e.raw_os_error(), Some(libc::ENOTCONN), "{e}");
    d.child = Some(spawn_ready(&d).unwrap_or_else(|e| panic!("{e}\n{}", d.log_text())));
    let log = d.log_text();
    assert!(
        log.contains("stale mount left by a dead nomadfs") && log.contains("lazily unmounted"),
        "{log}"
    );
    assert_eq!(
        std::fs::read_to_string(d.p("sys/health"))
            .map(|h| h.contains("\"sealed\": false"))
            .ok(),
        Some(true)
    );
}

#[test]
fn a_live_daemon_on_the_mountpoint_is_named_by_pid() {
    let d = Daemon::start();
    let pid = d.child.as_ref().expect("daemon").id();
    let out = d
        .command(true)
        .stdin(Stdio::null())
        .output()
        .expect("second daemon");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("already served by a running nomadfs") && err.contains(&format!("pid {pid}")),
        "{err}"
    );
    // Printed once (not by both the log and an eprintln), and without colours (not a tty).
    assert_eq!(err.matches("already served").count(), 1, "{err}");
    assert!(!err.contains('\u{1b}'), "{err}");
    // The first daemon is untouched.
    assert!(std::fs::read_to_string(d.p("sys/health")).is_ok());
}

#[test]
fn a_closed_log_pipe_does_not_kill_the_daemon_and_sigint_unmounts() {
    let d = Daemon::start();
    let mut first = d;
    first.stop();
    // `nomadfs server 2>&1 | head -1`
    let mut daemon = first
        .command(true)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("daemon");
    let err = daemon.stderr.take().expect("stderr");
    let head = Command::new("head")
        .arg("-1")
        .stdin(err)
        .stdout(Stdio::piped())
        .spawn()
        .expect("head");
    let first_line = head.wait_with_output().expect("head output");
    assert!(!first_line.stdout.is_empty(), "head read nothing");
    common::wait_until("unsealed", 20, || {
        std::fs::read_to_string(first.p("sys/health"))
            .is_ok_and(|h| h.contains("\"sealed\": false"))
    });
    // Make the daemon log into the closed pipe: seal and unseal write INFO lines.
    for _ in 0..3 {
        common::write_synced(first.p("sys/seal"), "1").expect("seal");
        common::write_synced(first.p("sys/unseal"), common::PASS).expect("unseal");
    }
    common::write_synced(first.p("secret/after-epipe"), "still here").expect("write");
    assert_eq!(
        daemon.try_wait().expect("try_wait"),
        None,
        "the daemon died on EPIPE"
    );
    let _ = Command::new("kill")
        .arg("-INT")
        .arg(daemon.id().to_string())
        .status();
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(st) = daemon.try_wait().expect("try_wait") {
            break st;
        }
        assert!(Instant::now() < deadline, "no exit after SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(!is_mounted(&first.mnt), "still mounted after SIGINT");
}

#[test]
fn without_a_pid_file_the_live_daemon_is_found_in_proc() {
    // A memory store has no folder for a pid file: the pid comes from a /proc scan.
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("mnt");
    let cfg = dir.path().join("mounts.toml");
    std::fs::write(
        &cfg,
        format!("mountpoint = {mnt:?}\naudit = \"off\"\n[storage]\ntype = \"memory\"\n"),
    )
    .expect("config");
    let start = || {
        let mut c = Command::new(common::bin());
        c.arg("--config")
            .arg(&cfg)
            .arg("server")
            .arg("--passphrase-file")
            .arg(dir.path().join("pass"))
            .env_remove("NOMADFS_PASSPHRASE")
            .stdin(Stdio::null());
        c
    };
    std::fs::write(dir.path().join("pass"), "pw\n").expect("pass");
    let mut a = start().stderr(Stdio::null()).spawn().expect("daemon a");
    let a_pid = a.id();
    common::wait_until("a mounted", 20, || {
        std::fs::read_to_string(mnt.join("sys/health"))
            .is_ok_and(|h| h.contains("\"sealed\": false"))
    });
    let out = start().output().expect("daemon b");
    let err = String::from_utf8_lossy(&out.stderr);
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(a_pid.to_string())
        .status();
    let st = a.wait().expect("wait a");
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("already served by a running nomadfs"), "{err}");
    assert!(
        err.contains(&a_pid.to_string()),
        "pid {a_pid} not named: {err}"
    );
    assert_eq!(st.code(), Some(0));
    assert!(!is_mounted(&mnt));
}
