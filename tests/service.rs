//! Running as a service: the sd_notify protocol against a real NOTIFY_SOCKET listener, the
//! systemd unit (systemd-analyze verify when present, a key check always), and start failures
//! that exit non-zero with their reason.

mod common;

use common::Daemon;
use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

fn recv(sock: &UnixDatagram) -> String {
    let mut buf = [0u8; 4096];
    let n = sock.recv(&mut buf).expect("a notification within 30 s");
    String::from_utf8_lossy(&buf[..n]).to_string()
}

fn health(d: &Daemon) -> String {
    std::fs::read_to_string(d.p("sys/health")).unwrap_or_default()
}

#[test]
fn ready_is_sent_only_once_unsealed_and_stopping_at_exit() {
    let mut d = Daemon::start();
    d.stop();
    let sock_path = d.dir.path().join("notify.sock");
    let sock = UnixDatagram::bind(&sock_path).expect("bind NOTIFY_SOCKET");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    // Sealed start (no passphrase, no terminal): mounted, but not ready.
    let log = std::fs::File::create(d.log()).expect("log");
    let mut child = d
        .command(false)
        .env("NOTIFY_SOCKET", &sock_path)
        .stdin(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("daemon");
    let first = recv(&sock);
    assert!(!first.contains("READY=1"), "READY while sealed: {first:?}");
    assert!(first.contains("STATUS=sealed"), "{first:?}");
    assert!(health(&d).contains("\"sealed\": true"), "{}", health(&d));
    common::write_synced(d.p("sys/unseal"), common::PASS).expect("unseal");
    let ready = recv(&sock);
    assert!(ready.contains("READY=1"), "{ready:?}");
    assert!(
        health(&d).contains("\"sealed\": false"),
        "READY before unsealed"
    );
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status();
    let stopping = recv(&sock);
    assert!(stopping.contains("STOPPING=1"), "{stopping:?}");
    let st = child.wait().expect("wait");
    assert_eq!(st.code(), Some(0), "{}", d.log_text());
    assert!(!common::is_mounted(&d.mnt));
}

#[test]
fn ready_reaches_an_abstract_notify_socket() {
    use std::os::linux::net::SocketAddrExt;
    let mut d = Daemon::start();
    d.stop();
    let name = format!("nomadfs-notify-test-{}", std::process::id());
    let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes()).expect("addr");
    let sock = UnixDatagram::bind_addr(&addr).expect("bind abstract");
    sock.set_read_timeout(Some(Duration::from_secs(30)))
        .expect("timeout");
    d.env.push(("NOTIFY_SOCKET".into(), format!("@{name}")));
    d.spawn(true);
    let ready = recv(&sock);
    assert!(ready.contains("READY=1"), "{ready:?}");
    assert!(health(&d).contains("\"sealed\": false"));
}

/// Keys systemd 252 knows in each section, for the syntax check when systemd-analyze is absent
/// (only those a unit like ours may use; extend as needed).
const UNIT_KEYS: &[&str] = &[
    "Description",
    "Documentation",
    "Wants",
    "Requires",
    "After",
    "Before",
    "RequiresMountsFor",
    "ConditionPathExists",
    "PartOf",
    "BindsTo",
];
const SERVICE_KEYS: &[&str] = &[
    "Type",
    "NotifyAccess",
    "ExecStart",
    "ExecStartPre",
    "ExecStop",
    "ExecStopPost",
    "KillMode",
    "KillSignal",
    "TimeoutStartSec",
    "TimeoutStopSec",
    "Restart",
    "RestartSec",
    "RestartPreventExitStatus",
    "LoadCredential",
    "SetCredential",
    "StateDirectory",
    "StateDirectoryMode",
    "LogsDirectory",
    "LogsDirectoryMode",
    "RuntimeDirectory",
    "UMask",
    "LimitCORE",
    "LimitMEMLOCK",
    "LimitNOFILE",
    "NoNewPrivileges",
    "CapabilityBoundingSet",
    "AmbientCapabilities",
    "DevicePolicy",
    "DeviceAllow",
    "RestrictAddressFamilies",
    "RestrictNamespaces",
    "RestrictRealtime",
    "RestrictSUIDSGID",
    "LockPersonality",
    "MemoryDenyWriteExecute",
    "SystemCallArchitectures",
    "SystemCallFilter",
    "KeyringMode",
    "RemoveIPC",
    "User",
    "Group",
    "Environment",
    "EnvironmentFile",
];
const INSTALL_KEYS: &[&str] = &["WantedBy", "RequiredBy", "Alias", "Also"];

/// Options that put the service in its own mount namespace: its FUSE mount would not be seen
/// by the host, so the unit must not use them.
const NAMESPACING: &[&str] = &[
    "ProtectSystem",
    "ProtectHome",
    "PrivateTmp",
    "ReadWritePaths",
    "ReadOnlyPaths",
    "InaccessiblePaths",
    "PrivateDevices",
    "PrivateMounts",
    "ProtectKernelTunables",
    "ProtectKernelModules",
    "ProtectKernelLogs",
    "ProtectControlGroups",
    "ProtectProc",
    "ProtectHostname",
    "PrivateUsers",
    "BindPaths",
    "BindReadOnlyPaths",
    "TemporaryFileSystem",
    "MountFlags",
    "RootDirectory",
];

fn unit_path() -> &'static Path {
    Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/contrib/systemd/nomadfs.service"
    ))
}

#[test]
fn the_systemd_unit_is_well_formed() {
    let text = std::fs::read_to_string(unit_path()).expect("unit file");
    let mut section = String::new();
    let mut keys = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            assert!(line.ends_with(']'), "line {}: {raw}", i + 1);
            section = line.to_string();
            assert!(
                ["[Unit]", "[Service]", "[Install]"].contains(&line),
                "line {}: unknown section {line}",
                i + 1
            );
            continue;
        }
        let (k, _) = line
            .split_once('=')
            .unwrap_or_else(|| panic!("line {}: not KEY=VALUE: {raw}", i + 1));
        let known = match section.as_str() {
            "[Unit]" => UNIT_KEYS,
            "[Service]" => SERVICE_KEYS,
            "[Install]" => INSTALL_KEYS,
            _ => panic!("line {}: key outside a section", i + 1),
        };
        assert!(
            known.contains(&k),
            "line {}: unknown key {k} in {section}",
            i + 1
        );
        assert!(
            !NAMESPACING.contains(&k),
            "{k} would hide the mount from the host"
        );
        keys.push((k.to_string(), line[k.len() + 1..].to_string()));
    }
    let get = |k: &str| {
        keys.iter()
            .filter(|(kk, _)| kk == k)
            .map(|(_, v)| v.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(get("Type"), ["notify"]);
    assert_eq!(get("LimitCORE"), ["0"]);
    assert_eq!(get("NoNewPrivileges"), ["yes"]);
    assert!(get("LoadCredential")[0].starts_with("passphrase:"));
    let exec = get("ExecStart")[0];
    assert!(
        exec.contains("--passphrase-file ${CREDENTIALS_DIRECTORY}/passphrase"),
        "{exec}"
    );
    assert!(
        get("ExecStop")[0].contains("fusermount3 -u"),
        "ExecStop unmounts"
    );
    let caps = get("CapabilityBoundingSet")[0];
    assert!(
        caps.contains("CAP_SYS_ADMIN") && caps.contains("CAP_IPC_LOCK"),
        "{caps}"
    );
    assert_eq!(get("DeviceAllow"), ["/dev/fuse rw"]);

    // systemd-analyze verify, when installed (systemd need not be running): the unit with
    // this build's binary, and the man page it documents installed in a temporary MANPATH.
    let Ok(out) = Command::new("systemd-analyze").arg("--version").output() else {
        println!("systemd-analyze not installed: key check only");
        return;
    };
    assert!(out.status.success());
    let dir = tempfile::tempdir().expect("tmp");
    let unit = dir.path().join("nomadfs.service");
    std::fs::write(&unit, text.replace("/usr/local/bin/nomadfs", common::bin())).expect("unit");
    std::fs::create_dir_all(dir.path().join("man/man1")).expect("man dir");
    let man = Command::new(common::bin())
        .arg("man")
        .output()
        .expect("nomadfs man");
    assert!(man.status.success());
    std::fs::write(dir.path().join("man/man1/nomadfs.1"), &man.stdout).expect("man page");
    let v = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .env("MANPATH", dir.path().join("man"))
        .output()
        .expect("systemd-analyze verify");
    let msg = String::from_utf8_lossy(&v.stderr).to_string() + &String::from_utf8_lossy(&v.stdout);
    assert!(v.status.success(), "systemd-analyze verify: {msg}");
    for bad in ["Unknown", "Invalid", "Failed", "ignoring"] {
        assert!(!msg.contains(bad), "systemd-analyze verify: {msg}");
    }
}

/// A bad config: the daemon exits 1 and says why, once, without colours.
fn refused(extra: &str, why: &[&str]) {
    let dir = tempfile::tempdir().expect("tmp");
    let cfg = dir.path().join("mounts.toml");
    std::fs::write(
        &cfg,
        format!(
            "mountpoint = {:?}\n{extra}\n[storage]\ntype = \"file\"\npath = {:?}\n",
            dir.path().join("mnt"),
            dir.path().join("store")
        ),
    )
    .expect("config");
    let out = Command::new(common::bin())
        .arg("--config")
        .arg(&cfg)
        .arg("server")
        .env_remove("NOMADFS_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{extra}: {err}");
    for w in why {
        assert!(err.contains(w), "{extra}: expected {w:?} in {err}");
    }
    assert_eq!(
        err.matches(why[0]).count(),
        1,
        "printed more than once: {err}"
    );
    assert!(!err.contains('\u{1b}'), "{err}");
    assert!(!common::is_mounted(&dir.path().join("mnt")));
}

#[test]
fn a_bad_config_exits_non_zero_with_the_reason() {
    refused("threads = 100000", &["threads = 100000", "1 to 64"]);
    refused("threads = 0", &["threads = 0"]);
    refused("admins = []", &["admins = []", "no admin"]);
    refused(
        "[audit]\npath = \"/tmp/x.log\"\nfsnyc = \"always\"",
        &["unknown field `fsnyc`", "line 4"],
    );
}

#[test]
fn a_fuse_session_that_fails_exits_non_zero_and_unmounts() {
    // Issue 11's reproduction: each request thread opens its own /dev/fuse descriptor; with too
    // few descriptors allowed the session fails after mounting. That used to exit 0.
    let dir = tempfile::tempdir().expect("tmp");
    let mnt = dir.path().join("mnt");
    let cfg = dir.path().join("mounts.toml");
    std::fs::write(
        &cfg,
        format!(
            "mountpoint = {mnt:?}\nthreads = 64\naudit = \"off\"\n[storage]\ntype = \"memory\"\n"
        ),
    )
    .expect("config");
    std::fs::write(dir.path().join("pass"), "pw\n").expect("pass");
    let out = Command::new("bash")
        .arg("-c")
        .arg("ulimit -n 40 && exec \"$0\" --config \"$1\" server --passphrase-file \"$2\"")
        .arg(common::bin())
        .arg(&cfg)
        .arg(dir.path().join("pass"))
        .env_remove("NOMADFS_PASSPHRASE")
        .stdin(Stdio::null())
        .output()
        .expect("run");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("the FUSE session ended with an error"),
        "{err}"
    );
    assert!(err.contains("Too many open files"), "{err}");
    assert!(!err.contains("could not be unmounted"), "{err}");
    common::wait_until("unmounted", 10, || !common::is_mounted(&mnt));
}
