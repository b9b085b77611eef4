//! The upstream IAM client the `aws` backend uses to mint and revoke IAM users.
//!
//! Owns: talking to AWS IAM (or a mock such as moto at `endpoint`) with the mount's root
//! credentials: creating a user with an inline policy and one access key, deleting a user and
//! everything hanging off it, and asking whether a user exists. It is a synchronous facade over
//! the async AWS SDK: each `AwsIam` owns a small tokio runtime, and every call hands its work to
//! that runtime and waits on a plain channel, so FUSE worker threads (or any thread, even one
//! inside another tokio runtime) may call it, many at once. Every call is bounded by connect,
//! attempt and operation timeouts and at most 3 attempts, so an unreachable endpoint fails in
//! seconds with `ErrorKind::Io`. Also owns `user_name`, the IAM user names nomadfs makes.
//!
//! Must never: log the root secret key or an issued secret key, or put either in an error
//! message (errors name the operation, the user, the endpoint and the SDK's reason); leave a
//! half-made user behind when `create_user` fails part way (it undoes what it made, best effort,
//! and says in the error whether the undo worked, so the write-ahead log can retry it).

use crate::blocking::OwnRuntime;
use crate::error::{Error, Result};
use crate::secret::SecretBytes;
use aws_sdk_iam::config::retry::RetryConfig;
use aws_sdk_iam::config::timeout::TimeoutConfig;
use aws_sdk_iam::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_iam::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_iam::Client;
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

/// Region used when `RootCredentials::region` is empty.
pub const DEFAULT_REGION: &str = "us-east-1";
/// IAM path every nomadfs-made user lives under.
pub const USER_PATH: &str = "/nomadfs/";
/// IAM's limit on user names.
pub const USER_NAME_MAX: usize = 64;

/// Time to open a TCP (and TLS) connection to the endpoint.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Time for one attempt of one API call.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);
/// Time for one API call, retries included.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(10);
/// Attempts per API call (the first plus retries).
const MAX_ATTEMPTS: u32 = 3;

/// The credentials nomadfs uses to manage IAM users (written to the mount's `config/root`).
#[derive(Debug)]
pub struct RootCredentials {
    pub access_key: String,
    pub secret_key: SecretBytes,
    /// Signing region; empty means `us-east-1` (IAM is global).
    pub region: String,
    /// Endpoint URL such as `http://127.0.0.1:5000` (moto); `None` is AWS's own endpoint.
    pub endpoint: Option<String>,
}

impl RootCredentials {
    /// Credentials for AWS's own endpoint in `us-east-1`.
    pub fn new(access_key: impl Into<String>, secret_key: SecretBytes) -> Self {
        Self {
            access_key: access_key.into(),
            secret_key,
            region: DEFAULT_REGION.to_string(),
            endpoint: None,
        }
    }
}

/// A user `create_user` made, with its one access key.
#[derive(Debug)]
pub struct IssuedKey {
    pub user_name: String,
    pub access_key_id: String,
    pub secret_access_key: SecretBytes,
}

/// Why `create_user` failed, and whether anything of it may be left in IAM.
#[derive(Debug)]
pub struct CreateError {
    /// `ErrorKind::Io` with the reason.
    pub error: Error,
    /// false: IAM holds nothing of this attempt (it refused, the connection was refused, or
    /// the half-made user was removed). true: the user may exist, or may still come to exist
    /// (a timed-out request can be processed later), so the caller must delete it later.
    pub maybe_left: bool,
}

/// What the `aws` backend needs from IAM. A trait so the backend can be tested without moto.
pub trait IamApi: Send + Sync {
    /// Create user `user_name` (with path "/nomadfs/"), attach inline policy `policy_name` =
    /// `policy_json`, create one access key. If a step after CreateUser fails, undo what was
    /// made (best effort, logged). CreateUser itself is tried once: a retry after a timeout
    /// could meet our own half-processed user and be mistaken for someone else's.
    fn create_user(
        &self,
        user_name: &str,
        policy_name: &str,
        policy_json: &str,
    ) -> std::result::Result<IssuedKey, CreateError>;
    /// Delete every access key, every inline policy (and detach managed ones), then the user.
    /// A user that does not exist (NoSuchEntity) counts as done (Ok). Other failures:
    /// `ErrorKind::Io` with the reason.
    fn delete_user(&self, user_name: &str) -> Result<()>;
    /// Revoke a user whose parts are known (from its lease): delete the access key and the
    /// inline policy (at once), then the user — 3 calls instead of a listing sweep. Each
    /// NoSuchEntity counts as done (idempotent, so safe to repeat after a crash); if IAM says
    /// the user still has something attached (DeleteConflict: a key or policy nomadfs does not
    /// know of), falls back to `delete_user`'s full sweep.
    fn revoke_user(
        &self,
        user_name: &str,
        access_key_id: Option<&str>,
        policy_name: Option<&str>,
    ) -> Result<()>;
    /// Whether the user exists (for tests and the write-ahead-log rollback).
    fn user_exists(&self, user_name: &str) -> Result<bool>;
}

/// An IAM user name for `role` and `uid`: `nomadfs-<role>-u<uid>-<8 random hex>`, at most 64
/// characters (the role part is cut to fit) and only IAM's characters `[A-Za-z0-9_+=,.@-]`
/// (anything else in `role` becomes '-').
pub fn user_name(role: &str, uid: u32) -> String {
    user_name_with_suffix(role, uid, &format!("{:08x}", rand::random::<u32>()))
}

fn user_name_with_suffix(role: &str, uid: u32, suffix: &str) -> String {
    const PREFIX: &str = "nomadfs-";
    let tail = format!("-u{uid}-{suffix}");
    let budget = USER_NAME_MAX.saturating_sub(PREFIX.len() + tail.len());
    // After the mapping every char is ASCII, so `budget` chars are `budget` bytes.
    let role: String = role
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_+=,.@-".contains(c) {
                c
            } else {
                '-'
            }
        })
        .take(budget)
        .collect();
    format!("{PREFIX}{role}{tail}")
}

/// The IAM client over the AWS SDK. Cheap to share behind an `Arc`; calls may run concurrently.
pub struct AwsIam {
    /// First, so it shuts down before the client is dropped.
    runtime: OwnRuntime,
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// For error messages: the endpoint URL, or a description of AWS's default one.
    endpoint: String,
}

impl std::fmt::Debug for AwsIam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsIam")
            .field("endpoint", &self.inner.endpoint)
            .finish_non_exhaustive()
    }
}

impl AwsIam {
    /// A client for `creds`. Checks the input and starts the client's runtime; it does not
    /// contact IAM (the first call does).
    pub fn new(creds: &RootCredentials) -> Result<AwsIam> {
        if creds.access_key.trim().is_empty() {
            return Err(Error::invalid("IAM root credentials: empty access key"));
        }
        let secret = creds
            .secret_key
            .text()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| {
                Error::invalid("IAM root credentials: the secret key is empty or not UTF-8")
            })?;
        let region = match creds.region.trim() {
            "" => DEFAULT_REGION.to_string(),
            r => r.to_string(),
        };
        let endpoint = match creds.endpoint.as_deref().map(str::trim) {
            None | Some("") => None,
            Some(e) if e.starts_with("http://") || e.starts_with("https://") => Some(e.to_string()),
            Some(e) => {
                return Err(Error::invalid(format!(
                    "IAM endpoint must be an http:// or https:// URL: {e:?}"
                )))
            }
        };

        let runtime = OwnRuntime::new("nomadfs-iam", "IAM client")?;

        // One TLS stack (rustls with ring); plain http:// endpoints work through it too.
        let http_client = aws_smithy_http_client::Builder::new()
            .tls_provider(Provider::Rustls(CryptoMode::Ring))
            .build_https();
        let mut config = aws_sdk_iam::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new(region.clone()))
            .credentials_provider(Credentials::new(
                creds.access_key.trim(),
                secret,
                None,
                None,
                "nomadfs-root",
            ))
            .http_client(http_client)
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(CONNECT_TIMEOUT)
                    .operation_attempt_timeout(ATTEMPT_TIMEOUT)
                    .operation_timeout(OPERATION_TIMEOUT)
                    .build(),
            )
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if let Some(url) = &endpoint {
            config = config.endpoint_url(url);
        }
        let client = Client::from_conf(config.build());
        let endpoint =
            endpoint.unwrap_or_else(|| format!("the AWS IAM endpoint (region {region})"));
        Ok(AwsIam {
            runtime,
            inner: Arc::new(Inner { client, endpoint }),
        })
    }

    /// Run `fut` on the client's runtime and wait for it from this (any) thread.
    fn run<T, F>(&self, fut: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        self.runtime.run(fut)
    }
}

impl AwsIam {
    /// Names of every IAM user nomadfs made (path `/nomadfs/`), for audits of orphans.
    pub fn list_users(&self) -> Result<Vec<String>> {
        let inner = self.inner.clone();
        self.run(async move {
            let mut out = Vec::new();
            let mut marker: Option<String> = None;
            loop {
                let page = inner
                    .client
                    .list_users()
                    .path_prefix(USER_PATH)
                    .set_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| inner.upstream("ListUsers", "*", &e))?;
                out.extend(page.users().iter().map(|u| u.user_name().to_string()));
                match (page.is_truncated(), page.marker()) {
                    (true, Some(m)) => marker = Some(m.to_string()),
                    _ => break,
                }
            }
            Ok(out)
        })
    }
}

impl IamApi for AwsIam {
    fn create_user(
        &self,
        user_name: &str,
        policy_name: &str,
        policy_json: &str,
    ) -> std::result::Result<IssuedKey, CreateError> {
        let inner = self.inner.clone();
        let (user, policy_name, policy_json) = (
            user_name.to_string(),
            policy_name.to_string(),
            policy_json.to_string(),
        );
        // `run` fails only if the runtime is gone, before anything was sent.
        let res =
            self.run(async move { Ok(inner.create_user(&user, &policy_name, &policy_json).await) });
        match res {
            Ok(r) => r,
            Err(error) => Err(CreateError {
                error,
                maybe_left: false,
            }),
        }
    }

    fn delete_user(&self, user_name: &str) -> Result<()> {
        let inner = self.inner.clone();
        let user = user_name.to_string();
        self.run(async move { inner.delete_user(&user).await })
    }

    fn revoke_user(
        &self,
        user_name: &str,
        access_key_id: Option<&str>,
        policy_name: Option<&str>,
    ) -> Result<()> {
        let inner = self.inner.clone();
        let user = user_name.to_string();
        let key = access_key_id.map(str::to_string);
        let policy = policy_name.map(str::to_string);
        self.run(async move {
            inner
                .revoke_user(&user, key.as_deref(), policy.as_deref())
                .await
        })
    }

    fn user_exists(&self, user_name: &str) -> Result<bool> {
        let inner = self.inner.clone();
        let user = user_name.to_string();
        self.run(async move { inner.user_exists(&user).await })
    }
}

fn is_no_such_entity<E: ProvideErrorMetadata, R>(err: &SdkError<E, R>) -> bool {
    err.code() == Some("NoSuchEntity")
}

/// Whether a failed call certainly made nothing upstream: IAM answered with a refusal (4xx),
/// the request was never built, or the TCP connection was refused (nothing was sent).
fn certainly_not_applied<E>(err: &SdkError<E, aws_sdk_iam::config::http::HttpResponse>) -> bool
where
    E: std::error::Error + 'static,
{
    match err {
        SdkError::ConstructionFailure(_) => true,
        SdkError::ServiceError(se) => se.raw().status().is_client_error(),
        SdkError::DispatchFailure(_) => {
            let mut src: Option<&(dyn std::error::Error + 'static)> = Some(err);
            while let Some(e) = src {
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    if io.kind() == std::io::ErrorKind::ConnectionRefused {
                        return true;
                    }
                }
                src = e.source();
            }
            false
        }
        _ => false,
    }
}

impl Inner {
    /// `ErrorKind::Io` naming the operation, the user, the endpoint and the SDK's reason.
    fn upstream<E, R>(&self, op: &str, user: &str, err: &SdkError<E, R>) -> Error
    where
        E: std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        Error::io(format!(
            "IAM {op} for user {user:?} at {}: {}",
            self.endpoint,
            DisplayErrorContext(err)
        ))
    }

    async fn create_user(
        &self,
        user: &str,
        policy_name: &str,
        policy: &str,
    ) -> std::result::Result<IssuedKey, CreateError> {
        let created = self
            .client
            .create_user()
            .user_name(user)
            .path(USER_PATH)
            .customize()
            .config_override(
                aws_sdk_iam::config::Builder::new().retry_config(RetryConfig::disabled()),
            )
            .send()
            .await;
        if let Err(e) = created {
            let error = self.upstream("CreateUser", user, &e);
            // A refusal from IAM (e.g. EntityAlreadyExists: someone else's user) or a refused
            // connection made nothing. An unreadable answer means IAM did answer: undo now, and
            // only a failed undo leaves anything. After a timeout or a 5xx the request may
            // still be applied later, so an undo now proves nothing: the caller deletes later.
            if certainly_not_applied(&e) {
                return Err(CreateError {
                    error,
                    maybe_left: false,
                });
            }
            if let SdkError::ResponseError(_) = e {
                return Err(self.undo(user, error).await);
            }
            return Err(CreateError {
                error,
                maybe_left: true,
            });
        }

        if let Err(e) = self
            .client
            .put_user_policy()
            .user_name(user)
            .policy_name(policy_name)
            .policy_document(policy)
            .send()
            .await
        {
            let err = self.upstream("PutUserPolicy", user, &e);
            return Err(self.undo(user, err).await);
        }

        let key = match self.client.create_access_key().user_name(user).send().await {
            Ok(out) => out.access_key,
            Err(e) => {
                let err = self.upstream("CreateAccessKey", user, &e);
                return Err(self.undo(user, err).await);
            }
        };
        let Some(key) = key else {
            let err = Error::io(format!(
                "IAM CreateAccessKey for user {user:?} at {}: the answer held no access key",
                self.endpoint
            ));
            return Err(self.undo(user, err).await);
        };
        tracing::info!(
            user,
            access_key_id = key.access_key_id.as_str(),
            "created IAM user"
        );
        Ok(IssuedKey {
            user_name: user.to_string(),
            access_key_id: key.access_key_id,
            secret_access_key: SecretBytes::from(key.secret_access_key),
        })
    }

    /// Best-effort removal of a half-made user after `err`; returns `err` saying how it went.
    async fn undo(&self, user: &str, err: Error) -> CreateError {
        match self.delete_user(user).await {
            Ok(()) => {
                tracing::warn!(user, "create failed, undid the half-made IAM user: {err}");
                CreateError {
                    error: err.context("(half-made user removed)"),
                    maybe_left: false,
                }
            }
            Err(undo) => {
                tracing::error!(
                    user,
                    "create failed and the half-made IAM user could not be removed: {err}; \
                     undo: {undo}"
                );
                let mut err = err;
                err.message = format!(
                    "{}; removing the half-made user failed too: {}",
                    err.message, undo.message
                );
                CreateError {
                    error: err,
                    maybe_left: true,
                }
            }
        }
    }

    async fn revoke_user(
        &self,
        user: &str,
        access_key_id: Option<&str>,
        policy_name: Option<&str>,
    ) -> Result<()> {
        let key = async {
            let Some(id) = access_key_id else {
                return Ok(());
            };
            match self
                .client
                .delete_access_key()
                .user_name(user)
                .access_key_id(id)
                .send()
                .await
            {
                Err(e) if !is_no_such_entity(&e) => Err(self.upstream("DeleteAccessKey", user, &e)),
                _ => Ok(()),
            }
        };
        let policy = async {
            let Some(name) = policy_name else {
                return Ok(());
            };
            match self
                .client
                .delete_user_policy()
                .user_name(user)
                .policy_name(name)
                .send()
                .await
            {
                Err(e) if !is_no_such_entity(&e) => {
                    Err(self.upstream("DeleteUserPolicy", user, &e))
                }
                _ => Ok(()),
            }
        };
        let (k, p) = tokio::join!(key, policy);
        k?;
        p?;
        match self.client.delete_user().user_name(user).send().await {
            Ok(_) => {
                tracing::info!(user, "deleted IAM user");
                Ok(())
            }
            Err(e) if is_no_such_entity(&e) => Ok(()),
            Err(e) if e.code() == Some("DeleteConflict") => {
                tracing::info!(user, "IAM user has parts nomadfs did not record; sweeping");
                self.delete_user(user).await
            }
            Err(e) => Err(self.upstream("DeleteUser", user, &e)),
        }
    }

    async fn delete_user(&self, user: &str) -> Result<()> {
        // Access keys.
        let keys = self
            .client
            .list_access_keys()
            .user_name(user)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await;
        let keys = match keys {
            Ok(keys) => keys,
            Err(e) if is_no_such_entity(&e) => return Ok(()),
            Err(e) => return Err(self.upstream("ListAccessKeys", user, &e)),
        };
        for key in keys {
            let Some(id) = key.access_key_id() else {
                continue;
            };
            match self
                .client
                .delete_access_key()
                .user_name(user)
                .access_key_id(id)
                .send()
                .await
            {
                Err(e) if !is_no_such_entity(&e) => {
                    return Err(self.upstream("DeleteAccessKey", user, &e))
                }
                _ => {}
            }
        }

        // Inline policies.
        let policies = self
            .client
            .list_user_policies()
            .user_name(user)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await;
        let policies = match policies {
            Ok(p) => p,
            Err(e) if is_no_such_entity(&e) => return Ok(()),
            Err(e) => return Err(self.upstream("ListUserPolicies", user, &e)),
        };
        for name in policies {
            match self
                .client
                .delete_user_policy()
                .user_name(user)
                .policy_name(&name)
                .send()
                .await
            {
                Err(e) if !is_no_such_entity(&e) => {
                    return Err(self.upstream("DeleteUserPolicy", user, &e))
                }
                _ => {}
            }
        }

        // Managed policies.
        let attached = self
            .client
            .list_attached_user_policies()
            .user_name(user)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await;
        let attached = match attached {
            Ok(a) => a,
            Err(e) if is_no_such_entity(&e) => return Ok(()),
            Err(e) => return Err(self.upstream("ListAttachedUserPolicies", user, &e)),
        };
        for policy in attached {
            let Some(arn) = policy.policy_arn() else {
                continue;
            };
            match self
                .client
                .detach_user_policy()
                .user_name(user)
                .policy_arn(arn)
                .send()
                .await
            {
                Err(e) if !is_no_such_entity(&e) => {
                    return Err(self.upstream("DetachUserPolicy", user, &e))
                }
                _ => {}
            }
        }

        match self.client.delete_user().user_name(user).send().await {
            Ok(_) => {
                tracing::info!(user, "deleted IAM user");
                Ok(())
            }
            Err(e) if is_no_such_entity(&e) => Ok(()),
            Err(e) => Err(self.upstream("DeleteUser", user, &e)),
        }
    }

    async fn user_exists(&self, user: &str) -> Result<bool> {
        match self.client.get_user().user_name(user).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_no_such_entity(&e) => Ok(false),
            Err(e) => Err(self.upstream("GetUser", user, &e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    fn allowed(c: char) -> bool {
        c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
    }

    #[test]
    fn user_name_shape() {
        let n = user_name("readonly", 1000);
        assert!(n.starts_with("nomadfs-readonly-u1000-"), "{n}");
        let suffix = &n["nomadfs-readonly-u1000-".len()..];
        assert_eq!(suffix.len(), 8, "{n}");
        assert!(suffix.chars().all(|c| c.is_ascii_hexdigit()), "{n}");
        assert!(n.chars().all(allowed), "{n}");
    }

    #[test]
    fn user_names_differ() {
        assert_ne!(user_name("r", 1), user_name("r", 1));
    }

    #[test]
    fn user_name_replaces_forbidden_chars() {
        let n = user_name_with_suffix("a b/c:dé_+=,.@-x", 7, "deadbeef");
        assert_eq!(n, "nomadfs-a-b-c-d-_+=,.@-x-u7-deadbeef");
        assert!(n.chars().all(allowed));
    }

    #[test]
    fn user_name_truncates_role_keeps_uid_and_suffix() {
        let role = "r".repeat(200);
        let n = user_name_with_suffix(&role, u32::MAX, "01234567");
        assert_eq!(n.len(), USER_NAME_MAX, "{n}");
        assert!(n.ends_with(&format!("-u{}-01234567", u32::MAX)), "{n}");
        assert!(n.starts_with("nomadfs-rrr"), "{n}");
        // Multi-byte role characters count as one '-' each, never split a char.
        let n = user_name(&"é".repeat(100), 0);
        assert!(n.len() <= USER_NAME_MAX && n.chars().all(allowed), "{n}");
        // Short names are not padded.
        assert_eq!(
            user_name_with_suffix("", 5, "abcdefgh"),
            "nomadfs--u5-abcdefgh"
        );
    }

    #[test]
    fn new_rejects_bad_input_without_echoing_the_secret() {
        let mut creds = RootCredentials::new("AKIDEXAMPLE", SecretBytes::from_slice(b"s3cr3t"));
        creds.endpoint = Some("ftp://example".into());
        let e = AwsIam::new(&creds).err().map(|e| (e.kind, e.message));
        let (kind, msg) = e.unwrap_or((ErrorKind::Io, String::new()));
        assert_eq!(kind, ErrorKind::InvalidInput);
        assert!(!msg.contains("s3cr3t"));

        let creds = RootCredentials::new("AKIDEXAMPLE", SecretBytes::from_slice(b""));
        assert_eq!(
            AwsIam::new(&creds).err().map(|e| e.kind),
            Some(ErrorKind::InvalidInput)
        );
        let creds = RootCredentials::new(" ", SecretBytes::from_slice(b"x"));
        assert_eq!(
            AwsIam::new(&creds).err().map(|e| e.kind),
            Some(ErrorKind::InvalidInput)
        );
    }

    #[test]
    fn debug_does_not_show_secrets() {
        let creds = RootCredentials::new("AKIDEXAMPLE", SecretBytes::from_slice(b"s3cr3t"));
        assert!(!format!("{creds:?}").contains("s3cr3t"));
        let iam = AwsIam::new(&creds);
        assert!(!format!("{iam:?}").contains("s3cr3t"));
    }
}
