//! The JWKS file of `auth.jwt.keysFile`: loaded at start, checked for changes every
//! `keysReloadInterval`, and at once (at most every second) when a token names an unknown `kid`.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use strait_config::auth::JwtAuth;
use tokio_util::sync::CancellationToken;

use crate::{Claims, KeySet, KeysError, TokenError, Verifier};

/// A token naming an unknown `kid` makes the file be read again, at most this often.
const FORCED_RELOAD_EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the JWT key file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid JWT key file {path}: {source}")]
    Keys { path: PathBuf, source: KeysError },
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

/// Identifies a version of the key file: a rewrite or a Kubernetes Secret update (a symlink
/// swap) changes at least one of these.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Fingerprint {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Fingerprint {
    fn of(metadata: &std::fs::Metadata) -> Self {
        use std::os::unix::fs::MetadataExt as _;
        Self {
            modified: metadata.modified().ok(),
            len: metadata.len(),
            inode: metadata.ino(),
        }
    }
}

/// The verifier of `auth.jwt` with the keys of its file.
pub struct KeyFile {
    path: PathBuf,
    reload_interval: Duration,
    verifier: Verifier,
    keys: RwLock<Arc<KeySet>>,
    fingerprint: Mutex<Option<Fingerprint>>,
    /// Serialises reloads; holds when the last forced one ran.
    reloading: tokio::sync::Mutex<Option<Instant>>,
    reloads: IntCounterVec,
    key_count: IntGauge,
}

impl KeyFile {
    /// Reads the key file; fails when it is missing or holds no usable key. `prefix` names the
    /// metrics (`<prefix>_jwt_key_reloads_total`, `<prefix>_jwt_keys`).
    pub async fn load(
        config: &JwtAuth,
        registry: &Registry,
        prefix: &str,
    ) -> Result<Self, KeyFileError> {
        let (keys, fingerprint) = read_keys(&config.keys_file).await?;
        let reloads = IntCounterVec::new(
            Opts::new(
                format!("{prefix}_jwt_key_reloads_total"),
                "Reads of the JWT key file after a change, by result",
            ),
            &["result"],
        )?;
        let key_count = IntGauge::with_opts(Opts::new(
            format!("{prefix}_jwt_keys"),
            "Signature keys loaded from the JWT key file",
        ))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(key_count.clone()))?;
        key_count.set(keys.key_count() as i64);
        tracing::info!(
            file = %config.keys_file.display(),
            keys = keys.key_count(),
            issuer = %config.issuer,
            "JWT authentication on"
        );
        Ok(Self {
            path: config.keys_file.clone(),
            reload_interval: config.keys_reload_interval,
            verifier: Verifier::new(config),
            keys: RwLock::new(Arc::new(keys)),
            fingerprint: Mutex::new(Some(fingerprint)),
            reloading: tokio::sync::Mutex::new(None),
            reloads,
            key_count,
        })
    }

    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    pub fn leeway(&self) -> u64 {
        self.verifier.leeway()
    }

    /// Checks the key file every `keysReloadInterval` until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.reload_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                let _guard = this.reloading.lock().await;
                this.reload_if_changed().await;
            }
        });
    }

    /// The token's claims; a token naming an unknown `kid` makes the file be read again first
    /// (perhaps the keys rotated since the last check).
    pub async fn verify(&self, token: &str) -> Result<Claims, TokenError> {
        match self.verify_now(token) {
            Err(TokenError::UnknownKey(_)) => {
                self.force_reload().await;
                self.verify_now(token)
            }
            other => other,
        }
    }

    fn verify_now(&self, token: &str) -> Result<Claims, TokenError> {
        let keys = self.keys.read().expect("never poisoned").clone();
        self.verifier.verify(token, &keys)
    }

    /// Reads the key file again when it changed; a broken file keeps the keys in use.
    async fn reload_if_changed(&self) {
        let path = &self.path;
        let fingerprint = match tokio::fs::metadata(path).await {
            Ok(metadata) => Fingerprint::of(&metadata),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "JWT key file unreadable; keeping the keys in use");
                self.reloads.with_label_values(&["error"]).inc();
                return;
            }
        };
        if self.fingerprint.lock().expect("never poisoned").as_ref() == Some(&fingerprint) {
            return;
        }
        match read_keys(path).await {
            Ok((keys, fingerprint)) => {
                tracing::info!(file = %path.display(), keys = keys.key_count(), ?keys, "JWT keys reloaded");
                self.key_count.set(keys.key_count() as i64);
                self.reloads.with_label_values(&["ok"]).inc();
                *self.keys.write().expect("never poisoned") = Arc::new(keys);
                *self.fingerprint.lock().expect("never poisoned") = Some(fingerprint);
            }
            Err(error) => {
                tracing::warn!(%error, "JWT key file changed but is unusable; keeping the keys in use");
                self.reloads.with_label_values(&["error"]).inc();
                // Remember the broken version so it is not read again every tick.
                *self.fingerprint.lock().expect("never poisoned") = Some(fingerprint);
            }
        }
    }

    /// Reloads at once when no reload was forced within [`FORCED_RELOAD_EVERY`].
    async fn force_reload(&self) {
        let mut last = self.reloading.lock().await;
        if last.is_some_and(|at| at.elapsed() < FORCED_RELOAD_EVERY) {
            return;
        }
        *last = Some(Instant::now());
        self.reload_if_changed().await;
    }
}

async fn read_keys(path: &Path) -> Result<(KeySet, Fingerprint), KeyFileError> {
    let read_error = |source| KeyFileError::Read {
        path: path.into(),
        source,
    };
    let metadata = tokio::fs::metadata(path).await.map_err(read_error)?;
    let bytes = tokio::fs::read(path).await.map_err(read_error)?;
    let keys = KeySet::from_jwks(&bytes).map_err(|source| KeyFileError::Keys {
        path: path.into(),
        source,
    })?;
    Ok((keys, Fingerprint::of(&metadata)))
}
