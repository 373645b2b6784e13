//! What the operator does to Kafka topics, against a real kube-apiserver and a real Kafka: it sets
//! only the configs a spec names (the topic's other settings stay), never grows a compacted table,
//! and under `deletionPolicy: Delete` deletes only the topics the resource created, giving up
//! after `deletionTimeoutSeconds` with a Warning Event when Kafka or its Secret is gone.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::events::v1::Event;
use kube::Client;
use kube::api::{Api, ListParams};
use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewTopic, ResourceSpecifier, TopicReplication,
};
use rdkafka::client::DefaultClientContext;
use strait_e2e::{Daemon, require, unique_name, wait_until};
use support::{
    chart_operator_with, condition, create_greeter_protos, helm_ok, install_crds, kafka_admin,
    kubectl, kubectl_ok, namespace, partitions, topic_config, wait_for_condition,
    wait_for_ready_reason,
};

const BIN: &str = env!("CARGO_BIN_EXE_strait-operator");

/// The operator as a local process, watching only `ns`: the tests here run at once, each with
/// its own operator, and one must not act on another's resources.
async fn start_operator(ns: &str) -> Daemon {
    let lease = unique_name("topics-lease");
    Daemon::start(
        BIN,
        &[
            "--proxy-image",
            "example.invalid/strait-proxy:test",
            "--lease-name",
            &lease,
            "--watch-namespace",
            ns,
        ],
    )
    .await
}

async fn create_topic(
    admin: &AdminClient<DefaultClientContext>,
    name: &str,
    partitions: i32,
    config: &[(&str, &str)],
) {
    let topic = config.iter().fold(
        NewTopic::new(name, partitions, TopicReplication::Fixed(1)),
        |topic, (k, v)| topic.set(k, v),
    );
    let results = admin
        .create_topics([&topic], &AdminOptions::new())
        .await
        .unwrap();
    results[0].as_ref().unwrap();
}

async fn delete_topics(admin: &AdminClient<DefaultClientContext>, names: &[&str]) {
    let _ = admin.delete_topics(names, &AdminOptions::new()).await;
}

fn get(kind: &str, ns: &str, name: &str) -> serde_json::Value {
    serde_json::from_str(&kubectl_ok(
        &["get", kind, name, "-n", ns, "-o", "json"],
        None,
    ))
    .unwrap()
}

fn created_topics(object: &serde_json::Value) -> Vec<String> {
    serde_json::from_value(object["status"]["createdTopics"].clone()).unwrap_or_default()
}

/// The Events with `reason` about the object named `name` in `ns`.
async fn events(client: &Client, ns: &str, name: &str, reason: &str) -> Vec<Event> {
    Api::<Event>::namespaced(client.clone(), ns)
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason.as_deref() == Some(reason)
                && e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
        })
        .collect()
}

fn route_yaml(name: &str, bootstrap: &str, requests: &str, replies: &str, extra: &str) -> String {
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
  topicDefaults: {{partitions: 2}}
  backend: {{target: "http://greeter:50051", replicas: 1}}
  deletionPolicy: Delete
{extra}"#
    )
}

/// A route that shares a topic somebody else made: the operator sets the config the route names
/// on it and keeps the settings it does not name (also ones set later, out of band), records only
/// the topic it created itself, and deletes only that one.
#[tokio::test]
async fn a_route_sets_only_named_configs_and_deletes_only_the_topics_it_created() {
    require!("KUBECONFIG", "kube");
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    create_greeter_protos(&client, &ns).await;
    let admin = kafka_admin(&bootstrap);
    let (shared, replies) = (unique_name("shared-requests"), unique_name("own-replies"));
    create_topic(&admin, &shared, 2, &[("retention.bytes", "1048576")]).await;
    let operator = start_operator(&ns).await;

    let named = |retention: &str| {
        format!(
            "  topics:\n    {shared}: {{partitions: 2, config: {{retention.ms: \"{retention}\"}}}}\n"
        )
    };
    let yaml = route_yaml("sharer", &bootstrap, &shared, &replies, &named("3600000"));
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    wait_for_condition("grpckafkaroute/sharer", &ns, "TopicsReady", &operator.log());
    assert_eq!(
        created_topics(&get("grpckafkaroute", &ns, "sharer")),
        [replies.as_str()],
        "only the reply topic was created by the route"
    );
    assert_eq!(
        topic_config(&admin, &shared, "retention.ms")
            .await
            .as_deref(),
        Some("3600000")
    );
    assert_eq!(
        topic_config(&admin, &shared, "retention.bytes")
            .await
            .as_deref(),
        Some("1048576"),
        "a setting the route does not name stays"
    );

    // Someone sets another config out of band; the route then changes the one it names.
    let out_of_band = AlterConfig::new(ResourceSpecifier::Topic(&shared))
        .set("retention.ms", "3600000")
        .set("retention.bytes", "1048576")
        .set("max.message.bytes", "200000");
    admin
        .alter_configs([&out_of_band], &AdminOptions::new())
        .await
        .unwrap()[0]
        .as_ref()
        .unwrap();
    let yaml = route_yaml("sharer", &bootstrap, &shared, &replies, &named("7200000"));
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    wait_until(
        Duration::from_secs(60),
        "retention.ms to follow the spec",
        || {
            let admin = &admin;
            let shared = &shared;
            async move {
                (topic_config(admin, shared, "retention.ms").await.as_deref() == Some("7200000"))
                    .then_some(())
            }
        },
    )
    .await;
    assert_eq!(
        topic_config(&admin, &shared, "retention.bytes")
            .await
            .as_deref(),
        Some("1048576")
    );
    assert_eq!(
        topic_config(&admin, &shared, "max.message.bytes")
            .await
            .as_deref(),
        Some("200000"),
        "the out-of-band setting survived the reconcile"
    );

    kubectl_ok(
        &[
            "delete",
            "grpckafkaroute",
            "sharer",
            "-n",
            &ns,
            "--timeout=60s",
        ],
        None,
    );
    assert_eq!(
        partitions(&bootstrap, &replies),
        0,
        "the topic the route created is deleted"
    );
    assert_eq!(
        partitions(&bootstrap, &shared),
        2,
        "the shared topic is never deleted"
    );
    let deleted = events(&client, &ns, "sharer", "TopicsDeleted").await;
    assert!(
        deleted.iter().any(|e| e
            .note
            .as_deref()
            .is_some_and(|n| n.contains(&replies) && !n.contains(&shared))),
        "{deleted:?}"
    );
    drop(operator);
    delete_topics(&admin, &[&shared]).await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// Kafka gone (the bootstrap points at a closed port): the deletion waits only
/// `deletionTimeoutSeconds`, then the route goes and a Warning Event names the topics left.
#[tokio::test]
async fn a_route_whose_kafka_is_gone_is_deleted_within_its_timeout_with_a_warning() {
    require!("KUBECONFIG", "kube");
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;
    create_greeter_protos(&client, &ns).await;
    let operator = start_operator(&ns).await;
    let (requests, replies) = (unique_name("gone-requests"), unique_name("gone-replies"));
    let yaml = route_yaml(
        "orphan",
        &bootstrap,
        &requests,
        &replies,
        "  deletionTimeoutSeconds: 5\n",
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    wait_for_condition("grpckafkaroute/orphan", &ns, "TopicsReady", &operator.log());
    let mut created = created_topics(&get("grpckafkaroute", &ns, "orphan"));
    created.sort();
    let mut expected = vec![requests.clone(), replies.clone()];
    expected.sort();
    assert_eq!(created, expected);

    kubectl_ok(
        &[
            "patch",
            "grpckafkaroute",
            "orphan",
            "-n",
            &ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"kafka":{"bootstrap":"127.0.0.1:1"}}}"#,
        ],
        None,
    );
    wait_for_ready_reason(
        "grpckafkaroute/orphan",
        &ns,
        "KafkaUnreachable",
        Duration::from_secs(60),
    )
    .await;
    let started = Instant::now();
    kubectl_ok(
        &[
            "delete",
            "grpckafkaroute",
            "orphan",
            "-n",
            &ns,
            "--timeout=60s",
        ],
        None,
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "deleted in {took:?}, the bound is 5 s plus a retry"
    );

    let warnings = wait_until(
        Duration::from_secs(10),
        "the TopicsLeftBehind event",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let found = events(&client, &ns, "orphan", "TopicsLeftBehind").await;
                (!found.is_empty()).then_some(found)
            }
        },
    )
    .await;
    let warning = &warnings[0];
    assert_eq!(warning.type_.as_deref(), Some("Warning"));
    let note = warning.note.as_deref().unwrap_or_default();
    assert!(
        note.contains(&requests) && note.contains(&replies) && note.contains("127.0.0.1:1"),
        "the event names the topics and why: {note}"
    );
    // They really are left behind, in the Kafka that was unreachable through the new address.
    assert_eq!(partitions(&bootstrap, &requests), 2);
    drop(operator);
    delete_topics(&kafka_admin(&bootstrap), &[&requests, &replies]).await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// The Kafka Secret gone (SASL password deleted): the same bound holds, and the Warning names
/// the missing Secret.
#[tokio::test]
async fn a_route_whose_kafka_secret_is_gone_is_deleted_within_its_timeout_with_a_warning() {
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
    for (name, key, value) in [
        ("kafka-ca", "ca.crt", &ca),
        ("kafka-user", "password", &password),
    ] {
        kubectl_ok(
            &[
                "create",
                "secret",
                "generic",
                name,
                "-n",
                &ns,
                &format!("--from-literal={key}={value}"),
            ],
            None,
        );
    }
    let operator = start_operator(&ns).await;
    let (requests, replies) = (
        unique_name("nosecret-requests"),
        unique_name("nosecret-replies"),
    );
    let yaml = format!(
        r#"apiVersion: strait.dev/v1alpha1
kind: GrpcKafkaRoute
metadata:
  name: locked
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
  deletionPolicy: Delete
  deletionTimeoutSeconds: 5
"#
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    wait_for_condition("grpckafkaroute/locked", &ns, "TopicsReady", &operator.log());
    assert_eq!(
        created_topics(&get("grpckafkaroute", &ns, "locked")).len(),
        2
    );

    kubectl_ok(&["delete", "secret", "kafka-user", "-n", &ns], None);
    let started = Instant::now();
    kubectl_ok(
        &[
            "delete",
            "grpckafkaroute",
            "locked",
            "-n",
            &ns,
            "--timeout=60s",
        ],
        None,
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "deleted in {took:?}, the bound is 5 s plus a retry"
    );
    let warnings = wait_until(
        Duration::from_secs(10),
        "the TopicsLeftBehind event",
        || {
            let client = client.clone();
            let ns = ns.clone();
            async move {
                let found = events(&client, &ns, "locked", "TopicsLeftBehind").await;
                (!found.is_empty()).then_some(found)
            }
        },
    )
    .await;
    let note = warnings[0].note.as_deref().unwrap_or_default();
    assert!(
        note.contains(&requests) && note.contains(&replies) && note.contains("kafka-user"),
        "the event names the topics and the missing Secret: {note}"
    );
    assert_eq!(partitions(&plain_bootstrap, &requests), 3, "left behind");
    drop(operator);
    delete_topics(&kafka_admin(&plain_bootstrap), &[&requests, &replies]).await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}

/// A Kafka-mode bridge next to topics that already exist: the messages topic grows to the
/// asked partitions, the compacted retained table keeps its own (reported in `TopicsReady`), and
/// under `deletionPolicy: Delete` only the sessions topic the bridge created is deleted.
#[tokio::test]
async fn a_bridge_never_grows_its_compacted_tables_and_deletes_only_the_topics_it_created() {
    require!("KUBECONFIG", "kube");
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    install_crds();
    let client = Client::try_default().await.unwrap();
    let ns = namespace(&client).await;

    // Delete only means something with Kafka topics.
    let broker = "apiVersion: strait.dev/v1alpha1\nkind: MqttBridge\nmetadata: {name: b}\nspec:\n  upstream: {broker: {address: 'b:1883'}}\n  deletionPolicy: Delete\n";
    let refused = kubectl(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(broker),
    );
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        !refused.status.success()
            && stderr.contains("spec.deletionPolicy Delete needs a Kafka upstream"),
        "{stderr}"
    );

    let admin = kafka_admin(&bootstrap);
    let topic = |kind: &str| unique_name(&format!("mqtt-{kind}"));
    let (messages, retained, sessions) = (topic("messages"), topic("retained"), topic("sessions"));
    create_topic(&admin, &messages, 1, &[]).await;
    create_topic(&admin, &retained, 1, &[("cleanup.policy", "compact")]).await;
    // Installed by the chart in namespace mode, with exactly its permissions: the finalizer, the
    // createdTopics record and the Events need no more than the chart grants.
    let watch = format!("watchNamespaces={{{ns}}}");
    let flag = format!("--watch-namespace={ns}");
    let (operator, release, _) = chart_operator_with(&ns, &[&watch], &[&flag]).await;
    let yaml = format!(
        "apiVersion: strait.dev/v1alpha1\nkind: MqttBridge\nmetadata: {{name: fleet}}\nspec:\n  auth: {{mode: anonymous}}\n  deletionPolicy: Delete\n  deletionTimeoutSeconds: 30\n  upstream:\n    kafka:\n      bootstrap: \"{bootstrap}\"\n      topics: {{messages: {messages}, retained: {retained}, sessions: {sessions}}}\n      newTopics: {{partitions: 2, replicationFactor: 1}}\n"
    );
    kubectl_ok(
        &["apply", "--server-side", "-n", &ns, "-f", "-"],
        Some(&yaml),
    );
    wait_for_condition("mqttbridge/fleet", &ns, "TopicsReady", &operator.log());
    let bridge = get("mqttbridge", &ns, "fleet");
    let topics_ready = condition(&bridge, "TopicsReady").unwrap();
    assert_eq!(topics_ready["reason"], "PartitionsKept", "{topics_ready}");
    let message = topics_ready["message"].as_str().unwrap();
    assert!(
        message.contains(&retained) && !message.contains(&messages),
        "{message}"
    );
    assert_eq!(
        partitions(&bootstrap, &messages),
        2,
        "the messages topic grows"
    );
    assert_eq!(
        partitions(&bootstrap, &retained),
        1,
        "the compacted table keeps its partitions"
    );
    assert_eq!(partitions(&bootstrap, &sessions), 2);
    assert_eq!(created_topics(&bridge), [sessions.as_str()]);

    kubectl_ok(
        &["delete", "mqttbridge", "fleet", "-n", &ns, "--timeout=60s"],
        None,
    );
    assert_eq!(
        partitions(&bootstrap, &sessions),
        0,
        "the topic the bridge created is deleted"
    );
    assert_eq!(
        partitions(&bootstrap, &messages),
        2,
        "a topic that existed before stays"
    );
    assert_eq!(
        partitions(&bootstrap, &retained),
        1,
        "a topic that existed before stays"
    );
    drop(operator);
    helm_ok(&["uninstall", &release, "-n", &ns]);
    delete_topics(&admin, &[&messages, &retained]).await;
    kubectl_ok(&["delete", "namespace", &ns, "--wait=false"], None);
}
