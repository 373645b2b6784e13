//! Pure rendering: an `MqttBridge` → the Kubernetes objects that run it. No I/O, so every rule
//! here is unit-tested without a cluster.
//!
//! The proxies' configs (the ConfigMap's content) and the Kafka topics they need are in
//! `configs`; here the objects that run them (Deployments, Services, disruption budgets,
//! network policies).

mod configs;
#[cfg(test)]
mod tests;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use serde_json::json;

use strait_config::Validate;
use strait_config::auth::AuthMode;

use super::spec::MqttBridge;
use crate::relay_pki;
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

pub use configs::{kafka_topics, r_proxy_config, s_proxy_config};
