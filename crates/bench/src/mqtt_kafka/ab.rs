//! `strait-bench mqtt-kafka --baseline-bin`: the cases on two strait-proxy builds (see
//! [`crate::ab`]); kafka-producer-perf-test is left out, as it does not depend on the build.

use std::path::Path;

use crate::ab::{AbReport, Builds, Figure, Setup};
use crate::procs::{Relay, RelaySpec, Watched};

use super::cases::{connections_case, fan_out_case, publish_case};
use super::{Case, CpuPerMessage, MqttKafkaArgs, Report};

pub(super) async fn run(
    args: &MqttKafkaArgs,
    report: &Report,
    current: RelaySpec,
    baseline: &Path,
    baseline_config: &Path,
    watched: &Watched,
    kafka_port: u16,
) -> anyhow::Result<AbReport> {
    let builds = Builds::new(current, baseline)?.with_baseline_upstream(vec![
        "--config".into(),
        baseline_config.display().to_string(),
    ]);
    let cases = builds
        .run(
            args.ab.ab_rounds,
            &args.cases,
            |case| format!("{case:?}"),
            async |case, relay: &Relay| {
                let watched = watched.with_relay(relay);
                let tag = format!("mk{}-{}", std::process::id(), crate::grpc::rand_suffix());
                Ok(match case {
                    Case::Publish => {
                        let p = publish_case(args, relay.mqtt, &watched, &[], &tag).await?;
                        let mut figures = vec![
                            Figure::higher("messages/s", p.per_sec),
                            Figure::lower("PUBACK p50 µs", p.puback_us.p50),
                            Figure::lower("PUBACK p99 µs", p.puback_us.p99),
                            Figure::higher("msg/s per core of s-proxy", p.s_proxy_per_core),
                        ];
                        figures.extend(per_proxy("CPU µs/msg", &p.cpu_us_per_msg));
                        figures
                    }
                    Case::FanOut => {
                        let f = fan_out_case(args, relay, &watched, &tag).await?;
                        let mut figures =
                            vec![Figure::higher("delivered msg/s", f.delivered_per_sec)];
                        figures.extend(per_proxy("CPU µs/delivery", &f.cpu_us_per_delivery));
                        figures
                    }
                    Case::Connections => {
                        let c = connections_case(args, relay, &watched, kafka_port, &tag).await?;
                        let first = c.rows.first().expect("the row without clients at least");
                        let last = c.rows.last().expect("the row without clients at least");
                        let at = format!("at {} clients", last.clients);
                        // What a session costs, not the process's total: the total also holds
                        // the binary's code and the runtime, which differ between builds and
                        // do not grow with clients.
                        let sessions = last.open.saturating_sub(first.open).max(1) as f64;
                        let kib_per_session = |from: f64, to: f64| (to - from) * 1024.0 / sessions;
                        vec![
                            Figure::lower(
                                format!("s-proxy → Kafka TCP {at}"),
                                last.kafka_connections as f64,
                            ),
                            Figure::lower(
                                "s-proxy KiB per session",
                                kib_per_session(first.s_proxy_rss_mib, last.s_proxy_rss_mib),
                            ),
                            Figure::lower(
                                "r-proxy KiB per session",
                                kib_per_session(first.r_proxy_rss_mib, last.r_proxy_rss_mib),
                            ),
                        ]
                    }
                })
            },
        )
        .await?;
    let setup = Setup {
        benchmark: "mqtt-kafka",
        builds: &builds,
        rounds: args.ab.ab_rounds,
        warmup: args.warmup,
        duration: args.duration,
        warnings: report.warnings.clone(),
        load_average_start: report.load_average_start.clone(),
    };
    Ok(AbReport::new(setup, cases))
}

/// The proxies' figures of a by-process map (Kafka's and the load generator's do not depend
/// on the build).
fn per_proxy(what: &str, by_process: &CpuPerMessage) -> Vec<Figure> {
    ["r-proxy", "s-proxy"]
        .into_iter()
        .filter_map(|process| {
            let value = *by_process.get(process)?;
            Some(Figure::lower(format!("{what} {process}"), value))
        })
        .collect()
}
