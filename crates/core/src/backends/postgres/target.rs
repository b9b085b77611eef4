//! A PostgreSQL connection URL, checked (`Target`), and what its secrets are (`Redactor`): the
//! password and query-parameter values that upstream error text must never show.
//!
//! Owns: URL parsing (the TLS parameters `sslmode`, `sslrootcert`, `sslcert`, `sslkey` are
//! taken out here, see `tls::TlsSettings`; the rest goes to tokio-postgres) and the redaction
//! of upstream messages. Must never: put the password in `Debug` output or in an error.

use super::client::CONNECT_TIMEOUT;
use super::tls::{SslMode, TlsSettings};
use crate::error::{Error, Result};
use std::path::PathBuf;
use std::str::FromStr;
use tokio_postgres::config::Host;

/// The query parameters nomadfs handles itself (libpq's names); neither passed to
/// tokio-postgres nor redacted (a mode or a file path is not a secret, and the reasons name
/// them; `hostaddr` is not redacted either: a certificate's addresses are compared with it).
const TLS_KEYS: [&str; 4] = ["sslmode", "sslrootcert", "sslcert", "sslkey"];

/// `url` without its TLS parameters, and the settings they make.
fn split_tls(url: &str) -> Result<(String, TlsSettings)> {
    let mut tls = TlsSettings::default();
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_string(), tls));
    };
    let mut kept: Vec<&str> = Vec::new();
    let mut mode = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let key = percent_decode(key);
        if !TLS_KEYS.contains(&key.as_str()) {
            kept.push(pair);
            continue;
        }
        let value = percent_decode(value);
        if value.contains(['\0', '\n']) {
            return Err(Error::invalid(format!(
                "config/connection: {key}: a NUL or newline in the value"
            )));
        }
        match key.as_str() {
            "sslmode" => {
                mode = Some(SslMode::parse(&value).ok_or_else(|| {
                    Error::invalid(format!(
                        "config/connection: sslmode={value:?}: use disable, prefer, require, \
                         verify-ca or verify-full"
                    ))
                })?)
            }
            "sslrootcert" if value == "system" => {
                return Err(Error::invalid(
                    "config/connection: sslrootcert=system is not supported: name the CA file \
                     (sslrootcert=/path/to/ca.pem)",
                ))
            }
            "sslrootcert" => tls.root_cert = Some(PathBuf::from(value)),
            "sslcert" => tls.cert = Some(PathBuf::from(value)),
            _ => tls.key = Some(PathBuf::from(value)),
        }
    }
    if let Some(m) = mode {
        tls.mode = m;
    }
    tls.check()?;
    let rebuilt = if kept.is_empty() {
        base.to_string()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rebuilt, tls))
}

/// A checked connection URL. `Debug` shows no password.
pub struct Target {
    pub(super) config: tokio_postgres::Config,
    /// How TLS is negotiated and checked (files are read at each connect).
    pub(super) tls: TlsSettings,
    /// What upstream error text must not show: see `Redactor`.
    pub(super) redact: Redactor,
    /// `host:port/db` for messages.
    pub display: String,
    /// For `.env` output: the first host (or socket folder), port and database.
    pub host: String,
    pub port: u16,
    pub dbname: Option<String>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("display", &self.display)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Parse and check `url`. Errors are `InvalidInput` and never quote the password.
    pub fn parse(url: &str) -> Result<Target> {
        let url = url.trim();
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(Error::invalid(
                "config/connection: expected a URL postgres://user:password@host:port/database",
            ));
        }
        // tokio-postgres splits user:password from the host at the *first* '@': a raw '@' in
        // the password would turn its tail into the "host", shown in messages. Refuse it.
        let rest = url.split_once("://").map_or("", |(_, r)| r);
        let authority = rest.split(['/', '?']).next().unwrap_or("");
        if authority.matches('@').count() > 1 {
            return Err(Error::invalid(
                "config/connection: the user or password contains a raw '@': percent-encode it \
                 as %40",
            ));
        }
        let (rest_url, tls) = split_tls(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest_url).map_err(|e| {
            Error::invalid(format!(
                "config/connection: not a valid URL ({})",
                chain(&e)
            ))
        })?;
        if config.get_user().is_none_or(str::is_empty) {
            return Err(Error::invalid("config/connection: the URL names no user"));
        }
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            Some(Host::Unix(p)) => p.to_string_lossy().into_owned(),
            None => return Err(Error::invalid("config/connection: the URL names no host")),
        };
        // PostgreSQL has no TLS on a Unix socket: libpq ignores sslmode there, and so do we
        // (the socket is local; its directory's permissions protect it).
        let socket = matches!(config.get_hosts().first(), Some(Host::Unix(_)));
        config.ssl_mode(if socket {
            tokio_postgres::config::SslMode::Disable
        } else {
            tls.mode.wire()
        });
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let dbname = config.get_dbname().map(str::to_string);
        config.connect_timeout(CONNECT_TIMEOUT);
        config.application_name("nomadfs");
        let display = format!(
            "{host}:{port}/{}",
            dbname.as_deref().or(config.get_user()).unwrap_or("")
        );
        Ok(Target {
            config,
            tls,
            redact: Redactor::of_url(url),
            display,
            host,
            port,
            dbname,
        })
    }
}

/// The secrets a connection URL carries, to cut out of upstream error text: the password, and
/// the value of every query parameter (`?options=-c search_path=…`, `?password=…`, …), raw and
/// percent-decoded, with each word and `name=value` tail of `options`. PostgreSQL quotes a bad
/// parameter's value in its error ("invalid value for parameter … : \"…\""), and that text
/// reaches the daemon log and the audit log. Values shorter than 3 bytes are left (too common to
/// replace inside other words, and not a secret); each is replaced by `***`, longest first.
/// Not redacted: the TLS parameters (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`: modes and
/// paths the reasons name) and `hostaddr`.
#[derive(Default, Clone)]
pub struct Redactor {
    secrets: Vec<zeroize::Zeroizing<String>>,
}

/// `%XX` decoding, lossy (bad escapes stay as they are).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Redactor {
    pub fn of_url(url: &str) -> Redactor {
        let mut found: Vec<String> = Vec::new();
        let rest = url.split_once("://").map_or(url, |(_, r)| r);
        let (before_query, query) = rest.split_once('?').unwrap_or((rest, ""));
        let authority = before_query.split('/').next().unwrap_or("");
        if let Some((userinfo, _)) = authority.rsplit_once('@') {
            if let Some((_, pass)) = userinfo.split_once(':') {
                found.push(pass.to_string());
                found.push(percent_decode(pass));
            }
        }
        for pair in query.split('&') {
            let Some((key, value)) = pair.split_once('=') else {
                continue;
            };
            let k = percent_decode(key);
            if TLS_KEYS.contains(&k.as_str()) || k == "hostaddr" {
                continue;
            }
            let decoded = percent_decode(value);
            found.push(value.to_string());
            if percent_decode(key) == "options" {
                for word in decoded.split_whitespace() {
                    found.push(word.to_string());
                    if let Some((_, v)) = word.split_once('=') {
                        found.push(v.to_string());
                    }
                }
            }
            found.push(decoded);
        }
        let mut secrets: Vec<zeroize::Zeroizing<String>> = found
            .into_iter()
            .filter(|s| s.len() >= 3)
            .map(zeroize::Zeroizing::new)
            .collect();
        secrets.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        secrets.dedup();
        Redactor { secrets }
    }

    /// `text` with every secret of the URL replaced by `***`.
    pub fn apply(&self, text: &str) -> String {
        let mut out = text.to_string();
        for s in &self.secrets {
            if out.contains(s.as_str()) {
                out = out.replace(s.as_str(), "***");
            }
        }
        out
    }
}

/// The error text of `e` with its causes ("db error: ERROR: role … already exists").
pub(super) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorKind;

    #[test]
    fn url_secrets_are_cut_from_upstream_text() {
        let url = "postgres://admin:s3cr%3At@127.0.0.1:5433/app?options=-c%20search_path%3Dplanted_opt%20-c%20work_mem%3D64MB&application_name=plantedapp&connect_timeout=5";
        let t = Target::parse(url).expect("parse");
        let upstream = "FATAL 22023: invalid value for parameter \"search_path\": \"planted_opt\" \
            (-c search_path=planted_opt) work_mem=64MB app plantedapp s3cr:t s3cr%3At";
        let out = t.redact.apply(upstream);
        for leak in ["planted_opt", "plantedapp", "s3cr:t", "s3cr%3At", "64MB"] {
            assert!(!out.contains(leak), "{leak} in {out}");
        }
        assert!(
            out.contains("FATAL 22023: invalid value for parameter \"search_path\""),
            "{out}"
        );
        assert!(out.contains("***"), "{out}");
        // Short values (connect_timeout=5) do not mangle other text.
        assert!(Redactor::of_url(url)
            .apply("port 5433, code 57P01")
            .contains("5433"));
        assert_eq!(Redactor::of_url("postgres://u@h/d").apply("as is"), "as is");
        assert_eq!(percent_decode("a%20b%zz%4"), "a b%zz%4");
    }

    #[test]
    fn tls_parameters_are_ours() {
        use super::super::tls::Verify;
        let t = Target::parse("postgres://u:p@db.example:5432/app").expect("no sslmode");
        assert_eq!(t.tls.mode, SslMode::Prefer, "libpq's default");
        assert_eq!(t.tls.verify(), Verify::Nothing);
        let t = Target::parse("postgres://u:p@db/app?sslmode=require").expect("require");
        assert_eq!(
            (t.tls.mode, t.tls.verify(), t.config.get_ssl_mode()),
            (
                SslMode::Require,
                Verify::Nothing,
                tokio_postgres::config::SslMode::Require
            )
        );
        let t = Target::parse(
            "postgres://u:p@db/app?application_name=x1&sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem&sslcert=/etc/c.pem&sslkey=/etc/c.key&connect_timeout=3",
        )
        .expect("verify-full");
        assert_eq!(t.tls.verify(), Verify::Full);
        assert_eq!(t.tls.root_cert, Some(PathBuf::from("/etc/ca.pem")));
        assert_eq!(t.tls.key, Some(PathBuf::from("/etc/c.key")));
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        assert_eq!(t.config.get_application_name(), Some("nomadfs"));
        // The paths are not secrets: reasons may name them.
        assert_eq!(
            t.redact.apply("/etc/ca.pem verify-full"),
            "/etc/ca.pem verify-full"
        );
        let t = Target::parse("postgres://u:p@db/app?sslmode=require&sslrootcert=/ca.pem")
            .expect("require with a CA");
        assert_eq!(
            t.tls.verify(),
            Verify::Chain,
            "as libpq: a root cert is checked"
        );
        let t = Target::parse("postgres://u:p@db/app?sslmode=verify-ca&sslrootcert=/ca.pem")
            .expect("verify-ca");
        assert_eq!(t.tls.verify(), Verify::Chain);
        // A Unix socket never negotiates TLS (PostgreSQL has none there).
        let t = Target::parse("postgres://u:p@%2Frun%2Fpostgresql/app?sslmode=require")
            .expect("socket");
        assert_eq!(
            t.config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Disable
        );
    }

    #[test]
    fn target_parse() {
        let t = Target::parse("postgres://admin:s3cr3t@127.0.0.1:5433/app").expect("parse");
        assert_eq!(t.display, "127.0.0.1:5433/app");
        assert_eq!((t.host.as_str(), t.port), ("127.0.0.1", 5433));
        assert!(!format!("{t:?}").contains("s3cr3t"));
        let t = Target::parse("postgres://admin:p%40ss@127.0.0.1/app").expect("encoded @");
        assert_eq!(t.host, "127.0.0.1");
        for bad in [
            "",
            "host=x user=y",
            "mysql://a@b/c",
            "postgres://host/db",
            "postgres://u:p@h:notaport/db",
            "postgres://u:s3cr3t@h/db?sslmode=verify-full",
            "postgres://u:s3cr3t@h/db?sslmode=verify-ca&sslcert=/c.pem",
            "postgres://u:s3cr3t@h/db?sslmode=required",
            "postgres://u:s3cr3t@h/db?sslmode=verify-full&sslrootcert=ca.pem",
            "postgres://u:s3cr3t@h/db?sslmode=require&sslcert=/c.pem",
            "postgres://u:s3cr3t@h/db?sslmode=disable&sslrootcert=/ca.pem",
            "postgres://u:s3cr3t@h/db?sslrootcert=system&sslmode=verify-full",
            "postgres://u:p@h/db?bogus=1",
            "postgres://u:s3cr3t@tail@h/db",
        ] {
            let e = Target::parse(bad).err().map(|e| (e.kind, e.message));
            let (kind, msg) = e.unwrap_or((ErrorKind::Io, String::new()));
            assert_eq!(kind, ErrorKind::InvalidInput, "{bad}");
            assert!(!msg.contains("s3cr3t"), "{msg}");
        }
    }
}
