//! Prometheus metrics of s-proxy's Kafka upstream, labelled with the role like the relay's
//! (`strait_relay::metrics`). Labels take only fixed values (record kind, QoS, catch-up reason):
//! no client id, topic or group name, so the series count does not grow with users.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::atomic::{AtomicI64, Ordering};

use strait_mqtt_codec::QoS;

use crate::core::headers::RecordError;
pub use crate::core::limits::Limit;

/// At most one warning per this interval about skipped records (the rest at debug level).
const SKIPPED_WARN_EVERY_MS: i64 = 60_000;

/// Every metric this module registers (the chart's dashboard and alerts are checked against it).
pub const METRIC_NAMES: &[&str] = &[
    "strait_mqtt_kafka_records_produced_total",
    "strait_mqtt_kafka_produce_failures_total",
    "strait_mqtt_kafka_produce_ack_seconds",
    "strait_mqtt_kafka_deliveries_total",
    "strait_mqtt_kafka_catch_ups_total",
    "strait_mqtt_kafka_catch_ups_active",
    "strait_mqtt_kafka_catch_up_records_total",
    "strait_mqtt_kafka_catch_up_pauses_total",
    "strait_mqtt_kafka_table_records",
    "strait_mqtt_kafka_table_bytes",
    "strait_mqtt_kafka_shared_groups",
    "strait_mqtt_kafka_shared_members",
    "strait_mqtt_kafka_limit_hits_total",
    "strait_mqtt_kafka_records_skipped_total",
    "strait_mqtt_kafka_catch_up_offsets_reset_total",
];

/// What a produced record is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    /// A PUBLISH (or a will) in its messages topic.
    Messages = 0,
    /// Its copy in the retained topic (RETAIN set).
    Retained = 1,
}

/// Label values, indexed by `RecordKind as usize`, `qos_index` and `CatchUpReason as usize`.
const KINDS: [&str; 2] = ["messages", "retained"];
const QOS: [&str; 3] = ["0", "1", "2"];
const CATCH_UP_REASONS: [&str; 2] = ["resume", "overflow"];

fn qos_index(qos: QoS) -> usize {
    match qos {
        QoS::AtMostOnce => 0,
        QoS::AtLeastOnce => 1,
        QoS::ExactlyOnce => 2,
    }
}

/// Why a session reads records from Kafka itself rather than from the dispatcher.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CatchUpReason {
    /// A persistent session resumed: what it missed while away.
    Resume = 0,
    /// Its delivery queue overflowed: what was dropped from it.
    Overflow = 1,
}

/// Resolved once, so the per-record path only increments (like `strait_relay::metrics`).
pub struct KafkaMetrics {
    /// `[kind][qos]`.
    produced: [[IntCounter; 3]; 2],
    /// `[kind]`.
    produce_failures: [IntCounter; 2],
    /// `[kind][qos]`.
    produce_ack_seconds: [[Histogram; 3]; 2],
    /// `[qos]`.
    deliveries: [IntCounter; 3],
    /// `[reason]`.
    catch_ups: [IntCounter; 2],
    pub catch_ups_active: IntGauge,
    pub catch_up_records: IntCounter,
    /// Catch-ups that gave their reader up while their client's window stayed closed.
    pub catch_up_pauses: IntCounter,
    table_records: IntGaugeVec,
    table_bytes: IntGaugeVec,
    pub shared_groups: IntGauge,
    pub shared_members: IntGauge,
    /// `[limit]`.
    limit_hits: [IntCounter; Limit::LABELS.len()],
    /// `[reason]`, indexed like `RecordError::REASONS`.
    records_skipped: [IntCounter; RecordError::REASONS.len()],
    /// When a skipped record was last logged as a warning (Unix ms, 0: never).
    skipped_warned_ms: AtomicI64,
    /// Catch-ups that found their start offset gone (below the log start: retention or
    /// delete-records) and started from the log start.
    pub catch_up_offsets_reset: IntCounter,
}

/// The two gauges of one in-memory table (retained or sessions topic).
#[derive(Clone)]
pub struct TableGauges {
    pub records: IntGauge,
    pub bytes: IntGauge,
}

impl KafkaMetrics {
    pub fn register(registry: &Registry, role: &str) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("role", role);
        let produced = IntCounterVec::new(
            opts(
                "strait_mqtt_kafka_records_produced_total",
                "Records handed to the Kafka producer, by kind (messages, retained) and the \
                 PUBLISH's QoS",
            ),
            &["kind", "qos"],
        )?;
        let produce_failures = IntCounterVec::new(
            opts(
                "strait_mqtt_kafka_produce_failures_total",
                "Records Kafka did not take (refused when queued, or a failed acknowledgement), \
                 by kind; QoS 0 ones too, which are lost (the client was not told)",
            ),
            &["kind"],
        )?;
        let produce_ack_seconds = HistogramVec::new(
            HistogramOpts::from(opts(
                "strait_mqtt_kafka_produce_ack_seconds",
                "From a record handed to the producer to Kafka's acknowledgement (the PUBACK or \
                 PUBREC waits for it); QoS 0 records are timed too, though no client waits for them",
            ))
            .buckets(vec![
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["kind", "qos"],
        )?;
        let deliveries = IntCounterVec::new(
            opts(
                "strait_mqtt_kafka_deliveries_total",
                "PUBLISHes sent to subscribers, by the QoS they were sent with",
            ),
            &["qos"],
        )?;
        let catch_ups = IntCounterVec::new(
            opts(
                "strait_mqtt_kafka_catch_ups_total",
                "Catch-up reads started, by reason (resume: a persistent session came back; \
                 overflow: its delivery queue was full)",
            ),
            &["reason"],
        )?;
        let catch_ups_active = IntGauge::with_opts(opts(
            "strait_mqtt_kafka_catch_ups_active",
            "Sessions reading what they missed from Kafka now",
        ))?;
        let catch_up_records = IntCounter::with_opts(opts(
            "strait_mqtt_kafka_catch_up_records_total",
            "Records read again from Kafka by catch-ups",
        ))?;
        let catch_up_pauses = IntCounter::with_opts(opts(
            "strait_mqtt_kafka_catch_up_pauses_total",
            "Catch-ups that gave their reader (limits.maxCatchUps) up to others while their client \
             read nothing, resuming from where they were once it read on",
        ))?;
        let table_records = IntGaugeVec::new(
            opts(
                "strait_mqtt_kafka_table_records",
                "Records held in memory from a compacted topic: retained messages (table \
                 retained) or stored sessions (table sessions); every replica holds all",
            ),
            &["table"],
        )?;
        let table_bytes = IntGaugeVec::new(
            opts(
                "strait_mqtt_kafka_table_bytes",
                "Bytes of keys, values and headers of the records in table_records",
            ),
            &["table"],
        )?;
        let shared_groups = IntGauge::with_opts(opts(
            "strait_mqtt_kafka_shared_groups",
            "Shared subscriptions with members on this replica (one consumer group member \
             each)",
        ))?;
        let shared_members = IntGauge::with_opts(opts(
            "strait_mqtt_kafka_shared_members",
            "Sessions on this replica that are members of a shared subscription, summed over \
             the subscriptions",
        ))?;
        let limit_hits = IntCounterVec::new(
            opts(
                "strait_mqtt_kafka_limit_hits_total",
                "Times a client ran into a limit of kafka.limits, by limit: refused with 0x97 \
                 (subscriptions, filters_per_subscribe, shared_subscriptions, shared_groups, \
                 retained), disconnected with 0x93 (receive_maximum), capped (session_expiry) or \
                 made to wait (catch_ups)",
            ),
            &["limit"],
        )?;
        let records_skipped = IntCounterVec::new(
            opts(
                "strait_mqtt_kafka_records_skipped_total",
                "Records of a messages or retained topic not delivered because they cannot \
                 be an MQTT PUBLISH, by reason (no_topic, key_not_utf8, topic_too_long, \
                 topic_null_character, topic_wildcard, topic_invalid)",
            ),
            &["reason"],
        )?;
        let catch_up_offsets_reset = IntCounter::with_opts(opts(
            "strait_mqtt_kafka_catch_up_offsets_reset_total",
            "Partitions a catch-up read from the log start because the session's stored \
             offset was no longer in Kafka (retention or delete-records): those records are lost",
        ))?;
        for collector in [
            Box::new(produced.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(produce_failures.clone()),
            Box::new(produce_ack_seconds.clone()),
            Box::new(deliveries.clone()),
            Box::new(catch_ups.clone()),
            Box::new(catch_ups_active.clone()),
            Box::new(catch_up_records.clone()),
            Box::new(catch_up_pauses.clone()),
            Box::new(table_records.clone()),
            Box::new(table_bytes.clone()),
            Box::new(shared_groups.clone()),
            Box::new(shared_members.clone()),
            Box::new(limit_hits.clone()),
            Box::new(records_skipped.clone()),
            Box::new(catch_up_offsets_reset.clone()),
        ] {
            registry.register(collector)?;
        }
        let by_kind_and_qos = |kind: &str| QOS.map(|qos| produced.with_label_values(&[kind, qos]));
        let ack_by_kind_and_qos =
            |kind: &str| QOS.map(|qos| produce_ack_seconds.with_label_values(&[kind, qos]));
        Ok(Self {
            produced: KINDS.map(by_kind_and_qos),
            produce_failures: KINDS.map(|kind| produce_failures.with_label_values(&[kind])),
            produce_ack_seconds: KINDS.map(ack_by_kind_and_qos),
            deliveries: QOS.map(|qos| deliveries.with_label_values(&[qos])),
            catch_ups: CATCH_UP_REASONS.map(|reason| catch_ups.with_label_values(&[reason])),
            catch_ups_active,
            catch_up_records,
            catch_up_pauses,
            table_records,
            table_bytes,
            shared_groups,
            shared_members,
            limit_hits: Limit::LABELS.map(|limit| limit_hits.with_label_values(&[limit])),
            records_skipped: RecordError::REASONS
                .map(|reason| records_skipped.with_label_values(&[reason])),
            skipped_warned_ms: AtomicI64::new(0),
            catch_up_offsets_reset,
        })
    }

    /// A client ran into `limit`.
    pub fn limit_hit(&self, limit: Limit) {
        self.limit_hits[limit as usize].inc();
    }

    /// Counts a record skipped because it cannot be delivered, and logs it: a warning at most
    /// once a minute (a bad producer may write many), the others at debug level.
    pub fn record_skipped(&self, error: &RecordError, topic: &str, partition: i32, offset: i64) {
        let reason = error.reason();
        if let Some(i) = RecordError::REASONS.iter().position(|r| *r == reason) {
            self.records_skipped[i].inc();
        }
        let now = super::now_ms();
        let warned = self.skipped_warned_ms.load(Ordering::Relaxed);
        let warn = now - warned >= SKIPPED_WARN_EVERY_MS
            && self
                .skipped_warned_ms
                .compare_exchange(warned, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok();
        if warn {
            tracing::warn!(
                %error, topic, partition, offset,
                "skipping a record that cannot be an MQTT PUBLISH (further ones this minute \
                 are logged at debug level; see strait_mqtt_kafka_records_skipped_total)"
            );
        } else {
            tracing::debug!(%error, topic, partition, offset, "skipping a record");
        }
    }

    pub fn produced(&self, kind: RecordKind, qos: QoS) {
        self.produced[kind as usize][qos_index(qos)].inc();
    }

    pub fn produce_failed(&self, kind: RecordKind) {
        self.produce_failures[kind as usize].inc();
    }

    pub fn acknowledged(&self, kind: RecordKind, qos: QoS, took: std::time::Duration) {
        self.produce_ack_seconds[kind as usize][qos_index(qos)].observe(took.as_secs_f64());
    }

    pub fn delivered(&self, qos: QoS) {
        self.deliveries[qos_index(qos)].inc();
    }

    /// Counts a catch-up that starts; it is active until the returned guard is dropped.
    pub fn catch_up(&self, reason: CatchUpReason) -> ActiveCatchUp {
        self.catch_ups[reason as usize].inc();
        self.catch_ups_active.inc();
        ActiveCatchUp(self.catch_ups_active.clone())
    }

    /// The gauges of the table of compacted topic `table` (`retained` or `sessions`).
    pub fn table(&self, table: &str) -> TableGauges {
        TableGauges {
            records: self.table_records.with_label_values(&[table]),
            bytes: self.table_bytes.with_label_values(&[table]),
        }
    }
}

/// Keeps `catch_ups_active` right however a catch-up ends.
pub struct ActiveCatchUp(IntGauge);

impl Drop for ActiveCatchUp {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_exactly_the_listed_metrics_with_the_role() {
        let registry = Registry::new();
        let metrics = KafkaMetrics::register(&registry, "s-proxy").unwrap();
        // Every labelled series but the tables' exists from the start, at zero.
        metrics.table("retained");
        drop(metrics.catch_up(CatchUpReason::Overflow));
        let mut listed = METRIC_NAMES.to_vec();
        listed.sort();
        assert_eq!(strait_runtime::metric_names(&registry), listed);
        let families = registry.gather();
        for family in &families {
            for metric in family.get_metric() {
                assert!(
                    metric
                        .get_label()
                        .iter()
                        .any(|l| l.name() == "role" && l.value() == "s-proxy"),
                    "{} has no role label",
                    family.name()
                );
            }
        }
        assert_eq!(metrics.catch_ups_active.get(), 0, "the guard gave it back");
        let overflow = &families
            .iter()
            .find(|f| f.name() == "strait_mqtt_kafka_catch_ups_total")
            .unwrap()
            .get_metric()
            .iter()
            .find(|m| m.get_label().iter().any(|l| l.value() == "overflow"))
            .unwrap();
        assert_eq!(overflow.get_counter().value(), 1.0);
    }
}
