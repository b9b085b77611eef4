//! A throwaway moto server (the AWS mock) for tests that talk to IAM.
//!
//! `Moto::start()` finds `moto_server` (env `NOMADFS_MOTO_SERVER`, else
//! `${NOMADFS_MOTO_VENV:-/opt/nomadfs-test/moto}/bin/moto_server`, creating that venv with
//! `scripts/moto-venv` when it is missing), starts it on a free loopback port, waits until
//! `GET /moto-api/` answers, and kills it on drop. Each server has its own empty state.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a fresh moto_server may take to answer (Python start-up on a busy 2-core box).
const READY_TIMEOUT: Duration = Duration::from_secs(60);

pub struct Moto {
    child: Child,
    port: u16,
    log: PathBuf,
}

/// Serialises venv creation between tests of one binary (scripts/moto-venv is idempotent, but
/// two concurrent pip installs into one venv are not).
static VENV_LOCK: Mutex<()> = Mutex::new(());

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The moto_server binary, installing it if needed.
pub fn moto_server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NOMADFS_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("NOMADFS_MOTO_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/nomadfs-test/moto"));
    let server = venv.join("bin/moto_server");
    if server.exists() {
        return server;
    }
    let _guard = VENV_LOCK.lock().unwrap_or_else(|p| p.into_inner());
    if !server.exists() {
        let out = Command::new(repo_root().join("scripts/moto-venv"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/moto-venv");
        assert!(
            out.status.success(),
            "scripts/moto-venv failed: {}",
            out.status
        );
    }
    assert!(
        server.exists(),
        "{} missing after scripts/moto-venv",
        server.display()
    );
    server
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

/// Whether `GET /moto-api/` on `port` answers 200.
fn answers(port: u16) -> bool {
    let Ok(mut s) =
        TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), Duration::from_millis(500))
    else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(b"GET /moto-api/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut head = [0u8; 16];
    let mut n = 0;
    while n < head.len() {
        match s.read(&mut head[n..]) {
            Ok(0) | Err(_) => break,
            Ok(k) => n += k,
        }
    }
    let head = String::from_utf8_lossy(&head[..n]);
    head.starts_with("HTTP/1.") && head.contains(" 200")
}

impl Moto {
    /// Start a fresh moto server; panics (with its log) if it does not come up.
    pub fn start() -> Moto {
        let server = moto_server_path();
        let mut last = String::new();
        // A port found free can be taken before moto binds it: try a few.
        for _ in 0..3 {
            let port = free_port();
            let log = std::env::temp_dir()
                .join(format!("nomadfs-moto-{}-{port}.log", std::process::id()));
            let log_file = std::fs::File::create(&log).expect("create moto log");
            let child = Command::new(&server)
                .args(["-H", "127.0.0.1", "-p", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(log_file.try_clone().expect("dup log"))
                .stderr(log_file)
                .spawn()
                .unwrap_or_else(|e| panic!("start {}: {e}", server.display()));
            let mut moto = Moto { child, port, log };
            let deadline = Instant::now() + READY_TIMEOUT;
            loop {
                if answers(port) {
                    return moto;
                }
                if let Ok(Some(status)) = moto.child.try_wait() {
                    last = format!("moto_server exited with {status}: {}", moto.log_text());
                    break;
                }
                if Instant::now() > deadline {
                    panic!(
                        "moto_server on port {port} not ready in {READY_TIMEOUT:?}: {}",
                        moto.log_text()
                    );
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("moto_server did not start: {last}");
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>`, the endpoint URL for the SDK.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.log);
    }
}
