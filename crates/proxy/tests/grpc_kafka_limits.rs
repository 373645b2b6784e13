//! gRPC over Kafka limits (issue 18): fetch streams, connections and pending calls of
//! grpc-kafka are capped, refused past the cap with RESOURCE_EXHAUSTED naming the limit, and
//! counted; kafka-grpc's recorded answers stay within their byte budget.

mod grpc_support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use grpc_support::pb::EchoRequest;
use grpc_support::*;
use strait_e2e::{http_get, require, wait_until};
use strait_grpc_kafka::grpc::codec::RawCodec;
use tonic::transport::Channel;
use tonic::{Code, Request, Status};

/// The value of the metric line starting with `series` (name and labels), if any.
async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, metrics) = http_get(admin, "/metrics").await.ok()?;
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
}

async fn channel(bridge: &Bridge) -> Channel {
    Channel::from_shared(format!("http://{}", bridge.addr))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

async fn fetch(channel: &Channel) -> Result<tonic::Streaming<Bytes>, Status> {
    let mut raw = tonic::client::Grpc::new(channel.clone());
    raw.ready().await.unwrap();
    let request = Request::new(futures::stream::iter([Bytes::new()]));
    let path = http::uri::PathAndQuery::from_static("/strait.test.v1.Events/Fetch");
    raw.streaming(request, path, RawCodec)
        .await
        .map(|r| r.into_inner())
}

fn assert_refused<T: std::fmt::Debug>(result: Result<T, Status>, limit: &str) {
    let status = result.expect_err("refused past the limit");
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains(limit), "{status:?}");
}

#[tokio::test]
async fn fetch_streams_and_pending_calls_past_their_limits_are_refused_and_counted() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, service) = start_service().await;
    let bridge = Bridge::start_full(
        &bootstrap,
        &format!("http://{target}"),
        "limits: { maxFetchStreams: 2, maxPendingCalls: 2 }\n",
        "",
    )
    .await;
    let admin = bridge.front.admin;
    let open = "strait_grpc_fetch_streams{role=\"grpc-kafka\"}";

    // Fetch streams: two open, the third refused; one closed, a new one opens.
    let fetches = channel(&bridge).await;
    let first = fetch(&fetches).await.unwrap();
    let _second = fetch(&fetches).await.unwrap();
    assert_refused(fetch(&fetches).await, "limits.maxFetchStreams");
    assert_eq!(metric(admin, open).await, Some(2.0));
    let hits = "strait_grpc_limit_hits_total{limit=\"limits.maxFetchStreams\",role=\"grpc-kafka\"}";
    assert_eq!(metric(admin, hits).await, Some(1.0));
    drop(first);
    wait_until(
        Duration::from_secs(10),
        "a fetch to open again once one closed",
        || async { fetch(&fetches).await.ok() },
    )
    .await;

    // Pending calls: two waiting for replies, the third refused; the two are answered.
    let client = bridge.client().await;
    let slow: Vec<_> = (0..2)
        .map(|i| {
            let mut client = client.clone();
            tokio::spawn(async move {
                let message = EchoRequest {
                    text: format!("waiting-{i}"),
                    delay_ms: 3_000,
                    ..Default::default()
                };
                client.unary(with_timeout(message, CALL)).await
            })
        })
        .collect();
    wait_until(
        Duration::from_secs(20),
        "both calls to wait for their replies",
        || async { (service.count("waiting-0") + service.count("waiting-1") == 2).then_some(()) },
    )
    .await;
    let mut third = client.clone();
    assert_refused(
        third.unary(with_timeout(request("third"), CALL)).await,
        "limits.maxPendingCalls",
    );
    for call in slow {
        call.await.unwrap().unwrap();
    }
    let hits = "strait_grpc_limit_hits_total{limit=\"limits.maxPendingCalls\",role=\"grpc-kafka\"}";
    assert_eq!(metric(admin, hits).await, Some(1.0));
    let mut again = client.clone();
    again
        .unary(with_timeout(request("after"), CALL))
        .await
        .unwrap();
}

#[tokio::test]
async fn connections_past_the_limit_are_told_so_and_closed() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, _service) = start_service().await;
    let bridge = Bridge::start_full(
        &bootstrap,
        &format!("http://{target}"),
        "limits: { maxConnections: 2 }\n",
        "",
    )
    .await;
    let admin = bridge.front.admin;
    let call = |channel: Channel, text: &'static str| async move {
        let mut client = grpc_support::pb::echo_client::EchoClient::new(channel);
        client.unary(with_timeout(request(text), CALL)).await
    };
    let a = channel(&bridge).await;
    let b = channel(&bridge).await;
    call(a.clone(), "a").await.unwrap();
    call(b.clone(), "b").await.unwrap();
    assert_eq!(
        metric(admin, "strait_grpc_connections{role=\"grpc-kafka\"}").await,
        Some(2.0)
    );
    let c = channel(&bridge).await;
    assert_refused(call(c, "c").await, "limits.maxConnections");
    let hits = "strait_grpc_limit_hits_total{limit=\"limits.maxConnections\",role=\"grpc-kafka\"}";
    assert!(metric(admin, hits).await.is_some_and(|n| n >= 1.0));
    // The first two are still served; once one closes, a new connection is.
    call(a, "a again").await.unwrap();
    drop(b);
    wait_until(
        Duration::from_secs(10),
        "a new connection to be served once one closed",
        || async { call(channel(&bridge).await, "d").await.ok() },
    )
    .await;
}

#[tokio::test]
async fn recorded_answers_stay_within_their_byte_budget() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, service) = start_service().await;
    let bridge = Bridge::start_with(
        &bootstrap,
        target,
        "dedupMaxBytes: 4096\ndedupMaxAnswerBytes: 2048\n",
    )
    .await;
    let mut kafka = bridge.client().await;
    let idempotent = |text: &str, key: &str| {
        let mut call = with_timeout(request(text), CALL);
        call.metadata_mut()
            .insert("idempotency-key", key.parse().unwrap());
        call
    };
    kafka.unary(idempotent("first", "key-first")).await.unwrap();
    kafka.unary(idempotent("first", "key-first")).await.unwrap();
    assert_eq!(
        service.count("first"),
        1,
        "answered from its recorded reply"
    );
    // Enough other answers to push the first out of the budget.
    for i in 0..40 {
        let text = format!("other-{i}");
        kafka
            .unary(idempotent(&text, &format!("key-{i}")))
            .await
            .unwrap();
    }
    let admin = bridge.back[0].admin;
    let evicted = "strait_grpc_dedup_evictions_total{bound=\"bytes\",role=\"kafka-grpc\"}";
    assert!(
        metric(admin, evicted).await.is_some_and(|n| n >= 1.0),
        "evictions counted"
    );
    let kept = metric(admin, "strait_grpc_dedup_bytes{role=\"kafka-grpc\"}")
        .await
        .unwrap();
    assert!(kept > 0.0 && kept <= 4096.0, "{kept} bytes kept");
    // Forgotten: a repeat calls the service again (and is still answered).
    let reply = kafka.unary(idempotent("first", "key-first")).await.unwrap();
    assert_eq!(reply.into_inner().text, "first");
    assert_eq!(service.count("first"), 2);

    // An answer over dedupMaxAnswerBytes is delivered but not recorded.
    let big = "x".repeat(3000);
    for _ in 0..2 {
        let reply = kafka.unary(idempotent(&big, "key-big")).await.unwrap();
        assert_eq!(reply.into_inner().text, big);
    }
    assert_eq!(service.count(&big), 2, "not recorded, so called again");
    let hits = "strait_grpc_limit_hits_total{limit=\"dedupMaxAnswerBytes\",role=\"kafka-grpc\"}";
    assert!(metric(admin, hits).await.is_some_and(|n| n >= 1.0));
}

/// Many fetch streams of one topic share one Kafka reader: streams opened while records keep
/// arriving, one resumed from its last message id and one that stops reading for longer than
/// the shared reader keeps records (`limits.fetchBufferedRecords`), each get every record
/// exactly once, in order per key.
#[tokio::test]
async fn fetch_streams_share_one_reader_and_miss_nothing() {
    use rdkafka::ClientConfig;
    use rdkafka::producer::{FutureProducer, FutureRecord};
    use strait_grpc_kafka::grpc::fetch_id;

    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, _service) = start_service().await;
    // A small ring, so slower streams fall behind it and catch up from Kafka often.
    let bridge = Bridge::start_full(
        &bootstrap,
        &format!("http://{target}"),
        "limits: { fetchBufferedRecords: 64 }\n",
        "",
    )
    .await;
    let admin = bridge.front.admin;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let produce = |from: usize, to: usize| {
        let (producer, topic) = (producer.clone(), bridge.events.clone());
        async move {
            let sends: Vec<_> = (from..to)
                .map(|i| {
                    let value = prost::Message::encode_to_vec(&grpc_support::pb::Event {
                        // Big enough that a stream not read stops its sender.
                        text: format!("e{i}-{}", "x".repeat(2000)),
                    });
                    let (producer, topic) = (producer.clone(), topic.clone());
                    async move {
                        producer
                            .send(
                                FutureRecord::to(&topic)
                                    .key(&format!("k{}", i % 5))
                                    .payload(&value),
                                Duration::from_secs(10),
                            )
                            .await
                            .unwrap();
                    }
                })
                .collect();
            futures::future::join_all(sends).await;
        }
    };
    // Reads `stream` until `count` events are in `seen`.
    async fn read(
        stream: &mut tonic::Streaming<Bytes>,
        seen: &mut Vec<(usize, Vec<u8>)>,
        count: usize,
    ) {
        while seen.len() < count {
            let message = tokio::time::timeout(CALL, stream.message())
                .await
                .unwrap_or_else(|_| panic!("only {} of {count} events", seen.len()))
                .unwrap()
                .unwrap();
            let event: grpc_support::pb::Event = prost::Message::decode(message.as_ref()).unwrap();
            let id = fetch_id::find_id(&message, 32767).unwrap();
            let number = event.text[1..].split('-').next().unwrap();
            seen.push((number.parse().unwrap(), id));
        }
    }
    fn check(seen: &[(usize, Vec<u8>)], count: usize, what: &str) {
        let mut numbers: Vec<usize> = seen.iter().map(|(n, _)| *n).collect();
        for key in 0..5 {
            let of_key: Vec<usize> = numbers.iter().copied().filter(|n| n % 5 == key).collect();
            assert!(
                of_key.is_sorted(),
                "{what}: k{key} out of order: {of_key:?}"
            );
        }
        numbers.sort();
        numbers.dedup();
        assert_eq!(numbers.len(), count, "{what}: every event once");
        assert_eq!(seen.len(), count, "{what}: no duplicate");
    }

    // A connection per stream: streams the test does not read for a while would otherwise
    // hold the one connection's HTTP/2 window and stall the others.
    produce(0, 100).await;
    let mut slow = fetch(&channel(&bridge).await).await.unwrap();
    let mut streams = Vec::new();
    for round in 0..10 {
        streams.push((fetch(&channel(&bridge).await).await.unwrap(), Vec::new()));
        produce(100 + round * 20, 120 + round * 20).await;
    }
    // One stream stops after 150 events and resumes from its last message id.
    let (first, mut seen) = streams.remove(0);
    let mut first = first;
    read(&mut first, &mut seen, 150).await;
    drop(first);
    let last_id = seen.last().unwrap().1.clone();
    let mut resumed = {
        let mut raw = tonic::client::Grpc::new(channel(&bridge).await);
        raw.ready().await.unwrap();
        let mut request = Request::new(futures::stream::iter([Bytes::new()]));
        request.metadata_mut().insert(
            "last-message-id",
            fetch_id::to_text(&last_id).parse().unwrap(),
        );
        let path = http::uri::PathAndQuery::from_static("/strait.test.v1.Events/Fetch");
        raw.streaming(request, path, RawCodec)
            .await
            .unwrap()
            .into_inner()
    };
    // More than the shared reader keeps while `slow` reads nothing.
    produce(300, 1600).await;
    read(&mut resumed, &mut seen, 1600).await;
    check(&seen, 1600, "resumed");
    for (i, (stream, seen)) in streams.iter_mut().enumerate() {
        read(stream, seen, 1600).await;
        check(seen, 1600, &format!("stream {i}"));
    }
    let mut slow_seen = Vec::new();
    read(&mut slow, &mut slow_seen, 1600).await;
    check(&slow_seen, 1600, "slow");
    let behind =
        "strait_grpc_limit_hits_total{limit=\"limits.fetchBufferedRecords\",role=\"grpc-kafka\"}";
    assert!(
        metric(admin, behind).await.is_some_and(|n| n >= 1.0),
        "the slow stream fell behind the ring and caught up"
    );

    // Caught up, live streams hold no consumer of their own: one shared reader.
    let consumers = "strait_grpc_fetch_consumers{role=\"grpc-kafka\"}";
    wait_until(
        Duration::from_secs(10),
        "the catch-up consumers to close",
        || async { (metric(admin, consumers).await == Some(1.0)).then_some(()) },
    )
    .await;
    assert_eq!(
        metric(admin, "strait_grpc_fetch_streams{role=\"grpc-kafka\"}").await,
        Some(11.0)
    );
    produce(1600, 1650).await;
    for (i, (stream, seen)) in streams.iter_mut().enumerate() {
        read(stream, seen, 1650).await;
        check(seen, 1650, &format!("stream {i}, live"));
    }
    wait_until(
        Duration::from_secs(10),
        "one consumer (the shared reader) once live again",
        || async { (metric(admin, consumers).await == Some(1.0)).then_some(()) },
    )
    .await;
}
