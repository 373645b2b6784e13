use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// The one shutdown signal of a process: cancelled on SIGINT/SIGTERM or by [`Shutdown::trigger`].
/// Every task holds a child token and stops accepting work when it fires.
#[derive(Clone)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    /// A token that fires on SIGINT or SIGTERM. Must be called inside a tokio runtime.
    pub fn on_signals() -> Self {
        let token = CancellationToken::new();
        let fire = token.clone();
        tokio::spawn(async move {
            let signal = wait_for_signal().await;
            tracing::info!(signal, "shutdown requested");
            fire.cancel();
        });
        Self { token }
    }

    /// A token fired only by [`Shutdown::trigger`] (tests, embedding).
    pub fn manual() -> Self {
        Self {
            token: CancellationToken::new(),
        }
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    /// Resolves when shutdown has been requested.
    pub async fn requested(&self) {
        self.token.cancelled().await
    }
}

async fn wait_for_signal() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers; shutdown only by request");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    }
}

/// Waits for `work` to finish, at most `deadline`. Returns false when the deadline cut it short,
/// so the caller can log what was abandoned.
pub async fn drain(deadline: Duration, work: impl Future<Output = ()>) -> bool {
    tokio::time::timeout(deadline, work).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn drain_reports_whether_work_finished_in_time() {
        assert!(
            drain(
                Duration::from_secs(1),
                tokio::time::sleep(Duration::from_millis(10))
            )
            .await
        );
        assert!(
            !drain(
                Duration::from_secs(1),
                tokio::time::sleep(Duration::from_secs(5))
            )
            .await
        );
    }

    #[tokio::test]
    async fn trigger_wakes_waiters() {
        let shutdown = Shutdown::manual();
        let waiter = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.requested().await }
        });
        assert!(!shutdown.is_triggered());
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .expect("waiter woke")
            .expect("waiter ran");
    }
}
