//! r-proxy: the MQTT server clients connect to. Each client session is relayed to s-proxy as one
//! bidirectional gRPC stream of typed packets (`MqttRelay.Session`).

mod conn;
mod listener;
mod session;
mod upstream;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use strait_runtime::Process;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

use crate::metrics::RelayMetrics;
use crate::tls::{ClientTlsFiles, ServerTlsFiles};
pub use listener::Transport;

/// `strait-proxy r-proxy`: serve MQTT clients and relay their sessions to s-proxy.
#[derive(Debug, Clone, clap::Args)]
#[command(after_help = "Example:\n  strait-proxy r-proxy --listen 0.0.0.0:1883 \
    --s-proxy http://s-proxy-0:50516 --s-proxy http://s-proxy-1:50516")]
pub struct RProxyArgs {
    /// Plain MQTT over TCP listener.
    #[arg(long, default_value = "127.0.0.1:1883", env = "STRAIT_LISTEN")]
    pub listen: SocketAddr,

    /// MQTT over TLS listener (needs --tls-cert and --tls-key).
    #[arg(long, requires = "cert")]
    pub tls_listen: Option<SocketAddr>,

    /// MQTT over WebSocket listener (path --ws-path, subprotocol `mqtt`).
    #[arg(long)]
    pub ws_listen: Option<SocketAddr>,

    /// MQTT over WebSocket with TLS listener (needs --tls-cert and --tls-key).
    #[arg(long, requires = "cert")]
    pub wss_listen: Option<SocketAddr>,

    /// HTTP path WebSocket clients connect to.
    #[arg(long, default_value = "/mqtt")]
    pub ws_path: String,

    #[command(flatten)]
    pub tls: ServerTlsFiles,

    /// s-proxy endpoint (http:// or https://). Repeat to spread sessions over several; a session
    /// whose endpoint is down is opened on the next one.
    #[arg(
        long = "s-proxy",
        required = true,
        env = "STRAIT_S_PROXY",
        value_delimiter = ','
    )]
    pub s_proxy: Vec<tonic::transport::Uri>,

    /// CA bundle trusted for https:// s-proxy endpoints.
    #[arg(long)]
    pub s_proxy_ca: Option<PathBuf>,

    /// Client certificate presented to s-proxy (mutual TLS).
    #[arg(long, requires = "s_proxy_key")]
    pub s_proxy_cert: Option<PathBuf>,

    /// Private key of --s-proxy-cert.
    #[arg(long, requires = "s_proxy_cert")]
    pub s_proxy_key: Option<PathBuf>,

    /// HTTP/2 connections opened to each s-proxy endpoint; sessions are multiplexed over them.
    #[arg(long, default_value_t = 2)]
    pub connections_per_endpoint: usize,

    /// How long a new connection may take to complete TLS/WebSocket handshakes and send CONNECT.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub connect_timeout: Duration,

    /// Largest MQTT packet accepted from a client, in bytes (v5 clients are told in CONNACK).
    #[arg(long, default_value_t = 1024 * 1024)]
    pub max_packet_size: u32,

    /// Most client connections served at once; further connections wait in the accept backlog.
    #[arg(long, default_value_t = 100_000)]
    pub max_connections: usize,

    /// How long to wait for sessions to close on shutdown before dropping them.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
}

/// The readiness flag this role sets once it listens (registered by `ProcessArgs::start`).
pub const READINESS: &str = "listeners";

/// Shared by every session of the process.
pub(crate) struct Context {
    pub upstream: upstream::SProxyPool,
    pub metrics: RelayMetrics,
    pub connect_timeout: Duration,
    pub max_packet_size: u32,
    pub ws_path: String,
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// The addresses r-proxy listens on, once bound.
#[derive(Debug, Clone)]
pub struct Bound {
    pub listeners: Vec<(Transport, SocketAddr)>,
}

/// Binds every listener and serves until shutdown, then drains.
pub async fn run(args: RProxyArgs, process: &Process) -> anyhow::Result<()> {
    let (bound, serving) = start(args, process).await?;
    for (transport, addr) in &bound.listeners {
        tracing::info!(%transport, %addr, "r-proxy listening");
    }
    serving.await
}

/// Binds the listeners and returns their addresses and the future that serves them (used by
/// `dev`, which needs the addresses before serving).
pub async fn start(
    args: RProxyArgs,
    process: &Process,
) -> anyhow::Result<(Bound, impl Future<Output = anyhow::Result<()>> + use<>)> {
    let ready = process.health.flag(READINESS);
    let server_tls = args
        .tls
        .load(&[])
        .context("loading the MQTT listener's TLS certificate")?;
    let link_tls = ClientTlsFiles {
        ca: args.s_proxy_ca.clone(),
        cert: args.s_proxy_cert.clone(),
        key: args.s_proxy_key.clone(),
    };
    let upstream = upstream::SProxyPool::new(
        &args.s_proxy,
        &link_tls,
        args.connections_per_endpoint,
        args.max_packet_size,
    )
    .context("configuring the s-proxy endpoints")?;
    let metrics = RelayMetrics::register(&process.metrics, "r-proxy")?;
    let ctx = Arc::new(Context {
        upstream,
        metrics,
        connect_timeout: args.connect_timeout,
        max_packet_size: args.max_packet_size,
        ws_path: args.ws_path.clone(),
        shutdown: process.shutdown.token(),
    });

    let mut specs = vec![(Transport::Tcp, args.listen)];
    specs.extend(args.tls_listen.map(|a| (Transport::Tls, a)));
    specs.extend(args.ws_listen.map(|a| (Transport::WebSocket, a)));
    specs.extend(args.wss_listen.map(|a| (Transport::WebSocketTls, a)));
    let mut listeners = Vec::new();
    for (transport, addr) in specs {
        let tls = if transport.is_tls() {
            Some(server_tls.clone().context(
                "--tls-listen/--wss-listen need a certificate: pass --tls-cert and --tls-key",
            )?)
        } else {
            None
        };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen for {transport} clients on {addr}"))?;
        listeners.push(listener::Listener::new(transport, listener, tls)?);
    }
    let bound = Bound {
        listeners: listeners
            .iter()
            .map(|l| (l.transport, l.local_addr))
            .collect(),
    };

    let drain_timeout = args.drain_timeout;
    let limit = Arc::new(Semaphore::new(args.max_connections));
    let serving = async move {
        let sessions = TaskTracker::new();
        let accepting: Vec<_> = listeners
            .into_iter()
            .map(|l| tokio::spawn(l.accept_loop(ctx.clone(), limit.clone(), sessions.clone())))
            .collect();
        ready.set(true);
        ctx.shutdown.cancelled().await;
        ready.set(false);
        for task in accepting {
            let _ = task.await;
        }
        sessions.close();
        let open = sessions.len();
        tracing::info!(open, ?drain_timeout, "r-proxy draining sessions");
        if !strait_runtime::drain(drain_timeout, sessions.wait()).await {
            tracing::warn!(
                left = sessions.len(),
                "drain deadline passed; dropping sessions"
            );
        }
        Ok(())
    };
    Ok((bound, serving))
}
