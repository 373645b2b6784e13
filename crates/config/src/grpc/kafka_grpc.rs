//! kafka-grpc's config: the consumer group that calls the real service and writes the answers.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    CorrelationHeaders, check_method_pattern, check_topic, default_call_timeout,
    default_drain_timeout, default_max_message_size,
};
use crate::kafka::{Acks, KafkaConnection};
use crate::tls::ClientTls;
use crate::{ConfigError, Validate};

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
fn default_dedup_max_bytes() -> usize {
    64 * 1024 * 1024
}
fn default_dedup_max_answer_bytes() -> usize {
    256 * 1024
}

#[cfg(test)]
mod tests {
    use super::super::{field_of, parse};
    use super::*;

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
}
