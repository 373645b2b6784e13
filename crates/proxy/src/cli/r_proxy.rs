//! `strait-proxy r-proxy`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strait_config::auth::{AuthMode, JwtAuth};
use strait_config::{ConfigError, RProxyConfig, Validate as _};

use super::{ServerTlsArgs, overlay};

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
      mode: jwt                   # jwt | clientCertificate | password | anonymous\n    \
      passwordFile: passwords     # mode password: mosquitto_passwd's user:hash lines\n    \
      aclFile: acl.yaml           # topic ACL, any mode (anonymous/authenticated/users)\n    \
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
    (3.1.1: 0x80), and so with the ACL. When the token expires the session ends with DISCONNECT\n\
    0xA0. Unless the mode is anonymous, the broker gets the verified identity as the user name\n\
    and never the password or token."
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

    /// Name checked against s-proxy's certificate when it is not the endpoints' host.
    #[arg(long)]
    pub s_proxy_server_name: Option<String>,

    /// Resolve each --s-proxy host to all its addresses (e.g. a headless Service naming every
    /// s-proxy pod), again every 5 s, and spread sessions over every address.
    #[arg(long)]
    pub s_proxy_discover: bool,

    /// HTTP/2 connections opened to each s-proxy endpoint; sessions are multiplexed over them
    /// [default: 2].
    #[arg(long)]
    pub connections_per_endpoint: Option<usize>,

    /// How long a new connection may take, from accept, to complete its TLS/WebSocket
    /// handshakes and send CONNECT (one deadline for all of it) [default: 10s].
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

    /// Most sessions from one client address; more get CONNACK 0x97 Quota exceeded (3.1.1:
    /// return code 3) [default: 10000].
    #[arg(long)]
    pub max_connections_per_address: Option<usize>,

    /// CONNECTs admitted per second by this r-proxy (`0`: no limit); a burst of a tenth of a
    /// second's worth goes at once, later ones wait their turn, and one whose turn would come
    /// after --connect-timeout gets CONNACK 0x9F Connection rate exceeded. On Kafka, s-proxy
    /// paces session setups itself (kafka.limits.maxConnectRate) [default: 0].
    #[arg(long)]
    pub max_connect_rate: Option<u32>,

    /// CONNECTs admitted per second from one client address (`0`: no limit); more get 0x9F at
    /// once. Off by default: a load balancer may give every client the same few addresses
    /// [default: 0].
    #[arg(long)]
    pub max_connect_rate_per_address: Option<u32>,

    /// Longest keep-alive a client may have: more, or none (0), becomes this; MQTT 5 clients
    /// are told in CONNACK (Server Keep Alive). `0s` allows any, including none [default: 30m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub max_keep_alive: Option<Duration>,

    /// TCP keepalive on client connections: first probe after this much silence (`0s`: off)
    /// [default: 60s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub tcp_keep_alive: Option<Duration>,

    /// How long to wait for sessions to close on shutdown before dropping them [default: 10s].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain_timeout: Option<Duration>,

    /// How clients authenticate: jwt, clientCertificate, password or anonymous [default: jwt
    /// when --jwt-issuer or auth.jwt is set, else anonymous].
    #[arg(long)]
    pub auth_mode: Option<AuthMode>,

    /// `user:hash` lines as mosquitto_passwd writes them, for --auth-mode password.
    #[arg(long)]
    pub password_file: Option<PathBuf>,

    /// Topic ACL (YAML: anonymous, authenticated, users.NAME with publish, subscribe,
    /// denyPublish, denySubscribe filters), enforced whatever the mode.
    #[arg(long)]
    pub acl_file: Option<PathBuf>,

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
        overlay(&mut link.server_name, self.s_proxy_server_name);
        link.discover |= self.s_proxy_discover;
        let limits = &mut config.limits;
        link.connections_per_endpoint = self
            .connections_per_endpoint
            .unwrap_or(link.connections_per_endpoint);
        limits.connect_timeout = self.connect_timeout.unwrap_or(limits.connect_timeout);
        limits.max_packet_size = self.max_packet_size.unwrap_or(limits.max_packet_size);
        limits.max_connections = self.max_connections.unwrap_or(limits.max_connections);
        limits.max_connections_per_address = self
            .max_connections_per_address
            .unwrap_or(limits.max_connections_per_address);
        limits.max_connect_rate = self.max_connect_rate.unwrap_or(limits.max_connect_rate);
        limits.max_connect_rate_per_address = self
            .max_connect_rate_per_address
            .unwrap_or(limits.max_connect_rate_per_address);
        limits.max_keep_alive = self.max_keep_alive.unwrap_or(limits.max_keep_alive);
        limits.tcp_keep_alive = self.tcp_keep_alive.unwrap_or(limits.tcp_keep_alive);
        config.drain_timeout = self.drain_timeout.unwrap_or(config.drain_timeout);
        overlay(&mut config.auth.mode, self.auth_mode);
        overlay(&mut config.auth.password_file, self.password_file);
        overlay(&mut config.auth.acl_file, self.acl_file);
        self.jwt.apply(&mut config.auth.jwt)?;
        config.validate()?;
        Ok(config)
    }
}
