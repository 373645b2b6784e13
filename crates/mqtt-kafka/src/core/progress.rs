//! A session's delivery progress: per partition, the offset its delivery resumes from after a
//! reconnect (stored in the session record). Every QoS ≥ 1 record before it that the session's
//! filters match has been acknowledged by the client, so the progress never passes a record
//! still owed: queued, left out by an overflow, in flight, or being read back by a catch-up.
//! And what a catch-up (a resume, or an overflow read back) means for live records.

use std::collections::HashMap;

use strait_mqtt_codec::QoS;

use crate::core::flows::Outbound;
use crate::core::queue::{DeliveryQueue, Partition};

/// The lowest offset still owed to the client, per partition.
#[derive(Debug, Default)]
pub struct Floor {
    owed: HashMap<Partition, i64>,
}

impl Floor {
    /// `offset` of `partition` is still owed.
    pub fn hold(&mut self, partition: Partition, offset: i64) {
        let entry = self.owed.entry(partition).or_insert(offset);
        *entry = (*entry).min(offset);
    }

    /// What the queue owes: its QoS ≥ 1 records (`owed` says which items are, and where they
    /// come from) and the ranges an overflow left out.
    pub fn hold_queue<T>(
        &mut self,
        queue: &DeliveryQueue<T>,
        owed: impl Fn(&T) -> Option<(Partition, i64)>,
    ) {
        for (partition, offset) in queue.items.iter().filter_map(owed) {
            self.hold(partition, offset);
        }
        for (partition, left_out) in &queue.overflow {
            self.hold(*partition, left_out.start);
        }
    }

    /// What the client has not acknowledged yet.
    pub fn hold_in_flight<T>(&mut self, outbound: &Outbound<T>) {
        for (_, outgoing) in outbound.in_flight() {
            if let Some((t, p, offset)) = outgoing.source {
                self.hold((t, p), offset);
            }
        }
    }

    /// The progress of `partition`, whose records before `position` are all read (queued,
    /// left out, or handled).
    pub fn progress(&self, partition: Partition, position: i64) -> i64 {
        self.owed
            .get(&partition)
            .map_or(position, |owed| (*owed).min(position))
    }
}

/// Whether a queued record counts against the progress: QoS ≥ 1 (QoS 0 is not repeated), and
/// not a shared subscription's (its group keeps its own progress).
pub fn owed(qos: QoS, shared: bool) -> bool {
    qos != QoS::AtMostOnce && !shared
}

/// The catch-ups of a session: records of a partition below the end of a catch-up's range are
/// delivered by the catch-up, not live, and the catch-up holds the progress where it is.
#[derive(Debug, Default)]
pub struct CatchUps {
    /// Live records below these offsets were read by a catch-up.
    live_from: HashMap<Partition, i64>,
    /// Catch-up in progress: the next offset it will deliver.
    next: HashMap<Partition, i64>,
}

impl CatchUps {
    /// A catch-up reads `from..to` of `partition`; `true` when there is something to read.
    pub fn start(&mut self, partition: Partition, from: i64, to: i64) -> bool {
        self.live_from.insert(partition, to);
        if from < to {
            self.next.insert(partition, from);
        }
        from < to
    }

    /// The catch-up handed `offset` on for delivery.
    pub fn delivered(&mut self, partition: Partition, offset: i64) {
        self.next.insert(partition, offset + 1);
    }

    /// Every catch-up read is done.
    pub fn finished(&mut self) {
        self.next.clear();
    }

    /// Whether a live record is one a catch-up delivers instead.
    pub fn skips_live(&self, partition: Partition, offset: i64) -> bool {
        self.live_from
            .get(&partition)
            .is_some_and(|from| offset < *from)
    }

    /// Holds the progress where the catch-ups are.
    pub fn hold(&self, floor: &mut Floor) {
        for (partition, next) in &self.next {
            floor.hold(*partition, *next);
        }
    }
}

#[cfg(test)]
mod tests;
