//! s-proxy on Kafka facing what Kafka holds after it was cleaned up, or written by others:
//! partitions whose records were all deleted (delete-records, retention), stored session
//! offsets older than the log start, records whose key cannot be an MQTT topic, and a slow
//! persistent subscriber catching up. Against the real Kafka of the test services, through
//! r-proxy, with real MQTT clients.

mod kafka_support;
mod support;

use std::time::Duration;

use kafka_support::*;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use strait_e2e::{require, unique_name, wait_until};
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, QoS, ReasonCode};
use support::{RawClient, connect_packet};

const QUIET: Duration = Duration::from_millis(1500);

fn admin(kafka: &str) -> AdminClient<DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("admin client")
}

fn producer(kafka: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("a Kafka producer")
}

/// Writes a record of `key` (bytes, any) with `headers` to `topic` and waits for Kafka.
async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: &[u8],
    headers: &[(&str, &[u8])],
    payload: &[u8],
) {
    let mut owned = OwnedHeaders::new();
    for (name, value) in headers {
        owned = owned.insert(Header {
            key: name,
            value: Some(*value),
        });
    }
    producer
        .send(
            FutureRecord::to(topic)
                .key(key)
                .payload(payload)
                .headers(owned),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");
}

/// Deletes every record of `partitions` partitions of `topic` (delete-records up to the end):
/// each partition's log start then equals its end, above 0 where it held records.
async fn delete_all_records(kafka: &str, topic: &str, partitions: i32) {
    let mut offsets = TopicPartitionList::new();
    for p in 0..partitions {
        offsets
            .add_partition_offset(topic, p, Offset::End)
            .expect("a partition offset");
    }
    let deleted = admin(kafka)
        .delete_records(&offsets, &AdminOptions::new())
        .await
        .expect("delete records");
    for element in deleted.elements() {
        assert!(
            element.error().is_ok(),
            "deleting the records of {topic} {}: {:?}",
            element.partition(),
            element.error()
        );
    }
}

/// Waits until the counter `series` on `admin` is at least `want`.
async fn wait_for_count(admin: std::net::SocketAddr, series: &str, want: f64) {
    wait_until(
        Duration::from_secs(20),
        &format!("{series} to reach {want}"),
        || async { (metric(admin, series).await.unwrap_or(0.0) >= want).then_some(()) },
    )
    .await;
}

/// PINGREQ answered: the connection is up and served.
async fn assert_served(client: &mut RawClient) {
    client.send(&Packet::PingReq).await;
    match client.recv_within(Duration::from_secs(10)).await {
        Some(Packet::PingResp) => {}
        Some(Packet::Publish(p)) => panic!("unexpected PUBLISH to {:?}", p.topic),
        other => panic!("expected PINGRESP, got {other:?}"),
    }
}

async fn disconnect(client: &mut RawClient) {
    client
        .send(&Packet::Disconnect(mqtt::Disconnect::default()))
        .await;
    client.until_closed().await;
}

#[tokio::test]
async fn clients_connect_when_every_record_of_the_compacted_topics_was_deleted() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    const PARTITIONS: i32 = 4;
    let topics = Topics::unique("emptied");
    let producer = producer(&kafka);
    for topic in [&topics.sessions, &topics.retained] {
        // Compacted, as s-proxy requires, and deletable (delete-records needs `delete`).
        // Several partitions: s-proxy's own records (its replica record) land in one of them,
        // the others stay empty with their log start = end above 0.
        let new = NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1))
            .set("cleanup.policy", "compact,delete")
            .set("retention.ms", "-1");
        for created in admin(&kafka)
            .create_topics(&[new], &AdminOptions::new())
            .await
            .expect("create topic")
        {
            created.expect("topic created");
        }
        for p in 0..PARTITIONS {
            let record = FutureRecord::to(topic).partition(p).key("old").payload("x");
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("produced");
        }
        delete_all_records(&kafka, topic, PARTITIONS).await;
    }
    let relay = KafkaRelay::start_with(&kafka, topics, "").await;

    // Not refused with 0x88 after the sessions topic is "not read up to its end".
    let id = unique_name("after-delete");
    let mut client = RawClient::connect(relay.mqtt, Protocol::V5).await;
    client
        .send(&Packet::Connect(v5_connect(&id, false, 300)))
        .await;
    match client.recv_within(Duration::from_secs(20)).await {
        Some(Packet::ConnAck(ack)) => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS, "{ack:?}");
            assert!(!ack.session_present);
        }
        other => panic!("expected CONNACK, got {other:?}"),
    }
    // The retained topic is read to its end too: a subscription gets no retained message, and
    // live messages flow.
    subscribe(&mut client, 1, &[("emptied/#", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    assert_eq!(
        publish_qos1(&mut publisher, "emptied/a", 1, b"live").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut client, Duration::from_secs(10))
        .await
        .expect("the live message");
    assert_eq!((&*got.topic, &got.payload[..]), ("emptied/a", &b"live"[..]));
    // The session was stored and is found again.
    disconnect(&mut client).await;
    let (_, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert!(ack.session_present);
}

#[tokio::test]
async fn a_persistent_session_whose_stored_offsets_were_deleted_gets_what_is_left() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "deleted").await;
    let id = unique_name("deleted");
    let (mut sub, _) = raw_session(&relay, Protocol::V5, v5_connect(&id, true, 300)).await;
    subscribe(&mut sub, 1, &[("deleted/+", QoS::AtLeastOnce)]).await;
    disconnect(&mut sub).await;

    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 1..=3u16 {
        let payload = format!("m{i}");
        assert_eq!(
            publish_qos1(&mut publisher, "deleted/a", i, payload.as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    // What the session missed so far is gone from Kafka (as after retention), then more comes.
    delete_all_records(&kafka, &relay.topics.messages, 2).await;
    for i in 4..=5u16 {
        let payload = format!("m{i}");
        assert_eq!(
            publish_qos1(&mut publisher, "deleted/a", i, payload.as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }

    let (mut sub, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut sub, QUIET).await {
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(got, ["m4", "m5"], "what Kafka still has, in order, once");
    wait_for_count(
        relay.s_proxy.admin,
        r#"strait_mqtt_kafka_catch_up_offsets_reset_total{role="s-proxy"}"#,
        1.0,
    )
    .await;
    // Still subscribed, served live.
    assert_eq!(
        publish_qos1(&mut publisher, "deleted/b", 9, b"live").await,
        ReasonCode::SUCCESS
    );
    let live = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .expect("the live message");
    assert_eq!(&live.payload[..], b"live");
}

/// Records in `topic` whose key is no MQTT topic name, each with QoS 1 headers so a
/// persistent subscriber to `bad/#` would get them at QoS 1; then a good one with `payload`.
async fn produce_bad_then_good(producer: &FutureProducer, topic: &str, payload: &[u8]) {
    let qos1: &[(&str, &[u8])] = &[("zilla:qos", b"1")];
    let long = format!("bad/{}", "a".repeat(70_000));
    let with_filters: &[(&str, &[u8])] = &[
        ("zilla:filter", b"bad"),
        ("zilla:filter", b"x"),
        ("zilla:qos", b"1"),
    ];
    for (key, headers) in [
        (&b"bad/+"[..], qos1),
        (b"bad/#", qos1),
        (long.as_bytes(), qos1),
        (b"bad/nul\0", qos1),
        (b"bad/\xff\xfe", with_filters),
    ] {
        produce(producer, topic, key, headers, b"must not arrive").await;
    }
    produce(producer, topic, b"bad/ok", qos1, payload).await;
}

/// The next PUBLISH is `payload` on `bad/ok`, and no other comes.
async fn expect_only(client: &mut RawClient, payload: &str) {
    let got = next_publish(client, Duration::from_secs(15))
        .await
        .unwrap_or_else(|| panic!("{payload} did not arrive"));
    assert_eq!(
        (&*got.topic, &got.payload[..], got.qos),
        ("bad/ok", payload.as_bytes(), QoS::AtLeastOnce)
    );
    assert_eq!(next_publish(client, QUIET).await.map(|p| p.topic), None);
}

#[tokio::test]
async fn records_whose_key_cannot_be_a_topic_are_skipped_and_the_subscriber_stays() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "badkey").await;
    let admin_addr = relay.s_proxy.admin;
    let skipped = |reason: &str| {
        format!(r#"strait_mqtt_kafka_records_skipped_total{{reason="{reason}",role="s-proxy"}}"#)
    };
    let id = unique_name("badkey");
    let (mut sub, _) = raw_session(&relay, Protocol::V5, v5_connect(&id, true, 300)).await;
    subscribe(&mut sub, 1, &[("bad/#", QoS::AtLeastOnce)]).await;
    let producer = producer(&kafka);

    // Live, from the dispatcher.
    produce_bad_then_good(&producer, &relay.topics.messages, b"good-1").await;
    expect_only(&mut sub, "good-1").await;
    wait_for_count(admin_addr, &skipped("topic_wildcard"), 2.0).await;
    wait_for_count(admin_addr, &skipped("topic_too_long"), 1.0).await;
    wait_for_count(admin_addr, &skipped("topic_null_character"), 1.0).await;
    wait_for_count(admin_addr, &skipped("key_not_utf8"), 1.0).await;
    assert_served(&mut sub).await;

    // Missed while away, from the catch-up: the session moves past them, on every reconnect.
    disconnect(&mut sub).await;
    produce_bad_then_good(&producer, &relay.topics.messages, b"good-2").await;
    let (mut sub, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert!(ack.session_present);
    expect_only(&mut sub, "good-2").await;
    assert_served(&mut sub).await;
    disconnect(&mut sub).await;
    wait_for_count(admin_addr, &skipped("topic_wildcard"), 4.0).await;
    // good-2 was acknowledged: the next reconnect has nothing to deliver, and stays.
    let (mut sub, _) = raw_session(&relay, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert_eq!(next_publish(&mut sub, QUIET).await.map(|p| p.topic), None);
    assert_served(&mut sub).await;
}

#[tokio::test]
async fn a_slow_persistent_subscriber_catches_up_without_being_disconnected() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "slowcatch").await;
    let id = unique_name("slowcatch");
    let slow_connect = |clean: bool| {
        let mut connect = v5_connect(&id, clean, 300);
        connect.properties.receive_maximum = Some(1);
        connect
    };
    let (mut sub, _) = raw_session(&relay, Protocol::V5, slow_connect(true)).await;
    subscribe(&mut sub, 1, &[("slowcatch/#", QoS::AtLeastOnce)]).await;
    disconnect(&mut sub).await;

    // More than the catch-up reader hands on without waiting (256): it blocks on the client.
    const COUNT: u16 = 300;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 1..=COUNT {
        assert_eq!(
            publish_qos1(&mut publisher, "slowcatch/x", i, format!("m{i}").as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }

    // One message in flight at a time, each acknowledged late.
    let (mut sub, ack) = raw_session(&relay, Protocol::V5, slow_connect(false)).await;
    assert!(ack.session_present);
    let mut got = Vec::new();
    while got.len() < usize::from(COUNT) {
        let publish = match sub.recv_within(Duration::from_secs(15)).await {
            Some(Packet::Publish(publish)) => publish,
            other => panic!("after {} messages: {other:?}", got.len()),
        };
        got.push(String::from_utf8(publish.payload.to_vec()).unwrap());
        tokio::time::sleep(Duration::from_millis(10)).await;
        sub.send(&Packet::PubAck(mqtt::PubAck {
            packet_id: publish.packet_id,
            ..Default::default()
        }))
        .await;
    }
    let want: Vec<String> = (1..=COUNT).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "every message, in order, once");
    assert_served(&mut sub).await;
}
