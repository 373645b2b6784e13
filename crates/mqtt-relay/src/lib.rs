//! The MQTT relay: r-proxy (the MQTT server clients connect to, relaying each session to
//! s-proxy as one gRPC stream) and s-proxy (the gRPC end, driving an upstream per session: a
//! real MQTT broker here, or Kafka through strait-mqtt-kafka), with what they need: JWT
//! authentication of clients (`auth`), packet batching (`batch`), the drain of slow broker
//! reads (`drain`) and boxed byte streams (`net`).

pub mod auth;
pub mod batch;
pub mod drain;
pub mod net;
pub mod rproxy;
pub mod sproxy;

/// Why r-proxy or s-proxy could not start or stopped, or a connection could not be made.
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    /// What was being done, with its cause.
    #[error(transparent)]
    Failed(#[from] strait_runtime::Failed),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] strait_tls::TlsError),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("WebSocket handshake: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
}
