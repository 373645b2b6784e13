//! Replies: one consumer per reply topic, assigned every partition from its end when the process
//! starts (never a consumer or a group per call), hands each record to the waiting call by
//! correlation id through a bounded map of pending calls.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::Message as _;
use strait_runtime::ReadinessFlag;
use tokio::sync::mpsc;
use tonic::Status;

use super::Frontend;
use crate::grpc::wire::CallHeaders;
use strait_kafka::{KafkaClients, StreamReader};

/// Reply records a call may have waiting before its client is considered too slow.
const REPLY_QUEUE: usize = 256;

pub(crate) struct ReplyEvent {
    pub value: Option<Bytes>,
    pub headers: CallHeaders,
}

/// Calls waiting for replies, by correlation id.
pub(crate) struct Pending {
    calls: Mutex<HashMap<String, mpsc::Sender<ReplyEvent>>>,
    max: usize,
}

impl Pending {
    pub fn new(max: usize) -> Self {
        Self {
            calls: Mutex::new(HashMap::new()),
            max,
        }
    }

    pub fn register(&self, correlation_id: &str) -> Result<mpsc::Receiver<ReplyEvent>, Status> {
        let mut calls = self.calls.lock().expect("pending lock poisoned");
        if calls.len() >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{} calls are already waiting for replies (limits.maxPendingCalls)",
                self.max
            )));
        }
        match calls.entry(correlation_id.to_owned()) {
            Entry::Occupied(_) => Err(Status::aborted(
                "a call with the same idempotency key is in progress",
            )),
            Entry::Vacant(slot) => {
                let (tx, rx) = mpsc::channel(REPLY_QUEUE);
                slot.insert(tx);
                Ok(rx)
            }
        }
    }

    pub fn remove(&self, correlation_id: &str) {
        self.calls
            .lock()
            .expect("pending lock poisoned")
            .remove(correlation_id);
    }

    /// Hands a record to its call; false when no call in this process waits for it.
    pub fn dispatch(&self, correlation_id: &str, event: ReplyEvent) -> bool {
        let mut calls = self.calls.lock().expect("pending lock poisoned");
        let Some(tx) = calls.get(correlation_id) else {
            return false;
        };
        match tx.try_send(event) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                // Dropping the sender ends the call with RESOURCE_EXHAUSTED; one slow client
                // never stalls the replies of the others.
                calls.remove(correlation_id);
                true
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                calls.remove(correlation_id);
                false
            }
        }
    }
}

/// Starts one reader per distinct reply topic once the cluster answers; `ready` is set once
/// every one is assigned (at once if there is none, still only once Kafka answers: until then
/// no call could be produced either).
pub(crate) fn start_readers(
    frontend: &Arc<Frontend>,
    ready: ReadinessFlag,
) -> Result<(), strait_kafka::KafkaClientError> {
    let mut topics: Vec<String> = frontend
        .config
        .routes
        .iter()
        .filter_map(|r| r.produce.as_ref()?.reply_to.clone())
        .collect();
    topics.sort();
    topics.dedup();
    let clients = KafkaClients::new(&frontend.config.kafka)?;
    let mut readers = Vec::with_capacity(topics.len());
    for topic in topics {
        let consumer = clients.stream_reader(
            &format!("strait-grpc-kafka-replies-{topic}"),
            &[("fetch.wait.max.ms", "20"), ("auto.offset.reset", "latest")],
            "reply consumer",
        )?;
        readers.push((topic, Arc::new(consumer)));
    }
    let frontend = frontend.clone();
    tokio::spawn(async move {
        match clients.wait_for_cluster(&frontend.readers_stop).await {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::error!(%error, "cannot create the Kafka client that checks the cluster");
                return;
            }
        }
        if readers.is_empty() {
            ready.set(true);
        }
        let remaining = Arc::new(AtomicUsize::new(readers.len()));
        for (topic, consumer) in readers {
            tokio::spawn(read_replies(
                frontend.clone(),
                consumer,
                topic,
                remaining.clone(),
                ready.clone(),
            ));
        }
    });
    Ok(())
}

async fn read_replies(
    frontend: Arc<Frontend>,
    consumer: Arc<StreamReader>,
    topic: String,
    remaining: Arc<AtomicUsize>,
    ready: ReadinessFlag,
) {
    let shutdown = frontend.readers_stop.clone();
    loop {
        let (c, t) = (consumer.clone(), topic.clone());
        match tokio::task::spawn_blocking(move || {
            strait_kafka::topics::assign_from_end(&*c, &t, Duration::from_secs(10))
        })
        .await
        {
            Ok(Ok(partitions)) => {
                tracing::info!(topic, partitions, "reading replies");
                break;
            }
            Ok(Err(error)) => tracing::warn!(%error, "cannot read the reply topic yet; retrying"),
            Err(error) => tracing::error!(%error, "reply topic setup task failed"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
    }
    if remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        ready.set(true);
    }
    let names = &frontend.config.headers;
    loop {
        let message = tokio::select! {
            () = shutdown.cancelled() => return,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(topic, %error, "reading replies failed");
                continue;
            }
        };
        let headers = CallHeaders::read(&message, names);
        let Some(id) = headers.correlation_id.clone() else {
            frontend
                .metrics
                .bad_records
                .with_label_values(&["reply-without-correlation-id"])
                .inc();
            continue;
        };
        let event = ReplyEvent {
            value: message.payload().map(Bytes::copy_from_slice),
            headers,
        };
        frontend.pending.dispatch(&id, event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(value: &'static [u8]) -> ReplyEvent {
        ReplyEvent {
            value: Some(Bytes::from_static(value)),
            headers: CallHeaders::default(),
        }
    }

    #[test]
    fn pending_calls_are_bounded_and_unique() {
        let pending = Pending::new(2);
        let mut a = pending.register("a").unwrap();
        assert_eq!(
            pending.register("a").unwrap_err().code(),
            tonic::Code::Aborted
        );
        let _b = pending.register("b").unwrap();
        assert_eq!(
            pending.register("c").unwrap_err().code(),
            tonic::Code::ResourceExhausted
        );
        assert!(pending.dispatch("a", event(b"1")));
        assert!(!pending.dispatch("zzz", event(b"1")));
        assert_eq!(
            a.try_recv().unwrap().value.unwrap(),
            Bytes::from_static(b"1")
        );
        pending.remove("a");
        assert!(!pending.dispatch("a", event(b"2")));
        pending.register("c").unwrap();
    }

    #[test]
    fn a_slow_call_loses_its_replies_not_the_others() {
        let pending = Pending::new(10);
        let mut slow = pending.register("slow").unwrap();
        for _ in 0..REPLY_QUEUE {
            assert!(pending.dispatch("slow", event(b"x")));
        }
        assert!(
            pending.dispatch("slow", event(b"x")),
            "overflow drops the call"
        );
        assert!(!pending.dispatch("slow", event(b"x")));
        let mut received = 0;
        while slow.try_recv().is_ok() {
            received += 1;
        }
        assert_eq!(received, REPLY_QUEUE);
        assert!(
            slow.try_recv().is_err(),
            "channel closed after the queued replies"
        );
    }
}
