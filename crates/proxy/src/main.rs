//! `strait-proxy`: one binary, a subcommand per data-plane role.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};
use strait_config::{ConfigError, RProxyConfig, SProxyConfig};
use strait_grpc_kafka::{grpckafka, kafkagrpc};
use strait_mqtt_relay::{rproxy, sproxy};
use strait_proxy::cli::{GrpcKafkaArgs, KafkaGrpcArgs};
use strait_proxy::cli::{RProxyArgs, SProxyArgs};
use strait_proxy::{demo, dev};
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
    RProxy(RProxyArgs),
    /// gRPC end of the relay; drives an MQTT broker on each client's behalf.
    SProxy(SProxyArgs),
    /// gRPC server for any .proto service: each call becomes records on a Kafka request topic,
    /// answered from a reply topic; fetch routes stream a topic to clients.
    GrpcKafka(GrpcKafkaArgs),
    /// Consumes request topics in a consumer group, calls the real gRPC service, writes replies.
    KafkaGrpc(KafkaGrpcArgs),
    /// Everything in one process for trying Strait out: MQTT on 127.0.0.1:1883 and gRPC on
    /// 127.0.0.1:50051 through an embedded Kafka (in-memory, for trying out; nothing survives a
    /// restart), or a real one with --kafka.
    Dev(dev::DevArgs),
    /// The demo gRPC service strait.demo.v1.Echo on its own: a backend to try a GrpcKafkaRoute
    /// with (examples/grpckafkaroute.yaml).
    DemoService(demo::DemoServiceArgs),
}

/// A role's validated settings: its config file with the command line laid over it.
/// (The gRPC roles read their config file, with its .proto files, when they start.)
enum RoleConfig {
    // Boxed: by far the largest, and there is one per process.
    RProxy(Box<RProxyConfig>),
    SProxy(SProxyConfig),
    GrpcKafka(GrpcKafkaArgs),
    KafkaGrpc(KafkaGrpcArgs),
    Dev(dev::DevArgs),
    DemoService(demo::DemoServiceArgs),
}

impl Role {
    fn into_config(self) -> Result<RoleConfig, ConfigError> {
        Ok(match self {
            Self::RProxy(args) => RoleConfig::RProxy(Box::new(args.into_config()?)),
            Self::SProxy(args) => RoleConfig::SProxy(args.into_config()?),
            Self::GrpcKafka(args) => RoleConfig::GrpcKafka(args),
            Self::KafkaGrpc(args) => RoleConfig::KafkaGrpc(args),
            Self::Dev(args) => RoleConfig::Dev(args),
            Self::DemoService(args) => RoleConfig::DemoService(args),
        })
    }

    /// The parts that must be up before the role reports ready.
    fn readiness(&self) -> &'static [&'static str] {
        match self {
            Self::RProxy(_) => &[rproxy::READINESS],
            Self::SProxy(_) => &[sproxy::READINESS],
            Self::GrpcKafka(_) => &grpckafka::READINESS,
            Self::KafkaGrpc(_) => &kafkagrpc::READINESS,
            Self::Dev(_) => &[dev::READINESS],
            Self::DemoService(_) => &[demo::READINESS],
        }
    }

    /// Each role has its own default admin port so all of them can run on one machine.
    fn default_metrics_addr(&self) -> SocketAddr {
        let port = match self {
            Self::RProxy(_) => 9090,
            Self::SProxy(_) => 9092,
            Self::GrpcKafka(_) => 9094,
            Self::KafkaGrpc(_) => 9096,
            Self::Dev(_) => 9098,
            Self::DemoService(_) => 9099,
        };
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let Some(role) = cli.role else {
        let _ = Cli::command().print_long_help();
        return ExitCode::from(2);
    };
    match run(cli.process, role) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole chain of causes, no backtrace: this is what users read.
            eprintln!("strait-proxy: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(process_args: ProcessArgs, role: Role) -> anyhow::Result<()> {
    let readiness = role.readiness();
    let default_metrics_addr = role.default_metrics_addr();
    // A bad config stops the process before it binds anything, with the field named.
    let config = role.into_config()?;
    strait_tls::install_crypto_provider();
    let runtime = strait_runtime::build_runtime(process_args.worker_threads)?;
    runtime.block_on(async move {
        let process = process_args
            .start("strait-proxy", default_metrics_addr, readiness)
            .await?;
        let result = match config {
            RoleConfig::RProxy(config) => rproxy::run(*config, &process).await.map_err(Into::into),
            RoleConfig::SProxy(config) => sproxy::run(config, &process).await.map_err(Into::into),
            RoleConfig::GrpcKafka(args) => match args.load() {
                Ok(config) => grpckafka::run(config, &process).await.map_err(Into::into),
                Err(error) => Err(error.into()),
            },
            RoleConfig::KafkaGrpc(args) => match args.load() {
                Ok(config) => kafkagrpc::run(config, &process).await.map_err(Into::into),
                Err(error) => Err(error.into()),
            },
            RoleConfig::Dev(args) => dev::run(args, &process).await,
            RoleConfig::DemoService(args) => demo::run(args, &process).await,
        };
        if let Err(error) = &result {
            tracing::error!(error = format!("{error:#}"), "stopped with an error");
        }
        process.admin.stop().await;
        result
    })
}
