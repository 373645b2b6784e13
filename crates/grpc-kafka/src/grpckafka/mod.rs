//! grpc-kafka: a gRPC server for any service the `.proto` files describe. Each call becomes
//! records on a route's request topic; its answer comes back as records on the reply topic,
//! read by one consumer per reply topic (assigned all partitions) that hands each record to the
//! waiting call by correlation id. `fetch` routes stream a topic to the client instead.

mod fetch;
mod replies;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesOrdered;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use prost_reflect::{DynamicMessage, MethodDescriptor, ReflectMessage as _};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::FutureRecord;
use strait_config::grpc::{Acks, GrpcKafkaConfig, GrpcRoute, ProduceRoute, method_matches};

use strait_kafka::headers::owned_headers;
use strait_runtime::Process;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::metadata::MetadataMap;
use tonic::server::{Grpc, StreamingService};
use tonic::{Code, Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::grpc::codec::RawCodec;
use crate::grpc::metrics::GrpcMetrics;
use crate::grpc::protos::Protos;
use crate::grpc::wire::{self, CallHeaders, TIMEOUT_HEADER};
use replies::{Pending, ReplyEvent};
use strait_kafka::{KafkaClients, Linger, Producer};

/// Readiness flags: the gRPC listener is bound; every reply topic is being read.
pub const READINESS: [&str; 2] = ["listener", "kafka"];

pub(crate) struct Frontend {
    pub config: GrpcKafkaConfig,
    routes: Vec<(GrpcRoute, Option<Arc<ProduceRoute>>)>,
    pub protos: Protos,
    producers: HashMap<Acks, Producer>,
    pub pending: Pending,
    pub metrics: GrpcMetrics,
    pub shutdown: CancellationToken,
    /// Stops the reply readers: only after the drain, so calls in progress still get answers.
    pub readers_stop: CancellationToken,
    calls: TaskTracker,
}

/// Serves until shutdown (`config` as validated by the caller).
pub async fn run(config: GrpcKafkaConfig, process: &Process) -> anyhow::Result<()> {
    let (_, serve) = start(config, process).await?;
    serve.await
}

/// Binds the listener, starts the reply readers and returns the address and the serving future.
pub async fn start(
    config: GrpcKafkaConfig,
    process: &Process,
) -> anyhow::Result<(SocketAddr, impl Future<Output = anyhow::Result<()>> + use<>)> {
    let listener_ready = process.health.flag(READINESS[0]);
    let kafka_ready = process.health.flag(READINESS[1]);
    let protos = Protos::load(config.protos.clone()).context("protos")?;
    let shutdown = process.shutdown.token();
    protos.watch(shutdown.clone());
    let clients = KafkaClients::new(&config.kafka)?;
    let mut producers = HashMap::new();
    for route in &config.routes {
        if let Some(produce) = &route.produce
            && !producers.contains_key(&produce.acks)
        {
            let producer = clients.producer(produce.acks, Linger::Latency)?;
            producers.insert(produce.acks, producer);
        }
    }
    let metrics = GrpcMetrics::register(&process.metrics, "grpc-kafka")?;
    let routes = config
        .routes
        .iter()
        .map(|r| (r.clone(), r.produce.clone().map(Arc::new)))
        .collect();
    let frontend = Arc::new(Frontend {
        pending: Pending::new(config.limits.max_pending_calls),
        routes,
        protos,
        producers,
        metrics,
        shutdown: shutdown.clone(),
        readers_stop: CancellationToken::new(),
        calls: TaskTracker::new(),
        config,
    });
    replies::start_readers(&frontend, kafka_ready)?;

    let tls = strait_tls::server_config(&frontend.config.tls, &[b"h2"])
        .context("tls")?
        .map(tokio_rustls::TlsAcceptor::from);
    let listener = tokio::net::TcpListener::bind(frontend.config.listen)
        .await
        .with_context(|| format!("listen: cannot bind {}", frontend.config.listen))?;
    let local = listener.local_addr()?;
    tracing::info!(listen = %local, tls = tls.is_some(), routes = frontend.routes.len(), "grpc-kafka serving");
    listener_ready.set(true);
    let serve = async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // TLS handshakes run in their own tasks and hand finished streams back here, so every
        // connection is watched by the one graceful-shutdown handle.
        let (handshaken, mut secured) = mpsc::channel(64);
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                Some((stream, peer)) = secured.recv() => {
                    serve_connection(frontend.clone(), &graceful, TokioIo::new(stream), peer);
                    continue;
                }
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = stream.set_nodelay(true);
            match tls.clone() {
                None => serve_connection(frontend.clone(), &graceful, TokioIo::new(stream), peer),
                Some(acceptor) => {
                    let handshaken = handshaken.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                let _ = handshaken.send((stream, peer)).await;
                            }
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    });
                }
            }
        }
        listener_ready.set(false);
        drop(listener);
        let deadline = frontend.config.drain_timeout;
        frontend.calls.close();
        let drained = strait_runtime::drain(deadline, async {
            graceful.shutdown().await;
            frontend.calls.wait().await;
        })
        .await;
        if !drained {
            tracing::warn!(
                ?deadline,
                "calls still open at the drain deadline were dropped"
            );
        }
        for producer in frontend.producers.values() {
            let _ = rdkafka::producer::Producer::flush(producer, Duration::from_secs(5));
        }
        Ok(())
    };
    Ok((local, serve))
}

fn serve_connection<IO>(
    frontend: Arc<Frontend>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    io: TokioIo<IO>,
    peer: SocketAddr,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper::service::service_fn(move |request| {
        let frontend = frontend.clone();
        async move { Ok::<_, Infallible>(frontend.handle(request).await) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    });
}

impl Frontend {
    async fn handle(
        self: Arc<Self>,
        request: http::Request<Incoming>,
    ) -> http::Response<tonic::body::Body> {
        let name = request.uri().path().trim_start_matches('/').to_owned();
        let Some(method) = self.protos.method(&name) else {
            self.metrics
                .finished("unknown", Code::Unimplemented, Duration::ZERO);
            return Status::unimplemented(format!(
                "unknown method {name:?}: not in the .proto files"
            ))
            .into_http();
        };
        let headers = request.headers();
        let route = self.routes.iter().position(|(r, _)| {
            method_matches(&r.method, &name)
                && r.metadata.iter().all(|(k, v)| {
                    headers
                        .get(k.as_str())
                        .is_some_and(|h| h.as_bytes() == v.as_bytes())
                })
        });
        let Some(route) = route else {
            self.metrics
                .finished(&name, Code::Unimplemented, Duration::ZERO);
            return Status::unimplemented(format!("no route for {name}")).into_http();
        };
        let max = self.config.limits.max_message_size;
        let mut grpc = Grpc::new(RawCodec)
            .max_decoding_message_size(max)
            .max_encoding_message_size(max + 64);
        let name: Arc<str> = name.into();
        match &self.routes[route].1 {
            Some(produce) => {
                let service = ProduceCall {
                    frontend: self.clone(),
                    route: produce.clone(),
                    method,
                    name,
                };
                grpc.streaming(service, request).await
            }
            None => {
                let service = fetch::FetchCall {
                    frontend: self.clone(),
                    route: route_fetch(&self.routes[route].0),
                    method,
                    name,
                };
                grpc.streaming(service, request).await
            }
        }
    }
}

fn route_fetch(route: &GrpcRoute) -> Arc<strait_config::grpc::FetchRoute> {
    Arc::new(
        route
            .fetch
            .clone()
            .expect("validated: a route without produce has fetch"),
    )
}

struct ProduceCall {
    frontend: Arc<Frontend>,
    route: Arc<ProduceRoute>,
    method: MethodDescriptor,
    name: Arc<str>,
}

type Replies = ReceiverStream<Result<Bytes, Status>>;

impl StreamingService<Bytes> for ProduceCall {
    type Response = Bytes;
    type ResponseStream = Replies;
    type Future = BoxFuture<'static, Result<Response<Replies>, Status>>;

    fn call(&mut self, request: Request<Streaming<Bytes>>) -> Self::Future {
        Box::pin(produce_call(
            self.frontend.clone(),
            self.route.clone(),
            self.method.clone(),
            self.name.clone(),
            request,
        ))
    }
}

/// What a call's records carry, fixed when it starts.
struct CallRecords {
    topic: String,
    producer: Producer,
    headers: OwnedHeaders,
    /// The end-of-request (and cancel) records carry correlation headers only with a reply-to.
    correlated: bool,
    key: KeySource,
    input: prost_reflect::MessageDescriptor,
    status_header: String,
}

enum KeySource {
    Fixed(String),
    Field(String),
}

async fn produce_call(
    frontend: Arc<Frontend>,
    route: Arc<ProduceRoute>,
    method: MethodDescriptor,
    name: Arc<str>,
    request: Request<Streaming<Bytes>>,
) -> Result<Response<Replies>, Status> {
    let started = Instant::now();
    let config = &frontend.config;
    let metadata = request.metadata();
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(wire::parse_grpc_timeout)
        .unwrap_or(config.limits.default_timeout);
    // Answer a little before the client's own timer fires, so it sees DEADLINE_EXCEEDED from
    // us (with the reason) rather than a local cancellation racing the answer.
    let deadline = started + timeout - (timeout / 10).min(Duration::from_millis(100));
    let idempotency_key = metadata
        .get(config.idempotency_metadata.as_str())
        .and_then(|v| v.to_str().ok());
    let (service, method_name) = name.split_once('/').unwrap_or((&name, ""));
    let correlation_id = wire::correlation_id(
        idempotency_key,
        &config.headers,
        service,
        method_name,
        route.reply_to.as_deref(),
    );
    let key = match route.key.as_deref() {
        Some(spec) if spec.starts_with("metadata:") => KeySource::Fixed(
            metadata
                .get(&spec["metadata:".len()..])
                .and_then(|v| v.to_str().ok())
                .unwrap_or(&correlation_id)
                .to_owned(),
        ),
        Some(spec) if spec.starts_with("field:") => {
            KeySource::Field(spec["field:".len()..].to_owned())
        }
        _ => KeySource::Fixed(correlation_id.clone()),
    };
    let mut pairs: Vec<(String, Vec<u8>)> = Vec::with_capacity(8);
    if let Some(reply_to) = &route.reply_to {
        let h = &config.headers;
        pairs.push((h.service.clone(), service.as_bytes().to_vec()));
        pairs.push((h.method.clone(), method_name.as_bytes().to_vec()));
        pairs.push((h.reply_to.clone(), reply_to.as_bytes().to_vec()));
        pairs.push((h.correlation_id.clone(), correlation_id.as_bytes().to_vec()));
        pairs.push((
            TIMEOUT_HEADER.into(),
            timeout.as_millis().to_string().into_bytes(),
        ));
    }
    pairs.extend(wire::metadata_to_headers(metadata));
    let headers = owned_headers(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice())));
    let records = CallRecords {
        topic: route.topic.clone(),
        producer: frontend.producers[&route.acks].clone(),
        headers,
        correlated: route.reply_to.is_some(),
        key,
        input: method.input(),
        status_header: config.headers.status.clone(),
    };
    let replies = match &route.reply_to {
        Some(_) => match frontend.pending.register(&correlation_id) {
            Ok(rx) => Some(rx),
            Err(status) => {
                frontend
                    .metrics
                    .finished(&name, status.code(), started.elapsed());
                return Err(status);
            }
        },
        None => None,
    };
    let (head_tx, head_rx) = oneshot::channel();
    let (out_tx, out_rx) = mpsc::channel(16);
    let span = tracing::info_span!("call", method = %name, correlation_id = %correlation_id);
    frontend.metrics.in_flight.inc();
    let call = Call {
        frontend: frontend.clone(),
        name,
        correlation_id,
        server_streaming: method.is_server_streaming(),
        started,
        deadline,
        head: Some(head_tx),
        out: out_tx,
        registered: replies.is_some(),
    };
    frontend.calls.spawn(
        call.run(records, request.into_inner(), replies)
            .instrument(span),
    );
    match head_rx.await {
        Ok(Ok(metadata)) => {
            let mut response = Response::new(ReceiverStream::new(out_rx));
            *response.metadata_mut() = metadata;
            Ok(response)
        }
        Ok(Err(status)) => Err(status),
        Err(_) => Err(Status::internal("the call ended before answering")),
    }
}

/// One call in progress: uploads the request stream, forwards replies, enforces the deadline.
struct Call {
    frontend: Arc<Frontend>,
    name: Arc<str>,
    correlation_id: String,
    server_streaming: bool,
    started: Instant,
    deadline: Instant,
    head: Option<oneshot::Sender<Result<MetadataMap, Status>>>,
    out: mpsc::Sender<Result<Bytes, Status>>,
    registered: bool,
}

impl Call {
    async fn run(
        mut self,
        records: CallRecords,
        inbound: Streaming<Bytes>,
        mut replies: Option<mpsc::Receiver<ReplyEvent>>,
    ) {
        let produced = AtomicBool::new(false);
        let upload = upload(&records, inbound, &produced);
        tokio::pin!(upload);
        let mut uploaded = false;
        let mut answered = false;
        let code = loop {
            tokio::select! {
                result = &mut upload, if !uploaded => {
                    uploaded = true;
                    if let Err(status) = result {
                        tracing::debug!(%status, "request stream failed");
                        break self.fail(status).await;
                    }
                    if replies.is_none() {
                        // One-way: the records are written, so the call is done.
                        self.send_head(MetadataMap::new());
                        if !self.server_streaming {
                            let _ = self.out.send(Ok(Bytes::new())).await;
                        }
                        answered = true;
                        break Code::Ok;
                    }
                }
                event = next_reply(&mut replies) => {
                    let Some(event) = event else {
                        break self.fail(Status::resource_exhausted(
                            "replies arrived faster than the client read them",
                        )).await;
                    };
                    if let Some(code) = self.reply(event).await {
                        answered = code != Code::Cancelled;
                        break code;
                    }
                }
                () = tokio::time::sleep_until(self.deadline) => {
                    break self.fail(Status::deadline_exceeded(format!(
                        "no answer within the call's deadline of {:?}",
                        self.deadline - self.started
                    ))).await;
                }
                () = self.out.closed() => break Code::Cancelled,
            }
        };
        if !answered && code != Code::Ok && produced.load(Ordering::Acquire) && records.correlated {
            // Tell kafka-grpc the client gave up so it can stop working on the call.
            let cancel_code = (code as i32).to_string();
            let headers = records.headers.clone().insert(rdkafka::message::Header {
                key: &records.status_header,
                value: Some(cancel_code.as_bytes()),
            });
            let key = match &records.key {
                KeySource::Fixed(key) => key.clone(),
                KeySource::Field(_) => self.correlation_id.clone(),
            };
            let record = FutureRecord::<String, [u8]>::to(&records.topic)
                .key(&key)
                .headers(headers);
            if let Err((error, _)) = records.producer.send_result(record) {
                tracing::warn!(%error, "cannot write the cancel record");
            }
        }
        self.frontend
            .metrics
            .finished(&self.name, code, self.started.elapsed());
    }

    /// Handles one reply record; `Some(code)` when it ended the call.
    async fn reply(&mut self, event: ReplyEvent) -> Option<Code> {
        let status_of = |headers: &CallHeaders| {
            let code = Code::from_i32(headers.status.unwrap_or(Code::Unknown as i32));
            Status::with_metadata(
                code,
                headers.message.clone().unwrap_or_default(),
                headers.metadata(),
            )
        };
        if self.head.is_some() {
            let metadata = event.headers.metadata();
            if event.value.is_none() {
                let status = status_of(&event.headers);
                if status.code() != Code::Ok {
                    return Some(self.fail(status).await);
                }
            }
            self.send_head(metadata);
        }
        match event.value {
            Some(value) => {
                if self.out.send(Ok(value)).await.is_err() {
                    return Some(Code::Cancelled);
                }
                None
            }
            None => {
                let status = status_of(&event.headers);
                let code = status.code();
                if code != Code::Ok {
                    let _ = self.out.send(Err(status)).await;
                }
                Some(code)
            }
        }
    }

    fn send_head(&mut self, metadata: MetadataMap) {
        if let Some(head) = self.head.take() {
            let _ = head.send(Ok(metadata));
        }
    }

    async fn fail(&mut self, status: Status) -> Code {
        let code = status.code();
        match self.head.take() {
            Some(head) => {
                let _ = head.send(Err(status));
            }
            None => {
                let _ = self.out.send(Err(status)).await;
            }
        }
        code
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        if self.registered {
            self.frontend.pending.remove(&self.correlation_id);
        }
        self.frontend.metrics.in_flight.dec();
    }
}

async fn next_reply(replies: &mut Option<mpsc::Receiver<ReplyEvent>>) -> Option<ReplyEvent> {
    match replies {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Writes each request message as a record (checked against the method's input type), then
/// the null end record; waits until Kafka acknowledged them all.
async fn upload(
    records: &CallRecords,
    mut inbound: Streaming<Bytes>,
    produced: &AtomicBool,
) -> Result<(), Status> {
    const MAX_UNACKED: usize = 64;
    let mut deliveries = FuturesOrdered::new();
    let mut key: Option<String> = match &records.key {
        KeySource::Fixed(key) => Some(key.clone()),
        KeySource::Field(_) => None,
    };
    loop {
        let next = inbound.message().await?;
        if let Some(bytes) = &next {
            let message =
                DynamicMessage::decode(records.input.clone(), bytes.as_ref()).map_err(|e| {
                    Status::invalid_argument(format!(
                        "request message is not a valid {}: {e}",
                        records.input.full_name()
                    ))
                })?;
            if key.is_none()
                && let KeySource::Field(field) = &records.key
            {
                key = Some(field_key(&message, field)?);
            }
        }
        if !records.correlated && next.is_none() {
            break; // one-way calls have no end record (Zilla's layout)
        }
        let key = key.as_deref().unwrap_or_default();
        let mut record = FutureRecord::<str, [u8]>::to(&records.topic)
            .key(key)
            .headers(records.headers.clone());
        if let Some(bytes) = &next {
            record = record.payload(bytes.as_ref());
        }
        match records.producer.send_result(record) {
            Ok(delivery) => deliveries.push_back(delivery),
            Err((error, _)) => {
                return Err(Status::unavailable(format!(
                    "cannot write to topic {}: {error}",
                    records.topic
                )));
            }
        }
        produced.store(true, Ordering::Release);
        while deliveries.len() >= MAX_UNACKED {
            acked(&records.topic, deliveries.next().await)?;
        }
        if next.is_none() {
            break;
        }
    }
    while let Some(delivery) = deliveries.next().await {
        acked(&records.topic, Some(delivery))?;
    }
    Ok(())
}

fn acked(
    topic: &str,
    delivery: Option<
        Result<
            rdkafka::producer::future_producer::OwnedDeliveryResult,
            futures::channel::oneshot::Canceled,
        >,
    >,
) -> Result<(), Status> {
    match delivery {
        Some(Ok(Ok(_))) | None => Ok(()),
        Some(Ok(Err((error, _)))) => Err(Status::unavailable(format!(
            "Kafka did not acknowledge the request on topic {topic}: {error}"
        ))),
        Some(Err(_)) => Err(Status::unavailable("the Kafka producer is shutting down")),
    }
}

fn field_key(message: &DynamicMessage, field: &str) -> Result<String, Status> {
    let descriptor = message.descriptor();
    let Some(field_descriptor) = descriptor.get_field_by_name(field) else {
        return Err(Status::internal(format!(
            "the route's key field {field:?} is not a field of {}",
            descriptor.full_name()
        )));
    };
    let value = message.get_field(&field_descriptor);
    Ok(match value.as_ref() {
        prost_reflect::Value::String(s) => s.clone(),
        prost_reflect::Value::Bytes(b) => String::from_utf8_lossy(b).into_owned(),
        prost_reflect::Value::I32(v) | prost_reflect::Value::EnumNumber(v) => v.to_string(),
        prost_reflect::Value::I64(v) => v.to_string(),
        prost_reflect::Value::U32(v) => v.to_string(),
        prost_reflect::Value::U64(v) => v.to_string(),
        prost_reflect::Value::Bool(v) => v.to_string(),
        other => {
            return Err(Status::internal(format!(
                "the route's key field {field:?} is not a scalar ({other:?})"
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message_type() -> prost_reflect::MessageDescriptor {
        let dir = std::env::temp_dir().join(format!(
            "strait-field-key-{}-{}",
            std::process::id(),
            rand::random::<u32>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join("k.proto"),
            "syntax = \"proto3\"; package k; \
             message M { string tenant = 1; int64 id = 2; bytes raw = 3; repeated string tags = 4; }",
        )
        .unwrap();
        let protos = Protos::load(strait_config::grpc::Protos {
            paths: vec![dir],
            includes: vec![],
            reload_interval: Duration::ZERO,
        })
        .unwrap();
        protos.pool().get_message_by_name("k.M").unwrap()
    }

    #[test]
    fn record_keys_come_from_scalar_fields() {
        let descriptor = message_type();
        // tenant = "acme", id = 42, tags = ["x"]
        let bytes = [0x0a, 4, b'a', b'c', b'm', b'e', 0x10, 42, 0x22, 1, b'x'];
        let message = DynamicMessage::decode(descriptor, &bytes[..]).unwrap();
        assert_eq!(field_key(&message, "tenant").unwrap(), "acme");
        assert_eq!(field_key(&message, "id").unwrap(), "42");
        assert_eq!(field_key(&message, "raw").unwrap(), "");
        let error = field_key(&message, "tags").unwrap_err();
        assert!(error.message().contains("not a scalar"), "{error:?}");
        let error = field_key(&message, "nope").unwrap_err();
        assert!(error.message().contains("not a field of k.M"), "{error:?}");
    }
}
