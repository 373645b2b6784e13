//! The report of `strait-bench mqtt-kafka`: its targets and its text.

use std::fmt::Write as _;

use crate::report::{Table, Target, render_targets, thousands};

use super::Report;

/// QoS 1 through the proxies at least this fraction of kafka-producer-perf-test's rate.
const MIN_PERF_TEST_RATIO: f64 = 0.5;
/// QoS 1 messages per second per core of s-proxy, at least.
const MIN_PER_CORE: f64 = 30_000.0;

pub(super) fn targets(report: &Report) -> Vec<Target> {
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
            what: "every PUBACK delivered (PUBLISHes unacknowledged)".into(),
            measured: publish.unacked as f64,
            limit: 0.0,
            met: publish.unacked == 0,
        });
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

pub(super) fn render(report: &Report) -> String {
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
            "PUBLISHes sent / unacknowledged, publishers disconnected".into(),
            format!(
                "{} / {}, {}",
                thousands(p.sent as f64),
                p.unacked,
                p.disconnected
            ),
            String::new(),
        ]);
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
