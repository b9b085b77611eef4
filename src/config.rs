//! `mounts.toml`: typed, unknown keys rejected with the line they are on.
//!
//! Owns: parsing and validating the daemon's configuration file. Must never: hold a passphrase
//! (those come from a file, the environment or a prompt).

use serde::Deserialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub mountpoint: PathBuf,
    #[serde(default)]
    pub allow_other: bool,
    pub storage: StorageConfig,
    /// `[audit] path = …` or `audit = "off"`.
    #[serde(default)]
    pub audit: Option<AuditSetting>,
    /// Largest value a backend stores, in bytes (default 1 MiB).
    #[serde(default)]
    pub max_value_size: Option<usize>,
    /// Request-handling threads (default [`DEFAULT_THREADS`]; 1 to [`MAX_THREADS`]).
    #[serde(default)]
    pub threads: Option<usize>,
    /// Serve static values through the kernel's page cache where every admitted caller sees
    /// the same view (default false: direct I/O; SECURITY.md says what it costs).
    #[serde(default)]
    pub kernel_cache: bool,
    /// argon2id memory cost in KiB for a new store (default 65536, minimum 19456).
    #[serde(default)]
    pub kdf_memory_kib: Option<u32>,
    /// argon2id iterations for a new store (default 3, minimum 2).
    #[serde(default)]
    pub kdf_iterations: Option<u32>,
    #[serde(default, rename = "mount")]
    pub mounts: Vec<MountConfig>,
    #[serde(default, rename = "policy")]
    pub policies: Vec<nomadfs_core::policy::PolicyDoc>,
    #[serde(default)]
    pub admins: Option<Vec<u32>>,
    /// `[leases]`: revocation tuning (retry backoff, attempts, concurrency).
    #[serde(default)]
    pub leases: Option<LeasesConfig>,
    /// `[limits]`: per-uid bounds (defaults in `nomadfs_core::limits::UidLimits`).
    #[serde(default)]
    pub limits: Option<LimitsConfig>,
}

/// `[limits]`: what one uid may hold or ask for. Each key is optional (its default applies);
/// `0` means unbounded. Admins are exempt unless `apply_to_admins = true`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Open files per uid (default 256; EMFILE past it).
    #[serde(default)]
    pub open_files_per_uid: Option<u64>,
    /// Bytes in one uid's open write buffers and exchange inputs, held until each is closed
    /// (default 64 MiB; ENOSPC at the write that goes past it).
    #[serde(default)]
    pub buffered_bytes_per_uid: Option<u64>,
    /// Live leases one uid created (default 256; EDQUOT past it).
    #[serde(default)]
    pub leases_per_uid: Option<u64>,
    /// Sustained requests per second per uid (default 2000; EAGAIN past it).
    #[serde(default)]
    pub requests_per_sec_per_uid: Option<u32>,
    /// Requests above the sustained rate one uid may make at once (default 4000).
    #[serde(default)]
    pub request_burst_per_uid: Option<u32>,
    /// Bound admins too (default false).
    #[serde(default)]
    pub apply_to_admins: Option<bool>,
}

/// `[leases]`: how failed revocations are retried. All optional; defaults in
/// `nomadfs_core::lease::LeaseConfig`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeasesConfig {
    /// First retry delay after a failed revocation (`"200ms"`, `"1s"`); doubles per attempt.
    #[serde(default)]
    pub retry_min: Option<String>,
    /// Largest retry delay (`"10m"`).
    #[serde(default)]
    pub retry_max: Option<String>,
    /// Failed attempts before a lease is marked irrevocable.
    #[serde(default)]
    pub max_attempts: Option<u32>,
    /// Revocations in flight at once.
    #[serde(default)]
    pub concurrency: Option<usize>,
}

/// Most request threads a mount may have: each one holds its own /dev/fuse descriptor
/// (clone_fd) and a stack; past a few dozen, two cores gain nothing.
pub const MAX_THREADS: usize = 64;

/// Request threads unless `threads` says otherwise. A durable write holds its thread through
/// its commit (two group-committed fsyncs), so the number of threads bounds how many writes
/// can share one fsync. With 8 writers on 2 cores, 8 threads gave 1.44x the durable write rate
/// of 4 with reads unchanged; 16 wrote no faster and read 10% slower (docs/PERFORMANCE.md).
pub const DEFAULT_THREADS: usize = 8;

/// Where an etcd store keeps its keys unless `prefix` says otherwise.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
pub const DEFAULT_ETCD_PREFIX: &str = "nomadfs/";

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<PathBuf>,
    #[serde(default)]
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub prefix: Option<String>,
    /// etcd over TLS: the CA (PEM) that signed the members' certificates; endpoints https://.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A client certificate and its key (PEM) for members run with `--client-cert-auth`.
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// etcd authentication: the user, and where its password is (a file or an environment
    /// variable; never in this file).
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    #[serde(default)]
    pub password_env: Option<String>,
    /// Only to refuse it with the reason: a password here would be as readable as the file.
    #[serde(default)]
    pub password: Option<toml::Value>,
}

impl StorageConfig {
    /// Whether any etcd-only key is set.
    fn has_etcd_keys(&self) -> bool {
        !self.endpoints.is_empty()
            || self.prefix.is_some()
            || self.ca_file.is_some()
            || self.cert_file.is_some()
            || self.key_file.is_some()
            || self.username.is_some()
            || self.password_file.is_some()
            || self.password_env.is_some()
            || self.password.is_some()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// "changes" (default: changes and credential mints wait for a group-committed fsync,
    /// reads' lines are written but not synced per line), "group" (every answer waits for a
    /// group-committed fsync), "always" (one fsync per waited-for line), or "never".
    #[serde(default)]
    pub fsync: Option<String>,
}

#[derive(Debug)]
pub enum AuditSetting {
    Table(AuditConfig),
    /// Only "off" is accepted.
    Word(String),
}

/// By hand rather than `#[serde(untagged)]`: an untagged enum swallows the inner error
/// ("did not match any variant"), so an unknown key under `[audit]` was not named. Here a
/// table goes straight to `AuditConfig` (deny_unknown_fields), whose error names the key and
/// keeps its position in the file.
impl<'de> Deserialize<'de> for AuditSetting {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = AuditSetting;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an [audit] table (path, fsync) or audit = \"off\"")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<AuditSetting, E> {
                Ok(AuditSetting::Word(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                map: A,
            ) -> Result<AuditSetting, A::Error> {
                AuditConfig::deserialize(serde::de::value::MapAccessDeserializer::new(map))
                    .map(AuditSetting::Table)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MountConfig {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub description: String,
}

impl Config {
    pub fn parse(text: &str) -> Result<Self, String> {
        let cfg: Config = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// `[storage] type = "etcd"`: endpoints, an optional prefix (default `nomadfs/`), no path.
    fn validate_etcd(&self) -> Result<(), String> {
        if !cfg!(feature = "etcd") {
            return Err(
                "[storage] type = \"etcd\": this nomadfs was built without etcd support \
                        (rebuild with `cargo build --features etcd`; it needs protoc)"
                    .into(),
            );
        }
        if self.storage.path.is_some() {
            return Err(
                "[storage] `path` belongs to type = \"file\"; etcd takes `endpoints` \
                        and `prefix`"
                    .into(),
            );
        }
        if self.storage.endpoints.is_empty() {
            return Err(
                "[storage] type = \"etcd\" needs `endpoints = [\"http://HOST:2379\", …]`".into(),
            );
        }
        let st = &self.storage;
        let tls = st.ca_file.is_some();
        for e in &st.endpoints {
            let e = e.trim();
            let https = e.starts_with("https://");
            let http = e.starts_with("http://");
            if e.is_empty() || (e.contains("://") && !http && !https) {
                return Err(format!(
                    "[storage] endpoint {e:?}: use https://HOST:PORT (with ca_file) or \
                     http://HOST:PORT"
                ));
            }
            if https && !tls {
                return Err(format!(
                    "[storage] endpoint {e:?}: https:// needs ca_file = \"/path/to/ca.pem\" \
                     (the CA that signed the etcd members' certificates)"
                ));
            }
            if http && tls {
                return Err(format!(
                    "[storage] endpoint {e:?}: with ca_file every endpoint must be https://"
                ));
            }
        }
        for (key, p) in [
            ("ca_file", &st.ca_file),
            ("cert_file", &st.cert_file),
            ("key_file", &st.key_file),
            ("password_file", &st.password_file),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return Err(format!(
                        "[storage] {key} = {:?}: must be an absolute path",
                        p.display().to_string()
                    ));
                }
            }
        }
        if st.cert_file.is_some() != st.key_file.is_some() {
            return Err("[storage] cert_file and key_file go together".into());
        }
        if st.cert_file.is_some() && !tls {
            return Err("[storage] cert_file/key_file need ca_file and https:// endpoints".into());
        }
        if st.password.is_some() {
            return Err(
                "[storage] password: not in the config file (it is readable by whoever reads \
                 the file); use password_file = \"/etc/nomadfs/etcd-password\" (mode 0600) or \
                 password_env = \"VAR\""
                    .into(),
            );
        }
        let sources =
            usize::from(st.password_file.is_some()) + usize::from(st.password_env.is_some());
        match (&st.username, sources) {
            (Some(u), 1) if !u.is_empty() => {}
            (Some(_), 1) => return Err("[storage] username must not be empty".into()),
            (Some(_), 0) => {
                return Err(
                    "[storage] username needs its password: password_file or password_env".into(),
                )
            }
            (_, 2) => return Err("[storage] give password_file or password_env, not both".into()),
            (None, _) if sources > 0 => {
                return Err("[storage] password_file/password_env need username".into())
            }
            _ => {}
        }
        if st.prefix.as_deref() == Some("") {
            return Err("[storage] prefix must not be empty (default \"nomadfs/\")".into());
        }
        Ok(())
    }

    /// The etcd client settings: endpoints, prefix, TLS files, and the user with its password
    /// read now (from `password_file`, checked like a private key: 0600, or 0640 when owned by
    /// root; or from `password_env`). Trailing newlines are not part of the password.
    #[cfg(feature = "etcd")]
    pub fn etcd_config(&self) -> Result<nomadfs_core::storage::etcd::EtcdConfig, String> {
        use nomadfs_core::storage::etcd::{EtcdAuth, EtcdConfig, EtcdTls};
        use nomadfs_core::SecretBytes;
        let st = &self.storage;
        let mut c = EtcdConfig::new(st.endpoints.clone(), self.etcd_prefix());
        c.tls = st.ca_file.clone().map(|ca_file| EtcdTls {
            ca_file,
            client: st.cert_file.clone().zip(st.key_file.clone()),
        });
        if let Some(user) = &st.username {
            let mut raw = if let Some(p) = &st.password_file {
                let bytes = nomadfs_core::tls::read_checked("password_file", p, true)
                    .map_err(|e| format!("[storage] {}", e.message))?;
                SecretBytes::from_slice(&bytes)
            } else if let Some(var) = &st.password_env {
                let v = std::env::var_os(var).ok_or_else(|| {
                    format!("[storage] password_env = {var:?}: the variable is not set")
                })?;
                SecretBytes::new(std::os::unix::ffi::OsStringExt::into_vec(v))
            } else {
                return Err("[storage] username needs password_file or password_env".into());
            };
            while matches!(raw.expose().last(), Some(b'\n' | b'\r')) {
                raw.expose_mut().pop();
            }
            if raw.is_empty() {
                return Err("[storage] the etcd password is empty".into());
            }
            c.auth = Some(EtcdAuth {
                user: user.clone(),
                password: std::sync::Arc::new(raw),
            });
        }
        Ok(c)
    }

    /// The etcd key prefix (`nomadfs/` unless configured).
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub fn etcd_prefix(&self) -> String {
        self.storage
            .prefix
            .clone()
            .unwrap_or_else(|| DEFAULT_ETCD_PREFIX.to_string())
    }

    /// The lease manager's tuning from `[leases]` (defaults where absent).
    pub fn lease_config(&self) -> Result<nomadfs_core::lease::LeaseConfig, String> {
        use nomadfs_core::lease::{parse_duration_ms, LeaseConfig};
        let mut c = LeaseConfig::default();
        let Some(l) = &self.leases else {
            return Ok(c);
        };
        let ms = |key: &str, v: &str| {
            parse_duration_ms(v)
                .filter(|ms| (1..=86_400_000).contains(ms))
                .ok_or_else(|| {
                    format!("[leases] {key} = {v:?}: use a duration from 1ms to 24h (\"200ms\", \"5s\")")
                })
        };
        if let Some(v) = &l.retry_min {
            c.backoff_base_ms = ms("retry_min", v)?;
        }
        if let Some(v) = &l.retry_max {
            c.backoff_max_ms = ms("retry_max", v)?;
        }
        if c.backoff_base_ms > c.backoff_max_ms {
            return Err("[leases] retry_min is larger than retry_max".into());
        }
        if let Some(n) = l.max_attempts {
            if n == 0 {
                return Err("[leases] max_attempts must be at least 1".into());
            }
            c.max_attempts = n;
        }
        if let Some(n) = l.concurrency {
            if !(1..=256).contains(&n) {
                return Err("[leases] concurrency must be between 1 and 256".into());
            }
            c.concurrency = n;
        }
        Ok(c)
    }

    /// The per-uid bounds from `[limits]` (defaults where absent; 0 = unbounded).
    pub fn uid_limits(&self) -> Result<nomadfs_core::limits::UidLimits, String> {
        let mut u = nomadfs_core::limits::UidLimits::default();
        let Some(l) = &self.limits else {
            return Ok(u);
        };
        let opt = |v: u64| (v > 0).then_some(v);
        if let Some(v) = l.open_files_per_uid {
            u.open_files = opt(v);
        }
        if let Some(v) = l.buffered_bytes_per_uid {
            u.buffered_bytes = opt(v);
        }
        if let Some(v) = l.leases_per_uid {
            u.leases = opt(v);
        }
        if let Some(v) = l.requests_per_sec_per_uid {
            u.requests_per_sec = (v > 0).then_some(v);
        }
        if let Some(v) = l.request_burst_per_uid {
            if v == 0 {
                return Err("[limits] request_burst_per_uid must be at least 1".into());
            }
            u.request_burst = v;
        }
        if let Some(v) = l.apply_to_admins {
            u.apply_to_admins = v;
        }
        if u.requests_per_sec.is_some() && u.request_burst < u.requests_per_sec.unwrap_or(0) {
            return Err(
                "[limits] request_burst_per_uid must be at least requests_per_sec_per_uid".into(),
            );
        }
        Ok(u)
    }

    fn validate(&self) -> Result<(), String> {
        if self.kernel_cache && self.storage.kind == "etcd" {
            return Err(
                "kernel_cache = true with [storage] type = \"etcd\": another daemon's writes \
                 would not drop this kernel's cached pages (stale values); remove the key"
                    .into(),
            );
        }
        self.lease_config()?;
        self.uid_limits()?;
        match self.storage.kind.as_str() {
            "file" => {
                if self.storage.path.is_none() {
                    return Err("[storage] type = \"file\" needs `path`".into());
                }
                if self.storage.has_etcd_keys() {
                    return Err(
                        "[storage] `endpoints`, `prefix` and the TLS/auth keys belong to type = \
                         \"etcd\", not \"file\""
                            .into(),
                    );
                }
            }
            "memory" => {}
            "etcd" => self.validate_etcd()?,
            other => {
                return Err(format!(
                    "[storage] type {other:?} is unknown (use \"file\", \"memory\" or \"etcd\")"
                ))
            }
        }
        match &self.audit {
            Some(AuditSetting::Word(w)) if w != "off" => {
                return Err(format!(
                    "audit = {w:?}: write audit = \"off\" or an [audit] table with path"
                ))
            }
            Some(AuditSetting::Table(t)) => {
                if let Some(f) = &t.fsync {
                    f.parse::<nomadfs_core::audit::FsyncPolicy>().map_err(|_| {
                        format!(
                            "[audit] fsync = {f:?}: use \"changes\", \"group\", \"always\" \
                             or \"never\""
                        )
                    })?;
                }
            }
            _ => {}
        }
        if let Some(n) = self.max_value_size {
            if n == 0 || n > 64 << 20 {
                return Err("max_value_size must be between 1 byte and 64 MiB".into());
            }
        }
        if let Some(n) = self.threads {
            if !(1..=MAX_THREADS).contains(&n) {
                return Err(format!(
                    "threads = {n}: use 1 to {MAX_THREADS} (default {DEFAULT_THREADS}); each thread holds a /dev/fuse descriptor"
                ));
            }
        }
        if let Some(a) = &self.admins {
            if a.is_empty() {
                return Err(
                    "admins = []: that leaves no admin (nobody could change mounts or policies); \
                     list at least one uid, or remove the key (default: the daemon's own uid)"
                        .into(),
                );
            }
        }
        if !self.mountpoint.is_absolute() {
            return Err(format!(
                "mountpoint {} must be an absolute path",
                self.mountpoint.display()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
mountpoint  = "/run/nomadfs"
allow_other = false
[storage]
type = "file"
path = "/var/lib/nomadfs"
[audit]
path = "/var/log/nomadfs/audit.log"
[[mount]]
path = "secret/"
type = "generic"
description = "generic secret storage"
[[policy]]
name  = "deploy"
uids  = [1001]
rules = [ { path = "aws/creds/deploy", capabilities = ["read"] },
          { path = "secret/app/*",     capabilities = ["read", "list"] } ]
"#;

    #[test]
    fn spec_example_parses() {
        let c = Config::parse(GOOD).expect("spec example");
        assert_eq!(c.mounts.len(), 1);
        assert_eq!(c.policies[0].rules.len(), 2);
        assert_eq!(c.storage.kind, "file");
    }

    #[test]
    fn unknown_key_names_its_line() {
        let bad = GOOD.replace("allow_other = false", "allow_other = false\nbogus = 1");
        let e = Config::parse(&bad).expect_err("unknown key");
        assert!(e.contains("line 4"), "{e}");
        assert!(e.contains("bogus"), "{e}");
    }

    fn etcd_config(storage: &str) -> String {
        format!("mountpoint = \"/run/nomadfs\"\n[storage]\ntype = \"etcd\"\n{storage}\n")
    }

    #[cfg(feature = "etcd")]
    #[test]
    fn etcd_storage_parses() {
        let c = Config::parse(&etcd_config(
            "endpoints = [\"http://127.0.0.1:2379\", \"127.0.0.2:2379\"]",
        ))
        .expect("etcd config");
        assert_eq!(c.storage.endpoints.len(), 2);
        assert_eq!(c.etcd_prefix(), "nomadfs/");
        let c = Config::parse(&etcd_config(
            "endpoints = [\"http://127.0.0.1:2379\"]\nprefix = \"team-a/\"",
        ))
        .expect("etcd config with prefix");
        assert_eq!(c.etcd_prefix(), "team-a/");
        let c = Config::parse(&etcd_config(
            "endpoints = [\"https://127.0.0.1:2379\", \"10.0.0.2:2379\"]\nca_file = \"/etc/nomadfs/ca.pem\"\ncert_file = \"/etc/nomadfs/c.pem\"\nkey_file = \"/etc/nomadfs/c.key\"\nusername = \"nomadfs\"\npassword_env = \"NOMADFS_TEST_ETCD_PW_UNSET\"",
        ))
        .expect("etcd with TLS and auth");
        assert_eq!(
            c.storage.ca_file.as_deref(),
            Some(Path::new("/etc/nomadfs/ca.pem"))
        );
        let e = c.etcd_config().expect_err("variable not set");
        assert!(e.contains("not set"), "{e}");
        for (bad, why) in [
            ("", "needs `endpoints"),
            ("endpoints = [\"https://h:2379\"]", "needs ca_file"),
            (
                "endpoints = [\"http://h:2379\"]\nca_file = \"/ca.pem\"",
                "must be https://",
            ),
            (
                "endpoints = [\"https://h:2379\"]\nca_file = \"ca.pem\"",
                "absolute",
            ),
            (
                "endpoints = [\"https://h:2379\"]\nca_file = \"/ca.pem\"\ncert_file = \"/c.pem\"",
                "go together",
            ),
            (
                "endpoints = [\"h:1\"]\nusername = \"root\"\npassword = \"hunter2\"",
                "not in the config file",
            ),
            (
                "endpoints = [\"h:1\"]\nusername = \"root\"",
                "needs its password",
            ),
            ("endpoints = [\"h:1\"]\npassword_env = \"P\"", "need username"),
            (
                "endpoints = [\"h:1\"]\nusername = \"r\"\npassword_env = \"P\"\npassword_file = \"/p\"",
                "not both",
            ),
            ("endpoints = [\"h:1\"]\nprefix = \"\"", "prefix"),
            ("endpoints = [\"h:1\"]\npath = \"/x\"", "`path` belongs"),
            ("endpoints = [\"h:1\"]\nbogus = 1", "bogus"),
        ] {
            let e = Config::parse(&etcd_config(bad)).expect_err(bad);
            assert!(e.contains(why), "{bad}: {e}");
        }
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_without_the_feature_says_so() {
        let e = Config::parse(&etcd_config("endpoints = [\"http://127.0.0.1:2379\"]"))
            .expect_err("no etcd support");
        assert!(e.contains("built without etcd support"), "{e}");
    }

    #[test]
    fn file_storage_refuses_etcd_keys() {
        let bad = GOOD.replace(
            "path = \"/var/lib/nomadfs\"",
            "path = \"/x\"\nprefix = \"p/\"",
        );
        assert!(Config::parse(&bad)
            .expect_err("prefix on file")
            .contains("etcd"));
    }

    #[test]
    fn leases_table_tunes_retries() {
        let c = Config::parse(&format!(
            "{GOOD}\n[leases]\nretry_min = \"200ms\"\nretry_max = \"2s\"\nmax_attempts = 50\nconcurrency = 4\n"
        ))
        .expect("leases table");
        let l = c.lease_config().expect("lease config");
        assert_eq!(
            (
                l.backoff_base_ms,
                l.backoff_max_ms,
                l.max_attempts,
                l.concurrency
            ),
            (200, 2000, 50, 4)
        );
        for bad in [
            "retry_min = \"soon\"",
            "retry_min = \"0ms\"",
            "retry_min = \"5s\"\nretry_max = \"1s\"",
            "max_attempts = 0",
            "concurrency = 0",
            "bogus = 1",
        ] {
            assert!(
                Config::parse(&format!("{GOOD}\n[leases]\n{bad}\n")).is_err(),
                "accepted: {bad}"
            );
        }
    }

    #[test]
    fn limits_table() {
        let c = Config::parse(&format!(
            "{GOOD}\n[limits]\nopen_files_per_uid = 8\nleases_per_uid = 0\nrequests_per_sec_per_uid = 10\nrequest_burst_per_uid = 20\n"
        ))
        .expect("limits table");
        let u = c.uid_limits().expect("limits");
        assert_eq!(u.open_files, Some(8));
        assert_eq!(u.leases, None);
        assert_eq!((u.requests_per_sec, u.request_burst), (Some(10), 20));
        assert!(!u.apply_to_admins);
        for bad in [
            "request_burst_per_uid = 0",
            "requests_per_sec_per_uid = 100\nrequest_burst_per_uid = 10",
            "bogus = 1",
        ] {
            assert!(
                Config::parse(&format!("{GOOD}\n[limits]\n{bad}\n")).is_err(),
                "accepted: {bad}"
            );
        }
    }

    #[test]
    fn the_example_config_parses() {
        let c = Config::parse(include_str!("../mounts.toml")).expect("mounts.toml");
        assert_eq!(c.mountpoint, Path::new("/run/nomadfs"));
    }

    #[test]
    fn threads_are_bounded() {
        for (n, ok) in [
            (0, false),
            (1, true),
            (4, true),
            (64, true),
            (65, false),
            (100000, false),
        ] {
            let r = Config::parse(&GOOD.replace(
                "allow_other = false",
                &format!("allow_other = false\nthreads = {n}"),
            ));
            assert_eq!(r.is_ok(), ok, "threads = {n}: {r:?}");
            if let Err(e) = r {
                assert!(e.contains("threads") && e.contains("1 to 64"), "{e}");
            }
        }
    }

    #[test]
    fn kernel_cache_is_off_by_default_and_not_on_shared_storage() {
        assert!(!Config::parse(GOOD).expect("good").kernel_cache);
        let on = GOOD.replace(
            "allow_other = false",
            "allow_other = false\nkernel_cache = true",
        );
        assert!(Config::parse(&on).expect("on").kernel_cache);
        let etcd = on.replace(
            "type = \"file\"\npath = \"/var/lib/nomadfs\"",
            "type = \"etcd\"\nendpoints = [\"http://127.0.0.1:2379\"]",
        );
        let e = Config::parse(&etcd).expect_err("etcd");
        assert!(e.contains("kernel_cache") && e.contains("etcd"), "{e}");
        let bad = GOOD.replace(
            "allow_other = false",
            "allow_other = false\nkernel_cache = 1",
        );
        assert!(Config::parse(&bad).is_err());
    }

    #[test]
    fn empty_admins_are_refused() {
        let e =
            Config::parse(&GOOD.replace("allow_other = false", "allow_other = false\nadmins = []"))
                .expect_err("no admin");
        assert!(e.contains("admins = []") && e.contains("no admin"), "{e}");
        let c = Config::parse(&GOOD.replace(
            "allow_other = false",
            "allow_other = false\nadmins = [0, 1000]",
        ))
        .expect("admins");
        assert_eq!(c.admins, Some(vec![0, 1000]));
    }

    #[test]
    fn unknown_audit_key_is_named_with_its_line() {
        let bad = GOOD.replace(
            "path = \"/var/log/nomadfs/audit.log\"",
            "path = \"/var/log/nomadfs/audit.log\"\nfsnyc = \"always\"",
        );
        let e = Config::parse(&bad).expect_err("unknown key");
        assert!(e.contains("fsnyc"), "{e}");
        assert!(e.contains("line 9"), "{e}");
        assert!(!e.contains("untagged"), "{e}");
        // Both forms still parse.
        assert!(matches!(
            Config::parse(GOOD).expect("table").audit,
            Some(AuditSetting::Table(_))
        ));
        let off = GOOD
            .replace("[audit]\npath = \"/var/log/nomadfs/audit.log\"\n", "")
            .replace(
                "allow_other = false",
                "allow_other = false\naudit = \"off\"",
            );
        assert!(matches!(
            Config::parse(&off).expect("off").audit,
            Some(AuditSetting::Word(_))
        ));
        let e = Config::parse(&off.replace("\"off\"", "\"of\"")).expect_err("bad word");
        assert!(e.contains("of"), "{e}");
        let e = Config::parse(&off.replace("\"off\"", "3")).expect_err("number");
        assert!(e.contains("[audit] table"), "{e}");
    }

    #[test]
    fn bad_storage_type_is_refused() {
        let bad = GOOD.replace("type = \"file\"", "type = \"floppy\"");
        assert!(Config::parse(&bad)
            .expect_err("bad type")
            .contains("floppy"));
    }
}
