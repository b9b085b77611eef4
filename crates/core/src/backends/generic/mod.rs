//! The generic backend (`type = "generic"`): stores the bytes written, as they are.
//!
//! Owns: the layout of its view — `f/<path>` holds a value, `d/<path>` marks a folder made with
//! `mkdir` (a folder holding a secret exists implicitly). Must never: store a value over the
//! size limit, let a file and a folder share a name, or leave a rename half-done (renames are
//! one atomic batch).

use super::{validate_name, Limits};
use crate::backend::{Backend, Ctx, DirEntry, Node, NodeKind, Writes};
use crate::barrier::view::ViewOp;
use crate::barrier::View;
use crate::error::{Error, ErrorKind, Result};
use crate::route::{Ops, PathDecl, Router};
use crate::secret::SecretBytes;
use std::collections::BTreeMap;

pub struct Generic {
    view: View,
    limits: Limits,
}

const HELP_INTRO: &str = "generic backend: stores arbitrary bytes, encrypted.";
const HELP_NOTES: &str =
    "Values over the size limit get EFBIG; names starting with '.' are reserved (EINVAL).";

/// What a declared path of this backend is (the backend decides by what is stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    Root,
    Secret,
    Folder,
}

/// The paths of a generic mount: operations and help lines; `.help` is derived from them.
const PATHS: &[PathDecl<Route>] = &[
    PathDecl::new("", Route::Root, Ops::LIST.and(Ops::MKDIR), ""),
    PathDecl::new(
        "{*path}",
        Route::Secret,
        Ops::READ.and(Ops::WRITE).and(Ops::DELETE).and(Ops::RENAME),
        "write: store the bytes (committed at close, atomically)\n\
         read: the bytes; rm: delete",
    ),
    PathDecl::new(
        "{*folder}",
        Route::Folder,
        Ops::LIST.and(Ops::MKDIR).and(Ops::RMDIR).and(Ops::RENAME),
        "mkdir/rmdir make and remove folders; a folder holding a secret exists implicitly",
    ),
    PathDecl::new(
        "{*path}",
        Route::Secret,
        Ops::RENAME,
        "rename atomically within this mount (across mounts: EXDEV)",
    )
    .shown("mv A B"),
];

fn file_key(path: &str) -> String {
    format!("f/{path}")
}
fn dir_key(path: &str) -> String {
    format!("d/{path}")
}
fn prefixes(path: &str) -> (String, String) {
    if path.is_empty() {
        ("f/".into(), "d/".into())
    } else {
        (format!("f/{path}/"), format!("d/{path}/"))
    }
}

impl Generic {
    pub fn new(view: View, limits: Limits) -> Self {
        Self { view, limits }
    }

    fn validate_path(path: &str) -> Result<()> {
        if path.is_empty() {
            return Err(Error::invalid("the mount root is not a secret"));
        }
        path.split('/').try_for_each(validate_name)
    }

    fn is_file(&self, path: &str) -> Result<bool> {
        Ok(self.view.size(&file_key(path))?.is_some())
    }

    fn is_dir(&self, path: &str) -> Result<bool> {
        if path.is_empty() {
            return Ok(true);
        }
        let (f, d) = prefixes(path);
        Ok(self.view.size(&dir_key(path))?.is_some()
            || self.view.has_prefix(&f)?
            || self.view.has_prefix(&d)?)
    }

    /// No ancestor of `path` may be a file.
    fn check_ancestors(&self, path: &str) -> Result<()> {
        let mut end = 0;
        while let Some(n) = path[end..].find('/') {
            let anc = &path[..end + n];
            if self.is_file(anc)? {
                return Err(Error::new(
                    ErrorKind::NotADirectory,
                    format!("{anc}: is a secret, not a folder"),
                ));
            }
            end += n + 1;
        }
        Ok(())
    }

    fn children(&self, path: &str) -> Result<BTreeMap<String, NodeKind>> {
        let (fp, dp) = prefixes(path);
        let mut out = BTreeMap::new();
        for (prefix, leaf_kind) in [(fp, NodeKind::File), (dp, NodeKind::Dir)] {
            for p in self.view.list(&prefix)? {
                let rest = &p[prefix.len()..];
                let (name, kind) = match rest.find('/') {
                    Some(n) => (&rest[..n], NodeKind::Dir),
                    None => (rest, leaf_kind),
                };
                out.entry(name.to_string()).or_insert(kind);
            }
        }
        Ok(out)
    }
}

impl Backend for Generic {
    fn kind(&self) -> &'static str {
        "generic"
    }

    fn help(&self) -> String {
        Router::declare(PATHS).help(HELP_INTRO, HELP_NOTES)
    }

    fn stat(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Node> {
        if path.is_empty() {
            return Ok(Node::dir());
        }
        if let Some(size) = self.view.size(&file_key(path))? {
            return Ok(Node::file(size));
        }
        if self.is_dir(path)? {
            return Ok(Node::dir());
        }
        Err(Error::not_found(path))
    }

    fn list(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Vec<DirEntry>> {
        let children = self.children(path)?;
        if children.is_empty() && !self.is_dir(path)? {
            return Err(if self.is_file(path)? {
                Error::new(ErrorKind::NotADirectory, format!("{path}: not a folder"))
            } else {
                Error::not_found(path)
            });
        }
        Ok(children
            .into_iter()
            .map(|(name, kind)| DirEntry { name, kind })
            .collect())
    }

    fn read(&self, _ctx: &Ctx<'_>, path: &str) -> Result<SecretBytes> {
        match self.view.get(&file_key(path))? {
            Some(v) => Ok(v),
            None if self.is_dir(path)? => Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a folder"),
            )),
            None => Err(Error::not_found(path)),
        }
    }

    fn create(&self, _ctx: &Ctx<'_>, path: &str) -> Result<Writes> {
        Self::validate_path(path)?;
        self.check_ancestors(path)?;
        if self.is_dir(path)? {
            return Err(Error::new(
                ErrorKind::IsADirectory,
                format!("{path}: is a folder"),
            ));
        }
        Ok(Writes::Buffered)
    }

    fn write(&self, ctx: &Ctx<'_>, path: &str, data: SecretBytes) -> Result<()> {
        if data.len() > self.limits.max_value_size {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "{path}: value of {} bytes exceeds the limit of {} bytes",
                    data.len(),
                    self.limits.max_value_size
                ),
            ));
        }
        self.create(ctx, path)?;
        self.view.put(&file_key(path), data.expose())
    }

    fn delete(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        if !self.is_file(path)? {
            return Err(if self.is_dir(path)? {
                Error::new(ErrorKind::IsADirectory, format!("{path}: is a folder"))
            } else {
                Error::not_found(path)
            });
        }
        self.view.delete(&file_key(path))
    }

    fn mkdir(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        Self::validate_path(path)?;
        self.check_ancestors(path)?;
        if self.is_file(path)? || self.is_dir(path)? {
            return Err(Error::new(
                ErrorKind::AlreadyExists,
                format!("{path}: exists"),
            ));
        }
        self.view.put(&dir_key(path), b"")
    }

    fn rmdir(&self, _ctx: &Ctx<'_>, path: &str) -> Result<()> {
        if path.is_empty() {
            return Err(Error::not_permitted("the mount root cannot be removed"));
        }
        if self.is_file(path)? {
            return Err(Error::new(
                ErrorKind::NotADirectory,
                format!("{path}: is a secret"),
            ));
        }
        let (f, d) = prefixes(path);
        if self.view.has_prefix(&f)? || self.view.has_prefix(&d)? {
            return Err(Error::new(
                ErrorKind::NotEmpty,
                format!("{path}: folder is not empty"),
            ));
        }
        if self.view.size(&dir_key(path))?.is_none() {
            return Err(Error::not_found(path));
        }
        self.view.delete(&dir_key(path))
    }

    fn rename(&self, ctx: &Ctx<'_>, from: &str, to: &str) -> Result<()> {
        Self::validate_path(to)?;
        if from == to {
            return Ok(());
        }
        if to.starts_with(&format!("{from}/")) {
            return Err(Error::invalid(format!("cannot move {from} into itself")));
        }
        self.check_ancestors(to)?;
        if let Some(value) = self.view.get(&file_key(from))? {
            if self.is_dir(to)? {
                return Err(Error::new(
                    ErrorKind::IsADirectory,
                    format!("{to}: is a folder"),
                ));
            }
            // The AAD binds a value to its path: re-encrypt under the new path, one batch.
            let (fk, tk) = (file_key(from), file_key(to));
            return self
                .view
                .apply(&[ViewOp::Put(&tk, value.expose()), ViewOp::Delete(&fk)]);
        }
        if !self.is_dir(from)? {
            return Err(Error::not_found(from));
        }
        if self.is_file(to)? {
            return Err(Error::new(
                ErrorKind::NotADirectory,
                format!("{to}: is a secret"),
            ));
        }
        if !self.children(to)?.is_empty() {
            return Err(Error::new(
                ErrorKind::NotEmpty,
                format!("{to}: folder is not empty"),
            ));
        }
        let _ = ctx;
        // Move the folder: every value and marker under it, in one atomic batch.
        let (ff, df) = prefixes(from);
        let (ft, dt) = prefixes(to);
        let mut moved: Vec<(String, Option<SecretBytes>, String)> = Vec::new();
        for (src_prefix, dst_prefix, is_file) in [(&ff, &ft, true), (&df, &dt, false)] {
            for p in self.view.list(src_prefix)? {
                let dst = format!("{dst_prefix}{}", &p[src_prefix.len()..]);
                let value = if is_file {
                    Some(self.view.get(&p)?.ok_or_else(|| Error::not_found(&p))?)
                } else {
                    None
                };
                moved.push((p, value, dst));
            }
        }
        let (fd, td) = (dir_key(from), dir_key(to));
        let has_marker = self.view.size(&fd)?.is_some();
        let mut ops: Vec<ViewOp<'_>> = Vec::with_capacity(moved.len() * 2 + 2);
        for (src, value, dst) in &moved {
            ops.push(ViewOp::Put(
                dst,
                value.as_ref().map_or(&b""[..], |v| v.expose()),
            ));
            ops.push(ViewOp::Delete(src));
        }
        if has_marker {
            ops.push(ViewOp::Put(&td, b""));
            ops.push(ViewOp::Delete(&fd));
        }
        self.view.apply(&ops)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_comes_from_the_table() {
        let help = Router::declare(PATHS).help(HELP_INTRO, HELP_NOTES);
        assert!(help.starts_with("generic backend: stores arbitrary bytes, encrypted.\n\n"));
        assert!(help.contains("\n  PATH            write: store the bytes"));
        assert!(help.contains("\n                  read: the bytes; rm: delete\n"));
        assert!(help.contains("\n  FOLDER/         mkdir/rmdir make and remove folders"));
        assert!(help.contains("\n  mv A B          rename atomically within this mount"));
        assert!(help.ends_with("names starting with '.' are reserved (EINVAL).\n"));
    }
}
