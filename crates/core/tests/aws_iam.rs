//! `AwsIam` against a real moto server (the AWS mock): users, keys and policies are really
//! made and really removed, failures undo half-made users, and a dead endpoint fails fast.

mod support;

use nomadfs_core::backends::aws_iam::{user_name, AwsIam, IamApi, RootCredentials, USER_PATH};
use nomadfs_core::{ErrorKind, SecretBytes};
use std::sync::Arc;
use std::time::{Duration, Instant};
use support::moto::Moto;

const POLICY: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"s3:GetObject","Resource":"*"}]}"#;
const ROOT_SECRET: &str = "rootSECRETkey/DoNotLeak+0123456789abcdef";

fn creds(endpoint: String) -> RootCredentials {
    let mut c = RootCredentials::new("testing", SecretBytes::from_slice(ROOT_SECRET.as_bytes()));
    c.endpoint = Some(endpoint);
    c
}

fn iam(moto: &Moto) -> AwsIam {
    AwsIam::new(&creds(moto.endpoint())).expect("client")
}

/// A plain SDK client on the same moto, to look behind `AwsIam`'s back.
struct Sdk {
    rt: tokio::runtime::Runtime,
    client: aws_sdk_iam::Client,
}

impl Sdk {
    fn new(moto: &Moto) -> Sdk {
        let http = aws_smithy_http_client::Builder::new()
            .tls_provider(aws_smithy_http_client::tls::Provider::Rustls(
                aws_smithy_http_client::tls::rustls_provider::CryptoMode::Ring,
            ))
            .build_https();
        let conf = aws_sdk_iam::Config::builder()
            .behavior_version(aws_sdk_iam::config::BehaviorVersion::latest())
            .region(aws_sdk_iam::config::Region::new("us-east-1"))
            .credentials_provider(aws_sdk_iam::config::Credentials::new(
                "testing", "testing", None, None, "test",
            ))
            .http_client(http)
            .endpoint_url(moto.endpoint())
            .build();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Sdk {
            rt,
            client: aws_sdk_iam::Client::from_conf(conf),
        }
    }

    fn user_path(&self, user: &str) -> Option<String> {
        let out = self
            .rt
            .block_on(self.client.get_user().user_name(user).send())
            .ok()?;
        out.user().map(|u| u.path().to_string())
    }

    fn access_key_ids(&self, user: &str) -> Vec<String> {
        let out = self
            .rt
            .block_on(self.client.list_access_keys().user_name(user).send())
            .expect("ListAccessKeys");
        out.access_key_metadata()
            .iter()
            .filter_map(|k| k.access_key_id().map(str::to_string))
            .collect()
    }

    fn inline_policy(&self, user: &str, name: &str) -> serde_json::Value {
        let out = self
            .rt
            .block_on(
                self.client
                    .get_user_policy()
                    .user_name(user)
                    .policy_name(name)
                    .send(),
            )
            .expect("GetUserPolicy");
        // IAM (and moto) return the document URL-encoded.
        serde_json::from_str(&percent_decode(out.policy_document())).expect("policy is JSON")
    }
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(if b[i] == b'+' { b' ' } else { b[i] });
        i += 1;
    }
    String::from_utf8(out).expect("utf-8")
}

#[test]
fn create_then_delete_user() {
    let moto = Moto::start();
    let iam = iam(&moto);
    let sdk = Sdk::new(&moto);
    let user = user_name("reader", 1000);

    assert!(!iam.user_exists(&user).expect("exists"));
    let key = iam.create_user(&user, "nomadfs", POLICY).expect("create");
    assert_eq!(key.user_name, user);
    assert!(!key.access_key_id.is_empty());
    assert!(!key.secret_access_key.is_empty());
    assert!(!format!("{key:?}").contains(key.secret_access_key.text().expect("utf-8")));

    assert!(iam.user_exists(&user).expect("exists"));
    assert_eq!(sdk.user_path(&user).as_deref(), Some(USER_PATH));
    assert_eq!(sdk.access_key_ids(&user), vec![key.access_key_id.clone()]);
    assert_eq!(
        sdk.inline_policy(&user, "nomadfs"),
        serde_json::from_str::<serde_json::Value>(POLICY).expect("json")
    );

    iam.delete_user(&user).expect("delete");
    assert!(!iam.user_exists(&user).expect("exists"));
    assert_eq!(sdk.user_path(&user), None);
    // Deleting again is fine.
    iam.delete_user(&user).expect("delete again");
}

#[test]
fn revoke_user_with_known_parts_is_idempotent() {
    let moto = Moto::start();
    let iam = iam(&moto);
    let sdk = Sdk::new(&moto);
    // Known key id and policy name (what a lease records): targeted deletes, then the user.
    let user = user_name("known", 1);
    let key = iam.create_user(&user, "nomadfs", POLICY).expect("create");
    iam.revoke_user(&user, Some(&key.access_key_id), Some("nomadfs"))
        .expect("revoke");
    assert_eq!(sdk.user_path(&user), None, "user left behind");
    // Again (a retry after a crash mid-way): every NoSuchEntity counts as done.
    iam.revoke_user(&user, Some(&key.access_key_id), Some("nomadfs"))
        .expect("revoke again");
    // A stale key id (that key is gone already): the rest still goes.
    let user = user_name("stale", 2);
    iam.create_user(&user, "nomadfs", POLICY).expect("create");
    iam.revoke_user(&user, Some("AKIAIOSFODNN7EXAMPLE"), Some("nomadfs"))
        .expect("revoke with a stale key id");
    assert_eq!(sdk.user_path(&user), None, "user left behind");
    // Nothing known (a lease recorded before key ids were kept): IAM's DeleteConflict sends it
    // to the full sweep.
    let user = user_name("old", 3);
    iam.create_user(&user, "nomadfs", POLICY).expect("create");
    iam.revoke_user(&user, None, None)
        .expect("revoke by name only");
    assert_eq!(sdk.user_path(&user), None, "user left behind");
}

#[test]
fn revoke_user_sweeps_what_it_did_not_know() {
    let moto = Moto::start();
    let iam = iam(&moto);
    let sdk = Sdk::new(&moto);
    let user = user_name("decorated", 4);
    let key = iam.create_user(&user, "nomadfs", POLICY).expect("create");
    // Hung on the user behind nomadfs's back: another inline policy and a managed one.
    let c = &sdk.client;
    sdk.rt
        .block_on(async {
            c.put_user_policy()
                .user_name(&user)
                .policy_name("other")
                .policy_document(POLICY)
                .send()
                .await?;
            let p = c
                .create_policy()
                .policy_name("managed4")
                .policy_document(POLICY)
                .send()
                .await?;
            let arn = p.policy().and_then(|p| p.arn()).unwrap_or_default();
            c.attach_user_policy()
                .user_name(&user)
                .policy_arn(arn)
                .send()
                .await?;
            Ok::<_, aws_sdk_iam::Error>(())
        })
        .expect("decorate user");
    iam.revoke_user(&user, Some(&key.access_key_id), Some("nomadfs"))
        .expect("revoke falls back to the sweep");
    assert_eq!(sdk.user_path(&user), None, "user left behind");
}

#[test]
fn delete_of_missing_user_is_ok() {
    let moto = Moto::start();
    iam(&moto)
        .delete_user("nomadfs-never-made-u1-00000000")
        .expect("missing user counts as deleted");
}

#[test]
fn delete_removes_extra_keys_and_policies() {
    let moto = Moto::start();
    let iam = iam(&moto);
    let sdk = Sdk::new(&moto);
    let user = user_name("extra", 1);
    iam.create_user(&user, "nomadfs", POLICY).expect("create");

    // Things someone else hung on the user: a second key, a second inline policy, a managed one.
    let c = &sdk.client;
    sdk.rt
        .block_on(async {
            c.create_access_key().user_name(&user).send().await?;
            c.put_user_policy()
                .user_name(&user)
                .policy_name("other")
                .policy_document(POLICY)
                .send()
                .await?;
            let p = c
                .create_policy()
                .policy_name("managed")
                .policy_document(POLICY)
                .send()
                .await?;
            let arn = p.policy().and_then(|p| p.arn()).unwrap_or_default();
            c.attach_user_policy()
                .user_name(&user)
                .policy_arn(arn)
                .send()
                .await?;
            Ok::<_, aws_sdk_iam::Error>(())
        })
        .expect("decorate user");
    assert_eq!(sdk.access_key_ids(&user).len(), 2);

    iam.delete_user(&user).expect("delete");
    assert!(!iam.user_exists(&user).expect("exists"));
}

#[test]
fn failed_policy_undoes_the_user() {
    let moto = Moto::start();
    let iam = iam(&moto);
    let user = user_name("badpolicy", 2);
    let err = iam
        .create_user(&user, "nomadfs", "{ this is not a policy")
        .expect_err("moto refuses a malformed policy");
    assert!(!err.maybe_left, "the undo worked, nothing is left");
    let err = err.error;
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(err.message.contains("PutUserPolicy"), "{}", err.message);
    assert!(
        err.message.contains("half-made user removed"),
        "{}",
        err.message
    );
    assert!(!err.message.contains(ROOT_SECRET));
    assert!(!iam.user_exists(&user).expect("exists"), "user left behind");
}

#[test]
fn someone_elses_user_is_not_undone() {
    let moto = Moto::start();
    let iam = iam(&moto);
    let sdk = Sdk::new(&moto);
    let user = user_name("taken", 3);
    sdk.rt
        .block_on(sdk.client.create_user().user_name(&user).send())
        .expect("create other user");
    let err = iam
        .create_user(&user, "nomadfs", POLICY)
        .expect_err("name taken");
    assert!(!err.maybe_left, "a refusal makes nothing of ours");
    let err = err.error;
    assert_eq!(err.kind, ErrorKind::Io);
    assert!(
        err.message.contains("EntityAlreadyExists"),
        "{}",
        err.message
    );
    assert!(
        iam.user_exists(&user).expect("exists"),
        "deleted someone else's user"
    );
}

#[test]
fn unreachable_endpoint_fails_fast_without_the_secret() {
    let iam = AwsIam::new(&creds("http://127.0.0.1:1".into())).expect("client");
    let user = user_name("dead", 4);
    let start = Instant::now();
    let errs = [
        iam.user_exists(&user).map(|_| ()).expect_err("exists"),
        iam.create_user(&user, "nomadfs", POLICY)
            .map(|_| ())
            .map_err(|e| {
                assert!(!e.maybe_left, "a refused connection sent nothing");
                e.error
            })
            .expect_err("create"),
        iam.delete_user(&user).expect_err("delete"),
    ];
    let took = start.elapsed();
    for e in &errs {
        assert_eq!(e.kind, ErrorKind::Io, "{}", e.message);
        assert!(e.message.contains("127.0.0.1:1"), "{}", e.message);
        assert!(!e.message.contains(ROOT_SECRET), "{}", e.message);
    }
    assert!(took < Duration::from_secs(30), "three calls took {took:?}");
    eprintln!(
        "unreachable: 3 calls failed in {took:?}: {}",
        errs[0].message
    );
}

#[test]
fn concurrent_calls_from_plain_and_async_threads() {
    let moto = Moto::start();
    let iam = Arc::new(iam(&moto));
    let threads: Vec<_> = (0..6u32)
        .map(|i| {
            let iam = iam.clone();
            std::thread::spawn(move || {
                let user = user_name("conc", i);
                iam.create_user(&user, "nomadfs", POLICY).expect("create");
                assert!(iam.user_exists(&user).expect("exists"));
                iam.delete_user(&user).expect("delete");
                assert!(!iam.user_exists(&user).expect("exists"));
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }

    // From inside someone else's tokio runtime: must not panic ("runtime within a runtime").
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let user = user_name("inasync", 9);
    rt.block_on(async {
        assert!(!iam.user_exists(&user).expect("exists"));
    });
}
