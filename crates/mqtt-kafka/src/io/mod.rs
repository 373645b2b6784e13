//! The Kafka upstream: s-proxy is the MQTT broker and Kafka holds everything (Zilla's
//! mqtt-kafka layout, shared/reference/zilla-wire.md §1).
//!
//! Per process, not per client: one producer for QoS ≥ 1 (acks=all, idempotent), one for QoS 0
//! (configurable acks), one fetch of every messages-topic partition (the dispatcher) fanned out
//! through a topic trie into bounded per-session inboxes, and two compacted tables kept in
//! memory by tailing the retained and sessions topics. A persistent session that reconnects
//! reads what it missed from its stored offsets with a short-lived catch-up reader.

mod dispatcher;
mod inbox;
mod lock_order;
pub mod metrics;
mod routed;
mod session;
mod shared;
mod table;
mod topics;
mod watchdog;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::UpstreamError;
use futures::FutureExt as _;
use rdkafka::consumer::Consumer;
use strait_config::mqtt_kafka::{Acks, KafkaConfig};
use strait_kafka::{KafkaClients, Linger, Producer, Reader};
use strait_runtime::Context as _;
use tokio_util::sync::CancellationToken;

pub use routed::RoutedRefusal;
pub use session::run;

use self::metrics::KafkaMetrics;

use self::inbox::Inbox;
use self::lock_order::{Level, OrderedMutex, OrderedRwLock};
use self::shared::{SharedGroup, SharedOffsets};
use self::table::{Table, TableEntry};
use self::topics::{From, MessagesTopics, ensure_topics, read_partitions};
use crate::core::ending::Ownership;
use crate::core::headers::Message;
use crate::core::lanes::{LIGHT_BELOW_PER_SEC, LoadGauge};
use crate::core::limits::Limit;
use crate::core::routing::{self, Routing};
use crate::core::trie::Trie;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a shared subscription's group commits what its members delivered.
const SHARED_COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How often the cluster's metadata is read for new topics of `${params}` routes and new
/// partitions, when there are such routes.
const ROUTED_TOPICS_SCAN: Duration = Duration::from_secs(2);
/// How often the cluster's metadata is read for new partitions, without `${params}` routes.
const PARTITIONS_SCAN: Duration = Duration::from_secs(5);

/// A record of a messages topic, as the dispatcher hands it to sessions.
#[derive(Debug)]
pub struct Delivery {
    /// Index into `KafkaUpstream::topics`.
    pub topic: usize,
    pub partition: i32,
    pub offset: i64,
    pub timestamp_ms: i64,
    pub message: Message,
    /// Read for a shared subscription (by its group consumer, not the dispatcher): not part of
    /// the session's delivery progress; the group commits its offset once it is delivered.
    pub shared: Option<Arc<SharedOffsets>>,
}

impl Delivery {
    /// A shared subscription's record was delivered (QoS 0 sent, QoS ≥ 1 acknowledged).
    fn delivered(&self) {
        if let Some(offsets) = &self.shared {
            offsets.done((self.topic, self.partition), self.offset);
        }
    }

    /// A shared subscription's record this member will not deliver: another member gets it.
    fn give_back(self: Arc<Self>) {
        if let Some(offsets) = self.shared.clone() {
            offsets.give_back(self);
        }
    }
}

/// A QoS 2 PUBLISH on its way to Kafka; awaited by its session and by a resend's.
type Qos2Write = futures::future::Shared<
    futures::future::BoxFuture<'static, Result<(), strait_mqtt_codec::ReasonCode>>,
>;

/// A locally connected session, for takeover.
struct Local {
    connection: String,
    connected_at_ms: i64,
    kick: tokio::sync::mpsc::Sender<()>,
}

/// Everything the sessions of one process share.
pub struct KafkaUpstream {
    pub config: KafkaConfig,
    /// This process, in session records.
    pub instance: String,
    pub routing: Routing,
    /// acks=all, idempotent: QoS 1 and 2, retained, sessions.
    pub producer: Producer,
    /// The same without a linger: QoS 1 and 2 while the load is light (`core::lanes`); none
    /// when the config sets `linger.ms`, which then holds for every record.
    pub quick: Option<Producer>,
    /// QoS ≥ 1 records produced, for the lane of the next ones.
    pub load: LoadGauge,
    /// QoS 0 with `qos0Acks`.
    pub qos0: Producer,
    /// Makes the readers (the dispatcher, shared groups, catch-up) and the admin clients.
    clients: KafkaClients,
    /// Messages topics subscribers are served from (the dispatcher reads all their partitions).
    pub topics: MessagesTopics,
    /// Topics of `${params}` routes known to exist or being created.
    routed: routed::RoutedTopics,
    /// A client that never fetches: end offsets.
    watermarks: Arc<Reader>,
    subscriptions: OrderedRwLock<Trie<Target>>,
    /// Shared subscriptions with members here: `$share/GROUP/FILTER` → members and the stop
    /// signal of its group consumer.
    shared: OrderedMutex<HashMap<Arc<str>, SharedGroup>>,
    inboxes: OrderedRwLock<HashMap<u64, Arc<Inbox>>>,
    pub retained: Arc<Table>,
    pub sessions: Arc<Table>,
    local: Arc<OrderedMutex<HashMap<String, Local>>>,
    /// Connections whose delayed will waits out its delay here, by client id: a newer
    /// connection's claim in the sessions topic, written on any replica, cancels the will for
    /// good (see [`Ownership`]), even once that connection has ended and deleted the record.
    delayed_wills: Arc<OrderedMutex<HashMap<String, Vec<Ownership>>>>,
    /// QoS 2 PUBLISHes being written, by (client id, packet id): they outlive the session
    /// that started them, so a resend on the next connection waits for their outcome.
    qos2_writes: OrderedMutex<HashMap<(String, u16), Qos2Write>>,
    /// End-offset lookups at once (see [`KafkaUpstream::end_offset`]).
    lookups: tokio::sync::Semaphore,
    /// Catch-up readers that may run at once (`limits.maxCatchUps`).
    catch_up_readers: Arc<tokio::sync::Semaphore>,
    /// Session setups per second (`limits.maxConnectRate`) and the pace's next turn.
    connect_pace: Option<strait_runtime::pace::Pace>,
    next_id: AtomicU64,
    pub shutdown: CancellationToken,
    pub(crate) metrics: Arc<KafkaMetrics>,
}

/// What `KafkaUpstream::start` checks of the topics before serving.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCheck {
    /// Create missing topics (with `createTopics`) and refuse a retained or sessions topic that
    /// is not compacted. Always, except:
    Verify,
    /// Skip both, only for the embedded Kafka of `strait-proxy dev` (librdkafka's mock
    /// cluster): it implements neither CreateTopics nor DescribeConfigs, so compaction can
    /// never be confirmed. `dev` creates the topics itself, and the mock keeps nothing beyond
    /// the process anyway. Not reachable from any config file or flag.
    EmbeddedKafka,
}

impl KafkaUpstream {
    /// When a new session may be set up (`limits.maxConnectRate`): after the wait returned,
    /// or never (`None`) when its turn is more than `max_wait` away.
    pub(crate) fn connect_turn(&self, max_wait: Duration) -> Option<Duration> {
        let Some(pace) = &self.connect_pace else {
            return Some(Duration::ZERO);
        };
        match pace.turn(std::time::Instant::now(), max_wait) {
            strait_runtime::pace::Turn::After(wait) => Some(wait),
            strait_runtime::pace::Turn::Refused => None,
        }
    }

    /// Connects, checks (or creates) the topics, and starts the readers. Its metrics are
    /// registered in `registry`, labelled `role="s-proxy"`.
    pub async fn start(
        config: KafkaConfig,
        shutdown: CancellationToken,
        check: TopicCheck,
        registry: &prometheus::Registry,
    ) -> Result<Arc<Self>, UpstreamError> {
        let metrics = Arc::new(KafkaMetrics::register(registry, "s-proxy")?);
        let clients = KafkaClients::new(&config.connection())?;
        // Not ready (nothing listens yet) until the cluster lets us in; a wrong password or an
        // untrusted certificate is logged and retried, never a crash loop.
        if !clients.wait_for_cluster(&shutdown).await? {
            return Err(UpstreamError::ShutDown(config.bootstrap.clone()));
        }
        let routing = Routing::new(&config);
        let topics = routing.static_topics();
        if check == TopicCheck::Verify {
            ensure_topics(&clients, &config, &topics).await?;
        }

        let producer = clients.producer(Acks::All, Linger::Batch)?;
        let quick = match clients.get("linger.ms") {
            Some(_) => None,
            None => Some(clients.producer(Acks::All, Linger::None)?),
        };
        let qos0 = clients
            .producer(config.qos0_acks, Linger::Batch)
            .context("creating the Kafka QoS 0 producer")?;

        let metadata_reader = Arc::new(clients.reader("metadata reader")?);
        let mut partitions = HashMap::new();
        let messages_topics = MessagesTopics::default();
        for topic in topics
            .iter()
            .chain([&config.topics.retained, &config.topics.sessions])
        {
            let ends = read_partitions(&metadata_reader, topic, From::End).await?;
            partitions.insert(topic.clone(), ends.len() as i32);
            if topics.contains(topic) {
                messages_topics.add(topic, &ends);
            }
        }
        let local = Arc::new(OrderedMutex::new(
            Level::Leaf,
            "local sessions",
            HashMap::new(),
        ));
        let retained = Table::start(
            &clients,
            metadata_reader.clone(),
            &config.topics.retained,
            partitions[&config.topics.retained],
            shutdown.clone(),
            metrics.table("retained"),
            Box::new(|_, _| {}),
        )?;
        let delayed_wills = Arc::new(OrderedMutex::new(
            Level::Leaf,
            "delayed wills",
            HashMap::new(),
        ));
        let (watched, waiting) = (local.clone(), delayed_wills.clone());
        let sessions = Table::start(
            &clients,
            metadata_reader.clone(),
            &config.topics.sessions,
            partitions[&config.topics.sessions],
            shutdown.clone(),
            metrics.table("sessions"),
            Box::new(move |client_id, entry| {
                takeover_check(&watched, client_id, entry);
                reconnect_check(&waiting, client_id, entry);
            }),
        )?;

        let instance = format!(
            "{}-{}-{:x}",
            hostname(),
            std::process::id(),
            now_ms() & 0xffff_ffff
        );
        let upstream = Arc::new(Self {
            instance,
            routing,
            producer,
            quick,
            load: LoadGauge::new(LIGHT_BELOW_PER_SEC),
            qos0,
            clients,
            topics: messages_topics,
            routed: routed::RoutedTopics::default(),
            watermarks: metadata_reader.clone(),
            subscriptions: OrderedRwLock::new(
                Level::Subscriptions,
                "subscription trie",
                Trie::default(),
            ),
            shared: OrderedMutex::new(Level::SharedGroups, "shared groups", HashMap::new()),
            inboxes: OrderedRwLock::new(Level::Inboxes, "inboxes", HashMap::new()),
            retained,
            sessions,
            local,
            delayed_wills,
            qos2_writes: OrderedMutex::new(Level::Leaf, "QoS 2 writes", HashMap::new()),
            lookups: tokio::sync::Semaphore::new(8),
            catch_up_readers: Arc::new(tokio::sync::Semaphore::new(
                config.limits.max_catch_ups as usize,
            )),
            connect_pace: strait_runtime::pace::Pace::per_second(config.limits.max_connect_rate),
            next_id: AtomicU64::new(1),
            shutdown: shutdown.clone(),
            config,
            metrics,
        });
        if upstream.routing.has_param_routes() {
            // Topics of `${params}` routes that exist now are read from their end, like the
            // static ones; later ones are found by `watch_metadata`.
            let cluster = upstream.cluster_topics().await?;
            upstream.discover_routed_topics(&cluster, From::End).await?;
        }
        upstream.start_dispatcher()?;
        tokio::spawn(upstream.clone().watch_metadata());
        tokio::spawn(watchdog::run(upstream.clone()));
        Ok(upstream)
    }

    /// The dispatcher's position on every partition: (topic index, partition) → next offset.
    pub fn positions(&self) -> Vec<Vec<i64>> {
        self.topics
            .all()
            .iter()
            .map(|t| {
                t.positions
                    .iter()
                    .map(|p| p.load(Ordering::Acquire))
                    .collect()
            })
            .collect()
    }

    /// Partitions of a messages topic the dispatcher reads (they may grow at run time).
    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        let (_, found) = self.topics.find(topic)?;
        Some(found.positions.len() as i32)
    }

    /// The messages topic and, when its partition count is known, the partition of a PUBLISH to
    /// MQTT topic `topic` (murmur2 of the `clients` identity, or of the topic: the Java
    /// client's choice for the record key).
    pub fn target(&self, topic: &str) -> (String, Option<i32>) {
        let messages = self.routing.messages_topic(topic).into_owned();
        let key = self.routing.hash_key(topic).unwrap_or(topic);
        let partition = self
            .partition_count(&messages)
            .map(|n| routing::partition_for(key.as_bytes(), n));
        (messages, partition)
    }

    /// Waits (up to `deadline`) for queued records, QoS 0 ones included, to reach Kafka.
    pub async fn flush(&self, deadline: Duration) {
        use rdkafka::producer::Producer as _;
        let mut producers = vec![self.producer.clone(), self.qos0.clone()];
        producers.extend(self.quick.clone());
        let flushed = tokio::task::spawn_blocking(move || {
            producers
                .iter()
                .try_for_each(|producer| producer.flush(deadline))
        })
        .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(?deadline, "records still queued for Kafka at shutdown");
        }
    }

    /// The end offset of a partition.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> Result<i64, UpstreamError> {
        // Each lookup holds a blocking thread while Kafka answers: at most a few at once.
        let _lookup = self.lookups.acquire().await;
        let client = self.watermarks.clone();
        let topic = topic.to_string();
        let (_, high) = tokio::task::spawn_blocking(move || {
            client.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
        })
        .await??;
        Ok(high)
    }

    /// Tracks a QoS 2 PUBLISH's write until Kafka answers, whatever becomes of its session.
    fn write_qos2(
        self: &Arc<Self>,
        client_id: &str,
        packet_id: u16,
        write: impl Future<Output = Result<(), strait_mqtt_codec::ReasonCode>> + Send + 'static,
    ) -> Qos2Write {
        let write = write.boxed().shared();
        let key = (client_id.to_string(), packet_id);
        self.qos2_writes.lock().insert(key.clone(), write.clone());
        let (up, done) = (self.clone(), write.clone());
        tokio::spawn(async move {
            let _ = done.clone().await;
            let mut writes = up.qos2_writes.lock();
            if writes.get(&key).is_some_and(|w| w.ptr_eq(&done)) {
                writes.remove(&key);
            }
        });
        write
    }

    /// The write of an earlier attempt at this QoS 2 PUBLISH still waiting for Kafka.
    fn qos2_write_in_flight(&self, client_id: &str, packet_id: u16) -> Option<Qos2Write> {
        let key = (client_id.to_string(), packet_id);
        self.qos2_writes.lock().get(&key).cloned()
    }

    /// Whether a RETAIN PUBLISH keeps the retained messages every replica holds in memory
    /// within `limits.maxRetainedMessages` and `maxRetainedBytes` (clearing one always does).
    fn admits_retained(&self, publish: &strait_mqtt_codec::Publish) -> bool {
        if publish.payload.is_empty() {
            return true;
        }
        let limits = &self.config.limits;
        let size = (publish.topic.len() + publish.payload.len()) as u64;
        self.retained.admits(
            &publish.topic,
            size,
            limits.max_retained_messages,
            limits.max_retained_bytes,
        )
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn register(&self, id: u64, inbox: Arc<Inbox>) {
        self.inboxes.write().insert(id, inbox);
    }

    fn unregister(&self, id: u64, filters: impl IntoIterator<Item = String>) {
        let mut trie = self.subscriptions.write();
        for filter in filters {
            let (inner, target) = Target::of(id, &filter);
            if let Some(group) = &target.shared {
                self.leave_shared(group, id);
            }
            trie.remove(inner, &target);
        }
        drop(trie);
        self.inboxes.write().remove(&id);
    }

    /// Adds a subscription; for a shared one, the returned receiver turns true once its group
    /// consumer reads from the current end of its partitions. Refused when it would start one
    /// shared subscription group more than `limits.maxSharedGroups`.
    fn subscribe(
        self: &Arc<Self>,
        id: u64,
        filter: &str,
    ) -> Result<Option<tokio::sync::watch::Receiver<bool>>, Limit> {
        let (inner, target) = Target::of(id, filter);
        let ready = match &target.shared {
            Some(group) => Some(self.join_shared(group.clone(), inner, id)?),
            None => None,
        };
        self.subscriptions.write().insert(inner, target);
        Ok(ready)
    }

    fn unsubscribe(&self, id: u64, filter: &str) {
        let (inner, target) = Target::of(id, filter);
        if let Some(group) = &target.shared {
            self.leave_shared(group, id);
        }
        self.subscriptions.write().remove(inner, &target);
    }
}

/// What a trie entry reaches: a session, through a plain or a shared subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Target {
    session: u64,
    /// The whole `$share/GROUP/FILTER` of a shared subscription.
    shared: Option<Arc<str>>,
}

impl Target {
    /// The filter to match and the entry for subscription `filter` of session `id`.
    fn of(id: u64, filter: &str) -> (&str, Self) {
        match strait_mqtt_codec::topic::parse_shared(filter) {
            Some((_, inner)) => (
                inner,
                Self {
                    session: id,
                    shared: Some(filter.into()),
                },
            ),
            None => (
                filter,
                Self {
                    session: id,
                    shared: None,
                },
            ),
        }
    }
}

/// Another connection of a client connected here has written its session record: if it is
/// newer, the local one is taken over.
fn takeover_check(
    local: &OrderedMutex<HashMap<String, Local>>,
    client_id: &str,
    entry: Option<&TableEntry>,
) {
    let Some(entry) = entry else { return };
    let local = local.lock();
    if let Some(mine) = local.get(client_id)
        && crate::core::ending::taken_over_by(&entry.value, &mine.connection, mine.connected_at_ms)
    {
        let _ = mine.kick.try_send(());
    }
}

/// Another connection of a client whose delayed will waits here has written its session record:
/// if it is newer, the client reconnected within the delay.
fn reconnect_check(
    delayed_wills: &OrderedMutex<HashMap<String, Vec<Ownership>>>,
    client_id: &str,
    entry: Option<&TableEntry>,
) {
    let Some(entry) = entry else { return };
    if let Some(waiting) = delayed_wills.lock().get_mut(client_id) {
        for ownership in waiting {
            ownership.observe(&entry.value);
        }
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
        })
        .unwrap_or_else(|| "s-proxy".into())
}
