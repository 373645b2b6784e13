//! Writing to Kafka for a session: a PUBLISH becomes a record, acknowledged to the client
//! (PUBACK, PUBREC) once Kafka has it.

use super::*;

impl Session {
    pub(super) async fn acknowledge(
        &mut self,
        ack: Ack,
        result: ProduceResult,
        metrics: &RelayMetrics,
    ) -> Option<End> {
        let ack = match ack {
            Ack::Refused(ack, detail) => {
                if self.protocol == Protocol::V311 {
                    // 3.1.1 cannot refuse a PUBLISH: close without acknowledging it.
                    return Some(End::Server(result.err()?, detail));
                }
                *ack
            }
            ack => {
                if result.is_err() {
                    metrics.error("kafka_produce_failed");
                }
                ack
            }
        };
        if let Err(reason) = result {
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
            Ack::PubAck(packet_id) => {
                self.inbound.answered(packet_id);
                self.out.push(
                    Packet::PubAck(PubAck {
                        packet_id,
                        reason_code,
                        ..Default::default()
                    })
                    .into(),
                );
            }
            Ack::Refused(..) => unreachable!("unwrapped above"),
            Ack::PubRec(packet_id) => {
                let persistent = self.expiry > 0;
                let accepted = !reason_code.is_error();
                let written =
                    self.intents
                        .answered(&mut self.inbound, packet_id, accepted, persistent);
                if let Qos2Written::StoreThenPubRec(undo) = written {
                    // The packet id must survive a reconnect to another replica before PUBREC,
                    // or a resent PUBLISH would be written twice.
                    if let Err(error) = self.write_record(None).await {
                        tracing::warn!(
                            error = crate::error_chain(&error),
                            "cannot store QoS 2 state"
                        );
                        // Until "written" is stored, the intent is what lets a resend find
                        // this write: the session's last record must keep it.
                        self.intents.undo(&mut self.inbound, undo);
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
}

/// Refuses a PUBLISH before anything is produced: the acknowledgement carries `reason`, in
/// order with those still waiting for Kafka; a QoS 0 one is dropped (and was counted).
pub(super) fn refuse_publish(
    publish: &Publish,
    acks: &mut Acks,
    reason: ReasonCode,
    detail: String,
) {
    let ack = match publish.qos {
        QoS::AtMostOnce => return,
        QoS::AtLeastOnce => Ack::PubAck(publish.packet_id),
        QoS::ExactlyOnce => Ack::PubRec(publish.packet_id),
    };
    let refused = (Ack::Refused(Box::new(ack), detail), Err(reason));
    acks.push_back(Box::pin(async move { refused }));
}

/// Produces a PUBLISH (to the messages topic, and the retained topic when RETAIN is set)
/// through the batch lane. Returns at once with the future of the Kafka acknowledgement.
pub(crate) fn produce(
    up: &KafkaUpstream,
    publish: &Publish,
    client_id: &str,
) -> impl Future<Output = ProduceResult> + use<> {
    produce_on(up, publish, client_id, Lane::Batch)
}

/// [`produce`] through `lane` (QoS 0 always goes through the QoS 0 producer).
pub(crate) fn produce_on(
    up: &KafkaUpstream,
    publish: &Publish,
    client_id: &str,
    lane: Lane,
) -> impl Future<Output = ProduceResult> + use<> {
    let (messages, partition, headers) = placed(up, publish, client_id);
    let producer = match (publish.qos, lane) {
        (QoS::AtMostOnce, _) => &up.qos0,
        (_, Lane::Quick) => up.quick.as_ref().unwrap_or(&up.producer),
        (_, Lane::Batch) => &up.producer,
    };
    // The load only picks a lane when there is a quick one.
    if publish.qos != QoS::AtMostOnce && up.quick.is_some() {
        up.load.note(now_ms() as u64);
    }
    let message = send(
        up,
        producer,
        Produced {
            kind: RecordKind::Messages,
            qos: publish.qos,
            topic: &messages,
            partition,
        },
        &publish.topic,
        Some(&publish.payload),
        &headers,
    );
    // The retained record follows the message through the same producer, so a client's
    // retained messages on one topic stay in order too.
    let retained = publish
        .retain
        .then(|| retained_record(up, producer, publish, &headers));
    async move {
        message.await?;
        if let Some(retained) = retained {
            retained.await?;
        }
        Ok(())
    }
}

/// The retained record of a RETAIN PUBLISH (an empty payload clears the topic: a tombstone).
fn retained_record(
    up: &KafkaUpstream,
    producer: &Producer,
    publish: &Publish,
    headers: &[(String, Vec<u8>)],
) -> impl Future<Output = ProduceResult> + use<> {
    let payload = (!publish.payload.is_empty()).then_some(&publish.payload);
    send(
        up,
        producer,
        Produced {
            kind: RecordKind::Retained,
            qos: publish.qos,
            topic: &up.config.topics.retained,
            partition: None,
        },
        &publish.topic,
        payload,
        headers,
    )
}

/// Writes only the retained record of a RETAIN PUBLISH whose messages record is in Kafka.
pub(super) fn produce_retained(
    up: &KafkaUpstream,
    publish: &Publish,
    client_id: &str,
) -> impl Future<Output = ProduceResult> + use<> {
    let (_, _, headers) = placed(up, publish, client_id);
    retained_record(up, &up.producer, publish, &headers)
}

/// Record headers, name and value.
type Headers = Vec<(String, Vec<u8>)>;

/// Where a PUBLISH goes (its messages topic and, when known, partition) and its records'
/// headers in Zilla's layout.
fn placed(
    up: &KafkaUpstream,
    publish: &Publish,
    client_id: &str,
) -> (String, Option<i32>, Headers) {
    let (messages, partition) = up.target(&publish.topic);
    let headers = headers::encode(
        &publish.topic,
        publish.qos,
        publish.retain,
        &publish.properties,
        client_id,
        &messages,
    );
    (messages, partition, headers)
}

/// Where a record goes and what it is, for [`send`] and the metrics.
struct Produced<'a> {
    kind: RecordKind,
    /// The PUBLISH's QoS.
    qos: QoS,
    topic: &'a str,
    partition: Option<i32>,
}

fn send(
    up: &KafkaUpstream,
    producer: &Producer,
    to: Produced<'_>,
    key: &str,
    payload: Option<&Bytes>,
    headers: &[(String, Vec<u8>)],
) -> impl Future<Output = ProduceResult> + use<> {
    let kafka_headers = owned_headers(headers.iter().map(|(n, v)| (n.as_str(), v.as_slice())));
    let mut record = FutureRecord::to(to.topic).key(key).headers(kafka_headers);
    if let Some(payload) = payload {
        record = record.payload(payload.as_ref());
    }
    if let Some(partition) = to.partition {
        record = record.partition(partition);
    }
    let metrics = up.metrics.clone();
    let (kind, qos) = (to.kind, to.qos);
    let queued_at = std::time::Instant::now();
    let queued = producer.send_result(record).map_err(|(error, _)| {
        metrics.produce_failed(kind);
        reason_for(&error)
    });
    if queued.is_ok() {
        metrics.produced(kind, qos);
    }
    async move {
        match queued?.await {
            Ok(Ok(_)) => {
                metrics.acknowledged(kind, qos, queued_at.elapsed());
                Ok(())
            }
            Ok(Err((error, _))) => {
                tracing::warn!(%error, "Kafka did not take a message");
                metrics.produce_failed(kind);
                Err(reason_for(&error))
            }
            Err(_) => {
                metrics.produce_failed(kind);
                Err(ReasonCode::UNSPECIFIED_ERROR)
            }
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
