//! Kafka topics a resource needs: created when missing, partitions only ever raised, configs set;
//! deleted only under `deletionPolicy: Delete`.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{
    AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier,
    TopicReplication,
};
use rdkafka::client::DefaultClientContext;

use crate::kafka_access::KafkaAccess;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What one topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("Kafka at {bootstrap} is unreachable: {error}")]
    Unreachable {
        bootstrap: String,
        error: KafkaError,
    },
    #[error("topic {topic:?}: {error}")]
    Topic { topic: String, error: String },
}

impl TopicError {
    /// CamelCase reason for conditions.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Unreachable { .. } => "KafkaUnreachable",
            Self::Topic { .. } => "TopicError",
        }
    }
}

type Admin = AdminClient<DefaultClientContext>;

/// One admin client per Kafka cluster, shared by every reconcile. A librdkafka client owns
/// threads, sockets and buffers; one per reconcile made them most of the operator's memory.
#[derive(Default)]
pub struct Admins(Mutex<HashMap<String, Arc<Admin>>>);

impl Admins {
    /// The client for these settings, made on first use. librdkafka reconnects by itself, so a
    /// cluster that was down needs no new client.
    pub fn get(&self, kafka: &KafkaAccess) -> Result<Arc<Admin>, TopicError> {
        let key = kafka.cache_key();
        let mut admins = self.0.lock().expect("not poisoned");
        if let Some(admin) = admins.get(&key) {
            return Ok(admin.clone());
        }
        let admin: Arc<Admin> = Arc::new(
            kafka
                .client_config()
                .set("socket.timeout.ms", "10000")
                // Asking for one topic's metadata must not create it.
                .set("allow.auto.create.topics", "false")
                .create()
                .map_err(|error| TopicError::Unreachable {
                    bootstrap: kafka.bootstrap.clone(),
                    error,
                })?,
        );
        admins.insert(key, admin.clone());
        Ok(admin)
    }
}

/// Partitions of each topic after it was made to match `specs`.
pub async fn ensure(
    admin: &Admin,
    bootstrap: &str,
    specs: &[TopicSpec],
) -> Result<Vec<(String, i32)>, TopicError> {
    let unreachable = |error| TopicError::Unreachable {
        bootstrap: bootstrap.into(),
        error,
    };
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let existing = partitions(admin, bootstrap, &names).await?;
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let missing: Vec<NewTopic> = specs
        .iter()
        .filter(|s| !existing.contains_key(&s.name))
        .map(|s| {
            s.config.iter().fold(
                NewTopic::new(
                    &s.name,
                    s.partitions,
                    TopicReplication::Fixed(s.replication_factor),
                ),
                |topic, (k, v)| topic.set(k, v),
            )
        })
        .collect();
    if !missing.is_empty() {
        for result in admin
            .create_topics(&missing, &options)
            .await
            .map_err(unreachable)?
        {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(TopicError::Topic {
                        topic,
                        error: code.to_string(),
                    });
                }
            }
        }
    }
    let grow: Vec<NewPartitions> = specs
        .iter()
        .filter(|s| existing.get(&s.name).is_some_and(|&n| n < s.partitions))
        .map(|s| NewPartitions::new(&s.name, s.partitions as usize))
        .collect();
    if !grow.is_empty() {
        for result in admin
            .create_partitions(&grow, &options)
            .await
            .map_err(unreachable)?
        {
            if let Err((topic, code)) = result {
                return Err(TopicError::Topic {
                    topic,
                    error: format!("raising partitions: {code}"),
                });
            }
        }
    }
    let configs: Vec<AlterConfig> = specs
        .iter()
        .filter(|s| existing.contains_key(&s.name) && !s.config.is_empty())
        .map(|s| {
            s.config.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(&s.name)),
                |alter, (k, v)| alter.set(k, v),
            )
        })
        .collect();
    if !configs.is_empty() {
        for result in admin
            .alter_configs(&configs, &options)
            .await
            .map_err(unreachable)?
        {
            if let Err((resource, code)) = result {
                return Err(TopicError::Topic {
                    topic: format!("{resource:?}"),
                    error: format!("setting configs: {code}"),
                });
            }
        }
    }
    let now = partitions(admin, bootstrap, &names).await?;
    Ok(specs
        .iter()
        .map(|s| (s.name.clone(), now.get(&s.name).copied().unwrap_or(0)))
        .collect())
}

/// Deletes `topics` (missing ones are fine).
pub async fn delete(admin: &Admin, bootstrap: &str, topics: &[String]) -> Result<(), TopicError> {
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let results = admin
        .delete_topics(&names, &options)
        .await
        .map_err(|error| TopicError::Unreachable {
            bootstrap: bootstrap.into(),
            error,
        })?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::UnknownTopicOrPartition)) => {}
            Err((topic, code)) => {
                return Err(TopicError::Topic {
                    topic,
                    error: format!("deleting: {code}"),
                });
            }
        }
    }
    Ok(())
}

/// Partitions of those of `topics` that exist. Asks for each topic alone: the whole cluster's
/// metadata grows with every resource the operator manages.
async fn partitions(
    admin: &Admin,
    bootstrap: &str,
    topics: &[&str],
) -> Result<BTreeMap<String, i32>, TopicError> {
    // Metadata is a blocking call in librdkafka.
    tokio::task::block_in_place(|| {
        let mut found = BTreeMap::new();
        for topic in topics {
            let metadata = admin
                .inner()
                .fetch_metadata(Some(topic), TIMEOUT)
                .map_err(|error| TopicError::Unreachable {
                    bootstrap: bootstrap.into(),
                    error,
                })?;
            found.extend(
                metadata
                    .topics()
                    .iter()
                    .filter(|t| t.error().is_none() && !t.partitions().is_empty())
                    .map(|t| (t.name().to_string(), t.partitions().len() as i32)),
            );
        }
        Ok(found)
    })
}
