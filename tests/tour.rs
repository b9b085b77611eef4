//! README.md's tour, run as written: every `$ ` line of its `console` blocks (a heredoc with the
//! lines up to its end word), in order, in one bash session that starts in the repository and
//! `cd`s into a real mount, against moto (IAM) and a throwaway PostgreSQL. Only what a test
//! must is substituted: the mountpoint, the passphrase, the IAM endpoint's port and the
//! PostgreSQL URL. Each command's exit status is checked, and its output wherever the README
//! shows one (`...` there matches anything).

mod common;

use common::moto::Moto;
use common::pg::Pg;
use common::Daemon;
use std::path::Path;
use std::process::Command;

/// Commands the README shows failing (by the start of the command).
const EXPECTED_TO_FAIL: &[&str] = &[
    "cat aws/config/root",        // write-only: Permission denied
    "rmdir transit/keys/orders ", // EPERM until deletion_allowed=true
];

/// Outputs the README does not show but the test checks: (start of the command, text the
/// output must contain).
const SELECTED_OUTPUTS: &[(&str, &str)] = &[
    ("cat sys/health", "\"sealed\": false"),
    ("cat aws/creds/deploy.process", "\"Version\": 1"),
    ("cat aws/creds/deploy.process", "\"Expiration\": \"20"),
    // The exported key is the one the AWS CLI signs with: its user is nomadfs's.
    ("aws --region", "\"UserName\": \"nomadfs-deploy-u0-"),
    ("ls -R sys/leases", "sys/leases/aws/creds/deploy:"),
    ("nomadfs decrypt orders", "4111 1111 1111 1111"),
    ("cat transit/keys/orders/info", "\"latest_version\": 1"),
    ("env $(cat pg/creds/readonly.env) psql", "(1 row)"),
];

struct Step {
    /// Line number in README.md of the `$ ` line.
    line: usize,
    cmd: String,
    /// The output the README shows after it (may be empty: then not checked).
    output: Vec<String>,
}

/// The `$ ` commands of the README's `console` blocks, with their heredocs and outputs.
fn tour(readme: &str) -> Vec<Step> {
    let mut steps: Vec<Step> = Vec::new();
    let mut in_console = false;
    let mut heredoc: Option<String> = None;
    for (i, line) in readme.lines().enumerate() {
        if !in_console {
            in_console = line.trim_end() == "```console";
            continue;
        }
        if let Some(end) = &heredoc {
            let done = line == end;
            if let Some(s) = steps.last_mut() {
                s.cmd.push('\n');
                s.cmd.push_str(line);
            }
            if done {
                heredoc = None;
            }
            continue;
        }
        if line.trim_end() == "```" {
            in_console = false;
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            if let Some(pos) = cmd.find("<<") {
                let word: String = cmd[pos + 2..]
                    .trim_start_matches('-')
                    .trim_start()
                    .chars()
                    .take_while(|c| !c.is_whitespace())
                    .filter(|c| *c != '\'' && *c != '"')
                    .collect();
                heredoc = Some(word);
            }
            steps.push(Step {
                line: i + 1,
                cmd: cmd.to_string(),
                output: Vec::new(),
            });
        } else if let Some(s) = steps.last_mut() {
            s.output.push(line.to_string());
        }
    }
    steps
}

/// Does `got` match the README's `want` lines (each `...` matches any text, within a line)?
fn matches(want: &[String], got: &str) -> bool {
    let got: Vec<&str> = got.lines().collect();
    want.len() == got.len()
        && want.iter().zip(&got).all(|(w, g)| {
            let parts: Vec<&str> = w.split("...").collect();
            let mut rest = *g;
            for (k, p) in parts.iter().enumerate() {
                if k == 0 {
                    match rest.strip_prefix(p) {
                        Some(r) => rest = r,
                        None => return false,
                    }
                } else if k == parts.len() - 1 {
                    return rest.ends_with(p);
                } else {
                    match rest.find(p) {
                        Some(at) => rest = &rest[at + p.len()..],
                        None => return false,
                    }
                }
            }
            rest.is_empty()
        })
}

#[test]
fn readme_tour_runs_as_written() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let readme = std::fs::read_to_string(root.join("README.md")).expect("README.md");
    let steps = tour(&readme);
    assert!(
        steps.len() >= 45,
        "only {} tour commands found",
        steps.len()
    );
    let prefixes = SELECTED_OUTPUTS.iter().map(|(p, _)| *p);
    for p in prefixes.chain(EXPECTED_TO_FAIL.iter().copied()) {
        assert!(
            steps.iter().any(|s| s.cmd.starts_with(p)),
            "no tour command starts with {p:?}"
        );
    }

    let moto = Moto::start();
    let pg = Pg::start();
    pg.psql("CREATE DATABASE app");
    let pg_url = format!(
        "postgres://postgres:{}@127.0.0.1:{}/app",
        pg.password, pg.port
    );
    let d = Daemon::start();
    let mnt = d.mnt.to_string_lossy().to_string();
    let work = tempfile::tempdir().expect("tempdir");

    // The session: each step in braces (state such as cd, variables and set -a carries over),
    // its stdout+stderr and status saved.
    let mut script = String::from("set +e\n");
    for (i, s) in steps.iter().enumerate() {
        let cmd = s
            .cmd
            .replace("/run/nomadfs", &mnt)
            .replace("PASSPHRASE", common::PASS)
            .replace("http://127.0.0.1:5000", &moto.endpoint)
            .replace("postgres://admin:PASSWORD@127.0.0.1:5432/app", &pg_url);
        let out = work.path().join(format!("out.{i}"));
        let rc = work.path().join(format!("rc.{i}"));
        script.push_str(&format!(
            "{{\n{cmd}\n}} > {} 2>&1 < /dev/null\necho $? > {}\n",
            out.display(),
            rc.display()
        ));
    }
    let bin_dir = Path::new(common::bin()).parent().expect("bin dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = work.path().join("home");
    std::fs::create_dir(&home).expect("home");
    let mut c = Command::new("bash");
    c.arg("-c")
        .arg(&script)
        .current_dir(root)
        .env("PATH", path)
        .env("HOME", &home)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_CONFIG_FILE")
        .env_remove("AWS_SHARED_CREDENTIALS_FILE")
        // No mount hint: the `nomadfs …` lines find the mount they run in, as a user's do.
        .env_remove("NOMADFS_MOUNT")
        .env_remove("NOMADFS_PASSPHRASE");
    for v in ["PGUSER", "PGPASSWORD", "PGHOST", "PGPORT", "PGDATABASE"] {
        c.env_remove(v);
    }
    let o = c.output().expect("bash");
    assert!(
        o.status.success(),
        "the session failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );

    let mut failures = Vec::new();
    for (i, s) in steps.iter().enumerate() {
        let out = std::fs::read_to_string(work.path().join(format!("out.{i}"))).unwrap_or_default();
        let rc: i32 = std::fs::read_to_string(work.path().join(format!("rc.{i}")))
            .ok()
            .and_then(|t| t.trim().parse().ok())
            .unwrap_or(-1);
        let should_fail = EXPECTED_TO_FAIL.iter().any(|p| s.cmd.starts_with(p));
        if (rc == 0) == should_fail {
            failures.push(format!(
                "README.md:{}: `{}` exited {rc} (expected {}):\n{out}",
                s.line,
                s.cmd,
                if should_fail { "a failure" } else { "0" }
            ));
        } else if let Some((_, want)) = SELECTED_OUTPUTS
            .iter()
            .find(|(p, w)| s.cmd.starts_with(p) && !out.contains(w))
        {
            failures.push(format!(
                "README.md:{}: `{}` printed:\n{out}\nwithout {want:?}",
                s.line, s.cmd
            ));
        } else if !s.output.is_empty() && !matches(&s.output, &out) {
            failures.push(format!(
                "README.md:{}: `{}` printed:\n{out}\nthe README shows:\n{}",
                s.line,
                s.cmd,
                s.output.join("\n")
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} tour commands differ from the README:\n\n{}\n\ndaemon log:\n{}",
        failures.len(),
        steps.len(),
        failures.join("\n\n"),
        d.log_text()
    );

    // What the tour leaves behind: every credential revoked upstream, the secrets it removed
    // gone, the one it kept there.
    assert!(!d.p("secret/db-pass").exists());
    assert!(d.p("secret/hello").exists());
    assert_eq!(d.sh_ok("ls sys/leases | wc -l").trim(), "0");
    assert!(pg.nomadfs_roles().is_empty(), "{:?}", pg.nomadfs_roles());
}

#[test]
fn tour_parser_reads_heredocs_and_outputs() {
    let text =
        "x\n```console\n$ a\nout 1\n$ cat > f <<'END'\nbody\n$ not a command\nEND\n$ b\n```\n$ c\n";
    let steps = tour(text);
    let cmds: Vec<&str> = steps.iter().map(|s| s.cmd.as_str()).collect();
    assert_eq!(
        cmds,
        ["a", "cat > f <<'END'\nbody\n$ not a command\nEND", "b"]
    );
    assert_eq!(steps[0].output, ["out 1"]);
    assert!(matches(&["a...c".into()], "abbbc\n"));
    assert!(matches(
        &["  \"id\": \"x/...\",".into()],
        "  \"id\": \"x/123\",\n"
    ));
    assert!(!matches(&["a...c".into()], "abbbd\n"));
    assert!(!matches(&["a".into()], "a\nb\n"));
}

/// README.md, the docs and mounts.toml point only at files that are in the repository.
#[test]
fn docs_link_only_files_in_the_repository() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut docs = vec![
        root.join("README.md"),
        root.join("ARCHITECTURE.md"),
        root.join("SECURITY.md"),
    ];
    for e in std::fs::read_dir(root.join("docs"))
        .expect("docs")
        .flatten()
    {
        if e.path().extension().is_some_and(|x| x == "md") {
            docs.push(e.path());
        }
    }
    let mut broken = Vec::new();
    for doc in &docs {
        let text = std::fs::read_to_string(doc).expect("doc");
        let dir = doc.parent().expect("dir");
        for (i, _) in text.match_indices("](") {
            let rest = &text[i + 2..];
            let Some(end) = rest.find(')') else { continue };
            let target = &rest[..end];
            if target.starts_with("http://")
                || target.starts_with("https://")
                || target.starts_with('#')
            {
                continue;
            }
            let file = target.split('#').next().unwrap_or(target);
            if !dir.join(file).exists() {
                broken.push(format!("{}: {target}", doc.display()));
            }
        }
        if text.contains("SPEC.md") || text.contains("SPEC §") {
            broken.push(format!(
                "{}: mentions SPEC, which is not in the repository",
                doc.display()
            ));
        }
    }
    let cfg = std::fs::read_to_string(root.join("mounts.toml")).expect("mounts.toml");
    assert!(!cfg.contains("SPEC"), "mounts.toml points at SPEC");
    for word in cfg.split_whitespace().filter(|w| w.starts_with("docs/")) {
        let file = word
            .split('#')
            .next()
            .unwrap_or(word)
            .trim_end_matches(['.', ',', ';']);
        if !root.join(file).exists() {
            broken.push(format!("mounts.toml: {word}"));
        }
    }
    assert!(
        broken.is_empty(),
        "links to files not in the repository:\n{}",
        broken.join("\n")
    );
}
