//! `strait-operator`: reconciles Strait's custom resources. `crd` prints their definitions.

use std::net::SocketAddr;

use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use strait_operator::{context, crd, grpc_route, leader, monitoring, mqtt_bridge};
use strait_runtime::ProcessArgs;

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

    #[command(flatten)]
    operator: OperatorArgs,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, clap::Args)]
struct OperatorArgs {
    /// strait-proxy image the proxies run, unless a resource names its own (`spec.image`).
    #[arg(
        long,
        env = "STRAIT_PROXY_IMAGE",
        default_value = concat!("ghcr.io/strait-dev/strait-proxy:", env!("CARGO_PKG_VERSION"))
    )]
    proxy_image: String,

    /// Image prefixes a resource's `spec.image` may start with (comma-separated, e.g.
    /// `registry.example.com/strait/`). Default: the --proxy-image repository only. Other images
    /// are refused with the condition ImageNotAllowed.
    #[arg(long, env = "STRAIT_ALLOWED_IMAGES", value_delimiter = ',')]
    allowed_images: Vec<String>,

    /// Watch only these namespaces (comma-separated or repeated); every namespace when not
    /// given. The chart's `watchNamespaces` sets this with Roles in those namespaces only.
    #[arg(
        long = "watch-namespace",
        env = "STRAIT_WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    watch_namespaces: Vec<String>,

    #[command(flatten)]
    leader: leader::LeaderArgs,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Crd => crd::all_yaml().map(|yaml| print!("{yaml}")),
        Command::Run => strait_runtime::build_runtime(cli.process.worker_threads)
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(run(cli.process, cli.operator))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line with the whole chain of causes, no backtrace: this is what users read.
            eprintln!("strait-operator: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: ProcessArgs, operator: OperatorArgs) -> anyhow::Result<()> {
    let process = args
        .start("strait-operator", DEFAULT_METRICS_ADDR, &[READINESS])
        .await?;
    let client = kube::Client::try_default()
        .await
        .context("no Kubernetes client: set KUBECONFIG or run in a pod with a service account")?;
    let ctx = Arc::new(context::Context::new(
        client,
        operator.proxy_image,
        operator.allowed_images,
        &process.metrics,
    )?);
    warn_if_crds_missing(&ctx.client).await;
    let ready = process.health.flag(READINESS);
    let mut leadership = leader::Leadership::join(ctx.client.clone(), &operator.leader).await?;
    // A standby replica is healthy and ready: it is doing its job, waiting.
    ready.set(true);
    tokio::select! {
        acquired = leadership.acquired() => acquired?,
        () = process.shutdown.requested() => {
            leadership.release().await;
            process.admin.stop().await;
            return Ok(());
        }
    }
    tracing::info!("leading: reconciling MqttBridge and GrpcKafkaRoute resources");
    // Every reconcile is idempotent (server-side apply of the whole desired state), so stopping
    // in the middle of one loses nothing: the next leader redoes it.
    let scopes = match operator.watch_namespaces.is_empty() {
        true => vec![None],
        false => operator.watch_namespaces.into_iter().map(Some).collect(),
    };
    // Per-resource Ready, replicas and lag for dashboards and alerts, from the leader only.
    monitoring::ResourceGauges::watch(&ctx.client, &scopes, &process.metrics)?;
    let mut controllers: Vec<Pin<Box<dyn Future<Output = ()>>>> = Vec::new();
    for namespace in scopes {
        controllers.push(Box::pin(mqtt_bridge::run(ctx.clone(), namespace.clone())));
        controllers.push(Box::pin(grpc_route::run(ctx.clone(), namespace)));
    }
    let lost = tokio::select! {
        _ = futures::future::join_all(controllers) => false,
        () = leadership.lost() => true,
        () = process.shutdown.requested() => false,
    };
    if lost {
        // Another replica leads now; exiting lets Kubernetes restart this one as a standby,
        // with no controller state left from the time it led.
        process.admin.stop().await;
        anyhow::bail!("lost the leader lease; exiting so another replica alone reconciles");
    }
    leadership.release().await;
    ready.set(false);
    tracing::info!("stopping");
    process.admin.stop().await;
    Ok(())
}

/// Says so plainly when the CRDs are not installed (the controllers retry until they are).
async fn warn_if_crds_missing(client: &kube::Client) {
    let installed: kube::Api<CustomResourceDefinition> = kube::Api::all(client.clone());
    for crd in crd::all() {
        let name = crd.metadata.name.as_deref().unwrap_or_default();
        match installed.get_opt(name).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::error!(
                crd = name,
                "CRD not installed: run `strait-operator crd | kubectl apply --server-side -f -` \
                 (the Helm chart installs it); waiting for it"
            ),
            Err(error) => tracing::warn!(crd = name, %error, "cannot check the CRD"),
        }
    }
}

/// Readiness: the controllers run.
const READINESS: &str = "controllers";
