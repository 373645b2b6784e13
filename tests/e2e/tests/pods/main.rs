//! Real pods: the chart installs the operator, which runs in-cluster as a pod under the chart's
//! ServiceAccount; it renders each example of `examples/` into proxy pods that really run (the
//! images built from this tree by `tests/e2e/images`), and real clients on the host talk to them
//! through their Services, as a user's devices and services would.
//!
//! On the test ground the pods run on its real node (containerd, runc, kubelet, kube-proxy,
//! CoreDNS); Kafka and Mosquitto run on the host and are published to the pods as Services without
//! a selector, under the names the examples use. The same test binary runs against a kind cluster
//! (`.github/workflows/e2e-kind.yml`): it needs only a kubeconfig, images the cluster already
//! holds, and addresses of Kafka and Mosquitto that pods reach.
//!
//! One operator serves the whole cluster, so the scenario is one test whose steps run in order,
//! and the operator is uninstalled when it ends, pass or fail.

use std::time::Duration;

use strait_e2e::cluster::{
    create_pod_namespace, external_service, kubectl, kubectl_json, kubectl_ok, pod_logs, repo_file,
    service_address, wait_for_condition,
};
use strait_e2e::{require, unique_name, wait_until};

#[macro_use]
mod mqtt;
mod grpc;
mod scaling;
mod secrets;

use grpc::{autoscaling_follows_lag, grpc_example};
use mqtt::{
    persistent_session_survives_s_proxy_pods, relay_round_trip, rolling_update_drains_sessions,
    sessions_spread_over_every_s_proxy_pod,
};
use secrets::secrets_reach_the_pods;

const READY: Duration = Duration::from_secs(240);

/// What the scenario needs from the environment (`tests/e2e/services env`).
struct Ground {
    operator_image: String,
    proxy_image: String,
    kafka_for_pods: String,
    kafka: String,
    broker_for_pods: String,
    broker: String,
    kafka_sasl_ssl_for_pods: String,
    kafka_tls_ca: String,
    kafka_scram_user: String,
    kafka_scram_password_file: String,
}

/// The operator installed by the chart; uninstalled (with the test's namespaces) when dropped,
/// so no in-cluster operator outlives the test and reconciles other tests' resources.
struct Operator {
    ns: String,
    release: String,
    namespaces: Vec<String>,
}

impl Operator {
    fn install(ground: &Ground) -> Self {
        let ns = unique_name("strait-system");
        create_pod_namespace(&ns);
        let release = unique_name("strait");
        let operator = Self {
            ns: ns.clone(),
            release: release.clone(),
            namespaces: vec![ns.clone()],
        };
        let (repository, tag) = split_image(&ground.operator_image);
        let (proxy_repository, proxy_tag) = split_image(&ground.proxy_image);
        let chart = repo_file("charts/strait");
        let out = kubectl(&["version"], None); // fail early with kubectl's words if unreachable
        assert!(out.status.success(), "cluster reachable: {out:?}");
        let installed =
            std::process::Command::new(std::env::var("HELM").unwrap_or_else(|_| "helm".into()))
                .args([
                    "install",
                    &release,
                    chart.to_str().expect("UTF-8 path"),
                    "-n",
                    &ns,
                    "--set",
                    &format!("image.repository={repository}"),
                    "--set",
                    &format!("image.tag={tag}"),
                    "--set",
                    &format!("proxyImage.repository={proxy_repository}"),
                    "--set",
                    &format!("proxyImage.tag={proxy_tag}"),
                    "--set",
                    "image.pullPolicy=IfNotPresent",
                    "--set",
                    "logFormat=text",
                    "--wait",
                    "--timeout=4m",
                ])
                .output()
                .expect("run helm");
        assert!(
            installed.status.success(),
            "helm install: {}\noperator pods: {}\n{}",
            String::from_utf8_lossy(&installed.stderr),
            kubectl_ok(&["get", "pods", "-n", &ns, "-o", "wide"], None),
            operator.log(),
        );
        operator
    }

    fn selector(&self) -> String {
        format!("app.kubernetes.io/instance={}", self.release)
    }

    fn log(&self) -> String {
        format!("operator log:\n{}", pod_logs(&self.ns, &self.selector()))
    }

    fn namespace(&mut self, prefix: &str) -> String {
        let ns = unique_name(prefix);
        create_pod_namespace(&ns);
        self.namespaces.push(ns.clone());
        ns
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("{}", self.log());
        }
        // The test's namespaces go first, while the operator still runs to finish what it
        // owns there; only then the operator, so nothing of this test is left for the
        // operators of later tests to find.
        let mut delete = vec!["delete", "namespace", "--wait=true", "--timeout=180s"];
        delete.extend(self.namespaces.iter().skip(1).map(String::as_str));
        if delete.len() > 4 {
            let out = kubectl(&delete, None);
            if !out.status.success() {
                eprintln!(
                    "deleting the test namespaces: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        let _ = std::process::Command::new(std::env::var("HELM").unwrap_or_else(|_| "helm".into()))
            .args([
                "uninstall",
                &self.release,
                "-n",
                &self.ns,
                "--wait",
                "--timeout=60s",
            ])
            .output();
        let _ = kubectl(&["delete", "namespace", &self.ns, "--wait=false"], None);
    }
}

/// `repo/name:tag` as (`repo/name`, `tag`).
fn split_image(image: &str) -> (String, String) {
    let (repository, tag) = image
        .rsplit_once(':')
        .filter(|(_, tag)| !tag.contains('/'))
        .unwrap_or_else(|| panic!("image {image} has a tag"));
    (repository.into(), tag.into())
}

/// An example of `examples/` with a few words changed (e.g. a replication factor the one-broker
/// test Kafka can satisfy); each change must apply, so an edited example fails loudly here.
fn example(path: &str, edits: &[(&str, &str)]) -> String {
    let mut text = std::fs::read_to_string(repo_file(path)).expect("read the example");
    for (from, to) in edits {
        assert!(text.contains(from), "{path} still contains {from:?}");
        text = text.replace(from, to);
    }
    text
}

fn deployment_ready(ns: &str, name: &str) -> Option<i64> {
    let deployment = kubectl_json(&["deployment", name, "-n", ns])?;
    let want = deployment["spec"]["replicas"].as_i64()?;
    let status = &deployment["status"];
    let current = status["updatedReplicas"].as_i64() == Some(want)
        && status["readyReplicas"].as_i64() == Some(want)
        && status["replicas"].as_i64() == Some(want)
        && status["observedGeneration"] == deployment["metadata"]["generation"];
    current.then_some(want)
}

async fn wait_rolled_out(ns: &str, name: &str, operator: &Operator) {
    let what = format!("Deployment {ns}/{name} rolled out and Ready");
    let rolled = tokio::time::timeout(READY, async {
        while deployment_ready(ns, name).is_none() {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
    .await;
    assert!(
        rolled.is_ok(),
        "{what}\n{}\n{}\n{}",
        kubectl_ok(&["get", "pods", "-n", ns, "-o", "wide"], None),
        pod_logs(ns, "app.kubernetes.io/name=strait"),
        operator.log()
    );
}

/// What a failed wait shows: the namespace's pods, their logs, and the operator's log.
fn diagnostics(ns: &str, operator: &Operator) -> String {
    format!(
        "pods in {ns}:\n{}\n{}\n{}",
        String::from_utf8_lossy(&kubectl(&["get", "pods", "-n", ns, "-o", "wide"], None).stdout),
        pod_logs(ns, "app.kubernetes.io/name=strait"),
        operator.log()
    )
}

fn host_port(address: &str) -> (String, u16) {
    let (host, port) = address.rsplit_once(':').expect("host:port");
    (host.into(), port.parse().expect("numeric port"))
}

#[tokio::test]
async fn real_pods_end_to_end() {
    let ground = Ground {
        operator_image: require!("STRAIT_OPERATOR_IMAGE", "kube"),
        proxy_image: require!("STRAIT_PROXY_IMAGE", "kube"),
        kafka_for_pods: require!("KAFKA_BOOTSTRAP_FOR_PODS", "kafka"),
        kafka: require!("KAFKA_BOOTSTRAP", "kafka"),
        broker_for_pods: require!("MQTT_BROKER_FOR_PODS", "mosquitto"),
        broker: require!("MQTT_BROKER", "mosquitto"),
        kafka_sasl_ssl_for_pods: require!("KAFKA_SASL_SSL_BOOTSTRAP_FOR_PODS", "kafka"),
        kafka_tls_ca: require!("KAFKA_TLS_CA", "kafka"),
        kafka_scram_user: require!("KAFKA_SCRAM_USER", "kafka"),
        kafka_scram_password_file: require!("KAFKA_SCRAM_PASSWORD_FILE", "kafka"),
    };
    let started = std::time::Instant::now();
    let step = |what: &str| eprintln!("[pods {:>5.1}s] {what}", started.elapsed().as_secs_f64());
    step("helm install: the operator in-cluster");
    let mut operator = Operator::install(&ground);

    // The peers under the names the examples use, as a user's cluster would have them.
    for (ns, name, port, target) in [
        ("kafka", "kafka", 9092, &ground.kafka_for_pods),
        ("mqtt", "mosquitto", 1883, &ground.broker_for_pods),
    ] {
        create_pod_namespace(ns);
        external_service(ns, name, port, target);
    }
    let ns = operator.namespace("pods");

    // gRPC through Kafka to the demo service running as a pod.
    step("gRPC example through Kafka to the demo service pod");
    grpc_example(&ns, &ground, &operator).await;
    step("kafka-grpc scaled from lag and back");
    autoscaling_follows_lag(&ns, &ground, &operator).await;

    // Broker mode: devices -> r-proxy -> s-proxy -> Mosquitto.
    step("MqttBridge broker example");
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&example("examples/mqttbridge-broker.yaml", &[])),
    );
    wait_for_condition("mqttbridge/devices", &ns, "Ready", READY, || {
        diagnostics(&ns, &operator)
    });
    let devices = service_address(&ns, "devices", 1883);
    relay_round_trip(devices, &ground.broker).await;

    // Kafka mode: the example as written, but for the one-broker test Kafka.
    step("MqttBridge Kafka example, persistent session across deleted s-proxy pods");
    let fleet_topics = unique_name("fleet");
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&example(
            "examples/mqttbridge-kafka.yaml",
            &[
                ("replicationFactor: 3", "replicationFactor: 1"),
                // Topics of this run's own, so this bridge creates them (and may delete them).
                ("mqtt-messages", &format!("{fleet_topics}-messages")),
                ("mqtt-retained", &format!("{fleet_topics}-retained")),
                ("mqtt-sessions", &format!("{fleet_topics}-sessions")),
                ("sensor-readings", &format!("{fleet_topics}-readings")),
            ],
        )),
    );
    wait_for_condition("mqttbridge/fleet", &ns, "Ready", READY, || {
        diagnostics(&ns, &operator)
    });
    let fleet = service_address(&ns, "fleet", 1883);
    let messages = format!("{fleet_topics}-messages");
    persistent_session_survives_s_proxy_pods(&ns, fleet, &ground.kafka, &messages, &operator).await;
    step("Kafka example: sessions spread over every s-proxy pod");
    sessions_spread_over_every_s_proxy_pod(&ns, fleet).await;
    step("Kafka example: s-proxy follows its sessions; scale-down drains with 0x8B, no will");
    scaling::s_proxy_follows_sessions_and_drains_on_scale_down(&ns, fleet).await;
    step("Kafka example deleted under deletionPolicy: Delete: the topics it created go");
    scaling::deleting_the_bridge_deletes_the_topics_it_created(&ns, &ground.kafka, &fleet_topics)
        .await;

    // TLS, SASL and listener certificates from Secrets.
    step("Secrets: Kafka SASL_SSL, MQTT TLS listener");
    secrets_reach_the_pods(&ns, &ground, &operator).await;

    // A spec change rolls the pods: sessions drained with 0x8B, no will published.
    step("rolling update drains with 0x8B, no will");
    rolling_update_drains_sessions(&ns, devices, &ground.broker, &operator).await;

    // Deleting the resource garbage-collects what it owned.
    step("deleting a resource garbage-collects its objects");
    kubectl_ok(&["delete", "mqttbridge", "devices", "-n", &ns], None);
    wait_until(
        READY,
        "the objects of MqttBridge devices to be garbage-collected",
        || async {
            let left = kubectl_ok(
                &[
                    "get",
                    "deployments,services,configmaps,poddisruptionbudgets",
                    "-n",
                    &ns,
                    "-l",
                    "app.kubernetes.io/instance=devices",
                    "-o",
                    "name",
                ],
                None,
            );
            left.trim().is_empty().then_some(())
        },
    )
    .await;
    step("done");
}
