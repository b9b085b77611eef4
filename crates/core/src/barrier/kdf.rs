//! Passphrase → master key with argon2id; parameters and salt are stored, minimums enforced.

use crate::error::{Error, ErrorKind, Result};
use rand::RngCore;
use zeroize::Zeroizing;

/// Minimum memory cost accepted (KiB): OWASP's argon2id floor.
pub const MIN_MEMORY_KIB: u32 = 19 * 1024;
/// Minimum iterations accepted.
pub const MIN_ITERATIONS: u32 = 2;

/// argon2id parameters and salt. Encoded as the plaintext seal config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KdfParams {
    pub memory_kib: u32,
    pub iterations: u32,
    pub parallelism: u32,
    pub salt: [u8; 16],
}

impl Default for KdfParams {
    fn default() -> Self {
        Self {
            memory_kib: 64 * 1024,
            iterations: 3,
            parallelism: 1,
            salt: [0; 16],
        }
    }
}

const MAGIC: &[u8; 4] = b"NSC1";

impl KdfParams {
    /// The cheapest parameters the store accepts (tests and dev mode).
    pub fn minimum() -> Self {
        Self {
            memory_kib: MIN_MEMORY_KIB,
            iterations: MIN_ITERATIONS,
            parallelism: 1,
            salt: [0; 16],
        }
    }

    pub(crate) fn with_fresh_salt(&self) -> Self {
        let mut p = self.clone();
        rand::rngs::OsRng.fill_bytes(&mut p.salt);
        p
    }

    pub fn validate(&self) -> Result<()> {
        if self.memory_kib < MIN_MEMORY_KIB || self.iterations < MIN_ITERATIONS {
            return Err(Error::invalid(format!(
                "argon2id parameters below the minimum (memory {} KiB >= {MIN_MEMORY_KIB}, iterations {} >= {MIN_ITERATIONS})",
                self.memory_kib, self.iterations
            )));
        }
        if self.parallelism == 0 || self.parallelism > 16 || self.memory_kib > 1024 * 1024 {
            return Err(Error::invalid("argon2id parameters out of range"));
        }
        Ok(())
    }

    /// Byte format: "NSC1" | u32 memory_kib | u32 iterations | u32 parallelism | salt[16] (BE).
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(32);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.memory_kib.to_be_bytes());
        out.extend_from_slice(&self.iterations.to_be_bytes());
        out.extend_from_slice(&self.parallelism.to_be_bytes());
        out.extend_from_slice(&self.salt);
        out
    }

    pub(crate) fn decode(raw: &[u8]) -> Result<Self> {
        let bad = || Error::new(ErrorKind::Integrity, "seal config is malformed");
        if raw.len() != 32 || &raw[..4] != MAGIC {
            return Err(bad());
        }
        let u = |i: usize| -> Result<u32> {
            raw.get(i..i + 4)
                .and_then(|s| <[u8; 4]>::try_from(s).ok())
                .map(u32::from_be_bytes)
                .ok_or_else(bad)
        };
        let mut salt = [0u8; 16];
        salt.copy_from_slice(&raw[16..32]);
        let p = Self {
            memory_kib: u(4)?,
            iterations: u(8)?,
            parallelism: u(12)?,
            salt,
        };
        // A tampered config that weakens the KDF is refused before any derivation.
        p.validate()
            .map_err(|e| Error::new(ErrorKind::Integrity, e.message))?;
        Ok(p)
    }

    pub(crate) fn derive(&self, passphrase: &[u8]) -> Result<Zeroizing<[u8; 32]>> {
        let params =
            argon2::Params::new(self.memory_kib, self.iterations, self.parallelism, Some(32))
                .map_err(|e| Error::invalid(format!("argon2 parameters: {e}")))?;
        let argon =
            argon2::Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
        let mut out = Zeroizing::new([0u8; 32]);
        argon
            .hash_password_into(passphrase, &self.salt, out.as_mut())
            .map_err(|e| Error::invalid(format!("argon2: {e}")))?;
        Ok(out)
    }
}
