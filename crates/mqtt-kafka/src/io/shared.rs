//! Shared subscriptions (`$share/GROUP/FILTER`): one Kafka consumer group per subscription,
//! joined by every replica with members, whose members on a replica take turns.
//!
//! Delivery progress of one shared subscription's group consumer: which offsets may be
//! committed. An offset is committed only once every record before it on its partition was
//! delivered (QoS 0 sent, QoS ≥ 1 acknowledged by the client) or was not for delivery (another
//! filter, unreadable), so a replica that dies repeats records but never skips one. The rules
//! are `core::shared`'s; its progress is shared between the group consumer's thread and the
//! sessions that deliver.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use strait_kafka::Reader;
use strait_kafka::headers::record_headers;
use strait_kafka::poll::{Polled, poll_loop};
use tokio_util::sync::CancellationToken;

use super::lock_order::{Level, OrderedMutex};
use super::{Delivery, KafkaUpstream, METADATA_TIMEOUT, SHARED_COMMIT_EVERY, now_ms};
use crate::UpstreamError;
use crate::core::headers;
use crate::core::limits::Limit;
use crate::core::members::Members;
use crate::core::queue::Partition;
use crate::core::shared::{AllFull, GroupProgress, when_all_full};

/// A shared subscription's [`GroupProgress`], shared between its group consumer's thread and
/// the sessions that deliver.
pub struct SharedOffsets {
    progress: OrderedMutex<GroupProgress<Arc<Delivery>>>,
}

impl Default for SharedOffsets {
    fn default() -> Self {
        Self {
            progress: OrderedMutex::new(Level::Leaf, "shared offsets", GroupProgress::default()),
        }
    }
}

impl std::fmt::Debug for SharedOffsets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let progress = self.progress.lock();
        f.debug_struct("SharedOffsets")
            .field("progress", &*progress)
            .finish()
    }
}

impl SharedOffsets {
    /// See [`GroupProgress::read`].
    pub fn read(&self, partition: Partition, offset: i64, for_delivery: bool) {
        self.progress.lock().read(partition, offset, for_delivery);
    }

    /// A member delivered it.
    pub fn done(&self, partition: Partition, offset: i64) {
        self.progress.lock().done(partition, offset);
    }

    /// A member cannot deliver it (its session ended, or it unsubscribed): another one will.
    pub fn give_back(&self, delivery: Arc<Delivery>) {
        self.progress.lock().give_back(delivery);
    }

    pub fn take_returned(&self) -> Vec<Arc<Delivery>> {
        self.progress.lock().take_returned()
    }

    /// Per partition whose position moved since the last call, the offset to commit.
    pub fn committable(&self) -> Vec<(Partition, i64)> {
        self.progress.lock().committable()
    }

    /// Forgets partitions this replica no longer owns (see [`GroupProgress::retain`]).
    pub fn retain(&self, assigned: &HashSet<Partition>) {
        self.progress.lock().retain(assigned);
    }
}

impl KafkaUpstream {
    /// Adds a member to a shared subscription, starting its group consumer on the first,
    /// unless this process already serves `limits.maxSharedGroups` groups (each is a consumer
    /// on a thread of its own).
    pub(crate) fn join_shared(
        self: &Arc<Self>,
        group: Arc<str>,
        inner: &str,
        id: u64,
    ) -> Result<tokio::sync::watch::Receiver<bool>, Limit> {
        let mut shared = self.shared.lock();
        if let Some(existing) = shared.get_mut(&group) {
            existing.members.join(id);
            let ready = existing.ready.clone();
            self.count_shared(&shared);
            return Ok(ready);
        }
        if shared.len() >= self.config.limits.max_shared_groups as usize {
            return Err(Limit::SharedGroups);
        }
        let stop = self.shutdown.child_token();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let mut members = Members::default();
        members.join(id);
        shared.insert(
            group.clone(),
            SharedGroup {
                members,
                stop: stop.clone(),
                ready: ready.clone(),
            },
        );
        self.count_shared(&shared);
        drop(shared);
        let up = self.clone();
        let inner = inner.to_string();
        let spawned = std::thread::Builder::new()
            .name("shared-group".into())
            .spawn(move || {
                if let Err(error) = up.serve_shared(&group, &inner, &stop, &ready_tx) {
                    tracing::warn!(error = crate::error_chain(&error), %group, "shared subscription consumer failed");
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a shared subscription consumer");
        }
        Ok(ready)
    }

    pub(crate) fn leave_shared(&self, group: &Arc<str>, id: u64) {
        let mut shared = self.shared.lock();
        if let Some(existing) = shared.get_mut(group)
            && existing.members.leave(id)
        {
            existing.stop.cancel();
            shared.remove(group);
        }
        self.count_shared(&shared);
    }

    /// Sets the shared-subscription gauges from the groups (called with their lock held).
    fn count_shared(&self, shared: &HashMap<Arc<str>, SharedGroup>) {
        let members: usize = shared.values().map(|g| g.members.len()).sum();
        self.metrics.shared_groups.set(shared.len() as i64);
        self.metrics.shared_members.set(members as i64);
    }

    /// One Kafka consumer group per shared subscription
    /// (`strait-share:MESSAGES-TOPIC:GROUP:FILTER`), joined
    /// by every replica that has members: Kafka splits the partitions between the replicas, and
    /// the members on a replica take turns.
    pub(crate) fn serve_shared(
        &self,
        group: &Arc<str>,
        inner: &str,
        stop: &CancellationToken,
        ready: &tokio::sync::watch::Sender<bool>,
    ) -> Result<(), UpstreamError> {
        let (_, name) = strait_mqtt_codec::topic::parse_shared(group).unwrap_or(("", inner));
        let group_name = group
            .strip_prefix("$share/")
            .and_then(|g| g.split_once('/'))
            .map_or(name, |(g, _)| g);
        // Named after the messages topic too: two bridges on one Kafka do not mix.
        let group_id = format!(
            "strait-share:{}:{group_name}:{inner}",
            self.config.topics.messages
        );
        let consumer: Reader = self.clients.group_member(
            &group_id,
            &[
                // A replica that dies is noticed in 10 s, not Kafka's default 45.
                ("session.timeout.ms", "10000"),
                // The group starts from the end of every partition it has at first (see
                // `start_shared`, which commits those positions); a partition without a
                // committed offset later is one added to the topic since: read it all.
                ("auto.offset.reset", "earliest"),
                // Partitions added to the topic join the group within seconds, not the
                // default five minutes.
                ("topic.metadata.refresh.interval.ms", "5000"),
            ],
            self.clients.report().clone(),
            "shared subscription consumer",
        )?;
        // The messages topics read when the group starts (routed ones found later are not
        // part of it).
        let names = self.topics.names();
        let topics: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let offsets = Arc::new(SharedOffsets::default());
        let mut last_commit = std::time::Instant::now();
        let every = Duration::from_millis(100);
        poll_loop(&consumer, "shared subscription consumer", every, |polled| {
            let step = || -> Result<ControlFlow<()>, UpstreamError> {
                if stop.is_cancelled() {
                    return Ok(ControlFlow::Break(()));
                }
                for returned in offsets.take_returned() {
                    if !self.hand_out(group, returned, stop) {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                if !*ready.borrow() {
                    let moved = self.start_shared(&consumer, ready)?;
                    // A record of a partition whose start was just set was polled before:
                    // it is older than the start (or read again from there).
                    if let Polled::Record(record) = &polled
                        && moved.contains(&(record.topic().to_string(), record.partition()))
                    {
                        return Ok(ControlFlow::Continue(()));
                    }
                }
                if last_commit.elapsed() >= SHARED_COMMIT_EVERY {
                    last_commit = std::time::Instant::now();
                    if let Err(error) = self.commit_delivered(&consumer, &offsets) {
                        tracing::debug!(%error, %group, "shared subscription commit");
                    }
                }
                let Polled::Record(record) = polled else {
                    return Ok(ControlFlow::Continue(()));
                };
                let Some(topic) = self.topics.index(record.topic()) else {
                    return Ok(ControlFlow::Continue(()));
                };
                let key = (topic, record.partition());
                let headers = record_headers(&record);
                let message = headers::decode(
                    record.key(),
                    Bytes::copy_from_slice(record.payload().unwrap_or_default()),
                    headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
                )
                .inspect_err(|error| {
                    let (partition, offset) = (record.partition(), record.offset());
                    self.metrics
                        .record_skipped(error, record.topic(), partition, offset);
                })
                .ok()
                .filter(|m| strait_mqtt_codec::topic::matches(inner, &m.topic));
                offsets.read(key, record.offset(), message.is_some());
                let Some(message) = message else {
                    return Ok(ControlFlow::Continue(()));
                };
                let delivery = Arc::new(Delivery {
                    topic,
                    partition: record.partition(),
                    offset: record.offset(),
                    timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                    message,
                    shared: Some(offsets.clone()),
                });
                Ok(if self.hand_out(group, delivery, stop) {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                })
            };
            match step() {
                Ok(ControlFlow::Continue(())) => ControlFlow::Continue(()),
                Ok(ControlFlow::Break(())) => ControlFlow::Break(Ok(())),
                Err(error) => ControlFlow::Break(Err(error)),
            }
        })?;
        // Stopped (the last member here left, or shutdown): commit what was delivered.
        self.commit_delivered(&consumer, &offsets)?;
        Ok(())
    }

    /// Once the group has an assignment: a new group starts from the current end of the
    /// partitions it has not consumed yet, so what is published after SUBACK is not skipped.
    /// Returns the partitions whose position it set.
    pub(crate) fn start_shared(
        &self,
        consumer: &Reader,
        ready: &tokio::sync::watch::Sender<bool>,
    ) -> Result<HashSet<(String, i32)>, UpstreamError> {
        let mut moved = HashSet::new();
        let assignment = consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(moved);
        }
        let committed = consumer.committed(METADATA_TIMEOUT)?;
        let mut start = TopicPartitionList::new();
        for element in committed.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                let (_, end) = self.watermarks.fetch_watermarks(
                    element.topic(),
                    element.partition(),
                    METADATA_TIMEOUT,
                )?;
                consumer.seek(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(end),
                    METADATA_TIMEOUT,
                )?;
                start.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(end),
                )?;
                moved.insert((element.topic().to_string(), element.partition()));
            }
        }
        // Committed at once, so a replica that takes a partition over in a rebalance
        // continues from here instead of from its own "latest".
        if start.count() > 0 {
            consumer.commit(&start, rdkafka::consumer::CommitMode::Sync)?;
        }
        let _ = ready.send(true);
        Ok(moved)
    }

    /// Gives a shared subscription's record to the next member with room; when all are full,
    /// waits (QoS ≥ 1: the group's delivery pauses) or drops it (QoS 0). `false` when the
    /// group has no members here any more or is stopped.
    pub(crate) fn hand_out(
        &self,
        group: &Arc<str>,
        delivery: Arc<Delivery>,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            if stop.is_cancelled() {
                return false;
            }
            let taken = {
                let mut shared = self.shared.lock();
                let Some(entry) = shared.get_mut(group) else {
                    return false;
                };
                let inboxes = self.inboxes.read();
                entry
                    .members
                    .hand_out(|id| {
                        inboxes
                            .get(&id)
                            .is_some_and(|inbox| inbox.try_push_shared(delivery.clone()))
                    })
                    .is_some()
            };
            if taken {
                return true;
            }
            match when_all_full(delivery.message.qos) {
                AllFull::Drop => {
                    delivery.delivered();
                    return true;
                }
                AllFull::Wait => {}
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Commits, per partition this replica owns, the offset below which every record was
    /// delivered (when it moved).
    pub(crate) fn commit_delivered(
        &self,
        consumer: &Reader,
        offsets: &SharedOffsets,
    ) -> Result<(), UpstreamError> {
        let assignment = consumer.assignment()?;
        let assigned: std::collections::HashSet<(usize, i32)> = assignment
            .elements()
            .iter()
            .filter_map(|e| {
                let topic = self.topics.index(e.topic())?;
                Some((topic, e.partition()))
            })
            .collect();
        offsets.retain(&assigned);
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets.committable() {
            commit.add_partition_offset(
                &self.topics.name(topic),
                partition,
                Offset::Offset(offset),
            )?;
        }
        if commit.count() > 0 {
            consumer.commit(&commit, rdkafka::consumer::CommitMode::Sync)?;
        }
        Ok(())
    }
}

/// The members on this process of one shared subscription.
pub(crate) struct SharedGroup {
    pub(crate) members: Members,
    pub(crate) stop: CancellationToken,
    pub(crate) ready: tokio::sync::watch::Receiver<bool>,
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
