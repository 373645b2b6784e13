//! One MQTT session served from Kafka: CONNECT/CONNACK, publishes produced to the messages
//! topic (acknowledged only once Kafka has them), subscriptions fed by the dispatcher, retained
//! messages, persistent state in the sessions topic, wills and takeover.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
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

use super::{Delivery, Inbox, KafkaUpstream, Local, now_ms};
use crate::core::ending::{
    End, WillPlan, expiry_after_disconnect, session_expiry, will_plan, will_publish,
};
use crate::core::flows::{Acked, Inbound, Outbound, Sent, TOPIC_ALIAS_MAXIMUM};
use crate::core::headers::{self, Message};
use crate::core::state::{
    SessionRecord, StoredOutgoing, StoredPending, StoredSubscription, StoredWill, VERSION,
};
use crate::core::subscriptions::{self, Checked};
use strait_relay::Opening;
use strait_relay::metrics::RelayMetrics;
use strait_relay::metrics::{ActiveSession, Direction};
use strait_relay::rules::refusal;

type ToClient = mpsc::Sender<Result<ServerFrame, Status>>;

/// Publishes the client may have in flight towards us (CONNACK Receive Maximum).
const RECEIVE_MAXIMUM: u16 = 256;
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
type Acks = FuturesOrdered<std::pin::Pin<Box<dyn Future<Output = (Ack, ProduceResult)> + Send>>>;

enum Ack {
    /// QoS 1: PUBACK.
    PubAck(u16),
    /// QoS 2: PUBREC (and remember the packet id).
    PubRec(u16),
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
    /// id when the catch-up reads them again: (topic, partition, offset) → packet id.
    qos2_resend: HashMap<(usize, i32, i64), u16>,
    /// Offsets of completed or released QoS 2 deliveries at or above the stored progress.
    qos2_done: HashMap<(usize, i32), BTreeSet<i64>>,
    /// QoS 2 delivery state changed: store it before the client sees the next packets.
    qos2_dirty: bool,
    /// QoS 2 PUBLISHes being written: packet id → (messages topic, partition, end offset before).
    qos2_pending: HashMap<u16, (String, i32, i64)>,
    /// Catch-up in progress: next offset it will deliver per (topic, partition).
    catching_up: HashMap<(usize, i32), i64>,
    /// Live deliveries below these offsets were read by the catch-up.
    live_from: HashMap<(usize, i32), i64>,
    /// Retained messages waiting for room in the client's receive window.
    pending: VecDeque<Publish>,
    last_checkpoint: Option<BTreeMap<String, BTreeMap<i32, i64>>>,
    last_write: std::time::Instant,
    /// The client acknowledged a delivery from Kafka since the last write.
    acked_since_write: bool,
    out: Vec<v1::Packet>,
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
        protocol,
        mut connect,
        pipelined,
        ..
    } = opening;
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
    let client_id = connect.client_id.clone();
    let expiry = session_expiry(protocol, &connect);
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
                error = format!("{error:#}"),
                "Kafka unavailable; refusing the client"
            );
            metrics.error("kafka_unavailable");
            forget_local(&up, &client_id, &connection);
            return refuse(ReasonCode::SERVER_UNAVAILABLE, format!("{error:#}")).await;
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
        inbound: Inbound::new(protocol, []),
        outbound: Outbound::new(protocol, &connect),
        qos2_resend: HashMap::new(),
        qos2_done: HashMap::new(),
        qos2_dirty: false,
        qos2_pending: HashMap::new(),
        catching_up: HashMap::new(),
        live_from: HashMap::new(),
        pending: VecDeque::new(),
        last_checkpoint: None,
        last_write: std::time::Instant::now(),
        acked_since_write: false,
        out: Vec::new(),
    };
    up.register(id, inbox);
    let mut catch_up = None;
    if let Some(record) = &resumed {
        session.inbound = Inbound::new(protocol, record.qos2_received.iter().copied());
        session.restore_qos2(record);
        for pending in &record.qos2_pending {
            session.qos2_pending.insert(
                pending.packet_id,
                (pending.topic.clone(), pending.partition, pending.from),
            );
        }
        for sub in &record.subscriptions {
            let _ = up.subscribe(id, &sub.filter);
            session
                .subscriptions
                .insert(sub.filter.clone(), sub.clone());
        }
        catch_up = session.start_catch_up(&record.offsets);
    }
    // The claim: written before CONNACK, so a replica serving this client id hands it over.
    if let Err(error) = session.write_record(None).await {
        tracing::warn!(
            error = format!("{error:#}"),
            "cannot write the session record"
        );
        metrics.error("kafka_unavailable");
        up.unregister(id, session.subscriptions.keys().cloned());
        forget_local(&up, &client_id, &connection);
        return refuse(ReasonCode::SERVER_UNAVAILABLE, format!("{error:#}")).await;
    }
    tracing::debug!(elapsed = ?started.elapsed(), "session claimed");
    let mut connack = ConnAck {
        session_present,
        ..Default::default()
    };
    if protocol == Protocol::V5 {
        let p = &mut connack.properties;
        p.receive_maximum = Some(RECEIVE_MAXIMUM);
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
    session.finish(end, &to_client, &metrics).await;
}

/// The stored session to resume, after reading the sessions topic up to its end.
async fn load(
    up: &KafkaUpstream,
    client_id: &str,
    clean_start: bool,
) -> anyhow::Result<Option<SessionRecord>> {
    up.sessions.sync(SYNC_DEADLINE).await?;
    if clean_start {
        return Ok(None);
    }
    let Some(entry) = up.sessions.get(client_id) else {
        return Ok(None);
    };
    match SessionRecord::decode(&entry.value) {
        Ok(record) if !record.expired(now_ms()) => Ok(Some(record)),
        Ok(_) => Ok(None),
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

/// Produces a PUBLISH (to the messages topic, and the retained topic when RETAIN is set).
/// Returns at once with the future of the Kafka acknowledgement.
pub(super) fn produce(
    up: &KafkaUpstream,
    publish: &Publish,
    client_id: &str,
) -> impl Future<Output = ProduceResult> + use<> {
    let (messages, partition) = up.target(&publish.topic);
    let headers = headers::encode(
        &publish.topic,
        publish.qos,
        publish.retain,
        &publish.properties,
        client_id,
        &messages,
    );
    let producer = if publish.qos == QoS::AtMostOnce {
        &up.qos0
    } else {
        &up.producer
    };
    let mut deliveries = Vec::with_capacity(2);
    deliveries.push(send(
        producer,
        &messages,
        &publish.topic,
        Some(&publish.payload),
        &headers,
        partition,
    ));
    if publish.retain {
        // An empty retained payload clears the topic: a tombstone.
        let payload = (!publish.payload.is_empty()).then_some(&publish.payload);
        deliveries.push(send(
            &up.producer,
            &up.config.topics.retained,
            &publish.topic,
            payload,
            &headers,
            None,
        ));
    }
    async move {
        for delivery in deliveries {
            delivery.await?;
        }
        Ok(())
    }
}

fn send(
    producer: &Producer,
    topic: &str,
    key: &str,
    payload: Option<&Bytes>,
    headers: &[(String, Vec<u8>)],
    partition: Option<i32>,
) -> impl Future<Output = ProduceResult> + use<> {
    let kafka_headers = owned_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let mut record = FutureRecord::to(topic).key(key).headers(kafka_headers);
    if let Some(payload) = payload {
        record = record.payload(payload.as_ref());
    }
    if let Some(partition) = partition {
        record = record.partition(partition);
    }
    let queued = producer
        .send_result(record)
        .map_err(|(error, _)| reason_for(&error));
    async move {
        match queued?.await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => {
                tracing::warn!(%error, "Kafka did not take a message");
                Err(reason_for(&error))
            }
            Err(_) => Err(ReasonCode::UNSPECIFIED_ERROR),
        }
    }
}

fn reason_for(error: &KafkaError) -> ReasonCode {
    match error.rdkafka_error_code() {
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize) => {
            ReasonCode::PACKET_TOO_LARGE
        }
        Some(RDKafkaErrorCode::QueueFull) => ReasonCode::QUOTA_EXCEEDED,
        _ => ReasonCode::UNSPECIFIED_ERROR,
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
        let mut checkpoint = tokio::time::interval(CHECKPOINT_EVERY);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for packet in pipelined {
            if let Some(end) = self.handle(packet, &mut acks).await {
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
                        format!("cannot store QoS 2 delivery state: {error:#}"),
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
                frame = inbound.message(), if acks.len() < usize::from(RECEIVE_MAXIMUM) => {
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
                        if let Some(end) = self.handle(packet, &mut acks).await {
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
                            self.catching_up.insert(key, delivery.offset + 1);
                            self.deliver(&delivery, true);
                        }
                        None => {
                            catch_up = None;
                            self.catching_up.clear();
                        }
                    }
                }
                _ = self.inbox.notify.notified(), if catch_up.is_none() && window_open => {
                    self.drain_inbox();
                }
                _ = checkpoint.tick(), if self.expiry > 0 => {
                    if let Err(error) = self.checkpoint().await {
                        tracing::warn!(error = format!("{error:#}"), "cannot write delivery progress");
                    }
                }
                _ = kicked.recv() => return End::TakenOver,
                _ = to_client.closed() => return End::Dropped,
                _ = self.up.shutdown.cancelled() => return End::Shutdown,
            }
        }
    }

    /// Handles one packet from the client; `Some` ends the session.
    async fn handle(&mut self, packet: Packet, acks: &mut Acks) -> Option<End> {
        match packet {
            Packet::Publish(mut publish) => {
                if let Err(violation) = self.inbound.resolve_topic(&mut publish) {
                    return Some(End::Server(violation.reason, violation.detail));
                }
                if self.up.routing.has_param_routes() {
                    let messages = self.up.routing.messages_topic(&publish.topic).into_owned();
                    if let Err(error) = self.up.ensure_routed(&messages).await {
                        // The produce fails in turn and says so to the client.
                        tracing::warn!(
                            error = format!("{error:#}"),
                            "cannot read routed topic {messages}"
                        );
                    }
                }
                match publish.qos {
                    QoS::AtMostOnce => {
                        // Handed to the producer now; nobody waits for Kafka's answer.
                        drop(produce(&self.up, &publish, &self.client_id));
                    }
                    QoS::AtLeastOnce => {
                        let delivery = produce(&self.up, &publish, &self.client_id);
                        let id = publish.packet_id;
                        acks.push_back(Box::pin(async move { (Ack::PubAck(id), delivery.await) }));
                    }
                    QoS::ExactlyOnce => {
                        let id = publish.packet_id;
                        if self.inbound.is_written(id) {
                            // A resend of a message Kafka already has: acknowledge, do not
                            // write it again.
                            acks.push_back(Box::pin(async move { (Ack::PubRec(id), Ok(())) }));
                        } else {
                            match self.qos2_intent(&publish).await {
                                Ok(true) => {
                                    // The first attempt reached Kafka before a crash.
                                    acks.push_back(Box::pin(
                                        async move { (Ack::PubRec(id), Ok(())) },
                                    ));
                                    return None;
                                }
                                Ok(false) => {}
                                Err(error) => {
                                    tracing::warn!(
                                        error = format!("{error:#}"),
                                        "cannot store QoS 2 intent"
                                    );
                                    let failed = Err(ReasonCode::UNSPECIFIED_ERROR);
                                    acks.push_back(Box::pin(
                                        async move { (Ack::PubRec(id), failed) },
                                    ));
                                    return None;
                                }
                            }
                            let delivery = produce(&self.up, &publish, &self.client_id);
                            acks.push_back(Box::pin(
                                async move { (Ack::PubRec(id), delivery.await) },
                            ));
                        }
                    }
                }
            }
            Packet::PubRel(rel) => {
                let comp = self.inbound.release(&rel);
                self.out.push(Packet::PubComp(comp).into());
            }
            Packet::PubAck(ack) => {
                let acked = self.outbound.puback(ack.packet_id);
                self.acknowledged(acked);
            }
            Packet::PubRec(rec) => {
                let acked = self.outbound.pubrec(&rec);
                self.acknowledged(acked);
            }
            Packet::PubComp(comp) => {
                let acked = self.outbound.pubcomp(comp.packet_id);
                self.acknowledged(acked);
            }
            Packet::Subscribe(subscribe) => return self.subscribe(subscribe).await,
            Packet::Unsubscribe(unsubscribe) => {
                let mut reason_codes = Vec::with_capacity(unsubscribe.filters.len());
                for filter in &unsubscribe.filters {
                    if self.subscriptions.remove(filter).is_some() {
                        self.up.unsubscribe(self.id, filter);
                        reason_codes.push(ReasonCode::SUCCESS);
                    } else {
                        reason_codes.push(ReasonCode::NO_SUBSCRIPTION_EXISTED);
                    }
                }
                if self.expiry > 0
                    && let Err(error) = self.write_record(None).await
                {
                    tracing::warn!(error = format!("{error:#}"), "cannot store the unsubscribe");
                    reason_codes.fill(ReasonCode::UNSPECIFIED_ERROR);
                }
                self.out.push(
                    Packet::UnsubAck(UnsubAck {
                        packet_id: unsubscribe.packet_id,
                        reason_codes,
                        ..Default::default()
                    })
                    .into(),
                );
            }
            Packet::PingReq => self.out.push(Packet::PingResp.into()),
            Packet::Disconnect(disconnect) => {
                self.expiry = expiry_after_disconnect(
                    self.expiry,
                    disconnect.properties.session_expiry_interval,
                );
                return Some(End::Disconnect(disconnect.reason_code));
            }
            Packet::Auth(_) => {
                return Some(End::Server(
                    ReasonCode::BAD_AUTHENTICATION_METHOD,
                    "enhanced authentication is not supported".into(),
                ));
            }
            other => {
                return Some(End::Server(
                    ReasonCode::PROTOCOL_ERROR,
                    format!("unexpected {} from a client", other.name()),
                ));
            }
        }
        None
    }

    async fn acknowledge(
        &mut self,
        ack: Ack,
        result: ProduceResult,
        metrics: &RelayMetrics,
    ) -> Option<End> {
        if let Err(reason) = result {
            metrics.error("kafka_produce_failed");
            if reason == ReasonCode::PACKET_TOO_LARGE {
                // Kafka's record limit is below the packet size: PUBACK/PUBREC cannot carry
                // 0x95, so the session ends with it, as for any packet that is too large.
                return Some(End::Server(
                    reason,
                    "message larger than Kafka accepts".into(),
                ));
            }
            if self.protocol == Protocol::V311 {
                // 3.1.1 cannot refuse a PUBLISH: close without acknowledging it.
                return Some(End::Server(reason, "Kafka did not take the message".into()));
            }
        }
        let reason_code = result.err().unwrap_or(ReasonCode::SUCCESS);
        match ack {
            Ack::PubAck(packet_id) => self.out.push(
                Packet::PubAck(PubAck {
                    packet_id,
                    reason_code,
                    ..Default::default()
                })
                .into(),
            ),
            Ack::PubRec(packet_id) => {
                self.qos2_pending.remove(&packet_id);
                if !reason_code.is_error() && self.inbound.written(packet_id) && self.expiry > 0 {
                    // The packet id must survive a reconnect to another replica before PUBREC,
                    // or a resent PUBLISH would be written twice.
                    if let Err(error) = self.write_record(None).await {
                        tracing::warn!(error = format!("{error:#}"), "cannot store QoS 2 state");
                        self.inbound.unwritten(packet_id);
                        return Some(End::Server(
                            ReasonCode::UNSPECIFIED_ERROR,
                            "cannot store QoS 2 state".into(),
                        ));
                    }
                }
                self.out.push(
                    Packet::PubRec(PubRec {
                        packet_id,
                        reason_code,
                        ..Default::default()
                    })
                    .into(),
                )
            }
        }
        None
    }

    async fn subscribe(&mut self, subscribe: mqtt::Subscribe) -> Option<End> {
        let subscription_id = subscribe.properties.subscription_identifier;
        let mut reason_codes = Vec::with_capacity(subscribe.subscriptions.len());
        let mut retained_for = Vec::new();
        for sub in &subscribe.subscriptions {
            let shared = match subscriptions::check(sub) {
                Ok(Checked::Accepted { shared }) => shared,
                Ok(Checked::Refused(code)) => {
                    reason_codes.push(code);
                    continue;
                }
                Err(violation) => return Some(End::Server(violation.reason, violation.detail)),
            };
            let stored = StoredSubscription::new(sub, subscription_id);
            let new = self
                .subscriptions
                .insert(sub.filter.clone(), stored)
                .is_none();
            if new && let Some(mut ready) = self.up.subscribe(self.id, &sub.filter) {
                // SUBACK once the group consumer reads: nothing published after it is missed.
                let joined = tokio::time::timeout(SYNC_DEADLINE, ready.wait_for(|r| *r)).await;
                if !matches!(joined, Ok(Ok(_))) {
                    tracing::warn!(
                        filter = sub.filter,
                        "shared subscription consumer not ready"
                    );
                }
            }
            if subscriptions::sends_retained(shared, sub.options.retain_handling, new) {
                retained_for.push(sub.filter.clone());
            }
            reason_codes.push(ReasonCode(sub.options.qos as u8));
        }
        if self.expiry > 0
            && let Err(error) = self.write_record(None).await
        {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot store the subscription"
            );
            for code in reason_codes.iter_mut().filter(|c| !c.is_error()) {
                *code = ReasonCode::UNSPECIFIED_ERROR;
            }
            retained_for.clear();
        }
        subscriptions::suback_codes(self.protocol, &mut reason_codes);
        self.out.push(
            Packet::SubAck(SubAck {
                packet_id: subscribe.packet_id,
                reason_codes,
                ..Default::default()
            })
            .into(),
        );
        if !retained_for.is_empty() {
            if let Err(error) = self.up.retained.sync(SYNC_DEADLINE).await {
                tracing::warn!(error = format!("{error:#}"), "retained messages not read");
            }
            let now = now_ms();
            let entries = self
                .up
                .retained
                .select(|topic| retained_for.iter().any(|f| mqtt::topic::matches(f, topic)));
            for (topic, entry) in entries {
                let Ok(message) = headers::decode(
                    Some(topic.as_bytes()),
                    entry.value.clone(),
                    entry
                        .headers
                        .iter()
                        .map(|(n, v)| (n.as_str(), v.as_slice())),
                ) else {
                    continue;
                };
                for filter in &retained_for {
                    if !mqtt::topic::matches(filter, &topic) {
                        continue;
                    }
                    let Some(sub) = self.subscriptions.get(filter) else {
                        continue;
                    };
                    if let Some(publish) =
                        self.to_publish(&message, entry.timestamp_ms, now, &[sub])
                    {
                        let mut publish = publish;
                        publish.retain = true;
                        self.pending.push_back(publish);
                    }
                }
            }
        }
        None
    }

    /// The PUBLISH this subscriber gets (see [`subscriptions::to_publish`]).
    fn to_publish(
        &self,
        message: &Message,
        timestamp_ms: i64,
        now_ms: i64,
        matching: &[&StoredSubscription],
    ) -> Option<Publish> {
        subscriptions::to_publish(&self.client_id, message, timestamp_ms, now_ms, matching)
    }

    /// Sends a delivery from the dispatcher or the catch-up.
    fn deliver(&mut self, delivery: &Arc<Delivery>, from_catch_up: bool) {
        if delivery.shared.is_some() {
            return self.deliver_shared(delivery);
        }
        let key = (delivery.topic, delivery.partition);
        if !from_catch_up
            && self
                .live_from
                .get(&key)
                .is_some_and(|from| delivery.offset < *from)
        {
            return;
        }
        if from_catch_up && delivery.message.qos == QoS::AtMostOnce {
            return;
        }
        // Records from the dispatcher or a catch-up are for the plain subscriptions (shared
        // ones, whose records other members may have had, are not caught up).
        let matching = self.matching(&delivery.message.topic, false);
        if matching.is_empty() {
            return;
        }
        let Some(publish) = self.to_publish(
            &delivery.message,
            delivery.timestamp_ms,
            now_ms(),
            &matching,
        ) else {
            return;
        };
        let source = (delivery.topic, delivery.partition, delivery.offset);
        if from_catch_up
            && self
                .qos2_done
                .get(&(source.0, source.1))
                .is_some_and(|done| done.contains(&source.2))
        {
            return;
        }
        let mut publish = publish;
        let resend = self.qos2_resend.remove(&source);
        if resend.is_some() && publish.qos == QoS::ExactlyOnce {
            publish.dup = true;
        }
        self.send_publish_as(publish, Some(source), resend, None);
    }

    /// The subscriptions, shared or plain, whose filter matches `topic`.
    fn matching(&self, topic: &str, shared: bool) -> Vec<&StoredSubscription> {
        self.subscriptions
            .values()
            .filter(|s| match mqtt::topic::parse_shared(&s.filter) {
                Some((_, inner)) => shared && mqtt::topic::matches(inner, topic),
                None => !shared && mqtt::topic::matches(&s.filter, topic),
            })
            .collect()
    }

    /// Sends a record a shared subscription's group consumer gave this member. It is not part
    /// of the session's progress: the group commits its offset once it is delivered.
    fn deliver_shared(&mut self, delivery: &Arc<Delivery>) {
        let matching = self.matching(&delivery.message.topic, true);
        if matching.is_empty() {
            // Unsubscribed meanwhile: another member delivers it.
            delivery.clone().give_back();
            return;
        }
        match self.to_publish(
            &delivery.message,
            delivery.timestamp_ms,
            now_ms(),
            &matching,
        ) {
            Some(publish) => self.send_publish_as(publish, None, None, Some(delivery.clone())),
            // Expired: nobody gets it.
            None => delivery.delivered(),
        }
    }

    fn send_publish(&mut self, publish: Publish, source: Option<(usize, i32, i64)>) {
        self.send_publish_as(publish, source, None, None);
    }

    /// Sends a PUBLISH; `packet_id` reuses a stored one (a QoS 2 resend); `shared` is the
    /// shared subscription's record it carries.
    fn send_publish_as(
        &mut self,
        publish: Publish,
        source: Option<(usize, i32, i64)>,
        packet_id: Option<u16>,
        shared: Option<Arc<Delivery>>,
    ) {
        let qos2_from_kafka = publish.qos == QoS::ExactlyOnce && source.is_some();
        let resend = &self.qos2_resend;
        let reserved = |id| resend.values().any(|r| *r == id);
        match self
            .outbound
            .send(publish, source, packet_id, shared, reserved)
        {
            Sent::TooLarge(shared) => {
                // The client cannot take it: as if delivered (MQTT-3.1.2-25).
                if let Some(shared) = shared {
                    shared.delivered();
                }
            }
            Sent::Publish { publish, delivered } => {
                if let Some(shared) = delivered {
                    // QoS 0: sent is delivered.
                    shared.delivered();
                }
                if qos2_from_kafka {
                    self.qos2_dirty = true;
                }
                self.out.push(Packet::Publish(*publish).into());
            }
        }
    }

    /// What an acknowledgement from the client settles: a shared record delivered, delivery
    /// progress moved, a QoS 2 offset done (stored before the client sees more), PUBREL due.
    fn acknowledged(&mut self, acked: Acked<Arc<Delivery>>) {
        if let Some(shared) = &acked.shared {
            shared.delivered();
        }
        self.acked_since_write |= acked.from_kafka;
        if let Some((t, p, offset)) = acked.released {
            self.qos2_done.entry((t, p)).or_default().insert(offset);
            self.qos2_dirty = true;
        }
        if let Some(rel) = acked.reply {
            self.out.push(Packet::PubRel(rel).into());
        }
    }

    /// Sends queued retained messages while the client's receive window has room.
    fn fill_window(&mut self) {
        while self.outbound.has_room() {
            let Some(publish) = self.pending.pop_front() else {
                break;
            };
            self.send_publish(publish, None);
        }
    }

    fn drain_inbox(&mut self) {
        while self.outbound.has_room() && self.out.len() < 256 {
            let Some(delivery) = self.inbox.state.lock().items.pop_front() else {
                break;
            };
            self.deliver(&delivery, false);
        }
        if !self.inbox.state.lock().items.is_empty() && self.outbound.has_room() {
            // More to do: come back on the next turn.
            self.inbox.notify.notify_one();
        }
    }

    /// Starts reading what the session missed: records after its stored offsets up to the
    /// dispatcher's current position.
    fn start_catch_up(
        &mut self,
        offsets: &BTreeMap<String, BTreeMap<i32, i64>>,
    ) -> Option<CatchUp> {
        let now = self.up.positions();
        let mut ranges = Vec::new();
        for (t, ends) in now.iter().enumerate() {
            let Some(stored) = offsets.get(&self.up.topics.name(t)) else {
                continue;
            };
            for (p, end) in ends.iter().enumerate() {
                let p = p as i32;
                if let Some(from) = stored.get(&p) {
                    ranges.push((t, p, *from, *end));
                }
            }
        }
        self.catch_up(ranges)
    }

    /// After an overflow, once the inbox is drained: a catch-up over what was dropped.
    fn resume_overflow(&mut self) -> Option<CatchUp> {
        // Positions first: every record before them is in the inbox or in `overflow`.
        let now = self.up.positions();
        let overflow = {
            let mut state = self.inbox.state.lock();
            if state.overflow.is_empty() || !state.items.is_empty() {
                return None;
            }
            std::mem::take(&mut state.overflow)
        };
        tracing::debug!(
            partitions = overflow.len(),
            "delivery queue overflowed; reading the rest from Kafka"
        );
        let mut later = None;
        let ranges = overflow
            .into_iter()
            .map(|((t, p), from)| {
                // A topic added since `now` was read: a later reading covers it as well.
                let positions = match now.get(t) {
                    Some(_) => &now,
                    None => later.get_or_insert_with(|| self.up.positions()),
                };
                (t, p, from, positions[t][p as usize])
            })
            .collect();
        self.catch_up(ranges)
    }

    /// Reads `ranges` (topic index, partition, from, to) for this session; live deliveries below
    /// `to` are skipped from now on.
    fn catch_up(&mut self, ranges: Vec<(usize, i32, i64, i64)>) -> Option<CatchUp> {
        let mut reads = Vec::new();
        for (t, p, from, to) in ranges {
            self.live_from.insert((t, p), to);
            if from < to {
                reads.push((t, self.up.topics.name(t), p, from, to));
                self.catching_up.insert((t, p), from);
            }
        }
        if reads.is_empty() {
            return None;
        }
        let (tx, rx) = mpsc::channel(256);
        let clients = self.up.clients.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(error) = catch_up(&clients, reads, &tx) {
                tracing::warn!(error = format!("{error:#}"), "catch-up failed");
                let _ = tx.blocking_send(Err(format!("{error:#}")));
            }
        });
        Some(rx)
    }

    /// Per messages topic and partition, the offset this session's delivery would resume from.
    fn progress(&self) -> BTreeMap<String, BTreeMap<i32, i64>> {
        // The positions first: every record before them is in the inbox or was handled.
        let positions = self.up.positions();
        let mut progress: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
        let mut floor: HashMap<(usize, i32), i64> = HashMap::new();
        {
            let state = self.inbox.state.lock();
            for item in &state.items {
                if item.message.qos != QoS::AtMostOnce && item.shared.is_none() {
                    lower(&mut floor, (item.topic, item.partition), item.offset);
                }
            }
            for (key, offset) in &state.overflow {
                lower(&mut floor, *key, *offset);
            }
        }
        for (_, outgoing) in self.outbound.in_flight() {
            if let Some((t, p, offset)) = outgoing.source {
                lower(&mut floor, (t, p), offset);
            }
        }
        for (key, offset) in &self.catching_up {
            lower(&mut floor, *key, *offset);
        }
        for (t, p, offset) in self.qos2_resend.keys() {
            lower(&mut floor, (*t, *p), *offset);
        }
        for (t, topic_positions) in positions.iter().enumerate() {
            let partitions = progress.entry(self.up.topics.name(t)).or_default();
            for (p, position) in topic_positions.iter().enumerate() {
                let p = p as i32;
                let at = floor
                    .get(&(t, p))
                    .map_or(*position, |f| (*f).min(*position));
                partitions.insert(p, at);
            }
        }
        progress
    }

    /// Before a QoS 2 PUBLISH of a persistent session is written: if it is a resend of one
    /// whose write may have reached Kafka before a crash, look for it (`Ok(true)`: it is
    /// there); otherwise store where it goes and the partition's end offset first.
    async fn qos2_intent(&mut self, publish: &Publish) -> anyhow::Result<bool> {
        let (messages, Some(partition)) = self.up.target(&publish.topic) else {
            return Ok(false);
        };
        if self.expiry == 0 {
            return Ok(false);
        }
        if let Some((topic, p, from)) = self.qos2_pending.get(&publish.packet_id).cloned() {
            let clients = self.up.clients.clone();
            let end = self.up.end_offset(&topic, p).await?;
            let (key, payload, client) = (
                publish.topic.clone(),
                publish.payload.clone(),
                self.client_id.clone(),
            );
            let found = tokio::task::spawn_blocking(move || {
                find_written(&clients, &topic, p, from, end, &key, &payload, &client)
            })
            .await??;
            if found {
                return Ok(true);
            }
        }
        let from = self.up.end_offset(&messages, partition).await?;
        self.qos2_pending
            .insert(publish.packet_id, (messages, partition, from));
        self.write_record(None).await?;
        Ok(false)
    }

    fn stored_qos2_out(&self) -> Vec<StoredOutgoing> {
        let mut stored: Vec<StoredOutgoing> = self
            .outbound
            .in_flight()
            .filter(|(_, o)| o.qos == QoS::ExactlyOnce)
            .filter_map(|(id, o)| {
                let (t, p, offset) = o.source?;
                Some(StoredOutgoing {
                    packet_id: *id,
                    topic: self.up.topics.name(t),
                    partition: p,
                    offset,
                    released: o.released,
                })
            })
            .collect();
        for ((t, p, offset), id) in &self.qos2_resend {
            stored.push(StoredOutgoing {
                packet_id: *id,
                topic: self.up.topics.name(*t),
                partition: *p,
                offset: *offset,
                released: false,
            });
        }
        stored.sort_by_key(|o| o.packet_id);
        stored
    }

    /// Takes back the QoS 2 delivery state of a resumed session: PUBREL again for released
    /// ones, the same packet id (DUP) for the others when the catch-up reads them.
    fn restore_qos2(&mut self, record: &SessionRecord) {
        let index = |topic: &str| self.up.topics.index(topic);
        for (topic, partitions) in &record.qos2_done {
            let Some(t) = index(topic) else { continue };
            for (p, offsets) in partitions {
                self.qos2_done
                    .entry((t, *p))
                    .or_default()
                    .extend(offsets.iter().copied());
            }
        }
        for out in &record.qos2_out {
            let Some(t) = index(&out.topic) else { continue };
            let source = (t, out.partition, out.offset);
            if out.released {
                self.outbound.restore_released(out.packet_id, source);
                self.qos2_done
                    .entry((t, out.partition))
                    .or_default()
                    .insert(out.offset);
                self.out.push(
                    Packet::PubRel(PubRel {
                        packet_id: out.packet_id,
                        ..Default::default()
                    })
                    .into(),
                );
            } else {
                self.qos2_resend.insert(source, out.packet_id);
            }
        }
    }

    fn record(&self, disconnected_at_ms: Option<i64>) -> SessionRecord {
        let qos2 = self.inbound.qos2_received();
        let mut record = SessionRecord {
            version: VERSION,
            owner: self.up.instance.clone(),
            connection: self.connection.clone(),
            connected_at_ms: self.connected_at_ms,
            disconnected_at_ms,
            expiry: self.expiry,
            subscriptions: self.subscriptions.values().cloned().collect(),
            offsets: self.progress(),
            qos2_received: qos2,
            will: self.will.as_ref().map(StoredWill::from_will),
            qos2_out: self.stored_qos2_out(),
            qos2_done: BTreeMap::new(),
            qos2_pending: self
                .qos2_pending
                .iter()
                .map(|(id, (topic, partition, from))| StoredPending {
                    packet_id: *id,
                    topic: topic.clone(),
                    partition: *partition,
                    from: *from,
                })
                .collect(),
        };
        // Completed deliveries below the progress are covered by it.
        for ((t, p), done) in &self.qos2_done {
            let topic = &self.up.topics.name(*t);
            let from = record
                .offsets
                .get(topic)
                .and_then(|o| o.get(p))
                .copied()
                .unwrap_or(0);
            let kept: Vec<i64> = done.range(from..).copied().collect();
            if !kept.is_empty() {
                record
                    .qos2_done
                    .entry(topic.clone())
                    .or_default()
                    .insert(*p, kept);
            }
        }
        record
    }

    async fn write_record(&mut self, disconnected_at_ms: Option<i64>) -> anyhow::Result<()> {
        let record = self.record(disconnected_at_ms);
        let offsets = record.offsets.clone();
        // Completed QoS 2 deliveries below the progress need no memory any more.
        for ((t, p), done) in &mut self.qos2_done {
            let from = offsets
                .get(&self.up.topics.name(*t))
                .and_then(|o| o.get(p))
                .copied()
                .unwrap_or(0);
            done.retain(|offset| *offset >= from);
        }
        self.qos2_done.retain(|_, done| !done.is_empty());
        put_session(&self.up, &self.client_id, Some(record.encode())).await?;
        self.last_checkpoint = Some(offsets);
        self.last_write = std::time::Instant::now();
        self.acked_since_write = false;
        Ok(())
    }

    /// Stores delivery progress: within a second of acknowledgements (so a crash repeats
    /// little), otherwise at most every `IDLE_CHECKPOINT` (progress moving only because other
    /// clients' traffic passed needs no write per second per session).
    async fn checkpoint(&mut self) -> anyhow::Result<()> {
        if !self.acked_since_write && self.last_write.elapsed() < IDLE_CHECKPOINT {
            return Ok(());
        }
        if self.last_checkpoint.as_ref() == Some(&self.progress()) {
            return Ok(());
        }
        self.write_record(None).await
    }

    async fn finish(mut self, end: End, to_client: &ToClient, metrics: &RelayMetrics) {
        let close = end.close();
        tracing::info!(reason = end.label(), "session ended");
        if let Some((reason, detail)) = &close {
            if matches!(end, End::Server(..)) {
                metrics.error("session_error");
            }
            let frame = ServerFrame {
                packets: std::mem::take(&mut self.out),
                close: Some(v1::SessionClose {
                    reason_code: reason.0.into(),
                    detail: detail.clone(),
                }),
            };
            let _ = to_client.send(Ok(frame)).await;
        }
        self.up
            .unregister(self.id, self.subscriptions.keys().cloned());
        self.give_back_shared();
        let plan = will_plan(self.will.as_ref(), &end, self.expiry);
        let will = self.will.take().filter(|_| plan != WillPlan::None);
        if end == End::TakenOver {
            // The new connection owns the session record now; a will without delay is
            // published, one with a delay is cancelled (see `will_plan`).
            if let Some(will) = will {
                let delivery = produce(&self.up, &will_publish(&will), &self.client_id);
                tokio::spawn(async move {
                    if let Err(reason) = delivery.await {
                        tracing::warn!(reason = reason.name(), "will not published");
                    }
                });
            }
            return;
        }
        forget_local(&self.up, &self.client_id, &self.connection);
        let stored = if self.expiry == 0 {
            None
        } else {
            Some(self.record(Some(now_ms())).encode())
        };
        // A newer connection (maybe on another replica) may own the record by now.
        let still_ours = self.up.sessions.get(&self.client_id).is_none_or(|entry| {
            SessionRecord::decode(&entry.value).map_or(true, |r| r.connection == self.connection)
        });
        if !still_ours {
            tracing::debug!("session record already taken over; not writing the end");
        } else if let Err(error) = put_session(&self.up, &self.client_id, stored).await {
            tracing::warn!(
                error = format!("{error:#}"),
                "cannot store the session's end"
            );
        }
        if let Some(will) = will {
            let delay = match plan {
                WillPlan::After(delay) => delay,
                WillPlan::Now | WillPlan::None => 0,
            };
            let up = self.up.clone();
            let client_id = self.client_id.clone();
            let connection = self.connection.clone();
            tokio::spawn(async move {
                if delay > 0 {
                    tokio::time::sleep(Duration::from_secs(delay.into())).await;
                    // A reconnect within the delay cancels the will.
                    if up.local.lock().contains_key(&client_id) {
                        return;
                    }
                    if let Some(entry) = up.sessions.get(&client_id)
                        && SessionRecord::decode(&entry.value)
                            .is_ok_and(|r| r.connection != connection)
                    {
                        return;
                    }
                }
                let publish = will_publish(&will);
                match produce(&up, &publish, &client_id).await {
                    Ok(()) => tracing::info!(client_id, topic = &*publish.topic, "will published"),
                    Err(reason) => {
                        tracing::warn!(client_id, reason = reason.name(), "will not published")
                    }
                }
            });
        }
    }
}

impl Session {
    /// Shared subscriptions' records this session holds undelivered (unacknowledged or still
    /// queued) go to other members (MQTT 4.8.2): the group only commits delivered ones.
    fn give_back_shared(&mut self) {
        for outgoing in self.outbound.in_flight_mut() {
            if let Some(shared) = outgoing.shared.take() {
                shared.give_back();
            }
        }
        let queued = std::mem::take(&mut self.inbox.state.lock().items);
        for delivery in queued {
            delivery.give_back();
        }
    }
}

fn lower(floor: &mut HashMap<(usize, i32), i64>, key: (usize, i32), offset: i64) {
    let entry = floor.entry(key).or_insert(offset);
    *entry = (*entry).min(offset);
}

/// Writes (or with `None` deletes) a client's session record, acks=all.
pub(super) async fn put_session(
    up: &KafkaUpstream,
    client_id: &str,
    value: Option<Vec<u8>>,
) -> anyhow::Result<()> {
    let mut record = FutureRecord::<str, [u8]>::to(&up.config.topics.sessions).key(client_id);
    if let Some(value) = &value {
        record = record.payload(value.as_slice());
    }
    match up.producer.send(record, Duration::from_secs(5)).await {
        Ok(_) => Ok(()),
        Err((error, _)) => Err(anyhow::anyhow!(
            "writing the session of {client_id}: {error}"
        )),
    }
}

/// Reads `ranges` (topic index, topic, partition, from, to) and sends every record to `tx`.
fn catch_up(
    clients: &KafkaClients,
    ranges: Vec<(usize, String, i32, i64, i64)>,
    tx: &mpsc::Sender<Result<Arc<Delivery>, String>>,
) -> anyhow::Result<()> {
    let consumer = clients.reader("catch-up reader")?;
    let mut assignment = TopicPartitionList::new();
    let mut left: HashMap<(String, i32), (usize, i64)> = HashMap::new();
    for (t, topic, p, from, to) in ranges {
        assignment.add_partition_offset(&topic, p, Offset::Offset(from))?;
        left.insert((topic, p), (t, to));
    }
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let every = Duration::from_millis(200);
    poll_loop(&consumer, "catch-up reader", every, |polled| {
        if left.is_empty() {
            return ControlFlow::Break(Ok(()));
        }
        if std::time::Instant::now() >= deadline {
            return ControlFlow::Break(Err(anyhow::anyhow!("catch-up took over 60 s")));
        }
        let Polled::Record(record) = polled else {
            return ControlFlow::Continue(());
        };
        let key = (record.topic().to_string(), record.partition());
        let Some((t, to)) = left.get(&key).copied() else {
            return ControlFlow::Continue(());
        };
        if record.offset() >= to {
            left.remove(&key);
            return ControlFlow::Continue(());
        }
        let headers = record_headers(&record);
        if let Ok(message) = headers::decode(
            record.key(),
            Bytes::copy_from_slice(record.payload().unwrap_or_default()),
            headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())),
        ) {
            let delivery = Arc::new(Delivery {
                topic: t,
                partition: record.partition(),
                offset: record.offset(),
                timestamp_ms: record.timestamp().to_millis().unwrap_or_else(now_ms),
                message,
                shared: None,
            });
            if tx.blocking_send(Ok(delivery)).is_err() {
                return ControlFlow::Break(Ok(()));
            }
        }
        if record.offset() + 1 >= to {
            left.remove(&key);
        }
        ControlFlow::Continue(())
    })
}

/// Whether `topic`/`partition` holds, between `from` and `end`, the record of `client`'s PUBLISH
/// of `payload` to MQTT topic `key`.
#[allow(clippy::too_many_arguments)]
fn find_written(
    clients: &KafkaClients,
    topic: &str,
    partition: i32,
    from: i64,
    end: i64,
    key: &str,
    payload: &[u8],
    publisher: &str,
) -> anyhow::Result<bool> {
    if from >= end {
        return Ok(false);
    }
    let consumer = clients.reader("QoS 2 resend check")?;
    let mut assignment = TopicPartitionList::new();
    assignment.add_partition_offset(topic, partition, Offset::Offset(from))?;
    consumer.assign(&assignment)?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let every = Duration::from_millis(200);
    poll_loop(&consumer, "QoS 2 resend check", every, |polled| {
        if std::time::Instant::now() >= deadline {
            return ControlFlow::Break(Err(anyhow::anyhow!(
                "reading {topic}/{partition} from {from} to {end} took over 30 s"
            )));
        }
        let Polled::Record(record) = polled else {
            return ControlFlow::Continue(());
        };
        if record.key() == Some(key.as_bytes())
            && record.payload().unwrap_or_default() == payload
            && has_header(&record, headers::LOCAL, publisher.as_bytes())
        {
            return ControlFlow::Break(Ok(true));
        }
        if record.offset() + 1 >= end {
            return ControlFlow::Break(Ok(false));
        }
        ControlFlow::Continue(())
    })
}
