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

#[test]
fn every_kafka_role_teaches_its_tls_and_sasl_flags() {
    for role in ["s-proxy", "grpc-kafka", "kafka-grpc", "dev"] {
        let out = Command::new(BIN).args([role, "--help"]).output().unwrap();
        assert!(out.status.success(), "{role} --help");
        let help = String::from_utf8(out.stdout).unwrap();
        for expected in [
            "--kafka-tls-ca <FILE>",
            "--kafka-tls-cert <FILE>",
            "--kafka-sasl-mechanism <MECHANISM>",
            "SCRAM-SHA-512",
            "--kafka-sasl-username <NAME>",
            "--kafka-sasl-password-file <FILE>",
        ] {
            assert!(
                help.contains(expected),
                "{role} --help mentions {expected}: {help}"
            );
        }
    }
}

#[test]
fn an_unreadable_sasl_password_file_stops_the_role_naming_the_field() {
    let out = Command::new(BIN)
        .args([
            "s-proxy",
            "--metrics-addr",
            "127.0.0.1:0",
            "--upstream",
            "kafka",
            "--kafka",
            "127.0.0.1:9",
            "--kafka-sasl-mechanism",
            "SCRAM-SHA-512",
            "--kafka-sasl-username",
            "strait",
            "--kafka-sasl-password-file",
            "/nonexistent/strait-password",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains(
            "kafka.sasl.passwordFile: cannot read /nonexistent/strait-password: No such file"
        ),
        "{stderr}"
    );
}
