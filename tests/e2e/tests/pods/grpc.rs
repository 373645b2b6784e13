//! gRPC through Kafka: the demo service as a pod, a grpcio client on the host, and kafka-grpc
//! scaled from the lag of a burst of calls.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

/// Calls `strait.demo.v1.Echo/Say` at `addr` once per text, all at once, with a real grpcio
/// client (`tests/e2e/python-grpcio`); returns the answers in order, or panics with the first
/// failed call's status.
pub(super) fn echo_say(addr: SocketAddr, texts: &[String], deadline: Duration) -> Vec<String> {
    const CLIENT: &str = r#"
import sys, grpc
addr, timeout, texts = sys.argv[1], float(sys.argv[2]), sys.argv[3:]
def request(text):  # strait.demo.v1.EchoRequest{text}
    data = text.encode()
    return b"\x0a" + bytes([len(data)]) + data
def reply_text(data):  # strait.demo.v1.EchoReply: field 1, a short string, comes first
    assert data[0] == 0x0a, data
    return data[2:2 + data[1]].decode()
say = grpc.insecure_channel(addr).unary_unary("/strait.demo.v1.Echo/Say")
# wait_for_ready: a Service that just got its endpoint may take a moment to route (kube-proxy).
calls = [say.future(request(t), timeout=timeout, wait_for_ready=True) for t in texts]
for call in calls:
    print(reply_text(call.result()))
"#;
    let python = std::process::Command::new(repo_file("tests/e2e/python-grpcio"))
        .output()
        .expect("run tests/e2e/python-grpcio");
    assert!(
        python.status.success(),
        "installing grpcio: {}",
        String::from_utf8_lossy(&python.stderr)
    );
    let python = String::from_utf8(python.stdout).unwrap();
    let out = std::process::Command::new(python.trim())
        .arg("-c")
        .arg(CLIENT)
        .arg(addr.to_string())
        .arg(deadline.as_secs().to_string())
        .args(texts)
        .output()
        .expect("run the grpcio client");
    assert!(
        out.status.success(),
        "grpcio calls to {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(str::to_string)
        .collect()
}

/// The gRPC example as written, with the demo service as its backend pod: a grpcio client on
/// the host calls the route's Service and gets the demo service's answer through Kafka.
pub(super) async fn grpc_example(ns: &str, ground: &Ground, operator: &Operator) {
    kubectl_ok(
        &[
            "create",
            "configmap",
            "echo-protos",
            "-n",
            ns,
            &format!(
                "--from-file={}",
                repo_file("proto/strait/demo/v1/echo.proto").display()
            ),
        ],
        None,
    );
    kubectl_ok(
        &["apply", "-n", ns, "-f", "-"],
        Some(&example(
            "examples/grpckafkaroute.yaml",
            &[("ghcr.io/strait-dev/strait-proxy:0.1.0", &ground.proxy_image)],
        )),
    );
    wait_rolled_out(ns, "echo-service", operator).await;
    wait_for_condition("grpckafkaroute/echo", ns, "Ready", READY, || {
        diagnostics(ns, operator)
    });
    let echo = service_address(ns, "echo", 50051);
    let texts: Vec<String> = (0..8).map(|i| format!("hello {i} through kafka")).collect();
    let answers =
        tokio::task::spawn_blocking(move || echo_say(echo, &texts, Duration::from_secs(60)));
    let answers = answers.await.unwrap();
    let want: Vec<String> = (0..8).map(|i| format!("hello {i} through kafka")).collect();
    assert_eq!(answers, want, "each call answered by the demo service pod");
}

/// A slow backend and a burst of calls build lag on the request topic; the operator adds
/// kafka-grpc pods (up to the 3 partitions), which join the consumer group and take partitions;
/// every call is answered; once the lag is gone and the stabilization window has passed, the
/// pods come back down to one.
pub(super) async fn autoscaling_follows_lag(ns: &str, ground: &Ground, operator: &Operator) {
    // Topics of their own: lag left on a topic by an earlier run would scale before the burst.
    let requests = unique_name("scaled-requests");
    let replies = unique_name("scaled-replies");
    let route = serde_json::json!({
        "apiVersion": "strait.dev/v1alpha1",
        "kind": "GrpcKafkaRoute",
        "metadata": {"name": "scaled", "namespace": ns},
        "spec": {
            "kafka": {"bootstrap": "kafka.kafka.svc.cluster.local:9092"},
            "protos": {"configMap": "echo-protos"},
            "routes": [{"method": "strait.demo.v1.Echo/*",
                        "produce": {"topic": requests, "replyTo": replies}}],
            "topicDefaults": {"partitions": 3, "replicationFactor": 1},
            "backend": {
                "target": "http://echo-slow:50051",
                "concurrency": 4,
                "autoscale": {"minReplicas": 1, "maxReplicas": 3, "lagThreshold": 20,
                              "scaleDownStabilizationSeconds": 20, "pollIntervalSeconds": 3},
            },
        },
    });
    let slow = example(
        "examples/grpckafkaroute.yaml",
        &[
            ("ghcr.io/strait-dev/strait-proxy:0.1.0", &ground.proxy_image),
            ("\"0.0.0.0:50051\",", "\"0.0.0.0:50051\", --delay, 250ms,"),
            ("echo-service", "echo-slow"),
        ],
    );
    // Only the demo Deployment and Service of the example, renamed and slowed down.
    let slow: String = slow
        .split("\n---\n")
        .skip(1)
        .collect::<Vec<_>>()
        .join("\n---\n");
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&slow));
    kubectl_ok(&["apply", "-n", ns, "-f", "-"], Some(&route.to_string()));
    wait_rolled_out(ns, "echo-slow", operator).await;
    wait_for_condition("grpckafkaroute/scaled", ns, "Ready", READY, || {
        operator.log()
    });
    let replicas = || {
        kubectl_json(&["deployment", "scaled-kafka-grpc", "-n", ns])
            .and_then(|d| d["spec"]["replicas"].as_i64())
    };
    assert_eq!(replicas(), Some(1), "one consumer before the burst");

    // 360 calls at 4 in flight and 250 ms each: 90 s for one consumer, lag far above 20.
    let address = service_address(ns, "scaled", 50051);
    let texts: Vec<String> = (0..360).map(|i| format!("burst {i}")).collect();
    let want = texts.clone();
    let calls =
        tokio::task::spawn_blocking(move || echo_say(address, &texts, Duration::from_secs(300)));

    let members = wait_until(
        READY,
        "3 kafka-grpc pods Ready in the consumer group",
        || async {
            let route = kubectl_json(&["grpckafkaroute", "scaled", "-n", ns])?;
            let ready = deployment_ready(ns, "scaled-kafka-grpc")?;
            let members = route["status"]["members"].as_i64()?;
            (ready == 3 && members == 3).then_some(members)
        },
    )
    .await;
    assert_eq!(
        members, 3,
        "every new pod joined the group and took a partition"
    );
    let answers = calls.await.unwrap();
    assert_eq!(answers, want, "every call of the burst answered");

    wait_until(
        READY,
        "kafka-grpc back to one pod after the stabilization window",
        || async {
            (replicas() == Some(1) && deployment_ready(ns, "scaled-kafka-grpc") == Some(1))
                .then_some(())
        },
    )
    .await;
    let route = kubectl_json(&["grpckafkaroute", "scaled", "-n", ns]).expect("the route");
    assert_eq!(
        route["status"]["lag"], 0,
        "the lag drained: {}",
        route["status"]
    );
}
