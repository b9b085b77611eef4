//! The backend types that can be mounted, and the factory that builds one for a mount entry.
//!
//! One folder per backend: `generic/`, `transit/`, `sys/`, and the dynamic-secret backends
//! `aws/` and `postgres/`, which share `dynamic/` (the common layout over an `Upstream`).

pub mod aws;
mod dynamic;
pub mod generic;
pub(crate) mod partial;
pub mod postgres;
pub mod sys;
pub mod transit;

/// The IAM client, under its older path (`backends::aws_iam`), which tests and tools use.
pub use aws::iam as aws_iam;
/// The PostgreSQL client, under its older path (`backends::pg_client`).
pub use postgres::client as pg_client;

use crate::backend::Backend;
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::lease::LeaseManager;
use dynamic::Dynamic;
use std::sync::Arc;

/// What the engine lends every backend it builds.
#[derive(Clone)]
pub struct Services {
    pub leases: Arc<LeaseManager>,
    pub limits: Limits,
}

/// Types `sys/mounts` accepts.
pub const KNOWN_TYPES: &[&str] = &["generic", "aws", "postgresql", "transit"];

/// Limits shared by every backend.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_value_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_value_size: 1 << 20,
        }
    }
}

/// Build the backend of type `kind` over its storage view.
pub fn build(kind: &str, view: View, services: &Services) -> Result<Arc<dyn Backend>> {
    match kind {
        "generic" => Ok(Arc::new(generic::Generic::new(view, services.limits))),
        "aws" => Ok(Arc::new(Dynamic::new(
            view.clone(),
            services,
            aws::Aws::new(view, services),
        ))),
        "postgresql" => Ok(Arc::new(Dynamic::new(
            view.clone(),
            services,
            postgres::Postgres::new(view, services),
        ))),
        "transit" => Ok(Arc::new(transit::Transit::new(view, services))),
        other => Err(Error::invalid(format!(
            "unknown backend type {other:?} (known: {})",
            KNOWN_TYPES.join(", ")
        ))),
    }
}

/// A file or folder name users may create: not empty, no '/', not starting with '.', at most
/// 255 bytes, no NUL or control characters.
pub fn validate_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::invalid("names cannot be empty"));
    }
    if name.len() > 255 {
        return Err(Error::new(
            ErrorKind::NameTooLong,
            format!("name of {} bytes: at most 255", name.len()),
        ));
    }
    if name.starts_with('.') {
        return Err(Error::invalid(format!(
            "names starting with '.' are reserved for control files: {name:?}"
        )));
    }
    if name.contains('/') || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!(
            "name has a forbidden character: {name:?}"
        )));
    }
    Ok(())
}
