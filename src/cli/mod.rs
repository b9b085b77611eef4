//! The command line: `server` runs the daemon; every other command is file operations on a
//! running mount (nothing more), printed like the getting-started guide.

mod output;
mod transit;

use crate::config::Config;
use crate::daemon::{self, ServerArgs};
use clap::{Parser, Subcommand};
use std::io::Read;
use std::path::{Path, PathBuf};

#[derive(Parser)]
#[command(
    name = "nomadfs",
    version,
    about = "Secrets as files: a FUSE secrets store"
)]
struct Cli {
    /// The nomadfs mountpoint (default: $NOMADFS_MOUNT, then `mountpoint` in the config).
    #[arg(long, global = true)]
    mount: Option<PathBuf>,
    /// Config file used to find the mountpoint (default: ./mounts.toml, /etc/nomadfs/mounts.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (SIGINT/SIGTERM unmount cleanly).
    Server {
        /// Throwaway mode: memory store, unsealed, secret/ mounted; everything gone at exit.
        #[arg(long)]
        dev: bool,
        /// Read the passphrase from this file.
        #[arg(long)]
        passphrase_file: Option<PathBuf>,
        /// Mountpoint (overrides the config; with --dev, default is a new temp dir).
        mountpoint: Option<PathBuf>,
    },
    /// List the mounts.
    Mounts,
    /// Mount a backend of TYPE at PATH (default: the type's name).
    Mount {
        #[arg(value_name = "TYPE")]
        kind: String,
        path: Option<String>,
        #[arg(long)]
        description: Option<String>,
    },
    /// Unmount PATH: revokes its leases and deletes its data.
    Unmount { path: String },
    /// Move the mount at FROM to TO (data kept, leases revoked).
    Remount { from: String, to: String },
    /// Read a path and print it as a Key/Value table.
    Read {
        path: String,
        /// Print the raw bytes instead of a table.
        #[arg(long)]
        raw: bool,
    },
    /// Write key=value pairs (stored as a JSON object), or @FILE / - for raw bytes.
    Write {
        path: String,
        #[arg(required = true)]
        data: Vec<String>,
    },
    /// Seal state, version, storage.
    Status,
    /// Revoke the lease ID (its secret is destroyed upstream first); with -prefix, every lease
    /// under ID.
    Revoke {
        /// Treat ID as a prefix (`aws/creds/deploy`) and revoke everything under it.
        #[arg(long)]
        prefix: bool,
        id: String,
    },
    /// Renew the lease ID by INCREMENT (seconds or 1h/30m; default: the lease's own TTL),
    /// never past its max TTL.
    Renew {
        id: String,
        increment: Option<String>,
    },
    /// Encrypt stdin with transit key KEY (`NAME`, or `MOUNT/NAME`; default mount transit/)
    /// and print the ciphertext.
    Encrypt { key: String },
    /// Decrypt a ciphertext from stdin with transit key KEY and write the plaintext bytes.
    Decrypt { key: String },
    /// Re-encrypt a ciphertext from stdin under KEY's newest version and print it.
    Rewrap { key: String },
    /// Audit log tools (work on files; no mount needed).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check FILE's hash chain: every line parses, seq increments by 1, each prev matches.
    /// Cannot detect a truncated tail (compare the last hash with a checkpoint for that).
    Verify { file: PathBuf },
}

pub fn run() -> i32 {
    // Vault spells it `-prefix`; accept that as well as `--prefix`.
    let args = std::env::args_os().map(|a| if a == "-prefix" { "--prefix".into() } else { a });
    let cli = Cli::parse_from(args);
    if let Cmd::Server {
        dev,
        passphrase_file,
        mountpoint,
    } = cli.cmd
    {
        init_logging();
        return daemon::serve(ServerArgs {
            config: cli.config,
            dev,
            mountpoint,
            passphrase_file,
        });
    }
    if let Cmd::Audit {
        cmd: AuditCmd::Verify { file },
    } = &cli.cmd
    {
        return match audit_verify(file) {
            Ok(msg) => {
                output::line(&msg);
                0
            }
            Err(msg) => {
                eprintln!("Error: {msg}");
                1
            }
        };
    }
    match client(&cli) {
        Ok(()) => 0,
        Err(msg) => {
            eprintln!("Error: {msg}");
            daemon::EXIT_ERROR
        }
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("NOMADFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn find_mount(cli: &Cli) -> Result<PathBuf, String> {
    if let Some(m) = &cli.mount {
        return Ok(m.clone());
    }
    if let Some(m) = std::env::var_os("NOMADFS_MOUNT") {
        return Ok(PathBuf::from(m));
    }
    let candidates: Vec<PathBuf> = match &cli.config {
        Some(c) => vec![c.clone()],
        None => vec![
            PathBuf::from("mounts.toml"),
            PathBuf::from("/etc/nomadfs/mounts.toml"),
        ],
    };
    for c in candidates {
        if c.exists() {
            return Ok(Config::load(&c)?.mountpoint);
        }
    }
    Err("cannot find the nomadfs mount: pass --mount, set NOMADFS_MOUNT, or --config".into())
}

/// Write a file on the mount and fsync it: the daemon commits at fsync/close and reports a
/// refusal there; `std::fs::write` would drop an error returned by close(2).
fn write_file(path: &Path, data: impl AsRef<[u8]>) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(path)?;
    f.write_all(data.as_ref())?;
    f.sync_all()
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> String {
    format!("{what} {}: {e}", path.display())
}

fn client(cli: &Cli) -> Result<(), String> {
    let mnt = find_mount(cli)?;
    let at = |p: &str| mnt.join(p.trim_start_matches('/'));
    match &cli.cmd {
        Cmd::Server { .. } | Cmd::Audit { .. } => Ok(()),
        Cmd::Mounts => {
            let p = at("sys/mounts.table");
            let t = std::fs::read_to_string(&p).map_err(|e| io_err("reading", &p, e))?;
            output::raw(&t);
            Ok(())
        }
        Cmd::Mount {
            kind,
            path,
            description,
        } => {
            let name = path
                .as_deref()
                .unwrap_or(kind)
                .trim_end_matches('/')
                .to_string();
            let p = at(&format!("sys/mounts/{name}"));
            let body = match description {
                Some(d) => format!("type = {kind:?}\ndescription = {d:?}\n"),
                None => format!("{kind}\n"),
            };
            write_file(&p, body).map_err(|e| io_err("mounting", &p, e))?;
            output::line(&format!(
                "Success! Enabled the {kind} secrets engine at: {name}/"
            ));
            Ok(())
        }
        Cmd::Unmount { path } => {
            let name = path.trim_end_matches('/');
            let p = at(&format!("sys/mounts/{name}"));
            std::fs::remove_file(&p).map_err(|e| io_err("unmounting", &p, e))?;
            output::line(&format!("Success! Disabled the secrets engine at: {name}/"));
            Ok(())
        }
        Cmd::Remount { from, to } => {
            let (f, t) = (from.trim_end_matches('/'), to.trim_end_matches('/'));
            let (pf, pt) = (
                at(&format!("sys/mounts/{f}")),
                at(&format!("sys/mounts/{t}")),
            );
            std::fs::rename(&pf, &pt).map_err(|e| io_err("remounting", &pf, e))?;
            output::line(&format!(
                "Success! Moved the secrets engine at {f}/ to {t}/"
            ));
            Ok(())
        }
        Cmd::Read { path, raw } => {
            let p = at(path);
            let data = std::fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
            if *raw {
                use std::io::Write;
                std::io::stdout()
                    .write_all(&data)
                    .map_err(|e| format!("writing stdout: {e}"))?;
                return Ok(());
            }
            output::kv_table(&rows_of(&data));
            Ok(())
        }
        Cmd::Write { path, data } => {
            let body = parse_write_args(data)?;
            let p = at(path);
            write_file(&p, body).map_err(|e| io_err("writing", &p, e))?;
            output::line(&format!("Success! Data written to: {path}"));
            Ok(())
        }
        Cmd::Revoke { prefix, id } => {
            let id = id.trim_matches('/');
            let p = at(&format!("sys/leases/{id}"));
            if *prefix {
                let meta = std::fs::metadata(&p).map_err(|e| io_err("revoking", &p, e))?;
                if meta.is_dir() {
                    std::fs::remove_dir_all(&p).map_err(|e| io_err("revoking", &p, e))?;
                } else {
                    std::fs::remove_file(&p).map_err(|e| io_err("revoking", &p, e))?;
                }
                output::line(&format!("Success! Revoked any leases with prefix: {id}"));
            } else {
                std::fs::remove_file(&p).map_err(|e| io_err("revoking", &p, e))?;
                output::line(&format!("Success! Revoked lease: {id}"));
            }
            Ok(())
        }
        Cmd::Renew { id, increment } => {
            let id = id.trim_matches('/');
            let p = at(&format!("sys/leases/{id}"));
            let body = increment.clone().unwrap_or_default();
            write_file(&p, format!("{body}\n")).map_err(|e| io_err("renewing", &p, e))?;
            let data = std::fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
            output::kv_table(&rows_of(&data));
            Ok(())
        }
        Cmd::Encrypt { key } => transit::run(&mnt, transit::Op::Encrypt, key),
        Cmd::Decrypt { key } => transit::run(&mnt, transit::Op::Decrypt, key),
        Cmd::Rewrap { key } => transit::run(&mnt, transit::Op::Rewrap, key),
        Cmd::Status => {
            let p = at("sys/health");
            let data = std::fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
            output::kv_table(&rows_of(&data));
            Ok(())
        }
    }
}

/// `audit verify FILE`: `ok: N lines, chain intact`, or the first failure.
pub fn audit_verify(file: &Path) -> Result<String, String> {
    let f = std::fs::File::open(file).map_err(|e| io_err("opening", file, e))?;
    match nomadfs_core::audit::verify(std::io::BufReader::new(f)) {
        Ok(r) => Ok(format!("ok: {} lines, chain intact", r.lines)),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

/// Turn file content into Key/Value rows: a JSON object gives one row per key (also `k=v`
/// lines); anything else is one `value` row.
pub fn rows_of(data: &[u8]) -> Vec<(String, String)> {
    if let Ok(serde_json::Value::Object(map)) = serde_json::from_slice::<serde_json::Value>(data) {
        return map
            .into_iter()
            .map(|(k, v)| {
                let v = match v {
                    serde_json::Value::String(s) => s,
                    serde_json::Value::Null => "n/a".into(),
                    other => other.to_string(),
                };
                (k, v)
            })
            .collect();
    }
    let text = String::from_utf8_lossy(data);
    vec![("value".to_string(), text.trim_end_matches('\n').to_string())]
}

/// `key=value…` → a JSON object; `@FILE` → the file's bytes; `-` → stdin.
pub fn parse_write_args(args: &[String]) -> Result<Vec<u8>, String> {
    if let [one] = args {
        if one == "-" {
            let mut buf = Vec::new();
            std::io::stdin()
                .read_to_end(&mut buf)
                .map_err(|e| format!("reading stdin: {e}"))?;
            return Ok(buf);
        }
        if let Some(file) = one.strip_prefix('@') {
            return std::fs::read(file).map_err(|e| format!("reading {file}: {e}"));
        }
    }
    let mut map = serde_json::Map::new();
    for a in args {
        let (k, v) = a
            .split_once('=')
            .ok_or_else(|| format!("expected key=value, @FILE or -, got {a:?}"))?;
        if k.is_empty() {
            return Err(format!("empty key in {a:?}"));
        }
        let v = match v.strip_prefix('@') {
            Some(file) => {
                std::fs::read_to_string(file).map_err(|e| format!("reading {file}: {e}"))?
            }
            None => v.to_string(),
        };
        map.insert(k.to_string(), serde_json::Value::String(v));
    }
    serde_json::to_vec(&serde_json::Value::Object(map)).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn audit_verify_command() {
        use nomadfs_core::audit::{AuditLog, AuditRecord, FsyncPolicy};
        use nomadfs_core::Caller;
        let cli =
            Cli::try_parse_from(["nomadfs", "audit", "verify", "/x/audit.log"]).expect("parse");
        assert!(matches!(
            cli.cmd,
            Cmd::Audit { cmd: AuditCmd::Verify { ref file } } if file == Path::new("/x/audit.log")
        ));
        let d = tempfile::tempdir().expect("tmp");
        let p = d.path().join("audit.log");
        let log = AuditLog::open(&p, FsyncPolicy::Never).expect("open");
        let c = Caller::new(1, 1, 1);
        let hmac = |_: &[u8]| format!("hmac-sha256:{}", "ab".repeat(32));
        for path in ["a", "b", "c"] {
            let rec = AuditRecord {
                caller: &c,
                op: "read",
                path,
                ok: true,
                errno: None,
                lease_id: None,
                reason: None,
                values: &[("response", b"v")],
            };
            log.record(&rec, &hmac).expect("record");
        }
        assert_eq!(audit_verify(&p).expect("ok"), "ok: 3 lines, chain intact");
        let text = std::fs::read_to_string(&p).expect("read");
        let kept: Vec<&str> = text
            .lines()
            .enumerate()
            .filter(|(i, _)| *i != 1)
            .map(|(_, l)| l)
            .collect();
        write_file(&p, kept.join("\n") + "\n").expect("write");
        let e = audit_verify(&p).expect_err("deleted");
        assert!(e.contains("line 2: deleted line"), "{e}");
        assert!(audit_verify(&d.path().join("none")).is_err());
    }

    #[test]
    fn write_args_make_json() {
        let v = parse_write_args(&["value=world".into(), "a=b=c".into()]).expect("ok");
        let j: serde_json::Value = serde_json::from_slice(&v).expect("json");
        assert_eq!(j["value"], "world");
        assert_eq!(j["a"], "b=c");
        assert!(parse_write_args(&["novalue".into()]).is_err());
        assert!(parse_write_args(&["=x".into()]).is_err());
    }

    #[test]
    fn rows_from_json_and_text() {
        let r = rows_of(br#"{"value":"world","n":3}"#);
        assert!(r.contains(&("value".into(), "world".into())));
        assert!(r.contains(&("n".into(), "3".into())));
        assert_eq!(
            rows_of(b"s3cr3t\n"),
            vec![("value".into(), "s3cr3t".into())]
        );
    }

    mod never_panics {
        use super::super::{parse_write_args, rows_of};
        use proptest::prelude::*;
        use std::collections::BTreeMap;

        fn config() -> ProptestConfig {
            let cases = std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(10_000);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// An argument that never names stdin (`-`) or a file (`@…`, `k=@…`): those read.
        fn arg() -> impl Strategy<Value = String> {
            prop_oneof![".*", "[a-z=]{0,3}=.{0,8}", "[=@a-]{0,4}"]
                .prop_filter("reads stdin or a file", |a| {
                    a != "-" && !a.starts_with('@') && !a.contains("=@")
                })
        }

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn parse_write_args_never_panics(args in prop::collection::vec(arg(), 0..5)) {
                match parse_write_args(&args) {
                    Ok(bytes) => {
                        // key=value pairs become one JSON object, the last value per key wins,
                        // and `rows_of` reads it back.
                        let mut want = BTreeMap::new();
                        for a in &args {
                            let (k, v) = a.split_once('=').expect("only key=value succeeds");
                            prop_assert!(!k.is_empty());
                            want.insert(k.to_string(), v.to_string());
                        }
                        let rows: BTreeMap<String, String> = rows_of(&bytes).into_iter().collect();
                        prop_assert_eq!(rows, want);
                    }
                    Err(e) => prop_assert!(!e.is_empty()),
                }
            }

            #[test]
            fn rows_of_never_panics(data in prop_oneof![
                prop::collection::vec(any::<u8>(), 0..128),
                ".*".prop_map(String::into_bytes),
                "\\{(\"[a-z]{0,3}\": ?(null|[0-9e.-]{1,6}|\"[^\"]{0,4}\"|\\[\\]|\\{\\}|true), ?){0,3}\\}"
                    .prop_map(String::into_bytes),
            ]) {
                let rows = rows_of(&data);
                if serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(&data).is_err() {
                    prop_assert_eq!(rows.len(), 1);
                    prop_assert_eq!(&rows[0].0, "value");
                }
            }
        }
    }
}
