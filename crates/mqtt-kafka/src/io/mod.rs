//! The Kafka upstream: s-proxy is the MQTT broker and Kafka holds everything (Zilla's
//! mqtt-kafka layout, shared/reference/zilla-wire.md §1).
//!
//! Per process, not per client: one producer for QoS ≥ 1 (acks=all, idempotent), one for QoS 0
//! (configurable acks), one fetch of every messages-topic partition (the dispatcher) fanned out
//! through a topic trie into bounded per-session inboxes, and two compacted tables kept in
//! memory by tailing the retained and sessions topics. A persistent session that reconnects
//! reads what it missed from its stored offsets with a short-lived catch-up reader.

mod session;
mod shared;
mod watchdog;

use std::collections::{HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use rdkafka::admin::{AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use strait_config::mqtt_kafka::{Acks, KafkaConfig};
use strait_kafka::headers::record_headers;
use strait_kafka::poll::{Polled, poll_loop};
use strait_kafka::{KafkaClients, Linger, Producer, Reader};
use strait_mqtt_codec::QoS;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub use session::run;

use self::shared::SharedOffsets;
use crate::core::headers::{self, Message};
use crate::core::routing::{self, Routing};
use crate::core::state;
use crate::core::trie::Trie;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a shared subscription's group commits what its members delivered.
const SHARED_COMMIT_EVERY: Duration = Duration::from_millis(200);
/// How often the topics of `${params}` routes are looked for in Kafka.
const ROUTED_TOPICS_SCAN: Duration = Duration::from_secs(2);

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

/// A session's queue of matched records, filled by the dispatcher thread.
pub struct Inbox {
    state: Mutex<InboxState>,
    notify: Notify,
    capacity: usize,
}

#[derive(Default)]
struct InboxState {
    items: VecDeque<Arc<Delivery>>,
    /// Lowest offset per (topic, partition) of a QoS ≥ 1 record dropped because the inbox was
    /// full: the session must be resumed from there.
    overflow: HashMap<(usize, i32), i64>,
    dropped_qos0: u64,
}

impl Inbox {
    fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(InboxState::default()),
            notify: Notify::new(),
            capacity,
        }
    }

    /// Queues a record for a shared subscription; `false` when the inbox is full (the group
    /// consumer tries another member, or waits).
    fn try_push_shared(&self, delivery: Arc<Delivery>) -> bool {
        let mut state = self.state.lock().expect("inbox lock");
        if state.items.len() >= self.capacity {
            return false;
        }
        state.items.push_back(delivery);
        drop(state);
        self.notify.notify_one();
        true
    }

    fn push(&self, delivery: Arc<Delivery>) {
        let mut state = self.state.lock().expect("inbox lock");
        if state.items.len() >= self.capacity {
            if delivery.message.qos == QoS::AtMostOnce {
                state.dropped_qos0 += 1;
                return;
            }
            let floor = state
                .overflow
                .entry((delivery.topic, delivery.partition))
                .or_insert(delivery.offset);
            *floor = (*floor).min(delivery.offset);
        } else {
            state.items.push_back(delivery);
        }
        drop(state);
        self.notify.notify_one();
    }
}

/// A compacted topic kept in memory: key → latest value (tombstones remove the key).
pub struct Table {
    topic: String,
    partitions: i32,
    state: Mutex<TableState>,
    progress: Notify,
    consumer: Arc<Reader>,
    /// A client that never fetches, for end offsets: the tailing consumer's connection is
    /// busy with long-polling fetches, which would delay these requests.
    watermarks: Arc<Reader>,
}

#[derive(Default)]
struct TableState {
    entries: HashMap<String, TableEntry>,
    /// Next offset to read per partition (everything before has been applied).
    positions: HashMap<i32, i64>,
}

#[derive(Debug, Clone)]
pub struct TableEntry {
    pub value: Bytes,
    pub headers: Vec<(String, Vec<u8>)>,
    pub timestamp_ms: i64,
}

type OnChange = Box<dyn Fn(&str, Option<&TableEntry>) + Send + Sync>;

impl Table {
    fn start(
        clients: &KafkaClients,
        watermarks: Arc<Reader>,
        topic: &str,
        partitions: i32,
        shutdown: CancellationToken,
        on_change: OnChange,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer = clients
            .reader("table reader")
            .with_context(|| format!("creating the reader of {topic}"))?;
        let mut assignment = TopicPartitionList::new();
        for p in 0..partitions {
            assignment.add_partition_offset(topic, p, Offset::Beginning)?;
        }
        consumer.assign(&assignment)?;
        let table = Arc::new(Self {
            topic: topic.to_string(),
            partitions,
            watermarks,
            state: Mutex::default(),
            progress: Notify::new(),
            consumer: Arc::new(consumer),
        });
        let reader = table.clone();
        std::thread::Builder::new()
            .name(format!("table-{topic}"))
            .spawn(move || reader.tail(shutdown, on_change))?;
        Ok(table)
    }

    fn tail(&self, shutdown: CancellationToken, on_change: OnChange) {
        let every = Duration::from_millis(100);
        poll_loop(&self.consumer, "table reader", every, |polled| {
            if shutdown.is_cancelled() {
                return ControlFlow::Break(());
            }
            match polled {
                Polled::Record(record) => {
                    let key = record
                        .key()
                        .map(|k| String::from_utf8_lossy(k).into_owned())
                        .unwrap_or_default();
                    let entry = record.payload().map(|value| TableEntry {
                        value: Bytes::copy_from_slice(value),
                        headers: record_headers(&record),
                        timestamp_ms: record.timestamp().to_millis().unwrap_or(0),
                    });
                    on_change(&key, entry.as_ref());
                    let mut state = self.state.lock().expect("table lock");
                    match entry {
                        Some(entry) => state.entries.insert(key, entry),
                        None => state.entries.remove(&key),
                    };
                    state
                        .positions
                        .insert(record.partition(), record.offset() + 1);
                }
                Polled::PartitionEnd(partition) => {
                    if let Ok(positions) = self.consumer.position() {
                        let mut state = self.state.lock().expect("table lock");
                        for element in positions.elements_for_topic(&self.topic) {
                            if element.partition() == partition
                                && let Offset::Offset(next) = element.offset()
                            {
                                state.positions.insert(partition, next);
                            }
                        }
                    }
                }
                Polled::Idle => return ControlFlow::Continue(()),
            }
            self.progress.notify_waiters();
            ControlFlow::Continue(())
        });
    }

    /// Waits until everything written to the topic before this call has been applied, so a
    /// session reads what another replica wrote a moment ago.
    pub async fn sync(&self, deadline: Duration) -> anyhow::Result<()> {
        let consumer = self.watermarks.clone();
        let topic = self.topic.clone();
        let partitions = self.partitions;
        let ends = tokio::task::spawn_blocking(move || {
            (0..partitions)
                .map(|p| Ok((p, consumer.fetch_watermarks(&topic, p, METADATA_TIMEOUT)?.1)))
                .collect::<Result<Vec<_>, KafkaError>>()
        })
        .await?
        .with_context(|| format!("reading the end offsets of {}", self.topic))?;
        tokio::time::timeout(deadline, async {
            loop {
                let notified = self.progress.notified();
                {
                    let state = self.state.lock().expect("table lock");
                    let caught_up = ends.iter().all(|(p, end)| {
                        *end == 0 || state.positions.get(p).is_some_and(|pos| pos >= end)
                    });
                    if caught_up {
                        return;
                    }
                }
                notified.await;
            }
        })
        .await
        .with_context(|| format!("{} not read up to its end within {deadline:?}", self.topic))
    }

    pub fn get(&self, key: &str) -> Option<TableEntry> {
        self.state
            .lock()
            .expect("table lock")
            .entries
            .get(key)
            .cloned()
    }

    /// Entries whose key satisfies `keep`.
    pub fn select(&self, mut keep: impl FnMut(&str) -> bool) -> Vec<(String, TableEntry)> {
        let state = self.state.lock().expect("table lock");
        state
            .entries
            .iter()
            .filter(|(k, _)| keep(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }
}

/// One messages topic the dispatcher reads.
pub struct MessagesTopic {
    pub name: String,
    /// Per partition: every record before this offset has been handed to the sessions it
    /// matches.
    positions: Vec<AtomicI64>,
}

impl MessagesTopic {
    /// Every record of `partition` up to `offset` has been handed over.
    fn advance(&self, partition: i32, offset: i64) {
        if let Some(position) = self.positions.get(partition as usize) {
            position.store(offset + 1, Ordering::Release);
        }
    }
}

/// The messages topics subscribers are served from, with indices that never change: the
/// default and static routes' topics from the start, topics of `${params}` routes as they
/// appear in Kafka.
#[derive(Default)]
pub struct MessagesTopics(RwLock<Vec<Arc<MessagesTopic>>>);

impl MessagesTopics {
    pub fn all(&self) -> Vec<Arc<MessagesTopic>> {
        self.0.read().expect("topics lock").clone()
    }

    pub fn names(&self) -> Vec<String> {
        let topics = self.0.read().expect("topics lock");
        topics.iter().map(|t| t.name.clone()).collect()
    }

    pub fn index(&self, name: &str) -> Option<usize> {
        let topics = self.0.read().expect("topics lock");
        topics.iter().position(|t| t.name == name)
    }

    /// The name of topic `t` (indices handed out are never removed).
    pub fn name(&self, t: usize) -> String {
        self.0.read().expect("topics lock")[t].name.clone()
    }

    fn len(&self) -> usize {
        self.0.read().expect("topics lock").len()
    }

    /// Adds a topic read from `starts` (per partition), unless it is there already.
    fn add(&self, name: &str, starts: &[i64]) -> usize {
        let mut topics = self.0.write().expect("topics lock");
        if let Some(existing) = topics.iter().position(|t| t.name == name) {
            return existing;
        }
        topics.push(Arc::new(MessagesTopic {
            name: name.to_string(),
            positions: starts.iter().map(|o| AtomicI64::new(*o)).collect(),
        }));
        topics.len() - 1
    }
}

/// Where reading a topic the dispatcher starts on begins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum From {
    /// Its current end: what is published from now on.
    End,
    /// Its beginning: a topic that appeared after this process started holds only records
    /// published since.
    Beginning,
}

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
    /// QoS 0 with `qos0Acks`.
    pub qos0: Producer,
    /// Makes the readers (the dispatcher, shared groups, catch-up) and the admin clients.
    clients: KafkaClients,
    /// Messages topics subscribers are served from (the dispatcher reads all their partitions).
    pub topics: MessagesTopics,
    /// Partition counts of the static messages topics and the retained and sessions topics.
    partitions: HashMap<String, i32>,
    /// A client that never fetches: end offsets.
    watermarks: Arc<Reader>,
    subscriptions: RwLock<Trie<Target>>,
    /// Shared subscriptions with members here: `$share/GROUP/FILTER` → members and the stop
    /// signal of its group consumer.
    shared: Mutex<HashMap<Arc<str>, SharedGroup>>,
    inboxes: RwLock<HashMap<u64, Arc<Inbox>>>,
    pub retained: Arc<Table>,
    pub sessions: Arc<Table>,
    local: Arc<Mutex<HashMap<String, Local>>>,
    next_id: AtomicU64,
    pub shutdown: CancellationToken,
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
    /// Connects, checks (or creates) the topics, and starts the readers.
    pub async fn start(
        config: KafkaConfig,
        shutdown: CancellationToken,
        check: TopicCheck,
    ) -> anyhow::Result<Arc<Self>> {
        let clients = KafkaClients::new(&config.connection())?;
        // Not ready (nothing listens yet) until the cluster lets us in; a wrong password or an
        // untrusted certificate is logged and retried, never a crash loop.
        if !clients.wait_for_cluster(&shutdown).await? {
            bail!("shut down before Kafka at {} answered", config.bootstrap);
        }
        let routing = Routing::new(&config);
        let topics = routing.static_topics();
        if check == TopicCheck::Verify {
            ensure_topics(&clients, &config, &topics).await?;
        }

        let producer = clients.producer(Acks::All, Linger::Batch)?;
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
        let local: Arc<Mutex<HashMap<String, Local>>> = Arc::default();
        let retained = Table::start(
            &clients,
            metadata_reader.clone(),
            &config.topics.retained,
            partitions[&config.topics.retained],
            shutdown.clone(),
            Box::new(|_, _| {}),
        )?;
        let watched = local.clone();
        let sessions = Table::start(
            &clients,
            metadata_reader.clone(),
            &config.topics.sessions,
            partitions[&config.topics.sessions],
            shutdown.clone(),
            Box::new(move |client_id, entry| takeover_check(&watched, client_id, entry)),
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
            qos0,
            clients,
            topics: messages_topics,
            partitions,
            watermarks: metadata_reader.clone(),
            subscriptions: RwLock::default(),
            shared: Mutex::default(),
            inboxes: RwLock::default(),
            retained,
            sessions,
            local,
            next_id: AtomicU64::new(1),
            shutdown: shutdown.clone(),
            config,
        });
        if upstream.routing.has_param_routes() {
            // Topics of `${params}` routes that exist now are read from their end, like the
            // static ones; later ones are found by `watch_routed_topics`.
            upstream.discover_routed_topics(From::End).await?;
            tokio::spawn(upstream.clone().watch_routed_topics());
        }
        upstream.start_dispatcher()?;
        tokio::spawn(watchdog::run(upstream.clone()));
        Ok(upstream)
    }

    /// Adds every topic in Kafka that a `${params}` route renders and the dispatcher does not
    /// read yet.
    async fn discover_routed_topics(&self, from: From) -> anyhow::Result<()> {
        let reader = self.watermarks.clone();
        let names = tokio::task::spawn_blocking(move || {
            let metadata = reader.fetch_metadata(None, METADATA_TIMEOUT)?;
            Ok::<_, KafkaError>(
                metadata
                    .topics()
                    .iter()
                    .map(|t| t.name().to_string())
                    .collect::<Vec<_>>(),
            )
        })
        .await?
        .context("listing Kafka topics")?;
        for name in names {
            if self.routing.is_routed_topic(&name) && self.topics.index(&name).is_none() {
                self.read_topic(&name, from).await?;
            }
        }
        Ok(())
    }

    /// Looks for new topics of `${params}` routes every few seconds (other replicas' clients
    /// publish to them too).
    async fn watch_routed_topics(self: Arc<Self>) {
        let mut tick = tokio::time::interval(ROUTED_TOPICS_SCAN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = self.shutdown.cancelled() => return,
            }
            if let Err(error) = self.discover_routed_topics(From::Beginning).await {
                tracing::debug!(error = format!("{error:#}"), "looking for routed topics");
            }
        }
    }

    /// Makes the dispatcher read `topic` (it picks new topics up within a poll).
    async fn read_topic(&self, topic: &str, from: From) -> anyhow::Result<()> {
        let starts = read_partitions(&self.watermarks, topic, from).await?;
        let t = self.topics.add(topic, &starts);
        tracing::info!(topic, index = t, "reading a routed messages topic");
        Ok(())
    }

    /// Before a PUBLISH to a topic of a `${params}` route that is not read yet: creates it
    /// (with `createTopics`) and makes the dispatcher read it from its beginning, so the record
    /// reaches this process's subscribers.
    pub async fn ensure_routed(&self, messages: &str) -> anyhow::Result<()> {
        if self.topics.index(messages).is_some() || !self.routing.is_routed_topic(messages) {
            return Ok(());
        }
        if self.config.create_topics {
            create_topics(&self.clients, &self.config, &[messages.to_string()], &[]).await?;
        }
        self.read_topic(messages, From::Beginning).await
    }

    fn start_dispatcher(self: &Arc<Self>) -> anyhow::Result<()> {
        let consumer = self.clients.reader("dispatcher")?;
        let mut assigned = self.assign_new(&consumer, 0)?;
        let upstream = self.clone();
        std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                let every = Duration::from_millis(100);
                poll_loop(&consumer, "dispatcher", every, |polled| {
                    if upstream.shutdown.is_cancelled() {
                        return ControlFlow::Break(());
                    }
                    if let Polled::Record(record) = polled {
                        upstream.dispatch(&record);
                    }
                    if upstream.topics.len() > assigned {
                        match upstream.assign_new(&consumer, assigned) {
                            Ok(now) => assigned = now,
                            Err(error) => {
                                tracing::warn!(%error, "dispatcher cannot read a new topic")
                            }
                        }
                    }
                    ControlFlow::Continue(())
                })
            })?;
        Ok(())
    }

    /// Adds the partitions of the topics from index `from` on to the dispatcher's assignment;
    /// returns how many topics it reads now.
    fn assign_new(&self, consumer: &Reader, from: usize) -> anyhow::Result<usize> {
        let topics = self.topics.all();
        let mut assignment = TopicPartitionList::new();
        for topic in &topics[from..] {
            for (p, position) in topic.positions.iter().enumerate() {
                let offset = Offset::Offset(position.load(Ordering::Acquire));
                assignment.add_partition_offset(&topic.name, p as i32, offset)?;
            }
        }
        consumer.incremental_assign(&assignment)?;
        Ok(topics.len())
    }

    fn dispatch(&self, record: &rdkafka::message::BorrowedMessage<'_>) {
        let (topic, read) = {
            let topics = self.topics.0.read().expect("topics lock");
            let Some(t) = topics.iter().position(|t| t.name == record.topic()) else {
                return;
            };
            (t, topics[t].clone())
        };
        let (partition, offset) = (record.partition(), record.offset());
        // Shared subscriptions are served by their group consumers.
        let subscribers = |topic: &str| {
            let mut ids = Vec::new();
            self.subscriptions
                .read()
                .expect("trie lock")
                .matches(topic, |target| {
                    if target.shared.is_none() {
                        ids.push(target.session);
                    }
                });
            ids
        };
        // The key is the MQTT topic (headers name it only for records without one): a record
        // no session here subscribes to is not decoded at all.
        let key = record.key().and_then(|k| std::str::from_utf8(k).ok());
        if let Some(topic) = key.filter(|k| !k.is_empty())
            && subscribers(topic).is_empty()
        {
            read.advance(partition, offset);
            return;
        }
        let headers = record_headers(record);
        let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
        match headers::decode(
            record.key(),
            payload,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        ) {
            Ok(message) => {
                let mut ids = subscribers(&message.topic);
                if !ids.is_empty() {
                    ids.sort_unstable();
                    ids.dedup();
                    let delivery = Arc::new(Delivery {
                        topic,
                        partition,
                        offset,
                        timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                        message,
                        shared: None,
                    });
                    let inboxes = self.inboxes.read().expect("inbox lock");
                    for id in ids {
                        if let Some(inbox) = inboxes.get(&id) {
                            inbox.push(delivery.clone());
                        }
                    }
                }
            }
            Err(error) => tracing::debug!(%error, offset, "skipping a record"),
        }
        // After the hand-over: a session that reads this position finds every earlier record
        // in its inbox (see `Session::progress`).
        read.advance(partition, offset);
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

    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        if let Some(count) = self.partitions.get(topic) {
            return Some(*count);
        }
        let topics = self.topics.0.read().expect("topics lock");
        let found = topics.iter().find(|t| t.name == topic)?;
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
        let (producer, qos0) = (self.producer.clone(), self.qos0.clone());
        let flushed =
            tokio::task::spawn_blocking(move || qos0.flush(deadline).and(producer.flush(deadline)))
                .await;
        if !matches!(flushed, Ok(Ok(()))) {
            tracing::warn!(?deadline, "records still queued for Kafka at shutdown");
        }
    }

    /// The end offset of a partition.
    pub async fn end_offset(&self, topic: &str, partition: i32) -> anyhow::Result<i64> {
        let client = self.watermarks.clone();
        let topic = topic.to_string();
        let (_, high) = tokio::task::spawn_blocking(move || {
            client.fetch_watermarks(&topic, partition, METADATA_TIMEOUT)
        })
        .await??;
        Ok(high)
    }

    fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed)
    }

    fn register(&self, id: u64, inbox: Arc<Inbox>) {
        self.inboxes.write().expect("inbox lock").insert(id, inbox);
    }

    fn unregister(&self, id: u64, filters: impl IntoIterator<Item = String>) {
        let mut trie = self.subscriptions.write().expect("trie lock");
        for filter in filters {
            let (inner, target) = Target::of(id, &filter);
            if let Some(group) = &target.shared {
                self.leave_shared(group, id);
            }
            trie.remove(inner, &target);
        }
        drop(trie);
        self.inboxes.write().expect("inbox lock").remove(&id);
    }

    /// Adds a subscription; for a shared one, the returned receiver turns true once its group
    /// consumer reads from the current end of its partitions.
    fn subscribe(
        self: &Arc<Self>,
        id: u64,
        filter: &str,
    ) -> Option<tokio::sync::watch::Receiver<bool>> {
        let (inner, target) = Target::of(id, filter);
        let ready = target
            .shared
            .as_ref()
            .map(|group| self.join_shared(group.clone(), inner, id));
        self.subscriptions
            .write()
            .expect("trie lock")
            .insert(inner, target);
        ready
    }

    fn unsubscribe(&self, id: u64, filter: &str) {
        let (inner, target) = Target::of(id, filter);
        if let Some(group) = &target.shared {
            self.leave_shared(group, id);
        }
        self.subscriptions
            .write()
            .expect("trie lock")
            .remove(inner, &target);
    }

    /// Adds a member to a shared subscription, starting its group consumer on the first.
    fn join_shared(
        self: &Arc<Self>,
        group: Arc<str>,
        inner: &str,
        id: u64,
    ) -> tokio::sync::watch::Receiver<bool> {
        let mut shared = self.shared.lock().expect("shared lock");
        if let Some(existing) = shared.get_mut(&group) {
            existing.members.push(id);
            return existing.ready.clone();
        }
        let stop = self.shutdown.child_token();
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        shared.insert(
            group.clone(),
            SharedGroup {
                members: vec![id],
                turn: 0,
                stop: stop.clone(),
                ready: ready.clone(),
            },
        );
        drop(shared);
        let up = self.clone();
        let inner = inner.to_string();
        let spawned = std::thread::Builder::new()
            .name("shared-group".into())
            .spawn(move || {
                if let Err(error) = up.serve_shared(&group, &inner, &stop, &ready_tx) {
                    tracing::warn!(error = format!("{error:#}"), %group, "shared subscription consumer failed");
                }
            });
        if let Err(error) = spawned {
            tracing::warn!(%error, "cannot start a shared subscription consumer");
        }
        ready
    }

    fn leave_shared(&self, group: &Arc<str>, id: u64) {
        let mut shared = self.shared.lock().expect("shared lock");
        if let Some(existing) = shared.get_mut(group) {
            existing.members.retain(|m| *m != id);
            if existing.members.is_empty() {
                existing.stop.cancel();
                shared.remove(group);
            }
        }
    }

    /// One Kafka consumer group per shared subscription
    /// (`strait-share:MESSAGES-TOPIC:GROUP:FILTER`), joined
    /// by every replica that has members: Kafka splits the partitions between the replicas, and
    /// the members on a replica take turns.
    fn serve_shared(
        &self,
        group: &Arc<str>,
        inner: &str,
        stop: &CancellationToken,
        ready: &tokio::sync::watch::Sender<bool>,
    ) -> anyhow::Result<()> {
        let (_, name) = strait_mqtt_codec::topic::parse_shared(group).unwrap_or(("", inner));
        let group_name = group
            .strip_prefix("$share/")
            .and_then(|g| g.split_once('/'))
            .map_or(name, |(g, _)| g);
        // Named after the messages topic too: two bridges on one Kafka do not mix.
        let group_id = format!(
            "strait-share:{}:{group_name}:{inner}",
            self.config.topics.messages
        );
        let consumer: Reader = self.clients.group_member(
            &group_id,
            &[
                // A replica that dies is noticed in 10 s, not Kafka's default 45.
                ("session.timeout.ms", "10000"),
                // Offsets are committed here once delivered, never when merely read.
                ("auto.offset.reset", "latest"),
            ],
            self.clients.report().clone(),
            "shared subscription consumer",
        )?;
        // The messages topics read when the group starts (routed ones found later are not
        // part of it).
        let names = self.topics.names();
        let topics: Vec<&str> = names.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let offsets = Arc::new(SharedOffsets::default());
        let mut last_commit = std::time::Instant::now();
        let every = Duration::from_millis(100);
        poll_loop(&consumer, "shared subscription consumer", every, |polled| {
            let step = || -> anyhow::Result<ControlFlow<()>> {
                if stop.is_cancelled() {
                    return Ok(ControlFlow::Break(()));
                }
                for returned in offsets.take_returned() {
                    if !self.hand_out(group, returned, stop) {
                        return Ok(ControlFlow::Break(()));
                    }
                }
                if !*ready.borrow() {
                    self.start_shared(&consumer, ready)?;
                }
                if last_commit.elapsed() >= SHARED_COMMIT_EVERY {
                    last_commit = std::time::Instant::now();
                    if let Err(error) = self.commit_delivered(&consumer, &offsets) {
                        tracing::debug!(%error, %group, "shared subscription commit");
                    }
                }
                let Polled::Record(record) = polled else {
                    return Ok(ControlFlow::Continue(()));
                };
                let Some(topic) = self.topics.index(record.topic()) else {
                    return Ok(ControlFlow::Continue(()));
                };
                let key = (topic, record.partition());
                let headers = record_headers(&record);
                let message = headers::decode(
                    record.key(),
                    Bytes::copy_from_slice(record.payload().unwrap_or_default()),
                    headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
                )
                .ok()
                .filter(|m| strait_mqtt_codec::topic::matches(inner, &m.topic));
                offsets.read(key, record.offset(), message.is_some());
                let Some(message) = message else {
                    return Ok(ControlFlow::Continue(()));
                };
                let delivery = Arc::new(Delivery {
                    topic,
                    partition: record.partition(),
                    offset: record.offset(),
                    timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                    message,
                    shared: Some(offsets.clone()),
                });
                Ok(if self.hand_out(group, delivery, stop) {
                    ControlFlow::Continue(())
                } else {
                    ControlFlow::Break(())
                })
            };
            match step() {
                Ok(ControlFlow::Continue(())) => ControlFlow::Continue(()),
                Ok(ControlFlow::Break(())) => ControlFlow::Break(Ok(())),
                Err(error) => ControlFlow::Break(Err(error)),
            }
        })?;
        // Stopped (the last member here left, or shutdown): commit what was delivered.
        self.commit_delivered(&consumer, &offsets)?;
        Ok(())
    }

    /// Once the group has an assignment: a new group starts from the current end of the
    /// partitions it has not consumed yet, so what is published after SUBACK is not skipped.
    fn start_shared(
        &self,
        consumer: &Reader,
        ready: &tokio::sync::watch::Sender<bool>,
    ) -> anyhow::Result<()> {
        let assignment = consumer.assignment()?;
        if assignment.count() == 0 {
            return Ok(());
        }
        let committed = consumer.committed(METADATA_TIMEOUT)?;
        let mut start = TopicPartitionList::new();
        for element in committed.elements() {
            if !matches!(element.offset(), Offset::Offset(_)) {
                let (_, end) = self.watermarks.fetch_watermarks(
                    element.topic(),
                    element.partition(),
                    METADATA_TIMEOUT,
                )?;
                consumer.seek(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(end),
                    METADATA_TIMEOUT,
                )?;
                start.add_partition_offset(
                    element.topic(),
                    element.partition(),
                    Offset::Offset(end),
                )?;
            }
        }
        // Committed at once, so a replica that takes a partition over in a rebalance
        // continues from here instead of from its own "latest".
        if start.count() > 0 {
            consumer.commit(&start, rdkafka::consumer::CommitMode::Sync)?;
        }
        let _ = ready.send(true);
        Ok(())
    }

    /// Gives a shared subscription's record to the next member with room; when all are full,
    /// waits (QoS ≥ 1: the group's delivery pauses) or drops it (QoS 0). `false` when the
    /// group has no members here any more or is stopped.
    fn hand_out(
        &self,
        group: &Arc<str>,
        delivery: Arc<Delivery>,
        stop: &CancellationToken,
    ) -> bool {
        loop {
            if stop.is_cancelled() {
                return false;
            }
            let taken = {
                let mut shared = self.shared.lock().expect("shared lock");
                let Some(entry) = shared.get_mut(group) else {
                    return false;
                };
                let inboxes = self.inboxes.read().expect("inbox lock");
                let count = entry.members.len();
                let mut taken = false;
                for _ in 0..count {
                    let id = entry.members[entry.turn % count];
                    entry.turn = entry.turn.wrapping_add(1);
                    if let Some(inbox) = inboxes.get(&id)
                        && inbox.try_push_shared(delivery.clone())
                    {
                        taken = true;
                        break;
                    }
                }
                taken
            };
            if taken {
                return true;
            }
            if delivery.message.qos == QoS::AtMostOnce {
                // QoS 0 may be dropped: as good as delivered.
                delivery.delivered();
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Commits, per partition this replica owns, the offset below which every record was
    /// delivered (when it moved).
    fn commit_delivered(&self, consumer: &Reader, offsets: &SharedOffsets) -> anyhow::Result<()> {
        let assignment = consumer.assignment()?;
        let assigned: std::collections::HashSet<(usize, i32)> = assignment
            .elements()
            .iter()
            .filter_map(|e| {
                let topic = self.topics.index(e.topic())?;
                Some((topic, e.partition()))
            })
            .collect();
        offsets.retain(&assigned);
        let mut commit = TopicPartitionList::new();
        for ((topic, partition), offset) in offsets.committable() {
            commit.add_partition_offset(
                &self.topics.name(topic),
                partition,
                Offset::Offset(offset),
            )?;
        }
        if commit.count() > 0 {
            consumer.commit(&commit, rdkafka::consumer::CommitMode::Sync)?;
        }
        Ok(())
    }
}

/// The members on this process of one shared subscription.
struct SharedGroup {
    members: Vec<u64>,
    turn: usize,
    stop: CancellationToken,
    ready: tokio::sync::watch::Receiver<bool>,
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
    local: &Mutex<HashMap<String, Local>>,
    client_id: &str,
    entry: Option<&TableEntry>,
) {
    let Some(entry) = entry else { return };
    let Ok(record) = state::SessionRecord::decode(&entry.value) else {
        return;
    };
    let local = local.lock().expect("local sessions lock");
    if let Some(mine) = local.get(client_id)
        && record.connection != mine.connection
        && (record.connected_at_ms, &record.connection) > (mine.connected_at_ms, &mine.connection)
        && record.disconnected_at_ms.is_none()
    {
        let _ = mine.kick.try_send(());
    }
}

/// Creates the `messages` topics and the `compacted` ones (`newTopics` partitions and
/// replication) unless they exist.
async fn create_topics(
    clients: &KafkaClients,
    config: &KafkaConfig,
    messages: &[String],
    compacted: &[&String],
) -> anyhow::Result<()> {
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
async fn read_partitions(
    reader: &Arc<Reader>,
    topic: &str,
    from: From,
) -> anyhow::Result<Vec<i64>> {
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
                bail!("Kafka topic {topic} has no partitions (does it exist?)")
            }
            Err(error) if attempts >= 40 => {
                return Err(error).with_context(|| format!("reading metadata of {topic}"));
            }
            _ => tokio::time::sleep(Duration::from_millis(250)).await,
        }
    }
}

/// Creates missing topics (when allowed) and refuses compacted topics that are not.
async fn ensure_topics(
    clients: &KafkaClients,
    config: &KafkaConfig,
    messages: &[String],
) -> anyhow::Result<()> {
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
                Some(Err(error)) if attempts >= 20 => bail!(
                    "Kafka topic {topic} cannot be described ({error}): is it missing? Set \
                     kafka.createTopics: true or create it with cleanup.policy=compact"
                ),
                _ => None,
            };
            match policy {
                Some(policy) if !policy.is_empty() => break policy,
                _ if attempts >= 20 => break String::new(),
                _ => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        };
        if !policy.split(',').any(|p| p.trim() == "compact") {
            bail!(
                "Kafka topic {topic} has cleanup.policy={policy}, but the retained and sessions topics must \
                 be compacted (cleanup.policy=compact): otherwise retained messages and sessions are deleted \
                 after the retention time"
            );
        }
    }
    Ok(())
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
