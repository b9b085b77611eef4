//! etcd storage against a real etcd (Debian's etcd-server): the storage conformance suite, a
//! daemon on etcd, two daemons sharing one store, a 3-node cluster losing a node mid-run, and
//! etcd going away and coming back. Needs the `etcd` feature (`cargo test --features etcd`).

mod common;

use common::{contains, errno_of, Daemon, PASS};
use nomadfs_core::storage::etcd::{EtcdConfig, EtcdStorage};
use nomadfs_core::storage::Storage;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A free loopback TCP port (bound and released; etcd binds it right after).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    child: Option<Child>,
}

/// An etcd cluster of throwaway members on loopback ports in a temp dir; killed on drop.
struct Etcd {
    dir: tempfile::TempDir,
    members: Vec<Member>,
}

impl Etcd {
    fn start(n: usize) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let members = (0..n)
            .map(|i| Member {
                name: format!("n{i}"),
                client: free_port(),
                peer: free_port(),
                child: None,
            })
            .collect();
        let mut e = Self { dir, members };
        for i in 0..n {
            e.spawn(i);
        }
        e.wait_healthy();
        e
    }

    fn initial_cluster(&self) -> String {
        self.members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn log(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("etcd-{i}.log"))
    }

    fn spawn(&mut self, i: usize) {
        let cluster = self.initial_cluster();
        let data = self.dir.path().join(format!("data-{i}"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log(i))
            .expect("etcd log");
        let m = &mut self.members[i];
        let client = format!("http://127.0.0.1:{}", m.client);
        let peer = format!("http://127.0.0.1:{}", m.peer);
        let child = Command::new("etcd")
            .args(["--name", &m.name, "--data-dir"])
            .arg(&data)
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "nomadfs-test"])
            .args(["--logger", "zap", "--log-outputs", "stderr"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd (apt-get install etcd-server)");
        m.child = Some(child);
    }

    fn endpoint(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.members[i].client)
    }

    fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// Wait until every running member reports healthy (it has a leader and answers).
    fn wait_healthy(&self) {
        let running: Vec<String> = (0..self.members.len())
            .filter(|i| self.members[*i].child.is_some())
            .map(|i| self.endpoint(i))
            .collect();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let ok = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &running.join(","), "--command-timeout=2s"])
                .args(["endpoint", "health"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let logs: String = (0..self.members.len())
            .map(|i| std::fs::read_to_string(self.log(i)).unwrap_or_default())
            .collect();
        let tail = &logs[logs.len().saturating_sub(4000)..];
        panic!("etcd not healthy; log tail:\n{tail}");
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every key and value under `prefix`, read with etcdctl (not through nomadfs).
    fn dump(&self, prefix: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &self.endpoints().join(",")])
            .args(["get", "--prefix", prefix, "-w", "json"])
            .output()
            .expect("etcdctl");
        assert!(out.status.success(), "etcdctl get failed");
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
        let b64 = |s: &serde_json::Value| base64_decode(s.as_str().unwrap_or_default());
        v["kvs"]
            .as_array()
            .map(|kvs| {
                kvs.iter()
                    .map(|kv| (b64(&kv["key"]), b64(&kv["value"])))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

/// Standard base64 (etcdctl's JSON output), without a crate.
fn base64_decode(s: &str) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    };
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes() {
        let Some(v) = val(c) else { continue };
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

/// A daemon on etcd at `endpoints` with `prefix`, in its own temp dir.
fn daemon_on(endpoints: &[String], prefix: &str) -> Daemon {
    let d = prepare(endpoints, prefix);
    let mut d = d;
    d.spawn(true);
    d
}

fn prepare(endpoints: &[String], prefix: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let cfg = format!(
        "mountpoint = {mnt:?}\nkdf_memory_kib = 19456\nkdf_iterations = 2\n[storage]\ntype = \"etcd\"\nendpoints = [{}]\nprefix = {prefix:?}\n[audit]\npath = {:?}\n",
        eps.join(", "),
        dir.path().join("audit.log")
    );
    std::fs::write(dir.path().join("mounts.toml"), cfg).expect("config");
    std::fs::write(dir.path().join("pass"), format!("{PASS}\n")).expect("pass");
    Daemon {
        dir,
        mnt,
        child: None,
        env: Vec::new(),
    }
}

fn write(path: &Path, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

#[test]
fn conformance_against_etcd() {
    let etcd = Etcd::start(1);
    let s = EtcdStorage::new(EtcdConfig::new(etcd.endpoints(), "conf/")).expect("storage");
    assert_eq!(s.kind(), "etcd");
    nomadfs_core::storage::conformance::run(&s);
    // Every key it wrote lives under its prefix, and another prefix sees none of them.
    let all = etcd.dump("");
    assert!(!all.is_empty());
    assert!(all.iter().all(|(k, _)| k.starts_with(b"conf/")));
    let other = EtcdStorage::new(EtcdConfig::new(etcd.endpoints(), "other/")).expect("storage");
    assert!(other.list("").expect("list").is_empty());
    assert_eq!(other.get("a/1").expect("get"), None);
    // Listing pages through more keys than one page holds, in order.
    let keys: Vec<String> = (0..2500).map(|i| format!("many/{i:05}")).collect();
    for chunk in keys.chunks(100) {
        let ops: Vec<_> = chunk
            .iter()
            .map(|k| nomadfs_core::storage::WriteOp::Put(k.clone(), vec![1]))
            .collect();
        s.apply(&ops).expect("batch of 100");
    }
    assert_eq!(s.list("many/").expect("list"), keys);
    // Direct children page through leaves too.
    assert_eq!(s.list_children("many/").expect("children"), keys);
    let c = EtcdStorage::new(EtcdConfig::new(etcd.endpoints(), "conc/")).expect("storage");
    nomadfs_core::storage::conformance::run_concurrent(&c);
}

#[test]
fn batch_over_the_txn_limit_is_refused_whole() {
    let etcd = Etcd::start(1);
    let s = EtcdStorage::new(EtcdConfig::new(etcd.endpoints(), "p/")).expect("storage");
    let ops: Vec<_> = (0..200)
        .map(|i| nomadfs_core::storage::WriteOp::Put(format!("k{i}"), vec![1]))
        .collect();
    let e = s
        .apply(&ops)
        .expect_err("etcd allows 128 ops per txn by default");
    assert_eq!(
        e.kind,
        nomadfs_core::ErrorKind::InvalidInput,
        "{}",
        e.message
    );
    assert!(s.list("").expect("list").is_empty(), "nothing half-written");
}

#[test]
fn daemon_on_etcd_writes_reads_restarts_and_stores_no_plaintext() {
    let etcd = Etcd::start(1);
    let mut d = daemon_on(&etcd.endpoints(), "nomadfs/");
    let health = read(&d.p("sys/health"));
    assert!(health.contains("\"storage\": \"etcd\""), "{health}");
    let canary = "canary-value-7c1f9e";
    write(&d.p("secret/canary-name-5d2a"), canary);
    std::fs::create_dir(d.p("secret/app")).expect("mkdir");
    write(&d.p("secret/app/db"), "hunter2");
    assert_eq!(read(&d.p("secret/canary-name-5d2a")), canary);
    d.restart();
    assert_eq!(read(&d.p("secret/canary-name-5d2a")), canary);
    assert_eq!(read(&d.p("secret/app/db")), "hunter2");
    let mut names: Vec<String> = std::fs::read_dir(d.p("secret"))
        .expect("ls")
        .map(|e| e.expect("entry").file_name().to_string_lossy().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec![".help", "app", "canary-name-5d2a"]);
    // Nothing in etcd holds a value or a name in plaintext; all of it is under the prefix.
    let all = etcd.dump("");
    assert!(all.len() > 3);
    for (k, v) in &all {
        assert!(k.starts_with(b"nomadfs/"));
        for needle in [canary.as_bytes(), b"canary-name", b"hunter2", b"secret/app"] {
            assert!(
                !contains(k, needle) && !contains(v, needle),
                "plaintext in etcd"
            );
        }
    }
    // A wrong passphrase is refused with exit code 2 against etcd too.
    d.stop();
    std::fs::write(d.dir.path().join("pass"), "wrong\n").expect("pass");
    let st = d.command(true).status().expect("run");
    assert_eq!(st.code(), Some(2));
}

#[test]
fn two_daemons_share_one_store() {
    let etcd = Etcd::start(1);
    let a = daemon_on(&etcd.endpoints(), "shared/");
    let b = daemon_on(&etcd.endpoints(), "shared/");
    write(&a.p("secret/from-a"), "alpha");
    assert_eq!(read(&b.p("secret/from-a")), "alpha");
    write(&b.p("secret/from-b"), "beta");
    assert_eq!(read(&a.p("secret/from-b")), "beta");
    write(&a.p("secret/from-a"), "alpha2");
    assert_eq!(read(&b.p("secret/from-a")), "alpha2");
    std::fs::remove_file(b.p("secret/from-a")).expect("rm through b");
    assert_eq!(
        errno_of(std::fs::read(a.p("secret/from-a"))),
        Some(libc::ENOENT)
    );

    // A rotates the key: B reads what A writes under the new term (it reloads the keyring).
    write(&a.p("sys/rotate"), "x");
    write(&a.p("secret/after-rotate"), "gamma");
    assert_eq!(read(&b.p("secret/after-rotate")), "gamma");
    // B rotates too, from the keyring as stored (A's term kept): both read everything.
    write(&b.p("sys/rotate"), "x");
    write(&b.p("secret/after-second"), "delta");
    for d in [&a, &b] {
        assert_eq!(read(&d.p("secret/after-rotate")), "gamma");
        assert_eq!(read(&d.p("secret/after-second")), "delta");
        assert_eq!(read(&d.p("secret/from-b")), "beta");
        let h = read(&d.p("sys/health"));
        assert!(h.contains("\"key_term\": 3"), "{h}");
    }

    // A mounts a new backend: B finds it on first use (re-reads the mount table on a miss).
    write(&a.p("sys/mounts/team"), "generic");
    write(&a.p("team/x"), "in-team");
    assert_eq!(read(&b.p("team/x")), "in-team");
    // Both daemons mounting at once lose no mount.
    write(&b.p("sys/mounts/bee"), "generic");
    write(&a.p("sys/mounts/ay"), "generic");
    for d in [&a, &b] {
        let table = read(&d.p("sys/mounts.table"));
        for m in ["team/", "bee/", "ay/", "secret/"] {
            assert!(table.contains(m), "{m} missing:\n{table}");
        }
    }
}

#[test]
fn cluster_keeps_serving_when_a_member_dies() {
    let mut etcd = Etcd::start(3);
    let d = daemon_on(&etcd.endpoints(), "nomadfs/");
    for i in 0..5 {
        write(&d.p(&format!("secret/k{i}")), &format!("v{i}"));
    }
    // Kill the member the daemon talks to first (endpoints are tried in order).
    etcd.kill(0);
    for i in 0..5 {
        assert_eq!(read(&d.p(&format!("secret/k{i}"))), format!("v{i}"));
    }
    for i in 5..15 {
        write(&d.p(&format!("secret/k{i}")), &format!("v{i}"));
        assert_eq!(read(&d.p(&format!("secret/k{i}"))), format!("v{i}"));
    }
    let log = d.log_text();
    assert!(
        log.contains("trying the next endpoint"),
        "no rotation logged:\n{log}"
    );
    // And a second member dying leaves no quorum: requests fail with EIO, not hang.
    etcd.kill(1);
    let r = std::fs::read(d.p("secret/k1"));
    assert_eq!(errno_of(r), Some(libc::EIO));
}

#[test]
fn etcd_unreachable_gives_eio_with_the_reason_then_recovers() {
    let mut etcd = Etcd::start(1);
    let d = daemon_on(&etcd.endpoints(), "nomadfs/");
    write(&d.p("secret/before"), "still-here");
    etcd.kill(0);
    assert_eq!(
        errno_of(std::fs::read(d.p("secret/before"))),
        Some(libc::EIO)
    );
    assert_eq!(
        errno_of(std::fs::write(d.p("secret/during"), "x")),
        Some(libc::EIO)
    );
    let log = d.log_text();
    assert!(
        log.contains("no endpoint of ["),
        "reason not logged:\n{log}"
    );
    assert!(
        log.contains(&etcd.endpoint(0)),
        "endpoint not named:\n{log}"
    );
    // etcd comes back (same data dir): the daemon recovers without a restart.
    etcd.spawn(0);
    etcd.wait_healthy();
    assert_eq!(read(&d.p("secret/before")), "still-here");
    write(&d.p("secret/after"), "works");
    assert_eq!(read(&d.p("secret/after")), "works");
    assert_eq!(
        errno_of(std::fs::read(d.p("secret/during"))),
        Some(libc::ENOENT),
        "a failed write stored nothing"
    );
}

#[test]
fn daemon_refuses_to_start_when_etcd_is_down() {
    let port = free_port();
    let d = prepare(&[format!("http://127.0.0.1:{port}")], "nomadfs/");
    let out = d.command(true).stdin(Stdio::null()).output().expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("etcd"), "{err}");
    assert!(err.contains(&port.to_string()), "{err}");
}
