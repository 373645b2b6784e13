//! `strait-bench grpc`: the same gRPC load straight to a service and through
//! grpc-kafka → Kafka → kafka-grpc → service, unary and server-streaming, at two concurrencies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use hdrhistogram::Histogram;
use http::uri::PathAndQuery;
use hyper_util::rt::{TokioExecutor, TokioIo};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use strait_grpc_kafka::grpc::codec::RawCodec;
use tonic::server::{Grpc, ServerStreamingService, UnaryService};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::procs::{self, Daemon};

pub const LONG_ABOUT: &str = "\
    Runs the same gRPC load twice per case, straight to an echo service and through \
    grpc-kafka → Kafka → kafka-grpc → service (acks=all both ways), and prints calls/s and \
    latency percentiles of both.\n\n\
    The echo service runs in this process (raw bytes, any message); grpc-kafka and kafka-grpc \
    are started as child processes on free 127.0.0.1 ports with fresh topics (8 partitions \
    each), and killed at the end, on error and on Ctrl-C.\n\n\
    Cases: unary and server-streaming (10 replies per call), each at every --concurrency \
    (calls in flight at once, spread over 4 HTTP/2 connections).\n\n\
    Targets: ≥ 5,000 unary calls/s through Kafka at concurrency 64; p50 ≤ 5 ms at \
    concurrency 1. Measure release builds.\n\n\
    --peer zilla: the same load through a running Zilla (tests/peers/zilla start, whose \
    environment `tests/peers/zilla env` prints: ZILLA_GRPC, ZILLA_GRPC_SERVICE, ZILLA_PID, \
    ZILLA_GRPC_REQUESTS, ZILLA_WORKERS) and through Strait's grpc-kafka → Kafka → kafka-grpc, \
    alternating in --rounds rounds, both answered by the one echo service this process runs at \
    ZILLA_GRPC_SERVICE (where Zilla's kafka-grpc calls; so start Zilla with that address \
    free). Strait's topics get as many partitions as Zilla's requests topic. Prints calls/s, \
    p50/p99, CPU µs per call of each process (Zilla's JVM, grpc-kafka, kafka-grpc, Kafka, this \
    process) and Strait/Zilla ratios; target: unary ≥ 2x Zilla's calls/s at concurrency 64 \
    and a p50 no higher at concurrency 1. Terms: acks=all on both (Zilla in_sync_replicas), \
    Zilla with one worker (-w 1), Strait with its defaults (linger.ms 1 on both producers, \
    one Tokio worker per core).";

pub const EXAMPLES: &str = "\
    Example (Kafka from tests/e2e/services):\n  \
    tests/e2e/services up kafka && eval \"$(tests/e2e/services env)\"\n  \
    cargo build --release -p strait-proxy -p strait-bench\n  \
    $CARGO_TARGET_DIR/release/strait-bench grpc --duration 10s\n\n\
    Beside Zilla (a fresh one: tests/peers/zilla --help):\n  \
    ZILLA_GRPC_SERVICE=127.0.0.1:50151 tests/peers/zilla start && eval \"$(tests/peers/zilla env)\"\n  \
    $CARGO_TARGET_DIR/release/strait-bench grpc --peer zilla --rounds 3 --duration 15s\n  \
    tests/peers/zilla stop";

#[derive(Debug, Clone, clap::Args)]
pub struct GrpcArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub kafka: String,
    /// The strait-proxy binary [default: next to this executable].
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,
    /// How long each case is measured, per path.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,
    /// Load run before measuring, per case and path.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,
    /// Calls in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,64")]
    pub concurrency: Vec<usize>,
    /// Request payload bytes.
    #[arg(long, default_value_t = 64)]
    pub payload: usize,
    /// Compare with a peer instead of the service direct: `zilla`, a running Zilla (see
    /// --help), the same load through each in alternating rounds.
    #[arg(long, value_enum)]
    pub peer: Option<Peer>,
    #[command(flatten)]
    pub zilla: crate::grpc_zilla::ZillaArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Peer {
    Zilla,
}

const PROTO: &str = r#"syntax = "proto3";
package strait.bench.v1;
message Msg { bytes payload = 1; }
service Echo {
  rpc Unary(Msg) returns (Msg);
  rpc Stream(Msg) returns (stream Msg);
}
"#;
pub const UNARY: &str = "/strait.bench.v1.Echo/Unary";
pub const STREAM: &str = "/strait.bench.v1.Echo/Stream";
const STREAM_REPLIES: usize = 10;
const CONNECTIONS: usize = 4;
/// The longest a measured call may take before it counts as an error.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy)]
struct Echo;

impl UnaryService<Bytes> for Echo {
    type Response = Bytes;
    type Future = std::future::Ready<Result<Response<Bytes>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        std::future::ready(Ok(Response::new(request.into_inner())))
    }
}

impl ServerStreamingService<Bytes> for Echo {
    type Response = Bytes;
    type ResponseStream = futures::stream::Iter<std::vec::IntoIter<Result<Bytes, Status>>>;
    type Future = std::future::Ready<Result<Response<Self::ResponseStream>, Status>>;
    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let body = request.into_inner();
        let items: Vec<_> = (0..STREAM_REPLIES).map(|_| Ok(body.clone())).collect();
        std::future::ready(Ok(Response::new(futures::stream::iter(items))))
    }
}

pub async fn start_service() -> anyhow::Result<SocketAddr> {
    start_service_at(SocketAddr::from(([127, 0, 0, 1], 0))).await
}

/// The echo service on `bind` (port 0: a free one); its address.
pub async fn start_service_at(bind: SocketAddr) -> anyhow::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind(bind)
        .await
        .with_context(|| format!("the echo service cannot listen on {bind}"))?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            let service = hyper::service::service_fn(
                |request: http::Request<hyper::body::Incoming>| async move {
                    let response = match request.uri().path() {
                        UNARY => Grpc::new(RawCodec).unary(Echo, request).await,
                        STREAM => Grpc::new(RawCodec).server_streaming(Echo, request).await,
                        _ => Status::unimplemented("").into_http(),
                    };
                    Ok::<_, Infallible>(response)
                },
            );
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service),
            );
        }
    });
    Ok(addr)
}

pub struct Outcome {
    pub calls: u64,
    pub errors: u64,
    pub seconds: f64,
    pub latency: Histogram<u64>,
}

async fn channels(addr: SocketAddr) -> anyhow::Result<Vec<Channel>> {
    let mut out = Vec::new();
    for _ in 0..CONNECTIONS {
        out.push(
            Channel::from_shared(format!("http://{addr}"))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?,
        );
    }
    Ok(out)
}

pub async fn one_call(
    client: &mut tonic::client::Grpc<Channel>,
    path: &'static str,
    body: Bytes,
) -> Result<(), Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let path = PathAndQuery::from_static(path);
    if path.path() == UNARY {
        client.unary(Request::new(body), path, RawCodec).await?;
    } else {
        let mut stream = client
            .server_streaming(Request::new(body), path, RawCodec)
            .await?
            .into_inner();
        let mut n = 0;
        while stream.message().await?.is_some() {
            n += 1;
        }
        if n != STREAM_REPLIES {
            return Err(Status::data_loss(format!(
                "{n} replies, expected {STREAM_REPLIES}"
            )));
        }
    }
    Ok(())
}

pub async fn load(
    addr: SocketAddr,
    path: &'static str,
    concurrency: usize,
    payload: usize,
    warmup: Duration,
    duration: Duration,
) -> anyhow::Result<Outcome> {
    let channels = channels(addr).await?;
    // A valid Msg: field 1 (bytes), length-delimited.
    let mut message = vec![0x0a];
    let mut len = payload;
    while len >= 0x80 {
        message.push((len as u8) | 0x80);
        len >>= 7;
    }
    message.push(len as u8);
    message.extend(std::iter::repeat_n(0x61, payload));
    let body = Bytes::from(message);
    let start = Instant::now();
    let measure_from = start + warmup;
    let end = measure_from + duration;
    let workers: Vec<_> = (0..concurrency)
        .map(|i| {
            let mut client = tonic::client::Grpc::new(channels[i % channels.len()].clone());
            let body = body.clone();
            tokio::spawn(async move {
                let mut histogram =
                    Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("histogram bounds");
                let (mut calls, mut errors) = (0u64, 0u64);
                loop {
                    let began = Instant::now();
                    if began >= end {
                        break;
                    }
                    // A call that never ends (a peer that lost it) counts as an error instead
                    // of holding its caller for the rest of the run.
                    let result = tokio::time::timeout(
                        CALL_TIMEOUT,
                        one_call(&mut client, path, body.clone()),
                    )
                    .await
                    .unwrap_or_else(|_| Err(Status::deadline_exceeded("no answer within 10 s")));
                    // Successes count when they started in the measured time; failures when
                    // they ended in it, so a call lost in the warm-up (10 s to fail) shows.
                    match result {
                        Ok(()) if began >= measure_from => {
                            calls += 1;
                            let _ = histogram.record(began.elapsed().as_micros() as u64);
                        }
                        Err(_) if Instant::now() >= measure_from => errors += 1,
                        _ => {}
                    }
                }
                (calls, errors, histogram)
            })
        })
        .collect();
    let mut outcome = Outcome {
        calls: 0,
        errors: 0,
        seconds: duration.as_secs_f64(),
        latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
    };
    for worker in workers {
        let (calls, errors, histogram) = worker.await?;
        outcome.calls += calls;
        outcome.errors += errors;
        outcome.latency.add(&histogram)?;
    }
    Ok(outcome)
}

/// Creates `topics` with `partitions` partitions each (replication 1).
pub async fn create_topics(
    bootstrap: &str,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let new: Vec<NewTopic> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    for result in admin.create_topics(&new, &AdminOptions::new()).await? {
        result.map_err(|(name, code)| anyhow::anyhow!("creating topic {name}: {code}"))?;
    }
    Ok(())
}

/// Deletes `topics` (what a benchmark created).
pub async fn delete_topics(bootstrap: &str, topics: &[&str]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    for result in admin.delete_topics(topics, &AdminOptions::new()).await? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((name, code)) => bail!("deleting topic {name}: {code}"),
        }
    }
    Ok(())
}

/// grpc-kafka and kafka-grpc in front of the echo service at `service`, on fresh topics.
pub struct Bridge {
    pub front: Daemon,
    pub back: Daemon,
    /// grpc-kafka's listener.
    pub front_addr: SocketAddr,
    pub dir: PathBuf,
    pub topics: Vec<String>,
}

/// Starts a [`Bridge`]; `routes` are more grpc-kafka routes, ahead of the Echo one (YAML list
/// items).
pub async fn start_bridge(
    bin: &std::path::Path,
    kafka: &str,
    service: SocketAddr,
    routes: &str,
) -> anyhow::Result<Bridge> {
    start_bridge_with(bin, kafka, service, routes, 8).await
}

/// [`start_bridge`] with topics of `partitions` partitions.
pub async fn start_bridge_with(
    bin: &std::path::Path,
    kafka: &str,
    service: SocketAddr,
    routes: &str,
    partitions: i32,
) -> anyhow::Result<Bridge> {
    let run_id = format!("{}-{}", std::process::id(), rand_suffix());
    let (requests, replies) = (
        format!("bench-grpc-req-{run_id}"),
        format!("bench-grpc-rep-{run_id}"),
    );
    create_topics(kafka, &[&requests, &replies], partitions).await?;
    let dir = std::env::temp_dir().join(format!("strait-bench-grpc-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("bench.proto"), PROTO)?;
    let front_config = dir.join("grpc-kafka.yaml");
    std::fs::write(
        &front_config,
        format!(
            "kafka: {{ bootstrap: '{kafka}' }}\nprotos: {{ paths: ['{}'], reloadInterval: 0s }}\n\
             routes:\n{routes}- {{ method: strait.bench.v1.Echo/*, produce: {{ topic: {requests}, replyTo: {replies} }} }}\n",
            dir.join("bench.proto").display()
        ),
    )?;
    let back_config = dir.join("kafka-grpc.yaml");
    std::fs::write(
        &back_config,
        format!(
            "kafka: {{ bootstrap: '{kafka}' }}\ntarget: http://{service}\ngroupId: bench-{run_id}\n\
             routes: [{{ topic: {requests}, replyTo: [{replies}] }}]\nconcurrency: 256\n"
        ),
    )?;
    let front_addr = procs::free_local_addr()?;
    let front = Daemon::start(
        bin,
        &[
            "grpc-kafka".into(),
            "--config".into(),
            front_config.display().to_string(),
            "--listen".into(),
            front_addr.to_string(),
        ],
        front_addr,
        dir.join("grpc-kafka.log"),
    )
    .await?;
    // kafka-grpc listens on nothing; "ready" is its /readyz (joined the group).
    let back = Daemon::start(
        bin,
        &[
            "kafka-grpc".into(),
            "--config".into(),
            back_config.display().to_string(),
        ],
        service,
        dir.join("kafka-grpc.log"),
    )
    .await?;
    Ok(Bridge {
        front,
        back,
        front_addr,
        dir,
        topics: vec![requests, replies],
    })
}

pub async fn run(args: GrpcArgs) -> anyhow::Result<()> {
    if args.peer == Some(Peer::Zilla) {
        return crate::grpc_zilla::run(args).await;
    }
    let bin = crate::procs::proxy_bin(args.proxy_bin.as_deref())?;
    let service = start_service().await?;
    let Bridge {
        front,
        back,
        front_addr,
        dir,
        ..
    } = start_bridge(&bin, &args.kafka, service, "").await?;
    eprintln!(
        "strait-bench grpc: service {service}, grpc-kafka {front_addr}, logs in {}",
        dir.display()
    );
    if cfg!(debug_assertions) || bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!("warning: a debug build is being measured; figures are not representative");
    }
    // CPU per call of each process on the Kafka path (the bench process runs the load and the
    // service; Kafka is found by its listening port).
    let kafka_pid = kafka_pid(&args.kafka);
    let mut watched = vec![("grpc-kafka", front.pid), ("kafka-grpc", back.pid)];
    if let Some(pid) = kafka_pid {
        watched.push(("kafka", pid));
    }
    watched.push(("bench+service", std::process::id()));
    let cpu = |watched: &[(&'static str, u32)]| -> Vec<Duration> {
        watched
            .iter()
            .map(|(_, pid)| procs::cpu_time(*pid).unwrap_or_default())
            .collect()
    };
    println!(
        "{:<14} {:>5} {:<8} {:>10} {:>8} {:>9} {:>9} {:>9}  cpu µs/call",
        "case", "conc", "path", "calls/s", "errors", "p50 ms", "p99 ms", "max ms"
    );
    // Warm-up calls are not counted, so CPU is scaled to the measured share of the run.
    let share = args.duration.as_secs_f64() / (args.duration + args.warmup).as_secs_f64();
    for (name, path) in [("unary", UNARY), ("server-stream", STREAM)] {
        for &concurrency in &args.concurrency {
            for (label, addr) in [("direct", service), ("kafka", front_addr)] {
                let before = cpu(&watched);
                let outcome = load(
                    addr,
                    path,
                    concurrency,
                    args.payload,
                    args.warmup,
                    args.duration,
                )
                .await?;
                let after = cpu(&watched);
                let ms = |q: f64| outcome.latency.value_at_quantile(q) as f64 / 1000.0;
                let per_call: Vec<String> = watched
                    .iter()
                    .zip(before.iter().zip(&after))
                    .filter(|((role, _), _)| label == "kafka" || *role == "bench+service")
                    .map(|((role, _), (b, a))| {
                        let us = a.saturating_sub(*b).as_secs_f64() * 1e6 * share
                            / outcome.calls.max(1) as f64;
                        format!("{role} {us:.0}")
                    })
                    .collect();
                println!(
                    "{name:<14} {concurrency:>5} {label:<8} {:>10.0} {:>8} {:>9.2} {:>9.2} {:>9.2}  {}",
                    outcome.calls as f64 / outcome.seconds,
                    outcome.errors,
                    ms(0.5),
                    ms(0.99),
                    outcome.latency.max() as f64 / 1000.0,
                    per_call.join(", "),
                );
            }
        }
    }
    println!(
        "targets: unary through Kafka ≥ 5000 calls/s at concurrency 64; p50 ≤ 5 ms at concurrency 1"
    );
    front.stop().await;
    back.stop().await;
    Ok(())
}

/// The Kafka broker's pid, found by the port of the first bootstrap server.
pub fn kafka_pid(bootstrap: &str) -> Option<u32> {
    bootstrap
        .split(',')
        .next()
        .and_then(|s| s.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .and_then(procs::listener_pid)
}

pub fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default()
}
