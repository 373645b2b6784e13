//! grpc-kafka: a gRPC server for any service the `.proto` files describe. Each call becomes
//! records on a route's request topic; its answer comes back as records on the reply topic,
//! read by one consumer per reply topic (assigned all partitions) that hands each record to the
//! waiting call by correlation id. `fetch` routes stream a topic to the client instead, from one
//! shared reader per topic (`feed`). Callers
//! are authenticated (`auth`) before anything reaches Kafka.

mod auth;
mod feed;
mod fetch;
mod produce;
mod replies;
mod slots;

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::RoleError;
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
use produce::ProduceCall;
use replies::{Pending, ReplyEvent};
use slots::{Slot, Slots};
use strait_kafka::{KafkaClients, Linger, Producer};

/// Readiness flags: the gRPC listener is bound; every reply topic is being read.
pub const READINESS: [&str; 2] = ["listener", "kafka"];

pub(crate) struct Frontend {
    pub config: GrpcKafkaConfig,
    auth: auth::Auth,
    routes: Vec<(GrpcRoute, Option<Arc<ProduceRoute>>)>,
    pub protos: Protos,
    producers: HashMap<Acks, Producer>,
    pub pending: Pending,
    pub metrics: GrpcMetrics,
    pub shutdown: CancellationToken,
    /// Stops the reply readers: only after the drain, so calls in progress still get answers.
    pub readers_stop: CancellationToken,
    calls: TaskTracker,
    /// `limits.maxConnections`.
    connections: Slots,
    /// `limits.maxFetchStreams`.
    fetch_streams: Slots,
    /// The shared reader of each fetched topic.
    feeds: feed::Feeds,
    /// Connections over `limits.maxConnections` being told so (RESOURCE_EXHAUSTED) before they
    /// are closed; past this many, they are closed at once.
    refusing: Slots,
}

/// Connections over the limit answered at once, each for at most [`REFUSAL_TIME`].
const MAX_REFUSING: usize = 64;
const REFUSAL_TIME: Duration = Duration::from_secs(1);

/// Serves until shutdown (`config` as validated by the caller).
pub async fn run(config: GrpcKafkaConfig, process: &Process) -> Result<(), RoleError> {
    let (_, serve) = start(config, process).await?;
    serve.await
}

/// Binds the listener, starts the reply readers and returns the address and the serving future.
pub async fn start(
    config: GrpcKafkaConfig,
    process: &Process,
) -> Result<
    (
        SocketAddr,
        impl Future<Output = Result<(), RoleError>> + use<>,
    ),
    RoleError,
> {
    let listener_ready = process.health.flag(READINESS[0]);
    let kafka_ready = process.health.flag(READINESS[1]);
    let protos = Protos::load(config.protos.clone()).map_err(RoleError::Protos)?;
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
    let auth = auth::Auth::load(&config.auth, &process.metrics, shutdown.clone()).await?;
    let routes = config
        .routes
        .iter()
        .map(|r| (r.clone(), r.produce.clone().map(Arc::new)))
        .collect();
    let frontend = Arc::new(Frontend {
        auth,
        pending: Pending::new(config.limits.max_pending_calls),
        routes,
        protos,
        producers,
        shutdown: shutdown.clone(),
        readers_stop: CancellationToken::new(),
        calls: TaskTracker::new(),
        connections: Slots::new(config.limits.max_connections, metrics.connections.clone()),
        fetch_streams: Slots::new(
            config.limits.max_fetch_streams,
            metrics.fetch_streams.clone(),
        ),
        feeds: feed::Feeds::default(),
        refusing: Slots::new(
            MAX_REFUSING,
            prometheus::IntGauge::new("refusing", "-").expect("valid"),
        ),
        metrics,
        config,
    });
    replies::start_readers(&frontend, kafka_ready)?;

    // Read again when the certificate files change: a rotated certificate needs no restart.
    let tls = strait_tls::reload::server_config(&frontend.config.tls, &[b"h2"])
        .map_err(RoleError::Tls)?;
    let listener = tokio::net::TcpListener::bind(frontend.config.listen)
        .await
        .map_err(|source| RoleError::Bind {
            addr: frontend.config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(RoleError::LocalAddr)?;
    tracing::info!(listen = %local, tls = tls.is_some(), auth = frontend.auth.name(), routes = frontend.routes.len(), "grpc-kafka serving");
    listener_ready.set(true);
    let serve = async move {
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        // TLS handshakes run in their own tasks and hand finished streams back here, so every
        // connection is watched by the one graceful-shutdown handle.
        let (handshaken, mut secured) = mpsc::channel(64);
        loop {
            let (stream, peer) = tokio::select! {
                () = shutdown.cancelled() => break,
                Some((stream, peer, slot)) = secured.recv() => {
                    let subject = certificate_subject(&stream);
                    serve_connection(frontend.clone(), &graceful, TokioIo::new(stream), peer, subject, slot);
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
            // Taken before the TLS handshake: handshakes count against the limit too.
            let slot = frontend.connections.take();
            if slot.is_none() {
                frontend
                    .metrics
                    .limit_hits
                    .with_label_values(&["limits.maxConnections"])
                    .inc();
                tracing::debug!(%peer, max = frontend.connections.max, "connection over limits.maxConnections");
            }
            match tls
                .as_ref()
                .map(|tls| tokio_rustls::TlsAcceptor::from(tls.current()))
            {
                None => serve_connection(
                    frontend.clone(),
                    &graceful,
                    TokioIo::new(stream),
                    peer,
                    None,
                    slot,
                ),
                Some(acceptor) => {
                    let handshaken = handshaken.clone();
                    tokio::spawn(async move {
                        match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(stream)) => {
                                let _ = handshaken.send((stream, peer, slot)).await;
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

/// The subject DN of the client certificate the TLS listener verified (only with `tls.clientCa`).
fn certificate_subject(
    stream: &tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
) -> Option<Arc<str>> {
    let cert = stream.get_ref().1.peer_certificates()?.first()?;
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    Some(cert.subject().to_string().into())
}

/// Serves one connection; `certificate_subject` is its verified client certificate's, if any.
/// Without a `slot` (over `limits.maxConnections`) its calls are refused instead.
fn serve_connection<IO>(
    frontend: Arc<Frontend>,
    graceful: &hyper_util::server::graceful::GracefulShutdown,
    io: TokioIo<IO>,
    peer: SocketAddr,
    certificate_subject: Option<Arc<str>>,
    slot: Option<Slot>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(slot) = slot else {
        refuse_connection(&frontend, io, peer);
        return;
    };
    let service = hyper::service::service_fn(move |request| {
        let frontend = frontend.clone();
        let subject = certificate_subject.clone();
        async move { Ok::<_, Infallible>(frontend.handle(request, subject.as_ref()).await) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, service);
    let connection = graceful.watch(connection);
    tokio::spawn(async move {
        if let Err(error) = connection.await {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
        drop(slot);
    });
}

/// A connection over `limits.maxConnections`: every call on it is answered RESOURCE_EXHAUSTED
/// naming the limit, for a moment, then it is closed (at once when many are being refused).
fn refuse_connection<IO>(frontend: &Arc<Frontend>, io: TokioIo<IO>, peer: SocketAddr)
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let Some(refusing) = frontend.refusing.take() else {
        return; // dropped: closed
    };
    let max = frontend.connections.max;
    let metrics = frontend.metrics.clone();
    let service = hyper::service::service_fn(move |_request| {
        metrics.finished("unknown", Code::ResourceExhausted, Duration::ZERO);
        let status = Status::resource_exhausted(format!(
            "grpc-kafka already serves {max} connections (limits.maxConnections); try again later"
        ));
        async move { Ok::<_, Infallible>(status.into_http::<tonic::body::Body>()) }
    });
    let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(io, service);
    tokio::spawn(async move {
        tokio::pin!(connection);
        if tokio::time::timeout(REFUSAL_TIME, connection.as_mut())
            .await
            .is_err()
        {
            connection.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(REFUSAL_TIME, connection).await;
        }
        tracing::debug!(%peer, "refused connection closed");
        drop(refusing);
    });
}

impl Frontend {
    async fn handle(
        self: Arc<Self>,
        request: http::Request<Incoming>,
        certificate_subject: Option<&Arc<str>>,
    ) -> http::Response<tonic::body::Body> {
        let name = request.uri().path().trim_start_matches('/').to_owned();
        // Authenticated before the method is looked up, so unknown callers learn nothing.
        let caller = match self
            .auth
            .authenticate(request.headers(), certificate_subject, &self.metrics)
            .await
        {
            Ok(caller) => caller,
            Err(status) => return self.refused(&name, status),
        };
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
        if let Err(status) = caller.permit(&name, &self.metrics) {
            return self.refused(&name, status);
        }
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
                    caller: caller.identity,
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

    /// Answers a call refused by authentication, counted like every other call.
    fn refused(&self, name: &str, status: Status) -> http::Response<tonic::body::Body> {
        // Unknown names stay out of the method label (`protos` describes the known ones).
        let label = if self.protos.method(name).is_some() {
            name
        } else {
            "unknown"
        };
        self.metrics.finished(label, status.code(), Duration::ZERO);
        status.into_http()
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
