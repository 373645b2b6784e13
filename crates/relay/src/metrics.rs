//! Prometheus metrics of the MQTT relay, resolved once so the per-packet path only increments.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};
use strait_mqtt_codec::PacketType;

/// Which way a packet travels, as seen from the MQTT client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the client towards the upstream.
    Inbound = 0,
    /// From the upstream towards the client.
    Outbound = 1,
}

const PACKET_TYPES: [PacketType; 15] = [
    PacketType::Connect,
    PacketType::ConnAck,
    PacketType::Publish,
    PacketType::PubAck,
    PacketType::PubRec,
    PacketType::PubRel,
    PacketType::PubComp,
    PacketType::Subscribe,
    PacketType::SubAck,
    PacketType::Unsubscribe,
    PacketType::UnsubAck,
    PacketType::PingReq,
    PacketType::PingResp,
    PacketType::Disconnect,
    PacketType::Auth,
];

/// Every metric [`RelayMetrics`] registers (the chart's dashboard and alerts are checked
/// against it).
pub const METRIC_NAMES: &[&str] = &[
    "strait_mqtt_sessions_active",
    "strait_mqtt_sessions_total",
    "strait_mqtt_packets_total",
    "strait_mqtt_bytes_total",
    "strait_mqtt_relay_errors_total",
    "strait_mqtt_session_setup_seconds",
    "strait_mqtt_restored_subscriptions_dropped_total",
    "strait_mqtt_keep_alive_capped_total",
    "strait_mqtt_connects_paced_total",
];

/// Metrics of one relay role (`r-proxy` or `s-proxy`), labelled with it.
#[derive(Clone)]
pub struct RelayMetrics {
    pub sessions_active: IntGauge,
    pub sessions_total: IntCounter,
    /// `[direction][packet type - 1]`.
    packets: [[IntCounter; 15]; 2],
    bytes: [IntCounter; 2],
    errors: IntCounterVec,
    pub session_setup_seconds: Histogram,
    /// Stored subscriptions a resumed session lost because its permissions no longer allow them.
    pub restored_subscriptions_dropped: IntCounter,
    /// Sessions whose keep-alive r-proxy lowered, or set where the client asked for none
    /// (`limits.maxKeepAlive`).
    pub keep_alive_capped: IntCounter,
    /// CONNECTs that waited their turn under `limits.maxConnectRate` (refused ones are counted
    /// as errors, `connect_rate`).
    pub connects_paced: IntCounter,
}

impl RelayMetrics {
    pub fn register(registry: &Registry, role: &str) -> prometheus::Result<Self> {
        let with_role = |name: &str, help: &str| Opts::new(name, help).const_label("role", role);
        let sessions_active = IntGauge::with_opts(with_role(
            "strait_mqtt_sessions_active",
            "MQTT sessions currently relayed",
        ))?;
        let sessions_total = IntCounter::with_opts(with_role(
            "strait_mqtt_sessions_total",
            "MQTT sessions opened since start",
        ))?;
        let packets = IntCounterVec::new(
            with_role("strait_mqtt_packets_total", "MQTT packets relayed"),
            &["direction", "type"],
        )?;
        let bytes = IntCounterVec::new(
            with_role(
                "strait_mqtt_bytes_total",
                "MQTT bytes relayed (encoded packet size)",
            ),
            &["direction"],
        )?;
        let errors = IntCounterVec::new(
            with_role(
                "strait_mqtt_relay_errors_total",
                "Sessions ended by an error, by kind",
            ),
            &["kind"],
        )?;
        let session_setup_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "strait_mqtt_session_setup_seconds",
                "From CONNECT received to CONNACK sent (r-proxy) or relayed (s-proxy)",
            )
            .const_label("role", role)
            .buckets(vec![
                0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
            ]),
        )?;
        let keep_alive_capped = IntCounter::with_opts(with_role(
            "strait_mqtt_keep_alive_capped_total",
            "Sessions whose keep-alive was lowered to limits.maxKeepAlive, or set where the client asked for none",
        ))?;
        let connects_paced = IntCounter::with_opts(with_role(
            "strait_mqtt_connects_paced_total",
            "CONNECTs that waited their turn under limits.maxConnectRate (refused ones count as \
             errors, kind connect_rate)",
        ))?;
        let restored_subscriptions_dropped = IntCounter::with_opts(with_role(
            "strait_mqtt_restored_subscriptions_dropped_total",
            "Subscriptions of resumed persistent sessions dropped: the client's permissions no \
             longer allow them",
        ))?;
        for collector in [
            Box::new(sessions_active.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(sessions_total.clone()),
            Box::new(packets.clone()),
            Box::new(bytes.clone()),
            Box::new(errors.clone()),
            Box::new(session_setup_seconds.clone()),
            Box::new(restored_subscriptions_dropped.clone()),
            Box::new(keep_alive_capped.clone()),
            Box::new(connects_paced.clone()),
        ] {
            registry.register(collector)?;
        }
        let per_type = |direction: &str| {
            PACKET_TYPES.map(|t| packets.with_label_values(&[direction, t.name()]))
        };
        Ok(Self {
            sessions_active,
            sessions_total,
            packets: [per_type("inbound"), per_type("outbound")],
            bytes: [
                bytes.with_label_values(&["inbound"]),
                bytes.with_label_values(&["outbound"]),
            ],
            errors,
            session_setup_seconds,
            restored_subscriptions_dropped,
            keep_alive_capped,
            connects_paced,
        })
    }

    pub fn packet(&self, direction: Direction, packet_type: PacketType) {
        self.packets[direction as usize][packet_type as usize - 1].inc();
    }

    pub fn bytes(&self, direction: Direction, count: usize) {
        self.bytes[direction as usize].inc_by(count as u64);
    }

    /// Counts a session ended by an error; `kind` is a short stable label.
    pub fn error(&self, kind: &str) {
        self.errors.with_label_values(&[kind]).inc();
    }
}

/// Keeps `sessions_active` right however a session task ends.
pub struct ActiveSession(IntGauge);

impl ActiveSession {
    pub fn start(metrics: &RelayMetrics) -> Self {
        metrics.sessions_total.inc();
        metrics.sessions_active.inc();
        Self(metrics.sessions_active.clone())
    }
}

impl Drop for ActiveSession {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_exactly_the_listed_metrics() {
        let registry = Registry::new();
        let metrics = RelayMetrics::register(&registry, "s-proxy").unwrap();
        // Labelled families appear once a series exists.
        metrics.error("protocol");
        let mut listed = METRIC_NAMES.to_vec();
        listed.sort();
        assert_eq!(strait_runtime::metric_names(&registry), listed);
    }
}
