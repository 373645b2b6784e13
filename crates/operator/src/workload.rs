//! The Kubernetes objects every resource renders the same way: labels, the proxy Deployment (one
//! container of strait-proxy reading its role's config file from the resource's ConfigMap, with
//! probes, a non-root read-only security context and a config hash that rolls the pods), the
//! Service and the PodDisruptionBudget.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ResourceRequirements, Service};
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
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
                    "annotations": {CONFIG_HASH: config_hash(self.config_yaml)},
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

/// Voluntary evictions (node drains) take one pod of the role at a time.
pub fn disruption_budget(owner: &Owner, role: &str) -> PodDisruptionBudget {
    from_json(json!({
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": owner.meta(format!("{}-{role}", owner.instance), role),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": owner.selector(role)}},
    }))
}

pub fn config_hash(yaml: &str) -> String {
    let digest = Sha256::digest(yaml.as_bytes());
    digest[..8].iter().map(|b| format!("{b:02x}")).collect()
}

pub fn from_json<T: serde::de::DeserializeOwned>(value: Value) -> T {
    serde_json::from_value(value).expect("rendered objects match their Kubernetes types")
}
