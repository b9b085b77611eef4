//! The daemon's lifecycle: storage, engine, passphrase, unseal, FUSE mount, signals, unmount.
//!
//! Owns: the order of start-up and shut-down and the exit codes (2: wrong passphrase).
//! Must never: log a passphrase, or touch storage when the passphrase is wrong.

use crate::config::{AuditSetting, Config};
use nomadfs_core::audit::{AuditLog, FsyncPolicy};
use nomadfs_core::backends::Limits;
use nomadfs_core::barrier::{KdfParams, UnsealError};
use nomadfs_core::engine::MountSpec;
use nomadfs_core::gate::AuditMode;
use nomadfs_core::storage::{file::FileStorage, memory::MemoryStorage, Storage};
use nomadfs_core::{Engine, EngineConfig, SecretBytes};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
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
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password("nomadfs passphrase: ")
            .map_err(|e| format!("cannot read the passphrase: {e}"))?;
        return Ok(Some(SecretBytes::from(p)));
    }
    Ok(None)
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
            tracing::error!("{msg}");
            eprintln!("nomadfs: {msg}");
            EXIT_ERROR
        }
    }
}

fn serve_inner(args: ServerArgs) -> Result<i32, String> {
    #[allow(clippy::type_complexity)]
    let (storage, engine_cfg, mountpoint, allow_other, threads, passphrase, policies, audit): (
        Arc<dyn Storage>,
        EngineConfig,
        PathBuf,
        bool,
        usize,
        Option<SecretBytes>,
        (Vec<nomadfs_core::policy::PolicyDoc>, Vec<u32>),
        AuditMode,
    ) = if args.dev {
        let mut pass = vec![0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut pass);
        let mountpoint = match &args.mountpoint {
            Some(m) => m.clone(),
            None => dev_mountpoint()?,
        };
        let cfg = EngineConfig {
            kdf: KdfParams::minimum(),
            ..EngineConfig::default()
        };
        tracing::warn!("--dev: audit log off, memory store, everything is gone at exit");
        (
            Arc::new(MemoryStorage::new()),
            cfg,
            mountpoint,
            false,
            4,
            Some(SecretBytes::new(pass)),
            (Vec::new(), vec![own_uid()]),
            AuditMode::Off,
        )
    } else {
        let path = args
            .config
            .clone()
            .ok_or("server needs --config mounts.toml (or --dev)")?;
        let cfg = Config::load(&path)?;
        let storage: Arc<dyn Storage> = match cfg.storage.kind.as_str() {
            "file" => {
                let dir = cfg
                    .storage
                    .path
                    .as_deref()
                    .unwrap_or(Path::new("/var/lib/nomadfs"));
                Arc::new(FileStorage::open(dir).map_err(|e| e.message)?)
            }
            "memory" => Arc::new(MemoryStorage::new()),
            #[cfg(feature = "etcd")]
            "etcd" => {
                use nomadfs_core::storage::etcd::{EtcdConfig, EtcdStorage};
                let prefix = cfg.etcd_prefix();
                tracing::info!(endpoints = ?cfg.storage.endpoints, prefix, "etcd storage");
                Arc::new(
                    EtcdStorage::new(EtcdConfig::new(cfg.storage.endpoints.clone(), prefix))
                        .map_err(|e| e.message)?,
                )
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
        let mountpoint = args.mountpoint.clone().unwrap_or(cfg.mountpoint.clone());
        let pass = read_passphrase(&args)?;
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
                let fsync = t
                    .fsync
                    .as_deref()
                    .unwrap_or("group")
                    .parse::<FsyncPolicy>()
                    .map_err(|_| "bad [audit] fsync".to_string())?;
                let log = AuditLog::open(&t.path, fsync)
                    .map_err(|e| format!("audit log {}: {}", t.path.display(), e.message))?;
                AuditMode::Log(Arc::new(log))
            }
        };
        let admins = cfg.admins.clone().unwrap_or_else(|| vec![own_uid()]);
        (
            storage,
            engine_cfg,
            mountpoint,
            cfg.allow_other,
            cfg.threads.unwrap_or(4),
            pass,
            (cfg.policies.clone(), admins),
            audit,
        )
    };

    let (storage, faults) = crate::faults::wrap(storage)?;
    let engine = Arc::new(Engine::new(storage, engine_cfg));
    engine
        .set_policies(policies.0, policies.1)
        .map_err(|e| format!("policies: {}", e.message))?;
    let audit_log = match &audit {
        AuditMode::Log(l) => Some(l.clone()),
        _ => None,
    };
    engine.set_audit(audit);
    engine.start();
    match passphrase {
        Some(p) => match engine.unseal(p.expose()) {
            Ok(()) => {}
            Err(UnsealError::WrongPassphrase) => {
                let msg = "wrong passphrase: the keyring did not decrypt; nothing was changed";
                tracing::error!("{msg}");
                eprintln!("nomadfs: {msg}");
                return Ok(EXIT_WRONG_PASSPHRASE);
            }
            Err(UnsealError::Other(e)) => return Err(format!("unseal failed: {}", e.message)),
        },
        None => tracing::warn!("no passphrase given: mounting sealed; write it to sys/unseal"),
    }

    if !mountpoint.exists() {
        std::fs::create_dir_all(&mountpoint)
            .map_err(|e| format!("cannot create mountpoint {}: {e}", mountpoint.display()))?;
    }
    let opts = nomadfs_fuse::MountOptions {
        allow_other,
        threads,
        auto_unmount: true,
        owner_uid: own_uid(),
    };
    let session = nomadfs_fuse::mount(engine.clone(), &mountpoint, &opts)
        .map_err(|e| format!("cannot mount at {}: {e}", mountpoint.display()))?;
    tracing::info!(mountpoint = %mountpoint.display(), sealed = engine.is_sealed(), "mounted");
    if args.dev {
        println!("{}", mountpoint.display());
    }

    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
        signal_hook::consts::SIGHUP,
    ])
    .map_err(|e| format!("cannot install signal handlers: {e}"))?;
    'outer: loop {
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
            tracing::info!("signal received: unmounting");
            break 'outer;
        }
        if session.guard.is_finished() {
            tracing::info!("the filesystem was unmounted");
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    nomadfs_fuse::unmount(session, &mountpoint, Duration::from_secs(5));
    engine.seal();
    crate::faults::report(&faults);
    Ok(0)
}
