//! The `postgresql` backend and its leases through a real mount, against a real PostgreSQL
//! cluster (tests/common/pg.rs). Logins as the issued roles go through tokio-postgres.

mod common;

use common::pg::Pg;
use common::{errno_of, json, wait_until, write_synced, Daemon};
use std::time::Duration;

const ROLE: &str = r#"creation_statements = [
  "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
  "GRANT SELECT ON app TO \"{{name}}\"",
]
"#;

/// A session of one PostgreSQL login, driven by its own small runtime.
struct Session {
    rt: tokio::runtime::Runtime,
    client: tokio_postgres::Client,
}

fn login(url: &str) -> Result<Session, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (client, conn) = rt
        .block_on(tokio_postgres::connect(url, tokio_postgres::NoTls))
        .map_err(|e| format!("{e}: {:?}", e.as_db_error().map(|d| d.message())))?;
    rt.spawn(async move {
        let _ = conn.await;
    });
    Ok(Session { rt, client })
}

impl Session {
    /// The first column of the first row, as text.
    fn one(&self, sql: &str) -> Result<String, String> {
        let msgs = self
            .rt
            .block_on(self.client.simple_query(sql))
            .map_err(|e| e.to_string())?;
        msgs.iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_string),
                _ => None,
            })
            .ok_or_else(|| "no row".to_string())
    }
}

/// Mount pg/, point it at `pg`, make table `app`, write role `app`.
fn setup(d: &Daemon, pg: &Pg, lease: Option<&str>) {
    pg.psql("CREATE TABLE IF NOT EXISTS app (v int); INSERT INTO app VALUES (42)");
    std::fs::write(d.p("sys/mounts/pg"), "postgresql\n").expect("mount pg");
    write_synced(d.p("pg/config/connection"), pg.admin_url()).expect("config/connection");
    if let Some(l) = lease {
        std::fs::write(d.p("pg/config/lease"), l).expect("config/lease");
    }
    write_synced(d.p("pg/roles/app"), ROLE).expect("role");
}

fn creds(d: &Daemon, role: &str) -> serde_json::Value {
    json(&std::fs::read(d.p(&format!("pg/creds/{role}"))).expect("creds"))
}

fn field(v: &serde_json::Value, k: &str) -> String {
    v[k].as_str().expect(k).to_string()
}

/// The role's VALID UNTIL and the lease's expiry, both as Unix seconds (PostgreSQL parses both).
fn valid_until_and_expiry(d: &Daemon, pg: &Pg, user: &str, lease_id: &str) -> (i64, i64) {
    let lease = json(&std::fs::read(d.p(&format!("sys/leases/{lease_id}"))).expect("lease"));
    let exp = lease["expire_time"].as_str().expect("expire_time");
    let v = pg.psql(&format!(
        "SELECT extract(epoch FROM rolvaliduntil)::bigint || ' ' || \
         extract(epoch FROM '{exp}'::timestamptz)::bigint FROM pg_roles WHERE rolname = '{user}'"
    ));
    let mut it = v.split(' ').map(|s| s.parse::<i64>().expect("epoch"));
    (it.next().expect("valid until"), it.next().expect("expiry"))
}

#[test]
fn dynamic_roles_guide_through_the_mount() {
    let pg = Pg::start();
    let d = Daemon::start();
    setup(&d, &pg, Some("ttl=1h\nmax_ttl=3h\n"));

    // config/connection is write-only; bad URLs are refused and the good one kept.
    assert_eq!(
        errno_of(std::fs::read(d.p("pg/config/connection"))),
        Some(libc::EACCES)
    );
    assert_eq!(d.sh_ok("stat -c %a pg/config/connection"), "200\n");
    assert_eq!(
        errno_of(write_synced(d.p("pg/config/connection"), "mysql://x@y/z")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(write_synced(
            d.p("pg/config/connection"),
            pg.url("postgres", "wrong-password")
        )),
        Some(libc::EIO)
    );
    assert!(
        d.log_text().contains("password authentication failed"),
        "reason not logged"
    );
    assert!(!d.log_text().contains("wrong-password"), "password logged");
    assert!(!d.log_text().contains(&pg.password), "password logged");

    // Bad role documents: EINVAL, nothing stored.
    for bad in [
        "{not json",
        "creation_statements = []",
        "creation_statements = \"CREATE ROLE x\"",
        "creation_statements = \"CREATE ROLE \\\"{{name}}\\\" {{oops}}\"",
        "creation_statements = \"CREATE ROLE \\\"{{name}}\\\"\"\ndefault_ttl = \"soon\"",
        "creation_statements = \"CREATE ROLE \\\"{{name}}\\\"\"\nunknown = 1",
    ] {
        assert_eq!(
            errno_of(write_synced(d.p("pg/roles/broken"), bad)),
            Some(libc::EINVAL),
            "{bad}"
        );
        assert_eq!(
            errno_of(std::fs::metadata(d.p("pg/roles/broken"))),
            Some(libc::ENOENT)
        );
    }
    assert_eq!(
        std::fs::read_to_string(d.p("pg/roles/app")).expect("role"),
        ROLE
    );
    assert!(d.sh_ok("cat pg/.help").contains("creation_statements"));

    // Lookups and ls -l create nothing.
    d.sh_ok("ls -l pg/creds pg/creds/app > /dev/null; stat pg/creds/app.env > /dev/null");
    assert!(pg.nomadfs_roles().is_empty(), "stat created a role");

    // cat creds/app: a new login role that works, with VALID UNTIL = the lease's expiry.
    let c = creds(&d, "app");
    let lease_id = field(&c, "lease_id");
    let user = field(&c, "username");
    let pass = field(&c, "password");
    assert!(lease_id.starts_with("pg/creds/app/"), "{lease_id}");
    assert!(
        user.starts_with("nomadfs-app-u0-") && user.len() <= 63,
        "{user}"
    );
    assert!(pass.len() >= 32);
    assert_eq!(c["renewable"], true);
    assert_eq!(c["lease_duration"], 3600);
    assert_eq!(pg.nomadfs_roles(), vec![user.clone()]);
    let s = login(&pg.url(&user, &pass)).expect("login as the issued role");
    assert_eq!(s.one("SELECT current_user").expect("query"), user);
    assert_eq!(s.one("SELECT v FROM app").expect("select"), "42");
    let (valid, expiry) = valid_until_and_expiry(&d, &pg, &user, &lease_id);
    assert!(
        valid >= expiry && valid <= expiry + 2,
        "VALID UNTIL {valid} vs lease expiry {expiry}"
    );
    let lease = json(&std::fs::read(d.p(&format!("sys/leases/{lease_id}"))).expect("lease"));
    assert_eq!(lease["upstream"]["username"], user.as_str());
    assert!(!lease.to_string().contains(&pass), "password in the lease");

    // Renewal moves VALID UNTIL.
    std::fs::write(d.p(&format!("sys/leases/{lease_id}")), "2h\n").expect("renew");
    let (valid2, expiry2) = valid_until_and_expiry(&d, &pg, &user, &lease_id);
    assert!(expiry2 >= expiry + 3500, "lease not extended");
    assert!(
        valid2 >= expiry2 && valid2 <= expiry2 + 2,
        "VALID UNTIL {valid2} vs renewed expiry {expiry2}"
    );

    // The .env form.
    let env = std::fs::read_to_string(d.p("pg/creds/app.env")).expect("env");
    assert!(env.contains("PGUSER=nomadfs-app-u0-") && env.contains("PGPASSWORD="));
    assert!(env.contains(&format!("PGPORT={}\n", pg.port)));
    assert!(env.contains("NOMADFS_LEASE_ID=pg/creds/app/"));
    assert_eq!(pg.nomadfs_roles().len(), 2);

    // Writes to creds/ are refused.
    assert_eq!(
        errno_of(std::fs::write(d.p("pg/creds/app"), "x")),
        Some(libc::EACCES)
    );

    // rm of the lease file: the role is gone and its open session is ended before rm returns.
    std::fs::remove_file(d.p(&format!("sys/leases/{lease_id}"))).expect("revoke");
    assert!(!pg.role_exists(&user), "role still there");
    assert!(
        s.one("SELECT 1").is_err(),
        "the revoked role's session still answers"
    );
    assert!(login(&pg.url(&user, &pass)).is_err(), "login still works");
    assert_eq!(
        errno_of(std::fs::remove_file(d.p(&format!("sys/leases/{lease_id}")))),
        Some(libc::ENOENT)
    );

    // rm -r of the prefix revokes the rest.
    creds(&d, "app");
    assert_eq!(pg.nomadfs_roles().len(), 2);
    d.sh_ok("rm -r sys/leases/pg/creds/app");
    assert!(pg.nomadfs_roles().is_empty());
    assert!(d.sh_ok("ls sys/leases").is_empty());

    // A role that owns objects: revocation keeps them (reassigned) and still drops the role.
    write_synced(
        d.p("pg/roles/owner"),
        r#"{"creation_statements": ["CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'", "GRANT CREATE ON SCHEMA public TO \"{{name}}\""]}"#,
    )
    .expect("owner role");
    let c = creds(&d, "owner");
    let s = login(&pg.url(&field(&c, "username"), &field(&c, "password"))).expect("login");
    s.one("CREATE TABLE made_by_lease AS SELECT 7 AS v; SELECT 1")
        .expect("create table");
    std::fs::remove_file(d.p(&format!("sys/leases/{}", field(&c, "lease_id")))).expect("revoke");
    assert!(pg.nomadfs_roles().is_empty());
    assert_eq!(pg.psql("SELECT v FROM made_by_lease"), "7");
}

#[test]
fn expiry_revokes_with_the_roles_own_statements() {
    let pg = Pg::start();
    let d = Daemon::start();
    setup(&d, &pg, None);
    pg.psql("CREATE TABLE revoked (name text)");
    write_synced(
        d.p("pg/roles/short"),
        r#"creation_statements = "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
revocation_statements = ["INSERT INTO revoked VALUES ('{{name}}')", "DROP ROLE \"{{name}}\""]
default_ttl = 2
max_ttl = "3s"
"#,
    )
    .expect("role");
    let c = creds(&d, "short");
    assert_eq!(c["lease_duration"], 2);
    let user = field(&c, "username");
    assert!(pg.role_exists(&user));
    wait_until("expiry revocation", 15, || !pg.role_exists(&user));
    assert_eq!(pg.psql("SELECT name FROM revoked"), user);
    wait_until("lease gone", 5, || {
        !d.p(&format!("sys/leases/{}", field(&c, "lease_id")))
            .exists()
    });
}

#[test]
fn leases_expired_while_down_are_revoked_at_unseal() {
    let pg = Pg::start();
    let mut d = Daemon::start();
    setup(&d, &pg, Some("ttl=3\nmax_ttl=3\n"));
    let short = field(&creds(&d, "app"), "username");
    std::fs::write(d.p("pg/config/lease"), "ttl=1h\nmax_ttl=2h\n").expect("lease cfg");
    let long = creds(&d, "app");
    let long_user = field(&long, "username");
    d.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(pg.role_exists(&short), "revoked while down?");
    d.spawn(true);
    wait_until("revocation at unseal", 10, || !pg.role_exists(&short));
    assert!(pg.role_exists(&long_user));
    assert!(
        d.p(&format!("sys/leases/{}", field(&long, "lease_id")))
            .exists(),
        "unexpired lease survives"
    );
}

/// The lease is stored (held) before the role is made: a crash on either side of CREATE ROLE
/// leaves a lease that tracks the role (or its absence), never an untracked role.
#[test]
fn crash_around_create_role_leaves_no_untracked_role() {
    let pg = Pg::start();
    let mut d = Daemon::start();
    setup(&d, &pg, None);
    for (failpoint, role_made) in [("pg-after-create-role", true), ("pg-after-lease", false)] {
        d.stop();
        d.env = vec![("NOMADFS_FAILPOINT".into(), failpoint.into())];
        d.spawn(true);
        assert!(
            std::fs::read(d.p("pg/creds/app")).is_err(),
            "the daemon should have died at {failpoint}"
        );
        assert_eq!(
            pg.nomadfs_roles().len(),
            usize::from(role_made),
            "{failpoint}"
        );
        d.kill9();
        d.env.clear();
        d.spawn(true);
        // Restored with the lease: it names the role (made or not).
        let ids = d.sh_ok("ls sys/leases/pg/creds/app");
        let ids: Vec<&str> = ids.lines().collect();
        assert_eq!(ids.len(), 1, "{failpoint}: {ids:?}");
        let lease = json(
            &std::fs::read(d.p(&format!("sys/leases/pg/creds/app/{}", ids[0]))).expect("lease"),
        );
        let user = lease["upstream"]["username"].as_str().expect("username");
        assert_eq!(pg.role_exists(user), role_made, "{failpoint}");
        // Revocation drops it, or finds nothing to drop: both succeed.
        d.sh_ok("rm -r sys/leases/pg");
        assert!(pg.nomadfs_roles().is_empty(), "{failpoint}");
        assert!(d.sh_ok("ls sys/leases").is_empty());
    }
}

#[test]
fn stopped_server_gives_eio_with_the_reason_and_unmount_revokes() {
    let mut pg = Pg::start();
    let d = Daemon::start();
    setup(&d, &pg, None);
    creds(&d, "app");
    assert_eq!(pg.nomadfs_roles().len(), 1);
    // Unmount revokes every lease of the mount first.
    std::fs::remove_file(d.p("sys/mounts/pg")).expect("unmount");
    assert!(pg.nomadfs_roles().is_empty());
    setup(&d, &pg, None);
    // Statements the server refuses: EIO, the reason logged, no lease, no role (one transaction).
    write_synced(
        d.p("pg/roles/bad"),
        "creation_statements = [\"CREATE ROLE \\\"{{name}}\\\" LOGIN\", \"GRANT SELECT ON no_such_table TO \\\"{{name}}\\\"\"]",
    )
    .expect("role bad");
    assert_eq!(
        errno_of(std::fs::read(d.p("pg/creds/bad"))),
        Some(libc::EIO)
    );
    assert!(d.log_text().contains("no_such_table"), "reason not logged");
    assert!(pg.nomadfs_roles().is_empty());
    assert!(d.sh_ok("ls sys/leases").is_empty());
    pg.stop();
    assert_eq!(
        errno_of(std::fs::read(d.p("pg/creds/app"))),
        Some(libc::EIO)
    );
    assert!(d.sh_ok("ls sys/leases").is_empty());
    let log = d.log_text();
    assert!(
        log.contains(&format!("127.0.0.1:{}", pg.port)) && log.contains("connect"),
        "reason not logged:\n{log}"
    );
    // Back up: works again without reconfiguring.
    pg.resume();
    let c = creds(&d, "app");
    assert!(pg.role_exists(&field(&c, "username")));
}

/// PostgreSQL down while leases are live: `rm` of a lease fails EIO and the lease stays (marked
/// for retry); an expiry during the outage is retried with backoff; once the server is back both
/// roles are dropped and no lease is left.
#[test]
fn revocations_wait_out_an_outage_and_complete() {
    let mut pg = Pg::start();
    let d = Daemon::start_with("[leases]\nretry_min = \"200ms\"\nretry_max = \"1s\"\n");
    setup(&d, &pg, Some("ttl=1h\nmax_ttl=2h\n"));
    let manual = creds(&d, "app");
    std::fs::write(d.p("pg/config/lease"), "ttl=3\nmax_ttl=3\n").expect("lease cfg");
    let expiring = creds(&d, "app");
    let (u1, u2) = (field(&manual, "username"), field(&expiring, "username"));
    let lease1 = d.p(&format!("sys/leases/{}", field(&manual, "lease_id")));
    let lease2 = d.p(&format!("sys/leases/{}", field(&expiring, "lease_id")));
    pg.stop();
    assert_eq!(
        std::fs::remove_file(&lease1).map_err(|e| e.raw_os_error()),
        Err(Some(libc::EIO)),
        "rm of a lease while PostgreSQL is down"
    );
    assert!(
        lease1.exists(),
        "the lease must stay after a failed revocation"
    );
    // The short lease falls due during the outage: its revocation fails and is retried.
    wait_until("a failed expiry revocation", 20, || {
        std::fs::read_to_string(&lease2).is_ok_and(|t| t.contains("retrying"))
    });
    assert!(lease2.exists());
    pg.resume();
    wait_until("the retried revocation", 30, || {
        !pg.role_exists(&u2) && !lease2.exists()
    });
    // The manually revoked one is retried too (rm failed, so it was scheduled for retry)…
    // …or the operator repeats the rm; either way it ends.
    if lease1.exists() {
        let _ = std::fs::remove_file(&lease1);
    }
    wait_until("the first role dropped", 30, || {
        !pg.role_exists(&u1) && !lease1.exists()
    });
    assert!(pg.nomadfs_roles().is_empty(), "orphan roles left");
}
