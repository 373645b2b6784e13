//! A session's own deliveries as packet sequences: records of one partition arrive live into
//! its bounded queue, overflow, are read back by a catch-up once the queue is drained, are sent
//! within the client's Receive Maximum (delivery pauses while it is closed) and acknowledged;
//! the progress stored for a reconnect never passes a record still owed.

use std::collections::{BTreeSet, VecDeque};

use proptest::prelude::*;
use strait_mqtt_codec::{Connect, Protocol, Publish, QoS};

use super::*;
use crate::core::flows::Sent;
use crate::core::queue::read_back;

const PARTITION: Partition = (0, 0);

/// One session fed from one partition, the way `io::session` drives these types.
struct Session {
    /// The partition: the QoS of the record at each offset. Its length is the dispatcher's
    /// position (every record before it is queued, left out, or handled).
    kafka: Vec<QoS>,
    queue: DeliveryQueue<(i64, QoS)>,
    capacity: usize,
    out: Outbound<()>,
    catch_ups: CatchUps,
    /// The catch-up in progress: offsets it has still to hand on.
    reading: Option<VecDeque<i64>>,
    /// QoS ≥ 1 records that arrived and the client has not acknowledged.
    owed: BTreeSet<i64>,
    /// Packet ids the client may acknowledge → offset.
    got: Vec<(u16, i64)>,
    dropped_qos0: u64,
}

impl Session {
    fn new(capacity: usize, receive_maximum: u16) -> Self {
        let mut connect = Connect::default();
        connect.properties.receive_maximum = Some(receive_maximum);
        Self {
            kafka: Vec::new(),
            queue: DeliveryQueue::default(),
            capacity,
            out: Outbound::new(Protocol::V5, &connect),
            catch_ups: CatchUps::default(),
            reading: None,
            owed: BTreeSet::new(),
            got: Vec::new(),
            dropped_qos0: 0,
        }
    }

    fn position(&self) -> i64 {
        self.kafka.len() as i64
    }

    /// The dispatcher reads a record the session's filter matches.
    fn arrive(&mut self, qos: QoS) {
        let offset = self.position();
        self.kafka.push(qos);
        if qos != QoS::AtMostOnce {
            self.owed.insert(offset);
        }
        let queued = self
            .queue
            .push((offset, qos), qos, PARTITION, offset, self.capacity);
        if !queued && qos == QoS::AtMostOnce {
            self.dropped_qos0 += 1;
        }
    }

    fn send(&mut self, offset: i64, qos: QoS) {
        let publish = Publish {
            topic: "t".into(),
            qos,
            ..Default::default()
        };
        let source = Some((PARTITION.0, PARTITION.1, offset));
        match self.out.send(publish, source, None, None, |_| false) {
            Sent::Publish { publish, .. } if qos != QoS::AtMostOnce => {
                self.got.push((publish.packet_id, offset));
            }
            Sent::Publish { .. } => {}
            Sent::TooLarge(_) => unreachable!("no packet limit"),
        }
    }

    /// One turn of the session loop: the catch-up (while the window is open), or the queue,
    /// then an overflow read back once the queue is drained.
    fn turn(&mut self) {
        if let Some(mut reading) = self.reading.take() {
            while self.out.has_room() {
                let Some(offset) = reading.pop_front() else {
                    self.catch_ups.finished();
                    return;
                };
                self.catch_ups.delivered(PARTITION, offset);
                let qos = self.kafka[offset as usize];
                // A catch-up repeats no QoS 0 record.
                if qos != QoS::AtMostOnce {
                    self.send(offset, qos);
                }
            }
            self.reading = Some(reading);
            return;
        }
        while self.out.has_room() {
            let Some((offset, qos)) = self.queue.items.pop_front() else {
                break;
            };
            if !self.catch_ups.skips_live(PARTITION, offset) {
                self.send(offset, qos);
            }
        }
        if let Some(overflow) = self.queue.take_overflow() {
            let range = read_back(&overflow[&PARTITION], self.position());
            if self.catch_ups.start(PARTITION, range.start, range.end) {
                self.reading = Some(range.collect());
            }
        }
    }

    fn acknowledge(&mut self, index: usize) {
        let (packet_id, offset) = self.got.remove(index);
        // PUBACK, or PUBREC then PUBCOMP.
        if !self.out.puback(packet_id).from_kafka {
            let rec = strait_mqtt_codec::PubRec {
                packet_id,
                ..Default::default()
            };
            assert!(self.out.pubrec(&rec).reply.is_some());
            assert!(self.out.pubcomp(packet_id).from_kafka);
        }
        self.owed.remove(&offset);
    }

    /// The progress a session record would store now.
    fn progress(&self) -> i64 {
        let mut floor = Floor::default();
        floor.hold_queue(&self.queue, |(offset, qos)| {
            owed(*qos, false).then_some((PARTITION, *offset))
        });
        floor.hold_in_flight(&self.out);
        self.catch_ups.hold(&mut floor);
        floor.progress(PARTITION, self.position())
    }
}

#[test]
fn a_full_queue_pauses_delivery_and_reads_back_what_it_left_out_in_order() {
    let mut session = Session::new(2, 1);
    for qos in [
        QoS::AtLeastOnce,
        QoS::AtLeastOnce,
        QoS::AtLeastOnce,
        QoS::AtMostOnce,
    ] {
        session.arrive(qos);
    }
    assert_eq!(
        session.queue.overflow[&PARTITION],
        2..4,
        "2 left out, 3 after it"
    );
    assert_eq!(session.dropped_qos0, 1);
    assert_eq!(session.progress(), 0);
    // The client's window is 1: one PUBLISH, then delivery pauses until it acknowledges.
    session.turn();
    assert_eq!(session.got, [(1, 0)]);
    session.turn();
    assert_eq!(session.got.len(), 1, "paused: nothing more is sent");
    session.acknowledge(0);
    assert_eq!(session.progress(), 1);
    session.turn();
    session.acknowledge(0);
    // The queue is drained: the range left out is read back from Kafka, up to the position.
    session.turn();
    assert_eq!(session.got, [(3, 2)]);
    session.arrive(QoS::AtLeastOnce); // offset 4, live: queued behind the catch-up
    session.acknowledge(0);
    assert_eq!(session.progress(), 3, "the catch-up is at 3");
    session.turn(); // 3 is QoS 0: not repeated; the catch-up ends
    session.turn(); // 4 from the queue
    assert_eq!(session.got, [(4, 4)]);
    assert_eq!(session.progress(), 4);
    session.acknowledge(0);
    assert_eq!(session.progress(), 5);
}

#[test]
fn live_records_a_catch_up_stands_for_are_not_delivered_twice() {
    let mut catch_ups = CatchUps::default();
    assert!(catch_ups.start(PARTITION, 10, 20));
    assert!(catch_ups.skips_live(PARTITION, 19));
    assert!(!catch_ups.skips_live(PARTITION, 20));
    assert!(
        !catch_ups.skips_live((0, 1), 5),
        "other partitions are live"
    );
    assert!(!catch_ups.start((0, 1), 7, 7), "nothing to read");
    let mut floor = Floor::default();
    catch_ups.delivered(PARTITION, 12);
    catch_ups.hold(&mut floor);
    assert_eq!(floor.progress(PARTITION, 30), 13);
    assert_eq!(floor.progress((0, 1), 30), 30);
    catch_ups.finished();
    let mut floor = Floor::default();
    catch_ups.hold(&mut floor);
    assert_eq!(floor.progress(PARTITION, 30), 30);
}

#[derive(Debug, Clone)]
enum Step {
    Arrive(QoS),
    Turn,
    Acknowledge(prop::sample::Index),
}

fn step() -> impl Strategy<Value = Step> {
    let qos = prop_oneof![
        Just(QoS::AtMostOnce),
        Just(QoS::AtLeastOnce),
        Just(QoS::ExactlyOnce),
    ];
    prop_oneof![
        3 => qos.prop_map(Step::Arrive),
        2 => Just(Step::Turn),
        2 => any::<prop::sample::Index>().prop_map(Step::Acknowledge),
    ]
}

proptest! {
    /// For any interleaving of records arriving (overflowing the queue or not), turns of the
    /// session and acknowledgements: the progress never passes a QoS ≥ 1 record the client has
    /// not acknowledged, the client never has more than its Receive Maximum unacknowledged,
    /// and once the client acknowledges everything every QoS ≥ 1 record reached it and the
    /// progress is the position.
    #[test]
    fn the_progress_never_passes_a_record_still_owed_and_nothing_owed_is_lost(
        capacity in 1usize..4,
        receive_maximum in 1u16..4,
        steps in proptest::collection::vec(step(), 1..150),
    ) {
        let mut session = Session::new(capacity, receive_maximum);
        for step in steps {
            match step {
                Step::Arrive(qos) => session.arrive(qos),
                Step::Turn => session.turn(),
                Step::Acknowledge(pick) => if !session.got.is_empty() {
                    let index = pick.index(session.got.len());
                    session.acknowledge(index);
                },
            }
            let progress = session.progress();
            if let Some(first) = session.owed.first() {
                prop_assert!(progress <= *first, "progress {progress} past owed {first}");
            }
            prop_assert!(session.got.len() <= usize::from(receive_maximum));
        }
        for _ in 0..10_000 {
            if session.owed.is_empty() && session.reading.is_none() {
                break;
            }
            session.turn();
            while !session.got.is_empty() {
                session.acknowledge(0);
            }
        }
        prop_assert!(session.owed.is_empty(), "never delivered: {:?}", session.owed);
        prop_assert_eq!(session.progress(), session.position());
    }
}
