//! gRPC over Kafka: grpc-kafka (the gRPC server clients call; calls become records) and
//! kafka-grpc (the consumer group that calls the real service and writes the answers).
//!
//! Record layout and header names follow Zilla's (`zilla:service`, `zilla:method`,
//! `zilla:reply-to`, `zilla:correlation-id`, `meta:*`), so a Zilla deployment can switch.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::auth::{JwtAlgorithm, JwtAuth};
pub use crate::kafka::{Acks, KafkaConnection, KafkaSasl, KafkaTls, SaslMechanism};
use crate::tls::{ClientTls, ServerTls};
use crate::{ConfigError, Validate};

/// Zilla's field number for the fetch message id (`reliability.field`).
pub const DEFAULT_MESSAGE_ID_FIELD: u32 = 32767;
const MAX_FIELD_NUMBER: u32 = 536_870_911;

/// Header names of the correlation layout; Zilla's by default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CorrelationHeaders {
    #[serde(default = "default_service_header")]
    pub service: String,
    #[serde(default = "default_method_header")]
    pub method: String,
    #[serde(default = "default_correlation_header")]
    pub correlation_id: String,
    #[serde(default = "default_reply_to_header")]
    pub reply_to: String,
    #[serde(default = "default_status_header")]
    pub status: String,
    #[serde(default = "default_message_header")]
    pub message: String,
}

impl Default for CorrelationHeaders {
    fn default() -> Self {
        Self {
            service: default_service_header(),
            method: default_method_header(),
            correlation_id: default_correlation_header(),
            reply_to: default_reply_to_header(),
            status: default_status_header(),
            message: default_message_header(),
        }
    }
}

impl CorrelationHeaders {
    fn check(&self, field: &'static str) -> Result<(), ConfigError> {
        let names = [
            &self.service,
            &self.method,
            &self.correlation_id,
            &self.reply_to,
            &self.status,
            &self.message,
        ];
        for (i, name) in names.iter().enumerate() {
            if name.is_empty() || name.starts_with("meta:") {
                return Err(ConfigError::invalid(
                    field,
                    format!("header name {name:?} is empty or in the meta: namespace"),
                ));
            }
            if names[..i].contains(name) {
                return Err(ConfigError::invalid(
                    field,
                    format!("header name {name:?} is used twice"),
                ));
            }
        }
        Ok(())
    }
}

/// Where the `.proto` files describing the served services are.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Protos {
    /// `.proto` files, or directories whose `.proto` files (recursively) are all compiled.
    pub paths: Vec<PathBuf>,
    /// Import roots; default: each directory in `paths` and the directory of each file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub includes: Vec<PathBuf>,
    /// How often the files are checked for changes (0s: never reloaded).
    #[serde(default = "default_reload_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub reload_interval: Duration,
}

/// `strait-proxy grpc-kafka --config FILE`.
///
/// ```yaml
/// listen: 0.0.0.0:50051
/// tls: { cert: /etc/strait/tls/tls.crt, key: /etc/strait/tls/tls.key }
/// auth:
///   jwt: { issuer: https://auth.example.com/, keysFile: /etc/strait/jwt/jwks.json, methodsClaim: grpc_methods }
/// forwardMetadata: { allow: ['x-*'] }
/// kafka: { bootstrap: kafka:9092 }
/// protos: { paths: [/etc/strait/protos] }
/// routes:
///   - method: example.Greeter/*
///     produce: { topic: greeter-requests, replyTo: greeter-replies }
///   - method: example.Events/Fetch
///     fetch: { topic: events }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcKafkaConfig {
    /// gRPC (h2c, or TLS with `tls`) listener for clients (`--listen` overrides it).
    #[serde(default = "default_grpc_kafka_listen")]
    pub listen: SocketAddr,
    /// TLS for the listener; with `clientCa`, callers must present a certificate it signed.
    #[serde(default)]
    pub tls: ServerTls,
    /// Who may call which methods; without it every caller may call every routed method.
    #[serde(default)]
    pub auth: GrpcAuth,
    /// Which request metadata is copied into the request records as `meta:*` headers.
    #[serde(default)]
    pub forward_metadata: ForwardMetadata,
    pub kafka: KafkaConnection,
    pub protos: Protos,
    /// First matching route wins; a method no route matches is UNIMPLEMENTED.
    pub routes: Vec<GrpcRoute>,
    #[serde(default)]
    pub headers: CorrelationHeaders,
    /// Request metadata whose value makes the correlation id stable across retries (of one
    /// caller: the id also depends on the authenticated identity).
    #[serde(default = "default_idempotency_metadata")]
    pub idempotency_metadata: String,
    /// Fetch message ids: the protobuf field they travel in, and the resume metadata name.
    #[serde(default)]
    pub reliability: Reliability,
    #[serde(default)]
    pub limits: GrpcKafkaLimits,
    /// How long to wait for calls to finish on shutdown before dropping them.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

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
    fn check(&self, tls: &ServerTls) -> Result<(), ConfigError> {
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

    fn check(&self) -> Result<(), ConfigError> {
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

/// Which calls a route takes and what it does with them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcRoute {
    /// `package.Service/Method`; `*` matches any run of characters (`example.Greeter/*`).
    pub method: String,
    /// Request metadata that must be present with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// Each call becomes records on a request topic (set this or `fetch`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub produce: Option<ProduceRoute>,
    /// The call streams a topic to the client (set this or `produce`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fetch: Option<FetchRoute>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ProduceRoute {
    pub topic: String,
    /// Topic the answers come back on; without it the call is one-way (answered at once, empty).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// Kafka produce acknowledgement: `all` (every in-sync replica, the default), `leader`, `none`.
    #[serde(default = "Acks::all")]
    pub acks: Acks,
    /// Record key: the correlation id (default), `metadata:NAME` (metadata `forwardMetadata`
    /// lets through) or `field:NAME` (a top-level scalar field of the first request message,
    /// which is then decoded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchRoute {
    pub topic: String,
    /// Any-of; inside one filter, key and every header must match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub filters: Vec<FetchFilter>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FetchFilter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Reliability {
    #[serde(default = "default_message_id_field")]
    pub field: u32,
    #[serde(default = "default_reliability_metadata")]
    pub metadata: String,
}

impl Default for Reliability {
    fn default() -> Self {
        Self {
            field: default_message_id_field(),
            metadata: default_reliability_metadata(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrpcKafkaLimits {
    /// Calls waiting for replies at once; further calls get RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_pending_calls")]
    pub max_pending_calls: usize,
    /// Client connections (HTTP/2) open at once. A connection past it is answered
    /// RESOURCE_EXHAUSTED on every call for a moment, then closed.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// `fetch` streams open at once (they share one Kafka reader per topic; a stream reading
    /// older records has a consumer of its own until it catches up); further fetches get
    /// RESOURCE_EXHAUSTED.
    #[serde(default = "default_max_fetch_streams")]
    pub max_fetch_streams: usize,
    /// Records each fetched topic's shared reader keeps for streams slower than it (memory:
    /// this many times the topic's record size); a stream further behind reads from Kafka
    /// until it has caught up.
    #[serde(default = "default_fetch_buffered_records")]
    pub fetch_buffered_records: usize,
    /// Largest request or reply message, in bytes.
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    /// Deadline of calls that send no `grpc-timeout`.
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub default_timeout: Duration,
}

impl Default for GrpcKafkaLimits {
    fn default() -> Self {
        Self {
            max_pending_calls: default_max_pending_calls(),
            max_connections: default_max_connections(),
            max_fetch_streams: default_max_fetch_streams(),
            fetch_buffered_records: default_fetch_buffered_records(),
            max_message_size: default_max_message_size(),
            default_timeout: default_call_timeout(),
        }
    }
}

impl GrpcKafkaConfig {
    pub fn new(bootstrap: &str, protos: Vec<PathBuf>, routes: Vec<GrpcRoute>) -> Self {
        Self {
            listen: default_grpc_kafka_listen(),
            tls: ServerTls::default(),
            auth: GrpcAuth::default(),
            forward_metadata: ForwardMetadata::default(),
            kafka: KafkaConnection::new(bootstrap),
            protos: Protos {
                paths: protos,
                includes: Vec::new(),
                reload_interval: default_reload_interval(),
            },
            routes,
            headers: CorrelationHeaders::default(),
            idempotency_metadata: default_idempotency_metadata(),
            reliability: Reliability::default(),
            limits: GrpcKafkaLimits::default(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

impl GrpcRoute {
    pub fn produce(method: &str, topic: &str, reply_to: Option<&str>) -> Self {
        Self {
            method: method.into(),
            metadata: BTreeMap::new(),
            produce: Some(ProduceRoute {
                topic: topic.into(),
                reply_to: reply_to.map(Into::into),
                acks: Acks::All,
                key: None,
            }),
            fetch: None,
        }
    }

    pub fn fetch(method: &str, topic: &str) -> Self {
        Self {
            method: method.into(),
            metadata: BTreeMap::new(),
            produce: None,
            fetch: Some(FetchRoute {
                topic: topic.into(),
                filters: Vec::new(),
            }),
        }
    }
}

impl Validate for GrpcKafkaConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.tls.check("tls")?;
        self.auth.check(&self.tls)?;
        self.forward_metadata.check()?;
        self.kafka.check()?;
        if self.protos.paths.is_empty() {
            return Err(ConfigError::invalid(
                "protos.paths",
                "no .proto file or directory: the served services are described only by them",
            ));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::invalid(
                "routes",
                "no route: every call would be UNIMPLEMENTED",
            ));
        }
        for route in &self.routes {
            check_method_pattern("routes[].method", &route.method)?;
            match (&route.produce, &route.fetch) {
                (Some(produce), None) => {
                    check_topic("routes[].produce.topic", &produce.topic)?;
                    if let Some(reply_to) = &produce.reply_to {
                        check_topic("routes[].produce.replyTo", reply_to)?;
                    }
                    if let Some(key) = &produce.key {
                        let ok = key
                            .strip_prefix("metadata:")
                            .or_else(|| key.strip_prefix("field:"))
                            .is_some_and(|name| !name.is_empty());
                        if !ok {
                            return Err(ConfigError::invalid(
                                "routes[].produce.key",
                                format!("{key:?} is neither metadata:NAME nor field:NAME"),
                            ));
                        }
                        // The key is written to Kafka as it is: it must not smuggle out what
                        // forwardMetadata keeps in.
                        if let Some(name) = key.strip_prefix("metadata:")
                            && !self.forward_metadata.forwards(name)
                        {
                            return Err(ConfigError::invalid(
                                "routes[].produce.key",
                                format!("{key:?}: forwardMetadata keeps {name:?} out of Kafka"),
                            ));
                        }
                    }
                }
                (None, Some(fetch)) => check_topic("routes[].fetch.topic", &fetch.topic)?,
                _ => {
                    return Err(ConfigError::invalid(
                        "routes[]",
                        format!(
                            "route {:?} must set exactly one of produce and fetch",
                            route.method
                        ),
                    ));
                }
            }
        }
        self.headers.check("headers")?;
        if self.idempotency_metadata.is_empty() {
            return Err(ConfigError::invalid("idempotencyMetadata", "is empty"));
        }
        if !(1..=MAX_FIELD_NUMBER).contains(&self.reliability.field)
            || (19000..=19999).contains(&self.reliability.field)
        {
            return Err(ConfigError::invalid(
                "reliability.field",
                format!(
                    "{} is not a usable protobuf field number (1..={MAX_FIELD_NUMBER}, not 19000..=19999)",
                    self.reliability.field
                ),
            ));
        }
        if self.limits.max_pending_calls == 0 {
            return Err(ConfigError::invalid(
                "limits.maxPendingCalls",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.maxConnections",
                "must be at least 1",
            ));
        }
        if self.limits.max_fetch_streams == 0 {
            return Err(ConfigError::invalid(
                "limits.maxFetchStreams",
                "must be at least 1",
            ));
        }
        if self.limits.fetch_buffered_records < 16 {
            return Err(ConfigError::invalid(
                "limits.fetchBufferedRecords",
                "must be at least 16",
            ));
        }
        if self.limits.max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "limits.maxMessageSize",
                "must be at least 1024 bytes",
            ));
        }
        if self.limits.default_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "limits.defaultTimeout",
                "must be more than 0s",
            ));
        }
        Ok(())
    }
}

/// `strait-proxy kafka-grpc --config FILE`.
///
/// ```yaml
/// kafka: { bootstrap: kafka:9092 }
/// target: http://greeter:50051
/// groupId: greeter-backend
/// routes: [{ topic: greeter-requests }]
/// concurrency: 64
/// retries: { attempts: 5, initialBackoff: 100ms, maxBackoff: 5s }
/// deadLetterTopic: greeter-dead-letters
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaGrpcConfig {
    pub kafka: KafkaConnection,
    /// The real service: `http://HOST:PORT` (h2c) or `https://HOST:PORT` (`--target` overrides).
    pub target: String,
    /// TLS to an `https://` target: `ca` signs its certificate (unset: the system's trusted
    /// roots); `cert` and `key` for mutual TLS.
    #[serde(default)]
    pub target_tls: ClientTls,
    /// Consumer group id. Replicas with the same id share the request partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Zilla-style group id `zilla:<namespace>-<binding>` (instead of `groupId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zilla_group: Option<ZillaGroup>,
    /// Request topics consumed, optionally restricted to some methods, and the reply topics
    /// their calls may be answered on.
    pub routes: Vec<KafkaRoute>,
    #[serde(default)]
    pub headers: CorrelationHeaders,
    /// Calls made to the target at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Longest a call to the target may take (a shorter client deadline wins).
    #[serde(default = "default_call_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub call_timeout: Duration,
    #[serde(default)]
    pub retries: Retries,
    /// Where requests go after `retries.attempts` failed attempts (their records, with
    /// `strait:error` and `strait:attempts` headers added).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Acks for reply and dead-letter records; offsets are committed only after they are acked
    /// (`all` by default).
    #[serde(default = "Acks::all")]
    pub acks: Acks,
    /// A redelivered call (same correlation id) within this window is answered from the
    /// recorded replies instead of calling the target again.
    #[serde(default = "default_dedup_window", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub dedup_window: Duration,
    /// Bytes of recorded answers kept for `dedupWindow` in all (reply values and headers).
    /// Past it the oldest are forgotten (counted in `strait_grpc_dedup_evictions_total`): a
    /// call repeated after its answer was forgotten calls the target again.
    #[serde(default = "default_dedup_max_bytes")]
    pub dedup_max_bytes: usize,
    /// Largest answer of one call recorded for a repeat (a server stream's replies in all). A
    /// bigger answer is streamed to the reply topic as usual but not kept, so a repeat of the
    /// call calls the target again.
    #[serde(default = "default_dedup_max_answer_bytes")]
    pub dedup_max_answer_bytes: usize,
    /// Consumer session timeout: how soon a dead replica's partitions move to the others.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub session_timeout: Duration,
    #[serde(default = "default_max_message_size")]
    pub max_message_size: usize,
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ZillaGroup {
    pub namespace: String,
    pub binding: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaRoute {
    pub topic: String,
    /// Only calls of methods matching this pattern (`*` wildcards); others are left alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Topics this route's calls may be answered on. A record whose `zilla:reply-to` names any
    /// other topic is refused without calling the service (its offset committed, counted in
    /// `strait_grpc_refused_total{reason="reply_to_not_allowed"}`), so whoever may write
    /// requests cannot make kafka-grpc write to arbitrary topics. Empty: no call is answered.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reply_to: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Retries {
    /// Attempts per call while the target answers UNAVAILABLE (1 = no retry).
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    #[serde(default = "default_initial_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub initial_backoff: Duration,
    #[serde(default = "default_max_backoff", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_backoff: Duration,
}

impl Default for Retries {
    fn default() -> Self {
        Self {
            attempts: default_attempts(),
            initial_backoff: default_initial_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

impl KafkaGrpcConfig {
    pub fn new(bootstrap: &str, target: &str, group_id: &str, topics: &[&str]) -> Self {
        Self {
            kafka: KafkaConnection::new(bootstrap),
            target: target.into(),
            target_tls: ClientTls::default(),
            group_id: Some(group_id.into()),
            zilla_group: None,
            routes: topics
                .iter()
                .map(|t| KafkaRoute {
                    topic: (*t).into(),
                    method: None,
                    reply_to: Vec::new(),
                })
                .collect(),
            headers: CorrelationHeaders::default(),
            concurrency: default_concurrency(),
            call_timeout: default_call_timeout(),
            retries: Retries::default(),
            dead_letter_topic: None,
            acks: Acks::All,
            dedup_window: default_dedup_window(),
            dedup_max_bytes: default_dedup_max_bytes(),
            dedup_max_answer_bytes: default_dedup_max_answer_bytes(),
            session_timeout: default_session_timeout(),
            max_message_size: default_max_message_size(),
            drain_timeout: default_drain_timeout(),
        }
    }

    /// The consumer group id: `groupId`, or `zilla:<namespace>-<binding>`.
    pub fn group(&self) -> String {
        match (&self.group_id, &self.zilla_group) {
            (Some(id), _) => id.clone(),
            (None, Some(z)) => format!("zilla:{}-{}", z.namespace, z.binding),
            (None, None) => "strait-kafka-grpc".into(),
        }
    }
}

impl Validate for KafkaGrpcConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.kafka.check()?;
        let Some(host) = self
            .target
            .strip_prefix("http://")
            .or_else(|| self.target.strip_prefix("https://"))
        else {
            return Err(ConfigError::invalid(
                "target",
                format!("{:?} must start with http:// or https://", self.target),
            ));
        };
        if host.is_empty() {
            return Err(ConfigError::invalid(
                "target",
                format!("{:?} has no host", self.target),
            ));
        }
        self.target_tls.check("targetTls")?;
        if self.group_id.is_some() && self.zilla_group.is_some() {
            return Err(ConfigError::invalid(
                "zillaGroup",
                "set either groupId or zillaGroup, not both",
            ));
        }
        if self.group_id.as_deref() == Some("") {
            return Err(ConfigError::invalid("groupId", "is empty"));
        }
        if self.routes.is_empty() {
            return Err(ConfigError::invalid(
                "routes",
                "no request topic to consume",
            ));
        }
        for route in &self.routes {
            check_topic("routes[].topic", &route.topic)?;
            if let Some(method) = &route.method {
                check_method_pattern("routes[].method", method)?;
            }
            for topic in &route.reply_to {
                check_topic("routes[].replyTo", topic)?;
            }
        }
        self.headers.check("headers")?;
        if self.concurrency == 0 {
            return Err(ConfigError::invalid("concurrency", "must be at least 1"));
        }
        if self.call_timeout.is_zero() {
            return Err(ConfigError::invalid("callTimeout", "must be more than 0s"));
        }
        if self.dedup_max_answer_bytes > self.dedup_max_bytes {
            return Err(ConfigError::invalid(
                "dedupMaxAnswerBytes",
                format!(
                    "{} is more than dedupMaxBytes ({}): no answer that size could be kept",
                    self.dedup_max_answer_bytes, self.dedup_max_bytes
                ),
            ));
        }
        if self.retries.attempts == 0 {
            return Err(ConfigError::invalid(
                "retries.attempts",
                "must be at least 1 (the first attempt)",
            ));
        }
        if self.retries.initial_backoff > self.retries.max_backoff {
            return Err(ConfigError::invalid(
                "retries.initialBackoff",
                "is longer than retries.maxBackoff",
            ));
        }
        if let Some(topic) = &self.dead_letter_topic {
            check_topic("deadLetterTopic", topic)?;
        }
        if self.session_timeout < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "sessionTimeout",
                "must be at least 1s (brokers usually require 6s or more)",
            ));
        }
        if self.max_message_size < 1024 {
            return Err(ConfigError::invalid(
                "maxMessageSize",
                "must be at least 1024 bytes",
            ));
        }
        Ok(())
    }
}

/// Kafka topic names: 1–249 of `[a-zA-Z0-9._-]`, not `.` or `..`.
fn check_topic(field: &'static str, topic: &str) -> Result<(), ConfigError> {
    let valid = !topic.is_empty()
        && topic.len() <= 249
        && topic != "."
        && topic != ".."
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if !valid {
        return Err(ConfigError::invalid(
            field,
            format!("{topic:?} is not a Kafka topic name (1-249 of a-z A-Z 0-9 . _ -)"),
        ));
    }
    Ok(())
}

/// `package.Service/Method` where either side may use `*`.
fn check_method_pattern(field: &'static str, pattern: &str) -> Result<(), ConfigError> {
    match pattern.split_once('/') {
        Some((service, method))
            if !service.is_empty() && !method.is_empty() && !method.contains('/') =>
        {
            Ok(())
        }
        _ if pattern == "*" => Ok(()),
        _ => Err(ConfigError::invalid(
            field,
            format!("{pattern:?} is not package.Service/Method (with * wildcards)"),
        )),
    }
}

/// Whether `name` matches `pattern`, where `*` matches any run of characters.
pub fn method_matches(pattern: &str, name: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = name.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

fn default_grpc_kafka_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_service_header() -> String {
    "zilla:service".into()
}
fn default_method_header() -> String {
    "zilla:method".into()
}
fn default_correlation_header() -> String {
    "zilla:correlation-id".into()
}
fn default_reply_to_header() -> String {
    "zilla:reply-to".into()
}
fn default_status_header() -> String {
    "zilla:status".into()
}
fn default_message_header() -> String {
    "zilla:message".into()
}
fn default_idempotency_metadata() -> String {
    "idempotency-key".into()
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
fn default_message_id_field() -> u32 {
    DEFAULT_MESSAGE_ID_FIELD
}
fn default_reliability_metadata() -> String {
    "last-message-id".into()
}
fn default_max_pending_calls() -> usize {
    10_000
}
fn default_max_connections() -> usize {
    10_000
}
fn default_max_fetch_streams() -> usize {
    256
}
fn default_fetch_buffered_records() -> usize {
    1024
}
fn default_dedup_max_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_dedup_max_answer_bytes() -> usize {
    256 * 1024
}
fn default_max_message_size() -> usize {
    4 * 1024 * 1024
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    64
}
fn default_attempts() -> u32 {
    5
}
fn default_initial_backoff() -> Duration {
    Duration::from_millis(100)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(5)
}
fn default_dedup_window() -> Duration {
    Duration::from_secs(300)
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
        serde_saphyr::from_str(yaml).unwrap()
    }

    fn field_of(result: Result<(), ConfigError>) -> &'static str {
        match result {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    #[test]
    fn grpc_kafka_example_parses_with_defaults() {
        let config: GrpcKafkaConfig = parse(
            "kafka: { bootstrap: 'kafka:9092' }\n\
             protos: { paths: [/protos] }\n\
             routes:\n\
             - { method: example.Greeter/*, produce: { topic: req, replyTo: rep } }\n\
             - { method: example.Events/Fetch, fetch: { topic: events } }\n",
        );
        config.validate().unwrap();
        let expected = GrpcKafkaConfig::new(
            "kafka:9092",
            vec!["/protos".into()],
            vec![
                GrpcRoute::produce("example.Greeter/*", "req", Some("rep")),
                GrpcRoute::fetch("example.Events/Fetch", "events"),
            ],
        );
        assert_eq!(config, expected);
        assert_eq!(config.headers.correlation_id, "zilla:correlation-id");
        assert_eq!(config.reliability.field, 32767);
        let yaml = crate::to_yaml(&config);
        assert_eq!(
            serde_saphyr::from_str::<GrpcKafkaConfig>(&yaml).unwrap(),
            config
        );
    }

    #[test]
    fn invalid_grpc_kafka_configs_name_the_field() {
        let base = || {
            GrpcKafkaConfig::new(
                "k:9092",
                vec!["/p".into()],
                vec![GrpcRoute::produce("a.B/C", "req", Some("rep"))],
            )
        };
        base().validate().unwrap();
        let mut c = base();
        c.kafka.bootstrap = "k".into();
        assert_eq!(field_of(c.validate()), "kafka.bootstrap");
        let mut c = base();
        c.protos.paths.clear();
        assert_eq!(field_of(c.validate()), "protos.paths");
        let mut c = base();
        c.routes[0].method = "nomethod".into();
        assert_eq!(field_of(c.validate()), "routes[].method");
        let mut c = base();
        c.routes[0].produce.as_mut().unwrap().topic = "bad topic".into();
        assert_eq!(field_of(c.validate()), "routes[].produce.topic");
        let mut c = base();
        c.routes[0].fetch = Some(FetchRoute {
            topic: "t".into(),
            filters: vec![],
        });
        assert_eq!(field_of(c.validate()), "routes[]");
        let mut c = base();
        c.routes[0].produce.as_mut().unwrap().key = Some("header:x".into());
        assert_eq!(field_of(c.validate()), "routes[].produce.key");
        let mut c = base();
        c.routes[0].produce.as_mut().unwrap().key = Some("metadata:authorization".into());
        assert_eq!(field_of(c.validate()), "routes[].produce.key");
        let mut c = base();
        c.reliability.field = 19500;
        assert_eq!(field_of(c.validate()), "reliability.field");
        let mut c = base();
        c.headers.method = "zilla:service".into();
        assert_eq!(field_of(c.validate()), "headers");
        let mut c = base();
        c.kafka
            .properties
            .insert("bootstrap.servers".into(), "x:1".into());
        assert_eq!(field_of(c.validate()), "kafka.properties");
        let mut c = base();
        c.kafka.tls = Some(KafkaTls::default());
        assert_eq!(field_of(c.validate()), "kafka.tls.ca");
        let mut c = base();
        c.auth.client_certificate = true;
        assert_eq!(field_of(c.validate()), "auth.clientCertificate");
        let mut c = base();
        c.auth.jwt = Some(Box::new(GrpcJwtAuth::new("", "/jwks.json")));
        assert_eq!(field_of(c.validate()), "auth.jwt.issuer");
        let mut c = base();
        let mut jwt = GrpcJwtAuth::new("https://issuer/", "/jwks.json");
        jwt.methods_claim = Some(String::new());
        c.auth.jwt = Some(Box::new(jwt));
        assert_eq!(field_of(c.validate()), "auth.jwt.methodsClaim");
        let mut c = base();
        c.forward_metadata.allow = vec!["X-Upper".into()];
        assert_eq!(field_of(c.validate()), "forwardMetadata.allow");
        let mut c = base();
        c.forward_metadata.deny = vec![String::new()];
        assert_eq!(field_of(c.validate()), "forwardMetadata.deny");
        let mut c = base();
        c.limits.max_connections = 0;
        assert_eq!(field_of(c.validate()), "limits.maxConnections");
        let mut c = base();
        c.limits.max_fetch_streams = 0;
        assert_eq!(field_of(c.validate()), "limits.maxFetchStreams");
        let mut c = base();
        c.limits.fetch_buffered_records = 1;
        assert_eq!(field_of(c.validate()), "limits.fetchBufferedRecords");
    }

    #[test]
    fn grpc_kafka_limits_parse_with_defaults_for_the_rest() {
        let config: GrpcKafkaConfig = parse(
            "kafka: { bootstrap: 'kafka:9092' }\n\
             protos: { paths: [/protos] }\n\
             routes: [{ method: a.B/*, produce: { topic: req, replyTo: rep } }]\n\
             limits: { maxConnections: 5, maxFetchStreams: 2 }\n",
        );
        config.validate().unwrap();
        assert_eq!(config.limits.max_connections, 5);
        assert_eq!(config.limits.max_fetch_streams, 2);
        assert_eq!(config.limits.max_pending_calls, 10_000);
        assert_eq!(GrpcKafkaLimits::default().max_fetch_streams, 256);
    }

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

    #[test]
    fn kafka_grpc_example_parses_and_names_its_group() {
        let config: KafkaGrpcConfig = parse(
            "kafka: { bootstrap: 'kafka:9092' }\n\
             target: http://greeter:50051\n\
             zillaGroup: { namespace: example, binding: remote_server }\n\
             routes: [{ topic: req }]\n\
             retries: { attempts: 3, initialBackoff: 50ms, maxBackoff: 1s }\n\
             deadLetterTopic: dlq\n",
        );
        config.validate().unwrap();
        assert_eq!(config.group(), "zilla:example-remote_server");
        assert_eq!(config.retries.initial_backoff, Duration::from_millis(50));
        assert_eq!(config.acks, Acks::All);
    }

    #[test]
    fn invalid_kafka_grpc_configs_name_the_field() {
        let base = || KafkaGrpcConfig::new("k:9092", "http://svc:50051", "g", &["req"]);
        base().validate().unwrap();
        let mut c = base();
        c.target = "svc:50051".into();
        assert_eq!(field_of(c.validate()), "target");
        let mut c = base();
        c.target = "https://svc:50051".into();
        // No CA: the system's trusted roots.
        c.validate().unwrap();
        let mut c = base();
        c.zilla_group = Some(ZillaGroup {
            namespace: "n".into(),
            binding: "b".into(),
        });
        assert_eq!(field_of(c.validate()), "zillaGroup");
        let mut c = base();
        c.concurrency = 0;
        assert_eq!(field_of(c.validate()), "concurrency");
        let mut c = base();
        c.retries.attempts = 0;
        assert_eq!(field_of(c.validate()), "retries.attempts");
        let mut c = base();
        c.retries.initial_backoff = Duration::from_secs(10);
        assert_eq!(field_of(c.validate()), "retries.initialBackoff");
        let mut c = base();
        c.dead_letter_topic = Some("a/b".into());
        assert_eq!(field_of(c.validate()), "deadLetterTopic");
        let mut c = base();
        c.routes[0].reply_to = vec!["no spaces".into()];
        assert_eq!(field_of(c.validate()), "routes[].replyTo");
        let mut c = base();
        c.routes.clear();
        assert_eq!(field_of(c.validate()), "routes");
        let mut c = base();
        c.dedup_max_bytes = 1024;
        assert_eq!(field_of(c.validate()), "dedupMaxAnswerBytes");
    }

    #[test]
    fn method_patterns_match_with_wildcards() {
        assert!(method_matches("a.B/C", "a.B/C"));
        assert!(!method_matches("a.B/C", "a.B/CD"));
        assert!(method_matches("a.B/*", "a.B/C"));
        assert!(method_matches("*", "a.B/C"));
        assert!(method_matches("a.*/Get*", "a.B/GetThing"));
        assert!(!method_matches("a.*/Get*", "a.B/Put"));
        assert!(!method_matches("a.B/*", "a.C/D"));
    }
}
