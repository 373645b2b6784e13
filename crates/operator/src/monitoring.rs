//! The optional Prometheus Operator ServiceMonitor of a resource: a headless Service over the
//! admin port of every pod the resource runs, and a ServiceMonitor that scrapes it. The admin
//! port is never added to the client-facing Services, which may be public.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::NetworkPolicyPeer;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams};
use kube::core::{ApiResource, GroupVersionKind};
use kube::{Client, KubeSchema};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::ReconcileError;
use crate::workload::{ADMIN_PORT, Owner, from_json};

const COMPONENT: &str = "metrics";

/// `spec.monitoring` of both resources.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Monitoring {
    /// Create a ServiceMonitor (monitoring.coreos.com/v1) that scrapes `/metrics` of every pod.
    /// Needs the Prometheus Operator's CRDs in the cluster.
    #[serde(default)]
    pub service_monitor: bool,
    /// Scrape interval such as `30s`; Prometheus's own default when unset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^[0-9]+(ms|s|m|h)$"))]
    pub interval: Option<String>,
    /// Extra labels on the ServiceMonitor, for a Prometheus that selects ServiceMonitors by label.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Who may reach the pods' admin port (metrics and probes), as NetworkPolicy peers, e.g.
    /// `[{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: monitoring}}}]`.
    /// Default: pods in the resource's own namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub metrics_from: Vec<NetworkPolicyPeer>,
}

fn service_monitors(namespace: &str, client: Client) -> Api<DynamicObject> {
    let kind = GroupVersionKind::gvk("monitoring.coreos.com", "v1", "ServiceMonitor");
    Api::namespaced_with(client, namespace, &ApiResource::from_gvk(&kind))
}

fn name(owner: &Owner) -> String {
    format!("{}-metrics", owner.instance)
}

/// The headless Service selecting every pod of the resource, whatever its role.
pub fn metrics_service(owner: &Owner) -> Service {
    let mut selector = owner.selector(COMPONENT);
    selector.remove("app.kubernetes.io/component");
    from_json(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": owner.meta(name(owner), COMPONENT),
        "spec": {
            "clusterIP": "None",
            "selector": selector,
            "ports": [{"name": "admin", "port": ADMIN_PORT, "targetPort": "admin"}],
        },
    }))
}

pub fn service_monitor(owner: &Owner, monitoring: &Monitoring) -> DynamicObject {
    let mut meta = owner.meta(name(owner), COMPONENT);
    let mut labels = owner.labels(COMPONENT);
    labels.extend(monitoring.labels.clone());
    meta["labels"] = json!(labels);
    let mut endpoint = json!({"port": "admin", "path": "/metrics"});
    if let Some(interval) = &monitoring.interval {
        endpoint["interval"] = json!(interval);
    }
    from_json(json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "ServiceMonitor",
        "metadata": meta,
        "spec": {
            "selector": {"matchLabels": owner.selector(COMPONENT)},
            "endpoints": [endpoint],
        },
    }))
}

/// Applies both objects when `spec.monitoring.serviceMonitor` is on, removes them when it is off.
pub async fn reconcile(
    client: &Client,
    owner: &Owner,
    monitoring: &Monitoring,
) -> Result<(), ReconcileError> {
    let namespace = owner.namespace.as_deref().expect("namespaced");
    let services: Api<Service> = Api::namespaced(client.clone(), namespace);
    let monitors = service_monitors(namespace, client.clone());
    let name = name(owner);
    if monitoring.service_monitor {
        let params = PatchParams::apply(crate::FIELD_MANAGER).force();
        crate::workload::apply_owned(&services, &metrics_service(owner), owner).await?;
        let monitor = service_monitor(owner, monitoring);
        match monitors
            .patch(&name, &params, &Patch::Apply(&monitor))
            .await
        {
            Err(kube::Error::Api(status)) if status.code == 404 => {
                return Err(ReconcileError::ServiceMonitorUnavailable);
            }
            result => {
                result?;
            }
        }
    } else {
        // Either may never have existed (or the CRD may be missing): 404 is the normal answer.
        for result in [
            services
                .delete(&name, &DeleteParams::default())
                .await
                .map(drop),
            monitors
                .delete(&name, &DeleteParams::default())
                .await
                .map(drop),
        ] {
            match result {
                Err(kube::Error::Api(status)) if status.code == 404 => {}
                other => other?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    fn owner() -> Owner {
        Owner {
            instance: "devices".into(),
            namespace: Some("iot".into()),
            reference: OwnerReference {
                api_version: "strait.dev/v1alpha1".into(),
                kind: "MqttBridge".into(),
                name: "devices".into(),
                uid: "1".into(),
                ..OwnerReference::default()
            },
        }
    }

    #[test]
    fn the_monitor_scrapes_the_admin_port_of_every_pod_of_the_resource() {
        let owner = owner();
        let service = metrics_service(&owner);
        let spec = service.spec.unwrap();
        let selector = spec.selector.unwrap();
        assert_eq!(selector["app.kubernetes.io/instance"], "devices");
        assert!(!selector.contains_key("app.kubernetes.io/component"));
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        let port = &spec.ports.unwrap()[0];
        assert_eq!(
            (port.name.as_deref(), port.port),
            (Some("admin"), ADMIN_PORT)
        );

        let monitoring = Monitoring {
            service_monitor: true,
            interval: Some("15s".into()),
            labels: BTreeMap::from([("release".into(), "prometheus".into())]),
            metrics_from: Vec::new(),
        };
        let monitor = service_monitor(&owner, &monitoring);
        assert_eq!(monitor.metadata.labels.unwrap()["release"], "prometheus");
        let matched = &monitor.data["spec"]["selector"]["matchLabels"];
        let service_labels = service.metadata.labels.unwrap();
        for (key, value) in matched.as_object().unwrap() {
            assert_eq!(service_labels[key], value.as_str().unwrap(), "label {key}");
        }
        assert_eq!(
            monitor.data["spec"]["endpoints"][0],
            json!({"port": "admin", "path": "/metrics", "interval": "15s"})
        );
    }
}
