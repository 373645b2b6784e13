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
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    #[error(transparent)]
    Thread(#[from] std::io::Error),
    #[error("a blocking Kafka call failed: {0}")]
    Blocking(#[from] tokio::task::JoinError),
    /// What was being done, and why it failed.
    #[error("{what}")]
    Context {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// `.context()` for the upstream's results: names what was being done, keeps the cause.
pub(crate) trait Context<T> {
    fn context(self, what: impl Into<String>) -> Result<T, UpstreamError>;
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, UpstreamError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T, UpstreamError> {
        self.map_err(|source| UpstreamError::Context {
            what: what.into(),
            source: Box::new(source),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T, UpstreamError> {
        self.map_err(|source| UpstreamError::Context {
            what: what().into(),
            source: Box::new(source),
        })
    }
}

/// An error with its causes, one line (`what: cause: cause`), for logs and reason strings.
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        line.push_str(": ");
        line.push_str(&cause.to_string());
        source = cause.source();
    }
    line
}
