//! `spec.monitoring.serviceMonitor` against a real kube-apiserver: without the Prometheus
//! Operator's CRD the resource says so in `Ready`; once the CRD exists a ServiceMonitor and a
//! headless metrics Service appear, selecting the resource's pods; turned off, both go.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use kube::Client;
use kube::api::{Api, DynamicObject};
use kube::core::{ApiResource, GroupVersionKind};
use strait_e2e::{require, wait_until};
use support::{chart_operator, helm_ok, install_crds, kubectl, kubectl_ok, namespace, repo_file};

const SERVICE_MONITOR_CRD: &str = "servicemonitors.monitoring.coreos.com";

fn ready(ns: &str) -> (String, String, String) {
    let out = kubectl_ok(
        &[
            "get",
            "mqttbridge",
            "devices",
            "-n",
            ns,
            "-o",
            r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}|{.status.conditions[?(@.type=="Ready")].reason}|{.status.conditions[?(@.type=="Ready")].message}"#,
        ],
        None,
    );
    let mut parts = out.splitn(3, '|').map(str::to_string);
    let mut next = || parts.next().unwrap_or_default();
    (next(), next(), next())
}

async fn wait_ready(ns: &str, status: &str, reason: Option<&str>) -> String {
    wait_until(
        Duration::from_secs(90),
        &format!("Ready={status} ({reason:?})"),
        || async {
            let (s, r, message) = ready(ns);
            (s == status && reason.is_none_or(|reason| r == reason)).then_some(message)
        },
    )
    .await
}

#[tokio::test]
async fn service_monitor_follows_the_spec_and_explains_a_missing_crd() {
    require!("KUBECONFIG", "kube");
    install_crds();
    // The tests share one API server: start from a cluster without the Prometheus Operator.
    kubectl_ok(
        &[
            "delete",
            "crd",
            SERVICE_MONITOR_CRD,
            "--ignore-not-found",
            "--wait",
        ],
        None,
    );
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    let (operator, release, _) = chart_operator(&ns).await;

    let example = std::fs::read_to_string(repo_file("examples/mqttbridge-broker.yaml")).unwrap();
    let monitored = format!(
        "{example}  monitoring:\n    serviceMonitor: true\n    interval: 15s\n    labels: {{release: prometheus}}\n"
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&monitored),
    );
    let message = wait_ready(&ns, "False", Some("ServiceMonitorCrdMissing")).await;
    assert!(
        message.contains("spec.monitoring.serviceMonitor"),
        "the message names the field: {message}"
    );
    // The operator's per-resource gauges (the chart's dashboard and alerts read them) say so too.
    let resource = format!(
        r#"kind="MqttBridge",reason="ServiceMonitorCrdMissing",resource_name="devices",resource_namespace="{ns}""#
    );
    wait_for_series(
        operator.admin,
        &format!("strait_operator_resource_ready{{{resource}}} 0"),
    )
    .await;

    let crd = repo_file("crates/operator/tests/fixtures/servicemonitor-crd.yaml");
    kubectl_ok(&["apply", "-f", crd.to_str().unwrap()], None);
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            &format!("crd/{SERVICE_MONITOR_CRD}"),
            "--timeout=30s",
        ],
        None,
    );
    wait_ready(&ns, "True", None).await;
    let resource = format!(
        r#"kind="MqttBridge",reason="Ready",resource_name="devices",resource_namespace="{ns}""#
    );
    wait_for_series(
        operator.admin,
        &format!("strait_operator_resource_ready{{{resource}}} 1"),
    )
    .await;

    let monitors: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        &ns,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "monitoring.coreos.com",
            "v1",
            "ServiceMonitor",
        )),
    );
    let services: Api<Service> = Api::namespaced(client.clone(), &ns);
    let monitor = monitors.get("devices-metrics").await.unwrap();
    let labels = monitor.metadata.labels.clone().unwrap();
    assert_eq!(
        labels["release"], "prometheus",
        "the spec's labels are on it"
    );
    assert_eq!(
        monitor.metadata.owner_references.unwrap()[0].name,
        "devices",
        "owned by the bridge, so it goes with it"
    );
    let endpoint = &monitor.data["spec"]["endpoints"][0];
    assert_eq!(endpoint["port"], "admin");
    assert_eq!(endpoint["path"], "/metrics");
    assert_eq!(endpoint["interval"], "15s");

    // The ServiceMonitor selects the metrics Service, which selects the pods of both roles on
    // the port the proxies serve /metrics on.
    let service = services.get("devices-metrics").await.unwrap();
    let service_labels = service.metadata.labels.unwrap();
    for (key, value) in monitor.data["spec"]["selector"]["matchLabels"]
        .as_object()
        .unwrap()
    {
        assert_eq!(service_labels.get(key).map(String::as_str), value.as_str());
    }
    let spec = service.spec.unwrap();
    assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
    let port = &spec.ports.unwrap()[0];
    assert_eq!((port.name.as_deref(), port.port), (Some("admin"), 9090));
    let selector: Vec<String> = spec
        .selector
        .unwrap()
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let pods = kubectl_ok(
        &[
            "get",
            "deployments",
            "-n",
            &ns,
            "-l",
            &selector.join(","),
            "-o",
            "name",
        ],
        None,
    );
    assert_eq!(
        pods.lines().count(),
        2,
        "the metrics Service's selector covers r-proxy and s-proxy: {pods}"
    );

    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "devices",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"monitoring":{"serviceMonitor":false}}}"#,
        ],
        None,
    );
    wait_until(
        Duration::from_secs(60),
        "the ServiceMonitor and the metrics Service to go",
        || async {
            let monitor = monitors.get_opt("devices-metrics").await.unwrap();
            let service = services.get_opt("devices-metrics").await.unwrap();
            (monitor.is_none() && service.is_none()).then_some(())
        },
    )
    .await;
    assert!(
        !operator.log().contains("is forbidden"),
        "the chart's RBAC covers monitoring:\n{}",
        operator.log()
    );

    // A deleted resource's series go with it.
    kubectl_ok(
        &["delete", "mqttbridge", "devices", "-n", &ns, "--wait"],
        None,
    );
    let gone = format!(r#"resource_namespace="{ns}""#);
    wait_until(
        Duration::from_secs(60),
        "the deleted bridge's series to go",
        || async {
            let (_, body) = strait_e2e::http_get(operator.admin, "/metrics")
                .await
                .ok()?;
            (!body.contains(&gone)).then_some(())
        },
    )
    .await;

    drop(operator);
    helm_ok(&["uninstall", &release, "-n", &ns]);
    let _ = kubectl(
        &["delete", "crd", SERVICE_MONITOR_CRD, "--ignore-not-found"],
        None,
    );
}

/// Waits until the operator's `/metrics` has exactly the line `line`.
async fn wait_for_series(admin: std::net::SocketAddr, line: &str) {
    wait_until(Duration::from_secs(60), line, || async {
        let (_, body) = strait_e2e::http_get(admin, "/metrics").await.ok()?;
        body.lines().any(|l| l == line).then_some(())
    })
    .await;
}
