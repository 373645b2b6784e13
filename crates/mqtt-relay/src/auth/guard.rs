//! Enforcing a session's topic permissions on the packets a client sends, without sockets: each
//! packet is relayed, dropped, answered by r-proxy itself, or ends the session. s-proxy never
//! sees an unauthorised PUBLISH or SUBSCRIBE filter.

use std::collections::HashMap;
use std::sync::Mutex;

use strait_mqtt_codec::{Packet, Protocol, PubAck, PubRec, QoS, ReasonCode, SubAck};

use strait_relay::topics::Policy;

/// What to do with one packet from the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Relay it (possibly changed: a SUBSCRIBE keeps only its permitted filters).
    Relay,
    /// Drop it silently (a QoS 0 PUBLISH outside the permissions).
    Drop,
    /// Do not relay it; answer the client with this packet.
    Reply(Box<Packet>),
    /// End the session with this reason (3.1.1 has no negative PUBACK).
    Disconnect(ReasonCode),
}

/// The outcome of [`TopicGuard::check`]: the verdict and how many publishes or subscription
/// filters were denied (for the metrics).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checked {
    pub verdict: Verdict,
    pub denied_publishes: u64,
    pub denied_subscriptions: u64,
}

impl Checked {
    fn relay() -> Self {
        Self {
            verdict: Verdict::Relay,
            denied_publishes: 0,
            denied_subscriptions: 0,
        }
    }
}

/// Per-session enforcement of the permissions on inbound packets.
#[derive(Debug)]
pub struct TopicGuard {
    permissions: Policy,
    protocol: Protocol,
    /// Topic aliases the client set (MQTT 5), to judge PUBLISHes that only carry the alias.
    aliases: HashMap<u16, strait_mqtt_codec::ByteString>,
}

/// SUBSCRIBEs relayed with some filters removed, by packet id: the positions of the denied
/// filters, put back into the SUBACK with 0x87 when it returns. Shared by both directions.
#[derive(Debug, Default)]
pub struct PartialSubAcks(Mutex<HashMap<u16, Vec<usize>>>);

impl PartialSubAcks {
    /// Restores the denied filters' places in a SUBACK from upstream.
    pub fn complete(&self, ack: &mut SubAck) {
        let denied = self
            .0
            .lock()
            .expect("never poisoned")
            .remove(&ack.packet_id);
        for index in denied.into_iter().flatten() {
            let index = index.min(ack.reason_codes.len());
            ack.reason_codes.insert(index, ReasonCode::NOT_AUTHORIZED);
        }
    }

    fn remember(&self, packet_id: u16, denied: Vec<usize>) {
        self.0
            .lock()
            .expect("never poisoned")
            .insert(packet_id, denied);
    }
}

impl TopicGuard {
    pub fn new(permissions: Policy, protocol: Protocol) -> Self {
        Self {
            permissions,
            protocol,
            aliases: HashMap::new(),
        }
    }

    /// Judges one packet from the client; a SUBSCRIBE with some denied filters is rewritten to
    /// the permitted ones and remembered in `partial`.
    pub fn check(&mut self, packet: &mut Packet, partial: &PartialSubAcks) -> Checked {
        match packet {
            Packet::Publish(publish) => {
                let topic = match publish.properties.topic_alias {
                    Some(alias) if publish.topic.is_empty() => match self.aliases.get(&alias) {
                        Some(topic) => &**topic,
                        None => {
                            return Checked {
                                verdict: Verdict::Disconnect(ReasonCode::PROTOCOL_ERROR),
                                ..Checked::relay()
                            };
                        }
                    },
                    Some(alias) => {
                        self.aliases.insert(alias, publish.topic.clone());
                        &*publish.topic
                    }
                    None => &*publish.topic,
                };
                if self.permissions.may_publish(topic) {
                    return Checked::relay();
                }
                let verdict = match (publish.qos, self.protocol) {
                    (QoS::AtMostOnce, _) => Verdict::Drop,
                    (_, Protocol::V311) => Verdict::Disconnect(ReasonCode::NOT_AUTHORIZED),
                    (QoS::AtLeastOnce, _) => Verdict::Reply(Box::new(Packet::PubAck(PubAck {
                        packet_id: publish.packet_id,
                        reason_code: ReasonCode::NOT_AUTHORIZED,
                        ..Default::default()
                    }))),
                    (QoS::ExactlyOnce, _) => Verdict::Reply(Box::new(Packet::PubRec(PubRec {
                        packet_id: publish.packet_id,
                        reason_code: ReasonCode::NOT_AUTHORIZED,
                        ..Default::default()
                    }))),
                };
                Checked {
                    verdict,
                    denied_publishes: 1,
                    denied_subscriptions: 0,
                }
            }
            Packet::Subscribe(subscribe) => {
                let denied: Vec<usize> = subscribe
                    .subscriptions
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| !self.permissions.may_subscribe(&s.filter))
                    .map(|(i, _)| i)
                    .collect();
                let count = denied.len() as u64;
                if denied.is_empty() {
                    return Checked::relay();
                }
                let verdict = if denied.len() == subscribe.subscriptions.len() {
                    Verdict::Reply(Box::new(Packet::SubAck(SubAck {
                        packet_id: subscribe.packet_id,
                        reason_codes: vec![ReasonCode::NOT_AUTHORIZED; denied.len()],
                        ..Default::default()
                    })))
                } else {
                    for &i in denied.iter().rev() {
                        subscribe.subscriptions.remove(i);
                    }
                    partial.remember(subscribe.packet_id, denied);
                    Verdict::Relay
                };
                Checked {
                    verdict,
                    denied_publishes: 0,
                    denied_subscriptions: count,
                }
            }
            _ => Checked::relay(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_mqtt_codec::{Publish, Subscribe, Subscription, SubscriptionOptions};
    use strait_relay::topics::Permissions;

    fn guard(protocol: Protocol) -> TopicGuard {
        TopicGuard::new(
            Policy(vec![Permissions {
                publish: Some(vec!["up/#".into()]),
                subscribe: Some(vec!["down/+".into()]),
                ..Default::default()
            }]),
            protocol,
        )
    }

    fn publish(topic: &str, qos: QoS, alias: Option<u16>) -> Packet {
        let mut p = Publish {
            topic: topic.into(),
            qos,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { 7 },
            ..Default::default()
        };
        p.properties.topic_alias = alias;
        Packet::Publish(p)
    }

    fn subscribe(filters: &[&str]) -> Packet {
        Packet::Subscribe(Subscribe {
            packet_id: 9,
            subscriptions: filters
                .iter()
                .map(|f| Subscription {
                    filter: f.to_string(),
                    options: SubscriptionOptions::qos(QoS::AtLeastOnce),
                })
                .collect(),
            ..Default::default()
        })
    }

    fn verdict(guard: &mut TopicGuard, mut packet: Packet) -> Verdict {
        guard.check(&mut packet, &PartialSubAcks::default()).verdict
    }

    #[test]
    fn denied_publishes_by_qos_and_protocol() {
        let mut v5 = guard(Protocol::V5);
        assert_eq!(
            verdict(&mut v5, publish("up/x", QoS::AtLeastOnce, None)),
            Verdict::Relay
        );
        assert_eq!(
            verdict(&mut v5, publish("other", QoS::AtMostOnce, None)),
            Verdict::Drop
        );
        assert_eq!(
            verdict(&mut v5, publish("other", QoS::AtLeastOnce, None)),
            Verdict::Reply(Box::new(Packet::PubAck(PubAck {
                packet_id: 7,
                reason_code: ReasonCode::NOT_AUTHORIZED,
                ..Default::default()
            })))
        );
        assert_eq!(
            verdict(&mut v5, publish("other", QoS::ExactlyOnce, None)),
            Verdict::Reply(Box::new(Packet::PubRec(PubRec {
                packet_id: 7,
                reason_code: ReasonCode::NOT_AUTHORIZED,
                ..Default::default()
            })))
        );
        let mut v3 = guard(Protocol::V311);
        assert_eq!(
            verdict(&mut v3, publish("other", QoS::AtLeastOnce, None)),
            Verdict::Disconnect(ReasonCode::NOT_AUTHORIZED)
        );
        assert_eq!(
            verdict(&mut v3, publish("other", QoS::AtMostOnce, None)),
            Verdict::Drop
        );
    }

    #[test]
    fn topic_aliases_are_judged_by_the_topic_they_stand_for() {
        let mut g = guard(Protocol::V5);
        assert_eq!(
            verdict(&mut g, publish("up/a", QoS::AtMostOnce, Some(1))),
            Verdict::Relay
        );
        assert_eq!(
            verdict(&mut g, publish("", QoS::AtMostOnce, Some(1))),
            Verdict::Relay
        );
        assert_eq!(
            verdict(&mut g, publish("secret", QoS::AtMostOnce, Some(1))),
            Verdict::Drop,
            "rebinding the alias to a denied topic"
        );
        assert_eq!(
            verdict(&mut g, publish("", QoS::AtMostOnce, Some(1))),
            Verdict::Drop,
            "the alias now stands for the denied topic"
        );
        assert_eq!(
            verdict(&mut g, publish("", QoS::AtMostOnce, Some(2))),
            Verdict::Disconnect(ReasonCode::PROTOCOL_ERROR)
        );
    }

    #[test]
    fn subscribe_keeps_permitted_filters_and_the_suback_gets_the_rest_back() {
        let mut g = guard(Protocol::V5);
        let partial = PartialSubAcks::default();
        let mut packet = subscribe(&["nope", "down/a", "down/#", "down/+"]);
        let checked = g.check(&mut packet, &partial);
        assert_eq!(checked.verdict, Verdict::Relay);
        assert_eq!(checked.denied_subscriptions, 2);
        let Packet::Subscribe(relayed) = &packet else {
            unreachable!()
        };
        let kept: Vec<_> = relayed.subscriptions.iter().map(|s| &s.filter).collect();
        assert_eq!(kept, ["down/a", "down/+"]);

        let mut ack = SubAck {
            packet_id: 9,
            reason_codes: vec![ReasonCode::GRANTED_QOS_1, ReasonCode::GRANTED_QOS_0],
            ..Default::default()
        };
        partial.complete(&mut ack);
        assert_eq!(
            ack.reason_codes,
            [
                ReasonCode::NOT_AUTHORIZED,
                ReasonCode::GRANTED_QOS_1,
                ReasonCode::NOT_AUTHORIZED,
                ReasonCode::GRANTED_QOS_0
            ]
        );
        let mut other = SubAck {
            packet_id: 9,
            reason_codes: vec![ReasonCode::GRANTED_QOS_1],
            ..Default::default()
        };
        partial.complete(&mut other);
        assert_eq!(other.reason_codes.len(), 1, "completed once only");
    }

    #[test]
    fn subscribe_with_only_denied_filters_is_answered_locally() {
        let mut g = guard(Protocol::V311);
        assert_eq!(
            verdict(&mut g, subscribe(&["a", "#"])),
            Verdict::Reply(Box::new(Packet::SubAck(SubAck {
                packet_id: 9,
                reason_codes: vec![ReasonCode::NOT_AUTHORIZED; 2],
                ..Default::default()
            })))
        );
        assert_eq!(verdict(&mut g, subscribe(&["down/x"])), Verdict::Relay);
    }
}
