//! MQTT on Kafka: s-proxy's Kafka upstream, where Kafka is the broker (Zilla's mqtt-kafka record
//! layout, so Zilla users keep their topics and consumers).
//!
//! - [`core`]: plain logic, no I/O: where a PUBLISH goes (routing, murmur2 partitions), the
//!   record layout (headers), the subscription trie, and the session record format.
//! - [`io`]: the process-wide upstream (producers, the dispatcher, inboxes, shared groups,
//!   tables, topic admin, the watchdog) and the session driver. Every Kafka client comes from
//!   strait-kafka.

pub mod core;
pub mod io;

pub use io::{KafkaUpstream, TopicCheck, run};

/// Why the Kafka upstream, or one of its operations, failed.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error(transparent)]
    Client(#[from] strait_kafka::KafkaClientError),
    #[error(transparent)]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A topic is missing, unreadable or not set up as the upstream needs.
    #[error("{0}")]
    Topic(String),
    /// Something took longer than it may.
    #[error("{0}")]
    Timeout(String),
    #[error("shut down before Kafka at {0} answered")]
    ShutDown(String),
    #[error("writing the session of {client_id}: {error}")]
    SessionWrite {
        client_id: String,
        error: rdkafka::error::KafkaError,
    },
    #[error("cannot register the Kafka upstream's metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Thread(#[from] std::io::Error),
    #[error("a blocking Kafka call failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
    /// What was being done, and why it failed.
    #[error(transparent)]
    Failed(#[from] strait_runtime::Failed),
}

pub use strait_runtime::error_chain;
