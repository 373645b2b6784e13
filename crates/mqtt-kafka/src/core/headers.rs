//! Zilla's mqtt-kafka record layout (shared/reference/zilla-wire.md §1.2), as plain functions:
//! a PUBLISH becomes a record key (the MQTT topic name) and headers, and a record read back
//! becomes the PUBLISH a subscriber gets. A Zilla user keeps their topics and consumers.

use bytes::Bytes;
use strait_mqtt_codec::topic::{TopicError, validate_name};
use strait_mqtt_codec::{PublishProperties, QoS};

pub const FILTER: &str = "zilla:filter";
pub const LOCAL: &str = "zilla:local";
pub const QOS: &str = "zilla:qos";
pub const EXPIRY: &str = "zilla:expiry";
pub const CONTENT_TYPE: &str = "zilla:content-type";
pub const FORMAT: &str = "zilla:format";
pub const REPLY_TO: &str = "zilla:reply-to";
pub const REPLY_KEY: &str = "zilla:reply-key";
pub const REPLY_FILTER: &str = "zilla:reply-filter";
pub const CORRELATION_ID: &str = "zilla:correlation-id";
/// Strait's own: `1` on a record whose PUBLISH had RETAIN set, so live deliveries can honour
/// Retain As Published (Zilla's layout has no such flag). Absent otherwise. Not a `zilla:`
/// header: Zilla and plain consumers see one more header (user properties are plain headers in
/// Zilla's layout, so a Zilla subscriber may get it as a user property).
pub const RETAIN: &str = "strait:retain";

/// Record headers, in order; names may repeat.
pub type Headers = Vec<(String, Vec<u8>)>;

/// The headers of the record a PUBLISH becomes. `client_id` is the publisher (for No Local);
/// `messages_topic` is the Kafka topic the record goes to (`zilla:reply-to` names it when the
/// message has a response topic); `retain` is the PUBLISH's RETAIN flag.
pub fn encode(
    topic: &str,
    qos: QoS,
    retain: bool,
    properties: &PublishProperties,
    client_id: &str,
    messages_topic: &str,
) -> Headers {
    let mut headers = Vec::with_capacity(4 + properties.user_properties.len());
    for level in topic.split('/') {
        headers.push((FILTER.to_string(), level.as_bytes().to_vec()));
    }
    headers.push((LOCAL.to_string(), client_id.as_bytes().to_vec()));
    if let Some(expiry) = properties.message_expiry_interval {
        // Seconds as received, 4 bytes big-endian (Zilla writes an int32).
        headers.push((EXPIRY.to_string(), (expiry as i32).to_be_bytes().to_vec()));
    }
    if let Some(content_type) = &properties.content_type {
        headers.push((CONTENT_TYPE.to_string(), content_type.as_bytes().to_vec()));
    }
    if let Some(text) = properties.payload_format_indicator {
        let format: &[u8] = if text { b"TEXT" } else { b"BINARY" };
        headers.push((FORMAT.to_string(), format.to_vec()));
    }
    if let Some(response_topic) = &properties.response_topic {
        headers.push((REPLY_TO.to_string(), messages_topic.as_bytes().to_vec()));
        headers.push((REPLY_KEY.to_string(), response_topic.as_bytes().to_vec()));
        for level in response_topic.split('/') {
            headers.push((REPLY_FILTER.to_string(), level.as_bytes().to_vec()));
        }
    }
    if let Some(correlation) = &properties.correlation_data {
        headers.push((CORRELATION_ID.to_string(), correlation.to_vec()));
    }
    headers.push((QOS.to_string(), vec![b'0' + qos as u8]));
    if retain {
        headers.push((RETAIN.to_string(), b"1".to_vec()));
    }
    for (name, value) in &properties.user_properties {
        headers.push((name.clone(), value.as_bytes().to_vec()));
    }
    headers
}

/// A record of a messages or retained topic, read back as the message subscribers get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// MQTT topic name (the record key, or the `zilla:filter` levels when there is no key).
    pub topic: String,
    pub payload: Bytes,
    /// The publisher's QoS (`zilla:qos`; 0 when absent, as for records from plain producers).
    pub qos: QoS,
    /// The publisher's client id (`zilla:local`).
    pub local: Option<String>,
    /// The PUBLISH had RETAIN set (`strait:retain`; false for records of other producers).
    pub retain: bool,
    /// Message expiry interval in seconds, as published.
    pub expiry: Option<u32>,
    /// Properties for the subscriber; `message_expiry_interval` is filled in at delivery.
    pub properties: PublishProperties,
}

/// Why a record cannot be delivered over MQTT: it is skipped (and counted), never sent, since
/// a PUBLISH with such a topic would make the subscriber's r-proxy drop the connection, and a
/// persistent session would get it again on each reconnect.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record has neither a key nor zilla:filter headers")]
    NoTopic,
    #[error("record key is not UTF-8")]
    KeyNotUtf8,
    #[error("record topic is not an MQTT topic name: {0}")]
    InvalidTopic(TopicError),
}

impl RecordError {
    /// A fixed label value for the metric of skipped records.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::NoTopic => "no_topic",
            Self::KeyNotUtf8 => "key_not_utf8",
            Self::InvalidTopic(TopicError::TooLong) => "topic_too_long",
            Self::InvalidTopic(TopicError::NullCharacter) => "topic_null_character",
            Self::InvalidTopic(TopicError::WildcardInName) => "topic_wildcard",
            Self::InvalidTopic(_) => "topic_invalid",
        }
    }

    /// Every value [`Self::reason`] gives, for metrics that exist from the start.
    pub const REASONS: [&'static str; 6] = [
        "no_topic",
        "key_not_utf8",
        "topic_too_long",
        "topic_null_character",
        "topic_wildcard",
        "topic_invalid",
    ];
}

/// Reads a record: `key` and `headers` as stored. Known `zilla:*` headers become MQTT v5
/// properties, other headers user properties (in order); headers whose value is not UTF-8 are
/// skipped where MQTT needs a string. The topic (the key, or the `zilla:filter` levels when the
/// key is absent or empty) must be a valid MQTT topic name.
pub fn decode<'a>(
    key: Option<&[u8]>,
    payload: Bytes,
    headers: impl IntoIterator<Item = (&'a str, &'a [u8])>,
) -> Result<Message, RecordError> {
    let mut levels: Vec<&str> = Vec::new();
    let mut message = Message {
        topic: String::new(),
        payload,
        qos: QoS::AtMostOnce,
        local: None,
        retain: false,
        expiry: None,
        properties: PublishProperties::default(),
    };
    let text = |value: &[u8]| std::str::from_utf8(value).ok().map(str::to_string);
    for (name, value) in headers {
        match name {
            FILTER => {
                if let Ok(level) = std::str::from_utf8(value) {
                    levels.push(level);
                }
            }
            LOCAL => message.local = text(value),
            QOS => {
                message.qos = match value {
                    b"1" => QoS::AtLeastOnce,
                    b"2" => QoS::ExactlyOnce,
                    _ => QoS::AtMostOnce,
                }
            }
            EXPIRY => {
                if let Ok(bytes) = <[u8; 4]>::try_from(value) {
                    let seconds = i32::from_be_bytes(bytes);
                    message.expiry = u32::try_from(seconds).ok();
                }
            }
            CONTENT_TYPE => message.properties.content_type = text(value),
            FORMAT => {
                message.properties.payload_format_indicator = match value {
                    b"TEXT" => Some(true),
                    b"BINARY" => Some(false),
                    _ => None,
                }
            }
            REPLY_KEY => message.properties.response_topic = text(value),
            CORRELATION_ID => {
                message.properties.correlation_data = Some(Bytes::copy_from_slice(value))
            }
            RETAIN => message.retain = value == b"1",
            REPLY_TO | REPLY_FILTER => {}
            other => {
                if let Some(value) = text(value) {
                    message
                        .properties
                        .user_properties
                        .push((other.to_string(), value));
                }
            }
        }
    }
    message.topic = match key.map(std::str::from_utf8) {
        Some(Err(_)) => return Err(RecordError::KeyNotUtf8),
        Some(Ok(key)) if !key.is_empty() => key.to_string(),
        _ if !levels.is_empty() => levels.join("/"),
        _ => return Err(RecordError::NoTopic),
    };
    validate_name(&message.topic).map_err(RecordError::InvalidTopic)?;
    Ok(message)
}

/// The expiry interval left for a message stored at `timestamp_ms` with `expiry` seconds, at
/// `now_ms`: `None` when it has expired, `Some(None)` when it never expires. Seconds are
/// compared as milliseconds (Zilla adds seconds to a millisecond timestamp).
pub fn remaining_expiry(
    expiry: Option<u32>,
    timestamp_ms: i64,
    now_ms: i64,
) -> Option<Option<u32>> {
    let Some(expiry) = expiry else {
        return Some(None);
    };
    // Saturating: a producer may give a record any timestamp.
    let deadline = timestamp_ms.saturating_add(i64::from(expiry) * 1000);
    let left_ms = deadline.saturating_sub(now_ms);
    if left_ms <= 0 {
        return None;
    }
    // Round up: a message with 300 ms left still has "1 second" to live.
    Some(Some(
        u32::try_from((left_ms - 1) / 1000 + 1).unwrap_or(expiry),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn h(name: &str, value: &[u8]) -> (String, Vec<u8>) {
        (name.to_string(), value.to_vec())
    }

    #[test]
    fn a_plain_qos0_publish_has_filter_local_and_qos() {
        let headers = encode(
            "sensor/one",
            QoS::AtMostOnce,
            false,
            &PublishProperties::default(),
            "client",
            "mqtt-messages",
        );
        assert_eq!(
            headers,
            [
                h(FILTER, b"sensor"),
                h(FILTER, b"one"),
                h(LOCAL, b"client"),
                h(QOS, b"0")
            ]
        );
    }

    #[test]
    fn a_leading_slash_is_an_empty_first_level() {
        let headers = encode("/a", QoS::AtLeastOnce, false, &Default::default(), "c", "m");
        assert_eq!(headers[..2], [h(FILTER, b""), h(FILTER, b"a")]);
    }

    #[test]
    fn every_v5_property_has_its_zilla_header() {
        let properties = PublishProperties {
            payload_format_indicator: Some(true),
            message_expiry_interval: Some(15),
            response_topic: Some("reply/x".into()),
            correlation_data: Some(Bytes::from_static(b"\x00\x01")),
            content_type: Some("application/json".into()),
            user_properties: vec![("row".into(), "1".into()), ("row".into(), "2".into())],
            ..Default::default()
        };
        let headers = encode(
            "a",
            QoS::ExactlyOnce,
            true,
            &properties,
            "c",
            "mqtt-messages",
        );
        assert_eq!(
            headers,
            [
                h(FILTER, b"a"),
                h(LOCAL, b"c"),
                h(EXPIRY, &[0, 0, 0, 15]),
                h(CONTENT_TYPE, b"application/json"),
                h(FORMAT, b"TEXT"),
                h(REPLY_TO, b"mqtt-messages"),
                h(REPLY_KEY, b"reply/x"),
                h(REPLY_FILTER, b"reply"),
                h(REPLY_FILTER, b"x"),
                h(CORRELATION_ID, b"\x00\x01"),
                h(QOS, b"2"),
                h(RETAIN, b"1"),
                h("row", b"1"),
                h("row", b"2"),
            ]
        );
    }

    #[test]
    fn a_record_from_a_plain_producer_uses_its_key_and_defaults() {
        let message = decode(Some(b"a/b"), Bytes::from_static(b"x"), []).unwrap();
        assert_eq!(message.topic, "a/b");
        assert_eq!(message.qos, QoS::AtMostOnce);
        assert_eq!(message.local, None);
    }

    #[test]
    fn without_a_key_the_filter_levels_name_the_topic() {
        let headers = [(FILTER, &b"a"[..]), (FILTER, b"b")];
        let message = decode(None, Bytes::new(), headers).unwrap();
        assert_eq!(message.topic, "a/b");
        assert_eq!(decode(None, Bytes::new(), []), Err(RecordError::NoTopic));
    }

    #[test]
    fn a_record_whose_topic_cannot_be_an_mqtt_topic_name_is_refused_with_its_reason() {
        let refused = |key: Option<&[u8]>, filters: &[&[u8]]| {
            let headers = filters.iter().map(|level| (FILTER, *level));
            decode(key, Bytes::new(), headers).unwrap_err()
        };
        let long = vec![b'a'; 65_536];
        let cases = [
            (refused(Some(&long), &[]), "topic_too_long"),
            (refused(Some(b"\xff\xfe"), &[b"a"]), "key_not_utf8"),
            (refused(Some(b"a/+/b"), &[]), "topic_wildcard"),
            (refused(Some(b"a/#"), &[]), "topic_wildcard"),
            (refused(Some(b"a\0b"), &[]), "topic_null_character"),
            (refused(Some(b""), &[]), "no_topic"),
            (refused(None, &[b"a", b"#"]), "topic_wildcard"),
        ];
        for (error, reason) in cases {
            assert_eq!(error.reason(), reason, "{error}");
            assert!(RecordError::REASONS.contains(&reason));
        }
        // The longest topic name MQTT can carry is still delivered.
        let longest = vec![b'a'; 65_535];
        assert!(decode(Some(&longest), Bytes::new(), []).is_ok());
    }

    #[test]
    fn expiry_counts_from_the_record_timestamp_in_milliseconds() {
        assert_eq!(remaining_expiry(None, 0, 10_000_000), Some(None));
        assert_eq!(remaining_expiry(Some(10), 1_000, 1_000), Some(Some(10)));
        assert_eq!(remaining_expiry(Some(10), 1_000, 4_500), Some(Some(7)));
        assert_eq!(remaining_expiry(Some(10), 1_000, 11_000), None);
        // Found with the kafka_record fuzz target's body: both used to overflow.
        assert_eq!(remaining_expiry(Some(10), i64::MIN, 1_000), None);
        assert_eq!(remaining_expiry(Some(10), 0, i64::MIN), Some(Some(10)));
    }

    fn level() -> impl Strategy<Value = String> {
        "[a-z0-9 ]{0,6}"
    }

    fn topic() -> impl Strategy<Value = String> {
        prop::collection::vec(level(), 1..5)
            .prop_map(|l| l.join("/"))
            .prop_filter("an MQTT topic name is not empty", |t| !t.is_empty())
    }

    proptest! {
        #[test]
        fn publish_round_trips_through_the_record(
            topic in topic(),
            qos in 0u8..3,
            retain in any::<bool>(),
            expiry in prop::option::of(0u32..1_000_000),
            content_type in prop::option::of("[a-z/]{0,12}"),
            format in prop::option::of(any::<bool>()),
            response in prop::option::of(topic()),
            correlation in prop::option::of(prop::collection::vec(any::<u8>(), 0..8)),
            user in prop::collection::vec(("[a-y][a-z]{0,5}", "[ -~]{0,8}"), 0..4),
            client in "[a-z0-9]{1,8}",
            payload in prop::collection::vec(any::<u8>(), 0..32),
        ) {
            let qos = QoS::from_u8(qos).unwrap();
            let properties = PublishProperties {
                payload_format_indicator: format,
                message_expiry_interval: expiry,
                response_topic: response,
                correlation_data: correlation.map(Bytes::from),
                content_type,
                user_properties: user,
                ..Default::default()
            };
            let headers = encode(&topic, qos, retain, &properties, &client, "mqtt-messages");
            let message = decode(
                Some(topic.as_bytes()),
                Bytes::from(payload.clone()),
                headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            )
            .unwrap();
            prop_assert_eq!(&message.topic, &topic);
            prop_assert_eq!(&message.payload[..], &payload[..]);
            prop_assert_eq!(message.qos, qos);
            prop_assert_eq!(message.retain, retain);
            prop_assert_eq!(message.local.as_deref(), Some(client.as_str()));
            prop_assert_eq!(message.expiry, expiry);
            let mut expected = properties;
            expected.message_expiry_interval = None;
            prop_assert_eq!(message.properties, expected);
        }
    }
}
