//! JWT authentication and topic permissions in r-proxy, end to end: real proxies as processes
//! in front of the test Mosquitto, a key pair and JWKS file made by the test, tokens in the
//! CONNECT password.

mod kafka_support;
mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use strait_e2e::{Daemon, free_local_addr, require, unique_name, wait_until};
use strait_mqtt_codec::{self as mqtt, Connect, Packet, Protocol, QoS, ReasonCode};
use support::{
    LoggingBroker, RawClient, broker_watcher, connect_packet, next_v5, start_r_proxy, start_s_proxy,
};

const ISSUER: &str = "https://auth.strait.test/";

/// An ES256 key pair made for the test, with its public half as a JWK.
struct Signer {
    kid: String,
    key: EncodingKey,
    jwk: Jwk,
}

impl Signer {
    fn new(kid: &str) -> Self {
        let pair = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let key = EncodingKey::from_ec_der(&pair.serialize_der());
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256).unwrap();
        jwk.common.key_id = Some(kid.into());
        Self {
            kid: kid.into(),
            key,
            jwk,
        }
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key).unwrap()
    }
}

/// Writes the JWKS atomically (as a Secret update does), so r-proxy never reads half a file.
fn write_jwks(path: &Path, signers: &[&Signer]) {
    let set = JwkSet {
        keys: signers.iter().map(|s| s.jwk.clone()).collect(),
    };
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(&set).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn now() -> i64 {
    jsonwebtoken::get_current_timestamp() as i64
}

/// Claims of a device `sub` that may publish and subscribe under `strait/jwt/{clientId}/`.
fn device_claims(sub: &str) -> Value {
    json!({
        "iss": ISSUER,
        "aud": "mqtt",
        "sub": sub,
        "exp": now() + 600,
        "mqtt_pub": ["strait/jwt/{clientId}/up/#"],
        "mqtt_sub": ["strait/jwt/{clientId}/down/+", "strait/jwt/{clientId}/up/#"],
    })
}

fn connect_with_token(client_id: &str, token: Option<&str>) -> Connect {
    let mut connect = connect_packet(client_id);
    connect.username = Some("device".into());
    connect.password = token.map(|t| t.to_string().into_bytes().into());
    connect
}

/// s-proxy in front of the broker and r-proxy with JWT authentication from its config file.
struct JwtRelay {
    s_proxy: Daemon,
    r_proxy: Daemon,
    mqtt: std::net::SocketAddr,
    keys_file: PathBuf,
}

impl JwtRelay {
    async fn start(broker: &str, signer: &Signer) -> Self {
        let dir = std::env::temp_dir().join(unique_name("jwt"));
        std::fs::create_dir_all(&dir).unwrap();
        let keys_file = dir.join("jwks.json");
        write_jwks(&keys_file, &[signer]);
        let grpc = free_local_addr();
        let mqtt = free_local_addr();
        let endpoint = format!("http://{grpc}");
        let config = dir.join("r-proxy.yaml");
        std::fs::write(
            &config,
            format!(
                "listeners: {{ tcp: {mqtt} }}\n\
                 sProxy: {{ endpoints: [{endpoint}] }}\n\
                 auth:\n  jwt:\n    issuer: {ISSUER}\n    audience: mqtt\n    \
                 keysFile: {keys}\n    keysReloadInterval: 200ms\n    leeway: 2s\n    \
                 clientIdClaim: sub\n    publishClaim: mqtt_pub\n    subscribeClaim: mqtt_sub\n",
                keys = keys_file.display(),
            ),
        )
        .unwrap();
        let s_proxy = start_s_proxy(grpc, broker).await;
        let r_proxy = start_r_proxy(mqtt, &[], &["--config", config.to_str().unwrap()]).await;
        Self {
            s_proxy,
            r_proxy,
            mqtt,
            keys_file,
        }
    }

    /// A new device (a unique client id) connected with a valid token of `signer`.
    async fn device(&self, signer: &Signer, protocol: Protocol) -> (RawClient, String) {
        let device = unique_name("device");
        let token = signer.sign(&device_claims(&device));
        let connect = connect_with_token(&device, Some(&token));
        let (client, _) = RawClient::session(self.mqtt, protocol, connect).await;
        (client, device)
    }

    /// The CONNACK reason a CONNECT gets (success or refusal).
    async fn connack(&self, protocol: Protocol, connect: Connect) -> ReasonCode {
        match RawClient::try_session(self.mqtt, protocol, connect).await {
            Ok((_, ack)) => ack.reason_code,
            Err(Some(Packet::ConnAck(ack))) => ack.reason_code,
            Err(other) => panic!("expected a CONNACK, got {other:?}"),
        }
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

fn publish(packet_id: u16, topic: &str, qos: QoS, payload: &'static str) -> Packet {
    Packet::Publish(mqtt::Publish {
        qos,
        topic: topic.into(),
        packet_id,
        payload: payload.into(),
        ..Default::default()
    })
}

#[tokio::test]
async fn valid_token_works_within_its_permissions_and_carries_the_identity() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker, &signer).await;
    let (mut client, device) = relay.device(&signer, Protocol::V5).await;
    let topic = format!("strait/jwt/{device}/up/temp");
    client.subscribe(1, &topic).await;
    client.publish_and_receive(2, &topic, "21.5").await;

    // s-proxy's session log names the verified subject.
    let s_proxy = &relay.s_proxy;
    wait_until(
        Duration::from_secs(10),
        "s-proxy to log the session's JWT subject",
        || async {
            s_proxy
                .log()
                .lines()
                .any(|l| l.contains("session opened") && l.contains(&device))
                .then_some(())
        },
    )
    .await;

    // 3.1.1 clients authenticate the same way.
    let (mut v3, v3_device) = relay.device(&signer, Protocol::V311).await;
    let topic = format!("strait/jwt/{v3_device}/up/x");
    v3.subscribe(1, &topic).await;
    v3.publish_and_receive(2, &topic, "v3").await;
}

#[tokio::test]
async fn bad_tokens_are_refused_saying_why() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker, &signer).await;
    let device = unique_name("device");

    let mut expired = device_claims(&device);
    expired["exp"] = json!(now() - 60);
    let mut wrong_issuer = device_claims(&device);
    wrong_issuer["iss"] = json!("https://elsewhere.test/");
    let forged = Signer::new("k1").sign(&device_claims(&device));
    let unknown_key = Signer::new("k9").sign(&device_claims(&device));
    let cases = [
        (Some(signer.sign(&expired)), "expired"),
        (Some(signer.sign(&wrong_issuer)), "wrong_issuer"),
        (Some(forged), "bad_signature"),
        (Some(unknown_key), "unknown_key"),
        (Some("not-a-jwt".to_string()), "malformed_token"),
        (None, "missing_token"),
    ];
    for (token, why) in &cases {
        let connect = connect_with_token(&device, token.as_deref());
        assert_eq!(
            relay.connack(Protocol::V5, connect).await,
            ReasonCode::BAD_USER_NAME_OR_PASSWORD,
            "{why}"
        );
    }
    // 3.1.1: return code 4 (decoded as 0x86).
    let connect = connect_with_token(&device, Some(&signer.sign(&expired)));
    assert_eq!(
        relay.connack(Protocol::V311, connect).await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD
    );
    // A valid token for another client id.
    let other = connect_with_token("someone-else", Some(&signer.sign(&device_claims(&device))));
    assert_eq!(
        relay.connack(Protocol::V5, other).await,
        ReasonCode::CLIENT_IDENTIFIER_NOT_VALID
    );
    // A valid token whose will is outside its permissions.
    let mut with_will = connect_with_token(&device, Some(&signer.sign(&device_claims(&device))));
    with_will.will = Some(mqtt::Will {
        topic: "strait/jwt/elsewhere".into(),
        payload: "gone".into(),
        ..Default::default()
    });
    assert_eq!(
        relay.connack(Protocol::V5, with_will).await,
        ReasonCode::NOT_AUTHORIZED
    );

    // The log says why for each, and never shows a token.
    let log = relay.r_proxy.log();
    for (_, why) in &cases {
        assert!(log.contains(why), "r-proxy log names {why}:\n{log}");
    }
    for (token, _) in &cases {
        if let Some(token) = token.as_deref().filter(|t| t.len() > 20) {
            assert!(!log.contains(token), "a token leaked into the log");
        }
    }
    let metrics = strait_e2e::http_get(relay.r_proxy.admin, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("strait_mqtt_auth_failures_total{reason=\"expired\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn publishes_outside_the_permissions_never_reach_the_broker() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker, &signer).await;
    let (mut client, device) = relay.device(&signer, Protocol::V5).await;
    let (_watcher, mut watched) = broker_watcher(&broker, &format!("strait/jwt/{device}/#")).await;
    let denied = format!("strait/jwt/{device}/down/cmd");
    let allowed = format!("strait/jwt/{device}/up/temp");
    client
        .send(&publish(0, &denied, QoS::AtMostOnce, "dropped"))
        .await;
    let answers = [
        (
            publish(1, &denied, QoS::AtLeastOnce, "refused"),
            "PUBACK 0x87 for 1",
        ),
        (
            publish(2, &denied, QoS::ExactlyOnce, "refused"),
            "PUBREC 0x87 for 2",
        ),
        (
            publish(3, &allowed, QoS::AtLeastOnce, "allowed"),
            "PUBACK 0x0 for 3",
        ),
    ];
    for (packet, want) in answers {
        client.send(&packet).await;
        let got = match client.recv().await {
            Some(Packet::PubAck(a)) => format!("PUBACK {:#x} for {}", a.reason_code.0, a.packet_id),
            Some(Packet::PubRec(r)) => format!("PUBREC {:#x} for {}", r.reason_code.0, r.packet_id),
            other => format!("{other:?}"),
        };
        assert_eq!(got, want);
    }
    // The client's publishes reach the broker in order: the first one the watcher sees must be
    // the allowed one.
    let first = next_v5(&mut watched, Duration::from_secs(10), |p| match p {
        rumqttc::v5::mqttbytes::v5::Packet::Publish(p) => Some(p),
        _ => None,
    })
    .await
    .expect("the allowed publish reaches the broker");
    assert_eq!(
        (&first.topic[..], &first.payload[..]),
        (allowed.as_bytes(), &b"allowed"[..])
    );

    // 3.1.1 has no negative PUBACK: the client is disconnected.
    let (mut v3, _) = relay.device(&signer, Protocol::V311).await;
    v3.send(&publish(1, "strait/jwt/elsewhere", QoS::AtLeastOnce, "no"))
        .await;
    assert_eq!(v3.until_closed().await, [], "closed without a PUBACK");
}

#[tokio::test]
async fn subscriptions_outside_the_permissions_are_refused_per_filter() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker, &signer).await;
    let (mut client, device) = relay.device(&signer, Protocol::V5).await;
    let down = format!("strait/jwt/{device}/down/+");
    let too_wide = format!("strait/jwt/{device}/down/#");
    let up = format!("strait/jwt/{device}/up/#");
    client
        .send(&subscribe(1, &[&too_wide, &down, "#", &up]))
        .await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => assert_eq!(
            ack.reason_codes,
            [
                ReasonCode::NOT_AUTHORIZED,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::NOT_AUTHORIZED,
                ReasonCode::GRANTED_QOS_1
            ]
        ),
        other => panic!("expected a SUBACK, got {other:?}"),
    }
    client.send(&subscribe(2, &["strait/#"])).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(
                (ack.packet_id, ack.reason_codes),
                (2, vec![ReasonCode::NOT_AUTHORIZED])
            )
        }
        other => panic!("expected a SUBACK, got {other:?}"),
    }
    // The granted ones work: a message published to up/ comes back.
    client
        .publish_and_receive(3, &format!("strait/jwt/{device}/up/t"), "back")
        .await;
}

#[tokio::test]
async fn rotated_keys_are_picked_up_without_a_restart() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let old = Signer::new("old");
    let relay = JwtRelay::start(&broker, &old).await;
    let device = unique_name("device");
    let new = Signer::new("new");
    let new_token = signer_token(&new, &device);
    assert_eq!(
        relay
            .connack(Protocol::V5, connect_with_token(&device, Some(&new_token)))
            .await,
        ReasonCode::BAD_USER_NAME_OR_PASSWORD,
        "not trusted before the rotation"
    );

    write_jwks(&relay.keys_file, &[&new]);
    wait_until(
        Duration::from_secs(15),
        "a token signed with the new key to be accepted",
        || async {
            let connect = connect_with_token(&device, Some(&new_token));
            (relay.connack(Protocol::V5, connect).await == ReasonCode::SUCCESS).then_some(())
        },
    )
    .await;
    let old_token = signer_token(&old, &device);
    wait_until(
        Duration::from_secs(15),
        "a token signed with the retired key to be refused",
        || async {
            let connect = connect_with_token(&device, Some(&old_token));
            (relay.connack(Protocol::V5, connect).await == ReasonCode::BAD_USER_NAME_OR_PASSWORD)
                .then_some(())
        },
    )
    .await;
}

fn signer_token(signer: &Signer, device: &str) -> String {
    signer.sign(&device_claims(device))
}

#[tokio::test]
async fn the_session_ends_when_the_token_expires() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker, &signer).await;
    let device = unique_name("device");
    let mut claims = device_claims(&device);
    // Valid for one more second, plus the 2 s leeway.
    claims["exp"] = json!(now() + 1);
    let (mut client, _) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_with_token(&device, Some(&signer.sign(&claims))),
    )
    .await;
    let parting = client.until_closed().await;
    support::assert_disconnected_with(&parting, ReasonCode::MAXIMUM_CONNECT_TIME);
}

#[tokio::test]
async fn a_token_without_the_client_id_claim_cannot_take_another_devices_id() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker, &signer).await;
    let (_victim, victim) = relay.device(&signer, Protocol::V5).await;
    // Validly signed, but it binds no client id (no `sub`): it may not pick the victim's.
    let mut claims = device_claims(&victim);
    claims.as_object_mut().unwrap().remove("sub");
    let token = signer.sign(&claims);
    for protocol in [Protocol::V5, Protocol::V311] {
        assert_eq!(
            relay
                .connack(protocol, connect_with_token(&victim, Some(&token)))
                .await,
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "{protocol:?} (3.1.1: return code 2)"
        );
    }
    let metrics = strait_e2e::http_get(relay.r_proxy.admin, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("strait_mqtt_auth_failures_total{reason=\"client_id_mismatch\"} 2"),
        "{metrics}"
    );
}

#[tokio::test]
async fn the_broker_gets_the_verified_subject_as_user_name_and_never_the_token() {
    require!("MQTT_BROKER", "mosquitto");
    let broker = LoggingBroker::start().await;
    let signer = Signer::new("k1");
    let relay = JwtRelay::start(&broker.address, &signer).await;
    // The client says its user name is "device"; the token says who it is.
    let (_client, device) = relay.device(&signer, Protocol::V5).await;
    assert_eq!(
        broker.user_name_of(&device).await.as_deref(),
        Some(&*device)
    );
    let (_v3, v3_device) = relay.device(&signer, Protocol::V311).await;
    assert_eq!(
        broker.user_name_of(&v3_device).await.as_deref(),
        Some(&*v3_device)
    );
    assert!(
        !broker.log().contains("u'device'"),
        "the unverified user name reached the broker"
    );
}

#[tokio::test]
async fn restored_subscriptions_are_checked_against_the_new_token() {
    let kafka = require!("KAFKA_BOOTSTRAP", "kafka");
    let signer = Signer::new("k1");
    let dir = std::env::temp_dir().join(unique_name("jwt-restore"));
    std::fs::create_dir_all(&dir).unwrap();
    let keys_file = dir.join("jwks.json");
    write_jwks(&keys_file, &[&signer]);
    let keys = keys_file.to_str().unwrap();
    let r_args = [
        "--jwt-issuer",
        ISSUER,
        "--jwt-keys-file",
        keys,
        "--jwt-client-id-claim",
        "sub",
        "--jwt-subscribe-claim",
        "mqtt_sub",
    ];
    let topics = kafka_support::Topics::unique("jwt-restore");
    let relay = kafka_support::KafkaRelay::start_with_r_args(&kafka, topics, "", &r_args).await;
    let device = unique_name("device");
    let a = format!("strait/restore/{device}/a/#");
    let b = format!("strait/restore/{device}/b/#");
    let token = |allowed: &[&str]| {
        let mut claims = device_claims(&device);
        claims["mqtt_sub"] = json!(allowed);
        signer.sign(&claims)
    };
    let persistent = |token: &str| {
        let mut connect = kafka_support::v5_connect(&device, false, 300);
        connect.password = Some(token.to_string().into_bytes().into());
        connect
    };

    // Subscribed to a/# and b/# under a token allowing both, then gone (the session persists).
    let (mut client, _) =
        RawClient::session(relay.mqtt, Protocol::V5, persistent(&token(&[&a, &b]))).await;
    client.send(&subscribe(1, &[&a, &b])).await;
    match client.recv().await {
        Some(Packet::SubAck(ack)) => {
            assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1; 2])
        }
        other => panic!("expected a SUBACK, got {other:?}"),
    }
    client.send(&Packet::Disconnect(Default::default())).await;
    assert_eq!(client.until_closed().await, []);

    // Back with a token that only allows b/#: the session is resumed without a/#.
    let (mut client, ack) =
        RawClient::session(relay.mqtt, Protocol::V5, persistent(&token(&[&b]))).await;
    assert!(ack.session_present);
    let (mut publisher, _) = RawClient::session(relay.mqtt, Protocol::V5, {
        let id = unique_name("publisher");
        connect_with_token(&id, Some(&signer.sign(&device_claims(&id))))
    })
    .await;
    for (packet_id, level) in [(1, "a"), (2, "b")] {
        let topic = format!("strait/restore/{device}/{level}/x");
        publisher
            .send(&publish(packet_id, &topic, QoS::AtLeastOnce, "m"))
            .await;
        assert!(matches!(publisher.recv().await, Some(Packet::PubAck(_))));
    }
    let first = kafka_support::next_publish(&mut client, Duration::from_secs(10))
        .await
        .expect("the message to b/x");
    assert_eq!(&*first.topic, format!("strait/restore/{device}/b/x"));
    // a/x was published first; give a straggler from another partition a moment to show.
    let late = kafka_support::next_publish(&mut client, Duration::from_millis(1500)).await;
    assert_eq!(late.map(|p| p.topic), None, "a/x delivered after all");
    let log = relay.s_proxy.log();
    assert!(log.contains("dropping a restored subscription"), "{log}");
    let metrics = strait_e2e::http_get(relay.s_proxy.admin, "/metrics")
        .await
        .unwrap()
        .1;
    assert!(
        metrics.contains("strait_mqtt_restored_subscriptions_dropped_total{role=\"s-proxy\"} 1"),
        "{metrics}"
    );
}

#[test]
fn jwt_flags_need_an_issuer_and_a_readable_key_file() {
    let run = |args: &[&str]| {
        let out = std::process::Command::new(support::BIN)
            .args(["r-proxy", "--s-proxy", "http://127.0.0.1:1"])
            .args(args)
            .args(["--metrics-addr", &free_local_addr().to_string()])
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} should be refused");
        String::from_utf8(out.stderr).unwrap()
    };
    let error = run(&["--jwt-issuer", ISSUER]);
    assert!(error.contains("--jwt-keys-file"), "{error}");
    let missing = std::env::temp_dir().join(unique_name("no-jwks"));
    let error = run(&[
        "--jwt-issuer",
        ISSUER,
        "--jwt-keys-file",
        missing.to_str().unwrap(),
    ]);
    assert!(error.contains("cannot read the JWT key file"), "{error}");
}
