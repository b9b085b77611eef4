use super::*;

#[test]
fn help_and_root_listing_come_from_the_table() {
    let none: std::sync::Weak<crate::engine::Engine> = std::sync::Weak::new();
    let sys = Sys::new(none);
    let help = sys.router.help(HELP_INTRO, "");
    assert!(help.starts_with("sys/: the control plane.\n\n  health          read: JSON"));
    for label in [
        "self/errors",
        "mounts/ ",
        "mounts.table",
        "leases/ ",
        "policies/NAME",
    ] {
        assert!(help.contains(&format!("  {label}")), "{label}");
    }
    assert!(help.contains("\n                  rm -r FOLDER: revoke every lease under it\n"));
    assert!(help.contains(r#"printf 'type = "generic"\ndescription = "team A"\n' > mounts/NAME"#));
    let names: Vec<_> = sys
        .router
        .literal_children("")
        .into_iter()
        .map(|e| e.name)
        .collect();
    assert_eq!(
        names,
        [
            ".help",
            "health",
            "self",
            "seal",
            "unseal",
            "rotate",
            "mounts",
            "mounts.table",
            "leases",
            "revoke-uid",
            "policies",
            "audit-hash"
        ]
    );
    assert_eq!(
        sys.router.literal_children("self"),
        vec![DirEntry::file("errors")]
    );
}

/// The declarations say what the paths are: a path declared `LIST` stats as a folder and lists,
/// one declared `EXCHANGE` may be an exchange, a write-only one (`WRITE` without `READ`) stats
/// as mode 0o200 and is refused to `read`, and every declared `READ` file reads.
#[test]
fn declared_ops_match_what_the_paths_are() {
    use crate::engine::{Engine, EngineConfig};
    use crate::route::Ops;
    use crate::storage::memory::MemoryStorage;
    let e = Engine::new(
        std::sync::Arc::new(MemoryStorage::new()),
        EngineConfig {
            kdf: crate::barrier::KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e.unseal(b"pass").expect("unseal");
    let root = Caller::new(0, 0, 1);
    e.write(
        &root,
        "sys/policies/p",
        SecretBytes::from_slice(b"uids = [7]\nrules = []\n"),
    )
    .expect("policy");
    e.write(&root, "sys/audit-hash", SecretBytes::from_slice(b"v"))
        .expect("audit-hash");
    for d in PATHS {
        // Lease paths are folders or files by what exists; none exists here.
        if d.pattern.contains("{*") {
            continue;
        }
        let path = d
            .pattern
            .replace("mounts/{name}", "mounts/secret")
            .replace("{name}", "p");
        let full = if path.is_empty() {
            "sys".to_string()
        } else {
            format!("sys/{path}")
        };
        let node = e.stat(&root, &full).expect(&full);
        assert_eq!(node.is_dir(), d.ops.contains(Ops::LIST), "{full}");
        if d.ops.contains(Ops::LIST) {
            e.list(&root, &full).expect(&full);
        }
        assert_eq!(
            node.writes.may_exchange(),
            d.ops.contains(Ops::EXCHANGE),
            "{full}"
        );
        if d.ops.contains(Ops::WRITE) && !d.ops.contains(Ops::READ) {
            assert_eq!(node.mode, 0o200, "{full}");
            assert!(e.read(&root, &full).is_err(), "{full}");
        }
        if d.ops.contains(Ops::READ) {
            e.read(&root, &full).expect(&full);
        }
    }
}
