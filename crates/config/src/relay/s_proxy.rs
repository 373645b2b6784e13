//! s-proxy's config: the gRPC end that drives the upstream broker (or Kafka).

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    KafkaConfig, LOCALHOST, check_packet_size, default_drain_timeout, default_max_packet_size,
};
use crate::tls::{ClientTls, ServerTls};
use crate::{ConfigError, Validate};

/// `strait-proxy s-proxy --config FILE`.
///
/// ```yaml
/// listen: 0.0.0.0:50516
/// tls: { cert: /etc/strait/tls/tls.crt, key: /etc/strait/tls/tls.key, clientCa: /etc/strait/tls/ca.crt }
/// upstream: broker
/// broker: { address: mosquitto:1883, connectTimeout: 5s }
/// ```
///
/// or, with Kafka as the broker (see [`KafkaConfig`]):
///
/// ```yaml
/// upstream: kafka
/// kafka: { bootstrap: kafka:9092, topics: { messages: mqtt-messages } }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SProxyConfig {
    /// gRPC listener for r-proxy's relay streams.
    #[serde(default = "default_s_proxy_listen")]
    pub listen: SocketAddr,
    /// TLS for the relay link; `clientCa` requires r-proxy to present a certificate.
    #[serde(default)]
    pub tls: ServerTls,
    /// What serves the sessions.
    #[serde(default)]
    pub upstream: Upstream,
    /// The MQTT broker, for `upstream: broker`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerConfig>,
    /// Kafka as the broker, for `upstream: kafka` (boxed: it is the largest section).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<Box<KafkaConfig>>,
    /// Largest MQTT packet accepted from the upstream towards a client, in bytes.
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: u32,
    /// How long to wait for sessions to close on shutdown before dropping them.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
}

impl Default for SProxyConfig {
    fn default() -> Self {
        Self {
            listen: default_s_proxy_listen(),
            tls: ServerTls::default(),
            upstream: Upstream::default(),
            broker: None,
            kafka: None,
            max_packet_size: default_max_packet_size(),
            drain_timeout: default_drain_timeout(),
        }
    }
}

/// What holds sessions and messages behind s-proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Upstream {
    /// A real MQTT broker (`broker`).
    #[default]
    Broker,
    /// Kafka is the broker (`kafka`): messages, retained messages and sessions live in topics.
    Kafka,
}

/// s-proxy's connection to an MQTT broker, one per client session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct BrokerConfig {
    /// `HOST:PORT` of the broker.
    pub address: String,
    /// Connect over TLS, trusting `tls.ca` (`cert` and `key` for mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ClientTls>,
    /// Name checked against the broker's certificate (default: the host of `address`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// How long connecting to the broker may take before the client is refused (0x88).
    #[serde(default = "default_broker_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// How long s-proxy may hold QoS 0 messages from the broker to send more of them together,
    /// when they arrive in a steady trickle (`0s`: never). Brokers write each packet on its own,
    /// and relaying each as it comes costs a wake-up and a relay frame per packet; waiting this
    /// long after a read that brought only QoS 0 PUBLISHes lets a busy stream build up into one
    /// frame. Anything else (acknowledgements, QoS 1 and 2, a lone message) is never held.
    #[serde(default = "default_qos0_batching", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub qos0_batching: Duration,
}

impl BrokerConfig {
    pub fn new(address: String) -> Self {
        Self {
            address,
            tls: None,
            server_name: None,
            connect_timeout: default_broker_connect_timeout(),
            qos0_batching: default_qos0_batching(),
        }
    }
}

impl Validate for SProxyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        self.tls.check("tls")?;
        check_packet_size("maxPacketSize", self.max_packet_size)?;
        match self.upstream {
            Upstream::Broker => {
                let Some(broker) = &self.broker else {
                    return Err(ConfigError::invalid(
                        "broker",
                        "upstream is broker: set broker.address (HOST:PORT)",
                    ));
                };
                match broker.address.rsplit_once(':') {
                    Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {}
                    _ => {
                        return Err(ConfigError::invalid(
                            "broker.address",
                            format!("{:?} is not HOST:PORT", broker.address),
                        ));
                    }
                }
                if let Some(tls) = &broker.tls {
                    if tls.ca.is_none() {
                        return Err(ConfigError::invalid(
                            "broker.tls.ca",
                            "TLS to the broker needs the CA that signs its certificate",
                        ));
                    }
                    tls.check("broker.tls")?;
                }
            }
            Upstream::Kafka => {
                let Some(kafka) = &self.kafka else {
                    return Err(ConfigError::invalid(
                        "kafka",
                        "upstream is kafka: set kafka.bootstrap (HOST:PORT)",
                    ));
                };
                kafka.check()?;
            }
        }
        Ok(())
    }
}

fn default_broker_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
/// One tick of tokio's timer, the shortest wait it offers.
fn default_qos0_batching() -> Duration {
    Duration::from_millis(1)
}
fn default_s_proxy_listen() -> SocketAddr {
    SocketAddr::new(LOCALHOST, 50516)
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn s_proxy_needs_a_broker_address() {
        let config: SProxyConfig = parse("upstream: broker").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("broker"), "{error}");
        let config: SProxyConfig = parse("broker: { address: mosquitto }").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("broker.address"), "{error}");
        let config: SProxyConfig =
            parse("broker: { address: 'mosquitto:1883', connectTimeout: 2s }").unwrap();
        config.validate().unwrap();
        assert_eq!(
            config.broker.unwrap().connect_timeout,
            Duration::from_secs(2)
        );
    }

    #[test]
    fn s_proxy_kafka_upstream_needs_a_kafka_section() {
        let config: SProxyConfig = parse("upstream: kafka").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka"), "{error}");
        let config: SProxyConfig =
            parse("upstream: kafka\nkafka: { bootstrap: 'localhost:9092' }").unwrap();
        config.validate().unwrap();
        let config: SProxyConfig = parse("upstream: kafka\nkafka: { bootstrap: nohost }").unwrap();
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("kafka.bootstrap"), "{error}");
    }
}
