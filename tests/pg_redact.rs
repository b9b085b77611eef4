//! PostgreSQL's error text quotes a bad URL option's value; it must reach neither the daemon
//! log nor the audit log (issue 11, item 14). Real cluster (tests/common/pg.rs), real mount.

mod common;

use common::pg::Pg;
use common::{write_synced, Daemon};

#[test]
fn a_url_option_value_is_redacted_from_the_logs() {
    let pg = Pg::start();
    let d = Daemon::start();
    std::fs::write(d.p("sys/mounts/pg"), "postgresql\n").expect("mount pg");
    let planted = "PLANTEDopt7391";
    let url = format!(
        "{}?options=-c%20statement_timeout%3D{planted}",
        pg.admin_url()
    );
    let r = write_synced(d.p("pg/config/connection"), &url);
    assert!(
        r.is_err(),
        "the server accepted statement_timeout={planted}"
    );
    // The refusal is still explained (the parameter is named), without the value.
    let log = d.log_text();
    assert!(
        log.contains("statement_timeout"),
        "reason not logged:\n{log}"
    );
    assert!(
        !log.contains(planted),
        "planted option value in the daemon log:\n{log}"
    );
    assert!(!log.contains(&pg.password), "password in the daemon log");
    let audit = std::fs::read_to_string(d.audit()).expect("audit log");
    assert!(
        audit.contains("pg/config/connection"),
        "write not audited:\n{audit}"
    );
    assert!(
        !audit.contains(planted),
        "planted option value in the audit log:\n{audit}"
    );
    // The server really did quote it: the redaction is what kept it out.
    assert!(
        pg.log_text().contains(planted) || log.contains("***"),
        "{log}"
    );
}
