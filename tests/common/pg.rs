//! A throwaway PostgreSQL cluster for tests (and benches): initdb + pg_ctl as the `postgres`
//! user (PostgreSQL refuses to run as root) in a temp dir, on a free loopback port, with
//! scram-sha-256 for TCP logins. Stopped and deleted on drop. Only std and tempfile, so a bench
//! binary can include it with `#[path]`.
//!
//! Missing PostgreSQL is a test failure with a clear message, never a silent skip.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

pub struct Pg {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The superuser `postgres`'s password.
    pub password: String,
    bin: PathBuf,
    running: bool,
}

/// The newest `/usr/lib/postgresql/<version>/bin` (or `$NOMADFS_PG_BIN`).
pub fn pg_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NOMADFS_PG_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.join("initdb").exists(),
            "NOMADFS_PG_BIN={} has no initdb: point it at PostgreSQL's bin folder",
            p.display()
        );
        return p;
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let v: u32 = e.file_name().to_str()?.parse().ok()?;
                    let bin = e.path().join("bin");
                    bin.join("initdb").exists().then_some((v, bin))
                })
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    match versions.pop() {
        Some((_, bin)) => bin,
        None => panic!(
            "PostgreSQL server binaries not found (no /usr/lib/postgresql/<version>/bin/initdb): \
             install the Debian package `postgresql` (scripts/test does: apt-get install -y \
             postgresql), or set NOMADFS_PG_BIN"
        ),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn as_postgres(bin: &Path, tool: &str, args: &[&str]) -> Output {
    Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join(tool))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("runuser -u postgres -- {tool}: {e}"))
}

impl Pg {
    /// A new cluster, started and accepting connections.
    pub fn start() -> Self {
        Self::start_with(&["-c", "fsync=off", "-c", "max_connections=200"])
    }

    /// A new cluster with extra server options (`-c name=value` pairs).
    pub fn start_with(server_opts: &[&str]) -> Self {
        let bin = pg_bin();
        let ok = Command::new("id")
            .args(["-u", "postgres"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(
            ok,
            "no `postgres` system user: install the Debian package `postgresql`"
        );
        let dir = tempfile::Builder::new()
            .prefix("nomadfs-pg.")
            .tempdir()
            .expect("tempdir");
        let st = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(dir.path())
            .status()
            .expect("chown");
        assert!(st.success(), "chown postgres {}", dir.path().display());
        let password = format!("pgadmin-{:016x}", rand_u64());
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, format!("{password}\n")).expect("pwfile");
        let _ = Command::new("chown")
            .args(["postgres:postgres"])
            .arg(&pwfile)
            .status();
        let data = dir.path().join("data");
        let o = as_postgres(
            &bin,
            "initdb",
            &[
                "-D",
                data.to_str().expect("utf8"),
                "-U",
                "postgres",
                &format!("--pwfile={}", pwfile.display()),
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "--no-sync",
            ],
        );
        assert!(
            o.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        let mut pg = Self {
            dir,
            port: 0,
            password,
            bin,
            running: false,
        };
        pg.port = free_port();
        pg.start_server(server_opts);
        pg
    }

    fn start_server(&mut self, server_opts: &[&str]) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let mut opts = format!(
            "-p {} -c listen_addresses=127.0.0.1 -k {}",
            self.port,
            self.dir.path().display()
        );
        for o in server_opts {
            opts.push(' ');
            opts.push_str(o);
        }
        let o = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf8"),
                "-l",
                log.to_str().expect("utf8"),
                "-w",
                "-t",
                "60",
                "-o",
                &opts,
                "start",
            ],
        );
        assert!(
            o.status.success(),
            "pg_ctl start failed: {}{}\nlog:\n{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr),
            self.log_text()
        );
        self.running = true;
    }

    /// Stop the server (fast shutdown); `resume` starts it again on the same port.
    pub fn stop(&mut self) {
        if !self.running {
            return;
        }
        let data = self.dir.path().join("data");
        let _ = as_postgres(
            &self.bin,
            "pg_ctl",
            &[
                "-D",
                data.to_str().expect("utf8"),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        );
        self.running = false;
    }

    pub fn resume(&mut self) {
        if !self.running {
            self.start_server(&["-c", "fsync=off", "-c", "max_connections=200"]);
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    /// The superuser's connection URL.
    pub fn admin_url(&self) -> String {
        self.url("postgres", &self.password)
    }

    pub fn url(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/postgres",
            self.port
        )
    }

    /// Run SQL as the superuser over the Unix socket (peer auth) with psql; stdout, unaligned,
    /// tuples only. Panics on failure.
    pub fn psql(&self, sql: &str) -> String {
        let psql = self.bin.join("psql");
        let o = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(psql)
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(self.dir.path())
            .args(["-p", &self.port.to_string(), "-d", "postgres", "-c", sql])
            .stdin(Stdio::null())
            .output()
            .expect("psql");
        assert!(
            o.status.success(),
            "psql failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    }

    /// Does role `name` exist?
    pub fn role_exists(&self, name: &str) -> bool {
        self.psql(&format!(
            "SELECT count(*) FROM pg_roles WHERE rolname = '{}'",
            name.replace('\'', "''")
        )) == "1"
    }

    /// Roles whose names start with `nomadfs-`.
    pub fn nomadfs_roles(&self) -> Vec<String> {
        let out =
            self.psql("SELECT rolname FROM pg_roles WHERE rolname LIKE 'nomadfs-%' ORDER BY 1");
        out.lines().map(str::to_string).collect()
    }
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0),
    );
    h.finish()
}

impl Drop for Pg {
    fn drop(&mut self) {
        if self.running {
            let data = self.dir.path().join("data");
            let _ = as_postgres(
                &self.bin,
                "pg_ctl",
                &[
                    "-D",
                    data.to_str().unwrap_or(""),
                    "-m",
                    "immediate",
                    "-w",
                    "stop",
                ],
            );
        }
    }
}
