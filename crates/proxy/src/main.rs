//! `strait-proxy`: one binary, a subcommand per data-plane role.
//!
//! The roles (r-proxy, s-proxy, grpc-kafka, kafka-grpc, dev) each arrive with their issue; what
//! they share — flags, runtime sizing, tracing, the admin endpoint and shutdown — lives in
//! `strait-runtime`.

use clap::{CommandFactory, Parser, Subcommand};
use strait_runtime::ProcessArgs;

#[derive(Debug, Parser)]
#[command(
    name = "strait-proxy",
    version,
    about = "Strait data plane: connects MQTT devices and gRPC services to Kafka.",
    long_about = "Strait data plane: connects MQTT devices and gRPC services to Kafka.\n\n\
        Each role is a subcommand; run `strait-proxy <ROLE> --help` for its options.\n\
        Every role serves Prometheus /metrics, /healthz and /readyz on --metrics-addr \
        and logs to stderr (level from RUST_LOG, default info)."
)]
struct Cli {
    #[command(flatten)]
    process: ProcessArgs,

    #[command(subcommand)]
    role: Option<Role>,
}

#[derive(Debug, Subcommand)]
enum Role {}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(role) = cli.role else {
        Cli::command().print_long_help()?;
        std::process::exit(2);
    };
    let runtime = strait_runtime::build_runtime(cli.process.worker_threads)?;
    runtime.block_on(async move { match role {} })
}
