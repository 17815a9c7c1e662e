//! TLS on both hops: the acceptor clients reach, the connector pgveil uses
//! towards PostgreSQL, and the `tls-server-end-point` channel-binding hash
//! SCRAM-SHA-256-PLUS needs on either side.
//!
//! The two hops are independent: each is built from its own section
//! (`[listen.tls]`, `[upstream.tls]`) and either may be absent. Both use the
//! aws-lc-rs provider explicitly and accept TLS 1.2 and 1.3 only. Files are
//! read when the settings are built (start, SIGHUP); a session keeps the
//! settings it started with.

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error as RustlsError, SignatureScheme};
use sha2::Digest;

use crate::config::{Config, UpstreamTlsMode};

/// ALPN protocol name of PostgreSQL 17's direct TLS negotiation.
pub const ALPN_POSTGRESQL: &[u8] = b"postgresql";

/// Why TLS settings could not be built. Paths are named; key material never.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or held nothing usable.
    #[error("{what} {path}: {reason}")]
    File {
        /// What the file should hold.
        what: &'static str,
        /// The configured path.
        path: String,
        /// Why it was refused.
        reason: String,
    },
    /// rustls refused the combination (key not matching the certificate...).
    #[error("{context}: {source}")]
    Rustls {
        /// Which setting was being built.
        context: &'static str,
        /// rustls's reason.
        source: RustlsError,
    },
    /// A verifier could not be built from the CA bundle.
    #[error("{context}: {reason}")]
    Verifier {
        /// Which setting was being built.
        context: &'static str,
        /// Why.
        reason: String,
    },
    /// `upstream.tls.server_name` is not a DNS name or IP address.
    #[error("upstream.tls.server_name `{0}` is not a valid DNS name or IP address")]
    ServerName(String),
}

/// The provider every TLS object of pgveil is built with.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Client-facing TLS (`[listen.tls]`).
pub struct ServerTls {
    /// The acceptor's configuration.
    pub config: Arc<rustls::ServerConfig>,
    /// Clients that do not negotiate TLS are refused.
    pub required: bool,
    /// `tls-server-end-point` hash of pgveil's own certificate, when its
    /// signature algorithm defines one; SCRAM-SHA-256-PLUS is offered only then.
    pub end_point: Option<Vec<u8>>,
}

/// Database-facing TLS (`[upstream.tls]`).
pub struct UpstreamTls {
    /// libpq `sslmode` semantics.
    pub mode: UpstreamTlsMode,
    /// The connector's configuration (`None` in `disable` mode).
    pub config: Option<Arc<rustls::ClientConfig>>,
    /// Name sent as SNI and, in `verify-full`, checked against the certificate.
    pub server_name: ServerName<'static>,
    /// The server's certificate chain is checked against a CA (verify-ca,
    /// verify-full, or require/prefer with `ca`).
    pub verifies_chain: bool,
}

impl UpstreamTls {
    /// Whether a connection made with these settings proved the server's
    /// identity (TLS was used and the chain verified).
    pub fn verified(&self, stream: &crate::session::stream::Stream) -> bool {
        self.verifies_chain && stream.is_tls()
    }
}

/// Both hops' settings, rebuilt as a whole on SIGHUP.
#[derive(Default)]
pub struct TlsSettings {
    /// `[listen.tls]`, when configured.
    pub server: Option<Arc<ServerTls>>,
    /// `[upstream.tls]`, when configured.
    pub upstream: Option<Arc<UpstreamTls>>,
}

impl TlsSettings {
    /// Reads the certificate files a config names.
    pub fn from_config(config: &Config) -> Result<TlsSettings, TlsError> {
        let server = match &config.listen.tls {
            Some(t) => Some(Arc::new(server_tls(
                &t.cert,
                &t.key,
                t.client_ca.as_deref(),
                t.required,
            )?)),
            None => None,
        };
        let upstream = match &config.upstream.tls {
            Some(t) => {
                let name = t.server_name(config.upstream.address.get_ref());
                Some(Arc::new(upstream_tls(t.mode(), t.ca.as_deref(), &name)?))
            }
            None => None,
        };
        Ok(TlsSettings { server, upstream })
    }
}

fn read_certs(what: &'static str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what,
        path: path.display().to_string(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if certs.is_empty() {
        return Err(failed("no PEM certificate found".into()));
    }
    Ok(certs)
}

fn read_roots(what: &'static str, path: &Path) -> Result<Arc<rustls::RootCertStore>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs(what, path)? {
        roots.add(cert).map_err(|e| TlsError::File {
            what,
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
    }
    Ok(Arc::new(roots))
}

fn server_tls(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
    required: bool,
) -> Result<ServerTls, TlsError> {
    let chain = read_certs("listen.tls.cert", cert)?;
    // The key file's parse error could echo part of it: report only the path.
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::File {
        what: "listen.tls.key",
        path: key.display().to_string(),
        reason: match e {
            rustls::pki_types::pem::Error::Io(io) => io.to_string(),
            _ => "no PEM private key (PKCS#8, PKCS#1 or SEC1) found".into(),
        },
    })?;
    let end_point = chain.first().and_then(|c| end_point_hash(c));
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            context: "listen.tls",
            source,
        })?;
    let builder = match client_ca {
        Some(ca) => {
            let roots = read_roots("listen.tls.client_ca", ca)?;
            let verifier =
                rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
                    .build()
                    .map_err(|e| TlsError::Verifier {
                        context: "listen.tls.client_ca",
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Rustls {
            context: "listen.tls.cert/key",
            source,
        })?;
    config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
    Ok(ServerTls {
        config: Arc::new(config),
        // A client certificate can only be checked on TLS: with `client_ca`
        // a plaintext client would skip it, so TLS is required.
        required: required || client_ca.is_some(),
        end_point,
    })
}

fn upstream_tls(
    mode: UpstreamTlsMode,
    ca: Option<&Path>,
    name: &str,
) -> Result<UpstreamTls, TlsError> {
    let server_name =
        ServerName::try_from(name.to_string()).map_err(|_| TlsError::ServerName(name.into()))?;
    if mode == UpstreamTlsMode::Disable {
        return Ok(UpstreamTls {
            mode,
            config: None,
            server_name,
            verifies_chain: false,
        });
    }
    let provider = provider();
    let webpki = match ca {
        Some(ca) => Some(
            rustls::client::WebPkiServerVerifier::builder_with_provider(
                read_roots("upstream.tls.ca", ca)?,
                provider.clone(),
            )
            .build()
            .map_err(|e| TlsError::Verifier {
                context: "upstream.tls.ca",
                reason: e.to_string(),
            })?,
        ),
        None => None,
    };
    // libpq: `require` with a root certificate behaves as `verify-ca`.
    let verifier: Arc<dyn ServerCertVerifier> = match (mode, webpki) {
        (UpstreamTlsMode::VerifyFull, Some(w)) => w,
        (_, Some(w)) => Arc::new(ChainOnly(w)),
        (UpstreamTlsMode::VerifyFull | UpstreamTlsMode::VerifyCa, None) => {
            return Err(TlsError::Verifier {
                context: "upstream.tls",
                reason: format!("mode {} needs ca", mode.name()),
            });
        }
        (_, None) => Arc::new(Unverified(provider.clone())),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|source| TlsError::Rustls {
            context: "upstream.tls",
            source,
        })?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(UpstreamTls {
        mode,
        config: Some(Arc::new(config)),
        server_name,
        verifies_chain: ca.is_some(),
    })
}

/// `verify-ca` (and `require` with a CA): the chain must lead to the CA, the
/// name is not checked, as libpq does.
#[derive(Debug)]
struct ChainOnly(Arc<rustls::client::WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(RustlsError::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require` without a CA: encrypted, not authenticated (libpq's meaning).
/// The handshake's signatures are still checked against the presented key.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, RustlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, RustlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// The `tls-server-end-point` channel-binding data of a certificate (RFC
/// 5929): its hash with the hash of its signature algorithm, SHA-256 for
/// MD5 and SHA-1. `None` when the algorithm defines no single hash
/// (RSASSA-PSS, Ed25519), as PostgreSQL then offers no binding either.
pub fn end_point_hash(cert: &[u8]) -> Option<Vec<u8>> {
    let oid = signature_algorithm(cert)?;
    const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01];
    const ECDSA: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04];
    let hash = match oid {
        [rsa @ .., last] if rsa == RSA => match last {
            0x04 | 0x05 | 0x0b => 256,
            0x0e => 224,
            0x0c => 384,
            0x0d => 512,
            _ => return None,
        },
        [ec @ .., 0x01] if ec == ECDSA => 256,
        [ec @ .., 0x03, n] if ec == ECDSA => match n {
            0x01 => 224,
            0x02 => 256,
            0x03 => 384,
            0x04 => 512,
            _ => return None,
        },
        _ => return None,
    };
    Some(match hash {
        224 => sha2::Sha224::digest(cert).to_vec(),
        256 => sha2::Sha256::digest(cert).to_vec(),
        384 => sha2::Sha384::digest(cert).to_vec(),
        _ => sha2::Sha512::digest(cert).to_vec(),
    })
}

/// The signatureAlgorithm OID of a DER certificate: the second element of
/// the outer SEQUENCE, read with just enough DER to get there.
fn signature_algorithm(cert: &[u8]) -> Option<&[u8]> {
    let (tag, outer, _) = der_element(cert)?;
    if tag != 0x30 {
        return None;
    }
    let (_, _, rest) = der_element(outer)?; // tbsCertificate
    let (tag, algorithm, _) = der_element(rest)?;
    if tag != 0x30 {
        return None;
    }
    let (tag, oid, _) = der_element(algorithm)?;
    (tag == 0x06).then_some(oid)
}

/// One DER element: (tag, contents, what follows).
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | *b as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_walk_finds_the_signature_algorithm() {
        // SEQUENCE { SEQUENCE {tbs}, SEQUENCE { OID ecdsa-with-SHA256 }, BIT STRING }
        let cert = [
            0x30, 0x12, 0x30, 0x02, 0x05, 0x00, 0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce,
            0x3d, 0x04, 0x03, 0x02, 0x03, 0x02, 0x00, 0x00,
        ];
        assert_eq!(
            signature_algorithm(&cert),
            Some(&[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02][..])
        );
        assert_eq!(end_point_hash(&cert).map(|h| h.len()), Some(32));
        assert_eq!(end_point_hash(&cert[..10]), None);
        assert_eq!(end_point_hash(&[]), None);
    }
}

/// TLS for pgveil's own direct connections to PostgreSQL made with
/// tokio-postgres (`pgveil migrate`, `pgveil guard`): verifies the server
/// against a CA and the host name (libpq's `verify-full`), or, without a
/// CA, encrypts without verifying (libpq's `require`). Offers ALPN
/// `postgresql` and `tls-server-end-point` channel binding, so SCRAM logins
/// use SCRAM-SHA-256-PLUS.
#[derive(Clone)]
pub struct PgConnector {
    config: Arc<rustls::ClientConfig>,
}

impl PgConnector {
    /// `ca`: PEM roots to verify the server with; `client`: a certificate
    /// chain and key to present.
    pub fn new(ca: Option<&Path>, client: Option<(&Path, &Path)>) -> Result<PgConnector, TlsError> {
        let provider = provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|source| TlsError::Rustls {
                context: "client TLS",
                source,
            })?;
        let builder = match ca {
            Some(ca) => builder.with_root_certificates(read_roots("sslrootcert", ca)?),
            None => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(Unverified(provider))),
        };
        let mut config = match client {
            Some((cert, key)) => {
                let chain = read_certs("client certificate", cert)?;
                let key = PrivateKeyDer::from_pem_file(key).map_err(|_| TlsError::File {
                    what: "client key",
                    path: key.display().to_string(),
                    reason: "no PEM private key found".into(),
                })?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|source| TlsError::Rustls {
                        context: "client certificate",
                        source,
                    })?
            }
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![ALPN_POSTGRESQL.to_vec()];
        Ok(PgConnector {
            config: Arc::new(config),
        })
    }
}

impl<S> tokio_postgres::tls::MakeTlsConnect<S> for PgConnector
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type TlsConnect = PgTlsConnect;
    type Error = rustls::pki_types::InvalidDnsNameError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<PgTlsConnect, Self::Error> {
        Ok(PgTlsConnect {
            config: self.config.clone(),
            name: ServerName::try_from(domain.to_owned())?,
        })
    }
}

/// One handshake of a [`PgConnector`].
pub struct PgTlsConnect {
    config: Arc<rustls::ClientConfig>,
    name: ServerName<'static>,
}

type Connecting<S> =
    std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<PgTlsStream<S>>> + Send>>;

impl<S> tokio_postgres::tls::TlsConnect<S> for PgTlsConnect
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Stream = PgTlsStream<S>;
    type Error = std::io::Error;
    type Future = Connecting<S>;

    fn connect(self, stream: S) -> Connecting<S> {
        Box::pin(async move {
            let tls = tokio_rustls::TlsConnector::from(self.config)
                .connect(self.name, stream)
                .await?;
            Ok(PgTlsStream(tls))
        })
    }
}

/// A TLS connection made by a [`PgConnector`].
pub struct PgTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S> PgTlsStream<S> {
    /// The negotiated ALPN protocol, if any.
    pub fn alpn(&self) -> Option<&[u8]> {
        self.0.get_ref().1.alpn_protocol()
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncRead
    for PgTlsStream<S>
{
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite
    for PgTlsStream<S>
{
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> tokio_postgres::tls::TlsStream
    for PgTlsStream<S>
{
    fn channel_binding(&self) -> tokio_postgres::tls::ChannelBinding {
        match self
            .0
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|c| c.first())
            .and_then(|c| end_point_hash(c))
        {
            Some(hash) => tokio_postgres::tls::ChannelBinding::tls_server_end_point(hash),
            None => tokio_postgres::tls::ChannelBinding::none(),
        }
    }
}
