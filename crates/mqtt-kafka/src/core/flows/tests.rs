//! The session's QoS flows driven by packet sequences, no Kafka and no sockets.

use proptest::prelude::*;
use strait_mqtt_codec::{Connect, PubRec, PubRel, Publish, QoS, ReasonCode};

use super::*;

fn publish(topic: &str, qos: QoS) -> Publish {
    Publish {
        topic: topic.into(),
        qos,
        payload: bytes::Bytes::from_static(b"m"),
        ..Default::default()
    }
}

fn connect(receive_max: Option<u16>, alias_max: Option<u16>, max_packet: Option<u32>) -> Connect {
    let mut connect = Connect {
        client_id: "c".into(),
        ..Default::default()
    };
    connect.properties.receive_maximum = receive_max;
    connect.properties.topic_alias_maximum = alias_max;
    connect.properties.maximum_packet_size = max_packet;
    connect
}

fn rel(packet_id: u16) -> PubRel {
    PubRel {
        packet_id,
        ..Default::default()
    }
}

fn sent<T: std::fmt::Debug>(sent: Sent<T>) -> Publish {
    match sent {
        Sent::Publish { publish, .. } => *publish,
        other => panic!("not sent: {other:?}"),
    }
}

const NONE_RESERVED: fn(u16) -> bool = |_| false;

#[test]
fn qos2_resent_after_a_reconnect_is_acknowledged_not_written_again() {
    // The stored session had written packet id 12 (PUBREC due) before the client reconnected.
    let mut inbound = Inbound::new(Protocol::V5, [12]);
    assert!(
        inbound.is_written(12),
        "the resent PUBLISH 12 is not written again"
    );
    assert!(!inbound.is_written(13));
    // A new QoS 2 PUBLISH 13 is written once; its duplicate before PUBREL is not.
    assert!(
        inbound.written(13),
        "new: the session record must hold it before PUBREC"
    );
    assert!(
        inbound.is_written(13),
        "a duplicate of 13 is acknowledged only"
    );
    assert!(!inbound.written(13));
    assert_eq!(inbound.qos2_received(), [12, 13]);
    // PUBREL releases the id; a second PUBREL for it is answered 0x92 (v5).
    assert_eq!(inbound.release(&rel(12)).reason_code, ReasonCode::SUCCESS);
    assert_eq!(
        inbound.release(&rel(12)).reason_code,
        ReasonCode::PACKET_IDENTIFIER_NOT_FOUND
    );
    // After PUBREL the id is free: the same id is a new message.
    assert!(!inbound.is_written(12));
    assert_eq!(inbound.qos2_received(), [13]);
}

#[test]
fn qos2_release_of_an_unknown_id_is_plain_pubcomp_in_3_1_1() {
    let mut inbound = Inbound::new(Protocol::V311, []);
    assert_eq!(inbound.release(&rel(7)).reason_code, ReasonCode::SUCCESS);
}

#[test]
fn storing_a_written_id_can_be_undone() {
    let mut inbound = Inbound::new(Protocol::V5, []);
    assert!(inbound.written(3));
    inbound.unwritten(3);
    assert!(
        !inbound.is_written(3),
        "not stored: the resend is written again"
    );
}

#[test]
fn topic_aliases_from_the_client() {
    let mut inbound = Inbound::new(Protocol::V5, []);
    let mut first = publish("a/b", QoS::AtMostOnce);
    first.properties.topic_alias = Some(1);
    inbound.resolve_topic(&mut first).unwrap();
    assert_eq!(first.topic, "a/b");
    assert_eq!(
        first.properties.topic_alias, None,
        "resolved aliases are not passed on"
    );

    let mut by_alias = publish("", QoS::AtLeastOnce);
    by_alias.properties.topic_alias = Some(1);
    inbound.resolve_topic(&mut by_alias).unwrap();
    assert_eq!(by_alias.topic, "a/b");

    // Re-pointing an alias.
    let mut moved = publish("c", QoS::AtMostOnce);
    moved.properties.topic_alias = Some(1);
    inbound.resolve_topic(&mut moved).unwrap();
    let mut again = publish("", QoS::AtMostOnce);
    again.properties.topic_alias = Some(1);
    inbound.resolve_topic(&mut again).unwrap();
    assert_eq!(again.topic, "c");

    for (alias, topic, reason) in [
        (0, "x", ReasonCode::TOPIC_ALIAS_INVALID),
        (
            TOPIC_ALIAS_MAXIMUM + 1,
            "x",
            ReasonCode::TOPIC_ALIAS_INVALID,
        ),
        (2, "", ReasonCode::PROTOCOL_ERROR),
    ] {
        let mut bad = publish(topic, QoS::AtMostOnce);
        bad.properties.topic_alias = Some(alias);
        assert_eq!(
            inbound.resolve_topic(&mut bad).unwrap_err().reason,
            reason,
            "{alias}"
        );
    }
    let mut wildcard = publish("a/+", QoS::AtMostOnce);
    assert_eq!(
        inbound.resolve_topic(&mut wildcard).unwrap_err().reason,
        ReasonCode::TOPIC_NAME_INVALID
    );
}

#[test]
fn receive_maximum_bounds_what_is_in_flight() {
    let mut out: Outbound<()> = Outbound::new(Protocol::V5, &connect(Some(2), None, None));
    assert!(out.has_room());
    let first = sent(out.send(
        publish("t", QoS::AtLeastOnce),
        None,
        None,
        None,
        NONE_RESERVED,
    ));
    let _second = sent(out.send(
        publish("t", QoS::ExactlyOnce),
        None,
        None,
        None,
        NONE_RESERVED,
    ));
    assert!(!out.has_room(), "two in flight at Receive Maximum 2");
    // QoS 0 takes no room.
    let zero = sent(out.send(
        publish("t", QoS::AtMostOnce),
        None,
        None,
        None,
        NONE_RESERVED,
    ));
    assert_eq!(zero.packet_id, 0);
    assert!(!out.has_room());
    // A PUBACK for the QoS 2 message changes nothing; the right one frees a slot.
    assert!(out.puback(2).shared.is_none());
    assert!(!out.has_room());
    out.puback(first.packet_id);
    assert!(out.has_room());
}

#[test]
fn packet_ids_skip_those_in_flight_and_reserved_and_wrap() {
    let mut out: Outbound<()> = Outbound::new(Protocol::V5, &connect(None, None, None));
    let a = sent(
        out.send(publish("t", QoS::AtLeastOnce), None, None, None, |id| {
            id == 2
        }),
    );
    let b = sent(
        out.send(publish("t", QoS::AtLeastOnce), None, None, None, |id| {
            id == 2
        }),
    );
    assert_eq!(
        (a.packet_id, b.packet_id),
        (1, 3),
        "2 is held by a QoS 2 resend"
    );
    // A QoS 2 resend keeps its stored id.
    let resend = sent(out.send(
        publish("t", QoS::ExactlyOnce),
        Some((0, 0, 5)),
        Some(2),
        None,
        NONE_RESERVED,
    ));
    assert_eq!(resend.packet_id, 2);
    // Wrap-around after 65535 skips 0 and the ids still in flight.
    out.next_packet_id = u16::MAX;
    let last = sent(out.send(
        publish("t", QoS::AtLeastOnce),
        None,
        None,
        None,
        NONE_RESERVED,
    ));
    let wrapped = sent(out.send(
        publish("t", QoS::AtLeastOnce),
        None,
        None,
        None,
        NONE_RESERVED,
    ));
    assert_eq!((last.packet_id, wrapped.packet_id), (u16::MAX, 4));
}

#[test]
fn outgoing_topic_aliases_up_to_the_clients_maximum() {
    let mut out: Outbound<()> = Outbound::new(Protocol::V5, &connect(None, Some(2), None));
    let mut send = |topic: &str| {
        let p = sent(out.send(
            publish(topic, QoS::AtMostOnce),
            None,
            None,
            None,
            NONE_RESERVED,
        ));
        (p.topic.to_string(), p.properties.topic_alias)
    };
    assert_eq!(send("a"), ("a".into(), Some(1)), "the first sets the alias");
    assert_eq!(
        send("a"),
        (String::new(), Some(1)),
        "later ones send only the alias"
    );
    assert_eq!(send("b"), ("b".into(), Some(2)));
    assert_eq!(send("c"), ("c".into(), None), "no alias left");
    // 3.1.1 has no aliases.
    let mut v3: Outbound<()> = Outbound::new(Protocol::V311, &connect(None, Some(2), None));
    let p = sent(v3.send(
        publish("a", QoS::AtMostOnce),
        None,
        None,
        None,
        NONE_RESERVED,
    ));
    assert_eq!(p.properties.topic_alias, None);
}

#[test]
fn a_message_over_the_clients_packet_limit_counts_as_delivered() {
    let mut out: Outbound<&str> = Outbound::new(Protocol::V5, &connect(None, None, Some(20)));
    let mut big = publish("t", QoS::AtLeastOnce);
    big.payload = bytes::Bytes::from(vec![0; 100]);
    match out.send(big, Some((0, 0, 1)), None, Some("shared"), NONE_RESERVED) {
        Sent::TooLarge(shared) => assert_eq!(shared, Some("shared")),
        other => panic!("{other:?}"),
    }
    assert!(
        out.in_flight().next().is_none(),
        "nothing waits for an acknowledgement"
    );
}

#[test]
fn qos2_delivery_pubrec_pubrel_pubcomp() {
    let mut out: Outbound<&str> = Outbound::new(Protocol::V5, &connect(None, None, None));
    let p = sent(out.send(
        publish("t", QoS::ExactlyOnce),
        Some((0, 1, 40)),
        None,
        Some("record 40"),
        NONE_RESERVED,
    ));
    let rec = out.pubrec(&PubRec {
        packet_id: p.packet_id,
        ..Default::default()
    });
    assert_eq!(
        rec.shared,
        Some("record 40"),
        "the group may commit once PUBREC is in"
    );
    assert_eq!(rec.released, Some((0, 1, 40)));
    assert_eq!(rec.reply.map(|r| r.packet_id), Some(p.packet_id));
    let (_, flow) = out.in_flight().next().unwrap();
    assert!(flow.released);
    // A duplicate PUBREC: PUBREL again, the record is not delivered twice.
    let again = out.pubrec(&PubRec {
        packet_id: p.packet_id,
        ..Default::default()
    });
    assert_eq!(again.shared, None);
    assert!(again.reply.is_some());
    let comp = out.pubcomp(p.packet_id);
    assert!(comp.from_kafka);
    assert!(out.in_flight().next().is_none());
    assert!(
        !out.pubcomp(p.packet_id).from_kafka,
        "a late PUBCOMP changes nothing"
    );
}

#[test]
fn a_refused_qos2_delivery_ends_its_flow() {
    let mut out: Outbound<&str> = Outbound::new(Protocol::V5, &connect(None, None, None));
    let p = sent(out.send(
        publish("t", QoS::ExactlyOnce),
        Some((0, 0, 1)),
        None,
        Some("r"),
        NONE_RESERVED,
    ));
    let refused = out.pubrec(&PubRec {
        packet_id: p.packet_id,
        reason_code: ReasonCode::UNSPECIFIED_ERROR,
        ..Default::default()
    });
    assert_eq!((refused.shared, refused.reply), (Some("r"), None));
    assert!(out.in_flight().next().is_none());
}

#[test]
fn shared_records_of_a_session_that_ends_are_handed_back_and_qos0_ones_count_at_once() {
    let mut out: Outbound<u32> = Outbound::new(Protocol::V5, &connect(None, None, None));
    match out.send(
        publish("t", QoS::AtMostOnce),
        Some((0, 0, 1)),
        None,
        Some(1),
        NONE_RESERVED,
    ) {
        Sent::Publish { delivered, .. } => assert_eq!(delivered, Some(1), "sent is delivered"),
        other => panic!("{other:?}"),
    }
    sent(out.send(
        publish("t", QoS::AtLeastOnce),
        Some((0, 0, 2)),
        None,
        Some(2),
        NONE_RESERVED,
    ));
    sent(out.send(
        publish("t", QoS::AtLeastOnce),
        Some((0, 0, 3)),
        None,
        Some(3),
        NONE_RESERVED,
    ));
    assert_eq!(
        out.puback(1).shared,
        Some(2),
        "acknowledged: the group may commit 2"
    );
    // The session ends with 3 unacknowledged: it goes back to the group for another member.
    let handed_back: Vec<u32> = out
        .in_flight_mut()
        .filter_map(|o| o.shared.take())
        .collect();
    assert_eq!(handed_back, [3]);
}

proptest! {
    /// Whatever order the client acknowledges in (duplicates and unknown ids included), the
    /// messages in flight are exactly those sent and not yet acknowledged, never more than the
    /// Receive Maximum, and no packet id is handed out twice while in flight.
    #[test]
    fn any_interleaving_of_sends_and_acks_keeps_the_window(
        receive_max in 1u16..8,
        steps in proptest::collection::vec((any::<bool>(), any::<prop::sample::Index>()), 1..80),
    ) {
        let mut out: Outbound<u16> =
            Outbound::new(Protocol::V5, &connect(Some(receive_max), None, None));
        let mut open: Vec<u16> = Vec::new();
        for (send, pick) in steps {
            if send && out.has_room() {
                let p = sent(out.send(publish("t", QoS::AtLeastOnce), Some((0, 0, 0)), None, None, NONE_RESERVED));
                prop_assert!(!open.contains(&p.packet_id), "id {} in flight twice", p.packet_id);
                open.push(p.packet_id);
            } else if !open.is_empty() {
                let id = open.remove(pick.index(open.len()));
                prop_assert!(out.puback(id).from_kafka);
                prop_assert!(!out.puback(id).from_kafka, "a duplicate PUBACK changes nothing");
            }
            prop_assert!(open.len() <= usize::from(receive_max));
            let mut in_flight: Vec<u16> = out.in_flight().map(|(id, _)| *id).collect();
            in_flight.sort_unstable();
            let mut expected = open.clone();
            expected.sort_unstable();
            prop_assert_eq!(in_flight, expected);
            prop_assert_eq!(out.has_room(), open.len() < usize::from(receive_max));
        }
    }
}

fn numbered(packet_id: u16, qos: QoS) -> Publish {
    Publish {
        packet_id,
        ..publish("a/b", qos)
    }
}

#[test]
fn an_mqtt5_client_beyond_the_announced_receive_maximum_is_told_0x93() {
    let mut inbound = Inbound::new(Protocol::V5, [7]).with_receive_maximum(3);
    // 7 was written before a reconnect and waits for its PUBREL: it counts.
    inbound.admit(&numbered(1, QoS::AtLeastOnce)).unwrap();
    inbound.admit(&numbered(0, QoS::AtMostOnce)).unwrap();
    inbound.admit(&numbered(2, QoS::ExactlyOnce)).unwrap();
    assert_eq!(inbound.in_flight(), 3);
    // The resend of an id already in flight is not a new one.
    inbound.admit(&numbered(7, QoS::ExactlyOnce)).unwrap();
    let violation = inbound.admit(&numbered(3, QoS::AtLeastOnce)).unwrap_err();
    assert_eq!(violation.reason, ReasonCode::RECEIVE_MAXIMUM_EXCEEDED);
    assert!(violation.detail.contains('3'), "{}", violation.detail);
    // PUBACK for 1 and PUBCOMP for 7 free two places.
    inbound.answered(1);
    inbound.release(&rel(7));
    inbound.admit(&numbered(3, QoS::AtLeastOnce)).unwrap();
    inbound.admit(&numbered(4, QoS::AtLeastOnce)).unwrap();
    assert!(inbound.admit(&numbered(5, QoS::AtLeastOnce)).is_err());
}

#[test]
fn a_311_client_has_no_receive_maximum_to_break() {
    let mut inbound = Inbound::new(Protocol::V311, []).with_receive_maximum(1);
    inbound.admit(&numbered(1, QoS::AtLeastOnce)).unwrap();
    inbound.admit(&numbered(2, QoS::AtLeastOnce)).unwrap();
    assert_eq!(
        inbound.in_flight(),
        2,
        "throttled by the driver, not refused"
    );
}

proptest! {
    /// However acknowledgements interleave, a client that never has more than the Receive
    /// Maximum unanswered is never refused, and the count is exactly what it has unanswered.
    #[test]
    fn a_client_within_its_window_is_never_refused(
        steps in proptest::collection::vec((any::<bool>(), 1u16..20), 1..200),
    ) {
        let max = 5u16;
        let mut inbound = Inbound::new(Protocol::V5, []).with_receive_maximum(max);
        let mut unanswered: std::collections::BTreeSet<u16> = Default::default();
        for (send, id) in steps {
            if send && unanswered.len() < usize::from(max) && !unanswered.contains(&id) {
                prop_assert!(inbound.admit(&numbered(id, QoS::AtLeastOnce)).is_ok());
                unanswered.insert(id);
            } else if let Some(first) = unanswered.iter().next().copied() {
                inbound.answered(first);
                unanswered.remove(&first);
            }
            prop_assert_eq!(inbound.in_flight(), unanswered.len());
        }
    }
}
