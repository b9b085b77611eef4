//! From a full path to what answers it: the root, its `.help`, or a mount's backend (the
//! control plane is the table's fixed mount), and the call of that backend's operation.
//!
//! Owns: the rules common to every backend (the root holds only mounts; renames stay within
//! one mount). Must never: decide access (the guard did) or record anything.

use super::*;

pub(super) enum Target<'p> {
    Root,
    RootHelp,
    MountHelp(Arc<Mounted>),
    Mount(Arc<Mounted>, &'p str),
}

pub(super) fn cross_mount(from: &str, to: &str) -> Error {
    Error::new(
        ErrorKind::CrossMount,
        format!("cannot rename {from} to {to}: different mounts"),
    )
}

impl Engine {
    pub(super) fn resolve<'p>(&self, path: &'p str) -> Result<Target<'p>> {
        if path.is_empty() {
            return Ok(Target::Root);
        }
        let (head, rest) = match path.find('/') {
            Some(n) => (&path[..n], &path[n + 1..]),
            None => (path, ""),
        };
        if head == ".help" && rest.is_empty() {
            return Ok(Target::RootHelp);
        }
        let m = if head == self.sys.entry.path {
            self.sys.clone()
        } else {
            self.mounted(head).ok_or_else(|| Error::not_found(path))?
        };
        if rest == ".help" {
            Ok(Target::MountHelp(m))
        } else {
            Ok(Target::Mount(m, rest))
        }
    }

    /// The mount `path` lies in (its root included) and the path inside it; `None` for the
    /// root, its `.help`, and paths in no mount.
    pub(super) fn mount_of<'p>(&self, path: &'p str) -> Option<(Arc<Mounted>, &'p str)> {
        match self.resolve(path) {
            Ok(Target::Mount(m, rest)) => Some((m, rest)),
            Ok(Target::MountHelp(m)) => Some((m, ".help")),
            _ => None,
        }
    }

    /// Whether a read of `path` mints a leased credential (its backend says so).
    pub(super) fn mints(&self, path: &str) -> bool {
        matches!(self.resolve(path), Ok(Target::Mount(m, rest)) if m.backend.mints(rest))
    }

    /// The lease a request acts on (its backend says: `sys/leases/ID`), for its audit line.
    pub(super) fn lease_named(&self, path: &str) -> Option<String> {
        let (m, rest) = self.mount_of(path)?;
        m.backend.lease_named(rest).map(str::to_string)
    }

    pub(super) fn dispatch_inner(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        let target = self.resolve(path)?;
        match target {
            Target::Root => match op {
                Op::Stat | Op::Chmod => Ok(Reply::Node(Node::dir())),
                Op::List => {
                    let mut out = vec![
                        DirEntry::file(".help"),
                        DirEntry::dir(self.sys.entry.path.clone()),
                    ];
                    out.extend(
                        self.mount_entries()
                            .into_iter()
                            .map(|m| DirEntry::dir(m.path)),
                    );
                    Ok(Reply::Entries(out))
                }
                _ => Err(Error::not_permitted(format!(
                    "the root holds mounts; use {}/mounts to add one",
                    self.sys.entry.path
                ))),
            },
            Target::RootHelp | Target::MountHelp(_) => {
                let text = match &target {
                    Target::MountHelp(m) => m.backend.help(),
                    _ => self.root_help(caller),
                };
                match op {
                    Op::Stat | Op::Chmod => {
                        Ok(Reply::Node(Node::generated_text(0o400, text.len())))
                    }
                    Op::Read => Ok(Reply::Data(SecretBytes::from(text))),
                    _ => Err(Error::not_permitted(format!("{path} is read-only"))),
                }
            }
            Target::Mount(m, rest) => {
                let ctx = Ctx {
                    caller,
                    mount: &m.entry.path,
                    lease_limit: self
                        .config
                        .uid_limits
                        .leases
                        .filter(|_| self.bounded(caller)),
                    issued: Default::default(),
                };
                let b = &m.backend;
                match op {
                    Op::Stat | Op::Chmod => b.stat(&ctx, rest).map(Reply::Node),
                    Op::List => {
                        let mut entries = b.list(&ctx, rest)?;
                        if rest.is_empty() {
                            entries.insert(0, DirEntry::file(".help"));
                        }
                        Ok(Reply::Entries(entries))
                    }
                    Op::Read => {
                        let data = b.read(&ctx, rest)?;
                        Ok(match ctx.issued.into_inner() {
                            Some(lease) => Reply::Credential(data, lease),
                            None => Reply::Data(data),
                        })
                    }
                    // How the open's writes will apply (the node the file will be).
                    Op::Create => b.create(&ctx, rest).map(|writes| {
                        Reply::Node(Node {
                            writes,
                            ..Node::file(0)
                        })
                    }),
                    Op::Write(data) => b.write(&ctx, rest, data).map(|_| Reply::Done),
                    Op::Delete => b.delete(&ctx, rest).map(|_| Reply::Done),
                    Op::Mkdir => b.mkdir(&ctx, rest).map(|_| Reply::Done),
                    Op::Rmdir => b.rmdir(&ctx, rest).map(|_| Reply::Done),
                    Op::Touch => b.touch(&ctx, rest).map(|_| Reply::Done),
                    Op::Exchange(input) => b.exchange(&ctx, rest, input).map(Reply::Data),
                    Op::Rename(to) => {
                        let prefix = format!("{}/", m.entry.path);
                        match to.strip_prefix(&prefix) {
                            Some(to_rest) if !to_rest.is_empty() => {
                                b.rename(&ctx, rest, to_rest).map(|_| Reply::Done)
                            }
                            _ => Err(cross_mount(path, to)),
                        }
                    }
                }
            }
        }
    }
}
