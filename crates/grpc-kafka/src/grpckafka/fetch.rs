//! `fetch` routes: stream a topic to the client from the start (or from the client's
//! `last-message-id`), each message carrying its message id in field 32767 (Zilla's format), so
//! a reconnecting client resumes with no gap and no duplicate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::future::BoxFuture;
use prost_reflect::MethodDescriptor;
use strait_config::grpc::{FetchFilter, FetchRoute};
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::server::StreamingService;
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument as _;

use super::Frontend;
use super::feed::{Feed, FeedRecord};
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
            let feed = frontend.feeds.get(&frontend, &route.topic).await?;
            let (tx, rx) = mpsc::channel(64);
            let span = tracing::info_span!("fetch", method = %name, topic = %route.topic);
            frontend.metrics.in_flight.inc();
            tokio::spawn(
                stream(
                    frontend,
                    route,
                    name,
                    feed,
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

/// Streams the topic to the client: what it has not seen from Kafka (catch-up), then the
/// shared reader's records; again from Kafka whenever it falls behind the shared reader.
async fn stream(
    frontend: Arc<Frontend>,
    route: Arc<FetchRoute>,
    name: Arc<str>,
    feed: Arc<Feed>,
    mut progress: Progress,
    tx: mpsc::Sender<Result<Bytes, Status>>,
    _slot: Slot,
) {
    let started = tokio::time::Instant::now();
    let field = frontend.config.reliability.field;
    // Ends the stream's reads when the client goes or the process stops.
    let stop = CancellationToken::new();
    let watch = {
        let (stop, tx, shutdown) = (stop.clone(), tx.clone(), frontend.shutdown.clone());
        tokio::spawn(async move {
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = tx.closed() => {}
            }
            stop.cancel();
        })
    };
    let code = 'join: loop {
        let mut shared = feed.subscribe();
        let ends = match feed.watermarks().await {
            Ok(ends) => ends,
            Err(status) => {
                let code = status.code();
                let _ = tx.send(Err(status)).await;
                break code;
            }
        };
        match feed.catch_up(&frontend, &progress, &ends) {
            Ok(None) => {}
            Ok(Some(mut catch_up)) => loop {
                let record = tokio::select! {
                    () = stop.cancelled() => break 'join stopped(&frontend, &tx).await,
                    record = catch_up.next() => record,
                };
                let Some(record) = record else {
                    break; // caught up: the consumer goes
                };
                if !deliver(&route, field, &mut progress, &record, &tx).await {
                    break 'join Code::Cancelled;
                }
            },
            Err(status) => {
                let code = status.code();
                let _ = tx.send(Err(status)).await;
                break code;
            }
        }
        // Shared records below what this stream has seen were read by its catch-up.
        let mut floor: Vec<i64> = ends
            .iter()
            .enumerate()
            .map(|(p, &(_, high))| progress.get(&(p as i32)).copied().unwrap_or(0).max(high))
            .collect();
        loop {
            let record = tokio::select! {
                () = stop.cancelled() => break 'join stopped(&frontend, &tx).await,
                record = shared.recv() => record,
            };
            let record = match record {
                Ok(record) => record,
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    frontend
                        .metrics
                        .limit_hits
                        .with_label_values(&["limits.fetchBufferedRecords"])
                        .inc();
                    tracing::debug!(
                        missed,
                        "fetch fell behind the shared reader; catching up from Kafka"
                    );
                    continue 'join;
                }
                Err(broadcast::error::RecvError::Closed) => {
                    break 'join stopped(&frontend, &tx).await;
                }
            };
            let Some(floor) = floor.get_mut(record.partition as usize) else {
                continue; // a partition added since the shared reader started
            };
            if record.offset < *floor {
                continue;
            }
            *floor = record.offset + 1;
            if !deliver(&route, field, &mut progress, &record, &tx).await {
                break 'join Code::Cancelled;
            }
        }
    };
    watch.abort();
    frontend.metrics.in_flight.dec();
    frontend.metrics.finished(&name, code, started.elapsed());
}

/// Why a stream stopped reading: the process stops (the client is told to resume) or the client
/// went away.
async fn stopped(frontend: &Frontend, tx: &mpsc::Sender<Result<Bytes, Status>>) -> Code {
    if frontend.shutdown.is_cancelled() {
        let _ = tx
            .send(Err(Status::unavailable(
                "grpc-kafka is shutting down; resume with last-message-id",
            )))
            .await;
        return Code::Unavailable;
    }
    Code::Cancelled
}

/// Sends `record` to the client if the route's filters take it (with its message id); the
/// progress moves past it either way. False when the client is gone.
async fn deliver(
    route: &FetchRoute,
    field: u32,
    progress: &mut Progress,
    record: &FeedRecord,
    tx: &mpsc::Sender<Result<Bytes, Status>>,
) -> bool {
    progress.insert(record.partition, record.offset + 1);
    if !matches_filters(&route.filters, record) {
        return true;
    }
    let Some(value) = &record.value else {
        return true; // tombstones carry no message
    };
    let id = fetch_id::encode_id(progress);
    tx.send(Ok(fetch_id::append_id(value, field, &id)))
        .await
        .is_ok()
}

fn matches_filters(filters: &[FetchFilter], record: &FeedRecord) -> bool {
    if filters.is_empty() {
        return true;
    }
    filters.iter().any(|filter| {
        filter
            .key
            .as_ref()
            .is_none_or(|key| record.key.as_deref() == Some(key.as_bytes()))
            && filter
                .headers
                .iter()
                .all(|(name, value)| record.has_header(name, value.as_bytes()))
    })
}
