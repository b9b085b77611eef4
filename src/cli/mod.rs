//! The command line: `server` runs the daemon; every other command is file operations on a
//! running mount (nothing more), printed like the getting-started guide.
//!
//! Size: over ~500 lines because one clap tree, each command a few lines of file operations; output
//! formatting and transit helpers live beside it.

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
    // `nomadfs help PATH` is the path help (as `vault path-help`); `--help` is clap's.
    disable_help_subcommand = true,
    about = "Secrets as files: a FUSE secrets store",
    long_about = "Secrets as files: a FUSE secrets store.\n\n\
        `nomadfs server` runs the daemon; every other command is plain file operations on a \
        running mount. The mount is the one the current directory is in (then paths are \
        relative to the current directory), else --mount, $NOMADFS_MOUNT, or `mountpoint` in \
        the config (./mounts.toml, /etc/nomadfs/mounts.toml)."
)]
struct Cli {
    /// The nomadfs mountpoint to use (default: the mount the current directory is in, then
    /// $NOMADFS_MOUNT, then `mountpoint` in the config).
    #[arg(long, global = true, value_name = "DIR")]
    mount: Option<PathBuf>,
    /// Config file (server: required unless --dev; other commands: to find the mountpoint;
    /// default ./mounts.toml, then /etc/nomadfs/mounts.toml).
    #[arg(long, global = true, value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the daemon in the foreground (SIGINT/SIGTERM unmount cleanly).
    #[command(after_help = "\
Passphrase, first that applies:
  --passphrase-file FILE   read it from FILE (one trailing newline dropped); for services:
                           --passphrase-file ${CREDENTIALS_DIRECTORY}/passphrase
  NOMADFS_PASSPHRASE       the environment variable (removed from the daemon's environment)
  a terminal               asked without echo; a new store asks twice
  otherwise                the mount starts sealed: write the passphrase to MNT/sys/unseal

Logging: NOMADFS_LOG (e.g. info, debug, nomadfs=debug); stderr, colours only at a terminal.
Under systemd (Type=notify), READY=1 is sent once mounted and unsealed, STOPPING=1 at stop.
Exit codes: 0 clean stop, 1 any start or runtime failure (the reason is logged), 2 wrong
passphrase.")]
    Server {
        /// Throwaway mode: memory store, unsealed, secret/ mounted; everything gone at exit.
        #[arg(long)]
        dev: bool,
        /// Read the passphrase from FILE (instead of $NOMADFS_PASSPHRASE or a prompt).
        #[arg(long, value_name = "FILE")]
        passphrase_file: Option<PathBuf>,
        /// Mountpoint (overrides the config; with --dev, default is a new temp dir).
        #[arg(value_name = "MOUNTPOINT")]
        mountpoint: Option<PathBuf>,
    },
    /// Show seal state, version, storage, lease count and the mount table (= sys/health,
    /// sys/mounts.table). Exit code 2 when sealed.
    Status,
    /// List the mounts (= cat sys/mounts.table).
    Mounts,
    /// Mount a backend of TYPE at PATH (default: the type's name) (= write sys/mounts/PATH).
    Mount {
        /// Backend type: generic, aws, postgresql, transit.
        #[arg(value_name = "TYPE")]
        kind: String,
        /// Where to mount it (a top-level name such as `team-a`); default: TYPE.
        #[arg(value_name = "PATH")]
        path: Option<String>,
        /// A description shown in the mount table.
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Unmount PATH: revokes its leases and deletes its data (= rm sys/mounts/PATH).
    Unmount {
        /// The mount's path, e.g. `team-a` or `team-a/`.
        #[arg(value_name = "PATH")]
        path: String,
    },
    /// Move the mount at FROM to TO (data kept, leases revoked) (= mv sys/mounts/FROM …/TO).
    Remount {
        /// The mount's current path, e.g. `team-a`.
        #[arg(value_name = "FROM")]
        from: String,
        /// Its new path, e.g. `team-b` (leases under FROM are revoked).
        #[arg(value_name = "TO")]
        to: String,
    },
    /// List PATH under a `Keys` header: one name per line, folders end in `/` (= ls PATH).
    #[command(visible_alias = "ls")]
    List {
        /// A folder, relative to the current directory inside the mount, else to the mount's
        /// root (e.g. `secret/app`); default: the current folder.
        #[arg(value_name = "PATH")]
        path: Option<String>,
    },
    /// Read PATH and print it as a Key/Value table (= cat PATH).
    Read {
        /// A file, relative to the current directory inside the mount, else to the mount's
        /// root (e.g. `secret/hello`, `aws/creds/deploy`).
        #[arg(value_name = "PATH")]
        path: String,
        /// Print the raw bytes instead of a table.
        #[arg(long)]
        raw: bool,
    },
    /// Write PATH: key=value pairs (stored as one JSON object), or @FILE / - for raw bytes.
    #[command(after_help = "\
Examples:
  nomadfs write secret/hello value=world
  nomadfs write secret/db user=app pass=@pass.txt   (a value read from a file)
  nomadfs write secret/cert @cert.pem                (the file's bytes, as they are)
  printf s3cr3t | nomadfs write secret/pw -          (stdin)")]
    Write {
        /// A file, relative to the current directory inside the mount, else to the mount's root.
        #[arg(value_name = "PATH")]
        path: String,
        /// `key=value...` (a value `@FILE` is read from FILE), or one `@FILE`, or `-` (stdin).
        #[arg(required = true, value_name = "key=value... | @FILE | -")]
        data: Vec<String>,
    },
    /// Print the help for PATH (= cat PATH/.help, or the nearest folder above with one; like
    /// `vault path-help`).
    Help {
        /// A mount or a path inside one (e.g. `aws`, `aws/creds/deploy`, `sys`); default: the
        /// current folder (the mount's root help lists every mount).
        #[arg(value_name = "PATH")]
        path: Option<String>,
    },
    /// Seal: keys leave memory and every mount disappears until unsealed (= write sys/seal).
    Seal,
    /// Unseal with the passphrase: asked without echo at a terminal, else read from stdin
    /// (one trailing newline dropped) (= write sys/unseal).
    Unseal,
    /// Revoke the lease ID (its secret is destroyed upstream first); with -prefix, every lease
    /// under ID (= rm sys/leases/ID).
    Revoke {
        /// Treat ID as a prefix (`aws/creds/deploy`) and revoke everything under it.
        #[arg(long)]
        prefix: bool,
        /// A lease id as shown by `read` (`aws/creds/deploy/ID`), or a prefix with -prefix.
        #[arg(value_name = "ID")]
        id: String,
    },
    /// Renew the lease ID by INCREMENT, never past its max TTL (= write sys/leases/ID).
    Renew {
        /// A lease id as shown by `read` (`aws/creds/deploy/ID`).
        #[arg(value_name = "ID")]
        id: String,
        /// Seconds or a duration (1h, 30m); default: the lease's own TTL.
        #[arg(value_name = "INCREMENT")]
        increment: Option<String>,
    },
    /// Encrypt stdin with transit key KEY and print the ciphertext.
    Encrypt {
        /// `NAME` (mount transit/) or `MOUNT/NAME`.
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Decrypt a ciphertext from stdin with transit key KEY and write the plaintext bytes.
    Decrypt {
        /// `NAME` (mount transit/) or `MOUNT/NAME`.
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Re-encrypt a ciphertext from stdin under KEY's newest version and print it.
    Rewrap {
        /// `NAME` (mount transit/) or `MOUNT/NAME`.
        #[arg(value_name = "KEY")]
        key: String,
    },
    /// Audit log tools (work on files; no mount needed).
    Audit {
        #[command(subcommand)]
        cmd: AuditCmd,
    },
    /// Print the man page (roff) to stdout: `nomadfs man | man -l -`.
    Man,
    /// Print a completion script for SHELL: `nomadfs completions bash > /etc/bash_completion.d/nomadfs`.
    Completions {
        /// bash, zsh or fish.
        #[arg(value_name = "SHELL")]
        shell: CompletionShell,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum CompletionShell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand)]
enum AuditCmd {
    /// Check FILE's hash chain: every line parses, seq increments by 1, each prev matches.
    /// Cannot detect a truncated tail (compare the last hash with a checkpoint for that).
    Verify {
        /// The audit log file.
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

pub fn run() -> i32 {
    // Vault spells it `-prefix`; accept that as well as `--prefix`.
    let args = std::env::args_os().map(|a| if a == "-prefix" { "--prefix".into() } else { a });
    let cli = Cli::parse_from(args);
    match cli.cmd {
        Cmd::Server {
            dev,
            passphrase_file,
            mountpoint,
        } => {
            init_logging();
            return daemon::serve(ServerArgs {
                config: cli.config,
                dev,
                mountpoint,
                passphrase_file,
            });
        }
        Cmd::Man => {
            return match man_page() {
                Ok(page) => output::bytes(&page),
                Err(msg) => fail(&msg),
            }
        }
        Cmd::Completions { shell } => return output::bytes(&completions(shell)),
        Cmd::Audit {
            cmd: AuditCmd::Verify { ref file },
        } => {
            return match audit_verify(file) {
                Ok(msg) => {
                    output::line(&msg);
                    0
                }
                Err(msg) => fail(&msg),
            };
        }
        _ => {}
    }
    match client(&cli) {
        Ok(code) => code,
        Err(msg) => fail(&msg),
    }
}

fn fail(msg: &str) -> i32 {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "Error: {msg}");
    daemon::EXIT_ERROR
}

/// The man page: nomadfs(1), every subcommand's options and arguments included.
fn man_page() -> Result<Vec<u8>, String> {
    use clap::CommandFactory;
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out).map_err(|e| e.to_string())?;
    man.render_name_section(&mut out)
        .map_err(|e| e.to_string())?;
    man.render_synopsis_section(&mut out)
        .map_err(|e| e.to_string())?;
    man.render_description_section(&mut out)
        .map_err(|e| e.to_string())?;
    man.render_options_section(&mut out)
        .map_err(|e| e.to_string())?;
    man.render_subcommands_section(&mut out)
        .map_err(|e| e.to_string())?;
    // One section per subcommand, with its own arguments (clap_mangen lists only names).
    for sub in cmd.get_subcommands() {
        let name = sub.get_name().to_string();
        let mut help = sub.clone().bin_name(format!("nomadfs {name}"));
        // The long help starts with the subcommand's description.
        let text = help.render_long_help().to_string();
        let mut roff = clap_mangen::roff::Roff::new();
        roff.control("SH", [format!("NOMADFS {}", name.to_uppercase()).as_str()]);
        roff.control("nf", []);
        for line in text.lines() {
            roff.text([clap_mangen::roff::roman(line)]);
        }
        roff.control("fi", []);
        roff.to_writer(&mut out).map_err(|e| e.to_string())?;
    }
    man.render_version_section(&mut out)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

fn completions(shell: CompletionShell) -> Vec<u8> {
    use clap::CommandFactory;
    let mut cmd = Cli::command();
    let mut out = Vec::new();
    let sh = match shell {
        CompletionShell::Bash => clap_complete::Shell::Bash,
        CompletionShell::Zsh => clap_complete::Shell::Zsh,
        CompletionShell::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(sh, &mut cmd, "nomadfs", &mut out);
    out
}

/// The daemon's log writer: stderr, and a failed write (EPIPE from `server 2>&1 | head -1`,
/// a full disk) is dropped. tracing-subscriber would otherwise report it with `eprintln!`,
/// which panics on a closed stderr and so killed the daemon before it could unmount.
struct QuietStderr;

impl std::io::Write for QuietStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = std::io::stderr().write_all(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

fn init_logging() {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("NOMADFS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        // Colours only for a person at a terminal, never into a file, pipe or journal.
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(|| QuietStderr)
        .log_internal_errors(false)
        .init();
}

/// Where the CLI works: the mount's root, and the current directory inside it (if inside).
struct Place {
    mnt: PathBuf,
    /// The current directory relative to `mnt`, when the CLI runs inside that mount.
    cwd_rel: Option<PathBuf>,
}

impl Place {
    /// A path of the mount's own layout (`sys/health`): always from the root.
    fn root(&self, p: &str) -> PathBuf {
        self.mnt.join(p.trim_start_matches('/'))
    }

    /// A path the user typed: relative to the current directory when inside the mount, else
    /// to the mount's root; `/x` is always from the root; a path already under the
    /// mountpoint is taken as it is.
    fn user(&self, p: &str) -> PathBuf {
        let as_path = Path::new(p);
        if as_path.is_absolute() && as_path.starts_with(&self.mnt) {
            return as_path.to_path_buf();
        }
        if p.starts_with('/') {
            return self.root(p);
        }
        match &self.cwd_rel {
            Some(rel) => self.mnt.join(rel).join(p),
            None => self.mnt.join(p),
        }
    }
}

/// The mount: the one the current directory is in, else --mount, $NOMADFS_MOUNT, the config.
/// An explicit --mount naming another mount wins over the current directory's.
fn find_mount(cli: &Cli) -> Result<Place, String> {
    let inside = std::env::current_dir()
        .ok()
        .and_then(|cwd| crate::mountinfo::nomadfs_containing(&crate::mountinfo::current(), &cwd));
    let explicit = cli.mount.as_ref().map(|m| crate::mountpoint::absolute(m));
    if let Some((mnt, rel)) = &inside {
        if explicit.as_ref().is_none_or(|e| e == mnt) {
            return Ok(Place {
                mnt: mnt.clone(),
                cwd_rel: Some(rel.clone()),
            });
        }
    }
    let mnt = match explicit {
        Some(m) => m,
        None => find_configured_mount(cli)?,
    };
    let cwd_rel = inside.and_then(|(m, rel)| (m == mnt).then_some(rel));
    Ok(Place { mnt, cwd_rel })
}

fn find_configured_mount(cli: &Cli) -> Result<PathBuf, String> {
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
    Err(
        "cannot find the nomadfs mount: run the command inside the mount, pass --mount, set \
         NOMADFS_MOUNT, or --config"
            .into(),
    )
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
    match refusal_reason(path) {
        Some(reason) => format!("{what} {}: {e}: {reason}", path.display()),
        None => format!("{what} {}: {e}", path.display()),
    }
}

/// Why the daemon refused the last request on `path`: the newest line of the caller's own
/// `sys/self/errors` (at the root of the mount `path` is in) that names it.
fn refusal_reason(path: &Path) -> Option<String> {
    let root = path
        .ancestors()
        .skip(1)
        .find(|a| a.join("sys/self/errors").is_file())?;
    let rel = path
        .strip_prefix(root)
        .ok()?
        .to_str()?
        .trim_end_matches('/');
    let text = std::fs::read_to_string(root.join("sys/self/errors")).ok()?;
    // `TIME OPERATION PATH ERRNO REASON`, tab-separated.
    text.lines().rev().find_map(|l| {
        let f: Vec<&str> = l.splitn(5, '\t').collect();
        match f[..] {
            [_, _, p, _, reason] if p == rel || p.starts_with(&format!("{rel}/")) => {
                Some(reason.to_string())
            }
            _ => None,
        }
    })
}

fn client(cli: &Cli) -> Result<i32, String> {
    let place = find_mount(cli)?;
    let at = |p: &str| place.root(p);
    match &cli.cmd {
        Cmd::Server { .. } | Cmd::Audit { .. } | Cmd::Man | Cmd::Completions { .. } => {}
        Cmd::Mounts => {
            let p = at("sys/mounts.table");
            let t = std::fs::read_to_string(&p).map_err(|e| io_err("reading", &p, e))?;
            output::raw(&t);
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
        }
        Cmd::Unmount { path } => {
            let name = path.trim_end_matches('/');
            let p = at(&format!("sys/mounts/{name}"));
            std::fs::remove_file(&p).map_err(|e| io_err("unmounting", &p, e))?;
            output::line(&format!("Success! Disabled the secrets engine at: {name}/"));
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
        }
        Cmd::List { path } => {
            let p = place.user(path.as_deref().unwrap_or("."));
            let mut names = Vec::new();
            for e in std::fs::read_dir(&p).map_err(|e| io_err("listing", &p, e))? {
                let e = e.map_err(|e| io_err("listing", &p, e))?;
                let mut n = e.file_name().to_string_lossy().to_string();
                if n == ".help" {
                    continue;
                }
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    n.push('/');
                }
                names.push(n);
            }
            names.sort();
            output::line("Keys");
            output::line("----");
            for n in names {
                output::line(&n);
            }
        }
        Cmd::Read { path, raw } => {
            let p = place.user(path);
            let data = std::fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
            if *raw {
                output::bytes(&data);
                return Ok(0);
            }
            output::kv_table(&rows_of(&data));
        }
        Cmd::Write { path, data } => {
            let body = parse_write_args(data)?;
            let p = place.user(path);
            // As `vault write secret/app/db`: missing folders are made (mkdir -p) first.
            let r = match write_file(&p, &body) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => match p.parent() {
                    Some(dir) => std::fs::create_dir_all(dir)
                        .map_err(|e| io_err("making the folder", dir, e))
                        .and_then(|()| write_file(&p, &body).map_err(|e| io_err("writing", &p, e))),
                    None => Err(io_err("writing", &p, e)),
                },
                r => r.map_err(|e| io_err("writing", &p, e)),
            };
            r?;
            output::line(&format!("Success! Data written to: {path}"));
        }
        Cmd::Help { path } => {
            let start = place.user(path.as_deref().unwrap_or("."));
            let text = help_text(&place.mnt, &start)?;
            output::raw(&text);
        }
        Cmd::Seal => {
            let p = at("sys/seal");
            write_file(&p, "seal\n").map_err(|e| io_err("sealing", &p, e))?;
            output::line("Success! nomadfs is sealed.");
        }
        Cmd::Unseal => {
            let pass = read_unseal_passphrase()?;
            let p = at("sys/unseal");
            write_file(&p, &*pass).map_err(|e| io_err("unsealing", &p, e))?;
            return status(&place);
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
        }
        Cmd::Renew { id, increment } => {
            let id = id.trim_matches('/');
            let p = at(&format!("sys/leases/{id}"));
            let body = increment.clone().unwrap_or_default();
            write_file(&p, format!("{body}\n")).map_err(|e| io_err("renewing", &p, e))?;
            let data = std::fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
            output::kv_table(&rows_of(&data));
        }
        Cmd::Encrypt { key } => transit::run(&place.mnt, transit::Op::Encrypt, key)?,
        Cmd::Decrypt { key } => transit::run(&place.mnt, transit::Op::Decrypt, key)?,
        Cmd::Rewrap { key } => transit::run(&place.mnt, transit::Op::Rewrap, key)?,
        Cmd::Status => return status(&place),
    }
    Ok(0)
}

/// `status`: health (seal state, version, storage, lease count), then the mount table while
/// unsealed. 0 when unsealed, 2 when sealed (as `vault status`).
fn status(place: &Place) -> Result<i32, String> {
    let p = place.root("sys/health");
    let data = std::fs::read(&p).map_err(|e| io_err("reading", &p, e))?;
    let mut rows = vec![("Mount".to_string(), place.mnt.display().to_string())];
    rows.extend(rows_of(&data));
    output::kv_table(&rows);
    let sealed = rows.iter().any(|(k, v)| k == "sealed" && v == "true");
    if sealed {
        return Ok(2);
    }
    let t = place.root("sys/mounts.table");
    let table = std::fs::read_to_string(&t).map_err(|e| io_err("reading", &t, e))?;
    output::line("");
    output::raw(&table);
    Ok(0)
}

/// PATH/.help, or the nearest folder above PATH (inside the mount) that has one.
fn help_text(mnt: &Path, start: &Path) -> Result<String, String> {
    let mut dir = start.to_path_buf();
    loop {
        let p = dir.join(".help");
        match std::fs::read_to_string(&p) {
            Ok(t) => return Ok(t),
            Err(e) if dir.as_path() == mnt || !dir.starts_with(mnt) || !dir.pop() => {
                return Err(io_err("reading", &p, e))
            }
            Err(_) => {}
        }
    }
}

/// The passphrase for `unseal`: without echo at a terminal, else stdin (one trailing newline
/// dropped).
fn read_unseal_passphrase() -> Result<zeroize::Zeroizing<Vec<u8>>, String> {
    use std::io::IsTerminal;
    let mut buf = zeroize::Zeroizing::new(Vec::with_capacity(64 * 1024));
    if std::io::stdin().is_terminal() {
        let p = zeroize::Zeroizing::new(
            rpassword::prompt_password("nomadfs passphrase: ")
                .map_err(|e| format!("cannot read the passphrase: {e}"))?,
        );
        buf.extend_from_slice(p.as_bytes());
    } else {
        std::io::stdin()
            .read_to_end(&mut buf)
            .map_err(|e| format!("reading the passphrase from stdin: {e}"))?;
        if buf.last() == Some(&b'\n') {
            buf.pop();
            if buf.last() == Some(&b'\r') {
                buf.pop();
            }
        }
    }
    if buf.is_empty() {
        return Err("empty passphrase".into());
    }
    Ok(buf)
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
    fn command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
        let cli = Cli::try_parse_from(["nomadfs", "help", "aws/creds"]).expect("help PATH");
        assert!(matches!(cli.cmd, Cmd::Help { path: Some(ref p) } if p == "aws/creds"));
        assert!(matches!(
            Cli::try_parse_from(["nomadfs", "ls"]).expect("ls").cmd,
            Cmd::List { path: None }
        ));
    }

    #[test]
    fn every_subcommand_help_names_its_arguments() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = |cmd: &mut clap::Command, name: &str| {
            cmd.find_subcommand_mut(name)
                .expect(name)
                .render_long_help()
                .to_string()
        };
        let w = help(&mut cmd, "write");
        assert!(w.contains("key=value... | @FILE | -"), "{w}");
        assert!(w.contains("<PATH>"), "{w}");
        let s = help(&mut cmd, "server");
        assert!(
            s.contains("NOMADFS_PASSPHRASE") && s.contains("--passphrase-file"),
            "{s}"
        );
        assert!(s.contains("CREDENTIALS_DIRECTORY"), "{s}");
        let mut all: Vec<clap::Command> = Cli::command().get_subcommands().cloned().collect();
        while let Some(sub) = all.pop() {
            assert!(sub.get_about().is_some(), "{} has no about", sub.get_name());
            for a in sub.get_arguments() {
                assert!(
                    a.get_help().is_some() || a.get_long_help().is_some(),
                    "{} {} has no help",
                    sub.get_name(),
                    a.get_id()
                );
            }
            all.extend(sub.get_subcommands().cloned());
        }
    }

    #[test]
    fn man_page_and_completions() {
        let man = String::from_utf8(man_page().expect("man")).expect("utf8");
        assert!(
            man.starts_with(".ie") || man.contains(".TH"),
            "{}",
            &man[..200.min(man.len())]
        );
        for s in [
            "NOMADFS WRITE",
            "NOMADFS UNSEAL",
            "NOMADFS_PASSPHRASE",
            "key=value",
        ] {
            assert!(man.contains(s), "man page lacks {s}");
        }
        for (sh, marker) in [
            (CompletionShell::Bash, "complete -F"),
            (CompletionShell::Zsh, "#compdef nomadfs"),
            (CompletionShell::Fish, "complete -c nomadfs"),
        ] {
            let c = String::from_utf8(completions(sh)).expect("utf8");
            assert!(c.contains(marker), "{marker}");
            assert!(c.contains("unseal"), "{marker}: no unseal");
        }
    }

    #[test]
    fn user_paths_follow_the_current_directory_inside_the_mount() {
        let inside = Place {
            mnt: PathBuf::from("/run/nomadfs"),
            cwd_rel: Some(PathBuf::from("secret/app")),
        };
        assert_eq!(inside.user("db"), Path::new("/run/nomadfs/secret/app/db"));
        assert_eq!(inside.user("/secret/x"), Path::new("/run/nomadfs/secret/x"));
        assert_eq!(
            inside.user("/run/nomadfs/aws/creds/deploy"),
            Path::new("/run/nomadfs/aws/creds/deploy")
        );
        assert_eq!(
            inside.root("sys/health"),
            Path::new("/run/nomadfs/sys/health")
        );
        let outside = Place {
            mnt: PathBuf::from("/run/nomadfs"),
            cwd_rel: None,
        };
        assert_eq!(
            outside.user("secret/db"),
            Path::new("/run/nomadfs/secret/db")
        );
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
