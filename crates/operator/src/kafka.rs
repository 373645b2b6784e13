//! Consumer-group lag and membership, read from Kafka for the autoscaler and the status.

use std::time::Duration;

use rdkafka::consumer::Consumer;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::autoscale::Observation;
use strait_kafka::Reader;

use crate::kafka_access::KafkaAccess;

const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum LagError {
    #[error("Kafka at {bootstrap} is unreachable: {error}")]
    Unreachable {
        bootstrap: String,
        error: rdkafka::error::KafkaError,
    },
    #[error("topic {0:?} does not exist")]
    NoTopic(String),
    #[error("reading offsets of group {group:?}: {error}")]
    Offsets {
        group: String,
        error: rdkafka::error::KafkaError,
    },
}

/// Lag of `group` on `topic` (uncommitted partitions count their whole log), the topic's
/// partitions and the group's members. Blocking: call from `spawn_blocking`.
pub fn observe(kafka: &KafkaAccess, topic: &str, group: &str) -> Result<Observation, LagError> {
    observe_counting(kafka, topic, group, true)
}

/// [`observe`], where `count_uncommitted` decides whether a partition the group never committed
/// counts its whole log (a consumer that starts at the beginning) or nothing (one that starts at
/// the end, like shared subscriptions).
fn observe_counting(
    kafka: &KafkaAccess,
    topic: &str,
    group: &str,
    count_uncommitted: bool,
) -> Result<Observation, LagError> {
    let bootstrap = kafka.bootstrap.as_str();
    // A consumer that never subscribes: it only asks the group coordinator about offsets.
    let consumer = kafka
        .clients()
        .offsets_reader(Some(group))
        .map_err(|error| LagError::Unreachable {
            bootstrap: bootstrap.into(),
            error: error.into_kafka_error(),
        })?;
    let metadata = consumer
        .fetch_metadata(Some(topic), TIMEOUT)
        .map_err(|error| LagError::Unreachable {
            bootstrap: bootstrap.into(),
            error,
        })?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .filter(|t| t.name() == topic && t.error().is_none())
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    if partitions.is_empty() {
        return Err(LagError::NoTopic(topic.into()));
    }
    let mut wanted = TopicPartitionList::new();
    for &partition in &partitions {
        wanted.add_partition(topic, partition);
    }
    let committed = committed_offsets(&consumer, &wanted).map_err(|error| LagError::Offsets {
        group: group.into(),
        error,
    })?;
    let mut lag = 0;
    for &partition in &partitions {
        let (low, high) = consumer
            .fetch_watermarks(topic, partition, TIMEOUT)
            .map_err(|error| LagError::Offsets {
                group: group.into(),
                error,
            })?;
        let from = match committed
            .find_partition(topic, partition)
            .map(|p| p.offset())
        {
            Some(Offset::Offset(offset)) => offset,
            _ if count_uncommitted => low,
            _ => high,
        };
        lag += (high - from).max(0);
    }
    let members = consumer
        .fetch_group_list(Some(group), TIMEOUT)
        .map(|list| {
            list.groups()
                .iter()
                .filter(|g| g.name() == group)
                .map(|g| g.members().len())
                .sum::<usize>()
        })
        .unwrap_or(0);
    Ok(Observation {
        lag,
        partitions: partitions.len() as i32,
        members: members as i32,
    })
}

/// Consumer groups examined at most per reading (a fleet with thousands of shared subscription
/// groups must not make each reconcile open thousands of consumers).
pub const MAX_GROUPS_READ: usize = 64;

/// Lag summed over the consumer groups whose id starts with `prefix` (an MqttBridge's shared
/// subscriptions), on `topics`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GroupsLag {
    pub lag: i64,
    /// Groups with the prefix, and how many of them were read.
    pub groups: usize,
    pub read: usize,
    pub members: i32,
}

/// Blocking: call from `spawn_blocking`.
pub fn groups_lag(
    kafka: &KafkaAccess,
    prefix: &str,
    topics: &[String],
) -> Result<GroupsLag, LagError> {
    let unreachable = |error| LagError::Unreachable {
        bootstrap: kafka.bootstrap.clone(),
        error,
    };
    let lister = kafka
        .clients()
        .offsets_reader(None)
        .map_err(|error| unreachable(error.into_kafka_error()))?;
    let list = lister
        .fetch_group_list(None, TIMEOUT)
        .map_err(unreachable)?;
    let mut groups: Vec<String> = list
        .groups()
        .iter()
        .map(|g| g.name().to_string())
        .filter(|name| name.starts_with(prefix))
        .collect();
    groups.sort();
    let mut total = GroupsLag {
        groups: groups.len(),
        ..GroupsLag::default()
    };
    for group in groups.iter().take(MAX_GROUPS_READ) {
        let mut members = 0;
        for topic in topics {
            match observe_counting(kafka, topic, group, false) {
                Ok(seen) => {
                    total.lag += seen.lag;
                    members = members.max(seen.members);
                }
                // A route's topic not created yet has no lag.
                Err(LagError::NoTopic(_)) => {}
                Err(error) => return Err(error),
            }
        }
        total.members += members;
        total.read += 1;
    }
    Ok(total)
}

/// The group's committed offsets. A group Kafka has not seen yet gets a coordinator on first
/// asking, so "not coordinator"-kind answers are retried briefly.
fn committed_offsets(
    consumer: &Reader,
    wanted: &TopicPartitionList,
) -> Result<TopicPartitionList, rdkafka::error::KafkaError> {
    use rdkafka::types::RDKafkaErrorCode::{
        CoordinatorLoadInProgress, CoordinatorNotAvailable, NotCoordinator,
    };
    let mut attempt = 0;
    loop {
        match consumer.committed_offsets(wanted.clone(), TIMEOUT) {
            Err(error)
                if attempt < 20
                    && matches!(
                        error.rdkafka_error_code(),
                        Some(NotCoordinator | CoordinatorLoadInProgress | CoordinatorNotAvailable)
                    ) =>
            {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100 * attempt.min(5)));
            }
            result => return result,
        }
    }
}
