//! What every Strait process shares.
//!
//! A binary flattens [`ProcessArgs`] into its CLI, calls [`ProcessArgs::start`] inside a tokio
//! runtime built by [`build_runtime`], and gets back a [`Process`]: tracing is installed, the
//! admin endpoint (`/metrics`, `/healthz`, `/readyz`) is serving, and a shutdown token fires on
//! SIGINT or SIGTERM.

mod admin;
mod failure;
mod health;
mod logging;
pub mod pace;
mod shutdown;

use std::net::SocketAddr;

pub use admin::{AdminServer, metric_names};
pub use failure::{Context, Failed, error_chain};
pub use health::{Health, ReadinessFlag};
pub use logging::LogFormat;
pub use shutdown::{Shutdown, drain};

/// Flags shared by every Strait binary and role.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// Log line format. The level comes from RUST_LOG (e.g. `info`, `strait_proxy=debug`).
    #[arg(long, env = "STRAIT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,

    /// Address of the admin endpoint serving Prometheus `/metrics`, `/healthz` and `/readyz`.
    /// Use 0.0.0.0:PORT in a pod so probes and scrapers can reach it.
    #[arg(long, env = "STRAIT_METRICS_ADDR", global = true)]
    pub metrics_addr: Option<SocketAddr>,

    /// Tokio worker threads. Default: the CPUs this process may use (honours cgroup quotas).
    #[arg(long, env = "STRAIT_WORKER_THREADS", global = true)]
    pub worker_threads: Option<usize>,
}

/// A started process: its metrics registry, readiness, shutdown signal and admin server.
pub struct Process {
    pub metrics: prometheus::Registry,
    pub health: Health,
    pub shutdown: Shutdown,
    pub admin: AdminServer,
}

impl Process {
    /// A view of this process for one of several roles it runs (`strait-proxy dev`): the same
    /// metrics, shutdown signal and admin endpoint, with readiness flags of its own (named
    /// `name/flag` on `/readyz`, see [`Health::scoped`]).
    pub fn part(&self, name: &'static str) -> Process {
        Process {
            metrics: self.metrics.clone(),
            health: self.health.scoped(name),
            shutdown: self.shutdown.clone(),
            admin: self.admin.handle(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot install the tracing subscriber: {0}")]
    Tracing(String),
    #[error("cannot bind the admin endpoint on {addr}: {source}")]
    AdminBind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot register process metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

impl ProcessArgs {
    /// Installs tracing, starts the admin endpoint and the signal listener.
    ///
    /// `binary` names the process in logs; `default_metrics_addr` is used when `--metrics-addr`
    /// is not given. `readiness` names the parts that must report ready (see [`Health::flag`])
    /// before `/readyz` says so; they are registered before the endpoint opens, so no probe can
    /// see the process ready before its parts are. Metrics are registered unprefixed so the standard `process_*` series keep
    /// their names; Strait's own metrics are named `strait_…` where they are defined.
    pub async fn start(
        &self,
        binary: &'static str,
        default_metrics_addr: SocketAddr,
        readiness: &[&'static str],
    ) -> Result<Process, StartError> {
        logging::init(self.log_format).map_err(StartError::Tracing)?;
        let metrics = prometheus::Registry::new();
        metrics.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let health = Health::default();
        for part in readiness {
            health.flag(part);
        }
        let shutdown = Shutdown::on_signals();
        let addr = self.metrics_addr.unwrap_or(default_metrics_addr);
        let admin = AdminServer::start(addr, metrics.clone(), health.clone(), shutdown.token())
            .await
            .map_err(|source| StartError::AdminBind { addr, source })?;
        tracing::info!(
            binary,
            version = env!("CARGO_PKG_VERSION"),
            admin = %admin.local_addr(),
            "started"
        );
        Ok(Process {
            metrics,
            health,
            shutdown,
            admin,
        })
    }
}

/// Builds the multi-threaded tokio runtime with an explicit worker count, so a CPU-limited pod
/// does not spawn a thread per host core.
pub fn build_runtime(worker_threads: Option<usize>) -> std::io::Result<tokio::runtime::Runtime> {
    let workers = worker_threads
        .or_else(|| std::thread::available_parallelism().ok().map(usize::from))
        .unwrap_or(1)
        .max(1);
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
}
