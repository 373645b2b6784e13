//! `strait-bench mqtt`: the same MQTT load straight to the broker and through
//! r-proxy → s-proxy → broker, case by case.

mod ab;
pub mod idle;
pub mod latency;
pub mod throughput;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;

pub use idle::Idle;
pub use latency::{Latency, Percentiles};
pub use throughput::Throughput;

use crate::ab::AbArgs;
use crate::procs::{self, ProxyArgs, Relay, Watched};
use crate::report::{self, Report};

/// What `strait-bench mqtt --help` explains.
pub const LONG_ABOUT: &str = "\
    Runs the same MQTT 5 load twice per case, straight to the broker and through \
    r-proxy → s-proxy → broker, and prints both with their ratio and our targets (✓/✗). \
    The throughput cases alternate the two paths in --rounds rounds. With --baseline-bin, \
    the relay cases run on two strait-proxy builds instead (A/B, see that option).\n\n\
    The relay is started here as two child processes (`strait-proxy s-proxy` and \
    `strait-proxy r-proxy`) on free 127.0.0.1 ports, fresh for each case, and killed at the \
    end, on error and on Ctrl-C. Load is generated in this process with tokio and Strait's \
    codec over raw TCP.\n\n\
    Cases:\n  \
    qos0-16b, qos0-1kib  QoS 0 pipelined throughput: --publishers clients write PUBLISH as \
    fast as the server reads them, one subscriber counts deliveries. Reports delivered and \
    published msg/s and the loss (QoS 0 may be dropped by the broker).\n  \
    qos1                 QoS 1, one message in flight: PUBLISH, wait for PUBACK, repeat. \
    Reports msg/s, PUBACK latency and publish → subscriber latency (p50/p90/p99/max).\n  \
    idle                 --idle-connections MQTT 5 sessions (keep-alive 300 s) left idle: \
    resident memory growth per connection of the broker and of each proxy.\n\n\
    Every case also reports CPU time per message of each process (utime+stime from \
    /proc/<pid>/stat, 10 ms resolution), the broker's found by its listening port.\n\n\
    Measure release builds: a debug strait-proxy is many times slower (a warning says so).";

/// How to run it, shown after the options.
pub const EXAMPLES: &str = "\
    Example (the broker from tests/e2e/services):\n  \
    tests/e2e/services up mosquitto && eval \"$(tests/e2e/services env)\"\n  \
    cargo build --release -p strait-proxy -p strait-bench\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt --cases qos1 --duration 5s --json > qos1.json\n  \
    $CARGO_TARGET_DIR/release/strait-bench mqtt --baseline-bin /tmp/base/target/release/strait-proxy";

/// `strait-bench mqtt`: compare the broker reached directly and through the relay.
#[derive(Debug, Clone, clap::Args)]
pub struct MqttArgs {
    /// The MQTT broker (HOST:PORT on this machine: only loopback addresses are accepted).
    #[arg(long, env = "MQTT_BROKER")]
    pub broker: String,

    #[command(flatten)]
    pub proxies: ProxyArgs,

    #[command(flatten)]
    pub ab: AbArgs,

    /// Cases to run, comma-separated.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "qos0-16b,qos0-1kib,qos1,idle"
    )]
    pub cases: Vec<Case>,

    /// How long each case is measured, per path (direct, relay).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub duration: Duration,

    /// QoS 0 throughput cases alternate direct and relay this many times, each round measuring
    /// --duration / rounds per path, and report the mean: a drift in the machine's speed
    /// (other tenants of a VM) then weighs on both paths alike. The ratio of each round is
    /// shown too.
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,

    /// Load run before measuring starts, per case, path and round.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub warmup: Duration,

    /// Publishers of the QoS 0 throughput cases.
    #[arg(long, default_value_t = 4)]
    pub publishers: usize,

    /// Sessions opened by the idle case (each costs a file descriptor here, in r-proxy,
    /// s-proxy and the broker; the open-files limit of this process is raised to its hard limit
    /// and inherited by the proxies).
    #[arg(long, default_value_t = 10_000)]
    pub idle_connections: usize,

    /// PID of the broker, to read its CPU and memory [default: the process listening on the
    /// broker's port, found through /proc/net/tcp and /proc/*/fd].
    #[arg(long)]
    pub broker_pid: Option<u32>,

    /// Print the results as one JSON document on stdout (the tables then go to stderr).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Case {
    /// QoS 0 throughput with 16-byte payloads.
    #[value(name = "qos0-16b")]
    #[serde(rename = "qos0-16b")]
    Qos0Small,
    /// QoS 0 throughput with 1 KiB payloads.
    #[value(name = "qos0-1kib")]
    #[serde(rename = "qos0-1kib")]
    Qos0Large,
    /// QoS 1 one-in-flight latency.
    #[value(name = "qos1")]
    #[serde(rename = "qos1")]
    Qos1,
    /// Memory per idle connection.
    #[value(name = "idle")]
    #[serde(rename = "idle")]
    Idle,
}

impl Case {
    pub fn name(self) -> &'static str {
        match self {
            Self::Qos0Small => "qos0-16b",
            Self::Qos0Large => "qos0-1kib",
            Self::Qos1 => "qos1",
            Self::Idle => "idle",
        }
    }
}

/// Warm-up then measurement, from a case's start.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Window {
    pub warmup: Duration,
    pub duration: Duration,
}

impl Window {
    /// When measuring starts and ends for a case that started at `start`.
    pub fn bounds(&self, start: Instant) -> (Instant, Instant) {
        let from = start + self.warmup;
        (from, from + self.duration)
    }
}

/// One case's results on both paths.
#[derive(Debug, Clone, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Outcome {
    Throughput {
        payload_bytes: usize,
        publishers: usize,
        direct: Throughput,
        relay: Throughput,
        /// relay/direct delivered msg/s of each round.
        round_ratios: Vec<f64>,
    },
    Latency {
        direct: Latency,
        relay: Latency,
    },
    Idle {
        direct: Idle,
        relay: Idle,
    },
}

/// One case's result on one path.
enum Measured {
    Throughput(Throughput),
    Latency(Latency),
    Idle(Idle),
}

pub async fn run(args: MqttArgs) -> anyhow::Result<()> {
    let broker = loopback_broker(&args.broker).await?;
    let bin = args.proxies.bin()?;

    let mut report = Report::new(&args, &bin, broker);
    if bin.to_string_lossy().contains("/debug/") {
        report.warn(format!(
            "{} is a debug build: figures are meaningless; build with --release",
            bin.display()
        ));
    }
    if cfg!(debug_assertions) {
        report.warn("strait-bench is a debug build: the load generator may be the bottleneck");
    }
    let open_files = raise_open_files_limit(&mut report);
    let broker_pid = args
        .broker_pid
        .or_else(|| procs::listener_pid(broker.port()));
    match broker_pid {
        Some(pid) => report.set_broker_pid(pid, procs::open_files_limit(pid)),
        None => report.warn(format!(
            "no process found listening on port {}: broker CPU and memory not reported \
             (pass --broker-pid)",
            broker.port()
        )),
    }
    let idle_connections = fit_idle_connections(&args, open_files, broker_pid, &mut report);

    let log_dir = std::env::temp_dir().join(format!("strait-bench-{}", std::process::id()));
    std::fs::create_dir_all(&log_dir).with_context(|| format!("creating {}", log_dir.display()))?;
    eprintln!("proxy logs: {}", log_dir.display());
    let spec = args
        .proxies
        .relay(bin, vec!["--broker".into(), broker.to_string()], log_dir);
    let watched = Watched::new(broker_pid);
    if let Some(baseline) = &args.ab.baseline_bin {
        return ab::run(&args, &report, spec, baseline, &watched, idle_connections).await;
    }

    for &case in &args.cases {
        let rounds = match case {
            Case::Qos0Small | Case::Qos0Large => args.rounds,
            Case::Qos1 | Case::Idle => 1,
        };
        let window = Window {
            warmup: args.warmup,
            duration: args.duration / rounds,
        };
        let run = |addr, watched, path, round| {
            let tag = format!("sb{}-{}-{path}{round}", std::process::id(), case.name());
            eprintln!(
                "{}: {path} ({addr}), round {} of {rounds}…",
                case.name(),
                round + 1
            );
            run_case(case, addr, watched, window, &args, idle_connections, tag)
        };
        let mut relay = Relay::start(&spec).await?;
        let mut measured = Vec::new();
        for round in 0..rounds {
            let direct = run(broker, watched.clone(), "direct", round).await?;
            let relayed = run(relay.mqtt, watched.with_relay(&relay), "relay", round).await;
            relay.check_running()?;
            measured.push((direct, relayed?));
        }
        relay.stop().await;
        report.add(case, outcome(case, measured, &args)?);
    }
    report.finish();
    report::print(&report, args.json)
}

async fn run_case(
    case: Case,
    addr: SocketAddr,
    watched: Watched,
    window: Window,
    args: &MqttArgs,
    idle_connections: usize,
    tag: String,
) -> anyhow::Result<Measured> {
    let measured = match case {
        Case::Qos0Small | Case::Qos0Large => {
            let settings = throughput::Settings {
                publishers: args.publishers,
                payload: payload_bytes(case),
                window,
            };
            Measured::Throughput(throughput::run(addr, &watched, settings, &tag).await?)
        }
        Case::Qos1 => {
            let settings = latency::Settings { window };
            Measured::Latency(latency::run(addr, &watched, settings, &tag).await?)
        }
        Case::Idle => {
            let (result, connections) = idle::run(addr, &watched, idle_connections, &tag).await?;
            drop(connections);
            Measured::Idle(result)
        }
    };
    // Let the server close this case's connections before the next one starts.
    tokio::time::sleep(Duration::from_secs(3)).await;
    Ok(measured)
}

fn payload_bytes(case: Case) -> usize {
    match case {
        Case::Qos0Large => 1024,
        _ => 16,
    }
}

fn outcome(
    case: Case,
    rounds: Vec<(Measured, Measured)>,
    args: &MqttArgs,
) -> anyhow::Result<Outcome> {
    let mut rounds = rounds.into_iter();
    let Some(first) = rounds.next() else {
        bail!("no round was run");
    };
    Ok(match first {
        (Measured::Throughput(direct), Measured::Throughput(relay)) => {
            let mut pairs = vec![(direct, relay)];
            for round in rounds {
                match round {
                    (Measured::Throughput(d), Measured::Throughput(r)) => pairs.push((d, r)),
                    _ => bail!("rounds of one case ran different loads"),
                }
            }
            let (direct, relay): (Vec<_>, Vec<_>) = pairs.into_iter().unzip();
            Outcome::Throughput {
                payload_bytes: payload_bytes(case),
                publishers: args.publishers,
                round_ratios: direct
                    .iter()
                    .zip(&relay)
                    .map(|(d, r)| r.delivered_vs(d))
                    .collect(),
                direct: Throughput::merge(&direct),
                relay: Throughput::merge(&relay),
            }
        }
        (Measured::Latency(direct), Measured::Latency(relay)) => Outcome::Latency { direct, relay },
        (Measured::Idle(direct), Measured::Idle(relay)) => Outcome::Idle { direct, relay },
        _ => bail!("direct and relay ran different cases"),
    })
}

/// Resolves `--broker` and refuses anything but a loopback address: the benchmark floods its
/// target and must never be pointed at another machine.
async fn loopback_broker(broker: &str) -> anyhow::Result<SocketAddr> {
    let addr = tokio::net::lookup_host(broker)
        .await
        .with_context(|| format!("--broker {broker:?} is not HOST:PORT"))?
        .next()
        .with_context(|| format!("--broker {broker:?} resolves to nothing"))?;
    if !addr.ip().is_loopback() {
        bail!("--broker {broker} is {addr}: only a broker on 127.0.0.1 (loopback) is accepted");
    }
    Ok(addr)
}

/// Raises this process's open-files limit to its hard limit (the proxies inherit it) and
/// returns it.
fn raise_open_files_limit(report: &mut Report) -> u64 {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => limit,
        Err(error) => {
            let (soft, _) = rlimit::Resource::NOFILE.get().unwrap_or((1024, 1024));
            report.warn(format!(
                "cannot raise the open-files limit ({error}); it stays {soft}"
            ));
            soft
        }
    }
}

/// The idle connections that fit this process's and the broker's open-files limits (each side
/// holds one descriptor per connection, plus a margin for everything else).
fn fit_idle_connections(
    args: &MqttArgs,
    own_limit: u64,
    broker_pid: Option<u32>,
    report: &mut Report,
) -> usize {
    const MARGIN: u64 = 200;
    let mut fit = args.idle_connections as u64;
    if own_limit < fit + MARGIN {
        fit = own_limit.saturating_sub(MARGIN);
        report.warn(format!(
            "open-files limit {own_limit} (hard limit; raise with `ulimit -Hn`) only allows {fit} \
             idle connections"
        ));
    }
    if let Some(limit) = broker_pid.and_then(procs::open_files_limit)
        && limit < fit + MARGIN
    {
        report.warn(format!(
            "the broker's open-files limit is {limit}: it may refuse some of {fit} connections \
             (start it after `ulimit -n 65536`); the idle case reports how many it took"
        ));
    }
    fit as usize
}
