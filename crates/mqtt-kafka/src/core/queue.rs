//! A session's bounded queue of records to deliver, and what happens when it is full: QoS 0
//! records are dropped (counted), QoS ≥ 1 records are left out but remembered as the range of
//! offsets per partition to read again from Kafka once the client has caught up, so nothing
//! acknowledged-worthy is lost and memory stays bounded.
//!
//! Once a partition has records left out, its later records are left out too until that range
//! is read back, even when the queue has room again: queued, they would reach the client before
//! the older ones the catch-up brings (out of order).

use std::collections::{HashMap, VecDeque};
use std::ops::Range;

use strait_mqtt_codec::QoS;

/// (messages topic index, partition).
pub type Partition = (usize, i32);

#[derive(Debug)]
pub struct DeliveryQueue<T> {
    pub items: VecDeque<T>,
    /// Per partition, the offsets of the records left out because the queue was full (from
    /// the lowest QoS ≥ 1 one to past the last one): the session reads them back from Kafka.
    pub overflow: HashMap<Partition, Range<i64>>,
    pub dropped_qos0: u64,
}

impl<T> Default for DeliveryQueue<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
            overflow: HashMap::new(),
            dropped_qos0: 0,
        }
    }
}

impl<T> DeliveryQueue<T> {
    /// Queues a record read live at `offset` of `partition`, unless `capacity` records are
    /// queued; `true` when it was queued.
    pub fn push(
        &mut self,
        item: T,
        qos: QoS,
        partition: Partition,
        offset: i64,
        capacity: usize,
    ) -> bool {
        let left_out = self.overflow.get_mut(&partition);
        if left_out.is_none() && self.items.len() < capacity {
            self.items.push_back(item);
            return true;
        }
        if qos == QoS::AtMostOnce {
            self.dropped_qos0 += 1;
            // Past it too: a later QoS ≥ 1 record of the partition must not be queued ahead of
            // the range.
            if let Some(range) = left_out {
                range.end = range.end.max(offset + 1);
            }
        } else {
            let range = self.overflow.entry(partition).or_insert(offset..offset + 1);
            range.start = range.start.min(offset);
            range.end = range.end.max(offset + 1);
        }
        false
    }

    /// Once the queue is drained, the ranges left out, to read back from Kafka; forgotten here,
    /// so their partitions are queued again. `None` while records are queued or none were
    /// left out.
    pub fn take_overflow(&mut self) -> Option<HashMap<Partition, Range<i64>>> {
        if self.overflow.is_empty() || !self.items.is_empty() {
            return None;
        }
        Some(std::mem::take(&mut self.overflow))
    }

    /// Queues a shared subscription's record unless full (`false`: the group tries another
    /// member, or waits; nothing is remembered here).
    pub fn try_push(&mut self, item: T, capacity: usize) -> bool {
        if self.items.len() >= capacity {
            return false;
        }
        self.items.push_back(item);
        true
    }
}

/// What to read back of a partition whose records `left_out` were left out, now that every
/// record before `position` is read: from the first one left out to the position, or past the
/// last one left out if that is later (left out after the position was taken).
pub fn read_back(left_out: &Range<i64>, position: i64) -> Range<i64> {
    left_out.start..position.max(left_out.end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_queue_drops_qos0_and_remembers_where_qos1_must_resume() {
        let mut q = DeliveryQueue::default();
        assert!(q.push(1, QoS::AtLeastOnce, (0, 0), 10, 2));
        assert!(q.push(2, QoS::AtMostOnce, (0, 0), 11, 2));
        // Full: QoS 0 dropped and counted; QoS 1/2 remembered by their lowest offset.
        assert!(!q.push(3, QoS::AtMostOnce, (0, 0), 12, 2));
        assert!(!q.push(4, QoS::ExactlyOnce, (0, 0), 14, 2));
        assert!(!q.push(5, QoS::AtLeastOnce, (0, 0), 13, 2));
        assert!(!q.push(6, QoS::AtLeastOnce, (0, 1), 7, 2));
        assert_eq!(q.dropped_qos0, 1);
        assert_eq!(
            q.overflow,
            HashMap::from([((0, 0), 13..15), ((0, 1), 7..8)])
        );
        assert_eq!(q.items, [1, 2]);
        // Drained, it takes records again, but not of a partition with records left out: those
        // would overtake the ones read back from Kafka.
        q.items.clear();
        assert!(!q.push(7, QoS::AtLeastOnce, (0, 0), 15, 2));
        assert!(!q.push(8, QoS::AtMostOnce, (0, 0), 16, 2));
        assert_eq!(
            q.overflow[&(0, 0)],
            13..17,
            "the range covers what came after"
        );
        assert!(
            q.push(9, QoS::AtLeastOnce, (0, 2), 3, 2),
            "other partitions go on"
        );
        // Once the range is taken to be read back, the partition is queued again.
        q.overflow.clear();
        assert!(q.push(10, QoS::AtLeastOnce, (0, 0), 17, 2));
    }

    #[test]
    fn shared_records_are_refused_not_remembered_when_full() {
        let mut q = DeliveryQueue::default();
        assert!(q.try_push("a", 1));
        assert!(!q.try_push("b", 1), "the group hands it to another member");
        assert!(q.overflow.is_empty());
        assert_eq!(q.dropped_qos0, 0);
    }
}
