//! The Kafka upstream: s-proxy is the MQTT broker and Kafka holds everything (Zilla's
//! mqtt-kafka layout, shared/reference/zilla-wire.md §1).
//!
//! Per process, not per client: one producer for QoS ≥ 1 (acks=all, idempotent), one for QoS 0
//! (configurable acks), one fetch of every messages-topic partition (the dispatcher) fanned out
//! through a topic trie into bounded per-session inboxes, and two compacted tables kept in
//! memory by tailing the retained and sessions topics. A persistent session that reconnects
//! reads what it missed from its stored offsets with a short-lived catch-up reader.

pub mod headers;
pub mod routing;
mod session;
pub mod state;
pub mod trie;
mod watchdog;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::{Context as _, bail};
use bytes::Bytes;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, ResourceSpecifier, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::producer::FutureProducer;
use rdkafka::{Offset, TopicPartitionList};
use strait_config::mqtt_kafka::KafkaConfig;
use strait_mqtt_codec::QoS;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

pub(crate) use session::run;

use crate::kafka_client::{KafkaReport, wait_for_cluster};

use self::headers::Message;
use self::routing::Routing;
use self::trie::Trie;

const METADATA_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// the session's delivery progress.
    pub shared: bool,
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
    consumer: Arc<BaseConsumer>,
    /// A client that never fetches, for end offsets: the tailing consumer's connection is
    /// busy with long-polling fetches, which would delay these requests.
    watermarks: Arc<BaseConsumer>,
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
        config: &ClientConfig,
        watermarks: Arc<BaseConsumer>,
        topic: &str,
        partitions: i32,
        shutdown: CancellationToken,
        on_change: OnChange,
    ) -> anyhow::Result<Arc<Self>> {
        let consumer: BaseConsumer = reader_config(config)
            .create()
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
        while !shutdown.is_cancelled() {
            let Some(result) = self.consumer.poll(Duration::from_millis(100)) else {
                continue;
            };
            match result {
                Ok(record) => {
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
                Err(KafkaError::PartitionEOF(partition)) => {
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
                Err(error) => {
                    tracing::debug!(%error, topic = self.topic, "table reader");
                    continue;
                }
            }
            self.progress.notify_waiters();
        }
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

fn record_headers<M: rdkafka::Message>(record: &M) -> Vec<(String, Vec<u8>)> {
    record
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
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
    pub producer: FutureProducer,
    /// QoS 0 with `qos0Acks`.
    pub qos0: FutureProducer,
    /// Client config for short-lived readers (catch-up).
    client: ClientConfig,
    /// Messages topics subscribers are served from (the dispatcher reads all their partitions).
    pub topics: Vec<String>,
    /// Per topic and partition: every record before this offset has been handed to the
    /// sessions it matches.
    positions: Vec<Vec<AtomicI64>>,
    partitions: HashMap<String, i32>,
    /// A client that never fetches: end offsets.
    watermarks: Arc<BaseConsumer>,
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

fn reader_config(base: &ClientConfig) -> ClientConfig {
    let mut config = base.clone();
    // Readers assign partitions themselves: no group, nothing committed.
    config
        .set("group.id", "strait-s-proxy-unused")
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false");
    for producer_only in ["linger.ms", "message.timeout.ms", "delivery.timeout.ms"] {
        config.remove(producer_only);
    }
    config
}

fn producer_config(base: &ClientConfig, acks: &str) -> ClientConfig {
    let mut config = base.clone();
    config
        .set("acks", acks)
        // The Java client's partitioner for keyed records (murmur2), so Strait and Java
        // producers put one MQTT topic on the same partition.
        .set("partitioner", "murmur2_random");
    if acks == "all" {
        config.set("enable.idempotence", "true");
    }
    if config.get("linger.ms").is_none() {
        config.set("linger.ms", "2");
    }
    if config.get("message.timeout.ms").is_none() {
        config.set("message.timeout.ms", "10000");
    }
    config
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
        let client = crate::kafka_client::client_config(&config.connection())?;
        // Not ready (nothing listens yet) until the cluster lets us in; a wrong password or an
        // untrusted certificate is logged and retried, never a crash loop.
        let report = KafkaReport::new(&config.connection());
        if !wait_for_cluster(&client, &report, &shutdown).await? {
            bail!("shut down before Kafka at {} answered", config.bootstrap);
        }
        let routing = Routing::new(&config);
        let topics = routing.static_topics();
        if check == TopicCheck::Verify {
            ensure_topics(&client, &config, &topics).await?;
        }

        let producer: FutureProducer = producer_config(&client, "all")
            .create()
            .context("creating the Kafka producer")?;
        let qos0: FutureProducer = producer_config(&client, config.qos0_acks.as_kafka())
            .create()
            .context("creating the Kafka QoS 0 producer")?;

        let metadata_reader: BaseConsumer = reader_config(&client).create()?;
        let metadata_reader = Arc::new(metadata_reader);
        let mut partitions = HashMap::new();
        let mut ends = Vec::new();
        for topic in topics
            .iter()
            .chain([&config.topics.retained, &config.topics.sessions])
        {
            // Topics created a moment ago may have no leader yet: retry for a while.
            let mut attempts = 0;
            let (count, topic_ends) = loop {
                attempts += 1;
                let reader = metadata_reader.clone();
                let name = topic.clone();
                let read = tokio::task::spawn_blocking(move || {
                    let metadata = reader.fetch_metadata(Some(&name), METADATA_TIMEOUT)?;
                    let count = metadata
                        .topics()
                        .first()
                        .map(|t| t.partitions().len() as i32)
                        .unwrap_or(0);
                    let ends = (0..count)
                        .map(|p| Ok(reader.fetch_watermarks(&name, p, METADATA_TIMEOUT)?.1))
                        .collect::<Result<Vec<i64>, KafkaError>>()?;
                    Ok::<_, KafkaError>((count, ends))
                })
                .await?;
                match read {
                    Ok((count, ends)) if count > 0 || attempts >= 40 => break (count, ends),
                    Err(error) if attempts >= 40 => {
                        return Err(error).with_context(|| format!("reading metadata of {topic}"));
                    }
                    _ => tokio::time::sleep(Duration::from_millis(250)).await,
                }
            };
            if count == 0 {
                bail!("Kafka topic {topic} has no partitions (does it exist?)");
            }
            partitions.insert(topic.clone(), count);
            ends.push(topic_ends);
        }
        let positions: Vec<Vec<AtomicI64>> = ends
            .iter()
            .take(topics.len())
            .map(|e| e.iter().map(|o| AtomicI64::new(*o)).collect())
            .collect();

        let local: Arc<Mutex<HashMap<String, Local>>> = Arc::default();
        let retained = Table::start(
            &client,
            metadata_reader.clone(),
            &config.topics.retained,
            partitions[&config.topics.retained],
            shutdown.clone(),
            Box::new(|_, _| {}),
        )?;
        let watched = local.clone();
        let sessions = Table::start(
            &client,
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
            client,
            topics,
            positions,
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
        upstream.start_dispatcher()?;
        tokio::spawn(watchdog::run(upstream.clone()));
        Ok(upstream)
    }

    fn start_dispatcher(self: &Arc<Self>) -> anyhow::Result<()> {
        let consumer: BaseConsumer = reader_config(&self.client).create()?;
        let mut assignment = TopicPartitionList::new();
        for (i, topic) in self.topics.iter().enumerate() {
            for (p, position) in self.positions[i].iter().enumerate() {
                let offset = Offset::Offset(position.load(Ordering::Acquire));
                assignment.add_partition_offset(topic, p as i32, offset)?;
            }
        }
        consumer.assign(&assignment)?;
        let upstream = self.clone();
        std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                while !upstream.shutdown.is_cancelled() {
                    match consumer.poll(Duration::from_millis(100)) {
                        Some(Ok(record)) => upstream.dispatch(&record),
                        Some(Err(KafkaError::PartitionEOF(_))) | None => {}
                        Some(Err(error)) => tracing::debug!(%error, "dispatcher"),
                    }
                }
            })?;
        Ok(())
    }

    fn dispatch(&self, record: &rdkafka::message::BorrowedMessage<'_>) {
        let Some(topic) = self.topics.iter().position(|t| t == record.topic()) else {
            return;
        };
        let (partition, offset) = (record.partition(), record.offset());
        let headers = record_headers(record);
        let payload = Bytes::copy_from_slice(record.payload().unwrap_or_default());
        match headers::decode(
            record.key(),
            payload,
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        ) {
            Ok(message) => {
                let mut ids = Vec::new();
                // Shared subscriptions are served by their group consumers.
                self.subscriptions
                    .read()
                    .expect("trie lock")
                    .matches(&message.topic, |target| {
                        if target.shared.is_none() {
                            ids.push(target.session);
                        }
                    });
                if !ids.is_empty() {
                    ids.sort_unstable();
                    ids.dedup();
                    let delivery = Arc::new(Delivery {
                        topic,
                        partition,
                        offset,
                        timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                        message,
                        shared: false,
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
        if let Some(position) = self.positions[topic].get(partition as usize) {
            position.store(offset + 1, Ordering::Release);
        }
    }

    /// The dispatcher's position on every partition: (topic, partition) → next offset.
    pub fn positions(&self) -> Vec<Vec<i64>> {
        self.positions
            .iter()
            .map(|t| t.iter().map(|p| p.load(Ordering::Acquire)).collect())
            .collect()
    }

    pub fn partition_count(&self, topic: &str) -> Option<i32> {
        self.partitions.get(topic).copied()
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
        let mut config = reader_config(&self.client);
        let (_, name) = strait_mqtt_codec::topic::parse_shared(group).unwrap_or(("", inner));
        let group_name = group
            .strip_prefix("$share/")
            .and_then(|g| g.split_once('/'))
            .map_or(name, |(g, _)| g);
        config
            // Named after the messages topic too: two bridges on one Kafka do not mix.
            .set(
                "group.id",
                format!(
                    "strait-share:{}:{group_name}:{inner}",
                    self.config.topics.messages
                ),
            )
            // A replica that dies is noticed in 10 s, not Kafka's default 45.
            .set("session.timeout.ms", "10000")
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "true")
            .set("auto.offset.reset", "latest");
        let consumer: BaseConsumer = config.create()?;
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        while !stop.is_cancelled() {
            let polled = consumer.poll(Duration::from_millis(100));
            if !*ready.borrow() {
                let assignment = consumer.assignment()?;
                if assignment.count() > 0 {
                    // A new group starts from the current end of the partitions it has not
                    // consumed yet, so what is published after SUBACK is not skipped.
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
                    // Committed at once, so a replica that takes a partition over in a
                    // rebalance continues from here instead of from its own "latest".
                    if start.count() > 0 {
                        consumer.commit(&start, rdkafka::consumer::CommitMode::Sync)?;
                    }
                    let _ = ready.send(true);
                }
            }
            let record = match polled {
                Some(Ok(record)) => record,
                Some(Err(KafkaError::PartitionEOF(_))) | None => continue,
                Some(Err(error)) => {
                    tracing::debug!(%error, "shared subscription consumer");
                    continue;
                }
            };
            let Some(topic) = self.topics.iter().position(|t| t == record.topic()) else {
                continue;
            };
            let headers = record_headers(&record);
            let Ok(message) = headers::decode(
                record.key(),
                Bytes::copy_from_slice(record.payload().unwrap_or_default()),
                headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
            ) else {
                continue;
            };
            if !strait_mqtt_codec::topic::matches(inner, &message.topic) {
                continue;
            }
            let delivery = Arc::new(Delivery {
                topic,
                partition: record.partition(),
                offset: record.offset(),
                timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                message,
                shared: true,
            });
            // The next member with room; when all are full, wait (the group's delivery pauses).
            loop {
                if stop.is_cancelled() {
                    return Ok(());
                }
                let member = {
                    let mut shared = self.shared.lock().expect("shared lock");
                    let Some(entry) = shared.get_mut(group) else {
                        return Ok(());
                    };
                    let inboxes = self.inboxes.read().expect("inbox lock");
                    let count = entry.members.len();
                    let mut chosen = None;
                    for _ in 0..count {
                        let id = entry.members[entry.turn % count];
                        entry.turn = entry.turn.wrapping_add(1);
                        if let Some(inbox) = inboxes.get(&id)
                            && inbox.try_push_shared(delivery.clone())
                        {
                            chosen = Some(id);
                            break;
                        }
                    }
                    chosen
                };
                if member.is_some() || delivery.message.qos == QoS::AtMostOnce {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
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

/// Creates missing topics (when allowed) and refuses compacted topics that are not.
async fn ensure_topics(
    client: &ClientConfig,
    config: &KafkaConfig,
    messages: &[String],
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client.create().context("creating the Kafka admin client")?;
    let options = AdminOptions::new().request_timeout(Some(METADATA_TIMEOUT));
    let compacted = [&config.topics.retained, &config.topics.sessions];
    if config.create_topics {
        let partitions = config.new_topics.partitions;
        let replication = || TopicReplication::Fixed(config.new_topics.replication_factor);
        let mut new = Vec::new();
        for topic in messages {
            new.push(NewTopic::new(topic, partitions, replication()));
        }
        for topic in compacted {
            new.push(
                NewTopic::new(topic, partitions, replication()).set("cleanup.policy", "compact"),
            );
        }
        for result in admin
            .create_topics(&new, &options)
            .await
            .context("creating the MQTT topics in Kafka")?
        {
            match result {
                Ok(topic) => tracing::info!(topic, "created Kafka topic"),
                Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => bail!("cannot create Kafka topic {topic}: {code}"),
            }
        }
    }
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
