//! gRPC over Kafka through a Kafka outage: calls end cleanly within their deadline while Kafka is
//! down, and both roles recover on their own when it is back (Zilla's kafka-grpc was reported to
//! stop delivering after its group went empty, zilla-wire.md §6, #881).
//!
//! A file of its own: it stops the shared Kafka (`tests/e2e/services stop kafka`), and cargo runs
//! test binaries one after the other, so no other test sees the outage.

mod grpc_support;

use std::path::PathBuf;
use std::time::Duration;

use grpc_support::*;
use strait_e2e::{http_get, require, wait_until};
use tonic::Code;

fn services(command: &str) {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/e2e/services");
    let status = std::process::Command::new(&script)
        .args([command, "kafka"])
        .status()
        .unwrap_or_else(|e| panic!("{}: {e}", script.display()));
    assert!(status.success(), "services {command} kafka: {status}");
}

#[tokio::test]
async fn calls_fail_cleanly_during_a_kafka_outage_and_work_again_after() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, service) = start_service().await;
    let bridge = Bridge::start(&bootstrap, target).await;
    let kafka = bridge.client().await;
    kafka
        .clone()
        .unary(with_timeout(request("before"), CALL))
        .await
        .unwrap_or_else(|s| panic!("{s}\n{}", bridge.logs()));

    services("stop");
    let mut client = no_timer_client(bridge.addr);
    let started = std::time::Instant::now();
    let outcome =
        unary_with_deadline(&mut client, request("during"), Duration::from_secs(2), None).await;
    let elapsed = started.elapsed();
    // Bring Kafka back before asserting, so a failure leaves the services as they were.
    services("start");
    let status = outcome.expect_err("no answer without Kafka");
    assert!(
        matches!(status.code(), Code::DeadlineExceeded | Code::Unavailable),
        "{status:?}"
    );
    assert!(
        elapsed < Duration::from_secs(4),
        "ended within its deadline: {elapsed:?}"
    );

    // Producers, the reply reader and the consumer group recover without a restart.
    let reply = wait_until(Duration::from_secs(90), "calls to succeed again", || {
        let mut kafka = kafka.clone();
        async move {
            kafka
                .unary(with_timeout(request("after"), Duration::from_secs(5)))
                .await
                .ok()
        }
    })
    .await;
    assert_eq!(reply.into_inner().text, "after");
    assert!(service.count("after") >= 1);
    for admin in [bridge.front.admin, bridge.back[0].admin] {
        assert_eq!(http_get(admin, "/healthz").await.unwrap().0, 200);
        assert_eq!(http_get(admin, "/readyz").await.unwrap().0, 200);
    }
}
