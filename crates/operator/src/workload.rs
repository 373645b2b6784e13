//! The Kubernetes objects every resource renders the same way: labels, the proxy Deployment (one
//! container of strait-proxy reading its role's config file from the resource's ConfigMap, with
//! probes, a non-root read-only security context and a config hash that rolls the pods), the
//! Service and the PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ResourceRequirements, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

pub const ADMIN_PORT: i32 = 9090;
pub const CONFIG_DIR: &str = "/etc/strait/config";
/// Pods roll when this annotation changes: the hash of the role's rendered config.
pub const CONFIG_HASH: &str = "strait.dev/config-hash";

/// Who owns the objects and where they live.
#[derive(Debug, Clone)]
pub struct Owner {
    pub instance: String,
    pub namespace: Option<String>,
    pub reference: OwnerReference,
}

impl Owner {
    pub fn labels(&self, component: &str) -> BTreeMap<String, String> {
        let mut labels = self.selector(component);
        labels.insert(
            "app.kubernetes.io/managed-by".into(),
            "strait-operator".into(),
        );
        labels
    }

    /// The labels that select a component's pods.
    pub fn selector(&self, component: &str) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("app.kubernetes.io/name".into(), "strait".into()),
            ("app.kubernetes.io/instance".into(), self.instance.clone()),
            ("app.kubernetes.io/component".into(), component.into()),
        ])
    }

    /// `kubectl get -l` form of [`Owner::selector`] (the scale subresource's selector).
    pub fn selector_string(&self, component: &str) -> String {
        self.selector(component)
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn meta(&self, name: String, component: &str) -> Value {
        json!({
            "name": name,
            "namespace": self.namespace,
            "labels": self.labels(component),
            "ownerReferences": [self.reference],
        })
    }

    pub fn config_map_name(&self) -> String {
        format!("{}-config", self.instance)
    }
}

/// One strait-proxy role as a Deployment.
pub struct ProxyPods<'a> {
    pub role: &'a str,
    pub image: &'a str,
    /// The role's rendered config, for the hash that rolls pods when it changes.
    pub config_yaml: &'a str,
    /// A digest of credentials the process reads only at start (Kafka TLS and SASL): part of the
    /// same hash, so a rotated password rolls the pods. Files re-read while running (listener
    /// certificates, JWT keys, the relay link's certificates) are left out: they rotate in place.
    pub credentials: Option<&'a str>,
    /// `None` leaves the Deployment's replicas to whoever else scales it.
    pub replicas: Option<i32>,
    pub ports: Vec<Value>,
    pub volumes: Vec<Value>,
    pub mounts: Vec<Value>,
    pub resources: Option<&'a ResourceRequirements>,
}

impl ProxyPods<'_> {
    pub fn deployment(self, owner: &Owner) -> Deployment {
        let role = self.role;
        let mut volumes = self.volumes;
        volumes.push(json!({"name": "config", "configMap": {"name": owner.config_map_name()}}));
        let mut mounts = self.mounts;
        mounts.push(json!({"name": "config", "mountPath": CONFIG_DIR, "readOnly": true}));
        let mut ports = self.ports;
        ports.push(json!({"name": "admin", "containerPort": ADMIN_PORT}));
        let mut spec = json!({
            "selector": {"matchLabels": owner.selector(role)},
            "template": {
                "metadata": {
                    "labels": owner.labels(role),
                    "annotations": {CONFIG_HASH: config_hash(&format!(
                        "{}{}",
                        self.config_yaml,
                        self.credentials.unwrap_or_default()
                    ))},
                },
                "spec": {
                    "automountServiceAccountToken": false,
                    "securityContext": {
                        "runAsNonRoot": true,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [{
                        "name": "strait-proxy",
                        "image": self.image,
                        "args": [
                            role,
                            "--config", format!("{CONFIG_DIR}/{role}.yaml"),
                            "--metrics-addr", format!("0.0.0.0:{ADMIN_PORT}"),
                            "--log-format", "json",
                        ],
                        "ports": ports,
                        "readinessProbe": {"httpGet": {"path": "/readyz", "port": "admin"}, "periodSeconds": 5},
                        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "admin"}, "periodSeconds": 10},
                        "resources": self.resources,
                        "securityContext": {
                            "allowPrivilegeEscalation": false,
                            "readOnlyRootFilesystem": true,
                            "capabilities": {"drop": ["ALL"]},
                        },
                        "volumeMounts": mounts,
                    }],
                    "volumes": volumes,
                },
            },
        });
        if let Some(replicas) = self.replicas {
            spec["replicas"] = json!(replicas);
        }
        from_json(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": owner.meta(format!("{}-{role}", owner.instance), role),
            "spec": spec,
        }))
    }
}

pub fn service(owner: &Owner, name: String, role: &str, type_: &str, ports: Vec<Value>) -> Service {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.meta(name, role),
        "spec": {"type": type_, "selector": owner.selector(role), "ports": ports},
    }))
}

/// Who may reach one role's pods: `open_ports` from anywhere (what clients use), `peer_ports`
/// only from `peers`, and the admin port only from `monitoring.metricsFrom` (default: the
/// resource's own namespace), plus the operator's pods when `operator_reads_load` (the
/// autoscaler reads the pods' sessions there). Everything else is refused where the network
/// plugin enforces NetworkPolicies. Egress stays open: Kafka and brokers may be anywhere.
pub fn network_policy(
    owner: &Owner,
    role: &str,
    open_ports: &[i32],
    peers: Option<(Value, &[i32])>,
    monitoring: &crate::monitoring::Monitoring,
    operator_reads_load: bool,
) -> NetworkPolicy {
    let ports = |ports: &[i32]| -> Vec<Value> {
        ports
            .iter()
            .map(|p| json!({"protocol": "TCP", "port": p}))
            .collect()
    };
    let mut ingress = Vec::new();
    if !open_ports.is_empty() {
        ingress.push(json!({"ports": ports(open_ports)}));
    }
    if let Some((peer, peer_ports)) = peers {
        ingress.push(json!({"from": [peer], "ports": ports(peer_ports)}));
    }
    let mut admin_from = match monitoring.metrics_from.is_empty() {
        true => json!([{"podSelector": {}}]),
        false => json!(monitoring.metrics_from),
    };
    if operator_reads_load && let Some(from) = admin_from.as_array_mut() {
        from.push(json!({
            "namespaceSelector": {},
            "podSelector": {"matchLabels": {
                "app.kubernetes.io/name": "strait",
                "app.kubernetes.io/component": "operator",
            }},
        }));
    }
    ingress.push(json!({"from": admin_from, "ports": ports(&[ADMIN_PORT])}));
    from_json(json!({
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": owner.meta(format!("{}-{role}", owner.instance), role),
        "spec": {
            "podSelector": {"matchLabels": owner.selector(role)},
            "policyTypes": ["Ingress"],
            "ingress": ingress,
        },
    }))
}

/// A headless Service over a role's ready pods: its DNS name resolves to every pod's address,
/// which is how r-proxy finds each s-proxy (a ClusterIP balances per connection, and r-proxy
/// keeps few, long-lived connections).
pub fn headless_service(owner: &Owner, name: String, role: &str, ports: Vec<Value>) -> Service {
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.meta(name, role),
        "spec": {"clusterIP": "None", "selector": owner.selector(role), "ports": ports},
    }))
}

/// Voluntary evictions (node drains) take one pod of the role at a time.
pub fn disruption_budget(owner: &Owner, role: &str) -> PodDisruptionBudget {
    from_json(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owner.meta(format!("{}-{role}", owner.instance), role),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": owner.selector(role)}},
    }))
}

/// Refuses an object this resource did not create. Server-side apply with `force` would take over
/// a user's Service or Secret of the same name, and Kubernetes would delete it with the resource.
pub fn check_owned(
    meta: &ObjectMeta,
    owner: &Owner,
    kind: &str,
) -> Result<(), crate::context::ReconcileError> {
    let ours = meta
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.uid == owner.reference.uid && r.controller == Some(true));
    if ours {
        return Ok(());
    }
    Err(crate::context::ReconcileError::NotOwned {
        kind: kind.into(),
        name: meta.name.clone().unwrap_or_default(),
    })
}

/// Server-side apply of an object `owner` owns, after making sure an existing object of that
/// name is the owner's (see [`check_owned`]). Returns the object as stored.
pub async fn apply_owned<K>(
    api: &Api<K>,
    object: &K,
    owner: &Owner,
) -> Result<K, crate::context::ReconcileError>
where
    K: Resource<DynamicType = ()> + Clone + Serialize + DeserializeOwned + std::fmt::Debug,
{
    let name = object.name_any();
    if let Some(existing) = api.get_metadata_opt(&name).await? {
        check_owned(&existing.metadata, owner, &K::kind(&()))?;
    }
    let params = PatchParams::apply(crate::FIELD_MANAGER).force();
    Ok(api.patch(&name, &params, &Patch::Apply(object)).await?)
}

pub fn config_hash(yaml: &str) -> String {
    let digest = Sha256::digest(yaml.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("rendered objects match their Kubernetes types")
}
