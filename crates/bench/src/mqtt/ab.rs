//! `strait-bench mqtt --baseline-bin`: the relay cases on two strait-proxy builds (see
//! [`crate::ab`]); the broker reached directly is left out, as it does not depend on the build.

use std::path::Path;

use crate::ab::{AbReport, Builds, Figure, Setup};
use crate::procs::{Relay, RelaySpec, Role, Watched};
use crate::report::Report;

use super::{Measured, MqttArgs, Window, run_case};

pub(super) async fn run(
    args: &MqttArgs,
    report: &Report,
    current: RelaySpec,
    baseline: &Path,
    watched: &Watched,
    idle_connections: usize,
) -> anyhow::Result<()> {
    let builds = Builds::new(current, baseline)?;
    let window = Window {
        warmup: args.warmup,
        duration: args.duration,
    };
    let cases = builds
        .run(
            args.ab.ab_rounds,
            &args.cases,
            |case| case.name().to_string(),
            async |case, relay: &Relay| {
                let tag = format!(
                    "sb{}-{}-ab{}",
                    std::process::id(),
                    case.name(),
                    crate::grpc::rand_suffix()
                );
                let watched = watched.with_relay(relay);
                let measured = run_case(
                    case,
                    relay.mqtt,
                    watched,
                    window,
                    args,
                    idle_connections,
                    tag,
                )
                .await?;
                Ok(figures(&measured))
            },
        )
        .await?;
    let setup = Setup {
        benchmark: "mqtt",
        builds: &builds,
        rounds: args.ab.ab_rounds,
        warmup: args.warmup,
        duration: args.duration,
        warnings: report.warnings().to_vec(),
        load_average_start: report.load_average_start().to_string(),
    };
    AbReport::new(setup, cases).print(args.json)
}

/// What a build changes in one case's result: the relay's rate, latency, CPU and memory.
fn figures(measured: &Measured) -> Vec<Figure> {
    let per_proxy = |what: &str, by_role: &std::collections::BTreeMap<Role, f64>| {
        [Role::RProxy, Role::SProxy]
            .into_iter()
            .filter_map(|role| {
                let value = *by_role.get(&role)?;
                Some(Figure::lower(format!("{what} {}", role.name()), value))
            })
            .collect::<Vec<_>>()
    };
    match measured {
        Measured::Throughput(t) => {
            let mut figures = vec![Figure::higher("delivered msg/s", t.delivered_per_sec)];
            figures.extend(per_proxy("CPU µs/msg", &t.cpu_us_per_msg));
            figures
        }
        Measured::Latency(l) => {
            let mut figures = vec![
                Figure::higher("msg/s", l.per_sec),
                Figure::lower("PUBACK p50 µs", l.puback_us.p50),
                Figure::lower("PUBACK p99 µs", l.puback_us.p99),
                Figure::lower("end-to-end p50 µs", l.end_to_end_us.p50),
            ];
            figures.extend(per_proxy("CPU µs/msg", &l.cpu_us_per_msg));
            figures
        }
        Measured::Idle(i) => per_proxy("KiB/connection", &i.kib_per_connection),
    }
}
