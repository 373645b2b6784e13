//! Shared by the operator's tests: kubectl and helm as a user runs them, the CRDs installed,
//! a namespace per test.

#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Client;
use kube::api::{Api, PostParams};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
#[allow(unused_imports)] // each test file uses a different part
pub use strait_e2e::cluster::{helm_ok, kubectl, kubectl_ok, repo_file};
use strait_e2e::{Daemon, unique_name};

/// `kubectl wait --for=condition=CONDITION RESOURCE -n NS --timeout=90s`, as a user waits; on
/// failure it panics with kubectl's error, the resource and `operator_log`.
pub fn wait_for_condition(resource: &str, ns: &str, condition: &str, operator_log: &str) {
    strait_e2e::cluster::wait_for_condition(
        resource,
        ns,
        condition,
        std::time::Duration::from_secs(90),
        || format!("operator log:\n{operator_log}"),
    );
}

/// Installs the checked-in CRDs and waits until they are served.
pub fn install_crds() {
    let crds = repo_file("crds/strait.yaml");
    kubectl_ok(
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-f",
            crds.to_str().unwrap(),
        ],
        None,
    );
    kubectl_ok(
        &[
            "wait",
            "--for=condition=Established",
            "crd/mqttbridges.strait.dev",
            "crd/grpckafkaroutes.strait.dev",
            "--timeout=30s",
        ],
        None,
    );
}

pub async fn namespace(client: &Client) -> String {
    let name = unique_name("ns");
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap();
    namespaces
        .create(&PostParams::default(), &ns)
        .await
        .expect("create namespace");
    name
}

/// Waits up to `deadline` until the `Ready` condition of `resource` (`kind/name`) in `ns` has
/// `reason`, and returns that condition.
pub async fn wait_for_ready_reason(
    resource: &str,
    ns: &str,
    reason: &str,
    deadline: std::time::Duration,
) -> serde_json::Value {
    let (kind, name) = resource.split_once('/').expect("kind/name");
    let what = format!("{resource}: Ready with reason {reason}");
    strait_e2e::wait_until(deadline, &what, || async move {
        let json = kubectl_ok(&["get", kind, name, "-n", ns, "-o", "json"], None);
        let ready = condition(&serde_json::from_str(&json).ok()?, "Ready")?;
        (ready["reason"] == reason).then_some(ready)
    })
    .await
}

pub fn condition(bridge: &serde_json::Value, type_: &str) -> Option<serde_json::Value> {
    bridge["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|c| c["type"] == type_)
        .cloned()
}

/// The chart installed as release `strait-NS` in `ns`, and the operator running as a local
/// process with exactly the chart's ServiceAccount permissions (impersonation), which proves the
/// RBAC. Returns the operator, the release and the ServiceAccount's user name.
pub async fn chart_operator(ns: &str) -> (Daemon, String, String) {
    chart_operator_with(ns, &[], &[]).await
}

/// [`chart_operator`] with extra `helm --set` values and operator flags.
pub async fn chart_operator_with(
    ns: &str,
    values: &[&str],
    flags: &[&str],
) -> (Daemon, String, String) {
    let release = format!("strait-{ns}");
    let chart = repo_file("charts/strait");
    let mut install = vec![
        "install",
        &release,
        chart.to_str().unwrap(),
        "-n",
        ns,
        "--set",
        "image.repository=example.invalid/strait-operator",
    ];
    for value in values {
        install.extend(["--set", value]);
    }
    helm_ok(&install);
    let account = format!("system:serviceaccount:{ns}:{release}");
    let mut args = vec![
        "--proxy-image",
        "example.invalid/strait-proxy:test",
        "--lease-namespace",
        ns,
        "--lease-name",
        &release,
    ];
    args.extend_from_slice(flags);
    let operator = Daemon::start_with_env(
        env!("CARGO_BIN_EXE_strait-operator"),
        &args,
        &[
            ("KUBE_RS_DEBUG_IMPERSONATE_USER", &account),
            (
                "KUBE_RS_DEBUG_IMPERSONATE_GROUP",
                "system:serviceaccounts,system:authenticated",
            ),
        ],
    )
    .await;
    (operator, release, account)
}

/// Partitions of `topic` (0 when it does not exist).
pub fn partitions(bootstrap: &str, topic: &str) -> usize {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata
        .topics()
        .iter()
        .find(|t| t.name() == topic && t.error().is_none())
        .map_or(0, |t| t.partitions().len())
}

/// The `greeter-protos` ConfigMap the routes name, in `ns`.
pub async fn create_greeter_protos(client: &Client, ns: &str) {
    let protos: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "greeter-protos"},
        "data": {"greeter.proto": "syntax = \"proto3\";\npackage example;\nmessage Hi { string name = 1; }\nservice Greeter { rpc Hello(Hi) returns (Hi); }\n"},
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &protos)
        .await
        .unwrap();
}

pub fn kafka_admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap()
}

/// The value of `key` in `topic`'s config as Kafka reports it.
pub async fn topic_config(
    admin: &AdminClient<DefaultClientContext>,
    topic: &str,
    key: &str,
) -> Option<String> {
    let described = admin
        .describe_configs([&ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .unwrap();
    let config = described[0]
        .as_ref()
        .unwrap_or_else(|e| panic!("{topic}: {e}"));
    config.get(key).and_then(|e| e.value.clone())
}
