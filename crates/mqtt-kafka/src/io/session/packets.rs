//! Packets from the client: PUBLISH (produced, or refused before Kafka), the QoS flows'
//! acknowledgements, SUBSCRIBE, UNSUBSCRIBE, PINGREQ and DISCONNECT.

use super::*;

impl Session {
    /// The producer lane of the session's next QoS ≥ 1 record (`core::lanes`): it changes only
    /// while none of the session's records waits for Kafka.
    fn lane(&mut self, acks: &Acks) -> Lane {
        let light = self.up.quick.is_some() && self.up.load.is_light(now_ms() as u64);
        self.lane = next_lane(self.lane, acks.len(), light);
        self.lane
    }

    /// Handles one packet from the client; `Some` ends the session.
    pub(super) async fn handle(
        &mut self,
        packet: Packet,
        acks: &mut Acks,
        metrics: &RelayMetrics,
    ) -> Option<End> {
        match packet {
            Packet::Publish(mut publish) => {
                if let Err(violation) = self.inbound.resolve_topic(&mut publish) {
                    return Some(End::Server(violation.reason, violation.detail));
                }
                if let Err(violation) = self.inbound.admit(&publish) {
                    self.up.metrics.limit_hit(Limit::ReceiveMaximum);
                    return Some(End::Server(violation.reason, violation.detail));
                }
                if self.up.routing.has_param_routes()
                    && let Err(refusal) = self.up.ensure_routed(&publish.topic).await
                {
                    tracing::debug!(topic = %publish.topic, "PUBLISH refused: {refusal}");
                    metrics.error(refusal.metric_kind());
                    refuse_publish(&publish, acks, refusal.reason_code(), refusal.to_string());
                    return None;
                }
                if publish.retain && !self.up.admits_retained(&publish) {
                    self.up.metrics.limit_hit(Limit::Retained);
                    let limits = &self.up.config.limits;
                    let detail = format!(
                        "the retained messages would exceed {} messages or {} bytes",
                        limits.max_retained_messages, limits.max_retained_bytes
                    );
                    refuse_publish(&publish, acks, ReasonCode::QUOTA_EXCEEDED, detail);
                    return None;
                }
                match publish.qos {
                    QoS::AtMostOnce => {
                        // Handed to the producer now; the client waits for nothing, but a
                        // record Kafka then refuses is still counted (produce_failures).
                        tokio::spawn(produce(&self.up, &publish, &self.client_id));
                    }
                    QoS::AtLeastOnce => {
                        let lane = self.lane(acks);
                        let delivery = produce_on(&self.up, &publish, &self.client_id, lane);
                        let id = publish.packet_id;
                        acks.push_back(Box::pin(async move { (Ack::PubAck(id), delivery.await) }));
                    }
                    QoS::ExactlyOnce => {
                        let id = publish.packet_id;
                        let step = self.intents.decide(&self.inbound, id);
                        if step == Qos2Publish::Acknowledge {
                            // A resend of a message Kafka already has: acknowledge, do not
                            // write it again.
                            acks.push_back(Box::pin(async move { (Ack::PubRec(id), Ok(())) }));
                            return None;
                        }
                        match self.qos2_intent(&publish, step).await {
                            Ok(true) => {
                                // The first attempt reached Kafka before a crash.
                                acks.push_back(Box::pin(async move { (Ack::PubRec(id), Ok(())) }));
                                return None;
                            }
                            Ok(false) => {}
                            Err(error) => {
                                tracing::warn!(
                                    error = crate::error_chain(&error),
                                    "cannot store QoS 2 intent"
                                );
                                let failed = Err(ReasonCode::UNSPECIFIED_ERROR);
                                acks.push_back(Box::pin(async move { (Ack::PubRec(id), failed) }));
                                return None;
                            }
                        }
                        let lane = self.lane(acks);
                        let delivery = self.up.write_qos2(
                            &self.client_id,
                            id,
                            produce_on(&self.up, &publish, &self.client_id, lane),
                        );
                        acks.push_back(Box::pin(async move { (Ack::PubRec(id), delivery.await) }));
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
                    tracing::warn!(
                        error = crate::error_chain(&error),
                        "cannot store the unsubscribe"
                    );
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
                )
                .min(self.up.config.limits.max_session_expiry_seconds());
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
}
