//! s-proxy: the gRPC end of the relay. For each `MqttRelay.Session` stream it drives an upstream
//! on the client's behalf: a real MQTT broker (this module's `broker` upstream).

mod broker;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strait_relay::v1::mqtt_relay_server::{MqttRelay, MqttRelayServer};
use strait_relay::v1::{ClientFrame, ServerFrame};
use strait_runtime::Process;
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};

use crate::metrics::RelayMetrics;
use crate::relay_rules::{FRAME_QUEUE, max_frame_size};
use crate::tls::{ClientTlsFiles, ServerTlsFiles};

/// The readiness flag this role sets once it listens (registered by `ProcessArgs::start`).
pub const READINESS: &str = "listener";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Upstream {
    /// A real MQTT broker (--broker) holds sessions and messages.
    Broker,
}

/// `strait-proxy s-proxy`: serve MqttRelay streams from r-proxy and drive the upstream.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example:\n  strait-proxy s-proxy --listen 0.0.0.0:50516 \
    --upstream broker --broker mosquitto:1883"
)]
pub struct SProxyArgs {
    /// gRPC listener for r-proxy's relay streams.
    #[arg(long, default_value = "127.0.0.1:50516", env = "STRAIT_LISTEN")]
    pub listen: SocketAddr,

    /// TLS for the relay link (--tls-cert/--tls-key; --tls-client-ca requires r-proxy certificates).
    #[command(flatten)]
    pub tls: ServerTlsFiles,

    /// What serves the sessions.
    #[arg(long, value_enum, default_value_t = Upstream::Broker)]
    pub upstream: Upstream,

    /// MQTT broker address (HOST:PORT) for --upstream broker.
    #[arg(long, env = "STRAIT_BROKER", required_if_eq("upstream", "broker"))]
    pub broker: Option<String>,

    /// Connect to the broker over TLS, trusting this CA bundle.
    #[arg(long)]
    pub broker_ca: Option<PathBuf>,

    /// Client certificate presented to the broker (mutual TLS; needs --broker-ca).
    #[arg(long, requires_all = ["broker_key", "broker_ca"])]
    pub broker_cert: Option<PathBuf>,

    /// Private key of --broker-cert.
    #[arg(long, requires = "broker_cert")]
    pub broker_key: Option<PathBuf>,

    /// Name checked against the broker's certificate (default: the host of --broker).
    #[arg(long)]
    pub broker_server_name: Option<String>,

    /// How long connecting to the broker may take before the client is refused (0x88).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
    pub broker_connect_timeout: Duration,

    /// Largest MQTT packet accepted from the upstream towards a client, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_packet_size: u32,

    /// How long to wait for sessions to close on shutdown before dropping them.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

pub(crate) struct Context {
    pub broker: broker::BrokerTarget,
    pub metrics: RelayMetrics,
    pub max_packet_size: usize,
    pub shutdown: tokio_util::sync::CancellationToken,
    pub sessions: TaskTracker,
}

struct RelayService {
    ctx: Arc<Context>,
}

#[tonic::async_trait]
impl MqttRelay for RelayService {
    type SessionStream = ReceiverStream<Result<ServerFrame, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<ClientFrame>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("relay stream ended before its first frame"))?;
        let opening = broker::Opening::parse(first)?;
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
        self.ctx.sessions.spawn(tracing::Instrument::instrument(
            broker::run(opening, inbound, to_client, ctx),
            span,
        ));
        Ok(Response::new(ReceiverStream::new(outbound)))
    }
}

/// Binds the gRPC listener and returns its address and the future serving it until shutdown.
pub async fn start(
    args: SProxyArgs,
    process: &Process,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>> + use<>)> {
    let ready = process.health.flag(READINESS);
    let Upstream::Broker = args.upstream;
    let address = args
        .broker
        .clone()
        .context("--broker is required with --upstream broker")?;
    let broker_tls = match &args.broker_ca {
        Some(ca) => Some(
            ClientTlsFiles {
                ca: Some(ca.clone()),
                cert: args.broker_cert.clone(),
                key: args.broker_key.clone(),
            }
            .load(ca)
            .context("loading the broker TLS settings")?,
        ),
        None => None,
    };
    let broker = broker::BrokerTarget::new(
        address,
        broker_tls,
        args.broker_server_name.clone(),
        args.broker_connect_timeout,
    )?;
    let sessions = TaskTracker::new();
    let ctx = Arc::new(Context {
        broker,
        metrics: RelayMetrics::register(&process.metrics, "s-proxy")?,
        max_packet_size: args.max_packet_size as usize,
        shutdown: process.shutdown.token(),
        sessions: sessions.clone(),
    });
    let max_message = max_frame_size(args.max_packet_size);
    let service = MqttRelayServer::new(RelayService { ctx: ctx.clone() })
        .max_decoding_message_size(max_message)
        .max_encoding_message_size(max_message);

    let mut server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(20)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .initial_connection_window_size(Some(8 * 1024 * 1024))
        .initial_stream_window_size(Some(1024 * 1024));
    if let Some(tls) = tls_config(&args.tls)? {
        server = server.tls_config(tls).context("relay link TLS settings")?;
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen for r-proxy on {}", args.listen))?;
    let local_addr = listener.local_addr()?;
    let shutdown = process.shutdown.token();
    let drain_timeout = args.drain_timeout;
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
        };
        server
            .add_service(service)
            .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
            .await
            .context("s-proxy gRPC server failed")
    };
    Ok((local_addr, serving))
}

pub async fn run(args: SProxyArgs, process: &Process) -> anyhow::Result<()> {
    let broker = args.broker.clone();
    let (addr, serving) = start(args, process).await?;
    tracing::info!(%addr, broker = broker.as_deref().unwrap_or("-"), "s-proxy listening");
    serving.await
}

fn tls_config(files: &ServerTlsFiles) -> anyhow::Result<Option<tonic::transport::ServerTlsConfig>> {
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
