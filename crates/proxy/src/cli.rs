//! The command line of every role: the arguments of each subcommand and how they are laid over
//! the role's config file. One file on purpose (about 650 lines, most of them help text): every
//! flag of the binary is here, so they stay consistent, and the role crates take validated
//! configs, never flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use strait_config::auth::{AuthMode, JwtAuth};
use strait_config::grpc::{GrpcKafkaConfig, KafkaGrpcConfig};
use strait_config::kafka::{KafkaSasl, KafkaTls, SaslMechanism};
use strait_config::relay::{BrokerConfig, KafkaConfig, Upstream};
use strait_config::tls::ServerTls;
use strait_config::{ConfigError, RProxyConfig, SProxyConfig, Validate as _, load};

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

/// `--kafka-tls-*` and `--kafka-sasl-*`: TLS and SASL for the role's Kafka clients, laid over
/// the config file's `kafka.tls` and `kafka.sasl`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Kafka TLS and SASL (override kafka.tls and kafka.sasl)")]
pub struct KafkaSecurityArgs {
    /// Connect to Kafka over TLS, trusting this PEM CA bundle (kafka.tls.ca).
    #[arg(long, env = "STRAIT_KAFKA_TLS_CA", value_name = "FILE")]
    pub kafka_tls_ca: Option<PathBuf>,

    /// Client certificate presented to the brokers, PEM (mutual TLS; needs --kafka-tls-ca).
    #[arg(long, env = "STRAIT_KAFKA_TLS_CERT", value_name = "FILE")]
    pub kafka_tls_cert: Option<PathBuf>,

    /// Private key of --kafka-tls-cert, PEM.
    #[arg(long, env = "STRAIT_KAFKA_TLS_KEY", value_name = "FILE")]
    pub kafka_tls_key: Option<PathBuf>,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with --kafka-sasl-username and
    /// --kafka-sasl-password-file; over TLS when --kafka-tls-ca is set, SASL_PLAINTEXT otherwise).
    #[arg(long, env = "STRAIT_KAFKA_SASL_MECHANISM", value_name = "MECHANISM")]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, env = "STRAIT_KAFKA_SASL_USERNAME", value_name = "NAME")]
    pub kafka_sasl_username: Option<String>,

    /// File holding the SASL password (e.g. a mounted Secret; one trailing newline is ignored).
    /// The password itself is never taken from a flag or an environment variable.
    #[arg(long, env = "STRAIT_KAFKA_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
}

impl KafkaSecurityArgs {
    /// Whether any of the flags is given.
    pub fn any(&self) -> bool {
        self.sets_tls() || self.sets_sasl()
    }

    fn sets_tls(&self) -> bool {
        self.kafka_tls_ca.is_some() || self.kafka_tls_cert.is_some() || self.kafka_tls_key.is_some()
    }

    fn sets_sasl(&self) -> bool {
        self.kafka_sasl_mechanism.is_some()
            || self.kafka_sasl_username.is_some()
            || self.kafka_sasl_password_file.is_some()
    }

    /// Lays the flags given over a section's `tls` and `sasl`. Without a `sasl` in the config
    /// file, the three SASL flags go together.
    pub fn apply(
        &self,
        tls: &mut Option<KafkaTls>,
        sasl: &mut Option<KafkaSasl>,
    ) -> Result<(), ConfigError> {
        if self.sets_tls() {
            let tls = tls.get_or_insert_with(KafkaTls::default);
            for (field, flag) in [
                (&mut tls.ca, &self.kafka_tls_ca),
                (&mut tls.cert, &self.kafka_tls_cert),
                (&mut tls.key, &self.kafka_tls_key),
            ] {
                if let Some(path) = flag {
                    *field = Some(path.clone());
                }
            }
        }
        if !self.sets_sasl() {
            return Ok(());
        }
        match sasl {
            Some(sasl) => {
                if let Some(mechanism) = self.kafka_sasl_mechanism {
                    sasl.mechanism = mechanism;
                }
                if let Some(username) = &self.kafka_sasl_username {
                    sasl.username.clone_from(username);
                }
                if let Some(file) = &self.kafka_sasl_password_file {
                    sasl.password_file.clone_from(file);
                }
            }
            None => {
                let (Some(mechanism), Some(username), Some(password_file)) = (
                    self.kafka_sasl_mechanism,
                    &self.kafka_sasl_username,
                    &self.kafka_sasl_password_file,
                ) else {
                    return Err(ConfigError::invalid(
                        "kafka.sasl",
                        "--kafka-sasl-mechanism, --kafka-sasl-username and \
                         --kafka-sasl-password-file go together (or set kafka.sasl in the config file)",
                    ));
                };
                *sasl = Some(KafkaSasl {
                    mechanism,
                    username: username.clone(),
                    password_file: password_file.clone(),
                });
            }
        }
        Ok(())
    }
}

/// `strait-proxy grpc-kafka`: serve gRPC calls by producing them to Kafka.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example:\n  strait-proxy grpc-kafka --listen 0.0.0.0:50051 --kafka kafka:9092 \
    --config grpc-kafka.yaml\n\n\
    with grpc-kafka.yaml:\n\
    \x20 kafka: { bootstrap: kafka:9092 }\n\
    \x20 protos: { paths: [/etc/strait/protos] }      # .proto files or directories\n\
    \x20 routes:\n\
    \x20   - method: example.Greeter/*                # package.Service/Method, * wildcards\n\
    \x20     produce: { topic: greeter-requests, replyTo: greeter-replies }\n\
    \x20   - method: example.Events/Fetch\n\
    \x20     fetch: { topic: events }                 # stream a topic, resumable\n\
    \x20 # TLS and SASL to Kafka (or the --kafka-tls-*/--kafka-sasl-* flags):\n\
    \x20 # kafka: { bootstrap: kafka:9093, tls: { ca: ca.crt },\n\
    \x20 #          sasl: { mechanism: SCRAM-SHA-512, username: strait, passwordFile: /etc/strait/kafka/password } }\n\
    \x20 # The listener over TLS (clientCa: callers need a certificate it signed):\n\
    \x20 # tls: { cert: tls.crt, key: tls.key, clientCa: ca.crt }\n\
    \x20 # Callers authenticate (missing/invalid: UNAUTHENTICATED; method not granted: PERMISSION_DENIED):\n\
    \x20 # auth: { jwt: { issuer: https://auth.example.com/, keysFile: jwks.json, methodsClaim: grpc_methods } }\n\
    \x20 # auth: { clientCertificate: true }         # the certificate subject is the identity\n\
    \x20 # Request metadata copied into Kafka (default: all but authorization, cookie and other credentials):\n\
    \x20 # forwardMetadata: { allow: ['x-*'], deny: [authorization, cookie, proxy-authorization] }\n\n\
    Clients call grpc-kafka as if it were the service. A `strait-proxy kafka-grpc` consuming \
    greeter-requests calls the real service and writes the answers to greeter-replies."
)]
pub struct GrpcKafkaArgs {
    /// YAML config: routes, .proto files, Kafka (see docs/architecture.md).
    #[arg(long, env = "STRAIT_CONFIG")]
    pub config: PathBuf,
    /// gRPC listener (overrides `listen` of the config).
    #[arg(long, env = "STRAIT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT] (overrides `kafka.bootstrap`).
    #[arg(long, env = "STRAIT_KAFKA")]
    pub kafka: Option<String>,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
}

impl GrpcKafkaArgs {
    pub fn load(&self) -> Result<GrpcKafkaConfig, ConfigError> {
        let mut config: GrpcKafkaConfig = load(&self.config)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(kafka) = &self.kafka {
            config.kafka.bootstrap = kafka.clone();
        }
        let kafka = &mut config.kafka;
        self.kafka_security.apply(&mut kafka.tls, &mut kafka.sasl)?;
        config.validate()?;
        Ok(config)
    }
}

/// `strait-proxy kafka-grpc`: answer request records by calling the real gRPC service.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example:\n  strait-proxy kafka-grpc --kafka kafka:9092 --target http://greeter:50051 \
    --config kafka-grpc.yaml\n\n\
    with kafka-grpc.yaml:\n\
    \x20 kafka: { bootstrap: kafka:9092 }\n\
    \x20 target: http://greeter:50051              # h2c, or https:// with targetTls.ca\n\
    \x20 groupId: greeter-backend                  # replicas with one id share the partitions\n\
    \x20 routes: [{ topic: greeter-requests, replyTo: [greeter-replies] }]   # the only reply topics written\n\
    \x20 concurrency: 64\n\
    \x20 callTimeout: 30s\n\
    \x20 retries: { attempts: 5, initialBackoff: 100ms, maxBackoff: 5s }   # on UNAVAILABLE\n\
    \x20 deadLetterTopic: greeter-dead-letters\n\
    \x20 # TLS and SASL to Kafka: kafka.tls and kafka.sasl, or the --kafka-tls-*/--kafka-sasl-* flags\n\n\
    Requests come from `strait-proxy grpc-kafka` (or any producer using Zilla's record layout); \
    answers go to each request's zilla:reply-to topic when its route's replyTo lists it (others are \
    refused without calling the service)."
)]
pub struct KafkaGrpcArgs {
    /// YAML config: request topics, target, group, retries (see docs/architecture.md).
    #[arg(long, env = "STRAIT_CONFIG")]
    pub config: PathBuf,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT] (overrides `kafka.bootstrap`).
    #[arg(long, env = "STRAIT_KAFKA")]
    pub kafka: Option<String>,
    /// The real gRPC service, http://HOST:PORT or https://HOST:PORT (overrides `target`).
    #[arg(long, env = "STRAIT_TARGET")]
    pub target: Option<String>,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
}

impl KafkaGrpcArgs {
    pub fn load(&self) -> Result<KafkaGrpcConfig, ConfigError> {
        let mut config: KafkaGrpcConfig = load(&self.config)?;
        if let Some(kafka) = &self.kafka {
            config.kafka.bootstrap = kafka.clone();
        }
        if let Some(target) = &self.target {
            config.target = target.clone();
        }
        let kafka = &mut config.kafka;
        self.kafka_security.apply(&mut kafka.tls, &mut kafka.sasl)?;
        config.validate()?;
        Ok(config)
    }
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`: laid over the config file's `tls` block.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain served to clients; enables TLS on the listener.
    #[arg(long = "tls-cert")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate signed by it.
    #[arg(long = "tls-client-ca")]
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    pub fn apply(self, tls: &mut ServerTls) {
        overlay(&mut tls.cert, self.cert);
        overlay(&mut tls.key, self.key);
        overlay(&mut tls.client_ca, self.client_ca);
    }
}

/// A flag given on the command line replaces the config file's value.
pub fn overlay<T>(field: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *field = flag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_fill_in_tls_and_sasl() {
        let args = KafkaSecurityArgs {
            kafka_tls_ca: Some("/ca.crt".into()),
            kafka_sasl_mechanism: Some(SaslMechanism::ScramSha512),
            kafka_sasl_username: Some("strait".into()),
            kafka_sasl_password_file: Some("/pw".into()),
            ..KafkaSecurityArgs::default()
        };
        let (mut tls, mut sasl) = (None, None);
        args.apply(&mut tls, &mut sasl).unwrap();
        assert_eq!(tls, Some(KafkaTls::with_ca("/ca.crt")));
        let sasl = sasl.unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str()),
            (SaslMechanism::ScramSha512, "strait")
        );

        // One flag over a config file's sasl replaces just that value.
        let mut from_file = Some(sasl);
        let args = KafkaSecurityArgs {
            kafka_sasl_username: Some("other".into()),
            ..KafkaSecurityArgs::default()
        };
        args.apply(&mut tls, &mut from_file).unwrap();
        assert_eq!(from_file.unwrap().username, "other");

        // Without one, the three SASL flags go together.
        let error = args.apply(&mut None, &mut None).unwrap_err().to_string();
        assert!(error.contains("kafka.sasl"), "{error}");
    }
}
