//! The daemon's lifecycle: storage, engine, passphrase, unseal, FUSE mount, signals, unmount.
//!
//! Owns: the order of start-up and shut-down and the exit codes (2: wrong passphrase).
//! Must never: log a passphrase, or touch storage when the passphrase is wrong.
//!
//! Size: over ~500 lines because the start sequence in its order (storage, engine, unseal, watches,
//! FUSE, signals), one function per step.

use crate::config::{AuditSetting, Config};
use nomadfs_core::audit::{AuditLog, FsyncPolicy};
use nomadfs_core::backends::Limits;
use nomadfs_core::barrier::{KdfParams, UnsealError};
use nomadfs_core::engine::MountSpec;
use nomadfs_core::gate::AuditMode;
use nomadfs_core::storage::{file::FileStorage, memory::MemoryStorage, Storage};
use nomadfs_core::{Engine, EngineConfig, SecretBytes};
use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub struct ServerArgs {
    pub config: Option<PathBuf>,
    pub dev: bool,
    pub mountpoint: Option<PathBuf>,
    pub passphrase_file: Option<PathBuf>,
}

/// Exit codes.
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_WRONG_PASSPHRASE: i32 = 2;

fn read_passphrase(args: &ServerArgs) -> Result<Option<SecretBytes>, String> {
    if let Some(p) = &args.passphrase_file {
        let raw = std::fs::read(p).map_err(|e| format!("cannot read {}: {e}", p.display()))?;
        let mut s = SecretBytes::new(raw);
        while s
            .expose()
            .last()
            .is_some_and(|b| *b == b'\n' || *b == b'\r')
        {
            s.expose_mut().pop();
        }
        return Ok(Some(s));
    }
    if std::env::var_os(PASSPHRASE_ON_STDIN).is_some() {
        // Handed over by `reexec_without_passphrase_env` through a pipe on stdin.
        std::env::remove_var(PASSPHRASE_ON_STDIN);
        let mut raw = SecretBytes::default();
        // Room for the whole of it up front: no reallocation leaves a copy behind unzeroized.
        raw.expose_mut().reserve(64 * 1024);
        std::io::Read::read_to_end(&mut std::io::stdin(), raw.expose_mut())
            .map_err(|e| format!("cannot read the passphrase handed over on stdin: {e}"))?;
        return Ok(Some(raw));
    }
    if let Some(v) = std::env::var_os("NOMADFS_PASSPHRASE") {
        // Only reached when the re-exec failed: the value also stays in /proc/self/environ.
        std::env::remove_var("NOMADFS_PASSPHRASE");
        use std::os::unix::ffi::OsStringExt;
        return Ok(Some(SecretBytes::new(v.into_vec())));
    }
    Ok(None)
}

/// Write a line to stderr, ignoring failure (a closed stderr must not panic the daemon).
fn say(msg: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{msg}");
}

/// At a terminal: the passphrase, asked once for an existing store; for a new one, say so and
/// ask twice until both match (a typo would otherwise lock the new store for good).
fn prompt_passphrase(initialized: bool, store: &str) -> Result<SecretBytes, String> {
    let ask = |prompt: &str| {
        rpassword::prompt_password(prompt)
            .map(SecretBytes::from)
            .map_err(|e| format!("cannot read the passphrase: {e}"))
    };
    if initialized {
        return ask("nomadfs passphrase: ");
    }
    say(&format!(
        "nomadfs: creating a new store at {store}: choose its passphrase (it cannot be recovered)"
    ));
    loop {
        let first = ask("new passphrase: ")?;
        if first.expose().is_empty() {
            say("nomadfs: the passphrase is empty; try again");
            continue;
        }
        let second = ask("repeat the passphrase: ")?;
        if first.expose() == second.expose() {
            return Ok(first);
        }
        say("nomadfs: the passphrases do not match; try again");
    }
}

/// The daemon's own uid (the default admin), without libc: the owner of /proc/self.
fn own_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self")
        .map(|m| m.uid())
        .unwrap_or(0)
}

fn dev_mountpoint() -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("nomadfs-dev-{}", uuid_suffix()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

fn uuid_suffix() -> String {
    format!(
        "{:08x}",
        std::process::id()
            ^ (std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_nanos())
                .unwrap_or(0))
    )
}

/// Marks a daemon that was re-executed with its passphrase on stdin.
const PASSPHRASE_ON_STDIN: &str = "NOMADFS_PASSPHRASE_ON_STDIN";

/// A passphrase given in the environment stays in the process's initial environment block
/// (`/proc/PID/environ`) for its whole life, whatever `remove_var` does. So the daemon hands it
/// to a fresh image of itself through a pipe on stdin and execs without the variable; the old
/// address space, environment block included, is gone with the exec. Returns only if the exec
/// failed (the caller goes on with the variable, and says so).
fn reexec_without_passphrase_env() {
    use std::io::Write;
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::process::CommandExt;
    let Some(v) = std::env::var_os("NOMADFS_PASSPHRASE") else {
        return;
    };
    let attempt = || -> std::io::Result<std::io::Error> {
        let exe = std::env::current_exe()?;
        let (reader, mut writer) = std::io::pipe()?;
        // A passphrase fits the pipe's buffer (64 KiB); refuse rather than block on a huge one.
        if v.len() > 60 * 1024 {
            return Err(std::io::Error::other("NOMADFS_PASSPHRASE is over 60 KiB"));
        }
        writer.write_all(v.as_bytes())?;
        drop(writer);
        Ok(std::process::Command::new(exe)
            .args(std::env::args_os().skip(1))
            .env_remove("NOMADFS_PASSPHRASE")
            .env(PASSPHRASE_ON_STDIN, "1")
            .stdin(reader)
            .exec())
    };
    let err = match attempt() {
        Ok(e) | Err(e) => e,
    };
    tracing::warn!(
        "could not re-exec to drop NOMADFS_PASSPHRASE from the environment ({err}); it stays in /proc/{}/environ (root-only: the daemon is not dumpable); prefer --passphrase-file",
        std::process::id()
    );
}

pub fn serve(args: ServerArgs) -> i32 {
    crate::sys::ignore_sigpipe();
    if args.passphrase_file.is_none() {
        reexec_without_passphrase_env();
    }
    for problem in crate::sys::harden() {
        tracing::warn!("hardening: {problem}");
    }
    if crate::sys::is_dumpable() {
        tracing::warn!("hardening: the process is still dumpable");
    } else {
        tracing::info!("hardened: not dumpable (PR_GET_DUMPABLE = 0), no core files");
    }
    for problem in nomadfs_fuse::memory::tune() {
        tracing::warn!("allocator: {problem}");
    }
    match crate::sys::lock_memory() {
        Ok(()) => tracing::info!("memory locked: keys and secrets never reach swap"),
        Err(why) => tracing::warn!("memory NOT locked ({why}): secrets may be swapped out; run as root or raise RLIMIT_MEMLOCK to unlimited"),
    }
    match serve_inner(args) {
        Ok(code) => code,
        Err(msg) => {
            // Once: the log goes to stderr already.
            tracing::error!("{msg}");
            EXIT_ERROR
        }
    }
}

/// What a start needs, from `--dev` or from the config.
struct Setup {
    storage: Arc<dyn Storage>,
    engine_cfg: EngineConfig,
    mountpoint: PathBuf,
    allow_other: bool,
    threads: usize,
    /// `kernel_cache = true` (off with `--dev`).
    kernel_cache: bool,
    passphrase: Option<SecretBytes>,
    policies: Vec<nomadfs_core::policy::PolicyDoc>,
    admins: Vec<u32>,
    audit: AuditMode,
    /// Where the store is, for the "creating a new store" prompt.
    store_desc: String,
    /// `STORE.pid` beside a file store's folder (see `mountpoint::pid_file_for`).
    pid_file: Option<PathBuf>,
    /// The etcd store, for the expiry election and the watches (several daemons).
    #[cfg(feature = "etcd")]
    etcd: Option<Arc<nomadfs_core::storage::etcd::EtcdStorage>>,
}

fn dev_setup(args: &ServerArgs) -> Result<Setup, String> {
    let mut pass = vec![0u8; 32];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut pass);
    let mountpoint = match &args.mountpoint {
        Some(m) => crate::mountpoint::absolute(m),
        None => dev_mountpoint()?,
    };
    crate::mountpoint::prepare(&mountpoint, None)?;
    let engine_cfg = EngineConfig {
        kdf: KdfParams::minimum(),
        ..EngineConfig::default()
    };
    tracing::warn!("--dev: audit log off, memory store, everything is gone at exit");
    Ok(Setup {
        storage: Arc::new(MemoryStorage::new()),
        engine_cfg,
        mountpoint,
        allow_other: false,
        threads: crate::config::DEFAULT_THREADS,
        kernel_cache: false,
        passphrase: Some(SecretBytes::new(pass)),
        policies: Vec::new(),
        admins: vec![own_uid()],
        audit: AuditMode::Off,
        store_desc: "memory".into(),
        pid_file: None,
        #[cfg(feature = "etcd")]
        etcd: None,
    })
}

fn config_setup(args: &ServerArgs) -> Result<Setup, String> {
    let path = args
        .config
        .clone()
        .ok_or("server needs --config mounts.toml (or --dev)")?;
    let cfg = Config::load(&path)?;
    let mountpoint =
        crate::mountpoint::absolute(&args.mountpoint.clone().unwrap_or(cfg.mountpoint.clone()));
    let store_dir = (cfg.storage.kind == "file").then(|| {
        cfg.storage
            .path
            .clone()
            .unwrap_or_else(|| PathBuf::from("/var/lib/nomadfs"))
    });
    let pid_file = store_dir
        .as_deref()
        .and_then(crate::mountpoint::pid_file_for);
    // Before the store is opened: a live daemon on this mountpoint holds it too, and its pid
    // says more than "the store is in use".
    crate::mountpoint::prepare(&mountpoint, pid_file.as_deref())?;
    #[cfg(feature = "etcd")]
    let mut etcd = None;
    let (storage, store_desc): (Arc<dyn Storage>, String) = match cfg.storage.kind.as_str() {
        "file" => {
            let dir = store_dir.clone().unwrap_or_default();
            let s = FileStorage::open(&dir).map_err(|e| {
                let holder = pid_file
                    .as_deref()
                    .map(crate::mountpoint::store_holder)
                    .unwrap_or_default();
                format!("{}{holder}", e.message)
            })?;
            (Arc::new(s), dir.display().to_string())
        }
        "memory" => (Arc::new(MemoryStorage::new()), "memory".into()),
        #[cfg(feature = "etcd")]
        "etcd" => {
            use nomadfs_core::storage::etcd::EtcdStorage;
            let prefix = cfg.etcd_prefix();
            tracing::info!(endpoints = ?cfg.storage.endpoints, prefix, tls = cfg.storage.ca_file.is_some(), username = ?cfg.storage.username, "etcd storage");
            let desc = format!("etcd {} prefix {prefix}", cfg.storage.endpoints.join(","));
            let s = EtcdStorage::new(cfg.etcd_config()?).map_err(|e| e.message)?;
            let s = Arc::new(s);
            etcd = Some(s.clone());
            (s, desc)
        }
        other => {
            return Err(format!(
                "storage type {other:?} is not built into this binary"
            ))
        }
    };
    let mut kdf = KdfParams::default();
    if let Some(m) = cfg.kdf_memory_kib {
        kdf.memory_kib = m;
    }
    if let Some(t) = cfg.kdf_iterations {
        kdf.iterations = t;
    }
    kdf.validate().map_err(|e| e.message)?;
    let mut engine_cfg = EngineConfig {
        kdf,
        lease: cfg.lease_config()?,
        uid_limits: cfg.uid_limits()?,
        limits: Limits {
            max_value_size: cfg
                .max_value_size
                .unwrap_or(Limits::default().max_value_size),
        },
        ..EngineConfig::default()
    };
    if !cfg.mounts.is_empty() {
        engine_cfg.initial_mounts = cfg
            .mounts
            .iter()
            .map(|m| MountSpec {
                path: m.path.clone(),
                kind: m.kind.clone(),
                description: m.description.clone(),
            })
            .collect();
    }
    let passphrase = read_passphrase(args)?;
    let audit = match &cfg.audit {
        None => {
            tracing::warn!("no [audit] configured: secret-bearing requests will be refused (EIO); set [audit] path, or audit = \"off\"");
            AuditMode::Missing
        }
        Some(AuditSetting::Word(_)) => {
            tracing::warn!("AUDIT IS OFF (audit = \"off\"): requests are not recorded");
            AuditMode::Off
        }
        Some(AuditSetting::Table(t)) => {
            let fsync = match t.fsync.as_deref() {
                None => FsyncPolicy::default(),
                Some(f) => f
                    .parse::<FsyncPolicy>()
                    .map_err(|_| "bad [audit] fsync".to_string())?,
            };
            let log = AuditLog::open(&t.path, fsync)
                .map_err(|e| format!("audit log {}: {}", t.path.display(), e.message))?;
            AuditMode::Log(Arc::new(log))
        }
    };
    Ok(Setup {
        storage,
        engine_cfg,
        mountpoint,
        allow_other: cfg.allow_other,
        threads: cfg.threads.unwrap_or(crate::config::DEFAULT_THREADS),
        kernel_cache: cfg.kernel_cache,
        passphrase,
        policies: cfg.policies.clone(),
        admins: cfg.admins.clone().unwrap_or_else(|| vec![own_uid()]),
        audit,
        store_desc,
        pid_file,
        #[cfg(feature = "etcd")]
        etcd,
    })
}

/// This host's name (for the node id in the expiry election), "host" if unreadable.
#[cfg(feature = "etcd")]
fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "host".into())
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        signal_hook::consts::SIGINT => "SIGINT",
        signal_hook::consts::SIGTERM => "SIGTERM",
        signal_hook::consts::SIGHUP => "SIGHUP",
        _ => "a signal",
    }
}

fn serve_inner(args: ServerArgs) -> Result<i32, String> {
    let setup = if args.dev {
        dev_setup(&args)?
    } else {
        config_setup(&args)?
    };
    let Setup {
        storage,
        engine_cfg,
        mountpoint,
        allow_other,
        threads,
        kernel_cache,
        passphrase,
        policies,
        admins,
        audit,
        store_desc,
        pid_file,
        #[cfg(feature = "etcd")]
        etcd,
    } = setup;

    let (storage, faults) = crate::faults::wrap(storage)?;
    let engine = Engine::new(storage, engine_cfg);
    // Several daemons on etcd: join the expiry election before anything can revoke, and
    // follow the others' changes (policies, mount table, leases) through a watch.
    #[cfg(feature = "etcd")]
    let mut cluster = None;
    #[cfg(feature = "etcd")]
    if let Some(s) = etcd {
        use nomadfs_core::cluster::etcd::{follow, EtcdCluster};
        // Stable across restarts (one daemon per mountpoint per host): a restarted daemon
        // recognises its own unfinished work (aws intents) as its own.
        let node = format!("{}:{}", host_name(), mountpoint.display());
        let c = EtcdCluster::start(s, node).map_err(|e| e.message)?;
        engine.leases().set_leadership(c.clone());
        follow(&engine, &c).map_err(|e| e.message)?;
        cluster = Some(c);
    }
    // At shutdown, after the unmount: hand the expiry leadership over at once.
    let resign = || {
        #[cfg(feature = "etcd")]
        if let Some(c) = &cluster {
            c.resign();
        }
    };
    engine
        .set_policies(policies, admins)
        .map_err(|e| format!("policies: {}", e.message))?;
    let audit_log = match &audit {
        AuditMode::Log(l) => Some(l.clone()),
        _ => None,
    };
    engine.set_audit(audit);
    engine.start();
    let passphrase = match passphrase {
        Some(p) => Some(p),
        None if std::io::stdin().is_terminal() => {
            let initialized = engine
                .barrier()
                .is_initialized()
                .map_err(|e| format!("cannot read the store at {store_desc}: {}", e.message))?;
            Some(prompt_passphrase(initialized, &store_desc)?)
        }
        None => None,
    };
    match passphrase {
        Some(p) => match engine.unseal(p.expose()) {
            Ok(()) => {}
            Err(UnsealError::WrongPassphrase) => {
                tracing::error!(
                    "wrong passphrase: the keyring did not decrypt; nothing was changed"
                );
                return Ok(EXIT_WRONG_PASSPHRASE);
            }
            Err(UnsealError::Other(e)) => return Err(format!("unseal failed: {}", e.message)),
        },
        None => tracing::warn!("no passphrase given: mounting sealed; write it to sys/unseal"),
    }

    // Handlers before the mount (a SIGINT/SIGTERM from here on is seen and unmounts), but
    // after the prompt (Ctrl-C at the prompt still ends the process: nothing to clean up).
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    let opts = nomadfs_fuse::MountOptions {
        allow_other,
        threads,
        auto_unmount: true,
        owner_uid: own_uid(),
        kernel_cache,
    };
    let session = nomadfs_fuse::mount(engine.clone(), &mountpoint, &opts)
        .map_err(|e| format!("cannot mount at {}: {e}", mountpoint.display()))?;
    let _pid = pid_file
        .as_deref()
        .and_then(|f| crate::mountpoint::PidFile::write(f, &mountpoint));
    tracing::info!(mountpoint = %mountpoint.display(), sealed = engine.is_sealed(), "mounted");
    if args.dev {
        use std::io::Write;
        let _ = writeln!(std::io::stdout(), "{}", mountpoint.display());
    }

    let mut ready = false;
    let mut status_sealed = false;
    'outer: loop {
        // READY=1 once mounted and unsealed (a sealed start waits for sys/unseal).
        if !ready {
            if engine.is_sealed() {
                if !status_sealed {
                    crate::notify::notify(&format!(
                        "STATUS=sealed: write the passphrase to {}/sys/unseal",
                        mountpoint.display()
                    ));
                    status_sealed = true;
                }
            } else {
                crate::notify::notify(&format!(
                    "READY=1\nSTATUS=mounted at {}, unsealed",
                    mountpoint.display()
                ));
                ready = true;
            }
        }
        for sig in signals.pending() {
            if sig == signal_hook::consts::SIGHUP {
                if let Some(l) = &audit_log {
                    match l.reopen() {
                        Ok(()) => tracing::info!("SIGHUP: audit log reopened"),
                        Err(e) => tracing::error!("SIGHUP: audit log reopen failed: {}", e.message),
                    }
                }
                continue;
            }
            tracing::info!("{} received: unmounting", signal_name(sig));
            break 'outer;
        }
        if session.guard.is_finished() {
            crate::notify::notify("STOPPING=1");
            let failure = match session.join() {
                Ok(()) => {
                    tracing::info!("the filesystem was unmounted");
                    None
                }
                Err(e) => Some(format!("the FUSE session ended with an error: {e}")),
            };
            crate::mountpoint::unmount_if_ours(&mountpoint);
            resign();
            engine.seal();
            crate::faults::report(&faults);
            return failure.map_or(Ok(0), Err);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    crate::notify::notify("STOPPING=1");
    nomadfs_fuse::unmount(session, &mountpoint, Duration::from_secs(5));
    resign();
    engine.seal();
    crate::faults::report(&faults);
    tracing::info!("stopped");
    Ok(0)
}
