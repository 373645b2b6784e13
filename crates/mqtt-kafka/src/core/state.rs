//! The sessions topic record (key = client id): our own versioned format, JSON so it can be read
//! with any Kafka tool. docs/architecture.md describes it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use strait_mqtt_codec::{self as mqtt, QoS};

pub const VERSION: u32 = 1;

/// Sessions-topic key prefix of replica heartbeats (`$strait/replica/<instance>`); MQTT client
/// ids with this prefix are refused.
pub const REPLICA_PREFIX: &str = "$strait/replica/";

/// A replica's heartbeat in the sessions topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub version: u32,
    pub alive_at_ms: i64,
}

impl Heartbeat {
    /// Whether the replica counts as alive at `now_ms`, `lease_ms` after its last heartbeat.
    pub fn alive(&self, now_ms: i64, lease_ms: i64) -> bool {
        // Saturating: the value is whatever was written to the sessions topic.
        self.alive_at_ms.saturating_add(lease_ms) > now_ms
    }
}

/// A session as stored. A null record (tombstone) means no session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionRecord {
    /// Format version; readers refuse versions they do not know.
    pub version: u32,
    /// The s-proxy process that wrote it (its instance id).
    pub owner: String,
    /// Unique id of the connection that wrote it; a newer connection of the same client id takes
    /// the session over.
    pub connection: String,
    /// When that connection was accepted (ms since the epoch): orders connections.
    pub connected_at_ms: i64,
    /// `Some` once the connection ended (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disconnected_at_ms: Option<i64>,
    /// Session expiry interval in seconds (`u32::MAX`: never).
    pub expiry: u32,
    pub subscriptions: Vec<StoredSubscription>,
    /// Per Kafka messages topic and partition, the offset delivery resumes from: every earlier
    /// QoS ≥ 1 record the session's filters match has been acknowledged by the client.
    #[serde(default)]
    pub offsets: BTreeMap<String, BTreeMap<i32, i64>>,
    /// Packet ids of QoS 2 PUBLISHes received and written to Kafka whose PUBREL has not come.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos2_received: Vec<u16>,
    /// The will, published when the connection drops without DISCONNECT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub will: Option<StoredWill>,
    /// QoS 2 deliveries to the client not yet completed (PUBCOMP), stored before the client
    /// sees their PUBLISH or PUBREL: resent with the same packet id after a reconnect.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos2_out: Vec<StoredOutgoing>,
    /// Offsets at or above `offsets` whose QoS 2 delivery was completed or released: never
    /// delivered again.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub qos2_done: BTreeMap<String, BTreeMap<i32, Vec<i64>>>,
    /// QoS 2 PUBLISHes from the client being written to Kafka: where they go and the end offset
    /// before, so a resend after a crash can tell whether the first write arrived.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qos2_pending: Vec<StoredPending>,
}

/// A QoS 2 PUBLISH from the client whose Kafka write is not yet confirmed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredPending {
    pub packet_id: u16,
    pub topic: String,
    pub partition: i32,
    /// End offset of the partition before the write.
    pub from: i64,
}

/// A QoS 2 delivery in flight towards the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredOutgoing {
    pub packet_id: u16,
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    /// The client sent PUBREC (and we PUBREL).
    pub released: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredSubscription {
    pub filter: String,
    pub qos: u8,
    #[serde(default)]
    pub no_local: bool,
    #[serde(default)]
    pub retain_as_published: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscription_id: Option<u32>,
}

impl StoredSubscription {
    pub fn new(sub: &mqtt::Subscription, subscription_id: Option<u32>) -> Self {
        Self {
            filter: sub.filter.clone(),
            qos: sub.options.qos as u8,
            no_local: sub.options.no_local,
            retain_as_published: sub.options.retain_as_published,
            subscription_id,
        }
    }

    pub fn qos(&self) -> QoS {
        QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StoredWill {
    pub topic: String,
    /// Payload, base64-free: bytes as a JSON array would be large, so hex.
    pub payload_hex: String,
    pub qos: u8,
    pub retain: bool,
    #[serde(default)]
    pub delay: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expiry: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_hex: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format_text: Option<bool>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub user_properties: Vec<(String, String)>,
}

impl StoredWill {
    pub fn from_will(will: &mqtt::Will) -> Self {
        let p = &will.properties;
        Self {
            topic: will.topic.clone(),
            payload_hex: hex(&will.payload),
            qos: will.qos as u8,
            retain: will.retain,
            delay: p.will_delay_interval.unwrap_or(0),
            expiry: p.message_expiry_interval,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_hex: p.correlation_data.as_deref().map(hex),
            format_text: p.payload_format_indicator,
            user_properties: p.user_properties.clone(),
        }
    }

    /// The PUBLISH the will becomes.
    pub fn to_publish(&self) -> mqtt::Publish {
        mqtt::Publish {
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            retain: self.retain,
            topic: self.topic.as_str().into(),
            payload: unhex(&self.payload_hex).into(),
            properties: mqtt::PublishProperties {
                payload_format_indicator: self.format_text,
                message_expiry_interval: self.expiry,
                response_topic: self.response_topic.clone(),
                correlation_data: self.correlation_hex.as_deref().map(|c| unhex(c).into()),
                content_type: self.content_type.clone(),
                user_properties: self.user_properties.clone(),
                ..Default::default()
            },
            ..Default::default()
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len() / 2)
        .filter_map(|i| u8::from_str_radix(text.get(2 * i..2 * i + 2)?, 16).ok())
        .collect()
}

impl SessionRecord {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("session records serialize")
    }

    /// `None` for a record of an unknown version or shape (logged by the caller).
    pub fn decode(bytes: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Probe {
            version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if probe.version != VERSION {
            return Err(format!(
                "session record version {} is not {VERSION}",
                probe.version
            ));
        }
        serde_json::from_slice(bytes).map_err(|e| e.to_string())
    }

    /// Whether the session had expired at `now_ms`.
    pub fn expired(&self, now_ms: i64) -> bool {
        match self.disconnected_at_ms {
            None => false,
            Some(_) if self.expiry == u32::MAX => false,
            // Saturating: the record is whatever was written to the sessions topic.
            Some(at) => now_ms >= at.saturating_add(i64::from(self.expiry) * 1000),
        }
    }

    /// Whether this record, written by another connection of the same client, takes over the
    /// connection `connection` (connected at `connected_at_ms`): it is newer (by connect time,
    /// then by connection id, so two replicas agree) and still connected.
    pub fn takes_over(&self, connection: &str, connected_at_ms: i64) -> bool {
        self.newer_than(connection, connected_at_ms) && self.disconnected_at_ms.is_none()
    }

    /// Whether this record was written by a newer connection of the same client than
    /// `connection` (connected at `connected_at_ms`): by connect time, then by connection id.
    pub fn newer_than(&self, connection: &str, connected_at_ms: i64) -> bool {
        self.connection != connection
            && (self.connected_at_ms, self.connection.as_str()) > (connected_at_ms, connection)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_newer_live_connection_takes_the_session_over() {
        let record = |connection: &str, at: i64, disconnected: Option<i64>| SessionRecord {
            version: VERSION,
            owner: "s-proxy-1".into(),
            connection: connection.into(),
            connected_at_ms: at,
            disconnected_at_ms: disconnected,
            expiry: 60,
            subscriptions: Vec::new(),
            offsets: BTreeMap::new(),
            qos2_received: Vec::new(),
            will: None,
            qos2_out: Vec::new(),
            qos2_done: BTreeMap::new(),
            qos2_pending: Vec::new(),
        };
        assert!(record("b-2", 200, None).takes_over("a-1", 100));
        assert!(!record("b-2", 50, None).takes_over("a-1", 100), "older");
        assert!(
            !record("a-1", 200, None).takes_over("a-1", 100),
            "our own record"
        );
        assert!(
            !record("b-2", 200, Some(300)).takes_over("a-1", 100),
            "already gone"
        );
        // Same connect time: the larger connection id wins, on every replica alike.
        assert!(record("b-2", 100, None).takes_over("a-1", 100));
        assert!(!record("a-1", 100, None).takes_over("b-2", 100));
    }

    #[test]
    fn records_round_trip_and_unknown_versions_are_refused() {
        let will = mqtt::Will {
            topic: "w".into(),
            payload: bytes::Bytes::from_static(b"\x00bye"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: mqtt::WillProperties {
                will_delay_interval: Some(5),
                correlation_data: Some(bytes::Bytes::from_static(b"c")),
                ..Default::default()
            },
        };
        let record = SessionRecord {
            version: VERSION,
            owner: "s-proxy-1".into(),
            connection: "c-1".into(),
            connected_at_ms: 10,
            disconnected_at_ms: Some(20),
            expiry: 60,
            subscriptions: vec![StoredSubscription {
                filter: "a/+".into(),
                qos: 1,
                no_local: true,
                retain_as_published: false,
                subscription_id: Some(7),
            }],
            offsets: BTreeMap::from([("m".into(), BTreeMap::from([(0, 5), (1, 9)]))]),
            qos2_received: vec![3],
            will: Some(StoredWill::from_will(&will)),
            qos2_out: vec![StoredOutgoing {
                packet_id: 4,
                topic: "m".into(),
                partition: 1,
                offset: 9,
                released: true,
            }],
            qos2_done: BTreeMap::from([("m".into(), BTreeMap::from([(0, vec![6, 8])]))]),
            qos2_pending: vec![StoredPending {
                packet_id: 5,
                topic: "m".into(),
                partition: 0,
                from: 3,
            }],
        };
        let bytes = record.encode();
        assert_eq!(SessionRecord::decode(&bytes).unwrap(), record);
        let publish = record.will.as_ref().unwrap().to_publish();
        assert_eq!(&publish.payload[..], b"\x00bye");
        assert_eq!(
            publish.properties.correlation_data.as_deref(),
            Some(&b"c"[..])
        );
        assert!(!record.expired(60_019));
        assert!(record.expired(60_020));
        let future = String::from_utf8(bytes)
            .unwrap()
            .replace("\"version\":1", "\"version\":2");
        assert!(SessionRecord::decode(future.as_bytes()).is_err());
    }

    /// Found while writing the session_record fuzz target: a disconnect or heartbeat time near `i64::MAX`
    /// (any client of the sessions topic can write one) overflowed.
    #[test]
    fn times_at_the_end_of_the_range_do_not_overflow() {
        let at_the_end = format!(
            r#"{{"version":1,"owner":"o","connection":"c","connectedAtMs":0,"disconnectedAtMs":{},"expiry":60,"subscriptions":[]}}"#,
            i64::MAX
        );
        let record = SessionRecord::decode(at_the_end.as_bytes()).unwrap();
        assert!(!record.expired(i64::MAX - 1));
        assert!(record.expired(i64::MAX));
        let beat = Heartbeat {
            version: VERSION,
            alive_at_ms: i64::MAX,
        };
        assert!(beat.alive(0, 10_000));
    }
}
