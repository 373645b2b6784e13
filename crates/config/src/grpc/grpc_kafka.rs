//! grpc-kafka's config: the gRPC server clients call, whose calls become records.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    CorrelationHeaders, ForwardMetadata, GrpcAuth, check_method_pattern, check_topic,
    default_call_timeout, default_drain_timeout, default_max_message_size,
};
use crate::kafka::{Acks, KafkaConnection};
use crate::tls::ServerTls;
use crate::{ConfigError, Validate};

/// Zilla's field number for the fetch message id (`reliability.field`).
pub const DEFAULT_MESSAGE_ID_FIELD: u32 = 32767;
const MAX_FIELD_NUMBER: u32 = 536_870_911;

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

fn default_grpc_kafka_listen() -> SocketAddr {
    SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 50051)
}
fn default_reload_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_idempotency_metadata() -> String {
    "idempotency-key".into()
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

#[cfg(test)]
mod tests {
    use super::super::{GrpcJwtAuth, field_of, parse};
    use super::*;
    use crate::kafka::KafkaTls;

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
}
