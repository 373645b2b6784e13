//! QoS 2 deliveries to the client over a reconnect, as packet sequences: what the first
//! connection stored, what the resumed one sends.

use strait_mqtt_codec::{Connect, Protocol, PubRec, Publish};

use super::*;
use crate::core::flows::Sent;

fn outbound() -> Outbound<()> {
    Outbound::new(Protocol::V5, &Connect::default())
}

fn qos2(topic: &str) -> Publish {
    Publish {
        topic: topic.into(),
        qos: QoS::ExactlyOnce,
        ..Default::default()
    }
}

fn sent(sent: Sent<()>) -> Publish {
    match sent {
        Sent::Publish { publish, .. } => *publish,
        Sent::TooLarge(_) => panic!("too large"),
    }
}

fn record(qos2_out: Vec<StoredOutgoing>, qos2_done: &[(i32, Vec<i64>)]) -> SessionRecord {
    SessionRecord {
        version: crate::core::state::VERSION,
        owner: "s-proxy-1".into(),
        connection: "a-1".into(),
        connected_at_ms: 0,
        disconnected_at_ms: Some(1),
        expiry: 60,
        subscriptions: Vec::new(),
        offsets: BTreeMap::from([("m".into(), BTreeMap::from([(0, 10), (1, 0)]))]),
        qos2_received: Vec::new(),
        will: None,
        qos2_out,
        qos2_done: BTreeMap::from([("m".into(), qos2_done.iter().cloned().collect())]),
        qos2_pending: Vec::new(),
    }
}

fn stored(packet_id: u16, offset: i64, released: bool) -> StoredOutgoing {
    StoredOutgoing {
        packet_id,
        topic: "m".into(),
        partition: 0,
        offset,
        released,
    }
}

fn index(topic: &str) -> Option<usize> {
    (topic == "m").then_some(0)
}

/// The first connection sends three QoS 2 messages and gets PUBREC for one; the connection
/// drops. Its stored state is what the next connection resumes.
#[test]
fn qos2_deliveries_resume_after_a_reconnect_with_their_packet_ids_and_never_twice() {
    let mut first = outbound();
    let mut qos2_first = Qos2Deliveries::default();
    let mut ids = Vec::new();
    for offset in [10, 11, 12] {
        let source = (0, 0, offset);
        let Redeliver::Send { packet_id, dup } =
            qos2_first.redeliver(source, false, QoS::ExactlyOnce)
        else {
            panic!("a first delivery is sent");
        };
        assert_eq!((packet_id, dup), (None, false));
        let publish = sent(first.send(qos2("t"), Some(source), None, None, |_| false));
        ids.push(publish.packet_id);
    }
    let acked = first.pubrec(&PubRec {
        packet_id: ids[1],
        ..Default::default()
    });
    qos2_first.released(acked.released.expect("offset 11 is released"));
    // What `io::session` stores: the QoS 2 deliveries in flight, released or not.
    let mut qos2_out: Vec<StoredOutgoing> = first
        .in_flight()
        .map(|(id, o)| stored(*id, o.source.unwrap().2, o.released))
        .collect();
    qos2_out.sort_by_key(|o| o.packet_id);
    let done = qos2_first.stored_done(|_| 10);
    assert_eq!(done, BTreeMap::from([((0, 0), vec![11])]));
    let record = record(qos2_out, &[(0, vec![11])]);

    // The next connection: PUBREL again for 11, before anything else.
    let mut second = outbound();
    let (mut qos2_second, pubrels) = Qos2Deliveries::restore(&record, index, &mut second);
    assert_eq!(pubrels, [ids[1]]);
    assert_eq!(second.in_flight().count(), 1, "11 is in flight again");
    // The ids of 10 and 12 are kept for them: a new message never gets one.
    assert!(qos2_second.reserved(ids[0]) && qos2_second.reserved(ids[2]));
    assert!(!qos2_second.reserved(ids[1]), "in flight, not reserved");
    let owed: BTreeSet<i64> = qos2_second.owed().map(|s| s.2).collect();
    assert_eq!(
        owed,
        BTreeSet::from([10, 12]),
        "they hold the progress back"
    );
    // The catch-up reads 10, 11, 12 again: 10 and 12 go with their ids and DUP, 11 not at all.
    assert_eq!(
        qos2_second.redeliver((0, 0, 10), true, QoS::ExactlyOnce),
        Redeliver::Send {
            packet_id: Some(ids[0]),
            dup: true
        }
    );
    assert_eq!(
        qos2_second.redeliver((0, 0, 11), true, QoS::ExactlyOnce),
        Redeliver::Skip
    );
    assert_eq!(
        qos2_second.redeliver((0, 0, 12), true, QoS::ExactlyOnce),
        Redeliver::Send {
            packet_id: Some(ids[2]),
            dup: true
        }
    );
    assert_eq!(qos2_second.owed().count(), 0);
    let resent = sent(second.send(qos2("t"), Some((0, 0, 12)), Some(ids[2]), None, |_| false));
    assert_eq!(resent.packet_id, ids[2]);
    // PUBCOMP for 11 ends its flow.
    assert!(second.pubcomp(ids[1]).from_kafka);
}

#[test]
fn a_subscription_downgraded_to_qos1_resends_without_dup() {
    let record = record(vec![stored(7, 20, false)], &[]);
    let (mut qos2, pubrels) = Qos2Deliveries::restore(&record, index, &mut outbound());
    assert!(pubrels.is_empty());
    assert_eq!(
        qos2.redeliver((0, 0, 20), true, QoS::AtLeastOnce),
        Redeliver::Send {
            packet_id: Some(7),
            dup: false
        }
    );
}

#[test]
fn done_offsets_are_kept_above_the_progress_only() {
    let record = record(
        vec![stored(3, 30, true)],
        &[(0, vec![12, 15]), (1, vec![4])],
    );
    let (mut qos2, _) = Qos2Deliveries::restore(&record, index, &mut outbound());
    let progress = |(_, p): Partition| if p == 0 { 15 } else { 0 };
    assert_eq!(
        qos2.stored_done(progress),
        BTreeMap::from([((0, 0), vec![15, 30]), ((0, 1), vec![4])])
    );
    qos2.prune(|_| 31);
    assert!(
        qos2.stored_done(|_| 0).is_empty(),
        "all covered by the progress"
    );
    // A live record is never skipped: only a catch-up repeats.
    qos2.released((0, 0, 40));
    assert_eq!(
        qos2.redeliver((0, 0, 40), false, QoS::ExactlyOnce),
        Redeliver::Send {
            packet_id: None,
            dup: false
        }
    );
}

#[test]
fn deliveries_of_a_topic_no_longer_served_are_forgotten() {
    let mut gone = stored(9, 5, true);
    gone.topic = "old".into();
    let record = record(vec![gone], &[]);
    let mut out = outbound();
    let (qos2, pubrels) = Qos2Deliveries::restore(&record, index, &mut out);
    assert!(pubrels.is_empty());
    assert_eq!(out.in_flight().count(), 0);
    assert!(!qos2.reserved(9));
}
