//! `fetch` routes: stream a topic to the client from the start (or from the client's
//! `last-message-id`), each message carrying its message id in field 32767 (Zilla's format), so
//! a reconnecting client resumes with no gap and no duplicate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost_reflect::MethodDescriptor;
use rdkafka::Message as _;
use rdkafka::consumer::Consumer as _;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use strait_config::grpc::{FetchFilter, FetchRoute};
use strait_kafka::headers::has_header;
use strait_kafka::topics::partition_count;
use strait_kafka::{KafkaClients, StreamReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::server::StreamingService;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::Frontend;
use super::slots::Slot;
use crate::grpc::fetch_id::{self, Progress};

pub(crate) struct FetchCall {
    pub frontend: Arc<Frontend>,
    pub route: Arc<FetchRoute>,
    pub method: MethodDescriptor,
    pub name: Arc<str>,
}

type Messages = ReceiverStream<Result<Bytes, Status>>;

impl StreamingService<Bytes> for FetchCall {
    type Response = Bytes;
    type ResponseStream = Messages;
    type Future = BoxFuture<'static, Result<Response<Messages>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        let (frontend, route, name) =
            (self.frontend.clone(), self.route.clone(), self.name.clone());
        let server_streaming = self.method.is_server_streaming();
        Box::pin(async move {
            if !server_streaming {
                return Err(Status::unimplemented(format!(
                    "{name} is a fetch route but does not return a stream"
                )));
            }
            let resume = request
                .metadata()
                .get(frontend.config.reliability.metadata.as_str())
                .and_then(|v| v.to_str().ok())
                .and_then(fetch_id::from_text);
            let mut inbound = request.into_inner();
            if let Some(body) = inbound.message().await?
                && !body.is_empty()
            {
                return Err(Status::invalid_argument(
                    "a fetch takes an empty request message",
                ));
            }
            let Some(slot) = frontend.fetch_streams.take() else {
                frontend
                    .metrics
                    .finished(&name, Code::ResourceExhausted, Duration::ZERO);
                return Err(frontend.metrics.limit_reached(
                    "limits.maxFetchStreams",
                    Status::resource_exhausted(format!(
                        "{} fetch streams are already open (limits.maxFetchStreams); try again later",
                        frontend.fetch_streams.max
                    )),
                ));
            };
            let consumer =
                open(&frontend, &route.topic, resume.clone().unwrap_or_default()).await?;
            let (tx, rx) = mpsc::channel(64);
            let span = tracing::info_span!("fetch", method = %name, topic = %route.topic);
            frontend.metrics.in_flight.inc();
            tokio::spawn(
                stream(
                    frontend,
                    route,
                    name,
                    consumer,
                    resume.unwrap_or_default(),
                    tx,
                    slot,
                )
                .instrument(span),
            );
            Ok(Response::new(ReceiverStream::new(rx)))
        })
    }
}

async fn open(frontend: &Frontend, topic: &str, resume: Progress) -> Result<StreamReader, Status> {
    let consumer = KafkaClients::new(&frontend.config.kafka)
        .and_then(|clients| {
            clients.stream_reader(
                "strait-grpc-kafka-fetch",
                &[("fetch.wait.max.ms", "50")],
                "fetch consumer",
            )
        })
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let topic = topic.to_owned();
    tokio::task::spawn_blocking(move || {
        let count = partition_count(&consumer, &topic, Duration::from_secs(10))
            .map_err(|e| Status::unavailable(e.to_string()))?;
        let mut list = TopicPartitionList::new();
        for partition in 0..count {
            let offset = resume
                .get(&partition)
                .map_or(Offset::Beginning, |&o| Offset::Offset(o));
            list.add_partition_offset(&topic, partition, offset)
                .map_err(|e| Status::internal(e.to_string()))?;
        }
        consumer
            .assign(&list)
            .map_err(|e| Status::unavailable(format!("cannot read topic {topic}: {e}")))?;
        Ok(consumer)
    })
    .await
    .map_err(|e| Status::internal(e.to_string()))?
}

async fn stream(
    frontend: Arc<Frontend>,
    route: Arc<FetchRoute>,
    name: Arc<str>,
    consumer: StreamReader,
    mut progress: Progress,
    tx: mpsc::Sender<Result<Bytes, Status>>,
    _slot: Slot,
) {
    let started = tokio::time::Instant::now();
    let field = frontend.config.reliability.field;
    let code = loop {
        let message = tokio::select! {
            () = frontend.shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("grpc-kafka is shutting down; resume with last-message-id"))).await;
                break Code::Unavailable;
            }
            () = tx.closed() => break Code::Cancelled,
            message = consumer.recv() => message,
        };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                tracing::warn!(%error, "fetch read failed");
                continue;
            }
        };
        progress.insert(message.partition(), message.offset() + 1);
        if !matches_filters(&route.filters, &message) {
            continue;
        }
        let Some(value) = message.payload() else {
            continue; // tombstones carry no message
        };
        let id = fetch_id::encode_id(&progress);
        let out = fetch_id::append_id(value, field, &id);
        if tx.send(Ok(out)).await.is_err() {
            break Code::Cancelled;
        }
    };
    frontend.metrics.in_flight.dec();
    frontend.metrics.finished(&name, code, started.elapsed());
}

fn matches_filters(filters: &[FetchFilter], message: &impl rdkafka::Message) -> bool {
    if filters.is_empty() {
        return true;
    }
    filters.iter().any(|filter| {
        filter
            .key
            .as_ref()
            .is_none_or(|key| message.key() == Some(key.as_bytes()))
            && filter
                .headers
                .iter()
                .all(|(name, value)| has_header(message, name, value.as_bytes()))
    })
}
