//! One shared reader per fetched topic: a consumer assigned every partition from its end when
//! the first fetch of the topic arrives, whose records fan out in memory to every fetch stream
//! of that topic (a broadcast channel), instead of a Kafka consumer per stream.
//!
//! A stream that needs older records (from the start, or a `last-message-id` behind the end)
//! reads them with a catch-up consumer of its own up to the end offsets taken after it joined
//! the broadcast, then drops it and takes the shared records from its own next offsets on: no
//! gap, no duplicate. A stream that falls more than `limits.fetchBufferedRecords` behind the
//! shared reader catches up the same way and joins again.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rdkafka::consumer::Consumer as _;
use rdkafka::error::KafkaError;
use rdkafka::message::Headers as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use strait_kafka::topics::partition_count;
use strait_kafka::{KafkaClients, StreamReader};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use super::Frontend;
use crate::grpc::fetch_id::Progress;

/// How long to wait for Kafka's metadata and end offsets.
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A record as every stream of the topic sees it.
pub(crate) struct FeedRecord {
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    pub headers: Vec<(String, Option<Bytes>)>,
    pub value: Option<Bytes>,
}

impl FeedRecord {
    fn of(message: &impl rdkafka::Message) -> Self {
        Self {
            partition: message.partition(),
            offset: message.offset(),
            key: message.key().map(Bytes::copy_from_slice),
            headers: message
                .headers()
                .map(|headers| {
                    headers
                        .iter()
                        .map(|h| (h.key.to_owned(), h.value.map(Bytes::copy_from_slice)))
                        .collect()
                })
                .unwrap_or_default(),
            value: message.payload().map(Bytes::copy_from_slice),
        }
    }

    pub fn has_header(&self, name: &str, value: &[u8]) -> bool {
        self.headers
            .iter()
            .any(|(k, v)| k == name && v.as_deref() == Some(value))
    }
}

/// The shared reader of one topic.
pub(crate) struct Feed {
    topic: String,
    partitions: i32,
    records: broadcast::Sender<Arc<FeedRecord>>,
    reader: Arc<StreamReader>,
    /// End-offset lookups at once: each holds a blocking thread, and a thousand streams
    /// opening together must not make a thousand of them.
    lookups: tokio::sync::Semaphore,
}

/// End-offset lookups of one topic's streams at once.
const LOOKUPS: usize = 4;

/// The shared readers by topic, started on the first fetch of each.
#[derive(Default)]
pub(crate) struct Feeds {
    feeds: tokio::sync::Mutex<HashMap<String, Arc<Feed>>>,
}

impl Feeds {
    /// The topic's shared reader, started now if it is the first fetch of `topic`.
    pub async fn get(&self, frontend: &Arc<Frontend>, topic: &str) -> Result<Arc<Feed>, Status> {
        let mut feeds = self.feeds.lock().await;
        if let Some(feed) = feeds.get(topic) {
            return Ok(feed.clone());
        }
        let feed = Arc::new(Feed::start(frontend, topic).await?);
        feeds.insert(topic.to_owned(), feed.clone());
        Ok(feed)
    }
}

impl Feed {
    async fn start(frontend: &Arc<Frontend>, topic: &str) -> Result<Self, Status> {
        let reader = Arc::new(consumer(frontend, "fetch shared reader", false)?);
        let (r, t) = (reader.clone(), topic.to_owned());
        // From each partition's end as an explicit offset, not `Offset::End` (resolved later, by
        // when a stream may already have caught up to an earlier end: a gap).
        let partitions = tokio::task::spawn_blocking(move || {
            let count = partition_count(&*r, &t, METADATA_TIMEOUT)?;
            let mut list = TopicPartitionList::new();
            for p in 0..count {
                let (_, high) = r.fetch_watermarks(&t, p, METADATA_TIMEOUT)?;
                list.add_partition_offset(&t, p, Offset::Offset(high))?;
            }
            r.assign(&list)?;
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(count)
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(|e| Status::unavailable(format!("cannot read topic {topic}: {e}")))?;
        let (records, _) = broadcast::channel(frontend.config.limits.fetch_buffered_records);
        frontend.metrics.fetch_consumers.inc();
        tracing::info!(topic, partitions, "fetch: shared reader started");
        tokio::spawn(read(
            reader.clone(),
            records.clone(),
            topic.to_owned(),
            frontend.shutdown.clone(),
        ));
        Ok(Self {
            topic: topic.to_owned(),
            partitions,
            records,
            reader,
            lookups: tokio::sync::Semaphore::new(LOOKUPS),
        })
    }

    /// Joins the broadcast; records from the reader's position at this moment on arrive.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<FeedRecord>> {
        self.records.subscribe()
    }

    /// (low, high) offsets per partition. Taken after [`Feed::subscribe`], every record from
    /// `high` on arrives on the broadcast (the shared reader has read nothing past `high`).
    pub async fn watermarks(&self) -> Result<Vec<(i64, i64)>, Status> {
        let (reader, topic, partitions) =
            (self.reader.clone(), self.topic.clone(), self.partitions);
        let _lookup = self
            .lookups
            .acquire()
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| {
                    reader
                        .fetch_watermarks(&topic, p, METADATA_TIMEOUT)
                        .map_err(|e| {
                            Status::unavailable(format!("cannot read the end of {topic}/{p}: {e}"))
                        })
                })
                .collect()
        })
        .await
        .map_err(|e| Status::internal(e.to_string()))?
    }

    /// A reader of the records a stream at `progress` has not seen below the `high` of
    /// `ends` (from [`Feed::watermarks`]); `None` when it has seen them all.
    pub fn catch_up(
        &self,
        frontend: &Frontend,
        progress: &Progress,
        ends: &[(i64, i64)],
    ) -> Result<Option<CatchUp>, Status> {
        let behind: Vec<i32> = (0..self.partitions)
            .filter(|p| {
                let (low, high) = ends[*p as usize];
                progress.get(p).copied().unwrap_or(low) < high
            })
            .collect();
        if behind.is_empty() {
            return Ok(None);
        }
        let consumer = consumer(frontend, "fetch catch-up consumer", true)?;
        let mut list = TopicPartitionList::new();
        for p in &behind {
            let offset = progress
                .get(p)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            list.add_partition_offset(&self.topic, *p, offset)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| Status::unavailable(format!("cannot read topic {}: {e}", self.topic)))?;
        Ok(Some(CatchUp {
            consumer,
            remaining: behind,
            highs: ends.iter().map(|&(_, high)| high).collect(),
            _open: Counted::new(frontend.metrics.fetch_consumers.clone()),
        }))
    }
}

/// A stream's own consumer while it catches up with the shared reader.
pub(crate) struct CatchUp {
    consumer: StreamReader,
    /// Partitions whose `high` is not reached yet.
    remaining: Vec<i32>,
    highs: Vec<i64>,
    _open: Counted,
}

impl CatchUp {
    /// The next record, or `None` once every partition reached its `high`.
    pub async fn next(&mut self) -> Option<FeedRecord> {
        while !self.remaining.is_empty() {
            let partition = match self.consumer.recv().await {
                Ok(message) => {
                    let record = FeedRecord::of(&message);
                    if record.offset + 1 >= self.highs[record.partition as usize] {
                        self.remaining.retain(|p| *p != record.partition);
                    }
                    return Some(record);
                }
                // The partition's end, below `high` when its last offsets hold no record
                // (compaction, transaction markers).
                Err(KafkaError::PartitionEOF(partition)) => partition,
                Err(error) => {
                    tracing::warn!(%error, "fetch catch-up read failed");
                    continue;
                }
            };
            self.remaining.retain(|p| *p != partition);
        }
        None
    }
}

fn consumer(frontend: &Frontend, what: &'static str, eof: bool) -> Result<StreamReader, Status> {
    KafkaClients::new(&frontend.config.kafka)
        .and_then(|clients| {
            clients.stream_reader(
                "strait-grpc-kafka-fetch",
                &[
                    ("fetch.wait.max.ms", "50"),
                    ("enable.partition.eof", if eof { "true" } else { "false" }),
                    // A resume point older than the retention starts at the oldest record.
                    ("auto.offset.reset", "earliest"),
                ],
                what,
            )
        })
        .map_err(|e| Status::unavailable(e.to_string()))
}

async fn read(
    reader: Arc<StreamReader>,
    records: broadcast::Sender<Arc<FeedRecord>>,
    topic: String,
    shutdown: CancellationToken,
) {
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = reader.recv() => message,
        };
        match message {
            // No stream listening is fine: the next one catches up from Kafka.
            Ok(message) => drop(records.send(Arc::new(FeedRecord::of(&message)))),
            Err(error) => tracing::warn!(topic, %error, "fetch shared reader: read failed"),
        }
    }
}

/// Counts an open consumer in a gauge while it lives.
struct Counted(prometheus::IntGauge);

impl Counted {
    fn new(gauge: prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.dec();
    }
}
