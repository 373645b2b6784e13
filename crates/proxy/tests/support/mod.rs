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
    let listen = grpc.to_string();
    Daemon::start(BIN, &["s-proxy", "--listen", &listen, "--broker", broker]).await
}

/// A byte-level MQTT client built on the codec.
pub struct RawClient {
    stream: TcpStream,
    buf: BytesMut,
    pub protocol: Protocol,
}

impl RawClient {
    pub async fn connect(addr: SocketAddr, protocol: Protocol) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect to r-proxy");
        stream.set_nodelay(true).unwrap();
        Self {
            stream,
            buf: BytesMut::new(),
            protocol,
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

    /// Waits for the server to close the connection, returning any packets it sent first.
    pub async fn until_closed(&mut self) -> Vec<Packet> {
        let mut packets = Vec::new();
        while let Some(packet) = self.recv().await {
            packets.push(packet);
        }
        packets
    }
}

pub fn connect_packet(client_id: &str) -> Connect {
    Connect {
        clean_start: true,
        keep_alive: 30,
        client_id: client_id.into(),
        ..Default::default()
    }
}
