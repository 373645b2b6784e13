//! A shared subscription's group on one replica as packet sequences: records read from one
//! partition, handed to members in turn through their bounded queues, sent as PUBLISHes within
//! each client's window, acknowledged or not, and handed back when a member leaves.

use std::collections::{BTreeSet, HashMap};

use proptest::prelude::*;
use strait_mqtt_codec::{Connect, Protocol, PubRec, Publish, QoS};

use super::*;
use crate::core::flows::{Outbound, Sent};
use crate::core::members::Members;
use crate::core::queue::DeliveryQueue;

const PARTITION: Partition = (0, 0);

/// A record of the partition: its offset and QoS.
type Record = (i64, QoS);

/// One member session: its queue (the inbox) and what it sent its client.
struct Member {
    queue: DeliveryQueue<Record>,
    out: Outbound<Record>,
    /// PUBLISHes the client got: packet id → offset.
    got: HashMap<u16, i64>,
}

impl Member {
    fn new(receive_maximum: u16) -> Self {
        let mut connect = Connect::default();
        connect.properties.receive_maximum = Some(receive_maximum);
        Self {
            queue: DeliveryQueue::default(),
            out: Outbound::new(Protocol::V5, &connect),
            got: HashMap::new(),
        }
    }
}

/// The group on this replica, the way `io::shared` and `io::session` drive these types.
struct Group {
    members: Members,
    sessions: HashMap<u64, Member>,
    progress: GroupProgress<Record>,
    queue_capacity: usize,
    receive_maximum: u16,
    next_id: u64,
    next_offset: i64,
    /// A QoS ≥ 1 record every member refused: the group reads nothing until it is taken.
    waiting: Option<Record>,
    /// Every time a record counted as delivered (offset), to check none counts twice.
    delivered: Vec<i64>,
}

impl Group {
    fn new(queue_capacity: usize, receive_maximum: u16) -> Self {
        Self {
            members: Members::default(),
            sessions: HashMap::new(),
            progress: GroupProgress::default(),
            queue_capacity,
            receive_maximum,
            next_id: 1,
            next_offset: 100,
            waiting: None,
            delivered: Vec::new(),
        }
    }

    fn join(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.members.join(id);
        self.sessions.insert(id, Member::new(self.receive_maximum));
        id
    }

    fn done(&mut self, offset: i64) {
        self.progress.done(PARTITION, offset);
        self.delivered.push(offset);
    }

    /// Offers `record` to the members; `false` when it must wait.
    fn hand_out(&mut self, record: Record) -> bool {
        let (sessions, capacity) = (&mut self.sessions, self.queue_capacity);
        let taken = self.members.hand_out(|id| {
            let member = sessions.get_mut(&id).expect("a member has a session");
            member.queue.try_push(record, capacity)
        });
        if taken.is_some() {
            return true;
        }
        match when_all_full(record.1) {
            AllFull::Drop => {
                self.done(record.0);
                true
            }
            AllFull::Wait => false,
        }
    }

    /// What the group consumer does on each turn: returned records first, then the one
    /// waiting, then a new one from Kafka (`None`: a record for another filter).
    fn poll(&mut self, next: Option<QoS>) {
        for record in self.progress.take_returned() {
            if !self.hand_out(record) {
                // In `io::shared` the consumer blocks until a member has room.
                self.progress.give_back(record);
            }
        }
        if let Some(record) = self.waiting.take()
            && !self.hand_out(record)
        {
            self.waiting = Some(record);
            return;
        }
        let offset = self.next_offset;
        self.next_offset += 1;
        self.progress.read(PARTITION, offset, next.is_some());
        if let Some(qos) = next
            && !self.hand_out((offset, qos))
        {
            self.waiting = Some((offset, qos));
        }
    }

    /// Member `id` sends what its queue holds while its client's window has room.
    fn drain(&mut self, id: u64) {
        let member = self.sessions.get_mut(&id).unwrap();
        let mut sent_qos0 = Vec::new();
        while member.out.has_room() {
            let Some(record) = member.queue.items.pop_front() else {
                break;
            };
            let publish = Publish {
                topic: "t".into(),
                qos: record.1,
                ..Default::default()
            };
            match member
                .out
                .send(publish, None, None, Some(record), |_| false)
            {
                Sent::Publish { publish, delivered } => {
                    if let Some((offset, _)) = delivered {
                        sent_qos0.push(offset);
                    } else {
                        member.got.insert(publish.packet_id, record.0);
                    }
                }
                Sent::TooLarge(_) => unreachable!("no packet limit"),
            }
        }
        for offset in sent_qos0 {
            self.done(offset);
        }
    }

    /// The client of member `id` acknowledges packet `packet_id` (PUBACK or PUBREC).
    fn acknowledge(&mut self, id: u64, packet_id: u16) {
        let member = self.sessions.get_mut(&id).unwrap();
        member.got.remove(&packet_id);
        let mut acked = member.out.puback(packet_id);
        if acked.shared.is_none() {
            let rec = PubRec {
                packet_id,
                ..Default::default()
            };
            acked = member.out.pubrec(&rec);
            member.out.pubcomp(packet_id);
        }
        if let Some((offset, _)) = acked.shared {
            self.done(offset);
        }
    }

    /// Member `id`'s session ends: what it had not delivered goes back to the group.
    fn leave(&mut self, id: u64) {
        self.members.leave(id);
        let mut member = self.sessions.remove(&id).unwrap();
        for record in member.out.take_shared() {
            self.progress.give_back(record);
        }
        for record in member.queue.items.drain(..) {
            self.progress.give_back(record);
        }
    }

    /// Offsets handed out for delivery and not delivered yet.
    fn undelivered(&self, read_for_delivery: &BTreeSet<i64>) -> Option<i64> {
        read_for_delivery
            .iter()
            .find(|offset| !self.delivered.contains(offset))
            .copied()
    }
}

#[test]
fn records_a_member_leaves_unacknowledged_are_redelivered_by_another_member() {
    let mut group = Group::new(4, 2);
    let (a, b) = (group.join(), group.join());
    // Four QoS 1 records: turns give a 100 and 102, b 101 and 103.
    for _ in 0..4 {
        group.poll(Some(QoS::AtLeastOnce));
    }
    group.drain(a);
    group.drain(b);
    assert_eq!(group.sessions[&a].got.len(), 2);
    // b's client acknowledges both; a's client acknowledges nothing and goes away.
    let b_ids: Vec<u16> = group.sessions[&b].got.keys().copied().collect();
    for id in b_ids {
        group.acknowledge(b, id);
    }
    assert_eq!(
        group.progress.position(PARTITION),
        Some(100),
        "100 is still out with a: no commit past it"
    );
    group.leave(a);
    assert_eq!(group.progress.position(PARTITION), Some(100));
    // The group hands a's records to b before reading anything new.
    group.poll(None);
    group.drain(b);
    let mut redelivered: Vec<i64> = group.sessions[&b].got.values().copied().collect();
    redelivered.sort_unstable();
    assert_eq!(redelivered, [100, 102]);
    let b_ids: Vec<u16> = group.sessions[&b].got.keys().copied().collect();
    for id in b_ids {
        group.acknowledge(b, id);
    }
    assert_eq!(
        group.progress.committable(),
        [(PARTITION, 105)],
        "all delivered, and 104 was for no one"
    );
}

#[test]
fn a_full_group_pauses_qos1_and_drops_qos0() {
    let mut group = Group::new(1, 1);
    let a = group.join();
    group.poll(Some(QoS::AtLeastOnce)); // 100: queued
    group.poll(Some(QoS::AtMostOnce)); // 101: the queue is full, dropped
    assert_eq!(group.delivered, [101], "dropped counts as delivered");
    group.poll(Some(QoS::ExactlyOnce)); // 102: waits
    assert_eq!(group.waiting, Some((102, QoS::ExactlyOnce)));
    group.poll(Some(QoS::AtLeastOnce));
    assert_eq!(
        group.next_offset, 103,
        "nothing more is read while 102 waits"
    );
    group.drain(a);
    group.poll(None); // 102 taken; 103 read for no one
    assert_eq!(group.waiting, None);
    assert_eq!(group.progress.position(PARTITION), Some(100));
    group.acknowledge(a, 1);
    group.drain(a);
    // A QoS 2 record is delivered at PUBREC: the group may commit past it before PUBCOMP.
    group.acknowledge(a, 2);
    assert_eq!(group.progress.position(PARTITION), Some(104));
}

#[derive(Debug, Clone)]
enum Step {
    Read(Option<QoS>),
    Drain(prop::sample::Index),
    Acknowledge(prop::sample::Index, prop::sample::Index),
    Leave(prop::sample::Index),
    Join,
}

fn step() -> impl Strategy<Value = Step> {
    let qos = prop_oneof![
        Just(None),
        Just(Some(QoS::AtMostOnce)),
        Just(Some(QoS::AtLeastOnce)),
        Just(Some(QoS::ExactlyOnce)),
    ];
    prop_oneof![
        4 => qos.prop_map(Step::Read),
        3 => any::<prop::sample::Index>().prop_map(Step::Drain),
        4 => (any::<prop::sample::Index>(), any::<prop::sample::Index>())
            .prop_map(|(m, p)| Step::Acknowledge(m, p)),
        1 => any::<prop::sample::Index>().prop_map(Step::Leave),
        1 => Just(Step::Join),
    ]
}

fn pick(group: &Group, index: &prop::sample::Index) -> Option<u64> {
    let mut ids: Vec<u64> = group.sessions.keys().copied().collect();
    ids.sort_unstable();
    (!ids.is_empty()).then(|| ids[index.index(ids.len())])
}

proptest! {
    /// For any interleaving of records, hand-outs, acknowledgements across members, members
    /// leaving (with records unacknowledged) and joining: the group never commits past a
    /// record not yet delivered, no record counts as delivered twice, and once every member
    /// has delivered everything the commit reaches the end of what was read.
    #[test]
    fn any_interleaving_of_acks_across_members_commits_only_below_the_first_undelivered(
        capacity in 1usize..4,
        receive_maximum in 1u16..4,
        steps in proptest::collection::vec(step(), 1..120),
    ) {
        let mut group = Group::new(capacity, receive_maximum);
        group.join();
        let mut for_delivery = BTreeSet::new();
        for step in steps {
            match step {
                Step::Read(qos) => {
                    let next = group.next_offset;
                    group.poll(qos);
                    if qos.is_some() && group.next_offset > next {
                        for_delivery.insert(next);
                    }
                }
                Step::Drain(m) => if let Some(id) = pick(&group, &m) { group.drain(id) },
                Step::Acknowledge(m, p) => if let Some(id) = pick(&group, &m) {
                    let mut ids: Vec<u16> = group.sessions[&id].got.keys().copied().collect();
                    ids.sort_unstable();
                    if !ids.is_empty() {
                        group.acknowledge(id, ids[p.index(ids.len())]);
                    }
                },
                Step::Leave(m) => if let Some(id) = pick(&group, &m) { group.leave(id) },
                Step::Join => { group.join(); }
            }
            let position = group.progress.position(PARTITION).unwrap_or(100);
            if let Some(first) = group.undelivered(&for_delivery) {
                prop_assert!(position <= first, "committed {position} past undelivered {first}");
            }
            let mut seen = group.delivered.clone();
            seen.sort_unstable();
            seen.dedup();
            prop_assert_eq!(seen.len(), group.delivered.len(), "a record counted twice");
        }
        // Everyone stays and acknowledges everything: the commit reaches the end.
        if group.sessions.is_empty() {
            group.join();
        }
        for _ in 0..1000 {
            if group.undelivered(&for_delivery).is_none() {
                break;
            }
            group.poll(None);
            let ids: Vec<u64> = group.sessions.keys().copied().collect();
            for id in ids {
                group.drain(id);
                let got: Vec<u16> = group.sessions[&id].got.keys().copied().collect();
                for packet_id in got {
                    group.acknowledge(id, packet_id);
                }
            }
        }
        prop_assert_eq!(group.undelivered(&for_delivery), None);
        let position = group.progress.position(PARTITION).unwrap_or(100);
        prop_assert_eq!(position, group.next_offset);
    }
}
