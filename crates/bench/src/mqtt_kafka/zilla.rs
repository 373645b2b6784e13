//! `strait-bench mqtt-kafka --peer zilla`: the publish case against Zilla's MQTT port and
//! against r-proxy → s-proxy, alternating in rounds on the same Kafka, each side on fresh topics
//! with the same partitions. Zilla is started and stopped through `tests/peers/zilla` for every
//! measurement: it stops answering CONNECT after a few dozen sessions (docs/benchmarks.md).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::process::Command;

use crate::procs::{Relay, RelaySpec, Watched};
use crate::report::{Table, Target, load_average, render_targets, thousands};

use super::cases::publish_case;
use super::{MqttKafkaArgs, PublishOutcome, Report};

/// How `--peer zilla` works (its `--help`).
pub const PEER_HELP: &str = "\
    Side by side with a peer: `zilla` runs the publish case (QoS 1, --publishers × --in-flight, \
    --record-size) against Zilla's MQTT port and against r-proxy → s-proxy, alternating in \
    --ab-rounds rounds (Strait, Zilla in odd rounds, Zilla, Strait in even ones), on the same \
    Kafka, each on fresh topics with --partitions partitions. Zilla is started and stopped for \
    every measurement with `--zilla-script start|env|stop` (tests/peers/zilla, after \
    `tests/peers/zilla build`): it needs a fresh start per measurement, since it stops \
    answering CONNECT after a few dozen sessions. The script gets ZILLA_INSTANCE (yours, or \
    zilla-bench: an instance of that name is stopped first), the five topic names \
    (bench-mk-<run>-zilla-*, deleted at the end) and ZILLA_TOPIC_PARTITIONS; Zilla runs with \
    one worker (-w 1) and acks in_sync_replicas (its zilla.yaml). Reports per side the mean of \
    the rounds and their spread: msg/s, PUBACK p50/p99, CPU µs per message of each process \
    (Zilla's JVM; r-proxy, s-proxy; Kafka; the bench), PUBLISHes sent and never acknowledged, \
    threads, publishers the server disconnected; and the ratios Strait/Zilla. A round in which \
    nothing was acknowledged counts for msg/s only. kafka-producer-perf-test and the other \
    cases are not run. Zilla disconnects (0x83) clients with a few dozen QoS 1 PUBLISHes in \
    flight (docs/benchmarks.md): the default --in-flight 64 measures that; --in-flight 8 or \
    less is a load it mostly survives.";

/// The issue 21 targets: Strait's msg/s at least this many times Zilla's.
const MIN_RATE_RATIO: f64 = 2.0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Peer {
    Zilla,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Side {
    Strait,
    Zilla,
}

impl Side {
    /// Strait, Zilla in the first round, Zilla, Strait in the second, and so on.
    fn order(round: u32) -> [Side; 2] {
        if round.is_multiple_of(2) {
            [Side::Strait, Side::Zilla]
        } else {
            [Side::Zilla, Side::Strait]
        }
    }
}

/// Zilla through its script: the environment it gets, so every start uses the bench's topics.
struct ZillaScript {
    script: PathBuf,
    env: Vec<(String, String)>,
}

/// A started Zilla.
struct Running {
    mqtt: SocketAddr,
    pid: u32,
}

impl ZillaScript {
    fn new(script: &Path, prefix: &str, partitions: i32) -> anyhow::Result<Self> {
        anyhow::ensure!(
            script.is_file(),
            "--zilla-script {} not found: run from the repository's root or pass the path of \
             tests/peers/zilla",
            script.display()
        );
        let instance = std::env::var("ZILLA_INSTANCE").unwrap_or_else(|_| "zilla-bench".into());
        let mut env = vec![
            ("ZILLA_INSTANCE".to_string(), instance),
            ("ZILLA_TOPIC_PARTITIONS".into(), partitions.to_string()),
        ];
        for (var, topic) in topic_vars(prefix) {
            env.push((var.into(), topic));
        }
        Ok(Self {
            script: script.to_path_buf(),
            env,
        })
    }

    async fn call(&self, command: &str) -> anyhow::Result<String> {
        let out = Command::new(&self.script)
            .arg(command)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .output()
            .await
            .with_context(|| format!("running {} {command}", self.script.display()))?;
        if !out.status.success() {
            bail!(
                "{} {command} failed ({}): {}",
                self.script.display(),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn start(&self) -> anyhow::Result<Running> {
        self.call("start").await?;
        let env = self.call("env").await?;
        let var = |name: &str| {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("export {name}=")))
                .map(|v| v.trim_matches('\'').to_string())
                .with_context(|| format!("{name} missing from `{} env`", self.script.display()))
        };
        Ok(Running {
            mqtt: var("ZILLA_MQTT")?.parse().context("ZILLA_MQTT")?,
            pid: var("ZILLA_PID")?.parse().context("ZILLA_PID")?,
        })
    }

    async fn stop(&self) -> anyhow::Result<()> {
        self.call("stop").await.map(drop)
    }
}

/// The script's topic variables and the bench's names for them.
fn topic_vars(prefix: &str) -> [(&'static str, String); 5] {
    [
        ("ZILLA_MQTT_MESSAGES", "messages"),
        ("ZILLA_MQTT_RETAINED", "retained"),
        ("ZILLA_MQTT_SESSIONS", "sessions"),
        ("ZILLA_GRPC_REQUESTS", "grpc-requests"),
        ("ZILLA_GRPC_REPLIES", "grpc-replies"),
    ]
    .map(|(var, t)| (var, format!("{prefix}-zilla-{t}")))
}

/// The topics Zilla's measurements use (to delete at the end).
pub fn topics(prefix: &str) -> Vec<String> {
    topic_vars(prefix).into_iter().map(|(_, t)| t).collect()
}

/// One figure, each side's rounds.
#[derive(Debug, Serialize)]
struct Figure {
    name: String,
    higher_is_better: bool,
    zilla_rounds: Vec<f64>,
    strait_rounds: Vec<f64>,
    zilla: f64,
    strait: f64,
    /// Strait / Zilla of the means.
    ratio: Option<f64>,
    /// (max − min) / mean of each side's rounds.
    zilla_spread: f64,
    strait_spread: f64,
}

#[derive(Debug, Serialize)]
pub struct PeerReport {
    date: String,
    cpu: String,
    cores: usize,
    load_average_start: String,
    load_average_end: String,
    command: String,
    kafka: String,
    rounds: u32,
    warmup: String,
    duration: String,
    publishers: usize,
    in_flight: u16,
    record_size: usize,
    partitions: i32,
    /// The terms each side ran on.
    terms: Vec<String>,
    warnings: Vec<String>,
    figures: Vec<Figure>,
    /// Summed over the rounds.
    strait_sent: u64,
    strait_unacked: u64,
    zilla_sent: u64,
    zilla_unacked: u64,
    /// Publishers disconnected by the server, summed over the rounds.
    strait_disconnected: u64,
    zilla_disconnected: u64,
    targets: Vec<Target>,
    /// Every round's outcome, in the order run.
    runs: Vec<(Side, PublishOutcome)>,
}

pub(super) async fn run(
    args: &MqttKafkaArgs,
    report: &Report,
    spec: &RelaySpec,
    watched: &Watched,
    prefix: &str,
) -> anyhow::Result<PeerReport> {
    let zilla = ZillaScript::new(&args.zilla_script, prefix, args.partitions)?;
    // An instance left from before would not be a fresh one.
    zilla.stop().await?;
    let mut runs = Vec::new();
    let rounds = args.ab.ab_rounds;
    for round in 0..rounds {
        for side in Side::order(round) {
            eprintln!("publish: {side:?}, round {} of {rounds}…", round + 1);
            let tag = format!("mk{}-{}", std::process::id(), crate::grpc::rand_suffix());
            let outcome = match side {
                Side::Strait => {
                    let mut relay = Relay::start(spec).await?;
                    let outcome =
                        publish_case(args, relay.mqtt, &watched.with_relay(&relay), &[], &tag)
                            .await;
                    relay.check_running()?;
                    relay.stop().await;
                    outcome?
                }
                Side::Zilla => {
                    let running = zilla.start().await?;
                    let zilla_pid = [("zilla", running.pid)];
                    let outcome = publish_case(args, running.mqtt, watched, &zilla_pid, &tag).await;
                    let alive = crate::procs::cpu_time(running.pid).is_ok();
                    zilla.stop().await?;
                    anyhow::ensure!(alive, "Zilla (pid {}) exited during the case", running.pid);
                    outcome?
                }
            };
            eprintln!(
                "  {side:?}: {} msg/s, PUBACK p99 {:.1} ms, {} of {} unacknowledged, {} publishers \
                 disconnected",
                thousands(outcome.per_sec),
                outcome.puback_us.p99 / 1000.0,
                outcome.unacked,
                outcome.sent,
                outcome.disconnected
            );
            runs.push((side, outcome));
        }
    }
    let mut peer = PeerReport {
        date: report.date.clone(),
        cpu: report.cpu.clone(),
        cores: report.cores,
        load_average_start: report.load_average_start.clone(),
        load_average_end: load_average(),
        command: report.command.clone(),
        kafka: report.kafka.clone(),
        rounds,
        warmup: humantime::format_duration(args.warmup).to_string(),
        duration: humantime::format_duration(args.duration).to_string(),
        publishers: args.publishers,
        in_flight: args.in_flight,
        record_size: args.record_size,
        partitions: args.partitions,
        terms: terms(args),
        warnings: report.warnings.clone(),
        figures: figures(&runs),
        strait_sent: sum(&runs, Side::Strait, |o| o.sent),
        strait_unacked: sum(&runs, Side::Strait, |o| o.unacked),
        zilla_sent: sum(&runs, Side::Zilla, |o| o.sent),
        zilla_unacked: sum(&runs, Side::Zilla, |o| o.unacked),
        strait_disconnected: sum(&runs, Side::Strait, |o| o.disconnected),
        zilla_disconnected: sum(&runs, Side::Zilla, |o| o.disconnected),
        targets: Vec::new(),
        runs,
    };
    peer.targets = targets(&peer);
    Ok(peer)
}

fn sum(runs: &[(Side, PublishOutcome)], side: Side, of: impl Fn(&PublishOutcome) -> u64) -> u64 {
    runs.iter()
        .filter(|(s, _)| *s == side)
        .map(|(_, o)| of(o))
        .sum()
}

fn terms(args: &MqttKafkaArgs) -> Vec<String> {
    let linger = args
        .kafka_property
        .iter()
        .find(|(k, _)| k == "linger.ms")
        .map_or("5 ms (its default)".to_string(), |(_, v)| format!("{v} ms"));
    vec![
        format!(
            "both: MQTT 5 QoS 1, {} publishers × {} in flight, {} B payload, one MQTT topic per \
             publisher, {} partitions, PUBACK after Kafka's acks=all",
            args.publishers, args.in_flight, args.record_size, args.partitions
        ),
        format!(
            "Strait: r-proxy → s-proxy (gRPC), s-proxy's producer acks=all, linger.ms {linger}, \
             tokio multi-threaded runtime in each (threads in the table)"
        ),
        "Zilla: one worker (-w 1), mqtt-kafka with acks in_sync_replicas (= all), its Kafka \
         client's produce defaults (client.produce.max.request.millis 0: no linger, a request \
         carries what its cache holds), JDK 25, fresh start per measurement"
            .into(),
    ]
}

/// Each figure of every round of both sides, in the order of the first round's outcome. A
/// round that acknowledged nothing counts for msg/s only.
fn figures(runs: &[(Side, PublishOutcome)]) -> Vec<Figure> {
    let mut names: Vec<(String, bool)> = vec![
        ("messages/s".into(), true),
        ("PUBACK p50 µs".into(), false),
        ("PUBACK p99 µs".into(), false),
    ];
    let mut per_round: Vec<(Side, BTreeMap<String, f64>)> = Vec::new();
    for (side, o) in runs {
        let mut values = BTreeMap::new();
        values.insert("messages/s".to_string(), o.per_sec);
        if o.messages == 0 {
            // Nothing acknowledged (Zilla disconnected every publisher): no latency, and CPU
            // per message is undefined; the round counts for msg/s only.
            per_round.push((*side, values));
            continue;
        }
        values.insert("PUBACK p50 µs".to_string(), o.puback_us.p50);
        values.insert("PUBACK p99 µs".to_string(), o.puback_us.p99);
        for (process, us) in &o.cpu_us_per_msg {
            let name = format!("CPU µs/msg {process}");
            if !names.iter().any(|(n, _)| *n == name) {
                names.push((name.clone(), false));
            }
            values.insert(name, *us);
        }
        let total: f64 = o
            .cpu_us_per_msg
            .iter()
            .filter(|(p, _)| **p != "bench")
            .map(|(_, us)| us)
            .sum();
        values.insert("CPU µs/msg, all but the bench".into(), total);
        per_round.push((*side, values));
    }
    names.push(("CPU µs/msg, all but the bench".into(), false));
    names
        .into_iter()
        .map(|(name, higher_is_better)| {
            let rounds = |side: Side| -> Vec<f64> {
                per_round
                    .iter()
                    .filter(|(s, _)| *s == side)
                    .filter_map(|(_, v)| v.get(&name).copied())
                    .collect()
            };
            let (zilla_rounds, strait_rounds) = (rounds(Side::Zilla), rounds(Side::Strait));
            let (zilla, strait) = (mean(&zilla_rounds), mean(&strait_rounds));
            Figure {
                ratio: (zilla > 0.0 && !strait_rounds.is_empty()).then(|| strait / zilla),
                zilla_spread: spread(&zilla_rounds),
                strait_spread: spread(&strait_rounds),
                name,
                higher_is_better,
                zilla_rounds,
                strait_rounds,
                zilla,
                strait,
            }
        })
        .collect()
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

fn spread(values: &[f64]) -> f64 {
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let mean = mean(values);
    if values.len() < 2 || mean == 0.0 {
        0.0
    } else {
        (max - min) / mean.abs()
    }
}

fn targets(peer: &PeerReport) -> Vec<Target> {
    let figure = |name: &str| peer.figures.iter().find(|f| f.name == name);
    let mut targets = Vec::new();
    if let Some(rate) = figure("messages/s") {
        let ratio = rate.ratio.unwrap_or(0.0);
        targets.push(Target {
            what: format!("QoS 1 msg/s ≥ {MIN_RATE_RATIO}× Zilla's (ratio Strait/Zilla)"),
            measured: ratio,
            limit: MIN_RATE_RATIO,
            met: ratio >= MIN_RATE_RATIO,
        });
    }
    if let Some(p99) = figure("PUBACK p99 µs") {
        targets.push(Target {
            what: "PUBACK p99 ≤ Zilla's (µs)".into(),
            measured: p99.strait,
            limit: p99.zilla,
            met: p99.strait <= p99.zilla,
        });
    }
    targets.push(Target {
        what: "every PUBACK delivered through Strait (PUBLISHes unacknowledged)".into(),
        measured: peer.strait_unacked as f64,
        limit: 0.0,
        met: peer.strait_unacked == 0 && peer.strait_disconnected == 0,
    });
    if peer.zilla_unacked > 0 || peer.zilla_disconnected > 0 {
        targets.push(Target {
            what: "Zilla: PUBLISHes unacknowledged (its figures count only what it acknowledged)"
                .into(),
            measured: peer.zilla_unacked as f64,
            limit: 0.0,
            met: false,
        });
    }
    targets
}

impl PeerReport {
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        crate::report::emit(&self.render(), self, json)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "\nstrait-bench mqtt-kafka --peer zilla — {}",
            self.date
        );
        let _ = writeln!(
            out,
            "machine: {} cores, {}; load average {} at start, {} at end",
            self.cores, self.cpu, self.load_average_start, self.load_average_end
        );
        let _ = writeln!(
            out,
            "Kafka {}; {} rounds of {} warm-up + {} per side; command: {}",
            self.kafka, self.rounds, self.warmup, self.duration, self.command
        );
        for term in &self.terms {
            let _ = writeln!(out, "{term}");
        }
        for warning in &self.warnings {
            let _ = writeln!(out, "WARNING: {warning}");
        }
        let _ = writeln!(out, "\npublish (mean of the rounds):");
        let mut table = Table::new([
            "",
            "Zilla",
            "Strait",
            "Strait/Zilla",
            "spread Zilla",
            "spread Strait",
        ]);
        for f in &self.figures {
            let cell = |rounds: &[f64], v: f64| {
                if rounds.is_empty() {
                    "-".into()
                } else if v.abs() >= 1000.0 {
                    thousands(v)
                } else {
                    format!("{v:.2}")
                }
            };
            table.row([
                format!(
                    "{} ({} is better)",
                    f.name,
                    if f.higher_is_better {
                        "higher"
                    } else {
                        "lower"
                    }
                ),
                cell(&f.zilla_rounds, f.zilla),
                cell(&f.strait_rounds, f.strait),
                f.ratio.map_or("-".into(), |r| format!("{r:.2}")),
                format!("{:.1} %", f.zilla_spread * 100.0),
                format!("{:.1} %", f.strait_spread * 100.0),
            ]);
        }
        table.row([
            "PUBLISHes sent / unacknowledged, publishers disconnected (all rounds)".into(),
            format!(
                "{} / {}, {}",
                thousands(self.zilla_sent as f64),
                self.zilla_unacked,
                self.zilla_disconnected
            ),
            format!(
                "{} / {}, {}",
                thousands(self.strait_sent as f64),
                self.strait_unacked,
                self.strait_disconnected
            ),
            String::new(),
            String::new(),
            String::new(),
        ]);
        let threads = |side: Side| {
            self.runs
                .iter()
                .rev()
                .find(|(s, _)| *s == side)
                .map(|(_, o)| {
                    o.threads
                        .iter()
                        .filter(|(p, _)| **p != "bench")
                        .map(|(p, n)| format!("{p} {n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                })
                .unwrap_or_default()
        };
        table.row([
            "threads (last round)".into(),
            threads(Side::Zilla),
            threads(Side::Strait),
            String::new(),
            String::new(),
            String::new(),
        ]);
        out.push_str(&table.render());
        render_targets(&mut out, &self.targets);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Side;

    #[test]
    fn rounds_alternate_which_side_goes_first() {
        assert_eq!(Side::order(0), [Side::Strait, Side::Zilla]);
        assert_eq!(Side::order(1), [Side::Zilla, Side::Strait]);
    }
}
