//! The transit backend through the engine (no FUSE), with a memory store.
use super::crypto::{max_ciphertext_len, parse_ciphertext};
use super::*;
use crate::barrier::KdfParams;
use crate::caller::Caller;
use crate::engine::{Engine, EngineConfig};
use crate::mounts::view_for;
use crate::policy::PolicyDoc;
use crate::route::Ops;
use crate::storage::memory::MemoryStorage;
use std::sync::Arc;

fn engine() -> (std::sync::Arc<Engine>, View) {
    let s = Arc::new(MemoryStorage::new());
    let e = Engine::new(
        s,
        EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e.unseal(b"pass").expect("unseal");
    let m = e.mount("transit", "transit", "").expect("mount");
    let view = view_for(e.barrier(), &m.uuid);
    (e, view)
}

fn root() -> Caller {
    Caller::new(0, 0, 1)
}

fn kind<T>(r: Result<T>) -> Option<ErrorKind> {
    r.err().map(|e| e.kind)
}

fn enc(e: &Engine, key: &str, plain: &[u8]) -> Result<String> {
    e.exchange(
        &root(),
        &format!("transit/encrypt/{key}"),
        SecretBytes::from_slice(plain),
    )
    .map(|c| String::from_utf8(c.expose().to_vec()).expect("utf8"))
}

fn dec(e: &Engine, key: &str, ct: &str) -> Result<Vec<u8>> {
    e.exchange(
        &root(),
        &format!("transit/decrypt/{key}"),
        SecretBytes::from_slice(ct.as_bytes()),
    )
    .map(|p| p.expose().to_vec())
}

fn ctl(e: &Engine, key: &str, cmd: &str) -> Result<()> {
    e.write(
        &root(),
        &format!("transit/keys/{key}/ctl"),
        SecretBytes::from_slice(cmd.as_bytes()),
    )
}

fn info(e: &Engine, key: &str) -> serde_json::Value {
    let raw = e
        .read(&root(), &format!("transit/keys/{key}/info"))
        .expect("info");
    serde_json::from_slice(raw.expose()).expect("json")
}

#[test]
fn create_list_and_stat() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/orders").expect("mkdir");
    assert_eq!(
        kind(e.mkdir(&root(), "transit/keys/orders")),
        Some(ErrorKind::AlreadyExists)
    );
    assert_eq!(
        kind(e.mkdir(&root(), "transit/keys/.hidden")),
        Some(ErrorKind::InvalidInput)
    );
    e.mkdir(&root(), "transit/keys/billing").expect("mkdir");
    let names: Vec<String> = e
        .list(&root(), "transit/keys")
        .expect("ls")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(names, vec!["billing", "orders"]);
    let enc_names: Vec<String> = e
        .list(&root(), "transit/encrypt")
        .expect("ls")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert_eq!(enc_names, vec!["billing", "orders"]);
    let node = e.stat(&root(), "transit/encrypt/orders").expect("stat");
    assert!(node.writes == crate::backend::Writes::Exchange && node.mode == 0o600);
    assert!(!e
        .stat(&root(), "transit/keys/orders/info")
        .expect("stat")
        .writes
        .may_exchange());
    assert_eq!(
        kind(e.stat(&root(), "transit/encrypt/nope")),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(e.stat(&root(), "transit/keys/nope/info")),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn round_trip_binary_empty_and_large() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    let mut big = vec![0u8; 1 << 20];
    rand::rngs::OsRng.fill_bytes(&mut big);
    for plain in [&b""[..], &b"\x00\xff\x01binary\n"[..], &big[..]] {
        let ct = enc(&e, "k", plain).expect("encrypt");
        assert!(ct.starts_with("nomadfs:v1:"), "prefix");
        assert_eq!(dec(&e, "k", &ct).expect("decrypt"), plain);
        // Surrounding whitespace (echo's newline) is ignored.
        assert_eq!(dec(&e, "k", &format!("{ct}\n")).expect("decrypt"), plain);
    }
    // Two encryptions of one plaintext differ (random nonce).
    assert_ne!(
        enc(&e, "k", b"same").expect("a"),
        enc(&e, "k", b"same").expect("b")
    );
    let over = vec![0u8; (1 << 20) + 1];
    assert_eq!(kind(enc(&e, "k", &over)), Some(ErrorKind::TooLarge));
}

#[test]
fn unknown_key_is_enoent() {
    let (e, _) = engine();
    assert_eq!(kind(enc(&e, "nope", b"x")), Some(ErrorKind::NotFound));
    assert_eq!(
        kind(dec(&e, "nope", "nomadfs:v1:AAAA")),
        Some(ErrorKind::NotFound)
    );
    assert_eq!(
        kind(e.create(&root(), "transit/encrypt/nope")),
        Some(ErrorKind::NotFound)
    );
}

#[test]
fn rotate_min_decryption_version_and_rewrap() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    let v1 = enc(&e, "k", b"old secret").expect("v1");
    ctl(&e, "k", "rotate\n").expect("rotate");
    let v2 = enc(&e, "k", b"new secret").expect("v2");
    assert!(v2.starts_with("nomadfs:v2:"));
    assert_eq!(dec(&e, "k", &v1).expect("v1 still decrypts"), b"old secret");
    let rewrapped = e
        .exchange(
            &root(),
            "transit/rewrap/k",
            SecretBytes::from_slice(v1.as_bytes()),
        )
        .expect("rewrap");
    let rewrapped = String::from_utf8(rewrapped.expose().to_vec()).expect("utf8");
    assert!(rewrapped.starts_with("nomadfs:v2:"));
    assert_eq!(dec(&e, "k", &rewrapped).expect("dec"), b"old secret");
    ctl(&e, "k", "min_decryption_version=2").expect("min");
    assert_eq!(kind(dec(&e, "k", &v1)), Some(ErrorKind::NotPermitted));
    assert_eq!(
        kind(e.exchange(
            &root(),
            "transit/rewrap/k",
            SecretBytes::from_slice(v1.as_bytes())
        )),
        Some(ErrorKind::NotPermitted)
    );
    assert_eq!(dec(&e, "k", &v2).expect("v2"), b"new secret");
    let i = info(&e, "k");
    assert_eq!(i["latest_version"], 2);
    assert_eq!(i["min_decryption_version"], 2);
    assert_eq!(i["type"], "aes256-gcm96");
    assert!(i["versions"]["1"]["created"].is_string());
    assert!(i["versions"]["2"]["created"].is_string());
    // A version from the future is malformed input.
    let v9 = v2.replacen("nomadfs:v2:", "nomadfs:v9:", 1);
    assert_eq!(kind(dec(&e, "k", &v9)), Some(ErrorKind::InvalidInput));
}

#[test]
fn bad_control_commands_change_nothing() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    for bad in [
        "",
        "spin",
        "rotate=3",
        "min_decryption_version=0",
        "min_decryption_version=2",
        "min_decryption_version=x",
        "deletion_allowed=yes",
        "rotate\nbogus",
    ] {
        assert_eq!(
            kind(ctl(&e, "k", bad)),
            Some(ErrorKind::InvalidInput),
            "{bad:?}"
        );
    }
    let i = info(&e, "k");
    assert_eq!(i["latest_version"], 1, "a failed batch rotated nothing");
    assert_eq!(i["deletion_allowed"], false);
    assert_eq!(kind(ctl(&e, "nope", "rotate")), Some(ErrorKind::NotFound));
    assert_eq!(
        kind(e.read(&root(), "transit/keys/k/ctl")),
        Some(ErrorKind::PermissionDenied)
    );
}

#[test]
fn deletion_guard() {
    let (e, view) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    ctl(&e, "k", "rotate").expect("rotate");
    assert_eq!(
        kind(e.rmdir(&root(), "transit/keys/k")),
        Some(ErrorKind::NotPermitted)
    );
    assert_eq!(
        kind(e.delete(&root(), "transit/keys/k/info")),
        Some(ErrorKind::NotPermitted)
    );
    ctl(&e, "k", "deletion_allowed=true").expect("allow");
    e.delete(&root(), "transit/keys/k/info")
        .expect("unlink is a no-op now");
    e.rmdir(&root(), "transit/keys/k").expect("rmdir");
    assert!(view.list("").expect("list").is_empty(), "nothing left");
    assert_eq!(kind(enc(&e, "k", b"x")), Some(ErrorKind::NotFound));
    // A new key of the same name is a new key: old ciphertexts do not decrypt.
    e.mkdir(&root(), "transit/keys/k").expect("mkdir again");
    assert_eq!(info(&e, "k")["latest_version"], 1);
}

#[test]
fn tampering_and_malformed_input_are_einval() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/a").expect("mkdir");
    e.mkdir(&root(), "transit/keys/b").expect("mkdir");
    let ct = enc(&e, "a", b"payload").expect("enc");
    let b64 = ct.strip_prefix("nomadfs:v1:").expect("prefix");
    let mut raw = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("b64");
    for i in 0..raw.len() {
        raw[i] ^= 0x01;
        let t = format!(
            "nomadfs:v1:{}",
            base64::engine::general_purpose::STANDARD.encode(&raw)
        );
        assert_eq!(kind(dec(&e, "a", &t)), Some(ErrorKind::InvalidInput), "{i}");
        raw[i] ^= 0x01;
    }
    // Moved to another key, or relabelled: the AAD binds name and version.
    assert_eq!(kind(dec(&e, "b", &ct)), Some(ErrorKind::InvalidInput));
    ctl(&e, "a", "rotate").expect("rotate");
    let relabelled = ct.replacen("nomadfs:v1:", "nomadfs:v2:", 1);
    assert_eq!(
        kind(dec(&e, "a", &relabelled)),
        Some(ErrorKind::InvalidInput)
    );
    for bad in [
        "",
        "hello",
        "nomadfs:v1",
        "nomadfs:vx:AAAA",
        "nomadfs:v0:AAAA",
        "nomadfs:v99999999999:AAAA",
        "nomadfs:v1:!!!",
        "nomadfs:v1:AAAA",
        "vault:v1:AAAA",
    ] {
        assert_eq!(
            kind(dec(&e, "a", bad)),
            Some(ErrorKind::InvalidInput),
            "{bad:?}"
        );
    }
    let not_utf8 = e.exchange(
        &root(),
        "transit/decrypt/a",
        SecretBytes::from_slice(b"\xff\xfe"),
    );
    assert_eq!(kind(not_utf8), Some(ErrorKind::InvalidInput));
    assert_eq!(dec(&e, "a", &ct).expect("intact"), b"payload");
}

#[test]
fn info_and_store_hold_no_key_material_in_plaintext() {
    let (e, view) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    ctl(&e, "k", "rotate").expect("rotate");
    let text = e
        .read(&root(), "transit/keys/k/info")
        .expect("info")
        .expose()
        .to_vec();
    for v in [1u32, 2] {
        let key = view.get(&version_key("k", v)).expect("get").expect("key");
        assert_eq!(key.len(), KEY_LEN);
        let b64 = base64::engine::general_purpose::STANDARD.encode(key.expose());
        let hex: String = key.expose().iter().map(|b| format!("{b:02x}")).collect();
        assert!(!text.windows(KEY_LEN).any(|w| w == key.expose()));
        let s = String::from_utf8_lossy(&text);
        assert!(!s.contains(&b64) && !s.contains(&hex));
        // The storage underneath sees only ciphertext.
        let storage = e.barrier().storage().clone();
        for k in storage.list("").expect("list") {
            let v = storage.get(&k).expect("get").expect("value");
            assert!(!v.windows(KEY_LEN).any(|w| w == key.expose()));
        }
    }
    // Exchange paths never read at open.
    assert_eq!(
        kind(e.read(&root(), "transit/encrypt/k")),
        Some(ErrorKind::NotPermitted)
    );
}

#[test]
fn exchange_needs_update() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    let docs = vec![
        PolicyDoc::parse(
            "enc",
            "uids = [1001]\nrules = [ { path = \"transit/encrypt/k\", capabilities = [\"update\"] } ]\n",
        )
        .expect("policy"),
        PolicyDoc::parse(
            "reader",
            "uids = [1002]\nrules = [ { path = \"transit/encrypt/k\", capabilities = [\"read\", \"create\"] } ]\n",
        )
        .expect("policy"),
    ];
    e.set_policies(docs, vec![0]).expect("policies");
    let ok = Caller::new(1001, 1001, 2);
    let no = Caller::new(1002, 1002, 3);
    let input = || SecretBytes::from_slice(b"x");
    e.exchange(&ok, "transit/encrypt/k", input())
        .expect("update may encrypt");
    assert_eq!(
        kind(e.exchange(&no, "transit/encrypt/k", input())),
        Some(ErrorKind::PermissionDenied)
    );
    assert_eq!(
        kind(e.exchange(&ok, "transit/decrypt/k", input())),
        Some(ErrorKind::PermissionDenied)
    );
    // Mode bits tell the truth: rw for update, nothing otherwise.
    assert_eq!(e.stat(&ok, "transit/encrypt/k").expect("stat").mode, 0o600);
    let n = e.stat(&no, "transit/encrypt/k");
    assert!(n.map(|n| n.mode == 0).unwrap_or(true));
}

#[test]
fn exchange_is_refused_elsewhere() {
    let (e, _) = engine();
    e.write(&root(), "secret/x", SecretBytes::from_slice(b"v"))
        .expect("write");
    assert_eq!(
        kind(e.exchange(&root(), "secret/x", SecretBytes::from_slice(b"v"))),
        Some(ErrorKind::NotPermitted)
    );
    assert_eq!(
        kind(e.exchange(&root(), "sys/health", SecretBytes::from_slice(b"v"))),
        Some(ErrorKind::NotPermitted)
    );
    assert_eq!(
        kind(e.exchange(&root(), "transit/keys", SecretBytes::from_slice(b"v"))),
        Some(ErrorKind::NotPermitted)
    );
}

#[test]
fn parser_never_panics_on_prefixes() {
    let ct = "nomadfs:v12:AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
    for i in 0..=ct.len() {
        let _ = parse_ciphertext(&ct.as_bytes()[..i]);
    }
    assert!(max_ciphertext_len(usize::MAX) >= usize::MAX / 2);
}

#[test]
fn concurrent_rotations_lose_no_version() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    let e = Arc::new(e);
    let cts: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let e = e.clone();
                s.spawn(move || {
                    ctl(&e, "k", "rotate").expect("rotate");
                    enc(&e, "k", format!("p{i}").as_bytes()).expect("enc")
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    });
    assert_eq!(info(&e, "k")["latest_version"], 9);
    for (i, ct) in cts.iter().enumerate() {
        assert_eq!(
            dec(&e, "k", ct).expect("every ciphertext decrypts"),
            format!("p{i}").as_bytes()
        );
    }
}

#[test]
fn ctl_lines_are_checked_as_they_arrive() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    let check = |data: &str| e.check_partial("transit/keys/k/ctl", data.as_bytes());
    // Complete good lines, and an incomplete last line, pass; nothing is applied.
    for ok in [
        "rotate\n",
        "rotate\nmin_decryption_version=2\n",
        "frobn",
        "# note\n\n",
    ] {
        assert!(check(ok).is_ok(), "{ok:?}");
    }
    assert_eq!(info(&e, "k")["latest_version"], 1);
    for bad in [
        "frobnicate\n",
        "min_decryption_version=2\n",
        "rotate\nmin_decryption_version=3\n",
        "min_decryption_version=x\n",
        "deletion_allowed=maybe\n",
    ] {
        assert_eq!(kind(check(bad)), Some(ErrorKind::InvalidInput), "{bad:?}");
    }
    // The engine drops the backend's own path prefix: the adapter names the full path.
    let msg = check("frobnicate\n")
        .err()
        .map(|e| e.message)
        .unwrap_or_default();
    assert!(msg.starts_with("unknown command \"frobnicate\""), "{msg}");
    // Paths with nothing to check answer at once.
    assert!(e.check_partial("transit/keys/k/info", b"{not json").is_ok());
    assert!(e.check_partial("secret/x", b"{not json").is_ok());
}

#[test]
fn help_and_fixed_listings_come_from_the_table() {
    let r = Router::declare(PATHS);
    let help = r.help(HELP_INTRO, HELP_NOTES);
    assert!(help.starts_with("transit backend: encryption as a service."));
    for label in [
        "keys/ ",
        "mkdir keys/NAME",
        "rmdir keys/NAME",
        "keys/NAME/info",
        "keys/NAME/ctl",
        "encrypt/NAME",
        "decrypt/NAME",
        "rewrap/NAME",
    ] {
        assert!(help.contains(&format!("\n  {label}")), "{label}");
    }
    assert!(help.contains("min_decryption_version=N   refuse ciphertexts older than version N"));
    assert!(help.ends_with("exchange path (e.g. transit/encrypt/NAME).\n"));
    let root: Vec<_> = r.literal_children("").into_iter().map(|e| e.name).collect();
    assert_eq!(root, ["keys", "encrypt", "decrypt", "rewrap"]);
    assert_eq!(
        r.literal_children("keys/k"),
        vec![DirEntry::file("info"), DirEntry::file("ctl")]
    );
}

/// The declarations say what the paths are: a path declared `LIST` stats as a folder, one
/// declared `EXCHANGE` as an exchange file, a write-only one (`WRITE` without `READ`) as mode
/// 0o200, and every other declared file as a file.
#[test]
fn declared_ops_match_what_the_paths_are() {
    let (e, _) = engine();
    e.mkdir(&root(), "transit/keys/k").expect("mkdir");
    for d in PATHS {
        let path = d.pattern.replace("{name}", "k");
        let full = if path.is_empty() {
            "transit".to_string()
        } else {
            format!("transit/{path}")
        };
        let node = e.stat(&root(), &full).expect(&full);
        assert_eq!(node.is_dir(), d.ops.contains(Ops::LIST), "{full}");
        assert_eq!(
            node.writes.may_exchange(),
            d.ops.contains(Ops::EXCHANGE),
            "{full}"
        );
        if d.ops.contains(Ops::WRITE) && !d.ops.contains(Ops::READ) {
            assert_eq!(node.mode, 0o200, "{full}");
        }
    }
}
