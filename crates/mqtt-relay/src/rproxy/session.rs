//! One client session: read CONNECT, open the relay stream, pump packets both ways, and end the
//! session cleanly whichever side ends it.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use bytes::BytesMut;
use futures::FutureExt;
use strait_mqtt_codec::{self as mqtt, Packet, Protocol, ReasonCode};
use strait_relay::v1;

use super::Context;
use super::conn::{ClientConn, ClientReader, ClientWriter};
use super::connect_rate::Refusal;
use super::listener::Transport;
use super::upstream::RelayStream;
use crate::auth::guard::{PartialSubAcks, TopicGuard, Verdict};
use crate::batch::{BatchError, ReadBuffer, batch_vec, decode_batch};
use strait_relay::metrics::{ActiveSession, Direction};
use strait_relay::rules::{SessionRules, refusal};

/// How long a parting DISCONNECT or close may take before the connection is simply dropped.
const PARTING_WRITE: Duration = Duration::from_secs(1);

/// Why a session ended, and so what the client and s-proxy are told.
#[derive(Debug)]
enum End {
    /// The client closed its connection (after a DISCONNECT, or abruptly).
    ClientClosed,
    ClientIo(std::io::Error),
    /// The client broke the protocol or a limit, or sent what its token does not permit (where
    /// MQTT has no negative answer); v5 clients get a DISCONNECT with the code.
    ClientError(ReasonCode, String),
    /// The client's JWT expired (`exp` plus the leeway).
    TokenExpired,
    KeepAliveExpired,
    /// s-proxy ended the session; a non-zero code is passed on as a DISCONNECT unless the
    /// upstream's own DISCONNECT was already relayed.
    UpstreamClosed {
        reason: u32,
        disconnect_sent: bool,
    },
    /// The relay stream failed (s-proxy died, network).
    UpstreamLost(tonic::Status),
    /// s-proxy sent something that cannot be given to the client.
    UpstreamInvalid(String),
    Shutdown,
}

pub async fn run(
    conn: ClientConn,
    peer: SocketAddr,
    transport: Transport,
    identity: Option<v1::Identity>,
    connect_by: tokio::time::Instant,
    ctx: &Context,
) {
    let (mut reader, mut writer) = conn.split();
    let mut inbuf = ReadBuffer::default();
    let started = Instant::now();

    let (protocol, mut connect) = match tokio::time::timeout_at(
        connect_by,
        read_connect(&mut reader, inbuf.bytes(), ctx.max_packet_size as usize),
    )
    .await
    {
        Ok(Ok(Some(first))) => first,
        Ok(Ok(None)) => return,
        Ok(Err(error)) => {
            tracing::info!(%error.error, "refusing connection: invalid CONNECT");
            ctx.metrics.error(error.error.metric_label());
            if let Some((protocol, connack)) = error.connack() {
                write_parting(&mut writer, protocol, Packet::ConnAck(connack)).await;
            }
            writer.close().await;
            return;
        }
        Err(_) => {
            tracing::info!(timeout = ?ctx.connect_timeout, "no CONNECT in time; closing");
            ctx.metrics.error("connect_timeout");
            writer.close().await;
            return;
        }
    };
    tracing::Span::current().record("client_id", connect.client_id.as_str());
    ctx.metrics
        .packet(Direction::Inbound, mqtt::PacketType::Connect);
    let rules = SessionRules::new(protocol, &connect, ctx.max_packet_size, ctx.max_keep_alive);
    if rules.keep_alive_capped() {
        tracing::debug!(
            asked = connect.keep_alive,
            max = ctx.max_keep_alive,
            "keep-alive capped (limits.maxKeepAlive)"
        );
        ctx.metrics.keep_alive_capped.inc();
    }

    let Some(_address_slot) = ctx.addresses.take(peer.ip()) else {
        tracing::info!(address = %peer.ip(), "refusing connection: too many from this address");
        ctx.metrics.error("address_limit");
        write_parting(&mut writer, protocol, refusal(ReasonCode::QUOTA_EXCEEDED)).await;
        writer.close().await;
        return;
    };
    // Paced before anything costly (authentication, the relay stream, the session upstream).
    let left = connect_by.saturating_duration_since(tokio::time::Instant::now());
    match ctx.connect_rates.admit(peer.ip(), Instant::now(), left) {
        Ok(wait) if wait.is_zero() => {}
        Ok(wait) => {
            ctx.metrics.connects_paced.inc();
            tokio::time::sleep(wait).await;
        }
        Err(refused) => {
            let limit = match refused {
                Refusal::Address => "limits.maxConnectRatePerAddress",
                Refusal::Process => "limits.maxConnectRate",
            };
            tracing::info!(address = %peer.ip(), limit, "refusing connection: connecting too fast");
            ctx.metrics.error("connect_rate");
            write_parting(
                &mut writer,
                protocol,
                refusal(ReasonCode::CONNECTION_RATE_EXCEEDED),
            )
            .await;
            writer.close().await;
            return;
        }
    }
    let session = match ctx.auth.authenticate(&mut connect, identity).await {
        Ok(session) => session,
        Err(refused) => {
            tracing::info!(
                reason = refused.label,
                detail = %refused.detail,
                code = refused.reason.name(),
                "refusing connection: authentication failed"
            );
            write_parting(&mut writer, protocol, refusal(refused.reason)).await;
            writer.close().await;
            return;
        }
    };
    if let Some(identity) = &session.identity {
        tracing::Span::current().record("subject", identity.subject.as_str());
    }
    let subscribe_grants = session.policy.subscribe_grants();
    let expires_at = session.expires_at;
    let mut guard =
        (!session.policy.is_unrestricted()).then(|| TopicGuard::new(session.policy, protocol));
    let partial_subacks = PartialSubAcks::default();

    // Packets the client pipelined behind CONNECT travel in the same first frame; r-proxy's own
    // answers to them follow the CONNACK.
    let mut first_packets = vec![v1::Packet::from(Packet::Connect(connect))];
    let mut first_replies = Vec::new();
    let mut authz = guard.as_mut().map(|g| (g, &partial_subacks));
    if let Err((reason, detail)) = decode_client_batch(
        inbuf.bytes(),
        &rules,
        ctx,
        &mut first_packets,
        &mut authz,
        &mut first_replies,
    ) {
        tracing::info!(%detail, "protocol error right after CONNECT");
        ctx.metrics.error("protocol");
        write_parting(&mut writer, protocol, refusal(reason)).await;
        writer.close().await;
        return;
    }
    let first = v1::ClientFrame {
        open: Some(Box::new(v1::SessionOpen {
            session_id: next_session_id(),
            client_address: peer.to_string(),
            listener: transport.to_string(),
            transport: transport.as_proto().into(),
            protocol: v1::ProtocolVersion::from(protocol).into(),
            identity: session.identity,
            subscribe_grants,
        })),
        packets: first_packets,
        close: None,
    };
    let relay = match ctx.upstream.open(first).await {
        Ok(relay) => relay,
        Err(status) => {
            tracing::warn!(%status, "no s-proxy could take the session; refusing");
            ctx.metrics.error("upstream_unavailable");
            write_parting(
                &mut writer,
                protocol,
                refusal(ReasonCode::SERVER_UNAVAILABLE),
            )
            .await;
            writer.close().await;
            return;
        }
    };
    let _active = ActiveSession::start(&ctx.metrics);
    tracing::debug!(endpoint = %relay.endpoint, "session relayed");
    // `_load` counts the session against its s-proxy until the session ends.
    let RelayStream {
        to_server,
        mut from_server,
        load: _load,
        ..
    } = relay;

    let idle_millis = AtomicU64::new(millis(rules.idle_timeout()));
    let (reply_tx, mut reply_rx) = tokio::sync::mpsc::channel(REPLY_QUEUE);
    let end = {
        let inbound = client_to_server(
            &mut reader,
            &mut inbuf,
            &to_server,
            &rules,
            &idle_millis,
            ctx,
            Local {
                authz,
                replies: reply_tx,
            },
        );
        let outbound = server_to_client(
            &mut from_server,
            &mut writer,
            &rules,
            &idle_millis,
            ctx,
            started,
            LocalAnswers {
                first: first_replies,
                queued: &mut reply_rx,
                partial_subacks: &partial_subacks,
            },
        );
        let expiry = async {
            match expires_at {
                Some(at) => {
                    let left = at.duration_since(SystemTime::now()).unwrap_or_default();
                    tokio::time::sleep(left).await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            end = inbound => end,
            end = outbound => end,
            _ = expiry => End::TokenExpired,
            _ = ctx.shutdown.cancelled() => End::Shutdown,
        }
    };

    // Tell s-proxy why (0 = the client simply went away), then the client, then close.
    let (close_reason, to_client) = match &end {
        End::ClientClosed => (0, None),
        End::ClientIo(error) => {
            tracing::debug!(%error, "client connection failed");
            (0, None)
        }
        End::ClientError(reason, detail) if *reason == ReasonCode::NOT_AUTHORIZED => {
            tracing::info!(%detail, "disconnecting client: not authorized");
            ctx.metrics.error("not_authorized");
            (reason.0.into(), Some((*reason, None)))
        }
        End::ClientError(reason, detail) => {
            tracing::info!(reason = reason.name(), %detail, "disconnecting client: protocol error");
            ctx.metrics.error("protocol");
            (reason.0.into(), Some((*reason, None)))
        }
        End::TokenExpired => {
            // MQTT 5 has no "token expired"; 0xA0 says the connection's authorised time is up.
            tracing::info!("token expired; disconnecting client");
            ctx.metrics.error("token_expired");
            let reason = ReasonCode::MAXIMUM_CONNECT_TIME;
            (reason.0.into(), Some((reason, Some("token expired"))))
        }
        End::KeepAliveExpired => {
            tracing::info!("keep-alive expired");
            ctx.metrics.error("keep_alive");
            let reason = ReasonCode::KEEP_ALIVE_TIMEOUT;
            (reason.0.into(), Some((reason, None)))
        }
        End::UpstreamClosed {
            reason,
            disconnect_sent,
        } => {
            let reason = u8::try_from(*reason).ok().map(ReasonCode);
            let tell = reason
                .filter(|r| r.0 != 0 && !disconnect_sent)
                .map(|r| (r, None));
            (0, tell)
        }
        End::UpstreamLost(status) => {
            tracing::warn!(%status, "relay stream to s-proxy lost; disconnecting client");
            ctx.metrics.error("upstream_lost");
            (
                0,
                Some((ReasonCode::UNSPECIFIED_ERROR, Some("upstream relay lost"))),
            )
        }
        End::UpstreamInvalid(detail) => {
            tracing::error!(%detail, "s-proxy sent an invalid packet; disconnecting client");
            ctx.metrics.error("upstream_invalid");
            let reason = ReasonCode::IMPLEMENTATION_SPECIFIC_ERROR;
            (reason.0.into(), Some((reason, None)))
        }
        End::Shutdown => {
            let reason = ReasonCode::SERVER_SHUTTING_DOWN;
            (reason.0.into(), Some((reason, None)))
        }
    };
    let upstream_open = !matches!(end, End::UpstreamClosed { .. } | End::UpstreamLost(_));
    if upstream_open {
        let close = v1::ClientFrame {
            close: Some(v1::SessionClose {
                reason_code: close_reason,
                detail: format!("{end:?}"),
            }),
            ..Default::default()
        };
        let _ = tokio::time::timeout(PARTING_WRITE, to_server.send(close)).await;
    }
    drop(to_server);
    if let Some((reason, detail)) = to_client
        && let Some(disconnect) = rules.disconnect(reason, detail)
    {
        write_parting(&mut writer, protocol, disconnect).await;
    }
    writer.close().await;
    if upstream_open {
        // Keep the stream until s-proxy ends it, so the close reaches it: dropping the stream
        // resets it (discarding a close not yet sent), and a shutting-down process may exit
        // first. s-proxy needs the reason: on 0x8B it leaves the broker gracefully, so the
        // client's will is not published.
        let _ = tokio::time::timeout(PARTING_WRITE, async {
            while let Ok(Some(_)) = from_server.message().await {}
        })
        .await;
    }
}

/// Reads until a whole CONNECT is in `buf`; `Ok(None)` when the client closed first.
async fn read_connect(
    reader: &mut ClientReader,
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<(Protocol, mqtt::Connect)>, mqtt::ConnectError> {
    loop {
        if let Some(first) = mqtt::decode_first(buf, max_packet_size)? {
            return Ok(Some(first));
        }
        match reader.read_into(buf).await {
            Ok(0) | Err(_) => return Ok(None),
            Ok(_) => {}
        }
    }
}

/// Answers r-proxy queues for the client itself (denied PUBLISHes and SUBSCRIBEs). They are
/// boxed: a tokio channel allocates its first 32 slots when created, and 32 unboxed packets
/// would add 12 KiB to every session, idle or not.
const REPLY_QUEUE: usize = 64;

/// The session's topic permissions (a token's, the ACL's) and the SUBACKs to complete.
type Authz<'a> = Option<(&'a mut TopicGuard, &'a PartialSubAcks)>;

/// What the inbound side needs to answer the client itself.
struct Local<'a> {
    authz: Authz<'a>,
    replies: tokio::sync::mpsc::Sender<Box<Packet>>,
}

/// What the outbound side writes besides s-proxy's packets.
struct LocalAnswers<'a> {
    /// Answers to packets pipelined behind CONNECT, written after the CONNACK.
    first: Vec<Packet>,
    queued: &'a mut tokio::sync::mpsc::Receiver<Box<Packet>>,
    partial_subacks: &'a PartialSubAcks,
}

/// Decodes the client's complete packets in `buf` into `out`, checking each against the rules
/// and the token's permissions; answers r-proxy gives itself go to `replies`. `Err` carries the
/// reason code and detail to disconnect the client with.
fn decode_client_batch(
    buf: &mut BytesMut,
    rules: &SessionRules,
    ctx: &Context,
    out: &mut Vec<v1::Packet>,
    authz: &mut Authz<'_>,
    replies: &mut Vec<Packet>,
) -> Result<(), (ReasonCode, String)> {
    let max_packet_size = ctx.max_packet_size as usize;
    decode_batch(buf, rules.protocol(), max_packet_size, out, |packet| {
        rules.check_inbound(packet).map_err(|reason| {
            let detail = format!("{} not allowed from a client here", packet.name());
            (reason, detail)
        })?;
        ctx.metrics.packet(Direction::Inbound, packet.packet_type());
        let Some((guard, partial)) = authz.as_mut() else {
            return Ok(true);
        };
        let checked = guard.check(packet, partial);
        ctx.auth
            .count_denied(checked.denied_publishes, checked.denied_subscriptions);
        match checked.verdict {
            Verdict::Relay => Ok(true),
            Verdict::Drop => Ok(false),
            Verdict::Reply(reply) => {
                replies.push(*reply);
                Ok(false)
            }
            Verdict::Disconnect(reason) => {
                let detail = format!("{} refused by the topic permissions", packet.name());
                Err((reason, detail))
            }
        }
    })
    .map_err(|error| match error {
        BatchError::Decode(error) => (error.reason_code(), error.to_string()),
        BatchError::Rejected(rejected) => rejected,
    })
}

async fn client_to_server(
    reader: &mut ClientReader,
    buf: &mut ReadBuffer,
    to_server: &tokio::sync::mpsc::Sender<v1::ClientFrame>,
    rules: &SessionRules,
    idle_millis: &AtomicU64,
    ctx: &Context,
    mut local: Local<'_>,
) -> End {
    let mut replies = Vec::new();
    loop {
        loop {
            let mut packets = batch_vec(buf.bytes());
            let before = buf.bytes().len();
            if let Err((reason, detail)) = decode_client_batch(
                buf.bytes(),
                rules,
                ctx,
                &mut packets,
                &mut local.authz,
                &mut replies,
            ) {
                return End::ClientError(reason, detail);
            }
            if buf.bytes().len() == before {
                break;
            }
            for reply in replies.drain(..) {
                // The outbound side is gone only when the session is ending anyway.
                if local.replies.send(Box::new(reply)).await.is_err() {
                    return End::ClientClosed;
                }
            }
            if packets.is_empty() {
                continue;
            }
            let frame = v1::ClientFrame {
                packets,
                ..Default::default()
            };
            // Waiting here is the back-pressure: a full queue stops reading the client.
            if to_server.send(frame).await.is_err() {
                return End::UpstreamLost(tonic::Status::unavailable("relay stream closed"));
            }
        }
        let read = reader.read_into(buf.prepare());
        let read = match idle_millis.load(Ordering::Relaxed) {
            0 => read.await,
            ms => match tokio::time::timeout(Duration::from_millis(ms), read).await {
                Ok(read) => read,
                Err(_) => return End::KeepAliveExpired,
            },
        };
        match read {
            Ok(0) => return End::ClientClosed,
            Ok(n) => {
                buf.filled(n);
                ctx.metrics.bytes(Direction::Inbound, n);
            }
            Err(error) => return End::ClientIo(error),
        }
    }
}

/// Relays s-proxy's frames to the client, adjusting the CONNACK on its way (see
/// [`SessionRules::apply_connack`]), until the stream ends.
async fn server_to_client(
    from_server: &mut strait_relay::Incoming<v1::ServerFrame>,
    writer: &mut ClientWriter,
    rules: &SessionRules,
    idle_millis: &AtomicU64,
    ctx: &Context,
    started: Instant,
    local: LocalAnswers<'_>,
) -> End {
    let mut out = BytesMut::new();
    let mut disconnect_sent = false;
    let mut first_replies = Some(local.first);
    // r-proxy's own answers wait for the CONNACK.
    let mut connack_sent = false;
    loop {
        let message = tokio::select! {
            message = from_server.message() => message,
            Some(reply) = local.queued.recv(), if connack_sent => {
                let mut next = Some(reply);
                while let Some(packet) = next.take().or_else(|| local.queued.try_recv().ok()) {
                    if let Err(error) = mqtt::encode(&packet, rules.protocol(), &mut out) {
                        return End::UpstreamInvalid(error.to_string());
                    }
                    ctx.metrics.packet(Direction::Outbound, packet.packet_type());
                }
                let data = out.split().freeze();
                ctx.metrics.bytes(Direction::Outbound, data.len());
                if let Err(error) = writer.write(data).await {
                    return End::ClientIo(error);
                }
                continue;
            }
        };
        let frame = match message {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                return End::UpstreamClosed {
                    reason: 0,
                    disconnect_sent,
                };
            }
            Err(status) => return End::UpstreamLost(status),
        };
        let mut frames = vec![frame];
        // Batch whatever else has already arrived into the same write.
        while let Some(Ok(Some(frame))) = from_server.message().now_or_never() {
            frames.push(frame);
        }
        let mut close = None;
        for frame in frames {
            for packet in frame.packets {
                let mut packet = match Packet::try_from(packet) {
                    Ok(packet) => packet,
                    Err(error) => return End::UpstreamInvalid(error.to_string()),
                };
                let mut accepted = false;
                match &mut packet {
                    Packet::ConnAck(connack) => {
                        if let Some(idle) = rules.apply_connack(connack) {
                            idle_millis.store(millis(idle), Ordering::Relaxed);
                        }
                        ctx.metrics
                            .session_setup_seconds
                            .observe(started.elapsed().as_secs_f64());
                        accepted = !connack.reason_code.is_error();
                    }
                    Packet::SubAck(ack) => local.partial_subacks.complete(ack),
                    Packet::Disconnect(_) => disconnect_sent = true,
                    _ => {}
                }
                if let Err(error) = mqtt::encode(&packet, rules.protocol(), &mut out) {
                    return End::UpstreamInvalid(error.to_string());
                }
                ctx.metrics
                    .packet(Direction::Outbound, packet.packet_type());
                if accepted {
                    connack_sent = true;
                    for reply in first_replies.take().into_iter().flatten() {
                        if let Err(error) = mqtt::encode(&reply, rules.protocol(), &mut out) {
                            return End::UpstreamInvalid(error.to_string());
                        }
                        ctx.metrics.packet(Direction::Outbound, reply.packet_type());
                    }
                }
            }
            close = close.or(frame.close);
        }
        if !out.is_empty() {
            let data = out.split().freeze();
            ctx.metrics.bytes(Direction::Outbound, data.len());
            if let Err(error) = writer.write(data).await {
                return End::ClientIo(error);
            }
        }
        if let Some(close) = close {
            return End::UpstreamClosed {
                reason: close.reason_code,
                disconnect_sent,
            };
        }
    }
}

async fn write_parting(writer: &mut ClientWriter, protocol: Protocol, packet: Packet) {
    let mut out = BytesMut::new();
    if mqtt::encode(&packet, protocol, &mut out).is_ok() {
        let _ = tokio::time::timeout(PARTING_WRITE, writer.write(out.freeze())).await;
    }
}

fn millis(duration: Option<Duration>) -> u64 {
    duration.map_or(0, |d| d.as_millis().max(1) as u64)
}

/// Unique within the process and, with the process prefix, across restarts and replicas.
fn next_session_id() -> String {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    static PREFIX: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    let prefix = PREFIX.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        format!("{:x}{:x}", std::process::id(), nanos & 0xff_ffff)
    });
    format!("{prefix}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}
