//! The proxy binary as a user runs it.

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_strait-proxy");

#[test]
fn without_a_role_it_teaches_usage() {
    let out = Command::new(BIN).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let help = String::from_utf8(out.stdout).unwrap();
    for expected in ["Kafka", "--metrics-addr", "--log-format", "RUST_LOG"] {
        assert!(help.contains(expected), "usage mentions {expected}: {help}");
    }
}

#[test]
fn version_is_printed() {
    let out = Command::new(BIN).arg("--version").output().unwrap();
    assert!(out.status.success());
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("strait-proxy {}", env!("CARGO_PKG_VERSION"))
    );
}
