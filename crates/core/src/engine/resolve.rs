//! From a full path to what answers it: the root, its `.help`, `sys/`, or a mount's backend,
//! and the call of that backend's operation.
//!
//! Owns: the rules common to every backend (the root holds only mounts; renames stay within
//! one mount). Must never: decide access (the guard did) or record anything.

use super::*;

pub(super) enum Target<'p> {
    Root,
    RootHelp,
    Sys(&'p str),
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
        match head {
            ".help" if rest.is_empty() => Ok(Target::RootHelp),
            "sys" => Ok(Target::Sys(rest)),
            _ => {
                let m = self.mounted(head).ok_or_else(|| Error::not_found(path))?;
                if rest == ".help" {
                    Ok(Target::MountHelp(m))
                } else {
                    Ok(Target::Mount(m, rest))
                }
            }
        }
    }

    /// Whether a read of `path` mints a leased credential (its backend says so).
    pub(super) fn mints(&self, path: &str) -> bool {
        matches!(self.resolve(path), Ok(Target::Mount(m, rest)) if m.backend.mints(rest))
    }

    /// The lease a `sys/` request names (`sys/leases/ID`), for its audit line.
    pub(super) fn lease_named(&self, path: &str) -> Option<String> {
        match self.resolve(path) {
            Ok(Target::Sys(rest)) => crate::backends::sys::lease_of(rest).map(str::to_string),
            _ => None,
        }
    }

    pub(super) fn dispatch_inner(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        let target = self.resolve(path)?;
        match target {
            Target::Root => match op {
                Op::Stat | Op::Chmod => Ok(Reply::Node(Node::dir())),
                Op::List => {
                    let mut out = vec![DirEntry::file(".help"), DirEntry::dir("sys")];
                    out.extend(
                        self.mount_entries()
                            .into_iter()
                            .map(|m| DirEntry::dir(m.path)),
                    );
                    Ok(Reply::Entries(out))
                }
                _ => Err(Error::not_permitted(
                    "the root holds mounts; use sys/mounts to add one",
                )),
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
            Target::Sys(rest) => match op {
                Op::Stat | Op::Chmod => self.sys.stat(self, caller, rest).map(Reply::Node),
                Op::List => self.sys.list(self, rest).map(Reply::Entries),
                Op::Read => self.sys.read(self, caller, rest).map(Reply::Data),
                // Files under sys/ are control files: each write acts at once.
                Op::Create => self.sys.create_node(self, rest).map(Reply::Node),
                Op::Write(data) => self
                    .sys
                    .write(self, caller.uid, rest, data)
                    .map(|_| Reply::Done),
                Op::Delete => self.sys.delete(self, rest).map(|_| Reply::Done),
                Op::Rename(to) => match to.strip_prefix("sys/") {
                    Some(to) => self.sys.rename(self, rest, to).map(|_| Reply::Done),
                    None => Err(cross_mount(path, to)),
                },
                Op::Rmdir => self.sys.rmdir(self, rest).map(|_| Reply::Done),
                Op::Touch => self.sys.touch(self, rest).map(|_| Reply::Done),
                Op::Mkdir => Err(Error::not_permitted(format!(
                    "{path}: folders under sys/ are fixed"
                ))),
                Op::Exchange(input) => self
                    .sys
                    .exchange(self, caller.uid, rest, input)
                    .map(Reply::Data),
            },
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
                    Op::Create => b.create(&ctx, rest).map(|_| Reply::Done),
                    Op::Write(data) => b.write(&ctx, rest, data).map(|_| Reply::Done),
                    Op::Delete => b.delete(&ctx, rest).map(|_| Reply::Done),
                    Op::Mkdir => b.mkdir(&ctx, rest).map(|_| Reply::Done),
                    Op::Rmdir => b.rmdir(&ctx, rest).map(|_| Reply::Done),
                    Op::Touch => Ok(Reply::Done),
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
