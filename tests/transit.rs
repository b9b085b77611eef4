//! The transit backend through a real mount: keys, exchange files, rotation, the deletion
//! guard, tampering, persistence, policy (real uids via setpriv), the CLI and the audit log.

mod common;

use common::{contains, errno_of, Daemon};
use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};

/// One exchange in one open: write `input`, seek to 0, read the output to EOF.
fn exchange(path: &Path, input: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut f = OpenOptions::new().read(true).write(true).open(path)?;
    f.write_all(input)?;
    f.seek(SeekFrom::Start(0))?;
    let mut out = Vec::new();
    f.read_to_end(&mut out)?;
    Ok(out)
}

fn setup(d: &Daemon, key: &str) {
    if !d.p("transit").exists() {
        std::fs::write(d.p("sys/mounts/transit"), "transit\n").expect("mount transit");
    }
    std::fs::create_dir(d.p(&format!("transit/keys/{key}"))).expect("mkdir key");
}

fn enc(d: &Daemon, key: &str, plain: &[u8]) -> String {
    let out = exchange(&d.p(&format!("transit/encrypt/{key}")), plain).expect("encrypt");
    String::from_utf8(out).expect("ciphertext is text")
}

fn dec(d: &Daemon, key: &str, ct: &str) -> std::io::Result<Vec<u8>> {
    exchange(&d.p(&format!("transit/decrypt/{key}")), ct.as_bytes())
}

fn ctl(d: &Daemon, key: &str, cmd: &str) -> std::io::Result<()> {
    let mut f = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(d.p(&format!("transit/keys/{key}/ctl")))?;
    f.write_all(cmd.as_bytes())
}

fn info(d: &Daemon, key: &str) -> serde_json::Value {
    let text =
        std::fs::read_to_string(d.p(&format!("transit/keys/{key}/info"))).expect("read info");
    serde_json::from_str(&text).expect("info is JSON")
}

#[test]
fn keys_round_trips_rotation_and_deletion() {
    let d = Daemon::start();
    setup(&d, "orders");
    let keys: Vec<String> = std::fs::read_dir(d.p("transit/keys"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    assert_eq!(keys, vec!["orders"]);
    assert_eq!(
        errno_of(std::fs::create_dir(d.p("transit/keys/orders"))),
        Some(libc::EEXIST)
    );

    // Binary round trips: empty, every byte value, ~1 MiB.
    let mut all: Vec<u8> = (0..=255u8).collect();
    all.extend_from_slice(b"\0\n\r\xff");
    let big: Vec<u8> = (0..(1u32 << 20)).map(|i| (i * 7 % 251) as u8).collect();
    for plain in [&b""[..], &all[..], &big[..]] {
        let ct = enc(&d, "orders", plain);
        assert!(ct.starts_with("nomadfs:v1:"), "ciphertext prefix");
        assert!(!ct.ends_with('\n'));
        let back = dec(&d, "orders", &ct).expect("decrypt");
        assert!(back == plain, "round trip of {} bytes", plain.len());
    }
    // `echo`'s trailing newline is ignored on input.
    let ct = enc(&d, "orders", b"hello");
    assert_eq!(
        dec(&d, "orders", &format!("{ct}\n")).expect("dec"),
        b"hello"
    );

    // Same open: a second read serves the cached output; a write at 0 starts a new input.
    {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .open(d.p("transit/encrypt/orders"))
            .expect("open rw");
        f.write_all_at(b"first", 0).expect("write");
        let mut a = vec![0u8; 4096];
        let n = f.read_at(&mut a, 0).expect("read");
        let mut b = vec![0u8; 4096];
        let m = f.read_at(&mut b, 0).expect("read again");
        assert_eq!(a[..n], b[..m], "one exchange per input");
        f.write_all_at(b"second", 0).expect("new input");
        let k = f.read_at(&mut b, 0).expect("read new");
        assert_ne!(a[..n], b[..k]);
        let ct2 = String::from_utf8(b[..k].to_vec()).expect("utf8");
        assert_eq!(dec(&d, "orders", &ct2).expect("dec"), b"second");
    }
    // Exchange files must be opened read-write.
    assert_eq!(
        errno_of(std::fs::write(d.p("transit/encrypt/orders"), b"x")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(std::fs::read(d.p("transit/encrypt/orders"))),
        Some(libc::EINVAL)
    );
    // Unknown key: ENOENT, also through the shell's O_CREAT.
    assert_eq!(
        errno_of(exchange(&d.p("transit/encrypt/nope"), b"x")),
        Some(libc::ENOENT)
    );
    let created = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(d.p("transit/encrypt/nope"));
    assert_eq!(errno_of(created), Some(libc::ENOENT));
    assert!(!d.sh("printf x > transit/encrypt/nope").status.success());

    // Rotation: new ciphertexts are v2, v1 still decrypts; rewrap gives v2.
    let v1 = enc(&d, "orders", b"version one");
    d.sh_ok("echo rotate > transit/keys/orders/ctl");
    let v2 = enc(&d, "orders", b"version two");
    assert!(v2.starts_with("nomadfs:v2:"), "rotated");
    assert_eq!(dec(&d, "orders", &v1).expect("v1"), b"version one");
    let rewrapped = exchange(&d.p("transit/rewrap/orders"), v1.as_bytes()).expect("rewrap");
    let rewrapped = String::from_utf8(rewrapped).expect("utf8");
    assert!(rewrapped.starts_with("nomadfs:v2:"), "rewrap → v2");
    assert_eq!(dec(&d, "orders", &rewrapped).expect("dec"), b"version one");

    // min_decryption_version blocks v1 (EPERM), not v2.
    d.sh_ok("echo min_decryption_version=2 > transit/keys/orders/ctl");
    assert_eq!(errno_of(dec(&d, "orders", &v1)), Some(libc::EPERM));
    assert_eq!(
        errno_of(exchange(&d.p("transit/rewrap/orders"), v1.as_bytes())),
        Some(libc::EPERM)
    );
    assert_eq!(dec(&d, "orders", &v2).expect("v2"), b"version two");

    // Bad control commands: EINVAL with the reason in the daemon log; nothing changed.
    assert_eq!(errno_of(ctl(&d, "orders", "spin\n")), Some(libc::EINVAL));
    assert_eq!(
        errno_of(ctl(&d, "orders", "min_decryption_version=7\n")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(ctl(&d, "orders", "deletion_allowed=maybe\n")),
        Some(libc::EINVAL)
    );
    assert!(d.log_text().contains("unknown command \"spin\""));
    let i = info(&d, "orders");
    assert_eq!(i["name"], "orders");
    assert_eq!(i["type"], "aes256-gcm96");
    assert_eq!(i["latest_version"], 2);
    assert_eq!(i["min_decryption_version"], 2);
    assert_eq!(i["deletion_allowed"], false);
    let versions = i["versions"].as_object().expect("versions");
    assert_eq!(versions.len(), 2);
    assert!(versions["1"]["created"]
        .as_str()
        .expect("time")
        .ends_with('Z'));
    // info is settings only: exactly these fields, no key material anywhere.
    let mut fields: Vec<&str> = i
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    fields.sort_unstable();
    assert_eq!(
        fields,
        vec![
            "deletion_allowed",
            "latest_version",
            "min_decryption_version",
            "name",
            "type",
            "versions"
        ]
    );
    for v in versions.values() {
        let mut vf: Vec<&str> = v
            .as_object()
            .expect("version")
            .keys()
            .map(String::as_str)
            .collect();
        vf.sort_unstable();
        assert_eq!(vf, vec!["created", "created_unix"]);
    }
    assert_eq!(
        errno_of(std::fs::read(d.p("transit/keys/orders/ctl"))),
        Some(libc::EACCES)
    );

    // Deletion guard: EPERM (rmdir and rm -r) until deletion_allowed=true.
    assert_eq!(
        errno_of(std::fs::remove_dir(d.p("transit/keys/orders"))),
        Some(libc::EPERM)
    );
    assert!(!d.sh("rm -r transit/keys/orders").status.success());
    assert_eq!(
        dec(&d, "orders", &v2).expect("key still there"),
        b"version two"
    );
    d.sh_ok("echo deletion_allowed=true > transit/keys/orders/ctl");
    d.sh_ok("rm -r transit/keys/orders");
    assert!(!d.p("transit/keys/orders").exists());
    assert_eq!(errno_of(dec(&d, "orders", &v2)), Some(libc::ENOENT));
    // rmdir works too.
    setup(&d, "tmp");
    ctl(&d, "tmp", "deletion_allowed=true\n").expect("allow");
    std::fs::remove_dir(d.p("transit/keys/tmp")).expect("rmdir");
    assert!(std::fs::read_dir(d.p("transit/keys"))
        .expect("ls")
        .next()
        .is_none());
}

#[test]
fn tampered_or_foreign_ciphertexts_are_einval() {
    let d = Daemon::start();
    setup(&d, "a");
    setup(&d, "b");
    let ct = enc(&d, "a", b"attack at dawn");
    let (head, b64) = ct.split_at("nomadfs:v1:".len());
    // Change one base64 character in the middle (a different byte after decoding).
    let mut chars: Vec<char> = b64.chars().collect();
    let mid = chars.len() / 2;
    chars[mid] = if chars[mid] == 'A' { 'B' } else { 'A' };
    let tampered = format!("{head}{}", chars.into_iter().collect::<String>());
    assert_eq!(errno_of(dec(&d, "a", &tampered)), Some(libc::EINVAL));
    assert!(d.log_text().contains("failed authentication"));
    // Another key's ciphertext, garbage, a version from the future: EINVAL.
    assert_eq!(errno_of(dec(&d, "b", &ct)), Some(libc::EINVAL));
    assert_eq!(
        errno_of(dec(&d, "a", "not a ciphertext")),
        Some(libc::EINVAL)
    );
    assert_eq!(errno_of(dec(&d, "a", "nomadfs:v1:@@@")), Some(libc::EINVAL));
    let future = ct.replacen("nomadfs:v1:", "nomadfs:v5:", 1);
    assert_eq!(errno_of(dec(&d, "a", &future)), Some(libc::EINVAL));
    assert_eq!(dec(&d, "a", &ct).expect("intact"), b"attack at dawn");
}

#[test]
fn keys_survive_a_restart() {
    let mut d = Daemon::start();
    setup(&d, "k");
    let v1 = enc(&d, "k", b"persisted");
    d.sh_ok("echo rotate > transit/keys/k/ctl");
    let v2 = enc(&d, "k", b"persisted too");
    d.restart();
    assert_eq!(dec(&d, "k", &v1).expect("v1 after restart"), b"persisted");
    assert_eq!(
        dec(&d, "k", &v2).expect("v2 after restart"),
        b"persisted too"
    );
    assert_eq!(info(&d, "k")["latest_version"], 2);
    assert!(enc(&d, "k", b"x").starts_with("nomadfs:v2:"));
    // Key material is only ever stored encrypted.
    d.stop();
    for (_, value) in common::store_dump(&d.store()) {
        assert!(
            !contains(&value, b"aes256-gcm96"),
            "meta stored in plaintext"
        );
    }
}

const POLICY: &str = r#"allow_other = true
[[policy]]
name = "encrypter"
uids = [1001]
rules = [ { path = "transit/encrypt/k", capabilities = ["update"] } ]
[[policy]]
name = "reader"
uids = [1002]
rules = [ { path = "transit/encrypt/k", capabilities = ["read", "list"] },
          { path = "transit/keys/k/info", capabilities = ["read"] } ]
"#;

/// Run `nomadfs --mount . CMD KEY` with stdin `hi` through the mount as `uid`.
fn cli_as(d: &Daemon, uid: u32, cmd: &str, key: &str) -> (bool, String, String) {
    let mut c = Command::new("setpriv")
        .arg(format!("--reuid={uid}"))
        .arg(format!("--regid={uid}"))
        .arg("--clear-groups")
        .arg(common::bin())
        .args(["--mount", ".", cmd, key])
        .current_dir(&d.mnt)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("setpriv");
    c.stdin
        .take()
        .expect("stdin")
        .write_all(b"hi")
        .expect("stdin");
    let o = c.wait_with_output().expect("wait");
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).to_string(),
        String::from_utf8_lossy(&o.stderr).to_string(),
    )
}

#[test]
fn encrypting_needs_update() {
    let d = Daemon::start_with(POLICY);
    setup(&d, "k");
    let (ok, out, err) = cli_as(&d, 1001, "encrypt", "k");
    assert!(ok, "uid 1001 has update: {err}");
    assert!(out.starts_with("nomadfs:v1:"), "{out}");
    // Root (the admin) decrypts what 1001 encrypted.
    assert_eq!(dec(&d, "k", out.trim()).expect("dec"), b"hi");
    let (ok, out, err) = cli_as(&d, 1002, "encrypt", "k");
    assert!(!ok && out.is_empty(), "uid 1002 lacks update");
    assert!(err.contains("Permission denied"), "{err}");
    // 1001 may not decrypt (no grant on decrypt/k): the file is hidden from it.
    let (ok, _, err) = cli_as(&d, 1001, "decrypt", "k");
    assert!(!ok, "1001 decrypted without a grant");
    assert!(
        err.contains("No such file") || err.contains("Permission denied"),
        "{err}"
    );
}

#[test]
fn cli_round_trip_and_audit_holds_no_plaintext() {
    let d = Daemon::start();
    setup(&d, "cli");
    let canary = "transit-canary-plaintext-5f2b9e";
    let mut plain = canary.as_bytes().to_vec();
    plain.extend_from_slice(b"\0\xff binary tail");
    let run = |cmd: &str, input: &[u8]| -> Vec<u8> {
        let mut c = Command::new(common::bin())
            .args(["--mount"])
            .arg(&d.mnt)
            .args([cmd, "cli"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn cli");
        c.stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("feed stdin");
        let o = c.wait_with_output().expect("cli");
        assert!(
            o.status.success(),
            "nomadfs {cmd}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        o.stdout
    };
    let ct = run("encrypt", &plain);
    assert!(ct.starts_with(b"nomadfs:v1:") && ct.ends_with(b"\n"));
    assert_eq!(run("decrypt", &ct), plain, "exact bytes back");
    let rw = run("rewrap", &ct);
    assert!(rw.starts_with(b"nomadfs:v1:") && rw != ct);
    assert_eq!(run("decrypt", &rw), plain);
    // MOUNT/KEY form, and a clean error for a missing key.
    let o = Command::new(common::bin())
        .args(["--mount"])
        .arg(&d.mnt)
        .args(["encrypt", "transit/missing"])
        .stdin(Stdio::null())
        .output()
        .expect("cli");
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("No such file"));

    // The audit log: exchanges recorded with HMACs, never the plaintext.
    let log = std::fs::read(d.audit()).expect("audit log");
    assert!(
        !contains(&log, canary.as_bytes()),
        "plaintext in the audit log"
    );
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("\"exchange\"") && l.contains("transit/decrypt/cli"))
        .collect();
    assert!(!lines.is_empty(), "decrypt exchanges are audited");
    assert!(lines
        .iter()
        .any(|l| l.contains("hmac-sha256:") && l.contains("response")));
    // The response HMAC of a decrypt is the HMAC of the plaintext.
    std::fs::write(d.p("sys/audit-hash"), &plain).expect("hash");
    let h = std::fs::read_to_string(d.p("sys/audit-hash")).expect("read hash");
    assert!(
        contains(&log, h.trim().as_bytes()),
        "plaintext's HMAC not in the audit log"
    );
    // Neither in the daemon log.
    assert!(!d.log_text().contains(canary));
}
