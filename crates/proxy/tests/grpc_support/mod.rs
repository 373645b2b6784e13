//! The gRPC-over-Kafka test bench shared by the grpc_kafka test files: the test service, the
//! bridge (topics, grpc-kafka and kafka-grpc processes) and client helpers.
#![allow(dead_code)]

pub mod pb {
    #![allow(clippy::all, clippy::pedantic)]
    include!(concat!(env!("OUT_DIR"), "/strait.test.v1.rs"));
}

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::Stream;
use pb::echo_client::EchoClient;
use pb::echo_server::{Echo, EchoServer};
use pb::{EchoReply, EchoRequest};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use strait_e2e::{Daemon, free_local_addr, unique_name};
use strait_grpc_kafka::grpc::codec::RawCodec;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status, Streaming};

pub const BIN: &str = env!("CARGO_BIN_EXE_strait-proxy");

// ---------------------------------------------------------------------------------------------
// The test service.

/// Calls counted by request text.
pub type Counts = Arc<Mutex<HashMap<String, u32>>>;

#[derive(Clone, Default)]
pub struct Service {
    /// Calls seen.
    pub calls: Counts,
    /// Unary calls the caller stopped before the service answered.
    pub stopped: Counts,
    /// Unary calls the service answered (counted before the answer leaves it).
    pub answered: Counts,
}

impl Service {
    pub fn count(&self, text: &str) -> u32 {
        self.calls.lock().unwrap().get(text).copied().unwrap_or(0)
    }

    pub fn stopped(&self, text: &str) -> u32 {
        self.stopped.lock().unwrap().get(text).copied().unwrap_or(0)
    }

    pub fn answered(&self, text: &str) -> u32 {
        self.answered
            .lock()
            .unwrap()
            .get(text)
            .copied()
            .unwrap_or(0)
    }

    pub fn seen(&self, request: &EchoRequest) {
        *self
            .calls
            .lock()
            .unwrap()
            .entry(request.text.clone())
            .or_default() += 1;
    }
}

pub fn x_metadata(metadata: &MetadataMap) -> HashMap<String, String> {
    metadata
        .iter()
        .filter_map(|entry| match entry {
            tonic::metadata::KeyAndValueRef::Ascii(k, v) if k.as_str().starts_with("x-") => {
                Some((k.as_str().to_owned(), v.to_str().unwrap().to_owned()))
            }
            _ => None,
        })
        .collect()
}

pub fn with_response_metadata<T>(request_metadata: &MetadataMap, body: T) -> Response<T> {
    let mut response = Response::new(body);
    response
        .metadata_mut()
        .insert("x-served-by", "echo".parse().unwrap());
    if let Some(bin) = request_metadata.get_bin("x-trace-bin") {
        response
            .metadata_mut()
            .insert_bin("x-trace-bin", bin.clone());
    }
    response
}

/// Counts a unary call as stopped unless it is disarmed before it drops.
struct Unanswered {
    stopped: Option<(Counts, String)>,
}

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((stopped, text)) = self.stopped.take() {
            *stopped.lock().unwrap().entry(text).or_default() += 1;
        }
    }
}

pub type ReplyStream = Pin<Box<dyn Stream<Item = Result<EchoReply, Status>> + Send>>;

#[tonic::async_trait]
impl Echo for Service {
    async fn unary(&self, request: Request<EchoRequest>) -> Result<Response<EchoReply>, Status> {
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        self.seen(&request);
        // tonic drops this future when the caller resets the stream; the guard counts that.
        let mut unanswered = Unanswered {
            stopped: Some((self.stopped.clone(), request.text.clone())),
        };
        tokio::time::sleep(Duration::from_millis(request.delay_ms.into())).await;
        unanswered.stopped = None;
        *self
            .answered
            .lock()
            .unwrap()
            .entry(request.text.clone())
            .or_default() += 1;
        if request.code != 0 {
            return Err(Status::new(Code::from_i32(request.code), request.error));
        }
        Ok(with_response_metadata(
            &metadata,
            EchoReply {
                text: request.text,
                index: 0,
                metadata: x_metadata(&metadata),
            },
        ))
    }

    type ServerStreamStream = ReplyStream;

    async fn server_stream(
        &self,
        request: Request<EchoRequest>,
    ) -> Result<Response<ReplyStream>, Status> {
        let metadata = request.metadata().clone();
        let request = request.into_inner();
        self.seen(&request);
        let mut items: Vec<Result<EchoReply, Status>> = (0..request.repeat)
            .map(|index| {
                Ok(EchoReply {
                    text: format!("{}#{index}", request.text),
                    index,
                    metadata: HashMap::new(),
                })
            })
            .collect();
        if request.code != 0 {
            items.push(Err(Status::new(
                Code::from_i32(request.code),
                request.error,
            )));
        }
        Ok(with_response_metadata(
            &metadata,
            Box::pin(futures::stream::iter(items)),
        ))
    }

    async fn client_stream(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<EchoReply>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let mut texts = Vec::new();
        while let Some(message) = inbound.message().await? {
            self.seen(&message);
            texts.push(message.text);
        }
        Ok(with_response_metadata(
            &metadata,
            EchoReply {
                text: texts.join("+"),
                index: texts.len() as i32,
                metadata: HashMap::new(),
            },
        ))
    }

    type BidiStream = ReplyStream;

    async fn bidi(
        &self,
        request: Request<Streaming<EchoRequest>>,
    ) -> Result<Response<ReplyStream>, Status> {
        let metadata = request.metadata().clone();
        let mut inbound = request.into_inner();
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let service = self.clone();
        tokio::spawn(async move {
            let mut index = 0;
            while let Ok(Some(message)) = inbound.message().await {
                service.seen(&message);
                let reply = EchoReply {
                    text: message.text.to_uppercase(),
                    index,
                    metadata: HashMap::new(),
                };
                index += 1;
                if tx.send(Ok(reply)).await.is_err() {
                    return;
                }
            }
        });
        Ok(with_response_metadata(
            &metadata,
            Box::pin(ReceiverStream::new(rx)),
        ))
    }
}

pub async fn start_service() -> (SocketAddr, Service) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Service::default();
    let server = tonic::transport::Server::builder()
        .add_service(EchoServer::new(service.clone()))
        .serve_with_incoming(TcpListenerStream::new(listener));
    tokio::spawn(server);
    (addr, service)
}

// ---------------------------------------------------------------------------------------------
// The bridge: topics, grpc-kafka and kafka-grpc processes.

pub async fn create_topic(bootstrap: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()
        .unwrap();
    let results = admin
        .create_topics(
            [&NewTopic::new(
                topic,
                partitions,
                TopicReplication::Fixed(1),
            )],
            &AdminOptions::new(),
        )
        .await
        .unwrap();
    for result in results {
        result.unwrap_or_else(|(name, code)| panic!("creating topic {name}: {code}"));
    }
}

pub fn proto_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/proto")
}

pub fn write_config(name: &str, yaml: &str) -> PathBuf {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique_name(name)));
    std::fs::write(&path, yaml).unwrap();
    path
}

pub struct Bridge {
    pub bootstrap: String,
    pub requests: String,
    pub replies: String,
    pub events: String,
    pub oneway: String,
    pub group: String,
    pub target: String,
    pub front: Daemon,
    pub back: Vec<Daemon>,
    pub addr: SocketAddr,
    pub backend_extra: String,
    /// More kafka-grpc command-line arguments.
    pub backend_args: Vec<String>,
    /// Environment of the kafka-grpc processes started from now on.
    pub backend_env: Vec<(String, String)>,
}

impl Bridge {
    pub async fn start(bootstrap: &str, target: SocketAddr) -> Self {
        Self::start_with(bootstrap, target, "").await
    }

    /// `backend_extra`: more kafka-grpc config lines.
    pub async fn start_with(bootstrap: &str, target: SocketAddr, backend_extra: &str) -> Self {
        Self::start_full(bootstrap, &format!("http://{target}"), "", backend_extra).await
    }

    /// `target`: the service URL; `front_extra`, `backend_extra`: more config lines.
    pub async fn start_full(
        bootstrap: &str,
        target: &str,
        front_extra: &str,
        backend_extra: &str,
    ) -> Self {
        Self::start_with_args(bootstrap, target, front_extra, backend_extra, &[], &[]).await
    }

    /// As [`Bridge::start_full`], with more command-line arguments for grpc-kafka and
    /// kafka-grpc (`bootstrap` is what the topics are created through).
    pub async fn start_with_args(
        bootstrap: &str,
        target: &str,
        front_extra: &str,
        backend_extra: &str,
        front_args: &[&str],
        backend_args: &[&str],
    ) -> Self {
        let requests = unique_name("grpc-req");
        let replies = unique_name("grpc-rep");
        let events = unique_name("grpc-events");
        let oneway = unique_name("grpc-oneway");
        create_topic(bootstrap, &oneway, 1).await;
        create_topic(bootstrap, &requests, 3).await;
        create_topic(bootstrap, &replies, 2).await;
        create_topic(bootstrap, &events, 2).await;
        let addr = free_local_addr();
        let front_config = write_config(
            "grpc-kafka",
            &format!(
                "kafka: {{ bootstrap: '{bootstrap}' }}\n\
                 protos: {{ paths: ['{}'], reloadInterval: 0s }}\n\
                 routes:\n\
                 - {{ method: strait.test.v1.Echo/Unary, metadata: {{ x-route: oneway }}, produce: {{ topic: {oneway} }} }}\n\
                 - {{ method: strait.test.v1.Echo/*, metadata: {{ x-key: fixed }}, produce: {{ topic: {requests}, replyTo: {replies}, key: 'metadata:x-key' }} }}\n\
                 - {{ method: strait.test.v1.Echo/*, produce: {{ topic: {requests}, replyTo: {replies} }} }}\n\
                 - {{ method: strait.test.v1.Events/Fetch, metadata: {{ x-only: k1 }}, fetch: {{ topic: {events}, filters: [{{ key: k1 }}] }} }}\n\
                 - {{ method: strait.test.v1.Events/Fetch, fetch: {{ topic: {events} }} }}\n{front_extra}",
                proto_dir().display()
            ),
        );
        let addr_arg = addr.to_string();
        let mut args = vec![
            "grpc-kafka",
            "--config",
            front_config.to_str().unwrap(),
            "--listen",
            &addr_arg,
        ];
        args.extend_from_slice(front_args);
        let front = Daemon::start(BIN, &args).await;
        let mut bridge = Self {
            bootstrap: bootstrap.into(),
            group: unique_name("grpc-backend"),
            requests,
            replies,
            events,
            oneway,
            target: target.into(),
            front,
            back: Vec::new(),
            addr,
            backend_extra: String::new(),
            backend_args: backend_args.iter().map(|a| a.to_string()).collect(),
            backend_env: Vec::new(),
        };
        bridge.backend_extra = backend_extra.into();
        if backend_extra != NO_BACKEND {
            bridge.add_backend().await;
        }
        bridge
    }

    pub async fn add_backend(&mut self) {
        let config = write_config(
            "kafka-grpc",
            &format!(
                "kafka: {{ bootstrap: '{}' }}\n\
                 target: {}\n\
                 groupId: {}\n\
                 routes: [{{ topic: {}, replyTo: [{}] }}]\n\
                 sessionTimeout: 6s\n\
                 retries: {{ attempts: 3, initialBackoff: 50ms, maxBackoff: 200ms }}\n{}",
                self.bootstrap,
                self.target,
                self.group,
                self.requests,
                self.replies,
                self.backend_extra
            ),
        );
        let mut args = vec!["kafka-grpc", "--config", config.to_str().unwrap()];
        args.extend(self.backend_args.iter().map(String::as_str));
        let env: Vec<(&str, &str)> = (self.backend_env.iter())
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let daemon = Daemon::start_with_env(BIN, &args, &env).await;
        self.back.push(daemon);
    }

    pub async fn client(&self) -> EchoClient<Channel> {
        EchoClient::connect(format!("http://{}", self.addr))
            .await
            .unwrap()
    }

    pub async fn raw(&self) -> tonic::client::Grpc<Channel> {
        let channel = Channel::from_shared(format!("http://{}", self.addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        tonic::client::Grpc::new(channel)
    }

    pub fn logs(&self) -> String {
        let mut all = format!("--- grpc-kafka\n{}", self.front.log());
        for (i, back) in self.back.iter().enumerate() {
            all.push_str(&format!("\n--- kafka-grpc {i}\n{}", back.log()));
        }
        all
    }
}

/// A consumer of `topic` from its beginning, in a group of its own: for looking at records.
pub fn inspector(bootstrap: &str, topic: &str) -> rdkafka::consumer::StreamConsumer {
    use rdkafka::consumer::Consumer as _;
    let consumer: rdkafka::consumer::StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("inspect"))
        .set("auto.offset.reset", "earliest")
        .create()
        .unwrap();
    consumer.subscribe(&[topic]).unwrap();
    consumer
}

/// Produces one call the way a Zilla client does: the request record under `id`, then the record
/// with no value that ends the request stream, both with `headers`.
pub async fn produce_call(
    producer: &rdkafka::producer::FutureProducer,
    topic: &str,
    id: &str,
    body: &[u8],
    headers: rdkafka::message::OwnedHeaders,
) {
    use rdkafka::producer::FutureRecord;
    for record in [
        FutureRecord::to(topic)
            .key(id)
            .payload(body)
            .headers(headers.clone()),
        FutureRecord::to(topic).key(id).headers(headers),
    ] {
        producer
            .send(record, Duration::from_secs(10))
            .await
            .unwrap();
    }
}

/// A record's headers as text (`None` when it has none).
pub fn text_headers(message: &impl rdkafka::message::Message) -> Option<HashMap<String, String>> {
    use rdkafka::message::Headers as _;
    Some(
        message
            .headers()?
            .iter()
            .map(|h| {
                (
                    h.key.to_owned(),
                    String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                )
            })
            .collect(),
    )
}

/// A unary call of `text` that the service answers after `delay_ms`, started on a task of its
/// own and at the service when this returns: for stopping a proxy in the middle of a call.
pub async fn call_in_progress(
    mut client: EchoClient<Channel>,
    service: &Service,
    text: &str,
    delay_ms: u32,
    timeout: Duration,
) -> tokio::task::JoinHandle<Result<Response<EchoReply>, Status>> {
    let request = EchoRequest {
        text: text.into(),
        delay_ms,
        ..Default::default()
    };
    let call = tokio::spawn(async move { client.unary(with_timeout(request, timeout)).await });
    strait_e2e::wait_until(
        Duration::from_secs(20),
        "the call to reach the service",
        || async { (service.count(text) > 0).then_some(()) },
    )
    .await;
    call
}

pub fn request(text: &str) -> EchoRequest {
    EchoRequest {
        text: text.into(),
        ..Default::default()
    }
}

pub async fn direct_client(target: SocketAddr) -> EchoClient<Channel> {
    EchoClient::connect(format!("http://{target}"))
        .await
        .unwrap()
}

pub async fn collect<T>(mut stream: Streaming<T>) -> (Vec<T>, Option<Status>) {
    let mut items = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => return (items, None),
            Err(status) => return (items, Some(status)),
        }
    }
}

pub fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(timeout);
    request
}

pub const CALL: Duration = Duration::from_secs(20);

pub type NoTimerClient = tonic::client::Grpc<
    hyper_util::client::legacy::Client<
        hyper_util::client::legacy::connect::HttpConnector,
        tonic::body::Body,
    >,
>;

/// A gRPC client that sends `grpc-timeout` but keeps no timer of its own (tonic's channel would
/// cancel locally at the deadline), so a test sees what the server answers.
pub fn no_timer_client(addr: SocketAddr) -> NoTimerClient {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http();
    tonic::client::Grpc::with_origin(client, format!("http://{addr}").parse().unwrap())
}

/// A unary Echo call with `grpc-timeout` set by hand.
pub async fn unary_with_deadline(
    client: &mut NoTimerClient,
    message: EchoRequest,
    timeout: Duration,
    idempotency_key: Option<&str>,
) -> Result<EchoReply, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(format!("{e:?}")))?;
    let mut request = Request::new(Bytes::from(prost::Message::encode_to_vec(&message)));
    request.metadata_mut().insert(
        "grpc-timeout",
        format!("{}m", timeout.as_millis()).parse().unwrap(),
    );
    if let Some(key) = idempotency_key {
        request
            .metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
    }
    let path = http::uri::PathAndQuery::from_static("/strait.test.v1.Echo/Unary");
    let reply = client.unary(request, path, RawCodec).await?.into_inner();
    Ok(prost::Message::decode(reply.as_ref()).unwrap())
}

/// `backend_extra` that starts grpc-kafka alone (the test plays kafka-grpc).
pub const NO_BACKEND: &str = "none";
