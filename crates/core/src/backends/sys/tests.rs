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
