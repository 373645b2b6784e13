//! Which offsets may be committed: a record's offset is done only once everything it caused is
//! durably written (the reply, or the dead-letter copy). Calls finish out of order, so the
//! commit position of a partition is its lowest offset not done yet.

use std::collections::{BTreeSet, HashMap};

#[derive(Debug, Default)]
struct Partition {
    pending: BTreeSet<i64>,
    /// One past the highest offset seen.
    next: i64,
    committed: i64,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<(String, i32), Partition>,
}

impl OffsetTracker {
    pub fn seen(&mut self, topic: &str, partition: i32, offset: i64) {
        let p = self
            .partitions
            .entry((topic.to_owned(), partition))
            .or_insert_with(|| Partition {
                pending: BTreeSet::new(),
                next: offset,
                committed: offset,
            });
        p.pending.insert(offset);
        p.next = p.next.max(offset + 1);
    }

    pub fn done(&mut self, topic: &str, partition: i32, offset: i64) {
        if let Some(p) = self.partitions.get_mut(&(topic.to_owned(), partition)) {
            p.pending.remove(&offset);
        }
    }

    /// Positions that moved since the last call: `(topic, partition, next offset to read)`.
    pub fn committable(&mut self) -> Vec<(String, i32, i64)> {
        let mut out = Vec::new();
        for ((topic, partition), p) in &mut self.partitions {
            let position = p.pending.first().copied().unwrap_or(p.next);
            if position > p.committed {
                p.committed = position;
                out.push((topic.clone(), *partition, position));
            }
        }
        out
    }

    /// The partition moved to another consumer: forget it (its records will be redone there).
    pub fn revoke(&mut self, topic: &str, partition: i32) {
        self.partitions.remove(&(topic.to_owned(), partition));
    }

    /// Records seen but not done yet.
    #[cfg(test)]
    pub fn pending(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_up_to_the_oldest_unfinished_record() {
        let mut t = OffsetTracker::default();
        for offset in 10..15 {
            t.seen("req", 0, offset);
        }
        assert!(t.committable().is_empty(), "nothing done yet");
        t.done("req", 0, 12);
        t.done("req", 0, 13);
        assert!(t.committable().is_empty(), "10 still pending");
        t.done("req", 0, 10);
        assert_eq!(t.committable(), [("req".to_owned(), 0, 11)]);
        t.done("req", 0, 11);
        assert_eq!(t.committable(), [("req".to_owned(), 0, 14)]);
        t.done("req", 0, 14);
        assert_eq!(t.committable(), [("req".to_owned(), 0, 15)]);
        assert!(t.committable().is_empty(), "no change, no commit");
        assert_eq!(t.pending(), 0);
    }

    #[test]
    fn partitions_are_independent_and_revocable() {
        let mut t = OffsetTracker::default();
        t.seen("req", 0, 0);
        t.seen("req", 1, 5);
        t.done("req", 1, 5);
        assert_eq!(t.committable(), [("req".to_owned(), 1, 6)]);
        t.revoke("req", 0);
        assert_eq!(t.pending(), 0);
        t.done("req", 0, 0); // a late completion of a revoked partition is ignored
        assert!(t.committable().is_empty());
    }
}
