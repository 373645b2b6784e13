//! How r-proxy authenticates MQTT clients and what they may publish and subscribe to.

use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// Client authentication and topic authorization.
///
/// ```yaml
/// auth:
///   mode: password                           # jwt | clientCertificate | password | anonymous
///   passwordFile: /etc/strait/passwords/passwords
///   aclFile: /etc/strait/acl/acl.yaml        # optional, any mode
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientAuth {
    /// How clients prove who they are. Unset: `jwt` when `jwt` is set, else `anonymous` (so a
    /// config without an auth section keeps letting every client in; the operator instead
    /// requires the mode to be spelled out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
    /// Clients present a JWT as the CONNECT password (the user name is ignored). r-proxy
    /// verifies it, refuses the connection when it is missing or invalid (v5 reason 0x86 Bad
    /// User Name or Password, 3.1.1 return code 4), enforces the topic permissions its claims
    /// grant, and ends the session with DISCONNECT 0xA0 (Maximum connect time) when the token
    /// expires. The token is not passed on to s-proxy; the verified subject is. (Boxed: it is
    /// large and usually absent.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<Box<JwtAuth>>,
    /// `password` mode: a file of `user:hash` lines as `mosquitto_passwd` writes them (PBKDF2-
    /// SHA512, `$7$`). In Kubernetes: a file of a mounted Secret. Read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_file: Option<PathBuf>,
    /// Topic ACL (YAML, see [`Acl`]) enforced on every client whatever the mode, on top of a
    /// token's permissions. In Kubernetes: a file of a mounted ConfigMap. Read at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_file: Option<PathBuf>,
}

/// How r-proxy establishes a client's identity. Whatever the mode, the CONNECT password never
/// reaches s-proxy or the broker once r-proxy checked it, and the verified identity replaces the
/// client's user name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum AuthMode {
    /// A JWT in the CONNECT password (`auth.jwt`); the identity is its `sub` (else its
    /// `clientIdClaim` value).
    Jwt,
    /// The TLS client certificate's subject common name; needs a TLS listener that requires
    /// client certificates (`tls.clientCa`). A connection without one is refused (0x87, 3.1.1: 5).
    ClientCertificate,
    /// User name and password checked against `auth.passwordFile`.
    Password,
    /// No authentication at r-proxy: the CONNECT goes on as the client sent it, user name and
    /// password included, for the broker to judge.
    Anonymous,
}

impl std::str::FromStr for AuthMode {
    type Err = String;

    /// The config file's spelling (`clientCertificate`), for the command line.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "jwt" => Ok(Self::Jwt),
            "clientCertificate" => Ok(Self::ClientCertificate),
            "password" => Ok(Self::Password),
            "anonymous" => Ok(Self::Anonymous),
            _ => Err("expected jwt, clientCertificate, password or anonymous".into()),
        }
    }
}

impl ClientAuth {
    /// The mode in force (see [`ClientAuth::mode`]).
    pub fn mode(&self) -> AuthMode {
        match (self.mode, &self.jwt) {
            (Some(mode), _) => mode,
            (None, Some(_)) => AuthMode::Jwt,
            (None, None) => AuthMode::Anonymous,
        }
    }

    /// The rules of `auth` beyond its types; `client_certificates` says whether a TLS listener
    /// requires client certificates.
    pub(crate) fn check(&self, client_certificates: bool) -> Result<(), ConfigError> {
        let mode = self.mode();
        match (&self.jwt, mode) {
            (Some(jwt), AuthMode::Jwt) => jwt.check()?,
            (None, AuthMode::Jwt) => {
                return Err(ConfigError::invalid("auth.jwt", "mode jwt needs auth.jwt"));
            }
            (Some(_), _) => {
                return Err(ConfigError::invalid("auth.jwt", "only with mode jwt"));
            }
            (None, _) => {}
        }
        match (&self.password_file, mode) {
            (None, AuthMode::Password) => {
                return Err(ConfigError::invalid(
                    "auth.passwordFile",
                    "mode password needs the password file",
                ));
            }
            (Some(_), m) if m != AuthMode::Password => {
                return Err(ConfigError::invalid(
                    "auth.passwordFile",
                    "only with mode password",
                ));
            }
            _ => {}
        }
        if mode == AuthMode::ClientCertificate && !client_certificates {
            return Err(ConfigError::invalid(
                "auth.mode",
                "clientCertificate needs a tls or wss listener requiring client certificates \
                 (tls.clientCa)",
            ));
        }
        Ok(())
    }

    /// The rules an ACL must follow under this config: `{clientId}` in a JWT-authenticated
    /// session means the token's client id, so the token must bind it.
    pub fn check_acl(&self, acl: &Acl) -> Result<(), ConfigError> {
        let jwt_unbound = self
            .jwt
            .as_ref()
            .is_some_and(|jwt| jwt.client_id_claim.is_none());
        if self.mode() == AuthMode::Jwt && jwt_unbound && acl.uses("{clientId}") {
            return Err(ConfigError::invalid(
                "auth.jwt.clientIdClaim",
                "the ACL uses {clientId}: name the claim that binds a token to its client id, \
                 or any token could take another device's topics",
            ));
        }
        Ok(())
    }
}

/// A static topic ACL (`auth.aclFile`). Once an ACL is configured a client may use only what a
/// rule that applies to it allows, minus what any of them denies. Filters may hold `+`, `#`,
/// `{clientId}` and `{username}` (the verified identity; a rule using it does not apply to
/// anonymous clients).
///
/// ```yaml
/// anonymous:                     # clients without an identity (mode anonymous)
///   subscribe: [public/#]
/// authenticated:                 # every client with an identity
///   publish: ["devices/{username}/#"]
///   subscribe: ["devices/{username}/#", public/#]
///   denySubscribe: [public/internal/#]
/// users:                         # one identity (user name, token subject, certificate CN)
///   ops:
///     subscribe: ["#"]
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Acl {
    #[serde(default)]
    pub anonymous: TopicRules,
    #[serde(default)]
    pub authenticated: TopicRules,
    #[serde(default)]
    pub users: std::collections::BTreeMap<String, TopicRules>,
}

/// Topic filters allowed and denied per action.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TopicRules {
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    #[serde(default)]
    pub deny_publish: Vec<String>,
    #[serde(default)]
    pub deny_subscribe: Vec<String>,
}

impl TopicRules {
    fn filters(&self) -> impl Iterator<Item = &String> {
        self.publish
            .iter()
            .chain(&self.subscribe)
            .chain(&self.deny_publish)
            .chain(&self.deny_subscribe)
    }
}

impl Acl {
    /// Reads an ACL file; unknown fields are errors.
    pub fn load(path: &std::path::Path) -> Result<Self, ConfigError> {
        crate::load(path)
    }

    fn rules(&self) -> impl Iterator<Item = &TopicRules> {
        [&self.anonymous, &self.authenticated]
            .into_iter()
            .chain(self.users.values())
    }

    /// Whether any filter uses `placeholder`.
    pub fn uses(&self, placeholder: &str) -> bool {
        self.rules()
            .flat_map(TopicRules::filters)
            .any(|f| f.contains(placeholder))
    }
}

/// JWT verification and the claims that carry a client's permissions.
///
/// ```yaml
/// jwt:
///   issuer: https://auth.example.com/
///   audience: mqtt
///   keysFile: /etc/strait/jwt/jwks.json
///   algorithms: [RS256, ES256, EdDSA]
///   leeway: 30s
///   clientIdClaim: sub
///   publishClaim: mqtt_publish
///   subscribeClaim: mqtt_subscribe
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct JwtAuth {
    /// Required value of the token's `iss` claim.
    pub issuer: String,
    /// When set, the token's `aud` claim must be or contain this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// JSON Web Key Set (`{"keys": [...]}`) holding the public keys tokens are signed with,
    /// chosen by the token's `kid`. In Kubernetes: a file of a mounted Secret. The file is read
    /// again when it changes (checked every `keysReloadInterval`, and at once when a token
    /// names an unknown `kid`), so keys rotate without a restart.
    pub keys_file: PathBuf,
    /// How often `keysFile` is checked for changes.
    #[serde(default = "default_keys_reload_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub keys_reload_interval: Duration,
    /// Signature algorithms accepted. `none` never is; HS256/HS384/HS512 only when listed here
    /// and the key set holds symmetric (`kty: oct`) keys.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Clock skew tolerated when checking `exp` and `nbf`.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub leeway: Duration,
    /// When set, the CONNECT client id must equal this claim (e.g. `sub`), else the connection
    /// is refused with 0x85 Client Identifier not valid (3.1.1: return code 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_claim: Option<String>,
    /// Claim listing the topic filters the client may publish to (a list of strings, or one
    /// string). Filters may hold `+` and `#`, and `{clientId}` stands for the client's id.
    /// When set, a PUBLISH (or will) outside them is refused: v5 PUBACK/PUBREC 0x87 for QoS 1/2,
    /// dropped for QoS 0, a disconnect for 3.1.1 QoS 1/2; a will outside them refuses the
    /// connection with 0x87 Not authorized (3.1.1: 5). A token without the claim may publish
    /// nothing. Unset: publishing is not restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_claim: Option<String>,
    /// Claim listing the topic filters the client may subscribe to, like `publishClaim`. A
    /// subscription is granted only when one of them matches every topic it can match
    /// (`a/+/c` is covered by `a/#`, `a/#` is not covered by `a/+`); others get SUBACK 0x87
    /// (3.1.1: 0x80). Unset: subscribing is not restricted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_claim: Option<String>,
}

/// A JWS signature algorithm (RFC 7518).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum JwtAlgorithm {
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
    HS256,
    HS384,
    HS512,
}

impl JwtAuth {
    /// The defaults, trusting the keys in `keys_file` for tokens of `issuer`.
    pub fn new(issuer: impl Into<String>, keys_file: impl Into<PathBuf>) -> Self {
        Self {
            issuer: issuer.into(),
            audience: None,
            keys_file: keys_file.into(),
            keys_reload_interval: default_keys_reload_interval(),
            algorithms: default_algorithms(),
            leeway: default_leeway(),
            client_id_claim: None,
            publish_claim: None,
            subscribe_claim: None,
        }
    }

    /// The rules of `auth.jwt` beyond its types.
    pub(crate) fn check(&self) -> Result<(), ConfigError> {
        if self.issuer.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.issuer",
                "must name the token issuer (the `iss` claim)",
            ));
        }
        if self.keys_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.keysFile",
                "must be the path of a JWKS file",
            ));
        }
        if self.algorithms.is_empty() {
            return Err(ConfigError::invalid(
                "auth.jwt.algorithms",
                "list at least one algorithm (e.g. RS256, ES256, EdDSA)",
            ));
        }
        if self.keys_reload_interval.is_zero() {
            return Err(ConfigError::invalid(
                "auth.jwt.keysReloadInterval",
                "must be more than 0",
            ));
        }
        for (field, claim) in [
            ("auth.jwt.clientIdClaim", &self.client_id_claim),
            ("auth.jwt.publishClaim", &self.publish_claim),
            ("auth.jwt.subscribeClaim", &self.subscribe_claim),
        ] {
            if claim.as_deref() == Some("") {
                return Err(ConfigError::invalid(field, "must name a claim when set"));
            }
        }
        Ok(())
    }
}

pub(crate) fn default_keys_reload_interval() -> Duration {
    Duration::from_secs(10)
}
pub(crate) fn default_leeway() -> Duration {
    Duration::from_secs(30)
}
pub(crate) fn default_algorithms() -> Vec<JwtAlgorithm> {
    use JwtAlgorithm::*;
    vec![
        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
    ]
}
