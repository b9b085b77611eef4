//! Errors reach the shell: bash, dash and zsh ignore close(2)'s result on a redirection, so a
//! refused document must fail the write(2) that carries the bad bytes. For every writable path
//! kind, `bash -c 'echo BAD > PATH'` (bash's builtin echo/printf) exits non-zero with nothing
//! stored, and `echo GOOD > PATH` exits 0 and is stored. Real mount, real moto, real PostgreSQL.

mod common;

use common::moto::Moto;
use common::pg::Pg;
use common::{json, Daemon};
use std::process::{Command, Output};

/// Run `script` with bash in the mount; `$P` is `path`, `$V` is `value`.
fn bash(d: &Daemon, script: &str, path: &str, value: &str) -> Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(&d.mnt)
        .env("P", path)
        .env("V", value)
        .output()
        .expect("bash")
}

/// `echo "$V" > "$P"` is refused: bash exits non-zero (the write failed, not just the close).
fn bad(d: &Daemon, path: &str, value: &str) {
    bad_script(d, r#"echo "$V" > "$P""#, path, value);
}

fn bad_script(d: &Daemon, script: &str, path: &str, value: &str) {
    let o = bash(d, script, path, value);
    assert!(
        !o.status.success(),
        "BAD {value:?} > {path} ({script}) exited 0; log:\n{}",
        d.log_text()
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("write error"), "{path}: {err}");
}

/// `echo "$V" > "$P"` is accepted.
fn good(d: &Daemon, path: &str, value: &str) {
    good_script(d, r#"echo "$V" > "$P""#, path, value);
}

fn good_script(d: &Daemon, script: &str, path: &str, value: &str) {
    let o = bash(d, script, path, value);
    assert!(
        o.status.success(),
        "GOOD {value:?} > {path} ({script}) failed: {}\nlog:\n{}",
        String::from_utf8_lossy(&o.stderr),
        d.log_text()
    );
}

fn read(d: &Daemon, path: &str) -> Option<String> {
    std::fs::read_to_string(d.p(path)).ok()
}

/// The caller's own recent refusals (`sys/self/errors`).
fn errors(d: &Daemon) -> String {
    read(d, "sys/self/errors").unwrap_or_default()
}

/// config/lease of a dynamic backend: each BAD line fails its write, the old value stays.
fn lease_config(d: &Daemon, mount: &str) {
    let p = format!("{mount}/config/lease");
    good(d, &p, "ttl=2h\nmax_ttl=4h");
    let stored = read(d, &p).expect("config/lease");
    assert_eq!(stored, "ttl = 7200\nmax_ttl = 14400\n");
    for v in [
        "ttl=soon",
        "ttl=0",
        "colour=1h",
        "ttl 1h",
        "ttl=1h\nwhat",
        "{\"ttl\": \"soon\"}",
        "{\"ttl\": \"5h\"}",
    ] {
        bad(d, &p, v);
        assert_eq!(read(d, &p).as_deref(), Some(stored.as_str()), "{v:?}");
    }
    bad_script(d, r#"printf 'ttl=\xff\n' > "$P""#, &p, "");
    good(d, &p, "{\"ttl\": \"1h\", \"max_ttl\": \"3h\"}");
    assert_eq!(
        read(d, &p).as_deref(),
        Some("ttl = 3600\nmax_ttl = 10800\n")
    );
}

const AWS_POLICY: &str =
    r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":"ec2:*","Resource":"*"}]}"#;

#[test]
fn aws_documents_fail_the_write() {
    let m = Moto::start();
    let d = Daemon::start();
    good(&d, "sys/mounts/aws", "aws");

    // config/root: unknown keys, a line without '=', non-UTF-8, a complete JSON object that is
    // invalid. The good one is what credentials are minted with.
    good(&d, "aws/config/root", m.root_config().trim_end());
    for v in [
        "access_key=testing\nbogus=1",
        "access_key",
        "access_key=testing\nsecret_key testing",
        "access_key=",
        "endpoint=ftp://x",
        "{\"access_key\": \"a\"}",
        "{\"access_key\": \"a\", \"secret_key\": \"b\", \"colour\": \"red\"}",
    ] {
        bad(&d, "aws/config/root", v);
    }
    bad_script(
        &d,
        r#"printf 'access_key=\xff\n' > "$P""#,
        "aws/config/root",
        "",
    );
    assert!(
        errors(&d).contains("aws/config/root: unknown key \"bogus\""),
        "the reason names the path and what is wrong: {}",
        errors(&d)
    );

    // roles/NAME: an IAM policy document (JSON).
    for v in [
        "{not json",
        "[1, 2]",
        "hello",
        "{\"a\": 1} trailing",
        "\"text\"",
    ] {
        bad(&d, "aws/roles/r", v);
        assert!(read(&d, "aws/roles/r").is_none(), "{v:?} stored");
    }
    assert!(
        errors(&d).contains("aws/roles/r") && errors(&d).contains("line 1 column 2"),
        "the reason names the path and where: {}",
        errors(&d)
    );
    // An incomplete document is not refused before it is complete (two writes, one open)...
    good_script(
        &d,
        r#"{ printf '%s' '{"Version":"2012-10-17",'; printf '%s\n' '"Statement":[]}'; } > "$P""#,
        "aws/roles/r",
        "",
    );
    assert_eq!(
        read(&d, "aws/roles/r").as_deref(),
        Some("{\"Version\":\"2012-10-17\",\"Statement\":[]}\n")
    );
    // ... a broken one fails at the first write (the second is refused too: nothing of the
    // open is stored).
    bad_script(
        &d,
        r#"{ printf '%s' '{"Version" 1'; printf '%s\n' '}'; } > "$P""#,
        "aws/roles/r",
        "",
    );
    good(&d, "aws/roles/r", AWS_POLICY);
    assert_eq!(
        read(&d, "aws/roles/r").as_deref(),
        Some(format!("{AWS_POLICY}\n").as_str())
    );
    bad(&d, "aws/roles/r", "{\"Statement\": [}");
    assert_eq!(
        read(&d, "aws/roles/r").as_deref(),
        Some(format!("{AWS_POLICY}\n").as_str()),
        "a refused rewrite left the old document"
    );

    lease_config(&d, "aws");

    // The root keys written first are still the ones in use: credentials are minted.
    let c = json(&std::fs::read(d.p("aws/creds/r")).expect("creds"));
    let lease_id = c["lease_id"].as_str().expect("lease_id").to_string();

    // sys/leases/ID: a renewal increment.
    let lp = format!("sys/leases/{lease_id}");
    let before = json(&std::fs::read(d.p(&lp)).expect("lease"));
    for v in ["soon", "1h x", "-5"] {
        bad(&d, &lp, v);
    }
    let after = json(&std::fs::read(d.p(&lp)).expect("lease"));
    assert_eq!(
        before["expire_time"], after["expire_time"],
        "a refused renewal renewed"
    );
    good(&d, &lp, "30m");
    good(&d, &lp, "");
}

const PG_ROLE: &str = r#"creation_statements = [
  "CREATE ROLE \"{{name}}\" LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}'",
]
default_ttl = "1h""#;

#[test]
fn postgres_documents_fail_the_write() {
    let pg = Pg::start_with(&["-c log_connections=on"]);
    let d = Daemon::start();
    good(&d, "sys/mounts/pg", "postgresql");

    // config/connection: a URL, parsed and test-connected at the write that completes it; the
    // commit at close does not connect again.
    let tcp = || {
        pg.log_text()
            .matches("connection received: host=127.0.0.1")
            .count()
    };
    let before = tcp();
    {
        use std::io::Write;
        let mut f = std::fs::File::create(d.p("pg/config/connection")).expect("open");
        f.write_all(format!("{}\n", pg.admin_url()).as_bytes())
            .expect("write");
        let tested = tcp();
        assert!(tested > before, "the write did not test-connect");
        f.sync_all().expect("commit");
        drop(f);
        assert_eq!(tcp(), tested, "the commit connected a second time");
    }
    good(&d, "pg/config/connection", &pg.admin_url());
    bad(
        &d,
        "pg/config/connection",
        &pg.url("postgres", "wrong-password"),
    );
    assert!(
        errors(&d).contains("password authentication failed"),
        "the reason reaches the caller: {}",
        errors(&d)
    );
    assert!(!errors(&d).contains("wrong-password"), "password shown");
    bad(&d, "pg/config/connection", "mysql://x@y/z");
    bad(&d, "pg/config/connection", "not a url");
    bad_script(
        &d,
        r#"printf 'postgres://\xff@x/y\n' > "$P""#,
        "pg/config/connection",
        "",
    );

    // roles/NAME, TOML: broken lines fail at once, a complete but invalid document at the
    // write that completes it.
    for v in [
        "foo bar",
        "creation_statements = 1",
        "creation_statements = []",
        "creation_statements = \"CREATE ROLE x\"",
        "creation_statements = \"CREATE ROLE \\\"{{name}}\\\" {{oops}}\"",
        "creation_statements = \"CREATE ROLE {{name}}\"\ndefault_ttl = \"soon\"",
        "creation_statements = \"CREATE ROLE {{name}}\"\nunknown = 1",
        "creation_statements = \"unterminated",
    ] {
        bad(&d, "pg/roles/app", v);
        assert!(read(&d, "pg/roles/app").is_none(), "{v:?} stored");
    }
    assert!(
        errors(&d).contains("pg/roles/app: invalid TOML at line 1 column 5"),
        "the reason names the path and where: {}",
        errors(&d)
    );
    // JSON as for aws.
    for v in [
        "{not json",
        "{\"creation_statements\": []}",
        "{\"creation_statements\": \"CREATE ROLE {{name}}\", \"x\": 1}",
    ] {
        bad(&d, "pg/roles/app", v);
        assert!(read(&d, "pg/roles/app").is_none(), "{v:?} stored");
    }
    // A TOML document whose first write lacks a required field is not refused early.
    good_script(
        &d,
        r#"{ printf 'default_ttl = "1h"\n'; printf '%s\n' "creation_statements = \"CREATE ROLE \\\"{{name}}\\\" LOGIN PASSWORD '{{password}}'\""; } > "$P""#,
        "pg/roles/two",
        "",
    );
    assert!(read(&d, "pg/roles/two").is_some_and(|t| t.starts_with("default_ttl")));
    good(&d, "pg/roles/app", PG_ROLE);
    assert_eq!(
        read(&d, "pg/roles/app").as_deref(),
        Some(format!("{PG_ROLE}\n").as_str())
    );
    bad(
        &d,
        "pg/roles/app",
        "creation_statements = [\n  \"x\"\n  \"y\"",
    );
    assert_eq!(
        read(&d, "pg/roles/app").as_deref(),
        Some(format!("{PG_ROLE}\n").as_str()),
        "a refused rewrite left the old document"
    );
    good(
        &d,
        "pg/roles/json",
        "{\"creation_statements\": \"CREATE ROLE \\\"{{name}}\\\" LOGIN\"}",
    );
    assert!(read(&d, "pg/roles/json").is_some());

    lease_config(&d, "pg");

    // The connection written first is still the one in use: a credential is made.
    let c = json(&std::fs::read(d.p("pg/creds/app")).expect("creds"));
    let user = c["username"].as_str().expect("username");
    assert!(pg.role_exists(user));
}

#[test]
fn transit_sys_and_generic_fail_the_write() {
    let d = Daemon::start_with("max_value_size = 4096");

    // sys/mounts/NAME: a mount spec.
    bad(&d, "sys/mounts/x", "nosuchtype");
    assert!(!d.p("x").exists());
    good(&d, "sys/mounts/kv", "generic");
    good(&d, "sys/mounts/tr", "transit");

    // Generic values: over the size limit fails the write; the old value stays.
    good(&d, "kv/v", "small");
    bad_script(&d, r#"printf '%5000s' x > "$P""#, "kv/v", "");
    bad_script(&d, r#"printf '%5000s' x > "$P""#, "kv/big", "");
    assert_eq!(read(&d, "kv/v").as_deref(), Some("small\n"));
    assert!(read(&d, "kv/big").is_none());

    // transit keys/NAME/ctl: commands.
    std::fs::create_dir(d.p("tr/keys/k")).expect("mkdir key");
    let info = || json(read(&d, "tr/keys/k/info").expect("info").as_bytes());
    for v in [
        "frobnicate",
        "min_decryption_version=9",
        "min_decryption_version=x",
        "deletion_allowed=maybe",
        "rotate\nbogus",
    ] {
        bad(&d, "tr/keys/k/ctl", v);
    }
    assert_eq!(info()["latest_version"], 1, "a refused command applied");
    good(&d, "tr/keys/k/ctl", "rotate");
    assert_eq!(info()["latest_version"], 2);
    good(&d, "tr/keys/k/ctl", "min_decryption_version=2");
    assert_eq!(info()["min_decryption_version"], 2);

    // sys/policies/NAME: TOML or JSON policy documents.
    for v in [
        "foo bar",
        "uids = [1001]\nrules = [ { path = \"secret/*\", capabilities = [\"fly\"] } ]",
        "uids = \"me\"",
        "colour = 1",
        "[[rules]]\npath = \"secret/*\"\ncapabilities = [\"read\"]\nwings = 2",
        "{not json",
        "{\"rules\": 1}",
        "{\"uids\": [1001]} x",
    ] {
        bad(&d, "sys/policies/p", v);
        assert!(read(&d, "sys/policies/p").is_none(), "{v:?} stored");
    }
    assert!(
        errors(&d).contains("sys/policies/p") && errors(&d).contains("line 1 column 5"),
        "the reason names the path and where: {}",
        errors(&d)
    );
    // A rule table whose first write lacks its capabilities is not refused early.
    good_script(
        &d,
        r#"{ printf '[[rules]]\npath = "secret/*"\n'; printf 'capabilities = ["read"]\n'; } > "$P""#,
        "sys/policies/two",
        "",
    );
    assert!(read(&d, "sys/policies/two").is_some());
    let doc = "uids = [1001]\nrules = [ { path = \"secret/*\", capabilities = [\"read\"] } ]";
    good(&d, "sys/policies/p", doc);
    assert_eq!(
        read(&d, "sys/policies/p").as_deref().map(str::trim_end),
        Some(doc)
    );
    bad(
        &d,
        "sys/policies/p",
        "rules = [ { path = \"secret/*\", capabilities = [\"fly\"] } ]",
    );
    assert_eq!(
        read(&d, "sys/policies/p").as_deref().map(str::trim_end),
        Some(doc),
        "a refused rewrite left the old policy"
    );
    good(&d, "sys/policies/j", "{\"uids\": [1002], \"rules\": []}");
    assert!(read(&d, "sys/policies/j").is_some());

    // dash too (its builtin echo): a bad policy fails the write, a good one is stored.
    let dash = |v: &str| {
        Command::new("dash")
            .arg("-c")
            .arg(r#"echo "$V" > "$P""#)
            .current_dir(&d.mnt)
            .env("P", "sys/policies/d")
            .env("V", v)
            .status()
            .expect("dash")
            .success()
    };
    assert!(!dash("{not json"), "dash: a bad policy exited 0");
    assert!(read(&d, "sys/policies/d").is_none());
    assert!(dash("uids = [1003]"), "dash: a good policy failed");
    assert!(read(&d, "sys/policies/d").is_some());

    // Other buffered or control files: sys/audit-hash over the size limit, sys/revoke-uid.
    bad_script(&d, r#"printf '%5000s' x > "$P""#, "sys/audit-hash", "");
    good(&d, "sys/audit-hash", "v");
    assert!(read(&d, "sys/audit-hash").is_some_and(|h| h.starts_with("hmac-sha256:")));
    bad(&d, "sys/revoke-uid", "nobody");
    good(&d, "sys/revoke-uid", "4242");
}
