//! The daemon's switch for storage fault injection (integration tests only).
//!
//! Owns: reading `NOMADFS_STORAGE_FAULTS` and wrapping the store in
//! `nomadfs_core::storage::faulty::FaultyStorage` when it is set, logging that loudly at start
//! and the injected counts at exit. There is deliberately no `mounts.toml` key: a configuration
//! file copied into production cannot turn faults on, and the variable shows in the process's
//! environment and at the top of its log. A malformed plan stops the daemon (exit 1).
//! Must never: wrap the store when the variable is unset or empty.

use nomadfs_core::storage::faulty::{FaultPlan, FaultyStorage};
use nomadfs_core::storage::Storage;
use std::sync::Arc;

pub const VAR: &str = "NOMADFS_STORAGE_FAULTS";

/// The fault injector, kept for its exit report.
pub type Injector = Option<Arc<FaultyStorage>>;

/// The store to use, and the fault injector if one was asked for.
pub fn wrap(storage: Arc<dyn Storage>) -> Result<(Arc<dyn Storage>, Injector), String> {
    let spec = match std::env::var(VAR) {
        Ok(s) if !s.trim().is_empty() => s,
        Ok(_) | Err(std::env::VarError::NotPresent) => return Ok((storage, None)),
        Err(std::env::VarError::NotUnicode(_)) => return Err(format!("{VAR} is not UTF-8")),
    };
    let plan = FaultPlan::parse(&spec).map_err(|e| format!("{VAR}: {}", e.message))?;
    tracing::error!(
        "STORAGE FAULT INJECTION IS ON ({VAR} is set): {} storage calls fail on purpose \
         ({}); for tests only, never in production",
        storage.kind(),
        plan.describe()
    );
    let faulty = Arc::new(FaultyStorage::new(storage, plan));
    Ok((faulty.clone(), Some(faulty)))
}

/// Log what was injected (at exit).
pub fn report(faulty: &Injector) {
    if let Some(f) = faulty {
        tracing::warn!("storage faults: {}", f.summary());
    }
}
