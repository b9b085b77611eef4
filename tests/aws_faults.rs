//! Upstream faults: the IAM endpoint (a real moto server) stops answering mid-run.
//!
//! The outage is made with SIGSTOP/SIGCONT rather than by killing moto: moto keeps its state
//! only in memory, so a killed and restarted moto forgets every user and "no orphan IAM user
//! afterwards" would prove nothing. A frozen moto keeps its users, connections still open (the
//! kernel accepts them) but nothing answers, like a hung service or a black-holed network, and
//! requests sent during the outage are processed after SIGCONT even though their callers gave
//! up — the hardest case for orphans (a CreateUser that timed out but happens anyway). The
//! second test kills moto instead (connections refused) and restarts it on the same port.

mod common;

use common::moto::Moto;
use common::{errno_of, json, wait_until, Daemon};
use nomadfs_core::backends::aws_iam::{AwsIam, IamApi, RootCredentials};
use nomadfs_core::SecretBytes;
use std::time::Duration;

const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#;

/// Fast retries so a test sees several attempts; enough attempts that nothing turns
/// irrevocable during the outage.
const LEASES: &str = "[leases]\nretry_min = \"200ms\"\nretry_max = \"1s\"\nmax_attempts = 1000\n";

fn iam(m: &Moto) -> AwsIam {
    let mut c = RootCredentials::new("testing", SecretBytes::from_slice(b"testing"));
    c.endpoint = Some(m.endpoint.clone());
    AwsIam::new(&c).expect("iam client")
}

fn setup(d: &Daemon, m: &Moto) {
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    std::fs::write(d.p("aws/config/root"), m.root_config()).expect("config/root");
    std::fs::write(d.p("aws/roles/deploy"), POLICY).expect("role");
}

/// `cat aws/creds/deploy` with lease config `lease`; returns (lease id, IAM user).
fn creds(d: &Daemon, lease: &str) -> (String, String) {
    std::fs::write(d.p("aws/config/lease"), lease).expect("config/lease");
    let c = json(&std::fs::read(d.p("aws/creds/deploy")).expect("creds"));
    let id = c["lease_id"].as_str().expect("lease_id").to_string();
    let l = lease_json(d, &id).expect("lease file");
    let user = l["upstream"]["user_name"]
        .as_str()
        .expect("user")
        .to_string();
    // The lease records what revocation needs: the key handed out and the policy name.
    assert_eq!(l["upstream"]["access_key_id"], c["access_key"]);
    assert_eq!(l["upstream"]["policy_name"], "nomadfs");
    (id, user)
}

fn lease_json(d: &Daemon, id: &str) -> Option<serde_json::Value> {
    std::fs::read(d.p(&format!("sys/leases/{id}")))
        .ok()
        .map(|b| json(&b))
}

/// Every lease id under sys/leases.
fn lease_ids(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = d
        .sh_ok("cd sys/leases && find . -type f | sed 's|^\\./||'")
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    v
}

/// The audit records (parsed) whose path is `path`.
fn audit_for(d: &Daemon, path: &str) -> Vec<serde_json::Value> {
    std::fs::read_to_string(d.audit())
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["path"] == path)
        .collect()
}

#[test]
fn iam_outage_fails_creation_cleanly_and_revocations_resume() {
    let m = Moto::start();
    let iam = iam(&m);
    let mut d = Daemon::start_with(LEASES);
    setup(&d, &m);

    // Before the outage: a long lease to `rm` during it, short ones whose expiry falls in it,
    // and a long one that must survive everything.
    let (rm_id, rm_user) = creds(&d, "ttl=1h\nmax_ttl=2h\n");
    let (keep_id, keep_user) = creds(&d, "ttl=1h\nmax_ttl=2h\n");
    // 8 s: they fall due while IAM is frozen (the failed `cat` and `rm` below take >= 15 s).
    let short: Vec<(String, String)> = (0..3).map(|_| creds(&d, "ttl=8\nmax_ttl=8\n")).collect();
    assert_eq!(iam.list_users().expect("list").len(), 5);

    m.pause();

    // 1. Creation fails cleanly: EIO, the reason in the daemon log and the audit log, no
    //    credential handed out.
    assert_eq!(
        errno_of(std::fs::read(d.p("aws/creds/deploy"))),
        Some(libc::EIO)
    );
    let recs = audit_for(&d, "aws/creds/deploy");
    let failed = recs.last().expect("audit record of the failed read");
    assert_eq!(failed["result"], "error", "{failed}");
    assert_eq!(failed["errno"], "EIO", "{failed}");
    assert!(failed["lease_id"].is_null(), "{failed}");
    let reason = failed["reason"].as_str().unwrap_or_default();
    assert!(reason.contains("CreateUser"), "{reason}");
    assert!(
        d.log_text().contains("CreateUser"),
        "reason not in the daemon log"
    );
    // IAM may still make that user (the request is queued in the frozen server), so what is
    // left is a cleanup lease: already being revoked, not renewable, owned by the caller.
    let ids = lease_ids(&d);
    let cleanup: Vec<&String> = ids
        .iter()
        .filter(|i| ![&rm_id, &keep_id].contains(i) && !short.iter().any(|(s, _)| s == *i))
        .collect();
    assert_eq!(cleanup.len(), 1, "{ids:?}");
    let c = lease_json(&d, cleanup[0]).expect("cleanup lease");
    assert_eq!(c["state"], "retrying", "{c}");
    assert_eq!(c["renewable"], false, "{c}");
    assert_eq!(c["upstream"]["cleanup"], true, "{c}");
    assert!(c["upstream"]["access_key_id"].is_null(), "{c}");

    // 2. `rm` of a lease during the outage: EIO, and the lease stays, marked for retry.
    assert_eq!(
        errno_of(std::fs::remove_file(d.p(&format!("sys/leases/{rm_id}")))),
        Some(libc::EIO)
    );
    let l = lease_json(&d, &rm_id).expect("lease kept after a failed rm");
    assert_eq!(l["state"], "retrying", "{l}");
    assert!(
        l["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{l}"
    );
    assert!(
        audit_for(&d, &format!("sys/leases/{rm_id}"))
            .iter()
            .any(|r| r["errno"] == "EIO"),
        "the failed rm is audited"
    );

    // 3. Expiry revocations hit the outage and are retried.
    wait_until("expiry revocations failing and rescheduled", 60, || {
        short.iter().all(|(id, _)| {
            lease_json(&d, id).is_some_and(|l| l["revocation_attempts"].as_u64() >= Some(1))
        })
    });

    // 4. The daemon restarts while revocations are pending: they are restored at unseal and
    //    go on being retried.
    d.restart();
    let pending = lease_ids(&d);
    assert!(
        pending.contains(&rm_id) && pending.contains(&keep_id),
        "{pending:?}"
    );
    for (id, _) in &short {
        assert!(
            pending.contains(id),
            "pending revocation lost at restart: {id}"
        );
    }
    std::thread::sleep(Duration::from_secs(2));

    // 5. IAM answers again: every pending revocation completes by itself.
    m.resume();
    wait_until("pending revocations complete", 90, || {
        lease_ids(&d) == vec![keep_id.clone()]
    });
    // No orphan: the only IAM user left is the one of the live lease — not the users of the
    // revoked leases, and not the user the timed-out CreateUser made after the outage.
    let users = iam.list_users().expect("list");
    assert_eq!(users, vec![keep_user.clone()], "orphan IAM users");
    assert!(!users.contains(&rm_user));
    let l = lease_json(&d, &keep_id).expect("live lease");
    assert_eq!(l["state"], "active", "{l}");
    // Nothing was left for recovery at the next unseal (no write-ahead intent kept).
    assert!(
        !d.log_text().contains("left for recovery"),
        "an intent was kept"
    );
    d.restart();
    assert_eq!(lease_ids(&d), vec![keep_id.clone()]);
    assert_eq!(iam.list_users().expect("list"), vec![keep_user]);
    // And it works again.
    let (_, user) = creds(&d, "ttl=1h\nmax_ttl=2h\n");
    assert!(iam.user_exists(&user).expect("exists"));
}

#[test]
fn iam_killed_refuses_fast_and_revocation_completes_after_restart() {
    let mut m = Moto::start();
    let d = Daemon::start_with(LEASES);
    setup(&d, &m);
    let (id, _) = creds(&d, "ttl=1h\nmax_ttl=2h\n");
    let port = m.port();
    m.kill();

    // Connection refused: nothing was sent, so nothing can be left: EIO and no lease at all.
    assert_eq!(
        errno_of(std::fs::read(d.p("aws/creds/deploy"))),
        Some(libc::EIO)
    );
    assert_eq!(
        lease_ids(&d),
        vec![id.clone()],
        "a failed creation left a lease"
    );
    assert_eq!(
        errno_of(std::fs::remove_file(d.p(&format!("sys/leases/{id}")))),
        Some(libc::EIO)
    );
    assert_eq!(
        lease_json(&d, &id).expect("lease kept")["state"],
        "retrying"
    );

    // A new moto on the same endpoint (it knows no users: the old one's state died with it).
    // The retried revocation finds the user gone (NoSuchEntity counts as done) and completes.
    let m2 = Moto::start_on(port);
    wait_until("retried revocation completes", 60, || {
        lease_ids(&d).is_empty()
    });
    assert!(iam(&m2).list_users().expect("list").is_empty());
}
