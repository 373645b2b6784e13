//! Kafka goes away while clients publish through s-proxy (Kafka upstream): publishers get
//! negative acknowledgements, never a false PUBACK, and everything works again once Kafka is
//! back. A file of its own: stopping Kafka would disturb tests running beside it.

mod kafka_support;
mod support;

use std::time::Duration;

use kafka_support::*;
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{Packet, Protocol, QoS, ReasonCode};
use support::connect_packet;

/// A client without keep-alive: Kafka may take a minute to come back, longer than a
/// keep-alive the test would have to serve with PINGREQs.
fn quiet_client(prefix: &str) -> strait_mqtt_codec::Connect {
    let mut connect = connect_packet(&unique_name(prefix));
    connect.keep_alive = 0;
    connect
}

/// Starts Kafka again however the test ends.
struct Outage {
    stopped: bool,
}

impl Outage {
    fn begin() -> Self {
        services("stop");
        Self { stopped: true }
    }

    fn end(&mut self) {
        services("start");
        self.stopped = false;
    }
}

impl Drop for Outage {
    fn drop(&mut self) {
        if self.stopped {
            services("start");
        }
    }
}

#[tokio::test]
async fn kafka_down_gives_negative_acks_then_publishing_recovers() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let relay = KafkaRelay::start_with(
        &kafka,
        Topics::unique("outage"),
        // A producer queue of 256 KiB (64 MiB by default), to fill it in a test.
        "  librdkafka: { message.timeout.ms: '4000', queue.buffering.max.kbytes: '256' }\n",
    )
    .await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, quiet_client("sub")).await;
    subscribe(&mut sub, 1, &[("outage/#", QoS::AtLeastOnce)]).await;
    let (mut publisher, _) = raw_session(&relay, Protocol::V5, quiet_client("pub")).await;
    assert_eq!(
        publish_qos1(&mut publisher, "outage/x", 1, b"before").await,
        ReasonCode::SUCCESS
    );
    assert_eq!(
        &next_publish(&mut sub, Duration::from_secs(10))
            .await
            .expect("before")
            .payload[..],
        b"before"
    );

    let mut outage = Outage::begin();
    let reason = publish_qos1(&mut publisher, "outage/x", 2, b"during").await;
    assert!(
        [ReasonCode::UNSPECIFIED_ERROR, ReasonCode::QUOTA_EXCEEDED].contains(&reason),
        "a publish while Kafka is down is refused, got {}",
        reason.name()
    );
    // A burst larger than the producer's queue: what does not fit is refused at once with 0x97
    // (the rest when Kafka does not take it in time), and nothing is acknowledged falsely.
    let payload = vec![b'x'; 64 * 1024];
    for id in 100..108 {
        publisher
            .send(&publish_packet(
                "outage/burst",
                QoS::AtLeastOnce,
                id,
                &payload,
            ))
            .await;
    }
    let mut codes = Vec::new();
    while codes.len() < 8 {
        match next_packet(&mut publisher, Duration::from_secs(15)).await {
            Some(Packet::PubAck(ack)) => codes.push(ack.reason_code),
            Some(_) => {}
            None => break,
        }
    }
    assert_eq!(
        codes.len(),
        8,
        "every PUBLISH of the burst answered: {codes:?}"
    );
    assert!(
        codes.contains(&ReasonCode::QUOTA_EXCEEDED),
        "the producer's queue is bounded: {codes:?}"
    );
    assert!(!codes.contains(&ReasonCode::SUCCESS), "{codes:?}");
    outage.end();

    // Kafka needs a few seconds to take writes again; each attempt waits for its answer.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut id = 10;
    loop {
        id += 1;
        if publish_qos1(&mut publisher, "outage/x", id, b"after").await == ReasonCode::SUCCESS {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "publishing did not recover within 90 s"
        );
    }
    let mut payloads = Vec::new();
    while let Some(p) = next_publish(&mut sub, Duration::from_secs(15)).await {
        payloads.push(p.payload);
        if payloads.last().is_some_and(|p| &p[..] == b"after") {
            break;
        }
    }
    assert_eq!(
        payloads.last().map(|p| &p[..]),
        Some(&b"after"[..]),
        "the subscriber gets messages again: {payloads:?}"
    );
}
