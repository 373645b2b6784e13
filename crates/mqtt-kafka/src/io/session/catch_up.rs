//! Catching up: what a resumed session or an overflowed inbox missed is read from Kafka from
//! the stored delivery progress, and the progress itself.

use super::*;
use crate::core::catch_up::{KAFKA_STALL, KafkaWait, RangeStart, range_start};
use crate::core::progress::{Floor, owed};
use crate::core::queue::read_back;
use crate::io::metrics::KafkaMetrics;
use strait_kafka::Reader;

impl Session {
    /// Starts reading what the session missed: records after its stored offsets up to the
    /// dispatcher's current position.
    pub(super) fn start_catch_up(
        &mut self,
        offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
    ) -> Option<CatchUp> {
        let now = self.up.positions();
        let mut ranges = Vec::new();
        for (t, ends) in now.iter().enumerate() {
            let Some(stored) = offsets.get(&self.up.topics.name(t)) else {
                continue;
            };
            for (p, end) in ends.iter().enumerate() {
                let p = p as i32;
                if let Some(from) = stored.get(&p) {
                    ranges.push((t, p, *from, *end));
                }
            }
        }
        self.catch_up(ranges, CatchUpReason::Resume)
    }

    /// After an overflow, once the inbox is drained: a catch-up over what was dropped.
    pub(super) fn resume_overflow(&mut self) -> Option<CatchUp> {
        // Positions first: every record before them is in the inbox or in `overflow`.
        let now = self.up.positions();
        let overflow = self.inbox.state.lock().take_overflow()?;
        tracing::debug!(
            partitions = overflow.len(),
            "delivery queue overflowed; reading the rest from Kafka"
        );
        let mut later = None;
        let ranges = overflow
            .into_iter()
            .map(|((t, p), left_out)| {
                // A topic added since `now` was read: a later reading covers it as well.
                let positions = match now.get(t) {
                    Some(_) => &now,
                    None => later.get_or_insert_with(|| self.up.positions()),
                };
                let range = read_back(&left_out, positions[t][p as usize]);
                (t, p, range.start, range.end)
            })
            .collect();
        self.catch_up(ranges, CatchUpReason::Overflow)
    }

    /// Reads `ranges` (topic index, partition, from, to) for this session; live deliveries below
    /// `to` are skipped from now on.
    pub(super) fn catch_up(
        &mut self,
        ranges: Vec<(usize, i32, i64, i64)>,
        reason: CatchUpReason,
    ) -> Option<CatchUp> {
        let mut reads = Vec::new();
        for (t, p, from, to) in ranges {
            if self.catch_ups.start((t, p), from, to) {
                reads.push((t, self.up.topics.name(t), p, from, to));
            }
        }
        if reads.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(256);
        let clients = self.up.clients.clone();
        let metrics = self.up.metrics.clone();
        let readers = self.up.catch_up_readers.clone();
        tokio::spawn(async move {
            let mut reads = reads;
            let mut held_back = None;
            loop {
                if let Some(delivery) = held_back.take() {
                    // The client read nothing for a while: wait for it without a reader.
                    if tx.send(Ok(delivery)).await.is_err() || reads.is_empty() {
                        return;
                    }
                }
                // Each reader is a Kafka consumer on a blocking thread: a reconnect storm waits
                // for a free one rather than starting thousands.
                let permit = match readers.clone().try_acquire_owned() {
                    Ok(permit) => permit,
                    Err(_) => {
                        metrics.limit_hit(Limit::CatchUps);
                        let Ok(permit) = readers.clone().acquire_owned().await else {
                            return;
                        };
                        permit
                    }
                };
                let reader = (clients.clone(), metrics.clone(), tx.clone());
                let read = tokio::task::spawn_blocking(move || {
                    let (clients, metrics, tx) = reader;
                    let _permit = permit;
                    // Active while the reader runs.
                    let _active = metrics.catch_up(reason);
                    catch_up(&clients, reads, &tx, &metrics).inspect_err(|error| {
                        tracing::warn!(error = crate::error_chain(error), "catch-up failed");
                        let _ = tx.blocking_send(Err(crate::error_chain(error)));
                    })
                })
                .await;
                match read {
                    Ok(Ok(Some(paused))) => {
                        metrics.catch_up_pauses.inc();
                        reads = paused.rest;
                        held_back = Some(paused.held_back);
                    }
                    Ok(Ok(None)) | Ok(Err(_)) | Err(_) => return,
                }
            }
        });
        Some(rx)
    }

    /// Per messages topic and partition, the offset this session's delivery would resume from.
    pub(super) fn progress(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        // The positions first: every record before them is in the inbox or was handled.
        let positions = self.up.positions();
        let mut progress: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        let mut floor = Floor::default();
        floor.hold_queue(&self.inbox.state.lock(), |item| {
            owed(item.message.qos, item.shared.is_some())
                .then_some(((item.topic, item.partition), item.offset))
        });
        floor.hold_in_flight(&self.outbound);
        self.catch_ups.hold(&mut floor);
        for (t, p, offset) in self.qos2.owed() {
            floor.hold((*t, *p), *offset);
        }
        for (t, topic_positions) in positions.iter().enumerate() {
            let partitions = progress.entry(self.up.topics.name(t)).or_default();
            for (p, position) in topic_positions.iter().enumerate() {
                let p = p as i32;
                partitions.insert(p, floor.progress((t, p), *position));
            }
        }
        progress
    }
}

/// How long a catch-up reader waits for its client to take a record before giving the reader
/// up (`limits.maxCatchUps` are few: a client that keeps its window closed must not keep one).
const SLOW_CLIENT: Duration = Duration::from_secs(1);

/// A catch-up that gave its reader up: the record its client did not take, and what is left.
struct Paused {
    held_back: Arc<Delivery>,
    rest: Vec<(usize, String, i32, i64, i64)>,
}

/// Reads `ranges` (topic index, topic, partition, from, to) and sends every record to `tx`.
/// A range whose start Kafka no longer has (retention, delete-records) is read from the log
/// start; a range is done once the reader's position reaches its end, whether or not a record
/// sits at `to - 1` (deleted, compacted, a transaction marker). When the client takes nothing
/// for [`SLOW_CLIENT`], the read stops and says where it was.
fn catch_up(
    clients: &KafkaClients,
    ranges: Vec<(usize, String, i32, i64, i64)>,
    tx: &mpsc::Sender<Result<Arc<Delivery>, String>>,
    metrics: &KafkaMetrics,
) -> Result<Option<Paused>, UpstreamError> {
    let consumer = clients.reader("catch-up reader")?;
    let mut assignment = TopicPartitionList::new();
    // Per partition: its topic index, the next offset to hand on, and the range's end.
    let mut left: HashMap<(String, i32), (usize, i64, i64)> = HashMap::new();
    for (t, topic, p, from, to) in ranges {
        let (low, _) = consumer.fetch_watermarks(&topic, p, super::super::METADATA_TIMEOUT)?;
        let from = match range_start(from, to, low) {
            RangeStart::From(from) => from,
            RangeStart::LogStart(low) => {
                metrics.catch_up_offsets_reset.inc();
                tracing::warn!(
                    topic,
                    partition = p,
                    stored = from,
                    log_start = low,
                    "the session's stored offset is no longer in Kafka (retention or \
                     delete-records): reading from the log start; the records in between are lost"
                );
                low
            }
            RangeStart::Nothing => continue,
        };
        assignment.add_partition_offset(&topic, p, Offset::Offset(from))?;
        left.insert((topic, p), (t, from, to));
    }
    if left.is_empty() {
        return Ok(None);
    }
    consumer.assign(&assignment)?;
    let runtime = tokio::runtime::Handle::current();
    let mut waiting = KafkaWait::start(std::time::Instant::now());
    let every = Duration::from_millis(200);
    let mut paused = None;
    let read = poll_loop(&consumer, "catch-up reader", every, |polled| {
        let record = match polled {
            Polled::Record(record) => record,
            Polled::PartitionEnd(_) | Polled::Idle => {
                finish_read_ranges(&consumer, &mut left);
                if left.is_empty() {
                    return ControlFlow::Break(Ok(()));
                }
                if waiting.stalled(std::time::Instant::now()) {
                    return ControlFlow::Break(Err(UpstreamError::Timeout(format!(
                        "catch-up got nothing from Kafka for {} s",
                        KAFKA_STALL.as_secs()
                    ))));
                }
                return ControlFlow::Continue(());
            }
        };
        let key = (record.topic().to_string(), record.partition());
        let Some((t, next, to)) = left.get(&key).copied() else {
            return ControlFlow::Continue(());
        };
        if record.offset() >= to {
            left.remove(&key);
        } else if record.offset() >= next {
            let headers = record_headers(&record);
            match headers::decode(
                record.key(),
                Bytes::copy_from_slice(record.payload().unwrap_or_default()),
                headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            ) {
                Ok(message) => {
                    let delivery = Arc::new(Delivery {
                        topic: t,
                        partition: record.partition(),
                        offset: record.offset(),
                        timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                        message,
                        shared: None,
                    });
                    // Waits while the client's window is closed: delivery pauses, and after
                    // a while the reader goes to others.
                    match runtime.block_on(tx.send_timeout(Ok(delivery), SLOW_CLIENT)) {
                        Ok(()) => metrics.catch_up_records.inc(),
                        Err(mpsc::error::SendTimeoutError::Timeout(Ok(delivery))) => {
                            left.insert(key, (t, record.offset() + 1, to));
                            paused = Some(delivery);
                            return ControlFlow::Break(Ok(()));
                        }
                        Err(_) => return ControlFlow::Break(Ok(())),
                    }
                }
                Err(error) => {
                    metrics.record_skipped(&error, &key.0, key.1, record.offset());
                }
            }
            left.insert(key.clone(), (t, record.offset() + 1, to));
            if record.offset() + 1 >= to {
                left.remove(&key);
            }
        }
        waiting.progressed(std::time::Instant::now());
        if left.is_empty() {
            return ControlFlow::Break(Ok(()));
        }
        ControlFlow::Continue(())
    });
    read?;
    Ok(paused.map(|held_back| Paused {
        held_back,
        rest: left
            .into_iter()
            .filter(|(_, (_, next, to))| next < to)
            .map(|((topic, p), (t, next, to))| (t, topic, p, next, to))
            .collect(),
    }))
}

/// Drops from `left` the ranges the reader's position has reached.
fn finish_read_ranges(consumer: &Reader, left: &mut HashMap<(String, i32), (usize, i64, i64)>) {
    let Ok(positions) = consumer.position() else {
        return;
    };
    for element in positions.elements() {
        let key = (element.topic().to_string(), element.partition());
        if let (Offset::Offset(position), Some((_, _, to))) = (element.offset(), left.get(&key))
            && position >= *to
        {
            left.remove(&key);
        }
    }
}
