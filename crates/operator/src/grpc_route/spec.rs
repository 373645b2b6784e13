//! `GrpcKafkaRoute` (strait.dev/v1alpha1): a gRPC service reachable through Kafka. grpc-kafka
//! pods (the frontend) turn calls into request records; kafka-grpc pods (the backend, a consumer
//! group that the operator scales from its lag) call the real service and write the replies.
//! `routes` is the proxy's own route type, so the CRD and the grpc-kafka config cannot drift.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ResourceRequirements;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};
use strait_config::auth::JwtAlgorithm;
use strait_config::grpc::{ForwardMetadata, GrpcKafkaLimits, GrpcRoute, Retries, ZillaGroup};
use strait_config::mqtt_kafka::Acks;

pub use crate::deletion::DeletionPolicy;
use crate::mqtt_bridge::spec::SecretKeyRef;

#[allow(clippy::duplicated_attributes)] // the printer columns' repeated `type_ =`
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "strait.dev",
    version = "v1alpha1",
    kind = "GrpcKafkaRoute",
    namespaced,
    shortname = "gkr",
    category = "strait",
    status = "GrpcKafkaRouteStatus",
    derive = "PartialEq",
    doc = "A gRPC service reachable through Kafka: calls become request records, replies come back from a reply topic.",
    scale(
        spec_replicas_path = ".spec.backend.replicas",
        status_replicas_path = ".status.replicas",
        label_selector_path = ".status.selector"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Routes", type_ = "integer", json_path = ".status.routes"),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".status.replicas"),
    printcolumn(name = "Lag", type_ = "integer", json_path = ".status.lag"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GrpcKafkaRouteSpec {
    pub kafka: KafkaSpec,
    /// ConfigMap whose keys are the `.proto` files describing the served services.
    pub protos: ProtosSpec,
    /// First matching route wins; a method no route matches is UNIMPLEMENTED.
    #[x_kube(validation = kube::core::Rule::new("size(self) > 0").message("spec.routes needs at least one route"))]
    #[x_kube(validation = kube::core::Rule::new("self.all(r, has(r.produce) != has(r.fetch))").message("each of spec.routes sets exactly one of produce or fetch"))]
    #[schemars(length(max = 100))]
    pub routes: Vec<GrpcRoute>,
    /// Partitions and settings of the topics the routes name, unless `topics` lists them.
    #[serde(default)]
    pub topic_defaults: TopicDefaults,
    /// Per-topic settings (partitions, replication, configs), by topic name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topics: BTreeMap<String, TopicDefaults>,
    #[serde(default)]
    pub frontend: Frontend,
    /// How callers authenticate at grpc-kafka and which methods they may call; without it
    /// every caller may call every routed method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthSpec>,
    /// Which request metadata grpc-kafka copies into Kafka (`meta:*` headers); by default all
    /// but credentials (`authorization`, `cookie`, `proxy-authorization`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_metadata: Option<ForwardMetadata>,
    pub backend: Backend,
    /// What happens to the Kafka topics when the resource is deleted: `Retain` (the default)
    /// keeps them; `Delete` deletes those this resource created (`status.createdTopics`), never
    /// a topic that existed before it.
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,
    /// Under `deletionPolicy: Delete`, how long the deletion may wait for Kafka (or its Secret)
    /// to delete the topics; then the resource goes, the topics stay, and a Warning Event names
    /// them.
    #[serde(default = "crate::deletion::default_timeout_seconds")]
    #[schemars(range(min = 0, max = 86400))]
    pub deletion_timeout_seconds: i64,
    /// Prometheus scraping of every pod's `/metrics`.
    #[serde(default)]
    pub monitoring: crate::monitoring::Monitoring,
    /// strait-proxy image; the operator's `--proxy-image` when empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSpec {
    /// Comma-separated `HOST:PORT` list of brokers.
    #[x_kube(validation = kube::core::Rule::new("self.matches('^[^:,]+:[0-9]{1,5}(,[^:,]+:[0-9]{1,5})*$')")
        .message("spec.kafka.bootstrap must be a comma-separated HOST:PORT list"))]
    #[schemars(length(max = 1024))]
    pub bootstrap: String,
    /// TLS to the brokers, from a Secret (`ca.crt`; `tls.crt` and `tls.key` for mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<crate::kafka_access::KafkaTlsSpec>,
    /// SASL towards the brokers, the password from a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<crate::kafka_access::KafkaSaslSpec>,
}

impl KafkaSpec {
    pub fn kafka_ref(&self) -> crate::kafka_access::KafkaRef<'_> {
        crate::kafka_access::KafkaRef {
            bootstrap: &self.bootstrap,
            tls: self.tls.as_ref(),
            sasl: self.sasl.as_ref(),
            field: "spec.kafka",
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProtosSpec {
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("spec.protos.configMap must name a ConfigMap"))]
    pub config_map: String,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TopicDefaults {
    #[serde(default = "default_partitions")]
    #[schemars(range(min = 1, max = 10000))]
    pub partitions: i32,
    #[serde(default = "default_replication")]
    #[schemars(range(min = 1, max = 32))]
    pub replication_factor: i32,
    /// Topic configs, e.g. `retention.ms: "86400000"`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub config: BTreeMap<String, String>,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        Self {
            partitions: default_partitions(),
            replication_factor: default_replication(),
            config: BTreeMap::new(),
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Frontend {
    /// gRPC port clients call.
    #[serde(default = "default_grpc_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
    #[serde(default = "default_replicas")]
    #[schemars(range(min = 0, max = 1000))]
    pub replicas: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
    /// gRPC over TLS on `port`, with the certificate of a Secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<FrontendTls>,
    /// Let callers send JWTs (`spec.auth.jwt`) to a port without TLS, e.g. behind a mesh that
    /// encrypts; the route then reports a `Warning` condition. Refused otherwise: a token on the
    /// wire in clear text is a token anyone on the path can use.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_plaintext_credentials: bool,
    /// Per-pod limits of grpc-kafka; unset fields keep their defaults. Past `maxConnections`
    /// (default 10000), `maxFetchStreams` (default 256) or `maxPendingCalls` (calls waiting for
    /// a reply, default 10000), calls get RESOURCE_EXHAUSTED naming the limit, counted in
    /// `strait_grpc_limit_hits_total{limit}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<GrpcKafkaLimits>,
}

impl Default for Frontend {
    fn default() -> Self {
        Self {
            port: default_grpc_port(),
            replicas: default_replicas(),
            resources: None,
            tls: None,
            allow_plaintext_credentials: false,
            limits: None,
        }
    }
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FrontendTls {
    /// Secret with `tls.crt` and `tls.key` (and `ca.crt` when client certificates are required).
    #[x_kube(validation = kube::core::Rule::new("self != ''").message("secretName must not be empty"))]
    pub secret_name: String,
    /// Require client certificates signed by the Secret's `ca.crt`.
    #[serde(default)]
    pub require_client_certificate: bool,
}

/// `spec.auth`: caller authentication at grpc-kafka (UNAUTHENTICATED without a valid credential,
/// PERMISSION_DENIED for a method not granted).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.jwt) && has(self.clientCertificate) && self.clientCertificate)")
    .message("spec.auth sets either jwt or clientCertificate, not both"))]
pub struct AuthSpec {
    /// Callers send `authorization: Bearer <JWT>`; its `sub` is their identity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<JwtSpec>,
    /// Callers are identified by their client certificate's subject (needs
    /// `frontend.tls.requireClientCertificate`); every routed method is permitted.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub client_certificate: bool,
}

/// `spec.auth.jwt`: grpc-kafka's `auth.jwt`, with the keys taken from a Secret.
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
    /// the Secret rotates the keys without restarting pods (grpc-kafka re-reads the mounted file).
    pub keys_secret: SecretKeyRef,
    /// Signature algorithms accepted (`none` never is); every asymmetric algorithm when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub algorithms: Vec<JwtAlgorithm>,
    /// Claim listing the methods a caller may call, as `package.Service/Method` patterns with
    /// `*` wildcards (`example.Orders/*`, `*`). Unset: every routed method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub methods_claim: Option<String>,
}

impl GrpcKafkaRouteSpec {
    /// Every Secret the route names, with the field that names it.
    pub fn secrets(&self) -> Vec<(String, String)> {
        let mut secrets = self.kafka.kafka_ref().secrets();
        if let Some(tls) = &self.frontend.tls {
            secrets.push((
                tls.secret_name.clone(),
                "spec.frontend.tls.secretName".into(),
            ));
        }
        if let Some(jwt) = self.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
            secrets.push((
                jwt.keys_secret.name.clone(),
                "spec.auth.jwt.keysSecret.name".into(),
            ));
        }
        if let Some(tls) = &self.backend.tls {
            secrets.push((
                tls.secret_name.clone(),
                "spec.backend.tls.secretName".into(),
            ));
        }
        secrets
    }
}

/// `spec.backend.tls`: the CA (and client certificate) for the target, from a Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendTls {
    /// Secret with `ca.crt`, the CA that signs the target's certificate (and `tls.crt`,
    /// `tls.key` with `clientCertificate`).
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Present the Secret's `tls.crt`/`tls.key` to the target (mutual TLS).
    #[serde(default)]
    pub client_certificate: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!has(self.tls) || self.target.startsWith('https://')")
    .message("spec.backend.tls needs an https:// target"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.groupId) || !has(self.zillaGroup)")
    .message("spec.backend takes groupId or zillaGroup, not both"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.dedupMaxBytes) || !has(self.dedupMaxAnswerBytes) || self.dedupMaxAnswerBytes <= self.dedupMaxBytes")
    .message("spec.backend.dedupMaxAnswerBytes must be at most dedupMaxBytes"))]
pub struct Backend {
    /// The real service: `http://HOST:PORT` (h2c) or `https://HOST:PORT`.
    #[x_kube(validation = kube::core::Rule::new("self.startsWith('http://') || self.startsWith('https://')")
        .message("spec.backend.target must be an http:// or https:// URL"))]
    #[schemars(length(max = 2048))]
    pub target: String,
    /// TLS to an `https://` target. Unset, the target's certificate is checked against the
    /// system's trusted roots (the image's CA bundle).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<BackendTls>,
    /// Consumer group id (default `strait-<namespace>-<name>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// Join Zilla's kafka-grpc consumers: group `zilla:<namespace>-<binding>` (instead of
    /// `groupId`), for a migration with both running on the same request topics.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zilla_group: Option<ZillaGroup>,
    /// Acknowledgement for reply and dead-letter records (`all` by default); offsets are
    /// committed only after they are acknowledged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acks: Option<Acks>,
    /// A redelivered call (same correlation id) within this window is answered from the recorded
    /// replies instead of calling the target again, e.g. `5m` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub dedup_window: Option<String>,
    /// Bytes of recorded answers each pod keeps for `dedupWindow` (default 64 MiB). Past it the
    /// oldest are forgotten early (`strait_grpc_dedup_evictions_total`): a repeat of such a call
    /// calls the target again, as one after the window would.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub dedup_max_bytes: Option<i64>,
    /// Largest answer of one call (a server stream's replies in all) recorded for a repeat
    /// (default 256 KiB, at most `dedupMaxBytes`); a bigger one is delivered but not kept, so a
    /// repeat of that call calls the target again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub dedup_max_answer_bytes: Option<i64>,
    /// Consumer session timeout: how soon a dead pod's partitions move to the others, e.g. `10s`
    /// (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub session_timeout: Option<String>,
    /// Calls made to the target at once, per pod.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 100000))]
    pub concurrency: i32,
    /// Longest a call to the target may take, e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_timeout: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Where requests go after the last failed attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead_letter_topic: Option<String>,
    /// Consumer pods when autoscaling is off (also what `kubectl scale gkr/NAME` sets);
    /// unset leaves the Deployment's replicas to you.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 10000))]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub autoscale: Option<Autoscale>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<ResourceRequirements>,
}

/// Consumers scale to ceil(lag / lagThreshold) within [minReplicas, min(maxReplicas, partitions)].
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("self.maxReplicas >= self.minReplicas")
    .message("spec.backend.autoscale.maxReplicas must be at least minReplicas"))]
pub struct Autoscale {
    #[serde(default = "default_min_replicas")]
    #[schemars(range(min = 0))]
    pub min_replicas: i32,
    #[serde(default = "default_max_replicas")]
    #[schemars(range(min = 1))]
    pub max_replicas: i32,
    /// Lag one consumer is expected to keep up with.
    #[serde(default = "default_lag_threshold")]
    #[schemars(range(min = 1))]
    pub lag_threshold: i64,
    /// With minReplicas 0: lag above this starts the first consumer.
    #[serde(default)]
    #[schemars(range(min = 0))]
    pub activation_lag: i64,
    /// Seconds a lower replica count must hold before scaling down.
    #[serde(default = "default_stabilization")]
    #[schemars(range(min = 0, max = 86400))]
    pub scale_down_stabilization_seconds: i64,
    /// Seconds between lag readings.
    #[serde(default = "default_poll")]
    #[schemars(range(min = 1))]
    pub poll_interval_seconds: i64,
    /// Grow request topics up to this many partitions when consumers are capped by them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_partitions: Option<i32>,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GrpcKafkaRouteStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` sums up `TopicsReady`, `ProxiesReady` and `Scaling`.
    #[serde(default)]
    #[schemars(schema_with = "crate::status::conditions_schema")]
    pub conditions: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub routes: Option<i32>,
    /// Where clients call (Service DNS name and port).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// Consumer (kafka-grpc) pods, and their label selector (scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replicas: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// What the autoscaler wants now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub desired_replicas: Option<i32>,
    /// Consumer-group lag over the request topics, its members and the partitions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partitions: Option<i32>,
    /// The autoscaler's recent recommendations within the scale-down window (its memory, kept
    /// here so a new operator leader continues it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub recommendations: Vec<crate::autoscale::Recommendation>,
    /// Topics this resource created (not those that existed before it): what
    /// `deletionPolicy: Delete` deletes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "crate::deletion::created_topics_schema")]
    pub created_topics: Vec<String>,
}

fn default_partitions() -> i32 {
    3
}
fn default_replication() -> i32 {
    1
}
fn default_grpc_port() -> i32 {
    50051
}
fn default_replicas() -> i32 {
    1
}
fn default_concurrency() -> i32 {
    64
}
fn default_min_replicas() -> i32 {
    1
}
fn default_max_replicas() -> i32 {
    10
}
fn default_lag_threshold() -> i64 {
    100
}
fn default_stabilization() -> i64 {
    300
}
fn default_poll() -> i64 {
    15
}

impl crate::status::Conditioned for GrpcKafkaRouteStatus {
    fn conditions(&self) -> &[Condition] {
        &self.conditions
    }

    fn set_conditions(&mut self, generation: Option<i64>, conditions: Vec<Condition>) {
        self.observed_generation = generation;
        self.conditions = conditions;
    }
}
