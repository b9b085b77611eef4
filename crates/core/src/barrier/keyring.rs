//! The keyring: term keys (data encryption), the name key and the audit key, wrapped by the
//! passphrase-derived master key. Lives only in memory while unsealed; zeroized on drop.

use crate::error::{Error, ErrorKind, Result};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use hmac::{Hmac, Mac};
use rand::RngCore;
use sha2::Sha256;
use std::collections::BTreeMap;
use zeroize::Zeroizing;

type Key = Zeroizing<[u8; 32]>;
const MAGIC: &[u8; 4] = b"NKR1";
const WRAP_AAD: &[u8] = b"nomadfs keyring v1";

fn random_key() -> Key {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng.fill_bytes(k.as_mut());
    k
}

fn derive(key: &[u8; 32], label: &[u8]) -> Key {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).unwrap_or_else(|_| unreachable!());
    mac.update(label);
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&mac.finalize().into_bytes());
    out
}

pub(crate) struct Term {
    created: u64,
    key: Key,
    cipher: Aes256Gcm,
}

pub(crate) struct Keyring {
    master: Key,
    active: u32,
    terms: BTreeMap<u32, Term>,
    name_key: Key,
    audit_key: Key,
    pub(crate) name_mac: Key,
    pub(crate) name_cipher: Aes256Gcm,
}

impl Keyring {
    fn build(
        master: Key,
        active: u32,
        terms: Vec<(u32, u64, Key)>,
        name_key: Key,
        audit_key: Key,
    ) -> Self {
        let terms = terms
            .into_iter()
            .map(|(t, created, key)| {
                let cipher = Aes256Gcm::new(key.as_ref().into());
                (
                    t,
                    Term {
                        created,
                        key,
                        cipher,
                    },
                )
            })
            .collect();
        let name_mac = derive(&name_key, b"nomadfs name siv mac");
        let name_enc = derive(&name_key, b"nomadfs name siv enc");
        let name_cipher = Aes256Gcm::new(name_enc.as_ref().into());
        Self {
            master,
            active,
            terms,
            name_key,
            audit_key,
            name_mac,
            name_cipher,
        }
    }

    pub(crate) fn generate_with(master: Key) -> Self {
        Self::build(
            master,
            1,
            vec![(1, now(), random_key())],
            random_key(),
            random_key(),
        )
    }

    /// A copy of the master key (to unwrap a newer stored keyring with it).
    pub(crate) fn master(&self) -> Key {
        Zeroizing::new(*self.master)
    }

    pub(crate) fn active_term(&self) -> u32 {
        self.active
    }

    pub(crate) fn cipher(&self, term: u32) -> Option<&Aes256Gcm> {
        self.terms.get(&term).map(|t| &t.cipher)
    }

    pub(crate) fn active_cipher(&self) -> (u32, &Aes256Gcm) {
        match self.terms.get(&self.active) {
            Some(t) => (self.active, &t.cipher),
            None => unreachable!("keyring invariant: the active term exists"),
        }
    }

    pub(crate) fn audit_hmac(&self, data: &[u8]) -> String {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(self.audit_key.as_ref())
            .unwrap_or_else(|_| unreachable!());
        mac.update(data);
        let bytes = mac.finalize().into_bytes();
        let mut s = String::with_capacity(12 + 64);
        s.push_str("hmac-sha256:");
        for b in bytes {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// A copy with one more term, active.
    pub(crate) fn rotated(&self) -> Self {
        let mut terms: Vec<(u32, u64, Key)> = self
            .terms
            .iter()
            .map(|(t, term)| (*t, term.created, Zeroizing::new(*term.key)))
            .collect();
        let next = self.terms.keys().max().copied().unwrap_or(0) + 1;
        terms.push((next, now(), random_key()));
        Self::build(
            Zeroizing::new(*self.master),
            next,
            terms,
            Zeroizing::new(*self.name_key),
            Zeroizing::new(*self.audit_key),
        )
    }

    fn encode(&self) -> Zeroizing<Vec<u8>> {
        let mut out = Zeroizing::new(Vec::with_capacity(80 + self.terms.len() * 44));
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.active.to_be_bytes());
        out.extend_from_slice(self.name_key.as_ref());
        out.extend_from_slice(self.audit_key.as_ref());
        out.extend_from_slice(&(self.terms.len() as u32).to_be_bytes());
        for (t, term) in &self.terms {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&term.created.to_be_bytes());
            out.extend_from_slice(term.key.as_ref());
        }
        out
    }

    fn decode(master: Key, raw: &[u8]) -> Result<Self> {
        let bad = || Error::new(ErrorKind::Integrity, "keyring is malformed");
        let mut r = Reader { raw, pos: 0 };
        if r.take(4).ok_or_else(bad)? != MAGIC {
            return Err(bad());
        }
        let active = r.u32().ok_or_else(bad)?;
        let name_key = r.key().ok_or_else(bad)?;
        let audit_key = r.key().ok_or_else(bad)?;
        let n = r.u32().ok_or_else(bad)?;
        if n == 0 || n > 1_000_000 {
            return Err(bad());
        }
        let mut terms = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let t = r.u32().ok_or_else(bad)?;
            let created = r.u64().ok_or_else(bad)?;
            let key = r.key().ok_or_else(bad)?;
            terms.push((t, created, key));
        }
        if r.pos != raw.len() || !terms.iter().any(|(t, _, _)| *t == active) {
            return Err(bad());
        }
        Ok(Self::build(master, active, terms, name_key, audit_key))
    }

    /// nonce[12] | AES-256-GCM(master, keyring bytes, AAD = label | seal config).
    pub(crate) fn wrap(&self, seal_config: &[u8]) -> Result<Vec<u8>> {
        let cipher = Aes256Gcm::new(self.master.as_ref().into());
        let mut nonce = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        let aad = [WRAP_AAD, seal_config].concat();
        let plain = self.encode();
        let ct = cipher
            .encrypt(
                Nonce::from_slice(&nonce),
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .map_err(|_| Error::io("keyring encryption failed"))?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// `Err(None)` means authentication failed: a wrong passphrase (or a tampered keyring).
    pub(crate) fn unwrap(
        master: Key,
        seal_config: &[u8],
        wrapped: &[u8],
    ) -> Result<Self, Option<Error>> {
        if wrapped.len() < 12 + 16 {
            return Err(Some(Error::new(
                ErrorKind::Integrity,
                "keyring is truncated",
            )));
        }
        let cipher = Aes256Gcm::new(master.as_ref().into());
        let aad = [WRAP_AAD, seal_config].concat();
        let plain = Zeroizing::new(
            cipher
                .decrypt(
                    Nonce::from_slice(&wrapped[..12]),
                    Payload {
                        msg: &wrapped[12..],
                        aad: &aad,
                    },
                )
                .map_err(|_| None)?,
        );
        Self::decode(master, &plain).map_err(Some)
    }
}

struct Reader<'a> {
    raw: &'a [u8],
    pos: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.raw.get(self.pos..self.pos.checked_add(n)?)?;
        self.pos += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_be_bytes(self.take(8)?.try_into().ok()?))
    }
    fn key(&mut self) -> Option<Key> {
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(self.take(32)?);
        Some(k)
    }
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
