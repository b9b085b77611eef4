//! TLS to PostgreSQL: libpq's `sslmode`, `sslrootcert`, `sslcert`, `sslkey` over rustls (ring).
//!
//! Owns: what each mode checks — `disable`: no TLS; `prefer` (the default, as in libpq): TLS if
//! the server offers it, else plain, nothing verified; `require`: TLS or fail, nothing verified
//! unless `sslrootcert` is given (then the chain is, like libpq); `verify-ca`: the chain up to a
//! CA in `sslrootcert`, not the host name; `verify-full`: the chain and the host name (a DNS
//! name or an IP address in the certificate's SANs) — and the connector tokio-postgres uses
//! (`PgTls`, built for every new connection: the files are read at connect time, so a renewed
//! certificate is picked up by the next connection), with SCRAM bound to the TLS session
//! (`tls-server-end-point`) when the certificate's signature hash is SHA-1/256/384/512.
//!
//! Must never: accept a certificate the mode says to check without checking it, or put the
//! content of a file it read into an error (see `crate::tls`).
//!
//! Size: over ~500 lines because the verifiers of the five modes and the file checks they share,
//! each a small rustls trait impl.

use crate::error::{Error, Result};
use crate::tls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_postgres::Socket;

/// libpq's `sslmode`, as nomadfs implements it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl SslMode {
    pub fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// The mode tokio-postgres negotiates with (it knows no verify-*: verification is ours).
    pub fn wire(self) -> tokio_postgres::config::SslMode {
        use tokio_postgres::config::SslMode as W;
        match self {
            SslMode::Disable => W::Disable,
            SslMode::Prefer => W::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => W::Require,
        }
    }
}

/// How the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    /// Encryption only (an active attacker can stand in the middle).
    Nothing,
    /// The chain up to a CA in `sslrootcert`.
    Chain,
    /// The chain and the host name.
    Full,
}

/// The TLS settings of one connection URL (paths checked absolute; files not read yet).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl Default for TlsSettings {
    fn default() -> Self {
        TlsSettings {
            mode: SslMode::Prefer,
            root_cert: None,
            cert: None,
            key: None,
        }
    }
}

impl TlsSettings {
    /// Check the combination (EINVAL with the reason): verify-* need `sslrootcert`, `sslcert`
    /// and `sslkey` go together, every path is absolute.
    pub fn check(&self) -> Result<()> {
        for (key, p) in [
            ("sslrootcert", &self.root_cert),
            ("sslcert", &self.cert),
            ("sslkey", &self.key),
        ] {
            if let Some(p) = p {
                if !p.is_absolute() {
                    return Err(Error::invalid(format!(
                        "config/connection: {key}={}: must be an absolute path (the daemon \
                         reads it)",
                        p.display()
                    )));
                }
            }
        }
        if matches!(self.mode, SslMode::VerifyCa | SslMode::VerifyFull) && self.root_cert.is_none()
        {
            return Err(Error::invalid(format!(
                "config/connection: sslmode={} needs sslrootcert=/path/to/ca.pem (the CA that \
                 signed the server's certificate)",
                self.mode.name()
            )));
        }
        if self.cert.is_some() != self.key.is_some() {
            return Err(Error::invalid(
                "config/connection: sslcert and sslkey go together (the client certificate and \
                 its private key)",
            ));
        }
        if self.mode == SslMode::Disable && (self.root_cert.is_some() || self.cert.is_some()) {
            return Err(Error::invalid(
                "config/connection: sslmode=disable with sslrootcert/sslcert: the files would \
                 not be used (remove them or pick another sslmode)",
            ));
        }
        Ok(())
    }

    pub fn verify(&self) -> Verify {
        match self.mode {
            SslMode::VerifyFull => Verify::Full,
            SslMode::VerifyCa => Verify::Chain,
            _ if self.root_cert.is_some() => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// The connector for one new connection: reads and checks the files now.
    pub fn connector(&self) -> Result<PgTls> {
        let provider = tls::provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| Error::invalid(format!("TLS: {e}")))?;
        let verify = self.verify();
        let verifier: Arc<dyn ServerCertVerifier> = match (&self.root_cert, verify) {
            (Some(root), Verify::Full | Verify::Chain) => {
                let inner = tls::webpki_verifier(tls::root_store("sslrootcert", root)?)?;
                if verify == Verify::Full {
                    inner
                } else {
                    Arc::new(ChainOnly { inner })
                }
            }
            _ => Arc::new(NoVerify { provider }),
        };
        let builder = builder
            .dangerous()
            .with_custom_certificate_verifier(verifier);
        let mut config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let cert_pem = tls::read_checked("sslcert", cert, false)?;
                let chain = tls::certificates("sslcert", cert, &cert_pem)?;
                let key_pem = tls::read_checked("sslkey", key, true)?;
                let key_der = tls::private_key("sslkey", key, &key_pem)?;
                builder.with_client_auth_cert(chain, key_der).map_err(|e| {
                    Error::invalid(format!(
                        "sslcert {} / sslkey {}: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?
            }
            _ => builder.with_no_client_auth(),
        };
        // PostgreSQL 17's direct TLS negotiation requires it; older servers ignore it.
        config.alpn_protocols = vec![b"postgresql".to_vec()];
        let ca = match &self.root_cert {
            Some(p) => format!("sslrootcert {}", p.display()),
            None => "sslrootcert".to_string(),
        };
        Ok(PgTls {
            config: Arc::new(config),
            ca: Arc::from(ca),
        })
    }
}

/// `require` without `sslrootcert` (and `prefer`): the handshake's signatures are checked, the
/// certificate is not (libpq does the same).
#[derive(Debug)]
struct NoVerify {
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// `verify-ca`: webpki's verdict except a host-name mismatch (webpki checks the name last,
/// after the chain, so a name error means the chain was good).
#[derive(Debug)]
struct ChainOnly {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> std::result::Result<ServerCertVerified, rustls::Error> {
        use rustls::CertificateError as C;
        match self
            .inner
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                C::NotValidForName | C::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> std::result::Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// tokio-postgres's `MakeTlsConnect` over tokio-rustls.
#[derive(Clone)]
pub struct PgTls {
    config: Arc<rustls::ClientConfig>,
    /// "sslrootcert /path" for "unknown CA" reasons.
    ca: Arc<str>,
}

/// A handshake failure, with the person's reason.
#[derive(Debug)]
pub struct TlsFailure(String);

impl std::fmt::Display for TlsFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TlsFailure {}

pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    ca: Arc<str>,
    host: String,
}

impl MakeTlsConnect<Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTlsConnect;
    type Error = TlsFailure;

    /// `domain` is "" for a Unix socket (where PostgreSQL never offers TLS): any error waits for
    /// a handshake that is really attempted.
    fn make_tls_connect(&mut self, domain: &str) -> std::result::Result<PgTlsConnect, TlsFailure> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            ca: self.ca.clone(),
            host: domain.to_string(),
        })
    }
}

impl TlsConnect<Socket> for PgTlsConnect {
    type Stream = PgTlsStream;
    type Error = TlsFailure;
    type Future =
        Pin<Box<dyn Future<Output = std::result::Result<PgTlsStream, TlsFailure>> + Send>>;

    fn connect(self, stream: Socket) -> Self::Future {
        Box::pin(async move {
            let name = ServerName::try_from(self.host.clone()).map_err(|_| {
                TlsFailure(format!(
                    "TLS: {:?} is not a host name or address",
                    self.host
                ))
            })?;
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(PgTlsStream)
                .map_err(|e| {
                    TlsFailure(
                        tls::describe(&e, &self.host, &self.ca)
                            .unwrap_or_else(|| format!("TLS handshake: {e}")),
                    )
                })
        })
    }
}

pub struct PgTlsStream(tokio_rustls::client::TlsStream<Socket>);

impl AsyncRead for PgTlsStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tokio_postgres::tls::TlsStream for PgTlsStream {
    /// `tls-server-end-point` (RFC 5929): the hash of the server's certificate, so SCRAM's
    /// proof is bound to this TLS session and a man in the middle (possible with `require`,
    /// which checks no certificate) cannot relay the login. For a signature hash nomadfs does
    /// not know (Ed25519, RSA-PSS), none: SCRAM then runs unbound (as with libpq's `prefer`).
    fn channel_binding(&self) -> ChannelBinding {
        let (_, conn) = self.0.get_ref();
        match conn
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| server_end_point(c.as_ref()))
        {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

/// One DER TLV: (tag, contents, what follows).
fn der_tlv(b: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *b.first()?;
    let first = *b.get(1)?;
    let (len, head) = if first < 0x80 {
        (usize::from(first), 2)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | usize::from(*b.get(2 + i)?);
        }
        (len, 2 + n)
    };
    let body = b.get(head..head.checked_add(len)?)?;
    Some((tag, body, b.get(head + len..)?))
}

/// RFC 5929's `tls-server-end-point` for certificate `der`: its hash with the hash of its
/// signature algorithm (SHA-256 for MD5 and SHA-1), or `None` for an algorithm not handled.
fn server_end_point(der: &[u8]) -> Option<Vec<u8>> {
    use sha2::Digest;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let (0x30, cert, _) = der_tlv(der)? else {
        return None;
    };
    let (0x30, _tbs, rest) = der_tlv(cert)? else {
        return None;
    };
    let (0x30, alg, _) = der_tlv(rest)? else {
        return None;
    };
    let (0x06, oid, _) = der_tlv(alg)? else {
        return None;
    };
    let bits = if let Some(t) = oid.strip_prefix(RSA) {
        match t {
            [0x04] | [0x05] | [0x0b] => 256,
            [0x0c] => 384,
            [0x0d] => 512,
            _ => return None,
        }
    } else if let Some(t) = oid.strip_prefix(ECDSA) {
        match t {
            [0x01] | [0x03, 0x02] => 256,
            [0x03, 0x03] => 384,
            [0x03, 0x04] => 512,
            _ => return None,
        }
    } else {
        return None;
    };
    Some(match bits {
        256 => sha2::Sha256::digest(der).to_vec(),
        384 => sha2::Sha384::digest(der).to_vec(),
        _ => sha2::Sha512::digest(der).to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate's outer shape with a given signature algorithm OID.
    fn cert_with_oid(oid: &[u8]) -> Vec<u8> {
        let tbs = [0x30, 0x03, 0x02, 0x01, 0x01];
        let mut alg = vec![0x06, oid.len() as u8];
        alg.extend_from_slice(oid);
        let mut alg_seq = vec![0x30, alg.len() as u8];
        alg_seq.extend(alg);
        let mut body = tbs.to_vec();
        body.extend(alg_seq);
        body.extend([0x03, 0x01, 0x00]);
        let mut der = vec![0x30, body.len() as u8];
        der.extend(body);
        der
    }

    #[test]
    fn end_point_hash_follows_the_signature_algorithm() {
        use sha2::Digest;
        let ecdsa256 = cert_with_oid(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02]);
        assert_eq!(
            server_end_point(&ecdsa256),
            Some(sha2::Sha256::digest(&ecdsa256).to_vec())
        );
        let rsa384 = cert_with_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c]);
        assert_eq!(
            server_end_point(&rsa384),
            Some(sha2::Sha384::digest(&rsa384).to_vec())
        );
        let sha1 = cert_with_oid(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x05]);
        assert_eq!(
            server_end_point(&sha1),
            Some(sha2::Sha256::digest(&sha1).to_vec()),
            "MD5/SHA-1 use SHA-256"
        );
        // Ed25519 (1.3.101.112): not defined by RFC 5929 here, no binding.
        assert_eq!(server_end_point(&cert_with_oid(&[0x2b, 0x65, 0x70])), None);
        // Truncated or not DER: no binding, no panic.
        assert_eq!(server_end_point(&ecdsa256[..ecdsa256.len() - 2]), None);
        assert_eq!(server_end_point(b"\x30\x84\xff\xff\xff\xff"), None);
        assert_eq!(server_end_point(b""), None);
    }
}
