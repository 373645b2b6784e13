//! Prometheus metrics of grpc-kafka and kafka-grpc, labelled with the role.
//!
//! Method labels come only from methods the `.proto` files describe (or a record's headers in
//! kafka-grpc, truncated), so a client cannot create series at will.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Every metric [`GrpcMetrics`] registers (the chart's dashboard and alerts are checked
/// against it).
pub const METRIC_NAMES: &[&str] = &[
    "strait_grpc_calls_total",
    "strait_grpc_call_seconds",
    "strait_grpc_calls_in_flight",
    "strait_grpc_retries_total",
    "strait_grpc_dead_letters_total",
    "strait_grpc_reply_failures_total",
    "strait_grpc_duplicate_calls_total",
    "strait_grpc_bad_records_total",
    "strait_grpc_refused_total",
    "strait_grpc_consumer_lag",
    "strait_grpc_limit_hits_total",
    "strait_grpc_connections",
    "strait_grpc_fetch_streams",
    "strait_grpc_fetch_consumers",
    "strait_grpc_dedup_bytes",
    "strait_grpc_dedup_evictions_total",
];

#[derive(Clone)]
pub struct GrpcMetrics {
    calls: IntCounterVec,
    latency: HistogramVec,
    pub in_flight: IntGauge,
    pub retries: IntCounterVec,
    pub dead_letters: IntCounterVec,
    /// Calls whose reply Kafka did not take (kafka-grpc): dead-lettered, or given up on.
    pub reply_failures: IntCounterVec,
    pub duplicates: IntCounterVec,
    pub bad_records: IntCounterVec,
    /// Calls (grpc-kafka) and request records (kafka-grpc) refused before reaching Kafka or
    /// the service, by reason.
    pub refused: IntCounterVec,
    pub consumer_lag: IntGaugeVec,
    /// Calls refused (or answers not kept) because a configured limit was reached, by the
    /// limit's config field, e.g. `limits.maxFetchStreams`.
    pub limit_hits: IntCounterVec,
    /// Client connections open (grpc-kafka).
    pub connections: IntGauge,
    /// `fetch` streams open (grpc-kafka).
    pub fetch_streams: IntGauge,
    /// Kafka consumers open for fetch streams: one shared reader per fetched topic, plus one
    /// per stream while it catches up (grpc-kafka).
    pub fetch_consumers: IntGauge,
    /// Bytes of recorded answers kept for repeated calls (kafka-grpc).
    pub dedup_bytes: IntGauge,
    /// Recorded answers forgotten before their window ended, by the bound that forced it
    /// (kafka-grpc).
    pub dedup_evictions: IntCounterVec,
    /// Method labels in use: at most [`MAX_METHODS`]; later ones are counted as `other`.
    methods: std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

/// Distinct method labels per process (kafka-grpc takes method names from record headers,
/// which any producer writes).
const MAX_METHODS: usize = 1000;

/// Names longer than this are cut in labels.
const MAX_LABEL: usize = 128;

impl GrpcMetrics {
    pub fn register(registry: &Registry, role: &str) -> prometheus::Result<Self> {
        let opts = |name: &str, help: &str| Opts::new(name, help).const_label("role", role);
        let calls = IntCounterVec::new(
            opts(
                "strait_grpc_calls_total",
                "gRPC calls finished, by method and status code",
            ),
            &["method", "code"],
        )?;
        let latency = HistogramVec::new(
            HistogramOpts::from(opts(
                "strait_grpc_call_seconds",
                "Time from a call's start to its end status",
            ))
            .buckets(vec![
                0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
            &["method"],
        )?;
        let in_flight =
            IntGauge::with_opts(opts("strait_grpc_calls_in_flight", "Calls in progress"))?;
        let retries = IntCounterVec::new(
            opts(
                "strait_grpc_retries_total",
                "Calls retried after UNAVAILABLE",
            ),
            &["method"],
        )?;
        let dead_letters = IntCounterVec::new(
            opts(
                "strait_grpc_dead_letters_total",
                "Requests written to the dead-letter topic",
            ),
            &["method"],
        )?;
        let reply_failures = IntCounterVec::new(
            opts(
                "strait_grpc_reply_failures_total",
                "Calls whose reply Kafka did not take: the request is dead-lettered (or given up \
                 on without a deadLetterTopic) so its partition moves on",
            ),
            &["method"],
        )?;
        let duplicates = IntCounterVec::new(
            opts(
                "strait_grpc_duplicate_calls_total",
                "Redelivered or retried calls answered from recorded replies",
            ),
            &["method"],
        )?;
        let bad_records = IntCounterVec::new(
            opts(
                "strait_grpc_bad_records_total",
                "Records that could not be used, by reason",
            ),
            &["reason"],
        )?;
        let refused = IntCounterVec::new(
            opts(
                "strait_grpc_refused_total",
                "Calls refused by caller authentication or method permissions (grpc-kafka) and request records refused for a reply topic their route does not allow (kafka-grpc), by reason",
            ),
            &["reason"],
        )?;
        let consumer_lag = IntGaugeVec::new(
            opts(
                "strait_grpc_consumer_lag",
                "Records between the consumer's position and the end of each partition",
            ),
            &["topic", "partition"],
        )?;
        let limit_hits = IntCounterVec::new(
            opts(
                "strait_grpc_limit_hits_total",
                "Calls refused with RESOURCE_EXHAUSTED (or answers not recorded) because a configured limit was reached, by limit",
            ),
            &["limit"],
        )?;
        let connections =
            IntGauge::with_opts(opts("strait_grpc_connections", "Client connections open"))?;
        let fetch_streams =
            IntGauge::with_opts(opts("strait_grpc_fetch_streams", "fetch streams open"))?;
        let fetch_consumers = IntGauge::with_opts(opts(
            "strait_grpc_fetch_consumers",
            "Kafka consumers open for fetch streams: a shared reader per fetched topic, and one per stream catching up",
        ))?;
        let dedup_bytes = IntGauge::with_opts(opts(
            "strait_grpc_dedup_bytes",
            "Bytes of recorded answers kept for answering repeated calls",
        ))?;
        let dedup_evictions = IntCounterVec::new(
            opts(
                "strait_grpc_dedup_evictions_total",
                "Recorded answers forgotten before their dedupWindow ended, by the bound that forced it (a repeat of such a call calls the service again)",
            ),
            &["bound"],
        )?;
        registry.register(Box::new(limit_hits.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(fetch_streams.clone()))?;
        registry.register(Box::new(fetch_consumers.clone()))?;
        registry.register(Box::new(dedup_bytes.clone()))?;
        registry.register(Box::new(dedup_evictions.clone()))?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(latency.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        registry.register(Box::new(retries.clone()))?;
        registry.register(Box::new(dead_letters.clone()))?;
        registry.register(Box::new(reply_failures.clone()))?;
        registry.register(Box::new(duplicates.clone()))?;
        registry.register(Box::new(bad_records.clone()))?;
        registry.register(Box::new(refused.clone()))?;
        registry.register(Box::new(consumer_lag.clone()))?;
        Ok(Self {
            calls,
            latency,
            in_flight,
            retries,
            dead_letters,
            reply_failures,
            duplicates,
            bad_records,
            refused,
            consumer_lag,
            limit_hits,
            connections,
            fetch_streams,
            fetch_consumers,
            dedup_bytes,
            dedup_evictions,
            methods: Default::default(),
        })
    }

    /// Counts a call refused by `limit` (its config field) and returns the status that says so.
    pub fn limit_reached(&self, limit: &str, status: tonic::Status) -> tonic::Status {
        self.limit_hits.with_label_values(&[limit]).inc();
        status
    }

    /// Records one finished call.
    pub fn finished(&self, method: &str, code: tonic::Code, elapsed: std::time::Duration) {
        let method = self.method_label(method);
        self.calls
            .with_label_values(&[method, &(code as i32).to_string()])
            .inc();
        self.latency
            .with_label_values(&[method])
            .observe(elapsed.as_secs_f64());
    }
}

impl GrpcMetrics {
    /// `name` (cut to 128 characters) as a label, or `other` once [`MAX_METHODS`] are in use.
    pub fn method_label<'a>(&self, name: &'a str) -> &'a str {
        let name = label(name);
        let mut methods = self.methods.lock().expect("methods lock poisoned");
        if methods.contains(name) {
            return name;
        }
        if methods.len() >= MAX_METHODS {
            return "other";
        }
        methods.insert(name.to_owned());
        name
    }
}

fn label(name: &str) -> &str {
    match name.char_indices().nth(MAX_LABEL) {
        Some((at, _)) => &name[..at],
        None => name,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn method_labels_are_bounded() {
        let metrics = GrpcMetrics::register(&Registry::new(), "test").unwrap();
        for i in 0..MAX_METHODS {
            assert_eq!(
                metrics.method_label(&format!("a.S/M{i}")),
                format!("a.S/M{i}")
            );
        }
        assert_eq!(
            metrics.method_label("a.S/M0"),
            "a.S/M0",
            "known labels stay"
        );
        assert_eq!(metrics.method_label("a.S/New"), "other");
        let long = "x".repeat(500);
        assert_eq!(label(&long).len(), 128);
    }

    #[test]
    fn registers_exactly_the_listed_metrics() {
        let registry = Registry::new();
        let metrics = GrpcMetrics::register(&registry, "grpc-kafka").unwrap();
        // Labelled families appear once a series exists.
        metrics.finished(
            "a.S/M",
            tonic::Code::Ok,
            std::time::Duration::from_millis(1),
        );
        for counter in [
            &metrics.retries,
            &metrics.dead_letters,
            &metrics.reply_failures,
            &metrics.duplicates,
        ] {
            counter.with_label_values(&["a.S/M"]).inc();
        }
        metrics.bad_records.with_label_values(&["decode"]).inc();
        metrics.refused.with_label_values(&["no_token"]).inc();
        metrics.consumer_lag.with_label_values(&["t", "0"]).set(1);
        metrics
            .limit_hits
            .with_label_values(&["limits.maxFetchStreams"])
            .inc();
        metrics.dedup_evictions.with_label_values(&["bytes"]).inc();
        let mut listed = METRIC_NAMES.to_vec();
        listed.sort();
        assert_eq!(strait_runtime::metric_names(&registry), listed);
    }
}
