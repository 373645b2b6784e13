//! s-proxy with Kafka as the broker, against the real Kafka of the test services, through
//! r-proxy, with real MQTT clients: what a client sees, and what a plain Kafka client sees.
//!
//! One file (about 1600 lines) on purpose: each test binary links and starts its services once.

mod kafka_support;
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use kafka_support::*;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, QoS, ReasonCode};
use support::{RawClient, assert_disconnected_with, connect_packet};

const QUIET: Duration = Duration::from_millis(1500);

#[tokio::test]
async fn publish_and_subscribe_with_wildcards_at_qos_0_and_1() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "pubsub").await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
    let codes = subscribe(
        &mut sub,
        1,
        &[
            ("home/+/temp", QoS::AtLeastOnce),
            ("home/#", QoS::AtMostOnce),
            ("#", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        codes,
        [
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1
        ]
    );

    let (mut publisher, _) =
        raw_session(&relay, Protocol::V311, connect_packet(&unique_name("pub"))).await;
    assert_eq!(
        publish_qos1(&mut publisher, "home/kitchen/temp", 1, b"21.5").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .expect("the QoS 1 message");
    assert_eq!(
        (&*got.topic, &got.payload[..], got.qos),
        ("home/kitchen/temp", &b"21.5"[..], QoS::AtLeastOnce)
    );

    // QoS 0 in, QoS 0 out, to the wildcard subscribers only.
    publisher
        .send(&publish_packet("home/door", QoS::AtMostOnce, 0, b"open"))
        .await;
    let got = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .expect("the QoS 0 message");
    assert_eq!(
        (&*got.topic, &got.payload[..], got.qos),
        ("home/door", &b"open"[..], QoS::AtMostOnce)
    );

    // `#` does not match `$` topics; a subscription to the `$` topic itself does.
    assert_eq!(
        publish_qos1(&mut publisher, "$internal/x", 2, b"hidden").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        next_publish(&mut sub, QUIET).await.map(|p| p.topic),
        None,
        "# matched a $ topic"
    );
    assert_eq!(
        subscribe(&mut sub, 2, &[("$internal/+", QoS::AtLeastOnce)]).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    assert_eq!(
        publish_qos1(&mut publisher, "$internal/x", 3, b"seen").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .expect("the $ message");
    assert_eq!(&got.payload[..], b"seen");

    // Unsubscribed filters stop delivering.
    sub.send(&Packet::Unsubscribe(mqtt::Unsubscribe {
        packet_id: 3,
        filters: vec![
            "home/+/temp".into(),
            "home/#".into(),
            "#".into(),
            "$internal/+".into(),
        ],
        ..Default::default()
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::UnsubAck(_))));
    assert_eq!(
        publish_qos1(&mut publisher, "home/kitchen/temp", 4, b"22").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(next_publish(&mut sub, QUIET).await.map(|p| p.topic), None);
}

#[tokio::test]
async fn qos_is_the_lower_of_publish_and_subscription_and_no_local_is_honoured() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "qosmin").await;
    let id = unique_name("self");
    let (mut client, _) = raw_session(&relay, Protocol::V5, connect_packet(&id)).await;
    client
        .send(&Packet::Subscribe(mqtt::Subscribe {
            packet_id: 1,
            subscriptions: vec![
                mqtt::Subscription {
                    filter: "mine/#".into(),
                    options: mqtt::SubscriptionOptions {
                        no_local: true,
                        ..mqtt::SubscriptionOptions::qos(QoS::AtLeastOnce)
                    },
                },
                mqtt::Subscription {
                    filter: "low/#".into(),
                    options: mqtt::SubscriptionOptions::qos(QoS::AtMostOnce),
                },
            ],
            properties: mqtt::SubscribeProperties {
                subscription_identifier: Some(42),
                ..Default::default()
            },
        }))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::SubAck(_))));
    // Its own message on a No Local filter does not come back.
    assert_eq!(
        publish_qos1(&mut client, "mine/a", 1, b"own").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        next_publish(&mut client, QUIET).await.map(|p| p.topic),
        None
    );
    // QoS 1 publish on a QoS 0 subscription arrives at QoS 0, with the subscription id
    // (from another client: the message may overtake the PUBACK).
    let (mut other, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("other"))).await;
    assert_eq!(
        publish_qos1(&mut other, "low/b", 2, b"x").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut client, Duration::from_secs(10))
        .await
        .expect("the message");
    assert_eq!(got.qos, QoS::AtMostOnce);
    assert_eq!(got.properties.subscription_identifiers, [42]);
}

#[tokio::test]
async fn retained_messages_are_set_replaced_and_cleared() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "retained").await;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    let retained = |payload: &'static [u8], id| {
        Packet::Publish(mqtt::Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "status/device".into(),
            packet_id: id,
            payload: Bytes::from_static(payload),
            ..Default::default()
        })
    };
    let acked = async |client: &mut RawClient, id| match client.recv().await {
        Some(Packet::PubAck(ack)) if ack.packet_id == id => {
            assert_eq!(ack.reason_code, ReasonCode::SUCCESS)
        }
        other => panic!("expected PUBACK, got {other:?}"),
    };
    publisher.send(&retained(b"online", 1)).await;
    acked(&mut publisher, 1).await;
    let held = r#"strait_mqtt_kafka_table_records{role="s-proxy",table="retained"}"#;
    wait_for_metric(relay.s_proxy.admin, held, 1.0).await;
    let bytes = r#"strait_mqtt_kafka_table_bytes{role="s-proxy",table="retained"}"#;
    let retained_bytes = metric(relay.s_proxy.admin, bytes).await.unwrap_or(0.0);
    assert!(
        retained_bytes >= ("status/device".len() + "online".len()) as f64,
        "{bytes} is {retained_bytes}"
    );

    let late_subscriber = async |relay: &KafkaRelay| {
        let (mut sub, _) =
            raw_session(relay, Protocol::V5, connect_packet(&unique_name("late"))).await;
        subscribe(&mut sub, 1, &[("status/+", QoS::AtLeastOnce)]).await;
        let got = next_publish(&mut sub, QUIET).await;
        got.map(|p| {
            assert!(p.retain, "a retained message on subscribe has RETAIN set");
            p.payload
        })
    };
    assert_eq!(
        late_subscriber(&relay).await.as_deref(),
        Some(&b"online"[..])
    );

    publisher.send(&retained(b"offline", 2)).await;
    acked(&mut publisher, 2).await;
    assert_eq!(
        late_subscriber(&relay).await.as_deref(),
        Some(&b"offline"[..]),
        "replaced"
    );

    publisher.send(&retained(b"", 3)).await;
    acked(&mut publisher, 3).await;
    assert_eq!(
        late_subscriber(&relay).await,
        None,
        "an empty retained message clears the topic"
    );
    wait_for_metric(relay.s_proxy.admin, held, 0.0).await;
    wait_for_metric(relay.s_proxy.admin, bytes, 0.0).await;

    // The retained topic holds a tombstone for it, as a plain Kafka consumer sees.
    let (key, _, value) = read_record(&kafka, &relay.topics.retained, "status/device").await;
    assert_eq!(key.as_deref(), Some("status/device"));
    let _ = value;
}

/// Zilla clears a retained message by writing an empty value (not a tombstone) to the retained
/// topic, and an empty record to the messages topic: Strait takes the first as a clear (MQTT 5
/// §3.3.1.3: a zero-byte retained message is not stored) and delivers the second to live
/// subscribers as an empty message, as Zilla does.
#[tokio::test]
async fn an_empty_value_written_to_the_retained_topic_clears_it_as_zilla_writes_it() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "emptyret").await;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    publisher
        .send(&Packet::Publish(mqtt::Publish {
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "zilla/clear".into(),
            packet_id: 1,
            payload: Bytes::from_static(b"online"),
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS)
    );
    let held = r#"strait_mqtt_kafka_table_records{role="s-proxy",table="retained"}"#;
    wait_for_metric(relay.s_proxy.admin, held, 1.0).await;
    let (mut live, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("live"))).await;
    subscribe(&mut live, 1, &[("zilla/+", QoS::AtLeastOnce)]).await;
    let got = next_publish(&mut live, Duration::from_secs(10))
        .await
        .expect("the retained message on subscribe");
    assert_eq!((&got.payload[..], got.retain), (&b"online"[..], true));

    // What Zilla writes for `mosquitto_pub -r -n`: an empty value, key = MQTT topic, its
    // headers, to both topics.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .create()
        .expect("a Kafka producer");
    for topic in [&relay.topics.retained, &relay.topics.messages] {
        let mut headers = OwnedHeaders::new();
        for (name, value) in [
            ("zilla:filter", &b"zilla"[..]),
            ("zilla:filter", b"clear"),
            ("zilla:local", b"a-zilla-client"),
            ("zilla:qos", b"1"),
        ] {
            headers = headers.insert(Header {
                key: name,
                value: Some(value),
            });
        }
        producer
            .send(
                FutureRecord::to(topic)
                    .key("zilla/clear")
                    .payload(&b""[..])
                    .headers(headers),
                Duration::from_secs(10),
            )
            .await
            .expect("produced");
    }

    // Gone from the table, and a new subscriber gets nothing.
    wait_for_metric(relay.s_proxy.admin, held, 0.0).await;
    let (mut late, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("late"))).await;
    subscribe(&mut late, 1, &[("zilla/+", QoS::AtLeastOnce)]).await;
    assert_eq!(
        next_publish(&mut late, QUIET).await.map(|p| p.payload),
        None,
        "an empty retained value clears the retained message"
    );
    // The record in the messages topic is a message like any other: an empty one.
    let got = next_publish(&mut live, Duration::from_secs(10))
        .await
        .expect("the empty message from the messages topic");
    assert_eq!(
        (&*got.topic, &got.payload[..], got.retain),
        ("zilla/clear", &b""[..], false)
    );
}

#[tokio::test]
async fn the_messages_topic_has_zillas_record_layout() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "golden").await;
    let client_id = unique_name("golden");
    let (mut publisher, _) = raw_session(&relay, Protocol::V5, connect_packet(&client_id)).await;
    publisher
        .send(&Packet::Publish(mqtt::Publish {
            qos: QoS::AtLeastOnce,
            topic: "sensor/one".into(),
            packet_id: 1,
            payload: Bytes::from_static(b"{\"t\":1}"),
            properties: mqtt::PublishProperties {
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(60),
                content_type: Some("application/json".into()),
                response_topic: Some("reply/one".into()),
                correlation_data: Some(Bytes::from_static(b"c-1")),
                user_properties: vec![("row".into(), "1".into()), ("row".into(), "2".into())],
                ..Default::default()
            },
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.reason_code == ReasonCode::SUCCESS)
    );

    let (key, headers, payload) = read_record(&kafka, &relay.topics.messages, "sensor/one").await;
    assert_eq!(key.as_deref(), Some("sensor/one"));
    assert_eq!(payload.as_deref(), Some(&b"{\"t\":1}"[..]));
    let h = |name: &str, value: &[u8]| (name.to_string(), value.to_vec());
    assert_eq!(
        headers,
        [
            h("zilla:filter", b"sensor"),
            h("zilla:filter", b"one"),
            h("zilla:local", client_id.as_bytes()),
            h("zilla:expiry", &60i32.to_be_bytes()),
            h("zilla:content-type", b"application/json"),
            h("zilla:format", b"TEXT"),
            h("zilla:reply-to", relay.topics.messages.as_bytes()),
            h("zilla:reply-key", b"reply/one"),
            h("zilla:reply-filter", b"reply"),
            h("zilla:reply-filter", b"one"),
            h("zilla:correlation-id", b"c-1"),
            h("zilla:qos", b"1"),
            h("row", b"1"),
            h("row", b"2"),
        ]
    );
}

#[tokio::test]
async fn a_record_from_a_plain_kafka_producer_reaches_v5_subscribers_with_its_properties() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "plain").await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
    subscribe(&mut sub, 1, &[("plain/+", QoS::AtLeastOnce)]).await;

    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &kafka)
        .create()
        .expect("a Kafka producer");
    let mut headers = OwnedHeaders::new();
    for (name, value) in [
        ("zilla:filter", &b"plain"[..]),
        ("zilla:filter", b"x"),
        ("zilla:local", b"a-java-service"),
        ("zilla:qos", b"1"),
        ("zilla:content-type", b"text/plain"),
        ("zilla:format", b"TEXT"),
        ("zilla:reply-to", relay.topics.messages.as_bytes()),
        ("zilla:reply-key", b"answers/x"),
        ("zilla:correlation-id", b"42"),
        ("zilla:expiry", &3600i32.to_be_bytes()),
        ("trace", b"abc"),
    ] {
        headers = headers.insert(Header {
            key: name,
            value: Some(value),
        });
    }
    producer
        .send(
            FutureRecord::to(&relay.topics.messages)
                .key("plain/x")
                .payload("hello from Kafka")
                .headers(headers),
            Duration::from_secs(10),
        )
        .await
        .expect("produced");

    let got = next_publish(&mut sub, Duration::from_secs(15))
        .await
        .expect("the Kafka record as a PUBLISH");
    assert_eq!(
        (&*got.topic, &got.payload[..], got.qos),
        ("plain/x", &b"hello from Kafka"[..], QoS::AtLeastOnce)
    );
    let p = &got.properties;
    assert_eq!(p.content_type.as_deref(), Some("text/plain"));
    assert_eq!(p.payload_format_indicator, Some(true));
    assert_eq!(p.response_topic.as_deref(), Some("answers/x"));
    assert_eq!(p.correlation_data.as_deref(), Some(&b"42"[..]));
    assert_eq!(
        p.user_properties,
        [("trace".to_string(), "abc".to_string())]
    );
    let expiry = p.message_expiry_interval.expect("the remaining expiry");
    assert!((3590..=3600).contains(&expiry), "remaining expiry {expiry}");
}

#[tokio::test]
async fn a_persistent_session_gets_what_was_published_while_it_was_away() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "persistent").await;
    let id = unique_name("persistent");
    let (mut sub, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, true, 300)).await;
    assert!(!ack.session_present);
    subscribe(&mut sub, 1, &[("offline/+", QoS::AtLeastOnce)]).await;
    sub.send(&Packet::Disconnect(mqtt::Disconnect::default()))
        .await;
    sub.until_closed().await;

    let (mut publisher, _) =
        raw_session(&relay, Protocol::V311, connect_packet(&unique_name("pub"))).await;
    for i in 1..=5u16 {
        let payload = format!("m{i}");
        assert_eq!(
            publish_qos1(&mut publisher, "offline/a", i, payload.as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    publisher
        .send(&publish_packet(
            "offline/zero",
            QoS::AtMostOnce,
            0,
            b"qos0 is not kept",
        ))
        .await;
    // In Kafka before the subscriber comes back, so it is an offline message too.
    read_record(&kafka, &relay.topics.messages, "offline/zero").await;

    let (mut sub, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert!(ack.session_present, "the session was kept");
    let mut got = Vec::new();
    while let Some(p) = next_publish(&mut sub, QUIET).await {
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    assert_eq!(
        got,
        ["m1", "m2", "m3", "m4", "m5"],
        "offline QoS 1 messages, in order, once"
    );

    // Still subscribed: new messages arrive live.
    assert_eq!(
        publish_qos1(&mut publisher, "offline/b", 9, b"live").await,
        ReasonCode::SUCCESS
    );
    let live = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .expect("live message");
    assert_eq!(&live.payload[..], b"live");

    // s-proxy's own figures: six QoS 1 records produced and acknowledged, the five offline ones
    // (and the QoS 0 one, read but not delivered) replayed by one catch-up, six deliveries.
    let admin = relay.s_proxy.admin;
    let at_least = async |series: &str, want: f64| {
        let value = metric(admin, series).await.unwrap_or(0.0);
        assert!(
            value >= want,
            "{series} is {value}, expected at least {want}"
        );
    };
    at_least(
        r#"strait_mqtt_kafka_records_produced_total{kind="messages",qos="1",role="s-proxy"}"#,
        6.0,
    )
    .await;
    at_least(
        r#"strait_mqtt_kafka_records_produced_total{kind="messages",qos="0",role="s-proxy"}"#,
        1.0,
    )
    .await;
    at_least(
        r#"strait_mqtt_kafka_produce_ack_seconds_count{kind="messages",qos="1",role="s-proxy"}"#,
        6.0,
    )
    .await;
    at_least(
        r#"strait_mqtt_kafka_deliveries_total{qos="1",role="s-proxy"}"#,
        6.0,
    )
    .await;
    at_least(
        r#"strait_mqtt_kafka_catch_ups_total{reason="resume",role="s-proxy"}"#,
        1.0,
    )
    .await;
    at_least(
        r#"strait_mqtt_kafka_catch_up_records_total{role="s-proxy"}"#,
        5.0,
    )
    .await;
    wait_for_metric(
        admin,
        r#"strait_mqtt_kafka_catch_ups_active{role="s-proxy"}"#,
        0.0,
    )
    .await;
    // This test's own sessions topic: the persistent session is stored.
    at_least(
        r#"strait_mqtt_kafka_table_records{role="s-proxy",table="sessions"}"#,
        1.0,
    )
    .await;
    assert_eq!(
        metric(
            admin,
            r#"strait_mqtt_kafka_produce_failures_total{kind="messages",role="s-proxy"}"#
        )
        .await,
        Some(0.0),
        "no record failed"
    );

    // A clean start drops the session.
    sub.send(&Packet::Disconnect(mqtt::Disconnect::default()))
        .await;
    sub.until_closed().await;
    let (_, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, true, 0)).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn the_will_is_published_when_a_client_drops_and_not_after_disconnect() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "will").await;
    let (mut watcher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("watch"))).await;
    subscribe(&mut watcher, 1, &[("wills/#", QoS::AtLeastOnce)]).await;

    let polite = unique_name("polite");
    let (mut client, _) = raw_session(
        &relay,
        Protocol::V311,
        support::connect_with_will(&polite, "wills/polite", b"gone"),
    )
    .await;
    client
        .send(&Packet::Disconnect(mqtt::Disconnect::default()))
        .await;
    client.until_closed().await;

    let rude = unique_name("rude");
    let (client, _) = raw_session(
        &relay,
        Protocol::V311,
        support::connect_with_will(&rude, "wills/rude", b"lost"),
    )
    .await;
    drop(client); // the TCP connection just closes

    let got = next_publish(&mut watcher, Duration::from_secs(15))
        .await
        .expect("the will");
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("wills/rude", &b"lost"[..])
    );
    assert_eq!(
        next_publish(&mut watcher, QUIET).await.map(|p| p.topic),
        None,
        "no will after DISCONNECT"
    );
}

#[tokio::test]
async fn every_puback_survives_kill_9_of_s_proxy() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let mut relay = KafkaRelay::start(&kafka, "kill9").await;
    let sub_id = unique_name("durable");
    let (mut sub, _) = raw_session(&relay, Protocol::V5, v5_connect(&sub_id, true, 600)).await;
    subscribe(&mut sub, 1, &[("kill9/#", QoS::AtLeastOnce)]).await;

    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    // Publish with several in flight; count what was acknowledged until the kill cuts it off.
    let mqtt_addr = relay.mqtt;
    let publishing = tokio::spawn(async move {
        let mut acked = BTreeSet::new();
        let mut next = 1u16;
        let mut in_flight = 0;
        loop {
            while in_flight < 8 {
                let sent = publisher
                    .try_send(&publish_packet(
                        "kill9/x",
                        QoS::AtLeastOnce,
                        next,
                        format!("m{next}").as_bytes(),
                    ))
                    .await;
                if !sent {
                    return acked; // the kill closed the connection
                }
                next += 1;
                in_flight += 1;
            }
            match publisher.recv_within(Duration::from_secs(20)).await {
                Some(Packet::PubAck(ack)) if ack.reason_code == ReasonCode::SUCCESS => {
                    acked.insert(ack.packet_id);
                    in_flight -= 1;
                }
                Some(Packet::PubAck(_)) => in_flight -= 1,
                _ => return acked, // closed (or DISCONNECT) by the kill
            }
        }
    });
    let _ = mqtt_addr;
    let mut received = BTreeSet::new();
    while received.len() < 30 {
        let p = next_publish(&mut sub, Duration::from_secs(15))
            .await
            .expect("messages flow before the kill");
        received.insert(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    relay.s_proxy.kill().await;
    let acked = publishing.await.unwrap();
    // Some PUBACKs may still be on their way when s-proxy dies: those messages count as not
    // acknowledged (they may or may not arrive).
    assert!(acked.len() >= 10, "publisher got {} PUBACKs", acked.len());
    sub.until_closed().await;

    relay.restart_s_proxy().await;
    let (mut sub, ack) = raw_session(&relay, Protocol::V5, v5_connect(&sub_id, false, 600)).await;
    assert!(ack.session_present);
    while let Some(p) = next_publish(&mut sub, Duration::from_secs(3)).await {
        received.insert(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    let missing: Vec<u16> = acked
        .iter()
        .copied()
        .filter(|id| !received.contains(&format!("m{id}")))
        .collect();
    assert!(
        missing.is_empty(),
        "PUBACKed but never delivered: {missing:?} ({} acked)",
        acked.len()
    );
}

#[tokio::test]
async fn a_connection_through_another_s_proxy_takes_the_session_over() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let first = KafkaRelay::start(&kafka, "takeover").await;
    let second = KafkaRelay::start_with(&kafka, first.topics.clone(), "").await;
    let (mut watcher, _) =
        raw_session(&second, Protocol::V5, connect_packet(&unique_name("watch"))).await;
    subscribe(&mut watcher, 1, &[("roamwill/#", QoS::AtLeastOnce)]).await;
    let id = unique_name("roamer");
    let mut connect = v5_connect(&id, true, 300);
    connect.will = Some(mqtt::Will {
        topic: "roamwill/x".into(),
        payload: Bytes::from_static(b"taken over"),
        qos: QoS::AtLeastOnce,
        ..Default::default()
    });
    let (mut old, _) = raw_session(&first, Protocol::V5, connect).await;
    subscribe(&mut old, 1, &[("roam/#", QoS::AtLeastOnce)]).await;

    let (mut new, ack) = raw_session(&second, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert!(
        ack.session_present,
        "the session continues on the other replica"
    );
    let parting = old.until_closed().await;
    assert_disconnected_with(&parting, ReasonCode::SESSION_TAKEN_OVER);
    // Its will (no delay) is published, as MQTT-3.1.4-3 asks.
    let will = next_publish(&mut watcher, Duration::from_secs(10))
        .await
        .expect("the old connection's will");
    assert_eq!(&will.payload[..], b"taken over");

    // The subscription moved with it.
    let (mut publisher, _) =
        raw_session(&first, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    assert_eq!(
        publish_qos1(&mut publisher, "roam/x", 1, b"here").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut new, Duration::from_secs(10))
        .await
        .expect("delivered to the new connection");
    assert_eq!(&got.payload[..], b"here");
}

#[tokio::test]
async fn bad_publishes_get_the_right_reason_codes() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    // Kafka takes at most 2 KiB per record on this messages topic; MQTT packets up to 1 MiB.
    let topics = Topics::unique("bad");
    let relay = KafkaRelay::start_with(&kafka, topics, "").await;
    set_topic_config(&kafka, &relay.topics.messages, "max.message.bytes", "2048").await;

    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("big"))).await;
    assert_eq!(
        publish_qos1(&mut client, "big/one", 1, b"small").await,
        ReasonCode::SUCCESS
    );
    // PUBACK cannot carry 0x95: the publisher is disconnected with it, never acknowledged.
    client
        .send(&publish_packet(
            "big/one",
            QoS::AtLeastOnce,
            2,
            &vec![b'x'; 8 * 1024],
        ))
        .await;
    let parting = client.until_closed().await;
    assert_disconnected_with(&parting, ReasonCode::PACKET_TOO_LARGE);
    // A QoS 0 PUBLISH Kafka refuses the same way cannot be answered, but it is counted.
    let failures = r#"strait_mqtt_kafka_produce_failures_total{kind="messages",role="s-proxy"}"#;
    let before = metric(relay.s_proxy.admin, failures).await.unwrap_or(0.0);
    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("big0"))).await;
    client
        .send(&publish_packet(
            "big/zero",
            QoS::AtMostOnce,
            0,
            &vec![b'x'; 8 * 1024],
        ))
        .await;
    wait_for_metric(relay.s_proxy.admin, failures, before + 1.0).await;
    // The process goes on serving.
    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("next"))).await;
    assert_eq!(
        publish_qos1(&mut client, "big/two", 1, b"small").await,
        ReasonCode::SUCCESS
    );

    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("wild"))).await;
    let mut out = bytes::BytesMut::new();
    // Encode by hand: the codec refuses to encode a wildcard topic name.
    out.extend_from_slice(&[
        0x32, 0x0a, 0x00, 0x03, b'a', b'/', b'+', 0x00, 0x01, 0x00, b'h', b'i',
    ]);
    client.send_raw(&out).await;
    let parting = client.until_closed().await;
    assert_disconnected_with(&parting, ReasonCode::TOPIC_NAME_INVALID);

    // A topic name that is not UTF-8 is malformed.
    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("utf8"))).await;
    client
        .send_raw(&[0x30, 0x07, 0x00, 0x03, b'a', 0xff, b'b', 0x00, b'x'])
        .await;
    let parting = client.until_closed().await;
    assert_disconnected_with(&parting, ReasonCode::MALFORMED_PACKET);
}

#[tokio::test]
async fn routes_pick_the_messages_topic_and_client_patterns_the_partition() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let topics = Topics::unique("routes");
    let alerts = format!("{}-alerts", topics.messages);
    let extra = format!(
        "  routes: [ {{ topic: 'alerts/#', messages: '{alerts}' }} ]\n  clients: [ 'place/{{identity}}/#' ]\n"
    );
    let relay = KafkaRelay::start_with(&kafka, topics, &extra).await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
    subscribe(&mut sub, 1, &[("alerts/#", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;

    assert_eq!(
        publish_qos1(&mut publisher, "alerts/fire", 1, b"hot").await,
        ReasonCode::SUCCESS
    );
    let (key, _, payload) = read_record(&kafka, &alerts, "alerts/fire").await;
    assert_eq!(
        (key.as_deref(), payload.as_deref()),
        (Some("alerts/fire"), Some(&b"hot"[..])),
        "routed to its topic"
    );
    let got = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .expect("subscribers are served from routed topics");
    assert_eq!(&got.payload[..], b"hot");

    // Every topic of one client identity lands on the partition Java's murmur2 gives it.
    for (i, topic) in ["place/client-2/a", "place/client-2/b/c", "place/client-2"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            publish_qos1(&mut publisher, topic, 10 + i as u16, b"x").await,
            ReasonCode::SUCCESS
        );
    }
    let partitions = record_partitions(&kafka, &relay.topics.messages, "place/client-2").await;
    // murmur2("client-2") & 0x7fffffff % 2 partitions, as Kafka's Java client computes it.
    let want = (strait_mqtt_kafka::core::routing::murmur2(b"client-2") & 0x7fff_ffff) % 2;
    assert_eq!(partitions, vec![want; 3], "all on one partition");
}

#[tokio::test]
async fn s_proxy_refuses_to_start_on_a_sessions_topic_that_is_not_compacted() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let topics = Topics::unique("notcompact");
    create_topic(&kafka, &topics.sessions, &[("cleanup.policy", "delete")]).await;
    let config = s_proxy_config(strait_e2e::free_local_addr(), &kafka, &topics, "");
    let output = tokio::process::Command::new(support::BIN)
        .args([
            "s-proxy",
            "--config",
            config.to_str().unwrap(),
            "--metrics-addr",
            "127.0.0.1:0",
        ])
        .output()
        .await
        .expect("run s-proxy");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&topics.sessions) && stderr.contains("cleanup.policy=compact"),
        "{stderr}"
    );
}

async fn admin(kafka: &str) -> rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> {
    ClientConfig::new()
        .set("bootstrap.servers", kafka)
        .create()
        .expect("admin client")
}

async fn create_topic(kafka: &str, topic: &str, config: &[(&str, &str)]) {
    use rdkafka::admin::{AdminOptions, NewTopic, TopicReplication};
    let mut new = NewTopic::new(topic, 1, TopicReplication::Fixed(1));
    for (k, v) in config {
        new = new.set(k, v);
    }
    let results = admin(kafka)
        .await
        .create_topics(&[new], &AdminOptions::new())
        .await
        .expect("create topic");
    results.into_iter().for_each(|r| {
        r.expect("topic created");
    });
}

async fn set_topic_config(kafka: &str, topic: &str, key: &str, value: &str) {
    use rdkafka::admin::{AdminOptions, AlterConfig, ResourceSpecifier};
    let alter = AlterConfig::new(ResourceSpecifier::Topic(topic)).set(key, value);
    let results = admin(kafka)
        .await
        .alter_configs(&[alter], &AdminOptions::new())
        .await
        .expect("alter config");
    results.into_iter().for_each(|r| {
        r.expect("config altered");
    });
}

#[tokio::test]
async fn qos2_is_written_once_even_when_the_publish_is_resent_after_a_reconnect() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "qos2").await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
    subscribe(&mut sub, 1, &[("once/#", QoS::ExactlyOnce)]).await;

    let id = unique_name("qos2pub");
    let publish = |dup| {
        Packet::Publish(mqtt::Publish {
            dup,
            qos: QoS::ExactlyOnce,
            topic: "once/x".into(),
            packet_id: 7,
            payload: Bytes::from_static(b"exactly"),
            ..Default::default()
        })
    };
    let (mut client, _) = raw_session(&relay, Protocol::V5, v5_connect(&id, true, 300)).await;
    client.send(&publish(false)).await;
    assert!(
        matches!(client.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7 && r.reason_code == ReasonCode::SUCCESS)
    );
    // The connection drops before PUBREL; the client resends on its next connection.
    drop(client);
    let (mut client, ack) = raw_session(&relay, Protocol::V5, v5_connect(&id, false, 300)).await;
    assert!(ack.session_present);
    client.send(&publish(true)).await;
    assert!(
        matches!(client.recv().await, Some(Packet::PubRec(r)) if r.packet_id == 7 && r.reason_code == ReasonCode::SUCCESS)
    );
    client
        .send(&Packet::PubRel(mqtt::PubRel {
            packet_id: 7,
            ..Default::default()
        }))
        .await;
    assert!(
        matches!(client.recv().await, Some(Packet::PubComp(c)) if c.packet_id == 7 && c.reason_code == ReasonCode::SUCCESS)
    );

    // The subscriber gets it at QoS 2, once, through PUBREC/PUBREL/PUBCOMP.
    let got = match sub.recv().await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the QoS 2 PUBLISH, got {other:?}"),
    };
    assert_eq!(
        (got.qos, &got.payload[..]),
        (QoS::ExactlyOnce, &b"exactly"[..])
    );
    sub.send(&Packet::PubRec(mqtt::PubRec {
        packet_id: got.packet_id,
        ..Default::default()
    }))
    .await;
    assert!(matches!(sub.recv().await, Some(Packet::PubRel(r)) if r.packet_id == got.packet_id));
    sub.send(&Packet::PubComp(mqtt::PubComp {
        packet_id: got.packet_id,
        ..Default::default()
    }))
    .await;
    assert_eq!(
        next_publish(&mut sub, QUIET).await.map(|p| p.topic),
        None,
        "delivered once"
    );
    assert_eq!(
        count_records(&kafka, &relay.topics.messages, "once/x").await,
        1,
        "written to Kafka once"
    );
}

#[tokio::test]
async fn a_will_with_a_delay_waits_and_is_cancelled_by_a_reconnect() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "willdelay").await;
    let (mut watcher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("watch"))).await;
    subscribe(&mut watcher, 1, &[("late/#", QoS::AtLeastOnce)]).await;
    let with_delay = |id: &str, topic: &str| {
        let mut connect = v5_connect(id, true, 60);
        connect.will = Some(mqtt::Will {
            topic: topic.into(),
            payload: Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            properties: mqtt::WillProperties {
                will_delay_interval: Some(2),
                ..Default::default()
            },
            ..Default::default()
        });
        connect
    };
    let admin = relay.s_proxy.admin;
    // Comes back within the delay and ends that session at once (expiry 0, deleted) before
    // the delay has passed: the will stays cancelled (MQTT 5 §3.1.3.2.2).
    let ended = unique_name("ended");
    let (client, _) = raw_session(&relay, Protocol::V5, with_delay(&ended, "late/ended")).await;
    drop(client);
    support::wait_for_sessions(admin, 1, "s-proxy, the first connection ended").await;
    let (returned, ack) = raw_session(&relay, Protocol::V5, v5_connect(&ended, false, 0)).await;
    assert!(ack.session_present, "the reconnect resumes the session");
    drop(returned);
    support::wait_for_sessions(admin, 1, "s-proxy, the reconnect ended").await;
    // Comes back within the delay: no will.
    let back = unique_name("back");
    let (client, _) = raw_session(&relay, Protocol::V5, with_delay(&back, "late/back")).await;
    drop(client);
    let (_returned, _) = raw_session(&relay, Protocol::V5, v5_connect(&back, false, 60)).await;
    // Stays away: the will comes after the delay, not before.
    let away = unique_name("away");
    let (client, _) = raw_session(&relay, Protocol::V5, with_delay(&away, "late/away")).await;
    let dropped_at = std::time::Instant::now();
    drop(client);
    let got = next_publish(&mut watcher, Duration::from_secs(15))
        .await
        .expect("the delayed will");
    assert_eq!(
        got.topic, "late/away",
        "only the will of the client that stayed away"
    );
    assert!(
        dropped_at.elapsed() >= Duration::from_millis(1900),
        "will came after {:?}",
        dropped_at.elapsed()
    );
    assert_eq!(
        next_publish(&mut watcher, QUIET).await.map(|p| p.topic),
        None
    );
}

#[tokio::test]
async fn a_shared_subscription_splits_the_messages_among_three_members() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "shared").await;
    let mut members = Vec::new();
    for _ in 0..3 {
        let (mut member, ack) =
            raw_session(&relay, Protocol::V5, connect_packet(&unique_name("member"))).await;
        assert_eq!(ack.properties.shared_subscription_available, Some(true));
        assert_eq!(
            subscribe(
                &mut member,
                1,
                &[("$share/workers/jobs/+", QoS::AtLeastOnce)]
            )
            .await,
            [ReasonCode::GRANTED_QOS_1]
        );
        members.push(member);
    }
    let admin = relay.s_proxy.admin;
    wait_for_metric(
        admin,
        r#"strait_mqtt_kafka_shared_groups{role="s-proxy"}"#,
        1.0,
    )
    .await;
    wait_for_metric(
        admin,
        r#"strait_mqtt_kafka_shared_members{role="s-proxy"}"#,
        3.0,
    )
    .await;
    let (mut everything, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("all"))).await;
    subscribe(&mut everything, 1, &[("jobs/+", QoS::AtLeastOnce)]).await;

    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 1..=30u16 {
        assert_eq!(
            publish_qos1(
                &mut publisher,
                "jobs/build",
                i,
                format!("job{i}").as_bytes()
            )
            .await,
            ReasonCode::SUCCESS
        );
    }
    let mut all = Vec::new();
    while all.len() < 30 {
        let p = next_publish(&mut everything, Duration::from_secs(10))
            .await
            .expect("the plain subscriber gets every job");
        all.push(p.payload);
    }
    let mut seen = BTreeSet::new();
    let mut counts = Vec::new();
    for member in &mut members {
        let mut count = 0;
        while let Some(p) = next_publish(member, QUIET).await {
            assert!(
                seen.insert(p.payload.clone()),
                "{:?} went to two members",
                p.payload
            );
            count += 1;
        }
        counts.push(count);
    }
    assert_eq!(seen.len(), 30, "every job reached one member: {counts:?}");
    assert!(
        counts.iter().all(|c| *c >= 5),
        "members share the work: {counts:?}"
    );
    drop(members);
    wait_for_metric(
        admin,
        r#"strait_mqtt_kafka_shared_members{role="s-proxy"}"#,
        0.0,
    )
    .await;
    wait_for_metric(
        admin,
        r#"strait_mqtt_kafka_shared_groups{role="s-proxy"}"#,
        0.0,
    )
    .await;
}

#[tokio::test]
async fn a_surviving_replica_publishes_the_will_when_the_clients_s_proxy_dies() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let lease = "  replicaLease: 3s\n";
    let mut doomed = KafkaRelay::start_with(&kafka, Topics::unique("orphan"), lease).await;
    let survivor = KafkaRelay::start_with(&kafka, doomed.topics.clone(), lease).await;
    let (mut watcher, _) = raw_session(
        &survivor,
        Protocol::V5,
        connect_packet(&unique_name("watch")),
    )
    .await;
    subscribe(&mut watcher, 1, &[("orphans/#", QoS::AtLeastOnce)]).await;
    let id = unique_name("orphan");
    let (_client, _) = raw_session(
        &doomed,
        Protocol::V311,
        support::connect_with_will(&id, "orphans/x", b"my s-proxy died"),
    )
    .await;

    doomed.s_proxy.kill().await;
    let got = next_publish(&mut watcher, Duration::from_secs(30))
        .await
        .expect("the will, from the surviving replica");
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("orphans/x", &b"my s-proxy died"[..])
    );
    assert_eq!(
        next_publish(&mut watcher, QUIET).await.map(|p| p.topic),
        None,
        "published once"
    );
}

#[tokio::test]
async fn a_slow_subscriber_is_paused_not_disconnected_and_misses_nothing() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    // A delivery queue of 4 messages per session.
    let relay = KafkaRelay::start_with(&kafka, Topics::unique("slow"), "  sessionQueue: 4\n").await;
    let mut connect = connect_packet(&unique_name("slow"));
    connect.properties.receive_maximum = Some(1);
    let (mut slow, _) = raw_session(&relay, Protocol::V5, connect).await;
    subscribe(&mut slow, 1, &[("burst/#", QoS::AtLeastOnce)]).await;

    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 1..=40u16 {
        assert_eq!(
            publish_qos1(&mut publisher, "burst/x", i, format!("m{i}").as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    let mut got = Vec::new();
    while got.len() < 40 {
        let p = next_publish(&mut slow, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("only {} of 40 arrived", got.len()));
        got.push(String::from_utf8(p.payload.to_vec()).unwrap());
    }
    let want: Vec<String> = (1..=40).map(|i| format!("m{i}")).collect();
    assert_eq!(got, want, "every message, in order, once");
    assert_eq!(
        next_publish(&mut slow, QUIET).await.map(|p| p.payload),
        None
    );
}

/// A QoS 2 subscriber keeping its client-side session state (packet ids received and not yet
/// released) across connections, as the spec asks, counting each message it hands on.
struct Qos2Receiver {
    unreleased: BTreeSet<u16>,
    handed_on: Vec<String>,
}

impl Qos2Receiver {
    /// Handles packets until `quiet` passes without one or the connection closes; `true` when
    /// it closed.
    async fn run(&mut self, client: &mut RawClient, quiet: Duration) -> bool {
        loop {
            let packet = match tokio::time::timeout(
                quiet,
                client.recv_within(quiet + Duration::from_secs(1)),
            )
            .await
            {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(packet)) => packet,
            };
            match packet {
                Packet::Publish(p) if p.qos == QoS::ExactlyOnce => {
                    // Method B of the spec: a PUBLISH whose packet id is still unreleased is
                    // the same message again.
                    if self.unreleased.insert(p.packet_id) {
                        self.handed_on
                            .push(String::from_utf8(p.payload.to_vec()).unwrap());
                    }
                    if !client
                        .try_send(&Packet::PubRec(mqtt::PubRec {
                            packet_id: p.packet_id,
                            ..Default::default()
                        }))
                        .await
                    {
                        return true;
                    }
                }
                Packet::PubRel(r) => {
                    self.unreleased.remove(&r.packet_id);
                    if !client
                        .try_send(&Packet::PubComp(mqtt::PubComp {
                            packet_id: r.packet_id,
                            ..Default::default()
                        }))
                        .await
                    {
                        return true;
                    }
                }
                Packet::Disconnect(_) => return true,
                other => panic!("unexpected {other:?}"),
            }
        }
    }
}

#[tokio::test]
async fn qos2_is_exactly_once_end_to_end_across_kill_9_of_s_proxy() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let mut relay = KafkaRelay::start(&kafka, "q2kill").await;
    let (sub_id, pub_id) = (unique_name("q2sub"), unique_name("q2pub"));
    let (mut sub, _) = raw_session(&relay, Protocol::V5, v5_connect(&sub_id, true, 600)).await;
    assert_eq!(
        subscribe(&mut sub, 1, &[("q2/#", QoS::ExactlyOnce)]).await,
        [ReasonCode::GRANTED_QOS_2]
    );
    let mut receiver = Qos2Receiver {
        unreleased: BTreeSet::new(),
        handed_on: Vec::new(),
    };

    // The publisher's side of the session: what is unacknowledged, what is released, what is done.
    const TOTAL: u16 = 40;
    let mut unacked: BTreeSet<u16> = BTreeSet::new();
    let mut released: BTreeSet<u16> = BTreeSet::new();
    let mut completed: BTreeSet<u16> = BTreeSet::new();
    let mut next = 1u16;
    let publish = |id: u16, dup: bool| {
        Packet::Publish(mqtt::Publish {
            dup,
            qos: QoS::ExactlyOnce,
            topic: "q2/x".into(),
            packet_id: id,
            payload: format!("m{id}").into_bytes().into(),
            ..Default::default()
        })
    };
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, v5_connect(&pub_id, true, 600)).await;
    let mut killed = false;
    while completed.len() < usize::from(TOTAL) {
        let mut lost = false;
        while !lost && next <= TOTAL && unacked.len() + released.len() < 4 {
            unacked.insert(next);
            lost = !publisher.try_send(&publish(next, false)).await;
            next += 1;
        }
        if !lost {
            match publisher.recv_within(Duration::from_secs(20)).await {
                Some(Packet::PubRec(r)) => {
                    assert!(!r.reason_code.is_error(), "PUBREC {}", r.reason_code.name());
                    unacked.remove(&r.packet_id);
                    released.insert(r.packet_id);
                    lost = !publisher
                        .try_send(&Packet::PubRel(mqtt::PubRel {
                            packet_id: r.packet_id,
                            ..Default::default()
                        }))
                        .await;
                }
                Some(Packet::PubComp(c)) => {
                    released.remove(&c.packet_id);
                    completed.insert(c.packet_id);
                    if completed.len() == 15 && !killed {
                        killed = true;
                        relay.s_proxy.kill().await;
                    }
                }
                Some(Packet::Disconnect(_)) | None => lost = true,
                other => panic!("publisher got {other:?}"),
            }
        }
        if lost {
            assert!(killed, "the publisher lost its connection before the kill");
            // Both sessions end with s-proxy; bring it back, resume them, resend what is unfinished.
            while !receiver.run(&mut sub, Duration::from_secs(10)).await {}
            relay.restart_s_proxy().await;
            let (s, ack) = raw_session(&relay, Protocol::V5, v5_connect(&sub_id, false, 600)).await;
            assert!(ack.session_present);
            sub = s;
            let (p, ack) = raw_session(&relay, Protocol::V5, v5_connect(&pub_id, false, 600)).await;
            assert!(ack.session_present);
            publisher = p;
            for id in &unacked {
                publisher.send(&publish(*id, true)).await;
            }
            for id in &released {
                publisher
                    .send(&Packet::PubRel(mqtt::PubRel {
                        packet_id: *id,
                        ..Default::default()
                    }))
                    .await;
            }
        }
        receiver.run(&mut sub, Duration::from_millis(1)).await;
    }
    while !receiver.run(&mut sub, Duration::from_secs(3)).await
        && receiver.handed_on.len() < usize::from(TOTAL)
    {}
    receiver.run(&mut sub, QUIET).await;
    let mut counts = std::collections::BTreeMap::new();
    for m in &receiver.handed_on {
        *counts.entry(m.clone()).or_insert(0) += 1;
    }
    let missing: Vec<u16> = (1..=TOTAL)
        .filter(|i| !counts.contains_key(&format!("m{i}")))
        .collect();
    let twice: Vec<&String> = counts
        .iter()
        .filter(|(_, n)| **n > 1)
        .map(|(m, _)| m)
        .collect();
    assert!(killed);
    assert!(
        missing.is_empty() && twice.is_empty(),
        "missing {missing:?}, more than once {twice:?}"
    );
    assert_eq!(
        count_records(&kafka, &relay.topics.messages, "q2/x").await,
        usize::from(TOTAL),
        "each written to Kafka once"
    );
}

#[tokio::test]
async fn v5_clients_that_accept_topic_aliases_get_them() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "alias").await;
    let mut connect = connect_packet(&unique_name("alias"));
    connect.properties.topic_alias_maximum = Some(1);
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect).await;
    subscribe(&mut sub, 1, &[("long/topic/+", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for (i, topic) in ["long/topic/a", "long/topic/a", "long/topic/b"]
        .iter()
        .enumerate()
    {
        assert_eq!(
            publish_qos1(&mut publisher, topic, i as u16 + 1, b"x").await,
            ReasonCode::SUCCESS
        );
    }
    let mut got = Vec::new();
    for _ in 0..3 {
        let p = next_publish(&mut sub, Duration::from_secs(10))
            .await
            .expect("a message");
        got.push((p.topic.to_string(), p.properties.topic_alias));
    }
    assert_eq!(
        got,
        [
            ("long/topic/a".to_string(), Some(1)),
            (String::new(), Some(1)),
            ("long/topic/b".to_string(), None),
        ],
        "alias set, then used; no second alias beyond the client's maximum"
    );
}

#[tokio::test]
async fn a_shared_subscription_splits_the_messages_across_two_s_proxies() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let first = KafkaRelay::start(&kafka, "sharedx").await;
    let second = KafkaRelay::start_with(&kafka, first.topics.clone(), "").await;
    let group = format!("$share/{}/work/+", unique_name("g"));
    let mut members = Vec::new();
    for relay in [&first, &first, &second] {
        let (mut member, _) =
            raw_session(relay, Protocol::V5, connect_packet(&unique_name("member"))).await;
        assert_eq!(
            subscribe(&mut member, 1, &[(group.as_str(), QoS::AtLeastOnce)]).await,
            [ReasonCode::GRANTED_QOS_1]
        );
        members.push(member);
    }
    let (mut publisher, _) =
        raw_session(&first, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 1..=40u16 {
        // Different topics, so both partitions (and both replicas) get some.
        let topic = format!("work/{i}");
        assert_eq!(
            publish_qos1(&mut publisher, &topic, i, format!("job{i}").as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    let mut seen = BTreeSet::new();
    let mut counts = Vec::new();
    for member in &mut members {
        let mut count = 0;
        while let Some(p) = next_publish(member, Duration::from_secs(3)).await {
            assert!(
                seen.insert(p.payload.clone()),
                "{:?} went to two members",
                p.payload
            );
            count += 1;
        }
        counts.push(count);
    }
    assert_eq!(seen.len(), 40, "every job reached one member: {counts:?}");
    assert!(
        counts[2] > 0 && counts[0] + counts[1] > 0,
        "both replicas' members got work: {counts:?}"
    );
}

#[tokio::test]
async fn retain_as_published_is_honoured_for_live_messages() {
    use rumqttc::v5::mqttbytes::QoS as V5QoS;
    use rumqttc::v5::mqttbytes::v5::{Filter, Packet as V5Packet, RetainForwardRule};
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start(&kafka, "rap").await;
    let base = unique_name("rap");
    // Two rumqttc v5 subscribers on the same filter, one with Retain As Published.
    let mut subscribers = Vec::new();
    for preserve_retain in [true, false] {
        let (client, mut events) = v5_client(&relay, &unique_name("sub")).await;
        client
            .subscribe_many([Filter {
                path: format!("{base}/#"),
                qos: V5QoS::AtLeastOnce,
                nolocal: false,
                preserve_retain,
                retain_forward_rule: RetainForwardRule::Never,
            }])
            .await
            .unwrap();
        support::next_v5(&mut events, Duration::from_secs(10), |p| {
            matches!(p, V5Packet::SubAck(_)).then_some(())
        })
        .await
        .expect("SUBACK");
        subscribers.push((preserve_retain, client, events));
    }
    let (publisher, mut publisher_events) = v5_client(&relay, &unique_name("pub")).await;
    for (topic, retain) in [("kept", true), ("plain", false)] {
        publisher
            .publish(format!("{base}/{topic}"), V5QoS::AtLeastOnce, retain, topic)
            .await
            .unwrap();
        support::next_v5(&mut publisher_events, Duration::from_secs(10), |p| {
            matches!(p, V5Packet::PubAck(_)).then_some(())
        })
        .await
        .expect("PUBACK");
    }
    for (preserve_retain, _client, events) in &mut subscribers {
        let mut got = Vec::new();
        while got.len() < 2 {
            let publish = support::next_v5(events, Duration::from_secs(10), |p| match p {
                V5Packet::Publish(publish) => Some(publish),
                _ => None,
            })
            .await
            .expect("both live messages");
            got.push((
                String::from_utf8(publish.payload.to_vec()).unwrap(),
                publish.retain,
            ));
        }
        got.sort();
        assert_eq!(
            got,
            [
                ("kept".to_string(), *preserve_retain),
                ("plain".to_string(), false)
            ],
            "Retain As Published {preserve_retain}"
        );
    }
    // The flag travels as a header of its own; Zilla's headers are unchanged.
    let (_, headers, _) =
        read_record(&kafka, &relay.topics.messages, &format!("{base}/kept")).await;
    assert!(headers.contains(&("strait:retain".to_string(), b"1".to_vec())));
    let (_, headers, _) =
        read_record(&kafka, &relay.topics.messages, &format!("{base}/plain")).await;
    assert!(!headers.iter().any(|(name, _)| name == "strait:retain"));
}

/// A rumqttc v5 client connected through `relay` (CONNACK received).
async fn v5_client(
    relay: &KafkaRelay,
    client_id: &str,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
    let mut options =
        rumqttc::v5::MqttOptions::new(client_id, relay.mqtt.ip().to_string(), relay.mqtt.port());
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
    support::next_v5(&mut events, Duration::from_secs(10), |p| {
        matches!(p, V5Packet::ConnAck(_)).then_some(())
    })
    .await
    .expect("CONNACK through the relay");
    (client, events)
}

#[tokio::test]
async fn a_shared_subscription_skips_nothing_when_a_members_s_proxy_is_killed() {
    const JOBS: usize = 40;
    const ACKED_BEFORE_KILL: usize = 3;
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let mut doomed = KafkaRelay::start(&kafka, "sharedkill").await;
    let survivor = KafkaRelay::start_with(&kafka, doomed.topics.clone(), "").await;
    let group = unique_name("g");
    let filter = format!("$share/{group}/work/+");
    let mut members = Vec::new();
    for relay in [&doomed, &survivor] {
        let (mut member, _) =
            raw_session(relay, Protocol::V5, connect_packet(&unique_name("member"))).await;
        assert_eq!(
            subscribe(&mut member, 1, &[(filter.as_str(), QoS::AtLeastOnce)]).await,
            [ReasonCode::GRANTED_QOS_1]
        );
        members.push(member);
    }
    let (mut survivor_member, mut doomed_member) = (members.pop().unwrap(), members.pop().unwrap());
    let (mut publisher, _) =
        raw_session(&survivor, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for i in 1..=JOBS as u16 {
        let topic = format!("work/{i}");
        assert_eq!(
            publish_qos1(&mut publisher, &topic, i, format!("job{i}").as_bytes()).await,
            ReasonCode::SUCCESS
        );
    }
    // The doomed replica's member acknowledges its first few jobs and holds the rest unacked;
    // `delivered` is what the group has delivered (acknowledged or received by the survivor).
    let mut doomed_got = Vec::new();
    let mut delivered = BTreeSet::new();
    let until = tokio::time::Instant::now() + Duration::from_secs(30);
    while doomed_got.len() + delivered.len() - doomed_got.len().min(ACKED_BEFORE_KILL) < JOBS {
        assert!(
            tokio::time::Instant::now() < until,
            "jobs not all handed out: {doomed_got:?}, {delivered:?}"
        );
        if let Some(p) = next_publish(&mut survivor_member, Duration::from_millis(200)).await {
            delivered.insert(p.payload);
        }
        if let Some(Packet::Publish(p)) =
            next_packet(&mut doomed_member, Duration::from_millis(200)).await
        {
            if doomed_got.len() < ACKED_BEFORE_KILL {
                doomed_member
                    .send(&Packet::PubAck(mqtt::PubAck {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
                delivered.insert(p.payload.clone());
            }
            doomed_got.push(p.payload);
        }
    }
    assert!(
        doomed_got.len() > ACKED_BEFORE_KILL,
        "the doomed replica's member holds unacknowledged jobs: {doomed_got:?}"
    );
    // Both replicas have committed what they may (the acknowledged jobs at least); then the
    // doomed one dies with jobs read but never acknowledged.
    let group_id = format!("strait-share:{}:{group}:work/+", doomed.topics.messages);
    let acknowledged = delivered.len() as i64;
    let messages = doomed.topics.messages.clone();
    strait_e2e::wait_until(Duration::from_secs(20), "commits", || async {
        (committed_sum(&kafka, &group_id, &messages, 2).await >= acknowledged).then_some(())
    })
    .await;
    doomed.s_proxy.kill().await;
    // The survivor takes the partitions over (after the group's session timeout) from the last
    // delivered offset: every job the dead member did not acknowledge reaches it.
    let all: BTreeSet<Bytes> = (1..=JOBS).map(|i| Bytes::from(format!("job{i}"))).collect();
    let until = tokio::time::Instant::now() + Duration::from_secs(60);
    while delivered != all {
        assert!(
            tokio::time::Instant::now() < until,
            "never delivered to the surviving group: {:?}",
            all.difference(&delivered).collect::<Vec<_>>()
        );
        if let Some(p) = next_publish(&mut survivor_member, Duration::from_millis(500)).await {
            delivered.insert(p.payload);
        }
    }
}

#[tokio::test]
async fn subscribers_are_served_from_the_topics_of_param_routes() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let topics = Topics::unique("paramroute");
    let routed = format!("{}-s-", topics.messages);
    let extra = format!(
        "  routes: [ {{ topic: 'sensor/{{id}}/#', messages: '{routed}${{params.id}}' }} ]\n"
    );
    let first = KafkaRelay::start_with(&kafka, topics.clone(), &extra).await;
    let second = KafkaRelay::start_with(&kafka, topics, &extra).await;
    let id = unique_name("dev");
    let exact_filter = format!("sensor/{id}/temp");
    let mut subscribers = Vec::new();
    // An exact and a wildcard filter on the replica the publisher uses, and a wildcard one on
    // another replica (which finds the new topic in Kafka).
    for (relay, filter) in [
        (&first, exact_filter.as_str()),
        (&first, "sensor/+/temp"),
        (&second, "sensor/#"),
    ] {
        let (mut sub, _) =
            raw_session(relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
        assert_eq!(
            subscribe(&mut sub, 1, &[(filter, QoS::AtLeastOnce)]).await,
            [ReasonCode::GRANTED_QOS_1]
        );
        subscribers.push((filter, sub));
    }
    let (mut publisher, _) =
        raw_session(&first, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    assert_eq!(
        publish_qos1(&mut publisher, &exact_filter, 1, b"21.5").await,
        ReasonCode::SUCCESS
    );
    let (key, _, payload) = read_record(&kafka, &format!("{routed}{id}"), &exact_filter).await;
    assert_eq!(
        (key.as_deref(), payload.as_deref()),
        (Some(exact_filter.as_str()), Some(&b"21.5"[..])),
        "written to the route's topic"
    );
    for (filter, sub) in &mut subscribers {
        let got = next_publish(sub, Duration::from_secs(15))
            .await
            .unwrap_or_else(|| panic!("{filter} got nothing from the routed topic"));
        assert_eq!(
            (&*got.topic, &got.payload[..]),
            (exact_filter.as_str(), &b"21.5"[..]),
            "{filter}"
        );
    }
}

/// s-proxy stopping (a scale-down, a rolling update) drains its sessions: an MQTT 5 client is
/// told DISCONNECT 0x8B, a 3.1.1 client's connection closes, and no will is published (the
/// client did not cause it; it reconnects to another s-proxy).
#[tokio::test]
async fn a_stopping_s_proxy_drains_kafka_sessions_with_0x8b_and_no_will() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let mut relay = KafkaRelay::start(&kafka, "drain").await;
    let wills = unique_name("drainwills");
    let (mut v5, _) = raw_session(
        &relay,
        Protocol::V5,
        support::connect_with_will(&unique_name("drain5"), &format!("{wills}/v5"), b"v5 gone"),
    )
    .await;
    let (mut v3, _) = raw_session(
        &relay,
        Protocol::V311,
        support::connect_with_will(&unique_name("drain3"), &format!("{wills}/v3"), b"v3 gone"),
    )
    .await;

    let status = relay.s_proxy.terminate(Duration::from_secs(15)).await;
    assert!(
        status.success(),
        "s-proxy exits 0 on SIGTERM, got {status}\n{}",
        relay.s_proxy.log()
    );
    support::assert_disconnected_with(&v5.until_closed().await, ReasonCode::SERVER_SHUTTING_DOWN);
    assert_eq!(
        v3.until_closed().await,
        [],
        "3.1.1: closed without a packet"
    );

    // A sentinel through a new s-proxy; no will record came before it.
    relay.restart_s_proxy().await;
    let (mut publisher, _) = raw_session(
        &relay,
        Protocol::V5,
        connect_packet(&unique_name("sentinel")),
    )
    .await;
    publish_qos1(&mut publisher, &format!("{wills}/sentinel"), 1, b"sentinel").await;
    let messages = &relay.topics.messages;
    assert_eq!(
        count_records(&kafka, messages, &format!("{wills}/sentinel")).await,
        1
    );
    for will in ["v5", "v3"] {
        assert_eq!(
            count_records(&kafka, messages, &format!("{wills}/{will}")).await,
            0,
            "no will for the drained {will} session"
        );
    }
}
