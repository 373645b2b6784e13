//! A session's bounded queue of records to deliver, and what happens when it is full: QoS 0
//! records are dropped (counted), QoS ≥ 1 records are left out but remembered as the lowest
//! offset per partition to read again from Kafka once the client has caught up, so nothing
//! acknowledged-worthy is lost and memory stays bounded.

use std::collections::{HashMap, VecDeque};

use strait_mqtt_codec::QoS;

/// (messages topic index, partition).
pub type Partition = (usize, i32);

#[derive(Debug)]
pub struct DeliveryQueue<T> {
    pub items: VecDeque<T>,
    /// Lowest offset per partition of a QoS ≥ 1 record left out because the queue was full:
    /// the session resumes from there.
    pub overflow: HashMap<Partition, i64>,
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
        if self.items.len() < capacity {
            self.items.push_back(item);
            return true;
        }
        if qos == QoS::AtMostOnce {
            self.dropped_qos0 += 1;
        } else {
            let floor = self.overflow.entry(partition).or_insert(offset);
            *floor = (*floor).min(offset);
        }
        false
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
        assert_eq!(q.overflow, HashMap::from([((0, 0), 13), ((0, 1), 7)]));
        assert_eq!(q.items, [1, 2]);
        // Drained, it takes records again.
        q.items.clear();
        assert!(q.push(7, QoS::AtLeastOnce, (0, 0), 15, 2));
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
