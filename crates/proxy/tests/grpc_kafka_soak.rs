//! Fault soak of gRPC over Kafka: clients call a real service through grpc-kafka -> Kafka ->
//! kafka-grpc while kafka-grpc is killed with -9 and replaced, several times. Every call a
//! client saw succeed reached the service, with its own answer; calls with an idempotency key
//! are retried by their client until they succeed, and reach the service again only when a
//! kill caught them between the service's answer and its reply record (a replacement
//! kafka-grpc learns the answers already in the reply topics before reading requests).
//! Rounds: `STRAIT_SOAK_ROUNDS` (default 3).

mod grpc_support;

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use grpc_support::*;
use strait_e2e::{require, wait_until};
use tokio::sync::watch;

/// Callers at once; each has one call in flight.
const CALLERS: usize = 8;

#[derive(Default)]
struct Calls {
    /// Texts of calls answered OK.
    succeeded: BTreeSet<String>,
    /// Of those, the ones with an idempotency key.
    keyed: BTreeSet<String>,
    /// Attempts that failed (and were retried when keyed).
    failed: u32,
}

/// Calls one after another; odd callers send an idempotency key and retry a failed call with
/// the same key until it succeeds, even callers give a failed call up.
async fn caller(
    bridge_addr: std::net::SocketAddr,
    index: usize,
    calls: Arc<Mutex<Calls>>,
    mut stop: watch::Receiver<bool>,
) {
    let keyed = index % 2 == 1;
    let mut client = loop {
        if let Ok(client) =
            pb::echo_client::EchoClient::connect(format!("http://{bridge_addr}")).await
        {
            break client;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for n in 0.. {
        if *stop.borrow_and_update() {
            return;
        }
        let text = format!("caller{index}-{n}");
        loop {
            let mut request = with_timeout(request(&text), Duration::from_secs(20));
            if keyed {
                request
                    .metadata_mut()
                    .insert("idempotency-key", text.parse().unwrap());
            }
            match client.unary(request).await {
                Ok(reply) => {
                    assert_eq!(reply.into_inner().text, text, "the answer to this call");
                    let mut calls = calls.lock().unwrap();
                    calls.succeeded.insert(text.clone());
                    if keyed {
                        calls.keyed.insert(text.clone());
                    }
                    break;
                }
                Err(_) => {
                    calls.lock().unwrap().failed += 1;
                    if !keyed {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_successful_call_reached_the_service_through_kill_9_of_kafka_grpc() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let rounds: usize = std::env::var("STRAIT_SOAK_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    let (target, service) = start_service().await;
    let mut bridge = Bridge::start(&bootstrap, target).await;
    let calls: Arc<Mutex<Calls>> = Default::default();
    let (stop_tx, stop) = watch::channel(false);
    let callers: Vec<_> = (0..CALLERS)
        .map(|i| tokio::spawn(caller(bridge.addr, i, calls.clone(), stop.clone())))
        .collect();
    let succeeded = || calls.lock().unwrap().succeeded.len();

    for round in 1..=rounds {
        let from = succeeded();
        wait_until(Duration::from_secs(60), "calls before the kill", || async {
            (succeeded() >= from + 100).then_some(())
        })
        .await;
        bridge.back[0].kill().await;
        bridge.back.clear();
        bridge.add_backend().await;
        let from = succeeded();
        wait_until(
            Duration::from_secs(90),
            "calls after kafka-grpc was replaced",
            || async { (succeeded() >= from + 100).then_some(()) },
        )
        .await;
        eprintln!("grpc soak round {round}/{rounds} done");
    }
    stop_tx.send(true).expect("callers listen");
    for caller in callers {
        tokio::time::timeout(Duration::from_secs(120), caller)
            .await
            .expect("callers finish their last call")
            .expect("caller task");
    }

    let calls = calls.lock().unwrap();
    let never_reached: Vec<&String> = calls
        .succeeded
        .iter()
        .filter(|t| service.count(t) == 0)
        .collect();
    let called_again: Vec<(&String, u32)> = calls
        .keyed
        .iter()
        .map(|t| (t, service.count(t)))
        .filter(|(_, n)| *n > 1)
        .collect();
    eprintln!(
        "grpc soak: {rounds} kills of kafka-grpc; {} calls succeeded ({} with an idempotency \
         key), {} attempts failed; keyed calls that reached the service twice: {}",
        calls.succeeded.len(),
        calls.keyed.len(),
        calls.failed,
        called_again.len()
    );
    assert!(
        never_reached.is_empty(),
        "calls answered OK that the service never saw: {never_reached:?}"
    );
    // A keyed call reaches the service again only when a kill caught it between the service's
    // answer and its reply record: at most the keyed calls in flight at each kill.
    assert!(
        called_again.len() <= rounds * CALLERS / 2,
        "keyed calls called again: {called_again:?}"
    );
}
