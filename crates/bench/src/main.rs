//! `strait-bench`: Strait's data plane measured against the system it fronts, in one command
//! per protocol, on this machine.

mod ab;
mod abuse;
mod grpc;
mod grpc_zilla;
mod load;
mod mqtt;
mod mqtt_kafka;
mod procs;
mod report;

use clap::{Parser, Subcommand};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Parser)]
#[command(
    name = "strait-bench",
    version,
    about = "Benchmarks Strait's data plane against the system it fronts, on this machine.",
    long_about = "Benchmarks Strait's data plane against the system it fronts, on this machine.\n\n\
        Each subcommand runs the same load straight to the backend and through Strait's proxies \
        (started here as child processes on 127.0.0.1), and prints both, their ratio and our \
        targets. Build everything in release first:\n  \
        cargo build --release -p strait-proxy -p strait-bench\n\n\
        On a 2-core machine the load generator, the proxies and the backend compete for the same \
        cores: compare ratios rather than absolute numbers, and note what else was running."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// MQTT: a broker (Mosquitto) directly vs through r-proxy → s-proxy → broker.
    #[command(long_about = mqtt::LONG_ABOUT, after_help = mqtt::EXAMPLES)]
    Mqtt(mqtt::MqttArgs),
    /// MQTT on Kafka: r-proxy → s-proxy --upstream kafka → Kafka, beside
    /// kafka-producer-perf-test.
    #[command(
        name = "mqtt-kafka",
        long_about = mqtt_kafka::LONG_ABOUT,
        after_help = mqtt_kafka::EXAMPLES
    )]
    MqttKafka(mqtt_kafka::MqttKafkaArgs),
    /// gRPC: a service directly vs through grpc-kafka → Kafka → kafka-grpc → service.
    #[command(long_about = grpc::LONG_ABOUT, after_help = grpc::EXAMPLES)]
    Grpc(grpc::GrpcArgs),
    /// Misbehaving MQTT clients against r-proxy → s-proxy on Kafka, beside a well-behaved one.
    #[command(long_about = abuse::LONG_ABOUT, after_help = abuse::EXAMPLES)]
    Abuse(abuse::AbuseArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut terminate = signal(SignalKind::terminate())?;
    // Dropping the benchmark's future on a signal kills the proxies it started.
    tokio::select! {
        result = async {
            match cli.command {
                Command::Mqtt(args) => mqtt::run(args).await,
                Command::MqttKafka(args) => mqtt_kafka::run(args).await,
                Command::Grpc(args) => grpc::run(args).await,
                Command::Abuse(args) => abuse::run(args).await,
            }
        } => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; proxies stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated; proxies stopped"),
    }
}
