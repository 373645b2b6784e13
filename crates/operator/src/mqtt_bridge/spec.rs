//! `MqttBridge` (strait.dev/v1alpha1): MQTT clients served by r-proxy, relayed to s-proxy, which
//! drives the upstream. The shape is the CRD schema; CEL rules and bounds reject a bad spec at
//! `kubectl apply` with the field named.

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use strait_config::auth::{AuthMode, JwtAlgorithm};
use strait_config::mqtt_kafka::{Acks, MqttKafkaRoute, MqttKafkaTopics, NewTopics, SessionLimits};
use strait_config::relay::ClientLimits;

/// An MQTT endpoint for devices, bridged to an MQTT broker or to Kafka acting as the broker.
// Clippy reads the repeated `type_ =` of the printer columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "MqttBridge",
    namespaced,
    shortname = "mqb",
    category = "strait",
    status = "MqttBridgeStatus",
    derive = "PartialEq",
    doc = "An MQTT endpoint for devices (r-proxy), relayed to s-proxy, which drives the upstream.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".status.mode"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.upstream.kafka) || has(self.auth) && has(self.auth.mode)")
    .message("spec.auth.mode is required with a Kafka upstream (Kafka does not authenticate devices): jwt, clientCertificate, password, or anonymous spelled out"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.upstream.kafka) || !has(self.auth) || !has(self.auth.jwt) || has(self.auth.jwt.clientIdClaim)")
    .message("spec.auth.jwt.clientIdClaim is required with a Kafka upstream: sessions persist, and a token must not take over another device's session"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.deletionPolicy) || self.deletionPolicy == 'Retain' || has(self.upstream.kafka)")
    .message("spec.deletionPolicy Delete needs a Kafka upstream (a broker upstream has no topics of the bridge's)"))]
pub struct MqttBridgeSpec {
    /// What serves sessions and messages behind s-proxy.
    pub upstream: Upstream,
    /// Where devices connect.
    #[serde(default)]
    pub listener: Listener,
    /// What one client may do (connect timeout, packet size, connections per r-proxy pod).
    #[serde(default)]
    pub limits: ClientLimits,
    /// How devices authenticate and which topics they may use. Required with a Kafka upstream
    /// (a bridge open to every device says `mode: anonymous`). Unset with a broker upstream,
    /// r-proxy passes the CONNECT on and the broker judges its credentials; the bridge then
    /// reports a `Warning`.
    #[serde(default)]
    pub auth: ClientAuthSpec,
    /// The MQTT server pods devices connect to.
    #[serde(default)]
    pub r_proxy: ProxyPods,
    /// The pods that drive the upstream on each session's behalf.
    #[serde(default)]
    pub s_proxy: ProxyPods,
    /// The link between r-proxy and s-proxy: mutual TLS with certificates from the bridge's own
    /// CA unless a plain link is asked for.
    #[serde(default)]
    pub relay: RelayLink,
    /// Prometheus scraping of every pod's `/metrics`.
    #[serde(default)]
    pub monitoring: crate::monitoring::Monitoring,
    /// strait-proxy image; the operator's `--proxy-image` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Kafka mode: what happens to the topics when the bridge is deleted. `Retain` (the
    /// default) keeps them; `Delete` deletes those this bridge created (`status.createdTopics`),
    /// never a topic that existed before it.
    #[serde(default)]
    pub deletion_policy: crate::deletion::DeletionPolicy,
    /// Under `deletionPolicy: Delete`, how long the deletion may wait for Kafka (or its Secret)
    /// to delete the topics; then the bridge goes, the topics stay, and a Warning Event names
    /// them.
    #[serde(default = "crate::deletion::default_timeout_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub deletion_timeout_seconds: i64,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.broker) != has(self.kafka)")
    .message("spec.upstream needs exactly one of broker or kafka"))]
pub struct Upstream {
    /// A real MQTT broker: s-proxy opens one connection per client session to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker: Option<BrokerUpstream>,
    /// Kafka as the broker: messages, retained messages and sessions live in topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kafka: Option<KafkaUpstream>,
}

/// MQTT on Kafka, in Zilla's record layout. The operator creates the topics whose names it knows
/// (retained and sessions compacted, routes without `${params}`); s-proxy creates only the topics
/// of `${params}` routes, as devices first publish to them (see `maxRoutedTopics`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaUpstream {
    /// Comma-separated `HOST:PORT` list of brokers.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[^:,]+:[0-9]{1,5}(,[^:,]+:[0-9]{1,5})*$')")
        .message("spec.upstream.kafka.bootstrap must be a comma-separated HOST:PORT list"))]
    #[schemars(length(max = 1024))]
    pub bootstrap: String,
    /// TLS to the brokers, from a Secret (`ca.crt`; `tls.crt` and `tls.key` for mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::kafka_access::KafkaTlsSpec>,
    /// SASL towards the brokers, the password from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<crate::kafka_access::KafkaSaslSpec>,
    /// Topic names (Zilla's defaults: mqtt-messages, mqtt-retained, mqtt-sessions).
    #[serde(default)]
    pub topics: MqttKafkaTopics,
    /// Partitions and replication of the three topics.
    #[serde(default)]
    pub new_topics: NewTopics,
    /// Produce acknowledgement for QoS 0 (QoS 1 and 2 always wait for all replicas).
    #[serde(default)]
    pub qos0_acks: Acks,
    /// MQTT topic filters routed to other messages topics. A route's topic with `${params}` is
    /// created by s-proxy on its first PUBLISH, with the route's `partitions` and `topicConfig`,
    /// when its name is a legal Kafka topic name (else 0x90) that matches `topicPattern` (else
    /// 0x87).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub routes: Vec<MqttKafkaRoute>,
    /// How many topics of `${params}` routes each s-proxy pod creates at most; a PUBLISH that
    /// needs one more is refused (MQTT 5: 0x97 Quota exceeded) and counted
    /// (`strait_mqtt_relay_errors_total{kind="routed_topic_limit"}`). s-proxy's default, 1000,
    /// when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100_000))]
    pub max_routed_topics: Option<u32>,
    /// Topic patterns whose `{identity}` level is the partition key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub clients: Vec<String>,
    /// Messages queued per session towards its device before QoS 0 messages are dropped and
    /// QoS 1/2 delivery pauses (s-proxy's default, 1024, when unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub session_queue: Option<u32>,
    /// How long an s-proxy pod may stay silent in the sessions topic before the others consider
    /// it dead and publish the wills of its devices, e.g. `15s` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub replica_lease: Option<String>,
    /// What one device may make an s-proxy pod hold: subscriptions, shared subscription
    /// groups (a Kafka consumer each), unacknowledged PUBLISHes (Receive Maximum), session
    /// expiry, catch-up readers. Hits answer with 0x97 Quota exceeded (0x93 for Receive
    /// Maximum) and are counted in `strait_mqtt_kafka_limit_hits_total{limit}`.
    #[serde(default)]
    pub limits: SessionLimits,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BrokerUpstream {
    /// `HOST:PORT` of the broker, e.g. `mosquitto.mqtt.svc:1883`.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[^:]+:[0-9]{1,5}$')")
        .message("spec.upstream.broker.address must be HOST:PORT"))]
    pub address: String,
    /// TLS to the broker: the Secret's `ca.crt` is trusted; `tls.crt`/`tls.key`, when present,
    /// are presented as a client certificate.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<SecretTls>,
}

/// TLS material from a Secret in the resource's namespace (mounted read-only into the pods).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretTls {
    /// Name of a Secret with `tls.crt`, `tls.key` and/or `ca.crt`.
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("secretName must not be empty"))]
    pub secret_name: String,
    /// Name checked against the server's certificate (default: the host of the address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

/// `spec.relay`: how r-proxy reaches s-proxy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RelayLink {
    /// Run the link without TLS. Any pod that reaches s-proxy could then open sessions under any
    /// client id, bypassing r-proxy's authentication; the bridge reports a `Warning` condition.
    /// Off by default: the operator issues mutual TLS certificates from a CA of the bridge's own
    /// (Secret `<name>-relay-ca`) and renews them before they expire.
    #[serde(default)]
    pub plaintext: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.websocket) || !has(self.websocket.tls) || !self.websocket.tls || has(self.tls)")
    .message("spec.listener.websocket.tls needs spec.listener.tls (the certificate)"))]
pub struct Listener {
    /// Plain MQTT port: 1883 when no TLS listener is configured; with `tls` there is no plain
    /// port unless one is given here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: Option<i32>,
    /// MQTT over TLS on `tls.port`, with the certificate of a `kubernetes.io/tls` Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// MQTT over WebSocket; over TLS (wss) when `tls` is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub websocket: Option<WebSocket>,
    /// Let devices send JWTs over a listener without TLS (the plain port, or plain WebSocket).
    /// Refused otherwise: a token on the wire in clear text is a token anyone on the path can use.
    #[serde(default)]
    pub allow_plaintext_credentials: bool,
}

impl Listener {
    /// The plain MQTT port, if one is served.
    pub fn plain_port(&self) -> Option<i32> {
        self.port
            .or(self.tls.is_none().then_some(default_mqtt_port()))
    }

    /// Whether the WebSocket listener runs over TLS.
    pub fn websocket_tls(&self) -> bool {
        self.websocket
            .as_ref()
            .is_some_and(|ws| ws.tls.unwrap_or(self.tls.is_some()))
    }

    /// Whether any listener carries MQTT without TLS.
    pub fn has_plaintext(&self) -> bool {
        self.plain_port().is_some() || (self.websocket.is_some() && !self.websocket_tls())
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ListenerTls {
    /// Secret with `tls.crt` and `tls.key` (and `ca.crt` when client certificates are required).
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("secretName must not be empty"))]
    pub secret_name: String,
    #[serde(default = "default_mqtts_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// Require client certificates signed by the Secret's `ca.crt`.
    #[serde(default)]
    pub require_client_certificate: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WebSocket {
    #[serde(default = "default_ws_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    /// HTTP path clients connect to.
    #[serde(default = "default_ws_path")]
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('/')").message("websocket.path must start with '/'"))]
    pub path: String,
    /// WebSocket over TLS (wss) with `listener.tls`'s certificate. Default: on when `listener.tls`
    /// is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<bool>,
}

/// How one proxy role runs.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProxyPods {
    /// Pods when `autoscale` is unset and no HorizontalPodAutoscaler targets the role's
    /// Deployment (one that does is left to set them).
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    /// Pods from the load they report: r-proxy by client connections, s-proxy by sessions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<PodAutoscale>,
    /// CPU and memory for each pod (one CPU each runs the relay's benchmarked configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// Service type for r-proxy (ClusterIP, NodePort or LoadBalancer); ignored for s-proxy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = kube::core::Rule::new("self in ['ClusterIP', 'NodePort', 'LoadBalancer']")
        .message("serviceType must be ClusterIP, NodePort or LoadBalancer"))]
    pub service_type: Option<String>,
}

/// Replicas = ceil(sessions / sessionsPerPod) within [minReplicas, maxReplicas], the sessions
/// read from the pods' own `/metrics`; a lower count applies once it held for the window.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.maxReplicas >= self.minReplicas")
    .message("autoscale.maxReplicas must be at least minReplicas"))]
pub struct PodAutoscale {
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1, max = 1000))]
    pub max_replicas: i32,
    /// Sessions one pod is meant to carry (r-proxy: client connections).
    #[serde(default = "default_sessions_per_pod")]
    #[schemars(range(min = 1))]
    pub sessions_per_pod: i64,
    /// Seconds a lower replica count must hold before scaling down (sessions on a removed pod
    /// move: they are told 0x8B and reconnect).
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i64,
    /// Seconds between readings of the pods' load.
    #[serde(default = "default_poll")]
    #[schemars(range(min = 1, max = 3600))]
    pub poll_interval_seconds: i64,
}

impl Default for ProxyPods {
    fn default() -> Self {
        Self {
            autoscale: None,
            replicas: default_replicas(),
            resources: None,
            service_type: None,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct MqttBridgeStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` sums up the others: `ProxiesReady` and `TopicsReady`.
    #[serde(default)]
    #[schemars(schema_with = "crate::status::conditions_schema")]
    pub conditions: Vec<Condition>,
    /// `broker` or `kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// Where devices connect (Service DNS name and port, per transport).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Ready r-proxy pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    /// Lag of the shared subscriptions' consumer groups on the messages topics (Kafka mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    /// Shared subscription groups (consumer groups) in Kafka.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shared_groups: Option<i32>,
    /// r-proxy's load and scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub r_proxy: Option<RoleScaling>,
    /// s-proxy's load and scaling.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s_proxy: Option<RoleScaling>,
    /// Kafka mode: topics this bridge created (not those that existed before it): what
    /// `deletionPolicy: Delete` deletes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::deletion::created_topics_schema")]
    pub created_topics: Vec<String>,
}

/// One role's load as its pods report it, and what the autoscaler made of it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RoleScaling {
    /// Ready pods.
    pub pods: i32,
    /// Sessions (r-proxy: client connections) summed over the pods that answered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sessions: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// The autoscaler's recent recommendations within the scale-down window (kept here so a new
    /// operator leader continues it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<crate::autoscale::Recommendation>,
}

fn default_mqtt_port() -> i32 {
    1883
}
fn default_mqtts_port() -> i32 {
    8883
}
fn default_ws_port() -> i32 {
    8080
}
fn default_ws_path() -> String {
    "/mqtt".into()
}
fn default_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_sessions_per_pod() -> i64 {
    1000
}
fn default_stabilization() -> i64 {
    300
}
fn default_poll() -> i64 {
    15
}

impl crate::status::Conditioned for MqttBridgeStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_conditions(&mut self, generation: Option<i64>, conditions: Vec<Condition>) {
        self.observed_generation = generation;
        self.conditions = conditions;
    }
}

/// `spec.auth`: device authentication and topic authorization at r-proxy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("(has(self.mode) && self.mode == 'jwt') == has(self.jwt)")
    .message("spec.auth.jwt is set exactly when spec.auth.mode is jwt"))]
#[x_kube(validation = kube::core::Rule::new("(has(self.mode) && self.mode == 'password') == has(self.passwordSecret)")
    .message("spec.auth.passwordSecret is set exactly when spec.auth.mode is password"))]
pub struct ClientAuthSpec {
    /// `jwt` (a token in the CONNECT password), `clientCertificate` (the TLS client
    /// certificate's common name; needs `listener.tls.requireClientCertificate`), `password`
    /// (`passwordSecret`) or `anonymous` (every device is let in; the broker judges the CONNECT's
    /// own credentials). The verified identity replaces the user name the upstream sees.
    /// Required with a Kafka upstream; unset with a broker upstream means `anonymous`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<AuthMode>,
    /// Devices present a JWT as the MQTT CONNECT password; r-proxy verifies it and enforces the
    /// topic permissions its claims grant (MQTT reason codes 0x86, 0x87 on refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// Mode `password`: a Secret whose key holds `user:hash` lines as `mosquitto_passwd` writes
    /// them (PBKDF2-SHA512).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret: Option<NamedKey>,
    /// A ConfigMap whose key holds the topic ACL (YAML: `anonymous`, `authenticated` and
    /// `users.NAME`, each with `publish`, `subscribe`, `denyPublish`, `denySubscribe` filters;
    /// `{clientId}` and `{username}` substituted), enforced in every mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acl_config_map: Option<NamedKey>,
}

/// A key of a Secret or ConfigMap in the resource's namespace (`key` defaults per field:
/// `passwords` for a password Secret, `acl.yaml` for an ACL ConfigMap).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct NamedKey {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl NamedKey {
    pub fn key_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.key.as_deref().unwrap_or(default)
    }
}

/// The key of `spec.auth.passwordSecret` unless named.
pub const PASSWORDS_KEY: &str = "passwords";
/// The key of `spec.auth.aclConfigMap` unless named.
pub const ACL_KEY: &str = "acl.yaml";

/// `spec.auth.jwt`: the r-proxy `auth.jwt` settings, with the keys taken from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct JwtSpec {
    /// Required value of the tokens' `iss` claim.
    #[schemars(length(min = 1))]
    pub issuer: String,
    /// When set, the tokens' `aud` claim must be or contain this value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Secret holding the JSON Web Key Set (`{"keys": [...]}`) tokens are signed with. Updating
    /// the Secret rotates the keys without restarting pods (r-proxy re-reads the mounted file).
    pub keys_secret: SecretKeyRef,
    /// Signature algorithms accepted (`none` never is); r-proxy's default, every asymmetric
    /// algorithm, when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// When set, the CONNECT client id must equal this claim (e.g. `sub`); else 0x85. Required
    /// with a Kafka upstream (persistent sessions), and for `{clientId}` in a token's or the
    /// ACL's filters to mean anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id_claim: Option<String>,
    /// Claim listing the topic filters a device may publish to (`{clientId}` stands for its id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_claim: Option<String>,
    /// Claim listing the topic filters a device may subscribe to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe_claim: Option<String>,
}

/// One key of a Secret in the resource's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_jwks_key")]
    pub key: String,
}

fn default_jwks_key() -> String {
    "jwks.json".into()
}

impl MqttBridgeSpec {
    /// Every Secret the bridge names, with the field that names it.
    pub fn secrets(&self) -> Vec<(String, String)> {
        let mut secrets = Vec::new();
        let mut add = |name: &str, field: &str| secrets.push((name.to_string(), field.to_string()));
        if let Some(tls) = &self.listener.tls {
            add(&tls.secret_name, "spec.listener.tls.secretName");
        }
        if let Some(tls) = self.upstream.broker.as_ref().and_then(|b| b.tls.as_ref()) {
            add(&tls.secret_name, "spec.upstream.broker.tls.secretName");
        }
        if let Some(jwt) = &self.auth.jwt {
            add(&jwt.keys_secret.name, "spec.auth.jwt.keysSecret.name");
        }
        if let Some(passwords) = &self.auth.password_secret {
            add(&passwords.name, "spec.auth.passwordSecret.name");
        }
        if let Some(kafka) = &self.upstream.kafka {
            secrets.extend(kafka.kafka_ref().secrets());
        }
        secrets
    }
}

impl KafkaUpstream {
    pub fn kafka_ref(&self) -> crate::kafka_access::KafkaRef<'_> {
        crate::kafka_access::KafkaRef {
            bootstrap: &self.bootstrap,
            tls: self.tls.as_ref(),
            sasl: self.sasl.as_ref(),
            field: "spec.upstream.kafka",
        }
    }
}
