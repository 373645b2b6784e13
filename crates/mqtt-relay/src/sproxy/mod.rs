//! s-proxy: the gRPC end of the relay. For each `MqttRelay.Session` stream it drives an upstream
//! on the client's behalf: a real MQTT broker (this module's `broker` upstream).

mod broker;
mod link_tls;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_runtime::Context as _;

use crate::RelayError;
use strait_mqtt_kafka::{KafkaUpstream, TopicCheck};
use strait_relay::v1::{ClientFrame, ServerFrame};
use strait_relay::{Incoming, Opening, RelayServer, SessionHandler};
use strait_runtime::Process;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::task::TaskTracker;
use tonic::Status;
use tonic::transport::server::TcpIncoming;

use strait_config::SProxyConfig;
use strait_config::relay::Upstream;
use strait_relay::metrics::RelayMetrics;
use strait_relay::rules::{FRAME_QUEUE, link, max_frame_size};

/// How long a new relay stream may take to send its first frame (SessionOpen and CONNECT).
pub const FIRST_FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// The readiness flag this role sets once it listens (registered by `ProcessArgs::start`).
pub const READINESS: &str = "listener";

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
        // Draining: a new session would only be told 0x8B at once; r-proxy tries another s-proxy.
        if self.ctx.shutdown.is_cancelled() {
            return Err(Status::unavailable("s-proxy is shutting down"));
        }
        // A stream that never says which session it is would hold its task forever.
        let first = tokio::time::timeout(FIRST_FRAME_TIMEOUT, inbound.message())
            .await
            .map_err(|_| {
                self.ctx.metrics.error("first_frame_timeout");
                Status::deadline_exceeded(format!(
                    "no first relay frame within {FIRST_FRAME_TIMEOUT:?}"
                ))
            })??
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
) -> Result<
    (
        SocketAddr,
        impl Future<Output = Result<(), RelayError>> + use<>,
    ),
    RelayError,
> {
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
                KafkaUpstream::start(
                    *kafka,
                    process.shutdown.token(),
                    topic_check,
                    &process.metrics,
                )
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
    let link_tls = strait_tls::reload::server_config(&config.tls, &[b"h2"])
        .context("relay link TLS settings (tls)")?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen for r-proxy on {}", config.listen))?;
    let local_addr = listener.local_addr()?;
    let shutdown = process.shutdown.token();
    let drain_timeout = config.drain_timeout;
    let flush_ctx = ctx.clone();
    let metrics = ctx.metrics.clone();
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
        let router = server.add_service(service);
        let served = match link_tls {
            Some(tls) => {
                let incoming = link_tls::incoming(listener, tls, metrics);
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
            None => {
                // tonic sets TCP_NODELAY only on listeners it binds itself. Without it a small
                // frame (a PUBACK) waits behind other sessions' unacknowledged data for the
                // peer's delayed ACK: 40 ms stalls on a busy link.
                let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
                router.serve_with_incoming_shutdown(incoming, stop).await
            }
        };
        served
            .context("s-proxy gRPC server failed")
            .map_err(RelayError::from)
    };
    Ok((local_addr, serving))
}

pub async fn run(config: SProxyConfig, process: &Process) -> Result<(), RelayError> {
    let broker = config.broker.as_ref().map(|b| b.address.clone());
    let kafka = config.kafka.as_ref().map(|k| k.bootstrap.clone());
    let upstream = config.upstream;
    let (addr, serving) = match start(config, process, TopicCheck::Verify).await {
        // Stopped while waiting for Kafka (e.g. a wrong password): a requested stop, not a failure.
        Err(error) if process.shutdown.is_triggered() => {
            tracing::info!(
                error = strait_runtime::error_chain(&error),
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
