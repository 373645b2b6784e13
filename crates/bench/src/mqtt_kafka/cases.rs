//! The three cases of `strait-bench mqtt-kafka`: publishing, fan-out and idle connections.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures::StreamExt as _;
use strait_mqtt_codec::QoS;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::publish;
use crate::load::Client;
use crate::mqtt::latency::Percentiles;
use crate::mqtt::{idle, throughput};
use crate::procs::{self, Relay, Role, Watched};

use super::{
    ConnectionsOutcome, ConnectionsRow, CpuPerMessage, FanOutOutcome, MqttKafkaArgs, PublishOutcome,
};

/// Subscribers are connected this many at a time.
const OPENING_AT_ONCE: usize = 64;

/// CPU µs per message of each watched process between two readings, by name.
fn cpu_per_message(
    before: &BTreeMap<Role, Duration>,
    after: &BTreeMap<Role, Duration>,
    messages: u64,
) -> CpuPerMessage {
    procs::cpu_us_per_message(before, after, messages)
        .into_iter()
        .map(|(role, us)| (name(role), us))
        .collect()
}

fn name(role: Role) -> &'static str {
    match role {
        Role::Broker => "kafka",
        other => other.name(),
    }
}

/// The publish case against the MQTT listener at `mqtt` (r-proxy's, or a peer's). `others`
/// are processes to report the CPU of beside `watched` (a peer, by name and pid).
pub(super) async fn publish_case(
    args: &MqttKafkaArgs,
    mqtt: SocketAddr,
    watched: &Watched,
    others: &[(&'static str, u32)],
    tag: &str,
) -> anyhow::Result<PublishOutcome> {
    let start = Instant::now();
    let (from, to) = (start + args.warmup, start + args.warmup + args.duration);
    let stop = CancellationToken::new();
    let mut publishers = JoinSet::new();
    for i in 0..args.publishers {
        let settings = publish::Settings {
            topic: format!("bench/{tag}/{i}"),
            payload: args.record_size,
            in_flight: usize::from(args.in_flight),
            rate: None,
            from,
            to,
        };
        let (addr, stop, id) = (mqtt, stop.clone(), format!("{tag}-pub{i}"));
        publishers.spawn(async move { publish::run(addr, &id, settings, stop).await });
    }
    let _stop_on_error = stop.clone().drop_guard();
    tokio::time::sleep_until(from.into()).await;
    let others_cpu = || -> Vec<Option<Duration>> {
        others
            .iter()
            .map(|&(_, pid)| procs::cpu_time(pid).ok())
            .collect()
    };
    let (cpu_before, others_before) = (watched.cpu(), others_cpu());
    tokio::time::sleep_until(to.into()).await;
    let (cpu_after, others_after) = (watched.cpu(), others_cpu());
    let threads = watched
        .processes()
        .iter()
        .map(|&(role, pid)| (name(role), pid))
        .chain(others.iter().copied())
        .filter_map(|(name, pid)| Some((name, procs::threads(pid).ok()?)))
        .collect();
    let mut total = publish::Published::empty();
    while let Some(joined) = publishers.join_next().await {
        total.add(&joined??)?;
    }
    let s_proxy_seconds = cpu_after
        .get(&Role::SProxy)
        .zip(cpu_before.get(&Role::SProxy))
        .map_or(0.0, |(a, b)| a.saturating_sub(*b).as_secs_f64());
    let mut cpu_us_per_msg = cpu_per_message(&cpu_before, &cpu_after, total.acked);
    for ((name, _), (before, after)) in others.iter().zip(others_before.iter().zip(&others_after)) {
        if let (Some(before), Some(after)) = (before, after) {
            let us = after.saturating_sub(*before).as_secs_f64() * 1e6;
            cpu_us_per_msg.insert(name, us / total.acked.max(1) as f64);
        }
    }
    Ok(PublishOutcome {
        publishers: args.publishers,
        in_flight: args.in_flight,
        record_size: args.record_size,
        partitions: args.partitions,
        messages: total.acked,
        per_sec: total.acked as f64 / args.duration.as_secs_f64(),
        puback_us: Percentiles::of(&total.puback),
        cpu_us_per_msg,
        sent: total.sent,
        unacked: total.sent - total.total,
        disconnected: total.disconnected,
        threads,
        s_proxy_per_core: total.acked as f64 / s_proxy_seconds.max(f64::MIN_POSITIVE),
        perf_test: None,
    })
}

pub(super) async fn fan_out_case(
    args: &MqttKafkaArgs,
    relay: &Relay,
    watched: &Watched,
    tag: &str,
) -> anyhow::Result<FanOutOutcome> {
    let topic = format!("bench/{tag}/fan");
    let addr = relay.mqtt;
    let mut opening = futures::stream::iter(0..args.subscribers)
        .map(|i| {
            let (topic, id) = (topic.clone(), format!("{tag}-sub{i}"));
            async move {
                let mut client = Client::connect(addr, &id, 300).await?;
                client.subscribe(&topic, QoS::AtMostOnce).await?;
                anyhow::Ok(client)
            }
        })
        .buffer_unordered(OPENING_AT_ONCE);
    let delivered = Arc::new(AtomicU64::new(0));
    let stop_counting = CancellationToken::new();
    let mut counting = JoinSet::new();
    while let Some(client) = opening.next().await {
        counting.spawn(throughput::count_delivered(
            client.context("connecting a subscriber")?,
            delivered.clone(),
            stop_counting.clone(),
        ));
    }
    drop(opening);
    let _stop_counting = stop_counting.clone().drop_guard();

    let start = Instant::now();
    let (from, to) = (start + args.warmup, start + args.warmup + args.duration);
    let settings = publish::Settings {
        topic,
        payload: args.record_size,
        in_flight: usize::from(args.in_flight),
        rate: Some(args.fanout_rate),
        from,
        to,
    };
    let stop = CancellationToken::new();
    let publisher = tokio::spawn({
        let (stop, id) = (stop.clone(), format!("{tag}-pub"));
        async move { publish::run(addr, &id, settings, stop).await }
    });
    let _stop_on_error = stop.drop_guard();
    tokio::time::sleep_until(from.into()).await;
    let (cpu_before, delivered_before) = (watched.cpu(), delivered.load(Ordering::Relaxed));
    tokio::time::sleep_until(to.into()).await;
    let (cpu_after, delivered_after) = (watched.cpu(), delivered.load(Ordering::Relaxed));
    let published = publisher.await??;
    throughput::drain(&delivered).await;
    stop_counting.cancel();
    while let Some(joined) = counting.join_next().await {
        joined??;
    }
    let in_window = delivered_after - delivered_before;
    let seconds = args.duration.as_secs_f64();
    let expected = published.total * args.subscribers as u64;
    Ok(FanOutOutcome {
        subscribers: args.subscribers,
        rate: args.fanout_rate,
        published_per_sec: published.acked as f64 / seconds,
        delivered_per_sec: in_window as f64 / seconds,
        loss: 1.0 - delivered.load(Ordering::Relaxed) as f64 / expected.max(1) as f64,
        cpu_us_per_delivery: cpu_per_message(&cpu_before, &cpu_after, in_window),
    })
}

pub(super) async fn connections_case(
    args: &MqttKafkaArgs,
    relay: &Relay,
    watched: &Watched,
    kafka_port: u16,
    tag: &str,
) -> anyhow::Result<ConnectionsOutcome> {
    let mut clients = args.clients.clone();
    clients.sort_unstable();
    let mut rows = vec![connections_row(relay, kafka_port, 0, 0).await?];
    let mut open = Vec::new();
    let mut attempted = 0;
    for (step, want) in clients.into_iter().enumerate() {
        let more = want.saturating_sub(attempted);
        eprintln!("connections: opening {more} more sessions (to {want})…");
        let (_, streams) = idle::run(relay.mqtt, watched, more, &format!("{tag}-{step}")).await?;
        open.extend(streams);
        attempted = want;
        rows.push(connections_row(relay, kafka_port, want, open.len()).await?);
    }
    Ok(ConnectionsOutcome { rows })
}

/// Counts s-proxy's Kafka connections several times over a few seconds (librdkafka opens and
/// closes some lazily) and keeps the highest.
async fn connections_row(
    relay: &Relay,
    kafka_port: u16,
    clients: usize,
    open: usize,
) -> anyhow::Result<ConnectionsRow> {
    let mut most = 0;
    for _ in 0..6 {
        most = most.max(procs::connections_to(relay.s_proxy.pid, kafka_port)?);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let mib = |pid| procs::rss_kib(pid).map_or(f64::NAN, |kib| kib as f64 / 1024.0);
    Ok(ConnectionsRow {
        clients,
        open,
        kafka_connections: most,
        s_proxy_rss_mib: mib(relay.s_proxy.pid),
        r_proxy_rss_mib: mib(relay.r_proxy.pid),
    })
}
