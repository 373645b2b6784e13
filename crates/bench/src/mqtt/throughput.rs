//! QoS 0 pipelined throughput: publishers write PUBLISH packets as fast as the server reads
//! them, one subscriber counts what is delivered.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use strait_mqtt_codec::QoS;
use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;

use super::Window;
use crate::load::{self, Client};
use crate::procs::{Role, Watched, cpu_us_per_message};

/// Each publisher writes about this many bytes of packets per `write()`.
const BATCH_BYTES: usize = 64 * 1024;
/// A publisher stops after this many messages even if its time is not up.
const MAX_MESSAGES_PER_PUBLISHER: u64 = 500_000_000;
/// After publishing stops, how long the subscriber may keep receiving the backlog, and how long
/// it must have been quiet to count as drained.
const DRAIN_LIMIT: Duration = Duration::from_secs(15);
const DRAIN_QUIET: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub publishers: usize,
    pub payload: usize,
    pub window: Window,
}

#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Messages the subscriber received per second during the measurement window.
    pub delivered_per_sec: f64,
    /// Messages the publishers wrote per second during the window.
    pub published_per_sec: f64,
    /// Whole run (warm-up included), after the subscriber drained what was in flight.
    pub published_total: u64,
    pub delivered_total: u64,
    /// 1 − delivered_total / published_total: what the broker dropped (QoS 0 may be dropped).
    pub loss: f64,
    /// CPU time per delivered message in the window, µs, by process.
    pub cpu_us_per_msg: BTreeMap<Role, f64>,
}

impl Throughput {
    /// Delivered msg/s of `self` as a multiple of `direct`'s: the figure the targets judge.
    pub fn delivered_vs(&self, direct: &Throughput) -> f64 {
        self.delivered_per_sec / direct.delivered_per_sec.max(f64::MIN_POSITIVE)
    }

    /// Rounds of the same load as one result: rates and CPU per message averaged (the rounds
    /// are equally long), totals summed, the loss over the sums.
    pub fn merge(rounds: &[Throughput]) -> Throughput {
        let n = rounds.len().max(1) as f64;
        let mean = |f: fn(&Throughput) -> f64| rounds.iter().map(f).sum::<f64>() / n;
        let published_total = rounds.iter().map(|r| r.published_total).sum::<u64>();
        let delivered_total = rounds.iter().map(|r| r.delivered_total).sum::<u64>();
        let mut cpu_us_per_msg = BTreeMap::new();
        for round in rounds {
            for (role, us) in &round.cpu_us_per_msg {
                *cpu_us_per_msg.entry(*role).or_insert(0.0) += us / n;
            }
        }
        Throughput {
            delivered_per_sec: mean(|r| r.delivered_per_sec),
            published_per_sec: mean(|r| r.published_per_sec),
            published_total,
            delivered_total,
            loss: 1.0 - delivered_total as f64 / published_total.max(1) as f64,
            cpu_us_per_msg,
        }
    }
}

pub async fn run(
    addr: SocketAddr,
    watched: &Watched,
    settings: Settings,
    tag: &str,
) -> anyhow::Result<Throughput> {
    let topic = format!("strait-bench/{tag}");
    let mut subscriber = Client::connect(addr, &format!("{tag}-sub"), 60).await?;
    subscriber.subscribe(&topic, QoS::AtMostOnce).await?;

    let delivered = Arc::new(AtomicU64::new(0));
    let stop_subscriber = CancellationToken::new();
    let counting = AbortOnDropHandle::new(tokio::spawn(count_delivered(
        subscriber,
        delivered.clone(),
        stop_subscriber.clone(),
    )));

    let packet_len = load::publish_len(&topic, settings.payload)?;
    let per_write = (BATCH_BYTES / packet_len).max(1);
    let batch = load::publish_batch(&topic, Bytes::from(vec![b'x'; settings.payload]), per_write)?;
    let published = Arc::new(AtomicU64::new(0));
    let stop_publishing = CancellationToken::new();
    let start = Instant::now();
    let mut publishers = JoinSet::new();
    for i in 0..settings.publishers {
        publishers.spawn(publish(
            addr,
            format!("{tag}-pub{i}"),
            batch.clone(),
            packet_len,
            published.clone(),
            stop_publishing.clone(),
        ));
    }

    let (window_start, window_end) = settings.window.bounds(start);
    tokio::time::sleep_until(window_start.into()).await;
    let cpu_before = watched.cpu();
    let (delivered_before, published_before) = (
        delivered.load(Ordering::Relaxed),
        published.load(Ordering::Relaxed),
    );
    tokio::time::sleep_until(window_end.into()).await;
    let cpu_after = watched.cpu();
    let elapsed = window_start.elapsed().as_secs_f64();
    let in_window = delivered.load(Ordering::Relaxed) - delivered_before;
    let published_in_window = published.load(Ordering::Relaxed) - published_before;

    // Stop publishing but keep the connections until the subscriber has everything.
    stop_publishing.cancel();
    let mut publisher_clients = Vec::new();
    while let Some(joined) = publishers.join_next().await {
        publisher_clients.push(joined??);
    }
    drain(&delivered).await;
    stop_subscriber.cancel();
    counting.await??;
    drop(publisher_clients);

    let published_total = published.load(Ordering::Relaxed);
    let delivered_total = delivered.load(Ordering::Relaxed);
    Ok(Throughput {
        delivered_per_sec: in_window as f64 / elapsed,
        published_per_sec: published_in_window as f64 / elapsed,
        published_total,
        delivered_total,
        loss: 1.0 - delivered_total as f64 / published_total.max(1) as f64,
        cpu_us_per_msg: cpu_us_per_message(&cpu_before, &cpu_after, in_window),
    })
}

/// One publisher: the same batch of QoS 0 PUBLISH packets written over and over until told to
/// stop (or [`MAX_MESSAGES_PER_PUBLISHER`]). Counts the packets written whole, so a write cut
/// short by the stop is counted exactly. Returns the client so the connection stays open while
/// the subscriber drains.
async fn publish(
    addr: SocketAddr,
    client_id: String,
    batch: Bytes,
    packet_len: usize,
    published: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<Client> {
    let mut client = Client::connect(addr, &client_id, 60).await?;
    let (mut offset, mut bytes, mut counted) = (0, 0, 0);
    while counted < MAX_MESSAGES_PER_PUBLISHER {
        tokio::select! {
            biased;
            _ = stop.cancelled() => break,
            written = client.stream.write(&batch[offset..]) => {
                let written = written?;
                anyhow::ensure!(written > 0, "connection closed by the server");
                offset = (offset + written) % batch.len();
                bytes += written as u64;
            }
        }
        let whole = bytes / packet_len as u64;
        published.fetch_add(whole - counted, Ordering::Relaxed);
        counted = whole;
    }
    Ok(client)
}

pub async fn count_delivered(
    mut client: Client,
    delivered: Arc<AtomicU64>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    loop {
        let publishes = client.skip_buffered()?;
        delivered.fetch_add(publishes, Ordering::Relaxed);
        tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            read = client.read_more() => read?,
        }
    }
}

/// Waits until nothing more arrives for [`DRAIN_QUIET`], at most [`DRAIN_LIMIT`].
pub async fn drain(delivered: &AtomicU64) {
    let deadline = Instant::now() + DRAIN_LIMIT;
    let mut last = delivered.load(Ordering::Relaxed);
    let mut quiet_since = Instant::now();
    while Instant::now() < deadline && quiet_since.elapsed() < DRAIN_QUIET {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let now = delivered.load(Ordering::Relaxed);
        if now != last {
            last = now;
            quiet_since = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(
        delivered_per_sec: f64,
        published: u64,
        delivered: u64,
        r_proxy_us: f64,
    ) -> Throughput {
        Throughput {
            delivered_per_sec,
            published_per_sec: delivered_per_sec,
            published_total: published,
            delivered_total: delivered,
            loss: 0.0,
            cpu_us_per_msg: BTreeMap::from([(Role::RProxy, r_proxy_us)]),
        }
    }

    #[test]
    fn rounds_merge_into_means_of_rates_and_the_loss_of_the_sums() {
        let merged =
            Throughput::merge(&[round(100.0, 1000, 1000, 2.0), round(300.0, 1000, 800, 4.0)]);
        assert_eq!(merged.delivered_per_sec, 200.0);
        assert_eq!(merged.published_per_sec, 200.0);
        assert_eq!(
            (merged.published_total, merged.delivered_total),
            (2000, 1800)
        );
        assert!((merged.loss - 0.1).abs() < 1e-9, "{}", merged.loss);
        assert_eq!(merged.cpu_us_per_msg[&Role::RProxy], 3.0);
    }
}
