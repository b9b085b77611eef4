use super::*;
use crate::backends::{aws::Aws, postgres::Postgres};

#[test]
fn help_and_fixed_listings_come_from_the_table() {
    let r = Router::declare(&Dynamic::<Aws>::paths());
    let help = r.help(Aws::HELP.intro, Aws::HELP.notes);
    assert!(help.starts_with(
        "aws backend: dynamic IAM credentials, each under a lease.\n\n  config/root     write-only"
    ));
    assert!(help.contains("\n  config/lease    read/write: ttl=1h and max_ttl=24h"));
    assert!(help.contains(
        "\n  creds/NAME.process\n                  the same as AWS credential_process JSON"
    ));
    assert!(help.ends_with("renew with `touch` or `echo 1h >` on it.\n"));
    assert_eq!(
        r.literal_children(""),
        vec![
            DirEntry::dir("config"),
            DirEntry::dir("roles"),
            DirEntry::dir("creds")
        ]
    );
    assert_eq!(
        r.literal_children("config"),
        vec![DirEntry::file("root"), DirEntry::file("lease")]
    );
    let r = Router::declare(&Dynamic::<Postgres>::paths());
    let help = r.help(Postgres::HELP.intro, Postgres::HELP.notes);
    assert!(help.contains("\n  config/connection  write-only: postgres://USER:PASSWORD@"));
    assert!(help.contains("\n                       creation_statements = [\"CREATE ROLE"));
    assert!(help.contains("\n  creds/NAME.env     the same as PGUSER="));
    assert!(!help.contains(".process"));
    assert_eq!(
        r.literal_children("config"),
        vec![DirEntry::file("connection"), DirEntry::file("lease")]
    );
}

/// The declarations say what the paths are (through the engine, on an `aws` and a
/// `postgresql` mount): `LIST` ⇔ a folder, a write-only settings file stats 0o200, a
/// credential is generated content.
#[test]
fn declared_ops_match_what_the_paths_are() {
    use crate::barrier::KdfParams;
    use crate::caller::Caller;
    use crate::engine::{Engine, EngineConfig};
    use crate::storage::memory::MemoryStorage;
    use std::sync::Arc;

    let e = Engine::new(
        Arc::new(MemoryStorage::new()),
        EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        },
    );
    e.unseal(b"pass").expect("unseal");
    let root = Caller::new(0, 0, 1);
    e.mount("aws", "aws", "").expect("mount aws");
    e.mount("pg", "postgresql", "").expect("mount pg");
    e.write(&root, "aws/roles/r", SecretBytes::from_slice(b"{}"))
        .expect("aws role");
    let pg_role = "creation_statements = \"CREATE ROLE \\\"{{name}}\\\"\"\n";
    e.write(
        &root,
        "pg/roles/r",
        SecretBytes::from_slice(pg_role.as_bytes()),
    )
    .expect("pg role");
    for (mount, paths) in [
        ("aws", Dynamic::<Aws>::paths()),
        ("pg", Dynamic::<Postgres>::paths()),
    ] {
        for d in paths {
            let path = d.pattern.replace("{name}", "r");
            let full = if path.is_empty() {
                mount.to_string()
            } else {
                format!("{mount}/{path}")
            };
            let node = e.stat(&root, &full).expect(&full);
            assert_eq!(node.is_dir(), d.ops.contains(Ops::LIST), "{full}");
            if d.ops.contains(Ops::WRITE) && !d.ops.contains(Ops::READ) {
                assert_eq!(node.mode, 0o200, "{full}");
            }
            if d.route == Route::Cred {
                assert!(node.is_generated(), "{full}");
            }
        }
    }
}
