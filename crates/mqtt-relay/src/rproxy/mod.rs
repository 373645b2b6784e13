//! r-proxy: the MQTT server clients connect to. Each client session is relayed to s-proxy as one
//! bidirectional gRPC stream of typed packets (`MqttRelay.Session`).

mod addresses;
mod conn;
mod connect_rate;
mod link_tls;
mod listener;
mod session;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use strait_runtime::Context as _;

use crate::RelayError;
use strait_runtime::Process;
use tokio::sync::Semaphore;
use tokio_util::task::TaskTracker;

pub use listener::Transport;
use strait_config::RProxyConfig;
use strait_relay::metrics::RelayMetrics;

/// The readiness flag this role sets once it listens (registered by `ProcessArgs::start`).
pub const READINESS: &str = "listeners";

/// Shared by every session of the process.
pub(crate) struct Context {
    pub upstream: Arc<upstream::SProxyPool>,
    /// Connections per client address (`limits.maxConnectionsPerAddress`).
    pub addresses: Arc<addresses::AddressSlots>,
    /// `limits.maxConnectRate` and `limits.maxConnectRatePerAddress`.
    pub connect_rates: connect_rate::ConnectRates,
    pub metrics: RelayMetrics,
    /// From accepting a connection to its CONNECT: TLS and WebSocket handshakes included.
    pub connect_timeout: Duration,
    pub max_packet_size: u32,
    /// `limits.maxKeepAlive` in seconds (`None`: off).
    pub max_keep_alive: Option<u16>,
    /// `limits.tcpKeepAlive` (`None`: off).
    pub tcp_keep_alive: Option<Duration>,
    pub ws_path: String,
    pub shutdown: tokio_util::sync::CancellationToken,
    /// Client authentication and topic permissions (`auth`).
    pub auth: Arc<crate::auth::Authenticator>,
}

/// The addresses r-proxy listens on, once bound.
#[derive(Debug, Clone)]
pub struct Bound {
    pub listeners: Vec<(Transport, SocketAddr)>,
}

/// Binds every listener and serves until shutdown, then drains.
pub async fn run(config: RProxyConfig, process: &Process) -> Result<(), RelayError> {
    let (bound, serving) = start(config, process).await?;
    for (transport, addr) in &bound.listeners {
        tracing::info!(%transport, %addr, "r-proxy listening");
    }
    serving.await
}

/// Binds the listeners and returns their addresses and the future that serves them (used by
/// `dev`, which needs the addresses before serving).
pub async fn start(
    config: RProxyConfig,
    process: &Process,
) -> Result<(Bound, impl Future<Output = Result<(), RelayError>> + use<>), RelayError> {
    let ready = process.health.flag(READINESS);
    let server_tls = strait_tls::reload::server_config(&config.tls, &[])
        .context("loading the MQTT listener's TLS certificate (tls)")?;
    let upstream = upstream::SProxyPool::new(&config.s_proxy, config.limits.max_packet_size)
        .await
        .context("configuring the s-proxy endpoints (sProxy)")?;
    let upstream = Arc::new(upstream);
    upstream.spawn_discovery(process.shutdown.token());
    let metrics = RelayMetrics::register(&process.metrics, "r-proxy")?;
    let auth =
        crate::auth::Authenticator::load(&config.auth, &process.metrics, process.shutdown.token())
            .await
            .context("setting up client authentication (auth)")?;
    let ctx = Arc::new(Context {
        upstream,
        metrics,
        connect_timeout: config.limits.connect_timeout,
        max_packet_size: config.limits.max_packet_size,
        max_keep_alive: config.limits.max_keep_alive_seconds(),
        tcp_keep_alive: Some(config.limits.tcp_keep_alive).filter(|d| !d.is_zero()),
        addresses: addresses::AddressSlots::new(config.limits.max_connections_per_address),
        connect_rates: connect_rate::ConnectRates::new(
            config.limits.max_connect_rate,
            config.limits.max_connect_rate_per_address,
        ),
        ws_path: config.listeners.ws_path.clone(),
        shutdown: process.shutdown.token(),
        auth,
    });

    let l = &config.listeners;
    let specs = [
        (Transport::Tcp, l.tcp),
        (Transport::Tls, l.tls),
        (Transport::WebSocket, l.ws),
        (Transport::WebSocketTls, l.wss),
    ];
    let specs = specs.into_iter().filter_map(|(t, a)| Some((t, a?)));
    let mut listeners = Vec::new();
    for (transport, addr) in specs {
        let tls = if transport.is_tls() {
            Some(server_tls.clone().context(
                "listeners.tls/listeners.wss need a certificate: set tls.cert and tls.key",
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

    let drain_timeout = config.drain_timeout;
    let limit = Arc::new(Semaphore::new(config.limits.max_connections));
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
