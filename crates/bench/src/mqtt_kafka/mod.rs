//! `strait-bench mqtt-kafka`: MQTT with Kafka as the broker (r-proxy → s-proxy --upstream
//! kafka → Kafka) beside Kafka's own producer benchmark, on the same Kafka and record size.

mod ab;
mod cases;
mod perf_test;
mod publish;
mod render;
mod zilla;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context as _;
use serde::Serialize;

use self::perf_test::PerfTest;
use crate::ab::AbArgs;
use crate::mqtt::latency::Percentiles;
use crate::procs::{self, ProxyArgs, Relay, RelaySpec, Watched};
use crate::report::{Target, cpu_model, load_average};

use self::cases::{connections_case, fan_out_case, publish_case};
use self::render::{render, targets};

pub const LONG_ABOUT: &str = "\
    Measures MQTT with Kafka as the broker: MQTT clients → r-proxy → s-proxy (--upstream kafka, \
    Zilla's record layout) → Kafka, on fresh topics, beside Kafka's own \
    kafka-producer-perf-test (acks=all) on the same Kafka with the same record size.\n\n\
    r-proxy and s-proxy are started here as child processes on free 127.0.0.1 ports, fresh for \
    each case, and killed at the end, on error and on Ctrl-C; the topics are deleted at the end.\n\n\
    Cases:\n  \
    publish      QoS 1 publish throughput: --publishers clients (one MQTT topic each, so the \
    records spread over the partitions) keep --in-flight PUBLISHes unacknowledged; PUBACK \
    (= Kafka acks=all) latency p50/p99; CPU per message of every process and s-proxy's \
    messages per second per core. Then kafka-producer-perf-test with --record-size and \
    acks=all on a topic with the same partitions, and the ratio.\n  \
    fan-out      one topic to --subscribers QoS 0 subscribers, one QoS 1 publisher at \
    --fanout-rate messages/s: delivered messages/s and loss.\n  \
    connections  Kafka connections held by the s-proxy process (established TCP to the Kafka \
    port, from /proc/<pid>/net/tcp and /proc/<pid>/fd) with no client and at each of --clients \
    idle MQTT sessions.\n\n\
    With --baseline-bin, the cases run on two strait-proxy builds (A/B, see that option) \
    and kafka-producer-perf-test is not run. With --peer zilla, the publish case runs against \
    Zilla and against Strait in alternating rounds (see that option).\n\n\
    Measure release builds: a debug strait-proxy is many times slower.";

pub const EXAMPLES: &str = "\
    Example (Kafka from tests/e2e/services):\n  \
    tests/e2e/services up kafka && eval \"$(tests/e2e/services env)\"\n  \
    cargo build --release -p strait-proxy -p strait-bench\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt-kafka\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt-kafka --cases publish --publishers 32 --json\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt-kafka --baseline-bin /tmp/base/target/release/strait-proxy\n  \
    tests/peers/zilla build   # once (see its --help)\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt-kafka --peer zilla --in-flight 8 --warmup 10s";

#[derive(Debug, Clone, clap::Args)]
pub struct MqttKafkaArgs {
    /// Kafka bootstrap servers (on this machine: its CPU and connections are read from /proc).
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub kafka: String,

    /// Directory holding Kafka's kafka-producer-perf-test(.sh).
    #[arg(long, env = "KAFKA_BIN")]
    pub kafka_bin: PathBuf,

    #[command(flatten)]
    pub proxies: ProxyArgs,

    #[command(flatten)]
    pub ab: AbArgs,

    /// Cases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "publish,fan-out,connections"
    )]
    pub cases: Vec<Case>,

    /// How long the publish and fan-out cases are measured.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// Load before measuring starts.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// MQTT payload = Kafka record value size, in bytes (also kafka-producer-perf-test's
    /// --record-size).
    #[arg(long, default_value_t = 100)]
    pub record_size: usize,

    /// QoS 1 publishers of the publish case.
    #[arg(long, default_value_t = 16)]
    pub publishers: usize,

    /// Unacknowledged PUBLISHes per publisher (at most 256, s-proxy's Receive Maximum).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..=256))]
    pub in_flight: u16,

    /// Partitions of the messages topic and of kafka-producer-perf-test's topic.
    #[arg(long, default_value_t = 4)]
    pub partitions: i32,

    /// Records kafka-producer-perf-test writes (0: do not run it).
    #[arg(long, default_value_t = 2_000_000)]
    pub perf_records: u64,

    /// KAFKA_JVM_OPTS for kafka-producer-perf-test (the test services' launcher defaults to
    /// the C1 compiler only, which handicaps a throughput run).
    #[arg(long, default_value = "-XX:+UseParallelGC")]
    pub perf_jvm_opts: String,

    /// Subscribers of the fan-out case.
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,

    /// Messages per second published in the fan-out case (each goes to every subscriber).
    #[arg(long, default_value_t = 100.0)]
    pub fanout_rate: f64,

    /// Connected MQTT clients at which the connections case counts, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,10000")]
    pub clients: Vec<usize>,

    /// Extra librdkafka property for s-proxy's Kafka clients, KEY=VALUE (repeat; the config's
    /// `kafka.librdkafka` map), e.g. --kafka-property linger.ms=10.
    #[arg(long, value_parser = parse_property)]
    pub kafka_property: Vec<(String, String)>,

    /// Side by side with a peer: `zilla` runs the publish case against Zilla and against
    /// Strait, alternating in --ab-rounds rounds [--help: how].
    #[arg(long, value_enum, long_help = zilla::PEER_HELP, conflicts_with = "baseline_bin")]
    pub peer: Option<zilla::Peer>,

    /// With --peer zilla: the script that builds, starts and stops Zilla, run as
    /// `SCRIPT start`, `SCRIPT env` and `SCRIPT stop` for every measurement.
    #[arg(long, env = "STRAIT_ZILLA_SCRIPT", default_value = "tests/peers/zilla")]
    pub zilla_script: PathBuf,

    /// Print the results as one JSON document on stdout (the tables then go to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Case {
    Publish,
    FanOut,
    Connections,
}

#[derive(Debug, Serialize)]
struct Report {
    date: String,
    cpu: String,
    cores: usize,
    load_average_start: String,
    load_average_end: String,
    kafka: String,
    kafka_pid: Option<u32>,
    command: String,
    warnings: Vec<String>,
    publish: Option<PublishOutcome>,
    fan_out: Option<FanOutOutcome>,
    connections: Option<ConnectionsOutcome>,
    targets: Vec<Target>,
}

/// CPU µs per message by process name.
type CpuPerMessage = BTreeMap<&'static str, f64>;

#[derive(Debug, Serialize)]
struct PublishOutcome {
    publishers: usize,
    in_flight: u16,
    record_size: usize,
    partitions: i32,
    messages: u64,
    per_sec: f64,
    puback_us: Percentiles,
    cpu_us_per_msg: CpuPerMessage,
    /// PUBLISHes sent in all (warm-up included) and those never acknowledged (within 10 s of
    /// the last PUBACK).
    sent: u64,
    unacked: u64,
    /// Publishers the server disconnected (DISCONNECT packet).
    disconnected: u64,
    /// Threads of each process at the end of the window, by name.
    threads: BTreeMap<&'static str, u64>,
    /// Messages per CPU second of s-proxy.
    s_proxy_per_core: f64,
    perf_test: Option<PerfTest>,
}

#[derive(Debug, Serialize)]
struct FanOutOutcome {
    subscribers: usize,
    rate: f64,
    published_per_sec: f64,
    delivered_per_sec: f64,
    /// 1 − delivered / (published × subscribers), over the whole run once deliveries drained.
    loss: f64,
    cpu_us_per_delivery: CpuPerMessage,
}

#[derive(Debug, Serialize)]
struct ConnectionsOutcome {
    rows: Vec<ConnectionsRow>,
}

#[derive(Debug, Serialize)]
struct ConnectionsRow {
    clients: usize,
    /// Sessions actually open.
    open: usize,
    kafka_connections: usize,
    s_proxy_rss_mib: f64,
    r_proxy_rss_mib: f64,
}

pub async fn run(args: MqttKafkaArgs) -> anyhow::Result<()> {
    let bin = args.proxies.bin()?;
    let kafka_port: u16 = args
        .kafka
        .split(',')
        .next()
        .and_then(|s| s.rsplit_once(':'))
        .and_then(|(_, port)| port.parse().ok())
        .with_context(|| format!("--kafka {:?} is not HOST:PORT", args.kafka))?;
    let kafka_pid = procs::listener_pid(kafka_port);
    let mut report = Report {
        date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
        cpu: cpu_model(),
        cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
        load_average_start: load_average(),
        load_average_end: String::new(),
        kafka: args.kafka.clone(),
        kafka_pid,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        warnings: Vec::new(),
        publish: None,
        fan_out: None,
        connections: None,
        targets: Vec::new(),
    };
    let warn = |report: &mut Report, warning: String| {
        eprintln!("WARNING: {warning}");
        report.warnings.push(warning);
    };
    if kafka_pid.is_none() {
        warn(
            &mut report,
            format!("no process listens on port {kafka_port} here: Kafka's CPU is not reported"),
        );
    }
    if cfg!(debug_assertions) || bin.to_string_lossy().contains("/debug/") {
        warn(
            &mut report,
            "a debug build is measured: figures are meaningless".into(),
        );
    }
    if let Err(error) = rlimit::increase_nofile_limit(u64::MAX) {
        warn(
            &mut report,
            format!("cannot raise the open-files limit: {error}"),
        );
    }

    let run_id = format!("{}-{}", std::process::id(), crate::grpc::rand_suffix());
    let dir = std::env::temp_dir().join(format!("strait-bench-mqtt-kafka-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let (config, topics) = s_proxy_config(
        &dir,
        &args.kafka,
        &format!("bench-mk-{run_id}"),
        args.partitions,
        // The connections case opens 10,000 sessions: session setups are not paced here, as
        // this bench measures throughput and memory, not admission (`strait-bench abuse` does).
        "maxConnectRate: 0",
        &args.kafka_property,
    )?;
    let perf_topic = format!("bench-mk-{run_id}-perf");
    eprintln!(
        "strait-bench mqtt-kafka: logs and config in {}",
        dir.display()
    );
    let spec = args.proxies.relay(
        bin,
        vec!["--config".into(), config.display().to_string()],
        dir.clone(),
    );
    let watched = Watched::new(kafka_pid);
    let prefix = format!("bench-mk-{run_id}");
    let result = match (&args.peer, &args.ab.baseline_bin) {
        (Some(zilla::Peer::Zilla), _) => zilla::run(&args, &report, &spec, &watched, &prefix)
            .await
            .map(Compared::Peer),
        (None, Some(baseline)) => {
            // The same config without `limits`: builds before s-proxy's session limits refuse
            // the field, and have no connect pace to turn off.
            let baseline_config = dir.join("s-proxy-baseline.yaml");
            let current_config = std::fs::read_to_string(&config)?;
            let unpaced = current_config.replace("  limits: { maxConnectRate: 0 }\n", "");
            anyhow::ensure!(
                unpaced != current_config,
                "no limits line in {}",
                config.display()
            );
            std::fs::write(&baseline_config, unpaced)?;
            ab::run(
                &args,
                &report,
                spec,
                baseline,
                &baseline_config,
                &watched,
                kafka_port,
            )
            .await
            .map(Compared::Builds)
        }
        (None, None) => run_cases(&args, &spec, &watched, kafka_port, &perf_topic, &mut report)
            .await
            .map(|()| Compared::No),
    };
    let mut all_topics: Vec<String> = topics.to_vec();
    all_topics.push(perf_topic);
    if args.peer.is_some() {
        all_topics.extend(zilla::topics(&prefix));
    }
    let all_topics: Vec<&str> = all_topics.iter().map(String::as_str).collect();
    if let Err(error) = crate::grpc::delete_topics(&args.kafka, &all_topics).await {
        eprintln!("WARNING: bench topics not deleted: {error:#}");
    }
    match result? {
        Compared::Builds(ab) => return ab.print(args.json),
        Compared::Peer(peer) => return peer.print(args.json),
        Compared::No => {}
    }
    report.load_average_end = load_average();
    report.targets = targets(&report);
    crate::report::emit(&render(&report), &report, args.json)
}

/// What a run compared, when more than the cases on one build.
enum Compared {
    No,
    Builds(crate::ab::AbReport),
    Peer(zilla::PeerReport),
}

/// Writes s-proxy's config for Kafka mode into `dir`: fresh topics named `{prefix}-messages`,
/// `-retained` and `-sessions` with `partitions` each, `limits` (YAML flow-mapping entries of
/// `kafka.limits`, empty for the defaults) and extra librdkafka `properties`.
/// Returns the file and the three topic names.
pub fn s_proxy_config(
    dir: &std::path::Path,
    kafka: &str,
    prefix: &str,
    partitions: i32,
    limits: &str,
    properties: &[(String, String)],
) -> anyhow::Result<(PathBuf, [String; 3])> {
    let topics = ["messages", "retained", "sessions"].map(|t| format!("{prefix}-{t}"));
    let config = dir.join("s-proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: kafka\nkafka:\n  bootstrap: '{kafka}'\n  \
             topics: {{ messages: {}, retained: {}, sessions: {} }}\n  \
             newTopics: {{ partitions: {partitions} }}\n  limits: {{ {limits} }}\n  \
             librdkafka: {{ {} }}\n",
            topics[0],
            topics[1],
            topics[2],
            properties
                .iter()
                .map(|(k, v)| format!("'{k}': '{v}'"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    )?;
    Ok((config, topics))
}

fn parse_property(text: &str) -> Result<(String, String), String> {
    text.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{text:?} is not KEY=VALUE"))
}

async fn run_cases(
    args: &MqttKafkaArgs,
    spec: &RelaySpec,
    watched: &Watched,
    kafka_port: u16,
    perf_topic: &str,
    report: &mut Report,
) -> anyhow::Result<()> {
    for &case in &args.cases {
        eprintln!("{case:?}…");
        let mut relay = Relay::start(spec).await?;
        let watched = watched.with_relay(&relay);
        let tag = format!("mk{}-{}", std::process::id(), crate::grpc::rand_suffix());
        let outcome = match case {
            Case::Publish => publish_case(args, relay.mqtt, &watched, &[], &tag)
                .await
                .map(|o| report.publish = Some(o)),
            Case::FanOut => fan_out_case(args, &relay, &watched, &tag)
                .await
                .map(|o| report.fan_out = Some(o)),
            Case::Connections => connections_case(args, &relay, &watched, kafka_port, &tag)
                .await
                .map(|o| report.connections = Some(o)),
        };
        relay.check_running()?;
        relay.stop().await;
        outcome?;
        if case == Case::Publish && args.perf_records > 0 {
            // Kafka's own producer, with the relay gone, on a topic of the same shape.
            crate::grpc::create_topics(&args.kafka, &[perf_topic], args.partitions).await?;
            eprintln!("kafka-producer-perf-test…");
            let perf = perf_test::run(&perf_test::Settings {
                bin_dir: &args.kafka_bin,
                bootstrap: &args.kafka,
                topic: perf_topic,
                records: args.perf_records,
                record_size: args.record_size,
                jvm_opts: &args.perf_jvm_opts,
                kafka_pid: report.kafka_pid,
            })
            .await?;
            if let Some(publish) = &mut report.publish {
                publish.perf_test = Some(perf);
            }
        }
        // Let the servers close this case's connections before the next one starts.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    Ok(())
}
