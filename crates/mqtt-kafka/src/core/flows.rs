//! The QoS flows of one MQTT session with its client, as plain state fed with packets: what the
//! client sends (topic aliases, QoS 2 packet ids written and not yet released) and what the
//! session sends it (packet ids, the Receive Maximum window, PUBACK/PUBREC/PUBCOMP, outgoing
//! topic aliases, the client's Maximum Packet Size). No Kafka, no sockets: the session driver
//! (`io::session`) decides what to write where, these types keep the MQTT rules.

use std::collections::{HashMap, HashSet};

use strait_mqtt_codec::{
    self as mqtt, ByteString, Packet, Protocol, PubComp, PubRec, PubRel, Publish, QoS, ReasonCode,
};

/// Topic aliases s-proxy accepts from a client (CONNACK Topic Alias Maximum).
pub const TOPIC_ALIAS_MAXIMUM: u16 = 64;

/// A client's packet breaks the protocol: the session ends with this reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub reason: ReasonCode,
    pub detail: String,
}

impl Violation {
    fn new(reason: ReasonCode, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
        }
    }
}

/// What the client sends: its topic aliases and its QoS 2 packet ids.
#[derive(Debug)]
pub struct Inbound {
    protocol: Protocol,
    aliases: HashMap<u16, ByteString>,
    /// QoS 2 packet ids whose PUBLISH is written (PUBREC sent or due), PUBREL not yet received.
    qos2_received: HashSet<u16>,
    /// QoS 1 and 2 packet ids not yet fully answered (PUBACK, failed PUBREC, or PUBCOMP sent):
    /// what the client's Receive Maximum counts.
    in_flight: HashSet<u16>,
    /// The Receive Maximum announced to the client.
    receive_maximum: u16,
}

impl Inbound {
    /// `qos2_received`: the packet ids a stored session had written (they survive reconnects).
    pub fn new(protocol: Protocol, qos2_received: impl IntoIterator<Item = u16>) -> Self {
        let qos2_received: HashSet<u16> = qos2_received.into_iter().collect();
        Self {
            protocol,
            aliases: HashMap::new(),
            in_flight: qos2_received.clone(),
            qos2_received,
            receive_maximum: u16::MAX,
        }
    }

    /// The Receive Maximum announced in CONNACK (unlimited until set).
    pub fn with_receive_maximum(mut self, receive_maximum: u16) -> Self {
        self.receive_maximum = receive_maximum;
        self
    }

    /// A QoS 1 or 2 PUBLISH arrived: it counts against the Receive Maximum until answered. An
    /// MQTT 5 client beyond it breaks the protocol (MQTT-3.3.4-7: 0x93); a 3.1.1 client has no
    /// such limit (its packet ids bound it) and is throttled by not being read instead.
    pub fn admit(&mut self, publish: &Publish) -> Result<(), Violation> {
        if publish.qos == QoS::AtMostOnce || self.in_flight.contains(&publish.packet_id) {
            return Ok(());
        }
        if self.protocol == Protocol::V5
            && self.in_flight.len() >= usize::from(self.receive_maximum)
        {
            return Err(Violation::new(
                ReasonCode::RECEIVE_MAXIMUM_EXCEEDED,
                format!(
                    "more than {} unacknowledged QoS 1 and 2 PUBLISHes",
                    self.receive_maximum
                ),
            ));
        }
        self.in_flight.insert(publish.packet_id);
        Ok(())
    }

    /// PUBACK, or a PUBREC refusing the message, was sent: the packet id is free again.
    pub fn answered(&mut self, packet_id: u16) {
        self.in_flight.remove(&packet_id);
    }

    /// QoS 1 and 2 PUBLISHes the client is waiting to have answered.
    pub fn in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// Resolves the PUBLISH's topic alias (setting or using one) and checks the topic name.
    pub fn resolve_topic(&mut self, publish: &mut Publish) -> Result<(), Violation> {
        if let Some(alias) = publish.properties.topic_alias.take() {
            if alias == 0 || alias > TOPIC_ALIAS_MAXIMUM {
                return Err(Violation::new(
                    ReasonCode::TOPIC_ALIAS_INVALID,
                    format!("topic alias {alias}"),
                ));
            }
            if publish.topic.is_empty() {
                match self.aliases.get(&alias) {
                    Some(topic) => publish.topic = topic.clone(),
                    None => {
                        return Err(Violation::new(
                            ReasonCode::PROTOCOL_ERROR,
                            format!("unknown topic alias {alias}"),
                        ));
                    }
                }
            } else {
                self.aliases.insert(alias, publish.topic.clone());
            }
        }
        if mqtt::topic::validate_name(&publish.topic).is_err() {
            return Err(Violation::new(
                ReasonCode::TOPIC_NAME_INVALID,
                "invalid topic name",
            ));
        }
        Ok(())
    }

    /// A QoS 2 PUBLISH with this packet id was written already (a resend after a reconnect, or
    /// a duplicate): acknowledge it again, do not write it twice.
    pub fn is_written(&self, packet_id: u16) -> bool {
        self.qos2_received.contains(&packet_id)
    }

    /// The QoS 2 PUBLISH is written; `true` if the id is new (the session record must then
    /// hold it before PUBREC).
    pub fn written(&mut self, packet_id: u16) -> bool {
        self.qos2_received.insert(packet_id)
    }

    /// Storing the written id failed: forget it again.
    pub fn unwritten(&mut self, packet_id: u16) {
        self.qos2_received.remove(&packet_id);
    }

    /// PUBREL: the packet id is released; the PUBCOMP to send (v5: 0x92 for an unknown id).
    pub fn release(&mut self, rel: &PubRel) -> PubComp {
        let known = self.qos2_received.remove(&rel.packet_id);
        self.in_flight.remove(&rel.packet_id);
        let mut comp = PubComp {
            packet_id: rel.packet_id,
            ..Default::default()
        };
        if !known && self.protocol == Protocol::V5 {
            comp.reason_code = ReasonCode::PACKET_IDENTIFIER_NOT_FOUND;
        }
        comp
    }

    /// The written, unreleased packet ids, sorted (for the session record).
    pub fn qos2_received(&self) -> Vec<u16> {
        let mut ids: Vec<u16> = self.qos2_received.iter().copied().collect();
        ids.sort_unstable();
        ids
    }
}

/// Where a delivered message came from: (messages topic index, partition, offset).
pub type Source = (usize, i32, i64);

/// A message sent to the client and not yet acknowledged. `T` is what a shared subscription's
/// group waits for (the driver's record handle).
#[derive(Debug)]
pub struct Outgoing<T> {
    /// Where it came from (retained deliveries have no offset).
    pub source: Option<Source>,
    pub qos: QoS,
    /// QoS 2: PUBREC received, PUBREL sent.
    pub released: bool,
    /// A shared subscription's record: its group commits the offset once this is acknowledged.
    pub shared: Option<T>,
}

/// What sending a PUBLISH came to.
#[derive(Debug)]
pub enum Sent<T> {
    /// Send this packet; `delivered` is the shared record of a QoS 0 message (sent is
    /// delivered).
    Publish {
        publish: Box<Publish>,
        delivered: Option<T>,
    },
    /// The client cannot take it (larger than its Maximum Packet Size): as if delivered
    /// (MQTT-3.1.2-25); the shared record, if any, counts as delivered.
    TooLarge(Option<T>),
}

/// What an acknowledgement from the client came to.
#[derive(Debug)]
pub struct Acked<T> {
    /// The shared subscription's record now delivered.
    pub shared: Option<T>,
    /// The acknowledged message came from Kafka (delivery progress moved).
    pub from_kafka: bool,
    /// QoS 2: the offset now delivered (PUBREC without error).
    pub released: Option<Source>,
    /// QoS 2: the PUBREL to send.
    pub reply: Option<PubRel>,
}

impl<T> Default for Acked<T> {
    fn default() -> Self {
        Self {
            shared: None,
            from_kafka: false,
            released: None,
            reply: None,
        }
    }
}

/// What the session sends the client: in-flight messages by packet id, within the client's
/// Receive Maximum, with its topic aliases.
#[derive(Debug)]
pub struct Outbound<T> {
    protocol: Protocol,
    in_flight: HashMap<u16, Outgoing<T>>,
    next_packet_id: u16,
    receive_max: usize,
    max_packet: Option<u32>,
    aliases: HashMap<ByteString, u16>,
    alias_max: u16,
}

impl<T> Outbound<T> {
    /// The client's limits from its CONNECT.
    pub fn new(protocol: Protocol, connect: &mqtt::Connect) -> Self {
        let props = &connect.properties;
        Self {
            protocol,
            in_flight: HashMap::new(),
            next_packet_id: 1,
            receive_max: usize::from(props.receive_maximum.unwrap_or(u16::MAX)),
            max_packet: props.maximum_packet_size,
            aliases: HashMap::new(),
            alias_max: match protocol {
                Protocol::V5 => props.topic_alias_maximum.unwrap_or(0),
                Protocol::V311 => 0,
            },
        }
    }

    /// Whether the client's Receive Maximum allows another QoS ≥ 1 message.
    pub fn has_room(&self) -> bool {
        self.in_flight.len() < self.receive_max
    }

    pub fn in_flight(&self) -> impl Iterator<Item = (&u16, &Outgoing<T>)> {
        self.in_flight.iter()
    }

    pub fn in_flight_mut(&mut self) -> impl Iterator<Item = &mut Outgoing<T>> {
        self.in_flight.values_mut()
    }

    /// The session ends: the shared subscriptions' records it has not delivered (sent and not
    /// acknowledged), for other members.
    pub fn take_shared(&mut self) -> Vec<T> {
        self.in_flight
            .values_mut()
            .filter_map(|o| o.shared.take())
            .collect()
    }

    /// A QoS 2 message released before a reconnect (PUBREL due again).
    pub fn restore_released(&mut self, packet_id: u16, source: Source) {
        self.in_flight.insert(
            packet_id,
            Outgoing {
                source: Some(source),
                qos: QoS::ExactlyOnce,
                released: true,
                shared: None,
            },
        );
    }

    /// Sends `publish`: allocates a packet id for QoS ≥ 1 (or reuses `packet_id` for a QoS 2
    /// resend; `reserved` ids are never handed out), puts it in flight, and replaces its topic
    /// by an alias where the client allows. QoS 0 is delivered once sent.
    pub fn send(
        &mut self,
        mut publish: Publish,
        source: Option<Source>,
        packet_id: Option<u16>,
        shared: Option<T>,
        reserved: impl Fn(u16) -> bool,
    ) -> Sent<T> {
        if let Some(max) = self.max_packet {
            let size = mqtt::encoded_len(&Packet::Publish(publish.clone()), self.protocol)
                .unwrap_or(usize::MAX);
            if size > max as usize {
                return Sent::TooLarge(shared);
            }
        }
        let mut delivered = None;
        if publish.qos == QoS::AtMostOnce {
            delivered = shared;
        } else {
            let id = match packet_id {
                Some(id) if publish.qos == QoS::ExactlyOnce => id,
                _ => self.allocate_packet_id(reserved),
            };
            publish.packet_id = id;
            self.in_flight.insert(
                id,
                Outgoing {
                    source,
                    qos: publish.qos,
                    released: false,
                    shared,
                },
            );
        }
        if self.alias_max > 0 {
            // The first message on a topic sets an alias; later ones send only the alias.
            match self.aliases.get(&publish.topic) {
                Some(alias) => {
                    publish.properties.topic_alias = Some(*alias);
                    publish.topic = ByteString::new();
                }
                None if self.aliases.len() < usize::from(self.alias_max) => {
                    let alias = self.aliases.len() as u16 + 1;
                    self.aliases.insert(publish.topic.clone(), alias);
                    publish.properties.topic_alias = Some(alias);
                }
                None => {}
            }
        }
        Sent::Publish {
            publish: Box::new(publish),
            delivered,
        }
    }

    fn allocate_packet_id(&mut self, reserved: impl Fn(u16) -> bool) -> u16 {
        loop {
            let id = self.next_packet_id;
            self.next_packet_id = self.next_packet_id.checked_add(1).unwrap_or(1);
            if !self.in_flight.contains_key(&id) && !reserved(id) {
                return id;
            }
        }
    }

    /// PUBACK: a QoS 1 message is delivered (a PUBACK for anything else changes nothing).
    pub fn puback(&mut self, packet_id: u16) -> Acked<T> {
        if self
            .in_flight
            .get(&packet_id)
            .is_none_or(|o| o.qos != QoS::AtLeastOnce)
        {
            return Acked::default();
        }
        self.completed(packet_id)
    }

    /// PUBREC: the client has the QoS 2 message (or refused it, which ends its flow).
    pub fn pubrec(&mut self, rec: &PubRec) -> Acked<T> {
        let Some(outgoing) = self.in_flight.get_mut(&rec.packet_id) else {
            return Acked::default();
        };
        // The client has it (or refused it): the shared group may move on.
        let shared = outgoing.shared.take();
        if rec.reason_code.is_error() {
            self.in_flight.remove(&rec.packet_id);
            return Acked {
                shared,
                ..Acked::default()
            };
        }
        outgoing.released = true;
        Acked {
            shared,
            from_kafka: false,
            released: outgoing.source,
            reply: Some(PubRel {
                packet_id: rec.packet_id,
                ..Default::default()
            }),
        }
    }

    /// PUBCOMP: the QoS 2 flow is complete.
    pub fn pubcomp(&mut self, packet_id: u16) -> Acked<T> {
        self.completed(packet_id)
    }

    fn completed(&mut self, packet_id: u16) -> Acked<T> {
        match self.in_flight.remove(&packet_id) {
            Some(done) => Acked {
                shared: done.shared,
                from_kafka: done.source.is_some(),
                ..Acked::default()
            },
            None => Acked::default(),
        }
    }
}

#[cfg(test)]
mod tests;
