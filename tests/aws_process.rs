//! `aws/creds/NAME.process`, the AWS `credential_process` view, used by the real AWS CLI and
//! its SDK (botocore) against a moto server that enforces IAM authentication and policies: a
//! minted key works, is limited by its role, dies with its lease, and is fetched again before
//! its `Expiration`.

mod common;

use common::moto::Moto;
use common::{errno_of, json, Daemon};
use nomadfs_core::backends::aws_iam::{AwsIam, IamApi, RootCredentials};
use nomadfs_core::SecretBytes;
use std::path::Path;
use std::process::{Command, Output};

const ADMIN: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"*","Resource":"*"}]}"#;
/// The role: the caller may look itself up, nothing else.
const GET_USER: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"iam:GetUser","Resource":"*"}]}"#;

/// Moto with authentication enforced, and nomadfs's root user made with the 3 free requests.
/// Returns the server and the `config/root` body for that user's key.
fn enforcing_moto() -> (Moto, String) {
    let m = Moto::start_enforcing(3);
    let mut c = RootCredentials::new("testing", SecretBytes::from_slice(b"testing"));
    c.endpoint = Some(m.endpoint.clone());
    let key = AwsIam::new(&c)
        .expect("iam client")
        .create_user("nomadfs-root", "admin", ADMIN)
        .map_err(|f| f.error.message)
        .expect("bootstrap the root user");
    let secret = String::from_utf8(key.secret_access_key.expose().to_vec()).expect("utf-8");
    let root = format!(
        "access_key={}\nsecret_key={secret}\nregion=us-east-1\nendpoint={}\n",
        key.access_key_id, m.endpoint
    );
    (m, root)
}

/// An IAM client signed with the root key of a `config/root` body.
fn root_iam(root: &str) -> AwsIam {
    let field = |k: &str| {
        root.lines()
            .find_map(|l| l.strip_prefix(k))
            .expect("field")
            .to_string()
    };
    let mut c = RootCredentials::new(
        field("access_key="),
        SecretBytes::from_slice(field("secret_key=").as_bytes()),
    );
    c.endpoint = Some(field("endpoint="));
    AwsIam::new(&c).expect("iam client")
}

fn setup(d: &Daemon, root: &str, lease: Option<&str>) {
    std::fs::write(d.p("sys/mounts/aws"), "aws\n").expect("mount aws");
    std::fs::write(d.p("aws/config/root"), root).expect("config/root");
    if let Some(l) = lease {
        std::fs::write(d.p("aws/config/lease"), l).expect("config/lease");
    }
    std::fs::write(d.p("aws/roles/deploy"), GET_USER).expect("role");
}

/// An AWS config file whose default profile gets its keys from `command`.
fn aws_config(dir: &Path, name: &str, command: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!("[default]\ncredential_process = {command}\nregion = us-east-1\n"),
    )
    .expect("aws config");
    p
}

/// The AWS CLI (v1, on PATH) with only `config` as its configuration: no keys in the
/// environment, no shared credentials file.
fn aws(config: &Path, m: &Moto, args: &[&str]) -> Output {
    Command::new("aws")
        .args(["--endpoint-url", &m.endpoint, "--output", "json"])
        .args(args)
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_SESSION_TOKEN")
        .env_remove("AWS_PROFILE")
        .env("AWS_CONFIG_FILE", config)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .expect("the AWS CLI (`aws`) must be on PATH")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `aws iam get-user`: the caller's user name.
fn get_user(config: &Path, m: &Moto) -> String {
    let o = aws(config, m, &["iam", "get-user"]);
    assert!(o.status.success(), "aws iam get-user: {}", stderr(&o));
    json(&o.stdout)["User"]["UserName"]
        .as_str()
        .expect("UserName")
        .to_string()
}

fn leases(d: &Daemon) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(d.p("sys/leases/aws/creds/deploy"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().to_string())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn lease_user(d: &Daemon, id: &str) -> String {
    let v = json(&std::fs::read(d.p(&format!("sys/leases/{id}"))).expect("lease file"));
    v["upstream"]["user_name"]
        .as_str()
        .expect("user")
        .to_string()
}

#[test]
fn process_view_has_the_credential_process_shape() {
    let (_m, root) = enforcing_moto();
    let d = Daemon::start();
    setup(&d, &root, None);

    assert_eq!(
        d.sh_ok("ls aws/creds"),
        "deploy\ndeploy.env\ndeploy.process\n"
    );
    assert_eq!(d.sh_ok("stat -c %a aws/creds/deploy.process"), "400\n");
    let v = json(&std::fs::read(d.p("aws/creds/deploy.process")).expect("read .process"));
    assert_eq!(v["Version"], 1, "{v}");
    assert!(v["AccessKeyId"].as_str().is_some_and(|k| !k.is_empty()));
    assert!(v["SecretAccessKey"].as_str().is_some_and(|k| !k.is_empty()));
    let id = v["lease_id"].as_str().expect("lease_id").to_string();
    assert!(id.starts_with("aws/creds/deploy/"), "{id}");
    let lease = json(&std::fs::read(d.p(&format!("sys/leases/{id}"))).expect("lease"));
    assert_eq!(lease["path"], "aws/creds/deploy");
    assert_eq!(lease["uid"], 0);
    // Expiration is the lease's expiry, RFC 3339.
    assert_eq!(v["Expiration"], lease["expire_time"], "{v}\n{lease}");
    let exp = v["Expiration"].as_str().expect("Expiration");
    assert!(
        exp.len() == 20 && exp.ends_with('Z') && exp.as_bytes()[10] == b'T',
        "{exp}"
    );
    // The key recorded by the lease is the one handed out.
    assert_eq!(lease["upstream"]["access_key_id"], v["AccessKeyId"]);
    // The audit line of that read carries its lease id (the engine found it in the JSON).
    let audit = std::fs::read_to_string(d.audit()).expect("audit");
    assert!(
        audit
            .lines()
            .any(|l| l.contains("aws/creds/deploy.process") && l.contains(&id)),
        "no audit line with the lease id"
    );
    // .process is a view, not a role name: writes are refused, and no role may end in it.
    assert_eq!(
        errno_of(std::fs::write(d.p("aws/creds/deploy.process"), "x")),
        Some(libc::EACCES)
    );
    assert_eq!(
        errno_of(common::write_synced(d.p("aws/roles/x.process"), GET_USER)),
        Some(libc::EINVAL)
    );
}

#[test]
fn aws_cli_uses_the_process_file_and_a_revoked_lease_kills_the_key() {
    let (m, root) = enforcing_moto();
    let d = Daemon::start();
    setup(&d, &root, None);
    let tmp = tempfile::tempdir().expect("tempdir");

    // Authentication really is enforced: moto's default test key is refused.
    let o = Command::new("aws")
        .args(["--endpoint-url", &m.endpoint, "iam", "get-user"])
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_DEFAULT_REGION", "us-east-1")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .output()
        .expect("aws");
    assert!(!o.status.success(), "moto accepted an unknown key");
    assert!(
        stderr(&o).contains("InvalidClientTokenId"),
        "{}",
        stderr(&o)
    );

    // credential_process = cat MNT/aws/creds/deploy.process: the CLI gets a fresh key.
    let cmd = format!("cat {}", d.p("aws/creds/deploy.process").display());
    let live = aws_config(tmp.path(), "live", &cmd);
    let user = get_user(&live, &m);
    assert!(user.starts_with("nomadfs-deploy-u0-"), "{user}");
    let ids = leases(&d);
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(
        lease_user(&d, &format!("aws/creds/deploy/{}", ids[0])),
        user
    );
    // The key has the role's policy and nothing more.
    let o = aws(&live, &m, &["iam", "list-users"]);
    assert!(!o.status.success(), "the role does not allow ListUsers");
    assert!(stderr(&o).contains("AccessDenied"), "{}", stderr(&o));

    // One credential held by a client (a copy of one read, as an SDK caches it): it works
    // until its lease is revoked, then IAM refuses it.
    let held = std::fs::read(d.p("aws/creds/deploy.process")).expect("read .process");
    let id = json(&held)["lease_id"]
        .as_str()
        .expect("lease_id")
        .to_string();
    let copy = tmp.path().join("held.json");
    std::fs::write(&copy, &held).expect("copy");
    let cached = aws_config(tmp.path(), "cached", &format!("cat {}", copy.display()));
    assert_eq!(get_user(&cached, &m), lease_user(&d, &id));
    std::fs::remove_file(d.p(&format!("sys/leases/{id}"))).expect("revoke");
    let o = aws(&cached, &m, &["iam", "get-user"]);
    assert!(!o.status.success(), "a revoked key still works");
    assert!(
        stderr(&o).contains("InvalidClientTokenId"),
        "{}",
        stderr(&o)
    );
    // The mount path mints a new one at the next run.
    let again = get_user(&live, &m);
    assert!(again.starts_with("nomadfs-deploy-u0-") && again != user);
}

/// A Python that has botocore: `python3`, else the interpreter of the `aws` script itself.
fn botocore_python() -> String {
    let has = |py: &str| {
        Command::new(py)
            .args(["-c", "import botocore"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if has("python3") {
        return "python3".into();
    }
    let script = Command::new("pyenv")
        .args(["which", "aws"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| {
            Command::new("sh")
                .args(["-c", "command -v aws"])
                .output()
                .ok()
                .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        })
        .unwrap_or_default();
    let first = std::fs::read_to_string(&script).unwrap_or_default();
    let py = first
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("#!"))
        .unwrap_or("")
        .trim()
        .to_string();
    assert!(
        !py.is_empty() && has(&py),
        "no Python with botocore (the AWS CLI's library) found"
    );
    py
}

/// One botocore session (the library of the CLI and of boto3): `script` runs with `cfg` as
/// its AWS config and `E` (endpoint) and `MNT` set; returns its stdout.
fn botocore(cfg: &Path, m: &Moto, d: &Daemon, script: &str) -> String {
    let prelude = "import os, botocore.session\n\
        from botocore.exceptions import ClientError\n\
        E, MNT = os.environ['E'], os.environ['MNT']\n\
        iam = botocore.session.Session().create_client('iam', endpoint_url=E, region_name='us-east-1')\n";
    let o = Command::new(botocore_python())
        .arg("-c")
        .arg(format!("{prelude}{script}"))
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("AWS_CONFIG_FILE", cfg)
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("E", &m.endpoint)
        .env("MNT", &d.mnt)
        .output()
        .expect("python3 with botocore (the AWS CLI's library)");
    assert!(o.status.success(), "botocore script: {}", stderr(&o));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn sdk_session_caches_until_expiry_and_fails_after_revocation() {
    let (m, root) = enforcing_moto();
    let tmp = tempfile::tempdir().expect("tempdir");

    // ttl 1h: the SDK runs the process once and keeps the key; revoking its lease ends it.
    let d = Daemon::start();
    setup(&d, &root, None);
    let cfg = aws_config(
        tmp.path(),
        "cfg",
        &format!("cat {}", d.p("aws/creds/deploy.process").display()),
    );
    let out = botocore(
        &cfg,
        &m,
        &d,
        "a = iam.get_user()['User']['UserName']\n\
         b = iam.get_user()['User']['UserName']\n\
         print(a == b, len(os.listdir(MNT + '/sys/leases/aws/creds/deploy')))\n\
         os.remove(MNT + '/sys/leases/aws/creds/deploy/' + os.listdir(MNT + '/sys/leases/aws/creds/deploy')[0])\n\
         try:\n    iam.get_user(); print('still works')\n\
         except ClientError as e:\n    print(e.response['Error']['Code'])\n",
    );
    assert_eq!(out, "True 1\nInvalidClientTokenId\n");
    drop(d);

    // ttl 5m, inside the SDK's refresh window (10 min before Expiration): it runs the process
    // again before each call, so every call has a fresh key and lease.
    let d = Daemon::start();
    setup(&d, &root, Some("ttl=5m\n"));
    let cfg = aws_config(
        tmp.path(),
        "cfg5m",
        &format!("cat {}", d.p("aws/creds/deploy.process").display()),
    );
    let out = botocore(
        &cfg,
        &m,
        &d,
        "a = iam.get_user()['User']['UserName']\n\
         b = iam.get_user()['User']['UserName']\n\
         print(a != b, len(os.listdir(MNT + '/sys/leases/aws/creds/deploy')) >= 2)\n",
    );
    assert_eq!(out, "True True\n");
}

#[test]
fn a_process_credential_that_cannot_be_audited_is_revoked() {
    let (_m, root) = enforcing_moto();
    let iam = root_iam(&root);
    let d = Daemon::start();
    setup(&d, &root, None);
    std::fs::read(d.p("aws/creds/deploy.process")).expect("read .process");
    assert_eq!(
        iam.list_users().expect("list").len(),
        2,
        "root + one minted"
    );

    // The audit log gone (not reopened): the read fails closed, and the user it made is
    // deleted again (the engine ties the .process response to its lease by `lease_id`).
    std::fs::remove_file(d.audit()).expect("rm audit");
    assert_eq!(
        errno_of(std::fs::read(d.p("aws/creds/deploy.process"))),
        Some(libc::EIO)
    );
    assert_eq!(
        errno_of(std::fs::read(d.p("aws/creds/deploy.env"))),
        Some(libc::EIO)
    );
    let users = iam.list_users().expect("list");
    assert_eq!(
        users.len(),
        2,
        "an unaudited credential was left: {users:?}"
    );
}
