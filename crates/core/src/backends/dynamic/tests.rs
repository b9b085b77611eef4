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
