//! Conversion between codec packets and relay protobuf packets: arbitrary valid packets of both
//! protocols survive `codec → proto → codec` (also through protobuf bytes), hand-built fixtures
//! pin the field mapping (a round trip alone would not catch two fields swapped both ways), and
//! every way a protobuf packet can be invalid gives a [`ConvertError`] naming the field.
//!
//! One file (about 800 lines) on purpose: one table of cases per direction over every packet kind.

use bytes::Bytes;
use proptest::prelude::*;
use prost::Message;
use strait_mqtt_codec::arbitrary::protocol_and_packet;
use strait_mqtt_codec::{self as codec, Protocol, QoS, ReasonCode, RetainHandling};
use strait_relay::v1::packet::Packet as Oneof;
use strait_relay::{ConvertError, ErrorKind, v1};

fn user(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|&(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn proto_user(pairs: &[(&str, &str)]) -> Vec<v1::UserProperty> {
    pairs
        .iter()
        .map(|&(k, v)| v1::UserProperty {
            key: k.to_string(),
            value: v.to_string(),
        })
        .collect()
}

/// `codec → proto → bytes → proto → codec`, checking each step gives back what it was given.
#[track_caller]
fn assert_round_trip_through_bytes(packet: codec::Packet) {
    let proto = v1::Packet::from(packet.clone());
    let bytes = proto.encode_to_vec();
    let decoded = v1::Packet::decode(&bytes[..]).expect("protobuf decodes");
    assert_eq!(decoded, proto);
    assert_eq!(codec::Packet::try_from(decoded), Ok(packet));
}

fn to_proto(packet: codec::Packet) -> Oneof {
    v1::Packet::from(packet).packet.expect("oneof is set")
}

fn error(oneof: Oneof) -> String {
    let err = codec::Packet::try_from(v1::Packet {
        packet: Some(oneof),
    })
    .expect_err("conversion must fail");
    err.to_string()
}

// ---------------------------------------------------------------- round trips

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn codec_to_proto_to_codec_is_identity((_protocol, packet) in protocol_and_packet()) {
        let proto = v1::Packet::from(packet.clone());
        let bytes = proto.encode_to_vec();
        prop_assert_eq!(codec::Packet::try_from(proto), Ok(packet.clone()));
        let decoded = v1::Packet::decode(&bytes[..]).expect("protobuf decodes");
        prop_assert_eq!(codec::Packet::try_from(decoded), Ok(packet));
    }
}

#[test]
fn protocol_versions_round_trip() {
    for protocol in [Protocol::V311, Protocol::V5] {
        let version = v1::ProtocolVersion::from(protocol);
        assert_eq!(version as i32, i32::from(protocol.level()));
        assert_eq!(Protocol::try_from(version), Ok(protocol));
    }
}

// ---------------------------------------------------------------- fixtures

fn v5_connect() -> codec::Connect {
    codec::Connect {
        clean_start: true,
        keep_alive: 60,
        client_id: "client-1".into(),
        will: Some(codec::Will {
            topic: "will/topic".into(),
            payload: Bytes::from_static(b"bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: codec::WillProperties {
                will_delay_interval: Some(5),
                payload_format_indicator: Some(true),
                message_expiry_interval: Some(6),
                content_type: Some("text/plain".into()),
                response_topic: Some("will/response".into()),
                correlation_data: Some(Bytes::from_static(b"wc")),
                user_properties: user(&[("wk", "wv")]),
            },
        }),
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret")),
        properties: codec::ConnectProperties {
            session_expiry_interval: Some(1),
            receive_maximum: Some(2),
            maximum_packet_size: Some(3),
            topic_alias_maximum: Some(4),
            request_response_information: Some(true),
            request_problem_information: Some(false),
            user_properties: user(&[("k", "v"), ("k", "v2")]),
            authentication_method: Some("SCRAM-SHA-1".into()),
            authentication_data: Some(Bytes::from_static(b"ad")),
        },
    }
}

#[test]
fn connect_maps_every_field() {
    let expected = v1::Connect {
        client_id: "client-1".into(),
        clean_start: true,
        keep_alive: 60,
        username: Some("user".into()),
        password: Some(Bytes::from_static(b"secret")),
        will: Some(v1::Will {
            topic: "will/topic".into(),
            payload: Bytes::from_static(b"bye"),
            qos: 1,
            retain: true,
            will_delay_interval: Some(5),
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(6),
            content_type: Some("text/plain".into()),
            response_topic: Some("will/response".into()),
            correlation_data: Some(Bytes::from_static(b"wc")),
            user_properties: proto_user(&[("wk", "wv")]),
        }),
        session_expiry_interval: Some(1),
        receive_maximum: Some(2),
        maximum_packet_size: Some(3),
        topic_alias_maximum: Some(4),
        request_response_information: Some(true),
        request_problem_information: Some(false),
        user_properties: proto_user(&[("k", "v"), ("k", "v2")]),
        authentication_method: Some("SCRAM-SHA-1".into()),
        authentication_data: Some(Bytes::from_static(b"ad")),
    };
    let packet = codec::Packet::Connect(v5_connect());
    assert_eq!(to_proto(packet.clone()), Oneof::Connect(Box::new(expected)));
    assert_round_trip_through_bytes(packet);
}

#[test]
fn v311_connect_round_trips() {
    assert_round_trip_through_bytes(codec::Packet::Connect(codec::Connect {
        keep_alive: 30,
        client_id: "old".into(),
        username: Some(String::new()),
        password: Some(Bytes::new()),
        will: Some(codec::Will {
            topic: "t".into(),
            ..codec::Will::default()
        }),
        ..codec::Connect::default()
    }));
}

#[test]
fn connack_maps_every_field() {
    let packet = codec::Packet::ConnAck(codec::ConnAck {
        session_present: true,
        reason_code: ReasonCode::BAD_AUTHENTICATION_METHOD,
        properties: codec::ConnAckProperties {
            session_expiry_interval: Some(1),
            receive_maximum: Some(2),
            maximum_qos: Some(QoS::AtLeastOnce),
            retain_available: Some(false),
            maximum_packet_size: Some(3),
            assigned_client_identifier: Some("assigned".into()),
            topic_alias_maximum: Some(4),
            reason_string: Some("reason".into()),
            user_properties: user(&[("k", "v")]),
            wildcard_subscription_available: Some(true),
            subscription_identifier_available: Some(false),
            shared_subscription_available: Some(true),
            server_keep_alive: Some(5),
            response_information: Some("info".into()),
            server_reference: Some("other:1883".into()),
            authentication_method: Some("method".into()),
            authentication_data: Some(Bytes::from_static(b"ad")),
        },
    });
    let expected = v1::ConnAck {
        session_present: true,
        reason_code: 0x8C,
        session_expiry_interval: Some(1),
        receive_maximum: Some(2),
        maximum_qos: Some(1),
        retain_available: Some(false),
        maximum_packet_size: Some(3),
        assigned_client_identifier: Some("assigned".into()),
        topic_alias_maximum: Some(4),
        reason_string: Some("reason".into()),
        user_properties: proto_user(&[("k", "v")]),
        wildcard_subscription_available: Some(true),
        subscription_identifier_available: Some(false),
        shared_subscription_available: Some(true),
        server_keep_alive: Some(5),
        response_information: Some("info".into()),
        server_reference: Some("other:1883".into()),
        authentication_method: Some("method".into()),
        authentication_data: Some(Bytes::from_static(b"ad")),
    };
    assert_eq!(to_proto(packet.clone()), Oneof::Connack(Box::new(expected)));
    assert_round_trip_through_bytes(packet);
}

#[test]
fn publish_maps_every_field() {
    let packet = codec::Packet::Publish(codec::Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: true,
        topic: Default::default(),
        packet_id: 65535,
        payload: Bytes::from_static(b"21.5"),
        properties: codec::PublishProperties {
            payload_format_indicator: Some(false),
            message_expiry_interval: Some(1),
            topic_alias: Some(2),
            response_topic: Some("response".into()),
            correlation_data: Some(Bytes::from_static(b"cd")),
            user_properties: user(&[("k", "v")]),
            subscription_identifiers: vec![3, 268_435_455],
            content_type: Some("application/json".into()),
        },
    });
    let expected = v1::Publish {
        dup: true,
        qos: 2,
        retain: true,
        topic: Default::default(),
        packet_id: 65535,
        payload: Bytes::from_static(b"21.5"),
        payload_format_indicator: Some(false),
        message_expiry_interval: Some(1),
        topic_alias: Some(2),
        response_topic: Some("response".into()),
        correlation_data: Some(Bytes::from_static(b"cd")),
        user_properties: proto_user(&[("k", "v")]),
        subscription_identifiers: vec![3, 268_435_455],
        content_type: Some("application/json".into()),
    };
    assert_eq!(to_proto(packet.clone()), Oneof::Publish(expected));
    assert_round_trip_through_bytes(packet);
}

#[test]
fn subscribe_maps_options() {
    let subscription =
        |filter: &str, qos, no_local, retain_as_published, retain_handling| codec::Subscription {
            filter: filter.into(),
            options: codec::SubscriptionOptions {
                qos,
                no_local,
                retain_as_published,
                retain_handling,
            },
        };
    let packet = codec::Packet::Subscribe(codec::Subscribe {
        packet_id: 7,
        subscriptions: vec![
            subscription(
                "a/+",
                QoS::AtMostOnce,
                true,
                false,
                RetainHandling::SendAtSubscribe,
            ),
            subscription(
                "b/#",
                QoS::AtLeastOnce,
                false,
                true,
                RetainHandling::SendAtSubscribeIfNew,
            ),
            subscription(
                "$share/g/c",
                QoS::ExactlyOnce,
                false,
                false,
                RetainHandling::DoNotSend,
            ),
        ],
        properties: codec::SubscribeProperties {
            subscription_identifier: Some(9),
            user_properties: user(&[("k", "v")]),
        },
    });
    let proto_subscription =
        |filter: &str, qos, no_local, retain_as_published, rh| v1::Subscription {
            filter: filter.into(),
            qos,
            no_local,
            retain_as_published,
            retain_handling: v1::RetainHandling::into(rh),
        };
    let expected = v1::Subscribe {
        packet_id: 7,
        subscriptions: vec![
            proto_subscription("a/+", 0, true, false, v1::RetainHandling::SendOnSubscribe),
            proto_subscription(
                "b/#",
                1,
                false,
                true,
                v1::RetainHandling::SendIfNewSubscription,
            ),
            proto_subscription("$share/g/c", 2, false, false, v1::RetainHandling::DoNotSend),
        ],
        subscription_identifier: Some(9),
        user_properties: proto_user(&[("k", "v")]),
    };
    assert_eq!(to_proto(packet.clone()), Oneof::Subscribe(expected));
    assert_round_trip_through_bytes(packet);
}

#[test]
fn acks_map_reason_codes_and_properties() {
    let properties = codec::AckProperties {
        reason_string: Some("why".into()),
        user_properties: user(&[("k", "v")]),
    };
    let packet = codec::Packet::PubRec(codec::PubRec {
        packet_id: 3,
        reason_code: ReasonCode::QUOTA_EXCEEDED,
        properties: properties.clone(),
    });
    let expected = v1::PubRec {
        packet_id: 3,
        reason_code: 0x97,
        reason_string: Some("why".into()),
        user_properties: proto_user(&[("k", "v")]),
    };
    assert_eq!(to_proto(packet.clone()), Oneof::Pubrec(expected));
    assert_round_trip_through_bytes(packet);

    let packet = codec::Packet::SubAck(codec::SubAck {
        packet_id: 4,
        reason_codes: vec![ReasonCode::GRANTED_QOS_2, ReasonCode::NOT_AUTHORIZED],
        properties,
    });
    let expected = v1::SubAck {
        packet_id: 4,
        reason_codes: vec![2, 0x87],
        reason_string: Some("why".into()),
        user_properties: proto_user(&[("k", "v")]),
    };
    assert_eq!(to_proto(packet.clone()), Oneof::Suback(expected));
    assert_round_trip_through_bytes(packet);
}

#[test]
fn other_packets_round_trip_through_bytes() {
    let packets = [
        codec::Packet::PingReq,
        codec::Packet::PingResp,
        codec::Packet::Disconnect(codec::Disconnect::default()),
        codec::Packet::Disconnect(codec::Disconnect {
            reason_code: ReasonCode::SESSION_TAKEN_OVER,
            properties: codec::DisconnectProperties {
                session_expiry_interval: Some(0),
                reason_string: Some("bye".into()),
                user_properties: user(&[("k", "v")]),
                server_reference: Some("other".into()),
            },
        }),
        codec::Packet::Auth(codec::Auth {
            reason_code: ReasonCode::CONTINUE_AUTHENTICATION,
            properties: codec::AuthProperties {
                authentication_method: Some("m".into()),
                authentication_data: Some(Bytes::from_static(b"\0\xff")),
                reason_string: None,
                user_properties: vec![],
            },
        }),
        codec::Packet::Unsubscribe(codec::Unsubscribe {
            packet_id: 1,
            filters: vec!["a".into(), "b/+".into()],
            properties: codec::UnsubscribeProperties {
                user_properties: user(&[("k", "v")]),
            },
        }),
        codec::Packet::UnsubAck(codec::UnsubAck {
            packet_id: 1,
            reason_codes: vec![ReasonCode::NO_SUBSCRIPTION_EXISTED, ReasonCode::SUCCESS],
            properties: codec::AckProperties::default(),
        }),
    ];
    for packet in packets {
        assert_round_trip_through_bytes(packet);
    }
}

#[test]
fn publish_payload_is_moved_not_copied() {
    let payload = Bytes::from(vec![7u8; 1024]);
    let ptr = payload.as_ptr();
    let packet = codec::Packet::Publish(codec::Publish {
        topic: "t".into(),
        payload,
        ..codec::Publish::default()
    });

    let proto = v1::Packet::from(packet);
    let Some(Oneof::Publish(publish)) = &proto.packet else {
        panic!("not a PUBLISH: {proto:?}");
    };
    assert_eq!(
        publish.payload.as_ptr(),
        ptr,
        "codec → proto copied the payload"
    );

    let Ok(codec::Packet::Publish(publish)) = codec::Packet::try_from(proto) else {
        panic!("PUBLISH does not convert back");
    };
    assert_eq!(
        publish.payload.as_ptr(),
        ptr,
        "proto → codec copied the payload"
    );
}

// ---------------------------------------------------------------- errors

fn publish() -> v1::Publish {
    let Oneof::Publish(p) = to_proto(codec::Packet::Publish(codec::Publish {
        topic: "t".into(),
        ..codec::Publish::default()
    })) else {
        unreachable!()
    };
    p
}

fn connect() -> v1::Connect {
    let Oneof::Connect(c) = to_proto(codec::Packet::Connect(v5_connect())) else {
        unreachable!()
    };
    *c
}

fn subscription() -> v1::Subscription {
    v1::Subscription {
        filter: "a".into(),
        ..v1::Subscription::default()
    }
}

#[test]
fn empty_oneof() {
    let err = codec::Packet::try_from(v1::Packet::default()).unwrap_err();
    assert_eq!(
        err,
        ConvertError {
            field: "Packet".into(),
            kind: ErrorKind::EmptyOneof
        }
    );
    assert_eq!(err.to_string(), "Packet: empty oneof");
}

#[test]
fn unspecified_protocol_version() {
    let err = Protocol::try_from(v1::ProtocolVersion::Unspecified).unwrap_err();
    assert_eq!(
        err.to_string(),
        "SessionOpen.protocol: unspecified or unknown protocol version"
    );
    // prost reads an unknown enum value as the default, so 3 (MQTT 3.1) ends up here too.
    let open = v1::SessionOpen {
        protocol: 3,
        ..v1::SessionOpen::default()
    };
    assert_eq!(Protocol::try_from(open.protocol()), Err(err));
}

#[test]
fn publish_qos_3() {
    let p = v1::Publish {
        qos: 3,
        ..publish()
    };
    assert_eq!(error(Oneof::Publish(p)), "PUBLISH.qos: 3 is not a QoS");
}

#[test]
fn publish_qos_above_u8() {
    let p = v1::Publish {
        qos: 257,
        ..publish()
    };
    assert_eq!(error(Oneof::Publish(p)), "PUBLISH.qos: 257 is not a QoS");
}

#[test]
fn publish_topic_not_utf8() {
    let p = v1::Publish {
        topic: Bytes::from_static(b"sensors/\xff"),
        ..publish()
    };
    assert_eq!(error(Oneof::Publish(p)), "PUBLISH.topic: not UTF-8");
}

#[test]
fn publish_packet_id_out_of_range() {
    let p = v1::Publish {
        qos: 1,
        packet_id: 70000,
        ..publish()
    };
    assert_eq!(
        error(Oneof::Publish(p)),
        "PUBLISH.packet_id: 70000 is out of range (max 65535)"
    );
}

#[test]
fn publish_topic_alias_out_of_range() {
    let p = v1::Publish {
        topic_alias: Some(65536),
        ..publish()
    };
    assert_eq!(
        error(Oneof::Publish(p)),
        "PUBLISH.topic_alias: 65536 is out of range (max 65535)"
    );
}

#[test]
fn connect_keep_alive_out_of_range() {
    let c = v1::Connect {
        keep_alive: 65536,
        ..connect()
    };
    assert_eq!(
        error(Oneof::Connect(Box::new(c))),
        "CONNECT.keep_alive: 65536 is out of range (max 65535)"
    );
}

#[test]
fn connect_receive_maximum_out_of_range() {
    let c = v1::Connect {
        receive_maximum: Some(u32::MAX),
        ..connect()
    };
    assert_eq!(
        error(Oneof::Connect(Box::new(c))),
        "CONNECT.receive_maximum: 4294967295 is out of range (max 65535)"
    );
}

#[test]
fn connect_topic_alias_maximum_out_of_range() {
    let c = v1::Connect {
        topic_alias_maximum: Some(1 << 16),
        ..connect()
    };
    assert_eq!(
        error(Oneof::Connect(Box::new(c))),
        "CONNECT.topic_alias_maximum: 65536 is out of range (max 65535)"
    );
}

#[test]
fn connect_will_qos_3() {
    let mut c = connect();
    c.will.as_mut().unwrap().qos = 3;
    assert_eq!(
        error(Oneof::Connect(Box::new(c))),
        "CONNECT.will.qos: 3 is not a QoS"
    );
}

#[test]
fn connack_maximum_qos_3() {
    let c = v1::ConnAck {
        maximum_qos: Some(3),
        ..v1::ConnAck::default()
    };
    assert_eq!(
        error(Oneof::Connack(Box::new(c))),
        "CONNACK.maximum_qos: 3 is not a QoS"
    );
}

#[test]
fn connack_u16_properties_out_of_range() {
    let cases = [
        (
            v1::ConnAck {
                receive_maximum: Some(65536),
                ..v1::ConnAck::default()
            },
            "CONNACK.receive_maximum: 65536 is out of range (max 65535)",
        ),
        (
            v1::ConnAck {
                topic_alias_maximum: Some(65536),
                ..v1::ConnAck::default()
            },
            "CONNACK.topic_alias_maximum: 65536 is out of range (max 65535)",
        ),
        (
            v1::ConnAck {
                server_keep_alive: Some(65536),
                ..v1::ConnAck::default()
            },
            "CONNACK.server_keep_alive: 65536 is out of range (max 65535)",
        ),
    ];
    for (connack, message) in cases {
        assert_eq!(error(Oneof::Connack(Box::new(connack))), message);
    }
}

#[test]
fn connack_reason_code_of_another_packet() {
    let c = v1::ConnAck {
        reason_code: 0x8E,
        ..v1::ConnAck::default()
    };
    assert_eq!(
        error(Oneof::Connack(Box::new(c))),
        "CONNACK.reason_code: 0x8e (Session taken over) is not a reason code of CONNACK"
    );
}

#[test]
fn suback_unknown_reason_code() {
    let s = v1::SubAck {
        packet_id: 1,
        reason_codes: vec![0, 0x42],
        ..v1::SubAck::default()
    };
    let err = codec::Packet::try_from(v1::Packet {
        packet: Some(Oneof::Suback(s)),
    })
    .unwrap_err();
    assert_eq!(err.kind, ErrorKind::NotReasonCode(0x42));
    assert_eq!(
        err.to_string(),
        "SUBACK.reason_codes[1]: 0x42 is not a reason code"
    );
}

#[test]
fn unsuback_reason_code_above_u8() {
    let u = v1::UnsubAck {
        packet_id: 1,
        reason_codes: vec![256],
        ..v1::UnsubAck::default()
    };
    assert_eq!(
        error(Oneof::Unsuback(u)),
        "UNSUBACK.reason_codes[0]: 0x100 is not a reason code"
    );
}

#[test]
fn puback_family_reason_codes_are_checked_per_packet() {
    // 0x10 No matching subscribers is a PUBACK/PUBREC code, not a PUBREL/PUBCOMP one.
    let ok = |code| v1::PubAck {
        packet_id: 1,
        reason_code: code,
        ..v1::PubAck::default()
    };
    assert!(
        codec::Packet::try_from(v1::Packet {
            packet: Some(Oneof::Puback(ok(0x10)))
        })
        .is_ok()
    );
    let rel = v1::PubRel {
        packet_id: 1,
        reason_code: 0x10,
        ..v1::PubRel::default()
    };
    assert_eq!(
        error(Oneof::Pubrel(rel)),
        "PUBREL.reason_code: 0x10 (No matching subscribers) is not a reason code of PUBREL"
    );
    let comp = v1::PubComp {
        packet_id: 1,
        reason_code: 0x42,
        ..v1::PubComp::default()
    };
    assert_eq!(
        error(Oneof::Pubcomp(comp)),
        "PUBCOMP.reason_code: 0x42 is not a reason code"
    );
}

#[test]
fn puback_family_packet_id_out_of_range() {
    let rec = v1::PubRec {
        packet_id: 65536,
        ..v1::PubRec::default()
    };
    assert_eq!(
        error(Oneof::Pubrec(rec)),
        "PUBREC.packet_id: 65536 is out of range (max 65535)"
    );
}

#[test]
fn disconnect_and_auth_reason_codes() {
    let d = v1::Disconnect {
        reason_code: 0x01,
        ..v1::Disconnect::default()
    };
    assert_eq!(
        error(Oneof::Disconnect(d)),
        "DISCONNECT.reason_code: 0x01 (Granted QoS 1) is not a reason code of DISCONNECT"
    );
    let a = v1::Auth {
        reason_code: 0x80,
        ..v1::Auth::default()
    };
    assert_eq!(
        error(Oneof::Auth(a)),
        "AUTH.reason_code: 0x80 (Unspecified error) is not a reason code of AUTH"
    );
}

#[test]
fn subscription_qos_3() {
    let s = v1::Subscribe {
        packet_id: 1,
        subscriptions: vec![
            subscription(),
            v1::Subscription {
                qos: 3,
                ..subscription()
            },
        ],
        ..v1::Subscribe::default()
    };
    assert_eq!(
        error(Oneof::Subscribe(s)),
        "SUBSCRIBE.subscriptions[1].qos: 3 is not a QoS"
    );
}

#[test]
fn subscription_invalid_retain_handling() {
    let s = v1::Subscribe {
        packet_id: 1,
        subscriptions: vec![v1::Subscription {
            retain_handling: 3,
            ..subscription()
        }],
        ..v1::Subscribe::default()
    };
    assert_eq!(
        error(Oneof::Subscribe(s)),
        "SUBSCRIBE.subscriptions[0].retain_handling: 3 is not a retain handling"
    );
}

#[test]
fn subscribe_and_unsubscribe_packet_id_out_of_range() {
    let s = v1::Subscribe {
        packet_id: 65536,
        subscriptions: vec![subscription()],
        ..v1::Subscribe::default()
    };
    assert_eq!(
        error(Oneof::Subscribe(s)),
        "SUBSCRIBE.packet_id: 65536 is out of range (max 65535)"
    );
    let u = v1::Unsubscribe {
        packet_id: 65536,
        filters: vec!["a".into()],
        ..v1::Unsubscribe::default()
    };
    assert_eq!(
        error(Oneof::Unsubscribe(u)),
        "UNSUBSCRIBE.packet_id: 65536 is out of range (max 65535)"
    );
}
