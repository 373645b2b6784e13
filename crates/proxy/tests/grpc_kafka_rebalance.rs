//! kafka-grpc through group rebalances (issue 18, bug 3): while a slow call runs, the group's
//! committed offset of its partition must never pass its record, whichever member holds the
//! partition after other members join; and the call is still answered.

mod grpc_support;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use grpc_support::pb::EchoRequest;
use grpc_support::*;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};
use strait_e2e::{require, wait_until};

const SLOW_CALLS: usize = 6;
const SLOW: Duration = Duration::from_secs(25);

/// Where each slow call's request record landed: offset by partition, the lowest per partition.
async fn slow_records(bootstrap: &str, topic: &str) -> BTreeMap<i32, (i64, String)> {
    let consumer = inspector(bootstrap, topic);
    let mut found: BTreeMap<i32, (i64, String)> = BTreeMap::new();
    let mut seen = 0;
    while seen < SLOW_CALLS {
        let message = tokio::time::timeout(CALL, consumer.recv())
            .await
            .expect("the slow calls' records")
            .unwrap();
        let Some(value) = message.payload() else {
            continue;
        };
        let Ok(request) = <EchoRequest as prost::Message>::decode(value) else {
            continue;
        };
        if !request.text.starts_with("slow-") {
            continue;
        }
        seen += 1;
        let (partition, offset) = (message.partition(), message.offset());
        if found.get(&partition).is_none_or(|(o, _)| offset < *o) {
            found.insert(partition, (offset, request.text));
        }
    }
    found
}

fn committed(consumer: &BaseConsumer, topic: &str, partitions: &[i32]) -> HashMap<i32, i64> {
    let mut list = TopicPartitionList::new();
    for p in partitions {
        list.add_partition(topic, *p);
    }
    let Ok(committed) = consumer.committed_offsets(list, Duration::from_secs(5)) else {
        return HashMap::new();
    };
    committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// Waits until each of the first `members` kafka-grpc processes logged an assignment after
/// `since` (its log length before the rebalance).
async fn wait_for_assignments(bridge: &Bridge, since: &[usize]) {
    wait_until(
        Duration::from_secs(40),
        "every member to be assigned partitions after the rebalance",
        || async {
            bridge
                .back
                .iter()
                .enumerate()
                .all(|(i, b)| {
                    let log = b.log();
                    let from = since.get(i).copied().unwrap_or(0).min(log.len());
                    log[from..]
                        .lines()
                        .any(|l| l.contains("assigned") && l.contains(&bridge.requests))
                })
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_rebalance_never_commits_past_a_call_still_running() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, service) = start_service().await;
    let mut bridge = Bridge::start(&bootstrap, target).await;
    let client = bridge.client().await;

    // Steady traffic on every partition, so records after the slow ones are read and finished
    // around each rebalance.
    let stop = Arc::new(AtomicBool::new(false));
    let mut traffic = Vec::new();
    for lane in 0..4 {
        let (mut client, stop) = (client.clone(), stop.clone());
        traffic.push(tokio::spawn(async move {
            let mut failures = Vec::new();
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let text = format!("fast-{lane}-{i}");
                match client.unary(with_timeout(request(&text), CALL)).await {
                    Ok(reply) => assert_eq!(reply.into_inner().text, text),
                    Err(status) => failures.push(format!("{text}: {status}")),
                }
                i += 1;
            }
            failures
        }));
    }

    let slow: Vec<_> = (0..SLOW_CALLS)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let text = format!("slow-{i}");
                let message = EchoRequest {
                    text: text.clone(),
                    delay_ms: SLOW.as_millis() as u32,
                    ..Default::default()
                };
                let reply = client
                    .unary(with_timeout(message, Duration::from_secs(90)))
                    .await;
                (text, reply)
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(20),
        "every slow call to reach the service",
        || async {
            (0..SLOW_CALLS)
                .all(|i| service.count(&format!("slow-{i}")) > 0)
                .then_some(())
        },
    )
    .await;
    let watched = slow_records(&bootstrap, &bridge.requests).await;

    // Watch the group's committed offsets while the slow calls run.
    let watcher = {
        let (bootstrap, group, topic) = (
            bootstrap.clone(),
            bridge.group.clone(),
            bridge.requests.clone(),
        );
        let (service, stop, watched) = (service.clone(), stop.clone(), watched.clone());
        tokio::task::spawn_blocking(move || {
            let consumer = strait_e2e::group_offsets_client(&bootstrap, &group);
            let partitions: Vec<i32> = watched.keys().copied().collect();
            let mut violations = Vec::new();
            let mut checks = 0u32;
            let started = std::time::Instant::now();
            while !stop.load(Ordering::Relaxed) {
                let committed = committed(&consumer, &topic, &partitions);
                for (partition, (offset, text)) in &watched {
                    // Read after the commit: a correct commit past the record follows an
                    // answer of the service.
                    if committed.get(partition).is_some_and(|c| c > offset)
                        && service.answered(text) == 0
                    {
                        violations.push(format!(
                            "after {:?}: partition {partition}: committed {:?} past {text} at {offset} while it runs",
                            started.elapsed(),
                            committed[partition]
                        ));
                    }
                }
                checks += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (violations, checks)
        })
    };

    // Two members join one after the other: two rebalances moving partitions while the slow
    // calls run.
    for _ in 0..2 {
        let since: Vec<usize> = bridge.back.iter().map(|b| b.log().len()).collect();
        bridge.add_backend().await;
        wait_for_assignments(&bridge, &since).await;
    }

    let mut answered = Vec::new();
    for call in slow {
        let (text, reply) = tokio::time::timeout(Duration::from_secs(120), call)
            .await
            .unwrap_or_else(|_| panic!("{}", bridge.logs()))
            .unwrap();
        let reply = reply.unwrap_or_else(|s| panic!("{text}: {s}\n{}", bridge.logs()));
        assert_eq!(reply.into_inner().text, text, "answered with its own reply");
        answered.push(text);
    }
    stop.store(true, Ordering::Relaxed);
    let (violations, checks) = watcher.await.unwrap();
    for lane in traffic {
        let failures = lane.await.unwrap();
        assert!(failures.is_empty(), "{failures:?}\n{}", bridge.logs());
    }
    assert!(checks > 10, "the committed offsets were watched");
    assert!(
        violations.is_empty(),
        "{} commits passed a running call, first: {:?}",
        violations.len(),
        violations.first()
    );
    assert_eq!(answered.len(), SLOW_CALLS);
}

/// A client stream whose partition is revoked between two of its messages (a member joins)
/// is answered with each message once, whichever member holds the partition afterwards.
#[tokio::test]
async fn a_client_stream_across_a_rebalance_gets_each_message_once() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, service) = start_service().await;
    let mut bridge = Bridge::start(&bootstrap, target).await;
    let mut client = bridge.client().await;
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(request("s0")).await.unwrap();
    let call = tokio::spawn(async move {
        // One key: every message on one partition.
        let mut call = with_timeout(
            tokio_stream::wrappers::ReceiverStream::new(rx),
            Duration::from_secs(60),
        );
        call.metadata_mut()
            .insert("x-key", "fixed".parse().unwrap());
        client.client_stream(call).await
    });
    wait_until(
        Duration::from_secs(20),
        "the first message to reach the service",
        || async { (service.count("s0") > 0).then_some(()) },
    )
    .await;
    let since: Vec<usize> = bridge.back.iter().map(|b| b.log().len()).collect();
    bridge.add_backend().await;
    wait_for_assignments(&bridge, &since).await;
    tx.send(request("s1")).await.unwrap();
    drop(tx);
    let reply = tokio::time::timeout(Duration::from_secs(60), call)
        .await
        .unwrap_or_else(|_| panic!("no answer\n{}", bridge.logs()))
        .unwrap()
        .unwrap_or_else(|s| panic!("{s}\n{}", bridge.logs()))
        .into_inner();
    assert_eq!(reply.text, "s0+s1", "{}", bridge.logs());
}
