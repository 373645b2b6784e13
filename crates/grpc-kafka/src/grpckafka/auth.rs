//! Caller authentication (`auth`): a JWT bearer token with the methods its claim grants, or a
//! TLS client certificate. Decides once per call, before anything reaches Kafka; refusals are
//! counted by reason and never log the token.

use std::sync::Arc;

use strait_config::grpc::{GrpcAuth, method_matches};
use strait_jwt::{KeyFile, TokenError, claim_list, claim_str};
use tonic::Status;

use crate::RoleError;
use crate::grpc::metrics::GrpcMetrics;

pub(super) enum Auth {
    /// Every caller may call every routed method, anonymously.
    Open,
    Jwt {
        keys: Arc<KeyFile>,
        methods_claim: Option<String>,
    },
    /// The TLS listener verified the certificate already; its subject is the identity.
    ClientCertificate,
}

/// Who is calling (once authenticated) and which methods they may call.
pub(super) struct Caller {
    /// JWT `sub` or certificate subject; `None` for anonymous callers.
    pub identity: Option<Arc<str>>,
    /// Method patterns granted; `None`: every method.
    methods: Option<Vec<String>>,
}

impl Auth {
    pub async fn load(
        config: &GrpcAuth,
        registry: &prometheus::Registry,
        shutdown: tokio_util::sync::CancellationToken,
    ) -> Result<Self, RoleError> {
        if let Some(jwt) = &config.jwt {
            let keys = Arc::new(
                KeyFile::load(&jwt.verification(), registry, "strait_grpc")
                    .await
                    .map_err(RoleError::Jwt)?,
            );
            keys.spawn_reloader(shutdown);
            return Ok(Self::Jwt {
                keys,
                methods_claim: jwt.methods_claim.clone(),
            });
        }
        Ok(if config.client_certificate {
            Self::ClientCertificate
        } else {
            Self::Open
        })
    }

    /// For the start-up log line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Open => "none",
            Self::Jwt { .. } => "jwt",
            Self::ClientCertificate => "client-certificate",
        }
    }

    /// The caller, or UNAUTHENTICATED (counted with the reason).
    pub async fn authenticate(
        &self,
        headers: &http::HeaderMap,
        certificate_subject: Option<&Arc<str>>,
        metrics: &GrpcMetrics,
    ) -> Result<Caller, Status> {
        let refuse = |reason: &str, message: String| {
            metrics.refused.with_label_values(&[reason]).inc();
            tracing::info!(reason, "call refused: {message}");
            Status::unauthenticated(message)
        };
        match self {
            Self::Open => Ok(Caller {
                identity: None,
                methods: None,
            }),
            Self::ClientCertificate => match certificate_subject {
                Some(subject) => Ok(Caller {
                    identity: Some(subject.clone()),
                    methods: None,
                }),
                None => Err(refuse(
                    "no_client_certificate",
                    "a client certificate is required".into(),
                )),
            },
            Self::Jwt {
                keys,
                methods_claim,
            } => {
                let token = bearer(headers).map_err(|e| {
                    let message = match &e {
                        TokenError::Missing => {
                            "no token: send `authorization: Bearer <JWT>`".into()
                        }
                        other => format!("invalid token: {other}"),
                    };
                    refuse(e.label(), message)
                })?;
                let claims = keys
                    .verify(token)
                    .await
                    .map_err(|e| refuse(e.label(), format!("invalid token: {e}")))?;
                Ok(Caller {
                    identity: claim_str(&claims, "sub").map(Into::into),
                    methods: methods_claim
                        .as_ref()
                        .map(|claim| claim_list(&claims, claim)),
                })
            }
        }
    }
}

impl Caller {
    /// OK when the caller may call `method` (`package.Service/Method`), else PERMISSION_DENIED
    /// (counted).
    pub fn permit(&self, method: &str, metrics: &GrpcMetrics) -> Result<(), Status> {
        let Some(patterns) = &self.methods else {
            return Ok(());
        };
        if patterns.iter().any(|p| method_matches(p, method)) {
            return Ok(());
        }
        metrics
            .refused
            .with_label_values(&["method_not_permitted"])
            .inc();
        tracing::info!(method, "call refused: the token does not grant the method");
        Err(Status::permission_denied(format!(
            "the token does not grant {method}"
        )))
    }
}

/// The token of `authorization: Bearer <token>` (the scheme in any case, as RFC 9110 says).
fn bearer(headers: &http::HeaderMap) -> Result<&str, TokenError> {
    let Some(value) = headers.get(http::header::AUTHORIZATION) else {
        return Err(TokenError::Missing);
    };
    let value = value.to_str().map_err(|_| TokenError::Malformed)?;
    match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") && !token.is_empty() => {
            Ok(token.trim())
        }
        _ => Err(TokenError::Malformed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: Option<&str>) -> http::HeaderMap {
        let mut headers = http::HeaderMap::new();
        if let Some(value) = authorization {
            headers.insert(http::header::AUTHORIZATION, value.parse().unwrap());
        }
        headers
    }

    #[test]
    fn bearer_tokens_are_taken_from_the_authorization_metadata() {
        assert_eq!(bearer(&headers(Some("Bearer abc"))), Ok("abc"));
        assert_eq!(bearer(&headers(Some("bearer abc"))), Ok("abc"));
        assert_eq!(bearer(&headers(None)), Err(TokenError::Missing));
        assert_eq!(
            bearer(&headers(Some("Basic dXNlcg=="))),
            Err(TokenError::Malformed)
        );
        assert_eq!(bearer(&headers(Some("Bearer"))), Err(TokenError::Malformed));
    }

    #[test]
    fn methods_are_permitted_by_the_claims_patterns() {
        let registry = prometheus::Registry::new();
        let metrics = GrpcMetrics::register(&registry, "grpc-kafka").unwrap();
        let caller = Caller {
            identity: Some("alice".into()),
            methods: Some(vec!["a.Orders/Get".into(), "a.Catalog/*".into()]),
        };
        assert!(caller.permit("a.Orders/Get", &metrics).is_ok());
        assert!(caller.permit("a.Catalog/List", &metrics).is_ok());
        let denied = caller.permit("a.Orders/Delete", &metrics).unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied);
        let nothing = Caller {
            identity: None,
            methods: Some(Vec::new()),
        };
        assert!(nothing.permit("a.Orders/Get", &metrics).is_err());
        let everything = Caller {
            identity: None,
            methods: None,
        };
        assert!(everything.permit("a.Orders/Get", &metrics).is_ok());
        assert_eq!(
            metrics
                .refused
                .with_label_values(&["method_not_permitted"])
                .get(),
            2
        );
    }
}
