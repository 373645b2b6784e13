//! A minimal MQTT 5 client over raw TCP and Strait's codec, built to cost the load generator as
//! little as possible: publishers write pre-encoded packets in large batches, and counting
//! subscribers look at fixed headers only.

use std::net::SocketAddr;

use anyhow::{Context as _, bail};
use bytes::{Buf, Bytes, BytesMut};
use strait_mqtt_codec::{
    self as mqtt, Connect, Packet, PacketType, Protocol, Publish, QoS, Subscribe, Subscription,
    SubscriptionOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Every client of the benchmark speaks MQTT 5.
pub const PROTOCOL: Protocol = Protocol::V5;

/// Reads are made into at least this much free buffer space.
const READ_CHUNK: usize = 64 * 1024;

/// One MQTT connection: the socket and the bytes read but not yet decoded.
pub struct Client {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Client {
    /// Connects and completes CONNECT/CONNACK with a clean session.
    pub async fn connect(
        addr: SocketAddr,
        client_id: &str,
        keep_alive: u16,
    ) -> anyhow::Result<Self> {
        let connect = Connect {
            clean_start: true,
            keep_alive,
            client_id: client_id.into(),
            ..Connect::default()
        };
        Self::raw(addr, connect).await
    }

    /// Connects with this CONNECT (a persistent session, say) and waits for a successful
    /// CONNACK.
    pub async fn raw(addr: SocketAddr, connect: Connect) -> anyhow::Result<Self> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut client = Self {
            stream,
            buf: BytesMut::new(),
        };
        client.send(&Packet::Connect(connect)).await?;
        match client.recv().await? {
            Packet::ConnAck(ack) if !ack.reason_code.is_error() => Ok(client),
            Packet::ConnAck(ack) => bail!("CONNACK refused: {}", ack.reason_code.name()),
            other => bail!("expected CONNACK, got {}", other.name()),
        }
    }

    /// Subscribes to `filter` and waits for a granting SUBACK.
    pub async fn subscribe(&mut self, filter: &str, qos: QoS) -> anyhow::Result<()> {
        let subscribe = Subscribe {
            packet_id: 1,
            subscriptions: vec![Subscription {
                filter: filter.into(),
                options: SubscriptionOptions::qos(qos),
            }],
            ..Subscribe::default()
        };
        self.send(&Packet::Subscribe(subscribe)).await?;
        match self.recv().await? {
            Packet::SubAck(ack) if ack.reason_codes.iter().all(|c| !c.is_error()) => Ok(()),
            other => bail!("SUBSCRIBE to {filter} not granted: {other:?}"),
        }
    }

    pub async fn send(&mut self, packet: &Packet) -> anyhow::Result<()> {
        let mut out = BytesMut::new();
        mqtt::encode(packet, PROTOCOL, &mut out)?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next packet; an error if the connection closes first.
    pub async fn recv(&mut self) -> anyhow::Result<Packet> {
        loop {
            if let Some(packet) = self.next_buffered()? {
                return Ok(packet);
            }
            self.read_more().await?;
        }
    }

    /// Decodes the next packet already read, if whole.
    pub fn next_buffered(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(mqtt::decode(
            &mut self.buf,
            PROTOCOL,
            mqtt::MAX_PACKET_SIZE,
        )?)
    }

    /// Skips the whole packets already read, returning how many were PUBLISH. Looks at fixed
    /// headers only, so a subscriber can count hundreds of thousands of messages a second.
    pub fn skip_buffered(&mut self) -> anyhow::Result<u64> {
        let mut publishes = 0;
        while let Some(header) = mqtt::check(&self.buf, mqtt::MAX_PACKET_SIZE)? {
            if header.packet_type == PacketType::Publish {
                publishes += 1;
            }
            self.buf.advance(header.frame_len());
        }
        Ok(publishes)
    }

    /// Reads whatever has arrived (cancel-safe); an error if the connection closed.
    pub async fn read_more(&mut self) -> anyhow::Result<()> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        match self.stream.read_buf(&mut self.buf).await? {
            0 => bail!("connection closed by the server"),
            _ => Ok(()),
        }
    }

    /// Gives up the read buffer and keeps just the socket (for connections left idle).
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }
}

/// `count` copies of one encoded PUBLISH back to back, written with a single `write()`.
pub fn publish_batch(topic: &str, payload: Bytes, count: usize) -> anyhow::Result<Bytes> {
    let publish = Packet::Publish(Publish {
        qos: QoS::AtMostOnce,
        topic: topic.into(),
        payload,
        ..Publish::default()
    });
    let mut one = BytesMut::new();
    mqtt::encode(&publish, PROTOCOL, &mut one)?;
    let mut batch = BytesMut::with_capacity(one.len() * count);
    for _ in 0..count {
        batch.extend_from_slice(&one);
    }
    Ok(batch.freeze())
}

/// The encoded size of a QoS 0 PUBLISH.
pub fn publish_len(topic: &str, payload_len: usize) -> anyhow::Result<usize> {
    let batch = publish_batch(topic, Bytes::from(vec![0; payload_len]), 1)?;
    Ok(batch.len())
}
