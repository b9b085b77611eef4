//! Transit key control: the `keys/NAME/ctl` commands (`rotate`, `min_decryption_version=N`,
//! `deletion_allowed=true|false`), checked line by line as they arrive and applied at close.
//!
//! Owns: parsing and applying those commands. Must never: apply a command whose check failed.

use super::*;

/// One line of a `ctl` write.
enum Command {
    Rotate,
    MinDecryption(u32),
    DeletionAllowed(bool),
}

impl Transit {
    /// One `ctl` command line (trimmed, not blank, not a comment).
    fn command(name: &str, line: &str) -> Result<Command> {
        let (cmd, value) = match line.split_once('=') {
            Some((k, v)) => (k.trim(), Some(v.trim())),
            None => (line, None),
        };
        match (cmd, value) {
            ("rotate", None) => Ok(Command::Rotate),
            ("min_decryption_version", Some(v)) => {
                v.parse().map(Command::MinDecryption).map_err(|_| {
                    Error::invalid(format!(
                        "keys/{name}/ctl: min_decryption_version must be a whole number, got {v:?}"
                    ))
                })
            }
            ("deletion_allowed", Some("true")) => Ok(Command::DeletionAllowed(true)),
            ("deletion_allowed", Some("false")) => Ok(Command::DeletionAllowed(false)),
            ("deletion_allowed", Some(v)) => Err(Error::invalid(format!(
                "keys/{name}/ctl: deletion_allowed must be true or false, got {v:?}"
            ))),
            _ => {
                let shown: String = cmd.chars().take(40).collect();
                Err(Error::invalid(format!(
                    "keys/{name}/ctl: unknown command {shown:?} (rotate, min_decryption_version=N, deletion_allowed=true|false)"
                )))
            }
        }
    }

    fn min_version_range(name: &str, n: u32, latest: u32) -> Result<()> {
        if n == 0 || n > latest {
            return Err(Error::invalid(format!(
                "keys/{name}/ctl: min_decryption_version must be between 1 and the latest version {latest}, got {n}"
            )));
        }
        Ok(())
    }

    /// Check the commands of a buffered `ctl` write as they arrive: each complete line is
    /// final (see `Backend::check_partial`).
    pub(super) fn check_control(&self, name: &str, data: &[u8]) -> Result<()> {
        if !partial::worth_checking(data) {
            return Ok(());
        }
        let what = format!("keys/{name}/ctl");
        let text = partial::text_so_far(data, &what)
            .map_err(|_| Error::invalid(format!("{what}: commands must be text")))?;
        let mut latest = self.meta(name)?.latest_version;
        for line in partial::complete_lines(text).lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            match Self::command(name, line)? {
                Command::Rotate => latest = latest.saturating_add(1),
                Command::MinDecryption(n) => Self::min_version_range(name, n, latest)?,
                Command::DeletionAllowed(_) => {}
            }
        }
        Ok(())
    }

    /// The settings after the commands of one `ctl` write, and the new key versions to store.
    fn commands(
        &self,
        name: &str,
        text: &str,
        mut meta: Meta,
    ) -> Result<(Meta, Vec<(u32, SecretBytes)>)> {
        let mut new_keys: Vec<(u32, SecretBytes)> = Vec::new();
        let mut any = false;
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            any = true;
            match Self::command(name, line)? {
                Command::Rotate => {
                    let next = meta.latest_version.checked_add(1).ok_or_else(|| {
                        Error::invalid(format!("keys/{name}: no more versions available"))
                    })?;
                    meta.latest_version = next;
                    meta.versions.insert(next, self.services.leases.now_ms());
                    new_keys.push((next, Self::new_key_bytes()));
                }
                Command::MinDecryption(n) => {
                    Self::min_version_range(name, n, meta.latest_version)?;
                    meta.min_decryption_version = n;
                }
                Command::DeletionAllowed(b) => meta.deletion_allowed = b,
            }
        }
        if !any {
            return Err(Error::invalid(format!(
                "keys/{name}/ctl: no command (rotate, min_decryption_version=N, deletion_allowed=true|false)"
            )));
        }
        Ok((meta, new_keys))
    }

    /// Apply the commands of one `ctl` write (one per line), all or nothing; on the settings
    /// as stored (compare-and-swap: a change another daemon made meanwhile is re-read and the
    /// commands applied to it).
    pub(super) fn control(&self, name: &str, data: &SecretBytes) -> Result<()> {
        let text = std::str::from_utf8(data.expose())
            .map_err(|_| Error::invalid(format!("keys/{name}/ctl: commands must be text")))?;
        let _g = Self::lock();
        let mut attempts = 0;
        let meta = loop {
            let (meta, stamp) = self.meta_versioned(name)?;
            let (meta, new_keys) = self.commands(name, text, meta)?;
            let m = Self::encode_meta(&meta)?;
            let paths: Vec<String> = new_keys
                .iter()
                .map(|(v, _)| version_key(name, *v))
                .collect();
            let mk = meta_key(name);
            let mut ops: Vec<ViewOp<'_>> = new_keys
                .iter()
                .zip(&paths)
                .map(|((_, k), p)| ViewOp::Put(p, k.expose()))
                .collect();
            ops.push(ViewOp::Put(&mk, &m));
            // Applied to the settings just read, or not at all: another daemon sharing the
            // store may have rotated meanwhile (its new version would be overwritten).
            let res = self.view.apply_if(&mk, Some(&stamp), &ops);
            self.cache.invalidate(name);
            if res? {
                break meta;
            }
            attempts += 1;
            if attempts >= CAS_ATTEMPTS {
                return Err(changed_meanwhile(name));
            }
        };
        tracing::info!(
            key = name,
            latest_version = meta.latest_version,
            min_decryption_version = meta.min_decryption_version,
            deletion_allowed = meta.deletion_allowed,
            "transit key settings changed"
        );
        Ok(())
    }
}
