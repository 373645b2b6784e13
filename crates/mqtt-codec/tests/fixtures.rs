//! Every packet type, in both protocol versions, against hand-built bytes.
//!
//! Each fixture is decoded (must give the packet and consume every byte) and
//! the packet encoded (must give the same bytes back).
//!
//! One file (about 900 lines) on purpose: one table of fixtures over every packet kind, read as a whole.

use bytes::{Bytes, BytesMut};
use strait_mqtt_codec::*;

const V3: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

#[track_caller]
fn assert_codec(protocol: Protocol, bytes: &[u8], packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    let decoded = decode(&mut buf, protocol, MAX_PACKET_SIZE).expect("decode");
    assert_eq!(decoded, Some(packet.clone()), "decoded");
    assert!(buf.is_empty(), "{} bytes left", buf.len());

    let mut out = BytesMut::new();
    encode(&packet, protocol, &mut out).expect("encode");
    assert_eq!(&out[..], bytes, "encoded");
    assert_eq!(encoded_len(&packet, protocol), Ok(bytes.len()));
}

/// Decodes `bytes` (non-canonical but valid) without requiring re-encoding to match.
#[track_caller]
fn assert_decodes(protocol: Protocol, bytes: &[u8], packet: Packet) {
    let mut buf = BytesMut::from(bytes);
    assert_eq!(
        decode(&mut buf, protocol, MAX_PACKET_SIZE),
        Ok(Some(packet))
    );
    assert!(buf.is_empty());
}

#[track_caller]
fn assert_encodes(protocol: Protocol, packet: Packet, bytes: &[u8]) {
    let mut out = BytesMut::new();
    encode(&packet, protocol, &mut out).expect("encode");
    assert_eq!(&out[..], bytes);
}

fn user(k: &str, v: &str) -> (String, String) {
    (k.into(), v.into())
}

// ---------------------------------------------------------------- CONNECT

const V3_CONNECT: &[u8] =
    b"\x10\x1f\x00\x04MQTT\x04\xce\x00\x0a\x00\x03cid\x00\x03w/t\x00\x03bye\x00\x01u\x00\x01p";

fn v3_connect() -> Connect {
    Connect {
        clean_start: true,
        keep_alive: 10,
        client_id: "cid".into(),
        will: Some(Will {
            topic: "w/t".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: false,
            properties: WillProperties::default(),
        }),
        username: Some("u".into()),
        password: Some(Bytes::from_static(b"p")),
        properties: ConnectProperties::default(),
    }
}

const V5_CONNECT: &[u8] = b"\x10\x2f\x00\x04MQTT\x05\xa6\x00\x3c\
\x0f\x11\x00\x00\x00\x3c\x21\x00\x0a\x26\x00\x01k\x00\x01v\
\x00\x02id\
\x05\x18\x00\x00\x00\x05\x00\x01t\x00\x00\
\x00\x04user";

fn v5_connect() -> Connect {
    Connect {
        clean_start: true,
        keep_alive: 60,
        client_id: "id".into(),
        will: Some(Will {
            topic: "t".into(),
            payload: Bytes::new(),
            qos: QoS::AtMostOnce,
            retain: true,
            properties: WillProperties {
                will_delay_interval: Some(5),
                ..Default::default()
            },
        }),
        username: Some("user".into()),
        password: None,
        properties: ConnectProperties {
            session_expiry_interval: Some(60),
            receive_maximum: Some(10),
            user_properties: vec![user("k", "v")],
            ..Default::default()
        },
    }
}

#[test]
fn connect_v311() {
    assert_codec(V3, V3_CONNECT, Packet::Connect(v3_connect()));
}

#[test]
fn connect_v311_minimal() {
    // Empty client id, clean session, keep alive 0.
    let bytes = b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x00\x00\x00";
    let connect = Connect {
        clean_start: true,
        ..Default::default()
    };
    assert_codec(V3, bytes, Packet::Connect(connect));
}

#[test]
fn connect_v5() {
    assert_codec(V5, V5_CONNECT, Packet::Connect(v5_connect()));
}

#[test]
fn decode_first_detects_the_protocol() {
    let mut buf = BytesMut::from(V3_CONNECT);
    buf.extend_from_slice(b"\xc0\x00");
    let (protocol, connect) = decode_first(&mut buf, 1024).unwrap().unwrap();
    assert_eq!((protocol, connect), (V3, v3_connect()));
    assert_eq!(&buf[..], b"\xc0\x00");

    let mut buf = BytesMut::from(V5_CONNECT);
    assert_eq!(decode_first(&mut buf, 1024), Ok(Some((V5, v5_connect()))));
    assert!(buf.is_empty());
}

#[test]
fn decode_first_waits_for_the_whole_connect() {
    for end in 0..V5_CONNECT.len() {
        let mut buf = BytesMut::from(&V5_CONNECT[..end]);
        assert_eq!(decode_first(&mut buf, 1024), Ok(None), "prefix {end}");
        assert_eq!(buf.len(), end);
    }
}

#[test]
fn connect_password_without_username_is_fine_in_v5() {
    let bytes = b"\x10\x11\x00\x04MQTT\x05\x40\x00\x00\x00\x00\x00\x00\x02pw";
    let connect = Connect {
        password: Some(Bytes::from_static(b"pw")),
        ..Default::default()
    };
    assert_codec(V5, bytes, Packet::Connect(connect));
}

#[test]
fn connect_debug_hides_the_password() {
    let debug = format!("{:?}", v3_connect());
    assert!(debug.contains("<1 bytes>"), "{debug}");
    assert!(!debug.contains("b\"p\""), "{debug}");
}

// ---------------------------------------------------------------- CONNACK

#[test]
fn connack_v311() {
    assert_codec(
        V3,
        b"\x20\x02\x01\x00",
        Packet::ConnAck(ConnAck {
            session_present: true,
            ..Default::default()
        }),
    );
    assert_codec(
        V3,
        b"\x20\x02\x00\x05",
        Packet::ConnAck(ConnAck {
            reason_code: ReasonCode::NOT_AUTHORIZED,
            ..Default::default()
        }),
    );
}

#[test]
fn connack_v5() {
    let bytes = b"\x20\x0d\x00\x00\x0a\x24\x01\x25\x00\x12\x00\x03abc";
    let ack = ConnAck {
        session_present: false,
        reason_code: ReasonCode::SUCCESS,
        properties: ConnAckProperties {
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            assigned_client_identifier: Some("abc".into()),
            ..Default::default()
        },
    };
    assert_codec(V5, bytes, Packet::ConnAck(ack));
    assert_codec(
        V5,
        b"\x20\x03\x00\x8a\x00",
        Packet::ConnAck(ConnAck {
            reason_code: ReasonCode::BANNED,
            ..Default::default()
        }),
    );
}

#[test]
fn connack_v5_all_properties() {
    let props = ConnAckProperties {
        session_expiry_interval: Some(1),
        receive_maximum: Some(2),
        maximum_qos: Some(QoS::AtMostOnce),
        retain_available: Some(true),
        maximum_packet_size: Some(3),
        assigned_client_identifier: Some("a".into()),
        topic_alias_maximum: Some(4),
        reason_string: Some("r".into()),
        user_properties: vec![user("k", "1"), user("k", "2")],
        wildcard_subscription_available: Some(false),
        subscription_identifier_available: Some(true),
        shared_subscription_available: Some(false),
        server_keep_alive: Some(5),
        response_information: Some("i".into()),
        server_reference: Some("s".into()),
        authentication_method: Some("m".into()),
        authentication_data: Some(Bytes::from_static(b"d")),
    };
    let bytes = b"\x20\x46\x01\x00\x43\
\x11\x00\x00\x00\x01\
\x21\x00\x02\
\x24\x00\
\x25\x01\
\x27\x00\x00\x00\x03\
\x12\x00\x01a\
\x22\x00\x04\
\x1f\x00\x01r\
\x26\x00\x01k\x00\x011\
\x26\x00\x01k\x00\x012\
\x28\x00\
\x29\x01\
\x2a\x00\
\x13\x00\x05\
\x1a\x00\x01i\
\x1c\x00\x01s\
\x15\x00\x01m\
\x16\x00\x01d";
    assert_codec(
        V5,
        bytes,
        Packet::ConnAck(ConnAck {
            session_present: true,
            reason_code: ReasonCode::SUCCESS,
            properties: props,
        }),
    );
}

// ---------------------------------------------------------------- PUBLISH

#[test]
fn publish_v311() {
    assert_codec(
        V3,
        b"\x30\x0a\x00\x03a/bhello",
        Packet::Publish(Publish {
            topic: "a/b".into(),
            payload: Bytes::from_static(b"hello"),
            ..Default::default()
        }),
    );
    assert_codec(
        V3,
        b"\x3b\x06\x00\x01t\x00\x0ax",
        Packet::Publish(Publish {
            dup: true,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: "t".into(),
            packet_id: 10,
            payload: Bytes::from_static(b"x"),
            properties: PublishProperties::default(),
        }),
    );
    // Empty payload, QoS 2.
    assert_codec(
        V3,
        b"\x34\x05\x00\x01t\x12\x34",
        Packet::Publish(Publish {
            qos: QoS::ExactlyOnce,
            topic: "t".into(),
            packet_id: 0x1234,
            ..Default::default()
        }),
    );
}

#[test]
fn publish_v5_all_properties() {
    let bytes = b"\x34\x2c\x00\x01t\x00\x01\
\x24\x01\x01\x02\x00\x00\x00\x3c\x23\x00\x05\x08\x00\x01r\x09\x00\x02cd\
\x26\x00\x01a\x00\x01b\x0b\x81\x01\x03\x00\x04json{}";
    let publish = Publish {
        dup: false,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "t".into(),
        packet_id: 1,
        payload: Bytes::from_static(b"{}"),
        properties: PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(60),
            topic_alias: Some(5),
            response_topic: Some("r".into()),
            correlation_data: Some(Bytes::from_static(b"cd")),
            user_properties: vec![user("a", "b")],
            subscription_identifiers: vec![129],
            content_type: Some("json".into()),
        },
    };
    assert_codec(V5, bytes, Packet::Publish(publish));
}

#[test]
fn publish_v5_topic_alias_with_empty_topic() {
    assert_codec(
        V5,
        b"\x30\x07\x00\x00\x03\x23\x00\x07p",
        Packet::Publish(Publish {
            payload: Bytes::from_static(b"p"),
            properties: PublishProperties {
                topic_alias: Some(7),
                ..Default::default()
            },
            ..Default::default()
        }),
    );
}

#[test]
fn publish_v5_repeated_subscription_identifiers_and_user_properties_keep_order() {
    let bytes =
        b"\x30\x16\x00\x01t\x12\x0b\x01\x26\x00\x01z\x00\x011\x0b\x02\x26\x00\x01a\x00\x012";
    let mut buf = BytesMut::from(&bytes[..]);
    let Some(Packet::Publish(p)) = decode(&mut buf, V5, MAX_PACKET_SIZE).unwrap() else {
        panic!("not a publish");
    };
    assert_eq!(p.properties.subscription_identifiers, [1, 2]);
    assert_eq!(
        p.properties.user_properties,
        [user("z", "1"), user("a", "2")]
    );
}

#[test]
fn publish_payload_is_a_slice_of_the_input() {
    let mut buf = BytesMut::from(&b"\x30\x0a\x00\x03a/bhelloNEXT"[..]);
    let start = buf.as_ptr() as usize;
    let Some(Packet::Publish(p)) = decode(&mut buf, V3, MAX_PACKET_SIZE).unwrap() else {
        panic!("not a publish");
    };
    assert_eq!(p.payload.as_ptr() as usize, start + 7, "payload was copied");
    assert_eq!(&buf[..], b"NEXT");
}

// ---------------------------------------------------------------- PUBACK, PUBREC, PUBREL, PUBCOMP

#[test]
fn pub_responses_v311() {
    assert_codec(
        V3,
        b"\x40\x02\x00\x01",
        Packet::PubAck(PubAck {
            packet_id: 1,
            ..Default::default()
        }),
    );
    assert_codec(
        V3,
        b"\x50\x02\x00\x02",
        Packet::PubRec(PubRec {
            packet_id: 2,
            ..Default::default()
        }),
    );
    assert_codec(
        V3,
        b"\x62\x02\x00\x03",
        Packet::PubRel(PubRel {
            packet_id: 3,
            ..Default::default()
        }),
    );
    assert_codec(
        V3,
        b"\x70\x02\xff\xff",
        Packet::PubComp(PubComp {
            packet_id: 0xFFFF,
            ..Default::default()
        }),
    );
}

#[test]
fn pub_responses_v5() {
    assert_codec(
        V5,
        b"\x40\x02\x00\x01",
        Packet::PubAck(PubAck {
            packet_id: 1,
            ..Default::default()
        }),
    );
    assert_codec(
        V5,
        b"\x40\x03\x00\x01\x10",
        Packet::PubAck(PubAck {
            packet_id: 1,
            reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
            ..Default::default()
        }),
    );
    assert_codec(
        V5,
        b"\x40\x0b\x00\x01\x97\x07\x1f\x00\x04full",
        Packet::PubAck(PubAck {
            packet_id: 1,
            reason_code: ReasonCode::QUOTA_EXCEEDED,
            properties: AckProperties {
                reason_string: Some("full".into()),
                ..Default::default()
            },
        }),
    );
    assert_codec(
        V5,
        b"\x50\x03\x00\x02\x80",
        Packet::PubRec(PubRec {
            packet_id: 2,
            reason_code: ReasonCode::UNSPECIFIED_ERROR,
            ..Default::default()
        }),
    );
    assert_codec(
        V5,
        b"\x62\x03\x00\x03\x92",
        Packet::PubRel(PubRel {
            packet_id: 3,
            reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
            ..Default::default()
        }),
    );
    assert_codec(
        V5,
        b"\x70\x0b\x00\x04\x00\x07\x26\x00\x01k\x00\x01v",
        Packet::PubComp(PubComp {
            packet_id: 4,
            reason_code: ReasonCode::SUCCESS,
            properties: AckProperties {
                user_properties: vec![user("k", "v")],
                ..Default::default()
            },
        }),
    );
}

#[test]
fn pub_responses_v5_long_forms_of_success() {
    let ack = Packet::PubAck(PubAck {
        packet_id: 1,
        ..Default::default()
    });
    assert_decodes(V5, b"\x40\x03\x00\x01\x00", ack.clone());
    assert_decodes(V5, b"\x40\x04\x00\x01\x00\x00", ack);
}

// ---------------------------------------------------------------- SUBSCRIBE, SUBACK

#[test]
fn subscribe_v311() {
    assert_codec(
        V3,
        b"\x82\x0c\x00\x0a\x00\x03a/+\x01\x00\x01#\x02",
        Packet::Subscribe(Subscribe {
            packet_id: 10,
            subscriptions: vec![
                Subscription {
                    filter: "a/+".into(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                },
                Subscription {
                    filter: "#".into(),
                    options: SubscriptionOptions::qos(QoS::ExactlyOnce),
                },
            ],
            properties: SubscribeProperties::default(),
        }),
    );
}

#[test]
fn subscribe_v5() {
    assert_codec(
        V5,
        b"\x82\x16\x00\x0b\x02\x0b\x05\x00\x0a$share/g/x\x29\x00\x01a\x04",
        Packet::Subscribe(Subscribe {
            packet_id: 11,
            subscriptions: vec![
                Subscription {
                    filter: "$share/g/x".into(),
                    options: SubscriptionOptions {
                        qos: QoS::AtLeastOnce,
                        no_local: false,
                        retain_as_published: true,
                        retain_handling: RetainHandling::DoNotSend,
                    },
                },
                Subscription {
                    filter: "a".into(),
                    options: SubscriptionOptions {
                        no_local: true,
                        ..Default::default()
                    },
                },
            ],
            properties: SubscribeProperties {
                subscription_identifier: Some(5),
                ..Default::default()
            },
        }),
    );
}

#[test]
fn suback_v311() {
    assert_codec(
        V3,
        b"\x90\x04\x00\x0a\x01\x80",
        Packet::SubAck(SubAck {
            packet_id: 10,
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::UNSPECIFIED_ERROR],
            properties: AckProperties::default(),
        }),
    );
}

#[test]
fn suback_v5() {
    assert_codec(
        V5,
        b"\x90\x06\x00\x0b\x00\x01\x00\xa2",
        Packet::SubAck(SubAck {
            packet_id: 11,
            reason_codes: vec![
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::GRANTED_QOS_0,
                ReasonCode::WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED,
            ],
            properties: AckProperties::default(),
        }),
    );
}

// ---------------------------------------------------------------- UNSUBSCRIBE, UNSUBACK

#[test]
fn unsubscribe_v311() {
    assert_codec(
        V3,
        b"\xa2\x0a\x00\x0c\x00\x03a/b\x00\x01c",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 12,
            filters: vec!["a/b".into(), "c".into()],
            properties: UnsubscribeProperties::default(),
        }),
    );
}

#[test]
fn unsubscribe_v5() {
    assert_codec(
        V5,
        b"\xa2\x0d\x00\x0d\x07\x26\x00\x01k\x00\x01v\x00\x01#",
        Packet::Unsubscribe(Unsubscribe {
            packet_id: 13,
            filters: vec!["#".into()],
            properties: UnsubscribeProperties {
                user_properties: vec![user("k", "v")],
            },
        }),
    );
}

#[test]
fn unsuback_v311() {
    assert_codec(
        V3,
        b"\xb0\x02\x00\x0c",
        Packet::UnsubAck(UnsubAck {
            packet_id: 12,
            ..Default::default()
        }),
    );
}

#[test]
fn unsuback_v5() {
    assert_codec(
        V5,
        b"\xb0\x05\x00\x0d\x00\x00\x11",
        Packet::UnsubAck(UnsubAck {
            packet_id: 13,
            reason_codes: vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: AckProperties::default(),
        }),
    );
}

// ---------------------------------------------------------------- PINGREQ, PINGRESP

#[test]
fn pings_both_versions() {
    for protocol in [V3, V5] {
        assert_codec(protocol, b"\xc0\x00", Packet::PingReq);
        assert_codec(protocol, b"\xd0\x00", Packet::PingResp);
    }
}

// ---------------------------------------------------------------- DISCONNECT

#[test]
fn disconnect_v311() {
    assert_codec(V3, b"\xe0\x00", Packet::Disconnect(Disconnect::default()));
}

#[test]
fn disconnect_v5() {
    assert_codec(V5, b"\xe0\x00", Packet::Disconnect(Disconnect::default()));
    assert_codec(
        V5,
        b"\xe0\x01\x04",
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            ..Default::default()
        }),
    );
    assert_codec(
        V5,
        b"\xe0\x0b\x8e\x09\x11\x00\x00\x00\x00\x1c\x00\x01s",
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SESSION_TAKEN_OVER,
            properties: DisconnectProperties {
                session_expiry_interval: Some(0),
                server_reference: Some("s".into()),
                ..Default::default()
            },
        }),
    );
    assert_decodes(
        V5,
        b"\xe0\x02\x00\x00",
        Packet::Disconnect(Disconnect::default()),
    );
}

// ---------------------------------------------------------------- AUTH

#[test]
fn auth_v5() {
    assert_codec(V5, b"\xf0\x00", Packet::Auth(Auth::default()));
    assert_codec(
        V5,
        b"\xf0\x0f\x18\x0d\x15\x00\x05SCRAM\x16\x00\x02xy",
        Packet::Auth(Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: AuthProperties {
                authentication_method: Some("SCRAM".into()),
                authentication_data: Some(Bytes::from_static(b"xy")),
                ..Default::default()
            },
        }),
    );
    // With a reason code, AUTH always carries the property length.
    assert_codec(
        V5,
        b"\xf0\x02\x19\x00",
        Packet::Auth(Auth {
            reason_code: ReasonCode::RE_AUTHENTICATE,
            ..Default::default()
        }),
    );
}

#[test]
fn auth_v311_does_not_exist() {
    let mut out = BytesMut::new();
    assert_eq!(
        encode(&Packet::Auth(Auth::default()), V3, &mut out),
        Err(EncodeError::UnsupportedPacket {
            packet: "AUTH",
            protocol: V3
        })
    );
    assert!(out.is_empty());
    let mut buf = BytesMut::from(&b"\xf0\x00"[..]);
    assert_eq!(
        decode(&mut buf, V3, MAX_PACKET_SIZE),
        Err(DecodeError::UnsupportedPacket {
            packet: "AUTH",
            protocol: V3
        })
    );
}

// ---------------------------------------------------------------- 5.0 → 3.1.1 down-conversion

#[test]
fn v5_only_fields_are_dropped_or_mapped_for_v311() {
    let props = AckProperties {
        reason_string: Some("dropped".into()),
        user_properties: vec![user("k", "v")],
    };
    assert_encodes(
        V3,
        Packet::PubAck(PubAck {
            packet_id: 1,
            reason_code: ReasonCode::NO_MATCHING_SUBSCRIBERS,
            properties: props.clone(),
        }),
        b"\x40\x02\x00\x01",
    );
    assert_encodes(
        V3,
        Packet::SubAck(SubAck {
            packet_id: 1,
            reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::QUOTA_EXCEEDED],
            properties: props.clone(),
        }),
        b"\x90\x04\x00\x01\x02\x80",
    );
    assert_encodes(
        V3,
        Packet::UnsubAck(UnsubAck {
            packet_id: 1,
            reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED],
            properties: props,
        }),
        b"\xb0\x02\x00\x01",
    );
    assert_encodes(
        V3,
        Packet::ConnAck(ConnAck {
            reason_code: ReasonCode::BANNED,
            properties: ConnAckProperties {
                maximum_qos: Some(QoS::AtMostOnce),
                ..Default::default()
            },
            ..Default::default()
        }),
        b"\x20\x02\x00\x05",
    );
    assert_encodes(
        V3,
        Packet::Disconnect(Disconnect {
            reason_code: ReasonCode::SERVER_SHUTTING_DOWN,
            ..Default::default()
        }),
        b"\xe0\x00",
    );
    assert_encodes(
        V3,
        Packet::Subscribe(Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: "a".into(),
                options: SubscriptionOptions {
                    qos: QoS::AtLeastOnce,
                    no_local: true,
                    retain_as_published: true,
                    retain_handling: RetainHandling::DoNotSend,
                },
            }],
            properties: SubscribeProperties {
                subscription_identifier: Some(3),
                ..Default::default()
            },
        }),
        b"\x82\x06\x00\x01\x00\x01a\x01",
    );
    assert_encodes(
        V3,
        Packet::Publish(Publish {
            topic: "t".into(),
            payload: Bytes::from_static(b"x"),
            properties: PublishProperties {
                content_type: Some("text".into()),
                ..Default::default()
            },
            ..Default::default()
        }),
        b"\x30\x04\x00\x01tx",
    );
}

// ---------------------------------------------------------------- several packets in one buffer

#[test]
fn decode_consumes_one_packet_at_a_time() {
    let mut buf = BytesMut::new();
    buf.extend_from_slice(b"\xc0\x00\x40\x02\x00\x01\x30\x0a\x00\x03a/bhello\xd0");
    assert_eq!(
        decode(&mut buf, V3, MAX_PACKET_SIZE),
        Ok(Some(Packet::PingReq))
    );
    assert!(matches!(
        decode(&mut buf, V3, MAX_PACKET_SIZE),
        Ok(Some(Packet::PubAck(_)))
    ));
    assert!(matches!(
        decode(&mut buf, V3, MAX_PACKET_SIZE),
        Ok(Some(Packet::Publish(_)))
    ));
    assert_eq!(decode(&mut buf, V3, MAX_PACKET_SIZE), Ok(None));
    assert_eq!(&buf[..], b"\xd0");
}

#[test]
fn check_reports_the_frame() {
    let header = check(b"\x30\x0a\x00\x03a/bhello", 100).unwrap().unwrap();
    assert_eq!(header.packet_type, PacketType::Publish);
    assert_eq!((header.header_len, header.remaining_len), (2, 10));
    assert_eq!(header.frame_len(), 12);
    assert_eq!(check(b"\x30\x0a\x00\x03a/bhell", 100), Ok(None));
    assert_eq!(check(b"\x30", 100), Ok(None));
    assert_eq!(check(b"", 100), Ok(None));
    // A frame of exactly the limit is fine.
    assert!(check(b"\x30\x0a\x00\x03a/bhello", 12).unwrap().is_some());
}

#[test]
fn large_remaining_lengths() {
    let payload = Bytes::from(vec![7u8; 200_000]);
    let publish = Packet::Publish(Publish {
        topic: "t".into(),
        payload,
        ..Default::default()
    });
    let mut out = BytesMut::new();
    encode(&publish, V5, &mut out).unwrap();
    // 3 + 1 + 200_000 = 200_004 needs a 3-byte remaining length.
    assert_eq!(&out[..4], b"\x30\xc4\x9a\x0c");
    assert_eq!(out.len(), 200_008);
    assert_eq!(decode(&mut out, V5, MAX_PACKET_SIZE), Ok(Some(publish)));
}
