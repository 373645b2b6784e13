use std::net::SocketAddr;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::Health;

/// The admin HTTP endpoint: Prometheus `/metrics`, liveness `/healthz`, readiness `/readyz`.
pub struct AdminServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    /// None in a handle that does not own the server (`AdminServer::handle`).
    task: Option<JoinHandle<()>>,
}

#[derive(Clone)]
struct AdminState {
    metrics: prometheus::Registry,
    health: Health,
    shutdown: CancellationToken,
}

impl AdminServer {
    /// Binds `addr` and serves until [`AdminServer::stop`]. Readiness turns false as soon as
    /// `shutdown` fires, so load balancers stop sending new work while the process drains; the
    /// endpoint itself keeps answering until the process stops it last.
    pub async fn start(
        addr: SocketAddr,
        metrics: prometheus::Registry,
        health: Health,
        shutdown: CancellationToken,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let state = AdminState {
            metrics,
            health,
            shutdown,
        };
        let stop = CancellationToken::new();
        let app = Router::new()
            .route("/metrics", get(metrics_text))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readiness))
            .with_state(state);
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app)
                .with_graceful_shutdown(async move { stopped.cancelled_owned().await });
            if let Err(error) = serve.await {
                tracing::error!(%error, "admin endpoint failed");
            }
        });
        Ok(Self {
            local_addr,
            stop,
            task: Some(task),
        })
    }

    /// The same endpoint, for a part of the process (`Process::part`); its `stop` does
    /// nothing, the owner stops the server.
    pub fn handle(&self) -> Self {
        Self {
            local_addr: self.local_addr,
            stop: self.stop.clone(),
            task: None,
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops serving and waits until the server has closed (a `handle` leaves it running).
    pub async fn stop(self) {
        if let Some(task) = self.task {
            self.stop.cancel();
            let _ = task.await;
        }
    }
}

/// The names of the metric families `registry` serves, sorted: what each registry's
/// `METRIC_NAMES` list (the chart's dashboard and alerts are checked against those) must equal.
/// A labelled family is served once it has a series.
pub fn metric_names(registry: &prometheus::Registry) -> Vec<String> {
    let mut names: Vec<String> = (registry.gather().iter())
        .map(|family| family.name().to_string())
        .collect();
    names.sort();
    names
}

async fn metrics_text(State(state): State<AdminState>) -> impl IntoResponse {
    let mut body = Vec::new();
    match TextEncoder::new().encode(&state.metrics.gather(), &mut body) {
        Ok(()) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
            body,
        )
            .into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}

async fn readiness(State(state): State<AdminState>) -> (StatusCode, String) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down\n".into());
    }
    let waiting = state.health.not_ready();
    if waiting.is_empty() {
        (StatusCode::OK, "ok\n".into())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", waiting.join(", ")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_e2e::http_get as get;

    #[tokio::test]
    async fn serves_metrics_liveness_and_readiness() {
        let registry = prometheus::Registry::new_custom(Some("strait_test".into()), None).unwrap();
        let counter = prometheus::IntCounter::new("requests_total", "requests seen").unwrap();
        registry.register(Box::new(counter.clone())).unwrap();
        counter.inc_by(3);
        let health = Health::default();
        let kafka = health.flag("kafka");
        let shutdown = CancellationToken::new();
        let addr = "127.0.0.1:0".parse().unwrap();
        let server = AdminServer::start(addr, registry, health, shutdown.clone())
            .await
            .unwrap();
        let addr = server.local_addr();

        let (status, body) = get(addr, "/metrics").await.unwrap();
        assert_eq!(status, 200);
        assert!(body.contains("strait_test_requests_total 3"), "{body}");

        assert_eq!(get(addr, "/healthz").await.unwrap(), (200, "ok\n".into()));
        assert_eq!(
            get(addr, "/readyz").await.unwrap(),
            (503, "not ready: kafka\n".into())
        );
        kafka.set(true);
        assert_eq!(get(addr, "/readyz").await.unwrap(), (200, "ok\n".into()));

        shutdown.cancel();
        assert_eq!(
            get(addr, "/readyz").await.unwrap(),
            (503, "shutting down\n".into())
        );
        assert_eq!(
            get(addr, "/healthz").await.unwrap().0,
            200,
            "still live while draining"
        );
        tokio::time::timeout(std::time::Duration::from_secs(5), server.stop())
            .await
            .expect("admin server stops");
        assert!(
            tokio::net::TcpStream::connect(addr).await.is_err(),
            "port closed"
        );
    }
}
