//! `kafka.limits`: what one MQTT client may make s-proxy hold on Kafka. Each limit is hit
//! through r-proxy -> s-proxy against the real Kafka, and answers with its reason code while
//! well-behaved clients go on being served.

mod kafka_support;
mod support;

use std::time::Duration;

use kafka_support::*;
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, QoS, ReasonCode};
use support::{RawClient, assert_disconnected_with, connect_packet};

fn limit_hits(limit: &str) -> String {
    format!(r#"strait_mqtt_kafka_limit_hits_total{{limit="{limit}",role="s-proxy"}}"#)
}

/// A normal client publishes at QoS 1 and gets its own message back.
async fn still_served(relay: &KafkaRelay, topic: &str) {
    let (mut client, _) =
        raw_session(relay, Protocol::V5, connect_packet(&unique_name("normal"))).await;
    assert_eq!(
        subscribe(&mut client, 1, &[(topic, QoS::AtLeastOnce)]).await,
        [ReasonCode(1)]
    );
    assert_eq!(
        publish_qos1(&mut client, topic, 2, b"served").await,
        ReasonCode::SUCCESS
    );
    let publish = next_publish(&mut client, Duration::from_secs(10))
        .await
        .expect("the normal client gets its message");
    assert_eq!(&publish.payload[..], b"served");
}

#[tokio::test]
async fn three_hundred_shared_groups_from_one_client_cost_a_bounded_number_of_threads() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    // The defaults: 8 shared subscriptions per session, 32 filters per SUBSCRIBE.
    let relay = KafkaRelay::start(&kafka, "share-abuse").await;
    still_served(&relay, "calm/before").await;
    let threads_before = relay.s_proxy.threads().expect("s-proxy threads");

    let (mut abuser, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("abuser"))).await;
    let mut codes = Vec::new();
    for batch in 0..10 {
        let filters: Vec<String> = (0..30)
            .map(|i| format!("$share/g{}/abuse/#", batch * 30 + i))
            .collect();
        let filters: Vec<(&str, QoS)> = filters
            .iter()
            .map(|f| (f.as_str(), QoS::AtLeastOnce))
            .collect();
        codes.extend(subscribe(&mut abuser, batch + 1, &filters).await);
    }
    let granted = codes.iter().filter(|c| !c.is_error()).count();
    let refused = codes
        .iter()
        .filter(|c| **c == ReasonCode::QUOTA_EXCEEDED)
        .count();
    assert_eq!((granted, refused), (8, 292), "{codes:?}");
    assert_eq!(
        metric(relay.s_proxy.admin, &limit_hits("shared_subscriptions")).await,
        Some(292.0)
    );
    let threads_after = relay.s_proxy.threads().expect("s-proxy threads");
    eprintln!("s-proxy threads: {threads_before} before, {threads_after} after 300 shared groups");
    // Eight group consumers: a thread of ours and four of librdkafka each (32 -> 72 here; without
    // the limit, 300 groups would be 1,500 threads).
    assert!(
        threads_after <= threads_before + 48,
        "s-proxy went from {threads_before} to {threads_after} threads"
    );
    still_served(&relay, "calm/after").await;
    assert!(
        relay.s_proxy.threads().expect("s-proxy threads") <= threads_before + 48,
        "still bounded"
    );
}

#[tokio::test]
async fn subscriptions_filters_and_shared_groups_beyond_their_limits_get_quota_exceeded() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("sub-limits"),
        "  limits: { maxSubscriptions: 3, maxFiltersPerSubscribe: 4, maxSharedSubscriptions: 2, maxSharedGroups: 2 }\n",
    )
    .await;
    let admin = relay.s_proxy.admin;
    let (mut client, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("many"))).await;
    // Five filters in one SUBSCRIBE: the fifth is beyond maxFiltersPerSubscribe, the fourth
    // beyond maxSubscriptions.
    let codes = subscribe(
        &mut client,
        1,
        &[
            ("a/1", QoS::AtLeastOnce),
            ("a/2", QoS::AtLeastOnce),
            ("a/3", QoS::AtMostOnce),
            ("a/4", QoS::AtLeastOnce),
            ("a/5", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        codes,
        [
            ReasonCode(1),
            ReasonCode(1),
            ReasonCode(0),
            ReasonCode::QUOTA_EXCEEDED,
            ReasonCode::QUOTA_EXCEEDED
        ]
    );
    assert_eq!(metric(admin, &limit_hits("subscriptions")).await, Some(1.0));
    assert_eq!(
        metric(admin, &limit_hits("filters_per_subscribe")).await,
        Some(1.0)
    );
    // Replacing a subscription it holds is always possible.
    assert_eq!(
        subscribe(&mut client, 2, &[("a/3", QoS::AtLeastOnce)]).await,
        [ReasonCode(1)]
    );
    // Refused filters are not subscribed: a/4 gets nothing, a/1 does.
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    assert_eq!(
        publish_qos1(&mut publisher, "a/4", 1, b"not for you").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        publish_qos1(&mut publisher, "a/1", 2, b"for you").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut client, Duration::from_secs(10))
        .await
        .expect("a/1 is delivered");
    assert_eq!(&got.payload[..], b"for you");

    // Shared groups: two per process. A 3.1.1 client learns of a refusal as 0x80.
    let (mut first, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("g1"))).await;
    let codes = subscribe(
        &mut first,
        1,
        &[
            ("$share/g1/s/#", QoS::AtLeastOnce),
            ("$share/g2/s/#", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(codes, [ReasonCode(1), ReasonCode(1)]);
    let (mut second, _) =
        raw_session(&relay, Protocol::V311, connect_packet(&unique_name("g3"))).await;
    let codes = subscribe(
        &mut second,
        1,
        &[
            ("$share/g3/s/#", QoS::AtLeastOnce),
            ("$share/g1/s/#", QoS::AtLeastOnce),
        ],
    )
    .await;
    assert_eq!(
        codes,
        [ReasonCode::UNSPECIFIED_ERROR, ReasonCode(1)],
        "a third group is refused, joining one served here is not"
    );
    assert_eq!(metric(admin, &limit_hits("shared_groups")).await, Some(1.0));
    assert_eq!(
        metric(admin, r#"strait_mqtt_kafka_shared_groups{role="s-proxy"}"#).await,
        Some(2.0)
    );
    // When the last member of a group leaves, another group may start.
    first
        .send(&Packet::Unsubscribe(mqtt::Unsubscribe {
            packet_id: 2,
            filters: vec!["$share/g2/s/#".into()],
            ..Default::default()
        }))
        .await;
    assert!(matches!(
        next_packet(&mut first, Duration::from_secs(10)).await,
        Some(Packet::UnsubAck(_))
    ));
    assert_eq!(
        subscribe(&mut second, 2, &[("$share/g3/s/#", QoS::AtLeastOnce)]).await,
        [ReasonCode(1)]
    );
}

fn qos2(packet_id: u16) -> Packet {
    publish_packet("rm/x", QoS::ExactlyOnce, packet_id, b"q2")
}

async fn expect_pubrec(client: &mut RawClient, packet_id: u16) {
    match next_packet(client, Duration::from_secs(10)).await {
        Some(Packet::PubRec(rec)) if rec.packet_id == packet_id => {
            assert!(!rec.reason_code.is_error(), "{rec:?}")
        }
        other => panic!("expected PUBREC {packet_id}, got {other:?}"),
    }
}

#[tokio::test]
async fn an_mqtt5_client_beyond_the_receive_maximum_is_disconnected_with_0x93() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("receive-max"),
        "  limits: { receiveMaximum: 2 }\n",
    )
    .await;
    let (mut client, connack) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("eager"))).await;
    assert_eq!(connack.properties.receive_maximum, Some(2), "announced");
    // QoS 2 PUBLISHes stay unacknowledged until PUBCOMP: two fill the window.
    client.send(&qos2(1)).await;
    expect_pubrec(&mut client, 1).await;
    client.send(&qos2(2)).await;
    expect_pubrec(&mut client, 2).await;
    // PUBREL 1 -> PUBCOMP 1 frees a place.
    client
        .send(&Packet::PubRel(mqtt::PubRel {
            packet_id: 1,
            ..Default::default()
        }))
        .await;
    assert!(matches!(
        next_packet(&mut client, Duration::from_secs(10)).await,
        Some(Packet::PubComp(c)) if c.packet_id == 1
    ));
    client.send(&qos2(3)).await;
    expect_pubrec(&mut client, 3).await;
    // 2 and 3 are unacknowledged: a third is one too many.
    client.send(&qos2(4)).await;
    let parting = client.until_closed().await;
    assert_disconnected_with(&parting, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    assert_eq!(
        metric(relay.s_proxy.admin, &limit_hits("receive_maximum")).await,
        Some(1.0)
    );
    still_served(&relay, "rm/after").await;
}

#[tokio::test]
async fn session_expiry_is_capped_for_v5_and_311_persistent_sessions() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("expiry-cap"),
        "  limits: { maxSessionExpiry: 2s }\n",
    )
    .await;
    // MQTT 5: asked for an hour, told 2 s.
    let id5 = unique_name("v5");
    let (mut v5, connack) = raw_session(&relay, Protocol::V5, v5_connect(&id5, true, 3600)).await;
    assert_eq!(connack.properties.session_expiry_interval, Some(2));
    v5.send(&Packet::Disconnect(mqtt::Disconnect::default()))
        .await;
    v5.until_closed().await;
    // 3.1.1 `cleanSession: false` asks for forever.
    let id3 = unique_name("v311");
    let mut persistent = connect_packet(&id3);
    persistent.clean_start = false;
    let (mut v3, _) = raw_session(&relay, Protocol::V311, persistent.clone()).await;
    v3.send(&Packet::Disconnect(mqtt::Disconnect::default()))
        .await;
    v3.until_closed().await;
    assert_eq!(
        metric(relay.s_proxy.admin, &limit_hits("session_expiry")).await,
        Some(2.0)
    );
    // Past the cap, neither session is there any more. (The cap is the behaviour under test:
    // waiting it out is the condition.)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    let (_v5, connack) = raw_session(&relay, Protocol::V5, v5_connect(&id5, false, 60)).await;
    assert!(!connack.session_present, "the v5 session expired after 2 s");
    let (_v3, connack) = raw_session(&relay, Protocol::V311, persistent).await;
    assert!(
        !connack.session_present,
        "the 3.1.1 session expired after 2 s"
    );
}

#[tokio::test]
async fn catch_ups_beyond_the_limit_wait_for_a_reader_a_slow_client_gives_up_and_miss_nothing() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("catch-ups"),
        "  limits: { maxCatchUps: 1 }\n",
    )
    .await;
    let admin = relay.s_proxy.admin;
    let (slow_id, other_id) = (unique_name("slow"), unique_name("other"));
    for id in [&slow_id, &other_id] {
        let (mut client, _) = raw_session(&relay, Protocol::V5, v5_connect(id, true, 300)).await;
        subscribe(&mut client, 1, &[("away/#", QoS::AtLeastOnce)]).await;
        client
            .send(&Packet::Disconnect(mqtt::Disconnect::default()))
            .await;
        client.until_closed().await;
    }
    // More than the catch-up reader buffers (256): a reader whose client does not acknowledge
    // is left waiting on it.
    const MISSED: u16 = 400;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    // In rounds within the Receive Maximum s-proxy announces (256).
    for round in 0..2 {
        for i in round * MISSED / 2 + 1..=(round + 1) * MISSED / 2 {
            publisher
                .send(&publish_packet(
                    "away/m",
                    QoS::AtLeastOnce,
                    i,
                    i.to_string().as_bytes(),
                ))
                .await;
        }
        for _ in 0..MISSED / 2 {
            match next_packet(&mut publisher, Duration::from_secs(30)).await {
                Some(Packet::PubAck(ack)) if !ack.reason_code.is_error() => {}
                other => panic!("expected PUBACKs, got {other:?}"),
            }
        }
    }

    // The slow session takes the only reader and acknowledges nothing (Receive Maximum 1).
    let mut slow_connect = v5_connect(&slow_id, false, 300);
    slow_connect.properties.receive_maximum = Some(1);
    let (mut slow, connack) = raw_session(&relay, Protocol::V5, slow_connect).await;
    assert!(connack.session_present);
    let first = match next_packet(&mut slow, Duration::from_secs(10)).await {
        Some(Packet::Publish(p)) => p,
        other => panic!("expected the first missed message, got {other:?}"),
    };
    assert_eq!(&first.payload[..], b"1");
    // The other session waits for the reader, which the slow one gives up once it has read
    // nothing for a second: the other then gets every message, in order, while the slow one
    // still acknowledges nothing.
    let (mut other, connack) =
        raw_session(&relay, Protocol::V5, v5_connect(&other_id, false, 300)).await;
    assert!(connack.session_present);
    wait_for_metric(admin, &limit_hits("catch_ups"), 1.0).await;
    for i in 1..=MISSED {
        let publish = next_publish(&mut other, Duration::from_secs(20))
            .await
            .unwrap_or_else(|| panic!("message {i} for the waiting session"));
        assert_eq!(publish.payload, i.to_string().as_bytes(), "in order");
    }
    wait_for_metric(
        admin,
        r#"strait_mqtt_kafka_catch_up_pauses_total{role="s-proxy"}"#,
        1.0,
    )
    .await;

    // The slow one reads on: it resumes where it was, missing nothing and getting nothing twice.
    let mut next = first;
    for i in 1..=MISSED {
        assert_eq!(next.payload, i.to_string().as_bytes(), "slow, in order");
        slow.send(&Packet::PubAck(mqtt::PubAck {
            packet_id: next.packet_id,
            ..Default::default()
        }))
        .await;
        if i == MISSED {
            break;
        }
        next = match next_packet(&mut slow, Duration::from_secs(10)).await {
            Some(Packet::Publish(p)) => p,
            other => panic!("message {} for the slow session, got {other:?}", i + 1),
        };
    }
}

fn retained(topic: &str, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(mqtt::Publish {
        qos: QoS::AtLeastOnce,
        retain: true,
        topic: topic.into(),
        packet_id,
        payload: payload.to_vec().into(),
        ..Default::default()
    })
}

async fn puback(client: &mut RawClient, packet_id: u16) -> ReasonCode {
    match next_packet(client, Duration::from_secs(10)).await {
        Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => ack.reason_code,
        other => panic!("expected PUBACK {packet_id}, got {other:?}"),
    }
}

#[tokio::test]
async fn retained_messages_beyond_the_limit_are_refused_and_the_rest_streamed_to_a_slow_subscriber()
{
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("retained-cap"),
        "  limits: { maxRetainedMessages: 3 }\n",
    )
    .await;
    let admin = relay.s_proxy.admin;
    let held = r#"strait_mqtt_kafka_table_records{role="s-proxy",table="retained"}"#;
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V5, connect_packet(&unique_name("pub"))).await;
    for (i, topic) in ["r/1", "r/2", "r/3"].into_iter().enumerate() {
        let id = i as u16 + 1;
        publisher.send(&retained(topic, id, topic.as_bytes())).await;
        assert_eq!(puback(&mut publisher, id).await, ReasonCode::SUCCESS);
    }
    // Once this replica holds the three, a fourth topic is one too many.
    wait_for_metric(admin, held, 3.0).await;
    publisher.send(&retained("r/4", 4, b"r/4")).await;
    assert_eq!(puback(&mut publisher, 4).await, ReasonCode::QUOTA_EXCEEDED);
    assert_eq!(metric(admin, &limit_hits("retained")).await, Some(1.0));
    // Replacing one is fine; clearing one makes room.
    publisher.send(&retained("r/1", 5, b"r/1 again")).await;
    assert_eq!(puback(&mut publisher, 5).await, ReasonCode::SUCCESS);
    publisher.send(&retained("r/2", 6, b"")).await;
    assert_eq!(puback(&mut publisher, 6).await, ReasonCode::SUCCESS);
    wait_for_metric(admin, held, 2.0).await;
    publisher.send(&retained("r/4", 7, b"r/4")).await;
    assert_eq!(puback(&mut publisher, 7).await, ReasonCode::SUCCESS);
    wait_for_metric(admin, held, 3.0).await;

    // A subscriber with a window of one gets them one at a time, as it acknowledges.
    let mut connect = connect_packet(&unique_name("slow"));
    connect.properties.receive_maximum = Some(1);
    let (mut slow, _) = raw_session(&relay, Protocol::V5, connect).await;
    slow.send(&subscribe_packet(1, &[("r/#", QoS::AtLeastOnce)]))
        .await;
    let mut got = Vec::new();
    while got.len() < 3 {
        match next_packet(&mut slow, Duration::from_secs(10)).await {
            Some(Packet::SubAck(_)) => {}
            Some(Packet::Publish(p)) => {
                assert!(p.retain);
                // Nothing else comes while this one is unacknowledged.
                assert_eq!(
                    next_packet(&mut slow, Duration::from_millis(200)).await,
                    None
                );
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                slow.send(&Packet::PubAck(mqtt::PubAck {
                    packet_id: p.packet_id,
                    ..Default::default()
                }))
                .await;
            }
            other => panic!("expected retained messages, got {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, ["r/1 again", "r/3", "r/4"]);
}

/// Session setups are paced: a storm of CONNECTs waits its turn, and one whose turn is more
/// than 10 s away gets 0x9F Connection rate exceeded; every wait and refusal is counted.
#[tokio::test]
async fn a_connect_storm_waits_its_turn_and_the_rest_get_0x9f() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    // One session a second, a burst of one: twelve at once need eleven seconds.
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("connect-rate"),
        "  limits: { maxConnectRate: 1 }\n",
    )
    .await;
    let mqtt = relay.mqtt;
    let tries = futures::future::join_all((0..12).map(|i| async move {
        let mut client = RawClient::connect(mqtt, Protocol::V5).await;
        client
            .send(&Packet::Connect(connect_packet(&unique_name(&format!(
                "storm{i}"
            )))))
            .await;
        // Longer than the longest turn s-proxy grants.
        let answer = client.recv_within(Duration::from_secs(20)).await;
        (client, answer)
    }))
    .await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for (client, answer) in tries {
        match answer {
            Some(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => admitted.push(client),
            Some(Packet::ConnAck(ack)) => {
                assert_eq!(ack.reason_code, ReasonCode::CONNECTION_RATE_EXCEEDED);
                refused += 1;
            }
            other => panic!("expected a CONNACK, got {other:?}"),
        }
    }
    // Turns at 0, 1, ..., 10 s are within the wait (fewer when the CONNECTs arrived apart).
    assert!(
        (9..=11).contains(&admitted.len()) && refused == 12 - admitted.len(),
        "{} admitted, {refused} refused",
        admitted.len()
    );
    // Every CONNECT but the first waited or was refused.
    wait_for_metric(relay.s_proxy.admin, &limit_hits("connect_rate"), 11.0).await;
}
