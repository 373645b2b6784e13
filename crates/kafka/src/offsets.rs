//! Which offsets may be committed. A record is done only once everything it caused is durable
//! or delivered (kafka-grpc: the reply or the dead-letter copy is written; a shared MQTT
//! subscription: the member delivered it), and records finish out of order. So the commit
//! position of a partition is its lowest offset not done yet, or one past the last offset read
//! when all are: a consumer that dies repeats records but never skips one.
//!
//! The one implementation of that rule, for every group consumer of the project.

use std::collections::{BTreeSet, HashMap};
use std::hash::Hash;

#[derive(Debug)]
struct Partition {
    /// Read and waiting to be done.
    pending: BTreeSet<i64>,
    /// One past the highest offset read.
    next: i64,
    /// The position last returned by [`OffsetTracker::committable`].
    committed: i64,
}

/// Commit positions per partition; `P` names a partition (e.g. `(topic, partition)`).
#[derive(Debug)]
pub struct OffsetTracker<P> {
    partitions: HashMap<P, Partition>,
}

impl<P> Default for OffsetTracker<P> {
    fn default() -> Self {
        Self {
            partitions: HashMap::new(),
        }
    }
}

impl<P: Hash + Eq + Clone> OffsetTracker<P> {
    /// `offset` of `partition` was read and must be done before the commit passes it.
    pub fn read(&mut self, partition: P, offset: i64) {
        self.read_as(partition, offset, true);
    }

    /// `offset` was read; `pending` when it still has to be done, otherwise it counts as done
    /// at once (e.g. a record no subscriber wants).
    pub fn read_as(&mut self, partition: P, offset: i64, pending: bool) {
        let p = self
            .partitions
            .entry(partition)
            .or_insert_with(|| Partition {
                pending: BTreeSet::new(),
                next: offset,
                committed: offset,
            });
        if pending {
            p.pending.insert(offset);
        }
        p.next = p.next.max(offset + 1);
    }

    /// `offset` is done. A late completion for a partition forgotten since is ignored.
    pub fn done(&mut self, partition: &P, offset: i64) {
        if let Some(p) = self.partitions.get_mut(partition) {
            p.pending.remove(&offset);
        }
    }

    /// The position to commit for `partition`: its lowest offset not done, or one past the
    /// last read.
    pub fn position(&self, partition: &P) -> Option<i64> {
        self.partitions.get(partition).map(Partition::position)
    }

    /// Every partition's position.
    pub fn positions(&self) -> Vec<(P, i64)> {
        self.partitions
            .iter()
            .map(|(key, p)| (key.clone(), p.position()))
            .collect()
    }

    /// Positions that moved since the last call.
    pub fn committable(&mut self) -> Vec<(P, i64)> {
        let mut out = Vec::new();
        for (key, p) in &mut self.partitions {
            let position = p.position();
            if position > p.committed {
                p.committed = position;
                out.push((key.clone(), position));
            }
        }
        out
    }

    /// The partition moved to another consumer: forget it (its records are redone there, and
    /// this consumer must not commit for it).
    pub fn revoke(&mut self, partition: &P) {
        self.partitions.remove(partition);
    }

    /// Forgets every partition `keep` refuses.
    pub fn retain(&mut self, mut keep: impl FnMut(&P) -> bool) {
        self.partitions.retain(|key, _| keep(key));
    }

    /// Records read but not done yet.
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

impl Partition {
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Key = (String, i32);

    fn req(partition: i32) -> Key {
        ("req".to_owned(), partition)
    }

    #[test]
    fn commits_only_up_to_the_oldest_unfinished_record() {
        let mut t = OffsetTracker::default();
        for offset in 10..15 {
            t.read(req(0), offset);
        }
        assert!(t.committable().is_empty(), "nothing done yet");
        t.done(&req(0), 12);
        t.done(&req(0), 13);
        assert!(t.committable().is_empty(), "10 still pending");
        t.done(&req(0), 10);
        assert_eq!(t.committable(), [(req(0), 11)]);
        t.done(&req(0), 11);
        assert_eq!(t.committable(), [(req(0), 14)]);
        t.done(&req(0), 14);
        assert_eq!(t.committable(), [(req(0), 15)]);
        assert!(t.committable().is_empty(), "no change, no commit");
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_revocable() {
        let mut t = OffsetTracker::default();
        t.read(req(0), 0);
        t.read(req(1), 5);
        t.done(&req(1), 5);
        assert_eq!(t.committable(), [(req(1), 6)]);
        t.revoke(&req(0));
        assert_eq!(t.pending(), 0);
        t.done(&req(0), 0); // a late completion of a revoked partition is ignored
        assert!(t.committable().is_empty());
    }

    #[test]
    fn records_not_for_delivery_count_as_done() {
        let mut t = OffsetTracker::default();
        for offset in 10..15 {
            t.read_as((0, 0), offset, offset != 12);
        }
        t.read((0, 1), 3);
        let mut all = t.positions();
        all.sort();
        assert_eq!(all, [((0, 0), 10), ((0, 1), 3)]);
        // 11 and 13 delivered, 10 not: nothing moves on partition 0.
        t.done(&(0, 0), 11);
        t.done(&(0, 0), 13);
        assert_eq!(t.position(&(0, 0)), Some(10));
        // 10 delivered: up to 14 (12 was not for delivery), which is still out.
        t.done(&(0, 0), 10);
        assert_eq!(t.position(&(0, 0)), Some(14));
        t.done(&(0, 0), 14);
        t.done(&(0, 1), 3);
        let mut all = t.positions();
        all.sort();
        assert_eq!(all, [((0, 0), 15), ((0, 1), 4)]);
    }

    #[test]
    fn retain_forgets_the_partitions_moved_away() {
        let mut t = OffsetTracker::default();
        t.read((0, 0), 1);
        t.read((0, 1), 1);
        t.retain(|key| *key == (0, 1));
        assert_eq!(t.positions(), [((0, 1), 1)]);
        t.done(&(0, 0), 1);
        assert_eq!(t.positions(), [((0, 1), 1)]);
    }

    proptest! {
        /// Whatever order the acknowledgements come in, the position is always the first
        /// unacknowledged offset (never past one, never behind the acknowledged prefix), and
        /// committed positions never go back.
        #[test]
        fn any_interleaving_commits_only_below_the_first_unacknowledged(
            start in 0i64..1_000,
            done in proptest::collection::vec(any::<bool>(), 1..40),
            order in proptest::collection::vec(any::<prop::sample::Index>(), 0..60),
        ) {
            let mut t = OffsetTracker::default();
            let offsets: Vec<i64> = (0..done.len() as i64).map(|i| start + i).collect();
            // Interleave reads and acks: read everything, then acknowledge in a random order.
            for (offset, pending) in offsets.iter().zip(&done) {
                t.read_as(0, *offset, *pending);
            }
            let mut unacked: Vec<i64> = offsets
                .iter()
                .zip(&done)
                .filter(|(_, pending)| **pending)
                .map(|(offset, _)| *offset)
                .collect();
            let mut last = start;
            for index in order {
                if unacked.is_empty() {
                    break;
                }
                let offset = unacked.remove(index.index(unacked.len()));
                t.done(&0, offset);
                for (_, position) in t.committable() {
                    prop_assert!(position > last, "positions only move forward");
                    last = position;
                }
                let first_unacked = unacked.iter().min().copied();
                let expected = first_unacked.unwrap_or(start + done.len() as i64);
                prop_assert_eq!(t.position(&0), Some(expected));
                prop_assert!(first_unacked.is_none_or(|f| last <= f));
            }
        }
    }
}
