//! Exchange handles: read-after-write files such as `transit/encrypt/NAME`.
//!
//! Owns: the state of one open exchange file — the input buffered from writes (zeroizing) and
//! the output of the one exchange it ran — and the rules: the first read at offset 0 after
//! writes runs the exchange once and caches its output; later reads slice the cache; a write at
//! offset 0 after a read starts a new input. Must never: run an exchange at open, at close, or
//! twice for one input; keep an input or output past the handle (both zeroize on drop).

use crate::files::handles::WriteBuf;
use nomadfs_core::{Engine, Error, ErrorKind, Node, SecretBytes};
use std::time::Duration;

/// How far past the value size limit an exchange input may go (a ciphertext of a plaintext at
/// the limit is ~4/3 of it); the backend enforces the exact limits.
pub fn input_limit(engine: &Engine) -> u64 {
    (engine.limits().max_value_size as u64)
        .saturating_mul(2)
        .saturating_add(4096)
}

/// How long the kernel may keep an exchange node's name → inode mapping (its attributes are
/// never cached). Safe to cache: `open` and every exchange re-check the key and the caller's
/// policy, and a name cached for one caller resolves to ENOENT/EACCES at open for another.
/// Saves one LOOKUP per encrypt/decrypt.
const ENTRY_TTL: Duration = Duration::from_secs(1);

/// The entry TTL for `node` (`default` unless it is an exchange node).
pub fn entry_ttl(node: &Node, default: Duration) -> Duration {
    if node.writes.may_exchange() {
        ENTRY_TTL
    } else {
        default
    }
}

/// One open exchange file.
#[derive(Debug, Default)]
pub struct Exchange {
    input: WriteBuf,
    /// The answer to the current input, once a read asked for it.
    output: Option<SecretBytes>,
    /// A write of the current input went over the limit: reads fail (EFBIG) until a new input.
    too_large: bool,
}

/// Exchange files are opened read-write, by a caller the policy gives `update` (both mode bits).
pub fn check_open(path: &str, node: &Node, read: bool, write: bool) -> Result<(), Error> {
    if !(read && write) {
        return Err(Error::invalid(format!(
            "{path}: an exchange file: open it read-write (O_RDWR), write the input, read the output"
        )));
    }
    if node.mode & 0o600 != 0o600 {
        return Err(Error::denied(format!(
            "{path}: the policy does not grant update here"
        )));
    }
    Ok(())
}

impl Exchange {
    /// Buffer input bytes. After a read, a write at offset 0 starts a new input.
    pub fn write(&mut self, path: &str, offset: u64, data: &[u8], limit: u64) -> Result<(), Error> {
        if self.output.is_some() || (self.too_large && offset == 0) {
            if offset != 0 {
                return Err(Error::invalid(format!(
                    "{path}: the output was read; write at offset 0 to start a new input"
                )));
            }
            *self = Self::default();
        }
        let end = offset.saturating_add(data.len() as u64);
        if self.too_large || end > limit {
            self.input = WriteBuf::default();
            self.too_large = true;
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("{path}: input exceeds the limit of {limit} bytes"),
            ));
        }
        // `end <= limit`, which fits in memory by construction of the limit.
        self.input.write_at(offset as usize, data);
        Ok(())
    }

    /// How long the input would be after writing `len` bytes at `offset` (a write at offset 0
    /// after a read, or after an input over the limit, starts a new input).
    pub fn input_len_after(&self, offset: u64, len: usize) -> u64 {
        let end = offset.saturating_add(len as u64);
        if self.output.is_some() || self.too_large {
            if offset == 0 {
                return end;
            }
            return self.input_len();
        }
        end.max(self.input_len())
    }

    /// Bytes of input held.
    pub fn input_len(&self) -> u64 {
        self.input.data.len() as u64
    }

    /// Drop the input (refused: over a per-uid bound); reads fail until a new input is
    /// written at offset 0. Answers the bytes freed.
    pub fn discard(&mut self) -> u64 {
        let freed = self.input.data.capacity() as u64;
        self.input = WriteBuf::default();
        self.output = None;
        self.too_large = true;
        freed
    }

    /// The output bytes at `offset`, running the exchange first if this input has none yet
    /// (only a read at offset 0 may run it).
    pub fn read(
        &mut self,
        path: &str,
        offset: u64,
        size: u32,
        run: impl FnOnce(SecretBytes) -> Result<SecretBytes, Error>,
    ) -> Result<&[u8], Error> {
        if self.output.is_none() {
            if self.too_large {
                return Err(Error::new(
                    ErrorKind::TooLarge,
                    format!("{path}: the input was over the limit; write a new one at offset 0"),
                ));
            }
            if offset != 0 {
                return Err(Error::invalid(format!(
                    "{path}: read the output from offset 0 (seek back after writing)"
                )));
            }
            self.output = Some(run(self.input.data.duplicate())?);
        }
        let data = self.output.as_ref().map_or(&[][..], |o| o.expose());
        let start = usize::try_from(offset)
            .unwrap_or(usize::MAX)
            .min(data.len());
        let end = start.saturating_add(size as usize).min(data.len());
        Ok(&data[start..end])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upper(input: SecretBytes) -> Result<SecretBytes, Error> {
        Ok(SecretBytes::new(input.expose().to_ascii_uppercase()))
    }

    #[test]
    fn write_read_cache_and_new_input() {
        let mut x = Exchange::default();
        x.write("p", 0, b"hel", 100).expect("w");
        x.write("p", 3, b"lo", 100).expect("w");
        let runs = std::cell::Cell::new(0);
        let run = |i: SecretBytes| {
            runs.set(runs.get() + 1);
            upper(i)
        };
        assert_eq!(x.read("p", 0, 2, run).expect("r"), b"HE");
        assert_eq!(x.read("p", 2, 100, run).expect("r"), b"LLO");
        assert_eq!(x.read("p", 0, 100, run).expect("r"), b"HELLO");
        assert_eq!(x.read("p", 9, 100, run).expect("r"), b"");
        assert_eq!(runs.get(), 1, "one exchange per input");
        // A write elsewhere than 0 after a read is refused; at 0 it starts over.
        let e = x.write("p", 5, b"x", 100).expect_err("offset");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        x.write("p", 0, b"ab", 100).expect("new input");
        assert_eq!(x.read("p", 0, 100, run).expect("r"), b"AB");
        assert_eq!(runs.get(), 2);
    }

    #[test]
    fn empty_input_and_offsets() {
        let mut x = Exchange::default();
        let e = x.read("p", 4, 10, upper).expect_err("offset first");
        assert_eq!(e.kind, ErrorKind::InvalidInput);
        assert_eq!(x.read("p", 0, 10, upper).expect("empty"), b"");
        let failing = |_: SecretBytes| Err(Error::invalid("bad"));
        let mut y = Exchange::default();
        y.write("p", 0, b"zz", 10).expect("w");
        assert!(y.read("p", 0, 10, failing).is_err());
        // A failed exchange caches nothing: the same input can run again.
        assert_eq!(y.read("p", 0, 10, upper).expect("again"), b"ZZ");
    }

    #[test]
    fn over_the_limit() {
        let mut x = Exchange::default();
        x.write("p", 0, b"1234", 8).expect("w");
        let e = x.write("p", 4, b"56789", 8).expect_err("limit");
        assert_eq!(e.kind, ErrorKind::TooLarge);
        assert_eq!(
            x.read("p", 0, 10, upper).expect_err("poisoned").kind,
            ErrorKind::TooLarge
        );
        assert!(x.write("p", 4, b"5", 8).is_err(), "still poisoned");
        x.write("p", 0, b"ok", 8).expect("new input");
        assert_eq!(x.read("p", 0, 10, upper).expect("r"), b"OK");
    }

    #[test]
    fn open_rules() {
        let n = Node::exchange();
        assert!(check_open("p", &n, true, true).is_ok());
        assert_eq!(
            check_open("p", &n, false, true).expect_err("wo").kind,
            ErrorKind::InvalidInput
        );
        assert_eq!(
            check_open("p", &n, true, false).expect_err("ro").kind,
            ErrorKind::InvalidInput
        );
        let mut masked = n;
        masked.mode = 0;
        assert_eq!(
            check_open("p", &masked, true, true).expect_err("mode").kind,
            ErrorKind::PermissionDenied
        );
    }
}
