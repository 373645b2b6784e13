//! The one place Kafka clients are made: one client configuration per connection (bootstrap,
//! TLS, SASL, pass-through properties), and from it producers, readers, group consumers and
//! admin clients, all reporting their failures through [`KafkaReport`].

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic};
use rdkafka::client::ClientContext;
use rdkafka::config::FromClientConfigAndContext;
use rdkafka::consumer::{BaseConsumer, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::types::RDKafkaErrorCode;
use strait_config::kafka::{Acks, KafkaConnection};
use tokio_util::sync::CancellationToken;

use crate::{KafkaClientError, KafkaReport};

/// Every producer of the project.
pub type Producer = FutureProducer<KafkaReport>;
/// A consumer that is assigned its partitions (no group, nothing committed), polled on a thread
/// of its own (see [`crate::poll`]).
pub type Reader = BaseConsumer<KafkaReport>;
/// The same, read from async tasks.
pub type StreamReader = StreamConsumer<KafkaReport>;
pub type Admin = AdminClient<KafkaReport>;

/// Most record bytes a producer holds before Kafka has taken them (see [`KafkaClients::producer`]).
pub const PRODUCER_QUEUE_KBYTES: &str = "65536";

/// The group id of readers that assign their partitions themselves: librdkafka wants one, but
/// nothing is committed under it.
const UNUSED_GROUP: &str = "strait-reader-unused";

/// How long a producer holds records to send more of them in one request (`linger.ms`) when
/// `kafka.properties` does not set it.
///
/// This is the one producer setting the workloads cannot share; both values are measured
/// (docs/benchmarks.md, "Figures the code's design rests on"). MQTT publishing streams many
/// small records, where a longer linger sends fewer, fuller requests: 5 ms gave the most QoS 1
/// messages/s at the least CPU. A gRPC call waits for its request record and then for its reply
/// record, so each millisecond held counts twice in the call's latency: 1 ms keeps unary calls
/// under their p50 target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Linger {
    /// 5 ms: throughput of many small records (MQTT).
    Batch,
    /// 1 ms: a caller waits for each record (gRPC calls and replies).
    Latency,
    /// None: each record goes as soon as the producer can send it (s-proxy's quick lane, for
    /// MQTT clients that wait for each PUBACK while the load is light).
    None,
}

impl Linger {
    fn millis(self) -> &'static str {
        match self {
            Self::Batch => "5",
            Self::Latency => "1",
            Self::None => "0",
        }
    }
}

/// The settings of one Kafka connection, from which every client of it is made. Cloning is
/// cheap enough for a few clients (the configuration is a small map); never log it: it holds
/// the SASL password.
#[derive(Clone)]
pub struct KafkaClients {
    config: ClientConfig,
    report: KafkaReport,
}

impl KafkaClients {
    /// Reads the connection's settings (the SASL password from its file now).
    pub fn new(connection: &KafkaConnection) -> Result<Self, KafkaClientError> {
        let mut config = ClientConfig::new();
        for (key, value) in connection.client_properties()?.iter() {
            config.set(key, value);
        }
        for (key, value) in &connection.properties {
            config.set(key, value);
        }
        Ok(Self {
            config,
            report: KafkaReport::new(connection),
        })
    }

    /// Clients from librdkafka `properties` already built (the operator's, from Secrets held in
    /// memory), reporting through `report`.
    pub fn from_properties<'a>(
        properties: impl IntoIterator<Item = (&'a str, &'a str)>,
        report: KafkaReport,
    ) -> Self {
        let mut config = ClientConfig::new();
        for (key, value) in properties {
            config.set(key, value);
        }
        Self { config, report }
    }

    /// The librdkafka property `key` every client of the connection gets.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.config.get(key)
    }

    pub fn report(&self) -> &KafkaReport {
        &self.report
    }

    /// Waits until the cluster answers a metadata request with these settings, so a role is
    /// ready only once Kafka lets it in. Each failure is logged as it happens (see
    /// [`KafkaReport`]); every 30 s a line says the role still waits. `false` if `shutdown`
    /// came first.
    pub async fn wait_for_cluster(
        &self,
        shutdown: &CancellationToken,
    ) -> Result<bool, KafkaClientError> {
        crate::report::wait_for_cluster(&self.config, &self.report, shutdown).await
    }

    /// A producer writing with `acks`; acks=all producers are idempotent, so retries inside
    /// librdkafka neither duplicate nor reorder records. Every producer also:
    /// - places keyed records with the Java client's partitioner (murmur2), so Strait, Zilla and
    ///   Java producers put one key (an MQTT topic, a correlation id) on the same partition,
    ///   and s-proxy can compute that partition itself (QoS 2 bookkeeping);
    /// - gives up on a record after 10 s (`message.timeout.ms`), so a write Kafka cannot take
    ///   fails visibly (MQTT: a negative PUBACK; gRPC: the call's error or a retry) instead of
    ///   waiting librdkafka's default five minutes;
    /// - lingers as `linger` says;
    /// - holds at most 64 MiB of records not yet written (`queue.buffering.max.kbytes`; librdkafka
    ///   would hold 1 GiB), so while Kafka is away a producer refuses more at once (MQTT: PUBACK
    ///   0x97 Quota exceeded) instead of growing the process.
    ///
    /// `kafka.properties` may set `linger.ms`, `message.timeout.ms` and the partitioner (the
    /// MQTT config refuses the latter); what the caller acknowledges is still acknowledged only
    /// after Kafka has (PUBACK, PUBREC and replies wait for the delivery report).
    pub fn producer(&self, acks: Acks, linger: Linger) -> Result<Producer, KafkaClientError> {
        let mut config = self.config.clone();
        config.set("acks", acks.as_kafka());
        if acks == Acks::All {
            config.set("enable.idempotence", "true");
        }
        for (key, default) in [
            ("partitioner", "murmur2_random"),
            ("linger.ms", linger.millis()),
            ("message.timeout.ms", "10000"),
            ("queue.buffering.max.kbytes", PRODUCER_QUEUE_KBYTES),
        ] {
            if config.get(key).is_none() {
                config.set(key, default);
            }
        }
        create(&config, self.report.clone(), "producer")
    }

    /// The configuration of a consumer in `group` (or in none, for readers that assign their
    /// partitions): nothing committed automatically, no partition-end events, no producer-only
    /// properties. `settings` come last.
    fn consumer_config(&self, group: Option<&str>, settings: &[(&str, &str)]) -> ClientConfig {
        let mut config = self.config.clone();
        config
            .set("group.id", group.unwrap_or(UNUSED_GROUP))
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        for producer_only in ["linger.ms", "message.timeout.ms", "delivery.timeout.ms"] {
            config.remove(producer_only);
        }
        // What a consumer fetches ahead is bounded: librdkafka's defaults (100,000 messages or
        // 64 MiB per consumer) let a process with a few dozen readers (catch-ups, shared
        // groups) hold gigabytes when a topic is busy. The librdkafka map may set others.
        for (key, value) in [
            ("queued.max.messages.kbytes", "8192"),
            ("queued.min.messages", "10000"),
        ] {
            if config.get(key).is_none() {
                config.set(key, value);
            }
        }
        for (key, value) in settings {
            config.set(*key, *value);
        }
        config
    }

    /// A reader that is assigned its partitions (`what` names it in errors).
    pub fn reader(&self, what: &'static str) -> Result<Reader, KafkaClientError> {
        create(&self.consumer_config(None, &[]), self.report.clone(), what)
    }

    /// A reader for async tasks, with `settings` (e.g. `fetch.wait.max.ms`) over the reader
    /// defaults; `group` only names the client to the brokers, offsets are never committed.
    pub fn stream_reader(
        &self,
        group: &str,
        settings: &[(&str, &str)],
        what: &'static str,
    ) -> Result<StreamReader, KafkaClientError> {
        let config = self.consumer_config(Some(group), settings);
        create(&config, self.report.clone(), what)
    }

    /// A member of consumer group `group` (a `BaseConsumer` or a `StreamConsumer`), with
    /// `settings` over the reader defaults and its own `context` (for rebalance callbacks),
    /// which should pass errors and logs on to [`Self::report`]. Offsets are committed only
    /// by the caller.
    pub fn group_member<T, C>(
        &self,
        group: &str,
        settings: &[(&str, &str)],
        context: C,
        what: &'static str,
    ) -> Result<T, KafkaClientError>
    where
        C: ClientContext,
        T: FromClientConfigAndContext<C>,
    {
        create(&self.consumer_config(Some(group), settings), context, what)
    }

    /// A consumer that never subscribes nor fetches: it asks the cluster for metadata,
    /// watermarks and consumer groups, and, given a `group`, that group's coordinator for its
    /// committed offsets (the operator's lag readings). It commits nothing.
    pub fn offsets_reader(&self, group: Option<&str>) -> Result<Reader, KafkaClientError> {
        let mut config = self.config.clone();
        if let Some(group) = group {
            config.set("group.id", group);
        }
        config.set("enable.auto.commit", "false");
        create(&config, self.report.clone(), "offsets reader")
    }

    pub fn admin(&self) -> Result<Admin, KafkaClientError> {
        self.admin_with(&[])
    }

    /// An admin client with `settings` (e.g. `socket.timeout.ms`) over the connection's.
    pub fn admin_with(&self, settings: &[(&str, &str)]) -> Result<Admin, KafkaClientError> {
        let mut config = self.config.clone();
        for (key, value) in settings {
            config.set(*key, *value);
        }
        create(&config, self.report.clone(), "admin client")
    }
}

fn create<T, C>(
    config: &ClientConfig,
    context: C,
    what: &'static str,
) -> Result<T, KafkaClientError>
where
    C: ClientContext,
    T: FromClientConfigAndContext<C>,
{
    config
        .create_with_context(context)
        .map_err(|error| KafkaClientError::Client { what, error })
}

/// Creates `topics` unless they exist; returns the names of those it created.
pub async fn create_topics(
    admin: &Admin,
    topics: &[NewTopic<'_>],
    timeout: Duration,
) -> Result<Vec<String>, KafkaClientError> {
    let options = AdminOptions::new().request_timeout(Some(timeout));
    let results = admin
        .create_topics(topics, &options)
        .await
        .map_err(|error| KafkaClientError::Client {
            what: "topic creation request",
            error,
        })?;
    let mut created = Vec::new();
    for result in results {
        match result {
            Ok(topic) => created.push(topic),
            Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(KafkaClientError::Topic {
                    topic,
                    reason: format!("cannot create it: {code}"),
                });
            }
        }
    }
    Ok(created)
}
