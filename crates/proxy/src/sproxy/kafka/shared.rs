//! Delivery progress of one shared subscription's group consumer: which offsets may be
//! committed. An offset is committed only once every record before it on its partition was
//! delivered (QoS 0 sent, QoS ≥ 1 acknowledged by the client) or was not for delivery (another
//! filter, unreadable), so a replica that dies repeats records but never skips one.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use super::Delivery;

/// (topic index, partition).
type Partition = (usize, i32);

#[derive(Default)]
pub struct SharedOffsets {
    partitions: Mutex<HashMap<Partition, Pending>>,
    /// Deliveries whose member went away before delivering them: handed to another member.
    returned: Mutex<VecDeque<Arc<Delivery>>>,
}

#[derive(Debug, Default)]
struct Pending {
    /// Handed to a member, not yet delivered.
    outstanding: BTreeSet<i64>,
    /// One past the highest offset read.
    next: i64,
}

impl std::fmt::Debug for SharedOffsets {
    // Not derived: returned deliveries point back here.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let partitions = self.partitions.lock().expect("shared offsets lock");
        f.debug_struct("SharedOffsets")
            .field("partitions", &*partitions)
            .finish_non_exhaustive()
    }
}

impl SharedOffsets {
    /// The group consumer read `offset`; `for_delivery` when it goes to a member (otherwise it
    /// counts as done at once).
    pub fn read(&self, partition: Partition, offset: i64, for_delivery: bool) {
        let mut partitions = self.partitions.lock().expect("shared offsets lock");
        let pending = partitions.entry(partition).or_default();
        pending.next = pending.next.max(offset + 1);
        if for_delivery {
            pending.outstanding.insert(offset);
        }
    }

    /// A member delivered it.
    pub fn done(&self, partition: Partition, offset: i64) {
        let mut partitions = self.partitions.lock().expect("shared offsets lock");
        if let Some(pending) = partitions.get_mut(&partition) {
            pending.outstanding.remove(&offset);
        }
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

    /// Per partition, the offset to commit: the lowest one not delivered yet, or one past the
    /// last read when all are.
    pub fn committable(&self) -> Vec<(Partition, i64)> {
        let partitions = self.partitions.lock().expect("shared offsets lock");
        partitions
            .iter()
            .map(|(key, pending)| {
                let at = pending.outstanding.first().copied().unwrap_or(pending.next);
                (*key, at)
            })
            .collect()
    }

    /// Forgets partitions this replica no longer owns (a rebalance moved them): their new
    /// owner continues from the last commit, and this replica must not commit for them.
    pub fn retain(&self, assigned: &HashSet<Partition>) {
        self.partitions
            .lock()
            .expect("shared offsets lock")
            .retain(|key, _| assigned.contains(key));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn commits(offsets: &SharedOffsets) -> Vec<(Partition, i64)> {
        let mut all = offsets.committable();
        all.sort();
        all
    }

    #[test]
    fn only_a_contiguous_delivered_prefix_is_committed() {
        let offsets = SharedOffsets::default();
        for offset in 10..15 {
            offsets.read((0, 0), offset, offset != 12);
        }
        offsets.read((0, 1), 3, true);
        assert_eq!(commits(&offsets), [((0, 0), 10), ((0, 1), 3)]);
        // 11 and 13 delivered, 10 not: nothing moves on partition 0.
        offsets.done((0, 0), 11);
        offsets.done((0, 0), 13);
        assert_eq!(commits(&offsets), [((0, 0), 10), ((0, 1), 3)]);
        // 10 delivered: up to 14 (12 was not for delivery), which is still out.
        offsets.done((0, 0), 10);
        assert_eq!(commits(&offsets)[0], ((0, 0), 14));
        offsets.done((0, 0), 14);
        offsets.done((0, 1), 3);
        assert_eq!(commits(&offsets), [((0, 0), 15), ((0, 1), 4)]);
    }

    #[test]
    fn revoked_partitions_are_forgotten() {
        let offsets = SharedOffsets::default();
        offsets.read((0, 0), 1, true);
        offsets.read((0, 1), 1, true);
        offsets.retain(&HashSet::from([(0, 1)]));
        assert_eq!(commits(&offsets), [((0, 1), 1)]);
        // A late acknowledgement for a forgotten partition changes nothing.
        offsets.done((0, 0), 1);
        assert_eq!(commits(&offsets), [((0, 1), 1)]);
    }
}
