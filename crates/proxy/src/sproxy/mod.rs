//! s-proxy: the gRPC end of the relay. For each `MqttRelay.Session` stream it drives an upstream
//! on the client's behalf: a real MQTT broker (this module's `broker` upstream).

mod broker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strait_mqtt_kafka::{KafkaUpstream, TopicCheck};
use strait_relay::v1::{ClientFrame, ServerFrame};
use strait_relay::{Incoming, Opening, RelayServer, SessionHandler};
use strait_runtime::Process;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::task::TaskTracker;
use tonic::Status;

use crate::cli::KafkaSecurityArgs;
use crate::cli::{ServerTlsArgs, overlay};
use strait_config::relay::{BrokerConfig, KafkaConfig, Upstream};
use strait_config::tls::ServerTls;
use strait_config::{ConfigError, SProxyConfig, Validate};
use strait_relay::metrics::RelayMetrics;
use strait_relay::rules::{FRAME_QUEUE, link, max_frame_size};

/// The readiness flag this role sets once it listens (registered by `ProcessArgs::start`).
pub const READINESS: &str = "listener";

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

/// What serves the sessions of this process.
pub(crate) enum Backend {
    Broker(Arc<broker::BrokerTarget>),
    Kafka(Arc<KafkaUpstream>),
}

pub(crate) struct Context {
    pub backend: Backend,
    pub metrics: RelayMetrics,
    pub max_packet_size: usize,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub sessions: TaskTracker,
    /// How far behind s-proxy is in reading the broker, and whether it is short of CPU (see
    /// [`crate::drain`]).
    pub backlog: Arc<crate::drain::Backlog>,
}

struct RelayService {
    ctx: Arc<Context>,
}

impl SessionHandler for RelayService {
    type Outbound = ReceiverStream<Result<ServerFrame, Status>>;

    async fn session(&self, mut inbound: Incoming<ClientFrame>) -> Result<Self::Outbound, Status> {
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("relay stream ended before its first frame"))?;
        let opening = Opening::parse(first)?;
        let (to_client, outbound) = mpsc::channel(FRAME_QUEUE);
        let ctx = self.ctx.clone();
        let span = tracing::info_span!(
            "session",
            session_id = %opening.open.session_id,
            client_id = %opening.connect.client_id,
            client = %opening.open.client_address,
            identity = tracing::field::Empty,
        );
        if let Some(identity) = &opening.open.identity {
            span.record("identity", identity.subject.as_str());
        }
        match &self.ctx.backend {
            Backend::Broker(target) => self.ctx.sessions.spawn(tracing::Instrument::instrument(
                broker::run(opening, inbound, to_client, ctx, target.clone()),
                span,
            )),
            Backend::Kafka(upstream) => self.ctx.sessions.spawn(tracing::Instrument::instrument(
                strait_mqtt_kafka::run(
                    opening,
                    inbound,
                    to_client,
                    ctx.metrics.clone(),
                    upstream.clone(),
                ),
                span,
            )),
        };
        Ok(ReceiverStream::new(outbound))
    }
}

/// Binds the gRPC listener and returns its address and the future serving it until shutdown.
/// `topic_check` is `Verify` except for `dev`'s embedded Kafka (see [`TopicCheck`]).
pub async fn start(
    config: SProxyConfig,
    process: &Process,
    topic_check: TopicCheck,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>> + use<>)> {
    let ready = process.health.flag(READINESS);
    let backend = match config.upstream {
        Upstream::Broker => {
            let target = config
                .broker
                .clone()
                .context("broker: upstream is broker but no broker address is set")?;
            let broker_tls = match &target.tls {
                Some(tls) => {
                    let ca = tls.ca.as_deref().context("broker.tls.ca is required")?;
                    Some(strait_tls::client_config(tls, ca).context("loading broker.tls")?)
                }
                None => None,
            };
            Backend::Broker(Arc::new(broker::BrokerTarget::new(
                target.address,
                broker_tls,
                target.server_name,
                target.connect_timeout,
                target.qos0_batching,
            )?))
        }
        Upstream::Kafka => {
            let kafka = config
                .kafka
                .clone()
                .context("kafka: upstream is kafka but no bootstrap servers are set")?;
            Backend::Kafka(
                KafkaUpstream::start(*kafka, process.shutdown.token(), topic_check)
                    .await
                    .context("starting the Kafka upstream")?,
            )
        }
    };
    let sessions = TaskTracker::new();
    let ctx = Arc::new(Context {
        backend,
        metrics: RelayMetrics::register(&process.metrics, "s-proxy")?,
        max_packet_size: config.max_packet_size as usize,
        shutdown: process.shutdown.token(),
        sessions: sessions.clone(),
        backlog: Arc::default(),
    });
    if matches!(ctx.backend, Backend::Broker(_)) {
        // Only broker sessions hold writes (crate::drain); Kafka sessions need no sampling.
        tokio::spawn(ctx.backlog.clone().watch_cpu(process.shutdown.token()));
    }
    let max_message = max_frame_size(config.max_packet_size);
    let service = RelayServer::new(RelayService { ctx: ctx.clone() }, max_message);

    let mut server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_connection_window_size(link::CONNECTION_WINDOW)
        .initial_stream_window_size(link::STREAM_WINDOW)
        .max_frame_size(link::MAX_FRAME);
    if let Some(tls) = tls_config(&config.tls)? {
        server = server
            .tls_config(tls)
            .context("relay link TLS settings (tls)")?;
    }
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for r-proxy on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let shutdown = process.shutdown.token();
    let drain_timeout = config.drain_timeout;
    let flush_ctx = ctx.clone();
    let serving = async move {
        ready.set(true);
        // Sessions end themselves on shutdown (telling r-proxy 0x8B); the server stops once
        // they are drained or the deadline passes.
        let stop = async move {
            shutdown.cancelled().await;
            ready.set(false);
            sessions.close();
            tracing::info!(
                open = sessions.len(),
                ?drain_timeout,
                "s-proxy draining sessions"
            );
            if !strait_runtime::drain(drain_timeout, sessions.wait()).await {
                tracing::warn!(
                    left = sessions.len(),
                    "drain deadline passed; dropping sessions"
                );
            }
            if let Backend::Kafka(upstream) = &flush_ctx.backend {
                upstream.flush(Duration::from_secs(5)).await;
            }
        };
        server
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
            .await
            .context("s-proxy gRPC server failed")
    };
    Ok((local_addr, serving))
}

pub async fn run(config: SProxyConfig, process: &Process) -> anyhow::Result<()> {
    let broker = config.broker.as_ref().map(|b| b.address.clone());
    let kafka = config.kafka.as_ref().map(|k| k.bootstrap.clone());
    let upstream = config.upstream;
    let (addr, serving) = match start(config, process, TopicCheck::Verify).await {
        // Stopped while waiting for Kafka (e.g. a wrong password): a requested stop, not a failure.
        Err(error) if process.shutdown.is_triggered() => {
            tracing::info!(
                error = format!("{error:#}"),
                "s-proxy stopped before it served"
            );
            return Ok(());
        }
        started => started?,
    };
    match upstream {
        Upstream::Broker => {
            tracing::info!(%addr, broker = broker.as_deref().unwrap_or("-"), "s-proxy listening")
        }
        Upstream::Kafka => {
            tracing::info!(%addr, kafka = kafka.as_deref().unwrap_or("-"), "s-proxy listening (upstream kafka)")
        }
    }
    serving.await
}

fn tls_config(files: &ServerTls) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
    let (Some(cert), Some(key)) = (&files.cert, &files.key) else {
        return Ok(None);
    };
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let mut config = tonic::transport::ServerTlsConfig::new().identity(
        tonic::transport::Identity::from_pem(read(cert)?, read(key)?),
    );
    if let Some(ca) = &files.client_ca {
        config = config.client_ca_root(tonic::transport::Certificate::from_pem(read(ca)?));
    }
    Ok(Some(config))
}
