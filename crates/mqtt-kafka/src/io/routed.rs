//! Topics of `${params}` routes, made as clients first publish to them: each name checked
//! against Kafka's rules and the route's `topicPattern` (`core::routing`), at most
//! `maxRoutedTopics` created per process, each created once however many sessions publish to
//! it at the same moment, and remembered so later PUBLISHes never ask Kafka.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::admin::{NewTopic, TopicReplication};
use strait_mqtt_codec::ReasonCode;
use strait_runtime::Context as _;
use tokio::sync::OnceCell;

use super::lock_order::{Level, OrderedMutex};
use super::topics::From;
use super::{KafkaUpstream, METADATA_TIMEOUT};
use crate::UpstreamError;
use crate::core::routing::{RouteRefusal, RoutedTopic};

/// Why a PUBLISH to the topic of a `${params}` route is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoutedRefusal {
    #[error(transparent)]
    Name(#[from] RouteRefusal),
    #[error(
        "route {route:?}: this s-proxy has created {limit} routed topics (kafka.maxRoutedTopics), \
         {name:?} would be one more"
    )]
    Limit {
        route: String,
        name: String,
        limit: u32,
    },
}

impl RoutedRefusal {
    /// The MQTT 5 reason code of the PUBACK or PUBREC.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            Self::Name(RouteRefusal::NotAllowed { .. }) => ReasonCode::NOT_AUTHORIZED,
            Self::Name(_) => ReasonCode::TOPIC_NAME_INVALID,
            Self::Limit { .. } => ReasonCode::QUOTA_EXCEEDED,
        }
    }

    /// The `kind` it is counted under in `strait_mqtt_relay_errors_total`.
    pub fn metric_kind(&self) -> &'static str {
        match self {
            Self::Name(RouteRefusal::NotAllowed { .. }) => "routed_topic_not_allowed",
            Self::Name(_) => "routed_topic_invalid",
            Self::Limit { .. } => "routed_topic_limit",
        }
    }
}

/// The routed topics this process knows to exist or is making.
pub(crate) struct RoutedTopics {
    state: OrderedMutex<Known>,
    /// The limit was reached and said so at `warn` (later refusals log at `debug`).
    limit_logged: AtomicBool,
}

#[derive(Default)]
struct Known {
    /// Topic → set once it exists and the dispatcher reads it. Concurrent first PUBLISHes wait
    /// on the same cell, so the topic is created once.
    topics: HashMap<String, Arc<OnceCell<()>>>,
    /// Topics this process set out to create (counted against `maxRoutedTopics`).
    created: u32,
}

impl Default for RoutedTopics {
    fn default() -> Self {
        Self {
            state: OrderedMutex::new(Level::Leaf, "routed topics", Known::default()),
            limit_logged: AtomicBool::new(false),
        }
    }
}

impl KafkaUpstream {
    /// Before a PUBLISH to MQTT topic `topic`: when a `${params}` route takes it, checks the
    /// topic name it renders and makes sure the topic exists (creating it with the route's
    /// settings when `createRoutedTopics` is on) and the dispatcher reads it from its start, so
    /// the record reaches this process's subscribers. A Kafka failure is logged and the
    /// produce, failing in turn, tells the client.
    pub async fn ensure_routed(&self, topic: &str) -> Result<(), RoutedRefusal> {
        let Some(routed) = self.routing.routed_topic(topic) else {
            return Ok(());
        };
        let routed = routed?;
        if !self.config.creates_routed_topics() {
            if self.topics.index(&routed.name).is_none() {
                self.read_routed(&routed.name).await;
            }
            return Ok(());
        }
        let cell = self.routed_cell(&routed)?;
        let made = cell
            .get_or_try_init(|| async {
                self.create_routed(&routed).await?;
                self.read_topic(&routed.name, From::Beginning).await
            })
            .await;
        if let Err(error) = made {
            tracing::warn!(
                error = crate::error_chain(&error),
                topic = routed.name,
                "cannot create or read a routed topic"
            );
        }
        Ok(())
    }

    /// The cell of a routed topic, counting a new one against `maxRoutedTopics`.
    fn routed_cell(&self, routed: &RoutedTopic) -> Result<Arc<OnceCell<()>>, RoutedRefusal> {
        let known = |known: &Known| known.topics.get(&routed.name).cloned();
        if let Some(cell) = known(&self.routed.state.lock()) {
            return Ok(cell);
        }
        // Looked up without holding the routed topics' lock (both are leaves of the lock order).
        let exists = self.topics.index(&routed.name).is_some();
        let mut state = self.routed.state.lock();
        if let Some(cell) = known(&state) {
            return Ok(cell);
        }
        if exists {
            // Found in Kafka (another replica's clients made it): not ours to count.
            let cell = Arc::new(OnceCell::new_with(Some(())));
            state.topics.insert(routed.name.clone(), cell.clone());
            return Ok(cell);
        }
        let limit = self.config.max_routed_topics;
        if state.created >= limit {
            let refusal = RoutedRefusal::Limit {
                route: self.config.routes[routed.route].topic.clone(),
                name: routed.name.clone(),
                limit,
            };
            if !self.routed.limit_logged.swap(true, Ordering::Relaxed) {
                tracing::warn!("{refusal}: refusing PUBLISHes to new routed topics");
            } else {
                tracing::debug!("{refusal}");
            }
            return Err(refusal);
        }
        state.created += 1;
        let cell = Arc::new(OnceCell::new());
        state.topics.insert(routed.name.clone(), cell.clone());
        Ok(cell)
    }

    /// Creates a routed topic with its route's partitions and topic config (`newTopics` for the
    /// rest), unless it exists.
    async fn create_routed(&self, routed: &RoutedTopic) -> Result<(), UpstreamError> {
        let route = &self.config.routes[routed.route];
        let partitions = route
            .partitions
            .unwrap_or(self.config.new_topics.partitions);
        let replication = TopicReplication::Fixed(self.config.new_topics.replication_factor);
        let mut new = NewTopic::new(&routed.name, partitions, replication);
        for (key, value) in &route.topic_config {
            new = new.set(key, value);
        }
        let admin = self.clients.admin()?;
        let created = strait_kafka::create_topics(&admin, &[new], METADATA_TIMEOUT)
            .await
            .with_context(|| format!("creating routed topic {}", routed.name))?;
        if !created.is_empty() {
            tracing::info!(
                topic = routed.name,
                route = route.topic,
                partitions,
                "created a routed Kafka topic"
            );
        }
        Ok(())
    }

    /// Reads a routed topic that someone else creates.
    async fn read_routed(&self, name: &str) {
        if let Err(error) = self.read_topic(name, From::Beginning).await {
            // The produce fails in turn and says so to the client.
            tracing::warn!(
                error = crate::error_chain(&error),
                "cannot read routed topic {name}"
            );
        }
    }
}
