//! Answers read back from the reply topics: every complete answer written there (by this
//! member, another one, or a run of kafka-grpc that has since died) within the dedup window.
//! They go into the dedup store, so a call redelivered after a crash or a rebalance is answered
//! from the reply topic instead of calling the service again, and a client retrying with its
//! idempotency key gets the answer that was written.
//!
//! One reader thread per process, from `dedupWindow` ago; the request consumer starts once it
//! has caught up with the reply topics' ends as they were at start.

use std::collections::{HashMap, HashSet};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use rdkafka::consumer::Consumer;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use strait_kafka::headers::record_headers;
use strait_kafka::poll::{Polled, poll_loop};
use strait_kafka::{KafkaClients, Reader};
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use strait_config::grpc::CorrelationHeaders;

use super::call::Answer;
use crate::RoleError;
use crate::grpc::wire::ReplyRecord;

/// Answers being read at once (a server stream's replies come one by one): past this, new ones
/// are not learned (their calls would be made again, as before this store existed).
const MAX_PARTIAL: usize = 10_000;
const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

/// A complete answer seen in a reply topic.
pub(super) struct Heard {
    pub id: String,
    pub answer: Arc<Answer>,
}

/// The answers of one reply partition being read, by correlation id; `None` once one is known
/// to be incomplete here (too big, or its start was not seen).
#[derive(Default)]
struct Partial {
    answers: HashMap<String, Option<(Vec<ReplyRecord>, usize)>>,
}

/// What the reader learns from one record.
#[derive(Debug)]
enum Step {
    /// A reply of an answer still being read.
    More,
    /// The answer is complete.
    Complete(Vec<ReplyRecord>),
    /// Not learned (its start unseen, too big, or too many at once).
    Skipped,
}

impl Partial {
    /// Adds a reply record of answer `id`; `end` when it is the answer's last (the null record
    /// with a status). `trusted` is false for a record so close to where reading started that
    /// an answer it begins here may have begun before (its start would be missing).
    fn add(
        &mut self,
        id: &str,
        record: ReplyRecord,
        end: bool,
        trusted: bool,
        max_bytes: usize,
    ) -> Step {
        let size = record.size();
        let crowded = self.answers.len() >= MAX_PARTIAL;
        match self.answers.get_mut(id) {
            Some(Some((records, bytes))) => {
                *bytes += size;
                if *bytes > max_bytes {
                    self.answers.insert(id.to_string(), None);
                    return Step::Skipped;
                }
                records.push(record);
                if end {
                    let (records, _) = self.answers.remove(id).flatten().expect("present");
                    return Step::Complete(records);
                }
                Step::More
            }
            Some(None) => {
                if end {
                    self.answers.remove(id);
                }
                Step::Skipped
            }
            None if end && trusted => Step::Complete(vec![record]),
            None if end => Step::Skipped,
            None if !trusted || crowded || size > max_bytes => {
                // Its end must not complete a truncated answer: remember it as unknown.
                if self.answers.len() < 2 * MAX_PARTIAL {
                    self.answers.insert(id.to_string(), None);
                }
                Step::Skipped
            }
            None => {
                self.answers
                    .insert(id.to_string(), Some((vec![record], size)));
                Step::More
            }
        }
    }
}

/// Starts the reader of `topics` from `window` ago. Complete answers arrive on the receiver;
/// the watch turns true once everything written before the start has been read.
pub(super) fn start(
    clients: &KafkaClients,
    topics: Vec<String>,
    window: Duration,
    call_timeout: Duration,
    headers: &CorrelationHeaders,
    max_answer_bytes: usize,
    shutdown: CancellationToken,
) -> Result<(mpsc::Receiver<Heard>, watch::Receiver<bool>), RoleError> {
    let reader: Reader = clients.reader("answers reader")?;
    let (correlation_header, status_header) =
        (headers.correlation_id.clone(), headers.status.clone());
    // An answer is written within its call's time: one that starts later than this after the
    // first record read cannot have started before it.
    let trusted_from_ms =
        unix_ms(SystemTime::now().checked_sub(window)) + call_timeout.as_millis() as i64;
    let (heard_tx, heard) = mpsc::channel(1024);
    let (ready_tx, ready) = watch::channel(false);
    std::thread::Builder::new()
        .name("answers".into())
        .spawn(move || {
            let read = || -> Result<(), rdkafka::error::KafkaError> {
                let ends = assign_from(&reader, &topics, window)?;
                let mut caught_up: HashSet<(String, i32)> = ends
                    .iter()
                    .filter(|(_, end)| **end <= 0)
                    .map(|(key, _)| key.clone())
                    .collect();
                let _ = ready_tx.send(caught_up.len() == ends.len());
                let mut partial: HashMap<(String, i32), Partial> = HashMap::new();
                poll_loop(
                    &reader,
                    "answers reader",
                    Duration::from_millis(200),
                    |polled| {
                        if shutdown.is_cancelled() {
                            return ControlFlow::Break(Ok(()));
                        }
                        let Polled::Record(record) = polled else {
                            if !*ready_tx.borrow() {
                                mark_positions(&reader, &ends, &mut caught_up);
                                let _ = ready_tx.send(caught_up.len() == ends.len());
                            }
                            return ControlFlow::Continue(());
                        };
                        let key = (record.topic().to_string(), record.partition());
                        if !*ready_tx.borrow()
                            && ends
                                .get(&key)
                                .is_some_and(|end| record.offset() + 1 >= *end)
                        {
                            caught_up.insert(key.clone());
                            let _ = ready_tx.send(caught_up.len() == ends.len());
                        }
                        let headers = record_headers(&record);
                        let id = headers
                            .iter()
                            .find(|(n, _)| *n == correlation_header)
                            .and_then(|(_, v)| std::str::from_utf8(v).ok())
                            .or_else(|| record.key().and_then(|k| std::str::from_utf8(k).ok()))
                            .map(str::to_string);
                        let Some(id) = id else {
                            return ControlFlow::Continue(());
                        };
                        let value = record.payload().map(Bytes::copy_from_slice);
                        let end =
                            value.is_none() && headers.iter().any(|(n, _)| *n == status_header);
                        let reply = ReplyRecord { value, headers };
                        let trusted =
                            record.timestamp().to_millis().unwrap_or(0) >= trusted_from_ms;
                        let step = partial.entry(key).or_default().add(
                            &id,
                            reply,
                            end,
                            trusted,
                            max_answer_bytes,
                        );
                        if let Step::Complete(records) = step {
                            let answer = Arc::new(Answer {
                                topic: record.topic().to_string(),
                                key: id.clone(),
                                records,
                            });
                            if heard_tx.blocking_send(Heard { id, answer }).is_err() {
                                return ControlFlow::Break(Ok(()));
                            }
                        }
                        ControlFlow::Continue(())
                    },
                )
            };
            if let Err(error) = read() {
                tracing::warn!(%error, "reading answers back from the reply topics failed");
                // The consumer must not wait for a reader that is gone.
                let _ = ready_tx.send(true);
            }
        })
        .map_err(RoleError::Thread)?;
    Ok((heard, ready))
}

/// Assigns every partition of `topics` from `window` ago; the end offsets now of those with
/// records to read from there (what the reader must reach to have caught up).
fn assign_from(
    reader: &Reader,
    topics: &[String],
    window: Duration,
) -> Result<HashMap<(String, i32), i64>, rdkafka::error::KafkaError> {
    let since = unix_ms(SystemTime::now().checked_sub(window));
    let mut times = TopicPartitionList::new();
    let mut ends = HashMap::new();
    for topic in topics {
        let metadata = reader.fetch_metadata(Some(topic), METADATA_TIMEOUT)?;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let p = partition.id();
            let (_, high) = reader.fetch_watermarks(topic, p, METADATA_TIMEOUT)?;
            ends.insert((topic.clone(), p), high);
            times.add_partition_offset(topic, p, Offset::Offset(since))?;
        }
    }
    let found = reader.offsets_for_times(times, METADATA_TIMEOUT)?;
    let mut starts = TopicPartitionList::new();
    for element in found.elements() {
        let key = (element.topic().to_string(), element.partition());
        let start = match element.offset() {
            Offset::Offset(offset) => offset,
            // No record that recent: from the end.
            _ => ends[&key],
        };
        if start >= ends[&key] {
            // Nothing to read before the start: the reader's position stays unknown until a
            // record comes, so waiting for it to reach the end would never be ready.
            ends.remove(&key);
        }
        starts.add_partition_offset(element.topic(), element.partition(), Offset::Offset(start))?;
    }
    reader.assign(&starts)?;
    Ok(ends)
}

fn unix_ms(time: Option<SystemTime>) -> i64 {
    time.and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as i64)
}

/// Partitions whose reader position reached their end as of the start.
fn mark_positions(
    reader: &Reader,
    ends: &HashMap<(String, i32), i64>,
    caught_up: &mut HashSet<(String, i32)>,
) {
    let Ok(positions) = reader.position() else {
        return;
    };
    for element in positions.elements() {
        let key = (element.topic().to_string(), element.partition());
        if let (Offset::Offset(position), Some(end)) = (element.offset(), ends.get(&key))
            && position >= *end
        {
            caught_up.insert(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(value: Option<&'static [u8]>) -> ReplyRecord {
        ReplyRecord {
            value: value.map(Bytes::from_static),
            headers: Vec::new(),
        }
    }

    #[test]
    fn an_answer_is_learned_only_when_read_from_its_first_reply_to_its_end() {
        let mut partial = Partial::default();
        assert!(matches!(
            partial.add("a", reply(Some(b"1")), false, true, 1024),
            Step::More
        ));
        assert!(matches!(
            partial.add("a", reply(Some(b"2")), false, true, 1024),
            Step::More
        ));
        let Step::Complete(records) = partial.add("a", reply(None), true, true, 1024) else {
            panic!("complete");
        };
        assert_eq!(records.len(), 3);
        // A status-only answer is whole in one record.
        assert!(matches!(
            partial.add("b", reply(None), true, true, 1024),
            Step::Complete(r) if r.len() == 1
        ));
        // Too big: its end does not complete a truncated answer.
        assert!(matches!(
            partial.add("c", reply(Some(b"12345")), false, true, 8),
            Step::More
        ));
        assert!(matches!(
            partial.add("c", reply(Some(b"67890")), false, true, 8),
            Step::Skipped
        ));
        assert!(matches!(
            partial.add("c", reply(None), true, true, 8),
            Step::Skipped
        ));
        assert!(partial.answers.is_empty(), "nothing left behind");
        // Near where reading started an answer may have begun earlier: not learned.
        assert!(matches!(
            partial.add("d", reply(Some(b"x")), false, false, 1024),
            Step::Skipped
        ));
        assert!(matches!(
            partial.add("d", reply(None), true, true, 1024),
            Step::Skipped
        ));
        assert!(matches!(
            partial.add("e", reply(None), true, false, 1024),
            Step::Skipped
        ));
    }
}
