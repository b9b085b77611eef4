//! The guard every request passes: the per-uid rate, the policy decision (for a rename, for
//! everything it moves), the intent line of a change, the operation, the caller's view of the
//! answer (mode bits, sizes, filtered listings), the outcome line, and the record of the
//! caller's refusals.
//!
//! Owns: `dispatch`, the one entry point of every request. Must never: let a change commit
//! before its intent line is durable, hand out a value or a credential before its line is
//! durable, or tell a caller more than its policy lets it see.

use super::*;

/// The most entries a folder rename checks (and so moves).
pub(super) const MAX_MOVED: usize = 100_000;

impl Engine {
    /// The single entry point for every file operation: rate bound, policy check, the intent
    /// line of a change, the operation, the caller's view of the answer (mode bits, filtered
    /// listings), the outcome line.
    pub fn dispatch(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        self.dispatch_as(caller, path, op, false)
    }

    /// `dispatch` for a path the adapter holds open-created (a file not stored until its
    /// creator closes it): a stored value that is missing counts as there, for a caller who may
    /// create the path (to others the file does not exist yet). Used for `rm`, `mv` and `chmod`
    /// of such a file, so that they are authorised and audited with their real outcome.
    pub fn dispatch_held_open(&self, caller: &Caller, path: &str, op: Op<'_>) -> Result<Reply> {
        self.dispatch_as(caller, path, op, true)
    }

    /// The policy decision alone for `op` on `path` (nothing runs, nothing is recorded): for
    /// the adapter's own checks that must not tell a caller more than the policy lets it
    /// know. A refusal the adapter then answers itself goes through `record_refusal`.
    pub fn check(&self, caller: &Caller, path: &str, op: &Op<'_>) -> Result<()> {
        let policies = self.policies();
        let (_, need, _) = self.need(path, op);
        self.authorize(&policies, caller, path, op, &need)
    }

    /// Audit a refusal the adapter decided on its own (a per-uid bound, an oversized write, a
    /// mount spec that can no longer become valid, ENOTEMPTY for a folder that holds a file
    /// still being created), like the engine's own refusals (aggregated when repeated). A
    /// failing audit log changes nothing here: the request is refused anyway.
    pub fn record_refusal(&self, caller: &Caller, op: &'static str, path: &str, err: &Error) {
        let mode = self.audit_mode();
        if self.note_refusal(&mode, caller, op, path, err, false) {
            let rec = gate::Record {
                caller,
                op,
                path,
                result: Err(err),
                lease_id: None,
                values: Vec::new(),
                secret_bearing: false,
                intent: false,
                durable: true,
                count: None,
            };
            let _ = gate::audit(&mode, rec);
        }
    }

    /// Account for a refusal: the caller's own list (`sys/self/errors`, unless it is a
    /// `probe` — a lookup of what is not there), and whether its audit line is to be written
    /// in full (false: it is counted into its window's aggregate line). The daemon's own
    /// failures (EIO) are always written.
    fn note_refusal(
        &self,
        mode: &AuditMode,
        caller: &Caller,
        op: &'static str,
        path: &str,
        e: &Error,
        probe: bool,
    ) -> bool {
        if !probe {
            self.reasons
                .record(caller.uid, op, path, e.kind.errno_name(), &e.message);
        }
        if matches!(e.kind, ErrorKind::Io | ErrorKind::Integrity) {
            return true;
        }
        let now = std::time::Instant::now();
        match self
            .refusals
            .decide(caller, op, path, e.kind.errno_name(), &e.message, now)
        {
            Decision::Counted => false,
            Decision::Write(closed) => {
                gate::write_aggregates(mode, closed);
                true
            }
        }
    }

    pub(super) fn dispatch_as(
        &self,
        caller: &Caller,
        path: &str,
        op: Op<'_>,
        held_open: bool,
    ) -> Result<Reply> {
        let policies = self.policies();
        let admin = policies.is_admin(caller);
        let (op_name, need, secret_bearing) = self.need(path, &op);
        let audit_mode = self.audit_mode();
        // HMACs only when a log will carry them (not on the hot path with audit off).
        let hashing = matches!(audit_mode, AuditMode::Log(_));
        let mut values: Vec<(&'static str, String)> = Vec::new();
        if let (true, Op::Write(data) | Op::Exchange(data)) = (hashing, &op) {
            if let Ok(h) = self.barrier.audit_hmac(data.expose()) {
                values.push(("request", h));
            }
        }
        // A credential read makes something upstream: a change like any write.
        let mints = matches!(op, Op::Read) && self.mints(path);
        let changes = mints
            || matches!(
                op,
                Op::Write(_) | Op::Delete | Op::Mkdir | Op::Rmdir | Op::Rename(_) | Op::Touch
            );
        let is_stat = matches!(op, Op::Stat);
        let is_chmod = matches!(op, Op::Chmod);
        // Nothing changes and nothing leaves: the line need not be waited for.
        let check_only = matches!(op, Op::Create | Op::Chmod);
        let decided = self
            .admit(caller, admin)
            .and_then(|()| self.authorize(&policies, caller, path, &op, &need));
        if decided.is_ok() && changes {
            // Audited before it commits, or it does not happen.
            gate::audit(
                &audit_mode,
                gate::Record {
                    caller,
                    op: op_name,
                    path,
                    result: Ok(()),
                    lease_id: None,
                    values: values.clone(),
                    secret_bearing,
                    intent: true,
                    durable: true,
                    count: None,
                },
            )?;
        }
        let mut result = match decided {
            Ok(()) => match self.dispatch_inner(caller, path, op) {
                Err(e)
                    if held_open
                        && e.kind == ErrorKind::NotFound
                        && (admin
                            || policies.allowed(
                                caller,
                                path,
                                crate::policy::Capability::Create,
                            )) =>
                {
                    Ok(Reply::Done)
                }
                other => other,
            },
            Err(e) => Err(e),
        };
        if !admin {
            result = result.and_then(|reply| self.caller_view(&policies, caller, path, reply));
        }
        if is_chmod {
            result = result.map(|_| Reply::Done);
        }
        // A successful stat is not recorded, unless the log is failing: then it is refused too.
        if is_stat && result.is_ok() && !gate::failing(&audit_mode) {
            return result;
        }
        // Repeated refusals are counted, not each written (the daemon's own failures are).
        if let Err(e) = &result {
            let probe = is_stat && e.kind == ErrorKind::NotFound;
            if !self.note_refusal(&audit_mode, caller, op_name, path, e, probe) {
                return result;
            }
        }
        // The lease this request made, or the one a `sys/` request acted on.
        let minted = match &result {
            Ok(Reply::Credential(_, id)) => Some(id.clone()),
            _ => None,
        };
        let lease_id = minted.clone().or_else(|| self.lease_named(path));
        if let (true, Ok(Reply::Data(d) | Reply::Credential(d, _))) = (hashing, &result) {
            if let Ok(h) = self.barrier.audit_hmac(d.expose()) {
                values.push(("response", h));
            }
        }
        let audited = gate::audit(
            &audit_mode,
            gate::Record {
                caller,
                op: op_name,
                path,
                result: result.as_ref().map(|_| ()),
                lease_id: lease_id.as_deref(),
                values,
                secret_bearing: secret_bearing && result.is_ok(),
                intent: false,
                // The outcome of a change whose intent line is durable need not wait, nor
                // a check that changes nothing; a credential or a value is handed out only
                // once its line is durable.
                durable: (!changes || mints) && !check_only,
                count: None,
            },
        );
        if let Err(e) = audited {
            // A credential this very request made cannot be handed out unaudited: undo it.
            if let Some(id) = &minted {
                let _ = self.leases.revoke(id);
            }
            // A change that was made is already in the log (its intent line); its outcome
            // stands, and the next request finds the log failing and is refused.
            if changes && !mints && result.is_ok() {
                return result;
            }
            return Err(e);
        }
        result
    }

    /// The per-uid request rate (`[limits]`): EAGAIN past it.
    pub(super) fn admit(&self, caller: &Caller, admin: bool) -> Result<()> {
        let l = self.config.uid_limits;
        let Some(rate) = l.requests_per_sec else {
            return Ok(());
        };
        if (admin && !l.apply_to_admins) || self.rates.admit(caller.uid, rate, l.request_burst) {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::TryAgain,
            format!(
                "uid {}: more than {rate} requests/s (burst {}); slow down \
                 ([limits] requests_per_sec_per_uid)",
                caller.uid, l.request_burst
            ),
        ))
    }

    /// The policy decision for `op` on `path`: `need`, and for a rename everything it moves.
    pub(super) fn authorize(
        &self,
        policies: &Policies,
        caller: &Caller,
        path: &str,
        op: &Op<'_>,
        need: &gate::Need,
    ) -> Result<()> {
        let exists = |p: &str| {
            self.dispatch_inner(&Caller::internal(), p, Op::Stat)
                .is_ok()
        };
        gate::check(policies, caller, need, &exists)?;
        match op {
            Op::Rename(to) if !policies.is_admin(caller) && !self.privileged(path) => {
                self.check_moved(policies, caller, path, to, &exists)
            }
            _ => Ok(()),
        }
    }

    /// A rename moves content: the caller needs `read` and `delete` on every secret it moves
    /// and `create` (or `update` where it replaces) on each one's new path. `gate::check`
    /// decided the source and target paths themselves.
    pub(super) fn check_moved(
        &self,
        policies: &Policies,
        caller: &Caller,
        from: &str,
        to: &str,
        exists: &dyn Fn(&str) -> bool,
    ) -> Result<()> {
        use crate::policy::Capability as C;
        let internal = Caller::internal();
        // Nothing stored (a file still being created, or nothing at all): nothing moves.
        let Ok(Reply::Node(node)) = self.dispatch_inner(&internal, from, Op::Stat) else {
            return Ok(());
        };
        let refuse = |what: &str| {
            Err(Error::denied(format!(
                "uid {} may not move {from} to {to}: {what} (policy)",
                caller.uid
            )))
        };
        if !node.is_dir() {
            if !policies.allowed(caller, from, C::Read) {
                return refuse("a rename moves the value, and you may not read it");
            }
            return Ok(());
        }
        let mut stack = vec![String::new()];
        let mut walked = 0usize;
        while let Some(rel) = stack.pop() {
            let dir = if rel.is_empty() {
                from.to_string()
            } else {
                format!("{from}/{rel}")
            };
            let Ok(Reply::Entries(entries)) = self.dispatch_inner(&internal, &dir, Op::List) else {
                continue;
            };
            for e in entries.into_iter().filter(|e| !e.name.starts_with('.')) {
                walked += 1;
                if walked > MAX_MOVED {
                    return Err(Error::invalid(format!(
                        "{from}: a folder with more than {MAX_MOVED} entries cannot be moved"
                    )));
                }
                let r = if rel.is_empty() {
                    e.name
                } else {
                    format!("{rel}/{}", e.name)
                };
                if e.kind == crate::backend::NodeKind::Dir {
                    stack.push(r);
                    continue;
                }
                let (old, new) = (format!("{from}/{r}"), format!("{to}/{r}"));
                let at_new = if exists(&new) { C::Update } else { C::Create };
                if !(policies.allowed(caller, &old, C::Read)
                    && policies.allowed(caller, &old, C::Delete)
                    && policies.allowed(caller, &new, at_new))
                {
                    return refuse(
                        "the folder holds secrets you may not read and delete there, \
                         or create at the new path",
                    );
                }
            }
        }
        Ok(())
    }

    /// What `op` on `path` needs: (audit operation name, policy need, secret-bearing).
    pub(super) fn need(&self, path: &str, op: &Op<'_>) -> (&'static str, gate::Need, bool) {
        use crate::policy::Capability as C;
        use gate::Need;
        let name = match op {
            Op::Stat => "stat",
            Op::List => "list",
            Op::Read => "read",
            Op::Create => "create",
            Op::Write(_) => "write",
            Op::Delete => "delete",
            Op::Mkdir => "mkdir",
            Op::Rmdir => "rmdir",
            Op::Rename(_) => "rename",
            Op::Touch => "touch",
            Op::Exchange(_) => "exchange",
            Op::Chmod => "chmod",
        };
        if matches!(op, Op::Stat | Op::Chmod) {
            return (name, Need::Free, false);
        }
        let (privileged, open) = self.rule_at(path);
        let help = path
            .split_once('/')
            .is_some_and(|(_, rest)| rest == ".help");
        let free = path.is_empty() || path == ".help" || help || open;
        if free && matches!(op, Op::List | Op::Read) {
            return (name, Need::Free, false);
        }
        if privileged {
            let need = match op {
                Op::List => Need::Cap(gate::folder(path), C::Sudo),
                Op::Rename(to) => Need::Two(
                    Box::new(Need::Cap(path.to_string(), C::Sudo)),
                    Box::new(Need::Cap((*to).to_string(), C::Sudo)),
                ),
                _ => Need::Cap(path.to_string(), C::Sudo),
            };
            return (
                name,
                need,
                matches!(op, Op::Read | Op::Write(_) | Op::Exchange(_)),
            );
        }
        let need = match op {
            Op::Stat | Op::Chmod => Need::Free,
            Op::List => Need::Cap(gate::folder(path), C::List),
            Op::Read => Need::Cap(path.to_string(), C::Read),
            Op::Create | Op::Write(_) => Need::Write(path.to_string()),
            Op::Delete | Op::Rmdir => Need::Cap(path.to_string(), C::Delete),
            Op::Mkdir => Need::Cap(path.to_string(), C::Create),
            Op::Touch | Op::Exchange(_) => Need::Cap(path.to_string(), C::Update),
            Op::Rename(to) => Need::Two(
                Box::new(Need::Cap(path.to_string(), C::Delete)),
                Box::new(Need::Write((*to).to_string())),
            ),
        };
        (
            name,
            need,
            matches!(op, Op::Read | Op::Write(_) | Op::Exchange(_)),
        )
    }

    /// The rule of the mount `path` lies in: (privileged, open to all). See
    /// `Backend::privileged` and `Backend::open_to_all` (every mount's `.help` is open).
    fn rule_at(&self, path: &str) -> (bool, bool) {
        Self::rule_of(self.mount_of(path).as_ref())
    }

    fn rule_of(mount: Option<&(Arc<Mounted>, &str)>) -> (bool, bool) {
        match mount {
            Some((m, rest)) => (
                m.backend.privileged(),
                *rest == ".help" || m.backend.open_to_all(rest),
            ),
            None => (false, false),
        }
    }

    fn privileged(&self, path: &str) -> bool {
        self.rule_at(path).0
    }

    /// Narrow an answer to what a (non-admin) caller may see and do.
    pub(super) fn caller_view(
        &self,
        policies: &Policies,
        caller: &Caller,
        path: &str,
        reply: Reply,
    ) -> Result<Reply> {
        let mount = self.mount_of(path);
        let (privileged, open) = Self::rule_of(mount.as_ref());
        match reply {
            Reply::Node(mut node) => {
                if mount.is_some()
                    && !privileged
                    && !open
                    && !policies.may_see(caller, path, node.is_dir())
                {
                    return Err(Error::not_found(path));
                }
                if !(path.is_empty() || path == ".help" || open) {
                    let key = if node.is_dir() {
                        gate::folder(path)
                    } else {
                        path.to_string()
                    };
                    let mut caps = policies.capabilities(caller, &key);
                    if privileged {
                        if caps.contains(crate::policy::Capability::Sudo) {
                            caps = crate::policy::CapSet::ALL;
                        } else if !(node.is_dir() && policies.may_see(caller, path, true)) {
                            // No probing of mount, policy or lease names without `sudo`.
                            return Err(Error::not_found(path));
                        }
                    }
                    gate::mask_mode(&mut node, caps);
                }
                Ok(Reply::Node(node))
            }
            Reply::Entries(entries) => {
                let entries = match &mount {
                    // A privileged mount's root: what is open to all, and what the caller may
                    // act on (`sudo`) or see below.
                    Some((m, "")) if privileged => entries
                        .into_iter()
                        .filter(|e| {
                            let full = format!("{path}/{}", e.name);
                            e.name.starts_with('.')
                                || m.backend.open_to_all(&e.name)
                                || policies.allowed(caller, &full, crate::policy::Capability::Sudo)
                                || policies.may_see(
                                    caller,
                                    &full,
                                    e.kind == crate::backend::NodeKind::Dir,
                                )
                        })
                        .collect(),
                    // The root: the mounts the caller may see, and those open to all.
                    None if path.is_empty() => entries
                        .into_iter()
                        .filter(|e| {
                            e.name.starts_with('.')
                                || self.rule_at(&e.name).1
                                || policies.may_see(caller, &e.name, true)
                        })
                        .collect(),
                    _ => gate::filter_entries(policies, caller, path, entries),
                };
                Ok(Reply::Entries(entries))
            }
            other => Ok(other),
        }
    }
}
