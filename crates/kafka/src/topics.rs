//! Reading a topic's layout from the cluster metadata (blocking: call off the runtime).

use std::time::Duration;

use rdkafka::consumer::{Consumer, ConsumerContext};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaErrorCode;

use crate::KafkaClientError;

/// Partition count of `topic`, read from the cluster metadata.
pub fn partition_count<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaClientError> {
    let failed = |reason: String| KafkaClientError::Topic {
        topic: topic.into(),
        reason,
    };
    let metadata = consumer
        .fetch_metadata(Some(topic), timeout)
        .map_err(|e| failed(format!("cannot read its metadata: {e}")))?;
    let Some(t) = metadata.topics().iter().find(|t| t.name() == topic) else {
        return Err(failed("not in the cluster metadata".into()));
    };
    if let Some(error) = t.error() {
        return Err(failed(format!("{:?}", RDKafkaErrorCode::from(error))));
    }
    if t.partitions().is_empty() {
        return Err(failed("has no partitions (does it exist?)".into()));
    }
    Ok(t.partitions().len() as i32)
}

/// Assigns every partition of `topic` to `consumer` at its current end: a reader that sees
/// every record written from now on. Returns the partition count.
pub fn assign_from_end<C: ConsumerContext>(
    consumer: &impl Consumer<C>,
    topic: &str,
    timeout: Duration,
) -> Result<i32, KafkaClientError> {
    let count = partition_count(consumer, topic, timeout)?;
    let mut list = TopicPartitionList::new();
    for partition in 0..count {
        let (_, high) = consumer
            .fetch_watermarks(topic, partition, timeout)
            .map_err(|e| KafkaClientError::Topic {
                topic: topic.into(),
                reason: format!("cannot read the end of partition {partition}: {e}"),
            })?;
        list.add_partition_offset(topic, partition, Offset::Offset(high))
            .map_err(|e| KafkaClientError::Topic {
                topic: topic.into(),
                reason: e.to_string(),
            })?;
    }
    consumer
        .assign(&list)
        .map_err(|error| KafkaClientError::Client {
            what: "reader assignment",
            error,
        })?;
    Ok(count)
}
