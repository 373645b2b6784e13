//! `kafka.limits`: what one MQTT client may make s-proxy hold when Kafka is the broker. Each
//! limit answers with an MQTT reason code when hit and is counted
//! (`strait_mqtt_kafka_limit_hits_total{limit}`), so a misbehaving device costs a bounded
//! amount of threads, consumers and memory however often it tries.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// ```yaml
/// limits:
///   maxSubscriptions: 100
///   maxFiltersPerSubscribe: 32
///   maxSharedSubscriptions: 8
///   maxSharedGroups: 100
///   receiveMaximum: 256
///   maxSessionExpiry: 7d
///   maxCatchUps: 16
///   maxRetainedMessages: 100000
///   maxRetainedBytes: 268435456
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SessionLimits {
    /// Subscriptions one session may hold; a SUBSCRIBE adding one more gets 0x97 Quota
    /// exceeded for that filter (3.1.1: 0x80).
    #[serde(default = "default_max_subscriptions")]
    #[schemars(range(min = 1, max = 100000))]
    pub max_subscriptions: u32,
    /// Filters one SUBSCRIBE may carry; the ones beyond get 0x97 (3.1.1: 0x80). Each filter
    /// may send every retained message it matches, so this bounds what one packet can ask for.
    #[serde(default = "default_max_filters_per_subscribe")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_filters_per_subscribe: u32,
    /// Shared subscriptions (`$share/GROUP/FILTER`) one session may hold; one more gets 0x97.
    #[serde(default = "default_max_shared_subscriptions")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_shared_subscriptions: u32,
    /// Shared subscription groups one s-proxy process serves at once. Each is a Kafka consumer
    /// group with its own consumer and thread, so a SUBSCRIBE that would start one more gets
    /// 0x97; joining a group already served here is always possible.
    #[serde(default = "default_max_shared_groups")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_shared_groups: u32,
    /// QoS 1 and 2 PUBLISHes a client may have unacknowledged (MQTT 5 Receive Maximum,
    /// announced in CONNACK). An MQTT 5 client that sends more is disconnected with 0x93
    /// Receive Maximum exceeded; a 3.1.1 client is simply not read until acknowledgements
    /// catch up.
    #[serde(default = "default_receive_maximum")]
    #[schemars(range(min = 1, max = 65535))]
    pub receive_maximum: u16,
    /// Longest a disconnected session is kept. A client asking for more (3.1.1 `cleanSession:
    /// false` asks for forever) gets this; MQTT 5 clients are told in CONNACK. Expired
    /// sessions are removed from the sessions topic, so it cannot grow without end.
    #[serde(default = "default_max_session_expiry", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_session_expiry: Duration,
    /// Reconnecting persistent sessions reading what they missed at once, per process (each
    /// is a Kafka consumer on a thread of its own); the others wait their turn before their
    /// CONNACK's first delivery.
    #[serde(default = "default_max_catch_ups")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_catch_ups: u32,
    /// Sessions this s-proxy sets up per second (`0`: no limit). Each costs a session record,
    /// a read of the sessions table and, resumed, a catch-up reader: a reconnect storm doing
    /// all of them at once takes the CPU the open sessions need. A burst of a tenth of a
    /// second's worth goes at once; later CONNECTs wait their turn, and one whose turn is more
    /// than 10 s away gets CONNACK 0x9F Connection rate exceeded (3.1.1: return code 3). Sized
    /// for a 2-core box that also runs Kafka (docs/benchmarks.md, `strait-bench abuse`); raise
    /// it where s-proxy and Kafka have cores of their own.
    #[serde(default = "default_max_connect_rate")]
    pub max_connect_rate: u32,
    /// Retained messages (distinct topics) every s-proxy process holds in memory. A RETAIN
    /// PUBLISH that would set one more is refused with 0x97 (3.1.1: the connection closes);
    /// replacing or clearing one always works.
    #[serde(default = "default_max_retained_messages")]
    #[schemars(range(min = 1))]
    pub max_retained_messages: u64,
    /// Bytes of retained topics and payloads every s-proxy process holds in memory; a RETAIN
    /// PUBLISH beyond them is refused with 0x97.
    #[serde(default = "default_max_retained_bytes")]
    #[schemars(range(min = 1))]
    pub max_retained_bytes: u64,
}

impl Default for SessionLimits {
    fn default() -> Self {
        Self {
            max_subscriptions: default_max_subscriptions(),
            max_filters_per_subscribe: default_max_filters_per_subscribe(),
            max_shared_subscriptions: default_max_shared_subscriptions(),
            max_shared_groups: default_max_shared_groups(),
            receive_maximum: default_receive_maximum(),
            max_session_expiry: default_max_session_expiry(),
            max_catch_ups: default_max_catch_ups(),
            max_connect_rate: default_max_connect_rate(),
            max_retained_messages: default_max_retained_messages(),
            max_retained_bytes: default_max_retained_bytes(),
        }
    }
}

impl SessionLimits {
    /// Checks the section; `kafka.limits` is its name in errors.
    pub fn check(&self) -> Result<(), ConfigError> {
        for (field, value) in [
            ("kafka.limits.maxSubscriptions", self.max_subscriptions),
            (
                "kafka.limits.maxFiltersPerSubscribe",
                self.max_filters_per_subscribe,
            ),
            ("kafka.limits.maxCatchUps", self.max_catch_ups),
            ("kafka.limits.receiveMaximum", self.receive_maximum.into()),
        ] {
            if value == 0 {
                return Err(ConfigError::invalid(field, "must be at least 1"));
            }
        }
        if self.max_retained_messages == 0 || self.max_retained_bytes == 0 {
            return Err(ConfigError::invalid(
                "kafka.limits.maxRetainedMessages",
                "maxRetainedMessages and maxRetainedBytes must be at least 1",
            ));
        }
        if self.max_session_expiry > Duration::from_secs(u32::MAX.into()) {
            return Err(ConfigError::invalid(
                "kafka.limits.maxSessionExpiry",
                "must be at most 4294967295s (MQTT's longest)",
            ));
        }
        Ok(())
    }

    /// [`SessionLimits::max_session_expiry`] in seconds, as MQTT counts it.
    pub fn max_session_expiry_seconds(&self) -> u32 {
        u32::try_from(self.max_session_expiry.as_secs()).unwrap_or(u32::MAX)
    }
}

fn default_max_connect_rate() -> u32 {
    50
}
fn default_max_subscriptions() -> u32 {
    100
}
fn default_max_filters_per_subscribe() -> u32 {
    32
}
fn default_max_shared_subscriptions() -> u32 {
    8
}
fn default_max_shared_groups() -> u32 {
    100
}
fn default_receive_maximum() -> u16 {
    256
}
fn default_max_session_expiry() -> Duration {
    Duration::from_secs(7 * 24 * 3600)
}
fn default_max_catch_ups() -> u32 {
    16
}
fn default_max_retained_messages() -> u64 {
    100_000
}
fn default_max_retained_bytes() -> u64 {
    256 * 1024 * 1024
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_a_partial_section() {
        let limits: SessionLimits =
            serde_saphyr::from_str("maxSharedGroups: 3\nmaxSessionExpiry: 1h").unwrap();
        assert_eq!(limits.max_shared_groups, 3);
        assert_eq!(limits.max_session_expiry_seconds(), 3600);
        assert_eq!(limits.max_subscriptions, 100);
        limits.check().unwrap();
        assert_eq!(
            SessionLimits::default().max_session_expiry_seconds(),
            604_800
        );
    }

    #[test]
    fn zero_where_one_is_needed_names_the_field() {
        let limits: SessionLimits = serde_saphyr::from_str("receiveMaximum: 0").unwrap();
        let error = limits.check().unwrap_err().to_string();
        assert!(error.contains("kafka.limits.receiveMaximum"), "{error}");
        let unknown = serde_saphyr::from_str::<SessionLimits>("maxSubscription: 5");
        assert!(unknown.is_err(), "a misspelt limit is an error");
    }
}
