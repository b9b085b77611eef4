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

mod calls;
#[cfg(test)]
mod tests;
