//! gRPC over Kafka: grpc-kafka (the gRPC server clients call; calls become records) and
//! kafka-grpc (the consumer group that calls the real service and writes the answers).
//!
//! Record layout and header names follow Zilla's (`zilla:service`, `zilla:method`,
//! `zilla:reply-to`, `zilla:correlation-id`, `meta:*`), so a Zilla deployment can switch.
//!
//! One file per proxy's config (`grpc_kafka`, `kafka_grpc`; `auth` for grpc-kafka's callers);
//! here what both share: the correlation header names, topic and method-pattern rules and
//! common defaults.

mod auth;
mod grpc_kafka;
mod kafka_grpc;

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;
pub use crate::kafka::{Acks, KafkaConnection, KafkaSasl, KafkaTls, SaslMechanism};
pub use auth::{ForwardMetadata, GrpcAuth, GrpcJwtAuth};
pub use grpc_kafka::{
    DEFAULT_MESSAGE_ID_FIELD, FetchFilter, FetchRoute, GrpcKafkaConfig, GrpcKafkaLimits, GrpcRoute,
    ProduceRoute, Protos, Reliability,
};
pub use kafka_grpc::{KafkaGrpcConfig, KafkaRoute, Retries, ZillaGroup};

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
fn default_max_message_size() -> usize {
    4 * 1024 * 1024
}
fn default_call_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_drain_timeout() -> Duration {
    Duration::from_secs(10)
}

#[cfg(test)]
fn parse<T: serde::de::DeserializeOwned>(yaml: &str) -> T {
    serde_saphyr::from_str(yaml).unwrap()
}

#[cfg(test)]
fn field_of(result: Result<(), ConfigError>) -> &'static str {
    match result {
        Err(ConfigError::Invalid { field, .. }) => field,
        other => panic!("expected an invalid-field error, got {other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
