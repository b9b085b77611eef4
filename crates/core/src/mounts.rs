//! The mount table: which backend type serves which top-level path, and where its data lives.
//!
//! Owns: `MountEntry` (path, type, description, uuid), the table's persistence in the barrier at
//! `core/mounts`, and the rules for mount paths (one segment, not `sys`, no overlap). Each mount's
//! data lives in the view `logical/<uuid>/`, so a remount (new path, same uuid) keeps its data and
//! two mounts of one type never share data. Changes are saved with a compare-and-swap on the
//! stored table, so daemons sharing one store never lose each other's mounts. Must never: delete
//! a mount's data before its leases are revoked.

use crate::backends::{self, validate_name, Services};
use crate::barrier::{Barrier, Version, View};
use crate::error::{Error, ErrorKind, Result};
use crate::Backend;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::Arc;

pub const TABLE_PATH: &str = "core/mounts";
/// Paths that can never be mounted over.
pub const RESERVED: &[&str] = &[crate::backends::sys::MOUNT];

/// One row of the mount table, as persisted.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MountEntry {
    /// Without trailing slash ("secret").
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
    pub uuid: String,
}

/// A mount path as users write it: "secret/" or "secret" → "secret".
pub fn normalize_path(path: &str) -> Result<String> {
    let p = path.trim().trim_end_matches('/');
    if p.contains('/') {
        return Err(Error::invalid(format!(
            "mount path {path:?} must be a single folder name"
        )));
    }
    validate_name(p).map_err(|e| e.context("mount path"))?;
    if RESERVED.contains(&p) {
        return Err(Error::new(
            ErrorKind::AlreadyExists,
            format!("mount path {p:?} is reserved"),
        ));
    }
    Ok(p.to_string())
}

/// A live mount: its entry and its backend.
pub struct Mounted {
    pub entry: MountEntry,
    pub backend: Arc<dyn Backend>,
}

/// The in-memory mount table, rebuilt on every change (readers hold an `Arc` snapshot).
#[derive(Default)]
pub struct MountTable {
    pub mounts: BTreeMap<String, Arc<Mounted>>,
}

pub(crate) fn view_for(barrier: &Arc<Barrier>, uuid: &str) -> View {
    View::new(barrier.clone(), format!("logical/{uuid}/"))
}

impl MountTable {
    pub fn build(
        barrier: &Arc<Barrier>,
        entries: Vec<MountEntry>,
        services: &Services,
    ) -> Result<Self> {
        let mut mounts = BTreeMap::new();
        for entry in entries {
            let backend = backends::build(&entry.kind, view_for(barrier, &entry.uuid), services)?;
            mounts.insert(entry.path.clone(), Arc::new(Mounted { entry, backend }));
        }
        Ok(Self { mounts })
    }

    /// Like `build`, but keeps the live backend of every entry `old` already serves unchanged
    /// (a refresh after another daemon changed the table must not reset the others).
    pub fn rebuild(
        old: &MountTable,
        barrier: &Arc<Barrier>,
        entries: Vec<MountEntry>,
        services: &Services,
    ) -> Result<Self> {
        let mut mounts = BTreeMap::new();
        for entry in entries {
            let mounted = match old.mounts.get(&entry.path) {
                Some(m) if m.entry == entry => m.clone(),
                _ => {
                    let backend =
                        backends::build(&entry.kind, view_for(barrier, &entry.uuid), services)?;
                    Arc::new(Mounted { entry, backend })
                }
            };
            mounts.insert(mounted.entry.path.clone(), mounted);
        }
        Ok(Self { mounts })
    }

    pub fn entries(&self) -> Vec<MountEntry> {
        self.mounts.values().map(|m| m.entry.clone()).collect()
    }
}

pub(crate) fn load(barrier: &Barrier) -> Result<Option<Vec<MountEntry>>> {
    match barrier.get(TABLE_PATH)? {
        None => Ok(None),
        Some(raw) => serde_json::from_slice(raw.expose())
            .map(Some)
            .map_err(|e| Error::new(ErrorKind::Integrity, format!("mount table: {e}"))),
    }
}

pub(crate) fn save(barrier: &Barrier, entries: &[MountEntry]) -> Result<()> {
    let raw = serde_json::to_vec(entries).map_err(|e| Error::io(format!("mount table: {e}")))?;
    barrier.put(TABLE_PATH, &raw)
}

/// The stored table with its version (for `save_if`); `None`: no table yet.
pub(crate) fn load_versioned(
    barrier: &Barrier,
) -> Result<(Option<Vec<MountEntry>>, Option<Version>)> {
    match barrier.get_versioned(TABLE_PATH)? {
        None => Ok((None, None)),
        Some((raw, version)) => serde_json::from_slice(raw.expose())
            .map(|e| (Some(e), Some(version)))
            .map_err(|e| Error::new(ErrorKind::Integrity, format!("mount table: {e}"))),
    }
}

/// Save the table only if it is still at `version` (another daemon sharing the store may have
/// changed it): `Busy` otherwise, and nothing written.
pub(crate) fn save_if(
    barrier: &Barrier,
    version: Option<&Version>,
    entries: &[MountEntry],
) -> Result<()> {
    let raw = serde_json::to_vec(entries).map_err(|e| Error::io(format!("mount table: {e}")))?;
    if barrier.compare_and_swap(TABLE_PATH, version, Some(&raw))? {
        Ok(())
    } else {
        Err(Error::new(
            ErrorKind::Busy,
            "the mount table was changed by another daemon meanwhile; try again",
        ))
    }
}

pub(crate) fn new_entry(path: &str, kind: &str, description: &str) -> Result<MountEntry> {
    if !backends::KNOWN_TYPES.contains(&kind) {
        return Err(Error::invalid(format!(
            "unknown backend type {kind:?} (known: {})",
            backends::KNOWN_TYPES.join(", ")
        )));
    }
    Ok(MountEntry {
        path: normalize_path(path)?,
        kind: kind.to_string(),
        description: description.to_string(),
        uuid: uuid::Uuid::new_v4().to_string(),
    })
}
