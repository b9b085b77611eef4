//! The embedded default: one redb database file in the storage directory.
//!
//! redb gives ACID transactions with checksummed two-phase commit, so an acknowledged write
//! survives `kill -9` and power loss (commit uses `Durability::Immediate`, i.e. fsync) and a
//! torn write is never visible. The directory is created with mode 0700 and the database file
//! with 0600. Must never: hold plaintext (the barrier above it encrypts keys and values).

use super::{storage_error, Storage, WriteOp};
use crate::error::{Error, ErrorKind, Result};
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};

const TABLE: TableDefinition<&str, &[u8]> = TableDefinition::new("kv");
/// The database's page cache; kept small so the daemon's memory stays flat.
const CACHE_BYTES: usize = 8 * 1024 * 1024;

pub struct FileStorage {
    db: Database,
    path: PathBuf,
}

impl FileStorage {
    /// Open (or create) the store in directory `dir`.
    pub fn open(dir: &Path) -> Result<Self> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|e| storage_error(&format!("create {}", dir.display()), e))?;
        }
        let meta = std::fs::metadata(dir)
            .map_err(|e| storage_error(&format!("stat {}", dir.display()), e))?;
        if !meta.is_dir() {
            return Err(Error::invalid(format!(
                "storage path {} is not a directory",
                dir.display()
            )));
        }
        if meta.permissions().mode() & 0o077 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                .map_err(|e| storage_error(&format!("chmod {}", dir.display()), e))?;
        }
        let path = dir.join("nomadfs.redb");
        let db = Database::builder()
            .set_cache_size(CACHE_BYTES)
            .create(&path)
            .map_err(|e| match e {
                redb::DatabaseError::DatabaseAlreadyOpen => Error::new(
                    ErrorKind::Busy,
                    format!("{} is in use by another process", path.display()),
                ),
                e => storage_error(&format!("open {}", path.display()), e),
            })?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| storage_error("chmod database", e))?;
        // Create the table only on a new store: opening must not write (a refused passphrase
        // leaves the store byte-for-byte unchanged).
        let exists = {
            let tx = db.begin_read().map_err(|e| storage_error("read", e))?;
            match tx.open_table(TABLE) {
                Ok(_) => true,
                Err(redb::TableError::TableDoesNotExist(_)) => false,
                Err(e) => return Err(storage_error("open table", e)),
            }
        };
        if !exists {
            let tx = db.begin_write().map_err(|e| storage_error("begin", e))?;
            tx.open_table(TABLE)
                .map_err(|e| storage_error("open table", e))?;
            tx.commit().map_err(|e| storage_error("commit", e))?;
        }
        Ok(Self { db, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Storage for FileStorage {
    fn kind(&self) -> &'static str {
        "file"
    }
    fn get(&self, key: &str) -> Result<Option<Vec<u8>>> {
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let v = table.get(key).map_err(|e| storage_error("get", e))?;
        Ok(v.map(|g| g.value().to_vec()))
    }
    fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let mut out = Vec::new();
        for item in table
            .range(prefix..)
            .map_err(|e| storage_error("list", e))?
        {
            let (k, _) = item.map_err(|e| storage_error("list", e))?;
            let k = k.value();
            if !k.starts_with(prefix) {
                break;
            }
            out.push(k.to_string());
        }
        Ok(out)
    }
    fn has_prefix(&self, prefix: &str) -> Result<bool> {
        let tx = self.db.begin_read().map_err(|e| storage_error("read", e))?;
        let table = tx.open_table(TABLE).map_err(|e| storage_error("read", e))?;
        let mut range = table
            .range(prefix..)
            .map_err(|e| storage_error("list", e))?;
        match range.next() {
            Some(item) => {
                let (k, _) = item.map_err(|e| storage_error("list", e))?;
                Ok(k.value().starts_with(prefix))
            }
            None => Ok(false),
        }
    }
    fn apply(&self, ops: &[WriteOp]) -> Result<()> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| storage_error("begin", e))?;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| storage_error("open", e))?;
            for op in ops {
                match op {
                    WriteOp::Put(k, v) => {
                        table
                            .insert(k.as_str(), v.as_slice())
                            .map_err(|e| storage_error("put", e))?;
                    }
                    WriteOp::Delete(k) => {
                        table
                            .remove(k.as_str())
                            .map_err(|e| storage_error("delete", e))?;
                    }
                }
            }
        }
        tx.commit().map_err(|e| storage_error("commit", e))
    }
    fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        new: Option<&[u8]>,
    ) -> Result<bool> {
        let tx = self
            .db
            .begin_write()
            .map_err(|e| storage_error("begin", e))?;
        {
            let mut table = tx.open_table(TABLE).map_err(|e| storage_error("open", e))?;
            let current = table
                .get(key)
                .map_err(|e| storage_error("get", e))?
                .map(|g| g.value().to_vec());
            if current.as_deref() != expected {
                return Ok(false);
            }
            match new {
                Some(v) => {
                    table.insert(key, v).map_err(|e| storage_error("put", e))?;
                }
                None => {
                    table.remove(key).map_err(|e| storage_error("delete", e))?;
                }
            }
        }
        tx.commit().map_err(|e| storage_error("commit", e))?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conformance() {
        let dir = tempfile::tempdir().expect("tempdir");
        let s = FileStorage::open(&dir.path().join("store")).expect("open");
        super::super::conformance::run(&s);
    }

    #[test]
    fn survives_reopen_and_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("store");
        {
            let s = FileStorage::open(&p).expect("open");
            s.put("a", b"1").expect("put");
        }
        let s = FileStorage::open(&p).expect("reopen");
        assert_eq!(s.get("a").expect("get"), Some(b"1".to_vec()));
        let mode = std::fs::metadata(&p).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn second_open_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("store");
        let _s = FileStorage::open(&p).expect("open");
        let e = FileStorage::open(&p).err().expect("second open must fail");
        assert_eq!(e.kind, ErrorKind::Busy);
    }
}
