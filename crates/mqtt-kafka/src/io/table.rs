//! The retained and sessions topics kept in memory: a reader thread per compacted topic applies
//! every record (latest value per key), and a session waits until what other replicas wrote a
//! moment ago has been applied.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use crate::UpstreamError;
use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use strait_kafka::headers::record_headers;
use strait_kafka::poll::{Polled, poll_loop};
use strait_kafka::{KafkaClients, Reader};
use strait_runtime::Context as _;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::METADATA_TIMEOUT;
use super::lock_order::{Level, OrderedMutex};
use super::metrics::TableGauges;

/// A compacted topic kept in memory: key → latest value (tombstones and empty values remove
/// the key).
pub struct Table {
    pub(crate) topic: String,
    /// Partitions read (more when the topic grows, see [`Table::grow`]).
    pub(crate) partitions: AtomicI32,
    pub(crate) state: OrderedMutex<TableState>,
    pub(crate) progress: Notify,
    pub(crate) consumer: Arc<Reader>,
    /// A client that never fetches, for end offsets: the tailing consumer's connection is
    /// busy with long-polling fetches, which would delay these requests.
    pub(crate) watermarks: Arc<Reader>,
    /// Records and bytes held, for the metrics.
    gauges: TableGauges,
    /// End-offset lookups of `sync` at once: every CONNECT syncs the sessions table, and each
    /// lookup holds a blocking thread while Kafka answers, so a connect storm queues here
    /// instead of growing the blocking pool by hundreds of threads.
    lookups: tokio::sync::Semaphore,
}

/// End-offset lookups of one table at once.
const LOOKUPS: usize = 4;

#[derive(Default)]
pub(crate) struct TableState {
    /// Ordered, so a subscriber's retained messages are streamed from a cursor (see
    /// [`Table::next_after`]) instead of copied out all at once.
    pub(crate) entries: BTreeMap<String, TableEntry>,
    /// Bytes of keys, values and headers held.
    pub(crate) bytes: i64,
    /// Next offset to read per partition (everything before has been applied).
    pub(crate) positions: HashMap<i32, i64>,
}

#[derive(Debug, Clone)]
pub struct TableEntry {
    pub value: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: i64,
}

impl TableEntry {
    /// Bytes held for this entry under `key` (key, value and headers), for the metrics.
    fn size(&self, key: &str) -> i64 {
        let headers: usize = self.headers.iter().map(|(n, v)| n.len() + v.len()).sum();
        (key.len() + self.value.len() + headers) as i64
    }
}

pub(crate) type OnChange = Box<dyn Fn(&str, Option<&TableEntry>) + Send + Sync>;

impl Table {
    pub(crate) fn start(
        clients: &KafkaClients,
        watermarks: Arc<Reader>,
        topic: &str,
        partitions: i32,
        shutdown: CancellationToken,
        gauges: TableGauges,
        on_change: OnChange,
    ) -> Result<Arc<Self>, UpstreamError> {
        let consumer = clients
            .reader("table reader")
            .with_context(|| format!("creating the reader of {topic}"))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let table = Arc::new(Self {
            topic: topic.to_string(),
            partitions: AtomicI32::new(partitions),
            watermarks,
            state: OrderedMutex::new(Level::Leaf, "table", TableState::default()),
            progress: Notify::new(),
            consumer: Arc::new(consumer),
            gauges,
            lookups: tokio::sync::Semaphore::new(LOOKUPS),
        });
        let reader = table.clone();
        std::thread::Builder::new()
            .name(format!("table-{topic}"))
            .spawn(move || reader.tail(shutdown, on_change))?;
        Ok(table)
    }

    pub(crate) fn tail(&self, shutdown: CancellationToken, on_change: OnChange) {
        let every = Duration::from_millis(100);
        poll_loop(&self.consumer, "table reader", every, |polled| {
            if shutdown.is_cancelled() {
                return ControlFlow::Break(());
            }
            match polled {
                Polled::Record(record) => {
                    let key = record
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    // An empty value clears the key as a tombstone does. Retained: Zilla
                    // clears a retained message that way, and MQTT 5 §3.3.1.3 keeps no
                    // zero-byte retained message. Sessions: Strait never writes an empty session
                    // record (it is JSON), and an empty one would hold no session anyway.
                    let entry =
                        record
                            .payload()
                            .filter(|v| !v.is_empty())
                            .map(|value| TableEntry {
                                value: Bytes::copy_from_slice(value),
                                headers: record_headers(&record),
                                timestamp_ms: record.timestamp().to_millis().unwrap_or(0),
                            });
                    on_change(&key, entry.as_ref());
                    let mut state = self.state.lock();
                    let removed = state.entries.get(&key).map_or(0, |e| e.size(&key));
                    let added = entry.as_ref().map_or(0, |e| e.size(&key));
                    match entry {
                        Some(entry) => state.entries.insert(key, entry),
                        None => state.entries.remove(&key),
                    };
                    state.bytes += added - removed;
                    self.gauges.bytes.set(state.bytes);
                    self.gauges.records.set(state.entries.len() as i64);
                    state
                        .positions
                        .insert(record.partition(), record.offset() + 1);
                }
                // Nothing to read now: the reader's positions may have moved past offsets that
                // hold no record (transaction markers, records compacted away).
                Polled::PartitionEnd(_) | Polled::Idle => {
                    if !self.take_positions() {
                        return ControlFlow::Continue(());
                    }
                }
            }
            self.progress.notify_waiters();
            ControlFlow::Continue(())
        });
    }

    /// Records the reader's positions that moved ahead of the records applied; whether any did.
    fn take_positions(&self) -> bool {
        let Ok(positions) = self.consumer.position() else {
            return false;
        };
        let mut state = self.state.lock();
        let mut moved = false;
        for element in positions.elements_for_topic(&self.topic) {
            if let Offset::Offset(next) = element.offset() {
                let position = state.positions.entry(element.partition()).or_default();
                if *position < next {
                    *position = next;
                    moved = true;
                }
            }
        }
        moved
    }

    /// Waits until everything written to the topic before this call has been applied, so a
    /// session reads what another replica wrote a moment ago. A partition is read up to its end
    /// when the reader's position reaches the end offset, or when the partition holds no record
    /// (log start = end, also above 0 after delete-records or retention: no record will come).
    pub async fn sync(&self, deadline: Duration) -> Result<(), UpstreamError> {
        let consumer = self.watermarks.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions.load(Ordering::Acquire);
        let lookup = self.lookups.acquire().await;
        let watermarks = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, METADATA_TIMEOUT)?)))
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await?
        .with_context(|| format!("reading the end offsets of {}", self.topic))?;
        drop(lookup);
        tokio::time::timeout(deadline, async {
            loop {
                let notified = self.progress.notified();
                {
                    let state = self.state.lock();
                    let caught_up = watermarks.iter().all(|(p, (low, high))| {
                        read_to_end(state.positions.get(p).copied(), *low, *high)
                    });
                    if caught_up {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await
        .with_context(|| format!("{} not read up to its end within {deadline:?}", self.topic))
        .map_err(Into::into)
    }

    /// The topic has `count` partitions now: reads the new ones from their start. (Records
    /// are placed by key hash, so a grown compacted topic has keys whose latest record is in
    /// a new partition.)
    pub(crate) fn grow(&self, count: i32) -> Result<(), UpstreamError> {
        let read = self.partitions.load(Ordering::Acquire);
        if count <= read {
            return Ok(());
        }
        tracing::warn!(
            topic = self.topic,
            from = read,
            to = count,
            "a compacted topic has new partitions; reading them (keys now hash to other \
             partitions: never grow the retained or sessions topic)"
        );
        let mut assignment = TopicPartitionList::new();
        for p in read..count {
            assignment.add_partition_offset(&self.topic, p, Offset::Beginning)?;
        }
        self.consumer.incremental_assign(&assignment)?;
        self.partitions.store(count, Ordering::Release);
        Ok(())
    }

    pub fn get(&self, key: &str) -> Option<TableEntry> {
        self.state.lock().entries.get(key).cloned()
    }

    /// The first entry after `after` (from the start when `None`) whose key starts with
    /// `prefix` and satisfies `keep`: one step of a scan that holds no copy of the table.
    pub fn next_after(
        &self,
        after: Option<&str>,
        prefix: &str,
        mut keep: impl FnMut(&str) -> bool,
    ) -> Option<(String, TableEntry)> {
        let state = self.state.lock();
        scan_after(&state.entries, after, prefix, &mut keep).map(|(k, v)| (k.clone(), v.clone()))
    }

    /// Whether setting `key` to a value of `value_size` bytes (key and headers included)
    /// keeps the table within `max_records` and `max_bytes`.
    pub fn admits(&self, key: &str, value_size: u64, max_records: u64, max_bytes: u64) -> bool {
        let state = self.state.lock();
        let replaced = state.entries.get(key);
        let records = state.entries.len() as u64 + u64::from(replaced.is_none());
        let freed = replaced.map_or(0, |e| e.size(key)) as u64;
        let bytes = (state.bytes as u64).saturating_sub(freed) + value_size;
        records <= max_records && bytes <= max_bytes
    }

    /// Entries whose key satisfies `keep`.
    pub fn select(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<(String, TableEntry)> {
        let state = self.state.lock();
        state
            .entries
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// The first key after `after` (or from `prefix`) that starts with `prefix` and is kept.
fn scan_after<'a, V>(
    entries: &'a BTreeMap<String, V>,
    after: Option<&str>,
    prefix: &str,
    keep: &mut impl FnMut(&str) -> bool,
) -> Option<(&'a String, &'a V)> {
    let start = match after {
        Some(after) if after >= prefix => Bound::Excluded(after),
        _ => Bound::Included(prefix),
    };
    entries
        .range::<str, _>((start, Bound::Unbounded))
        .take_while(|(k, _)| k.starts_with(prefix))
        .find(|(k, _)| keep(k))
}

/// Whether a table reader at `position` (the next offset to read, `None` before the first)
/// has read a partition with log start `low` and end `high`.
fn read_to_end(position: Option<i64>, low: i64, high: i64) -> bool {
    low >= high || position.is_some_and(|position| position >= high)
}

#[cfg(test)]
mod tests {
    use super::{BTreeMap, read_to_end, scan_after};

    #[test]
    fn a_scan_walks_the_keys_under_a_prefix_one_match_at_a_time() {
        let entries: BTreeMap<String, ()> = ["a/1", "a/2", "a/3/x", "ab", "b/1"]
            .into_iter()
            .map(|k| (k.to_string(), ()))
            .collect();
        let walk = |prefix: &str, keep: &dyn Fn(&str) -> bool| {
            let mut keys = Vec::new();
            let mut after: Option<String> = None;
            while let Some((key, _)) =
                scan_after(&entries, after.as_deref(), prefix, &mut |k: &str| keep(k))
            {
                keys.push(key.clone());
                after = Some(key.clone());
            }
            keys
        };
        assert_eq!(
            walk("a/", &|k| strait_mqtt_codec::topic::matches("a/+", k)),
            ["a/1", "a/2"]
        );
        assert_eq!(walk("", &|_| true).len(), 5);
        assert_eq!(walk("b/", &|_| true), ["b/1"]);
        assert!(walk("c", &|_| true).is_empty());
    }

    #[test]
    fn a_partition_is_read_to_its_end_by_position_or_when_it_holds_no_record() {
        assert!(read_to_end(None, 0, 0), "never written");
        assert!(!read_to_end(None, 0, 3));
        assert!(!read_to_end(Some(2), 0, 3));
        assert!(read_to_end(Some(3), 0, 3));
        // Every record deleted (delete-records, retention): log start = end above 0, and the
        // reader never gets a record to move its position.
        assert!(read_to_end(None, 5, 5));
        assert!(read_to_end(Some(2), 5, 5));
        assert!(
            !read_to_end(None, 5, 7),
            "records 5 and 6 are still to read"
        );
    }
}
