//! GrpcKafkaRoute against a real kube-apiserver and a real Kafka: topics created with their
//! settings, consumers scaled from the group's lag up to the partition count and back down after
//! the window, Kafka unreachable reported and recovered, topics deleted under `Delete`.
//!
//! One file (about 700 lines) on purpose: each test binary links and starts its services once.

mod support;

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::{Api, PostParams};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, ResourceSpecifier};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use strait_e2e::{Daemon, require, unique_name, wait_until};
use support::{
    condition, create_greeter_protos, install_crds, kubectl_ok, namespace, partitions,
    wait_for_condition, wait_for_ready_reason,
};

const BIN: &str = env!("CARGO_BIN_EXE_strait-operator");

fn route_yaml(name: &str, bootstrap: &str, requests: &str, replies: &str) -> String {
    format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: GrpcKafkaRoute
metadata:
  name: {name}
spec:
  kafka: {{bootstrap: "{bootstrap}"}}
  protos: {{configMap: greeter-protos}}
  routes:
    - method: example.Greeter/*
      produce: {{topic: {requests}, replyTo: {replies}}}
  topics:
    {requests}: {{partitions: 3, config: {{retention.ms: "3600000"}}}}
  topicDefaults: {{partitions: 2}}
  backend:
    target: http://greeter:50051
    autoscale:
      minReplicas: 1
      maxReplicas: 5
      lagThreshold: 10
      scaleDownStabilizationSeconds: 3
      pollIntervalSeconds: 1
  deletionPolicy: Delete
"#
    )
}

fn get_route(ns: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl_ok(
        &["get", "grpckafkaroute", name, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}

async fn consumer_replicas(deployments: &Api<Deployment>, name: &str) -> Option<i32> {
    deployments.get(name).await.ok()?.spec?.replicas
}

/// Waits until the greeter route's consumer Deployment asks for `want` replicas.
async fn wait_for_consumers(
    deployments: &Api<Deployment>,
    want: i32,
    deadline: Duration,
    what: &str,
) {
    wait_until(deadline, what, || async {
        (consumer_replicas(deployments, "greeter-kafka-grpc").await == Some(want)).then_some(())
    })
    .await;
}

/// The operator as a local process, leading on a Lease of its own (named from `lease`).
async fn start_operator(lease: &str) -> Daemon {
    let lease = unique_name(lease);
    Daemon::start(
        BIN,
        &[
            "--proxy-image",
            "example.invalid/strait-proxy:test",
            "--lease-name",
            &lease,
        ],
    )
    .await
}

#[tokio::test]
async fn route_gets_topics_consumers_follow_lag_and_delete_removes_topics() {
    require!("KUBECONFIG", "kube");
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    create_greeter_protos(&client, &ns).await;
    let operator = start_operator("gkr-lease").await;

    let (requests, replies) = (
        unique_name("greeter-requests"),
        unique_name("greeter-replies"),
    );
    let yaml = route_yaml("greeter", &bootstrap, &requests, &replies);
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    wait_for_condition("grpckafkaroute/greeter", &ns, "Ready", &operator.log());

    // Topics with the partitions and configs the resource gives.
    assert_eq!(partitions(&bootstrap, &requests), 3);
    assert_eq!(partitions(&bootstrap, &replies), 2);
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let configs = admin
        .describe_configs([&ResourceSpecifier::Topic(&requests)], &AdminOptions::new())
        .await
        .unwrap();
    let config = configs[0].as_ref().unwrap();
    assert_eq!(
        config.get("retention.ms").and_then(|e| e.value.as_deref()),
        Some("3600000")
    );

    // No lag: the minimum of one consumer.
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    assert_eq!(
        consumer_replicas(&deployments, "greeter-kafka-grpc").await,
        Some(1)
    );

    // 100 requests nobody consumes: lag 100 / threshold 10 wants 10, capped at 3 partitions.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    for i in 0..100 {
        producer
            .send(
                FutureRecord::<(), _>::to(&requests)
                    .partition(i % 3)
                    .payload("call"),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    wait_for_consumers(
        &deployments,
        3,
        Duration::from_secs(60),
        "consumers to scale to the partition cap",
    )
    .await;
    let route = wait_until(
        Duration::from_secs(30),
        "the status to count all 100 records",
        || {
            let ns = ns.clone();
            async move {
                let route = get_route(&ns, "greeter");
                (route["status"]["lag"] == 100).then_some(route)
            }
        },
    )
    .await;
    assert_eq!(route["status"]["partitions"], 3);
    assert_eq!(route["status"]["desiredReplicas"], 3);
    let scaling = condition(&route, "Scaling").unwrap();
    assert_eq!(scaling["reason"], "PartitionCapped", "{scaling}");

    // The group catches up (commits to the end): back to one consumer once the window passes.
    let group = format!("strait-{ns}-greeter");
    let consumer = strait_e2e::group_offsets_client(&bootstrap, &group);
    let mut offsets = TopicPartitionList::new();
    for partition in 0..3 {
        let (_, high) = consumer
            .fetch_watermarks(&requests, partition, Duration::from_secs(10))
            .unwrap();
        offsets
            .add_partition_offset(&requests, partition, Offset::Offset(high))
            .unwrap();
    }
    consumer.commit(&offsets, CommitMode::Sync).unwrap();
    wait_for_consumers(
        &deployments,
        1,
        Duration::from_secs(60),
        "consumers to scale back down",
    )
    .await;
    // The status is written at the end of the pass that applied the replicas.
    wait_until(Duration::from_secs(30), "the status to show no lag", || {
        let ns = ns.clone();
        async move { (get_route(&ns, "greeter")["status"]["lag"] == 0).then_some(()) }
    })
    .await;

    // A HorizontalPodAutoscaler on the consumers' Deployment takes their replicas over. The
    // test cluster has no metrics API, so the HPA controller never moves them: the test scales
    // them as it would (the scale subresource), and the operator, which wants 1, leaves them.
    let hpa = serde_json::json!({
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {"name": "greeter-consumers"},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "greeter-kafka-grpc"},
            "minReplicas": 1,
            "maxReplicas": 6,
        },
    });
    kubectl_ok(&["apply", "-n", &ns, "-f", "-"], Some(&hpa.to_string()));
    let scaling = wait_until(
        Duration::from_secs(60),
        "Scaling to name the HorizontalPodAutoscaler",
        || {
            let ns = ns.clone();
            async move {
                let scaling = condition(&get_route(&ns, "greeter"), "Scaling")?;
                (scaling["reason"] == "ExternalAutoscaler").then_some(scaling)
            }
        },
    )
    .await;
    assert!(
        scaling["message"]
            .as_str()
            .unwrap()
            .contains("greeter-consumers"),
        "{scaling}"
    );
    kubectl_ok(
        &[
            "scale",
            "deployment",
            "greeter-kafka-grpc",
            "-n",
            &ns,
            "--replicas=2",
        ],
        None,
    );
    wait_for_consumers(
        &deployments,
        2,
        Duration::from_secs(30),
        "the consumers to be scaled to 2",
    )
    .await;
    // A spec change makes the operator apply again; the replicas stay the HPA's.
    kubectl_ok(
        &[
            "patch",
            "grpckafkaroute",
            "greeter",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"backend":{"autoscale":{"lagThreshold":11}}}}"#,
        ],
        None,
    );
    wait_until(
        Duration::from_secs(60),
        "the operator to apply the change",
        || {
            let ns = ns.clone();
            async move {
                let route = get_route(&ns, "greeter");
                (route["status"]["observedGeneration"] == route["metadata"]["generation"])
                    .then_some(())
            }
        },
    )
    .await;
    let consumers = deployments.get("greeter-kafka-grpc").await.unwrap();
    assert_eq!(consumers.spec.as_ref().unwrap().replicas, Some(2));
    let owns_replicas = consumers
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .filter(|m| m.manager.as_deref() == Some("strait-operator"))
        .any(|m| {
            m.fields_v1.as_ref().unwrap().0["f:spec"]
                .get("f:replicas")
                .is_some()
        });
    assert!(!owns_replicas, "the operator let go of spec.replicas");
    // The HPA gone, the operator's own autoscaler takes them back to what the lag calls for.
    kubectl_ok(&["delete", "hpa", "greeter-consumers", "-n", &ns], None);
    wait_for_consumers(
        &deployments,
        1,
        Duration::from_secs(60),
        "the operator's autoscaler to take the consumers back",
    )
    .await;
    wait_until(
        Duration::from_secs(30),
        "Scaling to be the operator's again",
        || {
            let ns = ns.clone();
            async move {
                let scaling = condition(&get_route(&ns, "greeter"), "Scaling")?;
                (scaling["reason"] != "ExternalAutoscaler").then_some(())
            }
        },
    )
    .await;

    // Kafka unreachable: Ready=False naming Kafka; the right address again recovers.
    let patch =
        |bootstrap: &str| format!(r#"{{"spec":{{"kafka":{{"bootstrap":"{bootstrap}"}}}}}}"#);
    kubectl_ok(
        &[
            "patch",
            "grpckafkaroute",
            "greeter",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &patch("127.0.0.1:1"),
        ],
        None,
    );
    let ready = wait_for_ready_reason(
        "grpckafkaroute/greeter",
        &ns,
        "KafkaUnreachable",
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(ready["status"], "False", "{ready}");
    assert!(
        ready["message"].as_str().unwrap().contains("127.0.0.1:1"),
        "{ready}"
    );
    kubectl_ok(
        &[
            "patch",
            "grpckafkaroute",
            "greeter",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            &patch(&bootstrap),
        ],
        None,
    );
    wait_until(Duration::from_secs(90), "Ready again", || {
        let ns = ns.clone();
        async move {
            let ready = condition(&get_route(&ns, "greeter"), "Ready")?;
            (ready["status"] == "True").then_some(())
        }
    })
    .await;

    // deletionPolicy: Delete removes the topics before the resource goes.
    kubectl_ok(
        &[
            "delete",
            "grpckafkaroute",
            "greeter",
            "-n",
            &ns,
            "--timeout=60s",
        ],
        None,
    );
    assert_eq!(
        partitions(&bootstrap, &requests),
        0,
        "request topic deleted"
    );
    assert_eq!(partitions(&bootstrap, &replies), 0, "reply topic deleted");
    drop(operator);
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// Kafka behind SASL_SSL (SCRAM-SHA-512, the test CA): the operator reads the Secrets for its own
/// clients and creates the topics through that listener; the proxies' configs name the files
/// the pods mount from the same Secrets; a missing Secret is `Ready=False` naming the field,
/// and creating it wakes the route.
#[tokio::test]
async fn route_reaches_kafka_over_sasl_ssl_with_credentials_from_secrets() {
    require!("KUBECONFIG", "kube");
    let plain_bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let bootstrap = require!("KAFKA_SASL_SSL_BOOTSTRAP", "kafka");
    let ca = std::fs::read_to_string(require!("KAFKA_TLS_CA", "kafka")).unwrap();
    let user = require!("KAFKA_SCRAM_USER", "kafka");
    let password = std::fs::read_to_string(require!("KAFKA_SCRAM_PASSWORD_FILE", "kafka")).unwrap();
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    create_greeter_protos(&client, &ns).await;
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), &ns);
    let ca_secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kafka-ca"},
        "stringData": {"ca.crt": ca},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &ca_secret)
        .await
        .unwrap();
    let operator = start_operator("gkr-sasl-lease").await;

    let (requests, replies) = (unique_name("sasl-requests"), unique_name("sasl-replies"));
    let yaml = format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: GrpcKafkaRoute
metadata:
  name: secured
spec:
  kafka:
    bootstrap: "{bootstrap}"
    tls: {{secretName: kafka-ca}}
    sasl: {{mechanism: SCRAM-SHA-512, username: {user}, passwordSecret: {{name: kafka-user}}}}
  protos: {{configMap: greeter-protos}}
  routes:
    - method: example.Greeter/*
      produce: {{topic: {requests}, replyTo: {replies}}}
  backend: {{target: "http://greeter:50051", replicas: 1}}
"#
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    let ready = wait_for_ready_reason(
        "grpckafkaroute/secured",
        &ns,
        "SecretNotFound",
        Duration::from_secs(30),
    )
    .await;
    let message = ready["message"].as_str().unwrap();
    assert!(
        message.contains("kafka-user") && message.contains("spec.kafka.sasl.passwordSecret.name"),
        "{ready}"
    );

    let user_secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kafka-user"},
        "stringData": {"password": password},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &user_secret)
        .await
        .unwrap();
    wait_for_condition(
        "grpckafkaroute/secured",
        &ns,
        "TopicsReady",
        &operator.log(),
    );
    // The topics exist (with topicDefaults' 3 partitions): seen through the plaintext listener
    // of the same cluster.
    assert_eq!(partitions(&plain_bootstrap, &requests), 3);
    assert_eq!(partitions(&plain_bootstrap, &replies), 3);

    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("secured-config")
        .await
        .unwrap()
        .data
        .unwrap();
    for role in ["grpc-kafka.yaml", "kafka-grpc.yaml"] {
        let yaml = &config[role];
        assert!(
            yaml.contains("/etc/strait/kafka/tls/ca.crt")
                && yaml.contains("/etc/strait/kafka/sasl/password")
                && yaml.contains("SCRAM-SHA-512"),
            "{role} names the mounted files:\n{yaml}"
        );
        assert!(!yaml.contains(password.trim()), "{role} holds no password");
    }
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
    for name in ["secured-grpc-kafka", "secured-kafka-grpc"] {
        let pod = deployments
            .get(name)
            .await
            .unwrap()
            .spec
            .unwrap()
            .template
            .spec
            .unwrap();
        let mounted: Vec<String> = pod
            .volumes
            .unwrap()
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect();
        assert_eq!(mounted, ["kafka-ca", "kafka-user"], "{name}");
    }
    assert!(
        !operator.log().contains(password.trim()),
        "the operator never logs the password"
    );
}

/// An https backend: its CA Secret is checked before anything is applied (the condition names the
/// field), then mounted into kafka-grpc, whose config trusts it.
#[tokio::test]
async fn an_https_backend_trusts_the_ca_of_its_secret() {
    require!("KUBECONFIG", "kube");
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    create_greeter_protos(&client, &ns).await;
    let operator = start_operator("gkr-lease").await;
    let (requests, replies) = (unique_name("tls-requests"), unique_name("tls-replies"));
    let yaml = format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: GrpcKafkaRoute
metadata:
  name: secured-backend
spec:
  kafka: {{bootstrap: "{bootstrap}"}}
  protos: {{configMap: greeter-protos}}
  routes:
    - method: example.Greeter/*
      produce: {{topic: {requests}, replyTo: {replies}}}
  backend:
    target: https://greeter.example:443
    tls: {{secretName: greeter-ca}}
    replicas: 1
"#
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    let missing = wait_for_ready_reason(
        "grpckafkaroute/secured-backend",
        &ns,
        "SecretNotFound",
        Duration::from_secs(30),
    )
    .await;
    assert!(
        missing["message"]
            .as_str()
            .unwrap()
            .contains("spec.backend.tls.secretName"),
        "{missing}"
    );
    kubectl_ok(
        &[
            "create",
            "secret",
            "generic",
            "greeter-ca",
            "-n",
            &ns,
            "--from-literal=ca.crt=-----BEGIN CERTIFICATE-----",
        ],
        None,
    );
    wait_for_condition(
        "grpckafkaroute/secured-backend",
        &ns,
        "Ready",
        &operator.log(),
    );
    let config = Api::<ConfigMap>::namespaced(client.clone(), &ns)
        .get("secured-backend-config")
        .await
        .unwrap()
        .data
        .unwrap();
    let backend: strait_config::grpc::KafkaGrpcConfig =
        serde_saphyr::from_str(&config["kafka-grpc.yaml"]).unwrap();
    assert_eq!(
        backend.target_tls.ca.unwrap().to_str(),
        Some("/etc/strait/tls/backend/ca.crt")
    );
    let deployment = Api::<Deployment>::namespaced(client.clone(), &ns)
        .get("secured-backend-kafka-grpc")
        .await
        .unwrap();
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "backend-tls");
    assert_eq!(
        volume.unwrap().secret.unwrap().secret_name.as_deref(),
        Some("greeter-ca")
    );
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

#[tokio::test]
async fn invalid_backend_settings_are_refused_naming_the_field() {
    require!("KUBECONFIG", "kube");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    for (backend, expected) in [
        (
            "{target: 'http://s:1', groupId: g, zillaGroup: {namespace: a, binding: b}}",
            "spec.backend takes groupId or zillaGroup, not both",
        ),
        (
            "{target: 'http://s:1', dedupWindow: '5 minutes'}",
            "spec.backend.dedupWindow",
        ),
        (
            "{target: 'http://s:1', tls: {secretName: ca}}",
            "spec.backend.tls needs an https:// target",
        ),
        (
            "{target: 'http://s:1', dedupMaxBytes: -1}",
            "spec.backend.dedupMaxBytes",
        ),
        (
            "{target: 'http://s:1', dedupMaxBytes: 1000, dedupMaxAnswerBytes: 2000}",
            "spec.backend.dedupMaxAnswerBytes must be at most dedupMaxBytes",
        ),
    ] {
        let yaml = format!(
            "apiVersion: strait.dev/v1alpha1\nkind: GrpcKafkaRoute\nmetadata: {{name: bad}}\nspec:\n  kafka: {{bootstrap: 'k:9092'}}\n  protos: {{configMap: p}}\n  routes: [{{method: a.B/C, produce: {{topic: t}}}}]\n  backend: {backend}\n"
        );
        let out = support::kubectl(
            &["apply", "--server-side", "-n", &ns, "-f", "-"],
            Some(&yaml),
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{backend} should be refused");
        assert!(
            stderr.contains(expected),
            "{backend}: expected {expected:?} in {stderr}"
        );
    }
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}
