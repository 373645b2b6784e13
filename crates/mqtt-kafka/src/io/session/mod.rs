//! One MQTT session served from Kafka: CONNECT/CONNACK, publishes produced to the messages
//! topic (acknowledged only once Kafka has them), subscriptions fed by the dispatcher, retained
//! messages, persistent state in the sessions topic, wills and takeover.

mod catch_up;
mod delivery;
mod end;
mod packets;
mod persistence;
mod writes;

use delivery::RetainedDue;
use writes::refuse_publish;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use futures::stream::{FuturesOrdered, StreamExt as _};
use rdkafka::consumer::Consumer;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::producer::FutureRecord;
use rdkafka::{Offset, TopicPartitionList};
use strait_kafka::headers::{has_header, owned_headers, record_headers};
use strait_kafka::poll::{Polled, poll_loop};
use strait_kafka::{KafkaClients, Producer};
use strait_mqtt_codec::{
    self as mqtt, ConnAck, Packet, Protocol, PubAck, PubRec, PubRel, Publish, QoS, ReasonCode,
    SubAck, UnsubAck,
};
use strait_relay::Incoming;
use strait_relay::v1::{self, ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tonic::Status;

use super::metrics::{CatchUpReason, Limit, RecordKind};
use super::{Delivery, Inbox, KafkaUpstream, Local, now_ms};
use crate::UpstreamError;
use crate::core::ending::{
    self, End, Finish, Ownership, Store, WillPlan, expiry_after_disconnect, session_expiry,
    will_publish,
};
use crate::core::exactly_once::{Intent, Intents, Qos2Publish, Qos2Written};
use crate::core::flows::{Acked, Inbound, Outbound, Sent, TOPIC_ALIAS_MAXIMUM};
use crate::core::headers::{self, Message};
use crate::core::lanes::{Lane, next_lane};
use crate::core::limits;
use crate::core::progress::CatchUps;
use crate::core::redelivery::{Qos2Deliveries, Redeliver};
use crate::core::state::{SessionRecord, StoredOutgoing, StoredSubscription, StoredWill, VERSION};
use crate::core::subscriptions::{self, Checked};
use strait_relay::Opening;
use strait_relay::metrics::RelayMetrics;
use strait_relay::metrics::{ActiveSession, Direction};
use strait_relay::rules::refusal;
use strait_relay::topics::Policy;

pub(crate) use self::persistence::put_session;
pub(crate) use self::writes::{produce, produce_on};

type ToClient = mpsc::Sender<Result<ServerFrame, Status>>;

/// Publishes the client may have in flight towards us (CONNACK Receive Maximum).
/// How often a persistent session writes its delivery progress.
const CHECKPOINT_EVERY: Duration = Duration::from_secs(1);
/// How often a persistent session with nothing acknowledged stores its (moved) progress.
const IDLE_CHECKPOINT: Duration = Duration::from_secs(60);
const SYNC_DEADLINE: Duration = Duration::from_secs(10);

/// How a produce ended, for the acknowledgement.
type ProduceResult = Result<(), ReasonCode>;

/// Records a session missed, read from Kafka (an error ends the session).
type CatchUp = mpsc::Receiver<Result<Arc<Delivery>, String>>;

/// Acknowledgements waiting for Kafka, in the order the PUBLISHes came.
/// The longest a CONNECT waits for its turn under `limits.maxConnectRate` (as long as r-proxy
/// gives a client to send its CONNECT).
const CONNECT_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

type Acks = FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = (Ack, ProduceResult)> + Send>>>;

// The variants are the packets they answer with (`PubAck` ends in `Ack` by MQTT's naming).
#[allow(clippy::enum_variant_names)]
enum Ack {
    /// QoS 1: PUBACK.
    PubAck(u16),
    /// QoS 2: PUBREC (and remember the packet id).
    PubRec(u16),
    /// A PUBLISH refused before it was produced (a routed topic it may not use), and why.
    Refused(Box<Ack>, String),
}

struct Session {
    up: Arc<KafkaUpstream>,
    id: u64,
    client_id: String,
    protocol: Protocol,
    connection: String,
    connected_at_ms: i64,
    expiry: u32,
    will: Option<mqtt::Will>,
    subscriptions: BTreeMap<String, StoredSubscription>,
    inbox: Arc<Inbox>,
    /// What the client sends: its topic aliases, QoS 2 packet ids written and not released.
    inbound: Inbound,
    /// What the session sends the client: in-flight messages within its Receive Maximum,
    /// outgoing topic aliases.
    outbound: Outbound<Arc<Delivery>>,
    /// QoS 2 deliveries restored from the session record, to resend (DUP) with their packet
    /// id when the catch-up reads them again, and the offsets done above the progress.
    qos2: Qos2Deliveries,
    /// QoS 2 delivery state changed: store it before the client sees the next packets.
    qos2_dirty: bool,
    /// QoS 2 PUBLISHes being written: where, and the partition's end offset before.
    intents: Intents,
    /// Catch-ups in progress, and the live deliveries they stand for.
    catch_ups: CatchUps,
    /// Filters whose retained messages are still to send, as room opens in the client's
    /// receive window (at most one per subscription).
    retained_due: VecDeque<RetainedDue>,
    last_checkpoint: Option<BTreeMap<String, BTreeMap<i32, i64>>>,
    last_write: std::time::Instant,
    /// The client acknowledged a delivery from Kafka since the last write.
    acked_since_write: bool,
    out: Vec<v1::Packet>,
    /// The producer the session's QoS ≥ 1 records go through now.
    lane: Lane,
}

/// Serves one relayed MQTT session on Kafka until it ends (the client, a takeover, shutdown).
pub async fn run(
    opening: Opening,
    inbound: Incoming<ClientFrame>,
    to_client: ToClient,
    metrics: RelayMetrics,
    up: Arc<KafkaUpstream>,
) {
    let started = std::time::Instant::now();
    let Opening {
        open,
        protocol,
        mut connect,
        pipelined,
    } = opening;
    // What the client may subscribe to now, as r-proxy enforces it.
    let allowed = Policy::from_subscribe_grants(&open.subscribe_grants);
    let refuse = |reason: ReasonCode, detail: String| {
        let to_client = to_client.clone();
        async move {
            let frame = ServerFrame {
                packets: vec![refusal(reason).into()],
                close: Some(v1::SessionClose {
                    reason_code: 0,
                    detail,
                }),
            };
            let _ = to_client.send(Ok(frame)).await;
        }
    };
    let mut assigned = None;
    if connect.client_id.is_empty() {
        if protocol == Protocol::V311 && !connect.clean_start {
            return refuse(
                ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
                "an empty client id needs a clean session".into(),
            )
            .await;
        }
        connect.client_id = format!("strait-{}-{}", up.instance, up.next_id());
        assigned = Some(connect.client_id.clone());
    }
    if connect
        .client_id
        .starts_with(crate::core::state::REPLICA_PREFIX)
    {
        return refuse(
            ReasonCode::CLIENT_IDENTIFIER_NOT_VALID,
            "client ids starting with $strait/ are reserved".into(),
        )
        .await;
    }
    // Setting a session up costs a record, a table read and perhaps a catch-up: a reconnect
    // storm waits its turn rather than taking the CPU the open sessions need.
    match up.connect_turn(CONNECT_WAIT) {
        Some(wait) if wait.is_zero() => {}
        Some(wait) => {
            up.metrics.limit_hit(Limit::ConnectRate);
            tokio::time::sleep(wait).await;
        }
        None => {
            up.metrics.limit_hit(Limit::ConnectRate);
            tracing::info!(
                "refusing the client: sessions are being set up faster than kafka.limits.maxConnectRate"
            );
            return refuse(
                ReasonCode::CONNECTION_RATE_EXCEEDED,
                "kafka.limits.maxConnectRate: the turn is too far away".into(),
            )
            .await;
        }
    }
    let client_id = connect.client_id.clone();
    let limits = up.config.limits.clone();
    let requested_expiry = session_expiry(protocol, &connect);
    // A session kept forever would keep its record in the sessions topic forever.
    let expiry = requested_expiry.min(limits.max_session_expiry_seconds());
    if expiry < requested_expiry {
        up.metrics.limit_hit(Limit::SessionExpiry);
    }
    let connected_at_ms = now_ms();
    let connection = format!("{}-{}", up.instance, up.next_id());
    let (kick_tx, mut kicked) = mpsc::channel(1);

    // A session of the same client on this process is taken over at once; one on another
    // process when it reads our record below.
    {
        let mut local = up.local.lock();
        if let Some(old) = local.insert(
            client_id.clone(),
            Local {
                connection: connection.clone(),
                connected_at_ms,
                kick: kick_tx,
            },
        ) {
            let _ = old.kick.try_send(());
        }
    }

    let resumed = match load(&up, &client_id, connect.clean_start).await {
        Ok(resumed) => resumed,
        Err(error) => {
            tracing::warn!(
                error = crate::error_chain(&error),
                "Kafka unavailable; refusing the client"
            );
            metrics.error("kafka_unavailable");
            forget_local(&up, &client_id, &connection);
            return refuse(ReasonCode::SERVER_UNAVAILABLE, crate::error_chain(&error)).await;
        }
    };
    tracing::debug!(elapsed = ?started.elapsed(), "session state read");
    let session_present = resumed.is_some();
    let id = up.next_id();
    let inbox = Arc::new(Inbox::new(up.config.session_queue));
    let mut session = Session {
        up: up.clone(),
        id,
        client_id: client_id.clone(),
        protocol,
        connection: connection.clone(),
        connected_at_ms,
        expiry,
        will: connect.will.clone(),
        subscriptions: BTreeMap::new(),
        inbox: inbox.clone(),
        inbound: Inbound::new(protocol, []).with_receive_maximum(limits.receive_maximum),
        outbound: Outbound::new(protocol, &connect),
        qos2: Qos2Deliveries::default(),
        qos2_dirty: false,
        intents: Intents::default(),
        catch_ups: CatchUps::default(),
        retained_due: VecDeque::new(),
        last_checkpoint: None,
        last_write: std::time::Instant::now(),
        acked_since_write: false,
        out: Vec::new(),
        lane: Lane::default(),
    };
    up.register(id, inbox);
    let mut catch_up = None;
    if let Some(record) = &resumed {
        session.inbound = Inbound::new(protocol, record.qos2_received.iter().copied())
            .with_receive_maximum(limits.receive_maximum);
        session.restore_qos2(record);
        session.intents = Intents::restore(&record.qos2_pending);
        for sub in &record.subscriptions {
            // Allowed when it was made; the client's token or the ACL may have changed since.
            if !allowed.may_subscribe(&sub.filter) {
                tracing::info!(
                    filter = %sub.filter,
                    "dropping a restored subscription: the client's permissions no longer allow it"
                );
                metrics.restored_subscriptions_dropped.inc();
                continue;
            }
            if let Err(limit) = up.subscribe(id, &sub.filter) {
                tracing::warn!(
                    filter = %sub.filter,
                    limit = limit.label(),
                    "dropping a restored subscription: this s-proxy serves as many shared \
                     subscription groups as it may"
                );
                up.metrics.limit_hit(limit);
                continue;
            }
            session
                .subscriptions
                .insert(sub.filter.clone(), sub.clone());
        }
        catch_up = session.start_catch_up(&record.offsets);
    }
    // The claim: written before CONNACK, so a replica serving this client id hands it over.
    if let Err(error) = session.write_record(None).await {
        tracing::warn!(
            error = crate::error_chain(&error),
            "cannot write the session record"
        );
        metrics.error("kafka_unavailable");
        up.unregister(id, session.subscriptions.keys().cloned());
        forget_local(&up, &client_id, &connection);
        return refuse(ReasonCode::SERVER_UNAVAILABLE, crate::error_chain(&error)).await;
    }
    tracing::debug!(elapsed = ?started.elapsed(), "session claimed");
    let mut connack = ConnAck {
        session_present,
        ..Default::default()
    };
    if protocol == Protocol::V5 {
        let p = &mut connack.properties;
        p.receive_maximum = Some(limits.receive_maximum);
        if expiry < requested_expiry {
            // The client must use the server's (MQTT-3.2.2-?: Session Expiry Interval).
            p.session_expiry_interval = Some(expiry);
        }
        p.retain_available = Some(true);
        p.wildcard_subscription_available = Some(true);
        p.subscription_identifier_available = Some(true);
        p.shared_subscription_available = Some(true);
        p.topic_alias_maximum = Some(TOPIC_ALIAS_MAXIMUM);
        p.assigned_client_identifier = assigned;
    }
    // First, before any PUBREL a resumed session resends.
    session.out.insert(0, Packet::ConnAck(connack).into());
    let _active = ActiveSession::start(&metrics);
    metrics
        .session_setup_seconds
        .observe(started.elapsed().as_secs_f64());
    tracing::info!(elapsed = ?started.elapsed(), session_present, "session opened on Kafka");

    let end = session
        .serve(
            pipelined,
            inbound,
            &to_client,
            &metrics,
            &mut kicked,
            catch_up,
        )
        .await;
    session.finish(end, &mut kicked, &to_client, &metrics).await;
}

/// The stored session to resume, after reading the sessions topic up to its end.
async fn load(
    up: &KafkaUpstream,
    client_id: &str,
    clean_start: bool,
) -> Result<Option<SessionRecord>, UpstreamError> {
    up.sessions.sync(SYNC_DEADLINE).await?;
    let entry = up.sessions.get(client_id);
    match ending::resume(clean_start, entry.as_ref().map(|e| &e.value[..]), now_ms()) {
        Ok(resumed) => Ok(resumed),
        Err(error) => {
            tracing::warn!(%error, "ignoring an unreadable session record");
            Ok(None)
        }
    }
}

fn forget_local(up: &KafkaUpstream, client_id: &str, connection: &str) {
    let mut local = up.local.lock();
    if local
        .get(client_id)
        .is_some_and(|l| l.connection == connection)
    {
        local.remove(client_id);
    }
}

impl Session {
    async fn serve(
        &mut self,
        pipelined: Vec<Packet>,
        mut inbound: Incoming<ClientFrame>,
        to_client: &ToClient,
        metrics: &RelayMetrics,
        kicked: &mut mpsc::Receiver<()>,
        mut catch_up: Option<CatchUp>,
    ) -> End {
        let mut acks: Acks = FuturesOrdered::new();
        // MQTT 5 clients are read on, so one beyond its Receive Maximum is told (0x93); the
        // bound on acknowledgements still waiting for Kafka only stops a client that reuses
        // packet ids. 3.1.1 clients, which have no Receive Maximum, are just not read while
        // that many wait.
        let receive_maximum = usize::from(self.up.config.limits.receive_maximum);
        let read_while_waiting = match self.protocol {
            Protocol::V5 => 2 * receive_maximum,
            Protocol::V311 => receive_maximum,
        };
        let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for packet in pipelined {
            if let Some(end) = self.handle(packet, &mut acks, metrics).await {
                return end;
            }
        }
        loop {
            self.fill_window();
            if catch_up.is_none() {
                // The window may have opened (an acknowledgement came): take what is queued.
                self.drain_inbox();
            }
            if self.qos2_dirty && self.expiry > 0 {
                // The client must not see a QoS 2 PUBLISH or PUBREL whose state is not stored:
                // after a crash it is resent with the same packet id, never as a new message.
                if let Err(error) = self.write_record(None).await {
                    return End::Server(
                        ReasonCode::UNSPECIFIED_ERROR,
                        format!(
                            "cannot store QoS 2 delivery state: {}",
                            crate::error_chain(&error)
                        ),
                    );
                }
            }
            self.qos2_dirty = false;
            if !self.out.is_empty() {
                let frame = ServerFrame {
                    packets: std::mem::take(&mut self.out),
                    close: None,
                };
                if to_client.send(Ok(frame)).await.is_err() {
                    return End::Dropped;
                }
            }
            if catch_up.is_none() {
                // The inbox overflowed (the client was slow): once it is drained, read what was
                // left out from Kafka, then go on live. QoS >= 1 delivery pauses, nothing is lost.
                catch_up = self.resume_overflow();
            }
            let window_open = self.outbound.has_room();
            tokio::select! {
                frame = inbound.message(), if acks.len() < read_while_waiting => {
                    let frame = match frame {
                        Ok(Some(frame)) => frame,
                        Ok(None) | Err(_) => return End::Dropped,
                    };
                    for packet in frame.packets {
                        let packet = match Packet::try_from(packet) {
                            Ok(packet) => packet,
                            Err(error) => {
                                return End::Server(ReasonCode::MALFORMED_PACKET, error.to_string());
                            }
                        };
                        metrics.packet(Direction::Inbound, packet.packet_type());
                        if let Some(end) = self.handle(packet, &mut acks, metrics).await {
                            return end;
                        }
                    }
                    if let Some(close) = frame.close {
                        // r-proxy restarting is not the client's failure: no will.
                        return if close.reason_code == u32::from(ReasonCode::SERVER_SHUTTING_DOWN.0) {
                            End::RelayRestart
                        } else {
                            End::Dropped
                        };
                    }
                }
                Some((ack, result)) = acks.next() => {
                    if let Some(end) = self.acknowledge(ack, result, metrics).await {
                        return end;
                    }
                    // Kafka acknowledges batches: every PUBACK ready now goes in one frame.
                    while let Some(Some((ack, result))) = acks.next().now_or_never() {
                        if let Some(end) = self.acknowledge(ack, result, metrics).await {
                            return end;
                        }
                    }
                }
                delivery = async { catch_up.as_mut().expect("guarded").recv().await },
                    if catch_up.is_some() && window_open =>
                {
                    match delivery {
                        Some(Err(error)) => {
                            // Without what it missed the session cannot go on: the client
                            // reconnects and resumes from the stored progress.
                            return End::Server(ReasonCode::UNSPECIFIED_ERROR, format!("reading missed messages: {error}"));
                        }
                        Some(Ok(delivery)) => {
                            let key = (delivery.topic, delivery.partition);
                            self.catch_ups.delivered(key, delivery.offset);
                            self.deliver(&delivery, true);
                        }
                        None => {
                            catch_up = None;
                            self.catch_ups.finished();
                        }
                    }
                }
                _ = self.inbox.notify.notified(), if catch_up.is_none() && window_open => {
                    self.drain_inbox();
                }
                _ = checkpoint.tick(), if self.expiry > 0 => {
                    if let Err(error) = self.checkpoint().await {
                        tracing::warn!(error = crate::error_chain(&error), "cannot write delivery progress");
                    }
                }
                _ = kicked.recv() => return End::TakenOver,
                _ = to_client.closed() => return End::Dropped,
                _ = self.up.shutdown.cancelled() => return End::Shutdown,
            }
        }
    }
}
