//! QoS 2 from the client across duplicates, reconnects and crashes, as packet sequences against
//! a model of the driver: one Kafka partition (a list of payloads) and the last session record
//! stored (written ids and intents). A crash loses everything but those two.

use proptest::prelude::*;
use strait_mqtt_codec::{Protocol, PubRel, QoS};

use super::*;
use crate::core::flows::Inbound;

/// Where a connection dies while it handles one QoS 2 PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Crash {
    /// After the intent is stored, before the record is produced.
    BeforeTheRecord,
    /// After Kafka has the record, before the written id is stored.
    BetweenTheRecordAndTheState,
    /// After the written id is stored, before PUBREC reaches the client.
    BeforePubRec,
    /// Storing the written id fails: the session ends without PUBREC.
    StoreFails,
}

/// What the client saw.
#[derive(Debug, PartialEq, Eq)]
enum Seen {
    PubRec,
    Nothing,
}

#[derive(Debug, Default, Clone)]
struct Stored {
    qos2_received: Vec<u16>,
    pending: Vec<StoredPending>,
}

/// One connection of a persistent session, the way `io::session` drives the core types.
struct Connection<'a> {
    inbound: Inbound,
    intents: Intents,
    kafka: &'a mut Vec<String>,
    stored: &'a mut Stored,
    persistent: bool,
}

impl<'a> Connection<'a> {
    /// Resumes from the stored session (what a reconnect, a takeover or another replica does).
    fn resume(kafka: &'a mut Vec<String>, stored: &'a mut Stored) -> Self {
        Self {
            inbound: Inbound::new(Protocol::V5, stored.qos2_received.iter().copied()),
            intents: Intents::restore(&stored.pending),
            kafka,
            stored,
            persistent: true,
        }
    }

    fn store(&mut self) {
        *self.stored = Stored {
            qos2_received: self.inbound.qos2_received(),
            pending: self.intents.stored(),
        };
    }

    /// A QoS 2 PUBLISH (`dup` or not, it is handled alike) carrying `payload`.
    fn publish(&mut self, packet_id: u16, payload: &str, crash: Option<Crash>) -> Seen {
        let found = match self.intents.decide(&self.inbound, packet_id) {
            Qos2Publish::Acknowledge => true,
            Qos2Publish::LookFor(intent) => {
                assert_eq!((intent.topic.as_str(), intent.partition), ("m", 0));
                let from = usize::try_from(intent.from).unwrap();
                self.kafka[from..].iter().any(|p| p == payload)
            }
            Qos2Publish::Write => false,
        };
        if !found {
            let from = self.kafka.len() as i64;
            self.intents.intend(
                packet_id,
                Intent {
                    topic: "m".into(),
                    partition: 0,
                    from,
                },
            );
            if self.persistent {
                self.store();
            }
            if crash == Some(Crash::BeforeTheRecord) {
                return Seen::Nothing;
            }
            self.kafka.push(payload.to_string());
        }
        match self
            .intents
            .answered(&mut self.inbound, packet_id, true, self.persistent)
        {
            Qos2Written::PubRec => {}
            Qos2Written::StoreThenPubRec(undo) => match crash {
                Some(Crash::BetweenTheRecordAndTheState) => return Seen::Nothing,
                Some(Crash::StoreFails) => {
                    self.intents.undo(&mut self.inbound, undo);
                    // The session's last record (at its end) keeps the intent.
                    self.store();
                    return Seen::Nothing;
                }
                _ => self.store(),
            },
        }
        if crash == Some(Crash::BeforePubRec) {
            return Seen::Nothing;
        }
        Seen::PubRec
    }

    fn pubrel(&mut self, packet_id: u16) {
        self.inbound.release(&PubRel {
            packet_id,
            ..Default::default()
        });
        self.store();
    }
}

fn written(kafka: &[String], payload: &str) -> usize {
    kafka.iter().filter(|p| *p == payload).count()
}

#[test]
fn a_qos2_publish_resent_after_a_crash_between_records_is_not_written_twice() {
    let (mut kafka, mut stored) = (vec!["other".to_string()], Stored::default());
    let mut first = Connection::resume(&mut kafka, &mut stored);
    let seen = first.publish(7, "hello", Some(Crash::BetweenTheRecordAndTheState));
    assert_eq!(seen, Seen::Nothing);
    assert_eq!(
        stored.pending,
        [StoredPending {
            packet_id: 7,
            topic: "m".into(),
            partition: 0,
            from: 1
        }],
        "the intent survives the crash, the written id does not"
    );
    assert!(stored.qos2_received.is_empty());

    // The client resends (DUP) to the next connection: found from the intent's offset.
    let mut second = Connection::resume(&mut kafka, &mut stored);
    assert!(matches!(
        second.intents.decide(&second.inbound, 7),
        Qos2Publish::LookFor(Intent { from: 1, .. })
    ));
    assert_eq!(second.publish(7, "hello", None), Seen::PubRec);
    assert_eq!(written(&kafka, "hello"), 1);
    assert_eq!(stored.qos2_received, [7], "now stored as written");
    assert!(stored.pending.is_empty(), "the intent is done with");
}

#[test]
fn a_qos2_publish_whose_record_never_reached_kafka_is_written_on_resend() {
    let (mut kafka, mut stored) = (Vec::new(), Stored::default());
    let mut first = Connection::resume(&mut kafka, &mut stored);
    assert_eq!(
        first.publish(3, "a", Some(Crash::BeforeTheRecord)),
        Seen::Nothing
    );
    assert_eq!(written(&kafka, "a"), 0);
    let mut second = Connection::resume(&mut kafka, &mut stored);
    assert_eq!(second.publish(3, "a", None), Seen::PubRec);
    assert_eq!(written(&kafka, "a"), 1, "looked for, not found, written");
}

#[test]
fn a_qos2_publish_resent_after_its_written_id_was_stored_is_acknowledged_from_state() {
    let (mut kafka, mut stored) = (Vec::new(), Stored::default());
    let mut first = Connection::resume(&mut kafka, &mut stored);
    assert_eq!(
        first.publish(9, "x", Some(Crash::BeforePubRec)),
        Seen::Nothing
    );
    let mut second = Connection::resume(&mut kafka, &mut stored);
    assert_eq!(
        second.intents.decide(&second.inbound, 9),
        Qos2Publish::Acknowledge
    );
    assert_eq!(second.publish(9, "x", None), Seen::PubRec);
    // A duplicate on the same connection, before PUBREL: acknowledged again.
    assert_eq!(second.publish(9, "x", None), Seen::PubRec);
    assert_eq!(written(second.kafka, "x"), 1);
    // PUBREL releases the id: the next PUBLISH with it is a new message.
    second.pubrel(9);
    assert_eq!(
        second.intents.decide(&second.inbound, 9),
        Qos2Publish::Write
    );
    assert_eq!(second.publish(9, "y", None), Seen::PubRec);
    assert_eq!((written(&kafka, "x"), written(&kafka, "y")), (1, 1));
}

#[test]
fn a_failed_store_of_the_written_id_keeps_the_intent_for_the_resend() {
    let (mut kafka, mut stored) = (Vec::new(), Stored::default());
    let mut first = Connection::resume(&mut kafka, &mut stored);
    assert_eq!(
        first.publish(4, "m1", Some(Crash::StoreFails)),
        Seen::Nothing
    );
    assert!(
        !first.inbound.is_written(4),
        "not written as far as a resend knows"
    );
    assert_eq!(stored.pending.len(), 1);
    let mut second = Connection::resume(&mut kafka, &mut stored);
    assert_eq!(second.publish(4, "m1", None), Seen::PubRec);
    assert_eq!(written(&kafka, "m1"), 1);
}

#[test]
fn a_refused_write_ends_the_flow_and_frees_the_receive_window() {
    let mut inbound = Inbound::new(Protocol::V5, []).with_receive_maximum(1);
    let mut intents = Intents::default();
    let publish = strait_mqtt_codec::Publish {
        packet_id: 5,
        qos: QoS::ExactlyOnce,
        topic: "a".into(),
        ..Default::default()
    };
    inbound.admit(&publish).unwrap();
    assert_eq!(intents.decide(&inbound, 5), Qos2Publish::Write);
    intents.intend(
        5,
        Intent {
            topic: "m".into(),
            partition: 0,
            from: 0,
        },
    );
    assert_eq!(
        intents.answered(&mut inbound, 5, false, true),
        Qos2Written::PubRec,
        "nothing to store: the PUBREC carries the error"
    );
    assert_eq!(inbound.in_flight(), 0, "no PUBREL follows a refusal");
    assert!(intents.stored().is_empty());
    assert_eq!(intents.decide(&inbound, 5), Qos2Publish::Write);
}

#[test]
fn a_session_without_expiry_stores_nothing_before_pubrec() {
    let mut inbound = Inbound::new(Protocol::V311, []);
    let mut intents = Intents::default();
    assert_eq!(
        intents.answered(&mut inbound, 1, true, false),
        Qos2Written::PubRec
    );
    assert!(
        inbound.is_written(1),
        "a duplicate on this connection is still caught"
    );
    assert_eq!(intents.decide(&inbound, 1), Qos2Publish::Acknowledge);
}

fn crash() -> impl Strategy<Value = Option<Crash>> {
    prop_oneof![
        2 => Just(None),
        1 => Just(Some(Crash::BeforeTheRecord)),
        1 => Just(Some(Crash::BetweenTheRecordAndTheState)),
        1 => Just(Some(Crash::BeforePubRec)),
        1 => Just(Some(Crash::StoreFails)),
    ]
}

proptest! {
    /// For any sequence of attempts at several QoS 2 messages, each attempt possibly ending in
    /// a crash at any point (then the client reconnects and resends with the same packet id),
    /// a message is in Kafka at most once, and exactly once when the client got its PUBREC.
    #[test]
    fn any_sequence_of_crashes_and_resends_writes_a_qos2_message_at_most_once(
        attempts in proptest::collection::vec((0u16..4, crash()), 1..60),
    ) {
        let (mut kafka, mut stored) = (Vec::new(), Stored::default());
        // Per packet id, the message the client is sending (a new one once it got PUBREC and
        // released the id) and how many it finished.
        let mut generation = [0u32; 4];
        let mut connection = Connection::resume(&mut kafka, &mut stored);
        for (id, crash) in attempts {
            let payload = format!("{id}-{}", generation[id as usize]);
            let seen = connection.publish(id, &payload, crash);
            if seen == Seen::PubRec {
                connection.pubrel(id);
                generation[id as usize] += 1;
            }
            prop_assert!(written(connection.kafka, &payload) <= 1, "{payload} written twice");
            if seen == Seen::PubRec {
                prop_assert_eq!(written(connection.kafka, &payload), 1);
            }
            if crash.is_some() {
                // Only the partition and the last stored record survive.
                let (kafka, stored) = (connection.kafka, connection.stored);
                connection = Connection::resume(kafka, stored);
            }
        }
    }
}
