//! `strait-proxy s-proxy`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strait_config::relay::{BrokerConfig, KafkaConfig, Upstream};
use strait_config::{ConfigError, SProxyConfig, Validate as _};

use super::{KafkaSecurityArgs, ServerTlsArgs, overlay};

/// `--upstream`: what serves the sessions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum UpstreamArg {
    /// A real MQTT broker (--broker) holds sessions and messages.
    Broker,
    /// Kafka (--kafka) is the broker: messages, retained messages and sessions live in topics.
    Kafka,
}

/// `strait-proxy s-proxy`: serve MqttRelay streams from r-proxy and drive the upstream.
///
/// Settings come from `--config FILE` (YAML, `strait_config::SProxyConfig`), then flags given on
/// the command line replace single values; defaults are shown in brackets.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  strait-proxy s-proxy --listen 0.0.0.0:50516 \
    --upstream broker --broker mosquitto:1883\n  \
    strait-proxy s-proxy --upstream kafka --kafka kafka:9092\n  \
    strait-proxy s-proxy --upstream kafka --kafka kafka:9093 --kafka-tls-ca ca.crt \
    --kafka-sasl-mechanism SCRAM-SHA-512 --kafka-sasl-username strait \
    --kafka-sasl-password-file /etc/strait/kafka/password\n  \
    strait-proxy s-proxy --config /etc/strait/s-proxy.yaml\n\n\
    Config file:\n  \
    listen: 0.0.0.0:50516\n  \
    tls: { cert: tls.crt, key: tls.key, clientCa: ca.crt }\n  \
    upstream: broker\n  \
    broker: { address: mosquitto:8883, tls: { ca: ca.crt }, serverName: mosquitto, connectTimeout: 5s }\n  \
    maxPacketSize: 1048576\n  \
    drainTimeout: 10s"
)]
pub struct SProxyArgs {
    /// YAML config file; flags given on the command line override its values.
    #[arg(long, env = "STRAIT_CONFIG")]
    pub config: Option<PathBuf>,

    /// gRPC listener for r-proxy's relay streams [default: 127.0.0.1:50516].
    #[arg(long, env = "STRAIT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// TLS for the relay link (--tls-cert/--tls-key; --tls-client-ca requires r-proxy certificates).
    #[command(flatten)]
    pub tls: ServerTlsArgs,

    /// What serves the sessions [default: broker].
    #[arg(long, value_enum)]
    pub upstream: Option<UpstreamArg>,

    /// MQTT broker address (HOST:PORT) for --upstream broker.
    #[arg(long, env = "STRAIT_BROKER")]
    pub broker: Option<String>,

    /// Kafka bootstrap servers (HOST:PORT[,HOST:PORT…]) for --upstream kafka; topics and routes
    /// come from the config file's `kafka` section, TLS and SASL from it or the --kafka-tls-*
    /// and --kafka-sasl-* flags.
    #[arg(long, env = "STRAIT_KAFKA")]
    pub kafka: Option<String>,

    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,

    /// Connect to the broker over TLS, trusting this CA bundle.
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,

    /// Client certificate presented to the broker (mutual TLS; needs --broker-ca).
    #[arg(long)]
    pub broker_cert: Option<PathBuf>,

    /// Private key of --broker-cert.
    #[arg(long)]
    pub broker_key: Option<PathBuf>,

    /// Name checked against the broker's certificate [default: the host of --broker].
    #[arg(long)]
    pub broker_server_name: Option<String>,

    /// How long connecting to the broker may take before the client is refused with 0x88
    /// [default: 5s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub broker_connect_timeout: Option<Duration>,

    /// How long QoS 0 messages from the broker may be held to relay more of them in one frame,
    /// when they arrive in a steady trickle; `0s` relays each read at once [default: 1ms].
    /// Acknowledgements, QoS 1 and 2 messages and lone messages are never held.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub broker_qos0_batching: Option<Duration>,

    /// Largest MQTT packet accepted from the upstream towards a client, in bytes
    /// [default: 1048576].
    #[arg(long)]
    pub max_packet_size: Option<u32>,

    /// How long to wait for sessions to close on shutdown before dropping them [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,
}

impl SProxyArgs {
    /// The config file (or the defaults) with the command line laid over it, validated.
    pub fn into_config(self) -> Result<SProxyConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => strait_config::load(path)?,
            None => SProxyConfig::default(),
        };
        config.listen = self.listen.unwrap_or(config.listen);
        self.tls.apply(&mut config.tls);
        match self.upstream {
            Some(UpstreamArg::Broker) => config.upstream = Upstream::Broker,
            Some(UpstreamArg::Kafka) => config.upstream = Upstream::Kafka,
            None => {}
        }
        if let Some(bootstrap) = self.kafka {
            match &mut config.kafka {
                Some(kafka) => kafka.bootstrap = bootstrap,
                None => config.kafka = Some(Box::new(KafkaConfig::new(bootstrap))),
            }
        }
        if self.kafka_security.any() {
            let Some(kafka) = &mut config.kafka else {
                return Err(ConfigError::invalid(
                    "kafka",
                    "--kafka-tls-*/--kafka-sasl-* options need Kafka's address: pass --kafka HOST:PORT",
                ));
            };
            self.kafka_security.apply(&mut kafka.tls, &mut kafka.sasl)?;
        }
        if let Some(address) = self.broker {
            match &mut config.broker {
                Some(broker) => broker.address = address,
                None => config.broker = Some(BrokerConfig::new(address)),
            }
        }
        let broker_tls = [&self.broker_ca, &self.broker_cert, &self.broker_key];
        let sets_broker = broker_tls.iter().any(|f| f.is_some())
            || self.broker_server_name.is_some()
            || self.broker_connect_timeout.is_some()
            || self.broker_qos0_batching.is_some();
        if sets_broker {
            let Some(broker) = &mut config.broker else {
                return Err(ConfigError::invalid(
                    "broker",
                    "--broker-* options need the broker's address: pass --broker HOST:PORT",
                ));
            };
            if broker_tls.iter().any(|f| f.is_some()) {
                let tls = broker.tls.get_or_insert_with(Default::default);
                overlay(&mut tls.ca, self.broker_ca);
                overlay(&mut tls.cert, self.broker_cert);
                overlay(&mut tls.key, self.broker_key);
            }
            overlay(&mut broker.server_name, self.broker_server_name);
            broker.connect_timeout = self
                .broker_connect_timeout
                .unwrap_or(broker.connect_timeout);
            broker.qos0_batching = self.broker_qos0_batching.unwrap_or(broker.qos0_batching);
        }
        config.max_packet_size = self.max_packet_size.unwrap_or(config.max_packet_size);
        config.drain_timeout = self.drain_timeout.unwrap_or(config.drain_timeout);
        config.validate()?;
        Ok(config)
    }
}
