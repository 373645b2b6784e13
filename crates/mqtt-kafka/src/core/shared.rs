//! A shared subscription's delivery on one replica, as plain rules: its group consumer hands
//! each record to the next member with room ([`Members`](crate::core::members::Members)); a
//! record every member refused waits (QoS ≥ 1: the group's delivery pauses) or is dropped
//! (QoS 0); a member that leaves hands back what it had not delivered, for another member; and
//! the group commits a partition only below its first record not yet delivered, so a replica
//! that dies repeats records but never skips one ([`OffsetTracker`]).

use std::collections::{HashSet, VecDeque};

use strait_kafka::OffsetTracker;
use strait_mqtt_codec::QoS;

use crate::core::queue::Partition;

/// What becomes of a record that every member refused (their queues are full).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllFull {
    /// Offer it again shortly: the group reads nothing more meanwhile.
    Wait,
    /// A QoS 0 record may be dropped: as good as delivered.
    Drop,
}

pub fn when_all_full(qos: QoS) -> AllFull {
    match qos {
        QoS::AtMostOnce => AllFull::Drop,
        QoS::AtLeastOnce | QoS::ExactlyOnce => AllFull::Wait,
    }
}

/// The group's progress: which records are out with members, which came back, and the
/// offsets it may commit. `T` is the record handed back (the driver's delivery).
pub struct GroupProgress<T> {
    tracker: OffsetTracker<Partition>,
    returned: VecDeque<T>,
}

impl<T> Default for GroupProgress<T> {
    fn default() -> Self {
        Self {
            tracker: OffsetTracker::default(),
            returned: VecDeque::new(),
        }
    }
}

impl<T> std::fmt::Debug for GroupProgress<T> {
    // Not derived: returned records may point back at their group.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupProgress")
            .field("tracker", &self.tracker)
            .field("returned", &self.returned.len())
            .finish()
    }
}

impl<T> GroupProgress<T> {
    /// The group consumer read `offset`; `for_delivery` when it goes to a member (otherwise,
    /// another filter or unreadable, it counts as done at once).
    pub fn read(&mut self, partition: Partition, offset: i64, for_delivery: bool) {
        self.tracker.read_as(partition, offset, for_delivery);
    }

    /// A member delivered it: QoS 0 sent, QoS 1 PUBACK, QoS 2 PUBREC (or the client could not
    /// take it, or it expired).
    pub fn done(&mut self, partition: Partition, offset: i64) {
        self.tracker.done(&partition, offset);
    }

    /// A member will not deliver it (its session ended, or it unsubscribed): another will.
    pub fn give_back(&mut self, record: T) {
        self.returned.push_back(record);
    }

    /// The records handed back, to hand out again before anything new is read.
    pub fn take_returned(&mut self) -> Vec<T> {
        self.returned.drain(..).collect()
    }

    /// Per partition whose position moved since the last call, the offset to commit.
    pub fn committable(&mut self) -> Vec<(Partition, i64)> {
        self.tracker.committable()
    }

    /// The offset the group would commit for `partition` now.
    pub fn position(&self, partition: Partition) -> Option<i64> {
        self.tracker.position(&partition)
    }

    /// Forgets partitions this replica no longer owns (a rebalance moved them): their new
    /// owner continues from the last commit, and this replica must not commit for them.
    pub fn retain(&mut self, assigned: &HashSet<Partition>) {
        self.tracker.retain(|key| assigned.contains(key));
    }
}

#[cfg(test)]
mod tests;
