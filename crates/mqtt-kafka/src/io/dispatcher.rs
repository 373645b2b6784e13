//! The dispatcher: one reader thread per process over every partition of the messages topics,
//! matching each record's topic in the subscription trie and pushing it into the inboxes of the
//! sessions it reaches (shared subscriptions are served by their groups, `shared.rs`).

use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use strait_kafka::Reader;
use strait_kafka::headers::record_headers;
use strait_kafka::poll::{Polled, poll_loop};

use super::{Delivery, KafkaUpstream, now_ms};
use crate::UpstreamError;
use crate::core::headers;

impl KafkaUpstream {
    pub(crate) fn start_dispatcher(self: &Arc<Self>) -> Result<(), UpstreamError> {
        let consumer = self.clients.reader("dispatcher")?;
        // Partitions assigned, per topic index.
        let mut assigned: Vec<usize> = Vec::new();
        let mut generation = self.topics.generation();
        self.assign_new(&consumer, &mut assigned)?;
        let upstream = self.clone();
        std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                let every = Duration::from_millis(100);
                poll_loop(&consumer, "dispatcher", every, |polled| {
                    if upstream.shutdown.is_cancelled() {
                        return ControlFlow::Break(());
                    }
                    if let Polled::Record(record) = polled {
                        upstream.dispatch(&record);
                    }
                    let now = upstream.topics.generation();
                    if now != generation {
                        upstream.topics.apply_growth();
                        match upstream.assign_new(&consumer, &mut assigned) {
                            Ok(()) => generation = now,
                            Err(error) => {
                                tracing::warn!(%error, "dispatcher cannot read new partitions")
                            }
                        }
                    }
                    ControlFlow::Continue(())
                })
            })?;
        Ok(())
    }

    /// Adds the partitions not in `assigned` (new topics, topics grown) to the dispatcher's
    /// assignment, from their positions.
    pub(crate) fn assign_new(
        &self,
        consumer: &Reader,
        assigned: &mut Vec<usize>,
    ) -> Result<(), UpstreamError> {
        let topics = self.topics.all();
        let mut assignment = TopicPartitionList::new();
        for (t, topic) in topics.iter().enumerate() {
            let from = assigned.get(t).copied().unwrap_or(0);
            for (p, position) in topic.positions.iter().enumerate().skip(from) {
                let offset = Offset::Offset(position.load(Ordering::Acquire));
                assignment.add_partition_offset(&topic.name, p as i32, offset)?;
            }
        }
        if assignment.count() > 0 {
            consumer.incremental_assign(&assignment)?;
        }
        *assigned = topics.iter().map(|t| t.positions.len()).collect();
        Ok(())
    }

    pub(crate) fn dispatch(&self, record: &rdkafka::message::BorrowedMessage<'_>) {
        let Some((topic, read)) = self.topics.find(record.topic()) else {
            return;
        };
        let (partition, offset) = (record.partition(), record.offset());
        // Shared subscriptions are served by their group consumers.
        let subscribers = |topic: &str| {
            let mut ids = Vec::new();
            self.subscriptions.read().matches(topic, |target| {
                if target.shared.is_none() {
                    ids.push(target.session);
                }
            });
            ids
        };
        // The key is the MQTT topic (headers name it only for records without one): a record
        // no session here subscribes to is not decoded at all.
        let key = record.key().and_then(|k| std::str::from_utf8(k).ok());
        if let Some(topic) = key.filter(|k| !k.is_empty())
            && subscribers(topic).is_empty()
        {
            read.advance(partition, offset);
            return;
        }
        let headers = record_headers(record);
        let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
        match headers::decode(
            record.key(),
            payload,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        ) {
            Ok(message) => {
                let mut ids = subscribers(&message.topic);
                if !ids.is_empty() {
                    ids.sort_unstable();
                    ids.dedup();
                    let delivery = Arc::new(Delivery {
                        topic,
                        partition,
                        offset,
                        timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                        message,
                        shared: None,
                    });
                    let inboxes = self.inboxes.read();
                    for id in ids {
                        if let Some(inbox) = inboxes.get(&id) {
                            inbox.push(delivery.clone());
                        }
                    }
                }
            }
            Err(error) => self
                .metrics
                .record_skipped(&error, record.topic(), partition, offset),
        }
        // After the hand-over: a session that reads this position finds every earlier record
        // in its inbox (see `Session::progress`).
        read.advance(partition, offset);
    }
}
