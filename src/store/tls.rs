//! TLS to PostgreSQL, with rustls.
//!
//! The daemon ships machine state across the lab network, and the password
//! it authenticates with travels in the same session: on any network that is
//! not this machine's loopback the connection must be encrypted, and the
//! server must prove that it is the lab's server before the daemon says
//! anything to it. `database.sslmode` chooses how (libpq's names and
//! meanings):
//!
//! - `disable`: plaintext. The default only when every host is loopback
//!   (127.0.0.0/8, `::1`, `localhost`) or a Unix socket, where there is no
//!   network to protect (and PostgreSQL offers no TLS over a Unix socket).
//! - `require`: encrypted, but the server's certificate is **not** checked:
//!   it protects against someone who only listens, not against someone who
//!   answers in the server's place. Not recommended; the daemon warns at
//!   start when it is used.
//! - `verify-ca`: the certificate chain must lead to one of the trusted CA
//!   certificates, but the certificate need not name the host: for servers
//!   reached by an address their certificate does not list.
//! - `verify-full` (the default for any other host): the chain must lead to a
//!   trusted CA and the certificate must name the host the daemon connects
//!   to (a DNS name, or an IP address in its subject alternative names).
//!
//! The trusted CA certificates are those of the PEM file `database.sslrootcert`
//! if it is set, else the system's (`rustls-native-certs`: `/etc/ssl/certs`,
//! or `SSL_CERT_FILE`/`SSL_CERT_DIR`). Unlike libpq, `require` never turns into
//! `verify-ca` because a CA file exists: `sslrootcert` with `require` is
//! refused when the configuration is checked.
//!
//! Whenever TLS is on, a server that does not accept TLS is an error: there is
//! no fallback to plaintext (libpq's `prefer` and `allow` are not offered).
//!
//! The rustls configuration is built once, when the connection settings are
//! made ([`TlsConnector::new`]), so that every reconnect reuses it and a
//! missing or broken certificate file is reported at start, not at the first
//! reconnect. The crypto provider is `ring`, installed explicitly rather than
//! as the process default (rustls's default, aws-lc-rs, needs cmake and nasm
//! to build).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::verify_server_cert_signed_by_trust_anchor;
use rustls::crypto::WebPkiSupportedAlgorithms;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::ParsedCertificate;
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::{ClientCert, DatabaseTls, SslMode};

/// Why the TLS settings of `[database]` cannot be used. Each message names
/// the key and the file; never the content of a key file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A certificate or key file could not be read.
    #[error("{}: cannot read the {what} ({key}): {error}", path.display())]
    Read {
        /// What the file should hold ("CA certificates", "client certificate", ...).
        what: &'static str,
        /// The configuration key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        error: std::io::Error,
    },
    /// A file was read but holds nothing usable.
    #[error("{}: {reason} ({key})", path.display())]
    Invalid {
        /// The configuration key naming it.
        key: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// `database.sslrootcert` is not set and the system has no usable CA
    /// certificates.
    #[error(
        "sslmode \"{mode}\" checks the server's certificate, and database.sslrootcert is not set, \
         but no system CA certificates could be loaded ({reason}); set database.sslrootcert to \
         the PEM file of the CA that signed the server's certificate"
    )]
    SystemRoots {
        /// The mode that needs them.
        mode: SslMode,
        /// What went wrong while loading them.
        reason: String,
    },
    /// The client certificate and key do not make a usable pair.
    #[error(
        "{} and {}: cannot be used as the client certificate (database.sslcert, \
         database.sslkey): {reason}",
        cert.display(), key.display()
    )]
    ClientAuth {
        /// `database.sslcert`.
        cert: PathBuf,
        /// `database.sslkey`.
        key: PathBuf,
        /// Why (rustls's words, which never include the key).
        reason: String,
    },
    /// rustls refused the configuration (cannot happen with the ring
    /// provider's defaults; reported rather than unwrapped all the same).
    #[error("cannot set up TLS: {0}")]
    Setup(String),
}

/// The TLS side of a connection: a rustls configuration built once from
/// `[database]`, cheap to clone (the configuration is shared).
#[derive(Clone)]
pub struct TlsConnector {
    mode: SslMode,
    roots: String,
    connect: MakeRustlsConnect,
}

impl std::fmt::Debug for TlsConnector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConnector")
            .field("mode", &self.mode)
            .field("roots", &self.roots)
            .finish_non_exhaustive()
    }
}

impl TlsConnector {
    /// The connector for `tls`, reading its certificate files now; `None`
    /// for `sslmode = "disable"`.
    pub fn new(tls: &DatabaseTls) -> Result<Option<TlsConnector>, TlsError> {
        let mode = tls.sslmode;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let algorithms = provider.signature_verification_algorithms;
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Setup(e.to_string()))?;
        let (builder, roots) = match mode {
            SslMode::Disable => return Ok(None),
            SslMode::Require => (
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(AnyCertificate { algorithms })),
                "no CA: sslmode \"require\" does not check the certificate".to_string(),
            ),
            SslMode::VerifyCa => {
                let (store, roots) = root_store(mode, tls.sslrootcert.as_deref())?;
                let verifier = ChainOnly {
                    roots: Arc::new(store),
                    algorithms,
                };
                (
                    builder
                        .dangerous()
                        .with_custom_certificate_verifier(Arc::new(verifier)),
                    roots,
                )
            }
            SslMode::VerifyFull => {
                let (store, roots) = root_store(mode, tls.sslrootcert.as_deref())?;
                (builder.with_root_certificates(store), roots)
            }
        };
        let config = match &tls.client_cert {
            None => builder.with_no_client_auth(),
            Some(client) => {
                let (chain, key) = client_identity(client)?;
                builder
                    .with_client_auth_cert(chain, key)
                    .map_err(|e| TlsError::ClientAuth {
                        cert: client.cert.clone(),
                        key: client.key.clone(),
                        reason: e.to_string(),
                    })?
            }
        };
        Ok(Some(TlsConnector {
            mode,
            roots,
            connect: MakeRustlsConnect::new(config),
        }))
    }

    /// The mode this connector implements (never `disable`).
    pub fn mode(&self) -> SslMode {
        self.mode
    }

    /// Which CA certificates are trusted, for messages: "the CA certificates
    /// in FILE (database.sslrootcert)" or "the system's CA certificates".
    pub fn roots(&self) -> &str {
        &self.roots
    }

    /// What tokio-postgres needs to open one session.
    pub(crate) fn make_connect(&self) -> MakeRustlsConnect {
        self.connect.clone()
    }
}

/// The trusted CA certificates and their description for messages.
fn root_store(mode: SslMode, file: Option<&Path>) -> Result<(RootCertStore, String), TlsError> {
    let mut store = RootCertStore::empty();
    match file {
        Some(path) => {
            let certs = read_certificates("CA certificates", "database.sslrootcert", path)?;
            let total = certs.len();
            let (added, ignored) = store.add_parsable_certificates(certs);
            if added == 0 {
                return Err(TlsError::Invalid {
                    key: "database.sslrootcert",
                    path: path.to_path_buf(),
                    reason: format!(
                        "none of its {total} certificates can be used as a CA certificate"
                    ),
                });
            }
            if ignored > 0 {
                tracing::warn!(
                    file = %path.display(),
                    ignored,
                    "some certificates in database.sslrootcert cannot be used as CA certificates and are ignored"
                );
            }
            Ok((
                store,
                format!(
                    "the CA certificates in {} (database.sslrootcert)",
                    path.display()
                ),
            ))
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let reason = if errors.is_empty() {
                    "the system's certificate store is empty".to_string()
                } else {
                    errors.join("; ")
                };
                return Err(TlsError::SystemRoots { mode, reason });
            }
            if !errors.is_empty() {
                tracing::warn!(errors = %errors.join("; "), "some system CA certificates could not be loaded");
            }
            Ok((
                store,
                "the system's CA certificates (database.sslrootcert is not set)".to_string(),
            ))
        }
    }
}

/// Every certificate in the PEM file `path`, at least one.
fn read_certificates(
    what: &'static str,
    key: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let bytes = std::fs::read(path).map_err(|error| TlsError::Read {
        what,
        key,
        path: path.to_path_buf(),
        error,
    })?;
    let invalid = |reason: String| TlsError::Invalid {
        key,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| invalid(format!("not a PEM file of certificates: {e}")))?;
    if certs.is_empty() {
        return Err(invalid(
            "holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)".to_string(),
        ));
    }
    Ok(certs)
}

/// The client certificate chain and its private key.
fn client_identity(
    client: &ClientCert,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = read_certificates("client certificate", "database.sslcert", &client.cert)?;
    let bytes = std::fs::read(&client.key).map_err(|error| TlsError::Read {
        what: "client certificate's private key",
        key: "database.sslkey",
        path: client.key.clone(),
        error,
    })?;
    // The parser's error could quote a line of the file; say only what kind
    // of problem it is, since the file holds a secret.
    let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| TlsError::Invalid {
        key: "database.sslkey",
        path: client.key.clone(),
        reason: match e {
            rustls::pki_types::pem::Error::NoItemsFound => {
                "holds no private key (expected PEM: -----BEGIN PRIVATE KEY-----, \
                 -----BEGIN RSA PRIVATE KEY----- or -----BEGIN EC PRIVATE KEY-----)"
                    .to_string()
            }
            _ => "is not a readable PEM private key".to_string(),
        },
    })?;
    Ok((chain, key))
}

/// `verify-ca`: the chain must lead to a trusted CA; the name is not checked.
#[derive(Debug)]
struct ChainOnly {
    roots: Arc<RootCertStore>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        // The same chain check (validity period, CA constraints, key usage for
        // a TLS server) as verify-full's, only without the name check after it.
        let cert = ParsedCertificate::try_from(end_entity)?;
        verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.roots,
            intermediates,
            now,
            self.algorithms.all,
        )?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// `require`: any certificate is accepted, but the handshake's signatures are
/// still checked against it, so that the session is at least bound to the key
/// of the certificate the server showed (as libpq's `require` does).
#[derive(Debug)]
struct AnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// Why a TLS connection failed, in the words of the configuration: what is
/// wrong and which key to look at. `None` when `error` is not about TLS.
///
/// `roots` describes the trusted CA certificates ([`TlsConnector::roots`]),
/// `mode` is the configured mode.
pub fn explain(error: &tokio_postgres::Error, mode: SslMode, roots: &str) -> Option<String> {
    use rustls::{AlertDescription, CertificateError, Error as E};
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    let mut no_tls = false;
    let mut found: Option<&rustls::Error> = None;
    while let Some(e) = cause {
        // tokio-postgres reports a server that answered "no" to the TLS
        // request only by this text.
        if e.to_string().contains("server does not support TLS") {
            no_tls = true;
        }
        let inner = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|i| i.downcast_ref::<rustls::Error>());
        if let Some(r) = e.downcast_ref::<rustls::Error>().or(inner) {
            found = Some(r);
            break;
        }
        cause = e.source();
    }
    if no_tls {
        return Some(format!(
            "the server does not accept TLS, which sslmode \"{mode}\" requires (the daemon \
             never falls back to plaintext): turn ssl on in the server's postgresql.conf, or, \
             only if the network to it is trusted, set database.sslmode = \"disable\""
        ));
    }
    let text = match found? {
        E::InvalidCertificate(CertificateError::UnknownIssuer) => format!(
            "the server's certificate is not trusted: it was not issued by any of {roots}; set \
             database.sslrootcert to the PEM file of the CA that signed it"
        ),
        E::InvalidCertificate(
            CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
        ) => {
            let names = match found {
                Some(E::InvalidCertificate(CertificateError::NotValidForNameContext {
                    presented,
                    ..
                })) if !presented.is_empty() => {
                    let names: Vec<&str> = presented.iter().map(|n| bare_name(n)).collect();
                    format!(" (it names {})", names.join(", "))
                }
                _ => String::new(),
            };
            format!(
                "the server's certificate is trusted but does not name the host connected \
                 to{names}: connect by a name or address it holds, or set database.sslmode = \
                 \"verify-ca\" to check the CA only"
            )
        }
        E::InvalidCertificate(
            CertificateError::Expired
            | CertificateError::ExpiredContext { .. }
            | CertificateError::NotValidYet
            | CertificateError::NotValidYetContext { .. },
        ) => format!(
            "the server's certificate is outside its validity period ({}); check the server's \
             certificate and this machine's clock",
            found.map_or_else(String::new, |e| e.to_string())
        ),
        E::InvalidCertificate(other) => {
            format!("the server's certificate is not trusted: {other:?}")
        }
        E::AlertReceived(
            AlertDescription::CertificateRequired
            | AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) => format!(
            "the server refused the TLS session ({}): it wants a client certificate it trusts \
             (database.sslcert and database.sslkey)",
            found.map_or_else(String::new, |e| e.to_string())
        ),
        other => format!("the TLS handshake failed: {other}"),
    };
    Some(text)
}

/// `db.lab` from rustls's `DnsName("db.lab")`, `10.0.0.1` from
/// `IpAddress(10.0.0.1)`; anything else as it is.
fn bare_name(presented: &str) -> &str {
    presented
        .strip_prefix("DnsName(\"")
        .and_then(|n| n.strip_suffix("\")"))
        .or_else(|| {
            presented
                .strip_prefix("IpAddress(")
                .and_then(|n| n.strip_suffix(')'))
        })
        .unwrap_or(presented)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presented_names_lose_their_wrapping() {
        assert_eq!(bare_name("DnsName(\"db.lab\")"), "db.lab");
        assert_eq!(bare_name("IpAddress(10.0.0.1)"), "10.0.0.1");
        assert_eq!(bare_name("db.lab"), "db.lab");
    }

    #[test]
    fn disable_needs_no_connector() {
        let c = TlsConnector::new(&DatabaseTls::new(SslMode::Disable)).unwrap();
        assert!(c.is_none());
    }

    #[test]
    fn require_needs_no_roots() {
        let c = TlsConnector::new(&DatabaseTls::new(SslMode::Require))
            .unwrap()
            .unwrap();
        assert_eq!(c.mode(), SslMode::Require);
        assert!(c.roots().contains("does not check"), "{}", c.roots());
    }

    #[test]
    fn missing_or_empty_ca_file_is_an_error_naming_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("ca.pem");
        let mut tls = DatabaseTls::new(SslMode::VerifyFull);
        tls.sslrootcert = Some(missing.clone());
        let e = TlsConnector::new(&tls).unwrap_err();
        let text = e.to_string();
        assert!(text.contains("database.sslrootcert"), "{text}");
        assert!(text.contains(&missing.display().to_string()), "{text}");

        std::fs::write(&missing, "not a certificate\n").unwrap();
        let e = TlsConnector::new(&tls).unwrap_err();
        assert!(matches!(e, TlsError::Invalid { .. }), "{e:?}");
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }

    #[test]
    fn unreadable_key_never_quotes_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("client.pem");
        let key = dir.path().join("client.key");
        let ca = rcgen::generate_simple_self_signed(vec!["client".to_string()]).unwrap();
        std::fs::write(&cert, ca.cert.pem()).unwrap();
        std::fs::write(
            &key,
            "-----BEGIN PRIVATE KEY-----\nS3CRETS3CRET!!\n-----END PRIVATE KEY-----\n",
        )
        .unwrap();
        let mut tls = DatabaseTls::new(SslMode::Require);
        tls.client_cert = Some(ClientCert {
            cert: cert.clone(),
            key: key.clone(),
        });
        let e = TlsConnector::new(&tls).unwrap_err();
        let text = format!("{e} {e:?}");
        assert!(text.contains("database.sslkey"), "{text}");
        assert!(!text.contains("S3CRET"), "{text}");

        // The right key works.
        std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
        let c = TlsConnector::new(&tls).unwrap().unwrap();
        assert_eq!(c.mode(), SslMode::Require);
    }
}
