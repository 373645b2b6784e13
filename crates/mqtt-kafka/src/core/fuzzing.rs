//! The bodies of the fuzz targets in `crates/mqtt-kafka/fuzz`, here so that plain `cargo test`
//! runs them too (the proptests below feed them arbitrary bytes on stable). Each reads what
//! anyone who can write to the Kafka topics controls, and panics only when a property that must
//! hold is broken.

use bytes::Bytes;
use strait_mqtt_codec::QoS;

use super::headers::{self, Message};
use super::state::{Heartbeat, SessionRecord, StoredSubscription};
use super::subscriptions;

/// A clock around 2026 in ms since the epoch, as the s-proxy reading a record has.
const NOW_MS: i64 = 1_780_000_000_000;

/// Header names records carry, picked by one input byte so the fuzzer need not guess them.
const NAMES: [&str; 11] = [
    headers::FILTER,
    headers::LOCAL,
    headers::QOS,
    headers::EXPIRY,
    headers::CONTENT_TYPE,
    headers::FORMAT,
    headers::REPLY_TO,
    headers::REPLY_KEY,
    headers::REPLY_FILTER,
    headers::CORRELATION_ID,
    headers::RETAIN,
];

/// Reads a fuzz input as fields: bytes and length-prefixed (one byte) byte strings.
pub struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    pub fn new(data: &'a [u8]) -> Self {
        Self(data)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn byte(&mut self) -> u8 {
        let Some((&byte, rest)) = self.0.split_first() else {
            return 0;
        };
        self.0 = rest;
        byte
    }

    pub fn bytes(&mut self) -> &'a [u8] {
        let len = usize::from(self.byte()).min(self.0.len());
        let (taken, rest) = self.0.split_at(len);
        self.0 = rest;
        taken
    }

    pub fn i64(&mut self) -> i64 {
        i64::from_be_bytes(std::array::from_fn(|_| self.byte()))
    }
}

/// A messages-topic record: a flags byte (bit 0: has a key), the key, the payload, the record's
/// timestamp (8 bytes), then headers until the end (a name byte: a known name below 11, else a
/// length-prefixed name; then the value).
///
/// Properties: `headers::decode` reads any record without a panic, and what it reads, written
/// again as s-proxy writes a PUBLISH, reads back the same; a subscriber's PUBLISH is made from it
/// at any record timestamp, with no more expiry left than it had.
pub fn kafka_record(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let key = input.bytes();
    let key = (flags & 1 == 1).then_some(key);
    let payload = Bytes::copy_from_slice(input.bytes());
    let timestamp_ms = input.i64();
    let mut record_headers = Vec::new();
    while !input.is_empty() {
        let selector = usize::from(input.byte());
        let name = match NAMES.get(selector) {
            Some(name) => name,
            None => match std::str::from_utf8(input.bytes()) {
                Ok(name) => name,
                Err(_) => continue,
            },
        };
        record_headers.push((name, input.bytes()));
    }
    let Ok(message) = headers::decode(key, payload, record_headers.iter().copied()) else {
        return;
    };
    message_round_trips(&message);

    let subscription = StoredSubscription {
        filter: "#".into(),
        qos: 2,
        no_local: flags & 2 == 2,
        retain_as_published: flags & 4 == 4,
        subscription_id: None,
    };
    let delivered =
        subscriptions::to_publish("client", &message, timestamp_ms, NOW_MS, &[&subscription]);
    if let Some(publish) = delivered {
        assert_eq!(publish.topic.as_ref(), message.topic);
        assert_eq!(publish.qos, message.qos);
        if let (Some(left), Some(expiry)) =
            (publish.properties.message_expiry_interval, message.expiry)
            && timestamp_ms <= NOW_MS
        {
            assert!(left <= expiry, "{left} s left of {expiry} s");
        }
    }
}

fn message_round_trips(message: &Message) {
    let mut properties = message.properties.clone();
    properties.message_expiry_interval = message.expiry;
    let local = message.local.as_deref().unwrap_or_default();
    let written = headers::encode(
        &message.topic,
        message.qos,
        message.retain,
        &properties,
        local,
        "mqtt-messages",
    );
    let again = headers::decode(
        Some(message.topic.as_bytes()),
        message.payload.clone(),
        written.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
    )
    .expect("a written record reads back");
    let expected = Message {
        local: Some(local.to_string()),
        ..message.clone()
    };
    assert_eq!(again, expected);
    assert!(matches!(
        message.qos,
        QoS::AtMostOnce | QoS::AtLeastOnce | QoS::ExactlyOnce
    ));
}

/// A sessions-topic record value (a session as JSON, or a replica heartbeat).
///
/// Properties: decoding never panics; a decoded session encodes and decodes to itself; its
/// expiry, takeover and will are evaluated without a panic at any time; a heartbeat's lease is
/// checked without a panic.
pub fn session_record(data: &[u8]) {
    if let Ok(beat) = serde_json::from_slice::<Heartbeat>(data) {
        beat.alive(NOW_MS, 10_000);
    }
    let Ok(record) = SessionRecord::decode(data) else {
        return;
    };
    assert_eq!(SessionRecord::decode(&record.encode()), Ok(record.clone()));
    for now_ms in [i64::MIN, 0, NOW_MS, i64::MAX] {
        record.expired(now_ms);
    }
    assert!(!record.takes_over(&record.connection, record.connected_at_ms));
    for subscription in &record.subscriptions {
        subscription.qos();
    }
    if let Some(will) = &record.will {
        let publish = will.to_publish();
        assert_eq!(publish.topic.as_ref(), will.topic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A session record with every field, as s-proxy writes it (also the fuzz corpus's seed).
    pub const SESSION_SEED: &str = r#"{"version":1,"owner":"s-proxy-0","connection":"c1","connectedAtMs":1780000000000,"disconnectedAtMs":1780000001000,"expiry":60,"subscriptions":[{"filter":"a/+/#","qos":1,"noLocal":true,"retainAsPublished":true,"subscriptionId":7}],"offsets":{"mqtt-messages":{"0":12,"1":3}},"qos2Received":[5],"will":{"topic":"w","payloadHex":"00ff","qos":1,"retain":true,"delay":5,"expiry":30,"contentType":"t","responseTopic":"r","correlationHex":"01","formatText":true,"userProperties":[["k","v"]]},"qos2Out":[{"packetId":3,"topic":"mqtt-messages","partition":0,"offset":9,"released":false}],"qos2Done":{"mqtt-messages":{"0":[10]}},"qos2Pending":[{"packetId":4,"topic":"mqtt-messages","partition":1,"from":2}]}"#;

    #[test]
    fn the_seed_is_a_session() {
        assert!(SessionRecord::decode(SESSION_SEED.as_bytes()).is_ok());
        session_record(SESSION_SEED.as_bytes());
    }

    /// Found while writing this target: a record's timestamp far in the past (a producer may
    /// write any) overflowed the expiry arithmetic (a panic with overflow checks on).
    #[test]
    fn a_record_at_any_timestamp_is_read() {
        let mut data = vec![1, 1, b'a', 0];
        data.extend(i64::MIN.to_be_bytes());
        data.extend([3, 4, 0, 0, 0, 1]);
        kafka_record(&data);
    }

    proptest! {
        #[test]
        fn kafka_record_holds_for_any_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            kafka_record(&data);
        }

        #[test]
        fn session_record_holds_for_any_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            session_record(&data);
        }

        /// The seed with one byte replaced, so the JSON mostly parses.
        #[test]
        fn session_record_holds_for_mutated_records(at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut data = SESSION_SEED.as_bytes().to_vec();
            let at = at.index(data.len());
            data[at] = byte;
            session_record(&data);
        }
    }
}
