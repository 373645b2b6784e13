//! `strait-proxy`: one binary, a subcommand per data-plane role.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use clap::{CommandFactory, Parser, Subcommand};
use strait_proxy::{grpckafka, kafkagrpc, rproxy, sproxy};
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
enum Role {
    /// MQTT server for clients (TCP, TLS, WebSocket); relays each session to s-proxy over gRPC.
    RProxy(rproxy::RProxyArgs),
    /// gRPC end of the relay; drives an MQTT broker on each client's behalf.
    SProxy(sproxy::SProxyArgs),
    /// gRPC server for any .proto service: each call becomes records on a Kafka request topic,
    /// answered from a reply topic; fetch routes stream a topic to clients.
    GrpcKafka(grpckafka::GrpcKafkaArgs),
    /// Consumes request topics in a consumer group, calls the real gRPC service, writes replies.
    KafkaGrpc(kafkagrpc::KafkaGrpcArgs),
}

impl Role {
    /// The parts that must be up before the role reports ready.
    fn readiness(&self) -> &'static [&'static str] {
        match self {
            Self::RProxy(_) => &[rproxy::READINESS],
            Self::SProxy(_) => &[sproxy::READINESS],
            Self::GrpcKafka(_) => &grpckafka::READINESS,
            Self::KafkaGrpc(_) => &kafkagrpc::READINESS,
        }
    }

    /// Each role has its own default admin port so all of them can run on one machine.
    fn default_metrics_addr(&self) -> SocketAddr {
        let port = match self {
            Self::RProxy(_) => 9090,
            Self::SProxy(_) => 9092,
            Self::GrpcKafka(_) => 9094,
            Self::KafkaGrpc(_) => 9096,
        };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let Some(role) = cli.role else {
        Cli::command().print_long_help()?;
        std::process::exit(2);
    };
    strait_proxy::tls::install_crypto_provider();
    let runtime = strait_runtime::build_runtime(cli.process.worker_threads)?;
    runtime.block_on(async move {
        let process = cli
            .process
            .start(
                "strait-proxy",
                role.default_metrics_addr(),
                role.readiness(),
            )
            .await?;
        let result = match role {
            Role::RProxy(args) => rproxy::run(args, &process).await,
            Role::SProxy(args) => sproxy::run(args, &process).await,
            Role::GrpcKafka(args) => grpckafka::run(args, &process).await,
            Role::KafkaGrpc(args) => kafkagrpc::run(args, &process).await,
        };
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "stopped with an error");
        }
        process.admin.stop().await;
        result
    })
}
