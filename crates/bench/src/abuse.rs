//! `strait-bench abuse`: misbehaving MQTT clients against r-proxy → s-proxy on Kafka, while a
//! well-behaved client publishes at QoS 1. Passes when the proxies' threads and memory stay
//! within stated bounds and, under each vector on its own, the good client's PUBACK p99 stays
//! within 2x of its value without the abuse. All vectors at once are run too: the bounds on
//! threads and memory hold there as well, and the latency is reported (on a small box it
//! measures the box's capacity more than any limit).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use strait_mqtt_codec::{
    Connect, Packet, Publish, QoS, ReasonCode, Subscribe, Subscription, SubscriptionOptions,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::load::Client;
use crate::mqtt::latency::{Percentiles, histogram};
use crate::procs::{self, ProxyArgs, Relay};

/// The good client's PUBACK p99 under abuse, at most this multiple of its p99 without.
const MAX_P99_RATIO: f64 = 2.0;
/// Threads r-proxy and grpc-kafka may gain under the abuse.
const MAX_EXTRA_THREADS: u64 = 64;
/// Threads s-proxy may gain: a Kafka consumer is a thread of ours and librdkafka's four, and
/// the defaults allow one client 8 shared groups (40) and 16 catch-up readers at once (80),
/// plus the blocking threads of end-offset lookups (at most 12).
const MAX_EXTRA_S_PROXY_THREADS: u64 = 140;
/// Resident memory each proxy may gain under the abuse.
const MAX_EXTRA_RSS_MIB: u64 = 256;

pub const LONG_ABOUT: &str = "\
    Runs the ways a device fleet can try to exhaust Strait against r-proxy → s-proxy on Kafka \
    (fresh topics, default limits), each on its own and then all at once, while one \
    well-behaved client publishes QoS 1 messages one at a time:\n  \
    shared-groups  one client subscribing to 300 distinct $share groups (each would be a Kafka \
    consumer and threads)\n  \
    subscriptions  one client sending SUBSCRIBEs of 1,000 filters, again and again\n  \
    receive-max    clients sending QoS 2 PUBLISHes without PUBREL past the Receive Maximum, \
    reconnecting after each 0x93\n  \
    oversized      clients sending 8 MiB PUBLISHes (over the maximum packet size), reconnecting\n  \
    idle-sockets   500 TCP connections that never send CONNECT\n  \
    reconnects     200 persistent sessions reconnecting at once to catch up on missed \
    messages, again and again\n\n\
    Then the same against grpc-kafka → Kafka → kafka-grpc → an echo service, while one client \
    makes unary calls one at a time:\n  \
    fetch-streams  1,000 fetch streams opened at once\n  \
    connections    2,000 TCP connections held open\n\n\
    Reports the good client's PUBACK latency without the abuse and under each vector and all \
    of them, and each proxy's threads and resident memory before and at their peak; fails when \
    a bound is exceeded (p99 at most 2x under each vector alone; threads and memory throughout). \
    Measure release builds.";

pub const EXAMPLES: &str = "\
    Example (Kafka from tests/e2e/services):\n  \
    tests/e2e/services up kafka && eval \"$(tests/e2e/services env)\"\n  \
    cargo build --release -p strait-proxy -p strait-bench\n  \
    $CARGO_TARGET_DIR/release/strait-bench abuse";

#[derive(Debug, Clone, clap::Args)]
pub struct AbuseArgs {
    /// Kafka bootstrap servers.
    #[arg(long, env = "KAFKA_BOOTSTRAP")]
    pub kafka: String,

    #[command(flatten)]
    pub proxies: ProxyArgs,

    /// QoS 1 messages the well-behaved client publishes for each measurement.
    #[arg(long, default_value_t = 2000)]
    pub probe: usize,

    /// MQTT vectors left out, comma-separated (shared-groups, subscriptions, receive-max,
    /// oversized, idle-sockets, reconnects): to see which one costs the good client what.
    #[arg(long, value_delimiter = ',')]
    pub skip: Vec<String>,
}

pub async fn run(args: AbuseArgs) -> anyhow::Result<()> {
    let bin = args.proxies.bin()?;
    let run_id = format!("{}-{}", std::process::id(), crate::grpc::rand_suffix());
    let dir = std::env::temp_dir().join(format!("strait-bench-abuse-{run_id}"));
    std::fs::create_dir_all(&dir)?;
    let (config, topics) = crate::mqtt_kafka::s_proxy_config(
        &dir,
        &args.kafka,
        &format!("bench-abuse-{run_id}"),
        4,
        "",
        &[],
    )?;
    eprintln!("strait-bench abuse: logs and config in {}", dir.display());
    let spec = args.proxies.relay(
        bin,
        vec!["--config".into(), config.display().to_string()],
        dir,
    );
    let mut relay = Relay::start(&spec).await?;
    let result = measure(&args, &mut relay).await;
    relay.stop().await;
    let names: Vec<&str> = topics.iter().map(String::as_str).collect();
    if let Err(error) = crate::grpc::delete_topics(&args.kafka, &names).await {
        eprintln!("WARNING: bench topics not deleted: {error:#}");
    }
    let mut report = result?;
    print!("{report}");
    let grpc = grpc(&args).await?;
    print!("{grpc}");
    report.push_str(&grpc);
    if report.contains("FAIL") {
        bail!("a bound was exceeded");
    }
    Ok(())
}

/// What one proxy process holds.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    threads: u64,
    rss_kib: u64,
}

/// The most each process held, sampled every 200 ms until `stop`.
fn peaks(pids: Vec<u32>, stop: CancellationToken) -> tokio::task::JoinHandle<Vec<Held>> {
    tokio::spawn(async move {
        let mut peak = vec![Held::default(); pids.len()];
        while !stop.is_cancelled() {
            for (p, pid) in peak.iter_mut().zip(&pids) {
                let now = held(*pid);
                p.threads = p.threads.max(now.threads);
                p.rss_kib = p.rss_kib.max(now.rss_kib);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        peak
    })
}

fn held(pid: u32) -> Held {
    Held {
        threads: procs::threads(pid).unwrap_or(0),
        rss_kib: procs::rss_kib(pid).unwrap_or(0),
    }
}

/// The MQTT vectors, in the order they are tried.
const VECTORS: &[&str] = &[
    "shared-groups",
    "subscriptions",
    "receive-max",
    "oversized",
    "idle-sockets",
    "reconnects",
];

/// Starts the abusers of `vector`.
fn spawn_vector(
    vector: &str,
    addr: SocketAddr,
    stop: &CancellationToken,
    abusers: &mut JoinSet<anyhow::Result<String>>,
) {
    match vector {
        "shared-groups" => drop(abusers.spawn(shared_groups(addr, stop.clone()))),
        "subscriptions" => drop(abusers.spawn(subscriptions(addr, stop.clone()))),
        "receive-max" => {
            (0..2).for_each(|i| drop(abusers.spawn(receive_max(addr, i, stop.clone()))))
        }
        "oversized" => (0..2).for_each(|i| drop(abusers.spawn(oversized(addr, i, stop.clone())))),
        "idle-sockets" => drop(abusers.spawn(idle_connections(addr, 500, stop.clone()))),
        "reconnects" => drop(abusers.spawn(reconnects(addr, stop.clone()))),
        other => unreachable!("unknown vector {other}"),
    }
}

/// Runs `vectors` at once while the good client is measured: what they did, and its latency.
async fn under(
    vectors: &[&str],
    addr: SocketAddr,
    probes: usize,
) -> anyhow::Result<(Vec<String>, Percentiles)> {
    let stop = CancellationToken::new();
    let mut abusers = JoinSet::new();
    for vector in vectors {
        spawn_vector(vector, addr, &stop, &mut abusers);
    }
    // Let every vector get going before measuring.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let abused = probe(addr, probes).await;
    stop.cancel();
    let mut effects = Vec::new();
    while let Some(done) = abusers.join_next().await {
        effects.push(done.context("abuse task")??);
    }
    Ok((effects, abused?))
}

async fn measure(args: &AbuseArgs, relay: &mut Relay) -> anyhow::Result<String> {
    let addr = relay.mqtt;
    // Warm up, then the baseline.
    prepare_reconnects(addr).await?;
    probe(addr, args.probe / 4).await?;
    let calm = probe(addr, args.probe).await?;
    let before = [held(relay.r_proxy.pid), held(relay.s_proxy.pid)];
    let vectors: Vec<&str> = VECTORS
        .iter()
        .copied()
        .filter(|v| !args.skip.iter().any(|s| s == v))
        .collect();

    let stop = CancellationToken::new();
    let sampler = peaks(vec![relay.r_proxy.pid, relay.s_proxy.pid], stop.clone());
    // Each vector on its own: the good client's p99 must stay within the bound.
    let mut one_at_a_time = Vec::new();
    for vector in &vectors {
        eprintln!("strait-bench abuse: {vector}…");
        let (effects, abused) = under(&[vector], addr, args.probe).await?;
        relay.check_running()?;
        one_at_a_time.push((effects, abused));
    }
    // Then all of them at once: the processes' bounds still hold; the latency is reported.
    eprintln!("strait-bench abuse: every vector at once…");
    let together = under(&vectors, addr, args.probe).await;
    stop.cancel();
    let peak = sampler.await?;
    relay.check_running()?;
    let together = together?;
    let mut measured: Vec<Measured> = vectors
        .iter()
        .zip(one_at_a_time)
        .map(|(vector, (effects, abused))| Measured {
            label: format!("{vector} alone"),
            effects,
            abused,
            checked: true,
        })
        .collect();
    measured.push(Measured {
        label: "every vector at once (the box's capacity: latency reported, not checked)".into(),
        effects: together.0,
        abused: together.1,
        checked: false,
    });
    report(
        "r-proxy -> s-proxy on Kafka",
        &format!("{} QoS 1 PUBLISHes one at a time: PUBACK", args.probe),
        calm,
        &measured,
        &[
            ("r-proxy", MAX_EXTRA_THREADS, before[0], peak[0]),
            ("s-proxy", MAX_EXTRA_S_PROXY_THREADS, before[1], peak[1]),
        ],
    )
}

/// Waits for every abuser's account of what it did, and the peaks sampled meanwhile.
async fn finish(
    mut abusers: JoinSet<anyhow::Result<String>>,
    sampler: tokio::task::JoinHandle<Vec<Held>>,
) -> anyhow::Result<(Vec<String>, Vec<Held>)> {
    let mut effects = Vec::new();
    while let Some(done) = abusers.join_next().await {
        effects.push(done.context("abuse task")??);
    }
    Ok((effects, sampler.await?))
}

/// The good client's latency under some vectors, and what the vectors did.
struct Measured {
    label: String,
    effects: Vec<String>,
    abused: Percentiles,
    /// Whether its p99 must stay within [`MAX_P99_RATIO`] of the calm one.
    checked: bool,
}

/// What one side of the bench saw: the good client's latency calm and under each measurement,
/// and each process's threads and memory (name, thread bound, before, peak), with verdicts.
fn report(
    path: &str,
    good: &str,
    calm: Percentiles,
    measured: &[Measured],
    processes: &[(&str, u64, Held, Held)],
) -> anyhow::Result<String> {
    use std::fmt::Write as _;
    let verdict = |ok: bool| if ok { "ok" } else { "FAIL" };
    let mut out = String::new();
    writeln!(out, "strait-bench abuse: {path}, default limits")?;
    writeln!(
        out,
        "good client, {good} p50/p99 {:.0}/{:.0} µs calm",
        calm.p50, calm.p99
    )?;
    for m in measured {
        writeln!(out, "{}:", m.label)?;
        for effect in &m.effects {
            writeln!(out, "  {effect}")?;
        }
        let ratio = m.abused.p99 / calm.p99;
        let bound = if m.checked {
            format!(
                "(at most x{MAX_P99_RATIO}) {}",
                verdict(ratio <= MAX_P99_RATIO)
            )
        } else {
            "(not checked)".into()
        };
        writeln!(
            out,
            "  good client p50/p99 {:.0}/{:.0} µs: p99 x{ratio:.2} {bound}",
            m.abused.p50, m.abused.p99
        )?;
    }
    for (name, max_threads, before, peak) in processes {
        let threads = peak.threads.saturating_sub(before.threads);
        let rss_mib = peak.rss_kib.saturating_sub(before.rss_kib) / 1024;
        writeln!(
            out,
            "{name}: threads {} -> peak {} (+{threads}, at most +{max_threads}) {}; RSS {} -> \
             peak {} MiB (+{rss_mib}, at most +{MAX_EXTRA_RSS_MIB}) {}",
            before.threads,
            peak.threads,
            verdict(threads <= *max_threads),
            before.rss_kib / 1024,
            peak.rss_kib / 1024,
            verdict(rss_mib <= MAX_EXTRA_RSS_MIB)
        )?;
    }
    Ok(out)
}

/// The well-behaved client: QoS 1 PUBLISHes one at a time, PUBACK latency.
async fn probe(addr: SocketAddr, count: usize) -> anyhow::Result<Percentiles> {
    let mut client = Client::connect(addr, &format!("good-{}", crate::grpc::rand_suffix()), 60)
        .await
        .context("the well-behaved client")?;
    let mut latencies = histogram();
    for i in 0..count {
        let packet_id = (i % 60_000 + 1) as u16;
        let started = Instant::now();
        client
            .send(&Packet::Publish(Publish {
                qos: QoS::AtLeastOnce,
                topic: "good/probe".into(),
                packet_id,
                payload: Bytes::from_static(&[0; 100]),
                ..Publish::default()
            }))
            .await?;
        match client.recv().await? {
            Packet::PubAck(ack) if ack.packet_id == packet_id && !ack.reason_code.is_error() => {}
            other => bail!("the well-behaved client got {other:?}"),
        }
        latencies.record(started.elapsed().as_nanos() as u64)?;
    }
    Ok(Percentiles::of(&latencies))
}

fn subscribe_packet(packet_id: u16, filters: impl IntoIterator<Item = String>) -> Packet {
    Packet::Subscribe(Subscribe {
        packet_id,
        subscriptions: filters
            .into_iter()
            .map(|filter| Subscription {
                filter,
                options: SubscriptionOptions::qos(QoS::AtLeastOnce),
            })
            .collect(),
        ..Subscribe::default()
    })
}

/// Reads up to the next SUBACK (PUBLISHes of earlier subscriptions may come first) and counts
/// its refused and granted filters.
async fn tally(
    client: &mut Client,
    granted: &mut usize,
    refused: &mut usize,
) -> anyhow::Result<()> {
    let ack = loop {
        match client.recv().await? {
            Packet::SubAck(ack) => break ack,
            Packet::Publish(_) => {}
            other => bail!("expected SUBACK, got {}", other.name()),
        }
    };
    for code in ack.reason_codes {
        if code.is_error() {
            *refused += 1;
        } else {
            *granted += 1;
        }
    }
    Ok(())
}

async fn shared_groups(addr: SocketAddr, _stop: CancellationToken) -> anyhow::Result<String> {
    let mut client = Client::connect(addr, "abuse-shared", 0).await?;
    let (mut granted, mut refused) = (0, 0);
    for batch in 0..10u16 {
        let filters = (0..30).map(|i| format!("$share/g{}/abuse/#", batch * 30 + i));
        client.send(&subscribe_packet(batch + 1, filters)).await?;
        tally(&mut client, &mut granted, &mut refused).await?;
    }
    Ok(format!(
        "shared-groups: 300 $share groups asked, {granted} granted, {refused} refused"
    ))
}

async fn subscriptions(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<String> {
    let mut client = Client::connect(addr, "abuse-subs", 0).await?;
    let (mut granted, mut refused, mut packets) = (0, 0, 0u16);
    while !stop.is_cancelled() && packets < 200 {
        packets += 1;
        let filters = (0..1000).map(|i| format!("abuse/{packets}/{i}"));
        client.send(&subscribe_packet(packets, filters)).await?;
        tally(&mut client, &mut granted, &mut refused).await?;
    }
    Ok(format!(
        "subscriptions: {packets} SUBSCRIBEs of 1,000 filters, {granted} granted, {refused} refused"
    ))
}

async fn receive_max(
    addr: SocketAddr,
    i: usize,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let (mut sessions, mut told) = (0, 0);
    while !stop.is_cancelled() {
        sessions += 1;
        let mut client = Client::connect(addr, &format!("abuse-rm-{i}"), 0).await?;
        for packet_id in 1..=300u16 {
            let publish = Packet::Publish(Publish {
                qos: QoS::ExactlyOnce,
                topic: "abuse/q2".into(),
                packet_id,
                payload: Bytes::from_static(b"x"),
                ..Publish::default()
            });
            if client.send(&publish).await.is_err() {
                break;
            }
        }
        loop {
            match client.recv().await {
                Ok(Packet::Disconnect(d))
                    if d.reason_code == ReasonCode::RECEIVE_MAXIMUM_EXCEEDED =>
                {
                    told += 1;
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    }
    Ok(format!(
        "receive-max {i}: {sessions} sessions of 300 QoS 2 PUBLISHes without PUBREL, {told} ended with 0x93"
    ))
}

async fn oversized(addr: SocketAddr, i: usize, stop: CancellationToken) -> anyhow::Result<String> {
    let payload = Bytes::from(vec![b'x'; 8 * 1024 * 1024]);
    let mut tries = 0;
    while !stop.is_cancelled() {
        tries += 1;
        let mut client = Client::connect(addr, &format!("abuse-big-{i}"), 0).await?;
        let publish = Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: "abuse/big".into(),
            packet_id: 1,
            payload: payload.clone(),
            ..Publish::default()
        });
        let _ = client.send(&publish).await;
        while client.recv().await.is_ok() {}
    }
    Ok(format!(
        "oversized {i}: {tries} PUBLISHes of 8 MiB, each ending its connection"
    ))
}

/// Persistent sessions of the reconnects vector.
const SESSIONS: usize = 200;

fn persistent(i: usize, clean: bool) -> Connect {
    Connect {
        clean_start: clean,
        keep_alive: 0,
        client_id: format!("abuse-persistent-{i}"),
        properties: strait_mqtt_codec::ConnectProperties {
            session_expiry_interval: Some(600),
            ..Default::default()
        },
        ..Connect::default()
    }
}

/// The reconnects vector's sessions, subscribed once before anything is measured.
async fn prepare_reconnects(addr: SocketAddr) -> anyhow::Result<()> {
    for i in 0..SESSIONS {
        let mut client = Client::raw(addr, persistent(i, true)).await?;
        client
            .send(&subscribe_packet(1, ["abuse/missed".to_string()]))
            .await?;
        client.recv().await?;
    }
    Ok(())
}

/// The persistent sessions, away while messages arrive, then all back at once, again and again.
async fn reconnects(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<String> {
    let mut publisher = Client::connect(addr, "abuse-missed-publisher", 0).await?;
    let mut waves = 0;
    while !stop.is_cancelled() {
        waves += 1;
        for packet_id in 1..=50u16 {
            publisher
                .send(&Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    topic: "abuse/missed".into(),
                    packet_id,
                    payload: Bytes::from_static(b"missed"),
                    ..Publish::default()
                }))
                .await?;
        }
        for _ in 0..50 {
            publisher.recv().await?;
        }
        let mut back = JoinSet::new();
        for i in 0..SESSIONS {
            let connect = persistent(i, false);
            back.spawn(async move {
                // Connect, take a few messages, leave without acknowledging them.
                let mut client = Client::raw(addr, connect).await?;
                for _ in 0..5 {
                    client.recv().await?;
                }
                anyhow::Ok(())
            });
        }
        while let Some(done) = back.join_next().await {
            done??;
        }
    }
    Ok(format!(
        "reconnects: {waves} waves of {SESSIONS} persistent sessions catching up at once"
    ))
}

/// The gRPC half: grpc-kafka's limits under the same kind of abuse.
async fn grpc(args: &AbuseArgs) -> anyhow::Result<String> {
    use crate::grpc;
    let bin = args.proxies.bin()?;
    let service = grpc::start_service().await?;
    let events = format!("bench-abuse-events-{}", grpc::rand_suffix());
    grpc::create_topics(&args.kafka, &[&events], 1).await?;
    let fetch_route =
        format!("- {{ method: strait.bench.v1.Echo/Stream, fetch: {{ topic: {events} }} }}\n");
    let bridge = grpc::start_bridge(&bin, &args.kafka, service, &fetch_route).await?;
    let result = grpc_measure(args, &bridge).await;
    bridge.front.stop().await;
    bridge.back.stop().await;
    let mut topics: Vec<&str> = bridge.topics.iter().map(String::as_str).collect();
    topics.push(&events);
    if let Err(error) = grpc::delete_topics(&args.kafka, &topics).await {
        eprintln!("WARNING: bench topics not deleted: {error:#}");
    }
    result
}

async fn grpc_measure(args: &AbuseArgs, bridge: &crate::grpc::Bridge) -> anyhow::Result<String> {
    let addr = bridge.front_addr;
    grpc_probe(addr, args.probe / 8).await?;
    let calm = grpc_probe(addr, args.probe / 2).await?;
    let before = held(bridge.front.pid);

    let stop = CancellationToken::new();
    let mut abusers = JoinSet::new();
    abusers.spawn(fetch_streams(addr, stop.clone()));
    abusers.spawn(idle_connections(addr, 2000, stop.clone()));
    let sampler = peaks(vec![bridge.front.pid], stop.clone());
    tokio::time::sleep(Duration::from_secs(5)).await;
    let abused = grpc_probe(addr, args.probe / 2).await;
    stop.cancel();
    let (effects, peak) = finish(abusers, sampler).await?;
    let abused = abused?;
    report(
        "grpc-kafka -> Kafka -> kafka-grpc",
        &format!("{} unary calls one at a time:", args.probe / 2),
        calm,
        &[Measured {
            label: "every vector at once".into(),
            effects,
            abused,
            checked: true,
        }],
        &[("grpc-kafka", MAX_EXTRA_THREADS, before, peak[0])],
    )
}

/// Unary calls one at a time through grpc-kafka: latency.
async fn grpc_probe(addr: SocketAddr, count: usize) -> anyhow::Result<Percentiles> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect()
        .await
        .context("the well-behaved gRPC client")?;
    let mut client = tonic::client::Grpc::new(channel);
    let mut latencies = histogram();
    for _ in 0..count {
        let started = Instant::now();
        // strait.bench.v1.Msg { payload: "probe" }
        crate::grpc::one_call(
            &mut client,
            crate::grpc::UNARY,
            Bytes::from_static(b"\x0a\x05probe"),
        )
        .await
        .map_err(|status| anyhow::anyhow!("the well-behaved call failed: {status}"))?;
        latencies.record(started.elapsed().as_nanos() as u64)?;
    }
    Ok(Percentiles::of(&latencies))
}

/// 1,000 fetch streams opened at once (grpc-kafka's default allows 256).
async fn fetch_streams(addr: SocketAddr, stop: CancellationToken) -> anyhow::Result<String> {
    let mut opened = Vec::new();
    let mut refused = 0;
    for _ in 0..10 {
        let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
            .connect()
            .await?;
        for _ in 0..100 {
            let mut client = tonic::client::Grpc::new(channel.clone());
            client.ready().await?;
            let path = http::uri::PathAndQuery::from_static(crate::grpc::STREAM);
            match client
                .server_streaming(
                    tonic::Request::new(Bytes::new()),
                    path,
                    strait_grpc_kafka::grpc::codec::RawCodec,
                )
                .await
            {
                Ok(stream) => opened.push(stream),
                Err(status) if status.code() == tonic::Code::ResourceExhausted => refused += 1,
                Err(status) => bail!("a fetch stream failed: {status}"),
            }
        }
    }
    let open = opened.len();
    stop.cancelled().await;
    Ok(format!(
        "fetch-streams: 1,000 asked, {open} open, {refused} refused with RESOURCE_EXHAUSTED"
    ))
}

async fn idle_connections(
    addr: SocketAddr,
    count: usize,
    stop: CancellationToken,
) -> anyhow::Result<String> {
    let mut held = Vec::new();
    for _ in 0..count {
        if let Ok(stream) = tokio::net::TcpStream::connect(addr).await {
            held.push(stream);
        }
    }
    let opened = held.len();
    stop.cancelled().await;
    Ok(format!(
        "connections: {opened} of {count} TCP connections held open without a request"
    ))
}
