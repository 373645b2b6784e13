//! Fault soak of MQTT on Kafka: a QoS 1 and a QoS 2 publisher and two persistent subscribers
//! (QoS 2 and QoS 1) run through r-proxy -> s-proxy while s-proxy is killed with -9 and Kafka
//! is stopped and started, several times. At the end every PUBACKed or PUBCOMPed message has
//! reached every subscriber: QoS 2 exactly once, QoS 1 at least once. The clients are the
//! byte-level ones of the other tests, with the MQTT session rules written out (resend with DUP,
//! PUBREL after PUBREC, a receiver's unreleased packet ids), so nothing is hidden in a library.
//!
//! A file of its own: stopping Kafka would disturb tests running beside it. Rounds:
//! `STRAIT_SOAK_ROUNDS` (default 3; each kills s-proxy once and stops Kafka once).

mod kafka_support;
mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kafka_support::*;
use strait_e2e::{require, unique_name};
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, QoS};
use support::RawClient;
use tokio::sync::watch;

/// How long Kafka stays down each round: long enough that publishers get negative
/// acknowledgements and sessions lose Kafka mid-flight.
const OUTAGE: Duration = Duration::from_secs(6);

/// Kafka down for `OUTAGE`, started again however the test ends. The clients' tasks run on
/// other threads meanwhile.
async fn kafka_outage() {
    struct Restart;
    impl Drop for Restart {
        fn drop(&mut self) {
            services("start");
        }
    }
    tokio::task::spawn_blocking(|| services("stop"))
        .await
        .expect("stopping Kafka");
    let restart = Restart;
    tokio::time::sleep(OUTAGE).await;
    tokio::task::spawn_blocking(move || drop(restart))
        .await
        .expect("starting Kafka");
}

// Boxing the packet would only make the matches below noisier: a test's few values.
#[allow(clippy::large_enum_variant)]
enum Polled {
    Packet(Packet),
    Quiet,
    Closed,
}

async fn poll(client: &mut RawClient, wait: Duration) -> Polled {
    // The inner deadline is never reached: the outer one answers "quiet" instead of a panic.
    match tokio::time::timeout(wait, client.recv_within(Duration::from_secs(3600))).await {
        Ok(Some(packet)) => Polled::Packet(packet),
        Ok(None) => Polled::Closed,
        Err(_) => Polled::Quiet,
    }
}

/// A persistent MQTT 5 session: `None` while s-proxy or Kafka cannot take it (the client
/// retries). `resumed` says whether the session must already exist.
async fn open(addr: SocketAddr, client_id: &str, resumed: bool) -> Option<RawClient> {
    let mut client = RawClient::connect(addr, Protocol::V5).await;
    if !client
        .try_send(&Packet::Connect(v5_connect(client_id, !resumed, 600)))
        .await
    {
        return None;
    }
    match poll(&mut client, Duration::from_secs(15)).await {
        Polled::Packet(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => {
            assert_eq!(
                ack.session_present, resumed,
                "{client_id}: a persistent session must survive every fault"
            );
            Some(client)
        }
        _ => None,
    }
}

async fn reopen(addr: SocketAddr, client_id: &str, resumed: bool) -> RawClient {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(client) = open(addr, client_id, resumed).await {
            return client;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{client_id} could not reconnect within 2 minutes"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// What a publisher saw acknowledged, and what it tried.
#[derive(Default)]
struct Published {
    acked: BTreeSet<u32>,
    refused: u32,
    attempted: u32,
}

/// One message at a time; an unacknowledged one is resent (DUP) after a reconnect, a refused
/// one (negative PUBACK/PUBREC) is given up and the next gets a new number, so a number is
/// never published twice on purpose.
async fn publisher(
    addr: SocketAddr,
    qos: QoS,
    topic: &'static str,
    ledger: Arc<Mutex<Published>>,
    mut stop: watch::Receiver<bool>,
) {
    let client_id = unique_name("soak-pub");
    let mut client = reopen(addr, &client_id, false).await;
    let mut seq = 0u32;
    // (seq, packet id, PUBREL sent)
    let mut in_flight: Option<(u32, u16, bool)> = None;
    let publish = |seq: u32, packet_id: u16, dup: bool| {
        Packet::Publish(mqtt::Publish {
            dup,
            qos,
            topic: topic.into(),
            packet_id,
            payload: format!("{topic}:{seq}").into_bytes().into(),
            ..Default::default()
        })
    };
    loop {
        if in_flight.is_none() {
            if *stop.borrow_and_update() {
                return;
            }
            seq += 1;
            let packet_id = (seq % 60_000 + 1) as u16;
            in_flight = Some((seq, packet_id, false));
            ledger.lock().unwrap().attempted += 1;
            if !client.try_send(&publish(seq, packet_id, false)).await {
                client = resume(addr, &client_id, in_flight, &publish).await;
            }
            continue;
        }
        let (current, packet_id, released) = in_flight.expect("checked");
        match poll(&mut client, Duration::from_secs(5)).await {
            Polled::Packet(Packet::PubAck(ack)) if ack.packet_id == packet_id => {
                record(&ledger, current, !ack.reason_code.is_error());
                in_flight = None;
                if ack.reason_code.is_error() {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            Polled::Packet(Packet::PubRec(rec)) if rec.packet_id == packet_id && !released => {
                if rec.reason_code.is_error() {
                    record(&ledger, current, false);
                    in_flight = None;
                    // As a device would: not straight again.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
                in_flight = Some((current, packet_id, true));
                let rel = Packet::PubRel(mqtt::PubRel {
                    packet_id,
                    ..Default::default()
                });
                if !client.try_send(&rel).await {
                    client = resume(addr, &client_id, in_flight, &publish).await;
                }
            }
            Polled::Packet(Packet::PubComp(comp)) if comp.packet_id == packet_id => {
                record(&ledger, current, true);
                in_flight = None;
            }
            Polled::Packet(Packet::Disconnect(_)) | Polled::Closed => {
                client = resume(addr, &client_id, in_flight, &publish).await;
            }
            Polled::Quiet => {}
            Polled::Packet(other) => panic!("{client_id} got {other:?}"),
        }
    }
}

fn record(ledger: &Mutex<Published>, seq: u32, acked: bool) {
    let mut ledger = ledger.lock().unwrap();
    if acked {
        ledger.acked.insert(seq);
    } else {
        ledger.refused += 1;
    }
}

/// Reconnects a publisher's session and resends what is unfinished: the PUBLISH (DUP) before
/// PUBREC, the PUBREL after it.
async fn resume(
    addr: SocketAddr,
    client_id: &str,
    in_flight: Option<(u32, u16, bool)>,
    publish: &impl Fn(u32, u16, bool) -> Packet,
) -> RawClient {
    loop {
        let mut client = reopen(addr, client_id, true).await;
        let resent = match in_flight {
            None => true,
            Some((_, packet_id, true)) => {
                client
                    .try_send(&Packet::PubRel(mqtt::PubRel {
                        packet_id,
                        ..Default::default()
                    }))
                    .await
            }
            Some((seq, packet_id, false)) => client.try_send(&publish(seq, packet_id, true)).await,
        };
        if resent {
            return client;
        }
    }
}

/// What a subscriber received: payload -> times handed to the application.
type Received = Arc<Mutex<BTreeMap<String, u32>>>;

/// Every QoS 2 PUBLISH a subscriber got: (payload, packet id, DUP, connection number), to show
/// how a duplicate came about.
type Arrivals = Arc<Mutex<Vec<(String, u16, bool, u32)>>>;

/// A persistent subscriber: QoS 1 messages count on every arrival (a redelivery shows as a
/// second count), QoS 2 ones once per packet id until its PUBREL (the receiver's side of
/// exactly once), across reconnects.
async fn subscriber(
    addr: SocketAddr,
    qos: QoS,
    received: Received,
    arrivals: Arrivals,
    subscribed: tokio::sync::oneshot::Sender<()>,
    mut stop: watch::Receiver<bool>,
) {
    let client_id = unique_name("soak-sub");
    let mut client = reopen(addr, &client_id, false).await;
    assert_eq!(
        subscribe(&mut client, 1, &[("soak/#", qos)]).await,
        [mqtt::ReasonCode(qos as u8)]
    );
    let _ = subscribed.send(());
    let mut unreleased: BTreeSet<u16> = BTreeSet::new();
    let mut connection = 1u32;
    loop {
        let answer = match poll(&mut client, Duration::from_millis(500)).await {
            Polled::Packet(Packet::Publish(publish)) => {
                let payload = String::from_utf8(publish.payload.to_vec()).unwrap();
                let id = publish.packet_id;
                match publish.qos {
                    QoS::AtMostOnce => None,
                    QoS::AtLeastOnce => {
                        *received.lock().unwrap().entry(payload).or_default() += 1;
                        Some(Packet::PubAck(mqtt::PubAck {
                            packet_id: id,
                            ..Default::default()
                        }))
                    }
                    QoS::ExactlyOnce => {
                        arrivals.lock().unwrap().push((
                            payload.clone(),
                            id,
                            publish.dup,
                            connection,
                        ));
                        if unreleased.insert(id) {
                            *received.lock().unwrap().entry(payload).or_default() += 1;
                        }
                        Some(Packet::PubRec(mqtt::PubRec {
                            packet_id: id,
                            ..Default::default()
                        }))
                    }
                }
            }
            Polled::Packet(Packet::PubRel(rel)) => {
                unreleased.remove(&rel.packet_id);
                Some(Packet::PubComp(mqtt::PubComp {
                    packet_id: rel.packet_id,
                    ..Default::default()
                }))
            }
            Polled::Packet(Packet::Disconnect(_)) | Polled::Closed => {
                client = reopen(addr, &client_id, true).await;
                connection += 1;
                None
            }
            Polled::Quiet => {
                if *stop.borrow_and_update() {
                    return;
                }
                None
            }
            Polled::Packet(other) => panic!("{client_id} got {other:?}"),
        };
        if let Some(answer) = answer
            && !client.try_send(&answer).await
        {
            client = reopen(addr, &client_id, true).await;
            connection += 1;
        }
    }
}

/// Waits until both publishers have had `more` further messages acknowledged.
async fn progress(ledgers: &[&Arc<Mutex<Published>>], more: usize, what: &str) {
    let from: Vec<usize> = ledgers
        .iter()
        .map(|l| l.lock().unwrap().acked.len())
        .collect();
    strait_e2e::wait_until(Duration::from_secs(120), what, || async {
        ledgers
            .iter()
            .zip(&from)
            .all(|(l, from)| l.lock().unwrap().acked.len() >= from + more)
            .then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_acknowledged_message_survives_kill_9_and_kafka_restarts() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let rounds: usize = std::env::var("STRAIT_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let mut relay = KafkaRelay::start(&kafka, "soak").await;
    let addr = relay.mqtt;
    // Publishers stop first; subscribers once they have everything.
    let (stop_publishing, publishing) = watch::channel(false);
    let (stop_subscribing, subscribing) = watch::channel(false);

    let exactly_once: Received = Default::default();
    let at_least_once: Received = Default::default();
    let arrivals: Arrivals = Default::default();
    let mut subscribers = Vec::new();
    for (qos, received) in [
        (QoS::ExactlyOnce, exactly_once.clone()),
        (QoS::AtLeastOnce, at_least_once.clone()),
    ] {
        let (subscribed, ready) = tokio::sync::oneshot::channel();
        subscribers.push(tokio::spawn(subscriber(
            addr,
            qos,
            received,
            arrivals.clone(),
            subscribed,
            subscribing.clone(),
        )));
        ready.await.expect("subscribed");
    }
    let q1: Arc<Mutex<Published>> = Default::default();
    let q2: Arc<Mutex<Published>> = Default::default();
    let publishers = [
        tokio::spawn(publisher(
            addr,
            QoS::AtLeastOnce,
            "soak/q1",
            q1.clone(),
            publishing.clone(),
        )),
        tokio::spawn(publisher(
            addr,
            QoS::ExactlyOnce,
            "soak/q2",
            q2.clone(),
            publishing.clone(),
        )),
    ];

    let ledgers = [&q1, &q2];
    for round in 1..=rounds {
        progress(&ledgers, 50, "publishing before the kill").await;
        relay.s_proxy.kill().await;
        relay.restart_s_proxy().await;
        progress(&ledgers, 50, "publishing after s-proxy came back").await;
        kafka_outage().await;
        progress(&ledgers, 50, "publishing after Kafka came back").await;
        eprintln!("soak round {round}/{rounds} done");
    }

    stop_publishing.send(true).expect("publishers listen");
    for publisher in publishers {
        tokio::time::timeout(Duration::from_secs(120), publisher)
            .await
            .expect("publishers finish their last message")
            .expect("publisher task");
    }
    let q1_acked = q1.lock().unwrap().acked.clone();
    let q2_acked = q2.lock().unwrap().acked.clone();
    let expected: Vec<String> = q1_acked
        .iter()
        .map(|s| format!("soak/q1:{s}"))
        .chain(q2_acked.iter().map(|s| format!("soak/q2:{s}")))
        .collect();
    let missing = || {
        let (a, b) = (exactly_once.lock().unwrap(), at_least_once.lock().unwrap());
        let missing_a: Vec<&String> = expected.iter().filter(|m| !a.contains_key(*m)).collect();
        let missing_b: Vec<&String> = expected.iter().filter(|m| !b.contains_key(*m)).collect();
        (
            format!("{missing_a:?}"),
            format!("{missing_b:?}"),
            missing_a.is_empty() && missing_b.is_empty(),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        let (a, b, done) = missing();
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "acknowledged messages not delivered within 120 s: to the QoS 2 subscriber {a}, to \
             the QoS 1 subscriber {b}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop_subscribing.send(true).expect("subscribers listen");
    for subscriber in subscribers {
        subscriber.await.expect("subscriber task");
    }

    let a = exactly_once.lock().unwrap();
    let b = at_least_once.lock().unwrap();
    let q2_twice: Vec<(&String, &u32)> = a
        .iter()
        .filter(|(m, n)| m.starts_with("soak/q2:") && **n > 1)
        .collect();
    let redelivered_q1 = b.values().filter(|n| **n > 1).count();
    let (p1, p2) = (q1.lock().unwrap(), q2.lock().unwrap());
    eprintln!(
        "soak: {rounds} rounds (kill -9 of s-proxy, Kafka stopped {OUTAGE:?}); QoS 1: {} published, \
         {} PUBACKed, {} refused; QoS 2: {} published, {} PUBCOMPed, {} refused; the QoS 2 \
         subscriber got {} messages, the QoS 1 subscriber {} ({} more than once)",
        p1.attempted,
        p1.acked.len(),
        p1.refused,
        p2.attempted,
        p2.acked.len(),
        p2.refused,
        a.values().sum::<u32>(),
        b.values().sum::<u32>(),
        redelivered_q1,
    );
    let how: Vec<_> = arrivals
        .lock()
        .unwrap()
        .iter()
        .filter(|(m, ..)| q2_twice.iter().any(|(t, _)| *t == m))
        .cloned()
        .collect();
    assert!(
        q2_twice.is_empty(),
        "QoS 2 messages delivered more than once: {q2_twice:?}; arrivals (payload, packet id, \
         DUP, connection): {how:?}"
    );
    assert!(
        p1.acked.len() >= 150 * rounds && p2.acked.len() >= 150 * rounds,
        "the publishers made progress through every fault"
    );
}
