//! QoS 1 with one message in flight: publish, wait for PUBACK, repeat. Measures the PUBACK round
//! trip at the publisher and the publish → delivery latency at a QoS 1 subscriber.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use serde::Serialize;
use strait_mqtt_codec::{Packet, PubAck, Publish, QoS};
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::Window;
use crate::load::Client;
use crate::procs::{Role, Watched, cpu_us_per_message};

/// The publisher stops after this many messages even if its time is not up.
const MAX_MESSAGES: u64 = 10_000_000;
/// A PUBACK slower than this fails the case: something is broken, not slow.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Payload: send time (ns since the case started, u64 LE), a "measured" flag, padding.
const PAYLOAD_LEN: usize = 16;

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub window: Window,
}

#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Messages published (and acknowledged) during the window.
    pub messages: u64,
    pub per_sec: f64,
    /// PUBLISH sent → PUBACK received, at the publisher.
    pub puback_us: Percentiles,
    /// PUBLISH sent → PUBLISH received by the subscriber.
    pub end_to_end_us: Percentiles,
    /// Messages of the window the subscriber received.
    pub delivered: u64,
    /// CPU time per message in the window, µs, by process.
    pub cpu_us_per_msg: BTreeMap<Role, f64>,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// From a histogram of nanoseconds, in µs.
    pub fn of(histogram: &Histogram<u64>) -> Self {
        let us = |ns: u64| ns as f64 / 1000.0;
        Self {
            p50: us(histogram.value_at_quantile(0.50)),
            p90: us(histogram.value_at_quantile(0.90)),
            p99: us(histogram.value_at_quantile(0.99)),
            max: us(histogram.max()),
        }
    }
}

/// Nanoseconds from 1 µs to 60 s, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1_000, 60_000_000_000, 3).expect("valid histogram bounds")
}

pub async fn run(
    addr: SocketAddr,
    watched: &Watched,
    settings: Settings,
    tag: &str,
) -> anyhow::Result<Latency> {
    let topic = format!("strait-bench/{tag}");
    let mut subscriber = Client::connect(addr, &format!("{tag}-sub"), 60).await?;
    subscriber.subscribe(&topic, QoS::AtLeastOnce).await?;
    let mut publisher = Client::connect(addr, &format!("{tag}-pub"), 60).await?;

    let start = Instant::now();
    let stop = CancellationToken::new();
    let receiving = AbortOnDropHandle::new(tokio::spawn(receive(subscriber, start, stop.clone())));

    let (window_start, window_end) = settings.window.bounds(start);
    let cpu = async {
        tokio::time::sleep_until(window_start.into()).await;
        let before = watched.cpu();
        tokio::time::sleep_until(window_end.into()).await;
        (before, watched.cpu())
    };
    let publishing = publish(&mut publisher, &topic, start, window_start, window_end);
    let (published, (cpu_before, cpu_after)) = tokio::join!(publishing, cpu);
    let (messages, puback) = published?;

    // Let the last deliveries arrive, then collect the subscriber's histogram.
    let deadline = Instant::now() + Duration::from_secs(2);
    tokio::time::sleep_until(deadline.into()).await;
    stop.cancel();
    let end_to_end = receiving.await??;
    Ok(Latency {
        messages,
        per_sec: messages as f64 / settings.window.duration.as_secs_f64(),
        puback_us: Percentiles::of(&puback),
        end_to_end_us: Percentiles::of(&end_to_end),
        delivered: end_to_end.len(),
        cpu_us_per_msg: cpu_us_per_message(&cpu_before, &cpu_after, messages),
    })
}

/// Publishes one message at a time until `window_end`; returns how many were sent within the
/// window and their PUBACK latencies.
async fn publish(
    client: &mut Client,
    topic: &str,
    start: Instant,
    window_start: Instant,
    window_end: Instant,
) -> anyhow::Result<(u64, Histogram<u64>)> {
    let mut latencies = histogram();
    let mut measured = 0;
    let mut packet_id: u16 = 0;
    for _ in 0..MAX_MESSAGES {
        let sent = Instant::now();
        if sent >= window_end {
            break;
        }
        let in_window = sent >= window_start;
        packet_id = packet_id.checked_add(1).unwrap_or(1);
        let mut payload = BytesMut::with_capacity(PAYLOAD_LEN);
        payload.put_u64_le((sent - start).as_nanos() as u64);
        payload.put_u8(in_window.into());
        payload.resize(PAYLOAD_LEN, 0);
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id,
            payload: payload.freeze(),
            ..Publish::default()
        };
        client.send(&Packet::Publish(publish)).await?;
        tokio::time::timeout(PUBACK_TIMEOUT, wait_for_puback(client, packet_id))
            .await
            .with_context(|| format!("no PUBACK within {PUBACK_TIMEOUT:?}"))??;
        if in_window {
            latencies.saturating_record(sent.elapsed().as_nanos() as u64);
            measured += 1;
        }
    }
    Ok((measured, latencies))
}

async fn wait_for_puback(client: &mut Client, packet_id: u16) -> anyhow::Result<()> {
    loop {
        match client.recv().await? {
            Packet::PubAck(ack) if ack.packet_id == packet_id => {
                if ack.reason_code.is_error() {
                    bail!("PUBACK refused: {}", ack.reason_code.name());
                }
                return Ok(());
            }
            Packet::PubAck(_) => {}
            other => bail!("expected PUBACK, got {}", other.name()),
        }
    }
}

/// The subscriber: acknowledges every message and records the latency of those sent in the
/// window, until stopped.
async fn receive(
    mut client: Client,
    start: Instant,
    stop: CancellationToken,
) -> anyhow::Result<Histogram<u64>> {
    let mut latencies = histogram();
    let mut acks = Vec::new();
    loop {
        while let Some(packet) = client.next_buffered()? {
            let Packet::Publish(publish) = packet else {
                continue;
            };
            let received = start.elapsed().as_nanos() as u64;
            if let Some((sent, true)) = sent_at(&publish.payload) {
                latencies.saturating_record(received.saturating_sub(sent));
            }
            acks.push(publish.packet_id);
        }
        for packet_id in acks.drain(..) {
            let ack = PubAck {
                packet_id,
                ..PubAck::default()
            };
            client.send(&Packet::PubAck(ack)).await?;
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(latencies),
            read = client.read_more() => read?,
        }
    }
}

/// The send time and the "measured" flag written by [`publish`].
fn sent_at(payload: &Bytes) -> Option<(u64, bool)> {
    let nanos = u64::from_le_bytes(payload.get(..8)?.try_into().ok()?);
    Some((nanos, *payload.get(8)? == 1))
}
