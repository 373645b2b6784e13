//! One test per error: malformed input for every `DecodeError` variant, and
//! every `EncodeError` variant.
//!
//! One file (about 1000 lines) on purpose: one test per error variant, a table to check against the enums.

use bytes::{Bytes, BytesMut};
use strait_mqtt_codec::topic::TopicError;
use strait_mqtt_codec::*;

const V3: Protocol = Protocol::V311;
const V5: Protocol = Protocol::V5;

#[track_caller]
fn decode_err(protocol: Protocol, bytes: &[u8]) -> DecodeError {
    let mut buf = BytesMut::from(bytes);
    match decode(&mut buf, protocol, MAX_PACKET_SIZE) {
        Err(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[track_caller]
fn assert_err(protocol: Protocol, bytes: &[u8], expected: DecodeError) {
    assert_eq!(decode_err(protocol, bytes), expected);
}

/// Both protocols reject `bytes` the same way.
#[track_caller]
fn assert_err_both(bytes: &[u8], expected: DecodeError) {
    assert_err(V3, bytes, expected);
    assert_err(V5, bytes, expected);
}

// ---------------------------------------------------------------- fixed header

#[test]
fn packet_too_large_is_detected_from_the_fixed_header() {
    // Only the fixed header has arrived: 2 + 127 bytes are announced.
    let err = DecodeError::PacketTooLarge {
        size: 129,
        max: 100,
    };
    assert_eq!(check(b"\x30\x7f", 100), Err(err));
    let mut buf = BytesMut::from(&b"\x30\x7f"[..]);
    assert_eq!(decode(&mut buf, V5, 100), Err(err));
    assert_eq!(buf.len(), 2, "nothing consumed");
    assert_eq!(err.reason_code(), ReasonCode::PACKET_TOO_LARGE);
    // The limit counts the fixed header: 12 bytes do not fit in 11.
    assert_eq!(
        check(b"\x30\x0a\x00\x03a/bhello", 11),
        Err(DecodeError::PacketTooLarge { size: 12, max: 11 })
    );
}

#[test]
fn malformed_remaining_length() {
    assert_err_both(
        b"\x30\xff\xff\xff\xff\x01",
        DecodeError::MalformedRemainingLength,
    );
    // Not the shortest encoding of 0.
    assert_err_both(b"\xc0\x80\x00", DecodeError::MalformedRemainingLength);
    assert_eq!(
        check(b"\x30\xff\xff\xff\xff", MAX_PACKET_SIZE),
        Err(DecodeError::MalformedRemainingLength)
    );
    assert_eq!(check(b"\x30\xff\xff\xff", MAX_PACKET_SIZE), Ok(None));
}

#[test]
fn malformed_varint_inside_the_packet() {
    // Property length 0x80 0x00.
    assert_err(
        V5,
        b"\x30\x05\x00\x01t\x80\x00",
        DecodeError::MalformedVarInt,
    );
    // Property identifier of five bytes.
    assert_err(
        V5,
        b"\x30\x09\x00\x01t\x05\x80\x80\x80\x80\x01",
        DecodeError::MalformedVarInt,
    );
}

#[test]
fn reserved_packet_type() {
    assert_err_both(b"\x00\x00", DecodeError::InvalidPacketType(0));
}

#[test]
fn auth_is_not_a_v311_packet() {
    assert_err(
        V3,
        b"\xf0\x00",
        DecodeError::UnsupportedPacket {
            packet: "AUTH",
            protocol: V3,
        },
    );
}

#[test]
fn invalid_fixed_header_flags() {
    for (bytes, packet, flags) in [
        (&b"\x41\x02\x00\x01"[..], "PUBACK", 1),
        (b"\x60\x02\x00\x01", "PUBREL", 0),
        (b"\x80\x06\x00\x01\x00\x01a\x00", "SUBSCRIBE", 0),
        (b"\xa0\x05\x00\x01\x00\x01a", "UNSUBSCRIBE", 0),
        (b"\xa3\x05\x00\x01\x00\x01a", "UNSUBSCRIBE", 3),
        (b"\xc8\x00", "PINGREQ", 8),
        (b"\xe2\x00", "DISCONNECT", 2),
        (b"\x12\x00", "CONNECT", 2),
        // DUP on a QoS 0 PUBLISH.
        (b"\x38\x04\x00\x01tx", "PUBLISH", 8),
    ] {
        assert_err_both(bytes, DecodeError::InvalidFlags { packet, flags });
    }
    // Reported from the first byte alone.
    assert_eq!(
        check(b"\x60", MAX_PACKET_SIZE),
        Err(DecodeError::InvalidFlags {
            packet: "PUBREL",
            flags: 0
        })
    );
}

#[test]
fn qos_3() {
    assert_err_both(b"\x36\x06\x00\x01t\x00\x01x", DecodeError::InvalidQoS(3));
    // In a subscription.
    assert_err(
        V3,
        b"\x82\x06\x00\x01\x00\x01a\x03",
        DecodeError::InvalidQoS(3),
    );
    assert_err(
        V5,
        b"\x82\x07\x00\x01\x00\x00\x01a\x03",
        DecodeError::InvalidQoS(3),
    );
}

#[test]
fn truncated_fields() {
    // Topic length 5, one byte left.
    assert_err_both(
        b"\x30\x03\x00\x05a",
        DecodeError::Truncated {
            packet: "PUBLISH",
            needed: 5,
            available: 1,
        },
    );
    // PUBACK with only one byte of packet identifier.
    assert_err_both(
        b"\x40\x01\x00",
        DecodeError::Truncated {
            packet: "PUBACK",
            needed: 2,
            available: 1,
        },
    );
    // Property block of 2 bytes holding a 4-byte Message Expiry Interval.
    assert_err(
        V5,
        b"\x30\x07\x00\x01t\x02\x02\x00\x00",
        DecodeError::Truncated {
            packet: "PUBLISH",
            needed: 4,
            available: 1,
        },
    );
    // Property length larger than the packet.
    assert_err(
        V5,
        b"\x30\x05\x00\x01t\x09\x00",
        DecodeError::Truncated {
            packet: "PUBLISH",
            needed: 9,
            available: 1,
        },
    );
    // CONNACK without reason code.
    assert_err_both(
        b"\x20\x01\x00",
        DecodeError::Truncated {
            packet: "CONNACK",
            needed: 1,
            available: 0,
        },
    );
    // 5.0 CONNACK must have a property length.
    assert_err(
        V5,
        b"\x20\x02\x00\x00",
        DecodeError::Truncated {
            packet: "CONNACK",
            needed: 1,
            available: 0,
        },
    );
}

#[test]
fn trailing_bytes() {
    assert_err(
        V3,
        b"\x40\x03\x00\x01\x00",
        DecodeError::TrailingBytes {
            packet: "PUBACK",
            count: 1,
        },
    );
    assert_err_both(
        b"\xc0\x01\x00",
        DecodeError::TrailingBytes {
            packet: "PINGREQ",
            count: 1,
        },
    );
    assert_err(
        V3,
        b"\xe0\x01\x00",
        DecodeError::TrailingBytes {
            packet: "DISCONNECT",
            count: 1,
        },
    );
    assert_err(
        V3,
        b"\x20\x03\x00\x00\x00",
        DecodeError::TrailingBytes {
            packet: "CONNACK",
            count: 1,
        },
    );
    // CONNECT with a byte after the client identifier.
    assert_err(
        V3,
        b"\x10\x0d\x00\x04MQTT\x04\x02\x00\x00\x00\x00\xff",
        DecodeError::TrailingBytes {
            packet: "CONNECT",
            count: 1,
        },
    );
}

// ---------------------------------------------------------------- CONNECT

fn connect_first(bytes: &[u8]) -> Result<Option<(Protocol, Connect)>, ConnectError> {
    decode_first(&mut BytesMut::from(bytes), MAX_PACKET_SIZE)
}

#[test]
fn invalid_protocol_name() {
    let err = connect_first(b"\x10\x0c\x00\x04MQTX\x04\x02\x00\x00\x00\x00").unwrap_err();
    assert_eq!(
        err,
        ConnectError {
            protocol: None,
            error: DecodeError::InvalidProtocolName
        }
    );
    assert_eq!(err.connack(), None);
}

#[test]
fn invalid_protocol_level() {
    let err = connect_first(b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x00\x00\x00").unwrap_err();
    assert_eq!(err.error, DecodeError::InvalidProtocolLevel(6));
    assert_eq!(
        err.error.reason_code(),
        ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
    );
    // The answer is a 3.1.1 CONNACK with return code 1.
    let (protocol, ack) = err.connack().unwrap();
    let mut out = BytesMut::new();
    encode(&Packet::ConnAck(ack), protocol, &mut out).unwrap();
    assert_eq!(&out[..], b"\x20\x02\x00\x01");
}

#[test]
fn mqtt_3_1_is_rejected_as_an_unsupported_level() {
    let err = connect_first(b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x00\x00\x00").unwrap_err();
    assert_eq!(err.error, DecodeError::InvalidProtocolLevel(3));
    assert!(err.connack().is_some());
}

#[test]
fn connect_level_must_match_the_connection() {
    assert_err(
        V3,
        b"\x10\x0d\x00\x04MQTT\x05\x02\x00\x00\x00\x00\x00",
        DecodeError::InvalidProtocolLevel(5),
    );
}

#[test]
fn first_packet_must_be_connect() {
    // Rejected from the first byte, without waiting for the rest.
    let err = connect_first(b"\x30").unwrap_err();
    assert_eq!(
        err.error,
        DecodeError::FirstPacketNotConnect { packet: "PUBLISH" }
    );
    assert_eq!(err.error.reason_code(), ReasonCode::PROTOCOL_ERROR);
    assert_eq!(err.connack(), None);
    assert_eq!(
        connect_first(b"\x00\x00").unwrap_err().error,
        DecodeError::FirstPacketNotConnect {
            packet: "reserved packet type"
        }
    );
    assert_eq!(connect_first(b""), Ok(None));
}

#[test]
fn invalid_connect_flags() {
    for (protocol, flags) in [
        (V3, 0x03), // reserved bit
        (V5, 0x03),
        (V3, 0x0a), // will QoS without will flag
        (V3, 0x22), // will retain without will flag
        (V5, 0x1e), // will QoS 3
        (V3, 0x42), // 3.1.1: password without user name
    ] {
        let level = protocol.level();
        let mut bytes = vec![0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', level, flags];
        bytes.extend_from_slice(b"\x00\x00\x00\x00");
        if protocol == V5 {
            bytes[1] += 1;
            bytes.push(0);
        }
        let err = connect_first(&bytes).unwrap_err();
        assert_eq!(
            err,
            ConnectError {
                protocol: Some(protocol),
                error: DecodeError::InvalidConnectFlags(flags)
            },
            "{flags:#x}"
        );
        assert_eq!(err.error.reason_code(), ReasonCode::MALFORMED_PACKET);
    }
}

#[test]
fn malformed_v5_connect_gets_a_v5_connack() {
    // Reserved flag bit in a 5.0 CONNECT.
    let err = connect_first(b"\x10\x0d\x00\x04MQTT\x05\x03\x00\x00\x00\x00\x00").unwrap_err();
    let (protocol, ack) = err.connack().unwrap();
    assert_eq!(protocol, V5);
    assert_eq!(ack.reason_code, ReasonCode::MALFORMED_PACKET);
    // The same in 3.1.1 has no return code: just close.
    let err = connect_first(b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x00\x00\x00").unwrap_err();
    assert_eq!(err.connack(), None);
}

#[test]
fn will_topic_must_be_a_topic_name() {
    let err = connect_first(b"\x10\x13\x00\x04MQTT\x04\x06\x00\x00\x00\x00\x00\x03a/#\x00\x00")
        .unwrap_err();
    assert_eq!(
        err.error,
        DecodeError::InvalidTopicName(TopicError::WildcardInName)
    );
}

#[test]
fn invalid_connack_flags() {
    assert_err_both(b"\x20\x02\x02\x00", DecodeError::InvalidConnAckFlags(2));
}

// ---------------------------------------------------------------- strings

#[test]
fn invalid_utf8() {
    // 0xFF never appears in UTF-8.
    assert_err_both(b"\x30\x04\x00\x02a\xff", DecodeError::InvalidUtf8);
    // A UTF-16 surrogate (U+D800) encoded as UTF-8.
    assert_err_both(b"\x30\x05\x00\x03\xed\xa0\x80", DecodeError::InvalidUtf8);
    // Overlong encoding of U+0000.
    assert_err_both(b"\x30\x04\x00\x02\xc0\x80", DecodeError::InvalidUtf8);
    // Truncated multi-byte sequence.
    assert_err_both(b"\x30\x04\x00\x02a\xc3", DecodeError::InvalidUtf8);
}

#[test]
fn null_character() {
    assert_err_both(b"\x30\x04\x00\x02a\x00", DecodeError::NullCharacter);
    // In a user property.
    assert_err(
        V5,
        b"\x40\x0b\x00\x01\x00\x07\x26\x00\x01\x00\x00\x01v",
        DecodeError::NullCharacter,
    );
}

#[test]
fn other_control_characters_and_non_characters_pass_through() {
    // U+0001, U+007F, U+0085, U+FFFF: SHOULD NOT per spec, accepted here.
    let topic = "\u{1}\u{7f}\u{85}\u{ffff}";
    let mut bytes = vec![0x30, 2 + topic.len() as u8, 0, topic.len() as u8];
    bytes.extend_from_slice(topic.as_bytes());
    let Some(Packet::Publish(p)) =
        decode(&mut BytesMut::from(&bytes[..]), V3, MAX_PACKET_SIZE).unwrap()
    else {
        panic!("not a publish")
    };
    assert_eq!(p.topic, topic);
}

// ---------------------------------------------------------------- packet identifiers, payloads

#[test]
fn zero_packet_id() {
    for (bytes, packet) in [
        (&b"\x40\x02\x00\x00"[..], "PUBACK"),
        (b"\x50\x02\x00\x00", "PUBREC"),
        (b"\x62\x02\x00\x00", "PUBREL"),
        (b"\x70\x02\x00\x00", "PUBCOMP"),
        (b"\x32\x05\x00\x01t\x00\x00", "PUBLISH"),
        (b"\x82\x06\x00\x00\x00\x01a\x00", "SUBSCRIBE"),
        (b"\x90\x03\x00\x00\x00", "SUBACK"),
        (b"\xa2\x05\x00\x00\x00\x01a", "UNSUBSCRIBE"),
        (b"\xb0\x02\x00\x00", "UNSUBACK"),
    ] {
        assert_err(V3, bytes, DecodeError::ZeroPacketId { packet });
    }
    assert_eq!(
        DecodeError::ZeroPacketId { packet: "PUBACK" }.reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn empty_payload() {
    assert_err(
        V3,
        b"\x82\x02\x00\x01",
        DecodeError::EmptyPayload {
            packet: "SUBSCRIBE",
        },
    );
    assert_err(
        V5,
        b"\x82\x03\x00\x01\x00",
        DecodeError::EmptyPayload {
            packet: "SUBSCRIBE",
        },
    );
    assert_err(
        V3,
        b"\xa2\x02\x00\x01",
        DecodeError::EmptyPayload {
            packet: "UNSUBSCRIBE",
        },
    );
    assert_err(
        V3,
        b"\x90\x02\x00\x01",
        DecodeError::EmptyPayload { packet: "SUBACK" },
    );
    assert_err(
        V5,
        b"\xb0\x03\x00\x01\x00",
        DecodeError::EmptyPayload { packet: "UNSUBACK" },
    );
    assert_eq!(
        DecodeError::EmptyPayload {
            packet: "SUBSCRIBE"
        }
        .reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
}

// ---------------------------------------------------------------- topics

#[test]
fn invalid_topic_name() {
    assert_err_both(
        b"\x30\x05\x00\x03a/+",
        DecodeError::InvalidTopicName(TopicError::WildcardInName),
    );
    assert_err_both(
        b"\x30\x03\x00\x01#",
        DecodeError::InvalidTopicName(TopicError::WildcardInName),
    );
    // 3.1.1 has no topic alias: an empty topic is just invalid.
    assert_err(
        V3,
        b"\x30\x03\x00\x00x",
        DecodeError::InvalidTopicName(TopicError::Empty),
    );
    // Response Topic is a topic name too.
    assert_err(
        V5,
        b"\x30\x09\x00\x01t\x05\x08\x00\x02a+",
        DecodeError::InvalidTopicName(TopicError::WildcardInName),
    );
    assert_eq!(
        DecodeError::InvalidTopicName(TopicError::Empty).reason_code(),
        ReasonCode::TOPIC_NAME_INVALID
    );
}

#[test]
fn empty_topic_without_alias() {
    assert_err(
        V5,
        b"\x30\x03\x00\x00\x00",
        DecodeError::EmptyTopicWithoutAlias,
    );
    assert_eq!(
        DecodeError::EmptyTopicWithoutAlias.reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn invalid_topic_filter() {
    for (filter, err) in [
        (&b"a/#/b"[..], TopicError::MisplacedWildcard),
        (b"a+", TopicError::MisplacedWildcard),
        (b"$share/g", TopicError::MissingSharedFilter),
        (b"$share//a", TopicError::InvalidShareName),
    ] {
        let mut bytes = vec![0x82, 5 + filter.len() as u8, 0, 1, 0, filter.len() as u8];
        bytes.extend_from_slice(filter);
        bytes.push(0);
        assert_err(V3, &bytes, DecodeError::InvalidTopicFilter(err));
    }
    let mut unsubscribe = vec![0xa2, 7, 0, 1, 0, 3];
    unsubscribe.extend_from_slice(b"#/a");
    assert_err(
        V3,
        &unsubscribe,
        DecodeError::InvalidTopicFilter(TopicError::MisplacedWildcard),
    );
    assert_eq!(
        DecodeError::InvalidTopicFilter(TopicError::Empty).reason_code(),
        ReasonCode::TOPIC_FILTER_INVALID
    );
}

// ---------------------------------------------------------------- subscription options

#[test]
fn invalid_subscription_options() {
    // 3.1.1: only the QoS bits may be set.
    assert_err(
        V3,
        b"\x82\x06\x00\x01\x00\x01a\x04",
        DecodeError::InvalidSubscriptionOptions(0x04),
    );
    // 5.0: bits 6 and 7 are reserved.
    assert_err(
        V5,
        b"\x82\x07\x00\x01\x00\x00\x01a\x40",
        DecodeError::InvalidSubscriptionOptions(0x40),
    );
}

#[test]
fn invalid_retain_handling() {
    assert_err(
        V5,
        b"\x82\x07\x00\x01\x00\x00\x01a\x30",
        DecodeError::InvalidRetainHandling(3),
    );
}

#[test]
fn no_local_on_shared_subscription() {
    let mut bytes = vec![0x82, 16, 0, 1, 0, 0, 10];
    bytes.extend_from_slice(b"$share/g/a\x04");
    assert_err(V5, &bytes, DecodeError::SharedSubscriptionNoLocal);
}

// ---------------------------------------------------------------- properties

#[test]
fn unknown_property() {
    assert_err(
        V5,
        b"\x30\x05\x00\x01t\x01\x04",
        DecodeError::UnknownProperty(0x04),
    );
    assert_err(
        V5,
        b"\x30\x05\x00\x01t\x01\x2b",
        DecodeError::UnknownProperty(0x2b),
    );
    // Two-byte identifier 0x80 (well-formed varint, unknown property).
    assert_err(
        V5,
        b"\x30\x06\x00\x01t\x02\x80\x01",
        DecodeError::UnknownProperty(0x80),
    );
}

#[test]
fn property_not_allowed() {
    // Session Expiry Interval in PUBLISH.
    assert_err(
        V5,
        b"\x30\x09\x00\x01t\x05\x11\x00\x00\x00\x00",
        DecodeError::PropertyNotAllowed {
            property: 0x11,
            packet: "PUBLISH",
        },
    );
    // Topic Alias in a will.
    let err = connect_first(
        b"\x10\x16\x00\x04MQTT\x05\x06\x00\x00\x00\x00\x00\x03\x23\x00\x01\x00\x01t\x00\x00",
    )
    .unwrap_err();
    assert_eq!(
        err.error,
        DecodeError::PropertyNotAllowed {
            property: 0x23,
            packet: "CONNECT will",
        }
    );
    // Reason String in SUBSCRIBE.
    assert_err(
        V5,
        b"\x82\x0b\x00\x01\x04\x1f\x00\x01r\x00\x01a\x00",
        DecodeError::PropertyNotAllowed {
            property: 0x1f,
            packet: "SUBSCRIBE",
        },
    );
}

#[test]
fn duplicate_property() {
    assert_err(
        V5,
        b"\x30\x0a\x00\x01t\x06\x23\x00\x01\x23\x00\x02",
        DecodeError::DuplicateProperty(0x23),
    );
    // One Subscription Identifier in SUBSCRIBE (PUBLISH may repeat it).
    assert_err(
        V5,
        b"\x82\x0b\x00\x01\x04\x0b\x01\x0b\x02\x00\x01a\x00",
        DecodeError::DuplicateProperty(0x0b),
    );
    assert_eq!(
        DecodeError::DuplicateProperty(1).reason_code(),
        ReasonCode::PROTOCOL_ERROR
    );
}

#[test]
fn invalid_property_value() {
    // Payload Format Indicator 2.
    assert_err(
        V5,
        b"\x30\x06\x00\x01t\x02\x01\x02",
        DecodeError::InvalidPropertyValue {
            property: 0x01,
            value: 2,
        },
    );
    // Topic Alias 0, reported as Topic Alias invalid.
    let err = decode_err(V5, b"\x30\x07\x00\x01t\x03\x23\x00\x00");
    assert_eq!(
        err,
        DecodeError::InvalidPropertyValue {
            property: 0x23,
            value: 0
        }
    );
    assert_eq!(err.reason_code(), ReasonCode::TOPIC_ALIAS_INVALID);
    // Receive Maximum 0 in CONNACK.
    assert_err(
        V5,
        b"\x20\x06\x00\x00\x03\x21\x00\x00",
        DecodeError::InvalidPropertyValue {
            property: 0x21,
            value: 0,
        },
    );
    // Maximum QoS 2 in CONNACK.
    assert_err(
        V5,
        b"\x20\x05\x00\x00\x02\x24\x02",
        DecodeError::InvalidPropertyValue {
            property: 0x24,
            value: 2,
        },
    );
    // Subscription Identifier 0.
    assert_err(
        V5,
        b"\x30\x06\x00\x01t\x02\x0b\x00",
        DecodeError::InvalidPropertyValue {
            property: 0x0b,
            value: 0,
        },
    );
    // Maximum Packet Size 0 in CONNECT.
    let err =
        connect_first(b"\x10\x12\x00\x04MQTT\x05\x02\x00\x00\x05\x27\x00\x00\x00\x00\x00\x00")
            .unwrap_err();
    assert_eq!(
        err.error,
        DecodeError::InvalidPropertyValue {
            property: 0x27,
            value: 0
        }
    );
}

#[test]
fn auth_data_without_method() {
    assert_err(
        V5,
        b"\xf0\x05\x18\x03\x16\x00\x00",
        DecodeError::AuthDataWithoutMethod,
    );
}

// ---------------------------------------------------------------- reason codes

#[test]
fn invalid_reason_code() {
    for (protocol, bytes, packet, code) in [
        (V5, &b"\x40\x03\x00\x01\x01"[..], "PUBACK", 0x01),
        (V5, b"\x62\x03\x00\x01\x10", "PUBREL", 0x10),
        (V5, b"\x20\x03\x00\x10\x00", "CONNACK", 0x10),
        (V3, b"\x20\x02\x00\x06", "CONNACK", 0x06),
        (V3, b"\x90\x03\x00\x01\x03", "SUBACK", 0x03),
        (V5, b"\x90\x04\x00\x01\x00\x03", "SUBACK", 0x03),
        (V5, b"\xb0\x04\x00\x01\x00\x01", "UNSUBACK", 0x01),
        (V5, b"\xe0\x01\x01", "DISCONNECT", 0x01),
        (V5, b"\xf0\x01\x80", "AUTH", 0x80),
    ] {
        assert_err(
            protocol,
            bytes,
            DecodeError::InvalidReasonCode { packet, code },
        );
    }
}

// ---------------------------------------------------------------- labels

#[test]
fn metric_labels_are_distinct() {
    let errors = [
        DecodeError::PacketTooLarge { size: 2, max: 1 },
        DecodeError::MalformedRemainingLength,
        DecodeError::MalformedVarInt,
        DecodeError::InvalidPacketType(0),
        DecodeError::UnsupportedPacket {
            packet: "AUTH",
            protocol: V3,
        },
        DecodeError::InvalidFlags {
            packet: "PUBACK",
            flags: 1,
        },
        DecodeError::InvalidQoS(3),
        DecodeError::Truncated {
            packet: "PUBACK",
            needed: 1,
            available: 0,
        },
        DecodeError::TrailingBytes {
            packet: "PUBACK",
            count: 1,
        },
        DecodeError::InvalidProtocolName,
        DecodeError::InvalidProtocolLevel(3),
        DecodeError::FirstPacketNotConnect { packet: "PUBLISH" },
        DecodeError::InvalidConnectFlags(1),
        DecodeError::InvalidConnAckFlags(2),
        DecodeError::InvalidUtf8,
        DecodeError::NullCharacter,
        DecodeError::ZeroPacketId { packet: "PUBACK" },
        DecodeError::EmptyPayload {
            packet: "SUBSCRIBE",
        },
        DecodeError::InvalidTopicName(TopicError::Empty),
        DecodeError::EmptyTopicWithoutAlias,
        DecodeError::InvalidTopicFilter(TopicError::Empty),
        DecodeError::InvalidSubscriptionOptions(0x40),
        DecodeError::InvalidRetainHandling(3),
        DecodeError::SharedSubscriptionNoLocal,
        DecodeError::UnknownProperty(4),
        DecodeError::PropertyNotAllowed {
            property: 0x11,
            packet: "PUBLISH",
        },
        DecodeError::DuplicateProperty(1),
        DecodeError::InvalidPropertyValue {
            property: 1,
            value: 2,
        },
        DecodeError::AuthDataWithoutMethod,
        DecodeError::InvalidReasonCode {
            packet: "PUBACK",
            code: 1,
        },
    ];
    let mut labels: Vec<_> = errors.iter().map(DecodeError::metric_label).collect();
    labels.sort_unstable();
    labels.dedup();
    assert_eq!(labels.len(), errors.len());
    for e in errors {
        assert!(e.reason_code().is_error(), "{e:?}");
        assert!(!e.to_string().is_empty());
    }
}

// ---------------------------------------------------------------- encode errors

#[track_caller]
fn encode_err(packet: Packet, protocol: Protocol) -> EncodeError {
    let mut out = BytesMut::from(&b"keep"[..]);
    let err = encode(&packet, protocol, &mut out).unwrap_err();
    assert_eq!(&out[..], b"keep", "output touched on error");
    assert_eq!(encoded_len(&packet, protocol), Err(err));
    err
}

fn publish(topic: &str, qos: QoS, packet_id: u16) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        packet_id,
        ..Default::default()
    }
}

#[test]
fn encode_string_too_long() {
    let long = "a".repeat(65_536);
    assert_eq!(
        encode_err(Packet::Publish(publish(&long, QoS::AtMostOnce, 0)), V3),
        EncodeError::StringTooLong(65_536)
    );
    let mut p = publish("t", QoS::AtMostOnce, 0);
    p.properties.user_properties.push(("k".into(), long));
    assert_eq!(
        encode_err(Packet::Publish(p), V5),
        EncodeError::StringTooLong(65_536)
    );
}

#[test]
fn encode_binary_too_long() {
    let connect = Connect {
        username: Some("u".into()),
        password: Some(Bytes::from(vec![0; 70_000])),
        ..Default::default()
    };
    assert_eq!(
        encode_err(Packet::Connect(connect), V3),
        EncodeError::BinaryTooLong(70_000)
    );
}

#[test]
fn encode_remaining_length_too_large() {
    // calloc'ed: costs no real memory until touched, and encode fails before copying.
    let mut p = publish("t", QoS::AtMostOnce, 0);
    p.payload = Bytes::from(vec![0; MAX_REMAINING_LENGTH]);
    assert_eq!(
        encode_err(Packet::Publish(p), V3),
        EncodeError::RemainingLengthTooLarge(MAX_REMAINING_LENGTH + 3)
    );
}

#[test]
fn encode_packet_too_large_for_the_peer() {
    let mut p = publish("t", QoS::AtMostOnce, 0);
    p.payload = Bytes::from_static(b"0123456789");
    let packet = Packet::Publish(p);
    assert_eq!(encoded_len(&packet, V5), Ok(16));
    let mut out = BytesMut::new();
    assert_eq!(
        encode_with_max(&packet, V5, 15, &mut out),
        Err(EncodeError::PacketTooLarge { size: 16, max: 15 })
    );
    assert!(out.is_empty());
    encode_with_max(&packet, V5, 16, &mut out).unwrap();
    assert_eq!(out.len(), 16);
}

#[test]
fn encode_varint_too_large() {
    let mut p = publish("t", QoS::AtMostOnce, 0);
    p.properties.subscription_identifiers.push(268_435_456);
    assert_eq!(
        encode_err(Packet::Publish(p), V5),
        EncodeError::VarIntTooLarge(268_435_456)
    );
}

#[test]
fn encode_packet_ids() {
    assert_eq!(
        encode_err(Packet::Publish(publish("t", QoS::AtLeastOnce, 0)), V5),
        EncodeError::ZeroPacketId { packet: "PUBLISH" }
    );
    assert_eq!(
        encode_err(Packet::PubAck(PubAck::default()), V3),
        EncodeError::ZeroPacketId { packet: "PUBACK" }
    );
    assert_eq!(
        encode_err(
            Packet::Subscribe(Subscribe {
                subscriptions: vec![Subscription::default()],
                ..Default::default()
            }),
            V3
        ),
        EncodeError::ZeroPacketId {
            packet: "SUBSCRIBE"
        }
    );
    assert_eq!(
        encode_err(Packet::Publish(publish("t", QoS::AtMostOnce, 5)), V5),
        EncodeError::PacketIdOnQoS0(5)
    );
}

#[test]
fn encode_dup_on_qos0() {
    let mut p = publish("t", QoS::AtMostOnce, 0);
    p.dup = true;
    assert_eq!(encode_err(Packet::Publish(p), V3), EncodeError::DupOnQoS0);
}

#[test]
fn encode_empty_topic() {
    assert_eq!(
        encode_err(Packet::Publish(publish("", QoS::AtMostOnce, 0)), V5),
        EncodeError::EmptyTopicWithoutAlias
    );
    let mut p = publish("", QoS::AtMostOnce, 0);
    p.properties.topic_alias = Some(1);
    // Fine in 5.0, impossible in 3.1.1.
    assert!(encode(&Packet::Publish(p.clone()), V5, &mut BytesMut::new()).is_ok());
    assert_eq!(
        encode_err(Packet::Publish(p), V3),
        EncodeError::EmptyTopicWithoutAlias
    );
}

#[test]
fn encode_empty_payload() {
    for (packet, name) in [
        (
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                ..Default::default()
            }),
            "SUBSCRIBE",
        ),
        (
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 1,
                ..Default::default()
            }),
            "UNSUBSCRIBE",
        ),
        (
            Packet::SubAck(SubAck {
                packet_id: 1,
                ..Default::default()
            }),
            "SUBACK",
        ),
        (
            Packet::UnsubAck(UnsubAck {
                packet_id: 1,
                ..Default::default()
            }),
            "UNSUBACK",
        ),
    ] {
        assert_eq!(
            encode_err(packet, V5),
            EncodeError::EmptyPayload { packet: name }
        );
    }
}

#[test]
fn encode_password_without_username_in_v311() {
    let connect = Connect {
        password: Some(Bytes::from_static(b"pw")),
        ..Default::default()
    };
    assert_eq!(
        encode_err(Packet::Connect(connect), V3),
        EncodeError::PasswordWithoutUsername
    );
}

#[test]
fn encode_failure_ack_in_v311() {
    let ack = PubAck {
        packet_id: 1,
        reason_code: ReasonCode::NOT_AUTHORIZED,
        ..Default::default()
    };
    assert_eq!(
        encode_err(Packet::PubAck(ack), V3),
        EncodeError::ReasonCodeNotInV311 {
            packet: "PUBACK",
            code: ReasonCode::NOT_AUTHORIZED
        }
    );
    let rel = PubRel {
        packet_id: 1,
        reason_code: ReasonCode::PACKET_IDENTIFIER_NOT_FOUND,
        ..Default::default()
    };
    assert!(matches!(
        encode_err(Packet::PubRel(rel), V3),
        EncodeError::ReasonCodeNotInV311 { .. }
    ));
}

#[test]
fn encode_auth_in_v311() {
    assert_eq!(
        encode_err(Packet::Auth(Auth::default()), V3),
        EncodeError::UnsupportedPacket {
            packet: "AUTH",
            protocol: V3
        }
    );
}
