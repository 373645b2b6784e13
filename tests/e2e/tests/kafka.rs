//! The Kafka of the test services: records with keys and headers round-trip, and topics created
//! through the admin API carry the configuration asked for.

use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strait_e2e::{require, unique_name, wait_until};

fn admin(bootstrap: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .expect("admin client")
}

async fn create_topic(bootstrap: &str, topic: &str, partitions: i32, config: &[(&str, &str)]) {
    let mut new_topic = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    for (key, value) in config {
        new_topic = new_topic.set(key, value);
    }
    let results = admin(bootstrap)
        .create_topics([&new_topic], &AdminOptions::new())
        .await
        .expect("create_topics request");
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
}

#[tokio::test]
async fn keyed_record_with_headers_round_trips() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let topic = unique_name("e2e-roundtrip");
    create_topic(&bootstrap, &topic, 3, &[]).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("acks", "all")
        .create()
        .expect("producer");
    let headers = OwnedHeaders::new()
        .insert(Header {
            key: "zilla:filter",
            value: Some("sensors"),
        })
        .insert(Header {
            key: "zilla:qos",
            value: Some("1"),
        });
    let delivery = producer
        .send(
            FutureRecord::to(&topic)
                .key("sensors/one")
                .payload("21.5")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .map_err(|(error, _)| error)
        .expect("acknowledged write");

    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("group.id", unique_name("e2e-group"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let message = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
        .await
        .expect("a record within 30 s")
        .expect("consume");

    assert_eq!(
        (message.partition(), message.offset()),
        (delivery.partition, delivery.offset)
    );
    assert_eq!(message.key(), Some(&b"sensors/one"[..]));
    assert_eq!(message.payload(), Some(&b"21.5"[..]));
    let headers: Vec<(String, Vec<u8>)> = message
        .headers()
        .expect("headers present")
        .iter()
        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
        .collect();
    assert_eq!(
        headers,
        [
            ("zilla:filter".to_string(), b"sensors".to_vec()),
            ("zilla:qos".to_string(), b"1".to_vec()),
        ],
        "headers keep their order and bytes"
    );
}

#[tokio::test]
async fn created_topic_reports_its_partitions_and_config() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let topic = unique_name("e2e-compacted");
    create_topic(
        &bootstrap,
        &topic,
        2,
        &[("cleanup.policy", "compact"), ("retention.ms", "3600000")],
    )
    .await;

    // A new topic's config becomes visible once the broker has applied the creation.
    let admin = admin(&bootstrap);
    let config = wait_until(Duration::from_secs(30), "the topic's config", || async {
        let configs = admin
            .describe_configs([&ResourceSpecifier::Topic(&topic)], &AdminOptions::new())
            .await
            .ok()?;
        let config = configs.into_iter().next()?.ok()?;
        config.get("cleanup.policy")?.value.as_ref()?;
        Some(config)
    })
    .await;
    let value = |name: &str| config.get(name).and_then(|e| e.value.clone());
    assert_eq!(value("cleanup.policy").as_deref(), Some("compact"));
    assert_eq!(value("retention.ms").as_deref(), Some("3600000"));

    let metadata = admin
        .inner()
        .fetch_metadata(Some(&topic), Duration::from_secs(10))
        .expect("metadata");
    assert_eq!(metadata.topics()[0].partitions().len(), 2);
}

#[tokio::test]
async fn topics_are_not_created_implicitly() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let topic = unique_name("e2e-absent");
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .set("message.timeout.ms", "3000")
        .create()
        .expect("producer");
    let result = producer
        .send(
            FutureRecord::<str, str>::to(&topic).payload("x"),
            Duration::from_secs(5),
        )
        .await;
    assert!(
        result.is_err(),
        "writing to a missing topic must fail: the product creates its topics explicitly"
    );
}
