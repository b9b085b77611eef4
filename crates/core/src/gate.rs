//! The gate every request passes: the policy decision before, the audit record after.
//!
//! Owns: which capability each operation on each path needs, how `stat` mode bits and `ls`
//! listings are narrowed to what the caller may do and see, and when a request must be refused
//! because it cannot be audited. Must never: let a secret-bearing request answer before its
//! audit line is written, or put a value into the audit log other than as an HMAC.

use crate::audit::{Annotation, AuditLog, AuditRecord};
use crate::backend::{DirEntry, Node, NodeKind};
use crate::caller::Caller;
use crate::error::{Error, ErrorKind, Result};
use crate::policy::{CapSet, Capability, Policies};
use std::sync::Arc;

/// Where audit records go.
#[derive(Clone)]
pub enum AuditMode {
    /// No sink configured: secret-bearing requests are refused (EIO).
    Missing,
    /// Explicitly off (`audit = "off"`, or `--dev`): nothing is recorded.
    Off,
    Log(Arc<AuditLog>),
}

/// What a request needs from the policy.
pub(crate) enum Need {
    /// Anyone who can enter may (help, health, listings that are filtered anyway).
    Free,
    /// `cap` on `path` (a folder is addressed as `path/`).
    Cap(String, Capability),
    /// `create` if the path does not exist yet, else `update`.
    Write(String),
    /// Both (rename: delete on the source, create on the target).
    Two(Box<Need>, Box<Need>),
}

pub(crate) fn folder(path: &str) -> String {
    if path.is_empty() {
        String::new()
    } else {
        format!("{path}/")
    }
}

/// Narrow a node's mode bits (and, without `read`, its size) to the caller's capabilities, so
/// `test -r`/`test -w`/`access(2)` tell the truth and `stat` shows nothing `cat` would not.
pub(crate) fn mask_mode(node: &mut Node, caps: CapSet) {
    let mut allowed: u16 = 0;
    match node.kind {
        // An exchange file (transit/encrypt/NAME) is opened read-write; `update` grants both.
        NodeKind::File if node.writes.may_exchange() => {
            if caps.contains(Capability::Update) {
                allowed |= 0o600;
            }
        }
        NodeKind::File => {
            // An existing file: its size is what `read` would show, and writing it replaces
            // it (`update`; `create` is for paths that do not exist yet).
            if caps.contains(Capability::Read) {
                allowed |= 0o400;
            } else {
                node.size = 0;
            }
            if caps.contains(Capability::Update) {
                allowed |= 0o200;
            }
        }
        NodeKind::Dir => {
            allowed |= 0o100;
            if caps.contains(Capability::List) || caps.contains(Capability::Read) {
                allowed |= 0o400;
            }
            if caps.contains(Capability::Create) {
                allowed |= 0o200;
            }
        }
    }
    node.mode &= allowed;
}

/// Keep the entries of folder `dir` the caller may see.
pub(crate) fn filter_entries(
    policies: &Policies,
    caller: &Caller,
    dir: &str,
    entries: Vec<DirEntry>,
) -> Vec<DirEntry> {
    entries
        .into_iter()
        .filter(|e| {
            if e.name.starts_with('.') {
                return true;
            }
            let child = if dir.is_empty() {
                e.name.clone()
            } else {
                format!("{dir}/{}", e.name)
            };
            policies.may_see(caller, &child, e.kind == NodeKind::Dir)
        })
        .collect()
}

/// Decide `need` for `caller`. `exists` answers whether a path exists (for `Need::Write`).
pub(crate) fn check(
    policies: &Policies,
    caller: &Caller,
    need: &Need,
    exists: &dyn Fn(&str) -> bool,
) -> Result<()> {
    if caller.uid == u32::MAX {
        return Err(Error::denied("requests without a valid uid are refused"));
    }
    if policies.is_admin(caller) {
        return Ok(());
    }
    let missing = match need {
        Need::Free => None,
        Need::Cap(path, cap) => (!policies.allowed(caller, path, *cap)).then_some((path, *cap)),
        Need::Write(path) => {
            let cap = if exists(path) {
                Capability::Update
            } else {
                Capability::Create
            };
            (!policies.allowed(caller, path, cap)).then_some((path, cap))
        }
        Need::Two(a, b) => {
            return check(policies, caller, a, exists).and(check(policies, caller, b, exists))
        }
    };
    match missing {
        None => Ok(()),
        Some((path, cap)) => Err(Error::denied(format!(
            "uid {} has no `{cap}` on {} (policy)",
            caller.uid,
            if path.is_empty() { "/" } else { path }
        ))),
    }
}

/// One audit record; values are HMACed with `hmac` (the barrier's audit key).
pub(crate) struct Record<'a> {
    pub caller: &'a Caller,
    pub op: &'static str,
    pub path: &'a str,
    pub result: std::result::Result<(), &'a Error>,
    pub lease_id: Option<&'a str>,
    /// Already HMACed values (`hmac-sha256:HEX`).
    pub values: Vec<(&'static str, String)>,
    /// With no audit log configured (`AuditMode::Missing`), refuse (EIO) rather than go on
    /// unrecorded.
    pub secret_bearing: bool,
    /// The line announces a change about to be made (`"result":"intent"`).
    pub intent: bool,
    /// Wait until the line is durable (per the fsync policy) before answering. Only the
    /// outcome line of a change whose intent line is already durable may skip this.
    pub durable: bool,
    /// An aggregate of this many repeated refusals.
    pub count: Option<u64>,
}

/// Write one record. With an audit log configured, any failure refuses the request (EIO):
/// nothing is answered, and nothing changes, unless its line was written.
pub(crate) fn audit(mode: &AuditMode, rec: Record<'_>) -> Result<()> {
    let log = match mode {
        AuditMode::Off => return Ok(()),
        AuditMode::Missing => {
            return if rec.secret_bearing {
                Err(Error::io(
                    "no audit log is configured: set [audit] path in mounts.toml (or audit = \"off\")",
                ))
            } else {
                Ok(())
            }
        }
        AuditMode::Log(l) => l,
    };
    let reason = rec.result.err().map(|e| e.message.as_str());
    let errno = rec.result.err().map(|e| e.kind.errno_name());
    // The audit module calls `hmac` per value; hand it the precomputed strings by position.
    let raw: Vec<(&str, &[u8])> = rec.values.iter().map(|(k, h)| (*k, h.as_bytes())).collect();
    let pass_through = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    let r = AuditRecord {
        caller: rec.caller,
        op: rec.op,
        path: rec.path,
        ok: rec.result.is_ok(),
        errno,
        lease_id: rec.lease_id,
        reason,
        values: &raw,
    };
    let ann = Annotation {
        intent: rec.intent,
        count: rec.count,
    };
    log.record_as(&r, ann, rec.durable, &pass_through)
        .map_err(|e| {
            tracing::error!("audit log write failed: {}", e.message);
            Error::new(
                ErrorKind::Io,
                format!("audit log unavailable, request refused: {}", e.message),
            )
        })
}

/// Whether the audit log is failing now (every request must then be refused, also those that
/// are not recorded when it works).
pub(crate) fn failing(mode: &AuditMode) -> bool {
    matches!(mode, AuditMode::Log(l) if l.is_failing())
}

/// Write aggregated refusals (from `refusals`) to the log. A failure is logged; the next
/// request finds the log failing and is refused.
pub(crate) fn write_aggregates(mode: &AuditMode, aggregates: Vec<crate::refusals::Aggregate>) {
    let AuditMode::Log(log) = mode else {
        return;
    };
    for a in aggregates {
        let r = AuditRecord {
            caller: &a.caller,
            op: a.op,
            path: &a.pattern,
            ok: false,
            errno: Some(a.errno),
            lease_id: None,
            reason: Some(&a.reason),
            values: &[],
        };
        let ann = Annotation {
            intent: false,
            count: Some(a.count),
        };
        if let Err(e) = log.record_as(&r, ann, false, &|b| String::from_utf8_lossy(b).into_owned())
        {
            tracing::error!("aggregated refusals not written: {}", e.message);
        }
    }
}
