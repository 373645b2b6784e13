//! Client authentication for r-proxy: a JWT in the CONNECT password, verified against a JWKS
//! file that is read again when it changes, and the topic permissions its claims grant.
//!
//! The decisions are plain logic ([`jwt`], shared with grpc-kafka, [`topics`], [`guard`]); this
//! module adds the MQTT side and the metrics.

pub mod guard;
pub mod topics;

/// The verifier, shared with grpc-kafka.
pub use strait_jwt as jwt;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::{IntCounterVec, Opts, Registry};
use strait_config::auth::JwtAuth;
use strait_mqtt_codec::{Connect, ReasonCode};
use strait_relay::v1;
use tokio_util::sync::CancellationToken;

use jwt::{KeyFile, TokenError, claim_list, claim_str};
use topics::{Permissions, substitute_client_id};

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Keys(#[from] jwt::KeyFileError),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

/// Why a CONNECT is refused, and with which reason code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub reason: ReasonCode,
    /// Short stable label for the log and the metric.
    pub label: &'static str,
    pub detail: String,
}

impl From<TokenError> for Refusal {
    fn from(error: TokenError) -> Self {
        Self {
            reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            label: error.label(),
            detail: error.to_string(),
        }
    }
}

/// What a verified token establishes for one session.
#[derive(Debug, Clone)]
pub struct SessionAuth {
    pub identity: v1::Identity,
    pub permissions: Permissions,
    /// When the token stops being valid (`exp` plus the leeway): the session ends then.
    pub expires_at: SystemTime,
}

struct AuthMetrics {
    failures: IntCounterVec,
    denied: IntCounterVec,
}

impl AuthMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let failures = IntCounterVec::new(
            Opts::new(
                "strait_mqtt_auth_failures_total",
                "CONNECTs refused by JWT authentication, by reason",
            ),
            &["reason"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "strait_mqtt_auth_denied_total",
                "PUBLISHes and SUBSCRIBE filters refused by the token's topic permissions",
            ),
            &["action"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        Ok(Self { failures, denied })
    }
}

/// JWT authentication of r-proxy's clients, shared by every session.
pub struct Authenticator {
    config: JwtAuth,
    keys: Arc<KeyFile>,
    metrics: AuthMetrics,
}

impl Authenticator {
    /// Reads the key file; fails when it is missing or holds no usable key.
    pub async fn load(config: &JwtAuth, registry: &Registry) -> Result<Arc<Self>, AuthError> {
        let keys = KeyFile::load(config, registry, "strait_mqtt").await?;
        Ok(Arc::new(Self {
            config: config.clone(),
            keys: Arc::new(keys),
            metrics: AuthMetrics::register(registry)?,
        }))
    }

    /// Checks the key file every `keysReloadInterval` until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        self.keys.spawn_reloader(shutdown);
    }

    /// Verifies the token in the CONNECT password and works out the session's identity and
    /// permissions. Counts and explains refusals; never logs the token.
    pub async fn authenticate(&self, connect: &Connect) -> Result<SessionAuth, Refusal> {
        let result = self.decide(connect).await;
        if let Err(refusal) = &result {
            self.metrics
                .failures
                .with_label_values(&[refusal.label])
                .inc();
        }
        result
    }

    async fn decide(&self, connect: &Connect) -> Result<SessionAuth, Refusal> {
        let token = match &connect.password {
            None => return Err(TokenError::Missing.into()),
            Some(password) => {
                std::str::from_utf8(password).map_err(|_| Refusal::from(TokenError::Malformed))?
            }
        };
        let claims = self.keys.verify(token).await?;
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
        let grant = |claim: &Option<String>| {
            claim
                .as_ref()
                .map(|name| substitute_client_id(claim_list(&claims, name), client_id))
        };
        let permissions = Permissions {
            publish: grant(&self.config.publish_claim),
            subscribe: grant(&self.config.subscribe_claim),
        };
        if let Some(will) = &connect.will
            && !permissions.may_publish(&will.topic)
        {
            return Err(Refusal {
                reason: ReasonCode::NOT_AUTHORIZED,
                label: "will_not_authorized",
                detail: format!("the token may not publish the will to {:?}", will.topic),
            });
        }
        let exp = claims
            .get("exp")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let expires_at = UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.keys.leeway()));
        let subject = claim_str(&claims, "sub").unwrap_or_default();
        let mut attributes = std::collections::HashMap::new();
        attributes.insert("iss".to_string(), self.config.issuer.clone());
        attributes.insert("exp".to_string(), exp.to_string());
        Ok(SessionAuth {
            identity: v1::Identity {
                subject,
                method: "jwt".into(),
                attributes,
            },
            permissions,
            expires_at,
        })
    }

    /// Counts PUBLISHes and SUBSCRIBE filters the permissions refused.
    pub fn count_denied(&self, publishes: u64, subscriptions: u64) {
        if publishes > 0 {
            self.metrics
                .denied
                .with_label_values(&["publish"])
                .inc_by(publishes);
        }
        if subscriptions > 0 {
            self.metrics
                .denied
                .with_label_values(&["subscribe"])
                .inc_by(subscriptions);
        }
    }
}
