//! Shared by the MQTT-on-Kafka tests: s-proxy with `upstream: kafka` on topics of the test's
//! own, r-proxy in front of it, and plain Kafka clients to look at the topics.

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use strait_e2e::{Daemon, free_local_addr, unique_name};
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, QoS};

use crate::support::{BIN, RawClient};

/// `tests/e2e/services stop|start kafka` (the test services of this checkout and state dir):
/// for the tests that take Kafka away, each in a file of its own.
pub fn services(action: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../tests/e2e/services");
    let status = std::process::Command::new(script)
        .args([action, "kafka"])
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "services {action} kafka: {status}");
}

/// The three topics of one test.
#[derive(Debug, Clone)]
pub struct Topics {
    pub messages: String,
    pub retained: String,
    pub sessions: String,
}

impl Topics {
    pub fn unique(test: &str) -> Self {
        let base = unique_name(test);
        Self {
            messages: format!("{base}-messages"),
            retained: format!("{base}-retained"),
            sessions: format!("{base}-sessions"),
        }
    }
}

/// The s-proxy config file for `topics` on `bootstrap`, with `extra` lines in the kafka section.
pub fn s_proxy_config(
    grpc: SocketAddr,
    bootstrap: &str,
    topics: &Topics,
    extra: &str,
) -> std::path::PathBuf {
    let yaml = format!(
        "listen: {grpc}\n\
         upstream: kafka\n\
         kafka:\n  \
           bootstrap: '{bootstrap}'\n  \
           topics: {{ messages: {}, retained: {}, sessions: {} }}\n  \
           newTopics: {{ partitions: 2 }}\n{extra}",
        topics.messages, topics.retained, topics.sessions
    );
    let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("s-proxy-kafka")));
    std::fs::write(&path, yaml).expect("write the s-proxy config");
    path
}

/// s-proxy (Kafka upstream) and r-proxy as processes.
pub struct KafkaRelay {
    pub s_proxy: Daemon,
    pub r_proxy: Daemon,
    pub grpc: SocketAddr,
    pub mqtt: SocketAddr,
    pub topics: Topics,
    pub config: std::path::PathBuf,
}

impl KafkaRelay {
    pub async fn start(bootstrap: &str, test: &str) -> Self {
        Self::start_with(bootstrap, Topics::unique(test), "").await
    }

    pub async fn start_with(bootstrap: &str, topics: Topics, extra: &str) -> Self {
        Self::start_with_r_args(bootstrap, topics, extra, &[]).await
    }

    /// As [`KafkaRelay::start_with`], with extra r-proxy flags.
    pub async fn start_with_r_args(
        bootstrap: &str,
        topics: Topics,
        extra: &str,
        r_args: &[&str],
    ) -> Self {
        let grpc = free_local_addr();
        let config = s_proxy_config(grpc, bootstrap, &topics, extra);
        let s_proxy = start_s_proxy(&config).await;
        let mqtt = free_local_addr();
        let r_proxy =
            crate::support::start_r_proxy(mqtt, &[format!("http://{grpc}")], r_args).await;
        Self {
            s_proxy,
            r_proxy,
            grpc,
            mqtt,
            topics,
            config,
        }
    }

    /// A new s-proxy process on the same address and config (after a kill).
    pub async fn restart_s_proxy(&mut self) {
        self.s_proxy = start_s_proxy(&self.config).await;
    }
}

pub async fn start_s_proxy(config: &std::path::Path) -> Daemon {
    Daemon::start(
        BIN,
        &["s-proxy", "--config", config.to_str().expect("UTF-8 path")],
    )
    .await
}

pub fn v5_connect(client_id: &str, clean_start: bool, expiry: u32) -> mqtt::Connect {
    let mut connect = crate::support::connect_packet(client_id);
    connect.clean_start = clean_start;
    connect.properties.session_expiry_interval = Some(expiry);
    connect
}

pub fn subscribe_packet(packet_id: u16, filters: &[(&str, QoS)]) -> Packet {
    Packet::Subscribe(mqtt::Subscribe {
        packet_id,
        subscriptions: filters
            .iter()
            .map(|(filter, qos)| mqtt::Subscription {
                filter: filter.to_string(),
                options: mqtt::SubscriptionOptions::qos(*qos),
            })
            .collect(),
        ..Default::default()
    })
}

/// Subscribes and returns the SUBACK's reason codes.
pub async fn subscribe(
    client: &mut RawClient,
    packet_id: u16,
    filters: &[(&str, QoS)],
) -> Vec<mqtt::ReasonCode> {
    client.send(&subscribe_packet(packet_id, filters)).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => ack.reason_codes,
        other => panic!("expected SUBACK {packet_id}, got {other:?}"),
    }
}

pub fn publish_packet(topic: &str, qos: QoS, packet_id: u16, payload: &[u8]) -> Packet {
    Packet::Publish(mqtt::Publish {
        qos,
        topic: topic.into(),
        packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
        payload: payload.to_vec().into(),
        ..Default::default()
    })
}

/// Publishes at QoS 1 and returns the PUBACK's reason code. PUBLISHes arriving meanwhile are
/// dropped: publish from a client that is not subscribed to what it sends.
pub async fn publish_qos1(
    client: &mut RawClient,
    topic: &str,
    packet_id: u16,
    payload: &[u8],
) -> mqtt::ReasonCode {
    client
        .send(&publish_packet(topic, QoS::AtLeastOnce, packet_id, payload))
        .await;
    // A subscriber of its own topic may get the message before the PUBACK (the record can
    // reach the dispatcher before its acknowledgement reaches s-proxy): kept for the next read.
    let mut early = Vec::new();
    let reason_code = loop {
        match client.recv_within(Duration::from_secs(30)).await {
            Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => break ack.reason_code,
            Some(publish @ Packet::Publish(_)) => early.push(publish),
            other => panic!("expected PUBACK {packet_id}, got {other:?}"),
        }
    };
    for publish in early {
        client.hold(publish);
    }
    reason_code
}

/// The next PUBLISH within `deadline` (acknowledging QoS 1 ones), `None` if none came.
pub async fn next_publish(client: &mut RawClient, deadline: Duration) -> Option<mqtt::Publish> {
    let until = tokio::time::Instant::now() + deadline;
    loop {
        let left = until.checked_duration_since(tokio::time::Instant::now())?;
        let packet =
            tokio::time::timeout(left, client.recv_within(deadline + Duration::from_secs(1)))
                .await
                .ok()?;
        match packet {
            Some(Packet::Publish(publish)) => {
                if publish.qos == QoS::AtLeastOnce {
                    // The connection may be gone already; the next read tells.
                    let _ = client
                        .try_send(&Packet::PubAck(mqtt::PubAck {
                            packet_id: publish.packet_id,
                            ..Default::default()
                        }))
                        .await;
                }
                return Some(publish);
            }
            Some(_) => {}
            None => return None,
        }
    }
}

/// A plain Kafka consumer (no group) reading every partition of `topic` from the beginning.
pub fn plain_consumer(bootstrap: &str, topic: &str) -> BaseConsumer {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("golden"))
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("a Kafka consumer");
    consumer
        .subscribe(&[topic])
        .expect("subscribe to the topic");
    consumer
}

/// A record as a plain consumer sees it: key, headers (name, value) in order, payload.
pub type PlainRecord = (Option<String>, Vec<(String, Vec<u8>)>, Option<Vec<u8>>);

/// Reads `topic` until a record with `key` arrives (up to 30 s).
pub async fn read_record(bootstrap: &str, topic: &str, key: &str) -> PlainRecord {
    let (bootstrap, topic, key) = (bootstrap.to_string(), topic.to_string(), key.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&bootstrap, &topic);
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            let Some(Ok(record)) = consumer.poll(Duration::from_millis(500)) else {
                continue;
            };
            let record_key = record
                .key()
                .map(|k| String::from_utf8_lossy(k).into_owned());
            if record_key.as_deref() != Some(key.as_str()) {
                continue;
            }
            let headers = record
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                        .collect()
                })
                .unwrap_or_default();
            return (record_key, headers, record.payload().map(<[u8]>::to_vec));
        }
        panic!("no record with key {key:?} in {topic} within 30 s");
    })
    .await
    .expect("reader thread")
}

pub async fn raw_session(
    relay: &KafkaRelay,
    protocol: Protocol,
    connect: mqtt::Connect,
) -> (RawClient, mqtt::ConnAck) {
    RawClient::session(relay.mqtt, protocol, connect).await
}

/// How many records with `key` `topic` holds (reads until 2 s pass without a new record).
pub async fn count_records(bootstrap: &str, topic: &str, key: &str) -> usize {
    let (bootstrap, topic, key) = (bootstrap.to_string(), topic.to_string(), key.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&bootstrap, &topic);
        let mut count = 0;
        let mut quiet_since = std::time::Instant::now();
        let started = std::time::Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2)
            || started.elapsed() < Duration::from_secs(5)
        {
            if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) {
                quiet_since = std::time::Instant::now();
                if record.key() == Some(key.as_bytes()) {
                    count += 1;
                }
            }
        }
        count
    })
    .await
    .expect("reader thread")
}

/// The partitions of the records of `topic` whose key starts with `prefix`, in offset order per
/// partition (reads until 2 s pass without a new record).
pub async fn record_partitions(bootstrap: &str, topic: &str, prefix: &str) -> Vec<i32> {
    let (bootstrap, topic, prefix) = (bootstrap.to_string(), topic.to_string(), prefix.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = plain_consumer(&bootstrap, &topic);
        let mut partitions = Vec::new();
        let mut quiet_since = std::time::Instant::now();
        let started = std::time::Instant::now();
        while quiet_since.elapsed() < Duration::from_secs(2)
            || started.elapsed() < Duration::from_secs(5)
        {
            if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200)) {
                quiet_since = std::time::Instant::now();
                if record
                    .key()
                    .is_some_and(|k| k.starts_with(prefix.as_bytes()))
                {
                    partitions.push(record.partition());
                }
            }
        }
        partitions
    })
    .await
    .expect("reader thread")
}

/// The sum of the offsets consumer group `group` has committed on `partitions` partitions of
/// `topic` (read without joining the group).
pub async fn committed_sum(bootstrap: &str, group: &str, topic: &str, partitions: i32) -> i64 {
    let (bootstrap, group, topic) = (bootstrap.to_string(), group.to_string(), topic.to_string());
    tokio::task::spawn_blocking(move || {
        let consumer = strait_e2e::group_offsets_client(&bootstrap, &group);
        let mut wanted = rdkafka::TopicPartitionList::new();
        for partition in 0..partitions {
            wanted.add_partition(&topic, partition);
        }
        let committed = consumer
            .committed_offsets(wanted, Duration::from_secs(10))
            .expect("committed offsets");
        committed
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                rdkafka::Offset::Offset(offset) => Some(offset),
                _ => None,
            })
            .sum()
    })
    .await
    .expect("reader thread")
}

/// The next packet within `deadline`, `None` when none came (the connection closing counts as
/// none too).
pub async fn next_packet(client: &mut RawClient, deadline: Duration) -> Option<Packet> {
    tokio::time::timeout(
        deadline,
        client.recv_within(deadline + Duration::from_secs(1)),
    )
    .await
    .ok()
    .flatten()
}

/// The value of one series (`name{labels}` exactly as `/metrics` prints it, labels sorted) on
/// the admin endpoint `admin`; `None` while the series does not exist.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (status, body) = strait_e2e::http_get(admin, "/metrics").await.ok()?;
    assert_eq!(status, 200, "/metrics answers 200");
    body.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .map(|value| value.parse().expect("a sample's value is a number"))
}

/// Waits until the series reaches `want` exactly (a gauge) on `admin`.
pub async fn wait_for_metric(admin: SocketAddr, series: &str, want: f64) {
    strait_e2e::wait_until(
        Duration::from_secs(20),
        &format!("{series} to be {want}"),
        || async { (metric(admin, series).await == Some(want)).then_some(()) },
    )
    .await;
}
