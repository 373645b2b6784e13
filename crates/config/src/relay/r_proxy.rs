//! r-proxy's config: the MQTT server clients connect to.

use std::net::SocketAddr;
use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{
    LOCALHOST, check_packet_size, default_drain_timeout, default_max_packet_size, is_default,
};
use crate::auth::ClientAuth;
use crate::tls::{ClientTls, ServerTls};
use crate::{ConfigError, Validate};

/// `strait-proxy r-proxy --config FILE`.
///
/// ```yaml
/// listeners: { tcp: 0.0.0.0:1883, tls: 0.0.0.0:8883, ws: 0.0.0.0:8080, wsPath: /mqtt }
/// tls: { cert: /etc/strait/tls/tls.crt, key: /etc/strait/tls/tls.key }
/// sProxy: { endpoints: [http://s-proxy-0:50516, http://s-proxy-1:50516] }
/// limits: { connectTimeout: 10s, maxPacketSize: 1048576, maxConnections: 100000 }
/// drainTimeout: 10s
/// auth:
///   jwt:
///     issuer: https://auth.example.com/
///     keysFile: /etc/strait/jwt/jwks.json
///     clientIdClaim: sub
///     publishClaim: mqtt_publish
///     subscribeClaim: mqtt_subscribe
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RProxyConfig {
    #[serde(default)]
    pub listeners: Listeners,
    /// Certificate for the `tls` and `wss` listeners.
    #[serde(default)]
    pub tls: ServerTls,
    pub s_proxy: SProxyLink,
    #[serde(default)]
    pub limits: ClientLimits,
    /// How long to wait for sessions to close on shutdown before dropping them.
    #[serde(default = "default_drain_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub drain_timeout: Duration,
    /// How clients authenticate (`mode`) and which topics they may use (a token's permissions,
    /// an ACL).
    #[serde(default, skip_serializing_if = "is_default")]
    pub auth: ClientAuth,
}

/// Where r-proxy accepts MQTT clients; any of them may be left out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Listeners {
    /// Plain MQTT over TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp: Option<SocketAddr>,
    /// MQTT over TLS (needs `tls.cert` and `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SocketAddr>,
    /// MQTT over WebSocket (path `wsPath`, subprotocol `mqtt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<SocketAddr>,
    /// MQTT over WebSocket with TLS (needs `tls.cert` and `tls.key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wss: Option<SocketAddr>,
    /// HTTP path WebSocket clients connect to.
    #[serde(default = "default_ws_path")]
    pub ws_path: String,
}

impl Default for Listeners {
    fn default() -> Self {
        Self {
            tcp: Some(SocketAddr::new(LOCALHOST, 1883)),
            tls: None,
            ws: None,
            wss: None,
            ws_path: default_ws_path(),
        }
    }
}

/// r-proxy's gRPC link to s-proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SProxyLink {
    /// s-proxy endpoints (`http://HOST:PORT` or `https://HOST:PORT`). Sessions are spread over
    /// them; a session whose endpoint is down is opened on the next one.
    pub endpoints: Vec<String>,
    /// TLS for `https://` endpoints (`ca` required; `cert` and `key` for mutual TLS).
    #[serde(default)]
    pub tls: ClientTls,
    /// Name checked against s-proxy's certificate, when it is not the endpoints' host (e.g.
    /// endpoints given by IP address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
    /// HTTP/2 connections opened to each endpoint; sessions are multiplexed over them.
    #[serde(default = "default_connections_per_endpoint")]
    pub connections_per_endpoint: usize,
    /// Each endpoint's host names every s-proxy (e.g. a headless Service): it is resolved to all
    /// its addresses, again every `resolveInterval`, and sessions go to each address as to an
    /// endpoint of its own (the certificate is still checked against the host or `serverName`).
    #[serde(default, skip_serializing_if = "is_default")]
    pub discover: bool,
    /// How often `discover` resolves the endpoints again.
    #[serde(default = "default_resolve_interval", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub resolve_interval: Duration,
}

/// What one client may do to r-proxy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientLimits {
    /// How long a new connection may take to complete TLS/WebSocket handshakes and send CONNECT.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub connect_timeout: Duration,
    /// Largest MQTT packet accepted from a client, in bytes (v5 clients are told in CONNACK).
    #[serde(default = "default_max_packet_size")]
    pub max_packet_size: u32,
    /// Most client connections served at once; further connections wait in the accept backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Most sessions from one client address (one host, or a NAT in front of many); a CONNECT
    /// beyond them gets CONNACK 0x97 Quota exceeded (3.1.1: 3 Server unavailable).
    #[serde(default = "default_max_connections_per_address")]
    pub max_connections_per_address: usize,
    /// CONNECTs this r-proxy admits per second, whatever their address (`0`: no limit, the
    /// default; on Kafka, s-proxy paces session setups itself with `kafka.limits.maxConnectRate`).
    /// A burst of a tenth of a second's worth goes at once; beyond it, CONNECTs wait their turn,
    /// and one whose turn would come after its `connectTimeout` gets CONNACK 0x9F Connection
    /// rate exceeded (3.1.1: 3 Server unavailable). Each r-proxy replica has its own.
    #[serde(default)]
    pub max_connect_rate: u32,
    /// CONNECTs admitted per second from one client address (`0`: no limit); beyond it a
    /// CONNECT gets 0x9F at once. Off by default: behind a load balancer that rewrites source
    /// addresses (a Kubernetes Service with `externalTrafficPolicy: Cluster`), every client
    /// shares a few addresses.
    #[serde(default)]
    pub max_connect_rate_per_address: u32,
    /// Longest keep-alive a client may have. A client asking for more, or for none (0), gets
    /// this one: MQTT 5 clients are told (Server Keep Alive in CONNACK); 3.1.1 clients cannot be,
    /// and are disconnected after one and a half of it in silence. An upstream's own Server Keep
    /// Alive is capped too. `0s` lets clients have any, including none (a silent half-open
    /// connection then holds its session until TCP keepalive notices).
    #[serde(default = "default_max_keep_alive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub max_keep_alive: Duration,
    /// TCP keepalive on client connections: the first probe after this much silence (`0s`: off).
    /// Notices a peer that vanished without closing, even between MQTT keep-alives.
    #[serde(default = "default_tcp_keep_alive", with = "humantime_serde")]
    #[schemars(with = "String")]
    pub tcp_keep_alive: Duration,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            connect_timeout: default_connect_timeout(),
            max_packet_size: default_max_packet_size(),
            max_connections: default_max_connections(),
            max_connections_per_address: default_max_connections_per_address(),
            max_connect_rate: 0,
            max_connect_rate_per_address: 0,
            max_keep_alive: default_max_keep_alive(),
            tcp_keep_alive: default_tcp_keep_alive(),
        }
    }
}

impl ClientLimits {
    /// [`ClientLimits::max_keep_alive`] in whole seconds, `None` when off.
    pub fn max_keep_alive_seconds(&self) -> Option<u16> {
        let seconds = self.max_keep_alive.as_secs();
        (seconds > 0).then(|| u16::try_from(seconds).unwrap_or(u16::MAX))
    }
}

impl RProxyConfig {
    /// The defaults, relaying to `endpoints`.
    pub fn new(endpoints: Vec<String>) -> Self {
        Self {
            listeners: Listeners::default(),
            tls: ServerTls::default(),
            s_proxy: SProxyLink {
                endpoints,
                tls: ClientTls::default(),
                server_name: None,
                connections_per_endpoint: default_connections_per_endpoint(),
                discover: false,
                resolve_interval: default_resolve_interval(),
            },
            limits: ClientLimits::default(),
            drain_timeout: default_drain_timeout(),
            auth: ClientAuth::default(),
        }
    }
}

impl Validate for RProxyConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.listeners;
        if l.tcp.is_none() && l.tls.is_none() && l.ws.is_none() && l.wss.is_none() {
            return Err(ConfigError::invalid(
                "listeners",
                "no listener: set at least one of tcp, tls, ws, wss",
            ));
        }
        self.tls.check("tls")?;
        if (l.tls.is_some() || l.wss.is_some()) && !self.tls.is_enabled() {
            return Err(ConfigError::invalid(
                "tls",
                "listeners.tls and listeners.wss need a certificate: set tls.cert and tls.key",
            ));
        }
        if !l.ws_path.starts_with('/') {
            return Err(ConfigError::invalid(
                "listeners.wsPath",
                format!("{:?} must start with '/'", l.ws_path),
            ));
        }
        if self.s_proxy.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                "sProxy.endpoints",
                "no s-proxy endpoint: give at least one http:// or https:// URL",
            ));
        }
        for endpoint in &self.s_proxy.endpoints {
            let Some(host) = endpoint
                .strip_prefix("https://")
                .or_else(|| endpoint.strip_prefix("http://"))
            else {
                return Err(ConfigError::invalid(
                    "sProxy.endpoints",
                    format!("{endpoint:?} must start with http:// or https://"),
                ));
            };
            if host.is_empty() {
                return Err(ConfigError::invalid(
                    "sProxy.endpoints",
                    format!("{endpoint:?} has no host"),
                ));
            }
            if endpoint.starts_with("https://") && self.s_proxy.tls.ca.is_none() {
                return Err(ConfigError::invalid(
                    "sProxy.tls.ca",
                    format!("{endpoint:?} uses TLS: set the CA that signs s-proxy's certificate"),
                ));
            }
        }
        self.s_proxy.tls.check("sProxy.tls")?;
        if self.s_proxy.discover && self.s_proxy.resolve_interval < Duration::from_millis(100) {
            return Err(ConfigError::invalid(
                "sProxy.resolveInterval",
                "must be at least 100ms",
            ));
        }
        if self.s_proxy.connections_per_endpoint == 0 {
            return Err(ConfigError::invalid(
                "sProxy.connectionsPerEndpoint",
                "must be at least 1",
            ));
        }
        check_packet_size("limits.maxPacketSize", self.limits.max_packet_size)?;
        if self.limits.max_keep_alive > Duration::from_secs(u16::MAX.into()) {
            return Err(ConfigError::invalid(
                "limits.maxKeepAlive",
                "must be at most 65535s (18h12m15s), MQTT's largest keep-alive",
            ));
        }
        if !self.limits.max_keep_alive.is_zero()
            && self.limits.max_keep_alive < Duration::from_secs(1)
        {
            return Err(ConfigError::invalid(
                "limits.maxKeepAlive",
                "must be 0s (off) or at least 1s",
            ));
        }
        if self.limits.max_connections_per_address == 0 {
            return Err(ConfigError::invalid(
                "limits.maxConnectionsPerAddress",
                "must be at least 1",
            ));
        }
        if self.limits.max_connections == 0 {
            return Err(ConfigError::invalid(
                "limits.maxConnections",
                "must be at least 1",
            ));
        }
        let client_certificates = self.tls.client_ca.is_some()
            && (self.listeners.tls.is_some() || self.listeners.wss.is_some());
        self.auth.check(client_certificates)?;
        Ok(())
    }
}

fn default_ws_path() -> String {
    "/mqtt".into()
}
fn default_connections_per_endpoint() -> usize {
    2
}
fn default_max_connections_per_address() -> usize {
    10_000
}
fn default_resolve_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_max_keep_alive() -> Duration {
    Duration::from_secs(1800)
}
fn default_tcp_keep_alive() -> Duration {
    Duration::from_secs(60)
}
fn default_max_connections() -> usize {
    100_000
}

#[cfg(test)]
mod tests {
    use super::super::parse;
    use super::*;

    #[test]
    fn r_proxy_minimal_file_gets_the_defaults() {
        let config: RProxyConfig = parse("sProxy: { endpoints: [http://s:50516] }").unwrap();
        assert_eq!(config, RProxyConfig::new(vec!["http://s:50516".into()]));
        config.validate().unwrap();
    }

    #[test]
    fn r_proxy_round_trips_through_yaml() {
        let mut config = RProxyConfig::new(vec!["https://s:50516".into()]);
        config.listeners.wss = Some("0.0.0.0:8443".parse().unwrap());
        config.tls.cert = Some("/tls/tls.crt".into());
        config.tls.key = Some("/tls/tls.key".into());
        config.s_proxy.tls.ca = Some("/tls/ca.crt".into());
        config.limits.connect_timeout = Duration::from_millis(1500);
        config.validate().unwrap();
        let yaml = crate::to_yaml(&config);
        assert_eq!(parse::<RProxyConfig>(&yaml).unwrap(), config, "{yaml}");
    }

    #[test]
    fn r_proxy_jwt_auth_parses_with_defaults_and_round_trips() {
        let config: RProxyConfig = parse(
            "sProxy: { endpoints: [http://s:50516] }\n\
             auth:\n  jwt:\n    issuer: https://auth.example.com/\n    keysFile: /jwt/jwks.json\n    \
             publishClaim: pub\n    algorithms: [ES256, EdDSA]\n    leeway: 5s\n",
        )
        .unwrap();
        config.validate().unwrap();
        let jwt = config.auth.jwt.clone().unwrap();
        assert_eq!(jwt.issuer, "https://auth.example.com/");
        assert_eq!(jwt.keys_file, std::path::Path::new("/jwt/jwks.json"));
        assert_eq!(
            jwt.algorithms,
            [
                crate::auth::JwtAlgorithm::ES256,
                crate::auth::JwtAlgorithm::EdDSA
            ]
        );
        assert_eq!(jwt.leeway, Duration::from_secs(5));
        assert_eq!(jwt.keys_reload_interval, Duration::from_secs(10));
        assert_eq!(jwt.publish_claim.as_deref(), Some("pub"));
        assert_eq!(jwt.subscribe_claim, None);
        let yaml = crate::to_yaml(&config);
        assert_eq!(parse::<RProxyConfig>(&yaml).unwrap(), config, "{yaml}");
        assert!(
            !crate::to_yaml(&RProxyConfig::new(vec!["http://s:1".into()])).contains("auth"),
            "no auth section unless configured"
        );
    }

    #[test]
    fn r_proxy_jwt_refuses_none_and_names_bad_fields() {
        let error = parse::<RProxyConfig>(
            "sProxy: { endpoints: [http://s:1] }\nauth: { jwt: { issuer: i, keysFile: k, algorithms: [none] } }",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("unknown variant `none`"), "{error}");
        let base = || {
            let mut c = RProxyConfig::new(vec!["http://s:50516".into()]);
            c.auth.jwt = Some(Box::new(crate::auth::JwtAuth::new("https://i/", "/k.json")));
            c
        };
        base().validate().unwrap();
        type Change = fn(&mut crate::auth::JwtAuth);
        let cases: Vec<(Change, &str)> = vec![
            (|j| j.issuer.clear(), "auth.jwt.issuer"),
            (|j| j.keys_file = "".into(), "auth.jwt.keysFile"),
            (|j| j.algorithms.clear(), "auth.jwt.algorithms"),
            (
                |j| j.keys_reload_interval = Duration::ZERO,
                "auth.jwt.keysReloadInterval",
            ),
            (
                |j| j.publish_claim = Some(String::new()),
                "auth.jwt.publishClaim",
            ),
        ];
        for (change, field) in cases {
            let mut config = base();
            change(config.auth.jwt.as_mut().unwrap());
            match config.validate() {
                Err(ConfigError::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("expected an error naming {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn r_proxy_auth_modes_default_and_name_what_they_miss() {
        use crate::auth::{Acl, AuthMode, JwtAuth};
        let base = || RProxyConfig::new(vec!["http://s:50516".into()]);
        assert_eq!(base().auth.mode(), AuthMode::Anonymous, "no auth section");
        let parsed: RProxyConfig = parse(
            "sProxy: { endpoints: [http://s:1] }\n\
             auth: { mode: password, passwordFile: /p, aclFile: /acl.yaml }",
        )
        .unwrap();
        parsed.validate().unwrap();
        assert_eq!(parsed.auth.mode(), AuthMode::Password);

        let jwt = || Some(Box::new(JwtAuth::new("https://i/", "/k.json")));
        type Change = fn(&mut RProxyConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|c| c.auth.mode = Some(AuthMode::Jwt), "auth.jwt"),
            (
                |c| c.auth.mode = Some(AuthMode::Password),
                "auth.passwordFile",
            ),
            (
                |c| c.auth.password_file = Some("/p".into()),
                "auth.passwordFile",
            ),
            (
                |c| {
                    c.auth.mode = Some(AuthMode::Anonymous);
                    c.auth.jwt = Some(Box::new(JwtAuth::new("https://i/", "/k.json")));
                },
                "auth.jwt",
            ),
            (
                |c| c.auth.mode = Some(AuthMode::ClientCertificate),
                "auth.mode",
            ),
        ];
        for (change, field) in cases {
            let mut config = base();
            change(&mut config);
            match config.validate() {
                Err(ConfigError::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("expected an error naming {field}, got {other:?}"),
            }
        }

        let mut certificates = base();
        certificates.auth.mode = Some(AuthMode::ClientCertificate);
        certificates.listeners.tls = Some("0.0.0.0:8883".parse().unwrap());
        certificates.tls.cert = Some("/c".into());
        certificates.tls.key = Some("/k".into());
        certificates.tls.client_ca = Some("/ca".into());
        certificates.validate().unwrap();

        // `{clientId}` in the ACL means the token's device only when the token binds the id.
        let acl: Acl = parse("authenticated: { publish: [\"d/{clientId}/#\"] }").unwrap();
        let mut unbound = base();
        unbound.auth.jwt = jwt();
        match unbound.auth.check_acl(&acl) {
            Err(ConfigError::Invalid { field, .. }) => assert_eq!(field, "auth.jwt.clientIdClaim"),
            other => panic!("expected an error naming auth.jwt.clientIdClaim, got {other:?}"),
        }
        unbound.auth.jwt.as_mut().unwrap().client_id_claim = Some("sub".into());
        unbound.auth.check_acl(&acl).unwrap();
        base().auth.check_acl(&acl).unwrap();
    }

    #[test]
    fn unknown_fields_are_named() {
        let error = parse::<RProxyConfig>("sProxy: { endpoints: [] }\nlimit: {}")
            .unwrap_err()
            .to_string();
        assert!(error.contains("unknown field `limit`"), "{error}");
    }

    #[test]
    fn invalid_r_proxy_configs_name_the_field() {
        let base = || RProxyConfig::new(vec!["http://s:50516".into()]);
        let cases: Vec<(RProxyConfig, &str)> = vec![
            (RProxyConfig::new(vec![]), "sProxy.endpoints"),
            (
                RProxyConfig::new(vec!["s:50516".into()]),
                "sProxy.endpoints",
            ),
            (
                RProxyConfig::new(vec!["https://s:1".into()]),
                "sProxy.tls.ca",
            ),
            (
                {
                    let mut c = base();
                    c.listeners.tls = Some("0.0.0.0:8883".parse().unwrap());
                    c
                },
                "tls",
            ),
            (
                {
                    let mut c = base();
                    c.listeners.tcp = None;
                    c
                },
                "listeners",
            ),
            (
                {
                    let mut c = base();
                    c.limits.max_packet_size = 10;
                    c
                },
                "limits.maxPacketSize",
            ),
            (
                {
                    let mut c = base();
                    c.listeners.ws_path = "mqtt".into();
                    c
                },
                "listeners.wsPath",
            ),
        ];
        for (config, field) in cases {
            match config.validate() {
                Err(ConfigError::Invalid { field: named, .. }) => assert_eq!(named, field),
                other => panic!("{config:?}: expected an error naming {field}, got {other:?}"),
            }
        }
    }
}
