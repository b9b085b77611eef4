//! `nomadfs encrypt|decrypt|rewrap KEY`: stdin through a transit exchange file to stdout.
//!
//! Owns: the mapping of KEY (`orders` → `transit/…/orders`, `MOUNT/orders` → `MOUNT/…/orders`)
//! and the exchange as plain file operations: open read-write, write stdin, seek to 0, read to
//! EOF, close. Must never: talk to the daemon other than through the mount, or leave a
//! plaintext buffer unzeroized.

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

/// Which transit exchange to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Op {
    Encrypt,
    Decrypt,
    Rewrap,
}

impl Op {
    fn dir(self) -> &'static str {
        match self {
            Op::Encrypt => "encrypt",
            Op::Decrypt => "decrypt",
            Op::Rewrap => "rewrap",
        }
    }
}

/// The exchange file for KEY (`orders` or `MOUNT/orders`) under the mountpoint.
pub fn exchange_path(mnt: &Path, op: Op, key: &str) -> Result<PathBuf, String> {
    let key = key.trim_matches('/');
    let (mount, name) = key.rsplit_once('/').unwrap_or(("transit", key));
    if name.is_empty() || mount.is_empty() || mount.contains('/') {
        return Err(format!("expected KEY or MOUNT/KEY, got {key:?}"));
    }
    Ok(mnt.join(mount).join(op.dir()).join(name))
}

/// Run one exchange: `input` in, the output back.
pub fn exchange(path: &Path, input: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let err = |what: &str, e: std::io::Error| format!("{what} {}: {e}", path.display());
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(|e| err("opening", e))?;
    f.write_all(input).map_err(|e| err("writing", e))?;
    f.seek(SeekFrom::Start(0)).map_err(|e| err("seeking", e))?;
    let mut out = Zeroizing::new(Vec::with_capacity(input.len() * 2 + 64));
    f.read_to_end(&mut out).map_err(|e| err("reading", e))?;
    Ok(out)
}

/// `nomadfs encrypt|decrypt|rewrap KEY < in > out`. Ciphertexts are printed with a newline;
/// plaintexts exactly as they were encrypted.
pub fn run(mnt: &Path, op: Op, key: &str) -> Result<(), String> {
    let path = exchange_path(mnt, op, key)?;
    let mut input = Zeroizing::new(Vec::new());
    std::io::stdin()
        .read_to_end(&mut input)
        .map_err(|e| format!("reading stdin: {e}"))?;
    let out = exchange(&path, &input)?;
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&out)
        .and_then(|()| {
            if op == Op::Decrypt {
                Ok(())
            } else {
                stdout.write_all(b"\n")
            }
        })
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing stdout: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_paths() {
        let m = Path::new("/m");
        assert_eq!(
            exchange_path(m, Op::Encrypt, "orders").expect("p"),
            Path::new("/m/transit/encrypt/orders")
        );
        assert_eq!(
            exchange_path(m, Op::Rewrap, "team/orders").expect("p"),
            Path::new("/m/team/rewrap/orders")
        );
        assert!(exchange_path(m, Op::Decrypt, "").is_err());
        assert!(exchange_path(m, Op::Decrypt, "a/b/c").is_err());
    }
}
