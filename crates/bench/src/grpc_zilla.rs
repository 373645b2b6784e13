//! `strait-bench grpc --peer zilla`: the same gRPC load through a running Zilla (grpc-kafka →
//! Kafka → kafka-grpc) and through Strait's grpc-kafka → Kafka → kafka-grpc, alternating in
//! rounds, both answered by the one echo service this process runs where Zilla's kafka-grpc
//! calls.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context as _, bail};
use hdrhistogram::Histogram;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::grpc::{self, GrpcArgs, STREAM, UNARY};
use crate::procs;

/// Where the running Zilla is: `tests/peers/zilla env` prints these variables.
#[derive(Debug, Clone, clap::Args)]
pub struct ZillaArgs {
    /// With --peer zilla: Zilla's gRPC listener.
    #[arg(long, env = "ZILLA_GRPC")]
    pub zilla_grpc: Option<SocketAddr>,
    /// With --peer zilla: where Zilla's kafka-grpc calls the service; the echo service listens
    /// there, and Strait's kafka-grpc calls it too.
    #[arg(long, env = "ZILLA_GRPC_SERVICE")]
    pub zilla_service: Option<SocketAddr>,
    /// With --peer zilla: Zilla's JVM, whose CPU time is read.
    #[arg(long, env = "ZILLA_PID")]
    pub zilla_pid: Option<u32>,
    /// With --peer zilla: Zilla's requests topic; Strait's topics get as many partitions.
    #[arg(long, env = "ZILLA_GRPC_REQUESTS")]
    pub zilla_requests: Option<String>,
    /// With --peer zilla: Zilla's workers, as `tests/peers/zilla env` reports them (printed with
    /// the figures).
    #[arg(long, env = "ZILLA_WORKERS")]
    pub zilla_workers: Option<u32>,
    /// With --peer zilla: rounds; each runs every case through both (Zilla first in odd rounds,
    /// Strait first in even ones) for --warmup, then --duration / rounds measured.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// With --peer zilla: the cases, comma-separated: unary, stream (server-streaming, 10
    /// replies per call). Not stream by default: every server-streaming call through Zilla
    /// 2f894347 failed here, and then its kafka-grpc killed its worker (docs/benchmarks.md).
    #[arg(long, value_delimiter = ',', default_value = "unary")]
    pub cases: Vec<Case>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Case {
    Unary,
    Stream,
}

impl Case {
    fn path(self) -> &'static str {
        match self {
            Self::Unary => UNARY,
            Self::Stream => STREAM,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Self::Unary => "unary",
            Self::Stream => "server-stream",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Zilla,
    Strait,
}

/// One side of one case, its rounds summed.
struct Measured {
    calls: u64,
    errors: u64,
    seconds: f64,
    latency: Histogram<u64>,
    /// CPU time of each watched process over the measured share of the rounds.
    cpu: Vec<(&'static str, Duration)>,
    /// calls/s of each round.
    round_rates: Vec<f64>,
}

impl Measured {
    fn new() -> anyhow::Result<Self> {
        Ok(Self {
            calls: 0,
            errors: 0,
            seconds: 0.0,
            latency: Histogram::new_with_bounds(1, 60_000_000, 3)?,
            cpu: Vec::new(),
            round_rates: Vec::new(),
        })
    }
    fn rate(&self) -> f64 {
        self.calls as f64 / self.seconds.max(f64::EPSILON)
    }
    fn ms(&self, q: f64) -> f64 {
        self.latency.value_at_quantile(q) as f64 / 1000.0
    }
    fn cpu_us_per_call(&self, role: &str) -> f64 {
        let total: Duration = self
            .cpu
            .iter()
            .filter(|(r, _)| *r == role)
            .map(|(_, d)| *d)
            .sum();
        total.as_secs_f64() * 1e6 / self.calls.max(1) as f64
    }
    /// CPU µs per call of the bridge's own processes (Zilla's JVM; grpc-kafka + kafka-grpc).
    fn bridge_us_per_call(&self, side: Side) -> f64 {
        match side {
            Side::Zilla => self.cpu_us_per_call("zilla"),
            Side::Strait => self.cpu_us_per_call("grpc-kafka") + self.cpu_us_per_call("kafka-grpc"),
        }
    }
}

fn missing(what: &str) -> String {
    format!(
        "{what} is not set: --peer zilla needs a running Zilla (ZILLA_GRPC_SERVICE=127.0.0.1:50151 \
         tests/peers/zilla start; eval \"$(tests/peers/zilla env)\")"
    )
}

/// Partitions of `topic`.
fn topic_partitions(bootstrap: &str, topic: &str) -> anyhow::Result<i32> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .create()?;
    let metadata = consumer
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .with_context(|| format!("reading the metadata of topic {topic}"))?;
    match metadata.topics().first().map(|t| t.partitions().len()) {
        Some(n) if n > 0 => Ok(i32::try_from(n)?),
        _ => bail!("topic {topic} has no partitions (does it exist?)"),
    }
}

pub async fn run(args: GrpcArgs) -> anyhow::Result<()> {
    let z = &args.zilla;
    let zilla_grpc = z.zilla_grpc.with_context(|| missing("ZILLA_GRPC"))?;
    let service_addr = z
        .zilla_service
        .with_context(|| missing("ZILLA_GRPC_SERVICE"))?;
    let zilla_pid = z.zilla_pid.with_context(|| missing("ZILLA_PID"))?;
    let requests = z
        .zilla_requests
        .clone()
        .with_context(|| missing("ZILLA_GRPC_REQUESTS"))?;
    procs::cpu_time(zilla_pid).with_context(|| format!("Zilla (ZILLA_PID {zilla_pid})"))?;
    let partitions = topic_partitions(&args.kafka, &requests)?;
    let bin = procs::proxy_bin(args.proxy_bin.as_deref())?;
    let service = grpc::start_service_at(service_addr).await?;
    let bridge = grpc::start_bridge_with(&bin, &args.kafka, service, "", partitions).await?;
    eprintln!(
        "strait-bench grpc --peer zilla: service {service}, Zilla {zilla_grpc} (pid {zilla_pid}), \
         grpc-kafka {}, logs in {}",
        bridge.front_addr,
        bridge.dir.display()
    );
    if cfg!(debug_assertions) || bin.components().any(|c| c.as_os_str() == "debug") {
        eprintln!("warning: a debug build is being measured; figures are not representative");
    }
    let result = measure(&args, zilla_grpc, zilla_pid, &bridge, partitions).await;
    let topics: Vec<&str> = bridge.topics.iter().map(String::as_str).collect();
    if let Err(error) = grpc::delete_topics(&args.kafka, &topics).await {
        eprintln!("warning: {error:#}");
    }
    bridge.front.stop().await;
    bridge.back.stop().await;
    result
}

async fn measure(
    args: &GrpcArgs,
    zilla_grpc: SocketAddr,
    zilla_pid: u32,
    bridge: &grpc::Bridge,
    partitions: i32,
) -> anyhow::Result<()> {
    let z = &args.zilla;
    let kafka_pid = grpc::kafka_pid(&args.kafka);
    let mut zilla_watched = vec![("zilla", zilla_pid)];
    let mut strait_watched = vec![
        ("grpc-kafka", bridge.front.pid),
        ("kafka-grpc", bridge.back.pid),
    ];
    for watched in [&mut zilla_watched, &mut strait_watched] {
        if let Some(pid) = kafka_pid {
            watched.push(("kafka", pid));
        }
        watched.push(("bench+service", std::process::id()));
    }
    let workers = z
        .zilla_workers
        .map_or_else(|| "unknown".to_string(), |w| w.to_string());
    println!(
        "terms: the same echo service and Kafka for both; {partitions} partitions per topic; \
         acks=all both ways on both (Zilla in_sync_replicas); Zilla workers: {workers} (-w); \
         Strait's defaults (linger.ms 1 on both producers, one Tokio worker per core); \
         {} rounds of {:?} measured after {:?} warm-up per side; {} B payloads; calls spread \
         over 4 HTTP/2 connections",
        z.rounds,
        args.duration / z.rounds,
        args.warmup,
        args.payload
    );
    println!(
        "{:<14} {:>5} {:<7} {:>10} {:>7} {:>8} {:>8} {:>8}  cpu µs/call",
        "case", "conc", "path", "calls/s", "errors", "p50 ms", "p99 ms", "max ms"
    );
    let per_round = args.duration / z.rounds;
    // Warm-up calls are not counted, so CPU is scaled to the measured share of each load.
    let share = per_round.as_secs_f64() / (per_round + args.warmup).as_secs_f64();
    let mut verdicts = Vec::new();
    for &case in &z.cases {
        for &concurrency in &args.concurrency {
            let (mut zilla, mut strait) = (Measured::new()?, Measured::new()?);
            for round in 0..z.rounds {
                let order = if round % 2 == 0 {
                    [Side::Zilla, Side::Strait]
                } else {
                    [Side::Strait, Side::Zilla]
                };
                for side in order {
                    let (addr, watched, into) = match side {
                        Side::Zilla => (zilla_grpc, &zilla_watched, &mut zilla),
                        Side::Strait => (bridge.front_addr, &strait_watched, &mut strait),
                    };
                    let before: Vec<Duration> = watched
                        .iter()
                        .map(|(_, pid)| procs::cpu_time(*pid).unwrap_or_default())
                        .collect();
                    let outcome = grpc::load(
                        addr,
                        case.path(),
                        concurrency,
                        args.payload,
                        args.warmup,
                        per_round,
                    )
                    .await?;
                    for ((role, pid), before) in watched.iter().zip(before) {
                        let after = procs::cpu_time(*pid).unwrap_or_default();
                        into.cpu
                            .push((*role, after.saturating_sub(before).mul_f64(share)));
                    }
                    into.calls += outcome.calls;
                    into.errors += outcome.errors;
                    into.seconds += outcome.seconds;
                    into.latency.add(&outcome.latency)?;
                    into.round_rates
                        .push(outcome.calls as f64 / outcome.seconds.max(f64::EPSILON));
                }
            }
            for (side, m, watched) in [
                (Side::Zilla, &zilla, &zilla_watched),
                (Side::Strait, &strait, &strait_watched),
            ] {
                let cpu: Vec<String> = watched
                    .iter()
                    .map(|(role, _)| format!("{role} {:.0}", m.cpu_us_per_call(role)))
                    .collect();
                println!(
                    "{:<14} {concurrency:>5} {:<7} {:>10.0} {:>7} {:>8.2} {:>8.2} {:>8.2}  {}",
                    case.name(),
                    if side == Side::Zilla {
                        "zilla"
                    } else {
                        "strait"
                    },
                    m.rate(),
                    m.errors,
                    m.ms(0.5),
                    m.ms(0.99),
                    m.latency.max() as f64 / 1000.0,
                    cpu.join(", "),
                );
            }
            let ratio = |a: f64, b: f64| a / b.max(f64::EPSILON);
            let rounds: Vec<String> = strait
                .round_rates
                .iter()
                .zip(&zilla.round_rates)
                .map(|(s, z)| format!("{:.2}", ratio(*s, *z)))
                .collect();
            println!(
                "{:<14} {concurrency:>5} {:<7} {:>9.2}x {:>7} {:>7.2}x {:>7.2}x {:>8}  \
                 bridge {:.2}x, kafka {:.2}x; calls/s per round: {}",
                case.name(),
                "s/z",
                ratio(strait.rate(), zilla.rate()),
                "",
                ratio(strait.ms(0.5), zilla.ms(0.5)),
                ratio(strait.ms(0.99), zilla.ms(0.99)),
                "",
                ratio(
                    strait.bridge_us_per_call(Side::Strait),
                    zilla.bridge_us_per_call(Side::Zilla)
                ),
                ratio(
                    strait.cpu_us_per_call("kafka"),
                    zilla.cpu_us_per_call("kafka")
                ),
                rounds.join(" "),
            );
            if case == Case::Unary && concurrency == 64 {
                let r = ratio(strait.rate(), zilla.rate());
                verdicts.push(format!(
                    "unary calls/s at concurrency 64 ≥ 2x Zilla's: {r:.2}x ({})",
                    if r >= 2.0 { "met" } else { "NOT met" }
                ));
            }
            if case == Case::Unary && concurrency == 1 {
                let (s, z) = (strait.ms(0.5), zilla.ms(0.5));
                verdicts.push(format!(
                    "unary p50 at concurrency 1 no higher than Zilla's: {s:.2} ms vs {z:.2} ms ({})",
                    if s <= z { "met" } else { "NOT met" }
                ));
            }
        }
    }
    println!(
        "s/z: Strait / Zilla (calls/s higher is better; latency and CPU lower); bridge = CPU per \
         call of Zilla's JVM vs grpc-kafka + kafka-grpc"
    );
    for verdict in verdicts {
        println!("target: {verdict}");
    }
    Ok(())
}
