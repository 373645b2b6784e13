//! Every way a client reaches r-proxy (TLS with and without client certificates, WebSocket,
//! WebSocket over TLS), the relay link itself over TLS, the reference command-line clients, and
//! a thousand clients at once.
//!
//! One file (about 1000 lines) on purpose: each test binary links and starts its services once.

mod support;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rumqttc::v5::mqttbytes::QoS as V5QoS;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet as V5Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use rustls::pki_types::{CertificateDer, PrivatePkcs8KeyDer};
use strait_e2e::{free_local_addr, require, unique_name, wait_until};
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, Publish, QoS, ReasonCode};
use support::{
    Bystander, RawClient, Relay, connect_packet, start_r_proxy, start_s_proxy_with,
    wait_for_sessions,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

/// A throw-away PKI in a temporary directory: a CA, a server certificate for localhost and
/// 127.0.0.1, and a client certificate, all as PEM files.
struct Pki {
    dir: PathBuf,
    ca: CertificateDer<'static>,
    client_cert: CertificateDer<'static>,
    client_key: Vec<u8>,
}

impl Pki {
    fn generate() -> Self {
        let dir = std::env::temp_dir().join(unique_name("strait-pki"));
        std::fs::create_dir_all(&dir).unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Strait test CA");
        ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: &[&str], name: &str, usage| {
            let key = KeyPair::generate().unwrap();
            let mut params =
                CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                    .unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            params.use_authority_key_identifier_extension = true;
            (params.signed_by(&key, &ca).unwrap(), key)
        };
        let (server, server_key) = leaf(
            &["localhost", "127.0.0.1"],
            "strait r-proxy",
            ExtendedKeyUsagePurpose::ServerAuth,
        );
        let (client, client_key) = leaf(
            &["client.strait.test"],
            "strait test client",
            ExtendedKeyUsagePurpose::ClientAuth,
        );
        for (file, pem) in [
            ("ca.pem", ca.pem()),
            ("server.pem", server.pem()),
            ("server.key", server_key.serialize_pem()),
            ("client.pem", client.pem()),
            ("client.key", client_key.serialize_pem()),
        ] {
            std::fs::write(dir.join(file), pem).unwrap();
        }
        Self {
            dir,
            ca: ca.der().clone(),
            client_cert: client.der().clone(),
            client_key: client_key.serialize_der(),
        }
    }

    fn path(&self, file: &str) -> String {
        self.dir.join(file).to_str().unwrap().to_string()
    }

    /// What a client uses: trusting our CA (or nothing), with the client certificate or not.
    fn client_config(&self, trust_ca: bool, present_cert: bool) -> Arc<rustls::ClientConfig> {
        strait_tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        if trust_ca {
            roots.add(self.ca.clone()).unwrap();
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        Arc::new(if present_cert {
            builder
                .with_client_auth_cert(
                    vec![self.client_cert.clone()],
                    PrivatePkcs8KeyDer::from(self.client_key.clone()).into(),
                )
                .unwrap()
        } else {
            builder.with_no_client_auth()
        })
    }

    /// r-proxy flags for a TLS listener on `addr` with our server certificate.
    fn tls_listener_args(&self, flag: &str, addr: std::net::SocketAddr) -> Vec<String> {
        vec![
            flag.into(),
            addr.to_string(),
            "--tls-cert".into(),
            self.path("server.pem"),
            "--tls-key".into(),
            self.path("server.key"),
        ]
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// A rumqttc v5 client for `addr` over TLS with `config`.
fn tls_v5_client(
    addr: std::net::SocketAddr,
    config: Arc<rustls::ClientConfig>,
) -> (AsyncClient, EventLoop) {
    let mut options = MqttOptions::new(unique_name("tls"), "127.0.0.1", addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_transport(rumqttc::Transport::tls_with_config(
        rumqttc::TlsConfiguration::Rustls(config),
    ));
    AsyncClient::new(options, 16)
}

/// How the connection attempt ends: a CONNACK, or the error that ended it.
async fn connection_outcome(events: &mut EventLoop) -> Result<ConnectReturnCode, ConnectionError> {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(V5Packet::ConnAck(ack))) => return Ok(ack.code),
                Ok(_) => {}
                Err(error) => return Err(error),
            }
        }
    })
    .await
    .expect("the connection attempt ends within 10 s")
}

/// Subscribes to a topic of its own, publishes to it at QoS 1 and waits for the message.
async fn assert_round_trip(client: &AsyncClient, events: &mut EventLoop, what: &str) {
    let topic = format!("relay/{}/tls", unique_name("rt"));
    client.subscribe(&topic, V5QoS::AtLeastOnce).await.unwrap();
    support::next_v5(events, Duration::from_secs(10), |p| {
        matches!(p, V5Packet::SubAck(_)).then_some(())
    })
    .await
    .unwrap_or_else(|| panic!("{what}: SUBACK"));
    client
        .publish(&topic, V5QoS::AtLeastOnce, false, what.to_string())
        .await
        .unwrap();
    let publish = support::next_v5(events, Duration::from_secs(10), |p| match p {
        V5Packet::Publish(publish) => Some(publish),
        _ => None,
    })
    .await
    .unwrap_or_else(|| panic!("{what}: its message comes back"));
    assert_eq!(&publish.payload[..], what.as_bytes());
}

#[tokio::test]
async fn tls_clients_that_trust_the_ca_publish_and_subscribe() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let pki = Pki::generate();
    let tls = free_local_addr();
    let args = pki.tls_listener_args("--tls-listen", tls);
    let _relay = Relay::start_with(&broker, &strs(&args)).await;

    let (client, mut events) = tls_v5_client(tls, pki.client_config(true, false));
    assert_eq!(
        connection_outcome(&mut events).await.expect("TLS session"),
        ConnectReturnCode::Success
    );
    assert_round_trip(&client, &mut events, "over TLS").await;

    let (_client, mut events) = tls_v5_client(tls, pki.client_config(false, false));
    let refused = connection_outcome(&mut events).await;
    assert!(
        matches!(refused, Err(ConnectionError::Tls(_))),
        "a client not trusting our CA fails the TLS handshake, got {refused:?}"
    );
}

#[tokio::test]
async fn tls_with_a_client_ca_requires_a_client_certificate() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let pki = Pki::generate();
    let tls = free_local_addr();
    let mut args = pki.tls_listener_args("--tls-listen", tls);
    args.extend(["--tls-client-ca".into(), pki.path("ca.pem")]);
    let relay = Relay::start_with(&broker, &strs(&args)).await;

    // With TLS 1.3 the client finishes its side of the handshake before the server checks
    // it, so the refusal (a certificate_required alert) ends the connection instead of a CONNACK.
    let (_client, mut events) = tls_v5_client(tls, pki.client_config(true, false));
    let refused = connection_outcome(&mut events).await;
    assert!(
        refused.is_err(),
        "no CONNACK without a client certificate, got {refused:?}"
    );

    let (client, mut events) = tls_v5_client(tls, pki.client_config(true, true));
    assert_eq!(
        connection_outcome(&mut events)
            .await
            .expect("mutual TLS session"),
        ConnectReturnCode::Success
    );
    assert_round_trip(&client, &mut events, "over mutual TLS").await;

    // s-proxy learns who the client is from r-proxy, and names it in the session's logs.
    wait_until(
        Duration::from_secs(10),
        "the client certificate's subject in s-proxy's log",
        || {
            let log = relay.s_proxy.log();
            async move {
                log.contains(r#"identity="CN=strait test client""#)
                    .then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn client_certificate_mode_makes_the_common_name_the_identity() {
    require!("MQTT_BROKER", "mosquitto");
    let broker = support::LoggingBroker::start().await;
    let pki = Pki::generate();
    let tls = free_local_addr();
    let mut args = pki.tls_listener_args("--tls-listen", tls);
    args.extend(["--tls-client-ca".into(), pki.path("ca.pem")]);
    args.extend(["--auth-mode".into(), "clientCertificate".into()]);
    let relay = Relay::start_with(&broker.address, &strs(&args)).await;

    let (client, mut events) = tls_v5_client(tls, pki.client_config(true, true));
    assert_eq!(
        connection_outcome(&mut events)
            .await
            .expect("mutual TLS session"),
        ConnectReturnCode::Success
    );
    assert_round_trip(&client, &mut events, "as the certificate's CN").await;
    wait_until(
        Duration::from_secs(10),
        "the broker to get the certificate's common name as the user name",
        || async { broker.log().contains("u'strait test client'").then_some(()) },
    )
    .await;

    // The plain listener has no certificate to go by: refused, 0x87 (3.1.1: 5).
    for protocol in [Protocol::V5, Protocol::V311] {
        let refused = RawClient::try_session(relay.mqtt, protocol, connect_packet("plain")).await;
        match refused {
            Err(Some(Packet::ConnAck(ack))) => {
                assert_eq!(ack.reason_code, ReasonCode::NOT_AUTHORIZED, "{protocol:?}")
            }
            Err(other) => panic!("expected CONNACK 0x87, got {other:?}"),
            Ok(_) => panic!("{protocol:?}: a client without a certificate was let in"),
        }
    }
}

#[tokio::test]
async fn the_relay_link_runs_over_tls() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let pki = Pki::generate();
    let grpc = free_local_addr();
    let (cert, key) = (pki.path("server.pem"), pki.path("server.key"));
    let _s_proxy =
        start_s_proxy_with(grpc, &broker, &["--tls-cert", &cert, "--tls-key", &key]).await;
    let endpoint = format!("https://localhost:{}", grpc.port());

    let mqtt = free_local_addr();
    let _r_proxy = start_r_proxy(
        mqtt,
        std::slice::from_ref(&endpoint),
        &["--s-proxy-ca", &pki.path("ca.pem")],
    )
    .await;
    Bystander::join(mqtt, Protocol::V5)
        .await
        .assert_alive()
        .await;
    Bystander::join(mqtt, Protocol::V311)
        .await
        .assert_alive()
        .await;

    // An r-proxy that does not trust the certificate gets no session: its clients are told
    // the server is unavailable.
    let other_pki = Pki::generate();
    let mqtt = free_local_addr();
    let _untrusting = start_r_proxy(
        mqtt,
        &[endpoint],
        &["--s-proxy-ca", &other_pki.path("ca.pem")],
    )
    .await;
    let refused = RawClient::try_session(
        mqtt,
        Protocol::V5,
        connect_packet(&unique_name("untrusting")),
    )
    .await
    .map(|(_, ack)| ack);
    assert!(
        matches!(&refused, Err(Some(Packet::ConnAck(ack))) if ack.reason_code == ReasonCode::SERVER_UNAVAILABLE),
        "CONNACK 0x88 expected, got {refused:?}"
    );
}

#[tokio::test]
async fn the_relay_link_with_mutual_tls_requires_r_proxys_certificate() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let pki = Pki::generate();
    let grpc = free_local_addr();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let _s_proxy = start_s_proxy_with(
        grpc,
        &broker,
        &[
            "--tls-cert",
            &cert,
            "--tls-key",
            &key,
            "--tls-client-ca",
            &ca,
        ],
    )
    .await;
    let endpoint = format!("https://localhost:{}", grpc.port());

    let mqtt = free_local_addr();
    let (client_cert, client_key) = (pki.path("client.pem"), pki.path("client.key"));
    let _r_proxy = start_r_proxy(
        mqtt,
        std::slice::from_ref(&endpoint),
        &[
            "--s-proxy-ca",
            &ca,
            "--s-proxy-cert",
            &client_cert,
            "--s-proxy-key",
            &client_key,
        ],
    )
    .await;
    Bystander::join(mqtt, Protocol::V5)
        .await
        .assert_alive()
        .await;

    let mqtt = free_local_addr();
    let _anonymous = start_r_proxy(mqtt, &[endpoint], &["--s-proxy-ca", &ca]).await;
    let refused = RawClient::try_session(
        mqtt,
        Protocol::V5,
        connect_packet(&unique_name("anonymous")),
    )
    .await
    .map(|(_, ack)| ack);
    assert!(
        matches!(&refused, Err(Some(Packet::ConnAck(ack))) if ack.reason_code == ReasonCode::SERVER_UNAVAILABLE),
        "an r-proxy without a certificate is refused by s-proxy: CONNACK 0x88 expected, got {refused:?}"
    );
}

/// Puts `pki`'s files where the proxies read them, as the kubelet updates a mounted Secret: each
/// file replaced whole, never half-written.
fn install(pki: &Pki, live: &std::path::Path) {
    for file in [
        "ca.pem",
        "server.pem",
        "server.key",
        "client.pem",
        "client.key",
    ] {
        let staged = live.join(format!(".{file}.new"));
        std::fs::copy(pki.dir.join(file), &staged).unwrap();
        std::fs::rename(&staged, live.join(file)).unwrap();
    }
}

#[tokio::test]
async fn relay_link_certificates_rotate_without_dropping_sessions() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let live = std::env::temp_dir().join(unique_name("strait-link-tls"));
    std::fs::create_dir_all(&live).unwrap();
    install(&Pki::generate(), &live);
    let path = |file: &str| live.join(file).to_str().unwrap().to_string();
    let s_proxy_tls = [
        "--tls-cert",
        &path("server.pem"),
        "--tls-key",
        &path("server.key"),
        "--tls-client-ca",
        &path("ca.pem"),
    ]
    .map(String::from);
    let s_proxy_args: Vec<&str> = s_proxy_tls.iter().map(String::as_str).collect();
    let grpc = free_local_addr();
    let s_proxy = start_s_proxy_with(grpc, &broker, &s_proxy_args).await;
    let endpoint = format!("https://localhost:{}", grpc.port());
    let r_proxy_tls = [
        "--s-proxy-ca",
        &path("ca.pem"),
        "--s-proxy-cert",
        &path("client.pem"),
        "--s-proxy-key",
        &path("client.key"),
    ]
    .map(String::from);
    let r_proxy_args: Vec<&str> = r_proxy_tls.iter().map(String::as_str).collect();
    let mqtt = free_local_addr();
    let _r_proxy = start_r_proxy(mqtt, std::slice::from_ref(&endpoint), &r_proxy_args).await;
    let mut before = Bystander::join(mqtt, Protocol::V5).await;
    before.assert_alive().await;

    // A whole new CA: nothing issued before the rotation is trusted after it.
    let rotated = Pki::generate();
    install(&rotated, &live);

    // s-proxy serves the new certificate and trusts only the new CA: an r-proxy holding nothing
    // but the new material gets sessions.
    let fresh_mqtt = free_local_addr();
    let _fresh = start_r_proxy(
        fresh_mqtt,
        std::slice::from_ref(&endpoint),
        &[
            "--s-proxy-ca",
            &rotated.path("ca.pem"),
            "--s-proxy-cert",
            &rotated.path("client.pem"),
            "--s-proxy-key",
            &rotated.path("client.key"),
        ],
    )
    .await;
    wait_until(
        Duration::from_secs(15),
        "s-proxy to accept an r-proxy with the rotated certificates",
        || async move {
            RawClient::try_session(
                fresh_mqtt,
                Protocol::V5,
                connect_packet(&unique_name("fresh")),
            )
            .await
            .ok()
            .map(|_| ())
        },
    )
    .await;
    // The session opened before the rotation still runs over its old connection.
    before.assert_alive().await;

    // r-proxy's next connection uses its rotated client certificate: s-proxy, restarted on the
    // same address, now knows only the new CA.
    drop(s_proxy);
    let _s_proxy = start_s_proxy_with(grpc, &broker, &s_proxy_args).await;
    wait_until(
        Duration::from_secs(20),
        "r-proxy to reconnect to s-proxy with its rotated certificate",
        || async move {
            RawClient::try_session(mqtt, Protocol::V5, connect_packet(&unique_name("after")))
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    std::fs::remove_dir_all(&live).unwrap();
}

#[tokio::test]
async fn a_rotated_listener_certificate_is_served_without_a_restart() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let live = std::env::temp_dir().join(unique_name("strait-listener-tls"));
    std::fs::create_dir_all(&live).unwrap();
    let first = Pki::generate();
    install(&first, &live);
    let tls = free_local_addr();
    let listen = tls.to_string();
    let (cert, key) = (live.join("server.pem"), live.join("server.key"));
    let args = [
        "--tls-listen",
        &listen,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ];
    let _relay = Relay::start_with(&broker, &args).await;
    let (client, mut events) = tls_v5_client(tls, first.client_config(true, false));
    assert_eq!(
        connection_outcome(&mut events).await.expect("TLS session"),
        ConnectReturnCode::Success
    );

    let rotated = Pki::generate();
    install(&rotated, &live);
    wait_until(
        Duration::from_secs(15),
        "r-proxy to serve the rotated certificate",
        || {
            let config = rotated.client_config(true, false);
            async move {
                let (_client, mut events) = tls_v5_client(tls, config);
                connection_outcome(&mut events).await.ok().map(|_| ())
            }
        },
    )
    .await;
    // The session that began before the rotation goes on.
    assert_round_trip(&client, &mut events, "after the rotation").await;
    std::fs::remove_dir_all(&live).unwrap();
}

/// An MQTT client over a WebSocket: our codec's bytes in binary messages.
struct WsClient<S> {
    ws: WebSocketStream<S>,
    buf: BytesMut,
    protocol: Protocol,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsClient<S> {
    fn encode(&self, packets: &[Packet]) -> Vec<u8> {
        let mut out = BytesMut::new();
        for packet in packets {
            mqtt::encode(packet, self.protocol, &mut out).unwrap();
        }
        out.to_vec()
    }

    async fn send_message(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.unwrap();
    }

    async fn send(&mut self, packet: Packet) {
        let bytes = self.encode(&[packet]);
        self.send_message(bytes).await;
    }

    /// The next packet; `None` once the server closed the WebSocket.
    async fn recv(&mut self) -> Option<Packet> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(packet) =
                    mqtt::decode(&mut self.buf, self.protocol, mqtt::MAX_PACKET_SIZE).unwrap()
                {
                    return Some(packet);
                }
                match self.ws.next().await {
                    Some(Ok(Message::Binary(data))) => self.buf.extend_from_slice(&data),
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return None,
                    Some(Ok(other)) => panic!("MQTT over WebSocket is binary, got {other:?}"),
                }
            }
        })
        .await
        .expect("something from r-proxy within 10 s")
    }
}

/// CONNECT split over two messages, SUBSCRIBE and PUBLISH in one, a message from a TCP client,
/// then DISCONNECT: what a browser client does, with the framing edge cases.
async fn websocket_session<S: AsyncRead + AsyncWrite + Unpin>(
    ws: WebSocketStream<S>,
    relay: &Relay,
) {
    let mut client = WsClient {
        ws,
        buf: BytesMut::new(),
        protocol: Protocol::V5,
    };
    let id = unique_name("ws");
    let topic = format!("relay/{id}/ws");
    let connect = client.encode(&[Packet::Connect(connect_packet(&id))]);
    client.send_message(connect[..5].to_vec()).await;
    client.send_message(connect[5..].to_vec()).await;
    match client.recv().await {
        Some(Packet::ConnAck(ack)) => assert_eq!(ack.reason_code, ReasonCode::SUCCESS),
        other => panic!("CONNACK expected, got {other:?}"),
    }

    let both = client.encode(&[
        Packet::Subscribe(mqtt::Subscribe {
            packet_id: 1,
            subscriptions: vec![mqtt::Subscription {
                filter: topic.clone(),
                options: mqtt::SubscriptionOptions::qos(QoS::AtLeastOnce),
            }],
            ..Default::default()
        }),
        Packet::Publish(Publish {
            qos: QoS::AtLeastOnce,
            topic: topic.as_str().into(),
            packet_id: 2,
            payload: "from ws".into(),
            ..Default::default()
        }),
    ]);
    client.send_message(both).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        match client.recv().await {
            Some(Packet::SubAck(ack)) => {
                assert_eq!(ack.reason_codes, [ReasonCode::GRANTED_QOS_1]);
                got.push("suback".to_string());
            }
            Some(Packet::PubAck(ack)) if ack.packet_id == 2 => got.push("puback".into()),
            Some(Packet::Publish(p)) => {
                got.push(String::from_utf8(p.payload.to_vec()).unwrap());
                client
                    .send(Packet::PubAck(mqtt::PubAck {
                        packet_id: p.packet_id,
                        ..Default::default()
                    }))
                    .await;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    got.sort();
    assert_eq!(got, ["from ws", "puback", "suback"]);

    // Across transports: a plain TCP 3.1.1 client publishes to the WebSocket client.
    let (mut tcp, _) = RawClient::session(
        relay.mqtt,
        Protocol::V311,
        connect_packet(&unique_name("tcp")),
    )
    .await;
    tcp.send(&Packet::Publish(Publish {
        topic: topic.as_str().into(),
        payload: "from tcp".into(),
        ..Default::default()
    }))
    .await;
    match client.recv().await {
        Some(Packet::Publish(p)) => assert_eq!(&p.payload[..], b"from tcp"),
        other => panic!("the TCP client's message expected, got {other:?}"),
    }

    client.send(Packet::Disconnect(Default::default())).await;
    assert_eq!(client.recv().await, None, "r-proxy closes after DISCONNECT");
}

/// One 48 MiB WebSocket message sent before CONNECT is refused at its frame header, so r-proxy
/// never buffers it, and other clients go on being served.
#[tokio::test]
async fn a_huge_websocket_message_before_connect_is_refused_without_buffering_it() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let ws_addr = free_local_addr();
    let relay = Relay::start_with(&broker, &["--ws-listen", &ws_addr.to_string()]).await;
    let before = relay.r_proxy.peak_rss_kib().expect("r-proxy runs");

    let mut request = format!("ws://{ws_addr}/mqtt")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (mut ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade on /mqtt");
    // r-proxy may close while the message is still being written: that is the refusal.
    let _ = ws.send(Message::Binary(vec![0u8; 48 << 20].into())).await;
    let ended = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Binary(data))) => panic!("r-proxy answered {} bytes", data.len()),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "r-proxy closes the connection");
    let after = relay.r_proxy.peak_rss_kib().expect("r-proxy still runs");
    assert!(
        after < before + 16 * 1024,
        "r-proxy's peak memory grew from {before} KiB to {after} KiB"
    );
    Bystander::join(relay.mqtt, Protocol::V5)
        .await
        .assert_alive()
        .await;
}

#[tokio::test]
async fn websocket_clients_speak_mqtt_on_the_mqtt_path() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let ws_addr = free_local_addr();
    let relay = Relay::start_with(&broker, &["--ws-listen", &ws_addr.to_string()]).await;

    let mut request = format!("ws://{ws_addr}/mqtt")
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, response) = tokio_tungstenite::connect_async(request)
        .await
        .expect("WebSocket upgrade on /mqtt");
    assert_eq!(
        response
            .headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("mqtt"),
        "r-proxy answers the mqtt subprotocol"
    );
    websocket_session(ws, &relay).await;

    match tokio_tungstenite::connect_async(format!("ws://{ws_addr}/elsewhere")).await {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 404),
        other => panic!(
            "HTTP 404 expected off the MQTT path, got {:?}",
            other.map(|(_, r)| r)
        ),
    }
}

#[tokio::test]
async fn websocket_over_tls_speaks_mqtt() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let pki = Pki::generate();
    let wss = free_local_addr();
    let args = pki.tls_listener_args("--wss-listen", wss);
    let relay = Relay::start_with(&broker, &strs(&args)).await;

    let tcp = tokio::net::TcpStream::connect(wss).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(pki.client_config(true, false))
        .connect("localhost".try_into().unwrap(), tcp)
        .await
        .expect("TLS handshake");
    let mut request = format!("wss://localhost:{}/mqtt", wss.port())
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
    let (ws, response) = tokio_tungstenite::client_async(request, tls)
        .await
        .expect("WebSocket upgrade over TLS");
    assert_eq!(
        response.headers().get("sec-websocket-protocol").unwrap(),
        "mqtt"
    );
    websocket_session(ws, &relay).await;
}

/// One message from `mosquitto_pub` to `mosquitto_sub` through the relay, at `qos` and
/// protocol `version`, checked on what both tools print with `-d`.
async fn mosquitto_cli_round_trip(relay: &Relay, version: &str, qos: u8) {
    use tokio::process::Command;
    let (host, port) = relay.host_port();
    let port = port.to_string();
    let qos_arg = qos.to_string();
    let topic = format!("relay/{}/cli", unique_name(&format!("{version}-q{qos}")));
    let payload = format!("hello {version} q{qos}");
    let common = [
        "-h", &host, "-p", &port, "-V", version, "-q", &qos_arg, "-t", &topic, "-d",
    ];

    // Line-buffered, so its -d lines (the SUBACK) arrive while it runs, not when it exits.
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(common)
        .args(["-C", "1", "-W", "20"])
        .stdout(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients)");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut sub_out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let subscribed = line.contains("received SUBACK");
            sub_out.push(line);
            if subscribed {
                return;
            }
        }
        panic!("mosquitto_sub ended before its SUBACK: {sub_out:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("mosquitto_sub {version} q{qos}: no SUBACK: {sub_out:?}"));

    let publish = tokio::time::timeout(
        Duration::from_secs(20),
        Command::new("mosquitto_pub")
            .args(common)
            .args(["-m", &payload])
            .output(),
    )
    .await
    .expect("mosquitto_pub finishes")
    .expect("mosquitto_pub runs");
    let pub_out = String::from_utf8_lossy(&publish.stdout);
    assert!(
        publish.status.success(),
        "mosquitto_pub {version} q{qos}: {}\n{pub_out}",
        publish.status
    );
    let acks: &[&str] = match qos {
        0 => &[],
        1 => &["received PUBACK"],
        _ => &["received PUBREC", "received PUBCOMP"],
    };
    for ack in acks {
        assert!(
            pub_out.contains(ack),
            "mosquitto_pub {version} q{qos}: {ack}\n{pub_out}"
        );
    }

    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            sub_out.push(line);
        }
    })
    .await
    .expect("mosquitto_sub exits after its one message");
    let status = sub.wait().await.unwrap();
    assert!(
        status.success(),
        "mosquitto_sub {version} q{qos}: {status}\n{sub_out:#?}"
    );
    let delivered = format!("received PUBLISH (d0, q{qos}, r0");
    assert!(
        sub_out.iter().any(|l| l.contains(&delivered)),
        "mosquitto_sub {version} q{qos}: {delivered}…\n{sub_out:#?}"
    );
    assert!(
        sub_out.contains(&payload),
        "mosquitto_sub {version} q{qos} prints the payload\n{sub_out:#?}"
    );
}

#[tokio::test]
async fn mosquitto_pub_and_sub_through_the_relay_at_every_qos() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    for version in ["mqttv311", "mqttv5"] {
        for qos in [0, 1, 2] {
            mosquitto_cli_round_trip(&relay, version, qos).await;
        }
    }
    wait_for_sessions(relay.r_proxy.admin, 0, "r-proxy").await;
}

/// The soft limit on open files of this process, which the proxies started by the test inherit.
fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_clients_each_get_their_own_message() {
    const CLIENTS: usize = 1000;
    let broker = require!("MQTT_BROKER", "mosquitto");
    // Each process holds one socket per client (plus a few): 20000 here by default.
    if let Some(limit) = open_files_limit() {
        assert!(
            limit > 2 * CLIENTS as u64,
            "open-files limit {limit} too low for {CLIENTS} clients: raise it (ulimit -n)"
        );
    }
    let relay = Relay::start(&broker).await;
    let run = unique_name("crowd");
    let topic = |i: usize| format!("relay/{run}/{i}");

    let setup: Vec<_> = (0..CLIENTS)
        .map(|i| {
            let (addr, id, topic) = (relay.mqtt, format!("{run}-{i}"), topic(i));
            tokio::spawn(async move {
                let (mut client, _) =
                    RawClient::session(addr, Protocol::V5, connect_packet(&id)).await;
                client.subscribe(1, &topic).await;
                client
            })
        })
        .collect();
    let clients: Vec<RawClient> =
        tokio::time::timeout(Duration::from_secs(60), futures::future::join_all(setup))
            .await
            .expect("1000 clients connected and subscribed within 60 s")
            .into_iter()
            .map(|joined| joined.expect("client connected and subscribed"))
            .collect();
    wait_for_sessions(relay.r_proxy.admin, CLIENTS as i64, "r-proxy").await;
    wait_for_sessions(relay.s_proxy.admin, CLIENTS as i64, "s-proxy").await;

    let receiving: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(i, mut client)| {
            let topic = topic(i);
            tokio::spawn(async move {
                match client.recv_within(Duration::from_secs(60)).await {
                    Some(Packet::Publish(p)) => {
                        assert_eq!(p.topic, topic);
                        assert_eq!(p.payload, format!("for {i}").as_bytes());
                        client
                            .send(&Packet::PubAck(mqtt::PubAck {
                                packet_id: p.packet_id,
                                ..Default::default()
                            }))
                            .await;
                    }
                    other => panic!("client {i}: its message expected, got {other:?}"),
                }
                client.send(&Packet::Disconnect(Default::default())).await;
                assert_eq!(client.until_closed().await, [], "client {i}: clean close");
            })
        })
        .collect();

    // One publisher, QoS 1, keeping at most the broker's Receive Maximum unacknowledged.
    let (mut publisher, ack) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_packet(&unique_name("crowd-pub")),
    )
    .await;
    let window = usize::from(ack.properties.receive_maximum.unwrap_or(u16::MAX));
    let (mut sent, mut acked) = (0, 0);
    while acked < CLIENTS {
        while sent < CLIENTS && sent - acked < window {
            publisher
                .send(&Packet::Publish(Publish {
                    qos: QoS::AtLeastOnce,
                    topic: topic(sent).into(),
                    packet_id: u16::try_from(sent + 1).unwrap(),
                    payload: format!("for {sent}").into(),
                    ..Default::default()
                }))
                .await;
            sent += 1;
        }
        match publisher.recv().await {
            Some(Packet::PubAck(ack)) => {
                assert_eq!(ack.reason_code, ReasonCode::SUCCESS);
                acked += 1;
            }
            other => panic!("PUBACK expected, got {other:?}"),
        }
    }
    publisher
        .send(&Packet::Disconnect(Default::default()))
        .await;
    assert_eq!(publisher.until_closed().await, []);

    let received = tokio::time::timeout(
        Duration::from_secs(60),
        futures::future::join_all(receiving),
    )
    .await
    .expect("every client got its message within 60 s");
    for joined in received {
        joined.expect("client received its own message and disconnected");
    }
    wait_for_sessions(relay.r_proxy.admin, 0, "r-proxy").await;
    wait_for_sessions(relay.s_proxy.admin, 0, "s-proxy").await;
}
