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

use std::net::SocketAddr;
use std::time::Duration;

use strait_e2e::cluster::{
    create_pod_namespace, external_service, kubectl, kubectl_json, kubectl_ok, pod_logs, repo_file,
    service_address, wait_for_condition,
};
use strait_e2e::{require, unique_name, wait_until};

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
    kubectl_ok(
        &["apply", "-n", &ns, "-f", "-"],
        Some(&example(
            "examples/mqttbridge-kafka.yaml",
            &[("replicationFactor: 3", "replicationFactor: 1")],
        )),
    );
    wait_for_condition("mqttbridge/fleet", &ns, "Ready", READY, || {
        diagnostics(&ns, &operator)
    });
    let fleet = service_address(&ns, "fleet", 1883);
    persistent_session_survives_s_proxy_pods(&ns, fleet, &ground.kafka, &operator).await;

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

fn mqtt311(addr: SocketAddr, id: &str, clean: bool) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_clean_session(clean);
    options.set_keep_alive(Duration::from_secs(30));
    rumqttc::AsyncClient::new(options, 64)
}

/// Polls `events` until `pick` returns `Some` for what it got (an event or a connection error;
/// rumqttc reconnects on the next poll after an error, so a caller waiting across a pod restart
/// sees the new connection), or panics naming `what` after `deadline`.
macro_rules! poll_until {
    ($events:expr, $deadline:expr, $what:expr, $pick:expr) => {{
        let deadline: Duration = $deadline;
        let give_up = tokio::time::Instant::now() + deadline;
        #[allow(unused_mut)] // a pick that keeps no state needs no `mut`
        let mut pick = $pick;
        loop {
            let polled = tokio::time::timeout_at(give_up, $events.poll()).await;
            let Ok(polled) = polled else {
                panic!("timed out after {deadline:?} waiting for {}", $what)
            };
            let failed = polled.is_err();
            if let Some(value) = pick(polled) {
                break value;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }};
}

/// The next packet from the server that `pick` accepts (see `poll_until!`).
async fn next_311<T>(
    events: &mut rumqttc::EventLoop,
    deadline: Duration,
    what: &str,
    mut pick: impl FnMut(rumqttc::Packet) -> Option<T>,
) -> T {
    poll_until!(events, deadline, what, |polled| match polled {
        Ok(rumqttc::Event::Incoming(packet)) => pick(packet),
        _ => None,
    })
}

async fn next_5<T>(
    events: &mut rumqttc::v5::EventLoop,
    deadline: Duration,
    what: &str,
    mut pick: impl FnMut(rumqttc::v5::mqttbytes::v5::Packet) -> Option<T>,
) -> T {
    poll_until!(events, deadline, what, |polled| match polled {
        Ok(rumqttc::v5::Event::Incoming(packet)) => pick(packet),
        _ => None,
    })
}

/// Queued QoS 1 messages of a persistent session survive the deletion of every s-proxy pod: they
/// were acknowledged, so they are in Kafka, and a new pod serves the session.
async fn persistent_session_survives_s_proxy_pods(
    ns: &str,
    fleet: SocketAddr,
    kafka: &str,
    operator: &Operator,
) {
    use rumqttc::{Packet, QoS};
    let topic = format!("fleet/{}", unique_name("queued"));
    let subscriber_id = unique_name("persistent");

    let (subscriber, mut events) = mqtt311(fleet, &subscriber_id, false);
    subscriber
        .subscribe(format!("{topic}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    next_311(
        &mut events,
        Duration::from_secs(60),
        "SUBACK from the fleet bridge",
        |p| matches!(p, Packet::SubAck(_)).then_some(()),
    )
    .await;
    subscriber.disconnect().await.unwrap();
    drop(events);

    // A client connected while its s-proxy goes away sees its connection end.
    let (_bystander, mut bystander_events) = mqtt311(fleet, &unique_name("bystander"), true);
    next_311(
        &mut bystander_events,
        Duration::from_secs(60),
        "CONNACK",
        |p| matches!(p, Packet::ConnAck(_)).then_some(()),
    )
    .await;

    let (publisher, mut publish_events) = mqtt311(fleet, &unique_name("publisher"), true);
    const MESSAGES: usize = 5;
    for i in 0..MESSAGES {
        publisher
            .publish(
                format!("{topic}/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    next_311(
        &mut publish_events,
        Duration::from_secs(60),
        "5 PUBACKs",
        |p| {
            acked += usize::from(matches!(p, Packet::PubAck(_)));
            (acked == MESSAGES).then_some(())
        },
    )
    .await;
    let in_kafka = strait_e2e::kafka_record_keys(kafka, "mqtt-messages", &topic, MESSAGES).await;
    assert_eq!(
        in_kafka.len(),
        MESSAGES,
        "every acknowledged message is a record in Kafka"
    );

    kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/instance=fleet,app.kubernetes.io/component=s-proxy",
            "--wait=false",
        ],
        None,
    );
    poll_until!(
        bystander_events,
        Duration::from_secs(60),
        "the bystander's connection to end",
        |polled: Result<_, _>| polled.is_err().then_some(())
    );
    wait_rolled_out(ns, "fleet-s-proxy", operator).await;

    let (_subscriber, mut events) = mqtt311(fleet, &subscriber_id, false);
    let present = next_311(
        &mut events,
        Duration::from_secs(90),
        "CONNACK of the resumed session",
        |p| match p {
            Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => {
                Some(ack.session_present)
            }
            _ => None,
        },
    )
    .await;
    assert!(present, "the session was kept (session present)");
    let mut received = std::collections::BTreeSet::new();
    next_311(
        &mut events,
        Duration::from_secs(90),
        "the 5 queued messages",
        |p| {
            if let Packet::Publish(publish) = p {
                received.insert(String::from_utf8_lossy(&publish.payload).into_owned());
            }
            (received.len() == MESSAGES).then_some(())
        },
    )
    .await;
    let want: std::collections::BTreeSet<_> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(received, want);
}

/// Calls `strait.demo.v1.Echo/Say` at `addr` once per text, all at once, with a real grpcio
/// client (`tests/e2e/python-grpcio`); returns the answers in order, or panics with the first
/// failed call's status.
fn echo_say(addr: SocketAddr, texts: &[String], deadline: Duration) -> Vec<String> {
    const CLIENT: &str = r#"
import sys, grpc
addr, timeout, texts = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def request(text):  # strait.demo.v1.EchoRequest{text}
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data
def reply_text(data):  # strait.demo.v1.EchoReply: field 1, a short string, comes first
    assert data[0] == 0x0a, data
    return data[2:2 + data[1]].decode()
say = grpc.insecure_channel(addr).unary_unary("/strait.demo.v1.Echo/Say")
# wait_for_ready: a Service that just got its endpoint may take a moment to route (kube-proxy).
calls = [say.future(request(t), timeout=timeout, wait_for_ready=True) for t in texts]
for call in calls:
    print(reply_text(call.result()))
"#;
    let python = std::process::Command::new(repo_file("tests/e2e/python-grpcio"))
        .output()
        .expect("run tests/e2e/python-grpcio");
    assert!(
        python.status.success(),
        "installing grpcio: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    let python = String::from_utf8(python.stdout).unwrap();
    let out = std::process::Command::new(python.trim())
        .arg("-c")
        .arg(CLIENT)
        .arg(addr.to_string())
        .arg(deadline.as_secs().to_string())
        .args(texts)
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio calls to {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The gRPC example as written, with the demo service as its backend pod: a grpcio client on
/// the host calls the route's Service and gets the demo service's answer through Kafka.
async fn grpc_example(ns: &str, ground: &Ground, operator: &Operator) {
    kubectl_ok(
        &[
            "create",
            "configmap",
            "echo-protos",
            "-n",
            ns,
            &format!(
                "--from-file={}",
                repo_file("proto/strait/demo/v1/echo.proto").display()
            ),
        ],
        None,
    );
    kubectl_ok(
        &["apply", "-n", ns, "-f", "-"],
        Some(&example(
            "examples/grpckafkaroute.yaml",
            &[("ghcr.io/strait-dev/strait-proxy:0.1.0", &ground.proxy_image)],
        )),
    );
    wait_rolled_out(ns, "echo-service", operator).await;
    wait_for_condition("grpckafkaroute/echo", ns, "Ready", READY, || {
        diagnostics(ns, operator)
    });
    let echo = service_address(ns, "echo", 50051);
    let texts: Vec<String> = (0..8).map(|i| format!("hello {i} through kafka")).collect();
    let answers =
        tokio::task::spawn_blocking(move || echo_say(echo, &texts, Duration::from_secs(60)));
    let answers = answers.await.unwrap();
    let want: Vec<String> = (0..8).map(|i| format!("hello {i} through kafka")).collect();
    assert_eq!(answers, want, "each call answered by the demo service pod");
}

/// Changing the spec rolls r-proxy and s-proxy: an MQTT 5 client is disconnected with 0x8B
/// (server shutting down), reconnects to the new pods, and its will is never published.
async fn rolling_update_drains_sessions(
    ns: &str,
    devices: SocketAddr,
    broker: &str,
    operator: &Operator,
) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    let wills = format!("pods/{}/wills", unique_name("roll"));
    let (broker_host, broker_port) = host_port(broker);
    let (watcher, mut watch_events) = AsyncClient::new(
        MqttOptions::new(unique_name("watcher"), broker_host, broker_port),
        16,
    );
    watcher
        .subscribe(format!("{wills}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    next_5(
        &mut watch_events,
        Duration::from_secs(30),
        "the watcher's SUBACK",
        |p| matches!(p, Packet::SubAck(_)).then_some(()),
    )
    .await;

    // The client is mosquitto_sub, whose debug output names each packet it receives.
    let mut client = MqttSubProcess::connect(devices, &format!("{wills}/client")).await;
    let before =
        kubectl_json(&["deployment", "devices-r-proxy", "-n", ns]).expect("r-proxy Deployment");
    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "devices",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"limits":{"maxPacketSize":131072}}}"#,
        ],
        None,
    );
    let disconnect = client.line_containing("Received DISCONNECT", READY).await;
    assert!(
        disconnect.contains("Received DISCONNECT (139)"),
        "drained with DISCONNECT 0x8B (139), got {disconnect:?}"
    );
    wait_until(
        READY,
        "the spec change to reach the r-proxy Deployment",
        || async {
            let now = kubectl_json(&["deployment", "devices-r-proxy", "-n", ns])?;
            (now["metadata"]["generation"] != before["metadata"]["generation"]).then_some(())
        },
    )
    .await;
    wait_rolled_out(ns, "devices-r-proxy", operator).await;
    wait_rolled_out(ns, "devices-s-proxy", operator).await;
    // A client reconnecting is served by the new pods.
    MqttSubProcess::connect(devices, &format!("{wills}/again")).await;

    // The broker publishes a will as soon as a connection drops, so by now it would have come;
    // a message published now must be the first thing the watcher receives.
    watcher
        .publish(
            format!("{wills}/sentinel"),
            QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    let first = next_5(
        &mut watch_events,
        Duration::from_secs(30),
        "the sentinel at the watcher",
        |p| match p {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        &first.payload[..],
        b"sentinel",
        "no will was published before it: {first:?}"
    );
}

/// A slow backend and a burst of calls build lag on the request topic; the operator adds
/// kafka-grpc pods (up to the 3 partitions), which join the consumer group and take partitions;
/// every call is answered; once the lag is gone and the stabilization window has passed, the
/// pods come back down to one.
async fn autoscaling_follows_lag(ns: &str, ground: &Ground, operator: &Operator) {
    // Topics of their own: lag left on a topic by an earlier run would scale before the burst.
    let requests = unique_name("scaled-requests");
    let replies = unique_name("scaled-replies");
    let route = serde_json::json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "GrpcKafkaRoute",
        "metadata": {"name": "scaled", "namespace": ns},
        "spec": {
            "kafka": {"bootstrap": "kafka.kafka.svc.cluster.local:9092"},
            "protos": {"configMap": "echo-protos"},
            "routes": [{"method": "strait.demo.v1.Echo/*",
                        "produce": {"topic": requests, "replyTo": replies}}],
            "topicDefaults": {"partitions": 3, "replicationFactor": 1},
            "backend": {
                "target": "http://echo-slow:50051",
                "concurrency": 4,
                "autoscale": {"minReplicas": 1, "maxReplicas": 3, "lagThreshold": 20,
                              "scaleDownStabilizationSeconds": 20, "pollIntervalSeconds": 3},
            },
        },
    });
    let slow = example(
        "examples/grpckafkaroute.yaml",
        &[
            ("ghcr.io/strait-dev/strait-proxy:0.1.0", &ground.proxy_image),
            ("\"0.0.0.0:50051\",", "\"0.0.0.0:50051\", --delay, 250ms,"),
            ("echo-service", "echo-slow"),
        ],
    );
    // Only the demo Deployment and Service of the example, renamed and slowed down.
    let slow: String = slow
        .split("\n---\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n---\n");
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&slow));
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&route.to_string()));
    wait_rolled_out(ns, "echo-slow", operator).await;
    wait_for_condition("grpckafkaroute/scaled", ns, "Ready", READY, || {
        operator.log()
    });
    let replicas = || {
        kubectl_json(&["deployment", "scaled-kafka-grpc", "-n", ns])
            .and_then(|d| d["spec"]["replicas"].as_i64())
    };
    assert_eq!(replicas(), Some(1), "one consumer before the burst");

    // 360 calls at 4 in flight and 250 ms each: 90 s for one consumer, lag far above 20.
    let address = service_address(ns, "scaled", 50051);
    let texts: Vec<String> = (0..360).map(|i| format!("burst {i}")).collect();
    let want = texts.clone();
    let calls =
        tokio::task::spawn_blocking(move || echo_say(address, &texts, Duration::from_secs(300)));

    let members = wait_until(
        READY,
        "3 kafka-grpc pods Ready in the consumer group",
        || async {
            let route = kubectl_json(&["grpckafkaroute", "scaled", "-n", ns])?;
            let ready = deployment_ready(ns, "scaled-kafka-grpc")?;
            let members = route["status"]["members"].as_i64()?;
            (ready == 3 && members == 3).then_some(members)
        },
    )
    .await;
    assert_eq!(
        members, 3,
        "every new pod joined the group and took a partition"
    );
    let answers = calls.await.unwrap();
    assert_eq!(answers, want, "every call of the burst answered");

    wait_until(
        READY,
        "kafka-grpc back to one pod after the stabilization window",
        || async {
            (replicas() == Some(1) && deployment_ready(ns, "scaled-kafka-grpc") == Some(1))
                .then_some(())
        },
    )
    .await;
    let route = kubectl_json(&["grpckafkaroute", "scaled", "-n", ns]).expect("the route");
    assert_eq!(
        route["status"]["lag"], 0,
        "the lag drained: {}",
        route["status"]
    );
}

/// A QoS 1 message published through the bridge reaches a subscriber of the bridge and a
/// subscriber of the real broker behind it.
async fn relay_round_trip(bridge: SocketAddr, broker: &str) {
    use rumqttc::{Packet, QoS};
    let topic = format!("pods/{}/temp", unique_name("relay"));
    let (broker_host, broker_port) = host_port(broker);
    let broker: SocketAddr = tokio::net::lookup_host((broker_host.as_str(), broker_port))
        .await
        .expect("resolve MQTT_BROKER")
        .next()
        .expect("an address of MQTT_BROKER");
    let mut subscribers = Vec::new();
    for (who, address) in [("the bridge", bridge), ("Mosquitto", broker)] {
        let (client, mut events) = mqtt311(address, &unique_name("sub"), true);
        client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        next_311(
            &mut events,
            Duration::from_secs(60),
            &format!("SUBACK from {who}"),
            |p| matches!(p, Packet::SubAck(_)).then_some(()),
        )
        .await;
        subscribers.push((who, client, events));
    }

    let (publisher, mut publish_events) = mqtt311(bridge, &unique_name("pub"), true);
    publisher
        .publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            b"through real pods".to_vec(),
        )
        .await
        .unwrap();
    next_311(
        &mut publish_events,
        Duration::from_secs(30),
        "PUBACK through the bridge",
        |p| matches!(p, Packet::PubAck(_)).then_some(()),
    )
    .await;
    for (who, _client, events) in &mut subscribers {
        let message = next_311(
            events,
            Duration::from_secs(30),
            &format!("the message via {who}"),
            |p| match p {
                Packet::Publish(publish) => Some(publish),
                _ => None,
            },
        )
        .await;
        assert_eq!(message.topic, topic, "via {who}");
        assert_eq!(&message.payload[..], b"through real pods", "via {who}");
    }
}

/// A certificate for the DNS name `host` signed by a fresh CA, made with openssl:
/// (CA PEM, cert PEM, key PEM).
fn server_certificate(host: &str) -> (String, String, String) {
    let dir = std::env::temp_dir().join(unique_name("pods-tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let san = format!("subjectAltName=DNS:{host}");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=pods test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    run(&[
        "req",
        "-new",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-subj",
        "/CN=mqtt",
        "-keyout",
        "tls.key",
        "-out",
        "tls.csr",
    ]);
    std::fs::write(
        dir.join("ext"),
        format!("{san}\nextendedKeyUsage=serverAuth\n"),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "tls.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "ext",
        "-out",
        "tls.crt",
    ]);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).unwrap();
    let pems = (read("ca.crt"), read("tls.crt"), read("tls.key"));
    let _ = std::fs::remove_dir_all(&dir);
    pems
}

/// Everything a Secret can carry into the pods: Kafka over SASL_SSL (the CA and the SCRAM
/// password from Secrets) and an MQTT TLS listener (certificate and key from a
/// `kubernetes.io/tls` Secret), under the read-only root filesystem. A TLS client publishes
/// QoS 1 and the record is in Kafka.
async fn secrets_reach_the_pods(ns: &str, ground: &Ground, operator: &Operator) {
    let kafka_ca = std::fs::read_to_string(&ground.kafka_tls_ca).expect("read KAFKA_TLS_CA");
    let password = std::fs::read_to_string(&ground.kafka_scram_password_file)
        .expect("read KAFKA_SCRAM_PASSWORD_FILE");
    let secrets = serde_json::json!({
        "apiVersion": "v1",
        "kind": "List",
        "items": [
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-ca", "namespace": ns},
             "stringData": {"ca.crt": kafka_ca}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "kafka-user", "namespace": ns},
             "stringData": {"password": password.trim()}},
        ],
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&secrets.to_string()));
    // Devices authenticate with a JWT signed by a key whose public half is in a Secret.
    let signer = JwtSigner::new();
    let jwks = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {"name": "secure-jwks", "namespace": ns},
        "stringData": {"jwks.json": signer.jwks()},
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&jwks.to_string()));
    let messages = unique_name("secure-messages");
    let bridge = serde_json::json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "MqttBridge",
        "metadata": {"name": "secure", "namespace": ns},
        "spec": {
            "upstream": {"kafka": {
                "bootstrap": ground.kafka_sasl_ssl_for_pods,
                "tls": {"secretName": "kafka-ca"},
                "sasl": {"mechanism": "SCRAM-SHA-512", "username": ground.kafka_scram_user,
                         "passwordSecret": {"name": "kafka-user"}},
                "topics": {"messages": messages, "retained": unique_name("secure-retained"),
                           "sessions": unique_name("secure-sessions")},
                "newTopics": {"partitions": 1, "replicationFactor": 1},
            }},
            "listener": {"port": 1883, "tls": {"secretName": "secure-tls", "port": 8883}},
            "auth": {"jwt": {
                "issuer": JWT_ISSUER,
                "keysSecret": {"name": "secure-jwks"},
                "clientIdClaim": "sub",
                "publishClaim": "mqtt_pub",
            }},
            "rProxy": {"replicas": 1},
            "sProxy": {"replicas": 1},
        },
    });
    // The listener's certificate names the Service as pods would call it; the host, which has
    // no cluster DNS, connects to its ClusterIP and checks the certificate for that name.
    let service_name = format!("secure.{ns}.svc");
    let (ca, cert, key) = server_certificate(&service_name);
    let tls = serde_json::json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "secure-tls", "namespace": ns},
        "stringData": {"tls.crt": cert, "tls.key": key},
    });
    kubectl_ok(&["apply", "-f", "-"], Some(&tls.to_string()));
    kubectl_ok(&["apply", "-f", "-"], Some(&bridge.to_string()));
    wait_for_condition("mqttbridge/secure", ns, "Ready", READY, || {
        diagnostics(ns, operator)
    });

    let address = service_address(ns, "secure", 8883);
    let device = unique_name("device");
    let tls = tls_for_name(&ca, &service_name);
    let device_options = |token: String| {
        let mut options =
            rumqttc::MqttOptions::new(device.clone(), address.ip().to_string(), address.port());
        options.set_transport(rumqttc::Transport::tls_with_config(
            rumqttc::TlsConfiguration::Rustls(tls.clone()),
        ));
        options.set_credentials("device", token);
        options
    };

    // A token signed by another key is refused: the keys came from the Secret.
    let (_forged, mut forged_events) =
        rumqttc::AsyncClient::new(device_options(JwtSigner::new().token(&device)), 16);
    let refused = poll_until!(
        forged_events,
        Duration::from_secs(60),
        "the forged token's CONNACK",
        |polled: Result<_, rumqttc::ConnectionError>| match polled {
            Err(rumqttc::ConnectionError::ConnectionRefused(code)) => Some(code),
            _ => None,
        }
    );
    assert!(
        matches!(
            refused,
            rumqttc::ConnectReturnCode::BadUserNamePassword
                | rumqttc::ConnectReturnCode::NotAuthorized
        ),
        "a forged token is refused, got {refused:?}"
    );

    let (client, mut events) = rumqttc::AsyncClient::new(device_options(signer.token(&device)), 16);
    let topic = format!("secure/{device}/up");
    client
        .publish(&topic, rumqttc::QoS::AtLeastOnce, false, "over tls")
        .await
        .unwrap();
    next_311(
        &mut events,
        Duration::from_secs(60),
        "PUBACK over TLS",
        |p| matches!(p, rumqttc::Packet::PubAck(_)).then_some(()),
    )
    .await;
    let keys = strait_e2e::kafka_record_keys(&ground.kafka, &messages, &topic, 1).await;
    assert_eq!(keys, [topic], "the message reached Kafka over SASL_SSL");
}

/// A TLS client that trusts only `ca_pem` and checks the server's certificate for `name`,
/// whatever address it connected to (the host reaches a Service by ClusterIP, its certificate
/// names the Service).
fn tls_for_name(ca_pem: &str, name: &str) -> std::sync::Arc<rustls::ClientConfig> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let provider = std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.expect("a PEM certificate"))
            .expect("a CA certificate");
    }
    let inner = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        provider.clone(),
    )
    .build()
    .expect("a verifier");
    let verifier = NamedServer {
        inner,
        name: ServerName::try_from(name.to_string()).expect("a DNS name"),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("TLS versions")
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(verifier))
        .with_no_client_auth();
    std::sync::Arc::new(config)
}

/// WebPKI verification of the server's chain for a fixed name instead of the dialled address.
#[derive(Debug)]
struct NamedServer {
    inner: std::sync::Arc<rustls::client::WebPkiServerVerifier>,
    name: rustls::pki_types::ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for NamedServer {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _dialled: &rustls::pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `mosquitto_sub -V mqttv5 -d` connected through `address` with a will on `will_topic`: a real
/// MQTT 5 client whose debug lines say what it receives.
struct MqttSubProcess {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
    _child: tokio::process::Child,
}

impl MqttSubProcess {
    /// Connects as an MQTT client does: no CONNACK within 10 s (a connection opened while a
    /// Service still pointed at a pod that is gone) or one refusing with 0x88 (server unavailable,
    /// which r-proxy answers while its link to a replaced s-proxy comes back) means a new
    /// attempt, for up to 90 s.
    async fn connect(address: SocketAddr, will_topic: &str) -> Self {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut attempts = Vec::new();
        loop {
            let (sub, connack) = Self::try_connect(address, will_topic).await;
            match connack {
                Some(connack) if connack.contains("CONNACK (0)") => return sub,
                Some(connack) if !connack.contains("CONNACK (136)") => {
                    panic!("connected: {connack:?}")
                }
                connack => attempts.push(connack),
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "no CONNACK (0) within 90 s through {address}: {attempts:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn try_connect(address: SocketAddr, will_topic: &str) -> (Self, Option<String>) {
        use tokio::io::AsyncBufReadExt as _;
        // stdbuf: mosquitto_sub's stdout is block-buffered in a pipe otherwise.
        let mut child = tokio::process::Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                &address.ip().to_string(),
                "-p",
                &address.port().to_string(),
            ])
            .args([
                "-V",
                "mqttv5",
                "-d",
                "-k",
                "30",
                "-i",
                &unique_name("mosquitto-sub"),
            ])
            .args(["-t", &format!("{will_topic}/never")])
            .args([
                "--will-topic",
                will_topic,
                "--will-payload",
                "gone",
                "--will-qos",
                "1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut sub = Self {
            lines: tokio::io::BufReader::new(stdout).lines(),
            seen: Vec::new(),
            _child: child,
        };
        let connack = sub
            .try_line_containing("CONNACK", Duration::from_secs(10))
            .await;
        if connack.as_ref().is_some_and(|c| c.contains("CONNACK (0)")) {
            sub.line_containing("SUBACK", Duration::from_secs(30)).await;
        }
        (sub, connack)
    }

    /// The next output line containing `text`, or a panic with everything seen so far.
    async fn line_containing(&mut self, text: &str, deadline: Duration) -> String {
        match self.try_line_containing(text, deadline).await {
            Some(line) => line,
            None => panic!(
                "mosquitto_sub printed no line with {text:?} within {deadline:?}: {:?}",
                self.seen
            ),
        }
    }

    /// The next output line containing `text`, if one comes within `deadline`.
    async fn try_line_containing(&mut self, text: &str, deadline: Duration) -> Option<String> {
        let found = tokio::time::timeout(deadline, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                let hit = line.contains(text);
                self.seen.push(line.clone());
                if hit {
                    return Some(line);
                }
            }
            None
        })
        .await;
        found.ok().flatten()
    }
}

const JWT_ISSUER: &str = "https://auth.pods.test/";

/// An ES256 key made for the test: its public half as a JWKS, and device tokens it signs.
struct JwtSigner {
    key: jsonwebtoken::EncodingKey,
    jwk: jsonwebtoken::jwk::Jwk,
}

impl JwtSigner {
    fn new() -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("a key");
        let key = jsonwebtoken::EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk =
            jsonwebtoken::jwk::Jwk::from_encoding_key(&key, jsonwebtoken::Algorithm::ES256)
                .expect("a JWK");
        jwk.common.key_id = Some("pods".into());
        Self { key, jwk }
    }

    fn jwks(&self) -> String {
        serde_json::to_string(&jsonwebtoken::jwk::JwkSet {
            keys: vec![self.jwk.clone()],
        })
        .expect("JWKS as JSON")
    }

    /// A token for device `sub` that may publish under `secure/{clientId}/`.
    fn token(&self, sub: &str) -> String {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
        header.kid = Some("pods".into());
        let claims = serde_json::json!({
            "iss": JWT_ISSUER,
            "sub": sub,
            "exp": jsonwebtoken::get_current_timestamp() + 600,
            "mqtt_pub": ["secure/{clientId}/#"],
        });
        jsonwebtoken::encode(&header, &claims, &self.key).expect("a signed token")
    }
}
