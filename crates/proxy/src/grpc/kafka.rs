//! Kafka clients of the gRPC roles, configured from [`KafkaConnection`].

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use strait_config::grpc::{Acks, KafkaConnection};

use crate::kafka_client::KafkaReport;

#[derive(Debug, thiserror::Error)]
pub enum KafkaSetupError {
    #[error(transparent)]
    Config(#[from] strait_config::ConfigError),
    #[error("cannot create the Kafka {what}: {source}")]
    Client {
        what: &'static str,
        source: rdkafka::error::KafkaError,
    },
    #[error("topic {topic:?}: {reason}")]
    Topic { topic: String, reason: String },
}

/// The common part of every client's configuration: bootstrap, TLS, SASL, extra properties.
pub fn client_config(kafka: &KafkaConnection) -> Result<ClientConfig, KafkaSetupError> {
    Ok(crate::kafka_client::client_config(kafka)?)
}

/// The producers of the gRPC roles: their errors are reported by [`KafkaReport`].
pub type Producer = FutureProducer<KafkaReport>;

/// A producer for one acks setting; acks=all producers are idempotent, so retries inside
/// librdkafka neither duplicate nor reorder a call's records.
pub fn producer(kafka: &KafkaConnection, acks: Acks) -> Result<Producer, KafkaSetupError> {
    let mut config = client_config(kafka)?;
    config.set("acks", acks.as_kafka());
    if acks == Acks::All {
        config.set("enable.idempotence", "true");
    }
    if !kafka.properties.contains_key("linger.ms") {
        config.set("linger.ms", "1");
    }
    config
        .create_with_context(KafkaReport::new(kafka))
        .map_err(|source| KafkaSetupError::Client {
            what: "producer",
            source,
        })
}

/// Partition count of `topic`, read from the cluster metadata (blocking: call off the runtime).
pub fn partitions(
    consumer: &StreamConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaSetupError> {
    let metadata =
        consumer
            .fetch_metadata(Some(topic), timeout)
            .map_err(|e| KafkaSetupError::Topic {
                topic: topic.into(),
                reason: format!("cannot read its metadata: {e}"),
            })?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(KafkaSetupError::Topic {
            topic: topic.into(),
            reason: "not in the cluster metadata".into(),
        });
    };
    if let Some(error) = t.error() {
        return Err(KafkaSetupError::Topic {
            topic: topic.into(),
            reason: format!("{:?}", rdkafka::types::RDKafkaErrorCode::from(error)),
        });
    }
    if t.partitions().is_empty() {
        return Err(KafkaSetupError::Topic {
            topic: topic.into(),
            reason: "has no partitions (does it exist?)".into(),
        });
    }
    Ok(t.partitions().len() as i32)
}

/// Assigns every partition of `topic` to `consumer` at its current end: a reader that sees
/// every record written from now on (blocking: call off the runtime).
pub fn assign_from_end(
    consumer: &StreamConsumer,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaSetupError> {
    let count = partitions(consumer, topic, timeout)?;
    let mut list = TopicPartitionList::new();
    for partition in 0..count {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| KafkaSetupError::Topic {
                topic: topic.into(),
                reason: format!("cannot read the end of partition {partition}: {e}"),
            })?;
        list.add_partition_offset(topic, partition, Offset::Offset(high))
            .map_err(|e| KafkaSetupError::Topic {
                topic: topic.into(),
                reason: e.to_string(),
            })?;
    }
    consumer
        .assign(&list)
        .map_err(|source| KafkaSetupError::Client {
            what: "reply consumer assignment",
            source,
        })?;
    Ok(count)
}
