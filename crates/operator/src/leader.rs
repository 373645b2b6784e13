//! Leader election with a Lease, so several operator replicas never reconcile at once: one leads,
//! the others wait and take over within the lease duration when it stops (at once when it stops
//! cleanly, since it releases the lease).

use std::time::Duration;

use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

/// How long a lease is valid without renewal, and how early the holder renews it.
const LEASE_SECONDS: u64 = 15;
const GRACE_SECONDS: u64 = 5;

#[derive(Debug, Clone, clap::Args)]
pub struct LeaderArgs {
    /// Name of the Lease that elects the reconciling replica.
    #[arg(long, env = "STRAIT_LEASE_NAME", default_value = "strait-operator")]
    pub lease_name: String,

    /// Namespace of the Lease (the operator's own namespace in a cluster).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    pub lease_namespace: String,
}

/// A held or awaited leadership; dropping it releases the lease.
pub struct Leadership {
    state: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
}

impl Leadership {
    pub async fn join(client: kube::Client, args: &LeaderArgs) -> anyhow::Result<Self> {
        let identity = std::env::var("POD_NAME").unwrap_or_else(|_| {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            format!("{}-{}", host.trim(), std::process::id())
        });
        tracing::info!(lease = %args.lease_name, namespace = %args.lease_namespace, %identity, "joining leader election");
        let manager = LeaseManagerBuilder::new(client, &args.lease_name)
            .with_namespace(&args.lease_namespace)
            .with_identity(identity)
            .with_duration(LEASE_SECONDS)
            .with_grace(GRACE_SECONDS)
            .with_field_manager(crate::FIELD_MANAGER)
            .build()
            .await?;
        let (state, task) = manager.watch().await;
        Ok(Self { state, task })
    }

    /// Waits until this process holds the lease.
    pub async fn acquired(&mut self) -> anyhow::Result<()> {
        self.state
            .wait_for(|leader| *leader)
            .await
            .map_err(|_| anyhow::anyhow!("leader election stopped"))?;
        Ok(())
    }

    /// Resolves when this process no longer holds the lease.
    pub async fn lost(&mut self) {
        let _ = self.state.wait_for(|leader| !*leader).await;
    }

    /// Gives the lease up so another replica takes over at once.
    pub async fn release(self) {
        drop(self.state);
        match tokio::time::timeout(Duration::from_secs(5), self.task).await {
            Ok(Ok(Ok(_))) => tracing::info!("lease released"),
            Ok(Ok(Err(error))) => tracing::warn!(%error, "could not release the lease"),
            Ok(Err(error)) => tracing::warn!(%error, "leader election task failed"),
            Err(_) => tracing::warn!("releasing the lease timed out"),
        }
    }
}
