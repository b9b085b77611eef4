//! A refusal's reason reaches the person who made it: `cat sys/self/errors` shows the caller's
//! own recent refusals (never another uid's), and the CLI prints the reason when it fails.

mod common;

use common::{write_synced, Daemon};
use std::process::{Command, Output};

const POLICIES: &str = r#"allow_other = true
[[policy]]
name = "app"
uids = [1001, 1002]
rules = [ { path = "secret/app/*", capabilities = ["read", "list"] } ]
"#;

fn as_uid(d: &Daemon, uid: u32, args: &[&str]) -> Output {
    let mut c = Command::new("setpriv");
    c.args([
        &format!("--reuid={uid}"),
        &format!("--regid={uid}"),
        "--clear-groups",
    ])
    .args(args)
    .current_dir(&d.mnt);
    c.output().expect("setpriv")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

#[test]
fn own_refusals_with_reasons_and_nobody_elses() {
    let d = Daemon::start_with(POLICIES);
    std::fs::create_dir_all(d.p("secret/app")).expect("mkdir");
    write_synced(d.p("secret/app/db"), "v").expect("db");

    // uid 1001 tries to write where it may only read.
    let o = as_uid(&d, 1001, &["bash", "-c", "echo -n x > secret/app/db"]);
    assert!(!o.status.success());
    let o = as_uid(&d, 1001, &["cat", "sys/self/errors"]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let mine = text(&o.stdout);
    let line = mine
        .lines()
        .find(|l| l.contains("secret/app/db"))
        .unwrap_or_else(|| panic!("no refusal for secret/app/db in:\n{mine}"));
    let f: Vec<&str> = line.split('\t').collect();
    assert_eq!(f.len(), 5, "{line}");
    assert_eq!((f[2], f[3]), ("secret/app/db", "EACCES"), "{line}");
    assert!(
        f[4].contains("uid 1001") && f[4].contains("`update`"),
        "the reason says what is missing: {line}"
    );

    // uid 1002 sees none of it; its own list is empty until it is refused something.
    let o = as_uid(&d, 1002, &["cat", "sys/self/errors"]);
    assert!(o.status.success());
    assert!(
        !text(&o.stdout).contains("secret/app/db"),
        "{}",
        text(&o.stdout)
    );

    // The CLI prints the reason with the error.
    let o = as_uid(
        &d,
        1002,
        &[common::bin(), "write", "secret/app/db", "value=x"],
    );
    assert!(!o.status.success());
    let err = text(&o.stderr);
    assert!(
        err.contains("Permission denied") && err.contains("has no `update` on secret/app/db"),
        "{err}"
    );
    // Lookups of what is not there are not refusals: the list stays readable.
    for i in 0..100 {
        let _ = std::fs::metadata(d.p(&format!("secret/app/nx{i}")));
    }
    assert!(!std::fs::read_to_string(d.p("sys/self/errors"))
        .expect("root's list")
        .contains("nx"));
}
