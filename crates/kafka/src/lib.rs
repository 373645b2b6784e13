//! Every Kafka client of Strait (its proxies and its operator) is made here: one client configuration per
//! connection ([`KafkaClients`]: bootstrap, TLS, SASL, pass-through properties), the producer
//! and reader factories on it, the failure reporting they all share ([`KafkaReport`]), the
//! loop reader threads run ([`poll::poll_loop`]), the commit rule of group consumers
//! ([`OffsetTracker`]) and record header helpers.

mod clients;
pub mod headers;
pub mod offsets;
pub mod poll;
mod report;
pub mod topics;

pub use clients::{Admin, KafkaClients, Linger, Producer, Reader, StreamReader, create_topics};
pub use offsets::OffsetTracker;
pub use report::{Advice, KafkaReport, Problem};

/// Why a Kafka client could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum KafkaClientError {
    #[error(transparent)]
    Config(#[from] strait_config::ConfigError),
    /// The cause is in the message (for logs and gRPC statuses that print only this error),
    /// so it is not also a `source`.
    #[error("cannot create the Kafka {what}: {error}")]
    Client {
        what: &'static str,
        error: rdkafka::error::KafkaError,
    },
    #[error("topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
}

impl KafkaClientError {
    /// librdkafka's error, for callers that report it in their own words (the operator's
    /// conditions); a settings or topic error as a client-creation error.
    pub fn into_kafka_error(self) -> rdkafka::error::KafkaError {
        match self {
            Self::Client { error, .. } => error,
            other => rdkafka::error::KafkaError::ClientCreation(other.to_string()),
        }
    }
}
