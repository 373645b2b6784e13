//! Results: a table per case (direct, relay, and how they compare), our targets checked with
//! ✓/✗, and the same as one JSON document.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::SystemTime;

use serde::Serialize;

use crate::mqtt::{Case, Idle, Latency, MqttArgs, Outcome, Percentiles, Throughput};
use crate::procs::Role;

/// Relay delivered QoS 0 msg/s at least this fraction of direct.
const QOS0_MIN_RATIO: f64 = 0.9;
/// Relay adds at most this many µs to the QoS 1 PUBACK round trip at p50.
const QOS1_MAX_ADDED_P50_US: f64 = 100.0;
/// Each proxy holds at most this many KiB per idle connection.
const IDLE_MAX_KIB: f64 = 16.0;

#[derive(Debug, Serialize)]
pub struct Report {
    date: String,
    machine: Machine,
    settings: Settings,
    warnings: Vec<String>,
    cases: Vec<CaseReport>,
}

#[derive(Debug, Serialize)]
struct Machine {
    cpu: String,
    cores: usize,
    kernel: String,
    /// From /proc/loadavg before and after the run: other work competes for the same cores.
    load_average_start: String,
    load_average_end: String,
    broker_pid: Option<u32>,
    broker_open_files_limit: Option<u64>,
}

#[derive(Debug, Serialize)]
struct Settings {
    broker: SocketAddr,
    proxy_bin: String,
    warmup_secs: f64,
    duration_secs: f64,
    throughput_rounds: u32,
    publishers: usize,
    idle_connections: usize,
    r_proxy_args: Vec<String>,
    s_proxy_args: Vec<String>,
}

#[derive(Debug, Serialize)]
struct CaseReport {
    case: Case,
    outcome: Outcome,
    targets: Vec<Target>,
}

/// One of our targets, checked.
#[derive(Debug, Serialize)]
pub(crate) struct Target {
    pub what: String,
    pub measured: f64,
    pub limit: f64,
    pub met: bool,
}

impl Report {
    pub fn new(args: &MqttArgs, proxy_bin: &Path, broker: SocketAddr) -> Self {
        Self {
            date: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            machine: Machine {
                cpu: cpu_model(),
                cores: std::thread::available_parallelism().map_or(0, |n| n.get()),
                kernel: read_trimmed("/proc/sys/kernel/osrelease"),
                load_average_start: load_average(),
                load_average_end: String::new(),
                broker_pid: None,
                broker_open_files_limit: None,
            },
            settings: Settings {
                broker,
                proxy_bin: proxy_bin.display().to_string(),
                warmup_secs: args.warmup.as_secs_f64(),
                duration_secs: args.duration.as_secs_f64(),
                throughput_rounds: args.rounds,
                publishers: args.publishers,
                idle_connections: args.idle_connections,
                r_proxy_args: args.proxies.r_proxy_arg.clone(),
                s_proxy_args: args.proxies.s_proxy_arg.clone(),
            },
            warnings: Vec::new(),
            cases: Vec::new(),
        }
    }

    /// Prints a warning now and keeps it for the report.
    pub fn warn(&mut self, warning: impl Into<String>) {
        let warning = warning.into();
        eprintln!("WARNING: {warning}");
        self.warnings.push(warning);
    }

    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    pub fn load_average_start(&self) -> &str {
        &self.machine.load_average_start
    }

    pub fn set_broker_pid(&mut self, pid: u32, open_files_limit: Option<u64>) {
        self.machine.broker_pid = Some(pid);
        self.machine.broker_open_files_limit = open_files_limit;
    }

    pub fn add(&mut self, case: Case, outcome: Outcome) {
        let targets = targets(case, &outcome);
        self.cases.push(CaseReport {
            case,
            outcome,
            targets,
        });
    }

    pub fn finish(&mut self) {
        self.machine.load_average_end = load_average();
    }
}

fn targets(case: Case, outcome: &Outcome) -> Vec<Target> {
    match outcome {
        Outcome::Throughput { direct, relay, .. } => {
            let ratio = relay.delivered_vs(direct);
            vec![Target {
                what: format!(
                    "{}: relay delivers ≥ {QOS0_MIN_RATIO}× direct msg/s",
                    case.name()
                ),
                measured: ratio,
                limit: QOS0_MIN_RATIO,
                met: ratio >= QOS0_MIN_RATIO,
            }]
        }
        Outcome::Latency { direct, relay } => {
            let added = relay.puback_us.p50 - direct.puback_us.p50;
            vec![Target {
                what: format!(
                    "{}: relay adds ≤ {QOS1_MAX_ADDED_P50_US} µs to PUBACK p50",
                    case.name()
                ),
                measured: added,
                limit: QOS1_MAX_ADDED_P50_US,
                met: added <= QOS1_MAX_ADDED_P50_US,
            }]
        }
        Outcome::Idle { relay, .. } => [Role::RProxy, Role::SProxy]
            .into_iter()
            .map(|role| {
                let kib = relay
                    .kib_per_connection
                    .get(&role)
                    .copied()
                    .unwrap_or(f64::NAN);
                Target {
                    what: format!(
                        "{}: {} holds ≤ {IDLE_MAX_KIB} KiB per idle connection",
                        case.name(),
                        role.name()
                    ),
                    measured: kib,
                    limit: IDLE_MAX_KIB,
                    met: kib <= IDLE_MAX_KIB,
                }
            })
            .collect(),
    }
}

/// Prints the tables (stdout, or stderr when `json`) and, with `json`, the JSON document on
/// stdout.
pub fn print(report: &Report, json: bool) -> anyhow::Result<()> {
    emit(&render(report), report, json)
}

/// What every subcommand prints: `text` (the tables) on stdout, or, with `json`, on stderr
/// with `document` as JSON on stdout, so a script can pipe the JSON and a person still sees the
/// tables.
pub fn emit(text: &str, document: &impl Serialize, json: bool) -> anyhow::Result<()> {
    if json {
        eprint!("{text}");
        println!("{}", serde_json::to_string_pretty(document)?);
    } else {
        print!("{text}");
    }
    Ok(())
}

fn render(report: &Report) -> String {
    let mut out = String::new();
    let m = &report.machine;
    let s = &report.settings;
    let _ = writeln!(out, "\nstrait-bench mqtt — {}", report.date);
    let _ = writeln!(
        out,
        "machine: {} cores, {}, kernel {}; load average {} at start, {} at end",
        m.cores, m.cpu, m.kernel, m.load_average_start, m.load_average_end
    );
    let _ = writeln!(
        out,
        "broker {} (pid {}), proxies {}; warm-up {} s, measured {} s per path \
         (QoS 0 throughput: in {} alternating rounds)",
        s.broker,
        m.broker_pid.map_or("unknown".into(), |p| p.to_string()),
        s.proxy_bin,
        s.warmup_secs,
        s.duration_secs,
        s.throughput_rounds
    );
    if !s.r_proxy_args.is_empty() || !s.s_proxy_args.is_empty() {
        let _ = writeln!(
            out,
            "extra flags: r-proxy {:?}, s-proxy {:?}",
            s.r_proxy_args, s.s_proxy_args
        );
    }
    for warning in &report.warnings {
        let _ = writeln!(out, "WARNING: {warning}");
    }
    for case in &report.cases {
        let _ = writeln!(out);
        let table = match &case.outcome {
            Outcome::Throughput {
                payload_bytes,
                publishers,
                direct,
                relay,
                round_ratios,
            } => {
                let _ = writeln!(
                    out,
                    "{}: QoS 0 pipelined throughput, {payload_bytes} B payload, \
                     {publishers} publishers → 1 subscriber",
                    case.case.name()
                );
                throughput_table(direct, relay, round_ratios)
            }
            Outcome::Latency { direct, relay } => {
                let _ = writeln!(
                    out,
                    "{}: QoS 1, one message in flight (PUBLISH → PUBACK, repeat), 16 B payload, \
                     1 QoS 1 subscriber",
                    case.case.name()
                );
                latency_table(direct, relay)
            }
            Outcome::Idle { direct, relay } => {
                let _ = writeln!(
                    out,
                    "{}: {} idle MQTT 5 sessions (keep-alive 300 s); resident memory growth",
                    case.case.name(),
                    direct.requested
                );
                idle_table(direct, relay)
            }
        };
        out.push_str(&table.render());
        for target in &case.targets {
            let _ = writeln!(out, "  target {} {}", mark(target.met), target.what);
        }
    }
    render_targets(&mut out, report.cases.iter().flat_map(|c| &c.targets));
    out
}

/// The closing list of targets, met (✓) or not (✗).
pub(crate) fn render_targets<'a>(out: &mut String, targets: impl IntoIterator<Item = &'a Target>) {
    let _ = writeln!(out, "\nTargets:");
    for target in targets {
        let _ = writeln!(
            out,
            "  {} {} (measured {:.2}, limit {})",
            mark(target.met),
            target.what,
            target.measured,
            target.limit
        );
    }
}

pub(crate) fn mark(met: bool) -> &'static str {
    if met { "✓" } else { "✗" }
}

fn throughput_table(direct: &Throughput, relay: &Throughput, round_ratios: &[f64]) -> Table {
    let mut table = Table::new(["", "direct", "relay", "relay/direct"]);
    let ratio = |d: f64, r: f64| format!("{:.2}×", r / d.max(f64::MIN_POSITIVE));
    table.row([
        "delivered msg/s".into(),
        thousands(direct.delivered_per_sec),
        thousands(relay.delivered_per_sec),
        ratio(direct.delivered_per_sec, relay.delivered_per_sec),
    ]);
    if round_ratios.len() > 1 {
        let each: Vec<String> = round_ratios.iter().map(|r| format!("{r:.2}×")).collect();
        table.row([
            "  by round".into(),
            String::new(),
            String::new(),
            each.join(" "),
        ]);
    }
    table.row([
        "published msg/s".into(),
        thousands(direct.published_per_sec),
        thousands(relay.published_per_sec),
        ratio(direct.published_per_sec, relay.published_per_sec),
    ]);
    table.row([
        "loss (whole run)".into(),
        format!("{:.2} %", direct.loss * 100.0),
        format!("{:.2} %", relay.loss * 100.0),
        String::new(),
    ]);
    cpu_rows(&mut table, &direct.cpu_us_per_msg, &relay.cpu_us_per_msg);
    table
}

fn latency_table(direct: &Latency, relay: &Latency) -> Table {
    let mut table = Table::new(["", "direct", "relay", "relay vs direct"]);
    table.row([
        "msg/s".into(),
        thousands(direct.per_sec),
        thousands(relay.per_sec),
        format!(
            "{:.2}×",
            relay.per_sec / direct.per_sec.max(f64::MIN_POSITIVE)
        ),
    ]);
    let mut percentiles = |name: &str, d: &Percentiles, r: &Percentiles| {
        for (q, dv, rv) in [
            ("p50", d.p50, r.p50),
            ("p90", d.p90, r.p90),
            ("p99", d.p99, r.p99),
            ("max", d.max, r.max),
        ] {
            table.row([
                format!("{name} {q} µs"),
                format!("{dv:.1}"),
                format!("{rv:.1}"),
                format!("{:+.1} µs", rv - dv),
            ]);
        }
    };
    percentiles("PUBACK", &direct.puback_us, &relay.puback_us);
    percentiles(
        "publish→subscriber",
        &direct.end_to_end_us,
        &relay.end_to_end_us,
    );
    table.row([
        "delivered / published".into(),
        format!("{}/{}", direct.delivered, direct.messages),
        format!("{}/{}", relay.delivered, relay.messages),
        String::new(),
    ]);
    cpu_rows(&mut table, &direct.cpu_us_per_msg, &relay.cpu_us_per_msg);
    table
}

fn idle_table(direct: &Idle, relay: &Idle) -> Table {
    let mut table = Table::new(["", "direct", "relay"]);
    table.row([
        "sessions opened".into(),
        format!("{}/{}", direct.opened, direct.requested),
        format!("{}/{}", relay.opened, relay.requested),
    ]);
    table.row([
        "sessions opened/s".into(),
        thousands(direct.opened_per_sec),
        thousands(relay.opened_per_sec),
    ]);
    for role in [Role::Broker, Role::RProxy, Role::SProxy, Role::Bench] {
        let cell = |idle: &Idle| {
            idle.kib_per_connection
                .get(&role)
                .map_or("-".into(), |kib| format!("{kib:.1}"))
        };
        let rss = |idle: &Idle| match (
            idle.rss_before_kib.get(&role),
            idle.rss_after_kib.get(&role),
        ) {
            (Some(before), Some(after)) => {
                format!("{} → {} MiB", before / 1024, after / 1024)
            }
            _ => "-".into(),
        };
        table.row([
            format!("KiB/connection {}", role.name()),
            cell(direct),
            cell(relay),
        ]);
        table.row([format!("  RSS {}", role.name()), rss(direct), rss(relay)]);
    }
    for (path, idle) in [("direct", direct), ("relay", relay)] {
        if let Some(error) = &idle.first_error {
            table.note(format!("{path}: {} failed, first: {error}", idle.failed));
        }
    }
    table
}

fn cpu_rows(table: &mut Table, direct: &BTreeMap<Role, f64>, relay: &BTreeMap<Role, f64>) {
    for role in [Role::Broker, Role::RProxy, Role::SProxy, Role::Bench] {
        let cell =
            |cpu: &BTreeMap<Role, f64>| cpu.get(&role).map_or("-".into(), |us| format!("{us:.2}"));
        let mut cells = vec![
            format!("CPU µs/msg {}", role.name()),
            cell(direct),
            cell(relay),
        ];
        cells.resize(table.columns(), String::new());
        table.row(cells);
    }
}

/// `1234567.8` → `1,234,568`.
pub(crate) fn thousands(value: f64) -> String {
    let digits = format!("{:.0}", value.max(0.0));
    let mut out = String::new();
    for (i, digit) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(digit);
    }
    out
}

/// Columns of text: the first left-aligned, the others right-aligned.
pub(crate) struct Table {
    rows: Vec<Vec<String>>,
    notes: Vec<String>,
}

impl Table {
    pub(crate) fn new<const N: usize>(header: [&str; N]) -> Self {
        Self {
            rows: vec![header.iter().map(|h| h.to_string()).collect()],
            notes: Vec::new(),
        }
    }

    pub(crate) fn columns(&self) -> usize {
        self.rows[0].len()
    }

    pub(crate) fn row(&mut self, cells: impl IntoIterator<Item = String>) {
        self.rows.push(cells.into_iter().collect());
    }

    pub(crate) fn note(&mut self, note: String) {
        self.notes.push(note);
    }

    pub(crate) fn render(&self) -> String {
        let width = |col: usize| {
            self.rows
                .iter()
                .map(|r| r.get(col).map_or(0, |c| c.chars().count()))
                .max()
                .unwrap_or(0)
        };
        let widths: Vec<usize> = (0..self.columns()).map(width).collect();
        let mut out = String::new();
        for row in &self.rows {
            out.push_str("  ");
            for (col, cell) in row.iter().enumerate() {
                let pad = widths[col].saturating_sub(cell.chars().count());
                if col == 0 {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                } else {
                    out.push_str("   ");
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                }
            }
            out.push('\n');
        }
        for note in &self.notes {
            let _ = writeln!(out, "  note: {note}");
        }
        out
    }
}

pub(crate) fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

pub(crate) fn load_average() -> String {
    let text = read_trimmed("/proc/loadavg");
    text.split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_groups_digits() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.4), "999");
        assert_eq!(thousands(1234.0), "1,234");
        assert_eq!(thousands(1234567.8), "1,234,568");
    }

    #[test]
    fn table_aligns_columns() {
        let mut table = Table::new(["", "a", "bb"]);
        table.row(["row".to_string(), "1".into(), "22".into()]);
        assert_eq!(table.render(), "        a   bb\n  row   1   22\n");
    }
}
