//! Delivery progress of one shared subscription's group consumer: which offsets may be
//! committed. An offset is committed only once every record before it on its partition was
//! delivered (QoS 0 sent, QoS ≥ 1 acknowledged by the client) or was not for delivery (another
//! filter, unreadable), so a replica that dies repeats records but never skips one: the rule of
//! [`strait_kafka::OffsetTracker`], shared between the group consumer's thread and the
//! sessions that deliver.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use strait_kafka::OffsetTracker;

use super::Delivery;

/// (topic index, partition).
type Partition = (usize, i32);

#[derive(Default)]
pub struct SharedOffsets {
    tracker: Mutex<OffsetTracker<Partition>>,
    /// Deliveries whose member went away before delivering them: handed to another member.
    returned: Mutex<VecDeque<Arc<Delivery>>>,
}

impl std::fmt::Debug for SharedOffsets {
    // Not derived: returned deliveries point back here.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tracker = self.tracker.lock().expect("shared offsets lock");
        f.debug_struct("SharedOffsets")
            .field("tracker", &*tracker)
            .finish_non_exhaustive()
    }
}

impl SharedOffsets {
    /// The group consumer read `offset`; `for_delivery` when it goes to a member (otherwise it
    /// counts as done at once).
    pub fn read(&self, partition: Partition, offset: i64, for_delivery: bool) {
        let mut tracker = self.tracker.lock().expect("shared offsets lock");
        tracker.read_as(partition, offset, for_delivery);
    }

    /// A member delivered it.
    pub fn done(&self, partition: Partition, offset: i64) {
        let mut tracker = self.tracker.lock().expect("shared offsets lock");
        tracker.done(&partition, offset);
    }

    /// A member cannot deliver it (its session ended, or it unsubscribed): another one will.
    pub fn give_back(&self, delivery: Arc<Delivery>) {
        self.returned
            .lock()
            .expect("shared offsets lock")
            .push_back(delivery);
    }

    pub fn take_returned(&self) -> Vec<Arc<Delivery>> {
        self.returned
            .lock()
            .expect("shared offsets lock")
            .drain(..)
            .collect()
    }

    /// Per partition whose position moved since the last call, the offset to commit.
    pub fn committable(&self) -> Vec<(Partition, i64)> {
        self.tracker
            .lock()
            .expect("shared offsets lock")
            .committable()
    }

    /// Forgets partitions this replica no longer owns (a rebalance moved them): their new
    /// owner continues from the last commit, and this replica must not commit for them.
    pub fn retain(&self, assigned: &HashSet<Partition>) {
        self.tracker
            .lock()
            .expect("shared offsets lock")
            .retain(|key| assigned.contains(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivered_records_move_the_commit_and_revoked_partitions_do_not() {
        let offsets = SharedOffsets::default();
        offsets.read((0, 0), 10, true);
        offsets.read((0, 0), 11, false);
        offsets.read((0, 1), 3, true);
        assert!(offsets.committable().is_empty(), "10 and 3 are still out");
        offsets.done((0, 0), 10);
        assert_eq!(offsets.committable(), [((0, 0), 12)]);
        offsets.retain(&HashSet::from([(0, 0)]));
        offsets.done((0, 1), 3);
        assert!(offsets.committable().is_empty(), "(0, 1) moved away");
    }
}
