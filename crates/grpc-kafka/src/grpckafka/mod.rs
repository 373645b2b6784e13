//! grpc-kafka: a gRPC server for any service the `.proto` files describe. Each call becomes
//! records on a route's request topic; its answer comes back as records on the reply topic,
//! read by one consumer per reply topic (assigned all partitions) that hands each record to the
//! waiting call by correlation id. `fetch` routes stream a topic to the client instead.

mod fetch;
mod produce;
mod replies;

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
        .map_err(RoleError::Tls)?
        .map(tokio_rustls::TlsAcceptor::from);
    let listener = tokio::net::TcpListener::bind(frontend.config.listen)
        .await
        .map_err(|source| RoleError::Bind {
            addr: frontend.config.listen,
            source,
        })?;
    let local = listener.local_addr().map_err(RoleError::LocalAddr)?;
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
