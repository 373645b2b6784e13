//! Kafka over TLS and SASL, against the SASL_SSL listener of the test services' Kafka (a CA of
//! its own; SCRAM-SHA-512, SCRAM-SHA-256 and PLAIN users): MQTT through r-proxy → s-proxy →
//! Kafka, a unary gRPC call through grpc-kafka → Kafka → kafka-grpc, and what a role does with
//! a wrong password or a CA that does not sign the brokers' certificate: it says so, naming the
//! bootstrap servers, stays not ready and keeps running.

mod grpc_support;
mod kafka_support;
mod support;

use std::path::PathBuf;
use std::time::Duration;

use grpc_support::{Bridge, CALL, request, start_service, with_timeout, write_config};
use kafka_support::{
    KafkaRelay, Topics, next_publish, publish_qos1, raw_session, read_record, s_proxy_config,
    subscribe,
};
use strait_e2e::{Daemon, free_local_addr, require, unique_name};
use strait_mqtt_codec::{Protocol, QoS, ReasonCode};
use support::{BIN, connect_packet};

/// Deadline for a role to report a failed connection.
const REPORTED: Duration = Duration::from_secs(30);

/// The SASL_SSL listener of the test Kafka, and its plaintext twin (same broker, same topics).
struct Secured {
    plaintext: String,
    bootstrap: String,
    ca: String,
    scram_user: String,
    scram_password_file: String,
    plain_user: String,
    plain_password_file: String,
}

/// The SASL_SSL Kafka of the test services (`require!`: skips the test outside CI without it).
macro_rules! secured_kafka {
    () => {
        Secured {
            plaintext: require!("KAFKA_BOOTSTRAP", "kafka"),
            bootstrap: require!("KAFKA_SASL_SSL_BOOTSTRAP", "kafka"),
            ca: require!("KAFKA_TLS_CA", "kafka"),
            scram_user: require!("KAFKA_SCRAM_USER", "kafka"),
            scram_password_file: require!("KAFKA_SCRAM_PASSWORD_FILE", "kafka"),
            plain_user: require!("KAFKA_PLAIN_USER", "kafka"),
            plain_password_file: require!("KAFKA_PLAIN_PASSWORD_FILE", "kafka"),
        }
    };
}

impl Secured {
    /// `tls` and `sasl` lines for the `kafka` section of an s-proxy config file.
    fn yaml(&self, mechanism: &str, user: &str, password_file: &str, ca: &str) -> String {
        format!(
            "  tls: {{ ca: '{ca}' }}\n  \
             sasl: {{ mechanism: {mechanism}, username: '{user}', passwordFile: '{password_file}' }}\n"
        )
    }

    /// `--kafka` and the TLS and SASL flags.
    fn flags(&self, mechanism: &str, user: &str, password_file: &str, ca: &str) -> Vec<String> {
        [
            "--kafka",
            &self.bootstrap,
            "--kafka-tls-ca",
            ca,
            "--kafka-sasl-mechanism",
            mechanism,
            "--kafka-sasl-username",
            user,
            "--kafka-sasl-password-file",
            password_file,
        ]
        .map(String::from)
        .to_vec()
    }

    fn password(&self, file: &str) -> String {
        std::fs::read_to_string(file).unwrap().trim().to_string()
    }
}

fn temp_file(name: &str, contents: &str) -> PathBuf {
    let path = std::env::temp_dir().join(unique_name(name));
    std::fs::write(&path, contents).unwrap();
    path
}

fn refs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// Waits for `text` in the log, then checks the process is running and not ready.
async fn assert_reports_and_stays_unready(daemon: &mut Daemon, text: &str, secret: &str) {
    daemon.wait_for_log(text, REPORTED).await;
    assert_eq!(daemon.readyz().await, Some(503), "{}", daemon.log());
    assert!(daemon.is_running(), "{}", daemon.log());
    assert!(
        !daemon.log().contains(secret),
        "the password is in the log:\n{}",
        daemon.log()
    );
}

#[tokio::test]
async fn mqtt_publish_and_subscribe_through_kafka_over_sasl_ssl_scram_sha_512() {
    let kafka = secured_kafka!();
    let security = kafka.yaml(
        "SCRAM-SHA-512",
        &kafka.scram_user,
        &kafka.scram_password_file,
        &kafka.ca,
    );
    let relay =
        KafkaRelay::start_with(&kafka.bootstrap, Topics::unique("sasl-mqtt"), &security).await;
    let (mut sub, _) = raw_session(&relay, Protocol::V5, connect_packet(&unique_name("sub"))).await;
    assert_eq!(
        subscribe(&mut sub, 1, &[("secure/#", QoS::AtLeastOnce)]).await,
        [ReasonCode::GRANTED_QOS_1]
    );
    let (mut publisher, _) =
        raw_session(&relay, Protocol::V311, connect_packet(&unique_name("pub"))).await;
    assert_eq!(
        publish_qos1(&mut publisher, "secure/door", 1, b"locked").await,
        ReasonCode::SUCCESS
    );
    let got = next_publish(&mut sub, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("no message\n{}", relay.s_proxy.log()));
    assert_eq!(
        (&*got.topic, &got.payload[..]),
        ("secure/door", &b"locked"[..])
    );

    // The record is in the cluster, as the plaintext listener of the same broker shows.
    let (_, _, payload) =
        read_record(&kafka.plaintext, &relay.topics.messages, "secure/door").await;
    assert_eq!(payload.as_deref(), Some(&b"locked"[..]));
    let password = kafka.password(&kafka.scram_password_file);
    assert!(!relay.s_proxy.log().contains(&password), "password logged");
}

#[tokio::test]
async fn unary_call_through_kafka_over_sasl_ssl_plain_and_scram_sha_256() {
    let kafka = secured_kafka!();
    let (target, _service) = start_service().await;
    // Topics are created through the plaintext listener; both roles use SASL_SSL (flags), with
    // different users and mechanisms.
    let front = kafka.flags(
        "PLAIN",
        &kafka.plain_user,
        &kafka.plain_password_file,
        &kafka.ca,
    );
    let back = kafka.flags(
        "SCRAM-SHA-256",
        &kafka.scram_user,
        &kafka.scram_password_file,
        &kafka.ca,
    );
    let bridge = Bridge::start_with_args(
        &kafka.plaintext,
        &format!("http://{target}"),
        "",
        "",
        &refs(&front),
        &refs(&back),
    )
    .await;
    let reply = bridge
        .client()
        .await
        .unary(with_timeout(request("over SASL_SSL"), CALL))
        .await
        .unwrap_or_else(|s| panic!("unary: {s}\n{}", bridge.logs()))
        .into_inner();
    assert_eq!(reply.text, "over SASL_SSL");
    for file in [&kafka.plain_password_file, &kafka.scram_password_file] {
        assert!(
            !bridge.logs().contains(&kafka.password(file)),
            "password logged"
        );
    }
}

#[tokio::test]
async fn a_wrong_password_is_reported_as_failed_authentication_and_keeps_the_role_unready() {
    let kafka = secured_kafka!();
    let wrong = "not-the-password";
    let wrong_file = temp_file("wrong-password", wrong);
    let wrong_file = wrong_file.to_str().unwrap();

    // s-proxy, SCRAM-SHA-512 from its config file.
    let security = kafka.yaml("SCRAM-SHA-512", &kafka.scram_user, wrong_file, &kafka.ca);
    let config = s_proxy_config(
        free_local_addr(),
        &kafka.bootstrap,
        &Topics::unique("sasl-wrong"),
        &security,
    );
    let mut s_proxy = Daemon::spawn(BIN, &["s-proxy", "--config", config.to_str().unwrap()]);

    // kafka-grpc, PLAIN from flags.
    let kafka_grpc_config = write_config(
        "kafka-grpc-wrong",
        &format!(
            "kafka: {{ bootstrap: '{}' }}\ntarget: http://127.0.0.1:1\nroutes: [{{ topic: {} }}]\n",
            kafka.plaintext,
            unique_name("sasl-requests"),
        ),
    );
    let flags = kafka.flags("PLAIN", &kafka.plain_user, wrong_file, &kafka.ca);
    let mut args = vec![
        "kafka-grpc",
        "--config",
        kafka_grpc_config.to_str().unwrap(),
    ];
    args.extend(refs(&flags));
    let mut kafka_grpc = Daemon::spawn(BIN, &args);

    let failed = format!("Kafka authentication failed at {}", kafka.bootstrap);
    assert_reports_and_stays_unready(&mut s_proxy, &failed, wrong).await;
    assert!(
        s_proxy.log().contains("SASL SCRAM-SHA-512"),
        "{}",
        s_proxy.log()
    );
    assert_reports_and_stays_unready(&mut kafka_grpc, &failed, wrong).await;
    // Still waiting, not stopped: the line saying so repeats the reason.
    s_proxy
        .wait_for_log("waiting for Kafka (not ready until it answers)", REPORTED)
        .await;
}

#[tokio::test]
async fn a_ca_that_does_not_sign_the_brokers_is_reported_as_certificate_verify_failed() {
    let kafka = secured_kafka!();
    let other_ca = rcgen::generate_simple_self_signed(vec!["some-other-ca".into()])
        .unwrap()
        .cert
        .pem();
    let other_ca = temp_file("other-ca.crt", &other_ca);
    let flags = kafka.flags(
        "SCRAM-SHA-512",
        &kafka.scram_user,
        &kafka.scram_password_file,
        other_ca.to_str().unwrap(),
    );
    let front_config = write_config(
        "grpc-kafka-wrong-ca",
        &format!(
            "kafka: {{ bootstrap: '{}' }}\n\
             protos: {{ paths: ['{}'], reloadInterval: 0s }}\n\
             routes: [{{ method: strait.test.v1.Echo/*, produce: {{ topic: {}, replyTo: {} }} }}]\n",
            kafka.plaintext,
            grpc_support::proto_dir().display(),
            unique_name("ca-requests"),
            unique_name("ca-replies"),
        ),
    );
    let listen = free_local_addr().to_string();
    let mut args = vec![
        "grpc-kafka",
        "--config",
        front_config.to_str().unwrap(),
        "--listen",
        &listen,
    ];
    args.extend(refs(&flags));
    let mut grpc_kafka = Daemon::spawn(BIN, &args);
    let password = kafka.password(&kafka.scram_password_file);
    assert_reports_and_stays_unready(
        &mut grpc_kafka,
        &format!("Kafka TLS certificate verify failed at {}", kafka.bootstrap),
        &password,
    )
    .await;
    assert!(
        grpc_kafka.log().contains(other_ca.to_str().unwrap()),
        "the CA file is named\n{}",
        grpc_kafka.log()
    );
}
