//! Each session's queue of matched records, filled by the dispatcher thread and the shared
//! groups' consumers, drained by the session.

use std::sync::Arc;

use strait_mqtt_codec::QoS;
use tokio::sync::Notify;

use super::Delivery;
use super::lock_order::{Level, OrderedMutex};
use crate::core::queue::DeliveryQueue;

/// A session's queue of matched records, filled by the dispatcher thread.
pub struct Inbox {
    pub(crate) state: OrderedMutex<InboxState>,
    pub(crate) notify: Notify,
    pub(crate) capacity: usize,
}

/// The queue itself: its overflow rules are `core::queue`'s.
pub(crate) type InboxState = DeliveryQueue<Arc<Delivery>>;

impl Inbox {
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            state: OrderedMutex::new(Level::Inbox, "inbox", InboxState::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Queues a record for a shared subscription; `false` when the inbox is full (the group
    /// consumer tries another member, or waits).
    pub(crate) fn try_push_shared(&self, delivery: Arc<Delivery>) -> bool {
        let queued = self.state.lock().try_push(delivery, self.capacity);
        if queued {
            self.notify.notify_one();
        }
        queued
    }

    pub(crate) fn push(&self, delivery: Arc<Delivery>) {
        let (qos, partition, offset) = (
            delivery.message.qos,
            (delivery.topic, delivery.partition),
            delivery.offset,
        );
        let queued = self
            .state
            .lock()
            .push(delivery, qos, partition, offset, self.capacity);
        // An overflow wakes the session too (it resumes what was left out once drained); a
        // dropped QoS 0 record does not.
        if queued || qos != QoS::AtMostOnce {
            self.notify.notify_one();
        }
    }
}
