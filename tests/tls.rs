//! TLS and authentication to the daemon's upstreams, against real servers and certificates this
//! test makes with the `openssl` CLI (Debian's `postgresql` pulls it in through `ssl-cert`):
//! a CA, a second CA nobody trusts, a server certificate for `localhost` and `127.0.0.1`, one
//! for `db.wrong-name.example` only, and a client certificate for `certuser`.
//!
//! PostgreSQL (`ssl = on`): `sslmode` verify-full / verify-ca / require / prefer / disable, the
//! wrong CA, a host name the certificate does not name, a server without SSL, a client
//! certificate with `hostssl … cert` in pg_hba.conf — each refusal with its reason in the
//! caller's `sys/self/errors` and in the daemon's log.
//!
//! etcd (feature `etcd`): a member with `--cert-file/--key-file/--client-cert-auth
//! --trusted-ca-file` and authentication enabled; the daemon stores and reads a secret through
//! it, also after its token expired (`--auth-token-ttl 1`); the wrong CA, a certificate for
//! another host, the wrong password, no client certificate fail at start with the reason.

mod common;

use common::pg::Pg;
use common::{errno_of, json, write_synced, Daemon};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Certificates made with the openssl CLI in a world-traversable temp dir (PostgreSQL reads
/// its own files as the `postgres` user).
struct Pki {
    dir: tempfile::TempDir,
}

fn openssl(dir: &Path, args: &[&str]) {
    let o = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("the openssl CLI (apt-get install openssl; postgresql depends on it)");
    assert!(
        o.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).expect("chmod");
}

impl Pki {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("nomadfs-pki.")
            .tempdir()
            .expect("tempdir");
        chmod(dir.path(), 0o755);
        let pki = Pki { dir };
        pki.ca("ca");
        pki.ca("other-ca");
        pki.leaf(
            "server",
            "ca",
            "/CN=localhost",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf(
            "wrong-name",
            "ca",
            "/CN=db.wrong-name.example",
            "subjectAltName=DNS:db.wrong-name.example\nextendedKeyUsage=serverAuth\n",
        );
        pki.leaf(
            "client",
            "ca",
            "/CN=certuser",
            "extendedKeyUsage=clientAuth\n",
        );
        // PostgreSQL wants its key owned by its own user, mode 0600.
        std::fs::copy(pki.p("server.key"), pki.p("pg-server.key")).expect("copy key");
        let st = Command::new("chown")
            .arg("postgres:postgres")
            .arg(pki.p("pg-server.key"))
            .status()
            .expect("chown");
        assert!(st.success());
        pki
    }

    fn p(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn s(&self, name: &str) -> String {
        self.p(name).display().to_string()
    }

    fn ca(&self, name: &str) {
        openssl(
            self.dir.path(),
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=nomadfs test {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        chmod(&self.p(&format!("{name}.key")), 0o600);
        chmod(&self.p(&format!("{name}.pem")), 0o644);
    }

    fn leaf(&self, name: &str, ca: &str, subject: &str, ext: &str) {
        let d = self.dir.path();
        std::fs::write(
            self.p(&format!("{name}.ext")),
            format!("basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n{ext}"),
        )
        .expect("ext");
        openssl(
            d,
            &[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                subject,
            ],
        );
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-set_serial",
                &format!("{}", std::process::id() as u64 * 1000 + name.len() as u64),
                "-days",
                "2",
                "-extfile",
                &format!("{name}.ext"),
                "-out",
                &format!("{name}.pem"),
            ],
        );
        chmod(&self.p(&format!("{name}.key")), 0o600);
        chmod(&self.p(&format!("{name}.pem")), 0o644);
    }
}

/// A PostgreSQL cluster with `ssl = on`, serving `pki`'s server certificate and trusting its CA
/// for client certificates.
fn pg_with_ssl(pki: &Pki) -> Pg {
    let cert = format!("ssl_cert_file={}", pki.s("server.pem"));
    let key = format!("ssl_key_file={}", pki.s("pg-server.key"));
    let ca = format!("ssl_ca_file={}", pki.s("ca.pem"));
    Pg::start_with(&[
        "-c",
        "fsync=off",
        "-c",
        "ssl=on",
        "-c",
        &cert,
        "-c",
        &key,
        "-c",
        &ca,
    ])
}

/// `postgres://USER[:PASSWORD]@HOST:PORT/postgres?QUERY`.
fn url(pg: &Pg, user_pass: &str, host: &str, query: &str) -> String {
    let q = if query.is_empty() {
        String::new()
    } else {
        format!("?{query}")
    };
    format!("postgres://{user_pass}@{host}:{}/postgres{q}", pg.port)
}

fn admin(pg: &Pg) -> String {
    format!("postgres:{}", pg.password)
}

/// Connections of the daemon (application_name nomadfs) that use TLS / that do not.
fn nomadfs_sessions(pg: &Pg) -> (u32, u32) {
    let v = pg.psql(
        "SELECT count(*) FILTER (WHERE s.ssl) || ' ' || count(*) FILTER (WHERE NOT s.ssl) \
         FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'nomadfs'",
    );
    let mut it = v.split(' ').map(|n| n.parse::<u32>().expect("count"));
    (it.next().expect("ssl"), it.next().expect("plain"))
}

fn connect(d: &Daemon, url: &str) -> std::io::Result<()> {
    write_synced(d.p("pg/config/connection"), format!("{url}\n"))
}

/// Write `url`, expect `errno`, and find `reason` in the caller's refusals and in the log.
fn refused(d: &Daemon, url: &str, errno: i32, reason: &str) {
    assert_eq!(errno_of(connect(d, url)), Some(errno), "{url}");
    let errors = std::fs::read_to_string(d.p("sys/self/errors")).expect("sys/self/errors");
    let line = errors
        .lines()
        .rev()
        .find(|l| l.contains("pg/config/connection") && l.contains(reason))
        .unwrap_or_else(|| panic!("{reason:?} not in sys/self/errors:\n{errors}"));
    eprintln!("refused ({reason}): {line}");
    if errno == libc::EIO {
        assert!(d.log_text().contains(reason), "{reason:?} not logged");
    }
}

fn mount_pg(d: &Daemon) {
    std::fs::write(d.p("sys/mounts/pg"), "postgresql\n").expect("mount pg");
}

const ROLE: &str = "creation_statements = [\"CREATE ROLE \\\"{{name}}\\\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'\"]\n";

/// A credential through the current connection: a role that exists upstream.
fn issue_creds(d: &Daemon, pg: &Pg) {
    write_synced(d.p("pg/roles/app"), ROLE).expect("role");
    let c = json(&std::fs::read(d.p("pg/creds/app")).expect("creds"));
    let user = c["username"].as_str().expect("username");
    assert!(pg.role_exists(user), "{user} not made upstream");
}

#[test]
fn postgres_verify_full_verify_ca_require_prefer() {
    let pki = Pki::new();
    let pg = pg_with_ssl(&pki);
    let d = Daemon::start();
    mount_pg(&d);
    let ca = format!("sslrootcert={}", pki.s("ca.pem"));
    let other = format!("sslrootcert={}", pki.s("other-ca.pem"));

    // verify-full with the right CA, by IP address and by name (both in the SANs).
    connect(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            &format!("sslmode=verify-full&{ca}"),
        ),
    )
    .expect("verify-full to 127.0.0.1");
    issue_creds(&d, &pg);
    let (tls, plain) = nomadfs_sessions(&pg);
    assert!(tls >= 1 && plain == 0, "sessions ssl={tls} plain={plain}");
    connect(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "localhost",
            &format!("sslmode=verify-full&{ca}"),
        ),
    )
    .expect("verify-full to localhost");

    // The wrong CA: refused, the reason says so; the good connection is kept.
    refused(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            &format!("sslmode=verify-full&{other}"),
        ),
        libc::EIO,
        "unknown CA",
    );
    // 127.0.0.1, but checked against a name the certificate does not carry.
    let wrong_host = url(
        &pg,
        &admin(&pg),
        "db.wrong-name.example",
        &format!("hostaddr=127.0.0.1&sslmode=verify-full&{ca}"),
    );
    refused(&d, &wrong_host, libc::EIO, "host name mismatch");
    assert!(
        d.log_text().contains("db.wrong-name.example"),
        "the name checked is not in the log"
    );
    // verify-ca checks the chain only: the same URL connects.
    connect(&d, &wrong_host.replace("verify-full", "verify-ca")).expect("verify-ca");
    // ... but not with a CA that did not sign it.
    refused(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            &format!("sslmode=verify-ca&{other}"),
        ),
        libc::EIO,
        "unknown CA",
    );

    // require: encrypted, not verified (libpq without a root certificate) ...
    connect(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "db.wrong-name.example",
            "hostaddr=127.0.0.1&sslmode=require",
        ),
    )
    .expect("require");
    // SCRAM is bound to the TLS session (tls-server-end-point): a relay in the middle, which
    // `require` alone would not notice, cannot reuse the login.
    connect(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            "sslmode=require&channel_binding=require",
        ),
    )
    .expect("SCRAM with channel binding");
    // ... unless a root certificate is named (then the chain is checked, as in libpq).
    refused(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            &format!("sslmode=require&{other}"),
        ),
        libc::EIO,
        "unknown CA",
    );
    // No sslmode is libpq's prefer: TLS when the server offers it.
    connect(&d, &url(&pg, &admin(&pg), "127.0.0.1", "")).expect("prefer");
    issue_creds(&d, &pg);
    pg.psql(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = 'nomadfs'",
    );
    connect(&d, &url(&pg, &admin(&pg), "127.0.0.1", "sslmode=disable")).expect("disable");
    issue_creds(&d, &pg);
    let (_, plain) = nomadfs_sessions(&pg);
    assert!(plain >= 1, "sslmode=disable connected with TLS");

    // Paths: absolute only (EINVAL at once); a key others can read is refused with the rule.
    refused(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            "sslmode=verify-full&sslrootcert=ca.pem",
        ),
        libc::EINVAL,
        "absolute path",
    );
    refused(
        &d,
        &url(&pg, &admin(&pg), "127.0.0.1", "sslmode=verify-full"),
        libc::EINVAL,
        "needs sslrootcert",
    );
    std::fs::copy(pki.p("client.key"), pki.p("loose.key")).expect("copy");
    chmod(&pki.p("loose.key"), 0o644);
    refused(
        &d,
        &url(
            &pg,
            &admin(&pg),
            "127.0.0.1",
            &format!(
                "sslmode=verify-full&{ca}&sslcert={}&sslkey={}",
                pki.s("client.pem"),
                pki.s("loose.key")
            ),
        ),
        libc::EIO,
        "mode 0644",
    );
    // Nothing of the files' content or of the password reached the log.
    let log = d.log_text();
    assert!(!log.contains(&pg.password), "password logged");
    assert!(!log.contains("PRIVATE KEY"), "key material logged");
}

#[test]
fn postgres_require_against_a_server_without_ssl() {
    let pg = Pg::start();
    let d = Daemon::start();
    mount_pg(&d);
    refused(
        &d,
        &url(&pg, &admin(&pg), "127.0.0.1", "sslmode=require"),
        libc::EIO,
        "does not support SSL",
    );
    // prefer falls back to plain text there (as libpq does).
    connect(&d, &url(&pg, &admin(&pg), "127.0.0.1", "sslmode=prefer")).expect("prefer");
    issue_creds(&d, &pg);
}

#[test]
fn postgres_client_certificate_login() {
    let pki = Pki::new();
    let pg = pg_with_ssl(&pki);
    pg.psql("CREATE ROLE certuser LOGIN SUPERUSER");
    // certuser logs in only over TLS with a client certificate signed by the CA.
    let hba = pg.dir.path().join("data/pg_hba.conf");
    let old = std::fs::read_to_string(&hba).expect("pg_hba.conf");
    std::fs::write(
        &hba,
        format!(
            "hostssl all certuser 127.0.0.1/32 cert\nhost all certuser 127.0.0.1/32 reject\n{old}"
        ),
    )
    .expect("pg_hba.conf");
    pg.psql("SELECT pg_reload_conf()");
    common::wait_until("pg_hba.conf reloaded", 10, || {
        pg.log_text().contains("reloading configuration files")
    });
    let d = Daemon::start();
    mount_pg(&d);
    let ca = format!("sslrootcert={}", pki.s("ca.pem"));
    let with_cert = format!(
        "sslmode=verify-full&{ca}&sslcert={}&sslkey={}",
        pki.s("client.pem"),
        pki.s("client.key")
    );
    connect(&d, &url(&pg, "certuser", "127.0.0.1", &with_cert)).expect("certificate login");
    issue_creds(&d, &pg);
    let dn = pg.psql(
        "SELECT s.client_dn FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.application_name = 'nomadfs' AND a.usename = 'certuser' LIMIT 1",
    );
    assert_eq!(dn, "/CN=certuser");
    // Without the certificate the server refuses, and says why.
    refused(
        &d,
        &url(
            &pg,
            "certuser",
            "127.0.0.1",
            &format!("sslmode=verify-full&{ca}"),
        ),
        libc::EIO,
        "certificate",
    );
}

#[cfg(feature = "etcd")]
mod etcd {
    use super::*;
    use common::PASS;
    use std::process::Child;
    use std::time::{Duration, Instant};

    fn free_port() -> u16 {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    }

    /// One etcd member: clients over TLS with client certificates required, auth enabled,
    /// user `nomadfs` (password `ETCD_PW`) with read-write on `nomadfs/` only.
    struct SecureEtcd {
        dir: tempfile::TempDir,
        port: u16,
        child: Child,
    }

    const ROOT_PW: &str = "etcd-root-pw-3b1e";
    const ETCD_PW: &str = "etcd-nomadfs-pw-8c2d";

    impl SecureEtcd {
        fn start(pki: &Pki) -> Self {
            Self::start_with(pki, "server", &[])
        }

        /// With server certificate `cert` (`server`: localhost and 127.0.0.1) and extra flags.
        fn start_with(pki: &Pki, cert: &str, extra: &[&str]) -> Self {
            let dir = tempfile::tempdir().expect("tempdir");
            let (port, peer) = (free_port(), free_port());
            let client = format!("https://127.0.0.1:{port}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join("etcd.log")).expect("log");
            let child = Command::new("etcd")
                .args(["--name", "n0", "--data-dir"])
                .arg(dir.path().join("data"))
                .args([
                    "--listen-client-urls",
                    &client,
                    "--advertise-client-urls",
                    &client,
                ])
                .args([
                    "--listen-peer-urls",
                    &peer_url,
                    "--initial-advertise-peer-urls",
                    &peer_url,
                ])
                .args(["--initial-cluster", &format!("n0={peer_url}")])
                .args(["--cert-file", &pki.s(&format!("{cert}.pem"))])
                .args(["--key-file", &pki.s(&format!("{cert}.key"))])
                .args(extra)
                .args(["--client-cert-auth", "--trusted-ca-file", &pki.s("ca.pem")])
                .args(["--logger", "zap", "--log-outputs", "stderr"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd (apt-get install etcd-server)");
            let e = SecureEtcd { dir, port, child };
            let deadline = Instant::now() + Duration::from_secs(30);
            // etcdctl checks the name too: for a certificate naming another host, skip that.
            let name: Vec<&str> = if cert == "server" {
                vec![]
            } else {
                vec!["--insecure-skip-tls-verify"]
            };
            while !e.ctl(pki, &name, &["endpoint", "health"]).status.success() {
                assert!(
                    Instant::now() < deadline,
                    "etcd not healthy: {}",
                    std::fs::read_to_string(e.dir.path().join("etcd.log")).unwrap_or_default()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            for args in [
                vec![
                    "user",
                    "add",
                    "root",
                    &format!("--new-user-password={ROOT_PW}"),
                ],
                vec![
                    "user",
                    "add",
                    "nomadfs",
                    &format!("--new-user-password={ETCD_PW}"),
                ],
                vec!["role", "add", "nomadfs-rw"],
                vec![
                    "role",
                    "grant-permission",
                    "nomadfs-rw",
                    "readwrite",
                    "--prefix=true",
                    "nomadfs/",
                ],
                vec!["user", "grant-role", "nomadfs", "nomadfs-rw"],
                vec!["auth", "enable"],
            ] {
                let o = e.ctl(pki, &name, &args);
                assert!(
                    o.status.success(),
                    "etcdctl {args:?}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
            }
            e
        }

        fn endpoint(&self) -> String {
            format!("https://127.0.0.1:{}", self.port)
        }

        fn ctl(&self, pki: &Pki, extra: &[&str], args: &[&str]) -> std::process::Output {
            Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args(["--endpoints", &self.endpoint(), "--command-timeout=3s"])
                .args(["--cacert", &pki.s("ca.pem")])
                .args([
                    "--cert",
                    &pki.s("client.pem"),
                    "--key",
                    &pki.s("client.key"),
                ])
                .args(extra)
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("etcdctl")
        }
    }

    impl Drop for SecureEtcd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    /// A daemon configured for `etcd` with `storage` lines (TLS and auth keys).
    fn prepare(storage: &str) -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).expect("mkdir mnt");
        let cfg = format!(
            "mountpoint = {mnt:?}\nkdf_memory_kib = 19456\nkdf_iterations = 2\n[storage]\ntype = \"etcd\"\nprefix = \"nomadfs/\"\n{storage}\n[audit]\npath = {:?}\n",
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

    fn storage_lines(e: &SecureEtcd, pki: &Pki, ca: &str, pw_file: &Path, cert: bool) -> String {
        let mut s = format!(
            "endpoints = [{:?}]\nca_file = {:?}\nusername = \"nomadfs\"\npassword_file = {:?}\n",
            e.endpoint(),
            pki.s(ca),
            pw_file.display().to_string()
        );
        if cert {
            s.push_str(&format!(
                "cert_file = {:?}\nkey_file = {:?}\n",
                pki.s("client.pem"),
                pki.s("client.key")
            ));
        }
        s
    }

    fn pw_file(dir: &Path, name: &str, pw: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, format!("{pw}\n")).expect("pw");
        chmod(&p, 0o600);
        p
    }

    /// Start the daemon expecting it to fail: exit 1 and `reason` on stderr.
    fn fails_at_start(d: &Daemon, reason: &str) {
        let out = d.command(true).stdin(Stdio::null()).output().expect("run");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains(reason), "{reason:?} not in:\n{err}");
        let line = err
            .lines()
            .rev()
            .find(|l| l.contains(reason))
            .unwrap_or_default();
        eprintln!("refused at start ({reason}): {line}");
        assert!(
            !err.contains(ETCD_PW) && !err.contains("wrong-pw-51"),
            "password shown"
        );
    }

    #[test]
    fn etcd_over_tls_with_auth_stores_and_refuses_with_reasons() {
        let pki = Pki::new();
        let e = SecureEtcd::start(&pki);
        let good_pw = pw_file(pki.dir.path(), "etcd-pw", ETCD_PW);

        let mut d = prepare(&storage_lines(&e, &pki, "ca.pem", &good_pw, true));
        d.spawn(true);
        let health = std::fs::read_to_string(d.p("sys/health")).expect("health");
        assert!(health.contains("\"storage\": \"etcd\""), "{health}");
        std::fs::write(d.p("secret/tls-canary"), "through-tls-7d1").expect("write");
        d.restart();
        assert_eq!(
            std::fs::read_to_string(d.p("secret/tls-canary")).expect("read"),
            "through-tls-7d1"
        );
        // The keys are in etcd, under the prefix, readable with the same credentials.
        let o = e.ctl(
            &pki,
            &["--user", &format!("root:{ROOT_PW}")],
            &["get", "--prefix", "nomadfs/", "--keys-only"],
        );
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert!(String::from_utf8_lossy(&o.stdout).lines().count() > 2);
        d.stop();
        assert!(!d.log_text().contains(ETCD_PW), "etcd password logged");

        // The wrong CA: exit 1 with the reason.
        let bad = prepare(&storage_lines(&e, &pki, "other-ca.pem", &good_pw, true));
        fails_at_start(&bad, "unknown CA");
        // The wrong password.
        let wrong = pw_file(pki.dir.path(), "wrong-pw", "wrong-pw-51");
        let bad = prepare(&storage_lines(&e, &pki, "ca.pem", &wrong, true));
        fails_at_start(&bad, "authentication failed");
        // No client certificate for a --client-cert-auth member.
        let bad = prepare(&storage_lines(&e, &pki, "ca.pem", &good_pw, false));
        fails_at_start(&bad, "certificate");
        // A member whose certificate names another host.
        let other = SecureEtcd::start_with(&pki, "wrong-name", &[]);
        let bad = prepare(&storage_lines(&other, &pki, "ca.pem", &good_pw, true));
        fails_at_start(&bad, "host name mismatch");
        // Listed first, that member is passed over for the next one, which serves.
        let both = storage_lines(&e, &pki, "ca.pem", &good_pw, true).replace(
            &format!("endpoints = [{:?}]", e.endpoint()),
            &format!("endpoints = [{:?}, {:?}]", other.endpoint(), e.endpoint()),
        );
        let mut d = prepare(&both);
        d.spawn(true);
        assert_eq!(
            std::fs::read_to_string(d.p("secret/tls-canary")).expect("read"),
            "through-tls-7d1"
        );
        assert!(
            d.log_text()
                .contains("refused over TLS, trying the next endpoint"),
            "{}",
            d.log_text()
        );
        d.stop();
        drop(other);
        // A password file others can read is refused before anything is sent.
        chmod(&good_pw, 0o644);
        let bad = prepare(&storage_lines(&e, &pki, "ca.pem", &good_pw, true));
        fails_at_start(&bad, "0600");
        // A password inline in the config is refused with the way to do it.
        let bad = prepare(&format!(
            "endpoints = [{:?}]\nca_file = {:?}\nusername = \"nomadfs\"\npassword = \"x\"\n",
            e.endpoint(),
            pki.s("ca.pem")
        ));
        fails_at_start(&bad, "password_file");
    }

    #[test]
    fn etcd_password_from_the_environment_and_token_renewal() {
        let pki = Pki::new();
        // Tokens live 1 s: the daemon must authenticate again when its token has expired.
        let e = SecureEtcd::start_with(&pki, "server", &["--auth-token-ttl", "1"]);
        let mut d = prepare(&format!(
            "endpoints = [{:?}]\nca_file = {:?}\ncert_file = {:?}\nkey_file = {:?}\nusername = \"nomadfs\"\npassword_env = \"NOMADFS_TEST_ETCD_PASSWORD\"\n",
            e.endpoint(),
            pki.s("ca.pem"),
            pki.s("client.pem"),
            pki.s("client.key")
        ));
        d.env
            .push(("NOMADFS_TEST_ETCD_PASSWORD".into(), ETCD_PW.into()));
        d.spawn(true);
        std::fs::write(d.p("secret/env-pw"), "ok").expect("write");
        assert_eq!(
            std::fs::read_to_string(d.p("secret/env-pw")).expect("read"),
            "ok"
        );
        // Let the token expire (not a timing assertion: any wait past 1 s will do).
        std::thread::sleep(Duration::from_millis(2500));
        std::fs::write(d.p("secret/after-expiry"), "still").expect("write after expiry");
        assert_eq!(
            std::fs::read_to_string(d.p("secret/after-expiry")).expect("read"),
            "still"
        );
    }
}
