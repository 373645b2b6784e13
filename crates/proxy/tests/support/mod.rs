//! Shared by the relay tests: the relay started as real processes, and a raw MQTT client that
//! lets a test send exactly the bytes it wants and see exactly what comes back.

#![allow(dead_code)] // each test file uses a different part

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use strait_e2e::{Daemon, free_local_addr};
use strait_mqtt_codec::{self as mqtt, Connect, Packet, Protocol};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const BIN: &str = env!("CARGO_BIN_EXE_strait-proxy");

/// s-proxy in front of the test broker and r-proxy in front of s-proxy, as processes.
pub struct Relay {
    pub s_proxy: Daemon,
    pub r_proxy: Daemon,
    pub grpc: SocketAddr,
    pub mqtt: SocketAddr,
}

impl Relay {
    pub async fn start(broker: &str) -> Self {
        Self::start_with(broker, &[]).await
    }

    /// `r_args` are extra r-proxy flags.
    pub async fn start_with(broker: &str, r_args: &[&str]) -> Self {
        let grpc = free_local_addr();
        let s_proxy = start_s_proxy(grpc, broker).await;
        let mqtt = free_local_addr();
        let endpoint = format!("http://{grpc}");
        let listen = mqtt.to_string();
        let mut args = vec!["r-proxy", "--listen", &listen, "--s-proxy", &endpoint];
        args.extend_from_slice(r_args);
        let r_proxy = Daemon::start(BIN, &args).await;
        Self {
            s_proxy,
            r_proxy,
            grpc,
            mqtt,
        }
    }

    pub fn host_port(&self) -> (String, u16) {
        (self.mqtt.ip().to_string(), self.mqtt.port())
    }
}

pub async fn start_s_proxy(grpc: SocketAddr, broker: &str) -> Daemon {
    start_s_proxy_with(grpc, broker, &[]).await
}

/// s-proxy on `grpc` in front of `broker`, with extra flags.
pub async fn start_s_proxy_with(grpc: SocketAddr, broker: &str, extra: &[&str]) -> Daemon {
    let listen = grpc.to_string();
    let mut args = vec!["s-proxy", "--listen", &listen, "--broker", broker];
    args.extend_from_slice(extra);
    Daemon::start(BIN, &args).await
}

/// r-proxy serving MQTT on `mqtt` and relaying to every endpoint of `s_proxies` (`http://…`
/// or `https://…`), with extra flags.
pub async fn start_r_proxy(mqtt: SocketAddr, s_proxies: &[String], extra: &[&str]) -> Daemon {
    let listen = mqtt.to_string();
    let mut args = vec!["r-proxy", "--listen", &listen];
    for endpoint in s_proxies {
        args.extend(["--s-proxy", endpoint.as_str()]);
    }
    args.extend_from_slice(extra);
    Daemon::start(BIN, &args).await
}

/// The `strait_mqtt_sessions_active` gauge a proxy reports on its admin endpoint; `None` when
/// the endpoint does not answer (the process is gone).
pub async fn sessions_active(admin: SocketAddr) -> Option<i64> {
    let (status, body) = strait_e2e::http_get(admin, "/metrics").await.ok()?;
    assert_eq!(status, 200, "/metrics answers 200");
    let line = body
        .lines()
        .find(|l| l.starts_with("strait_mqtt_sessions_active{"))
        .unwrap_or_else(|| panic!("no strait_mqtt_sessions_active in /metrics:\n{body}"));
    let value = line.rsplit(' ').next().expect("a sample has a value");
    Some(
        value
            .parse()
            .unwrap_or_else(|_| panic!("gauge value in {line:?}")),
    )
}

/// Waits until the proxy behind `admin` reports exactly `want` active sessions.
pub async fn wait_for_sessions(admin: SocketAddr, want: i64, what: &str) {
    strait_e2e::wait_until(
        Duration::from_secs(20),
        &format!("{what} to report {want} active sessions"),
        || async { (sessions_active(admin).await == Some(want)).then_some(()) },
    )
    .await;
}

/// A byte-level MQTT client built on the codec.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    pub protocol: Protocol,
    /// Packets read while waiting for another one (a PUBLISH delivered before the PUBACK of
    /// the client's own publish), handed out first by the next read.
    held: std::collections::VecDeque<Packet>,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to r-proxy");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
            protocol,
            held: Default::default(),
        }
    }

    /// Connects and completes CONNECT/CONNACK; panics unless the CONNACK is a success.
    pub async fn session(
        addr: SocketAddr,
        protocol: Protocol,
        connect: Connect,
    ) -> (Self, mqtt::ConnAck) {
        let mut client = Self::connect(addr, protocol).await;
        client.send(&Packet::Connect(connect)).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => (client, ack),
            other => panic!("expected a successful CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.protocol, &mut out).expect("encodable packet");
        self.send_raw(&out).await;
    }

    /// Sends a packet; `false` when the connection is gone (instead of panicking).
    pub async fn try_send(&mut self, packet: &Packet) -> bool {
        let mut out = BytesMut::new();
        mqtt::encode(packet, self.protocol, &mut out).expect("encodable packet");
        self.stream.write_all(&out).await.is_ok()
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream
            .write_all(bytes)
            .await
            .expect("write to r-proxy");
    }

    /// The next packet, or `None` when the connection closed. Panics after 10 s of silence.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(Duration::from_secs(10)).await
    }

    pub async fn recv_within(&mut self, deadline: Duration) -> Option<Packet> {
        if let Some(packet) = self.held.pop_front() {
            return Some(packet);
        }
        tokio::time::timeout(deadline, async {
            loop {
                if let Some(packet) =
                    mqtt::decode(&mut self.buf, self.protocol, mqtt::MAX_PACKET_SIZE)
                        .expect("valid packet from r-proxy")
                {
                    return Some(packet);
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("nothing from r-proxy within {deadline:?}"))
    }

    /// Sets a packet read too early aside for the next read (in arrival order).
    pub fn hold(&mut self, packet: Packet) {
        self.held.push_back(packet);
    }

    /// Waits for the server to close the connection, returning any packets it sent first.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.recv().await {
            packets.push(packet);
        }
        packets
    }

    /// Waits (up to 10 s) for the server to close the connection, returning the exact bytes it
    /// sent first, undecoded.
    pub async fn raw_until_closed(&mut self) -> Vec<u8> {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return self.buf.split().to_vec(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("r-proxy closes the connection within 10 s")
    }

    /// Connects and sends CONNECT; `Ok` with the CONNACK when it is a success, `Err` with
    /// whatever came instead (`None`: the connection closed).
    pub async fn try_session(
        addr: SocketAddr,
        protocol: Protocol,
        connect: Connect,
    ) -> Result<(Self, mqtt::ConnAck), Option<Packet>> {
        let mut client = Self::connect(addr, protocol).await;
        client.send(&Packet::Connect(connect)).await;
        match client.recv().await {
            Some(Packet::ConnAck(ack)) if !ack.reason_code.is_error() => Ok((client, ack)),
            other => Err(other),
        }
    }

    /// Subscribes to `filter` at QoS 1 and waits for the SUBACK granting it.
    pub async fn subscribe(&mut self, packet_id: u16, filter: &str) {
        self.send(&Packet::Subscribe(mqtt::Subscribe {
            packet_id,
            subscriptions: vec![mqtt::Subscription {
                filter: filter.into(),
                options: mqtt::SubscriptionOptions::qos(mqtt::QoS::AtLeastOnce),
            }],
            ..Default::default()
        }))
        .await;
        match self.recv().await {
            Some(Packet::SubAck(ack)) if ack.packet_id == packet_id => assert_eq!(
                ack.reason_codes,
                [mqtt::ReasonCode::GRANTED_QOS_1],
                "SUBACK for {filter}"
            ),
            other => panic!("expected the SUBACK for {filter}, got {other:?}"),
        }
    }

    /// Publishes `payload` to `topic` at QoS 1 and waits until the PUBACK and, since the client is
    /// subscribed to `topic`, the message itself came back (acknowledging it).
    pub async fn publish_and_receive(&mut self, packet_id: u16, topic: &str, payload: &str) {
        self.send(&Packet::Publish(mqtt::Publish {
            qos: mqtt::QoS::AtLeastOnce,
            topic: topic.into(),
            packet_id,
            payload: payload.to_string().into(),
            ..Default::default()
        }))
        .await;
        let (mut acked, mut received) = (false, false);
        while !(acked && received) {
            match self.recv().await {
                Some(Packet::PubAck(ack)) if ack.packet_id == packet_id => acked = true,
                Some(Packet::Publish(p)) => {
                    assert_eq!((&*p.topic, &p.payload[..]), (topic, payload.as_bytes()));
                    received = true;
                    if p.qos != mqtt::QoS::AtMostOnce {
                        self.send(&Packet::PubAck(mqtt::PubAck {
                            packet_id: p.packet_id,
                            ..Default::default()
                        }))
                        .await;
                    }
                }
                other => panic!("expected PUBACK and PUBLISH on {topic}, got {other:?}"),
            }
        }
    }

    /// The packets already received and whether the server has closed the connection, without
    /// waiting: for when the test knows the server has finished writing.
    pub fn drain_now(&mut self) -> (Vec<Packet>, bool) {
        let closed = loop {
            self.buf.reserve(4096);
            match self.stream.try_read_buf(&mut self.buf) {
                Ok(0) => break true,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break false,
                Err(_) => break true,
            }
        };
        let mut packets = Vec::new();
        while let Some(packet) = mqtt::decode(&mut self.buf, self.protocol, mqtt::MAX_PACKET_SIZE)
            .expect("valid packet from r-proxy")
        {
            packets.push(packet);
        }
        (packets, closed)
    }
}

/// A well-behaved client that stays connected while a test misbehaves elsewhere, and proves on
/// demand that the relay still serves it: it publishes to its own topic and gets the message.
pub struct Bystander {
    pub client: RawClient,
    topic: String,
    next_id: u16,
}

impl Bystander {
    pub async fn join(addr: SocketAddr, protocol: Protocol) -> Self {
        let id = strait_e2e::unique_name("bystander");
        let (mut client, _) = RawClient::session(addr, protocol, connect_packet(&id)).await;
        let topic = format!("relay/{id}/own");
        client.subscribe(1, &topic).await;
        Self {
            client,
            topic,
            next_id: 1,
        }
    }

    /// Panics unless a QoS 1 message to its own topic is acknowledged and delivered back.
    pub async fn assert_alive(&mut self) {
        self.next_id += 1;
        let payload = format!("still here {}", self.next_id);
        self.client
            .publish_and_receive(self.next_id, &self.topic, &payload)
            .await;
    }
}

/// The packets a v5 client got before the close: exactly one DISCONNECT with `reason`.
#[track_caller]
pub fn assert_disconnected_with(parting: &[Packet], reason: mqtt::ReasonCode) {
    match parting {
        [Packet::Disconnect(mqtt::Disconnect { reason_code, .. })] => assert_eq!(
            *reason_code,
            reason,
            "DISCONNECT {} expected, got {}",
            reason.name(),
            reason_code.name()
        ),
        other => panic!("expected one DISCONNECT {}, got {other:?}", reason.name()),
    }
}

/// The CONNECT of a client with a will on `topic`.
pub fn connect_with_will(client_id: &str, topic: &str, payload: &'static [u8]) -> Connect {
    let mut connect = connect_packet(client_id);
    connect.will = Some(mqtt::Will {
        topic: topic.into(),
        payload: bytes::Bytes::from_static(payload),
        qos: mqtt::QoS::AtLeastOnce,
        ..Default::default()
    });
    connect
}

/// A rumqttc v5 client connected straight to the broker (not through the relay), subscribed to
/// `filter`: it sees what the broker publishes, wills included.
pub async fn broker_watcher(
    broker: &str,
    filter: &str,
) -> (rumqttc::v5::AsyncClient, rumqttc::v5::EventLoop) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
    let (host, port) = broker.rsplit_once(':').expect("MQTT_BROKER is HOST:PORT");
    let mut options = rumqttc::v5::MqttOptions::new(
        strait_e2e::unique_name("watcher"),
        host,
        port.parse().expect("broker port"),
    );
    options.set_keep_alive(Duration::from_secs(30));
    let (client, mut events) = rumqttc::v5::AsyncClient::new(options, 64);
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    next_v5(&mut events, Duration::from_secs(10), |p| {
        matches!(p, V5Packet::SubAck(_)).then_some(())
    })
    .await
    .expect("SUBACK from the broker");
    (client, events)
}

/// Polls a rumqttc v5 event loop until `want` picks an incoming packet; `None` when `deadline`
/// passes first. Panics if the connection fails.
pub async fn next_v5<T>(
    events: &mut rumqttc::v5::EventLoop,
    deadline: Duration,
    mut want: impl FnMut(rumqttc::v5::mqttbytes::v5::Packet) -> Option<T>,
) -> Option<T> {
    tokio::time::timeout(deadline, async {
        loop {
            match events.poll().await {
                Ok(rumqttc::v5::Event::Incoming(packet)) => {
                    if let Some(found) = want(packet) {
                        return found;
                    }
                }
                Ok(rumqttc::v5::Event::Outgoing(_)) => {}
                Err(error) => panic!("connection failed: {error}"),
            }
        }
    })
    .await
    .ok()
}

pub fn connect_packet(client_id: &str) -> Connect {
    Connect {
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        ..Default::default()
    }
}

/// A Mosquitto of the test's own on a free port, logging every CONNECT it gets (client id and
/// user name), to see exactly what the relay hands the broker. Killed when dropped.
pub struct LoggingBroker {
    _child: tokio::process::Child,
    pub address: String,
    log: std::path::PathBuf,
}

impl LoggingBroker {
    pub async fn start() -> Self {
        let addr = strait_e2e::free_local_addr();
        let dir = std::env::temp_dir().join(strait_e2e::unique_name("mosquitto"));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("mosquitto.conf");
        std::fs::write(
            &config,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest stderr\n\
                 log_type all\nconnection_messages true\npersistence false\n",
                port = addr.port()
            ),
        )
        .unwrap();
        let log = dir.join("mosquitto.log");
        let child = tokio::process::Command::new(
            ["/usr/sbin/mosquitto", "/usr/bin/mosquitto"]
                .into_iter()
                .find(|p| std::path::Path::new(p).exists())
                .unwrap_or("mosquitto"),
        )
        .arg("-c")
        .arg(&config)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .kill_on_drop(true)
        .spawn()
        .expect("start mosquitto");
        strait_e2e::wait_until(Duration::from_secs(10), "mosquitto to listen", || async {
            TcpStream::connect(addr).await.ok().map(|_| ())
        })
        .await;
        Self {
            _child: child,
            address: addr.to_string(),
            log,
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until the broker logged `client_id`'s connection, and returns the user name it got
    /// (`None`: no user name).
    pub async fn user_name_of(&self, client_id: &str) -> Option<String> {
        let needle = format!(" as {client_id} (");
        let line = strait_e2e::wait_until(
            Duration::from_secs(10),
            &format!("mosquitto to log the connection of {client_id}"),
            || async {
                self.log()
                    .lines()
                    .find(|l| l.contains(&needle))
                    .map(String::from)
            },
        )
        .await;
        let (_, rest) = line.split_once(", u'")?;
        Some(rest.split_once("')")?.0.to_string())
    }
}
