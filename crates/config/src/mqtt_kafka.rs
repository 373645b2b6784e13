//! `upstream: kafka`: s-proxy serves MQTT itself with Kafka as the store (Zilla's mqtt-kafka
//! layout). Three topics hold every message, the retained messages and the sessions.

use std::collections::BTreeMap;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
pub use crate::kafka::{Acks, KafkaConnection, KafkaSasl, KafkaTls, SaslMechanism};
use crate::kafka::{check_security, is_typed_property};
pub use crate::session_limits::SessionLimits;

/// ```yaml
/// kafka:
///   bootstrap: kafka-0:9092,kafka-1:9092
///   tls: { ca: /etc/strait/kafka/ca.crt }
///   sasl: { mechanism: SCRAM-SHA-512, username: strait, passwordFile: /etc/strait/kafka/password }
///   topics: { messages: mqtt-messages, retained: mqtt-retained, sessions: mqtt-sessions }
///   createTopics: true
///   newTopics: { partitions: 3, replicationFactor: 1 }
///   qos0Acks: leader
///   routes: [ { topic: "sensors/{id}/#", messages: "sensors.${params.id}", partitions: 6 } ]
///   maxRoutedTopics: 1000
///   clients: [ "place/{identity}/#" ]
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, `HOST:PORT[,HOST:PORT…]`.
    pub bootstrap: String,
    /// Connect over TLS, trusting `tls.ca` (`cert` and `key` for mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication; the password is read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// The three topics (Zilla's default names).
    #[serde(default)]
    pub topics: MqttKafkaTopics,
    /// Create missing topics on start (retained and sessions compacted).
    #[serde(default = "default_true")]
    pub create_topics: bool,
    /// Partitions and replication of topics s-proxy creates.
    #[serde(default)]
    pub new_topics: NewTopics,
    /// Create the topics of `${params}` routes on their first PUBLISH (with the route's
    /// `partitions` and `topicConfig`); defaults to `createTopics`. The operator turns it on
    /// while it creates every other topic itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_routed_topics: Option<bool>,
    /// How many distinct topics of `${params}` routes one s-proxy process creates at most;
    /// a PUBLISH that would need one more is refused (MQTT 5: 0x97 Quota exceeded).
    #[serde(default = "default_max_routed_topics")]
    pub max_routed_topics: u32,
    /// Produce acknowledgement for QoS 0 PUBLISH (QoS 1 and 2 always wait for `all`).
    #[serde(default)]
    pub qos0_acks: Acks,
    /// MQTT topic filters (with `{param}` levels) whose messages go to another messages topic;
    /// the first match wins, anything else goes to `topics.messages`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<MqttKafkaRoute>,
    /// Topic patterns such as `place/{identity}/#`: the `{identity}` level is the partition key,
    /// so all of one client's topics share a partition (Zilla's `clients`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Messages queued per session towards its client before QoS 0 messages are dropped and
    /// QoS 1/2 delivery is paused.
    #[serde(default = "default_session_queue")]
    pub session_queue: usize,
    /// How long an s-proxy replica may stay silent in the sessions topic before the others
    /// consider it dead and publish the wills of the clients it served.
    #[serde(default = "default_replica_lease", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub replica_lease: Duration,
    /// What one client may make s-proxy hold: subscriptions, shared groups, unacknowledged
    /// PUBLISHes, session expiry, catch-up readers.
    #[serde(default)]
    pub limits: SessionLimits,
    /// Extra librdkafka properties (e.g. `linger.ms`); they may not replace the ones Strait sets
    /// from the fields above.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub librdkafka: BTreeMap<String, String>,
}

impl KafkaConfig {
    pub fn new(bootstrap: String) -> Self {
        Self {
            bootstrap,
            tls: None,
            sasl: None,
            topics: MqttKafkaTopics::default(),
            create_topics: true,
            new_topics: NewTopics::default(),
            create_routed_topics: None,
            max_routed_topics: default_max_routed_topics(),
            qos0_acks: Acks::default(),
            routes: Vec::new(),
            clients: Vec::new(),
            session_queue: default_session_queue(),
            replica_lease: default_replica_lease(),
            limits: SessionLimits::default(),
            librdkafka: BTreeMap::new(),
        }
    }

    /// Checks the section; `kafka` is the name of the section in errors.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_security(&self.bootstrap, self.tls.as_ref(), self.sasl.as_ref())?;
        let t = &self.topics;
        for (field, name) in [
            ("kafka.topics.messages", &t.messages),
            ("kafka.topics.retained", &t.retained),
            ("kafka.topics.sessions", &t.sessions),
        ] {
            check_topic_name(field, name)?;
        }
        if t.messages == t.retained || t.messages == t.sessions || t.retained == t.sessions {
            return Err(ConfigError::invalid(
                "kafka.topics",
                "messages, retained and sessions must be three different topics",
            ));
        }
        if self.new_topics.partitions < 1 {
            return Err(ConfigError::invalid(
                "kafka.newTopics.partitions",
                "must be at least 1",
            ));
        }
        if self.new_topics.replication_factor < 1 {
            return Err(ConfigError::invalid(
                "kafka.newTopics.replicationFactor",
                "must be at least 1",
            ));
        }
        for route in &self.routes {
            let params = pattern_params(&route.topic)
                .map_err(|reason| ConfigError::invalid("kafka.routes.topic", reason))?;
            let mut rest = route.messages.as_str();
            while let Some(start) = rest.find("${params.") {
                let after = &rest[start + "${params.".len()..];
                let Some(end) = after.find('}') else {
                    return Err(ConfigError::invalid(
                        "kafka.routes.messages",
                        format!("{:?}: unclosed ${{params.…}}", route.messages),
                    ));
                };
                let name = &after[..end];
                if !params.iter().any(|p| p == name) {
                    return Err(ConfigError::invalid(
                        "kafka.routes.messages",
                        format!(
                            "{:?} uses {name:?}, which {:?} does not capture",
                            route.messages, route.topic
                        ),
                    ));
                }
                rest = &after[end + 1..];
            }
            if !route.messages.contains("${") {
                check_topic_name("kafka.routes.messages", &route.messages)?;
            }
            if route.partitions.is_some_and(|p| p < 1) {
                return Err(ConfigError::invalid(
                    "kafka.routes.partitions",
                    "must be at least 1",
                ));
            }
            if let Some(pattern) = &route.topic_pattern {
                route_topic_pattern(pattern).map_err(|error| {
                    ConfigError::invalid("kafka.routes.topicPattern", error.to_string())
                })?;
            }
        }
        for pattern in &self.clients {
            let params = pattern_params(pattern)
                .map_err(|reason| ConfigError::invalid("kafka.clients", reason))?;
            if params != ["identity"] {
                return Err(ConfigError::invalid(
                    "kafka.clients",
                    format!("{pattern:?} must capture exactly one level as {{identity}}"),
                ));
            }
        }
        if self.replica_lease < Duration::from_secs(1) {
            return Err(ConfigError::invalid(
                "kafka.replicaLease",
                "must be at least 1s",
            ));
        }
        self.limits.check()?;
        if self.session_queue == 0 {
            return Err(ConfigError::invalid(
                "kafka.sessionQueue",
                "must be at least 1",
            ));
        }
        for key in self.librdkafka.keys() {
            if is_typed_property(key) || RESERVED_PROPERTIES.contains(&key.as_str()) {
                return Err(ConfigError::invalid(
                    "kafka.librdkafka",
                    format!(
                        "{key:?} is set by Strait from the typed fields (bootstrap, tls, sasl, qos0Acks)"
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Whether s-proxy creates the topics of `${params}` routes as clients publish to them.
    pub fn creates_routed_topics(&self) -> bool {
        self.create_routed_topics.unwrap_or(self.create_topics)
    }

    /// The connection part of the section, as every Kafka client of s-proxy uses it.
    pub fn connection(&self) -> KafkaConnection {
        KafkaConnection {
            bootstrap: self.bootstrap.clone(),
            tls: self.tls.clone(),
            sasl: self.sasl.clone(),
            properties: self.librdkafka.clone(),
        }
    }
}

/// Set by s-proxy itself, besides bootstrap, TLS and SASL.
const RESERVED_PROPERTIES: &[&str] = &["acks", "enable.idempotence", "partitioner", "group.id"];

/// The `{name}` levels of a topic pattern (an MQTT filter where whole levels may be `{name}`).
pub fn pattern_params(pattern: &str) -> Result<Vec<String>, String> {
    if pattern.is_empty() {
        return Err("a topic pattern must not be empty".into());
    }
    let mut params = Vec::new();
    let levels: Vec<&str> = pattern.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        if let Some(name) = level.strip_prefix('{').and_then(|l| l.strip_suffix('}')) {
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("{pattern:?}: bad parameter {level:?}"));
            }
            params.push(name.to_string());
        } else if *level == "#" && i + 1 != levels.len() {
            return Err(format!("{pattern:?}: '#' must be the last level"));
        } else if *level != "+" && *level != "#" && level.contains(['+', '#', '{', '}']) {
            return Err(format!(
                "{pattern:?}: level {level:?} mixes text and wildcards"
            ));
        }
    }
    Ok(params)
}

/// A route's `topicPattern`, which must match the whole rendered topic name.
pub fn route_topic_pattern(pattern: &str) -> Result<regex::Regex, regex::Error> {
    regex::Regex::new(&format!("^(?:{pattern})$"))
}

/// Whether `name` is a legal Kafka topic name (letters, digits, `.`, `_`, `-`; at most 249).
pub fn is_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name.chars().all(is_topic_char)
}

/// A character Kafka allows in a topic name.
pub fn is_topic_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// Kafka's longest topic name.
pub const MAX_TOPIC_NAME: usize = 249;

fn check_topic_name(field: &'static str, name: &str) -> Result<(), ConfigError> {
    if is_topic_name(name) {
        Ok(())
    } else {
        Err(ConfigError::invalid(
            field,
            format!("{name:?} is not a Kafka topic name (letters, digits, '.', '_', '-')"),
        ))
    }
}

/// The three topics of MQTT over Kafka.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MqttKafkaTopics {
    /// Every PUBLISH (key = MQTT topic name).
    #[serde(default = "default_messages")]
    pub messages: String,
    /// Retained messages (compacted; key = MQTT topic name; empty value clears).
    #[serde(default = "default_retained")]
    pub retained: String,
    /// Sessions (compacted; key = client id).
    #[serde(default = "default_sessions")]
    pub sessions: String,
}

impl Default for MqttKafkaTopics {
    fn default() -> Self {
        Self {
            messages: default_messages(),
            retained: default_retained(),
            sessions: default_sessions(),
        }
    }
}

/// Partitions and replication factor of topics s-proxy creates.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NewTopics {
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    pub replication_factor: i32,
}

impl Default for NewTopics {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            replication_factor: default_replication(),
        }
    }
}

/// A topic filter routed to another messages topic.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MqttKafkaRoute {
    /// MQTT topic filter whose levels may be `{param}` (one level each), `+` or a final `#`.
    #[schemars(length(min = 1, max = 65535))]
    pub topic: String,
    /// Kafka messages topic; may use `${params.NAME}`. Each parameter value must be letters,
    /// digits, `.`, `_` or `-` and the name at most 249 characters, or the PUBLISH is refused
    /// (MQTT 5: 0x90 Topic Name invalid).
    #[schemars(length(min = 1, max = 1024))]
    pub messages: String,
    /// Partitions of this route's topics when Strait creates them (default `newTopics.partitions`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100000))]
    pub partitions: Option<i32>,
    /// Kafka topic configs of this route's topics when Strait creates them, e.g.
    /// `retention.ms: "86400000"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topic_config: BTreeMap<String, String>,
    /// A regular expression the whole rendered topic name of a `${params}` route must match,
    /// e.g. `telemetry\.dev-[0-9]+`; other PUBLISHes are refused (MQTT 5: 0x87 Not authorized).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub topic_pattern: Option<String>,
}

fn default_true() -> bool {
    true
}
fn default_messages() -> String {
    "mqtt-messages".into()
}
fn default_retained() -> String {
    "mqtt-retained".into()
}
fn default_sessions() -> String {
    "mqtt-sessions".into()
}
fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_max_routed_topics() -> u32 {
    1000
}
fn default_session_queue() -> usize {
    1024
}
fn default_replica_lease() -> Duration {
    Duration::from_secs(15)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> KafkaConfig {
        serde_saphyr::from_str(yaml).unwrap()
    }

    #[test]
    fn minimal_section_gets_zillas_topic_names() {
        let config = parse("bootstrap: localhost:9092");
        assert_eq!(config, KafkaConfig::new("localhost:9092".into()));
        assert_eq!(config.topics.messages, "mqtt-messages");
        assert_eq!(config.topics.retained, "mqtt-retained");
        assert_eq!(config.topics.sessions, "mqtt-sessions");
        assert_eq!(config.qos0_acks, Acks::Leader);
        config.check().unwrap();
    }

    #[test]
    fn full_section_round_trips() {
        let config = parse(
            "bootstrap: 'k1:9092,k2:9093'\n\
             tls: { ca: /ca.crt }\n\
             sasl: { mechanism: SCRAM-SHA-512, username: u, passwordFile: /pw }\n\
             topics: { messages: m, retained: r, sessions: s }\n\
             createTopics: false\n\
             qos0Acks: none\n\
             routes: [ { topic: 'sensors/{id}/#', messages: 'sensors.${params.id}', partitions: 6, \
               topicConfig: { retention.ms: '3600000' }, topicPattern: 'sensors\\.dev-[0-9]+' } ]\n\
             createRoutedTopics: true\n\
             maxRoutedTopics: 10\n\
             clients: [ 'place/{identity}/#' ]\n\
             librdkafka: { linger.ms: '5' }",
        );
        config.check().unwrap();
        assert_eq!(config.qos0_acks, Acks::None);
        assert!(config.creates_routed_topics() && !config.create_topics);
        assert_eq!(config.max_routed_topics, 10);
        assert_eq!(config.routes[0].partitions, Some(6));
        assert_eq!(
            config.sasl.as_ref().unwrap().mechanism,
            SaslMechanism::ScramSha512
        );
        let yaml = crate::to_yaml(&config);
        assert_eq!(parse(&yaml), config, "{yaml}");
    }

    #[test]
    fn invalid_sections_name_the_field() {
        let base = || KafkaConfig::new("localhost:9092".into());
        let cases: Vec<(KafkaConfig, &str)> = vec![
            (KafkaConfig::new("localhost".into()), "kafka.bootstrap"),
            (KafkaConfig::new("a:1,b".into()), "kafka.bootstrap"),
            (
                {
                    let mut c = base();
                    c.topics.messages = "bad topic".into();
                    c
                },
                "kafka.topics.messages",
            ),
            (
                {
                    let mut c = base();
                    c.topics.sessions = c.topics.retained.clone();
                    c
                },
                "kafka.topics",
            ),
            (
                {
                    let mut c = base();
                    c.tls = Some(KafkaTls::default());
                    c
                },
                "kafka.tls.ca",
            ),
            (
                {
                    let mut c = base();
                    c.routes.push(MqttKafkaRoute {
                        topic: "a/{x}".into(),
                        messages: "t.${params.y}".into(),
                        ..Default::default()
                    });
                    c
                },
                "kafka.routes.messages",
            ),
            (
                {
                    let mut c = base();
                    c.routes.push(MqttKafkaRoute {
                        topic: "a/#/b".into(),
                        messages: "t".into(),
                        ..Default::default()
                    });
                    c
                },
                "kafka.routes.topic",
            ),
            (
                {
                    let mut c = base();
                    c.routes.push(MqttKafkaRoute {
                        topic: "a/{x}".into(),
                        messages: "t.${params.x}".into(),
                        topic_pattern: Some("t.(".into()),
                        ..Default::default()
                    });
                    c
                },
                "kafka.routes.topicPattern",
            ),
            (
                {
                    let mut c = base();
                    c.routes.push(MqttKafkaRoute {
                        topic: "a/{x}".into(),
                        messages: "t.${params.x}".into(),
                        partitions: Some(0),
                        ..Default::default()
                    });
                    c
                },
                "kafka.routes.partitions",
            ),
            (
                {
                    let mut c = base();
                    c.clients.push("place/{id}/#".into());
                    c
                },
                "kafka.clients",
            ),
            (
                {
                    let mut c = base();
                    c.librdkafka.insert("acks".into(), "0".into());
                    c
                },
                "kafka.librdkafka",
            ),
            (
                {
                    let mut c = base();
                    c.new_topics.partitions = 0;
                    c
                },
                "kafka.newTopics.partitions",
            ),
        ];
        for (config, field) in cases {
            match config.check() {
                Err(ConfigError::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{config:?}: expected an error naming {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn unknown_fields_are_errors() {
        let error = serde_saphyr::from_str::<KafkaConfig>("bootstrap: a:1\ntopic: {}")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `topic`"), "{error}");
    }
}
