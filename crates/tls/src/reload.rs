//! TLS configs that follow their files. Kubernetes updates a mounted Secret in place (an atomic
//! swap of its `..data` link) when the operator renews a certificate or a user rotates one; each
//! new handshake then uses the new files while connections already open carry on, so a renewal
//! drops no session.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use rustls::{ClientConfig, ServerConfig};
use strait_config::tls::{ClientTls, ServerTls};

use crate::TlsError;

/// Files are looked at no more often than this, so a burst of handshakes costs no syscalls.
const CHECK_INTERVAL: Duration = Duration::from_secs(1);

type Build<C> = Box<dyn Fn() -> Result<Arc<C>, TlsError> + Send + Sync>;

/// A rustls config built from files, built again on the first use after one of them changed.
pub struct Reloading<C> {
    paths: Vec<PathBuf>,
    build: Build<C>,
    current: Mutex<Current<C>>,
}

struct Current<C> {
    config: Arc<C>,
    /// What the files looked like when `config` was built.
    stamp: Vec<Option<(SystemTime, u64)>>,
    checked: Instant,
}

impl<C> Reloading<C> {
    /// Builds the config once: a bad file at start is an error, later ones only a warning (the
    /// last good config stays in use).
    fn new(paths: Vec<PathBuf>, build: Build<C>) -> Result<Self, TlsError> {
        let stamp = stamp(&paths);
        let config = build()?;
        Ok(Self {
            paths,
            build,
            current: Mutex::new(Current {
                config,
                stamp,
                checked: Instant::now(),
            }),
        })
    }

    /// The config for the next handshake.
    pub fn current(&self) -> Arc<C> {
        let mut current = self.current.lock().expect("never poisoned");
        if current.checked.elapsed() < CHECK_INTERVAL {
            return current.config.clone();
        }
        current.checked = Instant::now();
        let stamp = stamp(&self.paths);
        if stamp != current.stamp {
            match (self.build)() {
                Ok(config) => {
                    tracing::info!(files = ?self.paths, "TLS files changed; new handshakes use them");
                    current.config = config;
                    current.stamp = stamp;
                }
                // Half-written files during a manual copy: try again at the next check.
                Err(error) => {
                    tracing::warn!(%error, "TLS files changed but cannot be used; keeping the previous ones")
                }
            }
        }
        current.config.clone()
    }
}

/// Modification time and length of each file (through symlinks, as Secret volumes use them).
fn stamp(paths: &[PathBuf]) -> Vec<Option<(SystemTime, u64)>> {
    paths
        .iter()
        .map(|path| {
            let meta = std::fs::metadata(path).ok()?;
            Some((meta.modified().ok()?, meta.len()))
        })
        .collect()
}

/// [`crate::server_config`] that follows its files; `None` when no certificate is configured.
pub fn server_config(
    tls: &ServerTls,
    alpn: &'static [&'static [u8]],
) -> Result<Option<Arc<Reloading<ServerConfig>>>, TlsError> {
    if !tls.is_enabled() {
        return Ok(None);
    }
    let paths = [&tls.cert, &tls.key, &tls.client_ca]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let tls = tls.clone();
    let build = move || Ok(crate::server_config(&tls, alpn)?.expect("certificate configured"));
    Ok(Some(Arc::new(Reloading::new(paths, Box::new(build))?)))
}

/// [`crate::client_config`] that follows its files, offering `alpn`.
pub fn client_config(
    tls: &ClientTls,
    ca: PathBuf,
    alpn: &'static [&'static [u8]],
) -> Result<Arc<Reloading<ClientConfig>>, TlsError> {
    let paths = [Some(&ca), tls.cert.as_ref(), tls.key.as_ref()]
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let tls = tls.clone();
    let build = move || {
        let mut config = Arc::unwrap_or_clone(crate::client_config(&tls, &ca)?);
        config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
        Ok(Arc::new(config))
    };
    Ok(Arc::new(Reloading::new(paths, Box::new(build))?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, KeyPair};

    fn write_cert(dir: &std::path::Path, name: &str) {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
        std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
    }

    #[test]
    fn a_renewed_certificate_is_used_after_the_check_interval() {
        crate::install_crypto_provider();
        let dir = std::env::temp_dir().join(format!("strait-tls-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        write_cert(&dir, "first.example");
        let tls = ServerTls {
            cert: Some(dir.join("tls.crt")),
            key: Some(dir.join("tls.key")),
            ..ServerTls::default()
        };
        let reloading = server_config(&tls, &[]).unwrap().unwrap();
        let first = reloading.current();
        assert!(
            Arc::ptr_eq(&first, &reloading.current()),
            "unchanged files, same config"
        );

        write_cert(&dir, "second.example");
        reloading.current.lock().unwrap().checked -= CHECK_INTERVAL;
        let second = reloading.current();
        assert!(
            !Arc::ptr_eq(&first, &second),
            "renewed files build a new config"
        );

        // A broken file keeps the last good config.
        std::fs::write(dir.join("tls.key"), "not a key").unwrap();
        reloading.current.lock().unwrap().checked -= CHECK_INTERVAL;
        assert!(Arc::ptr_eq(&second, &reloading.current()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
