//! Clients that break the protocol or r-proxy's limits, as they see it: each is refused or
//! disconnected with the reason the spec (and our codec) gives, and the well-behaved client
//! connected before it keeps working.

mod support;

use std::time::{Duration, Instant};

use bytes::BytesMut;
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::topic::TopicError;
use strait_mqtt_codec::{self as mqtt, DecodeError, Packet, Protocol, Publish, QoS, ReasonCode};
use support::{Bystander, RawClient, Relay, assert_disconnected_with, connect_packet};

/// A CONNECT with any protocol name and level, otherwise a plain 3.1.1 one.
fn connect_with_level(name: &[u8], level: u8) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&u16::try_from(name.len()).unwrap().to_be_bytes());
    body.extend_from_slice(name);
    body.push(level);
    body.push(0b0000_0010); // clean session
    body.extend_from_slice(&30u16.to_be_bytes());
    body.extend_from_slice(&6u16.to_be_bytes());
    body.extend_from_slice(b"client");
    let mut packet = vec![0x10, u8::try_from(body.len()).unwrap()];
    packet.extend(body);
    packet
}

fn encode(packet: &Packet, protocol: Protocol) -> BytesMut {
    let mut out = BytesMut::new();
    mqtt::encode(packet, protocol, &mut out).expect("the codec encodes it");
    out
}

#[tokio::test]
async fn garbage_instead_of_connect_is_closed_and_the_server_keeps_serving() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let mut bystander = Bystander::join(relay.mqtt, Protocol::V5).await;

    let garbage: [&[u8]; 5] = [
        b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\n\r\n", // HTTP on the MQTT port
        b"\x00\x01\x02\x03",                              // reserved packet type 0
        b"\xff\xff\xff\xff\xff\xff\xff\xff",              // AUTH with a broken length
        b"\x10\xff\xff\xff\xff\xff",                      // CONNECT, malformed remaining length
        b"\x10\x0a0123456789",                            // a whole CONNECT frame of nonsense
    ];
    for bytes in garbage {
        let mut client = RawClient::connect(relay.mqtt, Protocol::V5).await;
        client.send_raw(bytes).await;
        assert_eq!(
            client.raw_until_closed().await,
            b"",
            "{bytes:?}: closed without an answer (nothing tells the client's version)"
        );
    }

    // A new, normal client is served as usual, and the one connected before never noticed.
    let mut newcomer = Bystander::join(relay.mqtt, Protocol::V311).await;
    newcomer.assert_alive().await;
    bystander.assert_alive().await;
}

#[tokio::test]
async fn unsupported_protocol_levels_are_refused_with_connack_then_closed() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let mut bystander = Bystander::join(relay.mqtt, Protocol::V5).await;

    // The client's version is unknown, so the answer is the one every version understands: a
    // 3.1.1 CONNACK with return code 1 ("unacceptable protocol version", 0x84 in v5 terms).
    for (name, level) in [
        (&b"MQTT"[..], 6),
        (b"MQTT", 3),
        (b"MQIsdp", 3), // MQTT 3.1
        (b"MQTT", 0),
    ] {
        let connect = connect_with_level(name, level);
        let codec_says = mqtt::decode_first(&mut BytesMut::from(&connect[..]), 1 << 20)
            .expect_err("the codec refuses the level")
            .connack();
        let expected_ack = mqtt::ConnAck {
            reason_code: ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
            ..Default::default()
        };
        assert_eq!(codec_says, Some((Protocol::V311, expected_ack)));

        let mut client = RawClient::connect(relay.mqtt, Protocol::V311).await;
        client.send_raw(&connect).await;
        assert_eq!(
            client.raw_until_closed().await,
            [0x20, 0x02, 0x00, 0x01],
            "{} level {level}: CONNACK return code 1, then close",
            String::from_utf8_lossy(name)
        );
    }

    // A v5 CONNECT that is broken after the level gets a v5 CONNACK with the codec's reason.
    let mut broken = encode(
        &Packet::Connect(connect_packet(&unique_name("broken"))),
        Protocol::V5,
    );
    // Properties: Receive Maximum 0, which the spec forbids.
    let properties_at = 2 + 6 + 1 + 1 + 2;
    assert_eq!(broken[properties_at], 0, "no properties in our CONNECT");
    let mut patched = broken.split_to(properties_at).to_vec();
    patched.extend_from_slice(&[3, 0x21, 0, 0]);
    patched.extend_from_slice(&broken[1..]);
    patched[1] += 3;
    let (_, codec_ack) = mqtt::decode_first(&mut BytesMut::from(&patched[..]), 1 << 20)
        .expect_err("Receive Maximum 0 is refused")
        .connack()
        .expect("a v5 CONNECT error is answered");
    assert_eq!(codec_ack.reason_code, ReasonCode::PROTOCOL_ERROR);
    let mut client = RawClient::connect(relay.mqtt, Protocol::V5).await;
    client.send_raw(&patched).await;
    match &client.until_closed().await[..] {
        [Packet::ConnAck(ack)] => assert_eq!(ack.reason_code, ReasonCode::PROTOCOL_ERROR),
        other => panic!("expected a CONNACK 0x82, got {other:?}"),
    }

    bystander.assert_alive().await;
}

#[tokio::test]
async fn oversized_packets_get_disconnect_0x95_and_v5_clients_are_told_the_limit() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start_with(&broker, &["--max-packet-size", "1024"]).await;
    let mut bystander = Bystander::join(relay.mqtt, Protocol::V5).await;
    let topic = format!("relay/{}/big", unique_name("big"));

    let (mut client, ack) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_packet(&unique_name("big")),
    )
    .await;
    assert_eq!(
        ack.properties.maximum_packet_size,
        Some(1024),
        "CONNACK advertises --max-packet-size"
    );
    client.subscribe(1, &topic).await;

    // A packet of exactly the limit is relayed.
    let mut at_limit = Publish {
        qos: QoS::AtLeastOnce,
        topic: topic.as_str().into(),
        packet_id: 2,
        ..Default::default()
    };
    let mut payload_len =
        1024 - mqtt::encoded_len(&Packet::Publish(at_limit.clone()), Protocol::V5).unwrap();
    loop {
        at_limit.payload = "x".repeat(payload_len).into();
        match mqtt::encoded_len(&Packet::Publish(at_limit.clone()), Protocol::V5).unwrap() {
            1024 => break,
            len => payload_len = payload_len + 1024 - len,
        }
    }
    client
        .publish_and_receive(2, &topic, &"x".repeat(payload_len))
        .await;

    // 4 KiB is refused from its fixed header.
    let big = Packet::Publish(Publish {
        topic: topic.as_str().into(),
        payload: vec![b'x'; 4096].into(),
        ..Default::default()
    });
    client.send(&big).await;
    assert_disconnected_with(&client.until_closed().await, ReasonCode::PACKET_TOO_LARGE);

    // 3.1.1 has no DISCONNECT from the server: the connection is just closed.
    let (mut v3, _) = RawClient::session(
        relay.mqtt,
        Protocol::V311,
        connect_packet(&unique_name("big3")),
    )
    .await;
    v3.send(&big).await;
    assert_eq!(v3.until_closed().await, []);

    bystander.assert_alive().await;
}

#[tokio::test]
async fn a_client_without_connect_is_closed_after_the_connect_timeout() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start_with(&broker, &["--connect-timeout", "1s"]).await;
    // Connected before, and idle for longer than the connect timeout: it must not be affected.
    let mut bystander = Bystander::join(relay.mqtt, Protocol::V5).await;

    let started = Instant::now();
    let mut silent = RawClient::connect(relay.mqtt, Protocol::V5).await;
    let mut slow = RawClient::connect(relay.mqtt, Protocol::V5).await;
    let connect = encode(
        &Packet::Connect(connect_packet(&unique_name("slow"))),
        Protocol::V5,
    );
    slow.send_raw(&connect[..connect.len() / 2]).await; // and never the rest

    let (silent_bytes, slow_bytes) =
        tokio::join!(silent.raw_until_closed(), slow.raw_until_closed());
    let elapsed = started.elapsed();
    assert_eq!(silent_bytes, b"", "closed without a packet");
    assert_eq!(slow_bytes, b"", "closed without a packet");
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed <= Duration::from_secs(3),
        "closed {elapsed:?} after connecting, expected about --connect-timeout 1s"
    );

    bystander.assert_alive().await;
}

#[tokio::test]
async fn a_second_connect_is_a_protocol_error() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let mut bystander = Bystander::join(relay.mqtt, Protocol::V5).await;

    let connect = connect_packet(&unique_name("twice"));
    let (mut v5, _) = RawClient::session(relay.mqtt, Protocol::V5, connect.clone()).await;
    v5.send(&Packet::Connect(connect)).await;
    assert_disconnected_with(&v5.until_closed().await, ReasonCode::PROTOCOL_ERROR);

    let connect = connect_packet(&unique_name("twice3"));
    let (mut v3, _) = RawClient::session(relay.mqtt, Protocol::V311, connect.clone()).await;
    v3.send(&Packet::Connect(connect)).await;
    assert_eq!(
        v3.until_closed().await,
        [],
        "3.1.1: closed without a packet"
    );

    bystander.assert_alive().await;
}

#[tokio::test]
async fn a_publish_to_a_wildcard_topic_is_disconnected_with_the_codecs_reason() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let mut bystander = Bystander::join(relay.mqtt, Protocol::V5).await;

    // What the codec says about a wildcard in a topic name: 0x90 Topic Name invalid.
    let expected = DecodeError::InvalidTopicName(TopicError::WildcardInName).reason_code();
    assert_eq!(expected, ReasonCode::TOPIC_NAME_INVALID);

    for topic in ["relay/+/status", "relay/#"] {
        // The encoder does not check topic syntax, so it writes what a broken client would.
        let publish = Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: 1,
            payload: "x".into(),
            ..Default::default()
        });
        let bytes = encode(&publish, Protocol::V5);
        assert_eq!(
            mqtt::decode(&mut bytes.clone(), Protocol::V5, 1 << 20)
                .expect_err("a wildcard is not a topic name")
                .reason_code(),
            expected
        );

        let (mut v5, _) = RawClient::session(
            relay.mqtt,
            Protocol::V5,
            connect_packet(&unique_name("wild")),
        )
        .await;
        v5.send_raw(&bytes).await;
        assert_disconnected_with(&v5.until_closed().await, expected);

        let (mut v3, _) = RawClient::session(
            relay.mqtt,
            Protocol::V311,
            connect_packet(&unique_name("wild3")),
        )
        .await;
        v3.send(&publish).await;
        assert_eq!(v3.until_closed().await, [], "{topic}: 3.1.1 is just closed");
    }

    bystander.assert_alive().await;
}

/// A relay stream that never sends its first frame (which would say whose session it is) is
/// ended by s-proxy at its deadline instead of holding a task for ever.
#[tokio::test]
async fn a_relay_stream_that_never_sends_its_first_frame_is_ended_at_the_deadline() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let grpc = strait_e2e::free_local_addr();
    let s_proxy = support::start_s_proxy(grpc, &broker).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let started = Instant::now();
    let opened = tokio::time::timeout(
        Duration::from_secs(30),
        strait_relay::open_session(&channel, futures::stream::pending(), 1 << 20),
    )
    .await
    .expect("s-proxy ends the stream");
    let status = opened.err().expect("no session without a first frame");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status}");
    assert!(
        started.elapsed() >= Duration::from_secs(9),
        "{:?}",
        started.elapsed()
    );
    let (_, metrics) = strait_e2e::http_get(s_proxy.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("strait_mqtt_relay_errors_total")
                && l.contains(r#"kind="first_frame_timeout""#)
                && l.ends_with(" 1")),
        "{metrics}"
    );
}

/// One address may hold only so many sessions: the next CONNECT from it is refused with Quota
/// exceeded (3.1.1: server unavailable) and counted, and a slot given back can be used again.
#[tokio::test]
async fn one_address_gets_at_most_its_share_of_sessions() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start_with(&broker, &["--max-connections-per-address", "2"]).await;
    let mut held = Vec::new();
    for i in 0..2 {
        let id = unique_name(&format!("share{i}"));
        held.push(
            RawClient::session(relay.mqtt, Protocol::V5, connect_packet(&id))
                .await
                .0,
        );
    }
    for (protocol, expected) in [
        (Protocol::V5, ReasonCode::QUOTA_EXCEEDED),
        // 3.1.1 has no such code: return code 3, read back as 0x88.
        (Protocol::V311, ReasonCode::SERVER_UNAVAILABLE),
    ] {
        let refused =
            RawClient::try_session(relay.mqtt, protocol, connect_packet(&unique_name("third")))
                .await
                .map(|(_, ack)| ack);
        let Err(Some(Packet::ConnAck(ack))) = &refused else {
            panic!("a third session from 127.0.0.1 is refused, got {refused:?}");
        };
        assert_eq!(ack.reason_code, expected, "{protocol:?}");
    }
    let (_, metrics) = strait_e2e::http_get(relay.r_proxy.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.contains(r#"kind="address_limit""#) && l.ends_with(" 2")),
        "{metrics}"
    );
    held.pop();
    strait_e2e::wait_until(
        Duration::from_secs(10),
        "a freed slot to be usable",
        || async {
            RawClient::try_session(
                relay.mqtt,
                Protocol::V5,
                connect_packet(&unique_name("again")),
            )
            .await
            .ok()
            .map(|_| ())
        },
    )
    .await;
}

/// A burst of CONNECTs is paced: beyond the burst each waits its turn, and one whose turn would
/// come after its connect deadline is refused with 0x9F Connection rate exceeded; every wait
/// and refusal is counted.
#[tokio::test]
async fn connects_beyond_the_rate_wait_their_turn_or_get_0x9f() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    // Turns 200 ms apart, a burst of one; each CONNECT may wait up to about a second.
    let relay = Relay::start_with(
        &broker,
        &["--max-connect-rate", "5", "--connect-timeout", "1s"],
    )
    .await;
    let tries = futures::future::join_all((0..12).map(|i| {
        RawClient::try_session(
            relay.mqtt,
            Protocol::V5,
            connect_packet(&unique_name(&format!("rate{i}"))),
        )
    }))
    .await;
    let mut admitted = Vec::new();
    let mut refused = 0;
    for tried in tries {
        match tried {
            Ok((client, _)) => admitted.push(client),
            Err(Some(Packet::ConnAck(ack))) => {
                assert_eq!(ack.reason_code, ReasonCode::CONNECTION_RATE_EXCEEDED);
                refused += 1;
            }
            Err(other) => panic!("expected a CONNACK, got {other:?}"),
        }
    }
    // Turns at 0, 200, ..., 800 ms fit in the second after the first CONNECT, a few more when
    // the CONNECTs arrived apart (each deadline counts from its own accept); 12 never do.
    assert!(
        (3..=8).contains(&admitted.len()) && refused == 12 - admitted.len(),
        "{} admitted, {refused} refused",
        admitted.len()
    );
    let (_, metrics) = strait_e2e::http_get(relay.r_proxy.admin, "/metrics")
        .await
        .unwrap();
    let counted = |prefix: &str, label: &str, value: usize| {
        metrics.lines().any(|l| {
            l.starts_with(prefix) && l.contains(label) && l.ends_with(&format!(" {value}"))
        })
    };
    assert!(
        counted(
            "strait_mqtt_relay_errors_total",
            r#"kind="connect_rate""#,
            refused
        ),
        "{metrics}"
    );
    // Every admitted one but the first waited.
    assert!(
        counted("strait_mqtt_connects_paced_total", "", admitted.len() - 1),
        "{metrics}"
    );
}

/// One address connecting faster than its own share is refused at once (3.1.1: server
/// unavailable), and served again once its next turn comes.
#[tokio::test]
async fn an_address_connecting_too_fast_is_refused_at_once() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start_with(
        &broker,
        &[
            "--max-connect-rate-per-address",
            "1",
            "--max-connect-rate",
            "0",
        ],
    )
    .await;
    let _first = RawClient::session(relay.mqtt, Protocol::V5, connect_packet(&unique_name("a")))
        .await
        .0;
    for (protocol, expected) in [
        (Protocol::V5, ReasonCode::CONNECTION_RATE_EXCEEDED),
        // 3.1.1 has no such code: return code 3, read back as 0x88.
        (Protocol::V311, ReasonCode::SERVER_UNAVAILABLE),
    ] {
        let started = Instant::now();
        let refused =
            RawClient::try_session(relay.mqtt, protocol, connect_packet(&unique_name("b")))
                .await
                .map(|(_, ack)| ack);
        let Err(Some(Packet::ConnAck(ack))) = &refused else {
            panic!("a second CONNECT within the second is refused, got {refused:?}");
        };
        assert_eq!(ack.reason_code, expected, "{protocol:?}");
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "refused without waiting for a turn: {:?}",
            started.elapsed()
        );
    }
    strait_e2e::wait_until(
        Duration::from_secs(10),
        "the address's next turn",
        || async {
            RawClient::try_session(relay.mqtt, Protocol::V5, connect_packet(&unique_name("c")))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
}

#[tokio::test]
async fn keep_alive_is_capped_and_a_silent_client_is_disconnected() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start_with(&broker, &["--max-keep-alive", "2s"]).await;

    // MQTT 5, asking for none: told 2 s in CONNACK, disconnected with 0x8D after 3 s of silence.
    let mut connect = connect_packet(&unique_name("forever5"));
    connect.keep_alive = 0;
    let started = Instant::now();
    let (mut v5, connack) = RawClient::session(relay.mqtt, Protocol::V5, connect).await;
    assert_eq!(connack.properties.server_keep_alive, Some(2), "{connack:?}");
    // 3.1.1, asking for more than the cap: cannot be told, and is closed all the same.
    let mut connect = connect_packet(&unique_name("long311"));
    connect.keep_alive = 3600;
    let (mut v3, _) = RawClient::session(relay.mqtt, Protocol::V311, connect).await;
    // Within the cap: left as it is.
    let mut connect = connect_packet(&unique_name("fine5"));
    connect.keep_alive = 1;
    let (_, fine) = RawClient::session(relay.mqtt, Protocol::V5, connect).await;
    assert_eq!(fine.properties.server_keep_alive, None, "{fine:?}");

    let (v5_parting, v3_parting) = tokio::join!(v5.until_closed(), v3.until_closed());
    let elapsed = started.elapsed();
    assert_disconnected_with(&v5_parting, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert!(
        v3_parting.is_empty(),
        "3.1.1 is just closed: {v3_parting:?}"
    );
    assert!(
        elapsed >= Duration::from_millis(2_800) && elapsed <= Duration::from_secs(6),
        "closed {elapsed:?} after connecting, expected about 1.5 x 2 s"
    );
    let (_, metrics) = strait_e2e::http_get(relay.r_proxy.admin, "/metrics")
        .await
        .unwrap();
    assert!(
        metrics.lines().any(|l| l
            .starts_with("strait_mqtt_keep_alive_capped_total{role=\"r-proxy\"}")
            && l.ends_with(" 2")),
        "both capped sessions counted: {metrics}"
    );
}

#[tokio::test]
async fn one_deadline_covers_the_websocket_handshake_and_the_connect() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let broker = require!("MQTT_BROKER", "mosquitto");
    let ws = strait_e2e::free_local_addr().to_string();
    let relay = Relay::start_with(&broker, &["--ws-listen", &ws, "--connect-timeout", "1s"]).await;

    // A slow client: the WebSocket upgrade after 700 ms, then no CONNECT. Each step alone is
    // within the timeout; together they are not.
    let started = Instant::now();
    let mut stream = tokio::net::TcpStream::connect(&ws).await.unwrap();
    tokio::time::sleep(Duration::from_millis(700)).await;
    stream
        .write_all(
            b"GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
              Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n",
        )
        .await
        .unwrap();
    let mut answer = Vec::new();
    let closed =
        tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
    let elapsed = started.elapsed();
    assert!(closed.is_ok(), "r-proxy closes the connection");
    assert!(
        String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 101"),
        "the upgrade itself succeeded: {:?}",
        String::from_utf8_lossy(&answer)
    );
    assert!(
        elapsed >= Duration::from_millis(900) && elapsed < Duration::from_millis(1_600),
        "closed {elapsed:?} after connecting: one 1 s deadline from accept, not 1 s after the \
         upgrade"
    );
    drop(relay);
}
