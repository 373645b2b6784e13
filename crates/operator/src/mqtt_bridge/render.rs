//! Pure rendering: an `MqttBridge` → the Kubernetes objects that run it. No I/O, so every rule
//! here is unit-tested without a cluster.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use serde_json::json;
use std::collections::BTreeMap;

use strait_config::auth::{AuthMode, JwtAuth};
use strait_config::mqtt_kafka::KafkaConfig;
use strait_config::relay::{BrokerConfig, Listeners, SProxyLink, Upstream};
use strait_config::tls::{ClientTls, ServerTls};
use strait_config::{RProxyConfig, SProxyConfig, Validate};

use super::spec::{ACL_KEY, MqttBridge, PASSWORDS_KEY};
use crate::relay_pki;
use crate::topics::TopicSpec;
use crate::workload::{self, Owner, ProxyPods, from_json};

pub const S_PROXY_PORT: i32 = 50516;
const LISTENER_TLS_DIR: &str = "/etc/strait/tls/listener";
const BROKER_TLS_DIR: &str = "/etc/strait/tls/broker";
/// The JWT keys Secret, mounted whole (not by subPath) so Secret updates reach the pods.
const JWT_KEYS_DIR: &str = "/etc/strait/jwt";
/// The relay link's certificate (mounted whole: renewals reach the pods, which re-read it).
const LINK_TLS_DIR: &str = "/etc/strait/tls/link";
const PASSWORDS_DIR: &str = "/etc/strait/passwords";
const ACL_DIR: &str = "/etc/strait/acl";

/// Everything one MqttBridge owns.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub config_map: ConfigMap,
    pub deployments: Vec<Deployment>,
    pub services: Vec<Service>,
    /// One per role: voluntary evictions (node drains) take one pod at a time.
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    /// One per role: only r-proxy reaches s-proxy; clients reach only the listener ports.
    pub network_policies: Vec<NetworkPolicy>,
    /// What devices connect to, for the status.
    pub endpoints: Vec<String>,
    /// Insecure settings the spec asked for, for the `Warning` condition.
    pub warnings: Vec<String>,
}

/// What the reconciler learned from the cluster that rendering needs.
#[derive(Debug, Clone, Default)]
pub struct Inputs {
    pub image: String,
    /// The broker TLS Secret holds `tls.crt`/`tls.key`: present them as a client certificate.
    pub broker_client_cert: bool,
    /// The Kafka TLS Secret holds `tls.crt`/`tls.key` (mutual TLS).
    pub kafka_client_cert: bool,
    /// Digest of the Kafka credentials s-proxy reads at start (see `ProxyPods::credentials`).
    pub kafka_credentials: Option<String>,
    /// Digest of the password file and ACL r-proxy reads at start.
    pub r_proxy_files: Option<String>,
    pub s_proxy_replicas: Replicas,
    pub r_proxy_replicas: Replicas,
}

/// Who sets a role's Deployment replicas.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Replicas {
    /// `spec.<role>.replicas`.
    #[default]
    Spec,
    /// The operator's autoscaler.
    Scaled(i32),
    /// A HorizontalPodAutoscaler: left out of the apply.
    External,
}

impl Replicas {
    fn resolve(self, spec: i32) -> Option<i32> {
        match self {
            Self::Spec => Some(spec),
            Self::Scaled(replicas) => Some(replicas),
            Self::External => None,
        }
    }
}

/// The DNS names s-proxy's link certificate is valid for: its Service, short and long, and
/// each pod behind it (for clients that address pods directly).
pub fn s_proxy_names(bridge: &MqttBridge) -> Vec<String> {
    let service = s_proxy_name(bridge);
    let namespace = bridge.namespace().unwrap_or_default();
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("*.{service}.{namespace}.svc"),
        service,
    ]
}

/// The common name of r-proxy's link certificate.
pub fn r_proxy_identity(bridge: &MqttBridge) -> String {
    format!("{}-r-proxy", bridge.name_any())
}

fn link_tls(bridge: &MqttBridge) -> bool {
    !bridge.spec.relay.plaintext
}

fn link_file(name: &str) -> Option<std::path::PathBuf> {
    Some(format!("{LINK_TLS_DIR}/{name}").into())
}

/// A Secret volume and its read-only mount.
fn secret_volume(name: &str, secret: &str, dir: &str) -> (serde_json::Value, serde_json::Value) {
    (
        json!({"name": name, "secret": {"secretName": secret}}),
        json!({"name": name, "mountPath": dir, "readOnly": true}),
    )
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("spec.upstream needs broker or kafka")]
    NoUpstream,
    #[error(
        "spec.auth.mode: devices would send their tokens or passwords in clear text over a \
         listener without TLS; set spec.listener.tls (and leave spec.listener.port unset), or spell out \
         spec.listener.allowPlaintextCredentials: true"
    )]
    PlaintextCredentials,
    #[error("spec.upstream.kafka.replicaLease: {message}")]
    ReplicaLease { message: String },
    #[error("the rendered {role} config is invalid: {error}")]
    Config {
        role: &'static str,
        error: strait_config::ConfigError,
    },
}

pub fn s_proxy_name(bridge: &MqttBridge) -> String {
    format!("{}-s-proxy", bridge.name_any())
}

/// The headless Service whose name resolves to every ready s-proxy pod.
pub fn s_proxy_pods_name(bridge: &MqttBridge) -> String {
    format!("{}-s-proxy-pods", bridge.name_any())
}

pub fn r_proxy_config(bridge: &MqttBridge) -> RProxyConfig {
    let spec = &bridge.spec;
    let any = |port: i32| format!("0.0.0.0:{port}").parse().ok();
    let namespace = bridge.namespace().unwrap_or_default();
    let mut tls = ServerTls::default();
    if let Some(listener_tls) = &spec.listener.tls {
        tls.cert = Some(format!("{LISTENER_TLS_DIR}/tls.crt").into());
        tls.key = Some(format!("{LISTENER_TLS_DIR}/tls.key").into());
        if listener_tls.require_client_certificate {
            tls.client_ca = Some(format!("{LISTENER_TLS_DIR}/ca.crt").into());
        }
    }
    let mut config = RProxyConfig::new(Vec::new());
    let websocket = spec.listener.websocket.as_ref();
    let wss = spec.listener.websocket_tls();
    config.listeners = Listeners {
        tcp: spec.listener.plain_port().and_then(any),
        tls: spec.listener.tls.as_ref().and_then(|t| any(t.port)),
        ws: websocket.filter(|_| !wss).and_then(|w| any(w.port)),
        wss: websocket.filter(|_| wss).and_then(|w| any(w.port)),
        ws_path: spec
            .listener
            .websocket
            .as_ref()
            .map_or_else(|| "/mqtt".into(), |w| w.path.clone()),
    };
    config.tls = tls;
    // Every s-proxy pod, found through the headless Service and re-resolved as pods come and go,
    // so sessions spread over all of them; the certificate names the s-proxy Service.
    let scheme = if link_tls(bridge) { "https" } else { "http" };
    config.s_proxy = SProxyLink {
        endpoints: vec![format!(
            "{scheme}://{}.{namespace}.svc:{S_PROXY_PORT}",
            s_proxy_pods_name(bridge)
        )],
        discover: true,
        ..config.s_proxy
    };
    if link_tls(bridge) {
        config.s_proxy.server_name = Some(format!("{}.{namespace}.svc", s_proxy_name(bridge)));
        config.s_proxy.tls = ClientTls {
            ca: link_file(relay_pki::CA_CERT),
            cert: link_file("tls.crt"),
            key: link_file("tls.key"),
        };
    }
    config.limits = spec.limits.clone();
    config.auth.jwt = spec.auth.jwt.as_ref().map(|jwt| {
        let mut auth = JwtAuth::new(
            jwt.issuer.clone(),
            format!("{JWT_KEYS_DIR}/{}", jwt.keys_secret.key),
        );
        auth.audience = jwt.audience.clone();
        if !jwt.algorithms.is_empty() {
            auth.algorithms = jwt.algorithms.clone();
        }
        auth.client_id_claim = jwt.client_id_claim.clone();
        auth.publish_claim = jwt.publish_claim.clone();
        auth.subscribe_claim = jwt.subscribe_claim.clone();
        Box::new(auth)
    });
    let auth = &spec.auth;
    config.auth.mode = Some(auth.mode.unwrap_or(AuthMode::Anonymous));
    config.auth.password_file = (auth.password_secret.as_ref())
        .map(|s| format!("{PASSWORDS_DIR}/{}", s.key_or(PASSWORDS_KEY)).into());
    config.auth.acl_file =
        (auth.acl_config_map.as_ref()).map(|c| format!("{ACL_DIR}/{}", c.key_or(ACL_KEY)).into());
    config
}

pub fn s_proxy_config(bridge: &MqttBridge, inputs: &Inputs) -> Result<SProxyConfig, RenderError> {
    let upstream = &bridge.spec.upstream;
    let mut config = SProxyConfig {
        listen: format!("0.0.0.0:{S_PROXY_PORT}")
            .parse()
            .expect("valid address"),
        max_packet_size: bridge.spec.limits.max_packet_size,
        ..SProxyConfig::default()
    };
    if link_tls(bridge) {
        // Only holders of this bridge's r-proxy certificate may open relay streams.
        config.tls = ServerTls {
            cert: link_file("tls.crt"),
            key: link_file("tls.key"),
            client_ca: link_file(relay_pki::CA_CERT),
        };
    }
    if let Some(kafka) = &upstream.kafka {
        let mut target = KafkaConfig::new(kafka.bootstrap.clone());
        target.topics = kafka.topics.clone();
        // The operator creates the topics it can name (with the right cleanup policies); s-proxy
        // only checks them, and creates the topics of `${params}` routes, named only as devices
        // publish.
        target.create_topics = false;
        target.create_routed_topics = Some(true);
        if let Some(max) = kafka.max_routed_topics {
            target.max_routed_topics = max;
        }
        target.new_topics = kafka.new_topics.clone();
        target.qos0_acks = kafka.qos0_acks;
        target.routes = kafka.routes.clone();
        target.clients = kafka.clients.clone();
        target.limits = kafka.limits.clone();
        if let Some(queue) = kafka.session_queue {
            target.session_queue = queue as usize;
        }
        if let Some(lease) = &kafka.replica_lease {
            target.replica_lease =
                humantime::parse_duration(lease).map_err(|e| RenderError::ReplicaLease {
                    message: format!("{lease:?}: {e}"),
                })?;
        }
        let connection = kafka.kafka_ref().connection(inputs.kafka_client_cert);
        target.tls = connection.tls;
        target.sasl = connection.sasl;
        config.upstream = Upstream::Kafka;
        config.kafka = Some(Box::new(target));
        return Ok(config);
    }
    let broker = upstream.broker.as_ref().ok_or(RenderError::NoUpstream)?;
    let mut target = BrokerConfig::new(broker.address.clone());
    if let Some(tls) = &broker.tls {
        let mut files = ClientTls {
            ca: Some(format!("{BROKER_TLS_DIR}/ca.crt").into()),
            ..ClientTls::default()
        };
        if inputs.broker_client_cert {
            files.cert = Some(format!("{BROKER_TLS_DIR}/tls.crt").into());
            files.key = Some(format!("{BROKER_TLS_DIR}/tls.key").into());
        }
        target.tls = Some(files);
        target.server_name = tls.server_name.clone();
    }
    config.broker = Some(target);
    Ok(config)
}

/// The three topics of Kafka mode and those of routes without `${params}` (s-proxy creates the
/// others as devices first publish to them, with the same route settings).
pub fn kafka_topics(bridge: &MqttBridge) -> Vec<TopicSpec> {
    let Some(kafka) = &bridge.spec.upstream.kafka else {
        return Vec::new();
    };
    let compacted = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    // The retained and sessions tables are compacted and read by key: their partitions are
    // never raised after creation.
    let topic = |name: &str, config: BTreeMap<String, String>| TopicSpec {
        name: name.into(),
        partitions: kafka.new_topics.partitions,
        replication_factor: kafka.new_topics.replication_factor,
        may_grow: !TopicSpec::compacted(&config),
        config,
    };
    let mut topics = vec![
        topic(&kafka.topics.messages, BTreeMap::new()),
        topic(&kafka.topics.retained, compacted.clone()),
        topic(&kafka.topics.sessions, compacted),
    ];
    topics.extend(
        kafka
            .routes
            .iter()
            .filter(|r| !r.messages.contains("${"))
            .map(|r| TopicSpec {
                partitions: r.partitions.unwrap_or(kafka.new_topics.partitions),
                ..topic(&r.messages, r.topic_config.clone())
            }),
    );
    topics
}

pub fn owner(bridge: &MqttBridge) -> Owner {
    Owner {
        instance: bridge.name_any(),
        namespace: bridge.namespace(),
        reference: bridge
            .controller_owner_ref(&())
            .expect("a stored MqttBridge has a name and uid"),
    }
}

pub fn render(bridge: &MqttBridge, inputs: &Inputs) -> Result<Rendered, RenderError> {
    let mut warnings = Vec::new();
    let listener = &bridge.spec.listener;
    let mode = bridge.spec.auth.mode;
    let credentials = matches!(mode, Some(AuthMode::Jwt | AuthMode::Password));
    if credentials && listener.has_plaintext() {
        if !listener.allow_plaintext_credentials {
            return Err(RenderError::PlaintextCredentials);
        }
        warnings.push("devices send credentials over a listener without TLS (spec.listener.allowPlaintextCredentials)".to_string());
    }
    match mode {
        None => warnings.push("r-proxy does not authenticate devices (spec.auth.mode unset): the broker judges their CONNECT credentials".to_string()),
        Some(AuthMode::Anonymous) => warnings.push("r-proxy lets every device in (spec.auth.mode: anonymous)".to_string()),
        Some(_) => {}
    }
    if !link_tls(bridge) {
        warnings.push("the r-proxy to s-proxy link runs without TLS (spec.relay.plaintext): any pod that reaches s-proxy can open sessions as any client".to_string());
    }
    let r_config = r_proxy_config(bridge);
    r_config.validate().map_err(|error| RenderError::Config {
        role: "r-proxy",
        error,
    })?;
    let s_config = s_proxy_config(bridge, inputs)?;
    s_config.validate().map_err(|error| RenderError::Config {
        role: "s-proxy",
        error,
    })?;
    let r_yaml = strait_config::to_yaml(&r_config);
    let s_yaml = strait_config::to_yaml(&s_config);
    let owner = owner(bridge);
    let name = bridge.name_any();
    let host = format!("{name}.{}.svc", bridge.namespace().unwrap_or_default());

    let config_map: ConfigMap = from_json(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.meta(owner.config_map_name(), "config"),
        "data": {"r-proxy.yaml": r_yaml, "s-proxy.yaml": s_yaml},
    }));

    let spec = &bridge.spec;
    let (mut r_ports, mut service_ports, mut endpoints) = (Vec::new(), Vec::new(), Vec::new());
    if let Some(port) = spec.listener.plain_port() {
        r_ports.push(json!({"name": "mqtt", "containerPort": port}));
        service_ports.push(json!({"name": "mqtt", "port": port, "targetPort": "mqtt"}));
        endpoints.push(format!("mqtt://{host}:{port}"));
    }
    let mut r_volumes = Vec::new();
    let mut r_mounts = Vec::new();
    let mut s_volumes = Vec::new();
    let mut s_mounts = Vec::new();
    if link_tls(bridge) {
        for (role, volumes, mounts) in [
            ("r-proxy", &mut r_volumes, &mut r_mounts),
            ("s-proxy", &mut s_volumes, &mut s_mounts),
        ] {
            let secret = relay_pki::leaf_secret_name(&name, role);
            let (volume, mount) = secret_volume("link-tls", &secret, LINK_TLS_DIR);
            volumes.push(volume);
            mounts.push(mount);
        }
    }
    if let Some(tls) = &spec.listener.tls {
        r_ports.push(json!({"name": "mqtts", "containerPort": tls.port}));
        service_ports.push(json!({"name": "mqtts", "port": tls.port, "targetPort": "mqtts"}));
        endpoints.push(format!("mqtts://{host}:{}", tls.port));
        r_volumes.push(json!({"name": "listener-tls", "secret": {"secretName": tls.secret_name}}));
        r_mounts
            .push(json!({"name": "listener-tls", "mountPath": LISTENER_TLS_DIR, "readOnly": true}));
    }
    if let Some(jwt) = &spec.auth.jwt {
        let secret = &jwt.keys_secret.name;
        r_volumes.push(json!({"name": "jwt-keys", "secret": {"secretName": secret}}));
        r_mounts.push(json!({"name": "jwt-keys", "mountPath": JWT_KEYS_DIR, "readOnly": true}));
    }
    if let Some(passwords) = &spec.auth.password_secret {
        r_volumes.push(json!({"name": "passwords", "secret": {"secretName": passwords.name}}));
        r_mounts.push(json!({"name": "passwords", "mountPath": PASSWORDS_DIR, "readOnly": true}));
    }
    if let Some(acl) = &spec.auth.acl_config_map {
        r_volumes.push(json!({"name": "acl", "configMap": {"name": acl.name}}));
        r_mounts.push(json!({"name": "acl", "mountPath": ACL_DIR, "readOnly": true}));
    }
    if let Some(ws) = &spec.listener.websocket {
        let scheme = if spec.listener.websocket_tls() {
            "wss"
        } else {
            "ws"
        };
        r_ports.push(json!({"name": scheme, "containerPort": ws.port}));
        service_ports.push(json!({"name": scheme, "port": ws.port, "targetPort": scheme}));
        endpoints.push(format!("{scheme}://{host}:{}{}", ws.port, ws.path));
    }
    if let Some(tls) = spec.upstream.broker.as_ref().and_then(|b| b.tls.as_ref()) {
        s_volumes.push(json!({"name": "broker-tls", "secret": {"secretName": tls.secret_name}}));
        s_mounts.push(json!({"name": "broker-tls", "mountPath": BROKER_TLS_DIR, "readOnly": true}));
    }
    if let Some(kafka) = &spec.upstream.kafka {
        let (volumes, mounts) = kafka.kafka_ref().volumes();
        s_volumes.extend(volumes);
        s_mounts.extend(mounts);
    }

    let listener_ports: Vec<i32> = r_ports
        .iter()
        .filter_map(|p| p["containerPort"].as_i64())
        .map(|p| p as i32)
        .collect();
    let deployments = vec![
        ProxyPods {
            role: "s-proxy",
            image: &inputs.image,
            config_yaml: &s_yaml,
            credentials: inputs.kafka_credentials.as_deref(),
            replicas: inputs.s_proxy_replicas.resolve(spec.s_proxy.replicas),
            ports: vec![json!({"name": "grpc", "containerPort": S_PROXY_PORT})],
            volumes: s_volumes,
            mounts: s_mounts,
            resources: spec.s_proxy.resources.as_ref(),
        }
        .deployment(&owner),
        ProxyPods {
            role: "r-proxy",
            image: &inputs.image,
            config_yaml: &r_yaml,
            credentials: inputs.r_proxy_files.as_deref(),
            replicas: inputs.r_proxy_replicas.resolve(spec.r_proxy.replicas),
            ports: r_ports,
            volumes: r_volumes,
            mounts: r_mounts,
            resources: spec.r_proxy.resources.as_ref(),
        }
        .deployment(&owner),
    ];
    let services = vec![
        workload::service(
            &owner,
            s_proxy_name(bridge),
            "s-proxy",
            "ClusterIP",
            vec![json!({"name": "grpc", "port": S_PROXY_PORT, "targetPort": "grpc"})],
        ),
        workload::headless_service(
            &owner,
            s_proxy_pods_name(bridge),
            "s-proxy",
            vec![json!({"name": "grpc", "port": S_PROXY_PORT, "targetPort": "grpc"})],
        ),
        workload::service(
            &owner,
            name.clone(),
            "r-proxy",
            spec.r_proxy.service_type.as_deref().unwrap_or("ClusterIP"),
            service_ports,
        ),
    ];
    let disruption_budgets = ["s-proxy", "r-proxy"]
        .into_iter()
        .map(|role| workload::disruption_budget(&owner, role))
        .collect();
    let network_policies = vec![
        workload::network_policy(
            &owner,
            "s-proxy",
            &[],
            Some((
                json!({"podSelector": {"matchLabels": owner.selector("r-proxy")}}),
                &[S_PROXY_PORT],
            )),
            &spec.monitoring,
            spec.s_proxy.autoscale.is_some(),
        ),
        workload::network_policy(
            &owner,
            "r-proxy",
            &listener_ports,
            None,
            &spec.monitoring,
            spec.r_proxy.autoscale.is_some(),
        ),
    ];
    Ok(Rendered {
        config_map,
        deployments,
        services,
        disruption_budgets,
        network_policies,
        endpoints,
        warnings,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mqtt_bridge::spec::MqttBridgeSpec;

    /// A bridge from a spec; one without `auth` says `mode: anonymous`, as the CRD requires.
    fn bridge(spec: serde_json::Value) -> MqttBridge {
        let spec: MqttBridgeSpec = serde_json::from_value(spec).unwrap();
        let mut bridge = MqttBridge::new("devices", spec);
        bridge.metadata.namespace = Some("iot".into());
        bridge.metadata.uid = Some("1234".into());
        bridge
    }

    fn inputs() -> Inputs {
        Inputs {
            image: "strait/strait-proxy:test".into(),
            broker_client_cert: false,
            kafka_client_cert: false,
            kafka_credentials: None,
            r_proxy_files: None,
            s_proxy_replicas: Replicas::Spec,
            r_proxy_replicas: Replicas::Spec,
        }
    }

    #[test]
    fn broker_bridge_renders_configs_the_proxies_accept() {
        let bridge = bridge(json!({
            "upstream": {"broker": {"address": "mosquitto.mqtt.svc:1883"}},
            "listener": {"port": 1883, "websocket": {"port": 8080, "path": "/mqtt"}},
            "limits": {"maxPacketSize": 65536},
        }));
        let rendered = render(&bridge, &inputs()).unwrap();
        let data = rendered.config_map.data.unwrap();
        let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
        r.validate().unwrap();
        assert_eq!(
            r.s_proxy.endpoints,
            ["https://devices-s-proxy-pods.iot.svc:50516"]
        );
        assert_eq!(r.limits.max_packet_size, 65536);
        assert_eq!(r.listeners.ws.unwrap().port(), 8080);
        let s: SProxyConfig = serde_saphyr::from_str(&data["s-proxy.yaml"]).unwrap();
        s.validate().unwrap();
        assert_eq!(s.broker.unwrap().address, "mosquitto.mqtt.svc:1883");
        assert_eq!(
            rendered.endpoints,
            [
                "mqtt://devices.iot.svc:1883",
                "ws://devices.iot.svc:8080/mqtt"
            ]
        );
        for deployment in &rendered.deployments {
            let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
            assert_eq!(
                (owner.kind.as_str(), owner.controller),
                ("MqttBridge", Some(true))
            );
        }
    }

    #[test]
    fn a_config_change_changes_the_pod_template_hash() {
        let hash = |bridge: &MqttBridge| {
            let rendered = render(bridge, &inputs()).unwrap();
            rendered.deployments[1]
                .spec
                .as_ref()
                .unwrap()
                .template
                .metadata
                .as_ref()
                .unwrap()
                .annotations
                .as_ref()
                .unwrap()[crate::workload::CONFIG_HASH]
                .clone()
        };
        let before = bridge(json!({"upstream": {"broker": {"address": "b:1883"}}}));
        let after = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "limits": {"maxPacketSize": 4096},
        }));
        assert_ne!(hash(&before), hash(&after));
        assert_eq!(hash(&before), hash(&before.clone()));
    }

    #[test]
    fn jwt_keys_secret_is_mounted_whole_and_named_by_the_r_proxy_config() {
        let bridge = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "auth": {"mode": "jwt", "jwt": {
                "issuer": "https://auth.example.com/",
                "keysSecret": {"name": "device-jwks"},
                "algorithms": ["ES256"],
                "publishClaim": "mqtt_publish",
            }},
            "listener": {"tls": {"secretName": "devices-tls"}},
        }));
        let rendered = render(&bridge, &inputs()).unwrap();
        let data = rendered.config_map.data.unwrap();
        let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
        r.validate().unwrap();
        let jwt = r.auth.jwt.unwrap();
        assert_eq!(jwt.keys_file.to_str(), Some("/etc/strait/jwt/jwks.json"));
        assert_eq!(jwt.issuer, "https://auth.example.com/");
        assert_eq!(jwt.algorithms, [strait_config::auth::JwtAlgorithm::ES256]);
        assert_eq!(jwt.publish_claim.as_deref(), Some("mqtt_publish"));
        let pod = rendered.deployments[1]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        let volume = pod
            .volumes
            .unwrap()
            .into_iter()
            .find(|v| v.name == "jwt-keys")
            .unwrap();
        assert_eq!(
            volume.secret.unwrap().secret_name.as_deref(),
            Some("device-jwks")
        );
        let mount = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .find(|m| m.name == "jwt-keys")
            .unwrap();
        assert_eq!(mount.mount_path, "/etc/strait/jwt");
        assert_eq!(
            mount.sub_path, None,
            "a subPath mount would never see a rotated key"
        );
        assert!(bridge.spec.secrets().contains(&(
            "device-jwks".to_string(),
            "spec.auth.jwt.keysSecret.name".to_string()
        )));
    }

    #[test]
    fn tls_secrets_are_mounted_and_referenced_by_path() {
        let bridge = bridge(json!({
            "upstream": {"broker": {"address": "b:8883", "tls": {"secretName": "broker-ca"}}},
            "listener": {"tls": {"secretName": "devices-tls", "requireClientCertificate": true}},
        }));
        let rendered = render(&bridge, &inputs()).unwrap();
        let data = rendered.config_map.data.unwrap();
        let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
        assert_eq!(
            r.tls.client_ca.unwrap().to_str(),
            Some("/etc/strait/tls/listener/ca.crt")
        );
        let s: SProxyConfig = serde_saphyr::from_str(&data["s-proxy.yaml"]).unwrap();
        let tls = s.broker.unwrap().tls.unwrap();
        assert_eq!(
            tls.ca.unwrap().to_str(),
            Some("/etc/strait/tls/broker/ca.crt")
        );
        assert_eq!(tls.cert, None);
        let volumes = |i: usize| {
            rendered.deployments[i]
                .spec
                .as_ref()
                .unwrap()
                .template
                .spec
                .as_ref()
                .unwrap()
                .volumes
                .as_ref()
                .unwrap()
                .iter()
                .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(volumes(0), ["devices-s-proxy-link-tls", "broker-ca"]);
        assert_eq!(volumes(1), ["devices-r-proxy-link-tls", "devices-tls"]);
    }

    fn configs(rendered: &Rendered) -> (RProxyConfig, SProxyConfig) {
        let data = rendered.config_map.data.as_ref().unwrap();
        let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
        let s: SProxyConfig = serde_saphyr::from_str(&data["s-proxy.yaml"]).unwrap();
        r.validate().unwrap();
        s.validate().unwrap();
        (r, s)
    }

    fn service_ports(rendered: &Rendered) -> Vec<(String, i32)> {
        let service = rendered.services.iter().find(|s| s.name_any() == "devices");
        let spec = service.unwrap().spec.as_ref().unwrap();
        let ports = spec.ports.as_ref().unwrap();
        ports
            .iter()
            .map(|p| (p.name.clone().unwrap(), p.port))
            .collect()
    }

    #[test]
    fn a_bridge_with_only_a_broker_address_gets_a_mutual_tls_relay_link() {
        let bridge = bridge(json!({"upstream": {"broker": {"address": "b:1883"}}}));
        let rendered = render(&bridge, &inputs()).unwrap();
        let (r, s) = configs(&rendered);
        assert_eq!(
            r.s_proxy.endpoints,
            ["https://devices-s-proxy-pods.iot.svc:50516"]
        );
        let link = |f: &str| {
            Some(std::path::PathBuf::from(format!(
                "/etc/strait/tls/link/{f}"
            )))
        };
        assert_eq!(
            r.s_proxy.tls,
            ClientTls {
                ca: link("ca.crt"),
                cert: link("tls.crt"),
                key: link("tls.key"),
            }
        );
        assert_eq!(
            s.tls,
            ServerTls {
                cert: link("tls.crt"),
                key: link("tls.key"),
                client_ca: link("ca.crt"),
            },
            "s-proxy requires r-proxy's client certificate"
        );
        // The server certificate covers the name r-proxy dials.
        assert!(s_proxy_names(&bridge).contains(&"devices-s-proxy.iot.svc".to_string()));
        // The one thing left open is said so: the broker, not r-proxy, judges devices.
        assert_eq!(rendered.warnings.len(), 1, "{:?}", rendered.warnings);
        assert!(rendered.warnings[0].contains("spec.auth.mode unset"));
        assert_eq!(service_ports(&rendered), [("mqtt".to_string(), 1883)]);
    }

    #[test]
    fn a_plain_relay_link_only_when_spelled_out_and_then_with_a_warning() {
        let bridge = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "relay": {"plaintext": true},
        }));
        let rendered = render(&bridge, &inputs()).unwrap();
        let (r, s) = configs(&rendered);
        assert_eq!(
            r.s_proxy.endpoints,
            ["http://devices-s-proxy-pods.iot.svc:50516"]
        );
        assert!(!s.tls.is_enabled());
        assert!(
            rendered
                .warnings
                .iter()
                .any(|w| w.contains("spec.relay.plaintext")),
            "{:?}",
            rendered.warnings
        );
    }

    #[test]
    fn with_a_tls_listener_there_is_no_plain_port_unless_one_is_given() {
        let tls = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"tls": {"secretName": "devices-tls"}, "websocket": {}},
        }));
        let rendered = render(&tls, &inputs()).unwrap();
        assert_eq!(
            service_ports(&rendered),
            [("mqtts".to_string(), 8883), ("wss".to_string(), 8080)],
            "no plain MQTT and WebSocket over TLS"
        );
        let (r, _) = configs(&rendered);
        assert_eq!((r.listeners.tcp, r.listeners.ws), (None, None));
        assert_eq!(r.listeners.wss.unwrap().port(), 8080);
        assert_eq!(
            rendered.endpoints,
            [
                "mqtts://devices.iot.svc:8883",
                "wss://devices.iot.svc:8080/mqtt"
            ]
        );

        let both = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"port": 1883, "tls": {"secretName": "devices-tls"}, "websocket": {"tls": false}},
        }));
        let rendered = render(&both, &inputs()).unwrap();
        assert_eq!(
            service_ports(&rendered),
            [
                ("mqtt".to_string(), 1883),
                ("mqtts".to_string(), 8883),
                ("ws".to_string(), 8080)
            ]
        );
    }

    #[test]
    fn tokens_over_a_plain_listener_are_refused_unless_allowed() {
        let jwt = json!({"issuer": "https://auth.example.com/", "keysSecret": {"name": "jwks"}});
        let plain = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "auth": {"mode": "jwt", "jwt": jwt},
        }));
        let error = render(&plain, &inputs()).unwrap_err();
        assert!(matches!(error, RenderError::PlaintextCredentials));
        assert!(
            error
                .to_string()
                .contains("spec.listener.allowPlaintextCredentials")
        );

        let plain_ws = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"tls": {"secretName": "t"}, "websocket": {"tls": false}},
            "auth": {"mode": "jwt", "jwt": jwt},
        }));
        assert!(matches!(
            render(&plain_ws, &inputs()),
            Err(RenderError::PlaintextCredentials)
        ));

        let allowed = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"allowPlaintextCredentials": true},
            "auth": {"mode": "jwt", "jwt": jwt},
        }));
        let rendered = render(&allowed, &inputs()).unwrap();
        assert!(rendered.warnings[0].contains("allowPlaintextCredentials"));

        let passwords = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "auth": {"mode": "password", "passwordSecret": {"name": "p"}},
        }));
        assert!(matches!(
            render(&passwords, &inputs()),
            Err(RenderError::PlaintextCredentials)
        ));
    }

    #[test]
    fn network_policies_let_only_r_proxy_reach_s_proxy_and_clients_only_the_listeners() {
        let bridge = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"tls": {"secretName": "t"}},
        }));
        let rendered = render(&bridge, &inputs()).unwrap();
        let policy = |name: &str| {
            let policy = rendered
                .network_policies
                .iter()
                .find(|p| p.name_any() == name)
                .unwrap();
            serde_json::to_value(policy.spec.as_ref().unwrap()).unwrap()
        };
        let s_proxy = policy("devices-s-proxy");
        assert_eq!(
            s_proxy["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "s-proxy"
        );
        assert_eq!(s_proxy["policyTypes"], json!(["Ingress"]));
        let rules = s_proxy["ingress"].as_array().unwrap();
        assert_eq!(
            rules.len(),
            2,
            "the relay port from r-proxy, the admin port: {rules:?}"
        );
        assert_eq!(
            rules[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
            "r-proxy"
        );
        assert_eq!(rules[0]["ports"][0]["port"], 50516);
        assert_eq!(rules[1]["ports"][0]["port"], 9090);
        assert_eq!(
            rules[1]["from"],
            json!([{"podSelector": {}}]),
            "admin: own namespace"
        );
        let r_proxy = policy("devices-r-proxy");
        let rules = r_proxy["ingress"].as_array().unwrap();
        assert_eq!(rules[0].get("from"), None, "clients come from anywhere");
        assert_eq!(
            rules[0]["ports"],
            json!([{"protocol": "TCP", "port": 8883}])
        );

        let monitored = bridge_with_metrics_from();
        let rendered = render(&monitored, &inputs()).unwrap();
        let spec =
            serde_json::to_value(rendered.network_policies[1].spec.as_ref().unwrap()).unwrap();
        assert_eq!(
            spec["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "monitoring"
        );
    }

    fn bridge_with_metrics_from() -> MqttBridge {
        bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "monitoring": {"metricsFrom": [
                {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
            ]},
        }))
    }

    #[test]
    fn a_rotated_kafka_password_rolls_s_proxy_but_not_r_proxy() {
        let bridge = bridge(json!({"upstream": {"kafka": {"bootstrap": "k:9092"}}}));
        let hashes = |credentials: &str| {
            let inputs = Inputs {
                kafka_credentials: Some(credentials.into()),
                ..inputs()
            };
            let rendered = render(&bridge, &inputs).unwrap();
            rendered
                .deployments
                .iter()
                .map(|d| {
                    let template = d.spec.as_ref().unwrap().template.metadata.as_ref();
                    template.unwrap().annotations.as_ref().unwrap()[crate::workload::CONFIG_HASH]
                        .clone()
                })
                .collect::<Vec<_>>()
        };
        let (before, after) = (hashes("old password digest"), hashes("new password digest"));
        assert_ne!(
            before[0], after[0],
            "s-proxy reads the password at start: it rolls"
        );
        assert_eq!(before[1], after[1], "r-proxy does not use Kafka");
    }

    #[test]
    fn password_secret_and_acl_config_map_are_mounted_and_named_with_the_mode() {
        let bridge = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"tls": {"secretName": "devices-tls"}},
            "auth": {
                "mode": "password",
                "passwordSecret": {"name": "device-passwords"},
                "aclConfigMap": {"name": "device-acl", "key": "rules.yaml"},
            },
        }));
        let rendered = render(&bridge, &inputs()).unwrap();
        let data = rendered.config_map.data.unwrap();
        let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
        r.validate().unwrap();
        assert_eq!(r.auth.mode(), strait_config::auth::AuthMode::Password);
        assert_eq!(
            r.auth.password_file.unwrap().to_str(),
            Some("/etc/strait/passwords/passwords")
        );
        assert_eq!(
            r.auth.acl_file.unwrap().to_str(),
            Some("/etc/strait/acl/rules.yaml")
        );
        let pod = rendered.deployments[1]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap();
        let volumes = pod.volumes.unwrap();
        let volume = |name: &str| volumes.iter().find(|v| v.name == name).unwrap().clone();
        assert_eq!(
            volume("passwords").secret.unwrap().secret_name.as_deref(),
            Some("device-passwords")
        );
        assert_eq!(volume("acl").config_map.unwrap().name, "device-acl");
        let mounts: Vec<_> = pod.containers[0]
            .volume_mounts
            .clone()
            .unwrap()
            .into_iter()
            .map(|m| (m.name, m.mount_path))
            .collect();
        for want in [
            ("passwords", "/etc/strait/passwords"),
            ("acl", "/etc/strait/acl"),
        ] {
            assert!(
                mounts.contains(&(want.0.into(), want.1.into())),
                "{mounts:?}"
            );
        }
        assert!(bridge.spec.secrets().contains(&(
            "device-passwords".to_string(),
            "spec.auth.passwordSecret.name".to_string()
        )));
    }

    #[test]
    fn anonymous_is_rendered_explicitly_and_client_certificates_need_a_tls_listener() {
        let rendered = render(
            &bridge(json!({"upstream": {"broker": {"address": "b:1883"}}})),
            &inputs(),
        )
        .unwrap();
        let r: RProxyConfig =
            serde_saphyr::from_str(&rendered.config_map.data.unwrap()["r-proxy.yaml"]).unwrap();
        assert_eq!(r.auth.mode, Some(strait_config::auth::AuthMode::Anonymous));

        let without_tls = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "auth": {"mode": "clientCertificate"},
        }));
        let error = render(&without_tls, &inputs()).unwrap_err().to_string();
        assert!(error.contains("auth.mode"), "{error}");
        let with_tls = bridge(json!({
            "upstream": {"broker": {"address": "b:1883"}},
            "listener": {"tls": {"secretName": "devices-tls", "requireClientCertificate": true}},
            "auth": {"mode": "clientCertificate"},
        }));
        render(&with_tls, &inputs()).unwrap();
    }

    #[test]
    fn session_queue_replica_lease_and_limits_reach_s_proxy() {
        let bridge = bridge(json!({
            "upstream": {"kafka": {"bootstrap": "k:9092", "sessionQueue": 64, "replicaLease": "30s",
                "limits": {"maxSharedGroups": 5, "maxSessionExpiry": "1h", "receiveMaximum": 32}}},
            "auth": {"mode": "anonymous"},
        }));
        let (_, s) = configs(&render(&bridge, &inputs()).unwrap());
        let kafka = s.kafka.unwrap();
        assert_eq!(kafka.session_queue, 64);
        assert_eq!(kafka.replica_lease, std::time::Duration::from_secs(30));
        assert_eq!(kafka.limits.max_shared_groups, 5);
        assert_eq!(kafka.limits.max_session_expiry_seconds(), 3600);
        assert_eq!(kafka.limits.receive_maximum, 32);
        assert_eq!(kafka.limits.max_subscriptions, 100, "unset: the default");
    }

    #[test]
    fn s_proxy_creates_only_routed_topics_and_the_operator_the_rest_with_route_settings() {
        let bridge = bridge(json!({
            "upstream": {"kafka": {
                "bootstrap": "k:9092",
                "newTopics": {"partitions": 2},
                "maxRoutedTopics": 50,
                "routes": [
                    {"topic": "sensors/{id}/#", "messages": "telemetry.${params.id}",
                     "partitions": 6, "topicPattern": "telemetry\\.dev-[0-9]+"},
                    {"topic": "alerts/#", "messages": "alerts", "partitions": 4,
                     "topicConfig": {"retention.ms": "60000"}},
                ],
            }},
            "auth": {"mode": "anonymous"},
        }));
        let (_, s) = configs(&render(&bridge, &inputs()).unwrap());
        let kafka = s.kafka.unwrap();
        assert!(!kafka.create_topics && kafka.creates_routed_topics());
        assert_eq!(kafka.max_routed_topics, 50);
        assert_eq!(kafka.routes[0].partitions, Some(6));
        let topics = kafka_topics(&bridge);
        let names: Vec<_> = topics.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(
            names,
            ["mqtt-messages", "mqtt-retained", "mqtt-sessions", "alerts"],
            "routed topics are left to s-proxy"
        );
        assert_eq!(topics[3].partitions, 4);
        assert_eq!(topics[3].config["retention.ms"], "60000");

        let mut bad = bridge.clone();
        bad.spec.upstream.kafka.as_mut().unwrap().routes[0].topic_pattern = Some("(".into());
        let error = render(&bad, &inputs()).unwrap_err().to_string();
        assert!(error.contains("kafka.routes.topicPattern"), "{error}");
    }

    #[test]
    fn the_compacted_tables_are_never_grown() {
        let bridge = bridge(json!({
            "upstream": {"kafka": {"bootstrap": "k:9092", "newTopics": {"partitions": 6, "replicationFactor": 1}}},
            "auth": {"mode": "anonymous"},
        }));
        let growable: Vec<(String, bool)> = kafka_topics(&bridge)
            .into_iter()
            .map(|t| (t.name, t.may_grow))
            .collect();
        assert_eq!(
            growable,
            [
                ("mqtt-messages".to_string(), true),
                ("mqtt-retained".to_string(), false),
                ("mqtt-sessions".to_string(), false),
            ]
        );
    }
}
