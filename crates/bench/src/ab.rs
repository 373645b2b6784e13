//! A/B of two strait-proxy builds in one invocation (`--baseline-bin`): the same cases through
//! the relay started from the baseline binary (A) and from the current one (B), alternating in
//! rounds, each figure judged against the run's own round-to-round spread.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::procs::{Relay, RelaySpec};
use crate::report::{Table, cpu_model, load_average, thousands};

/// What `--baseline-bin` does and how the verdict is reached (shared by the subcommands'
/// `--help`).
const BASELINE_HELP: &str = "\
    A/B mode: another strait-proxy binary (A, the baseline; e.g. built from an older commit) \
    to compare with --proxy-bin (B, the current build). Each of --ab-rounds rounds runs every \
    case through a fresh r-proxy → s-proxy of A and of B (order A,B in odd rounds and B,A in \
    even ones, so a drift of the machine weighs on both), each for --warmup then --duration; \
    the direct and reference measurements are skipped. Prints each figure's mean for A and B, \
    the ratio B/A and the spread: for each build, (max − min) / mean of its rounds. Rule: a \
    figure regressed when B is worse than A (lower where higher is better, higher where lower \
    is better) by more than the larger of the two spreads; the verdict is \"no regression \
    beyond noise\" when no figure regressed.";

/// `--baseline-bin` and `--ab-rounds`, flattened into `mqtt` and `mqtt-kafka`.
#[derive(Debug, Clone, clap::Args)]
pub struct AbArgs {
    /// A/B mode: another strait-proxy binary (A) to compare with --proxy-bin (B) [--help: the
    /// rule].
    #[arg(long, long_help = BASELINE_HELP)]
    pub baseline_bin: Option<PathBuf>,

    /// Rounds of an A/B run (with --baseline-bin: each runs every case once per binary) or of
    /// a run beside a peer (`mqtt-kafka --peer`).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u32).range(2..=100))]
    pub ab_rounds: u32,
}

/// Which build a measurement ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The baseline (`--baseline-bin`).
    A,
    /// The current one (`--proxy-bin`).
    B,
}

impl Build {
    /// A,B in the first round, B,A in the second, and so on.
    fn order(round: u32) -> [Build; 2] {
        if round.is_multiple_of(2) {
            [Build::A, Build::B]
        } else {
            [Build::B, Build::A]
        }
    }
}

/// Which way a figure is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Better {
    Higher,
    Lower,
}

/// One figure of one case measured once.
#[derive(Debug, Clone)]
pub struct Figure {
    pub name: String,
    pub value: f64,
    pub better: Better,
}

impl Figure {
    pub fn higher(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            value,
            better: Better::Higher,
        }
    }

    pub fn lower(name: impl Into<String>, value: f64) -> Self {
        Self {
            name: name.into(),
            value,
            better: Better::Lower,
        }
    }
}

/// One figure of a case over all rounds, A against B.
#[derive(Debug, Serialize)]
pub struct Compared {
    pub name: String,
    pub better: Better,
    pub a_rounds: Vec<f64>,
    pub b_rounds: Vec<f64>,
    pub a: f64,
    pub b: f64,
    /// B/A of the means (absent when A is 0).
    pub ratio: Option<f64>,
    /// (max − min) / mean of each build's rounds.
    pub a_spread: f64,
    pub b_spread: f64,
    /// B is worse than A by more than the larger spread.
    pub regressed: bool,
}

impl Compared {
    fn new(name: String, better: Better, a_rounds: Vec<f64>, b_rounds: Vec<f64>) -> Self {
        let (a, b) = (mean(&a_rounds), mean(&b_rounds));
        let (a_spread, b_spread) = (spread(&a_rounds), spread(&b_rounds));
        let noise = a_spread.max(b_spread);
        let regressed = match better {
            Better::Higher => b < a * (1.0 - noise),
            Better::Lower => b > a * (1.0 + noise),
        };
        Self {
            name,
            better,
            ratio: (a != 0.0).then(|| b / a),
            a_rounds,
            b_rounds,
            a,
            b,
            a_spread,
            b_spread,
            regressed,
        }
    }
}

fn mean(values: &[f64]) -> f64 {
    values.iter().sum::<f64>() / values.len().max(1) as f64
}

/// (max − min) / mean: 0 for a single value or a mean of 0.
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

/// One case's figures, A against B.
#[derive(Debug, Serialize)]
pub struct CaseResult {
    pub case: String,
    pub figures: Vec<Compared>,
}

/// The rounds of one case: each build's figures, round by round.
#[derive(Default)]
struct Rounds {
    a: Vec<Vec<Figure>>,
    b: Vec<Vec<Figure>>,
}

impl Rounds {
    fn push(&mut self, build: Build, figures: Vec<Figure>) {
        match build {
            Build::A => self.a.push(figures),
            Build::B => self.b.push(figures),
        }
    }

    /// Pairs the figures by name (every round of a case yields the same ones).
    fn compare(self, case: String) -> anyhow::Result<CaseResult> {
        let Some(first) = self.a.first() else {
            bail!("{case}: no round was run");
        };
        let column = |rounds: &[Vec<Figure>], name: &str| -> anyhow::Result<Vec<f64>> {
            rounds
                .iter()
                .map(|r| {
                    r.iter()
                        .find(|f| f.name == name)
                        .map(|f| f.value)
                        .with_context(|| format!("{case}: a round has no figure {name:?}"))
                })
                .collect()
        };
        let figures = first
            .iter()
            .map(|f| {
                Ok(Compared::new(
                    f.name.clone(),
                    f.better,
                    column(&self.a, &f.name)?,
                    column(&self.b, &f.name)?,
                ))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(CaseResult { case, figures })
    }
}

/// The two relays an A/B run starts, one build each.
pub struct Builds {
    a: RelaySpec,
    b: RelaySpec,
}

impl Builds {
    /// `current` with its binary swapped for `baseline` as A; each build logs to its own
    /// directory under `current.log_dir`.
    pub fn new(current: RelaySpec, baseline: &Path) -> anyhow::Result<Self> {
        anyhow::ensure!(
            baseline.is_file(),
            "--baseline-bin {} not found: build the baseline strait-proxy first (docs/benchmarks.md, \
             \"A/B of two builds\")",
            baseline.display()
        );
        let baseline = baseline.to_path_buf();
        let with_logs = |mut spec: RelaySpec, dir: &str| -> anyhow::Result<RelaySpec> {
            spec.log_dir = spec.log_dir.join(dir);
            std::fs::create_dir_all(&spec.log_dir)
                .with_context(|| format!("creating {}", spec.log_dir.display()))?;
            Ok(spec)
        };
        Ok(Self {
            a: with_logs(
                RelaySpec {
                    bin: baseline,
                    ..current.clone()
                },
                "a-baseline",
            )?,
            b: with_logs(current, "b-current")?,
        })
    }

    /// The baseline's s-proxy upstream flags, where its config must differ (an older build
    /// refuses fields it does not know).
    pub fn with_baseline_upstream(mut self, upstream: Vec<String>) -> Self {
        self.a.upstream = upstream;
        self
    }

    fn spec(&self, build: Build) -> &RelaySpec {
        match build {
            Build::A => &self.a,
            Build::B => &self.b,
        }
    }

    /// Runs every case `rounds` times on each build through a fresh relay, `measure` giving
    /// the figures of one case on one relay.
    pub async fn run<C: Copy>(
        &self,
        rounds: u32,
        cases: &[C],
        name: impl Fn(C) -> String,
        mut measure: impl AsyncFnMut(C, &Relay) -> anyhow::Result<Vec<Figure>>,
    ) -> anyhow::Result<Vec<CaseResult>> {
        let mut results = Vec::new();
        for &case in cases {
            let mut measured = Rounds::default();
            for round in 0..rounds {
                for build in Build::order(round) {
                    eprintln!(
                        "{}: build {build:?}, round {} of {rounds}…",
                        name(case),
                        round + 1
                    );
                    let mut relay = Relay::start(self.spec(build)).await?;
                    let figures = measure(case, &relay).await;
                    relay.check_running()?;
                    relay.stop().await;
                    measured.push(build, figures?);
                }
            }
            results.push(measured.compare(name(case))?);
        }
        Ok(results)
    }
}

/// An A/B run's results.
#[derive(Debug, Serialize)]
pub struct AbReport {
    pub benchmark: &'static str,
    pub date: String,
    pub cpu: String,
    pub cores: usize,
    pub load_average_start: String,
    pub load_average_end: String,
    pub command: String,
    pub a_bin: String,
    pub b_bin: String,
    pub rounds: u32,
    pub warmup: String,
    pub duration: String,
    pub warnings: Vec<String>,
    pub cases: Vec<CaseResult>,
    /// The figures that regressed beyond noise, as `case: figure`.
    pub regressions: Vec<String>,
    pub verdict: String,
}

/// What an A/B run was, before its results.
pub struct Setup<'a> {
    pub benchmark: &'static str,
    pub builds: &'a Builds,
    pub rounds: u32,
    pub warmup: Duration,
    pub duration: Duration,
    pub warnings: Vec<String>,
    pub load_average_start: String,
}

impl AbReport {
    pub fn new(mut setup: Setup<'_>, cases: Vec<CaseResult>) -> Self {
        let a_bin = setup.builds.a.bin.display().to_string();
        if a_bin.contains("/debug/") {
            setup.warnings.push(format!(
                "the baseline {a_bin} is a debug build: figures are meaningless"
            ));
        }
        let regressions: Vec<String> = cases
            .iter()
            .flat_map(|c| {
                c.figures
                    .iter()
                    .filter(|f| f.regressed)
                    .map(move |f| format!("{}: {}", c.case, f.name))
            })
            .collect();
        let verdict = if regressions.is_empty() {
            "no regression beyond noise".to_string()
        } else {
            format!("regression beyond noise in {}", regressions.join(", "))
        };
        Self {
            benchmark: setup.benchmark,
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            cpu: cpu_model(),
            cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
            load_average_start: setup.load_average_start,
            load_average_end: load_average(),
            command: std::env::args().collect::<Vec<_>>().join(" "),
            a_bin,
            b_bin: setup.builds.b.bin.display().to_string(),
            rounds: setup.rounds,
            warmup: humantime::format_duration(setup.warmup).to_string(),
            duration: humantime::format_duration(setup.duration).to_string(),
            warnings: setup.warnings,
            cases,
            regressions,
            verdict,
        }
    }

    /// Prints the tables (stdout, or stderr when `json`) and, with `json`, the JSON document on
    /// stdout.
    pub fn print(&self, json: bool) -> anyhow::Result<()> {
        crate::report::emit(&self.render(), self, json)
    }

    fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "\nstrait-bench {} A/B — {}", self.benchmark, self.date);
        let _ = writeln!(
            out,
            "machine: {} cores, {}; load average {} at start, {} at end",
            self.cores, self.cpu, self.load_average_start, self.load_average_end
        );
        let _ = writeln!(out, "A (baseline): {}", self.a_bin);
        let _ = writeln!(out, "B (current):  {}", self.b_bin);
        let _ = writeln!(
            out,
            "{} rounds, each case {} warm-up + {} per build and round; command: {}",
            self.rounds, self.warmup, self.duration, self.command
        );
        for warning in &self.warnings {
            let _ = writeln!(out, "WARNING: {warning}");
        }
        for case in &self.cases {
            let _ = writeln!(out, "\n{}:", case.case);
            let mut table = Table::new(["", "A", "B", "B/A", "spread A", "spread B", ""]);
            for f in &case.figures {
                table.row([
                    format!(
                        "{} ({} is better)",
                        f.name,
                        match f.better {
                            Better::Higher => "higher",
                            Better::Lower => "lower",
                        }
                    ),
                    figure(f.a),
                    figure(f.b),
                    f.ratio.map_or("-".into(), |r| format!("{r:.3}")),
                    format!("{:.1} %", f.a_spread * 100.0),
                    format!("{:.1} %", f.b_spread * 100.0),
                    if f.regressed { "✗ worse" } else { "✓" }.into(),
                ]);
            }
            out.push_str(&table.render());
        }
        let _ = writeln!(
            out,
            "\nrule: a figure regressed when B is worse than A by more than the larger spread \
             ((max − min) / mean of each build's rounds)"
        );
        let _ = writeln!(out, "verdict: {}", self.verdict);
        out
    }
}

/// Large figures with thousands separators, small ones with two decimals.
fn figure(value: f64) -> String {
    if value.abs() >= 1000.0 {
        thousands(value)
    } else {
        format!("{value:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn b_within_the_spread_of_the_rounds_is_no_regression() {
        // A's rounds spread over 20 % of their mean; B is 10 % lower: noise.
        let f = Compared::new(
            "msg/s".into(),
            Better::Higher,
            vec![90.0, 110.0],
            vec![90.0],
        );
        assert!(!f.regressed);
        assert_eq!(f.ratio, Some(0.9));
        // 30 % lower is beyond it.
        let f = Compared::new(
            "msg/s".into(),
            Better::Higher,
            vec![90.0, 110.0],
            vec![70.0],
        );
        assert!(f.regressed);
    }

    #[test]
    fn lower_is_better_figures_regress_upwards() {
        let f = Compared::new(
            "p99".into(),
            Better::Lower,
            vec![10.0, 10.0],
            vec![10.5, 10.5],
        );
        assert!(f.regressed, "no spread: any worse reading counts");
        let f = Compared::new(
            "p99".into(),
            Better::Lower,
            vec![10.0, 10.0],
            vec![9.0, 9.0],
        );
        assert!(!f.regressed, "better is never a regression");
    }

    #[test]
    fn rounds_alternate_the_order_of_the_builds() {
        assert_eq!(Build::order(0), [Build::A, Build::B]);
        assert_eq!(Build::order(1), [Build::B, Build::A]);
    }
}
