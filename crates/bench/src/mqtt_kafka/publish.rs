//! Pipelined QoS 1 publishers: each keeps up to `in_flight` PUBLISHes unacknowledged, writes
//! whatever the window allows in one `write()`, and records every PUBACK's round trip.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::{Bytes, BytesMut};
use hdrhistogram::Histogram;
use strait_mqtt_codec::{self as mqtt, Packet, Publish, QoS};
use tokio::io::AsyncWriteExt;
use tokio_util::sync::CancellationToken;

use crate::load::{Client, PROTOCOL};
use crate::mqtt::latency::histogram;

/// A PUBACK slower than this fails the case: something is broken, not slow.
const PUBACK_TIMEOUT: Duration = Duration::from_secs(10);

/// What one publisher does.
#[derive(Debug, Clone)]
pub struct Settings {
    pub topic: String,
    pub payload: usize,
    /// PUBLISHes sent and not yet acknowledged, at most (s-proxy grants a Receive Maximum of
    /// 256).
    pub in_flight: usize,
    /// Messages per second, or as fast as PUBACKs come back.
    pub rate: Option<f64>,
    /// Messages sent in `[from, to)` are measured; publishing stops at `to`.
    pub from: Instant,
    pub to: Instant,
}

/// One publisher's results.
#[derive(Debug)]
pub struct Published {
    /// Messages sent within the window and acknowledged before its end.
    pub acked: u64,
    /// PUBLISHes sent in all (warm-up included).
    pub sent: u64,
    /// Messages acknowledged in all (warm-up included, and those acknowledged after the window
    /// while the publisher waited for the last PUBACKs).
    pub total: u64,
    /// PUBLISH → PUBACK of those, ns.
    pub puback: Histogram<u64>,
    /// Publishers the server sent DISCONNECT (each stopped there).
    pub disconnected: u64,
}

impl Published {
    pub fn empty() -> Self {
        Self {
            acked: 0,
            sent: 0,
            total: 0,
            puback: histogram(),
            disconnected: 0,
        }
    }

    pub fn add(&mut self, other: &Self) -> anyhow::Result<()> {
        self.acked += other.acked;
        self.sent += other.sent;
        self.total += other.total;
        self.disconnected += other.disconnected;
        self.puback.add(&other.puback)?;
        Ok(())
    }
}

/// An encoded QoS 1 PUBLISH whose packet id can be rewritten in place.
struct Template {
    bytes: BytesMut,
    packet_id_at: usize,
}

impl Template {
    fn new(topic: &str, payload: usize) -> anyhow::Result<Self> {
        let publish = Publish {
            qos: QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id: 1,
            payload: Bytes::from(vec![b'x'; payload]),
            ..Publish::default()
        };
        let mut bytes = BytesMut::new();
        mqtt::encode(&Packet::Publish(publish), PROTOCOL, &mut bytes)?;
        // Variable header: topic (2-byte length + name), packet id, properties; then payload.
        let remaining = 2 + topic.len() + 2 + 1 + payload;
        let packet_id_at = bytes.len() - remaining + 2 + topic.len();
        let template = Self {
            bytes,
            packet_id_at,
        };
        anyhow::ensure!(
            template.bytes[packet_id_at..packet_id_at + 2] == [0, 1],
            "unexpected PUBLISH layout"
        );
        Ok(template)
    }

    fn append(&mut self, packet_id: u16, out: &mut BytesMut) {
        let at = self.packet_id_at;
        self.bytes[at..at + 2].copy_from_slice(&packet_id.to_be_bytes());
        out.extend_from_slice(&self.bytes);
    }
}

/// Connects as `client_id` and publishes until `settings.to` (or `stop`), then waits up to
/// [`PUBACK_TIMEOUT`] for the PUBACKs still due, so `sent - total` counts the PUBLISHes never
/// acknowledged. A publisher that gets no PUBACK for that long stops publishing (a peer that
/// drops PUBACKs fills the window); the case reports the shortfall.
pub async fn run(
    addr: SocketAddr,
    client_id: &str,
    settings: Settings,
    stop: CancellationToken,
) -> anyhow::Result<Published> {
    let mut client = Client::connect(addr, client_id, 60).await?;
    let mut template = Template::new(&settings.topic, settings.payload)?;
    let mut sent_at: Vec<Option<Instant>> = vec![None; usize::from(u16::MAX) + 1];
    let mut result = Published::empty();
    let (mut next_id, mut outstanding, mut issued) = (1u16, 0usize, 0u64);
    let mut out = BytesMut::new();
    let started = Instant::now();
    let mut last_ack = Instant::now();
    while !stop.is_cancelled() {
        let now = Instant::now();
        if now >= settings.to {
            break;
        }
        let mut room = settings.in_flight - outstanding;
        if let Some(rate) = settings.rate {
            let due = (rate * (now - started).as_secs_f64()) as u64;
            room = room.min(due.saturating_sub(issued) as usize);
        }
        if room > 0 {
            out.clear();
            for _ in 0..room {
                template.append(next_id, &mut out);
                sent_at[usize::from(next_id)] = Some(now);
                next_id = next_id.checked_add(1).unwrap_or(1);
            }
            client.stream.write_all(&out).await?;
            outstanding += room;
            issued += room as u64;
            if outstanding == room {
                last_ack = now;
            }
        }
        // The next message due at the rate, if the window has room for it.
        let next_due = settings
            .rate
            .filter(|_| outstanding < settings.in_flight)
            .map(|rate| started + Duration::from_secs_f64((issued + 1) as f64 / rate));
        tokio::select! {
            read = client.read_more() => read?,
            _ = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            } => {}
            _ = tokio::time::sleep_until(settings.to.into()) => break,
            _ = stop.cancelled() => break,
        }
        while let Some(packet) = client.next_buffered()? {
            let ack = match packet {
                Packet::PubAck(ack) => ack,
                // Zilla does this to pipelined publishers (docs/benchmarks.md): counted, and
                // what it left unacknowledged shows in `sent - total`.
                Packet::Disconnect(disconnect) => {
                    eprintln!(
                        "WARNING: {client_id}: DISCONNECT {} from the server with {outstanding} \
                         in flight",
                        disconnect.reason_code.name()
                    );
                    result.disconnected = 1;
                    result.sent = issued;
                    return Ok(result);
                }
                other => bail!("expected PUBACK, got {}", other.name()),
            };
            if ack.reason_code.is_error() {
                bail!("PUBACK refused: {}", ack.reason_code.name());
            }
            let sent = sent_at[usize::from(ack.packet_id)]
                .take()
                .with_context(|| format!("PUBACK for packet id {} not in flight", ack.packet_id))?;
            outstanding -= 1;
            result.total += 1;
            last_ack = Instant::now();
            if sent >= settings.from && sent < settings.to {
                result.acked += 1;
                result
                    .puback
                    .saturating_record(sent.elapsed().as_nanos() as u64);
            }
        }
        if outstanding > 0 && last_ack.elapsed() > PUBACK_TIMEOUT {
            eprintln!(
                "WARNING: {client_id}: no PUBACK within {PUBACK_TIMEOUT:?}, {outstanding} in \
                 flight: stopped publishing"
            );
            break;
        }
    }
    // The PUBACKs still due (not measured: only counted).
    let deadline = last_ack.max(Instant::now()) + PUBACK_TIMEOUT;
    while outstanding > 0 && !stop.is_cancelled() && Instant::now() < deadline {
        match tokio::time::timeout_at(deadline.into(), client.read_more()).await {
            Ok(read) => read?,
            Err(_) => break,
        }
        while let Some(packet) = client.next_buffered()? {
            let Packet::PubAck(ack) = packet else {
                bail!("expected PUBACK, got {}", packet.name());
            };
            if ack.reason_code.is_error() {
                bail!("PUBACK refused: {}", ack.reason_code.name());
            }
            if sent_at[usize::from(ack.packet_id)].take().is_some() {
                outstanding -= 1;
                result.total += 1;
            }
        }
    }
    result.sent = issued;
    Ok(result)
}
