//! Partitions added to the topics while s-proxy runs (issue 18, bug 4): records in the new
//! partitions of the messages topic reach live and shared subscribers, and retained messages
//! in new partitions of the retained topic are found, without a restart.

mod kafka_support;
mod support;

use std::time::Duration;

use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions};
use rdkafka::client::DefaultClientContext;
use rdkafka::producer::{FutureProducer, FutureRecord};
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{Protocol, QoS, ReasonCode};
use support::connect_packet;

async fn grow(kafka: &str, topic: &str, count: usize) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("admin client");
    let results = admin
        .create_partitions(&[NewPartitions::new(topic, count)], &AdminOptions::new())
        .await
        .expect("create partitions");
    for result in results {
        result.unwrap_or_else(|(topic, e)| panic!("growing {topic}: {e}"));
    }
}

/// Writes `payload` under MQTT topic `key` straight into `partition`, as any Kafka producer may.
async fn produce_to(kafka: &str, topic: &str, partition: i32, key: &str, payload: &str) {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("a Kafka producer");
    producer
        .send(
            FutureRecord::to(topic)
                .partition(partition)
                .key(key)
                .payload(payload),
            Duration::from_secs(10),
        )
        .await
        .unwrap_or_else(|(e, _)| panic!("produce to {topic}/{partition}: {e}"));
}

/// Keeps producing to `partition` until the subscriber gets one (s-proxy looks for new
/// partitions every few seconds); the payloads it got.
async fn until_received(
    kafka: &str,
    topic: &str,
    partition: i32,
    client: &mut support::RawClient,
    what: &str,
) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    for attempt in 0.. {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: nothing from partition {partition} within 30 s"
        );
        let payload = format!("p{partition}-{attempt}");
        produce_to(kafka, topic, partition, "grown/x", &payload).await;
        if let Some(publish) = next_publish(client, Duration::from_secs(2)).await {
            return String::from_utf8(publish.payload.to_vec()).unwrap();
        }
    }
    unreachable!()
}

#[tokio::test]
async fn partitions_added_at_run_time_are_read_by_the_dispatcher_shared_groups_and_tables() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    // s-proxy creates the topics with two partitions.
    let relay = KafkaRelay::start(&kafka, "grown").await;
    let messages = relay.topics.messages.clone();
    let (mut live, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("live"))).await;
    subscribe(&mut live, 1, &[("grown/#", QoS::AtLeastOnce)]).await;
    let (mut member, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("member"))).await;
    subscribe(&mut member, 1, &[("$share/g/grown/#", QoS::AtLeastOnce)]).await;

    grow(&kafka, &messages, 4).await;
    grow(&kafka, &relay.topics.retained, 4).await;

    // The dispatcher reads partitions 2 and 3 from their start: the first record there is
    // delivered, not skipped.
    let first = until_received(&kafka, &messages, 3, &mut live, "live subscriber").await;
    assert!(first.starts_with("p3-"), "{first}");
    // The shared group gets them too: its consumer joins the new partitions (within seconds)
    // and reads them from their start, so what the live subscriber got arrives as well.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let publish = next_publish(&mut member, left)
            .await
            .unwrap_or_else(|| panic!("the shared member never got {first}"));
        if publish.payload == first.as_bytes() {
            break;
        }
    }

    // MQTT publishes are placed over the four partitions now and still arrive.
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 0..8u16 {
        let topic = format!("grown/t{i}");
        assert_eq!(
            publish_qos1(&mut publisher, &topic, i + 1, b"via mqtt").await,
            ReasonCode::SUCCESS
        );
    }
    let partitions = record_partitions(&kafka, &messages, "grown/t").await;
    assert!(
        partitions.iter().any(|p| *p >= 2),
        "some MQTT publishes land in the new partitions: {partitions:?}"
    );
    let mut live_got = 0;
    while let Some(publish) = next_publish(&mut live, Duration::from_secs(3)).await {
        if &publish.payload[..] == b"via mqtt" {
            live_got += 1;
        }
    }
    assert_eq!(
        live_got, 8,
        "every MQTT publish reached the live subscriber"
    );

    // A retained message in a new partition of the retained topic is found by a subscriber.
    let retained_topic = relay.topics.retained.clone();
    strait_e2e::wait_until(
        Duration::from_secs(30),
        "the retained message of partition 3",
        || async {
            produce_to(&kafka, &retained_topic, 3, "grown/retained", "kept").await;
            let (mut late, _) =
                raw_session(&relay, Protocol::V5, connect_packet(&unique_name("late"))).await;
            subscribe(&mut late, 1, &[("grown/retained", QoS::AtLeastOnce)]).await;
            let publish = next_publish(&mut late, Duration::from_secs(2)).await?;
            (publish.retain && &publish.payload[..] == b"kept").then_some(())
        },
    )
    .await;
}
