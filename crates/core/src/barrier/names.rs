//! Deterministic encryption of path segments (SIV construction), so names never reach storage
//! in plaintext while prefix listing still works.
//!
//! For segment `s` under parent logical path `p`: `siv = HMAC-SHA256(name_mac, len(p) | p | s)[..12]`,
//! `c = AES-256-GCM(name_enc, nonce = siv, s, AAD = p)`, stored as base64url(`siv | c`).
//! Deterministic (the same name under the same parent always maps to the same string, which is
//! what lookups need), bound to its parent (the same name in two folders looks different), and
//! authenticated (a decrypted name must reproduce its SIV). It leaks only equality of names
//! within a folder, segment lengths and the tree shape. The name key never rotates (rotating it
//! would mean rewriting every key); data keys rotate by term.

use super::keyring::Keyring;
use crate::error::{Error, ErrorKind, Result};
use aes_gcm::aead::{Aead, Payload};
use aes_gcm::Nonce;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn siv(kr: &Keyring, parent: &str, seg: &str) -> [u8; 12] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(kr.name_mac.as_ref())
        .unwrap_or_else(|_| unreachable!());
    mac.update(&(parent.len() as u64).to_be_bytes());
    mac.update(parent.as_bytes());
    mac.update(seg.as_bytes());
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; 12];
    out.copy_from_slice(&full[..12]);
    out
}

fn encrypt_segment(kr: &Keyring, parent: &str, seg: &str) -> Result<String> {
    let iv = siv(kr, parent, seg);
    let ct = kr
        .name_cipher
        .encrypt(
            Nonce::from_slice(&iv),
            Payload {
                msg: seg.as_bytes(),
                aad: parent.as_bytes(),
            },
        )
        .map_err(|_| Error::io("name encryption failed"))?;
    let mut raw = iv.to_vec();
    raw.extend_from_slice(&ct);
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

fn decrypt_segment(kr: &Keyring, parent: &str, enc: &str) -> Result<String> {
    let bad = || Error::new(ErrorKind::Integrity, "a stored name failed authentication");
    let raw = URL_SAFE_NO_PAD.decode(enc).map_err(|_| bad())?;
    if raw.len() < 12 + 16 {
        return Err(bad());
    }
    let plain = kr
        .name_cipher
        .decrypt(
            Nonce::from_slice(&raw[..12]),
            Payload {
                msg: &raw[12..],
                aad: parent.as_bytes(),
            },
        )
        .map_err(|_| bad())?;
    let seg = String::from_utf8(plain).map_err(|_| bad())?;
    if siv(kr, parent, &seg) != raw[..12] {
        return Err(bad());
    }
    Ok(seg)
}

fn check_logical(path: &str) -> Result<()> {
    if path.split('/').any(str::is_empty) {
        return Err(Error::invalid(format!("bad logical path {path:?}")));
    }
    Ok(())
}

/// Encrypt every segment of a logical path ("a/b/c").
pub(crate) fn encrypt_path(kr: &Keyring, path: &str) -> Result<String> {
    check_logical(path)?;
    let mut out = String::with_capacity(path.len() * 2 + 64);
    let mut end = 0;
    for (i, seg) in path.split('/').enumerate() {
        let parent = if i == 0 { "" } else { &path[..end] };
        if i > 0 {
            out.push('/');
        }
        out.push_str(&encrypt_segment(kr, parent, seg)?);
        end = if i == 0 {
            seg.len()
        } else {
            end + 1 + seg.len()
        };
    }
    Ok(out)
}

/// Encrypt a folder prefix ("" or "a/b/"), keeping the trailing '/'.
pub(crate) fn encrypt_prefix(kr: &Keyring, prefix: &str) -> Result<String> {
    if prefix.is_empty() {
        return Ok(String::new());
    }
    let trimmed = prefix
        .strip_suffix('/')
        .ok_or_else(|| Error::invalid(format!("prefix {prefix:?} must end with '/'")))?;
    Ok(format!("{}/", encrypt_path(kr, trimmed)?))
}

/// `encrypt_path` of `parent/seg`, given `parent_enc = encrypt_path(parent)` (a cached folder):
/// one segment encrypted instead of every one.
pub(crate) fn encrypt_child(
    kr: &Keyring,
    parent: &str,
    parent_enc: &str,
    seg: &str,
) -> Result<String> {
    check_logical(parent)?;
    check_logical(seg)?;
    if seg.contains('/') {
        return Err(Error::invalid(format!("bad path segment {seg:?}")));
    }
    Ok(format!(
        "{parent_enc}/{}",
        encrypt_segment(kr, parent, seg)?
    ))
}

/// The last segment of a stored name, given its parent's logical path.
pub(crate) fn decrypt_child(kr: &Keyring, parent: &str, enc: &str) -> Result<String> {
    decrypt_segment(kr, parent, enc)
}

pub(crate) fn decrypt_path(kr: &Keyring, enc: &str) -> Result<String> {
    let mut out = String::with_capacity(enc.len() / 2);
    for (i, seg) in enc.split('/').enumerate() {
        let plain = decrypt_segment(kr, &out, seg)?;
        if i > 0 {
            out.push('/');
        }
        out.push_str(&plain);
    }
    Ok(out)
}
