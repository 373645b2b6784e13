//! TLS settings from PEM files, shared by every listener and outbound connection of the
//! proxies (r-proxy's listeners, the relay link, grpc-kafka's listener, s-proxy's broker
//! connection).
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

pub mod reload;

pub use reload::Reloading;

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
