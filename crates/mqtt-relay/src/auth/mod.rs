//! Client authentication and topic authorization for r-proxy, per `auth.mode`: a JWT in the
//! CONNECT password ([`token`]), the TLS client certificate, a password file ([`password`]), or
//! nobody (`anonymous`); and the topic permissions that apply to the session: the token's and
//! the static ACL's (`auth.aclFile`), enforced on every packet by [`guard`].
//!
//! The decisions are plain logic ([`jwt`], [`password`], [`guard`], `strait_relay::topics`); this
//! module adds the files and the metrics.

pub mod guard;
/// The verifier, shared with grpc-kafka.
pub use strait_jwt as jwt;
pub mod password;
pub mod token;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use prometheus::{IntCounterVec, Opts, Registry};
use strait_config::ConfigError;
use strait_config::auth::{Acl, AuthMode, ClientAuth};
use strait_mqtt_codec::{Connect, ReasonCode};
use strait_relay::topics::{Permissions, Placeholders, Policy};
use strait_relay::v1;
use tokio_util::sync::CancellationToken;

use jwt::TokenError;
use password::{PasswordFileError, Passwords};
use token::TokenAuthenticator;

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(transparent)]
    Keys(#[from] jwt::KeyFileError),
    #[error("cannot read the password file {path}: {source}")]
    ReadPasswords {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid password file {path}: {source}")]
    Passwords {
        path: PathBuf,
        source: PasswordFileError,
    },
    #[error("ACL (auth.aclFile): {0}")]
    Acl(#[from] ConfigError),
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

/// What authentication establishes for one session.
#[derive(Debug, Clone, Default)]
pub struct SessionAuth {
    /// Who the client is, for s-proxy's logs (none: anonymous).
    pub identity: Option<v1::Identity>,
    /// The topic permissions that apply (empty: unrestricted).
    pub policy: Policy,
    /// When the token stops being valid (`exp` plus the leeway): the session ends then.
    pub expires_at: Option<SystemTime>,
}

/// Every metric r-proxy's authentication registers, besides the JWT key file's (the chart's
/// dashboard and alerts are checked against it).
pub const METRIC_NAMES: &[&str] = &[
    "strait_mqtt_auth_failures_total",
    "strait_mqtt_auth_denied_total",
];

struct AuthMetrics {
    failures: IntCounterVec,
    denied: IntCounterVec,
}

impl AuthMetrics {
    fn register(registry: &Registry) -> prometheus::Result<Self> {
        let failures = IntCounterVec::new(
            Opts::new(
                "strait_mqtt_auth_failures_total",
                "CONNECTs refused by authentication or authorization, by reason",
            ),
            &["reason"],
        )?;
        let denied = IntCounterVec::new(
            Opts::new(
                "strait_mqtt_auth_denied_total",
                "PUBLISHes and SUBSCRIBE filters refused by the session's topic permissions \
                 (token, ACL)",
            ),
            &["action"],
        )?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(denied.clone()))?;
        Ok(Self { failures, denied })
    }
}

/// Authentication and authorization of r-proxy's clients, shared by every session.
pub struct Authenticator {
    mode: AuthMode,
    token: Option<Arc<TokenAuthenticator>>,
    passwords: Option<Passwords>,
    acl: Option<Acl>,
    metrics: AuthMetrics,
}

impl Authenticator {
    /// Reads the files `auth` names (key set, password file, ACL) and starts the key reloader.
    pub async fn load(
        config: &ClientAuth,
        registry: &Registry,
        shutdown: CancellationToken,
    ) -> Result<Arc<Self>, AuthError> {
        let mode = config.mode();
        let token = match &config.jwt {
            Some(jwt) if mode == AuthMode::Jwt => {
                let token = TokenAuthenticator::load(jwt, registry).await?;
                token.spawn_reloader(shutdown);
                Some(token)
            }
            _ => None,
        };
        let passwords = match &config.password_file {
            Some(path) => Some(read_passwords(path).await?),
            None => None,
        };
        let acl = match &config.acl_file {
            Some(path) => {
                let acl = Acl::load(path)?;
                config.check_acl(&acl)?;
                tracing::info!(file = %path.display(), users = acl.users.len(), "topic ACL on");
                Some(acl)
            }
            None => None,
        };
        tracing::info!(?mode, "client authentication");
        Ok(Arc::new(Self {
            mode,
            token,
            passwords,
            acl,
            metrics: AuthMetrics::register(registry)?,
        }))
    }

    /// Authenticates the client's CONNECT (`certificate`: its verified TLS client certificate)
    /// and works out its permissions. Unless the mode is `anonymous`, the CONNECT is rewritten
    /// for the upstream: the verified identity becomes its user name and the password (token)
    /// is removed. Counts and explains refusals; never logs a secret.
    pub async fn authenticate(
        &self,
        connect: &mut Connect,
        certificate: Option<v1::Identity>,
    ) -> Result<SessionAuth, Refusal> {
        let result = self.decide(connect, certificate).await;
        if let Err(refusal) = &result {
            self.metrics
                .failures
                .with_label_values(&[refusal.label])
                .inc();
        }
        result
    }

    async fn decide(
        &self,
        connect: &mut Connect,
        certificate: Option<v1::Identity>,
    ) -> Result<SessionAuth, Refusal> {
        let mut session = SessionAuth::default();
        let user_name = match self.mode {
            AuthMode::Anonymous => {
                session.identity = certificate;
                None
            }
            AuthMode::Jwt => {
                let token = self.token.as_ref().expect("loaded in jwt mode");
                let verified = token.authenticate(connect).await?;
                let mut identity = verified.identity;
                if let Some(cert) = certificate {
                    identity
                        .attributes
                        .insert("tlsSubject".into(), cert.subject);
                }
                session.identity = Some(identity);
                session.policy.0.push(verified.permissions);
                session.expires_at = Some(verified.expires_at);
                verified.user_name
            }
            AuthMode::ClientCertificate => {
                let cert = certificate.ok_or_else(|| Refusal {
                    reason: ReasonCode::NOT_AUTHORIZED,
                    label: "no_client_certificate",
                    detail: "mode clientCertificate: no verified client certificate".into(),
                })?;
                let cn = cert.attributes.get("cn").cloned().ok_or_else(|| Refusal {
                    reason: ReasonCode::NOT_AUTHORIZED,
                    label: "no_common_name",
                    detail: format!("client certificate {:?} has no common name", cert.subject),
                })?;
                session.identity = Some(cert);
                Some(cn)
            }
            AuthMode::Password => {
                let passwords = self.passwords.as_ref().expect("loaded in password mode");
                let user = connect.username.as_deref().unwrap_or_default();
                let password = connect.password.as_deref().unwrap_or_default();
                if user.is_empty() || !passwords.check(user, password) {
                    return Err(Refusal {
                        reason: ReasonCode::BAD_USER_NAME_OR_PASSWORD,
                        label: "bad_password",
                        detail: format!("unknown user {user:?} or wrong password"),
                    });
                }
                session.identity = Some(v1::Identity {
                    subject: user.into(),
                    method: "password".into(),
                    attributes: Default::default(),
                });
                Some(user.to_string())
            }
        };
        if let Some(acl) = &self.acl {
            let authenticated = self.mode != AuthMode::Anonymous;
            let placeholders = Placeholders {
                client_id: Some(&connect.client_id),
                username: user_name.as_deref(),
            };
            session
                .policy
                .0
                .push(acl_permissions(acl, authenticated, placeholders));
        }
        if let Some(will) = &connect.will
            && !session.policy.may_publish(&will.topic)
        {
            return Err(Refusal {
                reason: ReasonCode::NOT_AUTHORIZED,
                label: "will_not_authorized",
                detail: format!("the client may not publish the will to {:?}", will.topic),
            });
        }
        if self.mode != AuthMode::Anonymous {
            // The upstream trusts r-proxy's verdict: it sees who was verified, never the secret.
            connect.username = user_name;
            connect.password = None;
        }
        Ok(session)
    }

    /// Counts PUBLISHes and SUBSCRIBE filters the permissions refused.
    pub fn count_denied(&self, publishes: u64, subscriptions: u64) {
        for (action, count) in [("publish", publishes), ("subscribe", subscriptions)] {
            if count > 0 {
                self.metrics
                    .denied
                    .with_label_values(&[action])
                    .inc_by(count);
            }
        }
    }
}

/// What the ACL lets a client do: the `anonymous` rules, or the `authenticated` ones plus its
/// user's (by `placeholders.username`).
pub fn acl_permissions(
    acl: &Acl,
    authenticated: bool,
    placeholders: Placeholders<'_>,
) -> Permissions {
    let user = placeholders.username.and_then(|u| acl.users.get(u));
    let rules: Vec<_> = if authenticated {
        std::iter::once(&acl.authenticated).chain(user).collect()
    } else {
        vec![&acl.anonymous]
    };
    let all = |pick: fn(&strait_config::auth::TopicRules) -> &Vec<String>| {
        rules.iter().flat_map(move |r| pick(r).iter().cloned())
    };
    Permissions {
        publish: Some(placeholders.allow(all(|r| &r.publish))),
        subscribe: Some(placeholders.allow(all(|r| &r.subscribe))),
        deny_publish: placeholders.deny(all(|r| &r.deny_publish)),
        deny_subscribe: placeholders.deny(all(|r| &r.deny_subscribe)),
    }
}

async fn read_passwords(path: &Path) -> Result<Passwords, AuthError> {
    let text =
        tokio::fs::read_to_string(path)
            .await
            .map_err(|source| AuthError::ReadPasswords {
                path: path.into(),
                source,
            })?;
    let passwords = Passwords::parse(&text).map_err(|source| AuthError::Passwords {
        path: path.into(),
        source,
    })?;
    tracing::info!(file = %path.display(), users = passwords.len(), "password authentication on");
    Ok(passwords)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_exactly_the_listed_metrics() {
        let registry = Registry::new();
        let metrics = AuthMetrics::register(&registry).unwrap();
        // Labelled families appear once a series exists.
        metrics.failures.with_label_values(&["bad_password"]).inc();
        metrics.denied.with_label_values(&["publish"]).inc();
        let mut listed = METRIC_NAMES.to_vec();
        listed.sort();
        assert_eq!(strait_runtime::metric_names(&registry), listed);
    }

    #[test]
    fn acl_rules_by_identity_with_placeholders() {
        let acl: Acl = serde_json::from_value(serde_json::json!({
            "anonymous": {"subscribe": ["public/#"]},
            "authenticated": {
                "publish": ["devices/{username}/#", "clients/{clientId}/#"],
                "subscribe": ["public/#"],
                "denySubscribe": ["public/internal/#"]
            },
            "users": {"ops": {"subscribe": ["#"]}}
        }))
        .unwrap();
        let of = |authenticated, username| {
            let placeholders = Placeholders {
                client_id: Some("c1"),
                username,
            };
            acl_permissions(&acl, authenticated, placeholders)
        };
        let anonymous = of(false, None);
        assert!(anonymous.may_subscribe("public/x") && !anonymous.may_publish("public/x"));
        let alice = of(true, Some("alice"));
        assert!(alice.may_publish("devices/alice/t") && alice.may_publish("clients/c1/t"));
        assert!(!alice.may_publish("devices/bob/t") && !alice.may_subscribe("devices/#"));
        assert!(
            !alice.may_subscribe("public/#"),
            "overlaps the denied public/internal/#"
        );
        let ops = of(true, Some("ops"));
        assert!(ops.may_subscribe("devices/+/t"));
        assert!(
            !ops.may_subscribe("public/internal/x"),
            "denies apply to every user"
        );
        let unnamed = of(true, None);
        assert!(!unnamed.may_publish("devices/alice/t") && unnamed.may_publish("clients/c1/t"));
    }
}
