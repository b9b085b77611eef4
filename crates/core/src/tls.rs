//! TLS material and reasons shared by the upstream clients (PostgreSQL, etcd): rustls with the
//! ring provider only (no OpenSSL, no aws-lc).
//!
//! Owns: reading a PEM file the configuration names (a CA bundle, a client certificate, a
//! private key) with the checks the daemon applies before trusting it — an absolute path, a
//! regular file of at most `MAX_PEM_BYTES`, not writable by group or others, and for a private
//! key not readable by them either (libpq's rule: `0600`, or `0640` when owned by root) — and
//! turning a rustls failure into a reason a person can act on ("unknown CA", "host name
//! mismatch", "expired", "the server refused our client certificate").
//!
//! Must never: put the bytes of a file it read into an error or a log line (a path named by
//! mistake may be a secret file: errors say only what is wrong with it), or keep a private key
//! outside a zeroized buffer longer than it takes to hand it to rustls.

use crate::error::{Error, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::sync::Arc;

/// Largest PEM file read (a CA bundle with a few hundred roots fits).
pub const MAX_PEM_BYTES: u64 = 1 << 20;

/// The crypto provider every TLS client of nomadfs uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Check that `path` may be trusted as `what` (`sslrootcert`, `ca_file`, …; a private key when
/// `private_key`) and read it (at most `MAX_PEM_BYTES`).
pub fn read_checked(
    what: &str,
    path: &Path,
    private_key: bool,
) -> Result<zeroize::Zeroizing<Vec<u8>>> {
    let shown = path.display();
    if !path.is_absolute() {
        return Err(Error::invalid(format!(
            "{what} {shown}: must be an absolute path (the daemon reads it, as its own user)"
        )));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::invalid(format!("{what} {shown}: cannot read it: {e}")))?;
    if !meta.is_file() {
        return Err(Error::invalid(format!(
            "{what} {shown}: not a regular file"
        )));
    }
    if meta.len() > MAX_PEM_BYTES {
        return Err(Error::invalid(format!(
            "{what} {shown}: larger than {} KiB: not a PEM file",
            MAX_PEM_BYTES >> 10
        )));
    }
    let mode = meta.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(Error::invalid(format!(
            "{what} {shown}: mode {mode:04o} lets group or others change it (chmod go-w)"
        )));
    }
    if private_key {
        let loose = if meta.uid() == 0 {
            mode & 0o037 != 0
        } else {
            mode & 0o077 != 0
        };
        if loose {
            return Err(Error::invalid(format!(
                "{what} {shown}: mode {mode:04o}: a key or password file must be 0600 (or 0640 \
                 when owned by root)"
            )));
        }
    }
    let bytes = std::fs::read(path)
        .map_err(|e| Error::invalid(format!("{what} {shown}: cannot read it: {e}")))?;
    Ok(zeroize::Zeroizing::new(bytes))
}

/// The certificates in PEM `bytes` (at least one).
pub fn certificates(what: &str, path: &Path, bytes: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(bytes)
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| {
            Error::invalid(format!(
                "{what} {}: not a PEM certificate file (bad PEM)",
                path.display()
            ))
        })?;
    if certs.is_empty() {
        return Err(Error::invalid(format!(
            "{what} {}: holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
            path.display()
        )));
    }
    Ok(certs)
}

/// The private key in PEM `bytes` (PKCS#8, PKCS#1 or SEC1).
pub fn private_key(what: &str, path: &Path, bytes: &[u8]) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_slice(bytes).map_err(|_| {
        Error::invalid(format!(
            "{what} {}: holds no PEM private key (PKCS#8, RSA or EC)",
            path.display()
        ))
    })
}

/// A root store of the CA certificates in `path`.
pub fn root_store(what: &str, path: &Path) -> Result<rustls::RootCertStore> {
    let bytes = read_checked(what, path, false)?;
    let certs = certificates(what, path, &bytes)?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(Error::invalid(format!(
            "{what} {}: no usable CA certificate in it",
            path.display()
        )));
    }
    Ok(roots)
}

/// A person's reason for a TLS failure found anywhere in `e`'s chain (a `rustls::Error`, or
/// an `io::Error` carrying one), or `None` if none is there. `host` is the name the client
/// checked ("" if the caller does not know it); `ca` names the CA file (for "unknown CA").
pub fn describe(e: &(dyn std::error::Error + 'static), host: &str, ca: &str) -> Option<String> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return Some(describe_rustls(r, host, ca));
        }
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if let Some(r) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                return Some(describe_rustls(r, host, ca));
            }
        }
        cur = err.source();
    }
    // Some layers (h2) keep only the text of the rustls error: recognise rustls's wording.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = describe_text(&err.to_string(), host, ca) {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// `describe` for error text that quotes a rustls error's `Display`.
pub fn describe_text(text: &str, host: &str, ca: &str) -> Option<String> {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    if let Some((_, rest)) = text.split_once("received fatal alert: ") {
        let name: String = rest
            .chars()
            .take_while(char::is_ascii_alphanumeric)
            .collect();
        let alert = match name.as_str() {
            "CertificateRequired" => A::CertificateRequired,
            "BadCertificate" => A::BadCertificate,
            "UnknownCA" => A::UnknownCA,
            "CertificateUnknown" => A::CertificateUnknown,
            "AccessDenied" => A::AccessDenied,
            "CertificateExpired" => A::CertificateExpired,
            "HandshakeFailure" => A::HandshakeFailure,
            "ProtocolVersion" => A::ProtocolVersion,
            _ => {
                return Some(format!(
                    "TLS: the server ended the handshake (alert {name})"
                ))
            }
        };
        return Some(describe_rustls(&E::AlertReceived(alert), host, ca));
    }
    let (_, rest) = text.split_once("invalid peer certificate: ")?;
    let c = if rest.starts_with("UnknownIssuer") || rest.starts_with("unknown issuer") {
        C::UnknownIssuer
    } else if rest.contains("not valid for name") || rest.starts_with("NotValidForName") {
        return Some(format!(
            "TLS: host name mismatch: {}",
            rest.trim_start_matches("NotValidForName")
        ));
    } else if rest.starts_with("Expired") || rest.contains("expired") {
        C::Expired
    } else if rest.starts_with("BadSignature") {
        C::BadSignature
    } else {
        return Some(format!("TLS: the server's certificate was refused: {rest}"));
    };
    Some(describe_rustls(&E::InvalidCertificate(c), host, ca))
}

/// `describe` for one rustls error.
pub fn describe_rustls(e: &rustls::Error, host: &str, ca: &str) -> String {
    use rustls::{AlertDescription as A, CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::UnknownIssuer => {
                format!("TLS: unknown CA: the server's certificate is not signed by a CA in {ca}")
            }
            C::NotValidForName if host.is_empty() => {
                "TLS: host name mismatch: the server's certificate is not valid for the name it \
                 was reached by"
                    .to_string()
            }
            C::NotValidForName => format!(
                "TLS: host name mismatch: the server's certificate is not valid for {host:?}"
            ),
            C::NotValidForNameContext {
                expected,
                presented,
            } => format!(
                "TLS: host name mismatch: the server's certificate is not valid for {:?} (it \
                 names {})",
                server_name_text(expected),
                presented
                    .iter()
                    .map(|p| presented_text(p))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            C::Expired | C::ExpiredContext { .. } => {
                "TLS: the server's certificate has expired".to_string()
            }
            C::NotValidYet | C::NotValidYetContext { .. } => {
                "TLS: the server's certificate is not valid yet (check the clocks)".to_string()
            }
            C::BadSignature => "TLS: the server's certificate has a bad signature".to_string(),
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
                "TLS: the server's certificate is not for TLS servers (extended key usage)"
                    .to_string()
            }
            other => format!("TLS: the server's certificate was refused: {other:?}"),
        },
        E::AlertReceived(a) => match a {
            A::CertificateRequired => {
                "TLS: the server requires a client certificate (give sslcert/sslkey or \
                 cert_file/key_file)"
                    .to_string()
            }
            A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied => {
                format!(
                    "TLS: the server refused our client certificate, or wants one and got \
                     none (alert {a:?}): check sslcert/sslkey or cert_file/key_file"
                )
            }
            A::CertificateExpired => {
                "TLS: the server refused our client certificate: expired".to_string()
            }
            other => format!("TLS: the server ended the handshake (alert {other:?})"),
        },
        other => format!("TLS: {other}"),
    }
}

/// `DnsName("db")` / `IpAddress(10.0.0.1)` (rustls's wording of a SAN) as `db` / `10.0.0.1`.
fn presented_text(p: &str) -> String {
    let inner = p
        .strip_prefix("DnsName(")
        .or_else(|| p.strip_prefix("IpAddress("))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or(p);
    inner.trim_matches('"').to_string()
}

fn server_name_text(n: &rustls::pki_types::ServerName<'_>) -> String {
    use rustls::pki_types::ServerName as N;
    match n {
        N::DnsName(d) => d.as_ref().to_string(),
        N::IpAddress(ip) => std::net::IpAddr::from(*ip).to_string(),
        other => format!("{other:?}"),
    }
}

/// rustls's own verifier for `roots` (chain and host name).
pub fn webpki_verifier(
    roots: rustls::RootCertStore,
) -> Result<Arc<rustls::client::WebPkiServerVerifier>> {
    rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .map_err(|e| Error::invalid(format!("TLS: cannot build a verifier: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn files_are_checked_before_they_are_trusted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let e = read_checked("sslrootcert", Path::new("ca.pem"), false).expect_err("relative");
        assert!(e.message.contains("absolute"), "{}", e.message);
        let e = read_checked("sslrootcert", dir.path(), false).expect_err("a directory");
        assert!(e.message.contains("regular file"), "{}", e.message);
        let e =
            read_checked("sslrootcert", &dir.path().join("missing"), false).expect_err("missing");
        assert!(e.message.contains("cannot read"), "{}", e.message);
        let p = dir.path().join("f.pem");
        std::fs::write(&p, "planted-content-9f1").expect("write");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o666)).expect("chmod");
        let e = read_checked("sslrootcert", &p, false).expect_err("world-writable");
        assert!(e.message.contains("chmod go-w"), "{}", e.message);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        assert!(read_checked("sslrootcert", &p, false).is_ok());
        let e = read_checked("sslkey", &p, true).expect_err("readable key");
        assert!(e.message.contains("0600"), "{}", e.message);
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(read_checked("sslkey", &p, true).is_ok());
        // Not PEM: the reason says so and never quotes the content.
        let e = certificates("sslrootcert", &p, b"planted-content-9f1").expect_err("not pem");
        assert!(!e.message.contains("planted"), "{}", e.message);
        let e = private_key("sslkey", &p, b"planted-content-9f1").expect_err("not pem");
        assert!(!e.message.contains("planted"), "{}", e.message);
    }

    #[test]
    fn reasons_name_the_problem() {
        let r = describe_rustls(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
            "db",
            "sslrootcert /ca.pem",
        );
        assert!(r.contains("unknown CA") && r.contains("/ca.pem"), "{r}");
        let r = describe_rustls(
            &rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName),
            "db.example",
            "x",
        );
        assert!(
            r.contains("host name mismatch") && r.contains("db.example"),
            "{r}"
        );
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::CertificateRequired),
        );
        let r = describe(&io, "h", "x").expect("found in an io::Error");
        assert!(r.contains("requires a client certificate"), "{r}");
        assert!(describe(&std::io::Error::other("plain"), "h", "x").is_none());
        assert_eq!(presented_text("DnsName(\"db.example\")"), "db.example");
        assert_eq!(presented_text("IpAddress(10.0.0.1)"), "10.0.0.1");
        // Only the text survived (h2 flattens its io::Error).
        let r = describe(
            &std::io::Error::other("connection error: received fatal alert: BadCertificate"),
            "h",
            "x",
        )
        .expect("from the text");
        assert!(r.contains("client certificate"), "{r}");
        let r = describe_text("invalid peer certificate: UnknownIssuer", "h", "ca_file /c")
            .expect("unknown issuer");
        assert!(r.contains("unknown CA"), "{r}");
    }
}
