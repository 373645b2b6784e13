//! JWT authentication: tokens verified against a JWKS file that is read again when it changes,
//! and the topic permissions their claims grant.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::Registry;
use strait_config::auth::JwtAuth;
use strait_mqtt_codec::{Connect, ReasonCode};
use strait_relay::topics::{Permissions, Placeholders};
use strait_relay::v1;
use tokio_util::sync::CancellationToken;

use super::jwt::{KeyFile, TokenError, claim_list, claim_str};
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

/// JWT verification for r-proxy's clients, shared by every session.
pub struct TokenAuthenticator {
    config: JwtAuth,
    keys: Arc<KeyFile>,
}

impl TokenAuthenticator {
    /// Reads the key file; fails when it is missing or holds no usable key.
    pub async fn load(config: &JwtAuth, registry: &Registry) -> Result<Arc<Self>, AuthError> {
        let keys = KeyFile::load(config, registry, "strait_mqtt").await?;
        Ok(Arc::new(Self {
            config: config.clone(),
            keys: Arc::new(keys),
        }))
    }

    /// Checks the key file every `keysReloadInterval` until `shutdown`.
    pub fn spawn_reloader(self: &Arc<Self>, shutdown: CancellationToken) {
        self.keys.spawn_reloader(shutdown);
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
        // A token naming an unknown key makes the key file be read again first.
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
        let expires_at = UNIX_EPOCH + Duration::from_secs(exp.saturating_add(self.keys.leeway()));
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
