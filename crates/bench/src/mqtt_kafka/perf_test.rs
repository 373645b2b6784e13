//! Kafka's own producer benchmark (`kafka-producer-perf-test` of the Kafka install the test
//! services use), run as a child process, with its summary line parsed.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use serde::Serialize;

use crate::procs;

/// What `kafka-producer-perf-test` reports, and what it cost.
#[derive(Debug, Clone, Serialize)]
pub struct PerfTest {
    pub records: u64,
    pub records_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// CPU µs per record of the Kafka broker while the tool ran (JVM start-up of the tool not
    /// included: the broker is idle then).
    pub kafka_cpu_us_per_record: Option<f64>,
    /// The exact command.
    pub command: String,
}

/// How to run it.
pub struct Settings<'a> {
    pub bin_dir: &'a Path,
    pub bootstrap: &'a str,
    pub topic: &'a str,
    pub records: u64,
    pub record_size: usize,
    pub jvm_opts: &'a str,
    pub kafka_pid: Option<u32>,
}

pub async fn run(settings: &Settings<'_>) -> anyhow::Result<PerfTest> {
    let tool = settings.bin_dir.join("kafka-producer-perf-test");
    let tool = if tool.is_file() {
        tool
    } else {
        settings.bin_dir.join("kafka-producer-perf-test.sh")
    };
    anyhow::ensure!(
        tool.is_file(),
        "no kafka-producer-perf-test(.sh) in {} (pass --kafka-bin)",
        settings.bin_dir.display()
    );
    let args = [
        "--topic".to_string(),
        settings.topic.to_string(),
        "--num-records".into(),
        settings.records.to_string(),
        "--record-size".into(),
        settings.record_size.to_string(),
        "--throughput".into(),
        "-1".into(),
        "--producer-props".into(),
        format!("bootstrap.servers={}", settings.bootstrap),
        "acks=all".into(),
    ];
    let command = format!(
        "KAFKA_JVM_OPTS='{}' {} {}",
        settings.jvm_opts,
        tool.display(),
        args.join(" ")
    );
    let kafka_before = settings.kafka_pid.and_then(|pid| procs::cpu_time(pid).ok());
    let output = tokio::process::Command::new(&tool)
        .args(&args)
        .env("KAFKA_JVM_OPTS", settings.jvm_opts)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), output)
        .await
        .context("kafka-producer-perf-test ran over 10 minutes")?
        .with_context(|| format!("running {}", tool.display()))?;
    let kafka_after = settings.kafka_pid.and_then(|pid| procs::cpu_time(pid).ok());
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "`{command}` failed ({}):\n{stdout}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let summary = stdout
        .lines()
        .rev()
        .find(|l| l.contains("records/sec") && l.contains("50th"))
        .with_context(|| format!("no summary line in the output of `{command}`:\n{stdout}"))?;
    let mut result = parse_summary(summary)?;
    result.command = command;
    if let (Some(before), Some(after)) = (kafka_before, kafka_after) {
        let used = after.saturating_sub(before).as_secs_f64();
        result.kafka_cpu_us_per_record = Some(used * 1e6 / result.records.max(1) as f64);
    }
    Ok(result)
}

/// `1000000 records sent, 110803.3 records/sec (10.57 MB/sec), 165.57 ms avg latency, 404.00 ms
/// max latency, 160 ms 50th, 300 ms 95th, 391 ms 99th, 403 ms 99.9th.`
fn parse_summary(line: &str) -> anyhow::Result<PerfTest> {
    let before = |suffix: &str| -> anyhow::Result<f64> {
        let end = line
            .find(suffix)
            .with_context(|| format!("no {suffix:?} in {line:?}"))?;
        let number = line[..end]
            .trim_end()
            .rsplit([' ', ','])
            .next()
            .unwrap_or_default();
        number
            .parse()
            .with_context(|| format!("{number:?} before {suffix:?} in {line:?}"))
    };
    Ok(PerfTest {
        records: before(" records sent")? as u64,
        records_per_sec: before(" records/sec")?,
        p50_ms: before(" ms 50th")?,
        p99_ms: before(" ms 99th")?,
        kafka_cpu_us_per_record: None,
        command: String::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_summary_line_is_parsed() {
        let line = "1000000 records sent, 110803.324099 records/sec (10.57 MB/sec), 165.57 ms \
                    avg latency, 404.00 ms max latency, 160 ms 50th, 300 ms 95th, 391 ms 99th, \
                    403 ms 99.9th.";
        let parsed = parse_summary(line).unwrap();
        assert_eq!(parsed.records, 1_000_000);
        assert!((parsed.records_per_sec - 110_803.324099).abs() < 1e-6);
        assert_eq!((parsed.p50_ms, parsed.p99_ms), (160.0, 391.0));
    }
}
