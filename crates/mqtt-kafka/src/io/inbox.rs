//! Each session's queue of matched records, filled by the dispatcher thread and the shared
//! groups' consumers, drained by the session.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use strait_mqtt_codec::QoS;
use tokio::sync::Notify;

use super::Delivery;
use super::lock_order::{Level, OrderedMutex};

/// A session's queue of matched records, filled by the dispatcher thread.
pub struct Inbox {
    pub(crate) state: OrderedMutex<InboxState>,
    pub(crate) notify: Notify,
    pub(crate) capacity: usize,
}

#[derive(Default)]
pub(crate) struct InboxState {
    pub(crate) items: VecDeque<Arc<Delivery>>,
    /// Lowest offset per (topic, partition) of a QoS ≥ 1 record dropped because the inbox was
    /// full: the session must be resumed from there.
    pub(crate) overflow: HashMap<(usize, i32), i64>,
    pub(crate) dropped_qos0: u64,
}

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
        let mut state = self.state.lock();
        if state.items.len() >= self.capacity {
            return false;
        }
        state.items.push_back(delivery);
        drop(state);
        self.notify.notify_one();
        true
    }

    pub(crate) fn push(&self, delivery: Arc<Delivery>) {
        let mut state = self.state.lock();
        if state.items.len() >= self.capacity {
            if delivery.message.qos == QoS::AtMostOnce {
                state.dropped_qos0 += 1;
                return;
            }
            let floor = state
                .overflow
                .entry((delivery.topic, delivery.partition))
                .or_insert(delivery.offset);
            *floor = (*floor).min(delivery.offset);
        } else {
            state.items.push_back(delivery);
        }
        drop(state);
        self.notify.notify_one();
    }
}
