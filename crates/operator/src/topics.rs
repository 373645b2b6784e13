//! Kafka topics a resource needs: created when missing, partitions only ever raised (and never
//! those of a compacted table), the configs the spec names set without touching the others;
//! deleted only under `deletionPolicy: Delete`, and only those the resource created.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::admin::{
    AdminOptions, AlterConfig, ConfigEntry, ConfigSource, NewPartitions, NewTopic,
    ResourceSpecifier, TopicReplication,
};
use strait_kafka::Admin;

use crate::kafka_access::KafkaAccess;
use crate::status::{Check, TOPICS_READY};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};

const TIMEOUT: Duration = Duration::from_secs(10);

/// What one topic should look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    pub replication_factor: i32,
    pub config: BTreeMap<String, String>,
    /// Whether partitions are raised when the spec asks for more. False for compacted tables
    /// read by key: a key hashes to another partition once the count changes, so the records
    /// already stored under it would be invisible.
    pub may_grow: bool,
}

impl TopicSpec {
    /// Whether `config` makes this a compacted topic (`cleanup.policy` includes `compact`).
    pub fn compacted(config: &BTreeMap<String, String>) -> bool {
        config
            .get("cleanup.policy")
            .is_some_and(|policy| policy.split(',').any(|p| p.trim() == "compact"))
    }
}

/// What [`ensure`] found and did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ensured {
    /// Partitions of each topic, in the order of the specs.
    pub partitions: Vec<(String, i32)>,
    /// Topics that did not exist and that this call created (not those another client created
    /// at the same moment).
    pub created: Vec<String>,
    /// Topics whose partition count differs from the spec and was left alone, one sentence each.
    pub partitions_kept: Vec<String>,
}

impl Ensured {
    /// `TopicsReady` with `summary`: true, and naming any partition count left alone (the
    /// resource works with the partitions its tables have, so that is no failure).
    pub fn check(&self, summary: String) -> Check {
        match self.partitions_kept.is_empty() {
            true => Check::ok(TOPICS_READY, "TopicsExist", summary),
            false => Check::ok(
                TOPICS_READY,
                "PartitionsKept",
                format!("{summary}; {}", self.partitions_kept.join("; ")),
            ),
        }
    }
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

/// Admin clients kept at most: one per cluster and credentials in use, and credentials rotate.
const MAX_ADMINS: usize = 16;

/// One admin client per Kafka cluster, shared by every reconcile. A librdkafka client owns
/// threads, sockets and buffers; one per reconcile made them most of the operator's memory.
/// Past `MAX_ADMINS` (rotated passwords and certificates make new keys), the least recently
/// used is dropped.
#[derive(Default)]
pub struct Admins(Mutex<HashMap<String, (Arc<Admin>, std::time::Instant)>>);

impl Admins {
    /// The client for these settings, made on first use. librdkafka reconnects by itself, so a
    /// cluster that was down needs no new client.
    pub fn get(&self, kafka: &KafkaAccess) -> Result<Arc<Admin>, TopicError> {
        let key = kafka.cache_key();
        let mut admins = self.0.lock().expect("not poisoned");
        if let Some((admin, used)) = admins.get_mut(&key) {
            *used = std::time::Instant::now();
            return Ok(admin.clone());
        }
        while admins.len() >= MAX_ADMINS {
            let oldest = admins
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(key, _)| key.clone())
                .expect("not empty");
            admins.remove(&oldest);
        }
        let admin: Arc<Admin> = Arc::new(
            kafka
                .clients()
                .admin_with(&[
                    ("socket.timeout.ms", "10000"),
                    // Asking for one topic's metadata must not create it.
                    ("allow.auto.create.topics", "false"),
                ])
                .map_err(|error| TopicError::Unreachable {
                    bootstrap: kafka.bootstrap.clone(),
                    error: error.into_kafka_error(),
                })?,
        );
        admins.insert(key, (admin.clone(), std::time::Instant::now()));
        Ok(admin)
    }
}

/// Makes the topics match `specs`: creates the missing ones, raises partitions where allowed and
/// sets the named configs.
pub async fn ensure(
    admin: &Admin,
    bootstrap: &str,
    specs: &[TopicSpec],
) -> Result<Ensured, TopicError> {
    let unreachable = |error| TopicError::Unreachable {
        bootstrap: bootstrap.into(),
        error,
    };
    let names: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
    let existing = partitions(admin, bootstrap, &names).await?;
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let mut ensured = Ensured::default();
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
                Ok(topic) => ensured.created.push(topic),
                // Another client made it between our look and our create: not ours.
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(TopicError::Topic {
                        topic,
                        error: code.to_string(),
                    });
                }
            }
        }
    }
    let mut grow = Vec::new();
    for spec in specs {
        let Some(&now) = existing.get(&spec.name) else {
            continue;
        };
        if spec.may_grow && now < spec.partitions {
            grow.push(NewPartitions::new(&spec.name, spec.partitions as usize));
        } else if !spec.may_grow && now != spec.partitions {
            ensured.partitions_kept.push(format!(
                "{} has {now} partitions where {} are asked: a compacted table's partitions are \
                 never changed (its keys would hash to other partitions)",
                spec.name, spec.partitions
            ));
        }
    }
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
    let configured: Vec<&TopicSpec> = specs
        .iter()
        .filter(|s| existing.contains_key(&s.name) && !s.config.is_empty())
        .collect();
    set_configs(admin, bootstrap, &configured).await?;
    let now = partitions(admin, bootstrap, &names).await?;
    ensured.partitions = specs
        .iter()
        .map(|s| (s.name.clone(), now.get(&s.name).copied().unwrap_or(0)))
        .collect();
    Ok(ensured)
}

/// Sets the configs `specs` name on existing topics, keeping every other setting a topic has.
///
/// librdkafka's incremental AlterConfigs is not in rdkafka 0.39, and the plain AlterConfigs
/// replaces a topic's whole config (every key not sent falls back to the broker default). So:
/// read the topic's own settings (source `DynamicTopic`), and only when a named key differs,
/// send those settings with the named keys over them. A setting changed by someone else between
/// the read and the write would be lost; the window is one round trip.
async fn set_configs(
    admin: &Admin,
    bootstrap: &str,
    specs: &[&TopicSpec],
) -> Result<(), TopicError> {
    if specs.is_empty() {
        return Ok(());
    }
    let unreachable = |error| TopicError::Unreachable {
        bootstrap: bootstrap.into(),
        error,
    };
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    let mut wanted: Vec<(&str, BTreeMap<String, String>)> = Vec::new();
    for spec in specs {
        // One topic per request, so an error names its topic.
        let current = admin
            .describe_configs([&ResourceSpecifier::Topic(&spec.name)], &options)
            .await
            .map_err(unreachable)?
            .pop()
            .ok_or_else(|| TopicError::Topic {
                topic: spec.name.clone(),
                error: "reading configs: no answer".into(),
            })?
            .map_err(|code| TopicError::Topic {
                topic: spec.name.clone(),
                error: format!("reading configs: {code}"),
            })?;
        if let Some(config) = config_to_send(&spec.name, &current.entries, &spec.config)? {
            wanted.push((&spec.name, config));
        }
    }
    if wanted.is_empty() {
        return Ok(());
    }
    let alters: Vec<AlterConfig> = wanted
        .iter()
        .map(|(name, config)| {
            config.iter().fold(
                AlterConfig::new(ResourceSpecifier::Topic(name)),
                |alter, (k, v)| alter.set(k, v),
            )
        })
        .collect();
    for result in admin
        .alter_configs(&alters, &options)
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
    Ok(())
}

/// The whole config to send for `topic` so that it has `named` and keeps every other setting of
/// its own; `None` when it already has `named`.
fn config_to_send(
    topic: &str,
    current: &[ConfigEntry],
    named: &BTreeMap<String, String>,
) -> Result<Option<BTreeMap<String, String>>, TopicError> {
    let differs = named.iter().any(|(key, value)| {
        !current
            .iter()
            .any(|entry| entry.name == *key && entry.value.as_ref() == Some(value))
    });
    if !differs {
        return Ok(None);
    }
    let mut config = BTreeMap::new();
    for entry in current
        .iter()
        .filter(|e| e.source == ConfigSource::DynamicTopic && !named.contains_key(&e.name))
    {
        // A sensitive setting reads back without its value: it cannot be sent again.
        let Some(value) = &entry.value else {
            return Err(TopicError::Topic {
                topic: topic.into(),
                error: format!(
                    "setting configs would reset its sensitive setting {}: name it in the \
                     spec's topic config",
                    entry.name
                ),
            });
        };
        config.insert(entry.name.clone(), value.clone());
    }
    config.extend(named.clone());
    Ok(Some(config))
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, value: &str, source: ConfigSource) -> ConfigEntry {
        ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            is_default: source == ConfigSource::Default,
            source,
            is_read_only: false,
            is_sensitive: false,
        }
    }

    #[test]
    fn only_a_differing_named_key_sends_and_the_topic_keeps_its_own_settings() {
        let current = [
            entry("retention.ms", "3600000", ConfigSource::DynamicTopic),
            entry("retention.bytes", "1048576", ConfigSource::DynamicTopic),
            entry("cleanup.policy", "delete", ConfigSource::Default),
            entry("segment.ms", "604800000", ConfigSource::StaticBroker),
        ];
        let named = BTreeMap::from([("retention.ms".to_string(), "3600000".to_string())]);
        assert_eq!(config_to_send("t", &current, &named).unwrap(), None);

        let named = BTreeMap::from([("retention.ms".to_string(), "7200000".to_string())]);
        let sent = config_to_send("t", &current, &named).unwrap().unwrap();
        assert_eq!(
            sent,
            BTreeMap::from([
                ("retention.bytes".to_string(), "1048576".to_string()),
                ("retention.ms".to_string(), "7200000".to_string()),
            ]),
            "the topic's own retention.bytes is sent again; broker settings are not pinned"
        );
    }

    #[test]
    fn a_sensitive_setting_that_would_be_reset_is_an_error_naming_it() {
        let mut secret = entry("some.secret", "x", ConfigSource::DynamicTopic);
        secret.value = None;
        let named = BTreeMap::from([("retention.ms".to_string(), "1".to_string())]);
        let error = config_to_send("t", &[secret], &named).unwrap_err();
        assert!(error.to_string().contains("some.secret"), "{error}");
    }

    #[test]
    fn compacted_reads_the_cleanup_policy() {
        let policy = |p: &str| BTreeMap::from([("cleanup.policy".to_string(), p.to_string())]);
        assert!(TopicSpec::compacted(&policy("compact")));
        assert!(TopicSpec::compacted(&policy("delete, compact")));
        assert!(!TopicSpec::compacted(&policy("delete")));
        assert!(!TopicSpec::compacted(&BTreeMap::new()));
    }
}
