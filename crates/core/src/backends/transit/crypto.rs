//! The transit ciphertext format, `nomadfs:vN:BASE64(nonce || ciphertext || tag)`, with an AAD
//! binding it to the key name and version; encryption and decryption with a key's versions.
//!
//! Owns: the format and its parser, `encrypt_with`/`decrypt_with`. Must never: echo an input
//! it refuses, or decrypt below the key's `min_decryption_version`.

use super::*;

/// AAD of a ciphertext: binds it to the key name and version, so a ciphertext cannot be moved
/// to another key or relabelled with another version.
fn aad(name: &str, version: u32) -> Vec<u8> {
    format!("nomadfs-transit\0{name}\0{version}").into_bytes()
}

/// A parsed `nomadfs:vN:BASE64` ciphertext.
pub(super) struct Ciphertext {
    version: u32,
    /// nonce || ciphertext || tag
    raw: Vec<u8>,
}

/// Parse a ciphertext (surrounding whitespace ignored). Errors say what is wrong, never echo it.
pub(super) fn parse_ciphertext(input: &[u8]) -> Result<Ciphertext> {
    let text = std::str::from_utf8(input)
        .map_err(|_| Error::invalid("ciphertext is not text (expected nomadfs:vN:BASE64)"))?
        .trim();
    if text.is_empty() {
        return Err(Error::invalid(
            "no ciphertext was written (expected nomadfs:vN:BASE64)",
        ));
    }
    let rest = text
        .strip_prefix(PREFIX)
        .ok_or_else(|| Error::invalid("not a nomadfs ciphertext (expected nomadfs:vN:BASE64)"))?;
    let (ver, b64) = rest
        .split_once(':')
        .ok_or_else(|| Error::invalid("ciphertext lacks the ':' after its version"))?;
    if ver.is_empty() || ver.len() > 10 || !ver.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Error::invalid("ciphertext version is not a number"));
    }
    let version: u32 = ver
        .parse()
        .map_err(|_| Error::invalid("ciphertext version is out of range"))?;
    if version == 0 {
        return Err(Error::invalid("ciphertext version 0 does not exist"));
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| Error::invalid("ciphertext is not valid base64"))?;
    if raw.len() < NONCE + TAG {
        return Err(Error::invalid("ciphertext is truncated"));
    }
    Ok(Ciphertext { version, raw })
}

/// The largest ciphertext text a plaintext of `limit` bytes can produce, plus slack.
pub(super) fn max_ciphertext_len(limit: usize) -> usize {
    let raw = limit.saturating_add(NONCE + TAG);
    raw.div_ceil(3)
        .saturating_mul(4)
        .saturating_add(PREFIX.len() + 16)
}

impl Transit {
    pub(super) fn encrypt_with(
        &self,
        name: &str,
        k: &Loaded,
        plaintext: &[u8],
    ) -> Result<SecretBytes> {
        let limit = self.services.limits.max_value_size;
        if plaintext.len() > limit {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!(
                    "plaintext of {} bytes exceeds the limit of {limit} bytes",
                    plaintext.len()
                ),
            ));
        }
        let version = k.meta.latest_version;
        let cipher = self.cipher_of(name, k, version)?;
        let mut nonce = [0u8; NONCE];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let ad = aad(name, version);
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: plaintext,
                    aad: &ad,
                },
            )
            .map_err(|_| Error::io("encryption failed"))?;
        let mut raw = Vec::with_capacity(NONCE + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        let b64 = base64::engine::general_purpose::STANDARD.encode(&raw);
        Ok(SecretBytes::from(format!("{PREFIX}{version}:{b64}")))
    }

    pub(super) fn decrypt_with(&self, name: &str, k: &Loaded, input: &[u8]) -> Result<SecretBytes> {
        if input.len() > max_ciphertext_len(self.services.limits.max_value_size) {
            return Err(Error::new(
                ErrorKind::TooLarge,
                format!("ciphertext of {} bytes is over the limit", input.len()),
            ));
        }
        let meta = &k.meta;
        let c = parse_ciphertext(input)?;
        if c.version > meta.latest_version {
            return Err(Error::invalid(format!(
                "keys/{name} has no version {} (latest is {})",
                c.version, meta.latest_version
            )));
        }
        if c.version < meta.min_decryption_version {
            return Err(Error::not_permitted(format!(
                "ciphertext version {} is below keys/{name}'s min_decryption_version {}",
                c.version, meta.min_decryption_version
            )));
        }
        let cipher = self.cipher_of(name, k, c.version)?;
        let ad = aad(name, c.version);
        let (nonce, body) = c.raw.split_at(NONCE);
        cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: body, aad: &ad })
            .map(SecretBytes::new)
            .map_err(|_| {
                Error::invalid(format!(
                    "ciphertext failed authentication with keys/{name} version {} (tampered, or made with another key)",
                    c.version
                ))
            })
    }
}
