//! The broker upstream: each relayed session becomes one MQTT connection to a real broker, made
//! on the client's behalf with the client's own CONNECT, so the broker sees the same client id,
//! credentials, will and properties, and enforces its own rules.

use std::sync::Arc;
use std::time::Duration;

use strait_runtime::Context as _;

use crate::RelayError;
use bytes::BytesMut;
use futures::FutureExt as _;
use strait_mqtt_codec::{self as mqtt, Disconnect, Packet, Protocol, ReasonCode};
use strait_relay::v1::{self, ClientFrame, ServerFrame};
use strait_relay::{Incoming, Opening};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::mpsc;
use tonic::Status;

use super::Context;
use crate::batch::{BATCH_BYTES, BatchError, ReadBuffer, batch_vec, decode_batch};
use crate::drain::SessionLag;
use crate::net::BoxedIo;
use strait_relay::metrics::{ActiveSession, Direction};
use strait_relay::rules::refusal;

/// Where and how s-proxy connects to the broker.
pub struct BrokerTarget {
    address: String,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    connect_timeout: Duration,
    qos0_batching: Duration,
}

impl BrokerTarget {
    pub fn new(
        address: String,
        tls: Option<Arc<rustls::ClientConfig>>,
        server_name: Option<String>,
        connect_timeout: Duration,
        qos0_batching: Duration,
    ) -> Result<Self, RelayError> {
        let host = address
            .rsplit_once(':')
            .map(|(host, _)| host.trim_matches(['[', ']']))
            .with_context(|| format!("--broker {address:?} is not HOST:PORT"))?
            .to_string();
        let tls = match tls {
            Some(config) => {
                let name = strait_tls::server_name(server_name.as_deref().unwrap_or(&host))?;
                Some((tokio_rustls::TlsConnector::from(config), name))
            }
            None => None,
        };
        Ok(Self {
            address,
            tls,
            connect_timeout,
            qos0_batching,
        })
    }

    async fn connect(&self) -> Result<BoxedIo, RelayError> {
        let connect = async {
            let tcp = tokio::net::TcpStream::connect(&self.address).await?;
            tcp.set_nodelay(true)?;
            Ok::<BoxedIo, std::io::Error>(match &self.tls {
                Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
                None => Box::new(tcp),
            })
        };
        tokio::time::timeout(self.connect_timeout, connect)
            .await
            .with_context(|| {
                format!(
                    "no connection to {} within {:?}",
                    self.address, self.connect_timeout
                )
            })?
            .with_context(|| format!("connecting to broker {}", self.address))
            .map_err(Into::into)
    }
}

type ToClient = mpsc::Sender<Result<ServerFrame, Status>>;

/// Why the session ended.
enum End {
    /// r-proxy closed the session, with its reason (0: the client went away).
    ClientSide(u32),
    /// r-proxy's stream ended or failed without a close.
    ClientGone,
    /// The broker closed the connection.
    BrokerClosed,
    /// The broker sent something undecodable or too large.
    BrokerInvalid(mqtt::DecodeError),
    BrokerIo(std::io::Error),
    InvalidFrame(String),
    Shutdown,
}

pub async fn run(
    opening: Opening,
    inbound: Incoming<ClientFrame>,
    to_client: ToClient,
    ctx: Arc<Context>,
    target: Arc<BrokerTarget>,
) {
    let started = std::time::Instant::now();
    let Opening {
        protocol,
        connect,
        pipelined,
        ..
    } = opening;
    let broker = match target.connect().await {
        Ok(io) => io,
        Err(error) => {
            tracing::warn!(
                error = strait_runtime::error_chain(&error),
                "broker unreachable; refusing the client"
            );
            ctx.metrics.error("broker_unavailable");
            let frame = ServerFrame {
                packets: vec![refusal(ReasonCode::SERVER_UNAVAILABLE).into()],
                close: Some(v1::SessionClose {
                    reason_code: 0,
                    detail: strait_runtime::error_chain(&error),
                }),
            };
            let _ = to_client.send(Ok(frame)).await;
            return;
        }
    };
    let _active = ActiveSession::start(&ctx.metrics);
    let (mut reader, mut writer) = tokio::io::split(broker);

    let mut out = BytesMut::new();
    for packet in std::iter::once(Packet::Connect(connect)).chain(pipelined) {
        if let Err(error) = encode(&packet, protocol, &mut out, &ctx) {
            tracing::warn!(%error, "cannot encode the client's opening packets");
            return;
        }
    }
    if let Err(error) = write(&mut writer, &mut out).await {
        tracing::warn!(%error, "broker connection failed while sending CONNECT");
        let _ = to_client.send(Ok(refusal_frame())).await;
        return;
    }
    tracing::info!(elapsed = ?started.elapsed(), "session opened: CONNECT relayed to the broker");
    ctx.metrics
        .session_setup_seconds
        .observe(started.elapsed().as_secs_f64());

    let end = tokio::select! {
        end = client_to_broker(inbound, &mut writer, protocol, &ctx) => end,
        end = broker_to_client(&mut reader, &to_client, protocol, target.qos0_batching, &ctx) => end,
        _ = to_client.closed() => End::ClientGone,
        _ = ctx.shutdown.cancelled() => End::Shutdown,
    };
    match end {
        // The client is gone without a DISCONNECT: dropping the broker connection abruptly
        // makes the broker publish the will, exactly as if the client had dropped off.
        End::ClientSide(0) | End::ClientGone => {}
        End::ClientSide(reason) if reason == u32::from(ReasonCode::SERVER_SHUTTING_DOWN.0) => {
            // r-proxy is restarting: leave gracefully so the client's will is not published
            // for an outage the client does not have (it reconnects through another r-proxy).
            disconnect_gracefully(&mut writer, protocol).await;
        }
        End::ClientSide(reason) => tracing::debug!(reason, "r-proxy ended the session"),
        End::BrokerClosed => {
            let _ = to_client
                .send(Ok(close_frame(0, "broker closed the connection")))
                .await;
        }
        End::BrokerInvalid(error) => {
            tracing::warn!(%error, "broker sent an invalid packet");
            ctx.metrics.error(error.metric_label());
            let reason = error.reason_code().0.into();
            let _ = to_client
                .send(Ok(close_frame(reason, &error.to_string())))
                .await;
        }
        End::BrokerIo(error) => {
            tracing::info!(%error, "broker connection failed");
            ctx.metrics.error("broker_io");
            let _ = to_client.send(Ok(close_frame(0, &error.to_string()))).await;
        }
        End::InvalidFrame(detail) => {
            tracing::error!(%detail, "invalid frame from r-proxy");
            ctx.metrics.error("invalid_frame");
            let _ = to_client.send(Err(Status::invalid_argument(detail))).await;
        }
        End::Shutdown => {
            disconnect_gracefully(&mut writer, protocol).await;
            let reason = ReasonCode::SERVER_SHUTTING_DOWN.0.into();
            let _ = to_client
                .send(Ok(close_frame(reason, "s-proxy shutting down")))
                .await;
        }
    }
}

async fn client_to_broker(
    mut inbound: Incoming<ClientFrame>,
    writer: &mut WriteHalf<BoxedIo>,
    protocol: Protocol,
    ctx: &Context,
) -> End {
    let mut out = BytesMut::new();
    loop {
        let mut frame = match inbound.message().await {
            Ok(Some(frame)) => frame,
            Ok(None) | Err(_) => return End::ClientGone,
        };
        // Frames that have already arrived go out in the same write: the broker then wakes once
        // for a burst instead of once per frame.
        loop {
            for packet in frame.packets {
                let packet = match Packet::try_from(packet) {
                    Ok(packet) => packet,
                    Err(error) => return End::InvalidFrame(error.to_string()),
                };
                if let Err(error) = encode(&packet, protocol, &mut out, ctx) {
                    return End::InvalidFrame(error.to_string());
                }
            }
            if let Some(close) = frame.close {
                if let Err(error) = write(writer, &mut out).await {
                    return End::BrokerIo(error);
                }
                return End::ClientSide(close.reason_code);
            }
            if out.len() >= BATCH_BYTES {
                break;
            }
            match inbound.message().now_or_never() {
                Some(Ok(Some(next))) => frame = next,
                // Nothing more yet, or the stream ended: the next await reports it.
                _ => break,
            }
        }
        // Deliveries first: while s-proxy is short of CPU and behind on reading the broker,
        // feeding the broker more would only make it drop QoS 0 messages for the relay's
        // subscribers (crate::drain).
        ctx.backlog.drained().await;
        if let Err(error) = write(writer, &mut out).await {
            return End::BrokerIo(error);
        }
    }
}

async fn broker_to_client(
    reader: &mut ReadHalf<BoxedIo>,
    to_client: &ToClient,
    protocol: Protocol,
    qos0_batching: Duration,
    ctx: &Context,
) -> End {
    let mut buf = ReadBuffer::default();
    let mut lag = ctx.backlog.session();
    let mut last_read = Trickle::default();
    loop {
        loop {
            let mut packets = batch_vec(buf.bytes());
            let batch = decode_batch(
                buf.bytes(),
                protocol,
                ctx.max_packet_size,
                &mut packets,
                |p| {
                    last_read.saw(p);
                    ctx.metrics.packet(Direction::Outbound, p.packet_type());
                    Ok::<_, std::convert::Infallible>(true)
                },
            );
            if let Err(BatchError::Decode(error)) = batch {
                return End::BrokerInvalid(error);
            }
            if packets.is_empty() {
                break;
            }
            let frame = ServerFrame {
                packets,
                close: None,
            };
            // A full queue stops reading the broker: TCP back-pressure does the rest.
            if to_client.send(Ok(frame)).await.is_err() {
                return End::ClientGone;
            }
        }
        if !qos0_batching.is_zero() && last_read.only_qos0(buf.bytes()) {
            tokio::time::sleep(qos0_batching).await;
        }
        match read_available(reader, &mut buf, &mut lag).await {
            Ok(0) => return End::BrokerClosed,
            Ok(n) => {
                last_read = Trickle::read(n);
                ctx.metrics.bytes(Direction::Outbound, n);
            }
            Err(error) => return End::BrokerIo(error),
        }
    }
}

/// What the last read from the broker brought, to decide whether the next one may wait
/// (`broker.qos0Batching`).
///
/// Mosquitto writes each packet with its own `write()`, so a stream of QoS 0 messages arrives a
/// few packets per read and, relayed as it comes, costs a read, a relay frame, an HTTP/2 write
/// and a wake-up of r-proxy per few packets: several times the CPU per message of relaying a
/// millisecond's worth together (docs/benchmarks.md, "Figures the code's design rests on").
/// Waiting is only safe where nobody waits
/// for the answer: QoS 0 has no acknowledgement and is delivered at most once anyway.
#[derive(Debug, Default)]
struct Trickle {
    bytes: usize,
    qos0_publishes: usize,
    others: usize,
}

/// Reads this large mean a backlog: the next read comes back at once, full, without waiting.
const TRICKLE_BELOW: usize = 16 * 1024;

impl Trickle {
    fn read(bytes: usize) -> Self {
        Self {
            bytes,
            ..Self::default()
        }
    }

    fn saw(&mut self, packet: &Packet) {
        match packet {
            Packet::Publish(p) if p.qos == mqtt::QoS::AtMostOnce => self.qos0_publishes += 1,
            _ => self.others += 1,
        }
    }

    /// True when the read was small, brought only QoS 0 PUBLISHes, and left no partial packet
    /// (whose rest is on its way and must not wait).
    fn only_qos0(&self, undecoded: &BytesMut) -> bool {
        self.bytes < TRICKLE_BELOW
            && self.qos0_publishes > 0
            && self.others == 0
            && undecoded.is_empty()
    }
}

/// Waits for the broker to send something, then takes whatever else is already there, up to a
/// batch. Brokers write each packet on its own (Mosquitto does), so without this every packet
/// would become a frame of its own; with it a burst becomes one. Tells `behind` whether the
/// socket still had more (a whole batch was read) or was read empty.
async fn read_available(
    reader: &mut ReadHalf<BoxedIo>,
    buf: &mut ReadBuffer,
    behind: &mut SessionLag,
) -> std::io::Result<usize> {
    let mut total = match reader.read_buf(buf.prepare()).now_or_never() {
        Some(read) => read?,
        None => {
            // Caught up: nothing is waiting in the socket.
            behind.set_behind(false);
            reader.read_buf(buf.prepare()).await?
        }
    };
    buf.filled(total);
    while total > 0 && buf.bytes().len() < BATCH_BYTES {
        match reader.read_buf(buf.prepare()).now_or_never() {
            Some(Ok(n)) if n > 0 => {
                buf.filled(n);
                total += n;
            }
            // Nothing more yet, or the connection ended or failed: the next await reports it.
            _ => {
                behind.set_behind(false);
                return Ok(total);
            }
        }
    }
    // A whole batch, and possibly more waiting.
    behind.set_behind(total > 0);
    Ok(total)
}

fn encode(
    packet: &Packet,
    protocol: Protocol,
    out: &mut BytesMut,
    ctx: &Context,
) -> Result<(), mqtt::EncodeError> {
    let before = out.len();
    mqtt::encode(packet, protocol, out)?;
    ctx.metrics.packet(Direction::Inbound, packet.packet_type());
    ctx.metrics.bytes(Direction::Inbound, out.len() - before);
    Ok(())
}

async fn write(writer: &mut WriteHalf<BoxedIo>, out: &mut BytesMut) -> std::io::Result<()> {
    if out.is_empty() {
        return Ok(());
    }
    let data = out.split();
    writer.write_all(&data).await?;
    writer.flush().await
}

async fn disconnect_gracefully(writer: &mut WriteHalf<BoxedIo>, protocol: Protocol) {
    let mut out = BytesMut::new();
    let disconnect = Packet::Disconnect(Disconnect::default());
    if mqtt::encode(&disconnect, protocol, &mut out).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(1), write(writer, &mut out)).await;
    }
    let _ = writer.shutdown().await;
}

fn close_frame(reason_code: u32, detail: &str) -> ServerFrame {
    ServerFrame {
        packets: Vec::new(),
        close: Some(v1::SessionClose {
            reason_code,
            detail: detail.to_string(),
        }),
    }
}

fn refusal_frame() -> ServerFrame {
    ServerFrame {
        packets: vec![refusal(ReasonCode::SERVER_UNAVAILABLE).into()],
        close: Some(v1::SessionClose {
            reason_code: 0,
            detail: "broker connection failed".into(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_mqtt_codec::{PubAck, Publish, QoS};

    fn publish(qos: QoS) -> Packet {
        Packet::Publish(Publish {
            topic: "t".into(),
            qos,
            packet_id: u16::from(qos != QoS::AtMostOnce),
            payload: vec![1; 16].into(),
            ..Default::default()
        })
    }

    fn read(bytes: usize, packets: &[Packet]) -> Trickle {
        let mut trickle = Trickle::read(bytes);
        packets.iter().for_each(|p| trickle.saw(p));
        trickle
    }

    #[test]
    fn a_small_read_of_qos0_publishes_may_wait_for_more() {
        let qos0 = vec![publish(QoS::AtMostOnce); 3];
        assert!(read(90, &qos0).only_qos0(&BytesMut::new()));
    }

    #[test]
    fn acknowledgements_and_higher_qos_are_never_held() {
        let empty = BytesMut::new();
        let with_qos1 = [publish(QoS::AtMostOnce), publish(QoS::AtLeastOnce)];
        assert!(!read(60, &with_qos1).only_qos0(&empty));
        let with_ack = [
            publish(QoS::AtMostOnce),
            Packet::PubAck(PubAck {
                packet_id: 1,
                ..Default::default()
            }),
        ];
        assert!(!read(40, &with_ack).only_qos0(&empty));
    }

    #[test]
    fn a_partial_packet_a_large_read_or_no_packet_reads_on_at_once() {
        let qos0 = [publish(QoS::AtMostOnce)];
        assert!(!read(30, &qos0).only_qos0(&BytesMut::from(&[0x30u8, 0x7f][..])));
        assert!(!read(TRICKLE_BELOW, &qos0).only_qos0(&BytesMut::new()));
        assert!(!read(10, &[]).only_qos0(&BytesMut::new()));
    }
}
