//! The messages topics the dispatcher reads (static ones from the start, those of `${params}`
//! routes as they appear in Kafka) and topic administration: creating missing topics, checking
//! that the retained and sessions topics are compacted, reading partition counts and offsets.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use crate::UpstreamError;
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use strait_config::mqtt_kafka::KafkaConfig;
use strait_kafka::{KafkaClients, Reader};
use strait_runtime::Context as _;

use super::lock_order::{Level, OrderedMutex, OrderedRwLock};
use super::{KafkaUpstream, METADATA_TIMEOUT, PARTITIONS_SCAN, ROUTED_TOPICS_SCAN};

/// One messages topic the dispatcher reads.
pub struct MessagesTopic {
    pub name: String,
    /// Per partition: every record before this offset has been handed to the sessions it
    /// matches.
    pub(crate) positions: Vec<AtomicI64>,
}

impl MessagesTopic {
    /// Every record of `partition` up to `offset` has been handed over.
    pub(crate) fn advance(&self, partition: i32, offset: i64) {
        if let Some(position) = self.positions.get(partition as usize) {
            position.store(offset + 1, Ordering::Release);
        }
    }
}

/// The messages topics subscribers are served from, with indices that never change: the
/// default and static routes' topics from the start, topics of `${params}` routes as they
/// appear in Kafka. Partitions added to a topic later are read too (see [`Self::grow`]).
pub struct MessagesTopics {
    topics: OrderedRwLock<Vec<Arc<MessagesTopic>>>,
    /// New partitions found in Kafka and not read yet: topic index -> the start offsets of
    /// the partitions after those read. Applied by the dispatcher, the only writer of
    /// positions, so no position it advances is lost.
    grown: OrderedMutex<HashMap<usize, Vec<i64>>>,
    /// Bumped when a topic is added or found grown: the dispatcher looks at one number per
    /// poll.
    generation: AtomicU64,
}

impl Default for MessagesTopics {
    fn default() -> Self {
        Self {
            topics: OrderedRwLock::new(Level::Leaf, "messages topics", Vec::new()),
            grown: OrderedMutex::new(Level::Leaf, "grown topics", HashMap::new()),
            generation: AtomicU64::new(0),
        }
    }
}

impl MessagesTopics {
    pub fn all(&self) -> Vec<Arc<MessagesTopic>> {
        self.topics.read().clone()
    }

    pub fn names(&self) -> Vec<String> {
        let topics = self.topics.read();
        topics.iter().map(|t| t.name.clone()).collect()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        let topics = self.topics.read();
        topics.iter().position(|t| t.name == name)
    }

    /// The topic named `name` and its index.
    pub(crate) fn find(&self, name: &str) -> Option<(usize, Arc<MessagesTopic>)> {
        let topics = self.topics.read();
        let t = topics.iter().position(|t| t.name == name)?;
        Some((t, topics[t].clone()))
    }

    /// The name of topic `t` (indices handed out are never removed).
    pub fn name(&self, t: usize) -> String {
        self.topics.read()[t].name.clone()
    }

    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// Adds a topic read from `starts` (per partition), unless it is there already.
    pub(crate) fn add(&self, name: &str, starts: &[i64]) -> usize {
        let mut topics = self.topics.write();
        if let Some(existing) = topics.iter().position(|t| t.name == name) {
            return existing;
        }
        topics.push(Arc::new(MessagesTopic {
            name: name.to_string(),
            positions: starts.iter().map(|o| AtomicI64::new(*o)).collect(),
        }));
        self.generation.fetch_add(1, Ordering::AcqRel);
        topics.len() - 1
    }

    /// Kafka has more partitions of topic `t` than are read: `starts` holds the start offsets
    /// of the partitions from `first` on. The dispatcher picks them up at its next poll.
    pub(crate) fn grow(&self, t: usize, first: usize, starts: Vec<i64>) {
        if first == self.topics.read()[t].positions.len() && !starts.is_empty() {
            self.grown.lock().insert(t, starts);
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// Extends the topics found grown with their new partitions (called by the dispatcher).
    pub(crate) fn apply_growth(&self) {
        let grown = std::mem::take(&mut *self.grown.lock());
        if grown.is_empty() {
            return;
        }
        let mut topics = self.topics.write();
        for (t, starts) in grown {
            let old = &topics[t];
            tracing::info!(
                topic = old.name,
                from = old.positions.len(),
                to = old.positions.len() + starts.len(),
                "a messages topic has new partitions; reading them"
            );
            let positions = old
                .positions
                .iter()
                .map(|p| AtomicI64::new(p.load(Ordering::Acquire)))
                .chain(starts.into_iter().map(AtomicI64::new))
                .collect();
            topics[t] = Arc::new(MessagesTopic {
                name: old.name.clone(),
                positions,
            });
        }
    }
}

/// Where reading a topic the dispatcher starts on begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// Its current end: what is published from now on.
    End,
    /// Its beginning: a topic that appeared after this process started holds only records
    /// published since.
    Beginning,
}

/// The topics in Kafka and their partition counts, from one metadata request.
pub(crate) type ClusterTopics = HashMap<String, usize>;

impl KafkaUpstream {
    /// Every topic in the cluster with its partition count.
    pub(crate) async fn cluster_topics(&self) -> Result<ClusterTopics, UpstreamError> {
        let reader = self.watermarks.clone();
        let topics = tokio::task::spawn_blocking(move || {
            let metadata = reader.fetch_metadata(None, METADATA_TIMEOUT)?;
            Ok::<_, KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .map(|t| (t.name().to_string(), t.partitions().len()))
                    .collect::<ClusterTopics>(),
            )
        })
        .await?
        .context("reading the Kafka topics and their partition counts")?;
        Ok(topics)
    }

    /// Adds every topic in `cluster` that a `${params}` route renders and the dispatcher does
    /// not read yet.
    pub(crate) async fn discover_routed_topics(
        &self,
        cluster: &ClusterTopics,
        from: From,
    ) -> Result<(), UpstreamError> {
        for name in cluster.keys() {
            if self.routing.is_routed_topic(name) && self.topics.index(name).is_none() {
                self.read_topic(name, from).await?;
            }
        }
        Ok(())
    }

    /// Reads the cluster's metadata every few seconds and follows it: new topics of
    /// `${params}` routes (other replicas' clients publish to them too) and partitions added
    /// to the messages, retained or sessions topics after start. One whole-cluster request
    /// serves both: it is the costly part on a large cluster.
    pub(crate) async fn watch_metadata(self: Arc<Self>) {
        let routed = self.routing.has_param_routes();
        // Routed topics are looked for more often: a subscriber waits for them.
        let mut tick = tokio::time::interval(if routed {
            ROUTED_TOPICS_SCAN
        } else {
            PARTITIONS_SCAN
        });
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The first tick is immediate; start-up has just read the metadata.
        tick.tick().await;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            let cluster = match self.cluster_topics().await {
                Ok(cluster) => cluster,
                Err(error) => {
                    tracing::debug!(
                        error = crate::error_chain(&error),
                        "looking for routed topics and new partitions"
                    );
                    continue;
                }
            };
            if routed
                && let Err(error) = self.discover_routed_topics(&cluster, From::Beginning).await
            {
                tracing::debug!(
                    error = crate::error_chain(&error),
                    "looking for routed topics"
                );
            }
            if let Err(error) = self.follow_partitions(&cluster).await {
                tracing::debug!(
                    error = crate::error_chain(&error),
                    "looking for new partitions"
                );
            }
        }
    }

    /// Reads the partitions `cluster` has beyond those read. Records a client publishes are
    /// placed by the partition count the dispatcher reads, so they follow as soon as it does.
    async fn follow_partitions(&self, cluster: &ClusterTopics) -> Result<(), UpstreamError> {
        for table in [&self.retained, &self.sessions] {
            if let Some(count) = cluster.get(&table.topic) {
                table.grow(*count as i32)?;
            }
        }
        for (t, topic) in self.topics.all().iter().enumerate() {
            let read = topic.positions.len();
            let Some(&count) = cluster.get(&topic.name).filter(|c| **c > read) else {
                continue;
            };
            // New partitions hold only records written since they were made: from their start.
            let (reader, name) = (self.watermarks.clone(), topic.name.clone());
            let starts = tokio::task::spawn_blocking(move || {
                (read..count)
                    .map(|p| {
                        Ok(reader
                            .fetch_watermarks(&name, p as i32, METADATA_TIMEOUT)?
                            .0)
                    })
                    .collect::<Result<Vec<i64>, KafkaError>>()
            })
            .await?
            .with_context(|| format!("reading the new partitions of {}", topic.name))?;
            self.topics.grow(t, read, starts);
        }
        Ok(())
    }

    /// Makes the dispatcher read `topic` (it picks new topics up within a poll).
    pub(crate) async fn read_topic(&self, topic: &str, from: From) -> Result<(), UpstreamError> {
        let starts = read_partitions(&self.watermarks, topic, from).await?;
        let t = self.topics.add(topic, &starts);
        tracing::info!(topic, index = t, "reading a routed messages topic");
        Ok(())
    }
}

/// Creates the `messages` topics and the `compacted` ones (`newTopics` partitions and
/// replication) unless they exist.
pub(crate) async fn create_topics(
    clients: &KafkaClients,
    config: &KafkaConfig,
    messages: &[String],
    compacted: &[&String],
) -> Result<(), UpstreamError> {
    let admin = clients.admin()?;
    let partitions = config.new_topics.partitions;
    let replication = || TopicReplication::Fixed(config.new_topics.replication_factor);
    let mut new = Vec::new();
    for topic in messages {
        new.push(NewTopic::new(topic, partitions, replication()));
    }
    for topic in compacted {
        new.push(NewTopic::new(topic, partitions, replication()).set("cleanup.policy", "compact"));
    }
    let created = strait_kafka::create_topics(&admin, &new, METADATA_TIMEOUT)
        .await
        .context("creating the MQTT topics in Kafka")?;
    for topic in created {
        tracing::info!(topic, "created Kafka topic");
    }
    Ok(())
}

/// The partitions of `topic` and, per partition, the offset to start reading at. A topic
/// created a moment ago may have no leader yet: retried for a while.
pub(crate) async fn read_partitions(
    reader: &Arc<Reader>,
    topic: &str,
    from: From,
) -> Result<Vec<i64>, UpstreamError> {
    let mut attempts = 0;
    loop {
        attempts += 1;
        let (reader, name) = (reader.clone(), topic.to_string());
        let read = tokio::task::spawn_blocking(move || {
            let metadata = reader.fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
            let count = metadata
                .topics()
                .first()
                .map(|t| t.partitions().len() as i32)
                .unwrap_or(0);
            (0..count)
                .map(|p| {
                    let (low, high) = reader.fetch_watermarks(&name, p, METADATA_TIMEOUT)?;
                    Ok(if from == From::End { high } else { low })
                })
                .collect::<Result<Vec<i64>, KafkaError>>()
        })
        .await?;
        match read {
            Ok(starts) if !starts.is_empty() => return Ok(starts),
            Ok(_) if attempts >= 40 => {
                return Err(UpstreamError::Topic(format!(
                    "Kafka topic {topic} has no partitions (does it exist?)"
                )));
            }
            Err(error) if attempts >= 40 => {
                return Err(error)
                    .with_context(|| format!("reading metadata of {topic}"))
                    .map_err(Into::into);
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Creates missing topics (when allowed) and refuses compacted topics that are not.
pub(crate) async fn ensure_topics(
    clients: &KafkaClients,
    config: &KafkaConfig,
    messages: &[String],
) -> Result<(), UpstreamError> {
    let compacted = [&config.topics.retained, &config.topics.sessions];
    if config.create_topics {
        create_topics(clients, config, messages, &compacted).await?;
    }
    let admin = clients.admin()?;
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    for topic in compacted {
        // A topic created a moment ago may not be described yet: retry briefly.
        let mut attempts = 0;
        let policy = loop {
            attempts += 1;
            let described = admin
                .describe_configs(&[ResourceSpecifier::Topic(topic.as_str())], &options)
                .await
                .context("describing the retained and sessions topics")?;
            let policy = match described.into_iter().next() {
                Some(Ok(resource)) => resource.get("cleanup.policy").and_then(|e| e.value.clone()),
                Some(Err(error)) if attempts >= 20 => {
                    return Err(UpstreamError::Topic(format!(
                        "Kafka topic {topic} cannot be described ({error}): is it missing? Set \
                         kafka.createTopics: true or create it with cleanup.policy=compact"
                    )));
                }
                _ => None,
            };
            match policy {
                Some(policy) if !policy.is_empty() => break policy,
                _ if attempts >= 20 => break String::new(),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if !policy.split(',').any(|p| p.trim() == "compact") {
            return Err(UpstreamError::Topic(format!(
                "Kafka topic {topic} has cleanup.policy={policy}, but the retained and sessions topics must \
                 be compacted (cleanup.policy=compact): otherwise retained messages and sessions are deleted \
                 after the retention time"
            )));
        }
    }
    Ok(())
}
