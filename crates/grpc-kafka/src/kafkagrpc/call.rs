//! One call of kafka-grpc: the request messages as they arrive, the call to the target (again
//! after UNAVAILABLE, with backoff), the dead-letter copy, and the reply records.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use futures::stream::FuturesOrdered;
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{DeliveryFuture, FutureRecord};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::metadata::MetadataMap;
use tonic::{Code, Request, Status};

use super::{Backend, Done};
use crate::grpc::codec::RawCodec;
use crate::grpc::wire::{self, ReplyRecord};

pub(super) struct CallStart {
    pub(super) method: String,
    pub(super) path: String,
    pub(super) correlation_id: String,
    pub(super) reply_to: Option<String>,
    pub(super) metadata: MetadataMap,
    pub(super) timeout: Option<Duration>,
    pub(super) headers: Vec<(String, Option<Vec<u8>>)>,
}

/// The request messages of a call, kept so an attempt after UNAVAILABLE replays them.
struct Upload {
    buffered: Vec<Bytes>,
    ended: bool,
    rx: mpsc::Receiver<Bytes>,
}

fn request_stream(
    upload: Arc<tokio::sync::Mutex<Upload>>,
) -> impl futures::Stream<Item = Bytes> + Send + 'static {
    futures::stream::unfold((upload, 0usize), |(upload, i)| async move {
        let mut u = upload.lock().await;
        if let Some(message) = u.buffered.get(i).cloned() {
            drop(u);
            return Some((message, (upload, i + 1)));
        }
        if u.ended {
            return None;
        }
        match u.rx.recv().await {
            Some(message) => {
                u.buffered.push(message.clone());
                drop(u);
                Some((message, (upload, i + 1)))
            }
            None => {
                u.ended = true;
                None
            }
        }
    })
}

pub(super) async fn run_call(
    backend: Arc<Backend>,
    start: CallStart,
    instance: u64,
    rx: mpsc::Receiver<Bytes>,
    cancel: CancellationToken,
    done_tx: mpsc::UnboundedSender<Done>,
) {
    let started = Instant::now();
    let config = &backend.config;
    backend.metrics.in_flight.inc();
    let timeout = start
        .timeout
        .map_or(config.call_timeout, |t| t.min(config.call_timeout));
    let deadline = started + timeout;
    let upload = Arc::new(tokio::sync::Mutex::new(Upload {
        buffered: Vec::new(),
        ended: false,
        rx,
    }));
    let mut writer = ReplyWriter::new(
        backend.clone(),
        start.correlation_id.clone(),
        start.reply_to.clone(),
    );
    let status = tokio::select! {
        status = attempts(&backend, &start, &upload, &mut writer, deadline) => status,
        () = cancel.cancelled() => Status::cancelled("the client cancelled the call"),
        () = tokio::time::sleep_until(deadline) => Status::deadline_exceeded(format!("the service did not answer within {timeout:?}")),
    };
    // Nobody waits for a cancelled call's answer, and a stale end record could reach a retry
    // of the call (same correlation id): a cancelled call ends without one.
    let (written, mut replies) = if status.code() == Code::Cancelled && cancel.is_cancelled() {
        writer.flush().await
    } else {
        writer.end(&status).await
    };
    if !written {
        // The partition moves on all the same: the service was called, only its answer is
        // missing.
        let error = writer.failure().unwrap_or("not acknowledged").to_owned();
        reply_not_written(&backend, &start, &upload, &error).await;
    }
    if matches!(
        status.code(),
        Code::Cancelled | Code::DeadlineExceeded | Code::Unavailable
    ) {
        // Not the service's answer: a repeat of this call should really call it.
        replies = None;
    }
    backend.metrics.in_flight.dec();
    backend
        .metrics
        .finished(&start.method, status.code(), started.elapsed());
    tracing::debug!(code = ?status.code(), "call finished");
    let _ = done_tx.send(Done::Call {
        correlation_id: start.correlation_id,
        instance,
        replies: replies.map(Arc::new),
    });
}

/// Calls the target, again after UNAVAILABLE (with backoff) while no reply was written; after the
/// last attempt the request goes to the dead-letter topic, if any.
async fn attempts(
    backend: &Arc<Backend>,
    start: &CallStart,
    upload: &Arc<tokio::sync::Mutex<Upload>>,
    writer: &mut ReplyWriter,
    deadline: Instant,
) -> Status {
    let config = &backend.config;
    // While waiting for a permit, keep taking this call's request messages off the consumer
    // loop's hands (up to a bound), so a full queue never stalls the partition.
    const MAX_BUFFERED_WHILE_WAITING: usize = 4096;
    let permit = loop {
        let mut u = upload.lock().await;
        if u.ended || u.buffered.len() >= MAX_BUFFERED_WHILE_WAITING {
            drop(u);
            break backend.permits.acquire().await;
        }
        tokio::select! {
            permit = backend.permits.acquire() => break permit,
            message = u.rx.recv() => match message {
                Some(message) => u.buffered.push(message),
                None => u.ended = true,
            },
        }
    };
    let Ok(_permit) = permit else {
        return Status::unavailable("kafka-grpc is shutting down");
    };
    let mut attempt = 0;
    loop {
        attempt += 1;
        let status = match call_once(backend, start, upload, writer, deadline).await {
            Ok(()) => return Status::ok(""),
            Err(status) => status,
        };
        if status.code() != Code::Unavailable || writer.wrote_any() {
            return status;
        }
        if attempt < config.retries.attempts {
            backend
                .metrics
                .retries
                .with_label_values(&[backend.metrics.method_label(&start.method)])
                .inc();
            let backoff = backoff(
                config.retries.initial_backoff,
                config.retries.max_backoff,
                attempt,
            );
            tracing::info!(attempt, ?backoff, %status, "target unavailable; retrying");
            tokio::time::sleep(backoff).await;
            continue;
        }
        let Some(topic) = &config.dead_letter_topic else {
            return Status::unavailable(format!("{} (after {attempt} attempts)", status.message()));
        };
        backend
            .metrics
            .dead_letters
            .with_label_values(&[backend.metrics.method_label(&start.method)])
            .inc();
        return match dead_letter(backend, start, upload, topic, &status, attempt).await {
            Ok(()) => Status::unavailable(format!(
                "{} (after {attempt} attempts; the request was moved to {topic})",
                status.message()
            )),
            Err(error) => Status::unavailable(format!(
                "{} (after {attempt} attempts; writing to {topic} failed: {error})",
                status.message()
            )),
        };
    }
}

/// A reply Kafka did not take (after the producer's own retries) must not hold its partition's
/// committed offset forever (nothing after it could be committed, and a restart would call the
/// service again for everything since): the request goes to the dead-letter topic with why, a
/// few attempts, or, without one (or when that fails too), is given up on, logged and counted.
/// The caller gets no answer and sees its deadline pass.
async fn reply_not_written(
    backend: &Arc<Backend>,
    start: &CallStart,
    upload: &Arc<tokio::sync::Mutex<Upload>>,
    error: &str,
) {
    let method = backend.metrics.method_label(&start.method);
    backend
        .metrics
        .reply_failures
        .with_label_values(&[method])
        .inc();
    let reply_to = start.reply_to.as_deref().unwrap_or("(none)");
    let status = Status::internal(format!("the reply to {reply_to} was not written: {error}"));
    let Some(topic) = &backend.config.dead_letter_topic else {
        tracing::error!(correlation_id = %start.correlation_id, reply_to, error, "the reply was not written and there is no deadLetterTopic: the request is given up (its caller gets no answer)");
        return;
    };
    const ATTEMPTS: u32 = 3;
    for attempt in 1..=ATTEMPTS {
        match dead_letter(backend, start, upload, topic, &status, 1).await {
            Ok(()) => {
                backend
                    .metrics
                    .dead_letters
                    .with_label_values(&[method])
                    .inc();
                tracing::warn!(correlation_id = %start.correlation_id, reply_to, error, dead_letters = %topic, "the reply was not written; the request was moved to the dead-letter topic");
                return;
            }
            Err(dead_letter_error) if attempt < ATTEMPTS => {
                tracing::warn!(%dead_letter_error, attempt, "writing the dead letter failed; trying again");
                tokio::time::sleep(Duration::from_secs(1 << attempt)).await;
            }
            Err(dead_letter_error) => {
                tracing::error!(correlation_id = %start.correlation_id, reply_to, error, %dead_letter_error, "neither the reply nor the dead letter was written: the request is given up");
            }
        }
    }
}

fn backoff(initial: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = initial.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = exp.min(max);
    // ±20 % jitter so retrying replicas do not hit the target in step.
    let jitter = rand::random::<f64>() * 0.4 + 0.8;
    base.mul_f64(jitter)
}

async fn call_once(
    backend: &Arc<Backend>,
    start: &CallStart,
    upload: &Arc<tokio::sync::Mutex<Upload>>,
    writer: &mut ReplyWriter,
    deadline: Instant,
) -> Result<(), Status> {
    let max = backend.config.max_message_size;
    let mut client = tonic::client::Grpc::new(backend.channel.clone())
        .max_decoding_message_size(max)
        .max_encoding_message_size(max);
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("target not ready: {e}")))?;
    let path = http::uri::PathAndQuery::try_from(start.path.as_str())
        .map_err(|_| Status::internal(format!("{:?} is not a valid method path", start.path)))?;
    let mut request = Request::new(request_stream(upload.clone()));
    *request.metadata_mut() = start.metadata.clone();
    request.set_timeout(deadline.saturating_duration_since(Instant::now()));
    let response = client.streaming(request, path, RawCodec).await?;
    let (metadata, mut messages, _) = response.into_parts();
    writer.set_metadata(&metadata);
    while let Some(message) = messages.message().await? {
        writer.message(message).await;
    }
    Ok(())
}

async fn dead_letter(
    backend: &Backend,
    start: &CallStart,
    upload: &Arc<tokio::sync::Mutex<Upload>>,
    topic: &str,
    status: &Status,
    attempts: u32,
) -> Result<(), String> {
    let mut u = upload.lock().await;
    // The rest of the request stream, if it is still arriving (bounded wait).
    while !u.ended {
        match tokio::time::timeout(Duration::from_secs(5), u.rx.recv()).await {
            Ok(Some(message)) => u.buffered.push(message),
            Ok(None) | Err(_) => u.ended = true,
        }
    }
    let error = status.message().to_owned();
    let attempts = attempts.to_string();
    let mut headers = OwnedHeaders::new();
    for (key, value) in &start.headers {
        headers = headers.insert(rdkafka::message::Header {
            key,
            value: value.as_deref(),
        });
    }
    headers = headers
        .insert(rdkafka::message::Header {
            key: "strait:error",
            value: Some(error.as_bytes()),
        })
        .insert(rdkafka::message::Header {
            key: "strait:attempts",
            value: Some(attempts.as_bytes()),
        });
    let mut deliveries = Vec::new();
    for value in u.buffered.iter().map(Some).chain([None]) {
        let mut record = FutureRecord::<str, [u8]>::to(topic)
            .key(&start.correlation_id)
            .headers(headers.clone());
        if let Some(value) = value {
            record = record.payload(value.as_ref());
        }
        deliveries.push(
            send(&backend.producer, record)
                .await
                .map_err(|e| e.to_string())?,
        );
    }
    for delivery in deliveries {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((error, _))) => return Err(error.to_string()),
            Err(_) => return Err("producer closed".into()),
        }
    }
    Ok(())
}

/// Enqueues a record, waiting while librdkafka's queue is full (back-pressure, not an error).
async fn send<'a>(
    producer: &strait_kafka::Producer,
    mut record: FutureRecord<'a, str, [u8]>,
) -> Result<DeliveryFuture, rdkafka::error::KafkaError> {
    loop {
        match producer.send_result(record) {
            Ok(delivery) => return Ok(delivery),
            Err((
                rdkafka::error::KafkaError::MessageProduction(
                    rdkafka::types::RDKafkaErrorCode::QueueFull,
                ),
                r,
            )) => {
                record = r;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err((error, _)) => return Err(error),
        }
    }
}

/// Writes a call's reply records (key and correlation header = the call's id, response
/// metadata as `meta:*`) and keeps a copy for answering a repeated call.
pub(super) struct ReplyWriter {
    backend: Arc<Backend>,
    correlation_id: String,
    reply_to: Option<String>,
    meta: Vec<(String, Vec<u8>)>,
    kept: Option<Vec<ReplyRecord>>,
    kept_bytes: usize,
    deliveries: FuturesOrdered<DeliveryFuture>,
    wrote: bool,
    failed: Option<String>,
}

impl ReplyWriter {
    pub(super) fn new(
        backend: Arc<Backend>,
        correlation_id: String,
        reply_to: Option<String>,
    ) -> Self {
        Self {
            backend,
            correlation_id,
            reply_to,
            meta: Vec::new(),
            kept: Some(Vec::new()),
            kept_bytes: 0,
            deliveries: FuturesOrdered::new(),
            wrote: false,
            failed: None,
        }
    }

    fn wrote_any(&self) -> bool {
        self.wrote
    }

    fn set_metadata(&mut self, metadata: &MetadataMap) {
        self.meta = wire::metadata_to_headers(metadata, |_| true);
    }

    async fn message(&mut self, value: Bytes) {
        self.write(Some(value), Vec::new()).await;
    }

    async fn write(&mut self, value: Option<Bytes>, extra: Vec<(String, Vec<u8>)>) {
        let Some(topic) = self.reply_to.clone() else {
            return; // one-way call
        };
        self.wrote = true;
        let names = &self.backend.config.headers;
        let mut headers = vec![(
            names.correlation_id.clone(),
            self.correlation_id.clone().into_bytes(),
        )];
        headers.extend(self.meta.iter().cloned());
        headers.extend(extra);
        let reply = ReplyRecord { value, headers };
        match write_reply(&self.backend.producer, &topic, &self.correlation_id, &reply).await {
            Ok(delivery) => self.deliveries.push_back(delivery),
            Err(error) => self.failed = Some(error),
        }
        while self.deliveries.len() > 64 {
            let delivery = self.deliveries.next().await;
            self.check(delivery);
        }
        if let Some(kept) = &mut self.kept {
            self.kept_bytes += reply.size();
            if self.kept_bytes > self.backend.config.dedup_max_answer_bytes {
                // Too big to record for a repeat, which then calls the service again.
                self.kept = None;
                self.backend
                    .metrics
                    .limit_hits
                    .with_label_values(&["dedupMaxAnswerBytes"])
                    .inc();
            } else {
                kept.push(reply);
            }
        }
    }

    fn check(
        &mut self,
        delivery: Option<
            Result<
                rdkafka::producer::future_producer::OwnedDeliveryResult,
                futures::channel::oneshot::Canceled,
            >,
        >,
    ) {
        match delivery {
            Some(Ok(Ok(_))) | None => {}
            Some(Ok(Err((error, _)))) => self.failed = Some(error.to_string()),
            Some(Err(_)) => self.failed = Some("producer closed".into()),
        }
    }

    /// Writes the end record with `status` and waits for every reply record to be acknowledged.
    /// Returns whether all were, and the records for answering a repeat.
    pub(super) async fn end(&mut self, status: &Status) -> (bool, Option<Answer>) {
        let names = &self.backend.config.headers;
        let mut extra = vec![(
            names.status.clone(),
            (status.code() as i32).to_string().into_bytes(),
        )];
        if !status.message().is_empty() {
            extra.push((names.message.clone(), status.message().as_bytes().to_vec()));
        }
        self.write(None, extra).await;
        self.flush().await
    }

    /// Why writing the reply failed, once it has.
    pub(super) fn failure(&self) -> Option<&str> {
        self.failed.as_deref()
    }

    /// Waits for the records written so far to be acknowledged.
    async fn flush(&mut self) -> (bool, Option<Answer>) {
        while let Some(delivery) = self.deliveries.next().await {
            self.check(Some(delivery));
        }
        if let Some(error) = &self.failed {
            tracing::error!(%error, "writing the reply failed");
            return (false, None);
        }
        let answer = match (&self.reply_to, self.kept.take()) {
            (Some(topic), Some(records)) => Some(Answer {
                topic: topic.clone(),
                key: self.correlation_id.clone(),
                records,
            }),
            _ => None,
        };
        (true, answer)
    }
}

async fn write_reply(
    producer: &strait_kafka::Producer,
    topic: &str,
    key: &str,
    reply: &ReplyRecord,
) -> Result<DeliveryFuture, String> {
    let headers = strait_kafka::headers::owned_headers(
        reply
            .headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_slice())),
    );
    let mut record = FutureRecord::<str, [u8]>::to(topic)
        .key(key)
        .headers(headers);
    if let Some(value) = &reply.value {
        record = record.payload(value.as_ref());
    }
    send(producer, record)
        .await
        .map_err(|e| format!("cannot write to {topic}: {e}"))
}

/// The recorded answer of a call: what to re-send when the call is repeated.
pub(crate) struct Answer {
    pub(super) topic: String,
    pub(super) key: String,
    pub(super) records: Vec<ReplyRecord>,
}

/// Re-sends the recorded replies of an answered call; true once all are acknowledged.
pub(super) async fn resend(backend: &Backend, answer: &Answer) -> bool {
    let mut deliveries = Vec::new();
    for reply in &answer.records {
        match write_reply(&backend.producer, &answer.topic, &answer.key, reply).await {
            Ok(delivery) => deliveries.push(delivery),
            Err(error) => {
                tracing::warn!(%error, "re-sending recorded replies failed");
                return false;
            }
        }
    }
    for delivery in deliveries {
        if !matches!(delivery.await, Ok(Ok(_))) {
            return false;
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_jitter() {
        let (initial, max) = (Duration::from_millis(100), Duration::from_secs(1));
        for (attempt, base) in [
            (1, 100),
            (2, 200),
            (3, 400),
            (4, 800),
            (5, 1000),
            (30, 1000),
        ] {
            let b = backoff(initial, max, attempt).as_millis() as u64;
            assert!(
                (base * 8 / 10..=base * 12 / 10).contains(&b),
                "attempt {attempt}: {b} ms"
            );
        }
    }
}
