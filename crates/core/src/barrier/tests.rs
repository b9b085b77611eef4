use super::*;
use crate::storage::memory::MemoryStorage;

fn barrier() -> (Arc<MemoryStorage>, Barrier) {
    let s = Arc::new(MemoryStorage::new());
    let b = Barrier::new(s.clone(), KdfParams::minimum());
    b.unseal(b"correct horse").expect("init");
    (s, b)
}

#[test]
fn roundtrip_and_names_are_encrypted() {
    let (s, b) = barrier();
    b.put("logical/m1/f/app/db-pass", b"CANARY-VALUE-123")
        .expect("put");
    let got = b
        .get("logical/m1/f/app/db-pass")
        .expect("get")
        .expect("some");
    assert_eq!(got.expose(), b"CANARY-VALUE-123");
    for (k, v) in s.dump() {
        // No segment is a plaintext name (a random ciphertext segment may contain "app").
        assert!(
            !k.contains("db-pass") && !k.split('/').any(|seg| seg == "app" || seg == "f"),
            "name leaked in {k}"
        );
        let hay = String::from_utf8_lossy(&v);
        assert!(!hay.contains("CANARY"), "value leaked");
    }
    assert_eq!(
        b.list("logical/m1/f/").expect("list"),
        vec!["logical/m1/f/app/db-pass"]
    );
    assert_eq!(b.size("logical/m1/f/app/db-pass").expect("size"), Some(16));
}

#[test]
fn children_of_encrypted_names() {
    let (s, b) = barrier();
    for p in [
        "m/a",
        "m/b/1",
        "m/b/2/deep",
        "m/b/2/deeper/x",
        "m/c",
        "m/c/x",
        "n/other",
    ] {
        b.put(p, b"v").expect("put");
    }
    let mut got = b.list_children("m/").expect("children");
    got.sort();
    assert_eq!(got, vec!["m/a", "m/b/", "m/c", "m/c/"]);
    let mut got = b.list_children("m/b/").expect("children");
    got.sort();
    assert_eq!(got, vec!["m/b/1", "m/b/2/"]);
    assert!(b.list_children("m/a/").expect("children").is_empty());
    let mut top = b.list_children("").expect("children");
    top.sort();
    assert_eq!(top, vec!["m/", "n/"]);
    // what the store was asked for and answered are encrypted names only
    let raw = s.list_children(ENCRYPTED_PREFIX).expect("raw children");
    assert_eq!(raw.len(), 2);
    for k in &raw {
        let seg = k[ENCRYPTED_PREFIX.len()..]
            .strip_suffix('/')
            .expect("a folder");
        assert!(
            seg.len() >= 38 && !seg.contains('/'),
            "not an encrypted name: {k}"
        );
    }
}

#[test]
fn every_bit_flip_fails_authentication() {
    let (s, b) = barrier();
    b.put("p/x", b"value").expect("put");
    let (key, raw) = s
        .dump()
        .into_iter()
        .find(|(k, _)| k.starts_with(ENCRYPTED_PREFIX))
        .expect("entry");
    for i in 0..raw.len() * 8 {
        let mut bad = raw.clone();
        bad[i / 8] ^= 1 << (i % 8);
        s.put(&key, &bad).expect("tamper");
        let r = b.get("p/x");
        assert!(
            matches!(&r, Err(e) if e.kind == ErrorKind::Integrity),
            "bit {i} was not detected"
        );
    }
    // truncated and extended
    s.put(&key, &raw[..raw.len() - 1]).expect("truncate");
    assert!(b.get("p/x").is_err());
    let mut longer = raw.clone();
    longer.push(0);
    s.put(&key, &longer).expect("extend");
    assert!(b.get("p/x").is_err());
}

#[test]
fn ciphertext_moved_to_another_path_fails() {
    let (s, b) = barrier();
    b.put("p/a", b"A").expect("put");
    b.put("p/b", b"B").expect("put");
    let kr = b.keyring().expect("kr");
    let ka = b.storage_key(&kr, "p/a").expect("key");
    let kb = b.storage_key(&kr, "p/b").expect("key");
    let raw_a = s.get(&ka).expect("get").expect("a");
    s.put(&kb, &raw_a).expect("swap");
    assert_eq!(
        b.get("p/b").err().map(|e| e.kind),
        Some(ErrorKind::Integrity)
    );
}

#[test]
fn rotate_keeps_old_entries_readable_and_survives_restart() {
    let (s, b) = barrier();
    b.put("p/old", b"old").expect("put");
    assert_eq!(b.rotate().expect("rotate"), 2);
    b.put("p/new", b"new").expect("put");
    assert_eq!(b.get("p/old").expect("get").expect("old").expose(), b"old");
    let again = Barrier::new(s, KdfParams::minimum());
    again.unseal(b"correct horse").expect("unseal");
    assert_eq!(again.active_term().expect("term"), 2);
    assert_eq!(
        again.get("p/old").expect("get").expect("old").expose(),
        b"old"
    );
    assert_eq!(
        again.get("p/new").expect("get").expect("new").expose(),
        b"new"
    );
}

#[test]
fn wrong_passphrase_is_refused_and_changes_nothing() {
    let (s, b) = barrier();
    b.put("p/x", b"1").expect("put");
    let before = s.dump();
    let other = Barrier::new(s.clone(), KdfParams::minimum());
    assert!(matches!(
        other.unseal(b"wrong"),
        Err(UnsealError::WrongPassphrase)
    ));
    assert!(other.is_sealed());
    assert_eq!(s.dump(), before);
}

#[test]
fn sealed_barrier_refuses_everything() {
    let (_s, b) = barrier();
    b.seal();
    assert_eq!(b.get("p/x").err().map(|e| e.kind), Some(ErrorKind::Sealed));
    assert_eq!(
        b.put("p/x", b"v").err().map(|e| e.kind),
        Some(ErrorKind::Sealed)
    );
}

#[test]
fn weak_kdf_parameters_are_refused() {
    let mut p = KdfParams::minimum();
    p.memory_kib = 1024;
    assert!(p.validate().is_err());
    // A tampered seal config that weakens the KDF is refused at unseal.
    let (s, _b) = barrier();
    let mut cfg = s.get(SEAL_CONFIG_KEY).expect("get").expect("cfg");
    cfg[4..8].copy_from_slice(&1024u32.to_be_bytes());
    s.put(SEAL_CONFIG_KEY, &cfg).expect("tamper");
    let b2 = Barrier::new(s, KdfParams::minimum());
    assert!(b2.unseal(b"correct horse").is_err());
}

#[test]
fn same_name_in_two_folders_encrypts_differently() {
    let (s, b) = barrier();
    b.put("a/x", b"1").expect("put");
    b.put("b/x", b"2").expect("put");
    let keys: Vec<String> = s
        .dump()
        .into_iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with(ENCRYPTED_PREFIX))
        .collect();
    let leaves: Vec<&str> = keys.iter().filter_map(|k| k.rsplit('/').next()).collect();
    assert_eq!(leaves.len(), 2);
    assert_ne!(leaves[0], leaves[1]);
}

/// The folder-cached key of a path is the key `encrypt_path` gives (the stored layout), and
/// listings decrypted folder-by-folder give back every path.
#[test]
fn cached_folder_keys_match_the_full_encryption() {
    let (s, b) = barrier();
    let kr = b.keyring().expect("unsealed");
    let paths = [
        "core/leases/pg/creds/a/1",
        "core/leases/pg/creds/a/2",
        "core/leases/pg/creds/ab/3",
        "core/leases/pg/creds/a-b/4",
        "core/leases/x",
        "top",
    ];
    for p in paths {
        let want = format!(
            "{ENCRYPTED_PREFIX}{}",
            names::encrypt_path(&kr, p).expect("enc")
        );
        assert_eq!(b.storage_key(&kr, p).expect("key"), want, "{p}");
        b.put(p, p.as_bytes()).expect("put");
    }
    // A second barrier over the same store, cold caches: reads what the first wrote.
    let b2 = Barrier::new(s, KdfParams::minimum());
    b2.unseal(b"correct horse").expect("unseal");
    for p in paths {
        assert_eq!(
            b2.get(p).expect("get").expect("some").expose(),
            p.as_bytes()
        );
    }
    let mut listed = b2.list("core/leases/").expect("list");
    listed.sort();
    let mut want: Vec<&str> = paths
        .iter()
        .copied()
        .filter(|p| p.starts_with("core/leases/"))
        .collect();
    want.sort();
    assert_eq!(listed, want);
    assert!(b.storage_key(&kr, "a//b").is_err());
    assert!(b.storage_key(&kr, "a/b/").is_err());
}
