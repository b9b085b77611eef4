//! The barrier's decoders fed arbitrary bytes: each answers an error (or, for well-formed input,
//! a value), never a panic. Inside the barrier so they reach the decoders directly, without an
//! argon2id derivation per case. More cases: `PROPTEST_CASES=1000000 cargo test -p
//! nomadfs-core never_panics --release` (see fuzz/README.md).

use super::keyring::Keyring;
use super::*;
use crate::storage::memory::MemoryStorage;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use proptest::prelude::*;
use zeroize::Zeroizing;

const MASTER: [u8; 32] = [7; 32];
/// Mirrors keyring.rs's WRAP_AAD: wrapping arbitrary plaintext reaches the keyring parser.
const WRAP_AAD: &[u8] = b"nomadfs keyring v1";

fn config() -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

fn keyring() -> Keyring {
    // Three terms, so term numbers 1..=3 reach decryption.
    Keyring::generate_with(Zeroizing::new(MASTER))
        .rotated()
        .rotated()
}

fn wrap_plain(config: &[u8], nonce: [u8; 12], plain: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new((&MASTER).into());
    let aad = [WRAP_AAD, config].concat();
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plain,
                aad: &aad,
            },
        )
        .expect("encrypt");
    let mut out = nonce.to_vec();
    out.extend_from_slice(&ct);
    out
}

/// Bytes that look like an entry header (version 1, a real term) more often than chance.
fn entry_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..96),
        (0u32..5, prop::collection::vec(any::<u8>(), 0..96)).prop_map(|(term, rest)| {
            let mut v = vec![1];
            v.extend_from_slice(&term.to_be_bytes());
            v.extend_from_slice(&rest);
            v
        }),
    ]
}

/// Keyring plaintexts: arbitrary, or the real layout with random counts and lengths.
fn keyring_plain() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..200),
        (
            any::<u32>(),
            prop_oneof![
                Just(0u32),
                Just(1),
                Just(2),
                Just(3),
                Just(u32::MAX),
                any::<u32>()
            ],
            prop::collection::vec((0u32..4, any::<u64>()), 0..4),
            0usize..4,
        )
            .prop_map(|(active, n, terms, cut)| {
                let mut v = b"NKR1".to_vec();
                v.extend_from_slice(&(active % 5).to_be_bytes());
                v.extend_from_slice(&[1; 64]);
                v.extend_from_slice(&n.to_be_bytes());
                for (t, created) in terms {
                    v.extend_from_slice(&t.to_be_bytes());
                    v.extend_from_slice(&created.to_be_bytes());
                    v.extend_from_slice(&[2; 32]);
                }
                let keep = v.len().saturating_sub(cut * 7);
                v.truncate(keep);
                v
            }),
    ]
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn entry_open_never_panics(raw in entry_bytes(), path in ".{0,12}") {
        let kr = keyring();
        let r = entry::open(&kr, &path, &raw);
        // Only a sealed entry authenticates; random bytes never do.
        prop_assert!(r.is_err());
        let _ = entry::plaintext_len(&raw);
    }

    #[test]
    fn entry_edits_never_panic_and_never_authenticate(
        value in prop::collection::vec(any::<u8>(), 0..32),
        at in any::<prop::sample::Index>(),
        xor in 1u8..=255,
        cut in 0usize..4,
    ) {
        let kr = keyring();
        let sealed = entry::seal(&kr, "p/x", &value).expect("seal");
        let opened = entry::open(&kr, "p/x", &sealed).expect("open");
        prop_assert_eq!(opened.expose(), &value[..]);
        prop_assert!(entry::open(&kr, "p/y", &sealed).is_err());
        let mut bad = sealed.clone();
        bad[at.index(sealed.len())] ^= xor;
        prop_assert!(entry::open(&kr, "p/x", &bad).is_err());
        let short = &sealed[..sealed.len().saturating_sub(cut + 1)];
        prop_assert!(entry::open(&kr, "p/x", short).is_err());
    }

    #[test]
    fn names_decrypt_path_never_panics(enc in prop_oneof![
        ".*",
        "[A-Za-z0-9_-]{0,60}(/[A-Za-z0-9_-]{0,60}){0,3}",
        "[A-Za-z0-9_=+/-]{36,40}",
    ]) {
        let kr = keyring();
        // Arbitrary strings never authenticate as names.
        prop_assert!(names::decrypt_path(&kr, &enc).is_err());
    }

    #[test]
    fn names_roundtrip(path in "[^/\\x00]{1,8}(/[^/]{1,8}){0,3}") {
        let kr = keyring();
        let enc = names::encrypt_path(&kr, &path).expect("encrypt");
        prop_assert_eq!(names::decrypt_path(&kr, &enc).expect("decrypt"), path);
    }

    #[test]
    fn kdf_decode_never_panics(raw in prop_oneof![
        prop::collection::vec(any::<u8>(), 0..40),
        prop::collection::vec(any::<u8>(), 28).prop_map(|v| [b"NSC1".to_vec(), v].concat()),
        (0u32..(5 << 20), 0u32..6, 0u32..20, any::<[u8; 16]>()).prop_map(|(m, i, p, salt)| {
            KdfParams { memory_kib: m, iterations: i, parallelism: p, salt }.encode()
        }),
    ]) {
        if let Ok(p) = KdfParams::decode(&raw) {
            prop_assert!(p.validate().is_ok());
            prop_assert_eq!(p.encode(), raw);
        }
    }

    #[test]
    fn keyring_unwrap_never_panics(
        plain in keyring_plain(),
        nonce in any::<[u8; 12]>(),
        garbage in prop::collection::vec(any::<u8>(), 0..80),
    ) {
        let config = KdfParams::minimum().encode();
        // Unauthenticated garbage: "wrong passphrase", never a keyring.
        prop_assert!(Keyring::unwrap(Zeroizing::new(MASTER), &config, &garbage).is_err());
        // Authenticated but arbitrary plaintext: reaches the keyring parser.
        let wrapped = wrap_plain(&config, nonce, &plain);
        if let Ok(kr) = Keyring::unwrap(Zeroizing::new(MASTER), &config, &wrapped) {
            // A keyring that parses is usable: its active term encrypts.
            let sealed = entry::seal(&kr, "p", b"v").expect("seal");
            let opened = entry::open(&kr, "p", &sealed).expect("open");
            prop_assert_eq!(opened.expose(), b"v");
        }
    }

    #[test]
    fn unseal_garbage_never_panics(
        config in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..40),
            prop::collection::vec(any::<u8>(), 28).prop_map(|v| [b"NSC1".to_vec(), v].concat()),
        ],
        keyring in prop::option::of(prop::collection::vec(any::<u8>(), 0..120)),
    ) {
        // Configs that would decode are skipped: they cost an argon2id derivation (up to the
        // 4 GiB the decoder accepts). `unseal_valid_config_garbage_keyring_never_panics`
        // covers that path.
        prop_assume!(KdfParams::decode(&config).is_err());
        let s = Arc::new(MemoryStorage::new());
        s.put("core-seal-config", &config).expect("put");
        if let Some(k) = &keyring {
            s.put("core-keyring", k).expect("put");
        }
        let b = Barrier::new(s, KdfParams::minimum());
        prop_assert!(b.unseal(b"pass").is_err());
        prop_assert!(b.is_sealed());
    }
}

proptest! {
    // One argon2id derivation (19 MiB) per case.
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn unseal_valid_config_garbage_keyring_never_panics(
        keyring in prop::option::of(prop::collection::vec(any::<u8>(), 0..120)),
    ) {
        let s = Arc::new(MemoryStorage::new());
        s.put("core-seal-config", &KdfParams::minimum().encode()).expect("put");
        if let Some(k) = &keyring {
            s.put("core-keyring", k).expect("put");
        }
        let b = Barrier::new(s, KdfParams::minimum());
        prop_assert!(b.unseal(b"pass").is_err());
        prop_assert!(b.is_sealed());
    }
}

#[test]
fn barrier_get_and_list_garbage_never_panics() {
    // The same decoders through the public path: garbage stored under `v/` keys.
    let s = Arc::new(MemoryStorage::new());
    let b = Barrier::new(s.clone(), KdfParams::minimum());
    b.unseal(b"pass").expect("init");
    b.put("p/x", b"value").expect("put");
    let (key, _) = s
        .dump()
        .into_iter()
        .find(|(k, _)| k.starts_with(ENCRYPTED_PREFIX))
        .expect("entry");
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(
            &(
                entry_bytes(),
                "[A-Za-z0-9_-]{0,50}(/[A-Za-z0-9_-]{0,50}){0,2}|.{0,20}",
            ),
            |(raw, name)| {
                s.put(&key, &raw).expect("put");
                prop_assert!(b.get("p/x").is_err());
                let garbage_key = format!("{ENCRYPTED_PREFIX}{name}");
                s.put(&garbage_key, b"x").expect("put");
                prop_assert!(b.list("").is_err());
                s.delete(&garbage_key).expect("delete");
                Ok(())
            },
        )
        .expect("no case failed");
}
