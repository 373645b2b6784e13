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
