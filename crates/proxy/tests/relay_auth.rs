//! Authentication modes other than JWT and the static topic ACL, end to end: real proxies as
//! processes, real Mosquittos (the test services' and one of the test's own that logs what it
//! is given), a password file written by `mosquitto_passwd`.

mod support;

use std::path::PathBuf;

use strait_e2e::{free_local_addr, require, unique_name};
use strait_mqtt_codec::{self as mqtt, Connect, Packet, Protocol, QoS, ReasonCode};
use support::{LoggingBroker, RawClient, connect_packet, start_r_proxy, start_s_proxy};

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique_name(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// s-proxy in front of `broker`, r-proxy in front of it with `r_args`.
async fn relay(
    broker: &str,
    r_args: &[&str],
) -> (strait_e2e::Daemon, strait_e2e::Daemon, std::net::SocketAddr) {
    let grpc = free_local_addr();
    let s_proxy = start_s_proxy(grpc, broker).await;
    let mqtt = free_local_addr();
    let r_proxy = start_r_proxy(mqtt, &[format!("http://{grpc}")], r_args).await;
    (s_proxy, r_proxy, mqtt)
}

fn with_credentials(client_id: &str, user: &str, password: &str) -> Connect {
    let mut connect = connect_packet(client_id);
    connect.username = Some(user.into());
    connect.password = Some(password.to_string().into_bytes().into());
    connect
}

/// The CONNACK reason a CONNECT gets (3.1.1 return codes decode to their v5 reason).
async fn connack(addr: std::net::SocketAddr, protocol: Protocol, connect: Connect) -> ReasonCode {
    match RawClient::try_session(addr, protocol, connect).await {
        Ok((_, ack)) => ack.reason_code,
        Err(Some(Packet::ConnAck(ack))) => ack.reason_code,
        Err(other) => panic!("expected a CONNACK, got {other:?}"),
    }
}

fn subscribe(packet_id: u16, filters: &[&str]) -> Packet {
    Packet::Subscribe(mqtt::Subscribe {
        packet_id,
        subscriptions: filters
            .iter()
            .map(|f| mqtt::Subscription {
                filter: f.to_string(),
                options: mqtt::SubscriptionOptions::qos(QoS::AtLeastOnce),
            })
            .collect(),
        ..Default::default()
    })
}

fn publish(packet_id: u16, topic: &str) -> Packet {
    Packet::Publish(mqtt::Publish {
        qos: QoS::AtLeastOnce,
        topic: topic.into(),
        packet_id,
        payload: "x".into(),
        ..Default::default()
    })
}

/// The SUBACK's reason codes as the client got them (3.1.1 failures are 0x80).
async fn suback(client: &mut RawClient, packet: Packet) -> Vec<u8> {
    client.send(&packet).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => ack.reason_codes.iter().map(|c| c.0).collect(),
        other => panic!("expected a SUBACK, got {other:?}"),
    }
}

async fn failures(admin: std::net::SocketAddr, reason: &str) -> String {
    let metrics = strait_e2e::http_get(admin, "/metrics").await.unwrap().1;
    let prefix = format!("strait_mqtt_auth_failures_total{{reason=\"{reason}\"}} ");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&prefix).map(String::from))
        .unwrap_or_else(|| panic!("no {prefix} in\n{metrics}"))
}

#[tokio::test]
async fn password_mode_checks_mosquitto_passwd_hashes_and_the_broker_sees_the_user() {
    require!("MQTT_BROKER", "mosquitto");
    let broker = LoggingBroker::start().await;
    let dir = temp_dir("passwords");
    let file = dir.join("passwords");
    for (i, (user, password)) in [("alice", "s3cret"), ("bob", "hunter2")].iter().enumerate() {
        let mut command = std::process::Command::new("mosquitto_passwd");
        command.arg("-b");
        if i == 0 {
            command.arg("-c");
        }
        let status = command.arg(&file).arg(user).arg(password).status().unwrap();
        assert!(status.success(), "mosquitto_passwd");
    }
    let prefix = unique_name("pw");
    let acl = dir.join("acl.yaml");
    std::fs::write(
        &acl,
        format!("authenticated:\n  publish: [\"{prefix}/{{username}}/#\"]\n  subscribe: [\"{prefix}/{{username}}/#\"]\n"),
    )
    .unwrap();
    let (_s, r_proxy, mqtt) = relay(
        &broker.address,
        &[
            "--auth-mode",
            "password",
            "--password-file",
            file.to_str().unwrap(),
            "--acl-file",
            acl.to_str().unwrap(),
        ],
    )
    .await;

    // The right password: the broker gets the verified user name, and {username} is alice.
    let id = unique_name("alice");
    let (mut alice, _) =
        RawClient::session(mqtt, Protocol::V5, with_credentials(&id, "alice", "s3cret")).await;
    assert_eq!(broker.user_name_of(&id).await.as_deref(), Some("alice"));
    let topic = format!("{prefix}/alice/t");
    alice.subscribe(1, &topic).await;
    alice.publish_and_receive(2, &topic, "hi").await;
    alice.send(&publish(9, &format!("{prefix}/bob/t"))).await;
    match alice.recv().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED),
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }

    // Wrong password, unknown user, none at all: 0x86 (3.1.1: return code 4).
    for (protocol, connect) in [
        (Protocol::V5, with_credentials(&id, "alice", "wrong")),
        (Protocol::V311, with_credentials(&id, "alice", "hunter2")),
        (Protocol::V5, with_credentials(&id, "mallory", "s3cret")),
        (Protocol::V5, connect_packet(&id)),
    ] {
        assert_eq!(
            connack(mqtt, protocol, connect.clone()).await,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{connect:?}"
        );
    }
    assert_eq!(failures(r_proxy.admin, "bad_password").await, "4");
    assert!(
        !r_proxy.log().contains("hunter2") && !broker.log().contains("s3cret"),
        "no password in a log"
    );
}

#[tokio::test]
async fn the_acl_refuses_subscriptions_and_publishes_in_v5_and_3_1_1() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let prefix = unique_name("acl");
    let dir = temp_dir("acl");
    let acl = dir.join("acl.yaml");
    std::fs::write(
        &acl,
        format!(
            "anonymous:\n  publish: [\"{prefix}/{{clientId}}/up/#\"]\n  \
             subscribe: [\"{prefix}/{{clientId}}/#\"]\n  denySubscribe: [\"{prefix}/+/secret/#\"]\n"
        ),
    )
    .unwrap();
    let (_s, r_proxy, mqtt) = relay(&broker, &["--acl-file", acl.to_str().unwrap()]).await;

    let id = unique_name("dev");
    let (mut v5, _) = RawClient::session(mqtt, Protocol::V5, connect_packet(&id)).await;
    let mine = format!("{prefix}/{id}/#");
    let up = format!("{prefix}/{id}/up/+");
    let other = format!("{prefix}/someone/#");
    assert_eq!(
        suback(&mut v5, subscribe(1, &[&mine, &up, &other])).await,
        [0x87, 0x01, 0x87],
        "{mine} overlaps the denied secret/#; {other} is not granted"
    );
    // Allowed publishes reach the broker and come back; others get PUBACK 0x87.
    v5.send(&publish(2, &format!("{prefix}/{id}/down/x"))).await;
    match v5.recv().await {
        Some(Packet::PubAck(ack)) => {
            assert_eq!(
                (ack.packet_id, ack.reason_code),
                (2, ReasonCode::NOT_AUTHORIZED)
            )
        }
        other => panic!("expected PUBACK 0x87, got {other:?}"),
    }
    v5.publish_and_receive(3, &format!("{prefix}/{id}/up/t"), "ok")
        .await;

    let id = unique_name("dev");
    let (mut v3, _) = RawClient::session(mqtt, Protocol::V311, connect_packet(&id)).await;
    assert_eq!(suback(&mut v3, subscribe(1, &[&other])).await, [0x80]);
    v3.send(&publish(2, &format!("{prefix}/{id}/down/x"))).await;
    assert_eq!(
        v3.until_closed().await,
        [],
        "3.1.1: disconnected, no PUBACK"
    );

    let metrics = strait_e2e::http_get(r_proxy.admin, "/metrics")
        .await
        .unwrap()
        .1;
    for want in [
        "strait_mqtt_auth_denied_total{action=\"subscribe\"} 3",
        "strait_mqtt_auth_denied_total{action=\"publish\"} 2",
    ] {
        assert!(metrics.contains(want), "{want} in\n{metrics}");
    }
}
