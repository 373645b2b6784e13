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

/// The per-resource gauges (`strait_operator_resource_*`), read from the resources' status when
/// Prometheus scrapes: a deleted resource's series go with it.
pub const RESOURCE_METRIC_NAMES: &[&str] = &[
    "strait_operator_resource_ready",
    "strait_operator_resource_replicas",
    "strait_operator_resource_lag",
];

const RESOURCE_LABELS: &[&str] = &["kind", "resource_namespace", "resource_name"];

/// What the gauges show of one resource.
#[derive(Debug, Clone, PartialEq)]
pub struct Figures {
    pub kind: String,
    pub namespace: String,
    pub name: String,
    /// `Ready` is `True`, and the reason of the `Ready` condition (`Unknown` before the first).
    pub ready: bool,
    pub reason: String,
    pub replicas: Option<i32>,
    pub lag: Option<i64>,
}

impl Figures {
    fn of<K: kube::Resource<DynamicType = ()>>(
        object: &K,
        conditions: &[k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition],
        replicas: Option<i32>,
        lag: Option<i64>,
    ) -> Self {
        let ready = conditions.iter().find(|c| c.type_ == crate::status::READY);
        Self {
            kind: K::kind(&()).into_owned(),
            namespace: object.meta().namespace.clone().unwrap_or_default(),
            name: object.meta().name.clone().unwrap_or_default(),
            ready: ready.is_some_and(|c| c.status == "True"),
            reason: ready.map_or_else(|| "Unknown".into(), |c| c.reason.clone()),
            replicas,
            lag,
        }
    }
}

/// Reads every watched MqttBridge and GrpcKafkaRoute (kept by watches of their own) into the
/// gauges on each scrape.
pub struct ResourceGauges {
    list: Box<dyn Fn() -> Vec<Figures> + Send + Sync>,
    templates: [prometheus::IntGaugeVec; 3],
}

fn resource_gauges() -> prometheus::Result<[prometheus::IntGaugeVec; 3]> {
    use prometheus::{IntGaugeVec, Opts};
    let ready = IntGaugeVec::new(
        Opts::new(
            "strait_operator_resource_ready",
            "1 while the resource's Ready condition is True, else 0; reason is the condition's",
        ),
        &[RESOURCE_LABELS, &["reason"]].concat(),
    )?;
    let replicas = IntGaugeVec::new(
        Opts::new(
            "strait_operator_resource_replicas",
            "status.replicas: ready r-proxy pods (MqttBridge), consumer pods (GrpcKafkaRoute)",
        ),
        RESOURCE_LABELS,
    )?;
    let lag = IntGaugeVec::new(
        Opts::new(
            "strait_operator_resource_lag",
            "status.lag: the resource's consumer-group lag, where it has one",
        ),
        RESOURCE_LABELS,
    )?;
    Ok([ready, replicas, lag])
}

impl ResourceGauges {
    /// Gauges over whatever `list` returns at scrape time (tests pass a fixed list).
    pub fn new(list: Box<dyn Fn() -> Vec<Figures> + Send + Sync>) -> prometheus::Result<Self> {
        Ok(Self {
            list,
            templates: resource_gauges()?,
        })
    }

    /// Watches both kinds in each of `scopes` (`None`: every namespace) until the process ends
    /// and registers the gauges in `registry`.
    pub fn watch(
        client: &Client,
        scopes: &[Option<String>],
        registry: &prometheus::Registry,
    ) -> prometheus::Result<()> {
        use crate::grpc_route::GrpcKafkaRoute;
        use crate::mqtt_bridge::MqttBridge;
        let bridges: Vec<_> = scopes
            .iter()
            .map(|scope| watch_store::<MqttBridge>(client, scope.as_deref()))
            .collect();
        let routes: Vec<_> = scopes
            .iter()
            .map(|scope| watch_store::<GrpcKafkaRoute>(client, scope.as_deref()))
            .collect();
        let list = move || {
            let mut figures = Vec::new();
            for bridge in bridges.iter().flat_map(|store| store.state()) {
                let status = bridge.status.clone().unwrap_or_default();
                figures.push(Figures::of(
                    bridge.as_ref(),
                    &status.conditions,
                    status.replicas,
                    status.lag,
                ));
            }
            for route in routes.iter().flat_map(|store| store.state()) {
                let status = route.status.clone().unwrap_or_default();
                figures.push(Figures::of(
                    route.as_ref(),
                    &status.conditions,
                    status.replicas,
                    status.lag,
                ));
            }
            figures
        };
        registry.register(Box::new(Self::new(Box::new(list))?))
    }
}

/// A store of `K` in `namespace` (or all), kept current by a watch that retries with backoff.
fn watch_store<K>(client: &Client, namespace: Option<&str>) -> kube::runtime::reflector::Store<K>
where
    K: kube::Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    use futures::StreamExt as _;
    use kube::runtime::{WatchStreamExt as _, reflector, watcher};
    let (store, writer) = reflector::store();
    let api = crate::context::scoped::<K>(client, namespace);
    let stream = watcher(api, watcher::Config::default())
        .default_backoff()
        .reflect(writer)
        .applied_objects();
    tokio::spawn(stream.for_each(|_| std::future::ready(())));
    store
}

impl prometheus::core::Collector for ResourceGauges {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        self.templates.iter().flat_map(|g| g.desc()).collect()
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        // Fresh vectors each time, so series of deleted resources do not linger.
        let Ok([ready, replicas, lag]) = resource_gauges() else {
            return Vec::new();
        };
        for f in (self.list)() {
            let labels = [f.kind.as_str(), f.namespace.as_str(), f.name.as_str()];
            ready
                .with_label_values(&[&labels[..], &[f.reason.as_str()]].concat())
                .set(i64::from(f.ready));
            if let Some(count) = f.replicas {
                replicas.with_label_values(&labels).set(i64::from(count));
            }
            if let Some(records) = f.lag {
                lag.with_label_values(&labels).set(records);
            }
        }
        [ready.collect(), replicas.collect(), lag.collect()].concat()
    }
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

    #[test]
    fn resource_gauges_show_what_the_resources_report_and_only_those() {
        let registry = prometheus::Registry::new();
        let figures = vec![
            Figures {
                kind: "MqttBridge".into(),
                namespace: "iot".into(),
                name: "devices".into(),
                ready: true,
                reason: "Ready".into(),
                replicas: Some(3),
                lag: Some(42),
            },
            Figures {
                kind: "GrpcKafkaRoute".into(),
                namespace: "shop".into(),
                name: "orders".into(),
                ready: false,
                reason: "KafkaUnreachable".into(),
                replicas: None,
                lag: None,
            },
        ];
        let gauges = ResourceGauges::new(Box::new(move || figures.clone())).unwrap();
        registry.register(Box::new(gauges)).unwrap();
        let mut body = Vec::new();
        prometheus::Encoder::encode(
            &prometheus::TextEncoder::new(),
            &registry.gather(),
            &mut body,
        )
        .unwrap();
        let body = String::from_utf8(body).unwrap();
        for line in [
            r#"strait_operator_resource_ready{kind="MqttBridge",reason="Ready",resource_name="devices",resource_namespace="iot"} 1"#,
            r#"strait_operator_resource_ready{kind="GrpcKafkaRoute",reason="KafkaUnreachable",resource_name="orders",resource_namespace="shop"} 0"#,
            r#"strait_operator_resource_replicas{kind="MqttBridge",resource_name="devices",resource_namespace="iot"} 3"#,
            r#"strait_operator_resource_lag{kind="MqttBridge",resource_name="devices",resource_namespace="iot"} 42"#,
        ] {
            assert!(body.lines().any(|l| l == line), "{line} in\n{body}");
        }
        for unknown in ["replicas", "lag"] {
            let series = format!("strait_operator_resource_{unknown}{{kind=\"GrpcKafkaRoute\"");
            assert!(
                !body.contains(&series),
                "no {unknown} where unknown: {body}"
            );
        }
        let mut listed = RESOURCE_METRIC_NAMES.to_vec();
        listed.sort();
        assert_eq!(strait_runtime::metric_names(&registry), listed);
    }
}
