//! kafka-grpc's group membership: the consumer's context (errors, readiness, and the
//! rebalance callback that commits and forgets revoked partitions), offset commits, and the lag
//! it reports.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use strait_kafka::{KafkaReport, OffsetTracker};
use strait_runtime::ReadinessFlag;
use tokio_util::sync::CancellationToken;

use crate::grpc::metrics::GrpcMetrics;

pub(super) struct GroupContext {
    report: KafkaReport,
    ready: ReadinessFlag,
    /// Shared with the rebalance callback, which runs inside `recv` on the consumer loop's
    /// task: never held across an await.
    pub(super) tracker: Mutex<Offsets>,
    /// Partitions revoked since the consumer loop last looked (it cancels their calls that
    /// still wait for request records).
    revoked: Mutex<Vec<(String, i32)>>,
}

impl GroupContext {
    pub(super) fn new(report: KafkaReport, ready: ReadinessFlag) -> Self {
        Self {
            report,
            ready,
            tracker: Mutex::new(Offsets::default()),
            revoked: Mutex::new(Vec::new()),
        }
    }

    pub(super) fn offsets(&self) -> std::sync::MutexGuard<'_, Offsets> {
        self.tracker.lock().expect("offset tracker lock poisoned")
    }

    /// The partitions revoked since the last call.
    pub(super) fn take_revoked(&self) -> Vec<(String, i32)> {
        std::mem::take(&mut *self.revoked.lock().expect("revoked lock poisoned"))
    }
}

/// Errors and librdkafka's logs are reported like every other client's.
impl ClientContext for GroupContext {
    fn error(&self, error: KafkaError, reason: &str) {
        self.report.error(error, reason);
    }

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.report.log(level, fac, log_message);
    }
}

impl ConsumerContext for GroupContext {
    /// Partitions about to go (possibly to another member): commit what is done for them now,
    /// while they are still ours, and forget them, so that no later commit of this member moves
    /// them (calls still running for them finish, but their completion no longer counts; the
    /// next holder reads their records again).
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(list) = rebalance else {
            return;
        };
        let mut tracker = self.offsets();
        let mut commit = TopicPartitionList::new();
        for e in list.elements() {
            let key = (e.topic().to_owned(), e.partition());
            if let Some(position) = tracker.position(&key)
                && let Err(error) =
                    commit.add_partition_offset(e.topic(), e.partition(), Offset::Offset(position))
            {
                tracing::warn!(%error, "cannot build the commit of revoked partitions");
            }
            tracker.revoke(&key);
            self.revoked
                .lock()
                .expect("revoked lock poisoned")
                .push(key);
        }
        drop(tracker);
        if commit.count() > 0
            && let Err(error) = consumer.commit(&commit, CommitMode::Sync)
        {
            // Their records are read again by the next holder: repeated, never lost.
            tracing::warn!(%error, "committing revoked partitions failed");
        }
        tracing::info!(
            count = list.count(),
            "partitions revoked; what was done for them is committed"
        );
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions: Vec<String> = list
                    .elements()
                    .iter()
                    .map(|e| format!("{}/{}", e.topic(), e.partition()))
                    .collect();
                tracing::info!(?partitions, "assigned");
                self.ready.set(true);
            }
            Rebalance::Revoke(_) => {} // handled before the rebalance
            Rebalance::Error(error) => tracing::warn!(%error, "rebalance failed"),
        }
    }
}

pub(super) type GroupConsumer = StreamConsumer<GroupContext>;

/// Commit positions of the request partitions, per (topic, partition).
pub(super) type Offsets = OffsetTracker<(String, i32)>;

/// `offset` is done (ignored when its partition was revoked since).
pub(super) fn mark_done(tracker: &Mutex<Offsets>, topic: &str, partition: i32, offset: i64) {
    let mut tracker = tracker.lock().expect("offset tracker lock poisoned");
    tracker.done(&(topic.to_owned(), partition), offset);
}

pub(super) fn commit(consumer: &GroupConsumer, mode: CommitMode) {
    let positions = consumer.context().offsets().committable();
    if positions.is_empty() {
        return;
    }
    let mut list = TopicPartitionList::new();
    for ((topic, partition), offset) in &positions {
        if let Err(error) = list.add_partition_offset(topic, *partition, Offset::Offset(*offset)) {
            tracing::warn!(%error, "cannot build the commit");
        }
    }
    if let Err(error) = consumer.commit(&list, mode) {
        tracing::warn!(%error, "offset commit failed (a rebalance may have moved the partition)");
    }
}

pub(super) async fn report_lag(
    consumer: Arc<GroupConsumer>,
    metrics: GrpcMetrics,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(5)) => {}
        }
        let c = consumer.clone();
        let lags = tokio::task::spawn_blocking(move || {
            let mut lags = Vec::new();
            let Ok(positions) = c.position() else {
                return lags;
            };
            for e in positions.elements() {
                let Offset::Offset(position) = e.offset() else {
                    continue;
                };
                if let Ok((_, high)) =
                    c.fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(2))
                {
                    lags.push((
                        e.topic().to_owned(),
                        e.partition(),
                        (high - position).max(0),
                    ));
                }
            }
            lags
        })
        .await
        .unwrap_or_default();
        metrics.consumer_lag.reset();
        for (topic, partition, lag) in lags {
            metrics
                .consumer_lag
                .with_label_values(&[topic.as_str(), &partition.to_string()])
                .set(lag);
        }
    }
}
