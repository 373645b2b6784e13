//! `strait-bench mqtt-kafka`: MQTT with Kafka as the broker (r-proxy → s-proxy --upstream
//! kafka → Kafka) beside Kafka's own producer benchmark, on the same Kafka and record size.

mod perf_test;
mod publish;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context as _;
use futures::StreamExt as _;
use serde::Serialize;
use strait_mqtt_codec::QoS;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use self::perf_test::PerfTest;
use crate::load::Client;
use crate::mqtt::latency::Percentiles;
use crate::mqtt::{idle, throughput};
use crate::procs::{self, ProxyArgs, Relay, RelaySpec, Role, Watched};
use crate::report::{Table, Target, cpu_model, load_average, render_targets, thousands};

/// QoS 1 through the proxies at least this fraction of kafka-producer-perf-test's rate.
const MIN_PERF_TEST_RATIO: f64 = 0.5;
/// QoS 1 messages per second per core of s-proxy, at least.
const MIN_PER_CORE: f64 = 30_000.0;
/// Subscribers are connected this many at a time.
const OPENING_AT_ONCE: usize = 64;

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
    Measure release builds: a debug strait-proxy is many times slower.";

pub const EXAMPLES: &str = "\
    Example (Kafka from tests/e2e/services):\n  \
    tests/e2e/services up kafka && eval \"$(tests/e2e/services env)\"\n  \
    cargo build --release -p strait-proxy -p strait-bench\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt-kafka\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt-kafka --cases publish --publishers 32 --json";

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
    let result = run_cases(&args, &spec, &watched, kafka_port, &perf_topic, &mut report).await;
    let mut all_topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    all_topics.push(&perf_topic);
    if let Err(error) = crate::grpc::delete_topics(&args.kafka, &all_topics).await {
        eprintln!("WARNING: bench topics not deleted: {error:#}");
    }
    result?;
    report.load_average_end = load_average();
    report.targets = targets(&report);
    let text = render(&report);
    if args.json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

/// Writes s-proxy's config for Kafka mode into `dir`: fresh topics named `{prefix}-messages`,
/// `-retained` and `-sessions` with `partitions` each, and extra librdkafka `properties`.
/// Returns the file and the three topic names.
pub fn s_proxy_config(
    dir: &std::path::Path,
    kafka: &str,
    prefix: &str,
    partitions: i32,
    properties: &[(String, String)],
) -> anyhow::Result<(PathBuf, [String; 3])> {
    let topics = ["messages", "retained", "sessions"].map(|t| format!("{prefix}-{t}"));
    let config = dir.join("s-proxy.yaml");
    std::fs::write(
        &config,
        format!(
            "upstream: kafka\nkafka:\n  bootstrap: '{kafka}'\n  \
             topics: {{ messages: {}, retained: {}, sessions: {} }}\n  \
             newTopics: {{ partitions: {partitions} }}\n  librdkafka: {{ {} }}\n",
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
            Case::Publish => publish_case(args, &relay, &watched, &tag)
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

/// CPU µs per message of each watched process between two readings, by name.
fn cpu_per_message(
    before: &BTreeMap<Role, Duration>,
    after: &BTreeMap<Role, Duration>,
    messages: u64,
) -> CpuPerMessage {
    procs::cpu_us_per_message(before, after, messages)
        .into_iter()
        .map(|(role, us)| (name(role), us))
        .collect()
}

fn name(role: Role) -> &'static str {
    match role {
        Role::Broker => "kafka",
        other => other.name(),
    }
}

async fn publish_case(
    args: &MqttKafkaArgs,
    relay: &Relay,
    watched: &Watched,
    tag: &str,
) -> anyhow::Result<PublishOutcome> {
    let start = Instant::now();
    let (from, to) = (start + args.warmup, start + args.warmup + args.duration);
    let stop = CancellationToken::new();
    let mut publishers = JoinSet::new();
    for i in 0..args.publishers {
        let settings = publish::Settings {
            topic: format!("bench/{tag}/{i}"),
            payload: args.record_size,
            in_flight: usize::from(args.in_flight),
            rate: None,
            from,
            to,
        };
        let (addr, stop, id) = (relay.mqtt, stop.clone(), format!("{tag}-pub{i}"));
        publishers.spawn(async move { publish::run(addr, &id, settings, stop).await });
    }
    let _stop_on_error = stop.clone().drop_guard();
    tokio::time::sleep_until(from.into()).await;
    let cpu_before = watched.cpu();
    tokio::time::sleep_until(to.into()).await;
    let cpu_after = watched.cpu();
    let mut total = publish::Published::empty();
    while let Some(joined) = publishers.join_next().await {
        total.add(&joined??)?;
    }
    let s_proxy_seconds = cpu_after
        .get(&Role::SProxy)
        .zip(cpu_before.get(&Role::SProxy))
        .map_or(0.0, |(a, b)| a.saturating_sub(*b).as_secs_f64());
    Ok(PublishOutcome {
        publishers: args.publishers,
        in_flight: args.in_flight,
        record_size: args.record_size,
        partitions: args.partitions,
        messages: total.acked,
        per_sec: total.acked as f64 / args.duration.as_secs_f64(),
        puback_us: Percentiles::of(&total.puback),
        cpu_us_per_msg: cpu_per_message(&cpu_before, &cpu_after, total.acked),
        s_proxy_per_core: total.acked as f64 / s_proxy_seconds.max(f64::MIN_POSITIVE),
        perf_test: None,
    })
}

async fn fan_out_case(
    args: &MqttKafkaArgs,
    relay: &Relay,
    watched: &Watched,
    tag: &str,
) -> anyhow::Result<FanOutOutcome> {
    let topic = format!("bench/{tag}/fan");
    let addr = relay.mqtt;
    let mut opening = futures::stream::iter(0..args.subscribers)
        .map(|i| {
            let (topic, id) = (topic.clone(), format!("{tag}-sub{i}"));
            async move {
                let mut client = Client::connect(addr, &id, 300).await?;
                client.subscribe(&topic, QoS::AtMostOnce).await?;
                anyhow::Ok(client)
            }
        })
        .buffer_unordered(OPENING_AT_ONCE);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop_counting = CancellationToken::new();
    let mut counting = JoinSet::new();
    while let Some(client) = opening.next().await {
        counting.spawn(throughput::count_delivered(
            client.context("connecting a subscriber")?,
            delivered.clone(),
            stop_counting.clone(),
        ));
    }
    drop(opening);
    let _stop_counting = stop_counting.clone().drop_guard();

    let start = Instant::now();
    let (from, to) = (start + args.warmup, start + args.warmup + args.duration);
    let settings = publish::Settings {
        topic,
        payload: args.record_size,
        in_flight: usize::from(args.in_flight),
        rate: Some(args.fanout_rate),
        from,
        to,
    };
    let stop = CancellationToken::new();
    let publisher = tokio::spawn({
        let (stop, id) = (stop.clone(), format!("{tag}-pub"));
        async move { publish::run(addr, &id, settings, stop).await }
    });
    let _stop_on_error = stop.drop_guard();
    tokio::time::sleep_until(from.into()).await;
    let (cpu_before, delivered_before) = (watched.cpu(), delivered.load(Ordering::Relaxed));
    tokio::time::sleep_until(to.into()).await;
    let (cpu_after, delivered_after) = (watched.cpu(), delivered.load(Ordering::Relaxed));
    let published = publisher.await??;
    throughput::drain(&delivered).await;
    stop_counting.cancel();
    while let Some(joined) = counting.join_next().await {
        joined??;
    }
    let in_window = delivered_after - delivered_before;
    let seconds = args.duration.as_secs_f64();
    let expected = published.total * args.subscribers as u64;
    Ok(FanOutOutcome {
        subscribers: args.subscribers,
        rate: args.fanout_rate,
        published_per_sec: published.acked as f64 / seconds,
        delivered_per_sec: in_window as f64 / seconds,
        loss: 1.0 - delivered.load(Ordering::Relaxed) as f64 / expected.max(1) as f64,
        cpu_us_per_delivery: cpu_per_message(&cpu_before, &cpu_after, in_window),
    })
}

async fn connections_case(
    args: &MqttKafkaArgs,
    relay: &Relay,
    watched: &Watched,
    kafka_port: u16,
    tag: &str,
) -> anyhow::Result<ConnectionsOutcome> {
    let mut clients = args.clients.clone();
    clients.sort_unstable();
    let mut rows = vec![connections_row(relay, kafka_port, 0, 0).await?];
    let mut open = Vec::new();
    let mut attempted = 0;
    for (step, want) in clients.into_iter().enumerate() {
        let more = want.saturating_sub(attempted);
        eprintln!("connections: opening {more} more sessions (to {want})…");
        let (_, streams) = idle::run(relay.mqtt, watched, more, &format!("{tag}-{step}")).await?;
        open.extend(streams);
        attempted = want;
        rows.push(connections_row(relay, kafka_port, want, open.len()).await?);
    }
    Ok(ConnectionsOutcome { rows })
}

/// Counts s-proxy's Kafka connections several times over a few seconds (librdkafka opens and
/// closes some lazily) and keeps the highest.
async fn connections_row(
    relay: &Relay,
    kafka_port: u16,
    clients: usize,
    open: usize,
) -> anyhow::Result<ConnectionsRow> {
    let mut most = 0;
    for _ in 0..6 {
        most = most.max(procs::connections_to(relay.s_proxy.pid, kafka_port)?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mib = |pid| procs::rss_kib(pid).map_or(f64::NAN, |kib| kib as f64 / 1024.0);
    Ok(ConnectionsRow {
        clients,
        open,
        kafka_connections: most,
        s_proxy_rss_mib: mib(relay.s_proxy.pid),
        r_proxy_rss_mib: mib(relay.r_proxy.pid),
    })
}

fn targets(report: &Report) -> Vec<Target> {
    let mut targets = Vec::new();
    if let Some(publish) = &report.publish {
        if let Some(perf) = &publish.perf_test {
            let ratio = publish.per_sec / perf.records_per_sec.max(f64::MIN_POSITIVE);
            targets.push(Target {
                what: format!(
                    "QoS 1 msg/s through the proxies ≥ {MIN_PERF_TEST_RATIO}× \
                     kafka-producer-perf-test records/s"
                ),
                measured: ratio,
                limit: MIN_PERF_TEST_RATIO,
                met: ratio >= MIN_PERF_TEST_RATIO,
            });
        }
        targets.push(Target {
            what: format!(
                "≥ {} QoS 1 msg/s per core of s-proxy",
                thousands(MIN_PER_CORE)
            ),
            measured: publish.s_proxy_per_core,
            limit: MIN_PER_CORE,
            met: publish.s_proxy_per_core >= MIN_PER_CORE,
        });
    }
    if let Some(connections) = &report.connections
        && let (Some(first), Some(last)) = (connections.rows.get(1), connections.rows.last())
    {
        targets.push(Target {
            what: format!(
                "s-proxy's Kafka connections at {} clients ≤ at {}",
                last.clients, first.clients
            ),
            measured: last.kafka_connections as f64,
            limit: first.kafka_connections as f64,
            met: last.kafka_connections <= first.kafka_connections,
        });
    }
    targets
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "\nstrait-bench mqtt-kafka — {}", report.date);
    let _ = writeln!(
        out,
        "machine: {} cores, {}; load average {} at start, {} at end",
        report.cores, report.cpu, report.load_average_start, report.load_average_end
    );
    let _ = writeln!(
        out,
        "Kafka {} (pid {}); command: {}",
        report.kafka,
        report.kafka_pid.map_or("unknown".into(), |p| p.to_string()),
        report.command
    );
    for warning in &report.warnings {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    if let Some(p) = &report.publish {
        let _ = writeln!(
            out,
            "\npublish: QoS 1, {} publishers × {} in flight, {} B payload, {} partitions",
            p.publishers, p.in_flight, p.record_size, p.partitions
        );
        let mut table = Table::new(["", "MQTT → r-proxy → s-proxy → Kafka", "perf-test"]);
        let perf = p.perf_test.as_ref();
        table.row([
            "messages/s".into(),
            thousands(p.per_sec),
            perf.map_or("-".into(), |t| thousands(t.records_per_sec)),
        ]);
        table.row([
            "ratio to perf-test".into(),
            perf.map_or("-".into(), |t| {
                format!("{:.2}×", p.per_sec / t.records_per_sec.max(1.0))
            }),
            String::new(),
        ]);
        table.row([
            "ack latency p50 / p99".into(),
            format!(
                "{:.2} / {:.2} ms",
                p.puback_us.p50 / 1000.0,
                p.puback_us.p99 / 1000.0
            ),
            perf.map_or("-".into(), |t| format!("{} / {} ms", t.p50_ms, t.p99_ms)),
        ]);
        for (process, us) in &p.cpu_us_per_msg {
            let perf_cell = match (*process, perf.and_then(|t| t.kafka_cpu_us_per_record)) {
                ("kafka", Some(us)) => format!("{us:.2}"),
                _ => String::new(),
            };
            table.row([
                format!("CPU µs/msg {process}"),
                format!("{us:.2}"),
                perf_cell,
            ]);
        }
        table.row([
            "msg/s per core of s-proxy".into(),
            thousands(p.s_proxy_per_core),
            String::new(),
        ]);
        if let Some(t) = perf {
            table.note(format!("perf-test: {}", t.command));
            table.note(
                "perf-test latency is with unbounded in-flight records (--throughput -1)".into(),
            );
        }
        out.push_str(&table.render());
    }
    if let Some(f) = &report.fan_out {
        let _ = writeln!(
            out,
            "\nfan-out: 1 topic, 1 QoS 1 publisher at {} msg/s → {} QoS 0 subscribers",
            f.rate, f.subscribers
        );
        let mut table = Table::new(["", "measured"]);
        table.row(["published msg/s".into(), thousands(f.published_per_sec)]);
        table.row(["delivered msg/s".into(), thousands(f.delivered_per_sec)]);
        table.row(["loss".into(), format!("{:.2} %", f.loss * 100.0)]);
        for (process, us) in &f.cpu_us_per_delivery {
            table.row([format!("CPU µs/delivery {process}"), format!("{us:.2}")]);
        }
        out.push_str(&table.render());
    }
    if let Some(c) = &report.connections {
        let _ = writeln!(
            out,
            "\nconnections: idle MQTT 5 sessions (keep-alive 300 s)"
        );
        let mut table = Table::new([
            "clients",
            "open",
            "s-proxy → Kafka TCP",
            "s-proxy RSS MiB",
            "r-proxy RSS MiB",
        ]);
        for row in &c.rows {
            table.row([
                thousands(row.clients as f64),
                thousands(row.open as f64),
                row.kafka_connections.to_string(),
                format!("{:.1}", row.s_proxy_rss_mib),
                format!("{:.1}", row.r_proxy_rss_mib),
            ]);
        }
        out.push_str(&table.render());
    }
    render_targets(&mut out, &report.targets);
    out
}
