//! TLS settings from PEM files, shared by every listener and outbound connection.
//!
//! Certificates and keys are read from files only (in Kubernetes: a mounted Secret), never from
//! flags or environment values, so they stay out of process listings and logs.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use strait_config::tls::{ClientTls, ServerTls};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {source}")]
    Certs {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("{path} holds no certificate")]
    NoCerts { path: PathBuf },
    #[error("cannot read the private key from {path}: {source}")]
    Key {
        path: PathBuf,
        source: rustls::pki_types::pem::Error,
    },
    #[error("invalid CA certificate in {path}: {source}")]
    Ca {
        path: PathBuf,
        source: rustls::Error,
    },
    #[error("invalid TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("invalid client-certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certs {
            path: path.into(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCerts { path: path.into() });
    }
    Ok(certs)
}

fn key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|source| TlsError::Key {
        path: path.into(),
        source,
    })
}

fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    for cert in certs(path)? {
        store.add(cert).map_err(|source| TlsError::Ca {
            path: path.into(),
            source,
        })?;
    }
    Ok(store)
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`: laid over the config file's `tls` block.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain served to clients; enables TLS on the listener.
    #[arg(long = "tls-cert")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate signed by it.
    #[arg(long = "tls-client-ca")]
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    pub fn apply(self, tls: &mut ServerTls) {
        overlay(&mut tls.cert, self.cert);
        overlay(&mut tls.key, self.key);
        overlay(&mut tls.client_ca, self.client_ca);
    }
}

/// A flag given on the command line replaces the config file's value.
pub(crate) fn overlay<T>(field: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *field = flag;
    }
}

/// The rustls server config for `tls`, or `None` when no certificate is configured (plain
/// listener).
pub fn server_config(
    tls: &ServerTls,
    alpn: &[&[u8]],
) -> Result<Option<Arc<ServerConfig>>, TlsError> {
    let (Some(cert), Some(key_path)) = (&tls.cert, &tls.key) else {
        return Ok(None);
    };
    let builder = ServerConfig::builder();
    let builder = match &tls.client_ca {
        Some(ca) => builder
            .with_client_cert_verifier(WebPkiClientVerifier::builder(roots(ca)?.into()).build()?),
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs(cert)?, key(key_path)?)?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Some(Arc::new(config)))
}

/// The rustls client config for `tls`: trusts `ca` (required: Strait does not silently fall
/// back to the system roots) and presents the client certificate when one is configured.
pub fn client_config(tls: &ClientTls, ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder().with_root_certificates(roots(ca)?);
    let config = match (&tls.cert, &tls.key) {
        (Some(cert), Some(key_path)) => {
            builder.with_client_auth_cert(certs(cert)?, key(key_path)?)?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// Parses the host part of `host:port` into the name checked against the server certificate.
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string()).map_err(|_| TlsError::ServerName(host.into()))
}

/// Selects aws-lc-rs as rustls' crypto provider for the process. Several providers are compiled
/// in through dependencies, and rustls refuses to guess; calling this twice is harmless.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// The identity a verified client certificate establishes: its subject DN, with the common
/// name, issuer and serial number as attributes. `None` when the certificate cannot be parsed
/// (rustls has verified it already, so that does not happen with a sane CA).
pub fn client_identity(
    cert: &rustls::pki_types::CertificateDer<'_>,
) -> Option<strait_relay::v1::Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = cert.subject();
    let mut attributes = std::collections::HashMap::new();
    if let Some(cn) = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        attributes.insert("cn".to_string(), cn.to_string());
    }
    attributes.insert("issuer".to_string(), cert.issuer().to_string());
    attributes.insert("serial".to_string(), cert.raw_serial_as_string());
    Some(strait_relay::v1::Identity {
        subject: subject.to_string(),
        method: "tls-client-cert".to_string(),
        attributes,
    })
}
