//! Three daemons on a three-member etcd cluster (real etcd, real daemons on real FUSE mounts,
//! real PostgreSQL for leases): writes seen everywhere, a policy change applied on every node
//! through the watch, one elected expiry leader that is replaced when it dies, a paused
//! leader's record change refused by fencing, and an etcd member lost without a pause in
//! service. Needs the `etcd` feature (`cargo test --features etcd --test cluster`).
//!
//! Latencies are measured and printed (run with `--nocapture` to see them), never asserted.

mod common;

use common::etcd::Etcd;
use common::pg::Pg;
use common::{json, wait_until, write_synced, Daemon, PASS};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A daemon on etcd (`endpoints` in this order: each daemon talks to another member first).
fn daemon_on(endpoints: &[String], prefix: &str) -> Daemon {
    let dir = tempfile::tempdir().expect("tempdir");
    let mnt = dir.path().join("mnt");
    std::fs::create_dir(&mnt).expect("mkdir mnt");
    let eps: Vec<String> = endpoints.iter().map(|e| format!("{e:?}")).collect();
    let cfg = format!(
        "mountpoint = {mnt:?}\nallow_other = true\nkdf_memory_kib = 19456\nkdf_iterations = 2\n[storage]\ntype = \"etcd\"\nendpoints = [{}]\nprefix = {prefix:?}\n[audit]\npath = {:?}\n",
        eps.join(", "),
        dir.path().join("audit.log")
    );
    std::fs::write(dir.path().join("mounts.toml"), cfg).expect("config");
    std::fs::write(dir.path().join("pass"), format!("{PASS}\n")).expect("pass");
    let mut d = Daemon {
        dir,
        mnt,
        child: None,
        env: Vec::new(),
    };
    d.spawn(true);
    d
}

/// Three daemons, the i-th starting with member i.
fn three_daemons(etcd: &Etcd, prefix: &str) -> Vec<Daemon> {
    let eps = etcd.endpoints();
    (0..3)
        .map(|i| {
            let mut e = eps.clone();
            e.rotate_left(i);
            daemon_on(&e, prefix)
        })
        .collect()
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

fn health(d: &Daemon) -> serde_json::Value {
    json(&std::fs::read(d.p("sys/health")).expect("sys/health"))
}

fn role(d: &Daemon) -> String {
    std::fs::read(d.p("sys/health"))
        .ok()
        .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
        .and_then(|v| v["role"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// The index of the one daemon (among `alive`) that says it leads, once exactly one does.
fn wait_for_leader(ds: &[Daemon], alive: &[usize], secs: u64) -> usize {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let leaders: Vec<usize> = alive
            .iter()
            .copied()
            .filter(|&i| role(&ds[i]) == "leader")
            .collect();
        if leaders.len() == 1 {
            return leaders[0];
        }
        assert!(
            Instant::now() < deadline,
            "no single leader among {alive:?} after {secs} s (leaders: {leaders:?})"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Can uid 1001 read `path`?
fn uid_reads(path: &Path) -> bool {
    Command::new("setpriv")
        .args(["--reuid=1001", "--regid=1001", "--clear-groups", "cat"])
        .arg(path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .expect("setpriv")
        .success()
}

/// Milliseconds until `f` holds, polled; None if not within `limit`.
fn time_until(limit: Duration, mut f: impl FnMut() -> bool) -> Option<u128> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return Some(start.elapsed().as_millis());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    None
}

fn percentile(sorted: &[u128], p: f64) -> u128 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

const GRANT: &str =
    "uids = [1001]\nrules = [ { path = \"secret/shared\", capabilities = [\"read\"] } ]\n";

#[test]
fn three_nodes_share_writes_and_policy_changes_and_survive_a_member_loss() {
    let mut etcd = Etcd::start(3);
    let ds = three_daemons(&etcd, "c1/");
    // Exactly one leader; the others follow; health names the storage as healthy.
    let leader = wait_for_leader(&ds, &[0, 1, 2], 10);
    wait_until("every node knows the leader", 5, || {
        ds.iter().all(|d| health(d)["leader"].is_string())
    });
    for (i, d) in ds.iter().enumerate() {
        let h = health(d);
        assert_eq!(h["storage_ok"], true, "{h}");
        assert_eq!(h["role"], if i == leader { "leader" } else { "follower" });
        assert!(h["leader"].is_string(), "{h}");
    }
    // `nomadfs status` shows the role.
    let out = Command::new(common::bin())
        .arg("status")
        .current_dir(&ds[0].mnt)
        .output()
        .expect("status");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("role"), "{text}");

    // Write on one, read on the others.
    for (i, d) in ds.iter().enumerate() {
        write_synced(d.p(&format!("secret/from-{i}")), format!("v{i}")).expect("write");
    }
    for d in &ds {
        for i in 0..3 {
            assert_eq!(read(&d.p(&format!("secret/from-{i}"))), format!("v{i}"));
        }
    }

    // Reads/s per node with all three reading at once (measured, printed).
    let rates: Vec<(usize, f64)> = std::thread::scope(|s| {
        let hs: Vec<_> = ds
            .iter()
            .enumerate()
            .map(|(i, d)| {
                s.spawn(move || {
                    let p = d.p("secret/from-0");
                    let start = Instant::now();
                    let mut n = 0u64;
                    while start.elapsed() < Duration::from_secs(2) {
                        assert_eq!(read(&p), "v0");
                        n += 1;
                    }
                    (i, n as f64 / start.elapsed().as_secs_f64())
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().expect("reader")).collect()
    });
    for (i, r) in rates {
        eprintln!("node {i}: {r:.0} reads/s (open+read+close, 3 nodes reading at once)");
    }

    // A grant removed on A is denied on B and C (the watch), and a grant made on A is
    // allowed there; measured over 20 rounds.
    write_synced(ds[0].p("secret/shared"), "s").expect("shared");
    let mut revoke_ms = Vec::new();
    let mut grant_ms = Vec::new();
    for round in 0..20 {
        let a = round % 3;
        write_synced(ds[a].p("sys/policies/reader"), GRANT).expect("grant");
        for (i, d) in ds.iter().enumerate().filter(|(i, _)| *i != a) {
            let t = time_until(Duration::from_secs(2), || uid_reads(&d.p("secret/shared")));
            let t = t.unwrap_or_else(|| panic!("round {round}: grant on {a} not applied on {i}"));
            grant_ms.push(t);
        }
        std::fs::remove_file(ds[a].p("sys/policies/reader")).expect("remove grant");
        for (i, d) in ds.iter().enumerate().filter(|(i, _)| *i != a) {
            let t = time_until(Duration::from_secs(2), || !uid_reads(&d.p("secret/shared")));
            let t = t.unwrap_or_else(|| panic!("round {round}: removal on {a} not applied on {i}"));
            revoke_ms.push(t);
        }
    }
    for (what, v) in [
        ("grant removed", &mut revoke_ms),
        ("grant added", &mut grant_ms),
    ] {
        v.sort();
        eprintln!(
            "cross-node policy latency ({what}, {} samples, ms): min {} p50 {} p90 {} p99 {} max {}",
            v.len(),
            v[0],
            percentile(v, 0.5),
            percentile(v, 0.9),
            percentile(v, 0.99),
            v[v.len() - 1]
        );
    }

    // A mount made on one node is seen by the others' table at once (watch), not only on a
    // miss: its listing shows it.
    write_synced(ds[1].p("sys/mounts/team"), "generic").expect("mount");
    let t = time_until(Duration::from_secs(2), || {
        std::fs::read_dir(&ds[2].mnt)
            .map(|rd| rd.flatten().any(|e| e.file_name() == "team"))
            .unwrap_or(false)
    });
    assert!(t.is_some(), "mount on B not in C's root listing");
    eprintln!("cross-node mount table latency: {} ms", t.unwrap_or(0));

    // A rotates the key: B and C write under the new term at once (the watch), not only
    // after reading an entry of it.
    let term = |d: &Daemon| health(d)["key_term"].as_u64().unwrap_or(0);
    let before = term(&ds[0]);
    write_synced(ds[0].p("sys/rotate"), "x").expect("rotate");
    for d in &ds[1..] {
        let t = time_until(Duration::from_secs(2), || term(d) == before + 1);
        assert!(t.is_some(), "rotation not followed:\n{}", d.log_text());
        eprintln!("cross-node key rotation latency: {} ms", t.unwrap_or(0));
    }

    // One etcd member dies: every daemon keeps serving (reads and writes).
    etcd.kill(0);
    for (i, d) in ds.iter().enumerate() {
        write_synced(d.p(&format!("secret/after-{i}")), format!("a{i}")).expect("write after");
    }
    for d in &ds {
        for i in 0..3 {
            assert_eq!(read(&d.p(&format!("secret/after-{i}"))), format!("a{i}"));
            assert_eq!(read(&d.p(&format!("secret/from-{i}"))), format!("v{i}"));
        }
    }
    // All three members back: nothing lost, everything still served.
    etcd.spawn(0);
    etcd.wait_healthy();
    for d in &ds {
        for i in 0..3 {
            assert_eq!(read(&d.p(&format!("secret/after-{i}"))), format!("a{i}"));
        }
    }
    // The watches moved to a live member too: a policy change still applies everywhere.
    write_synced(ds[1].p("sys/policies/reader"), GRANT).expect("grant");
    for d in [&ds[0], &ds[2]] {
        assert!(
            time_until(Duration::from_secs(3), || uid_reads(&d.p("secret/shared"))).is_some(),
            "policy not applied after a member loss:\n{}",
            d.log_text()
        );
    }
    // And there is still one leader; stopped cleanly, it hands over at once (it revokes its
    // etcd lease), not after the TTL.
    let leader = wait_for_leader(&ds, &[0, 1, 2], 10);
    let mut ds = ds;
    let stopped_at = Instant::now();
    ds[leader].stop();
    let alive: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    wait_for_leader(&ds, &alive, 10);
    eprintln!(
        "handover after a clean stop (SIGTERM) of the leader: {} ms",
        stopped_at.elapsed().as_millis()
    );
    assert!(ds[leader].log_text().contains("left the expiry election"));
    // A sealed daemon cannot revoke, so it gives the leadership up: the other one leads.
    let now = wait_for_leader(&ds, &alive, 10);
    let other = alive.iter().copied().find(|&i| i != now).expect("other");
    write_synced(ds[now].p("sys/seal"), "x").expect("seal");
    wait_for_leader(&ds, &[other], 10);
    assert_eq!(role(&ds[now]), "follower");
}

/// Mount pg/ through `d` (the table is shared) with roles `app` (default revocation) and
/// `slow` (revocation that records itself and sleeps upstream, then drops the role).
fn setup_pg(d: &Daemon, pg: &Pg) {
    pg.psql("CREATE TABLE IF NOT EXISTS revoked (name text)");
    write_synced(d.p("sys/mounts/pg"), "postgresql\n").expect("mount pg");
    write_synced(d.p("pg/config/connection"), pg.admin_url()).expect("config/connection");
    write_synced(
        d.p("pg/roles/app"),
        r#"creation_statements = "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
revocation_statements = ["INSERT INTO revoked VALUES ('{{name}}')", "DROP ROLE IF EXISTS \"{{name}}\""]
default_ttl = 3
max_ttl = "1h"
"#,
    )
    .expect("role app");
    write_synced(
        d.p("pg/roles/slow"),
        r#"creation_statements = "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'"
revocation_statements = ["INSERT INTO revoked VALUES ('{{name}}')", "SELECT pg_sleep(3)", "DROP ROLE IF EXISTS \"{{name}}\""]
default_ttl = 1
max_ttl = "1h"
"#,
    )
    .expect("role slow");
}

fn creds(d: &Daemon, role: &str) -> (String, String) {
    let v = json(&std::fs::read(d.p(&format!("pg/creds/{role}"))).expect("creds"));
    (
        v["username"].as_str().unwrap_or_default().to_string(),
        v["lease_id"].as_str().unwrap_or_default().to_string(),
    )
}

fn signal(d: &Daemon, sig: &str) {
    let pid = d.child.as_ref().expect("running").id();
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()
        .expect("kill");
    assert!(st.success(), "kill -{sig} {pid}");
}

#[test]
fn the_expiry_leader_is_replaced_when_it_dies_and_fenced_when_paused() {
    let pg = Pg::start();
    let etcd = Etcd::start(3);
    let mut ds = three_daemons(&etcd, "c2/");
    let leader = wait_for_leader(&ds, &[0, 1, 2], 10);
    setup_pg(&ds[leader], &pg);

    // Leases issued on every node (the table and config are shared), due in 3 s.
    let mut users = Vec::new();
    for d in &ds {
        for _ in 0..3 {
            let (user, lease) = creds(d, "app");
            assert!(pg.role_exists(&user), "{user}");
            assert!(lease.starts_with("pg/creds/app/"), "{lease}");
            users.push(user);
        }
    }
    // `rm` of a lease works on any node: one issued on a follower, removed through the other.
    let followers: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let (rm_user, lease) = creds(&ds[followers[0]], "app");
    let file = ds[followers[1]].p(&format!("sys/leases/{lease}"));
    wait_until("the lease seen on the other follower", 5, || file.exists());
    std::fs::remove_file(ds[followers[1]].p(&format!("sys/leases/{lease}"))).expect("rm lease");
    assert!(
        !pg.role_exists(&rm_user),
        "rm on a follower did not revoke upstream"
    );

    // The leader dies before they are due: another daemon takes over and revokes them all.
    let killed_at = Instant::now();
    ds[leader].kill9();
    let alive: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    let new = wait_for_leader(&ds, &alive, 10);
    let failover = killed_at.elapsed();
    eprintln!(
        "leader failover: {} ms from SIGKILL to a new leader's sys/health",
        failover.as_millis()
    );
    wait_until(
        "every lease revoked upstream after the failover",
        20,
        || users.iter().all(|u| !pg.role_exists(u)),
    );
    let revocations = pg.psql(&format!(
        "SELECT count(*) FROM revoked WHERE name <> '{rm_user}'"
    ));
    eprintln!(
        "{} leases, {revocations} upstream revocations, {} ms from SIGKILL to the last",
        users.len(),
        killed_at.elapsed().as_millis()
    );
    for i in &alive {
        wait_until("lease records gone on every node", 10, || {
            std::fs::read_dir(ds[*i].p("sys/leases/pg/creds/app"))
                .map(|rd| rd.count() == 0)
                .unwrap_or(true)
        });
    }

    // A paused leader: SIGSTOP it in the middle of a revocation (upstream is sleeping), past
    // its etcd lease; another daemon takes over; SIGCONT: its record change is fenced off.
    let (user, _lease) = creds(&ds[new], "slow");
    wait_until("the slow revocation runs upstream", 15, || {
        pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(3)%' AND pid <> pg_backend_pid()")
            .trim()
            != "0"
    });
    signal(&ds[new], "STOP");
    let other = alive.iter().copied().find(|&i| i != new).expect("other");
    let stopped_at = Instant::now();
    let took = time_until(Duration::from_secs(10), || role(&ds[other]) == "leader");
    signal(&ds[new], "CONT");
    let took = took.unwrap_or_else(|| {
        panic!(
            "no takeover while the leader was stopped:\n{}",
            ds[other].log_text()
        )
    });
    eprintln!("takeover from a SIGSTOPped leader: {took} ms after SIGSTOP");
    assert!(stopped_at.elapsed() >= Duration::from_millis(took as u64));
    wait_until("the resumed leader's write refused by fencing", 15, || {
        ds[new].log_text().contains("fenced:")
    });
    wait_until("the slow lease revoked by the new leader", 20, || {
        !pg.role_exists(&user)
            && std::fs::read_dir(ds[other].p("sys/leases/pg/creds/slow"))
                .map(|rd| rd.count() == 0)
                .unwrap_or(true)
    });
    // The deposed leader's upstream revocation ran (before its record change was fenced);
    // the new leader's repeat finds the role gone, which counts as revoked (idempotent).
    let n = pg.psql(&format!(
        "SELECT count(*) FROM revoked WHERE name = '{user}'"
    ));
    eprintln!(
        "upstream revocations of the paused leader's lease: {}",
        n.trim()
    );
    // The resumed daemon is a follower now, and says so.
    wait_until("the resumed daemon follows", 10, || {
        role(&ds[new]) == "follower"
    });
    assert_eq!(role(&ds[other]), "leader");
}

#[test]
fn an_aws_intent_is_rolled_back_by_its_owner_not_by_another_daemon() {
    let moto = common::moto::Moto::start();
    let etcd = Etcd::start(1);
    let mut a = daemon_on(&etcd.endpoints(), "c3/");
    let mut b = daemon_on(&etcd.endpoints(), "c3/");
    write_synced(a.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    write_synced(a.p("aws/config/root"), moto.root_config()).expect("config/root");
    write_synced(
        a.p("aws/roles/deploy"),
        r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#,
    )
    .expect("role");
    // A dies between "IAM user made" and "lease stored": its intent stays in wal/.
    a.stop();
    a.env = vec![("NOMADFS_FAILPOINT".into(), "aws-after-create-user".into())];
    a.spawn(true);
    assert!(std::fs::read(a.p("aws/creds/deploy")).is_err());
    a.kill9();
    let users = || {
        let mut c = nomadfs_core::backends::aws_iam::RootCredentials::new(
            "testing",
            nomadfs_core::SecretBytes::from_slice(b"testing"),
        );
        c.endpoint = Some(moto.endpoint.clone());
        nomadfs_core::backends::aws_iam::AwsIam::new(&c)
            .expect("iam")
            .list_users()
            .expect("list users")
    };
    assert_eq!(users().len(), 1, "the user A made before dying");
    // B unseals (restart): A's intent is within A's window, so B leaves it alone.
    b.restart();
    assert!(
        b.log_text().contains("left to it"),
        "B did not leave A's intent:\n{}",
        b.log_text()
    );
    assert_eq!(users().len(), 1, "B rolled back another daemon's intent");
    // A comes back (same node id): it rolls its own intent back.
    a.env.clear();
    a.spawn(true);
    wait_until("A rolls back its own intent", 10, || users().is_empty());
    assert!(a.log_text().contains("rolled back an IAM user"));
}

#[test]
fn leases_expiring_while_leaders_are_killed_are_all_revoked_once_recorded() {
    let pg = Pg::start();
    let etcd = Etcd::start(3);
    let mut ds = three_daemons(&etcd, "c4/");
    let first = wait_for_leader(&ds, &[0, 1, 2], 10);
    setup_pg(&ds[first], &pg);
    // A stream of leases (3 s each) issued round-robin for ~10 s, one every 250 ms; the leader
    // is killed with SIGKILL every 4 s (at 3 s and 7 s) and restarted at once, as a supervisor
    // would. NOMADFS_CLUSTER_STREAM="SECS,EVERY_MS,KILL_EVERY_SECS" runs a longer stream (the
    // issue's: "60,120,5", ~500 leases and 12 kills).
    let (secs, every_ms, kill_every) = std::env::var("NOMADFS_CLUSTER_STREAM")
        .ok()
        .and_then(|v| {
            let n: Vec<u64> = v.split(',').filter_map(|x| x.trim().parse().ok()).collect();
            (n.len() == 3 && n[2] > 0).then(|| (n[0], n[1], n[2]))
        })
        .unwrap_or((10, 250, 4));
    let start = Instant::now();
    let mut users = Vec::new();
    let mut kills = Vec::new();
    let mut n = 0usize;
    while start.elapsed() < Duration::from_secs(secs) {
        let at = start.elapsed();
        let next_kill =
            Duration::from_secs(kill_every * (kills.len() as u64 + 1)) - Duration::from_secs(1);
        if at > next_kill {
            let leader = wait_for_leader(&ds, &[0, 1, 2], 10);
            ds[leader].kill9();
            kills.push((leader, Instant::now()));
            ds[leader].spawn(true);
        }
        let d = &ds[n % 3];
        n += 1;
        let (user, _) = creds(d, "app");
        users.push(user);
        std::thread::sleep(Duration::from_millis(every_ms));
    }
    wait_until("every lease revoked upstream", 30 + secs, || {
        users.iter().all(|u| !pg.role_exists(u))
    });
    for d in &ds {
        wait_until("no lease record left on any node", 10, || {
            std::fs::read_dir(d.p("sys/leases/pg/creds/app"))
                .map(|rd| rd.count() == 0)
                .unwrap_or(true)
        });
    }
    let rows = pg.psql("SELECT count(*) FROM revoked");
    let distinct = pg.psql("SELECT count(DISTINCT name) FROM revoked");
    eprintln!(
        "{} leases, {} leader kills, {} upstream revocations of {} distinct roles (repeats \
         are revocations a killed leader made before its record change)",
        users.len(),
        kills.len(),
        rows.trim(),
        distinct.trim()
    );
    assert_eq!(
        distinct.trim(),
        users.len().to_string(),
        "a lease never revoked upstream"
    );
    // Every planned kill happened (the last one may fall past the stream's end).
    let planned = (secs + 1) / kill_every;
    assert!(
        !kills.is_empty() && kills.len() as u64 + 1 >= planned,
        "{} leader kills of {planned} planned",
        kills.len()
    );
}
