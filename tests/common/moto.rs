//! A real moto server (the AWS IAM endpoint of the tests), started per test on a free port.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Moto {
    pub endpoint: String,
    child: Child,
}

fn server_path() -> PathBuf {
    if let Some(p) = std::env::var_os("NOMADFS_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv =
        std::env::var("NOMADFS_MOTO_VENV").unwrap_or_else(|_| "/opt/nomadfs-test/moto".into());
    let p = PathBuf::from(venv).join("bin/moto_server");
    if !p.exists() {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/moto-venv");
        let st = Command::new(script)
            .stdout(Stdio::null())
            .status()
            .expect("scripts/moto-venv");
        assert!(st.success(), "scripts/moto-venv failed");
    }
    p
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

impl Moto {
    pub fn start() -> Self {
        Self::start_on(free_port())
    }

    /// A moto server on `port` (e.g. the port of one that was killed: same endpoint, empty state).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, None)
    }

    /// A moto server that enforces IAM authentication and policies: the first `free` requests
    /// are accepted unsigned (bootstrap an admin with them: `AwsIam::create_user` is 3), every
    /// later one must be signed by a key in moto's IAM and is checked against its policies.
    pub fn start_enforcing(free: u32) -> Self {
        Self::spawn(free_port(), Some(free))
    }

    fn spawn(port: u16, free: Option<u32>) -> Self {
        let mut cmd = Command::new(server_path());
        if let Some(n) = free {
            cmd.env("INITIAL_NO_AUTH_ACTION_COUNT", n.to_string());
        }
        let child = cmd
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let m = Self { endpoint, child };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                let ok = Command::new("curl")
                    .args([
                        "-sf",
                        "-o",
                        "/dev/null",
                        &format!("{}/moto-api/", m.endpoint),
                    ])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    return m;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("moto_server did not start on port {port}");
    }

    pub fn port(&self) -> u16 {
        self.endpoint
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .expect("port in endpoint")
    }

    fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(st.success(), "kill {sig} moto");
    }

    /// Freeze the server (SIGSTOP): the kernel still accepts connections but nothing answers,
    /// as with a hung service or a network black hole. State is kept; requests sent meanwhile
    /// are processed after `resume`, as a real service may process a request whose caller
    /// timed out.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    pub fn resume(&self) {
        self.signal("-CONT");
    }

    /// Kill the server (connections refused from now on; its state is lost).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The `config/root` body that points nomadfs at this server.
    pub fn root_config(&self) -> String {
        format!(
            "access_key=testing\nsecret_key=testing\nregion=us-east-1\nendpoint={}\n",
            self.endpoint
        )
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
