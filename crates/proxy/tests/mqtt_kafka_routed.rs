//! Topics of `${params}` routes made by s-proxy on their first PUBLISH, as the operator runs it
//! (`createTopics: false`, `createRoutedTopics: true`), against the real Kafka of the test
//! services (which does not auto-create topics): the route's partitions and topic config, names
//! that cannot be Kafka topics refused, the `topicPattern` allow-list and the per-process cap.

mod kafka_support;
mod support;

use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use support::connect_packet;

fn admin(kafka: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("admin client")
}

/// Creates the three topics of `topics` as the operator does (s-proxy is told not to).
async fn create_static_topics(kafka: &str, topics: &Topics) {
    let new = |name, compacted| {
        let topic = NewTopic::new(name, 2, TopicReplication::Fixed(1));
        if compacted {
            topic.set("cleanup.policy", "compact")
        } else {
            topic
        }
    };
    let results = admin(kafka)
        .create_topics(
            &[
                new(&topics.messages, false),
                new(&topics.retained, true),
                new(&topics.sessions, true),
            ],
            &AdminOptions::new(),
        )
        .await
        .expect("create the static topics");
    for result in results {
        result.expect("topic created");
    }
}

/// The partition count of `topic`, `None` when Kafka does not have it.
async fn partitions_of(kafka: &str, topic: &str) -> Option<usize> {
    let (kafka, topic) = (kafka.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer: BaseConsumer = ClientConfig::new()
            .set("bootstrap.servers", &kafka)
            .set("allow.auto.create.topics", "false")
            .create()
            .expect("a Kafka client");
        let metadata = consumer
            .fetch_metadata(Some(&topic), Duration::from_secs(10))
            .expect("metadata");
        let found = metadata.topics().first()?;
        (found.error().is_none() && !found.partitions().is_empty())
            .then_some(found.partitions().len())
    })
    .await
    .expect("metadata thread")
}

/// The value of config `key` of `topic`.
async fn topic_config(kafka: &str, topic: &str, key: &str) -> Option<String> {
    let described = admin(kafka)
        .describe_configs(&[ResourceSpecifier::Topic(topic)], &AdminOptions::new())
        .await
        .expect("describe configs");
    let resource = described.into_iter().next()?.ok()?;
    resource.get(key).and_then(|entry| entry.value.clone())
}

/// How many times s-proxy counted an error of `kind`.
async fn errors_counted(relay: &KafkaRelay, kind: &str) -> u64 {
    let (_, metrics) = strait_e2e::http_get(relay.s_proxy.admin, "/metrics")
        .await
        .expect("s-proxy metrics");
    let label = format!("kind=\"{kind}\"");
    metrics
        .lines()
        .find(|l| l.starts_with("strait_mqtt_relay_errors_total") && l.contains(&label))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0)
}

/// s-proxy and r-proxy on pre-created static topics, with s-proxy creating only routed ones.
async fn relay_creating_routed_topics(kafka: &str, test: &str, kafka_extra: &str) -> KafkaRelay {
    let topics = Topics::unique(test);
    create_static_topics(kafka, &topics).await;
    let extra = format!("  createTopics: false\n  createRoutedTopics: true\n{kafka_extra}");
    KafkaRelay::start_with(kafka, topics, &extra).await
}

#[tokio::test]
async fn a_routed_topic_is_created_on_its_first_publish_with_the_routes_settings() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let prefix = format!("{}.telemetry.", unique_name("routed"));
    let relay = relay_creating_routed_topics(
        &kafka,
        "routedcreate",
        &format!(
            "  routes: [ {{ topic: 'sensors/{{id}}/#', messages: '{prefix}${{params.id}}', \
             partitions: 3, topicConfig: {{ retention.ms: '3600000' }} }} ]\n"
        ),
    )
    .await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
    assert_eq!(
        subscribe(&mut sub, 1, &[("sensors/+/temp", QoS::AtLeastOnce)]).await,
        [ReasonCode::GRANTED_QOS_1]
    );

    // Two clients publish to the new topic at the same moment: it is made once, both succeed.
    let mut publishers = Vec::new();
    for _ in 0..2 {
        let (client, _) =
            raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
        publishers.push(client);
    }
    let topic = format!("{prefix}dev-42");
    assert_eq!(partitions_of(&kafka, &topic).await, None, "not there yet");
    let [first, second] = &mut publishers[..] else {
        unreachable!()
    };
    let (a, b) = tokio::join!(
        publish_qos1(first, "sensors/dev-42/temp", 1, b"21.5"),
        publish_qos1(second, "sensors/dev-42/temp", 1, b"21.6"),
    );
    assert_eq!((a, b), (ReasonCode::SUCCESS, ReasonCode::SUCCESS));

    let (key, _, _) = read_record(&kafka, &topic, "sensors/dev-42/temp").await;
    assert_eq!(key.as_deref(), Some("sensors/dev-42/temp"));
    assert_eq!(
        partitions_of(&kafka, &topic).await,
        Some(3),
        "the route's partitions"
    );
    assert_eq!(
        topic_config(&kafka, &topic, "retention.ms")
            .await
            .as_deref(),
        Some("3600000"),
        "the route's topicConfig"
    );
    let mut payloads = Vec::new();
    for _ in 0..2 {
        let got = next_publish(&mut sub, Duration::from_secs(15))
            .await
            .expect("the subscriber is served from the new topic");
        payloads.push(got.payload.to_vec());
    }
    payloads.sort();
    assert_eq!(payloads, [b"21.5".to_vec(), b"21.6".to_vec()]);

    // A level that cannot be part of a Kafka topic name: refused, counted, nothing created.
    for (i, (level, kafka_name)) in [("dev 42", "dev 42"), ("dev$42", "dev$42")]
        .into_iter()
        .enumerate()
    {
        assert_eq!(
            publish_qos1(first, &format!("sensors/{level}/temp"), 10 + i as u16, b"x").await,
            ReasonCode::TOPIC_NAME_INVALID,
            "{level}"
        );
        assert_eq!(
            partitions_of(&kafka, &format!("{prefix}{kafka_name}")).await,
            None
        );
    }
    assert_eq!(errors_counted(&relay, "routed_topic_invalid").await, 2);
    assert_eq!(errors_counted(&relay, "kafka_produce_failed").await, 0);
    // The session goes on.
    assert_eq!(
        publish_qos1(first, "sensors/dev-42/temp", 20, b"22").await,
        ReasonCode::SUCCESS
    );
}

#[tokio::test]
async fn the_allow_list_and_the_cap_refuse_routed_topics_beyond_them() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let prefix = format!("{}.t.", unique_name("routedcap"));
    // unique_name is letters, digits and '-': no regex escaping needed besides the dots.
    let pattern = format!("{}dev-[0-9]+", prefix.replace('.', "\\."));
    let relay = relay_creating_routed_topics(
        &kafka,
        "routedcap",
        &format!(
            "  maxRoutedTopics: 2\n  routes: [ {{ topic: 'sensors/{{id}}/#', \
             messages: '{prefix}${{params.id}}', topicPattern: '{pattern}' }} ]\n"
        ),
    )
    .await;
    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;

    assert_eq!(
        publish_qos1(&mut client, "sensors/other-1/temp", 1, b"x").await,
        ReasonCode::NOT_AUTHORIZED,
        "outside the topicPattern"
    );
    for (id, device) in [(2, "dev-1"), (3, "dev-2")] {
        assert_eq!(
            publish_qos1(&mut client, &format!("sensors/{device}/temp"), id, b"x").await,
            ReasonCode::SUCCESS,
            "{device}"
        );
    }
    assert_eq!(
        publish_qos1(&mut client, "sensors/dev-3/temp", 4, b"x").await,
        ReasonCode::QUOTA_EXCEEDED,
        "the third distinct topic is one over maxRoutedTopics"
    );
    assert_eq!(partitions_of(&kafka, &format!("{prefix}dev-3")).await, None);
    assert_eq!(
        partitions_of(&kafka, &format!("{prefix}other-1")).await,
        None
    );
    // Topics already made take PUBLISHes as before; QoS 2 is refused with the same code.
    assert_eq!(
        publish_qos1(&mut client, "sensors/dev-1/temp", 5, b"y").await,
        ReasonCode::SUCCESS
    );
    client
        .send(&publish_packet(
            "sensors/dev-4/temp",
            QoS::ExactlyOnce,
            6,
            b"z",
        ))
        .await;
    match client.recv_within(Duration::from_secs(30)).await {
        Some(Packet::PubRec(rec)) => {
            assert_eq!(
                (rec.packet_id, rec.reason_code),
                (6, ReasonCode::QUOTA_EXCEEDED)
            );
        }
        other => panic!("expected PUBREC 6, got {other:?}"),
    }
    assert_eq!(errors_counted(&relay, "routed_topic_not_allowed").await, 1);
    assert_eq!(errors_counted(&relay, "routed_topic_limit").await, 2);

    // 3.1.1 has no reason codes: the connection is closed instead of acknowledging.
    let (mut old, _) =
        raw_session(&relay, Protocol::V311, connect_packet(&unique_name("v311"))).await;
    old.send(&publish_packet(
        "sensors/dev-5/temp",
        QoS::AtLeastOnce,
        1,
        b"x",
    ))
    .await;
    let parting = old.until_closed().await;
    assert!(
        !parting.iter().any(|p| matches!(p, Packet::PubAck(_))),
        "closed without a PUBACK: {parting:?}"
    );
}
