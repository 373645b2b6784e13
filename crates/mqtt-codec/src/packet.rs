//! The packet model, shared by MQTT 3.1.1 and 5.0.
//!
//! One set of types serves both versions: fields that only exist in 5.0
//! (properties, most reason codes, subscription options other than QoS) are
//! present everywhere and stay at their `Default` when a 3.1.1 packet is
//! decoded. See the crate docs for what encoding such fields as 3.1.1 does.

use std::fmt;

use bytes::Bytes;
use bytestring::ByteString;

use crate::ReasonCode;
use crate::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, WillProperties,
};

/// Quality of service of a PUBLISH, a will, or a subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
#[repr(u8)]
pub enum QoS {
    #[default]
    AtMostOnce = 0,
    AtLeastOnce = 1,
    ExactlyOnce = 2,
}

impl QoS {
    /// `None` for 3, which every place that carries a QoS treats as malformed.
    pub const fn from_u8(value: u8) -> Option<Self> {
        match value {
            0 => Some(Self::AtMostOnce),
            1 => Some(Self::AtLeastOnce),
            2 => Some(Self::ExactlyOnce),
            _ => None,
        }
    }
}

/// The 4-bit packet type of the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    /// MQTT 5 only.
    Auth = 15,
}

impl PacketType {
    /// `None` for the reserved type 0 (and anything above 15).
    pub const fn from_u8(value: u8) -> Option<Self> {
        Some(match value {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The spec's upper-case name, e.g. `"PUBLISH"`; used in errors and metrics.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Connect => "CONNECT",
            Self::ConnAck => "CONNACK",
            Self::Publish => "PUBLISH",
            Self::PubAck => "PUBACK",
            Self::PubRec => "PUBREC",
            Self::PubRel => "PUBREL",
            Self::PubComp => "PUBCOMP",
            Self::Subscribe => "SUBSCRIBE",
            Self::SubAck => "SUBACK",
            Self::Unsubscribe => "UNSUBSCRIBE",
            Self::UnsubAck => "UNSUBACK",
            Self::PingReq => "PINGREQ",
            Self::PingResp => "PINGRESP",
            Self::Disconnect => "DISCONNECT",
            Self::Auth => "AUTH",
        }
    }
}

impl fmt::Display for PacketType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An MQTT control packet of either protocol version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Connect),
    ConnAck(ConnAck),
    Publish(Publish),
    PubAck(PubAck),
    PubRec(PubRec),
    PubRel(PubRel),
    PubComp(PubComp),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    /// MQTT 5 only: encoding it as 3.1.1 fails.
    Auth(Auth),
}

impl Packet {
    pub const fn packet_type(&self) -> PacketType {
        match self {
            Self::Connect(_) => PacketType::Connect,
            Self::ConnAck(_) => PacketType::ConnAck,
            Self::Publish(_) => PacketType::Publish,
            Self::PubAck(_) => PacketType::PubAck,
            Self::PubRec(_) => PacketType::PubRec,
            Self::PubRel(_) => PacketType::PubRel,
            Self::PubComp(_) => PacketType::PubComp,
            Self::Subscribe(_) => PacketType::Subscribe,
            Self::SubAck(_) => PacketType::SubAck,
            Self::Unsubscribe(_) => PacketType::Unsubscribe,
            Self::UnsubAck(_) => PacketType::UnsubAck,
            Self::PingReq => PacketType::PingReq,
            Self::PingResp => PacketType::PingResp,
            Self::Disconnect(_) => PacketType::Disconnect,
            Self::Auth(_) => PacketType::Auth,
        }
    }

    /// The spec's name of the packet type, e.g. `"PUBLISH"` (handy as a metric label).
    pub const fn name(&self) -> &'static str {
        self.packet_type().name()
    }
}

/// CONNECT (spec §3.1). The protocol level is not stored here: it is what
/// [`crate::decode_first`] returns next to the packet and what
/// [`crate::encode`] is told.
///
/// The codec does not apply server policy: a 3.1.1 server must still answer a
/// zero-length `client_id` with `clean_start == false` by CONNACK return code
/// 0x02 ([MQTT-3.1.3-8]).
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Connect {
    /// Clean Start (5.0) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Seconds; 0 turns keep-alive off.
    pub keep_alive: u16,
    /// May be empty (the server then assigns one).
    pub client_id: String,
    pub will: Option<Will>,
    pub username: Option<String>,
    /// Binary data. In 3.1.1 a password requires a username.
    pub password: Option<Bytes>,
    pub properties: ConnectProperties,
}

/// Hand-written so that a password never ends up in a log line.
impl fmt::Debug for Connect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connect")
            .field("clean_start", &self.clean_start)
            .field("keep_alive", &self.keep_alive)
            .field("client_id", &self.client_id)
            .field("will", &self.will)
            .field("username", &self.username)
            .field(
                "password",
                &self
                    .password
                    .as_ref()
                    .map(|p| format!("<{} bytes>", p.len())),
            )
            .field("properties", &self.properties)
            .finish()
    }
}

/// The will message of a CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Will {
    /// A topic name: no wildcards.
    pub topic: String,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// Empty in 3.1.1.
    pub properties: WillProperties,
}

/// CONNACK (spec §3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// In 3.1.1 one of the six codes [`ReasonCode::from_v311_connack`] yields.
    pub reason_code: ReasonCode,
    pub properties: ConnAckProperties,
}

/// PUBLISH (spec §3.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    /// Only allowed with QoS 1 or 2.
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// A topic name (no wildcards). In 5.0 it may be empty when
    /// `properties.topic_alias` is set; resolving aliases is session state and
    /// left to the caller. Decoded as a slice of the received buffer, like the
    /// payload.
    pub topic: ByteString,
    /// 0 for QoS 0 (the field is then absent on the wire), non-zero otherwise.
    pub packet_id: u16,
    /// A slice of the received buffer: decoding does not copy it.
    pub payload: Bytes,
    pub properties: PublishProperties,
}

macro_rules! pub_response {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        ///
        /// In 3.1.1 the reason code is always Success and the properties are
        /// empty; encoding a failure code (0x80 or above) as 3.1.1 is an error
        /// because 3.1.1 cannot say that the exchange failed.
        #[derive(Debug, Clone, PartialEq, Eq, Default)]
        pub struct $name {
            pub packet_id: u16,
            pub reason_code: ReasonCode,
            pub properties: AckProperties,
        }
    };
}

pub_response!(
    /// PUBACK (spec §3.4): acknowledges a QoS 1 PUBLISH.
    PubAck
);
pub_response!(
    /// PUBREC (spec §3.5): first answer to a QoS 2 PUBLISH.
    PubRec
);
pub_response!(
    /// PUBREL (spec §3.6): answer to PUBREC.
    PubRel
);
pub_response!(
    /// PUBCOMP (spec §3.7): answer to PUBREL, ends a QoS 2 exchange.
    PubComp
);

/// Retain Handling subscription option (MQTT 5): when retained messages are sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// 0: send retained messages at the time of the subscribe.
    #[default]
    SendAtSubscribe = 0,
    /// 1: send them only if the subscription did not exist yet.
    SendAtSubscribeIfNew = 1,
    /// 2: do not send them.
    DoNotSend = 2,
}

/// The options byte of a SUBSCRIBE entry. 3.1.1 only has `qos`; the others
/// stay at their defaults there and are dropped when encoding as 3.1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// Maximum QoS the subscriber wants.
    pub qos: QoS,
    /// Do not send the client its own publications. Not allowed on shared subscriptions.
    pub no_local: bool,
    /// Keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options asking for `qos` with every other option at its default.
    pub const fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    /// The v5 options byte (bits 6–7 reserved, 0).
    pub const fn to_byte(self) -> u8 {
        self.qos as u8
            | (self.no_local as u8) << 2
            | (self.retain_as_published as u8) << 3
            | (self.retain_handling as u8) << 4
    }
}

/// One topic filter of a SUBSCRIBE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscription {
    /// A topic filter; may be a shared subscription `$share/{group}/{filter}`.
    pub filter: String,
    pub options: SubscriptionOptions,
}

/// SUBSCRIBE (spec §3.8).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Subscribe {
    pub packet_id: u16,
    /// At least one.
    pub subscriptions: Vec<Subscription>,
    pub properties: SubscribeProperties,
}

/// SUBACK (spec §3.9).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubAck {
    pub packet_id: u16,
    /// One per subscription, in order: Granted QoS 0–2 or a failure code.
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// UNSUBSCRIBE (spec §3.10).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Unsubscribe {
    pub packet_id: u16,
    /// At least one topic filter.
    pub filters: Vec<String>,
    pub properties: UnsubscribeProperties,
}

/// UNSUBACK (spec §3.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubAck {
    pub packet_id: u16,
    /// One per filter in 5.0; always empty in 3.1.1 (and dropped when encoding as 3.1.1).
    pub reason_codes: Vec<ReasonCode>,
    pub properties: AckProperties,
}

/// DISCONNECT (spec §3.14). In 3.1.1 it has no body: the reason code and the
/// properties are dropped when encoding as 3.1.1.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    pub reason_code: ReasonCode,
    pub properties: DisconnectProperties,
}

/// AUTH (spec §3.15), MQTT 5 only.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Auth {
    pub reason_code: ReasonCode,
    pub properties: AuthProperties,
}
