//! The IAM calls themselves, over the AWS SDK: create a user with its inline policy and access
//! key (undoing what was made if a step fails), revoke or delete a user and everything hanging
//! off it, ask whether one exists; and the classification of SDK errors (certainly applied or
//! not, `NoSuchEntity`).
//!
//! Must never: put a secret key in an error message.

use super::*;

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
    pub(super) fn upstream<E, R>(&self, op: &str, user: &str, err: &SdkError<E, R>) -> Error
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

    pub(super) async fn create_user(
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
    pub(super) async fn undo(&self, user: &str, err: Error) -> CreateError {
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

    pub(super) async fn revoke_user(
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

    pub(super) async fn delete_user(&self, user: &str) -> Result<()> {
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

    pub(super) async fn user_exists(&self, user: &str) -> Result<bool> {
        match self.client.get_user().user_name(user).send().await {
            Ok(_) => Ok(true),
            Err(e) if is_no_such_entity(&e) => Ok(false),
            Err(e) => Err(self.upstream("GetUser", user, &e)),
        }
    }
}
