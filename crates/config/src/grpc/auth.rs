//! grpc-kafka's caller authentication and the request metadata it copies into Kafka.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::method_matches;
use crate::ConfigError;
use crate::auth::{JwtAlgorithm, JwtAuth};
use crate::tls::ServerTls;

/// grpc-kafka's caller authentication (`auth`). A refused call ends with UNAUTHENTICATED (no
/// or an invalid credential) or PERMISSION_DENIED (a method the token does not grant), counted
/// in `strait_grpc_refused_total{reason}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcAuth {
    /// Callers send `authorization: Bearer <JWT>`; the token's `sub` is their identity.
    /// (Boxed: it is large and usually absent.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Box<GrpcJwtAuth>>,
    /// Callers are identified by their TLS client certificate's subject (needs `tls.clientCa`,
    /// which already refuses connections without a certificate it signed). Every routed method
    /// is permitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_certificate: bool,
}

/// `auth.jwt` of grpc-kafka: r-proxy's token verification, with method permissions instead of
/// topic ones.
///
/// ```yaml
/// jwt:
///   issuer: https://auth.example.com/
///   audience: orders
///   keysFile: /etc/strait/jwt/jwks.json
///   methodsClaim: grpc_methods   # e.g. ["example.Orders/Get", "example.Catalog/*"]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcJwtAuth {
    /// Required value of the token's `iss` claim.
    pub issuer: String,
    /// When set, the token's `aud` claim must be or contain this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// JSON Web Key Set file (`{"keys": [...]}`) of the keys tokens are signed with, read again
    /// when it changes (every `keysReloadInterval`, and at once for an unknown `kid`).
    pub keys_file: PathBuf,
    #[serde(
        default = "crate::auth::default_keys_reload_interval",
        with = "humantime_serde"
    )]
    #[schemars(with = "String")]
    pub keys_reload_interval: Duration,
    /// Signature algorithms accepted (`none` never is); every asymmetric one by default.
    #[serde(default = "crate::auth::default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[serde(default = "crate::auth::default_leeway", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// Claim listing the methods the caller may call (a list of strings, or one string), as
    /// `package.Service/Method` patterns where `*` matches any run of characters
    /// (`example.Orders/*`, or `*` for all). A token without the claim may call nothing. Unset:
    /// every routed method is permitted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods_claim: Option<String>,
}

impl GrpcJwtAuth {
    pub fn new(issuer: impl Into<String>, keys_file: impl Into<PathBuf>) -> Self {
        let common = JwtAuth::new(issuer, keys_file);
        Self {
            issuer: common.issuer,
            audience: None,
            keys_file: common.keys_file,
            keys_reload_interval: common.keys_reload_interval,
            algorithms: common.algorithms,
            leeway: common.leeway,
            methods_claim: None,
        }
    }

    /// The token checks as the shared verifier takes them (r-proxy's `auth.jwt` without its
    /// MQTT claims).
    pub fn verification(&self) -> JwtAuth {
        JwtAuth {
            audience: self.audience.clone(),
            keys_reload_interval: self.keys_reload_interval,
            algorithms: self.algorithms.clone(),
            leeway: self.leeway,
            ..JwtAuth::new(self.issuer.clone(), self.keys_file.clone())
        }
    }
}

impl GrpcAuth {
    pub(super) fn check(&self, tls: &ServerTls) -> Result<(), ConfigError> {
        if let Some(jwt) = &self.jwt {
            jwt.verification().check()?;
            if jwt.methods_claim.as_deref() == Some("") {
                return Err(ConfigError::invalid(
                    "auth.jwt.methodsClaim",
                    "must name a claim when set",
                ));
            }
            if self.client_certificate {
                return Err(ConfigError::invalid(
                    "auth.clientCertificate",
                    "set either auth.jwt or auth.clientCertificate, not both",
                ));
            }
        }
        if self.client_certificate && tls.client_ca.is_none() {
            return Err(ConfigError::invalid(
                "auth.clientCertificate",
                "needs tls.clientCa (the CA client certificates must chain to)",
            ));
        }
        Ok(())
    }
}

/// Request metadata copied into Kafka (`forwardMetadata`): a name is forwarded when it matches
/// `allow` and not `deny` (patterns where `*` matches any run of characters; binary entries
/// keep their `-bin` suffix). Whatever is forwarded stays in the topic for its retention and is
/// readable by everyone who may read the topic, so credentials are denied by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ForwardMetadata {
    /// Default `["*"]`: everything not denied.
    #[serde(default = "default_forward_allow")]
    pub allow: Vec<String>,
    /// Default: `authorization`, `proxy-authorization`, `cookie`, `set-cookie`, `x-api-key`,
    /// `x-auth-token`, `x-csrf-token`. Setting this replaces the whole list.
    #[serde(default = "default_forward_deny")]
    pub deny: Vec<String>,
}

impl Default for ForwardMetadata {
    fn default() -> Self {
        Self {
            allow: default_forward_allow(),
            deny: default_forward_deny(),
        }
    }
}

impl ForwardMetadata {
    /// Whether metadata `name` (lower case, as HTTP/2 sends it) goes into Kafka.
    pub fn forwards(&self, name: &str) -> bool {
        let matches = |patterns: &[String]| patterns.iter().any(|p| method_matches(p, name));
        matches(&self.allow) && !matches(&self.deny)
    }

    pub(super) fn check(&self) -> Result<(), ConfigError> {
        for (field, patterns) in [
            ("forwardMetadata.allow", &self.allow),
            ("forwardMetadata.deny", &self.deny),
        ] {
            for pattern in patterns {
                let valid = !pattern.is_empty()
                    && pattern.bytes().all(|b| {
                        b.is_ascii_lowercase()
                            || b.is_ascii_digit()
                            || matches!(b, b'-' | b'_' | b'.' | b'*')
                    });
                if !valid {
                    return Err(ConfigError::invalid(
                        field,
                        format!(
                            "{pattern:?} is not a metadata name pattern (lower case a-z 0-9 - _ . and *)"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}

fn default_forward_allow() -> Vec<String> {
    vec!["*".into()]
}
fn default_forward_deny() -> Vec<String> {
    [
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "x-auth-token",
        "x-csrf-token",
    ]
    .map(String::from)
    .to_vec()
}

#[cfg(test)]
mod tests {
    use super::super::{GrpcKafkaConfig, parse};
    use super::*;
    use crate::Validate;

    #[test]
    fn grpc_kafka_auth_parses_and_credentials_are_not_forwarded_by_default() {
        let config: GrpcKafkaConfig = parse(
            "kafka: { bootstrap: 'kafka:9092' }\n\
             protos: { paths: [/protos] }\n\
             routes: [{ method: a.B/*, produce: { topic: req, replyTo: rep } }]\n\
             auth: { jwt: { issuer: 'https://i/', keysFile: /jwks.json, methodsClaim: m } }\n",
        );
        config.validate().unwrap();
        let jwt = config.auth.jwt.as_ref().unwrap();
        assert_eq!(jwt.methods_claim.as_deref(), Some("m"));
        assert_eq!(jwt.verification().issuer, "https://i/");
        let forward = &config.forward_metadata;
        for secret in ["authorization", "cookie", "proxy-authorization"] {
            assert!(!forward.forwards(secret), "{secret}");
        }
        assert!(forward.forwards("x-tenant"));
        let only_x = ForwardMetadata {
            allow: vec!["x-*".into()],
            deny: vec!["x-secret-*".into()],
        };
        assert!(only_x.forwards("x-tenant"));
        assert!(!only_x.forwards("tenant"));
        assert!(!only_x.forwards("x-secret-bin"));
    }
}
