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

use crate::cli::{ServerTlsArgs, overlay};
pub use listener::Transport;
use strait_config::auth::JwtAuth;
use strait_config::{ConfigError, RProxyConfig, Validate};
use strait_relay::metrics::RelayMetrics;

/// `strait-proxy r-proxy`: serve MQTT clients and relay their sessions to s-proxy.
///
/// Settings come from `--config FILE` (YAML, `strait_config::RProxyConfig`), then flags given on
/// the command line replace single values; defaults are shown in brackets.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Examples:\n  strait-proxy r-proxy --listen 0.0.0.0:1883 \
    --s-proxy http://s-proxy-0:50516 --s-proxy http://s-proxy-1:50516\n  \
    strait-proxy r-proxy --config /etc/strait/r-proxy.yaml\n\n\
    Config file (every field optional but sProxy.endpoints):\n  \
    listeners: { tcp: 0.0.0.0:1883, tls: 0.0.0.0:8883, ws: 0.0.0.0:8080, wss: 0.0.0.0:8443, wsPath: /mqtt }\n  \
    tls: { cert: tls.crt, key: tls.key, clientCa: ca.crt }\n  \
    sProxy: { endpoints: [https://s-proxy:50516], tls: { ca: ca.crt, cert: r.crt, key: r.key }, connectionsPerEndpoint: 2 }\n  \
    limits: { connectTimeout: 10s, maxPacketSize: 1048576, maxConnections: 100000 }\n  \
    drainTimeout: 10s\n  \
    auth:\n    \
      jwt:                        # JWT in the CONNECT password\n      \
        issuer: https://auth.example.com/\n      \
        audience: mqtt            # optional\n      \
        keysFile: /etc/strait/jwt/jwks.json   # JWKS, re-read when it changes\n      \
        keysReloadInterval: 10s\n      \
        algorithms: [RS256, ES256, EdDSA]\n      \
        leeway: 30s\n      \
        clientIdClaim: sub        # client id must equal this claim (else 0x85)\n      \
        publishClaim: mqtt_pub    # claim listing topic filters it may publish to\n      \
        subscribeClaim: mqtt_sub  # ... and subscribe to; {clientId} is substituted\n\n\
    A missing, invalid or expired token is refused with CONNACK 0x86 (3.1.1: 4); a will outside\n\
    publishClaim with 0x87 (3.1.1: 5). PUBLISH outside publishClaim: PUBACK/PUBREC 0x87, QoS 0\n\
    dropped, 3.1.1 QoS 1/2 disconnected. SUBSCRIBE filters outside subscribeClaim: SUBACK 0x87\n\
    (3.1.1: 0x80). When the token expires the session ends with DISCONNECT 0xA0."
)]
pub struct RProxyArgs {
    /// YAML config file; flags given on the command line override its values.
    #[arg(long, env = "STRAIT_CONFIG")]
    pub config: Option<PathBuf>,

    /// Plain MQTT over TCP listener [default: 127.0.0.1:1883].
    #[arg(long, env = "STRAIT_LISTEN")]
    pub listen: Option<SocketAddr>,

    /// MQTT over TLS listener (needs --tls-cert and --tls-key).
    #[arg(long)]
    pub tls_listen: Option<SocketAddr>,

    /// MQTT over WebSocket listener (path --ws-path, subprotocol `mqtt`).
    #[arg(long)]
    pub ws_listen: Option<SocketAddr>,

    /// MQTT over WebSocket with TLS listener (needs --tls-cert and --tls-key).
    #[arg(long)]
    pub wss_listen: Option<SocketAddr>,

    /// HTTP path WebSocket clients connect to [default: /mqtt].
    #[arg(long)]
    pub ws_path: Option<String>,

    #[command(flatten)]
    pub tls: ServerTlsArgs,

    /// s-proxy endpoint (http:// or https://). Repeat to spread sessions over several; a session
    /// whose endpoint is down is opened on the next one. Replaces the config file's list.
    #[arg(long = "s-proxy", env = "STRAIT_S_PROXY", value_delimiter = ',')]
    pub s_proxy: Vec<String>,

    /// CA bundle trusted for https:// s-proxy endpoints.
    #[arg(long)]
    pub s_proxy_ca: Option<PathBuf>,

    /// Client certificate presented to s-proxy (mutual TLS).
    #[arg(long)]
    pub s_proxy_cert: Option<PathBuf>,

    /// Private key of --s-proxy-cert.
    #[arg(long)]
    pub s_proxy_key: Option<PathBuf>,

    /// HTTP/2 connections opened to each s-proxy endpoint; sessions are multiplexed over them
    /// [default: 2].
    #[arg(long)]
    pub connections_per_endpoint: Option<usize>,

    /// How long a new connection may take to complete TLS/WebSocket handshakes and send CONNECT
    /// [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub connect_timeout: Option<Duration>,

    /// Largest MQTT packet accepted from a client, in bytes; v5 clients are told in CONNACK
    /// [default: 1048576].
    #[arg(long)]
    pub max_packet_size: Option<u32>,

    /// Most client connections served at once; further connections wait in the accept backlog
    /// [default: 100000].
    #[arg(long)]
    pub max_connections: Option<usize>,

    /// How long to wait for sessions to close on shutdown before dropping them [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    #[command(flatten)]
    pub jwt: Box<JwtArgs>,
}

/// `--jwt-*`: laid over the config file's `auth.jwt`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct JwtArgs {
    /// Require a JWT from this issuer (`iss`) as the CONNECT password (needs --jwt-keys-file
    /// unless the config file has auth.jwt).
    #[arg(long)]
    pub jwt_issuer: Option<String>,

    /// JWKS file with the keys tokens are signed with; re-read when it changes.
    #[arg(long)]
    pub jwt_keys_file: Option<PathBuf>,

    /// Required token audience (`aud`).
    #[arg(long)]
    pub jwt_audience: Option<String>,

    /// Claim the CONNECT client id must equal (e.g. `sub`).
    #[arg(long)]
    pub jwt_client_id_claim: Option<String>,

    /// Claim listing the topic filters a client may publish to.
    #[arg(long)]
    pub jwt_publish_claim: Option<String>,

    /// Claim listing the topic filters a client may subscribe to.
    #[arg(long)]
    pub jwt_subscribe_claim: Option<String>,
}

impl JwtArgs {
    fn apply(self, auth: &mut Option<Box<JwtAuth>>) -> Result<(), ConfigError> {
        if auth.is_none()
            && let (Some(issuer), Some(keys_file)) = (&self.jwt_issuer, &self.jwt_keys_file)
        {
            *auth = Some(Box::new(JwtAuth::new(issuer.clone(), keys_file.clone())));
        }
        let Some(jwt) = auth else {
            let any = self.jwt_issuer.is_some()
                || self.jwt_keys_file.is_some()
                || self.jwt_audience.is_some()
                || self.jwt_client_id_claim.is_some()
                || self.jwt_publish_claim.is_some()
                || self.jwt_subscribe_claim.is_some();
            if any {
                return Err(ConfigError::invalid(
                    "auth.jwt",
                    "JWT authentication needs both --jwt-issuer and --jwt-keys-file",
                ));
            }
            return Ok(());
        };
        overlay(&mut jwt.audience, self.jwt_audience);
        overlay(&mut jwt.client_id_claim, self.jwt_client_id_claim);
        overlay(&mut jwt.publish_claim, self.jwt_publish_claim);
        overlay(&mut jwt.subscribe_claim, self.jwt_subscribe_claim);
        if let Some(issuer) = self.jwt_issuer {
            jwt.issuer = issuer;
        }
        if let Some(keys_file) = self.jwt_keys_file {
            jwt.keys_file = keys_file;
        }
        Ok(())
    }
}

impl RProxyArgs {
    /// The config file (or the defaults) with the command line laid over it, validated.
    pub fn into_config(self) -> Result<RProxyConfig, ConfigError> {
        let mut config = match &self.config {
            Some(path) => strait_config::load(path)?,
            None => RProxyConfig::new(Vec::new()),
        };
        overlay(&mut config.listeners.tcp, self.listen);
        overlay(&mut config.listeners.tls, self.tls_listen);
        overlay(&mut config.listeners.ws, self.ws_listen);
        overlay(&mut config.listeners.wss, self.wss_listen);
        if let Some(path) = self.ws_path {
            config.listeners.ws_path = path;
        }
        self.tls.apply(&mut config.tls);
        let link = &mut config.s_proxy;
        if !self.s_proxy.is_empty() {
            link.endpoints = self.s_proxy;
        }
        overlay(&mut link.tls.ca, self.s_proxy_ca);
        overlay(&mut link.tls.cert, self.s_proxy_cert);
        overlay(&mut link.tls.key, self.s_proxy_key);
        let limits = &mut config.limits;
        link.connections_per_endpoint = self
            .connections_per_endpoint
            .unwrap_or(link.connections_per_endpoint);
        limits.connect_timeout = self.connect_timeout.unwrap_or(limits.connect_timeout);
        limits.max_packet_size = self.max_packet_size.unwrap_or(limits.max_packet_size);
        limits.max_connections = self.max_connections.unwrap_or(limits.max_connections);
        config.drain_timeout = self.drain_timeout.unwrap_or(config.drain_timeout);
        self.jwt.apply(&mut config.auth.jwt)?;
        config.validate()?;
        Ok(config)
    }
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
    /// JWT authentication (`auth.jwt`), when configured.
    pub auth: Option<Arc<crate::auth::Authenticator>>,
}

/// The addresses r-proxy listens on, once bound.
#[derive(Debug, Clone)]
pub struct Bound {
    pub listeners: Vec<(Transport, SocketAddr)>,
}

/// Binds every listener and serves until shutdown, then drains.
pub async fn run(config: RProxyConfig, process: &Process) -> anyhow::Result<()> {
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
) -> anyhow::Result<(Bound, impl Future<Output = anyhow::Result<()>> + use<>)> {
    let ready = process.health.flag(READINESS);
    let server_tls = strait_tls::server_config(&config.tls, &[])
        .context("loading the MQTT listener's TLS certificate (tls)")?;
    let upstream = upstream::SProxyPool::new(&config.s_proxy, config.limits.max_packet_size)
        .context("configuring the s-proxy endpoints (sProxy)")?;
    let metrics = RelayMetrics::register(&process.metrics, "r-proxy")?;
    let auth = match &config.auth.jwt {
        Some(jwt) => {
            let auth = crate::auth::Authenticator::load(jwt, &process.metrics)
                .await
                .context("setting up JWT authentication (auth.jwt)")?;
            auth.spawn_reloader(process.shutdown.token());
            Some(auth)
        }
        None => None,
    };
    let ctx = Arc::new(Context {
        upstream,
        metrics,
        connect_timeout: config.limits.connect_timeout,
        max_packet_size: config.limits.max_packet_size,
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
