//! The entry format: `0x01 | term u32 BE | nonce[12] | AES-256-GCM ciphertext+tag`,
//! AAD = the 17 header bytes followed by the logical path (see docs/FORMAT.md).

use super::keyring::Keyring;
use crate::error::{Error, ErrorKind, Result};
use crate::secret::SecretBytes;
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Nonce;
use rand::RngCore;

const VERSION: u8 = 1;
const HEADER: usize = 1 + 4 + 12;
const TAG: usize = 16;

pub(crate) fn seal(kr: &Keyring, path: &str, value: &[u8]) -> Result<Vec<u8>> {
    let (term, cipher) = kr.active_cipher();
    let mut header = [0u8; HEADER];
    header[0] = VERSION;
    header[1..5].copy_from_slice(&term.to_be_bytes());
    rand::rngs::OsRng.fill_bytes(&mut header[5..]);
    let mut aad = Vec::with_capacity(HEADER + path.len());
    aad.extend_from_slice(&header);
    aad.extend_from_slice(path.as_bytes());
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&header[5..]),
            Payload {
                msg: value,
                aad: &aad,
            },
        )
        .map_err(|_| Error::io("encryption failed"))?;
    let mut out = Vec::with_capacity(HEADER + ct.len());
    out.extend_from_slice(&header);
    out.extend_from_slice(&ct);
    Ok(out)
}

pub(crate) fn open(kr: &Keyring, path: &str, raw: &[u8]) -> Result<SecretBytes> {
    let fail = |why: &str| Error::new(ErrorKind::Integrity, format!("{path}: {why}"));
    if raw.len() < HEADER + TAG {
        return Err(fail("entry is truncated"));
    }
    if raw[0] != VERSION {
        return Err(fail("unknown entry version"));
    }
    let term = u32::from_be_bytes([raw[1], raw[2], raw[3], raw[4]]);
    let cipher = kr.cipher(term).ok_or_else(|| fail("unknown key term"))?;
    let mut aad = Vec::with_capacity(HEADER + path.len());
    aad.extend_from_slice(&raw[..HEADER]);
    aad.extend_from_slice(path.as_bytes());
    cipher
        .decrypt(
            Nonce::from_slice(&raw[5..HEADER]),
            Payload {
                msg: &raw[HEADER..],
                aad: &aad,
            },
        )
        .map(SecretBytes::new)
        .map_err(|_| fail("entry failed authentication"))
}

/// The key term an entry was sealed with (None: too short to say).
pub(crate) fn term_of(raw: &[u8]) -> Option<u32> {
    let b = raw.get(1..5)?;
    Some(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

/// The plaintext length an entry of `raw.len()` bytes holds.
pub(crate) fn plaintext_len(raw: &[u8]) -> usize {
    raw.len().saturating_sub(HEADER + TAG)
}
