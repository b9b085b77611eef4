//! Test harness: a real nomadfs daemon on a real FUSE mount in a temp dir.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const PASS: &str = "correct horse battery staple";

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nomadfs")
}

pub mod etcd;
pub mod moto;
pub mod pg;

pub struct Daemon {
    pub dir: tempfile::TempDir,
    pub mnt: PathBuf,
    pub child: Option<Child>,
    /// Extra environment for the next spawn (e.g. a failpoint).
    pub env: Vec<(String, String)>,
}

impl Daemon {
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("mounts.toml")
    }
    pub fn store(&self) -> PathBuf {
        self.dir.path().join("store")
    }
    pub fn audit(&self) -> PathBuf {
        self.dir.path().join("audit.log")
    }
    pub fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// A new daemon with a file store and the minimum KDF cost.
    pub fn start() -> Self {
        Self::start_with("")
    }

    pub fn start_with(extra_config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let cfg = format!(
            "mountpoint = {:?}\nkdf_memory_kib = 19456\nkdf_iterations = 2\n{extra_config}\n[storage]\ntype = \"file\"\npath = {:?}\n[audit]\npath = {:?}\n",
            mnt,
            dir.path().join("store"),
            dir.path().join("audit.log")
        );
        std::fs::write(dir.path().join("mounts.toml"), cfg).expect("config");
        std::fs::write(dir.path().join("pass"), format!("{PASS}\n")).expect("pass");
        let mut d = Self {
            dir,
            mnt,
            child: None,
            env: Vec::new(),
        };
        d.spawn(true);
        d
    }

    pub fn command(&self, with_pass: bool) -> Command {
        let mut c = Command::new(bin());
        c.arg("--config").arg(self.config_path()).arg("server");
        if with_pass {
            c.arg("--passphrase-file").arg(self.dir.path().join("pass"));
        }
        c.env_remove("NOMADFS_PASSPHRASE");
        c.env("NOMADFS_LOG", "info");
        for (k, v) in &self.env {
            c.env(k, v);
        }
        c
    }

    pub fn spawn(&mut self, with_pass: bool) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log");
        let child = self
            .command(with_pass)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.child = Some(child);
        self.wait_ready(with_pass);
    }

    fn wait_ready(&mut self, unsealed: bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let want = if unsealed {
            "\"sealed\": false"
        } else {
            "\"sealed\": true"
        };
        while Instant::now() < deadline {
            if let Ok(h) = std::fs::read_to_string(self.mnt.join("sys/health")) {
                if h.contains(want) {
                    return;
                }
            }
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("daemon exited early: {st}; log:\n{}", self.log_text());
                }
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        panic!("daemon not ready; log:\n{}", self.log_text());
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    /// Run a shell snippet inside the mountpoint.
    pub fn sh(&self, script: &str) -> Output {
        Command::new("sh")
            .arg("-c")
            .arg(script)
            .current_dir(&self.mnt)
            .output()
            .expect("sh")
    }

    pub fn sh_ok(&self, script: &str) -> String {
        let o = self.sh(script);
        assert!(
            o.status.success(),
            "`{script}` failed: {}\n{}",
            String::from_utf8_lossy(&o.stderr),
            self.log_text()
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    }

    /// SIGTERM and wait: the daemon unmounts cleanly.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount(&self.mnt);
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        unmount(&self.mnt);
    }

    pub fn restart(&mut self) {
        self.stop();
        self.spawn(true);
    }
}

pub fn unmount(mnt: &Path) {
    // Wait for auto-unmount, then force a lazy unmount if anything is left.
    for _ in 0..50 {
        if !is_mounted(mnt) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = Command::new("umount").arg("-l").arg(mnt).status();
}

pub fn is_mounted(mnt: &Path) -> bool {
    let m = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let s = mnt.to_string_lossy();
    m.lines().any(|l| l.split(' ').nth(4) == Some(&*s))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

pub fn errno_of(r: std::io::Result<impl Sized>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

/// Write and fsync, so the commit's error is seen (std::fs::write ignores close errors).
pub fn write_synced(path: impl AsRef<Path>, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data.as_ref())?;
    f.sync_all()
}

pub fn json(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes).expect("json")
}

/// Poll `f` every 100 ms until it holds; panic after `secs`.
pub fn wait_until(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("timed out waiting for {what}");
}

/// Every byte of every file under `dir`.
pub fn all_bytes(dir: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(rd) = std::fs::read_dir(&d) {
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(b) = std::fs::read(&p) {
                    out.extend_from_slice(&b);
                }
            }
        }
    }
    out
}

pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Every key and value of a stopped daemon's file store (logical content, not file bytes:
/// redb rewrites a header flag whenever it opens a file).
pub fn store_dump(store: &Path) -> Vec<(String, Vec<u8>)> {
    use nomadfs_core::storage::{file::FileStorage, Storage};
    let s = FileStorage::open(store).expect("open store");
    s.list("")
        .expect("list")
        .into_iter()
        .map(|k| {
            let v = s.get(&k).expect("get").expect("value");
            (k, v)
        })
        .collect()
}
