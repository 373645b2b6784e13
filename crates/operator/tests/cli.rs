//! The operator binary as a user runs it: help, version, telemetry endpoints, clean shutdown.

use std::process::{Command, Stdio};
use std::time::Duration;

use strait_e2e::{free_local_addr, http_get, require, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_strait-operator");

#[test]
fn help_and_version_describe_the_binary() {
    let help = Command::new(BIN).arg("--help").output().unwrap();
    assert!(help.status.success());
    let help = String::from_utf8(help.stdout).unwrap();
    for expected in ["MqttBridge", "--metrics-addr", "--log-format", "crd"] {
        assert!(
            help.contains(expected),
            "--help mentions {expected}: {help}"
        );
    }
    let version = Command::new(BIN).arg("--version").output().unwrap();
    assert_eq!(
        String::from_utf8(version.stdout).unwrap().trim(),
        format!("strait-operator {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn bad_flag_value_names_the_flag() {
    let out = Command::new(BIN)
        .args(["--metrics-addr", "not-an-address"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("--metrics-addr"), "{stderr}");
}

#[tokio::test]
async fn serves_telemetry_and_stops_on_sigterm() {
    // The controllers need a cluster (KUBECONFIG) to start.
    require!("KUBECONFIG", "kube");
    let addr = free_local_addr();
    let child = tokio::process::Command::new(BIN)
        .args(["--log-format", "json", "--metrics-addr", &addr.to_string()])
        .env("RUST_LOG", "info")
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    // Ready once it has joined leader election (a standby is ready too).
    let ready = wait_until(Duration::from_secs(20), "/readyz to answer 200", || async {
        http_get(addr, "/readyz")
            .await
            .ok()
            .filter(|(status, _)| *status == 200)
    })
    .await;
    assert_eq!(ready, (200, "ok\n".into()));
    assert_eq!(http_get(addr, "/healthz").await.unwrap().0, 200);
    let (status, metrics) = http_get(addr, "/metrics").await.unwrap();
    assert_eq!(status, 200);
    assert!(
        metrics.contains("process_resident_memory_bytes"),
        "{metrics}"
    );

    let pid = child.id().expect("running").to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(killed.success());
    let output = tokio::time::timeout(Duration::from_secs(10), child.wait_with_output())
        .await
        .expect("exits within 10 s of SIGTERM")
        .unwrap();
    assert!(output.status.success(), "clean exit: {:?}", output.status);

    // Every log line is one JSON object; the start line carries the admin address.
    let stderr = String::from_utf8(output.stderr).unwrap();
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    let started = lines
        .iter()
        .find(|l| l["message"] == "started")
        .expect("a 'started' line");
    assert_eq!(started["admin"], addr.to_string());
    assert!(lines.iter().any(|l| l["signal"] == "SIGTERM"), "{stderr}");
}

#[test]
fn admin_port_in_use_is_a_clear_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let out = Command::new(BIN)
        .args(["--metrics-addr", &addr.to_string()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(&format!("cannot bind the admin endpoint on {addr}")),
        "{stderr}"
    );
}
