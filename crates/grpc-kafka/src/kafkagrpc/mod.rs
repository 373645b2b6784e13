//! kafka-grpc: consumes request topics in a consumer group, groups records into calls by
//! correlation id, calls the real gRPC service and writes the answers to each call's reply
//! topic. An offset is committed only after everything its record caused is durably written
//! (Zilla commits before); a redelivered call within the dedup window is answered from the
//! recorded replies instead of calling the service twice.

mod answers;
mod call;
mod dedup;
mod group;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::RoleError;
use bytes::Bytes;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message as _;
use strait_config::grpc::{KafkaGrpcConfig, method_matches};

use strait_runtime::Process;
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tonic::Status;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};
use tracing::Instrument as _;

use crate::grpc::metrics::GrpcMetrics;
use crate::grpc::wire::CallHeaders;
use call::{Answer, CallStart, ReplyWriter, resend, run_call};
use dedup::{Dedup, DedupMetrics};
use group::{GroupConsumer, GroupContext, Offsets, commit, mark_done, report_lag};
use strait_kafka::{KafkaClients, Linger};

/// Readiness: the consumer has joined its group and received an assignment (possibly empty).
pub const READINESS: [&str; 1] = ["kafka"];

/// Answers kept for repeated calls at most (besides `dedupMaxBytes`).
const MAX_DEDUP_ENTRIES: usize = 100_000;
const REQUEST_QUEUE: usize = 256;

struct Backend {
    config: KafkaGrpcConfig,
    channel: Channel,
    producer: strait_kafka::Producer,
    permits: Semaphore,
    metrics: GrpcMetrics,
}

/// What a call task reports back to the consumer loop.
enum Done {
    Call {
        correlation_id: String,
        instance: u64,
        replies: Option<Arc<Answer>>,
    },
    Records(Vec<(String, i32, i64)>),
}

struct OpenCall {
    /// Tells this run of the call from a later one with the same correlation id.
    instance: u64,
    requests: Option<mpsc::Sender<Bytes>>,
    records: Vec<(String, i32, i64)>,
    cancel: CancellationToken,
    /// Records came after the request stream ended: a client repeats the call (same
    /// idempotency key) and waits for this call's answer, so a cancel must not stop it.
    repeated: bool,
}

/// Consumes until shutdown (`config` as validated by the caller).
pub async fn run(config: KafkaGrpcConfig, process: &Process) -> Result<(), RoleError> {
    let ready = process.health.flag(READINESS[0]);
    let metrics = GrpcMetrics::register(&process.metrics, "kafka-grpc")?;
    let channel = channel(&config)?;
    let clients = KafkaClients::new(&config.kafka)?;
    let producer = clients.producer(config.acks, Linger::Latency)?;
    let group = config.group();
    let session_ms = config.session_timeout.as_millis().to_string();
    let heartbeat_ms = (config.session_timeout.as_millis() / 3)
        .max(100)
        .to_string();
    // Not ready (no assignment) until the cluster lets us in; a wrong password or an untrusted
    // certificate is logged and retried, never a crash loop.
    if !clients.wait_for_cluster(&process.shutdown.token()).await? {
        return Ok(());
    }
    let context = GroupContext::new(clients.report().clone(), ready);
    let consumer: Arc<GroupConsumer> = Arc::new(clients.group_member(
        &group,
        &[
            ("auto.offset.reset", "earliest"),
            ("session.timeout.ms", &session_ms),
            ("heartbeat.interval.ms", &heartbeat_ms),
            ("fetch.wait.max.ms", "20"),
        ],
        context,
        "request consumer",
    )?);
    let topics: Vec<&str> = config.routes.iter().map(|r| r.topic.as_str()).collect();
    consumer
        .subscribe(&topics)
        .map_err(|source| RoleError::Subscribe {
            topics: topics.iter().map(|t| t.to_string()).collect(),
            source,
        })?;
    tracing::info!(%group, ?topics, target = %config.target, "kafka-grpc consuming");
    let backend = Arc::new(Backend {
        permits: Semaphore::new(config.concurrency),
        config,
        channel,
        producer,
        metrics,
    });
    // Answers already in the reply topics (written before a crash, or by another member before
    // a rebalance) are learned before the first request is read.
    let mut reply_topics: Vec<String> = (backend.config.routes.iter())
        .flat_map(|r| r.reply_to.iter().cloned())
        .collect();
    reply_topics.sort();
    reply_topics.dedup();
    let answers = if backend.config.dedup_window.is_zero() || reply_topics.is_empty() {
        None
    } else {
        Some(answers::start(
            &clients,
            reply_topics,
            backend.config.dedup_window,
            backend.config.call_timeout,
            &backend.config.headers,
            backend.config.dedup_max_answer_bytes,
            process.shutdown.token(),
        )?)
    };
    tokio::spawn(report_lag(
        consumer.clone(),
        backend.metrics.clone(),
        process.shutdown.token(),
    ));
    consume(backend, consumer, answers, process.shutdown.token()).await
}

fn channel(config: &KafkaGrpcConfig) -> Result<Channel, RoleError> {
    let read = |field: &'static str, path: &std::path::Path| {
        std::fs::read(path).map_err(|source| RoleError::TargetTls {
            field,
            path: path.into(),
            source,
        })
    };
    let mut endpoint = Endpoint::from_shared(config.target.clone())
        .map_err(RoleError::Target)?
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30));
    if config.target.starts_with("https://") {
        let mut tls = ClientTlsConfig::new();
        match &config.target_tls.ca {
            Some(ca) => {
                let pem = read("ca", ca)?;
                tls = tls.ca_certificate(Certificate::from_pem(pem));
            }
            None => {
                tracing::info!(target = %config.target, "trusting the system's roots for the target (no targetTls.ca)");
                tls = tls.with_native_roots();
            }
        }
        if let (Some(cert), Some(key)) = (&config.target_tls.cert, &config.target_tls.key) {
            let cert = read("cert", cert)?;
            let key = read("key", key)?;
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(tls).map_err(RoleError::Target)?;
    }
    Ok(endpoint.connect_lazy())
}

async fn consume(
    backend: Arc<Backend>,
    consumer: Arc<GroupConsumer>,
    answers: Option<(mpsc::Receiver<answers::Heard>, watch::Receiver<bool>)>,
    shutdown: CancellationToken,
) -> Result<(), RoleError> {
    let (mut heard, mut learned) = match answers {
        Some((heard, learned)) => (Some(heard), learned),
        None => (None, watch::channel(true).1),
    };
    let config = &backend.config;
    let names = &config.headers;
    let tracker = &consumer.context().tracker;
    let mut calls: HashMap<String, OpenCall> = HashMap::new();
    let mut dedup = Dedup::new(
        config.dedup_window,
        MAX_DEDUP_ENTRIES,
        config.dedup_max_bytes,
        DedupMetrics {
            bytes: backend.metrics.dedup_bytes.clone(),
            evictions: backend.metrics.dedup_evictions.clone(),
        },
    );
    let mut superseded: Superseded = HashMap::new();
    let (done_tx, mut done_rx) = mpsc::unbounded_channel::<Done>();
    // Calls whose requests are all read but not answered yet are bounded: past this many, the
    // consumer waits for answers instead of buffering more requests in memory.
    let max_open = config.concurrency.saturating_mul(8).max(64);
    let mut commit_tick = tokio::time::interval(Duration::from_millis(100));
    commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(done) = done_rx.recv() => {
                finish(done, &mut calls, tracker, &mut dedup, &mut superseded);
            }
            Some(answer) = async { heard.as_mut()?.recv().await }, if heard.is_some() => {
                dedup.learn(answer.id, answer.answer);
            }
            Ok(()) = learned.changed(), if !*learned.borrow() => {}
            _ = commit_tick.tick() => commit(&consumer, CommitMode::Async),
            message = consumer.recv(), if *learned.borrow() && room_for_more(&calls, max_open) => {
                // The rebalance callback runs inside `recv`.
                forget_revoked(&consumer, &mut calls);
                let message = match message {
                    Ok(message) => message,
                    Err(error) => {
                        tracing::warn!(%error, "consuming requests failed");
                        continue;
                    }
                };
                let (topic, partition, offset) = (message.topic().to_owned(), message.partition(), message.offset());
                consumer.context().offsets().read((topic.clone(), partition), offset);
                let record = (topic, partition, offset);
                let headers = CallHeaders::read(&message, names);
                let value = message.payload().map(Bytes::copy_from_slice);
                drop(message);
                on_record(&backend, record, headers, value, &mut calls, tracker, &mut dedup, &mut superseded, &done_tx).await;
            }
        }
    }
    // Drain: no new records; let open calls finish (their replies written, offsets committed).
    let deadline = Instant::now() + config.drain_timeout;
    for call in calls.values_mut() {
        call.requests = None;
    }
    while !calls.is_empty() {
        match tokio::time::timeout_at(deadline, done_rx.recv()).await {
            Ok(Some(done)) => finish(done, &mut calls, tracker, &mut dedup, &mut superseded),
            Ok(None) => break,
            Err(_) => {
                tracing::warn!(
                    open = calls.len(),
                    "calls still open at the drain deadline; their records will be redelivered"
                );
                break;
            }
        }
    }
    commit(&consumer, CommitMode::Sync);
    Ok(())
}

/// Calls of revoked partitions that still wait for request records can never get them here:
/// cancelled (no reply is written for a cancelled call) and forgotten, so that the partition's
/// next holder, this member again or another, makes the call from its first record. Calls with
/// all their records go on and answer; their completion no longer counts for the commit.
fn forget_revoked(consumer: &GroupConsumer, calls: &mut HashMap<String, OpenCall>) {
    let revoked = consumer.context().take_revoked();
    if revoked.is_empty() {
        return;
    }
    calls.retain(|id, call| {
        let moved = call.requests.is_some()
            && call
                .records
                .iter()
                .any(|(t, p, _)| revoked.iter().any(|(rt, rp)| rt == t && rp == p));
        if moved {
            tracing::info!(correlation_id = %id, "call cancelled: its partition was revoked before all its request records were read");
            call.cancel.cancel();
        }
        !moved
    });
}

/// Whether to read more records: below `max_open` calls, or while some open call still waits
/// for its own request records (stopping then could never end).
fn room_for_more(calls: &HashMap<String, OpenCall>, max_open: usize) -> bool {
    calls.len() < max_open || calls.values().any(|c| c.requests.is_some())
}

/// Records of calls replaced by a repeat (same correlation id) after they were cancelled, by
/// instance: done when the replaced run finishes.
type Superseded = HashMap<u64, Vec<(String, i32, i64)>>;

static NEXT_INSTANCE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

#[allow(clippy::too_many_arguments)]
async fn on_record(
    backend: &Arc<Backend>,
    record: (String, i32, i64),
    headers: CallHeaders,
    value: Option<Bytes>,
    calls: &mut HashMap<String, OpenCall>,
    tracker: &Mutex<Offsets>,
    dedup: &mut Dedup,
    superseded: &mut Superseded,
    done_tx: &mpsc::UnboundedSender<Done>,
) {
    let config = &backend.config;
    let (topic, partition, offset) = (&record.0, record.1, record.2);
    let (Some(service), Some(method)) = (&headers.service, &headers.method) else {
        backend
            .metrics
            .bad_records
            .with_label_values(&["missing-service-or-method"])
            .inc();
        tracing::warn!(
            topic,
            partition,
            offset,
            "request record without {} and {} headers",
            config.headers.service,
            config.headers.method
        );
        let reply_allowed = |reply_to: &String| {
            config
                .routes
                .iter()
                .any(|r| r.topic == *topic && r.reply_to.contains(reply_to))
        };
        match (&headers.reply_to, &headers.correlation_id) {
            (Some(reply_to), Some(id)) if reply_allowed(reply_to) => {
                let status = Status::internal(format!(
                    "request record {topic}/{partition}@{offset} has no {} or {} header",
                    config.headers.service, config.headers.method
                ));
                let mut writer =
                    ReplyWriter::new(backend.clone(), id.clone(), Some(reply_to.clone()));
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    let (written, _) = writer.end(&status).await;
                    if !written {
                        tracing::warn!("the error reply to a bad request record was not written");
                    }
                    // A bad record is done either way: it must not hold its partition.
                    let _ = done_tx.send(Done::Records(vec![record]));
                });
            }
            _ => mark_done(tracker, topic, partition, offset),
        }
        return;
    };
    let Some(id) = headers.correlation_id.clone() else {
        backend
            .metrics
            .bad_records
            .with_label_values(&["missing-correlation-id"])
            .inc();
        tracing::warn!(
            topic,
            partition,
            offset,
            "request record without a correlation id; skipped"
        );
        mark_done(tracker, topic, partition, offset);
        return;
    };
    let full_name = format!("{service}/{method}");
    let routes: Vec<_> = config
        .routes
        .iter()
        .filter(|r| {
            r.topic == *topic
                && r.method
                    .as_deref()
                    .is_none_or(|p| method_matches(p, &full_name))
        })
        .collect();
    if routes.is_empty() {
        mark_done(tracker, topic, partition, offset);
        return;
    }
    if let Some(reply_to) = &headers.reply_to
        && !routes.iter().any(|r| r.reply_to.contains(reply_to))
    {
        // Anyone who may write requests could otherwise make kafka-grpc write into any topic
        // it can reach.
        backend
            .metrics
            .refused
            .with_label_values(&["reply_to_not_allowed"])
            .inc();
        tracing::warn!(
            topic,
            partition,
            offset,
            reply_to,
            method = %full_name,
            "request record refused: its reply topic is not in the route's replyTo; the service is not called"
        );
        mark_done(tracker, topic, partition, offset);
        return;
    }
    if value.is_none() && headers.status.is_some() {
        // Cancel: the client gave up (deadline or gone).
        if let Some(call) = calls.get(&id)
            && !call.repeated
        {
            call.cancel.cancel();
        }
        mark_done(tracker, topic, partition, offset);
        return;
    }
    if value.is_some()
        && let Some(call) = calls.get(&id)
        && call.requests.is_none()
        && call.cancel.is_cancelled()
    {
        // A client repeats a call whose first run it cancelled (e.g. a retry after its
        // deadline), before that run has wound down: this record starts a new run.
        let old = calls.remove(&id).expect("present");
        superseded.insert(old.instance, old.records);
    } else if let Some(call) = calls.get_mut(&id) {
        if call.records.contains(&record) {
            // Read again after a rebalance gave its partition back while the call still runs:
            // done when the call is, and not a request message to send twice.
            return;
        }
        call.records.push(record);
        if call.requests.is_none() {
            call.repeated = true;
            return;
        }
        match value {
            Some(value) => {
                if let Some(requests) = &call.requests
                    && requests.send(value).await.is_err()
                {
                    call.requests = None; // the call finished reading (answered early)
                }
            }
            None => call.requests = None,
        }
        return;
    }
    if let Some(answered) = dedup.get_mut(&id) {
        if !answered.request_ended {
            // A late record of the original request stream (the call ended before reading it).
            if value.is_none() {
                answered.request_ended = true;
            }
            mark_done(tracker, topic, partition, offset);
            return;
        }
        // The original ended: this record belongs to a repeat of the call (a redelivery, or a
        // client retrying with the same idempotency key).
        match answered.replies.clone() {
            Some(answer) => {
                if value.is_some() {
                    mark_done(tracker, topic, partition, offset);
                    return;
                }
                backend
                    .metrics
                    .duplicates
                    .with_label_values(&[backend.metrics.method_label(&full_name)])
                    .inc();
                tracing::info!(correlation_id = %id, "answering a repeated call from its recorded replies");
                let backend = backend.clone();
                let done_tx = done_tx.clone();
                tokio::spawn(async move {
                    if resend(&backend, &answer).await {
                        let _ = done_tx.send(Done::Records(vec![record]));
                    }
                });
                return;
            }
            // No answer worth repeating (too big, or the call was cancelled, timed out or
            // found the service unavailable): make the call again.
            None => dedup.remove(&id),
        }
    }
    // A new call.
    let (tx, rx) = mpsc::channel(REQUEST_QUEUE);
    let requests = match value {
        Some(value) => {
            let _ = tx.try_send(value);
            Some(tx)
        }
        None => None,
    };
    let cancel = CancellationToken::new();
    let instance = NEXT_INSTANCE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    calls.insert(
        id.clone(),
        OpenCall {
            instance,
            requests,
            records: vec![record],
            cancel: cancel.clone(),
            repeated: false,
        },
    );
    let span = tracing::info_span!("call", method = %full_name, correlation_id = %id);
    let start = CallStart {
        metadata: headers.metadata(),
        path: format!("/{full_name}"),
        method: full_name,
        correlation_id: id,
        reply_to: headers.reply_to.clone(),
        timeout: headers.timeout_ms.map(Duration::from_millis),
        headers: headers.all,
    };
    tokio::spawn(
        run_call(
            backend.clone(),
            start,
            instance,
            rx,
            cancel,
            done_tx.clone(),
        )
        .instrument(span),
    );
}

fn finish(
    done: Done,
    calls: &mut HashMap<String, OpenCall>,
    tracker: &Mutex<Offsets>,
    dedup: &mut Dedup,
    superseded: &mut Superseded,
) {
    match done {
        Done::Records(records) => {
            for (topic, partition, offset) in records {
                mark_done(tracker, &topic, partition, offset);
            }
        }
        Done::Call {
            correlation_id,
            instance,
            replies,
        } => {
            if calls
                .get(&correlation_id)
                .is_none_or(|c| c.instance != instance)
            {
                // A run replaced by a repeat: only its records remain to be done.
                if let Some(records) = superseded.remove(&instance) {
                    for (topic, partition, offset) in records {
                        mark_done(tracker, &topic, partition, offset);
                    }
                }
                return;
            }
            let call = calls.remove(&correlation_id).expect("checked");
            for (topic, partition, offset) in &call.records {
                mark_done(tracker, topic, *partition, *offset);
            }
            dedup.insert(correlation_id, replies, call.requests.is_none());
        }
    }
}
