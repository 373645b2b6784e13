//! JWT authentication: tokens verified against a JWKS file that is read again when it changes,
//! and the topic permissions their claims grant.

use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, IntGauge, Opts, Registry};
use strait_config::auth::JwtAuth;
use strait_mqtt_codec::{Connect, ReasonCode};
use strait_relay::topics::{Permissions, Placeholders};
use strait_relay::v1;
use tokio_util::sync::CancellationToken;

use super::jwt::{KeySet, TokenError, Verifier, claim_list, claim_str};
use super::{AuthError, Refusal};

/// What a verified token establishes for one session.
#[derive(Debug, Clone)]
pub struct TokenSession {
    pub identity: v1::Identity,
    /// The verified name the broker is given: `sub`, else the `clientIdClaim` value.
    pub user_name: Option<String>,
    pub permissions: Permissions,
    /// When the token stops being valid (`exp` plus the leeway): the session ends then.
    pub expires_at: SystemTime,
}

/// A token naming an unknown `kid` makes r-proxy read the key file again, at most this often.
const FORCED_RELOAD_EVERY: Duration = Duration::from_secs(1);

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

struct KeyMetrics {
    reloads: IntCounterVec,
    keys: IntGauge,
}

impl KeyMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let reloads = IntCounterVec::new(
            Opts::new(
                "strait_mqtt_jwt_key_reloads_total",
                "Reads of the JWT key file after a change, by result",
            ),
            &["result"],
        )?;
        let keys = IntGauge::with_opts(Opts::new(
            "strait_mqtt_jwt_keys",
            "Signature keys loaded from the JWT key file",
        ))?;
        registry.register(Box::new(reloads.clone()))?;
        registry.register(Box::new(keys.clone()))?;
        Ok(Self { reloads, keys })
    }
}

/// JWT verification for r-proxy's clients, shared by every session.
pub struct TokenAuthenticator {
    config: JwtAuth,
    verifier: Verifier,
    keys: RwLock<Arc<KeySet>>,
    fingerprint: Mutex<Option<Fingerprint>>,
    /// Serialises reloads; holds when the last forced one ran.
    reloading: tokio::sync::Mutex<Option<Instant>>,
    metrics: KeyMetrics,
}

impl TokenAuthenticator {
    /// Reads the key file; fails when it is missing or holds no usable key.
    pub async fn load(config: &JwtAuth, registry: &Registry) -> Result<Arc<Self>, AuthError> {
        let (keys, fingerprint) = read_keys(&config.keys_file).await?;
        let metrics = KeyMetrics::register(registry)?;
        metrics.keys.set(keys.key_count() as i64);
        tracing::info!(
            file = %config.keys_file.display(),
            keys = keys.key_count(),
            issuer = %config.issuer,
            "JWT authentication on"
        );
        Ok(Arc::new(Self {
            config: config.clone(),
            verifier: Verifier::new(config),
            keys: RwLock::new(Arc::new(keys)),
            fingerprint: Mutex::new(Some(fingerprint)),
            reloading: tokio::sync::Mutex::new(None),
            metrics,
        }))
    }

    /// Checks the key file every `keysReloadInterval` until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.config.keys_reload_interval);
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

    /// Reads the key file again when it changed; a broken file keeps the keys in use.
    async fn reload_if_changed(&self) {
        let path = &self.config.keys_file;
        let fingerprint = match tokio::fs::metadata(path).await {
            Ok(metadata) => Fingerprint::of(&metadata),
            Err(error) => {
                tracing::warn!(file = %path.display(), %error, "JWT key file unreadable; keeping the keys in use");
                self.metrics.reloads.with_label_values(&["error"]).inc();
                return;
            }
        };
        if self.fingerprint.lock().expect("never poisoned").as_ref() == Some(&fingerprint) {
            return;
        }
        match read_keys(path).await {
            Ok((keys, fingerprint)) => {
                tracing::info!(file = %path.display(), keys = keys.key_count(), ?keys, "JWT keys reloaded");
                self.metrics.keys.set(keys.key_count() as i64);
                self.metrics.reloads.with_label_values(&["ok"]).inc();
                *self.keys.write().expect("never poisoned") = Arc::new(keys);
                *self.fingerprint.lock().expect("never poisoned") = Some(fingerprint);
            }
            Err(error) => {
                tracing::warn!(%error, "JWT key file changed but is unusable; keeping the keys in use");
                self.metrics.reloads.with_label_values(&["error"]).inc();
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

    fn verify(&self, token: &str) -> Result<super::jwt::Claims, TokenError> {
        let keys = self.keys.read().expect("never poisoned").clone();
        self.verifier.verify(token, &keys)
    }

    /// Verifies the token in the CONNECT password and works out the session's identity and
    /// permissions. Never logs the token.
    pub async fn authenticate(&self, connect: &Connect) -> Result<TokenSession, Refusal> {
        let token = match &connect.password {
            None => return Err(TokenError::Missing.into()),
            Some(password) => {
                std::str::from_utf8(password).map_err(|_| Refusal::from(TokenError::Malformed))?
            }
        };
        let claims = match self.verify(token) {
            Err(TokenError::UnknownKey(_)) => {
                // Perhaps the keys rotated and the file was updated since the last check.
                self.force_reload().await;
                self.verify(token)?
            }
            other => other?,
        };
        let client_id = connect.client_id.as_str();
        if let Some(claim) = &self.config.client_id_claim
            && claim_str(&claims, claim).as_deref() != Some(client_id)
        {
            return Err(Refusal {
                reason: ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                label: "client_id_mismatch",
                detail: format!("client id is not the token's {claim:?} claim"),
            });
        }
        // `{clientId}` in a grant means the token's own device only when the token binds the
        // client id; otherwise such grants are ignored (any holder could pick any id).
        let client_id_claim = self.config.client_id_claim.as_ref();
        let placeholders = Placeholders {
            client_id: client_id_claim.map(|_| client_id),
            username: None,
        };
        let grant = |claim: &Option<String>| {
            claim
                .as_ref()
                .map(|name| placeholders.allow(claim_list(&claims, name)))
        };
        let permissions = Permissions {
            publish: grant(&self.config.publish_claim),
            subscribe: grant(&self.config.subscribe_claim),
            ..Default::default()
        };
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let expires_at =
            UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.verifier.leeway()));
        let subject = claim_str(&claims, "sub").unwrap_or_default();
        // The name the broker sees: the subject, else the client id the token binds.
        let user_name = Some(subject.clone())
            .filter(|s| !s.is_empty())
            .or_else(|| client_id_claim.map(|_| client_id.to_string()));
        let mut attributes = std::collections::HashMap::new();
        attributes.insert("iss".to_string(), self.config.issuer.clone());
        attributes.insert("exp".to_string(), exp.to_string());
        Ok(TokenSession {
            identity: v1::Identity {
                subject,
                method: "jwt".into(),
                attributes,
            },
            user_name,
            permissions,
            expires_at,
        })
    }
}

async fn read_keys(path: &Path) -> Result<(KeySet, Fingerprint), AuthError> {
    let read_error = |source| AuthError::Read {
        path: path.into(),
        source,
    };
    let metadata = tokio::fs::metadata(path).await.map_err(read_error)?;
    let bytes = tokio::fs::read(path).await.map_err(read_error)?;
    let keys = KeySet::from_jwks(&bytes).map_err(|source| AuthError::Keys {
        path: path.into(),
        source,
    })?;
    Ok((keys, Fingerprint::of(&metadata)))
}
