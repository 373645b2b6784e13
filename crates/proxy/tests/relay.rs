//! r-proxy → s-proxy → Mosquitto, as a client sees it: everything MQTT does passes through.

mod support;

use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{
    Packet, Protocol, Publish, QoS as CodecQoS, ReasonCode, Subscribe, Subscription,
};
use support::{RawClient, Relay, connect_packet};

fn v5_client(relay: &Relay, id: &str) -> (AsyncClient, EventLoop) {
    let (host, port) = relay.host_port();
    let mut options = MqttOptions::new(id, host, port);
    options.set_keep_alive(Duration::from_secs(30));
    AsyncClient::new(options, 64)
}

/// Polls until `want` returns something, failing after 10 s.
async fn next_matching<T>(
    events: &mut EventLoop,
    mut want: impl FnMut(V5Packet) -> Option<T>,
) -> T {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(packet)) => {
                    if let Some(found) = want(packet) {
                        return found;
                    }
                }
                Ok(Event::Outgoing(_)) => {}
                Err(error) => panic!("connection failed: {error}"),
            }
        }
    })
    .await
    .expect("expected packet within 10 s")
}

#[tokio::test]
async fn qos_0_1_2_flow_both_ways_with_properties() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let topic = format!("relay/{}", unique_name("qos"));

    let (subscriber, mut sub_events) = v5_client(&relay, &unique_name("sub"));
    subscriber
        .subscribe(format!("{topic}/#"), QoS::ExactlyOnce)
        .await
        .unwrap();
    next_matching(&mut sub_events, |p| {
        matches!(p, V5Packet::SubAck(_)).then_some(())
    })
    .await;

    let (publisher, mut pub_events) = v5_client(&relay, &unique_name("pub"));
    let publishing = tokio::spawn(async move {
        let mut acks = (0, 0);
        while acks != (1, 1) {
            match pub_events.poll().await.expect("publisher connection") {
                Event::Incoming(V5Packet::PubAck(_)) => acks.0 += 1,
                Event::Incoming(V5Packet::PubComp(_)) => acks.1 += 1,
                _ => {}
            }
        }
        acks
    });
    for (qos, name) in [
        (QoS::AtMostOnce, "q0"),
        (QoS::AtLeastOnce, "q1"),
        (QoS::ExactlyOnce, "q2"),
    ] {
        let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
            user_properties: vec![("qos".into(), name.into())],
            content_type: Some("text/plain".into()),
            ..Default::default()
        };
        publisher
            .publish_with_properties(
                format!("{topic}/{name}"),
                qos,
                false,
                name.as_bytes().to_vec(),
                properties,
            )
            .await
            .unwrap();
    }

    let mut received = Vec::new();
    while received.len() < 3 {
        let publish = next_matching(&mut sub_events, |p| match p {
            V5Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .await;
        let props = publish.properties.expect("v5 properties relayed");
        assert_eq!(props.content_type.as_deref(), Some("text/plain"));
        received.push((publish.qos, publish.payload, props.user_properties));
    }
    received.sort_by_key(|(qos, ..)| *qos as u8);
    let expected: Vec<_> = [
        (QoS::AtMostOnce, "q0"),
        (QoS::AtLeastOnce, "q1"),
        (QoS::ExactlyOnce, "q2"),
    ]
    .into_iter()
    .map(|(qos, name)| {
        (
            qos,
            Bytes::from(name),
            vec![("qos".to_string(), name.to_string())],
        )
    })
    .collect();
    assert_eq!(received, expected);
    let acks = tokio::time::timeout(Duration::from_secs(10), publishing)
        .await
        .expect("acks")
        .unwrap();
    assert_eq!(acks, (1, 1), "one PUBACK for QoS 1, one PUBCOMP for QoS 2");
}

#[tokio::test]
async fn mqtt311_clients_relay_retained_messages() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet as V3Packet, QoS};
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let (host, port) = relay.host_port();
    let topic = format!("relay/{}/status", unique_name("retained"));

    let (publisher, mut pub_events) =
        AsyncClient::new(MqttOptions::new(unique_name("pub3"), &host, port), 16);
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, b"online".to_vec())
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        while !matches!(
            pub_events.poll().await.unwrap(),
            Event::Incoming(V3Packet::PubAck(_))
        ) {}
    })
    .await
    .expect("PUBACK for the retained message");

    // A later subscriber gets the retained message at once, flagged retained.
    let (subscriber, mut sub_events) =
        AsyncClient::new(MqttOptions::new(unique_name("sub3"), &host, port), 16);
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    let publish = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(V3Packet::Publish(p)) = sub_events.poll().await.unwrap() {
                return p;
            }
        }
    })
    .await
    .expect("retained message delivered");
    assert!(publish.retain);
    assert_eq!(&publish.payload[..], b"online");

    // Clearing it: an empty retained message.
    publisher
        .publish(&topic, QoS::AtLeastOnce, true, Vec::new())
        .await
        .unwrap();
}

#[tokio::test]
async fn will_is_published_when_a_client_drops_abruptly() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let topic = format!("relay/{}/will", unique_name("will"));

    let (watcher, mut watch_events) = v5_client(&relay, &unique_name("watcher"));
    watcher.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    next_matching(&mut watch_events, |p| {
        matches!(p, V5Packet::SubAck(_)).then_some(())
    })
    .await;

    let mut connect = connect_packet(&unique_name("doomed"));
    connect.will = Some(strait_mqtt_codec::Will {
        topic: topic.clone(),
        payload: Bytes::from_static(b"gone"),
        qos: CodecQoS::AtLeastOnce,
        ..Default::default()
    });
    let (client, _) = RawClient::session(relay.mqtt, Protocol::V5, connect).await;
    drop(client); // TCP close without DISCONNECT

    let will = next_matching(&mut watch_events, |p| match p {
        V5Packet::Publish(publish) => Some(publish),
        _ => None,
    })
    .await;
    assert_eq!(&will.payload[..], b"gone");
}

#[tokio::test]
async fn persistent_session_resumes_with_queued_qos1_messages() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let topic = format!("relay/{}/q", unique_name("persist"));
    let client_id = unique_name("persistent");
    let mut connect = connect_packet(&client_id);
    connect.clean_start = false;
    connect.properties.session_expiry_interval = Some(300);

    let (mut client, ack) = RawClient::session(relay.mqtt, Protocol::V5, connect.clone()).await;
    assert!(!ack.session_present);
    client
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: topic.clone(),
                options: strait_mqtt_codec::SubscriptionOptions::qos(CodecQoS::AtLeastOnce),
            }],
            ..Default::default()
        }))
        .await;
    assert!(matches!(client.recv().await, Some(Packet::SubAck(_))));
    client.send(&Packet::Disconnect(Default::default())).await;
    assert!(client.until_closed().await.is_empty());

    // Published while the client is away.
    let (mut publisher, _) =
        RawClient::session(relay.mqtt, Protocol::V5, connect_packet(&unique_name("p"))).await;
    for (id, body) in [(1u16, "one"), (2, "two"), (3, "three")] {
        publisher
            .send(&Packet::Publish(Publish {
                qos: CodecQoS::AtLeastOnce,
                topic: topic.as_str().into(),
                packet_id: id,
                payload: Bytes::from(body),
                ..Default::default()
            }))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(a)) if a.packet_id == id));
    }

    let (mut client, ack) = RawClient::session(relay.mqtt, Protocol::V5, connect).await;
    assert!(ack.session_present, "the broker kept the session");
    let mut bodies = Vec::new();
    while bodies.len() < 3 {
        match client.recv().await {
            Some(Packet::Publish(p)) => {
                bodies.push(String::from_utf8(p.payload.to_vec()).unwrap());
                client
                    .send(&Packet::PubAck(strait_mqtt_codec::PubAck {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
            }
            other => panic!("expected the queued messages, got {other:?}"),
        }
    }
    assert_eq!(bodies, ["one", "two", "three"]);
}

#[tokio::test]
async fn subscription_identifiers_topic_aliases_and_unsubscribe_pass_through() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let topic = format!("relay/{}/alias", unique_name("props"));
    let mut connect = connect_packet(&unique_name("props"));
    connect.properties.topic_alias_maximum = Some(10);
    let (mut client, ack) = RawClient::session(relay.mqtt, Protocol::V5, connect).await;
    assert!(
        ack.properties.maximum_packet_size.is_some(),
        "r-proxy announces its packet limit"
    );

    let mut subscribe = Subscribe {
        packet_id: 7,
        subscriptions: vec![Subscription {
            filter: topic.clone(),
            options: strait_mqtt_codec::SubscriptionOptions::qos(CodecQoS::AtLeastOnce),
        }],
        ..Default::default()
    };
    subscribe.properties.subscription_identifier = Some(42);
    client.send(&Packet::Subscribe(subscribe)).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.packet_id, 7);
            assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
        }
        other => panic!("SUBACK expected, got {other:?}"),
    }

    // Publish once with topic + alias, then with the alias alone.
    let mut first = Publish {
        qos: CodecQoS::AtLeastOnce,
        topic: topic.as_str().into(),
        packet_id: 1,
        payload: Bytes::from_static(b"a"),
        ..Default::default()
    };
    first.properties.topic_alias = Some(1);
    let mut second = first.clone();
    second.topic = Default::default();
    second.packet_id = 2;
    second.payload = Bytes::from_static(b"b");
    client.send(&Packet::Publish(first)).await;
    client.send(&Packet::Publish(second)).await;

    let mut deliveries = Vec::new();
    while deliveries.len() < 2 {
        match client.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(p.properties.subscription_identifiers, [42]);
                deliveries.push(p.payload);
                client
                    .send(&Packet::PubAck(strait_mqtt_codec::PubAck {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
            }
            Some(Packet::PubAck(_)) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(
        deliveries,
        [Bytes::from_static(b"a"), Bytes::from_static(b"b")]
    );

    client
        .send(&Packet::Unsubscribe(strait_mqtt_codec::Unsubscribe {
            packet_id: 8,
            filters: vec![topic],
            ..Default::default()
        }))
        .await;
    loop {
        match client.recv().await {
            Some(Packet::UnsubAck(ack)) => {
                assert_eq!(ack.reason_codes, [ReasonCode::SUCCESS]);
                break;
            }
            Some(Packet::PubAck(_)) => {}
            other => panic!("UNSUBACK expected, got {other:?}"),
        }
    }
    client.send(&Packet::PingReq).await;
    assert_eq!(client.recv().await, Some(Packet::PingResp));
}

/// s-proxy gathers a steady trickle of QoS 0 messages from the broker into fewer relay frames
/// (`broker.qos0Batching`): nothing may be lost or reordered by that, and acknowledgements and
/// QoS 1 messages behind a QoS 0 burst still come through.
#[tokio::test]
async fn qos0_streams_arrive_whole_and_in_order_through_s_proxy_batching() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let topic = format!("relay/{}", unique_name("stream"));
    let (mut subscriber, _) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_packet(&unique_name("sub")),
    )
    .await;
    subscriber.subscribe(1, &topic).await;
    let (mut publisher, _) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_packet(&unique_name("pub")),
    )
    .await;

    let publish = |i: u32, qos: CodecQoS| {
        Packet::Publish(Publish {
            topic: topic.as_str().into(),
            qos,
            packet_id: u16::from(qos != CodecQoS::AtMostOnce) * 7,
            payload: i.to_string().into(),
            ..Default::default()
        })
    };
    let mut burst = bytes::BytesMut::new();
    for i in 0..2_000 {
        strait_mqtt_codec::encode(&publish(i, CodecQoS::AtMostOnce), Protocol::V5, &mut burst)
            .unwrap();
    }
    strait_mqtt_codec::encode(
        &publish(2_000, CodecQoS::AtLeastOnce),
        Protocol::V5,
        &mut burst,
    )
    .unwrap();
    publisher.send_raw(&burst).await;

    for i in 0..=2_000u32 {
        match subscriber.recv().await {
            Some(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], i.to_string().as_bytes(), "message {i}");
                if p.qos == CodecQoS::AtLeastOnce {
                    subscriber
                        .send(&Packet::PubAck(strait_mqtt_codec::PubAck {
                            packet_id: p.packet_id,
                            ..Default::default()
                        }))
                        .await;
                }
            }
            other => panic!("expected message {i}, got {other:?}"),
        }
    }
    match publisher.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.packet_id, 7),
        other => panic!("expected the PUBACK behind the QoS 0 burst, got {other:?}"),
    }
}
