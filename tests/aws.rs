//! The `aws` backend and leases through a real mount, against a real moto server as IAM.

mod common;

use common::moto::Moto;
use common::{errno_of, json, wait_until, write_synced, Daemon};
use nomadfs_core::backends::aws_iam::{AwsIam, IamApi, RootCredentials};
use nomadfs_core::SecretBytes;
use std::time::Duration;

const POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#;

fn iam(m: &Moto) -> AwsIam {
    let mut c = RootCredentials::new("testing", SecretBytes::from_slice(b"testing"));
    c.endpoint = Some(m.endpoint.clone());
    AwsIam::new(&c).expect("iam client")
}

/// Mount aws/, point it at moto, write role `deploy`.
fn setup(d: &Daemon, m: &Moto, lease: Option<&str>) {
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    std::fs::write(d.p("aws/config/root"), m.root_config()).expect("config/root");
    if let Some(l) = lease {
        std::fs::write(d.p("aws/config/lease"), l).expect("config/lease");
    }
    std::fs::write(d.p("aws/roles/deploy"), POLICY).expect("role");
}

fn lease_user(d: &Daemon, lease_id: &str) -> String {
    let v = json(&std::fs::read(d.p(&format!("sys/leases/{lease_id}"))).expect("lease file"));
    v["upstream"]["user_name"]
        .as_str()
        .expect("user")
        .to_string()
}

#[test]
fn dynamic_secrets_guide_through_the_mount() {
    let m = Moto::start();
    let iam = iam(&m);
    let d = Daemon::start();
    setup(&d, &m, None);

    // config/root is write-only.
    assert_eq!(
        errno_of(std::fs::read(d.p("aws/config/root"))),
        Some(libc::EACCES)
    );
    assert_eq!(d.sh_ok("stat -c %a aws/config/root"), "200\n");
    // A malformed role is refused and nothing is stored.
    assert_eq!(
        errno_of(write_synced(d.p("aws/roles/broken"), "{not json")),
        Some(libc::EINVAL)
    );
    assert_eq!(
        errno_of(std::fs::metadata(d.p("aws/roles/broken"))),
        Some(libc::ENOENT)
    );
    assert_eq!(
        std::fs::read_to_string(d.p("aws/roles/deploy")).expect("role"),
        POLICY
    );

    // Lookups and ls -l create nothing.
    d.sh_ok("ls -l aws/creds aws/creds/deploy > /dev/null; stat aws/creds/deploy > /dev/null");
    assert!(
        iam.list_users().expect("list").is_empty(),
        "stat created a user"
    );

    // cat creds/deploy: one new IAM user with key and policy, under a lease.
    let creds = json(&std::fs::read(d.p("aws/creds/deploy")).expect("creds"));
    let lease_id = creds["lease_id"].as_str().expect("lease_id").to_string();
    assert!(lease_id.starts_with("aws/creds/deploy/"), "{lease_id}");
    assert_eq!(creds["renewable"], true);
    assert_eq!(creds["lease_duration"], 3600);
    assert!(creds["access_key"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(creds["secret_key"].as_str().is_some_and(|k| !k.is_empty()));
    let user = lease_user(&d, &lease_id);
    assert!(user.starts_with("nomadfs-deploy-u0-"), "{user}");
    assert!(iam.user_exists(&user).expect("exists"));
    assert_eq!(iam.list_users().expect("list"), vec![user.clone()]);
    let lease = json(&std::fs::read(d.p(&format!("sys/leases/{lease_id}"))).expect("lease"));
    assert_eq!(lease["uid"], 0);
    assert_eq!(lease["path"], "aws/creds/deploy");
    assert_eq!(
        d.sh_ok("ls sys/leases/aws/creds/deploy | wc -l").trim(),
        "1"
    );

    // The .env form.
    let env = std::fs::read_to_string(d.p("aws/creds/deploy.env")).expect("env");
    assert!(env.contains("AWS_ACCESS_KEY_ID=") && env.contains("AWS_SECRET_ACCESS_KEY="));
    assert!(env.contains("NOMADFS_LEASE_ID=aws/creds/deploy/"));
    assert_eq!(iam.list_users().expect("list").len(), 2);

    // Writes to creds/ are refused.
    assert_eq!(
        errno_of(std::fs::write(d.p("aws/creds/deploy"), "x")),
        Some(libc::EACCES)
    );

    // rm of the lease file revokes upstream before it returns.
    std::fs::remove_file(d.p(&format!("sys/leases/{lease_id}"))).expect("revoke");
    assert!(!iam.user_exists(&user).expect("exists"), "user still there");
    assert_eq!(
        errno_of(std::fs::remove_file(d.p(&format!("sys/leases/{lease_id}")))),
        Some(libc::ENOENT)
    );

    // rm -r of the prefix revokes the rest.
    std::fs::read(d.p("aws/creds/deploy")).expect("creds");
    assert_eq!(iam.list_users().expect("list").len(), 2);
    d.sh_ok("rm -r sys/leases/aws/creds/deploy");
    assert!(iam.list_users().expect("list").is_empty());
    assert!(d.sh_ok("ls sys/leases").is_empty());

    // The CLI: read prints a Key/Value table; revoke by id.
    let out = std::process::Command::new(common::bin())
        .args([
            "--mount",
            d.mnt.to_str().expect("utf8"),
            "read",
            "aws/creds/deploy",
        ])
        .output()
        .expect("cli");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        text.contains("lease_id") && text.contains("access_key"),
        "{text}"
    );
    let id = text
        .lines()
        .find_map(|l| l.strip_prefix("lease_id"))
        .map(|s| s.trim().to_string())
        .expect("lease id row");
    let out = std::process::Command::new(common::bin())
        .args(["--mount", d.mnt.to_str().expect("utf8"), "revoke", &id])
        .output()
        .expect("cli revoke");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(iam.list_users().expect("list").is_empty());

    // Unknown lease: ENOENT. Writes under sys/leases that are not leases: refused.
    assert_eq!(
        errno_of(std::fs::remove_file(
            d.p("sys/leases/aws/creds/deploy/nope")
        )),
        Some(libc::ENOENT)
    );
}

#[test]
fn renew_is_capped_and_expiry_revokes() {
    let m = Moto::start();
    let iam = iam(&m);
    let d = Daemon::start();
    setup(&d, &m, Some("ttl=2\nmax_ttl=3\n"));
    let creds = json(&std::fs::read(d.p("aws/creds/deploy")).expect("creds"));
    let id = creds["lease_id"].as_str().expect("id").to_string();
    let user = lease_user(&d, &id);
    // Renewal past the max TTL is capped, not an error.
    std::fs::write(d.p(&format!("sys/leases/{id}")), "1h\n").expect("renew");
    let l = json(&std::fs::read(d.p(&format!("sys/leases/{id}"))).expect("lease"));
    assert_eq!(l["expire_time"], l["max_expire_time"]);
    assert_eq!(
        errno_of(std::fs::write(d.p(&format!("sys/leases/{id}")), "soon\n")),
        Some(libc::EINVAL)
    );
    d.sh_ok(&format!("touch sys/leases/{id}"));
    // Expiry: the daemon revokes by itself.
    wait_until("expiry revocation", 10, || {
        !iam.user_exists(&user).unwrap_or(true)
    });
    wait_until("lease gone", 5, || {
        !d.p(&format!("sys/leases/{id}")).exists()
    });
}

#[test]
fn leases_expired_while_down_are_revoked_at_unseal() {
    let m = Moto::start();
    let iam = iam(&m);
    let mut d = Daemon::start();
    setup(&d, &m, Some("ttl=3\nmax_ttl=3\n"));
    let short = json(&std::fs::read(d.p("aws/creds/deploy")).expect("creds"));
    let short_user = lease_user(&d, short["lease_id"].as_str().expect("id"));
    std::fs::write(d.p("aws/config/lease"), "ttl=1h\nmax_ttl=2h\n").expect("lease cfg");
    let long = json(&std::fs::read(d.p("aws/creds/deploy")).expect("creds"));
    let long_id = long["lease_id"].as_str().expect("id").to_string();
    let long_user = lease_user(&d, &long_id);
    d.stop();
    std::thread::sleep(Duration::from_secs(4));
    assert!(
        iam.user_exists(&short_user).expect("exists"),
        "revoked while down?"
    );
    d.spawn(true);
    wait_until("revocation at unseal", 5, || {
        !iam.user_exists(&short_user).unwrap_or(true)
    });
    assert!(iam.user_exists(&long_user).expect("exists"));
    assert!(
        d.p(&format!("sys/leases/{long_id}")).exists(),
        "unexpired lease survives"
    );
}

#[test]
fn crash_between_user_and_lease_leaves_no_orphan() {
    let m = Moto::start();
    let iam = iam(&m);
    let mut d = Daemon::start();
    setup(&d, &m, None);
    d.stop();
    d.env = vec![("NOMADFS_FAILPOINT".into(), "aws-after-create-user".into())];
    d.spawn(true);
    assert!(
        std::fs::read(d.p("aws/creds/deploy")).is_err(),
        "the daemon should have died"
    );
    assert_eq!(
        iam.list_users().expect("list").len(),
        1,
        "the user was made upstream"
    );
    d.kill9();
    d.env.clear();
    d.spawn(true);
    assert!(
        iam.list_users().expect("list").is_empty(),
        "orphan IAM user after restart; log:\n{}",
        d.log_text()
    );
    assert!(d.sh_ok("ls sys/leases").is_empty());
}

#[test]
fn unreachable_iam_gives_eio_and_unmount_revokes() {
    let m = Moto::start();
    let iam = iam(&m);
    let d = Daemon::start();
    setup(&d, &m, None);
    std::fs::read(d.p("aws/creds/deploy")).expect("creds");
    assert_eq!(iam.list_users().expect("list").len(), 1);
    // Unmount revokes every lease of the mount first.
    std::fs::remove_file(d.p("sys/mounts/aws")).expect("unmount");
    assert!(iam.list_users().expect("list").is_empty());
    // An endpoint nobody answers: EIO, no lease, the reason in the log.
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount");
    std::fs::write(
        d.p("aws/config/root"),
        "access_key=testing\nsecret_key=testing\nendpoint=http://127.0.0.1:1\n",
    )
    .expect("root");
    std::fs::write(d.p("aws/roles/deploy"), POLICY).expect("role");
    assert_eq!(
        errno_of(std::fs::read(d.p("aws/creds/deploy"))),
        Some(libc::EIO)
    );
    assert!(d.sh_ok("ls sys/leases").is_empty());
    assert!(d.log_text().contains("127.0.0.1:1"), "reason not logged");
}
