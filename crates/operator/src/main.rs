//! `strait-operator`: reconciles Strait's custom resources. `crd` prints their definitions.

use std::net::SocketAddr;

use clap::{Parser, Subcommand};
use strait_runtime::ProcessArgs;

mod crd;

#[derive(Debug, Parser)]
#[command(
    name = "strait-operator",
    version,
    about = "Strait control plane: turns MqttBridge and GrpcKafkaRoute resources into running proxies and Kafka topics.",
    long_about = "Strait control plane: turns MqttBridge and GrpcKafkaRoute resources into running \
        proxies and Kafka topics, and scales consumers from consumer-group lag.\n\n\
        Without a subcommand it runs the controllers against the cluster of KUBECONFIG or the \
        in-cluster service account. It serves Prometheus /metrics, /healthz and /readyz on \
        --metrics-addr and logs to stderr (level from RUST_LOG, default info)."
)]
struct Cli {
    #[command(flatten)]
    process: ProcessArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run,
    /// Print the CustomResourceDefinitions as YAML, for `kubectl apply -f -` or the chart's crds/.
    Crd,
}

const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9091);

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command.unwrap_or(Command::Run) {
        Command::Crd => {
            print!("{}", crd::all_yaml()?);
            Ok(())
        }
        Command::Run => {
            let runtime = strait_runtime::build_runtime(cli.process.worker_threads)?;
            runtime.block_on(run(cli.process))
        }
    }
}

async fn run(args: ProcessArgs) -> anyhow::Result<()> {
    let process = args
        .start("strait-operator", DEFAULT_METRICS_ADDR, &[])
        .await?;
    // Controllers register here as they arrive; until then the process is ready at once.
    process.shutdown.requested().await;
    tracing::info!("stopping");
    process.admin.stop().await;
    Ok(())
}
